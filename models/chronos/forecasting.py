"""Chronos-2 quantile forecasts of the close, with the other fields as past-only covariates.

Two entry points with the same input layout, (N, L, F) arrays where NaN marks a missing value:
`pipeline_quantiles` goes through the package's `Chronos2Pipeline.predict` (its batching, its
long-horizon unrolling), and `model_quantiles` calls the model's forward directly, which training
needs for gradients. Covariates follow the package's convention: each series is a group of rows,
the target first and its covariates after it, and only the target rows are forecast.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

INSTALL_HINT = 'pip install -e ".[chronos]" (the chronos-forecasting package)'


def require_chronos() -> None:
    if importlib.util.find_spec("chronos") is None:
        raise ImportError(f"Chronos-2 needs the optional extra: {INSTALL_HINT}")


def load_pipeline(source: str, device: torch.device):
    """`Chronos2Pipeline.from_pretrained(hub id or folder)`, in eval mode on `device`."""
    require_chronos()
    from chronos import Chronos2Pipeline

    pipeline = Chronos2Pipeline.from_pretrained(source, dtype=torch.float32)
    pipeline.model.to(device).eval()
    return pipeline


def pipeline_for(model):
    """A `Chronos2Pipeline` around a `Chronos2Model` built here (the distilled student)."""
    from chronos import Chronos2Pipeline

    return Chronos2Pipeline(model)


def quantile_levels(model) -> list[float]:
    return list(model.chronos_config.quantiles)


def prediction_length(model) -> int:
    """Steps the model forecasts in one forward pass (longer horizons need unrolling)."""
    config = model.chronos_config
    return config.max_output_patches * config.output_patch_size


def grouped_rows(values: torch.Tensor, target: int, covariates: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, F) -> context (B * G, L) with each series' target row first, then its covariate
    rows, and group ids (B * G,) so that attention mixes rows of one series only."""
    channels = [target, *covariates]
    batch, length, _ = values.shape
    context = values[..., channels].permute(0, 2, 1).reshape(batch * len(channels), length)
    group_ids = torch.arange(batch, device=values.device).repeat_interleave(len(channels))
    return context, group_ids


def model_quantiles(model, values: torch.Tensor, target: int, covariates: list[int], horizon: int) -> torch.Tensor:
    """Quantile forecasts (B, Q, horizon) of the target channel from one forward pass."""
    context, group_ids = grouped_rows(values, target, covariates)
    patches = -(-horizon // model.chronos_config.output_patch_size)
    output = model(context=context, group_ids=group_ids, num_output_patches=patches)
    return output.quantile_preds[:: 1 + len(covariates), :, :horizon]  # target rows only


@torch.no_grad()
def pipeline_quantiles(
    pipeline,
    values: np.ndarray,
    target: int,
    covariates: list[int],
    names: list[str],
    horizon: int,
    batch_size: int = 256,
    label: str = "Chronos-2 forecast",
) -> np.ndarray:
    """Quantile forecasts (N, Q, horizon) through `Chronos2Pipeline.predict`, `batch_size`
    series at a time (each series counts as 1 + len(covariates) rows in the package's batches)."""
    outputs = []
    group = 1 + len(covariates)
    for start in tqdm(range(0, len(values), batch_size), desc=label, leave=False):
        chunk = values[start : start + batch_size]
        inputs: list[dict[str, Any]] | torch.Tensor
        if covariates:
            inputs = [
                {"target": series[:, target], "past_covariates": {names[c]: series[:, c] for c in covariates}}
                for series in chunk
            ]
        else:
            inputs = torch.from_numpy(np.ascontiguousarray(chunk[:, None, :, target], dtype=np.float32))  # (B, 1, L)
        predictions = pipeline.predict(inputs, prediction_length=horizon, batch_size=batch_size * group)
        outputs.append(torch.stack([p[0] for p in predictions]).numpy())  # (B, Q, H)
    return np.concatenate(outputs)
