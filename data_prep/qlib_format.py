"""Qlib's on-disk daily layout, read and written with numpy.

    calendars/day.txt            one trading day per line (YYYY-MM-DD)
    calendars/day_future.txt     the same plus future business days, for backtests to the end
    instruments/<universe>.txt   SYMBOL<TAB>start<TAB>end, one membership span per line
    features/<symbol>/<field>.day.bin
                                 little-endian float32: [calendar index of the first value,
                                 one value per calendar day from there on, NaN where missing]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataError

FREQ = "day"
FUTURE_DAYS = 30


def feature_path(qlib_dir: Path, symbol: str, field: str) -> Path:
    return qlib_dir / "features" / symbol.lower() / f"{field}.{FREQ}.bin"


def write_calendar(qlib_dir: Path, calendar: pd.DatetimeIndex) -> None:
    """Write day.txt and day_future.txt (the calendar plus FUTURE_DAYS business days)."""
    folder = qlib_dir / "calendars"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{FREQ}.txt").write_text("\n".join(calendar.strftime("%Y-%m-%d")) + "\n")
    write_future_calendar(folder / f"{FREQ}_future.txt", calendar)


def write_future_calendar(path: Path, calendar: pd.DatetimeIndex) -> None:
    # Qlib's executor asks for the bar after the last one; without future days a backtest
    # that ends on the last calendar day fails.
    future = pd.bdate_range(calendar[-1] + pd.Timedelta(days=1), periods=FUTURE_DAYS)
    path.write_text("\n".join(calendar.append(future).strftime("%Y-%m-%d")) + "\n")


def read_calendar(qlib_dir: Path) -> pd.DatetimeIndex:
    path = qlib_dir / "calendars" / f"{FREQ}.txt"
    if not path.is_file():
        raise DataError(f"{path} not found: a Qlib data folder needs calendars/{FREQ}.txt")
    calendar = pd.DatetimeIndex(pd.to_datetime(path.read_text().split()))
    if calendar.empty:
        raise DataError(f"{path} is empty: the Qlib calendar needs at least one trading day")
    return calendar


def write_instruments(qlib_dir: Path, universe: str, spans: pd.DataFrame) -> None:
    """spans: columns symbol, start, end (one row per membership span)."""
    folder = qlib_dir / "instruments"
    folder.mkdir(parents=True, exist_ok=True)
    lines = spans["symbol"] + "\t" + spans["start"].dt.strftime("%Y-%m-%d") + "\t" + spans["end"].dt.strftime("%Y-%m-%d")
    (folder / f"{universe}.txt").write_text("\n".join(lines) + "\n")


def read_instruments(qlib_dir: Path, universe: str) -> pd.DataFrame:
    """Membership spans of a universe: columns symbol, start, end."""
    path = qlib_dir / "instruments" / f"{universe}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in (qlib_dir / "instruments").glob("*.txt"))
        raise DataError(f"universe file {path} not found: set data.instruments to one of {available}")
    spans = pd.read_csv(path, sep="\t", header=None, names=["symbol", "start", "end"], dtype=str)
    if spans.empty:
        raise DataError(f"universe file {path} lists no instruments: the universe is empty")
    try:
        spans["start"] = pd.to_datetime(spans["start"])
        spans["end"] = pd.to_datetime(spans["end"])
    except (ValueError, TypeError) as exc:
        raise DataError(f"universe file {path}: unparsable start/end date ({exc}); expected SYMBOL<TAB>YYYY-MM-DD<TAB>YYYY-MM-DD") from exc
    spans["symbol"] = spans["symbol"].str.strip().str.upper()
    return spans


def write_feature(path: Path, start_index: int, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = np.empty(len(values) + 1, dtype="<f4")
    payload[0] = start_index
    payload[1:] = values
    payload.tofile(path)


@dataclass(frozen=True)
class FeatureSeries:
    start_index: int  # calendar index of values[0]
    values: np.ndarray  # float32, one per calendar day


def read_feature(path: Path) -> FeatureSeries:
    raw = np.fromfile(path, dtype="<f4")
    if raw.size == 0:
        raise DataError(f"feature file {path} is empty: expected a start index followed by daily values")
    return FeatureSeries(start_index=int(raw[0]), values=raw[1:])


def read_aligned(paths: dict[str, Path]) -> tuple[int, dict[str, np.ndarray]]:
    """Read several fields of one instrument onto their common calendar range.

    Returns the calendar index of the first value and one float64 array per field.
    """
    series = {name: read_feature(path) for name, path in paths.items()}
    start = min(s.start_index for s in series.values())
    stop = max(s.start_index + len(s.values) for s in series.values())
    aligned = {}
    for name, s in series.items():
        values = np.full(stop - start, np.nan)
        values[s.start_index - start : s.start_index - start + len(s.values)] = s.values
        aligned[name] = values
    return start, aligned


def init_qlib(provider_uri: Path, region: str, mlflow_uri: str | None = None) -> None:
    """qlib.init on a folder; Qlib's own recorder writes to the project's MLflow store."""
    import qlib

    kwargs = {}
    if mlflow_uri is not None:
        kwargs["exp_manager"] = {
            "class": "MLflowExpManager",
            "module_path": "qlib.workflow.expm",
            "kwargs": {"uri": mlflow_uri, "default_exp_name": "qlib"},
        }
    qlib.init(provider_uri=str(provider_uri), region=region, **kwargs)
