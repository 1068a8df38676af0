"""Qlib's on-disk daily layout, read and written with numpy.

calendars/day.txt            one trading day per line (YYYY-MM-DD)
calendars/day_future.txt     the same plus future business days, for backtests to the end
instruments/<universe>.txt   SYMBOL<TAB>start<TAB>end, one membership span per line
features/<symbol>/<field>.day.bin
                             little-endian float32: [calendar index of the first value,
                             one value per calendar day from there on, NaN where missing]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from data_prep.errors import DataError

FREQ = "day"
FUTURE_DAYS = 30


SYMBOL_MAP = "symbol_map.tsv"  # instruments/: code<TAB>symbol for every symbol whose code differs


def instrument_code(symbol: str) -> str:
    """The Qlib instrument code of a symbol: a plain folder name, whatever the symbol holds.

    Characters other than letters, digits and `_.-~` are percent-encoded (`BF/B` -> `BF%2FB`,
    `../../x` -> `..%2F..%2FX` after upper-casing), and a code made of dots only is encoded whole,
    so a code never names a parent folder or a path. `urllib.parse.unquote` reverses it.
    """
    code = quote(symbol, safe="")
    return "%2E" * len(code) if set(code) == {"."} else code


def feature_path(qlib_dir: Path, code: str, field: str) -> Path:
    """features/<code lower>/<field>.day.bin, refused if it would lie outside the folder's features/."""
    features = Path(qlib_dir) / "features"
    path = features / code.lower() / f"{field}.{FREQ}.bin"
    if code in ("", ".", "..") or "/" in code or "\\" in code or path.parent.parent != features:
        raise DataError(
            f"instrument code {code!r} is not a plain folder name: it would place {path} outside {features}; "
            "Qlib folders written by this pipeline encode such symbols (see data_prep.qlib_format.instrument_code)"
        )
    return path


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
    lines = (
        spans["symbol"] + "\t" + spans["start"].dt.strftime("%Y-%m-%d") + "\t" + spans["end"].dt.strftime("%Y-%m-%d")
    )
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
        raise DataError(
            f"universe file {path}: unparsable start/end date ({exc}); expected SYMBOL<TAB>YYYY-MM-DD<TAB>YYYY-MM-DD"
        ) from exc
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


def read_feature(path: Path, calendar_days: int) -> FeatureSeries:
    """One feature file, checked against a calendar of `calendar_days` days."""
    size = Path(path).stat().st_size
    if size == 0 or size % 4:
        raise DataError(
            f"feature file {path} holds {size} bytes, not a whole number of float32 values (truncated or not "
            "a Qlib .bin file): re-export it, or remove the instrument from the folder"
        )
    raw = np.fromfile(path, dtype="<f4")
    start = raw[0]
    if not (np.isfinite(start) and start == int(start) and 0 <= start < calendar_days):
        raise DataError(
            f"feature file {path} starts at calendar index {start}, outside the calendar's {calendar_days} days "
            "(a corrupt header): re-export it, or remove the instrument from the folder"
        )
    if int(start) + raw.size - 1 > calendar_days:
        raise DataError(
            f"feature file {path} holds {raw.size - 1} days from calendar index {int(start)}, past the "
            f"calendar's {calendar_days} days (corrupt or written for another calendar): re-export it"
        )
    return FeatureSeries(start_index=int(start), values=raw[1:])


def read_aligned(paths: dict[str, Path], calendar_days: int) -> tuple[int, dict[str, np.ndarray]]:
    """Read several fields of one instrument onto their common calendar range.

    Returns the calendar index of the first value and one float64 array per field.
    """
    series = {name: read_feature(path, calendar_days) for name, path in paths.items()}
    start = min(s.start_index for s in series.values())
    stop = max(s.start_index + len(s.values) for s in series.values())
    aligned = {}
    for name, s in series.items():
        values = np.full(stop - start, np.nan)
        values[s.start_index - start : s.start_index - start + len(s.values)] = s.values
        aligned[name] = values
    return start, aligned


def init_qlib(provider_uri: Path, region: str, mlflow_uri: str | None = None, kernels: int | None = None) -> None:
    """qlib.init on a folder; Qlib's own recorder writes to the project's MLflow store.

    Qlib computes expressions (Alpha158) in `kernels` processes and defaults to two fewer than the
    CPUs, which is one process on a 2-core machine; here the default is every CPU.
    """
    import qlib

    kwargs: dict[str, Any] = {"kernels": kernels or os.cpu_count() or 1}
    if mlflow_uri is not None:
        kwargs["exp_manager"] = {
            "class": "MLflowExpManager",
            "module_path": "qlib.workflow.expm",
            "kwargs": {"uri": mlflow_uri, "default_exp_name": "qlib"},
        }
    qlib.init(provider_uri=str(provider_uri), region=region, **kwargs)
