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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_prep.windows import ForecastInputs
from evaluation.signal_table import make_signal_table, write_signal_table
from pipeline.config import ConfigError
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

if TYPE_CHECKING:
    import torch

TIMING_SERIES = 1024  # test series both models forecast for the speed-up figure


class ChronosSeries:
    """The forecast inputs in the layout Chronos-2 takes: the close as target, other fields as covariates."""

    def __init__(self, series: ForecastInputs, covariates: bool):
        self.series = series
        self.target = series.fields.index("close")
        self.covariates = [i for i in range(len(series.fields)) if i != self.target] if covariates else []

    def forecast(self, pipeline, batch_size: int, label: str, rows: slice = slice(None)) -> np.ndarray:
        from models.chronos.forecasting import pipeline_quantiles

        return pipeline_quantiles(
            pipeline,
            self.series.values[rows],
            self.target,
            self.covariates,
            self.series.fields,
            self.series.split.horizon,
            batch_size,
            label,
        )


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


def write_outputs(series: ForecastInputs, quantiles: np.ndarray, levels: list[float], source: str, out: Path) -> None:
    from evaluation.probabilistic import quantile_table, quantiles_from_levels
    from models.chronos.forecasting import scores_from_quantiles

    score, spread = scores_from_quantiles(quantiles, levels, series.last("close"))
    write_signal_table(
        make_signal_table(series.days, series.instruments, score, spread, source), out / signal_path(source)
    )
    np.savez_compressed(out / FORECASTS, quantiles=quantiles.astype(np.float32), levels=np.array(levels))
    (out / "quantiles").mkdir()
    horizon_quantiles = quantiles_from_levels(quantiles, levels, series.last("close"))
    quantile_table(series.days, series.instruments, horizon_quantiles).to_parquet(
        out / quantile_path(source), index=False
    )


def chronos(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    from models.chronos.forecasting import quantile_levels
    from models.chronos.student import parameter_count
    from models.device import pick_device

    split = inputs.split()
    device = pick_device(config.chronos.device)
    pipeline = load_teacher(config, device)
    series = split.forecast_inputs(*config.split.test)
    chronos_inputs = ChronosSeries(series, config.chronos.covariates)
    levels = quantile_levels(pipeline.model)
    started = time.perf_counter()
    quantiles = chronos_inputs.forecast(pipeline, config.chronos.batch_size, "Chronos-2 teacher forecast")
    seconds = time.perf_counter() - started
    write_outputs(series, quantiles, levels, "chronos2", out)
    metrics = {
        "parameters": parameter_count(pipeline.model),
        "forecast_series": len(series),
        "forecast_seconds": seconds,
        "series_per_second": len(series) / seconds,
    }
    (out / REPORT).write_text(json.dumps(metrics, indent=2))
    covariates = (
        f"past covariates {[series.fields[c] for c in chronos_inputs.covariates]}"
        if chronos_inputs.covariates
        else "close only"
    )
    summary = [
        f"Chronos-2 {config.chronos.teacher} ({metrics['parameters'] / 1e6:.1f}M parameters, {device}, {covariates}): "
        f"{len(series):,} test series in {seconds:.1f} s"
    ]
    return StageResult(metrics=metrics, summary=summary, artifacts=[out / REPORT])


def chronos_student(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    from models.chronos.distill import distil
    from models.chronos.forecasting import pipeline_for, prediction_length, quantile_levels
    from models.chronos.student import build_student, parameter_count
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
    chronos_inputs = ChronosSeries(series, section.covariates)
    student = build_student(teacher.model, section.student.architecture, config.seed)
    history, report = distil(
        student,
        teacher.model,
        split.segment("train"),
        split.segment("valid"),
        chronos_inputs.target,
        chronos_inputs.covariates,
        section.student.settings(config.seed),
        device,
    )
    student_pipeline = pipeline_for(student)
    student_pipeline.save_pretrained(out / CHECKPOINT)

    levels = quantile_levels(student)
    quantiles = chronos_inputs.forecast(student_pipeline, section.batch_size, "Chronos-2 student forecast")
    write_outputs(series, quantiles, levels, "chronos2_student", out)
    with np.load(inputs.forecasts("chronos2")) as saved:
        teacher_quantiles = saved["quantiles"]
    agreement = forecast_agreement(chronos_inputs, quantiles, teacher_quantiles, levels)
    timing = time_both(chronos_inputs, teacher, student_pipeline, section.batch_size)

    metrics = {
        "teacher_parameters": parameter_count(teacher.model),
        "student_parameters": parameter_count(student),
        **{f"distill_{key}": value for key, value in report.items()},
        **agreement,
        **timing,
    }
    metrics["compression"] = metrics["teacher_parameters"] / metrics["student_parameters"]
    (out / REPORT).write_text(json.dumps(metrics, indent=2))
    summary = [
        f"Chronos-2 student: {metrics['student_parameters'] / 1e6:.2f}M parameters vs teacher {metrics['teacher_parameters'] / 1e6:.2f}M "
        f"({metrics['compression']:.1f}x smaller), {report['steps']} steps in {report['train_seconds']:.0f} s",
        f"validation pinball: student {report['best_val_pinball']:.4f}, teacher {report['teacher_val_pinball']:.4f}; "
        f"teacher-matching loss {report['best_val_match']:.4f}",
        f"test agreement with the teacher: median MAE {agreement['median_mae_scaled']:.4f} (scaled), score correlation "
        f"{agreement['score_correlation']:.3f}; inference {timing['speedup']:.1f}x faster on {timing['timing_series']} series",
    ]
    return StageResult(
        metrics=metrics, summary=summary, artifacts=[out / REPORT, out / CHECKPOINT / "config.json"], history=history
    )


def forecast_agreement(
    series: ChronosSeries, student: np.ndarray, teacher: np.ndarray, levels: list[float]
) -> dict[str, float]:
    """How closely the student's test forecasts follow the teacher's."""
    from models.chronos.forecasting import scores_from_quantiles

    middle = levels.index(0.5)
    scale = np.nanstd(series.series.values[..., series.target], axis=1)[:, None] + 1e-8
    last_close = series.series.last("close")
    student_score, _ = scores_from_quantiles(student, levels, last_close)
    teacher_score, _ = scores_from_quantiles(teacher, levels, last_close)
    return {
        "median_mae_scaled": float(np.mean(np.abs(student[:, middle] - teacher[:, middle]) / scale)),
        "quantile_mae_scaled": float(np.mean(np.abs(student - teacher) / scale[:, None])),
        "score_correlation": float(np.corrcoef(student_score, teacher_score)[0, 1]),
    }


def time_both(series: ChronosSeries, teacher, student, batch_size: int) -> dict[str, float]:
    """Forecast time of teacher and student on the same test series, in this run."""
    rows = slice(0, min(TIMING_SERIES, len(series.series)))
    seconds = {}
    for name, pipeline in (("teacher", teacher), ("student", student)):
        series.forecast(pipeline, batch_size, f"warm-up {name}", slice(0, min(batch_size, rows.stop)))
        started = time.perf_counter()
        series.forecast(pipeline, batch_size, f"timing {name}", rows)
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
        chronos,
        needs=("split",),
        reads=("chronos.teacher", "chronos.covariates", "chronos.device", "chronos.batch_size", "split.test"),
        outputs=(signal_path("chronos2"), FORECASTS, REPORT, quantile_path("chronos2")),
        version=2,  # 2: horizon-return quantiles
        signal_sources=("chronos2",),
        description="Chronos-2 zero-shot quantile forecasts of the test segment",
    ),
    StageSpec(
        "chronos2_student",
        chronos_student,
        needs=("chronos2", "split"),
        reads=("chronos", "split.test", "seed"),
        outputs=(signal_path("chronos2_student"), FORECASTS, REPORT, CHECKPOINT, quantile_path("chronos2_student")),
        models=(CHECKPOINT,),
        version=2,  # 2: horizon-return quantiles
        signal_sources=("chronos2_student",),
        description="distil Chronos-2 into a smaller Chronos-2 and forecast with it",
    ),
)
