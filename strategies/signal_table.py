"""The signal table every source writes and every backtest reads.

One row per (datetime, instrument): `score` is the expected return over the horizon, known at the
close of `datetime` and traded on the next bar; `score_std` its uncertainty (NaN when the
source has none); `model` the source's name. Stored as Parquet, written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataError

SIGNAL_COLUMNS = ("datetime", "instrument", "score", "score_std", "model")


def make_signal_table(dates, instruments, score, score_std, model: str) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "datetime": pd.to_datetime(np.asarray(dates)),
            "instrument": np.asarray(instruments, dtype=object).astype(str),
            "score": np.asarray(score, dtype=np.float64),
            "score_std": np.asarray(score_std, dtype=np.float64) if score_std is not None else np.nan,
            "model": model,
        }
    )
    return table.sort_values(["datetime", "instrument"], kind="stable").reset_index(drop=True)


def write_signal_table(table: pd.DataFrame, path: Path) -> None:
    check_signal_table(table, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    table.loc[:, list(SIGNAL_COLUMNS)].to_parquet(partial, index=False)
    partial.replace(path)


def read_signal_table(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise DataError(f"signal file {path} not found: run the stage that writes it")
    table = pd.read_parquet(path)
    check_signal_table(table, str(path))
    return table


def check_signal_table(table: pd.DataFrame, where: str) -> None:
    """Schema checks that hold for every source; content checks against data live in the backtest."""
    missing = [column for column in SIGNAL_COLUMNS if column not in table]
    if missing:
        raise DataError(f"signal table {where}: missing column(s) {missing}; expected {list(SIGNAL_COLUMNS)}")
    duplicated = table.duplicated(["datetime", "instrument"])
    if duplicated.any():
        first = table.loc[duplicated, ["datetime", "instrument"]].iloc[0].tolist()
        raise DataError(
            f"signal table {where}: {int(duplicated.sum())} duplicate (datetime, instrument) rows, first {first}"
        )
