"""Qlib's on-disk daily layout, read and written with numpy.

calendars/day.txt            one trading day per line (YYYY-MM-DD)
calendars/day_future.txt     the same plus future business days, for backtests to the end
instruments/<universe>.txt   SYMBOL<TAB>start<TAB>end, one membership span per line
features/<symbol>/<field>.day.bin
                             little-endian float32: [calendar index of the first value,
                             one value per calendar day from there on, NaN where missing]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from data_prep.errors import DataError

log = logging.getLogger(__name__)

FREQ = "day"
FUTURE_DAYS = 30
MAX_LINES = 5  # calendar lines named in one message
MAX_NAMED = 20  # instruments named in one message


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
    """calendars/day.txt, checked: every line a valid date, each day once, in increasing order."""
    path = qlib_dir / "calendars" / f"{FREQ}.txt"
    if not path.is_file():
        raise DataError(f"{path} not found: a Qlib data folder needs calendars/{FREQ}.txt")
    calendar = parse_calendar(path)
    if calendar.empty:
        raise DataError(f"{path} is empty: the Qlib calendar needs at least one trading day")
    return calendar


def parse_calendar(path: Path) -> pd.DatetimeIndex:
    """A calendar file's days; a DataError names the lines at fault (blank lines are skipped).

    Feature files index the calendar by line, so a duplicated day shifts every later bar by one
    day and days out of order put bars on the wrong dates: both are refused, as are lines that
    are not dates (such as 2019-02-30).
    """
    text = pd.Series(path.read_text().splitlines(), dtype=object).str.strip()
    text = text[text != ""]
    lines = text.index.to_numpy() + 1  # 1-based line numbers of the non-blank lines
    days = pd.to_datetime(text, format="ISO8601", errors="coerce")

    invalid = np.flatnonzero(days.isna().to_numpy())
    if invalid.size:
        raise DataError(
            f"{path}: {invalid.size} line(s) are not dates (expected YYYY-MM-DD): "
            + "; ".join(f"line {lines[i]} {text.iloc[i]!r}" for i in invalid[:MAX_LINES])
            + _more(invalid.size, MAX_LINES)
            + ". Correct each to the trading day it stands for (removing a line shifts every later bar one day)"
        )
    values = days.to_numpy(dtype="datetime64[ns]")
    dates = values.astype("datetime64[D]")  # a daily calendar holds each date once, whatever its time of day
    repeated = np.flatnonzero(pd.Index(dates).duplicated(keep="first"))
    if repeated.size:
        first_line = pd.Series(lines, index=dates).groupby(level=0).first()
        shown = repeated[:MAX_LINES]
        raise DataError(
            f"{path}: {repeated.size} day(s) appear more than once, which shifts every later bar by one day: "
            + "; ".join(f"line {lines[i]} repeats {_day(values[i])} of line {first_line[dates[i]]}" for i in shown)
            + _more(repeated.size, MAX_LINES)
            + ". Remove the duplicate line(s) "
            + ", ".join(str(lines[i]) for i in shown)
        )
    backwards = np.flatnonzero(np.diff(values) < np.timedelta64(0, "ns")) + 1
    if backwards.size:
        raise DataError(
            f"{path}: the days are not in increasing order, so bars would be read on the wrong dates: "
            + "; ".join(
                f"line {lines[i]} ({_day(values[i])}) comes after line {lines[i - 1]} ({_day(values[i - 1])})"
                for i in backwards[:MAX_LINES]
            )
            + _more(backwards.size, MAX_LINES)
            + ". Put the lines in date order if the feature files were written for that order, "
            "otherwise re-export the folder"
        )
    return pd.DatetimeIndex(values)


def check_future_calendar(path: Path, calendar: pd.DatetimeIndex) -> None:
    """calendars/day_future.txt must be a valid calendar holding every day of day.txt."""
    future = parse_calendar(path)
    absent = calendar[~calendar.isin(future)]
    if len(absent):
        raise DataError(
            f"{path} lacks {len(absent)} day(s) of {path.with_name(f'{FREQ}.txt')}, e.g. "
            f"{', '.join(_day(day) for day in absent[:MAX_LINES])}: it must extend that calendar. "
            "Delete it (the view then writes one) or re-export it"
        )


def _day(value: Any) -> str:
    return str(pd.Timestamp(value).date())


def _more(count: int, shown: int) -> str:
    return f" and {count - shown} more" if count > shown else ""


def name_list(names: list[str]) -> str:
    """The first MAX_NAMED names, comma-separated, and how many more."""
    return ", ".join(names[:MAX_NAMED]) + _more(len(names), MAX_NAMED)


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


def instruments_with_features(qlib_dir: Path, universe: str, listed: list[str], folders: Container[str]) -> list[str]:
    """The universe's instruments that have a feature folder (`folders`: folder names in lower case).

    An instrument listed without a folder has no data at all: it is named in a warning and left
    out; a universe none of whose instruments has a folder is refused.
    """
    have = [symbol for symbol in listed if symbol.lower() in folders]
    missing = [symbol for symbol in listed if symbol.lower() not in folders]
    universe_file = qlib_dir / "instruments" / f"{universe}.txt"
    features = qlib_dir / "features"
    if not have:
        raise DataError(
            f"universe file {universe_file}: none of its {len(listed)} instruments ({name_list(missing)}) has a folder "
            f"under {features}, so the universe is empty: check data.instruments, or that the folder holds "
            "features/<instrument in lower case>/<field>.day.bin"
        )
    if missing:
        log.warning(
            "universe file %s: %d of its %d instruments have no folder under %s (no data at all) and are left out: %s",
            universe_file,
            len(missing),
            len(listed),
            features,
            name_list(missing),
        )
    return have


def unusable_closes(names: list[str], close: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Instruments whose close is NaN on every day or constant (zero variance): a mask and one line each.

    `close` holds every instrument's series one after another, instrument i in rows
    `offsets[i]:offsets[i + 1]`. A constant series (two or more days, one value) cannot be
    normalised; a single day is only a short series and passes.
    """
    count = len(names)
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(count), lengths)
    finite = np.isfinite(close)
    days = np.bincount(owner[finite], minlength=count)
    low = np.full(count, np.inf)
    high = np.full(count, -np.inf)
    filled = lengths > 0
    if filled.any():  # reduceat over the non-empty series only: an empty one would take its neighbour's row
        low[filled] = np.minimum.reduceat(np.where(finite, close, np.inf), offsets[:-1][filled])
        high[filled] = np.maximum.reduceat(np.where(finite, close, -np.inf), offsets[:-1][filled])
    all_nan = days == 0
    unusable = all_nan | ((days >= 2) & (low == high))
    reasons = [
        f"{names[i]} (close is NaN on all {lengths[i]} days)"
        if all_nan[i]
        else f"{names[i]} (close is {low[i]:g} on all {days[i]} days with data)"
        for i in np.flatnonzero(unusable)
    ]
    return unusable, reasons


def warn_unusable_closes(where: str, reasons: list[str], consequence: str) -> None:
    if reasons:
        log.warning(
            "%s: %d instrument(s) have no usable close (NaN on every day, or one constant value that cannot be "
            "normalised) and %s: %s",
            where,
            len(reasons),
            consequence,
            name_list(reasons),
        )


def warn_trailing_days(path: Path, calendar: pd.DatetimeIndex, last_index: int | None) -> None:
    """Warn when the calendar runs past `last_index`, the last calendar day on which any instrument has data."""
    if last_index is None or last_index >= len(calendar) - 1:
        return
    trailing = len(calendar) - 1 - last_index
    log.warning(
        "%s runs %d trading day(s) past the last data: no instrument has data after %s (the calendar ends %s). "
        "Segments and backtests that reach past %s see no bars: end them by that day, or add the missing data",
        path,
        trailing,
        _day(calendar[last_index]),
        _day(calendar[-1]),
        _day(calendar[last_index]),
    )


def last_data_index(has_data: np.ndarray, offsets: np.ndarray, starts: np.ndarray) -> int | None:
    """The last calendar index on which any row marked `has_data` lies (rows laid out as in a Panel)."""
    filled = np.diff(offsets) > 0
    if not filled.any():
        return None
    marked = np.where(has_data, np.arange(len(has_data)), -1)
    last_row = np.maximum.reduceat(marked, offsets[:-1][filled])  # per non-empty series; -1 where it has none
    found = last_row >= 0
    if not found.any():
        return None
    return int((starts[filled][found] + last_row[found] - offsets[:-1][filled][found]).max())


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
    CPUs, which is one process on a 2-core machine; here the default is every CPU. Qlib forks those
    processes: in a process that already runs threads (MLflow's, torch's) pass 1, since a fork can
    copy a lock another thread holds and hang.
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
