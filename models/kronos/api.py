"""Kronos behind the shared model interface: `fit` trains the tokenizer or the predictor on a split
folder, `forecast` samples paths for forecast inputs and scores them.

Both run in this process, or spread over `nproc` processes with torchrun (DistributedDataParallel
for training; series sharded by rank for forecasts, merged in input order).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np

from data_prep.windows import ForecastInputs
from models.interface import Fitted, Forecast

CHECKPOINT = "best"  # save_pretrained folder inside a training output folder
REPORT = "report.json"


def torchrun(nproc: int, module: str, *args: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    subprocess.run([*command, "-m", module, *args], check=True)


def fit(task: Literal["tokenizer", "predictor"], split_dir: Path, out: Path, spec: dict, nproc: int = 1) -> Fitted:
    """Train `task` on the split's train windows, early-stopped on its valid windows; `spec` as in
    models.kronos.train_cli. Writes `out/best` (save_pretrained), `out/last.pt` and `out/report.json`."""
    if nproc <= 1:
        from models.kronos import train_cli

        report = train_cli.train(task, split_dir, out, spec)
    else:
        spec_path = out / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        torchrun(
            nproc,
            "models.kronos.train_cli",
            "--task",
            task,
            "--split",
            str(split_dir),
            "--out",
            str(out),
            "--spec",
            str(spec_path),
        )
        report = json.loads((out / REPORT).read_text())
    return Fitted(out / CHECKPOINT, report, report["history"])


def forecast(series: ForecastInputs, seeds: np.ndarray, spec: dict, nproc: int, work: Path) -> Forecast:
    """Sample `spec["sample_count"]` close paths per series (one seed per series, so a series' paths do
    not depend on batching or sharding) and score them; `spec` as in models.kronos.forecast_cli."""
    from models.kronos.batches import time_features
    from models.kronos.predictor import FIELDS

    history, x_stamps = series.values, time_features(series.input_dates())
    y_stamps = time_features(series.future_days())
    if nproc <= 1:
        from models.kronos.forecast_cli import load_predictor
        from models.kronos.generation import Sampling

        predictor = load_predictor(spec, spec["device"])
        paths = predictor.forecast(
            list(history),
            list(x_stamps),
            list(y_stamps),
            spec["pred_len"],
            Sampling(**spec["sampling"]),
            spec["sample_count"],
            seeds.tolist(),
            spec["batch_size"],
            verbose=True,
        ).paths
    else:
        from models.kronos.forecast_cli import merge_shards

        work.mkdir(parents=True, exist_ok=True)
        np.savez(work / "inputs.npz", history=history, x_stamps=x_stamps, y_stamps=y_stamps, seeds=seeds)
        (work / "spec.json").write_text(json.dumps(spec, indent=2))
        torchrun(
            nproc,
            "models.kronos.forecast_cli",
            "--inputs",
            str(work / "inputs.npz"),
            "--out",
            str(work),
            "--spec",
            str(work / "spec.json"),
        )
        paths = merge_shards(work, len(history))
        shutil.rmtree(work)  # the merged result is what the caller keeps
    close = paths[..., FIELDS.index("close")]  # (N, samples, horizon)
    return Forecast.from_paths(series.days, series.instruments, close, series.last("close"))
