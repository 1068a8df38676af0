"""Chronos-2 stages: `chronos2` forecasts the test segment zero-shot with the teacher, and
`chronos2_student` distils the teacher into a smaller Chronos-2 and forecasts with the student.

Both write signals in the shared schema (score = expected horizon return from the median
forecast, score_std from the 10-90% quantile spread) and their quantile forecasts (`forecasts.npz`).
The student's report compares it with the teacher: forecast agreement on the test series and
the inference speed-up, both measured in the student's run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_prep.errors import ConfigError
from data_prep.windows import ForecastInputs
from models.interface import Forecast
from pipeline.contract import (
    CHECKPOINT,
    FORECASTS,
    REPORT,
    ConfigView,
    StageInputs,
    StageResult,
    StageSpec,
    quantile_path,
    signal_path,
)
from pipeline.signals import write_forecast

if TYPE_CHECKING:
    import torch

TIMING_SERIES = 1024  # test series both models forecast for the speed-up figure


def load_teacher(config: ConfigView, device: torch.device):
    from models.chronos.forecasting import load_pipeline

    source = config.chronos.teacher
    try:
        return load_pipeline(source, device)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"chronos.teacher: cannot load Chronos-2 from {source!r} ({exc}). Give a local folder with "
            "config.json and model.safetensors, or a hub id with network access"
        ) from exc


def chronos2(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    from models.chronos import forecast
    from models.chronos.api import channels
    from models.chronos.student import parameter_count
    from models.device import pick_device

    split = inputs.split()
    device = pick_device(config.chronos.device)
    pipeline = load_teacher(config, device)
    series = split.forecast_inputs(*config.split.test)
    started = time.perf_counter()
    teacher_forecast = forecast(
        pipeline, series, config.chronos.covariates, config.chronos.batch_size, "Chronos-2 teacher forecast"
    )
    seconds = time.perf_counter() - started
    write_forecast(teacher_forecast, "chronos2", out)
    _, covariate_channels = channels(series.fields, config.chronos.covariates)
    metrics = {
        "parameters": parameter_count(pipeline.model),
        "forecast_series": len(series),
        "forecast_seconds": seconds,
        "series_per_second": len(series) / seconds,
    }
    (out / REPORT).write_text(json.dumps(metrics, indent=2))
    covariates = (
        f"past covariates {[series.fields[c] for c in covariate_channels]}" if covariate_channels else "close only"
    )
    summary = [
        f"Chronos-2 {config.chronos.teacher} ({metrics['parameters'] / 1e6:.1f}M parameters, {device}, {covariates}): "
        f"{len(series):,} test series in {seconds:.1f} s"
    ]
    return StageResult(metrics=metrics, summary=summary, artifacts=[out / REPORT])


def chronos2_student(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    from models.chronos import fit
    from models.chronos.forecasting import prediction_length
    from models.chronos.student import parameter_count
    from models.device import pick_device

    section = config.chronos
    split = inputs.split()
    device = pick_device(section.device)
    teacher = load_teacher(config, device)
    if split.horizon > prediction_length(teacher.model):
        raise ConfigError(
            f"split.horizon {split.horizon} is longer than the {prediction_length(teacher.model)} steps the teacher "
            "forecasts in one pass; distillation needs a shorter horizon (or a teacher with more max_output_patches)"
        )
    series = split.forecast_inputs(*config.split.test)
    fitted = fit(
        teacher,
        split.segment("train"),
        split.segment("valid"),
        series.fields,
        section.covariates,
        section.student.architecture,
        section.student.settings(config.seed),
        device,
        out / CHECKPOINT,
        out / "last.pt",
    )
    report, history = fitted.report, fitted.history
    student, student_forecast = forecast_with_student(fitted.checkpoint, series, student_settings(section))
    write_forecast(student_forecast, "chronos2_student", out)
    with np.load(inputs.forecasts("chronos2")) as saved:
        teacher_quantiles = saved["quantiles"]
    agreement = forecast_agreement(series, student_forecast, teacher_quantiles)
    timing = time_both(series, section.covariates, teacher, student, section.batch_size)

    metrics = {
        "teacher_parameters": parameter_count(teacher.model),
        "student_parameters": parameter_count(student.model),
        **{f"distill_{key}": value for key, value in report.items()},
        **agreement,
        **timing,
    }
    metrics["compression"] = metrics["teacher_parameters"] / metrics["student_parameters"]
    (out / REPORT).write_text(json.dumps(metrics, indent=2))
    summary = [
        f"Chronos-2 student: {metrics['student_parameters'] / 1e6:.2f}M parameters "
        f"vs teacher {metrics['teacher_parameters'] / 1e6:.2f}M "
        f"({metrics['compression']:.1f}x smaller), {report['steps']} steps in {report['train_seconds']:.0f} s",
        f"validation pinball: student {report['best_val_pinball']:.4f}, teacher {report['teacher_val_pinball']:.4f}; "
        f"teacher-matching loss {report['best_val_match']:.4f}",
        f"test agreement with the teacher: median MAE {agreement['median_mae_scaled']:.4f} (scaled), score correlation "
        f"{agreement['score_correlation']:.3f}; inference {timing['speedup']:.1f}x faster "
        f"on {timing['timing_series']} series",
    ]
    return StageResult(
        metrics=metrics, summary=summary, artifacts=[out / REPORT, out / CHECKPOINT / "config.json"], history=history
    )


# The chronos keys the student's forecasts follow besides its saved model: a registered student keeps them.
STUDENT_SETTINGS = ("covariates", "batch_size", "device")


def student_settings(section: Any) -> dict[str, Any]:
    """The STUDENT_SETTINGS values of a chronos config section (what pipeline/registry.py bundles)."""
    return section.model_dump(mode="json", include=set(STUDENT_SETTINGS))


def forecast_with_student(
    checkpoint: Path, series: ForecastInputs, settings: Mapping[str, Any]
) -> tuple[Any, Forecast]:
    """The student saved at `checkpoint`, loaded, and its forecasts of `series` with `settings`
    (student_settings): the stage's, or a registered student's for the live positions (pipeline/live.py)."""
    from models.chronos import forecast
    from models.chronos.forecasting import load_pipeline
    from models.device import pick_device

    student = load_pipeline(str(checkpoint), pick_device(settings["device"]))
    covariates, batch_size = settings["covariates"], settings["batch_size"]
    return student, forecast(student, series, covariates, batch_size, "Chronos-2 student forecast")


def forecast_agreement(series: ForecastInputs, student: Forecast, teacher_quantiles: np.ndarray) -> dict[str, float]:
    """How closely the student's test forecasts follow the teacher's quantile forecasts (N, Q, horizon)."""
    assert student.close_quantiles is not None
    middle = student.levels.index(0.5)
    scale = np.nanstd(series.values[..., series.fields.index("close")], axis=1)[:, None] + 1e-8
    teacher = Forecast.from_quantiles(
        series.days, series.instruments, teacher_quantiles, student.levels, series.last("close")
    )
    quantiles = student.close_quantiles
    return {
        "median_mae_scaled": float(np.mean(np.abs(quantiles[:, middle] - teacher_quantiles[:, middle]) / scale)),
        "quantile_mae_scaled": float(np.mean(np.abs(quantiles - teacher_quantiles) / scale[:, None])),
        "score_correlation": float(np.corrcoef(student.score, teacher.score)[0, 1]),
    }


def time_both(series: ForecastInputs, covariates: bool, teacher, student, batch_size: int) -> dict[str, float]:
    """Forecast time of teacher and student on the same test series, in this run."""
    from models.chronos import forecast

    rows = slice(0, min(TIMING_SERIES, len(series)))
    seconds = {}
    for name, pipeline in (("teacher", teacher), ("student", student)):
        forecast(pipeline, series, covariates, batch_size, f"warm-up {name}", slice(0, min(batch_size, rows.stop)))
        started = time.perf_counter()
        forecast(pipeline, series, covariates, batch_size, f"timing {name}", rows)
        seconds[name] = time.perf_counter() - started
    count = rows.stop
    return {
        "timing_series": count,
        "teacher_seconds_per_1000": seconds["teacher"] / count * 1000,
        "student_seconds_per_1000": seconds["student"] / count * 1000,
        "speedup": seconds["teacher"] / seconds["student"],
    }


STAGES = (
    StageSpec(
        "chronos2",
        chronos2,
        needs=("split",),
        reads=("chronos.teacher", "chronos.covariates", "chronos.device", "chronos.batch_size", "split.test"),
        device_key="chronos.device",
        outputs=(signal_path("chronos2"), FORECASTS, REPORT, quantile_path("chronos2")),
        version=3,  # 2: horizon-return quantiles; 3: forecasts.npz names its rows and last closes
        signal_sources=("chronos2",),
        description="Chronos-2 zero-shot quantile forecasts of the test segment",
    ),
    StageSpec(
        "chronos2_student",
        chronos2_student,
        needs=("chronos2", "split"),
        reads=("chronos", "split.test", "seed"),
        device_key="chronos.device",
        outputs=(signal_path("chronos2_student"), FORECASTS, REPORT, CHECKPOINT, quantile_path("chronos2_student")),
        models=(CHECKPOINT,),
        progress_files=("last.pt",),
        version=3,  # 2: horizon-return quantiles; 3: forecasts.npz names its rows and last closes
        signal_sources=("chronos2_student",),
        description="distil Chronos-2 into a smaller Chronos-2 and forecast with it",
    ),
)
