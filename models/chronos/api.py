"""Chronos-2 behind the shared model interface: `fit` distils a teacher into a smaller student and
saves it, `forecast` gives quantile forecasts of the close for forecast inputs and scores them.

The close is the target; with covariates the other fields go in as past covariates.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_prep.windows import ForecastInputs, WindowSet
from models.interface import Fitted, Forecast

if TYPE_CHECKING:
    import torch

    from models.chronos.distill import DistillSettings


def channels(fields: list[str], covariates: bool) -> tuple[int, list[int]]:
    """The target channel (the close) and the covariate channels (every other field, or none)."""
    target = fields.index("close")
    return target, [i for i in range(len(fields)) if i != target] if covariates else []


def forecast(
    pipeline, series: ForecastInputs, covariates: bool, batch_size: int, label: str, rows: slice = slice(None)
) -> Forecast:
    """Quantile forecasts of the close for `series` (the `rows` among them), through `pipeline`
    (a Chronos2Pipeline: the teacher, or a student from `fit`)."""
    from models.chronos.forecasting import pipeline_quantiles, quantile_levels

    target, covariate_channels = channels(series.fields, covariates)
    quantiles = pipeline_quantiles(
        pipeline,
        series.values[rows],
        target,
        covariate_channels,
        series.fields,
        series.split.horizon,
        batch_size,
        label,
    )  # (N, Q, horizon)
    levels = quantile_levels(pipeline.model)
    days, instruments, last_close = series.days[rows], series.instruments[rows], series.last("close")[rows]
    return Forecast.from_quantiles(days, instruments, quantiles, levels, last_close)


def fit(
    teacher,
    train: WindowSet,
    valid: WindowSet,
    fields: list[str],
    covariates: bool,
    architecture: dict[str, Any],
    settings: DistillSettings,
    device: torch.device,
    out: Path,
    progress: Path | None = None,
) -> Fitted:
    """Distil the `teacher` pipeline into a student of `architecture` (its changes to the teacher's
    config) on the train windows, early-stopped on the valid windows; save it to `out` as a pipeline.
    With `progress`, a file to save the distillation's progress to and resume it from."""
    from models.chronos.distill import distil
    from models.chronos.forecasting import pipeline_for
    from models.chronos.student import build_student

    target, covariate_channels = channels(fields, covariates)
    student = build_student(teacher.model, architecture, settings.seed)
    history, report = distil(
        student, teacher.model, train, valid, target, covariate_channels, settings, device, progress
    )
    pipeline_for(student).save_pretrained(out)
    return Fitted(out, report, history)
