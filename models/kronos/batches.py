"""Training batches for Kronos from a WindowSet: normalised windows and calendar stamps.

A batch may use a shorter context than the split's lookback (cut from the left) so the models
learn the variable lengths they meet at inference; normalisation statistics always come from
the (cut) context part only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from data_prep.windows import WindowSet, normalise


def time_features(dates: np.ndarray) -> np.ndarray:
    """datetime64 array (...,) -> (..., 5) int64: minute, hour, weekday, day, month."""
    index = pd.DatetimeIndex(dates.ravel())
    stamps = np.stack([index.minute, index.hour, index.weekday, index.day, index.month], axis=-1)
    return stamps.reshape(*dates.shape, 5).astype(np.int64)


def make_batch(windows: WindowSet, items: np.ndarray, context: int, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows `items` with the last `context` lookback rows and the full target.

    Returns x (B, context + horizon, F) normalised with the context's statistics and clipped,
    and stamps (B, context + horizon, 5).
    """
    inputs, targets = windows.get(items)
    inputs = inputs[:, inputs.shape[1] - context :]
    scaled_inputs, scaled_targets, _, _ = normalise(inputs, targets, clip)
    x = np.concatenate([scaled_inputs, scaled_targets], axis=1).astype(np.float32)
    dates = windows.dates(items)[:, windows.lookback - context :]
    return torch.from_numpy(x), torch.from_numpy(time_features(dates))


def draw_context(rng: np.random.Generator, lookback: int, min_context: int, random_share: float) -> int:
    """Full lookback for most batches; a uniform length in [min_context, lookback] for a share."""
    if random_share > 0 and rng.random() < random_share:
        return int(rng.integers(min(min_context, lookback), lookback + 1))
    return lookback
