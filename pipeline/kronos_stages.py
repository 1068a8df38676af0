"""Stage bodies for Kronos: fine-tune (or train) the tokenizer, then the predictor on its tokens.

Training runs in this process, or under torchrun when `kronos.nproc > 1`; either way the output
folder holds `best/` (save_pretrained), `last.pt` (to resume an interrupted run) and
`report.json`, and the stage returns the per-step history for tracking.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from models.kronos import train_cli
from models.kronos.training import TrainSettings
from pipeline.config import KronosTrainConfig, PipelineConfig
from pipeline.stages import StageResult


def _settings(config: PipelineConfig, training: KronosTrainConfig) -> dict:
    settings = TrainSettings(
        **training.model_dump(),
        clip=config.split.clip,
        seed=config.seed,
        device=config.kronos.device,
        bf16=config.kronos.bf16,
    )
    return asdict(settings)


def run_training(task: str, split_dir: Path, out: Path, spec: dict, nproc: int) -> dict:
    """Train in-process, or launch `nproc` processes with torchrun, and return the report."""
    if nproc <= 1:
        return train_cli.train(task, split_dir, out, spec)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "models.kronos.train_cli", "--task", task, "--split", str(split_dir), "--out", str(out), "--spec", str(spec_path)]
    subprocess.run(command, check=True)
    return json.loads((out / "report.json").read_text())


def _result(report: dict, out: Path, extra: dict[str, float], summary: list[str]) -> StageResult:
    metrics = {key: value for key, value in report.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    metrics.update(extra)
    return StageResult(metrics=metrics, summary=summary, artifacts=[out / "report.json", out / "best" / "config.json"], history=report["history"])


def tokenizer(config: PipelineConfig, inputs: dict[str, Path], out: Path) -> StageResult:
    kronos = config.kronos
    spec = {
        "settings": _settings(config, kronos.tokenizer_training),
        "architecture": kronos.tokenizer_architecture,
        "pretrained": kronos.tokenizer_pretrained,
    }
    report = run_training("tokenizer", inputs["split"], out, spec, kronos.nproc)
    summary = [
        f"tokenizer: {report['epochs_run']} epochs, {report['steps']} steps, {report['windows_per_second']:.0f} windows/s",
        f"validation fine reconstruction MSE {report['best_val_recon_fine']:.4f}, "
        f"s1 codebook usage {report['best_val_s1_code_usage']:.1%}",
    ]
    return _result(report, out, {}, summary)


def predictor(config: PipelineConfig, inputs: dict[str, Path], out: Path) -> StageResult:
    kronos = config.kronos
    spec = {
        "settings": _settings(config, kronos.predictor_training),
        "architecture": kronos.predictor_architecture,
        "pretrained": kronos.predictor_pretrained,
        "tokenizer": str(inputs["tokenizer"] / "best"),
    }
    report = run_training("predictor", inputs["split"], out, spec, kronos.nproc)
    tokenizer_config = json.loads((inputs["tokenizer"] / "best" / "config.json").read_text())
    uniform = math.log(2 ** tokenizer_config["s1_bits"])  # CE of guessing s1 codes uniformly
    summary = [
        f"predictor: {report['epochs_run']} epochs, {report['steps']} steps, {report['windows_per_second']:.0f} windows/s",
        f"validation CE_s1 {report['best_val_ce_s1']:.3f} (uniform codes {uniform:.3f}, "
        f"code frequencies {report['best_val_marginal_ce_s1']:.3f}), "
        f"CE_s2 {report['best_val_ce_s2']:.3f}, s1 accuracy {report['best_val_acc_s1']:.1%}",
    ]
    return _result(report, out, {"uniform_ce_s1": uniform}, summary)
