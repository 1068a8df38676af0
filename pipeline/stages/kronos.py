"""Kronos stages: fine-tune (or train) the tokenizer, then the predictor on its tokens, then turn
test-period forecasts into the `kronos` signal source.

Training runs in this process, or under torchrun when `kronos.nproc > 1`; either way the output
folder holds `best/` (save_pretrained), `last.pt` (to resume an interrupted run) and
`report.json`, and the stage returns the per-step history for tracking.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import numpy as np

from models.interface import Fitted
from models.kronos.scores import KronosScore, source_name  # no torch: the graph names the sources
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
    from data_prep.windows import ForecastInputs
    from pipeline.config import KronosInferenceConfig


def _result(fitted: Fitted, out: Path, extra: dict[str, float], summary: list[str]) -> StageResult:
    report = fitted.report
    metrics = {
        key: value for key, value in report.items() if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    metrics.update(extra)
    return StageResult(
        metrics=metrics, summary=summary, artifacts=[out / REPORT, fitted.checkpoint], history=fitted.history
    )


def _spec(config: ConfigView, part: str) -> dict:
    section = getattr(config.kronos, part)
    settings = section.training.settings(config.split.clip, config.seed, config.kronos.device, config.kronos.bf16)
    return {"settings": asdict(settings), "architecture": section.architecture, "pretrained": section.pretrained}


def kronos_tokenizer(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    from models.kronos import fit

    fitted = fit("tokenizer", inputs.folder("split"), out, _spec(config, "tokenizer"), config.kronos.nproc)
    report = fitted.report
    summary = [
        f"tokenizer: {report['epochs_run']} epochs, {report['steps']} steps, "
        f"{report['windows_per_second']:.0f} windows/s",
        f"validation fine reconstruction MSE {report['best_val_recon_fine']:.4f}, "
        f"s1 codebook usage {report['best_val_s1_code_usage']:.1%}",
    ]
    return _result(fitted, out, {}, summary)


def kronos_predictor(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    from models.kronos import fit

    spec = {**_spec(config, "predictor"), "tokenizer": str(inputs.checkpoint("kronos_tokenizer"))}
    fitted = fit("predictor", inputs.folder("split"), out, spec, config.kronos.nproc)
    report = fitted.report
    tokenizer_config = json.loads((inputs.checkpoint("kronos_tokenizer") / "config.json").read_text())
    uniform = math.log(2 ** tokenizer_config["s1_bits"])  # CE of guessing s1 codes uniformly
    summary = [
        f"predictor: {report['epochs_run']} epochs, {report['steps']} steps, "
        f"{report['windows_per_second']:.0f} windows/s",
        f"validation CE_s1 {report['best_val_ce_s1']:.3f} (uniform codes {uniform:.3f}, "
        f"code frequencies {report['best_val_marginal_ce_s1']:.3f}), "
        f"CE_s2 {report['best_val_ce_s2']:.3f}, s1 accuracy {report['best_val_acc_s1']:.1%}",
    ]
    return _result(fitted, out, {"uniform_ce_s1": uniform}, summary)


def kronos_signals(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    """Forecast every test day and instrument with the fine-tuned Kronos: the `kronos` source."""
    predictor, tokenizer = str(inputs.checkpoint("kronos_predictor")), str(inputs.checkpoint("kronos_tokenizer"))
    return forecast_and_score(config, inputs, predictor, tokenizer, config.seed, "kronos", out)


def kronos_zeroshot(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    """The published checkpoints, untrained, through the same sampler and scores: `kronos_zeroshot`.
    It reads no seed, so with walk-forward folds it runs once per fold."""
    zeroshot = config.kronos.zeroshot
    return forecast_and_score(config, inputs, zeroshot.predictor, zeroshot.tokenizer, 0, "kronos_zeroshot", out)


def forecast_and_score(
    config: ConfigView, inputs: StageInputs, predictor: str, tokenizer: str, seed: int, source: str, out: Path
) -> StageResult:
    """Sample paths for every test (day, instrument) and write each score of kronos.inference.scores
    as its own source: `source` for the expected return, `source:mean` and so on for upstream's."""
    from models.kronos import forecast
    from models.kronos.scores import upstream_score

    split = inputs.split()
    settings = config.kronos.inference
    series = split.forecast_inputs(*config.split.test)
    spec = forecast_spec(
        predictor, tokenizer, settings, config.kronos.device, config.kronos.bf16, config.split.clip, split.horizon
    )
    started = time.perf_counter()
    kronos_forecast = forecast(series, series_seeds(seed, series), spec, settings.nproc, out / "shards")
    seconds = time.perf_counter() - started
    table = write_forecast(kronos_forecast, source, out)
    for score in settings.scores[1:]:  # from the same paths: no second forecast
        write_forecast(upstream_score(kronos_forecast, score), source_name(source, score), out)
    metrics = {
        "series": len(table),
        "series_per_second": len(table) / seconds,
        "inference_seconds": seconds,
        "mean_score": float(table["score"].mean()),
        "mean_score_std": float(table["score_std"].mean()),
    }
    summary = [
        f"{source} signals: {len(table):,} (day, instrument) scores over {table['datetime'].nunique()} test days, "
        f"{settings.sample_count} paths each, {metrics['series_per_second']:.0f} series/s "
        f"in {settings.nproc} process(es)",
    ]
    return StageResult(metrics=metrics, summary=summary, artifacts=[out / signal_path(source), out / FORECASTS])


def series_seeds(seed: int, series: ForecastInputs) -> np.ndarray:
    """One sampling seed per (instrument, day): a series' paths do not depend on how series are batched,
    so the live positions (pipeline/live.py) repeat a test day's scores."""
    instruments, days = series.windows.index[:, 0], series.windows.end_days()
    return np.array([seed * 1_000_003 + int(i) * 10_007 + int(day) for i, day in zip(instruments, days, strict=True)])


def forecast_spec(
    predictor: str,
    tokenizer: str,
    settings: KronosInferenceConfig | ConfigView,
    device: str,
    bf16: bool,
    clip: float,
    horizon: int,
) -> dict:
    """What models.kronos.forecast needs, from the signal stage's settings (also the live positions')."""
    from models.kronos.generation import Sampling

    return {
        "predictor": predictor,
        "tokenizer": tokenizer,
        "device": device,
        "bf16": None if bf16 else False,  # None: bf16 weights on a CUDA GPU that has bf16
        "max_context": settings.max_context,
        "clip": clip,
        "pred_len": horizon,
        "sampling": asdict(Sampling(settings.temperature, settings.top_k, settings.top_p)),
        "sample_count": settings.sample_count,
        "batch_size": settings.batch_size,
        "compile_decoding": settings.compile_decoding,
    }


def signal_outputs(source: str) -> Callable[[ConfigView], tuple[str, ...]]:
    """A Kronos signals stage's outputs: every score's table, the quantiles and the paths behind them."""

    def outputs(config: ConfigView) -> tuple[str, ...]:
        scores = (signal_path(source_name(source, score)) for score in config.kronos.inference.scores)
        return (*scores, FORECASTS, quantile_path(source))

    return outputs


TRAINING_READS = ("kronos.nproc", "kronos.device", "kronos.bf16", "split.clip", "seed")
STAGES = (
    StageSpec(
        "kronos_tokenizer",
        kronos_tokenizer,
        needs=("split",),
        reads=("kronos.tokenizer", *TRAINING_READS),
        device_key="kronos.device",
        processes_key="kronos.nproc",
        outputs=(CHECKPOINT, REPORT),
        models=(CHECKPOINT,),
        progress_files=("last.pt",),
        description="fine-tune or train the Kronos tokenizer (BSQ) on the train windows",
    ),
    StageSpec(
        "kronos_predictor",
        kronos_predictor,
        needs=("kronos_tokenizer", "split"),
        reads=("kronos.predictor", *TRAINING_READS),
        device_key="kronos.device",
        processes_key="kronos.nproc",
        outputs=(CHECKPOINT, REPORT),
        models=(CHECKPOINT,),
        progress_files=("last.pt",),
        version=2,  # 2: s2 is conditioned on s1 codes drawn by inverse CDF instead of torch.multinomial (other draws)
        description="fine-tune or train the Kronos predictor on the tokenizer's tokens",
    ),
    StageSpec(
        "kronos_signals",
        kronos_signals,
        needs=("kronos_predictor", "kronos_tokenizer", "split"),
        reads=("kronos.inference", "kronos.device", "kronos.bf16", "split.test", "split.clip", "seed"),
        device_key="kronos.device",
        processes_key="kronos.inference.nproc",
        outputs=signal_outputs("kronos"),
        # 2: forecasts.npz logged for the notebook; 3: horizon-return quantiles; 4: DecodeStep, bf16 weights;
        # 5: the tokenizer decodes each context once for all its paths (rounding-level changes);
        # 6: counter-based uniforms in (0, 1) for every path (generation.seeded_uniforms): other paths
        version=6,
        signal_sources=tuple(source_name("kronos", score) for score in get_args(KronosScore)),
        description="sample Kronos paths for every test day and instrument -> kronos scores",
    ),
    StageSpec(
        "kronos_zeroshot",
        kronos_zeroshot,
        needs=("split",),
        reads=("kronos.zeroshot", "kronos.inference", "kronos.device", "kronos.bf16", "split.test", "split.clip"),
        device_key="kronos.device",
        processes_key="kronos.inference.nproc",
        outputs=signal_outputs("kronos_zeroshot"),
        signal_sources=tuple(source_name("kronos_zeroshot", score) for score in get_args(KronosScore)),
        description="the published Kronos checkpoints forecast the test segment untrained -> kronos_zeroshot",
    ),
)
