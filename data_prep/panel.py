"""Every instrument's daily series in one contiguous float32 array, loaded from a Qlib folder.

Instrument i owns rows `offsets[i]:offsets[i + 1]`; its row 0 is calendar day `starts[i]`, and
rows follow the calendar one per trading day (NaN where it did not trade), so a window is plain
index arithmetic and nothing is copied per window.
"""

from __future__ import annotations

import json
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
    """Read the universe's instruments and fields from a Qlib folder into one Panel."""
    calendar = qlib_format.read_calendar(qlib_dir)
    spans = qlib_format.read_instruments(qlib_dir, universe)
    symbols = [s for s in spans["symbol"].drop_duplicates() if (qlib_dir / "features" / s.lower()).is_dir()]
    if not symbols:
        raise DataError(f"universe '{universe}' in {qlib_dir} has no instrument with data: the universe is empty")

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

    lengths = np.array([len(block) for block in blocks])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    starts_arr = np.array(starts, dtype=np.int64)
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
        values=np.concatenate(blocks),
        offsets=offsets,
        starts=starts_arr,
        member=member,
    )
