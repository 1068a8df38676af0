"""Turn validated bars into a Qlib data folder, or adapt an existing Qlib folder in place.

Both paths produce a folder that Qlib reads with `qlib.init(provider_uri=...)` and that holds
every field later stages use: open, high, low, close, volume, amount, factor, vwap, change,
plus `calendars/day_future.txt` so a backtest can run to the last day.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data_prep import qlib_format
from data_prep.errors import DataError
from data_prep.sources import MAX_REPORTED, Rejects, jump_mask

log = logging.getLogger(__name__)

PRICE_FIELDS = ("open", "high", "low", "close")
# `change` above this multiple of the close-to-close return means the file stores percent.
PERCENT_CHANGE_RATIO = 20.0


@dataclass(frozen=True)
class IngestSummary:
    instruments: int
    days: int
    rows: int
    first_day: str
    last_day: str
    derived_fields: dict[str, int]  # field -> number of instruments it was derived for
    encoded_symbols: int  # symbols whose instrument code differs (see qlib_format.instrument_code)
    missing_rows: int  # rows kept with a missing price or volume
    jump_rejects: Rejects  # rows or days removed by data.max_daily_move

    def as_dict(self) -> dict:
        return asdict(self)


def derive_amount(volume: np.ndarray, prices: np.ndarray) -> np.ndarray:
    """Traded value when the source has none: volume x mean(open, high, low, close)."""
    return volume * prices.mean(axis=0)


def derive_change(close: np.ndarray) -> np.ndarray:
    """Close-to-close return as a fraction, against the last traded close (rows = instruments)."""
    last_close = pd.DataFrame(close).ffill(axis=1).shift(1, axis=1).to_numpy()
    return close / last_close - 1.0


def derive_vwap(amount: np.ndarray, volume: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(volume > 0, amount / volume, np.nan)


def write_qlib_folder(bars: pd.DataFrame, qlib_dir: Path, universe: str) -> IngestSummary:
    """Write validated long-format bars (see data_prep.sources) as a Qlib folder.

    Each symbol becomes a Qlib instrument code that is a plain folder name; the codes that
    differ from their symbols are listed in instruments/symbol_map.tsv.
    """
    calendar = pd.DatetimeIndex(np.sort(bars["date"].unique()))
    day_index = calendar.get_indexer(bars["date"])
    symbol_codes, names = pd.factorize(bars["symbol"], sort=True)
    symbols = pd.Index([qlib_format.instrument_code(name) for name in names])
    encoded = pd.DataFrame({"code": symbols, "symbol": names})[symbols != names]

    def dense(column: str) -> np.ndarray:  # (instruments, days), NaN where a symbol has no bar
        matrix = np.full((len(symbols), len(calendar)), np.nan)
        matrix[symbol_codes, day_index] = bars[column].to_numpy(dtype=np.float64)
        return matrix

    fields = {name: dense(name) for name in PRICE_FIELDS + ("volume",)}
    derived = {}
    for name, make in (
        ("amount", lambda: derive_amount(fields["volume"], np.stack([fields[p] for p in PRICE_FIELDS]))),
        ("factor", lambda: np.where(np.isnan(fields["close"]), np.nan, 1.0)),
        ("vwap", lambda: derive_vwap(fields["amount"], fields["volume"])),
    ):
        if name in bars:
            fields[name] = dense(name)
        else:
            fields[name] = make()
            derived[name] = len(symbols)
    fields["change"] = derive_change(fields["close"])
    derived["change"] = len(symbols)

    first_day = np.full(len(symbols), len(calendar))
    last_day = np.full(len(symbols), -1)
    np.minimum.at(first_day, symbol_codes, day_index)
    np.maximum.at(last_day, symbol_codes, day_index)

    qlib_format.write_calendar(qlib_dir, calendar)
    spans = pd.DataFrame({"symbol": symbols, "start": calendar[first_day], "end": calendar[last_day]})
    for name in {"all", universe}:
        qlib_format.write_instruments(qlib_dir, name, spans)
    encoded.to_csv(qlib_dir / "instruments" / qlib_format.SYMBOL_MAP, sep="\t", index=False)
    for code, symbol in enumerate(tqdm(symbols, desc="writing Qlib features", unit="symbol", leave=False)):
        lo, hi = first_day[code], last_day[code] + 1
        for name, matrix in fields.items():
            qlib_format.write_feature(qlib_format.feature_path(qlib_dir, symbol, name), lo, matrix[code, lo:hi])
    return IngestSummary(
        instruments=len(symbols),
        days=len(calendar),
        rows=len(bars),
        first_day=str(calendar[0].date()),
        last_day=str(calendar[-1].date()),
        derived_fields=derived,
        encoded_symbols=len(encoded),
        missing_rows=int(bars[[*PRICE_FIELDS, "volume"]].isna().any(axis=1).sum()),
        jump_rejects=Rejects(0, []),  # the reader filters jumps (data_prep.sources.filter_jumps)
    )


def link_qlib_folder(source: Path, view_dir: Path, universe: str, max_daily_move: float | None) -> IngestSummary:
    """Expose an existing Qlib folder through `view_dir` without copying or modifying it.

    The view links every file of the source, with feature folders and files in lower case (Qlib
    looks them up that way), adds `day_future.txt` when the source has none, and writes the
    fields the pipeline needs but the source lacks (amount, factor, vwap, change), plus a
    fractional `change` where the source stores percent. Every feature file is checked against
    the calendar; with `max_daily_move`, days whose close jumps further are blanked in the view.
    """
    source = Path(source).resolve()
    if not source.is_dir():
        raise DataError(f"Qlib folder {source} not found: set data.provider_uri to an existing Qlib data folder")
    calendar = qlib_format.read_calendar(source)
    members = qlib_format.read_instruments(source, universe)
    features_dir = source / "features"
    if not features_dir.is_dir():
        raise DataError(f"{features_dir} not found: a Qlib data folder needs features/<symbol>/<field>.day.bin")
    feature_dirs = {p.name.lower(): p for p in features_dir.iterdir() if p.is_dir()}
    qlib_format.instruments_with_features(source, universe, list(members["symbol"].drop_duplicates()), feature_dirs)
    future_calendar = source / "calendars" / "day_future.txt"
    if future_calendar.is_file():
        qlib_format.check_future_calendar(future_calendar, calendar)

    (view_dir / "calendars").mkdir(parents=True)
    os.symlink(source / "calendars" / "day.txt", view_dir / "calendars" / "day.txt")
    if future_calendar.is_file():
        os.symlink(future_calendar, view_dir / "calendars" / "day_future.txt")
    else:
        qlib_format.write_future_calendar(view_dir / "calendars" / "day_future.txt", calendar)
    (view_dir / "instruments").mkdir()
    for path in (source / "instruments").glob("*.txt"):
        os.symlink(path, view_dir / "instruments" / path.name)

    derived: dict[str, int] = {}
    jumps: list[str] = []
    closes: list[np.ndarray] = []
    starts: list[int] = []
    for name, folder in tqdm(sorted(feature_dirs.items()), desc="linking Qlib features", unit="symbol", leave=False):
        target = view_dir / "features" / name
        target.mkdir(parents=True)
        files = {p.name.lower(): p for p in folder.glob("*.bin") if p.name.lower().endswith(f".{qlib_format.FREQ}.bin")}
        for file_name, path in files.items():
            os.symlink(path, target / file_name)
        written, rejected, start, close = _complete_fields(folder, target, files, calendar, max_daily_move)
        for field in written:
            derived[field] = derived.get(field, 0) + 1
        jumps += rejected
        closes.append(close)
        starts.append(start)
    _check_closes(source, calendar, sorted(feature_dirs), closes, starts)
    if derived:
        log.info("derived fields missing from %s: %s (instruments per field)", source, derived)
    if jumps:
        assert max_daily_move is not None  # days are only rejected as jumps under a limit
        log.warning(
            "data.max_daily_move %.0f%%: %d day(s) blanked as price jumps, e.g. %s",
            100 * max_daily_move,
            len(jumps),
            "; ".join(jumps[:MAX_REPORTED]),
        )
    return IngestSummary(
        instruments=len(feature_dirs),
        days=len(calendar),
        rows=0,
        first_day=str(calendar[0].date()),
        last_day=str(calendar[-1].date()),
        derived_fields=derived,
        encoded_symbols=0,
        missing_rows=0,
        jump_rejects=Rejects(len(jumps), jumps[:MAX_REPORTED]),
    )


def _check_closes(
    source: Path, calendar: pd.DatetimeIndex, names: list[str], closes: list[np.ndarray], starts: list[int]
) -> None:
    """Warn about instruments without a usable close and about calendar days past the last close."""
    offsets = np.concatenate([[0], np.cumsum([len(close) for close in closes])]).astype(np.int64)
    close = np.concatenate(closes) if closes else np.empty(0)
    _, reasons = qlib_format.unusable_closes([name.upper() for name in names], close, offsets)
    qlib_format.warn_unusable_closes(f"Qlib folder {source}", reasons, "will be left out of the panel")
    qlib_format.warn_trailing_days(
        source / "calendars" / f"{qlib_format.FREQ}.txt",
        calendar,
        qlib_format.last_data_index(np.isfinite(close), offsets, np.array(starts, dtype=np.int64)),
    )


def _complete_fields(
    folder: Path, target: Path, files: dict[str, Path], calendar: pd.DatetimeIndex, max_daily_move: float | None
) -> tuple[list[str], list[str], int, np.ndarray]:
    """Write the fields this instrument lacks into the view, and blank jump days in every field.

    Returns the derived fields, the rejected days ("file date (close=...)"), and the calendar
    index of the first value and the close series as the source stores them.
    """
    required = PRICE_FIELDS + ("volume",)
    absent = [name for name in required if f"{name}.{qlib_format.FREQ}.bin" not in files]
    if absent:
        raise DataError(f"{folder}: missing {absent}; every instrument needs open, high, low, close and volume")
    start, data = qlib_format.read_aligned({name.split(".")[0]: path for name, path in files.items()}, len(calendar))
    derived = {}
    if "amount" not in data:
        derived["amount"] = derive_amount(data["volume"], np.stack([data[p] for p in PRICE_FIELDS]))
    if "factor" not in data:
        derived["factor"] = np.where(np.isnan(data["close"]), np.nan, 1.0)
    if "vwap" not in data:
        amount = data["amount"] if "amount" in data else derived["amount"]  # derived above when absent
        derived["vwap"] = derive_vwap(amount, data["volume"])
    fractional = derive_change(data["close"][None, :])[0]
    if "change" not in data or _stored_in_percent(data["change"], fractional):
        derived["change"] = fractional
    fields, derived_names = {**data, **derived}, list(derived)
    rejected: list[str] = []
    if max_daily_move is not None:
        jumps = jump_mask(data["close"], np.zeros(len(data["close"]), dtype=np.int64), max_daily_move)
        rejected = [
            f"{files['close.day.bin']} {calendar[start + day].date()} (close={data['close'][day]:g})"
            for day in np.flatnonzero(jumps)
        ]
        if rejected:
            derived = {name: np.where(jumps, np.nan, values) for name, values in fields.items()}  # every field, blanked
    for name, values in derived.items():
        path = target / f"{name}.{qlib_format.FREQ}.bin"
        if path.is_symlink():
            path.unlink()
        qlib_format.write_feature(path, start, values)
    return derived_names, rejected, start, data["close"]


def _stored_in_percent(stored: np.ndarray, fractional: np.ndarray) -> bool:
    both = np.isfinite(stored) & np.isfinite(fractional) & (fractional != 0)
    if both.sum() < 5:
        return False
    return np.median(np.abs(stored[both])) > PERCENT_CHANGE_RATIO * np.median(np.abs(fractional[both]))
