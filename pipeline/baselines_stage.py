"""The baselines stage: trained baseline signals (LightGBM on Alpha158) for the backtest.

The model runs in a child process (see models.baselines.lgbm_alpha158 for why) and writes
`signals/lgbm_alpha158.parquet` into the stage output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.stages import StageResult
from pipeline.tracking import tracking_uri
from strategies.signal_table import read_signal_table


def baselines(config: PipelineConfig, inputs: dict[str, Path], out: Path) -> StageResult:
    segments = {name: [str(day) for day in getattr(config.split, name)] for name in ("train", "valid", "test")}
    (out / "segments.json").write_text(json.dumps(segments))
    (out / "lgbm_params.json").write_text(json.dumps(config.baselines.lgbm))
    target = out / "signals" / "lgbm_alpha158.parquet"
    command = [
        sys.executable, "-m", "models.baselines.lgbm_alpha158", "--qlib-dir", str(inputs["ingest"] / "qlib"),
        "--region", config.data.region, "--universe", config.data.instruments, "--segments", str(out / "segments.json"),
        "--params", str(out / "lgbm_params.json"), "--mlflow-uri", tracking_uri(config), "--out", str(target),
    ]
    subprocess.run(command, check=True)
    table = read_signal_table(target)
    return StageResult(
        metrics={"lgbm_alpha158_scores": len(table), "lgbm_alpha158_days": table["datetime"].nunique()},
        summary=[f"lgbm_alpha158: {len(table):,} test scores over {table['datetime'].nunique()} days"],
        artifacts=[out / "lgbm_params.json"],
    )
