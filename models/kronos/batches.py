"""Training batches for Kronos from a WindowSet: normalised windows and calendar stamps.

A batch may use a shorter context than the split's lookback (cut from the left) so the models
learn the variable lengths they meet at inference; normalisation statistics always come from
the (cut) context part only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from data_prep.windows import WindowSet


def time_features(dates: np.ndarray) -> np.ndarray:
    """datetime64 array (...,) -> (..., 5) int64: minute, hour, weekday, day, month."""
    index = pd.DatetimeIndex(dates.ravel())
    stamps = np.stack([index.minute, index.hour, index.weekday, index.day, index.month], axis=-1)
    return stamps.reshape(*dates.shape, 5).astype(np.int64)


class DeviceWindows:
    """A WindowSet's panel and calendar stamps moved to `device` once; batches are gathered there.

    A training step then costs a few device gathers instead of numpy fancy indexing, a pandas
    calendar and a host-to-device copy.
    """

    def __init__(self, windows: WindowSet, device: torch.device):
        self.lookback = windows.lookback
        self.values = torch.from_numpy(np.array(windows.panel.values, dtype=np.float32)).to(device)  # (panel rows, F)
        self.stamps = torch.from_numpy(time_features(windows.panel.calendar.values)).to(device)  # (calendar days, 5)
        self.end_rows = torch.from_numpy(windows.end_rows()).to(device)  # each window's last input row
        self.end_days = torch.from_numpy(windows.end_days()).to(device)
        self.offsets = torch.from_numpy(windows.steps).to(device)  # rows from the window's end

    def __len__(self) -> int:
        return len(self.end_rows)

    def batch(
        self, items: torch.Tensor, context: int, clip: float, eps: float = 1e-5
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows `items` (device tensor) with the last `context` lookback rows and the full target.

        Returns x (B, context + horizon, F) normalised with the context's statistics and clipped (as
        data_prep.windows.normalise does on the host), and stamps (B, context + horizon, 5).
        """
        offsets = self.offsets[self.lookback - context :]
        values = self.values[self.end_rows[items, None] + offsets]
        inputs = values[:, :context]
        mean, std = inputs.mean(1, keepdim=True), inputs.std(1, keepdim=True, correction=0)
        return ((values - mean) / (std + eps)).clamp(-clip, clip), self.stamps[self.end_days[items, None] + offsets]


def draw_context(rng: np.random.Generator, lookback: int, min_context: int, random_share: float) -> int:
    """Full lookback for most batches; a uniform length in [min_context, lookback] for a share."""
    if random_share > 0 and rng.random() < random_share:
        return int(rng.integers(min(min_context, lookback), lookback + 1))
    return lookback
