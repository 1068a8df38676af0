"""Scores from Kronos' sampled close paths: the expected horizon return, and the four signals
upstream's fine-tuning script (`finetune/qlib_test.py`) backtests. No torch here: the config names
the scores without loading the model."""

from __future__ import annotations

from typing import Literal

from models.interface import Forecast

KronosScore = Literal["expected_return", "last", "mean", "max", "min"]
UPSTREAM_SCORES: tuple[KronosScore, ...] = ("last", "mean", "max", "min")


def source_name(base: str, score: str) -> str:
    """`kronos` for the expected return, `kronos:mean` for upstream's mean signal (and so on)."""
    return base if score == "expected_return" else f"{base}:{score}"


def upstream_score(forecast: Forecast, score: KronosScore) -> Forecast:
    """Upstream's signal: the last, mean, max or min over the horizon of the mean sampled close path,
    minus the decision day's close (a price difference, as upstream defines it)."""
    assert forecast.close_paths is not None and forecast.last_close is not None
    mean_path = forecast.close_paths.mean(axis=1)  # (N, horizon)
    ends = {"last": mean_path[:, -1], "mean": mean_path.mean(-1), "max": mean_path.max(-1), "min": mean_path.min(-1)}
    return Forecast(forecast.days, forecast.instruments, ends[score] - forecast.last_close)
