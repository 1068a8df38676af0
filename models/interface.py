"""The interface every model family shares: `fit(...) -> Fitted` and `forecast(...) -> Forecast`.

Each family (models.kronos, models.timellm, models.chronos, models.lgbm) exposes both; their
arguments are the family's own, their results these two types.

`Forecast` holds one score per series and its uncertainty.
A score is the expected return over the horizon, known at the close of the decision day. The
families differ in what stands behind it (sampled paths, quantiles, a point forecast, or a
regression score), so `Forecast` keeps that too: the pipeline writes the signal table, the
horizon-return quantiles and `forecasts.npz` from it in one place (pipeline/signals.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPREAD_LEVELS = (0.1, 0.9)  # a quantile forecast's score_std comes from the spread between these levels
NORMAL_10_90_HALF_WIDTH = 1.2816  # the 90% quantile of a standard normal


def expected_return(forecast_close: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """Score from a price forecast: mean forecast close over the horizon / last close - 1.

    forecast_close: (..., horizon) prices; last_close: (...) the close at the decision day.
    """
    return forecast_close.mean(axis=-1) / last_close - 1.0


@dataclass(frozen=True)
class Forecast:
    """N series' forecasts. Build it with one of the constructors below, by what the family predicts."""

    days: np.ndarray  # (N,) decision days
    instruments: np.ndarray  # (N,)
    score: np.ndarray  # (N,) expected horizon return
    score_std: np.ndarray | None = None  # (N,) its spread; None where the family has none
    last_close: np.ndarray | None = None  # (N,) close of the decision day
    close_paths: np.ndarray | None = None  # (N, samples, horizon) sampled closes
    close_quantiles: np.ndarray | None = None  # (N, Q, horizon) closes at `levels`
    levels: tuple[float, ...] = ()
    point: np.ndarray | None = None  # (N, horizon, channels) a point forecast in the inputs' units

    @classmethod
    def from_paths(cls, days, instruments, close_paths: np.ndarray, last_close: np.ndarray) -> Forecast:
        """Sampled paths: the score is the mean of the paths' expected returns, score_std their spread."""
        path_returns = expected_return(close_paths, last_close[:, None])  # (N, samples)
        return cls(days, instruments, path_returns.mean(1), path_returns.std(1), last_close, close_paths=close_paths)

    @classmethod
    def from_quantiles(
        cls, days, instruments, close_quantiles: np.ndarray, levels: Sequence[float], last_close: np.ndarray
    ) -> Forecast:
        """Quantile forecasts (N, Q, horizon) at `levels`: the score is the median path's expected return;
        score_std the mean 10-90% spread over the horizon / last close, divided by 2 x 1.2816 (that spread
        of a normal distribution), so it reads as a standard deviation of the return. Crossed quantiles
        (a poorly trained model can put its 10% above its 90%) are sorted first, the monotone
        rearrangement, so the spread is never negative."""
        levels = list(levels)
        ordered = np.sort(close_quantiles, axis=1)
        median, low, high = (ordered[:, levels.index(level)] for level in (0.5, *SPREAD_LEVELS))
        score = median.mean(axis=-1) / last_close - 1.0
        spread = (high - low).mean(axis=-1) / last_close / (2 * NORMAL_10_90_HALF_WIDTH)
        return cls(days, instruments, score, spread, last_close, close_quantiles=close_quantiles, levels=tuple(levels))

    @classmethod
    def from_point(cls, days, instruments, point: np.ndarray, close_channel: int, last_close: np.ndarray) -> Forecast:
        """A point forecast (N, horizon, channels): the expected return of its close channel, no spread."""
        score = expected_return(point[..., close_channel], last_close)
        return cls(days, instruments, score, None, last_close, point=point)

    @property
    def has_quantiles(self) -> bool:
        return self.close_paths is not None or self.close_quantiles is not None

    def return_quantiles(self, levels: Sequence[float]) -> np.ndarray:
        """Quantiles of the return from the decision day's close to the horizon's last close, (N, len(levels)):
        empirical over sampled paths, interpolated between the forecast levels of a quantile forecast."""
        if self.last_close is None or not self.has_quantiles:
            raise ValueError("this forecast has neither sample paths nor quantiles")
        if self.close_paths is not None:
            returns = self.close_paths[:, :, -1] / self.last_close[:, None] - 1
            return np.quantile(returns, levels, axis=1).T
        assert self.close_quantiles is not None
        # crossed quantiles are sorted first
        returns = np.sort(self.close_quantiles[:, :, -1], axis=1) / self.last_close[:, None] - 1
        return np.stack([np.interp(levels, self.levels, row) for row in returns])

    def arrays(self) -> dict[str, np.ndarray]:
        """What stands behind the scores, for `forecasts.npz` (the notebook reads it); empty for a
        forecast without paths or quantiles."""
        saved: dict[str, np.ndarray] = {}
        if self.close_paths is not None:
            saved["close_paths"] = self.close_paths.astype(np.float32)
        if self.close_quantiles is not None:
            saved["quantiles"] = self.close_quantiles.astype(np.float32)
            saved["levels"] = np.array(self.levels)
        if saved:
            saved["decision_days"] = np.asarray(self.days).astype("datetime64[D]")
            saved["instruments"] = np.asarray(self.instruments)
            if self.last_close is not None:
                saved["last_close"] = self.last_close
        return saved


@dataclass(frozen=True)
class Fitted:
    """A trained model: its checkpoint folder (save_pretrained), its figures and its per-step history."""

    checkpoint: Path
    report: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # rows of {"step": n, name: value, ...}
