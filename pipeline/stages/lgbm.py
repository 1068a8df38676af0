"""The lgbm_alpha158 stage: LightGBM on Qlib's Alpha158 features, scored on the test segment.

The model runs in a child process (see models.lgbm.alpha158 for why) and returns its raw
predictions; this stage turns them into the `lgbm_alpha158` signal table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from evaluation.signal_table import make_signal_table, write_signal_table
from pipeline.contract import ConfigView, StageInputs, StageResult, StageSpec, signal_path

SOURCE = "lgbm_alpha158"


def lgbm_alpha158(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    segments = {name: [str(day) for day in getattr(config.split, name)] for name in ("train", "valid", "test")}
    (out / "segments.json").write_text(json.dumps(segments))
    (out / "lgbm_params.json").write_text(
        json.dumps({"seed": config.seed, **config.lgbm.params})
    )  # bagging and feature sampling follow the run's seed
    predictions = out / "predictions.parquet"
    command = [
        sys.executable,
        "-m",
        "models.lgbm.alpha158",
        "--qlib-dir",
        str(inputs.qlib_dir),
        "--region",
        config.data.region,
        "--universe",
        config.data.instruments,
        "--segments",
        str(out / "segments.json"),
        "--params",
        str(out / "lgbm_params.json"),
        "--mlflow-uri",
        inputs.tracking_uri,
        "--out",
        str(predictions),
    ]
    subprocess.run(command, check=True)
    scores = pd.read_parquet(predictions)
    table = make_signal_table(scores["datetime"], scores["instrument"], scores["score"], None, SOURCE)
    write_signal_table(table, out / signal_path(SOURCE))
    predictions.unlink()  # the signal table holds the same scores
    return StageResult(
        metrics={"lgbm_alpha158_scores": len(table), "lgbm_alpha158_days": table["datetime"].nunique()},
        summary=[f"lgbm_alpha158: {len(table):,} test scores over {table['datetime'].nunique()} days"],
        artifacts=[out / "lgbm_params.json"],
    )


STAGES = (
    StageSpec(
        SOURCE,
        lgbm_alpha158,
        needs=("ingest", "split"),
        reads=("lgbm", "split.train", "split.valid", "split.test", "data.instruments", "data.region", "seed"),
        outputs=(signal_path(SOURCE), "lgbm_params.json"),
        signal_sources=(SOURCE,),
        description="LightGBM on Qlib's Alpha158 features (Qlib's handler, dataset and model)",
    ),
)
