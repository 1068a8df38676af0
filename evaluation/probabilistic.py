"""Probabilistic forecasts of the horizon return: quantile tables, interval coverage and pinball loss.

Sources with sample paths (Kronos) or quantiles (Chronos-2 and its student) write the quantiles
(models.interface.Forecast.return_quantiles at LEVELS) of the return from the close of the decision
day to the close `horizon` days later. They are judged beside a baseline every quant has: a normal
return with each instrument's trailing 20-day volatility scaled by sqrt(horizon).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from evaluation.metrics import forward_returns

LEVELS = (0.05, 0.1, 0.5, 0.9, 0.95)
COLUMNS = tuple(f"q{level:g}" for level in LEVELS)
VOLATILITY_DAYS = 20


def quantile_table(days, instruments, quantiles: np.ndarray) -> pd.DataFrame:
    """(N, len(LEVELS)) quantiles of the horizon return -> table datetime, instrument, q0.05 .. q0.95."""
    table = pd.DataFrame(np.asarray(quantiles, dtype=np.float64), columns=list(COLUMNS))
    table.insert(0, "instrument", np.asarray(instruments, dtype=object).astype(str))
    table.insert(0, "datetime", pd.to_datetime(np.asarray(days)))
    return table.sort_values(["datetime", "instrument"], kind="stable").reset_index(drop=True)


def trailing_volatility_quantiles(close: pd.DataFrame, horizon: int) -> dict[str, pd.DataFrame]:
    """Baseline quantiles (datetime x instrument per level): N(0, sigma_20d * sqrt(horizon))."""
    sigma = np.log(close).diff().rolling(VOLATILITY_DAYS, min_periods=VOLATILITY_DAYS).std() * np.sqrt(horizon)
    return {column: sigma * stats.norm.ppf(level) for column, level in zip(COLUMNS, LEVELS, strict=True)}


def interval_scores(table: pd.DataFrame, close: pd.DataFrame, horizon: int) -> dict[str, float]:
    """Coverage of the central 80% and 90% intervals and the mean pinball loss, for the model and the
    trailing-volatility baseline on the same (day, instrument) pairs with a known outcome."""
    keys = ["datetime", "instrument"]
    outcome = forward_returns(close, horizon).stack().rename("outcome").rename_axis(keys)
    baseline = pd.DataFrame(
        {column: frame.stack() for column, frame in trailing_volatility_quantiles(close, horizon).items()}
    ).rename_axis(keys)
    joined = (
        table.set_index(["datetime", "instrument"])
        .join(outcome, how="inner")
        .join(baseline, rsuffix="_baseline", how="inner")
        .dropna()
    )
    scores: dict[str, float] = {"forecasts_scored": float(len(joined))}
    for prefix, suffix in (("", ""), ("baseline_", "_baseline")):
        quantiles = joined[[f"{column}{suffix}" for column in COLUMNS]].to_numpy()
        y = joined["outcome"].to_numpy()[:, None]
        scores[f"{prefix}coverage_80"] = float(np.mean((y[:, 0] >= quantiles[:, 1]) & (y[:, 0] <= quantiles[:, 3])))
        scores[f"{prefix}coverage_90"] = float(np.mean((y[:, 0] >= quantiles[:, 0]) & (y[:, 0] <= quantiles[:, 4])))
        levels = np.array(LEVELS)[None, :]
        scores[f"{prefix}pinball"] = float(
            np.mean(np.maximum(levels * (y - quantiles), (levels - 1) * (y - quantiles)))
        )
    return scores
