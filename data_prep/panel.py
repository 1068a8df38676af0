"""Every instrument's daily series in one contiguous float32 array, loaded from a Qlib folder.

Instrument i owns rows `offsets[i]:offsets[i + 1]`; its row 0 is calendar day `starts[i]`, and
rows follow the calendar one per trading day (NaN where it did not trade), so a window is plain
index arithmetic and nothing is copied per window.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data_prep import qlib_format
from data_prep.errors import DataError


@dataclass(frozen=True)
class Panel:
    instruments: list[str]
    fields: tuple[str, ...]
    calendar: pd.DatetimeIndex
    values: np.ndarray  # (rows, fields) float32
    offsets: np.ndarray  # (instruments + 1,) int64
    starts: np.ndarray  # (instruments,) int64 calendar index of each instrument's first row
    member: np.ndarray  # (rows,) bool: the instrument belongs to the universe on that day

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row_instrument(self) -> np.ndarray:
        """Instrument id of every row."""
        return np.repeat(np.arange(len(self.instruments)), self.lengths)

    def row_calendar_index(self) -> np.ndarray:
        """Calendar index of every row."""
        owner = self.row_instrument()
        return self.starts[owner] + np.arange(len(self.values)) - self.offsets[owner]

    def series(self, instrument: str) -> pd.DataFrame:
        """One instrument's rows as a dated frame (for inspection and tests)."""
        i = self.instruments.index(instrument)
        lo, hi = self.offsets[i], self.offsets[i + 1]
        dates = self.calendar[self.starts[i] : self.starts[i] + hi - lo]
        return pd.DataFrame(self.values[lo:hi], index=dates, columns=list(self.fields))

    def field_frame(self, field: str) -> pd.DataFrame:
        """One field for every instrument as a (calendar day x instrument) frame, NaN outside series."""
        matrix = np.full((len(self.calendar), len(self.instruments)), np.nan, dtype=np.float32)
        column = self.fields.index(field)
        matrix[self.row_calendar_index(), self.row_instrument()] = self.values[:, column]
        return pd.DataFrame(matrix, index=self.calendar, columns=self.instruments)

    def member_frame(self) -> pd.DataFrame:
        """Universe membership as a (calendar day x instrument) boolean frame."""
        matrix = np.zeros((len(self.calendar), len(self.instruments)), dtype=bool)
        matrix[self.row_calendar_index(), self.row_instrument()] = self.member
        return pd.DataFrame(matrix, index=self.calendar, columns=self.instruments)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("values", "offsets", "starts", "member"):
            np.save(folder / f"{name}.npy", getattr(self, name))
        meta = {
            "instruments": self.instruments,
            "fields": list(self.fields),
            "calendar": list(self.calendar.strftime("%Y-%m-%d")),
        }
        (folder / "panel.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> Panel:
        meta = json.loads((folder / "panel.json").read_text())
        arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None)
            for name in ("values", "offsets", "starts", "member")
        }
        return cls(
            instruments=meta["instruments"],
            fields=tuple(meta["fields"]),
            calendar=pd.DatetimeIndex(meta["calendar"]),
            **arrays,
        )


def load_panel(qlib_dir: Path, universe: str, fields: tuple[str, ...]) -> Panel:
    """Read the universe's instruments and fields from a Qlib folder into one Panel.

    The folder's health is checked on the way (see docs/data.md, Validation): the calendar is
    refused when a line is not a date, repeats a day or is out of order; instruments without a
    feature folder, and those whose close is NaN on every day or constant, are named in a warning
    and left out; calendar days past the last data are named in a warning.
    """
    calendar = qlib_format.read_calendar(qlib_dir)
    spans = qlib_format.read_instruments(qlib_dir, universe)
    features = qlib_dir / "features"
    if not features.is_dir():
        raise DataError(f"{features} not found: a Qlib data folder needs features/<symbol>/<field>.day.bin")
    with os.scandir(features) as entries:
        folders = {entry.name for entry in entries if entry.is_dir()}
    symbols = qlib_format.instruments_with_features(
        qlib_dir, universe, list(spans["symbol"].drop_duplicates()), folders
    )

    blocks, starts = [], []
    for symbol in tqdm(symbols, desc="loading instruments", unit="symbol", leave=False):
        paths = {field: qlib_format.feature_path(qlib_dir, symbol, field) for field in fields}
        absent = [str(p) for p in paths.values() if not p.exists()]
        if absent:
            raise DataError(
                f"instrument {symbol}: missing {absent}; re-run the ingest stage or drop the field from data.fields"
            )
        start, data = qlib_format.read_aligned(paths, len(calendar))
        blocks.append(np.stack([data[field] for field in fields], axis=1).astype(np.float32))
        starts.append(start)

    offsets = _offsets(blocks)
    values = np.concatenate(blocks)
    if "close" in fields:
        unusable, reasons = qlib_format.unusable_closes(symbols, values[:, fields.index("close")], offsets)
        where = f"universe '{universe}' in {qlib_dir}"
        if unusable.all():
            raise DataError(
                f"{where}: no instrument has a usable close, so the universe is empty: {qlib_format.name_list(reasons)}"
            )
        qlib_format.warn_unusable_closes(where, reasons, "are left out of the panel")
        if unusable.any():
            symbols = [symbol for symbol, bad in zip(symbols, unusable, strict=True) if not bad]
            blocks = [block for block, bad in zip(blocks, unusable, strict=True) if not bad]
            starts = [start for start, bad in zip(starts, unusable, strict=True) if not bad]
            offsets = _offsets(blocks)
            values = np.concatenate(blocks)
        has_data = np.isfinite(values[:, fields.index("close")])
    else:  # a day holds data where any field is known
        has_data = np.count_nonzero(np.isfinite(values), axis=1) > 0
    starts_arr = np.array(starts, dtype=np.int64)
    qlib_format.warn_trailing_days(
        qlib_dir / "calendars" / f"{qlib_format.FREQ}.txt",
        calendar,
        qlib_format.last_data_index(has_data, offsets, starts_arr),
    )

    lengths = np.diff(offsets)
    member = np.zeros(offsets[-1], dtype=bool)
    symbol_id = {symbol: i for i, symbol in enumerate(symbols)}
    for symbol, start_day, end_day in spans.itertuples(index=False):  # one loop step per membership span
        i = symbol_id.get(symbol)
        if i is None:
            continue
        first = max(calendar.searchsorted(start_day, "left") - starts_arr[i], 0)
        last = min(calendar.searchsorted(end_day, "right") - starts_arr[i], lengths[i])
        if first < last:
            member[offsets[i] + first : offsets[i] + last] = True
    return Panel(
        instruments=symbols,
        fields=tuple(fields),
        calendar=calendar,
        values=values,
        offsets=offsets,
        starts=starts_arr,
        member=member,
    )


def _offsets(blocks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(block) for block in blocks])]).astype(np.int64)
