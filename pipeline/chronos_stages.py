"""Chronos-2 stages: `chronos` forecasts the test segment zero-shot with the teacher, and
`chronos_student` distils the teacher into a smaller Chronos-2 and forecasts with the student.

Both write signals in the shared schema (score = expected horizon return from the median
forecast, score_std from the 10-90% quantile spread) and their quantile forecasts (`forecasts.npz`).
The student's report compares it with the teacher: forecast agreement on the test series and
the inference speed-up, both measured in the student's run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.windows import Split
from models.chronos.distill import DistillSettings, distil
from models.chronos.forecasting import (load_pipeline, pipeline_for, pipeline_quantiles, prediction_length, quantile_levels,
                                         scores_from_quantiles)
from models.chronos.student import build_student, parameter_count
from models.device import pick_device
from pipeline.config import ConfigError, PipelineConfig
from pipeline.stages import StageResult
from strategies.signal_table import make_signal_table, write_signal_table

TIMING_SERIES = 1024  # test series both models forecast for the speed-up figure


class ForecastSeries:
    """Every test day and instrument with its lookback, in the layout the models take."""

    def __init__(self, config: PipelineConfig, split: Split):
        windows = split.forecast_windows(*config.split.test)
        self.values, _ = windows.get(np.arange(len(windows)))  # (N, L, F)
        self.days = windows.decision_days()
        self.instruments = windows.instruments()
        self.fields = list(split.panel.fields)
        self.target = self.fields.index("close")
        self.covariates = [i for i in range(len(self.fields)) if i != self.target] if config.chronos.covariates else []
        self.horizon = split.horizon

    def last_close(self) -> np.ndarray:
        return self.values[:, -1, self.target]

    def forecast(self, pipeline, batch_size: int, label: str, rows: slice = slice(None)) -> np.ndarray:
        return pipeline_quantiles(pipeline, self.values[rows], self.target, self.covariates, self.fields,
                                  self.horizon, batch_size, label)


def load_teacher(config: PipelineConfig, device: torch.device):
    source = config.chronos.teacher
    try:
        return load_pipeline(source, device)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"chronos.teacher: cannot load Chronos-2 from {source!r} ({exc}). Give a local folder with "
                          "config.json and model.safetensors, or a hub id with network access") from exc


def write_outputs(series: ForecastSeries, quantiles: np.ndarray, levels: list[float], source: str, out: Path) -> None:
    score, spread = scores_from_quantiles(quantiles, levels, series.last_close())
    write_signal_table(make_signal_table(series.days, series.instruments, score, spread, source), out / "signals" / f"{source}.parquet")
    np.savez_compressed(out / "forecasts.npz", quantiles=quantiles.astype(np.float32), levels=np.array(levels))


def chronos(config: PipelineConfig, inputs: dict[str, Path], out: Path) -> StageResult:
    split = Split.load(inputs["split"])
    device = pick_device(config.chronos.device)
    pipeline = load_teacher(config, device)
    series = ForecastSeries(config, split)
    levels = quantile_levels(pipeline.model)
    started = time.perf_counter()
    quantiles = series.forecast(pipeline, config.chronos.batch_size, "Chronos-2 teacher forecast")
    seconds = time.perf_counter() - started
    write_outputs(series, quantiles, levels, "chronos2", out)
    metrics = {"parameters": parameter_count(pipeline.model), "forecast_series": len(series.values),
               "forecast_seconds": seconds, "series_per_second": len(series.values) / seconds}
    (out / "report.json").write_text(json.dumps(metrics, indent=2))
    covariates = f"past covariates {[series.fields[c] for c in series.covariates]}" if series.covariates else "close only"
    summary = [f"Chronos-2 {config.chronos.teacher} ({metrics['parameters'] / 1e6:.1f}M parameters, {device}, {covariates}): "
               f"{len(series.values):,} test series in {seconds:.1f} s"]
    return StageResult(metrics=metrics, summary=summary, artifacts=[out / "report.json"])


def chronos_student(config: PipelineConfig, inputs: dict[str, Path], out: Path) -> StageResult:
    section = config.chronos
    split = Split.load(inputs["split"])
    device = pick_device(section.device)
    teacher = load_teacher(config, device)
    if split.horizon > prediction_length(teacher.model):
        raise ConfigError(f"split.horizon {split.horizon} is longer than the {prediction_length(teacher.model)} steps the teacher "
                          "forecasts in one pass; distillation needs a shorter horizon (or a teacher with more max_output_patches)")
    series = ForecastSeries(config, split)
    student = build_student(teacher.model, section.student.architecture, config.seed)
    settings = DistillSettings(**section.student.model_dump(exclude={"architecture"}), seed=config.seed)
    history, report = distil(student, teacher.model, split.segment("train"), split.segment("valid"),
                             series.target, series.covariates, settings, device)
    student_pipeline = pipeline_for(student)
    student_pipeline.save_pretrained(out / "model")

    levels = quantile_levels(student)
    quantiles = series.forecast(student_pipeline, section.batch_size, "Chronos-2 student forecast")
    write_outputs(series, quantiles, levels, "chronos2_student", out)
    with np.load(inputs["chronos"] / "forecasts.npz") as saved:
        teacher_quantiles = saved["quantiles"]
    agreement = forecast_agreement(series, quantiles, teacher_quantiles, levels)
    timing = time_both(series, teacher, student_pipeline, section.batch_size)

    metrics = {"teacher_parameters": parameter_count(teacher.model), "student_parameters": parameter_count(student),
               **{f"distill_{key}": value for key, value in report.items()}, **agreement, **timing}
    metrics["compression"] = metrics["teacher_parameters"] / metrics["student_parameters"]
    (out / "report.json").write_text(json.dumps(metrics, indent=2))
    summary = [
        f"Chronos-2 student: {metrics['student_parameters'] / 1e6:.2f}M parameters vs teacher {metrics['teacher_parameters'] / 1e6:.2f}M "
        f"({metrics['compression']:.1f}x smaller), {report['steps']} steps in {report['train_seconds']:.0f} s",
        f"validation pinball: student {report['best_val_pinball']:.4f}, teacher {report['teacher_val_pinball']:.4f}; "
        f"teacher-matching loss {report['best_val_match']:.4f}",
        f"test agreement with the teacher: median MAE {agreement['median_mae_scaled']:.4f} (scaled), score correlation "
        f"{agreement['score_correlation']:.3f}; inference {timing['speedup']:.1f}x faster on {timing['timing_series']} series",
    ]
    return StageResult(metrics=metrics, summary=summary, artifacts=[out / "report.json", out / "model" / "config.json"],
                       history=history)


def forecast_agreement(series: ForecastSeries, student: np.ndarray, teacher: np.ndarray, levels: list[float]) -> dict[str, float]:
    """How closely the student's test forecasts follow the teacher's."""
    middle = levels.index(0.5)
    scale = np.nanstd(series.values[..., series.target], axis=1)[:, None] + 1e-8
    student_score, _ = scores_from_quantiles(student, levels, series.last_close())
    teacher_score, _ = scores_from_quantiles(teacher, levels, series.last_close())
    return {
        "median_mae_scaled": float(np.mean(np.abs(student[:, middle] - teacher[:, middle]) / scale)),
        "quantile_mae_scaled": float(np.mean(np.abs(student - teacher) / scale[:, None])),
        "score_correlation": float(np.corrcoef(student_score, teacher_score)[0, 1]),
    }


def time_both(series: ForecastSeries, teacher, student, batch_size: int) -> dict[str, float]:
    """Forecast time of teacher and student on the same test series, in this run."""
    rows = slice(0, min(TIMING_SERIES, len(series.values)))
    seconds = {}
    for name, pipeline in (("teacher", teacher), ("student", student)):
        series.forecast(pipeline, batch_size, f"warm-up {name}", slice(0, min(batch_size, rows.stop)))
        started = time.perf_counter()
        series.forecast(pipeline, batch_size, f"timing {name}", rows)
        seconds[name] = time.perf_counter() - started
    count = rows.stop
    return {"timing_series": count, "teacher_seconds_per_1000": seconds["teacher"] / count * 1000,
            "student_seconds_per_1000": seconds["student"] / count * 1000, "speedup": seconds["teacher"] / seconds["student"]}
