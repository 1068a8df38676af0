"""Sliding windows over a Panel, time-ordered train/valid/test splits, leak-free normalisation.

A window is identified by (instrument id, end row): its input is rows `[end - lookback + 1, end]`
and its target rows `(end, end + horizon]` of that instrument. The end row's day is the decision
day; a window belongs to a segment when its decision day lies in the segment and its whole
target does too. That purges the last `horizon` days of each segment, so no target reaches into
the next segment. Inputs may reach back into an earlier segment: that data was known then.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataError
from data_prep.panel import Panel

log = logging.getLogger(__name__)

SEGMENTS = ("train", "valid", "test")


@dataclass(frozen=True)
class SegmentReport:
    windows: int
    decision_days: int
    short_history: int  # fewer than `lookback` rows before the decision day
    no_target: int  # target runs past the segment (purge) or past the series
    missing_values: int  # NaN anywhere in the window
    not_member: int  # instrument outside the universe on the decision day


def build_windows(
    panel: Panel,
    lookback: int,
    horizon: int,
    segments: dict[str, tuple[dt.date, dt.date]],
    require_target: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, SegmentReport]]:
    """Index every valid window of every segment.

    Returns, per segment, an int64 array (n, 2) of (instrument id, end row within the
    instrument), ordered by instrument then day, and a report of what was dropped and why.
    With `require_target=False` windows need no target (for forecasting the latest days).
    """
    longest = int(panel.lengths.max())
    if lookback + (horizon if require_target else 0) > longest:
        raise DataError(
            f"split.lookback ({lookback}) + split.horizon ({horizon}) days is longer than any series "
            f"(the longest has {longest} days): lower split.lookback or split.horizon"
        )
    owner = panel.row_instrument()
    local_row = np.arange(len(panel.values)) - panel.offsets[owner]
    calendar_index = panel.starts[owner] + local_row
    lengths = panel.lengths[owner]
    has_history = local_row >= lookback - 1
    target_rows = horizon if require_target else 0
    has_target = local_row + target_rows <= lengths - 1

    # NaNs inside a window: a running count over rows, differenced at the window's edges. Edges
    # stay inside the instrument wherever has_history and has_target hold.
    bad_row = np.isnan(panel.values).any(axis=1)
    running_bad = np.concatenate([[0], np.cumsum(bad_row)])
    rows = np.arange(len(panel.values))
    first = np.clip(rows - lookback + 1, 0, None)
    last = np.clip(rows + target_rows + 1, None, len(rows))
    clean = running_bad[last] - running_bad[first] == 0

    windows, reports = {}, {}
    for name, (start, end) in segments.items():
        lo = panel.calendar.searchsorted(np.datetime64(start, "D"), "left")
        hi = panel.calendar.searchsorted(np.datetime64(end, "D"), "right") - 1
        if lo > hi:
            raise DataError(
                f"split.{name} = [{start}, {end}] holds no trading day of the data "
                f"({panel.calendar[0].date()} .. {panel.calendar[-1].date()}): move it into that range"
            )
        in_segment = (calendar_index >= lo) & (calendar_index <= hi)
        inside = calendar_index + target_rows <= hi
        member = in_segment & panel.member
        keep = member & has_history
        short = int((member & ~has_history).sum())
        no_target = int((keep & ~(has_target & inside)).sum())
        keep &= has_target & inside
        missing = int((keep & ~clean).sum())
        keep &= clean
        selected = np.flatnonzero(keep)
        windows[name] = np.stack([owner[selected], local_row[selected]], axis=1).astype(np.int64)
        reports[name] = SegmentReport(
            windows=len(selected),
            decision_days=int(hi - lo + 1),
            short_history=short,
            no_target=no_target,
            missing_values=missing,
            not_member=int((in_segment & ~panel.member).sum()),
        )
        if not len(selected):
            raise DataError(
                f"split.{name} = [{start}, {end}] yields no window ({reports[name]}): widen the segment "
                f"beyond split.horizon ({horizon}) days or lower split.lookback ({lookback})"
            )
        log.info(
            "%s: %d windows over %d days; dropped %d short history, %d without full target, %d with missing values",
            name,
            len(selected),
            hi - lo + 1,
            short,
            no_target,
            missing,
        )
    return windows, reports


class WindowSet:
    """The windows of one segment, gathered from the Panel on demand.

    `horizon` is the number of target rows served; use 0 for windows built with
    `require_target=False`, whose targets may not exist.
    """

    def __init__(self, panel: Panel, index: np.ndarray, lookback: int, horizon: int):
        self.panel, self.index, self.lookback, self.horizon = panel, index, lookback, horizon
        self.steps = np.arange(-lookback + 1, horizon + 1)  # offsets of a window's rows from its end

    def __len__(self) -> int:
        return len(self.index)

    def end_rows(self, items: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Global panel row of each window's last input row: (B,)."""
        instrument, end = self.index[items].T
        return self.panel.offsets[instrument] + end

    def end_days(self, items: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Calendar index of each window's last input row: (B,)."""
        instrument, end = self.index[items].T
        return self.panel.starts[instrument] + end

    def rows(self, items: np.ndarray) -> np.ndarray:
        """Global panel rows of the windows `items`: (B, lookback + horizon)."""
        return self.end_rows(items)[:, None] + self.steps

    def get(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw inputs (B, lookback, F) and targets (B, horizon, F)."""
        values = self.panel.values[self.rows(items)]
        return values[:, : self.lookback], values[:, self.lookback :]

    def dates(self, items: np.ndarray) -> np.ndarray:
        """Calendar days of every window row: (B, lookback + horizon) datetime64[ns]."""
        return self.panel.calendar.values[self.end_days(items)[:, None] + self.steps]

    def decision_days(self) -> np.ndarray:
        """Calendar day of every window's last input row (its decision day): (N,) datetime64[ns]."""
        return self.panel.calendar.values[self.end_days()]

    def instruments(self) -> np.ndarray:
        """Instrument name of every window: (N,)."""
        return np.array(self.panel.instruments)[self.index[:, 0]]


def normalise(inputs: np.ndarray, targets: np.ndarray | None = None, clip: float = 5.0, eps: float = 1e-5):
    """Z-score inputs (B, L, F) and targets (B, H, F) with statistics of the inputs only.

    Using the target part for the statistics would leak the future into the inputs (the known
    leak in upstream Kronos' fine-tuning data). Returns (inputs, targets, mean, std).
    """
    mean = inputs.mean(axis=1, keepdims=True)
    std = inputs.std(axis=1, keepdims=True)
    scaled_inputs = np.clip((inputs - mean) / (std + eps), -clip, clip)
    scaled_targets = None if targets is None else np.clip((targets - mean) / (std + eps), -clip, clip)
    return scaled_inputs, scaled_targets, mean, std


@dataclass(frozen=True)
class Split:
    """What the split stage produces: the panel and each segment's window index."""

    panel: Panel
    windows: dict[str, np.ndarray]
    lookback: int
    horizon: int

    def segment(self, name: str) -> WindowSet:
        return WindowSet(self.panel, self.windows[name], self.lookback, self.horizon)

    def forecast_windows(self, start: dt.date, end: dt.date) -> WindowSet:
        """Inputs for forecasting from every decision day in [start, end], targets or not.

        Unlike the split's segments this keeps the last `horizon` days, which a live signal needs;
        the returned set serves inputs only (its horizon is 0).
        """
        index, _ = build_windows(
            self.panel, self.lookback, self.horizon, {"forecast": (start, end)}, require_target=False
        )
        return WindowSet(self.panel, index["forecast"], self.lookback, 0)

    def forecast_inputs(self, start: dt.date, end: dt.date) -> ForecastInputs:
        """What every model stage forecasts from: each (decision day, instrument) in [start, end]."""
        windows = self.forecast_windows(start, end)
        values, _ = windows.get(np.arange(len(windows)))
        return ForecastInputs(self, windows, values, windows.decision_days(), windows.instruments())

    def save(self, folder: Path, extra_meta: dict | None = None) -> None:
        self.panel.save(folder / "panel")
        for name, index in self.windows.items():
            np.save(folder / f"windows_{name}.npy", index)
        meta = {
            "lookback": self.lookback,
            "horizon": self.horizon,
            "segments": list(self.windows),
            **(extra_meta or {}),
        }
        (folder / "split.json").write_text(json.dumps(meta, indent=2, default=str))

    @classmethod
    def load(cls, folder: Path) -> Split:
        meta = json.loads((folder / "split.json").read_text())
        windows = {name: np.load(folder / f"windows_{name}.npy") for name in meta["segments"]}
        return cls(Panel.load(folder / "panel"), windows, meta["lookback"], meta["horizon"])


@dataclass(frozen=True)
class ForecastInputs:
    """Every (decision day, instrument) of a forecast range with its lookback, ordered by instrument, then day."""

    split: Split
    windows: WindowSet  # inputs only (horizon 0)
    values: np.ndarray  # (N, lookback, F) raw inputs
    days: np.ndarray  # (N,) decision days, datetime64[ns]
    instruments: np.ndarray  # (N,) instrument names

    def __len__(self) -> int:
        return len(self.values)

    @property
    def fields(self) -> list[str]:
        return list(self.split.panel.fields)

    def last(self, field: str) -> np.ndarray:
        """The value of `field` on each decision day: (N,)."""
        return self.values[:, -1, self.fields.index(field)]

    def input_dates(self) -> np.ndarray:
        """Calendar day of every input row: (N, lookback)."""
        return self.windows.dates(np.arange(len(self)))

    def future_days(self) -> np.ndarray:
        """The `horizon` trading days after each decision day (business days past the calendar's end): (N, H)."""
        calendar = self.split.panel.calendar
        extended = calendar.append(pd.bdate_range(calendar[-1] + pd.Timedelta(days=1), periods=self.split.horizon))
        positions = calendar.get_indexer(pd.DatetimeIndex(self.days))[:, None] + np.arange(1, self.split.horizon + 1)
        return extended.values[positions]

    def segment_rows(self, segment: str) -> np.ndarray:
        """Rows that are also windows of the split's `segment` (their targets are known), in its order."""
        index = self.windows.index
        width = int(index[:, 1].max()) + 1
        keys = index[:, 0] * width + index[:, 1]  # ordered by instrument, then day
        wanted = self.split.windows[segment]
        positions = np.searchsorted(keys, wanted[:, 0] * width + wanted[:, 1])
        if not np.array_equal(index[np.minimum(positions, len(keys) - 1)], wanted):
            raise RuntimeError(
                f"some {segment} windows are missing from the forecast windows; the split is inconsistent"
            )
        return positions
