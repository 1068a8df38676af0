"""LightGBM on Alpha158 behind the shared model interface.

Qlib's LGBModel is trained and scores the test segment in one child process (see
models.lgbm.alpha158 for why a child), so this family offers `fit_forecast` rather than separate
`fit` and `forecast` calls: the booster lives only inside that process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.interface import Forecast


def fit_forecast(
    qlib_dir: Path,
    region: str,
    universe: str,
    segments: dict[str, list[str]],
    params: dict[str, Any],
    tracking_uri: str,
    work: Path,
) -> Forecast:
    """Train on the train segment, early-stop on valid, score every test (day, instrument); `work`
    keeps the segments and parameters the child process read, and the booster with its feature list
    (models.lgbm.alpha158.BOOSTER, FEATURES) for the live positions."""
    (work / "segments.json").write_text(json.dumps(segments))
    (work / "lgbm_params.json").write_text(json.dumps(params))
    predictions = work / "predictions.parquet"
    command = [
        sys.executable, "-m", "models.lgbm.alpha158", "--qlib-dir", str(qlib_dir), "--region", region,
        "--universe", universe, "--segments", str(work / "segments.json"), "--params", str(work / "lgbm_params.json"),
        "--mlflow-uri", tracking_uri, "--out", str(predictions), "--save-model", str(work),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    scores = pd.read_parquet(predictions)
    predictions.unlink()  # the forecast holds the same scores
    return Forecast(
        scores["datetime"].to_numpy(), scores["instrument"].to_numpy(), scores["score"].to_numpy(np.float64)
    )
