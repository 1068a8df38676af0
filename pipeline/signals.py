"""From a model's Forecast to a source's files: the signal table, its horizon-return quantiles
and the arrays behind the scores. Every forecasting stage writes its outputs through here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.interface import Forecast
from pipeline.contract import FORECASTS, quantile_path, signal_path
from strategies.signal_table import make_signal_table, write_signal_table


def write_forecast(forecast: Forecast, source: str, out: Path) -> pd.DataFrame:
    """Write `source`'s signal table for the (day, instrument) rows of `forecast` and, where the
    forecast has them, the quantiles of its horizon return and the arrays behind them (`forecasts.npz`).
    Returns the signal table."""
    from evaluation.probabilistic import LEVELS, quantile_table

    table = make_signal_table(forecast.days, forecast.instruments, forecast.score, forecast.score_std, source)
    write_signal_table(table, out / signal_path(source))
    if forecast.has_quantiles:
        (out / quantile_path(source)).parent.mkdir(parents=True, exist_ok=True)
        quantiles = quantile_table(forecast.days, forecast.instruments, forecast.return_quantiles(LEVELS))
        quantiles.to_parquet(out / quantile_path(source), index=False)
    arrays = forecast.arrays()
    if arrays:
        np.savez_compressed(out / FORECASTS, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    return table
