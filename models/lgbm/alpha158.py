"""LightGBM on Qlib's Alpha158 features: the standard baseline quants know.

    python -m models.lgbm.alpha158 --qlib-dir DIR --region us --universe sp500 \
        --segments SEGMENTS.json --params PARAMS.json --mlflow-uri URI --out predictions.parquet

Uses Qlib's own `Alpha158` handler, `DatasetH` and `LGBModel`: trained on the train segment,
early-stopped on valid, scored on test; the scores are written as (datetime, instrument, score).
Alpha158's label is the return from the close of t+1 to the close of t+2, so the train and valid
segments end two trading days early (purge). The score for day t uses features up to day t. It
runs as its own process because Qlib's recorder opens MLflow runs of its own (in the same store,
experiment "qlib"), which cannot nest inside the pipeline's active run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from data_prep.qlib_format import init_qlib

LABEL_DAYS = 2  # Alpha158's label looks two trading days ahead


def purged_segments(
    calendar: pd.DatetimeIndex, segments: dict[str, tuple[str, str]]
) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """Each segment on trading days; train and valid end LABEL_DAYS early so no label crosses."""
    purged = {}
    for name, (start, end) in segments.items():
        days = calendar[(calendar >= pd.Timestamp(start)) & (calendar <= pd.Timestamp(end))]
        if name != "test":
            days = days[:-LABEL_DAYS]
        purged[name] = (days[0], days[-1])
    return purged


def lgbm_alpha158_scores(
    qlib_dir: Path,
    region: str,
    universe: str,
    segments: dict,
    params: dict,
    mlflow_uri: str,
    kernels: int | None = None,
) -> pd.Series:
    """Test-segment predictions indexed by (datetime, instrument); `kernels` as in init_qlib."""
    init_qlib(qlib_dir, region, mlflow_uri, kernels)
    from qlib.contrib.data.handler import Alpha158
    from qlib.contrib.model.gbdt import LGBModel
    from qlib.data import D
    from qlib.data.dataset import DatasetH
    from qlib.workflow import R

    purged = purged_segments(pd.DatetimeIndex(D.calendar()), segments)
    train_start, train_end = purged["train"]
    handler = Alpha158(
        instruments=universe,
        start_time=train_start,
        end_time=purged["test"][1],
        fit_start_time=train_start,
        fit_end_time=train_end,
    )
    dataset = DatasetH(handler, segments=purged)
    model = LGBModel(**params)
    with R.start(experiment_name="qlib", recorder_name="lgbm_alpha158"):
        model.fit(dataset)
    return model.predict(dataset, segment="test").dropna().rename("score")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qlib-dir", type=Path, required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--universe", required=True)
    parser.add_argument("--segments", type=Path, required=True)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--mlflow-uri", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    scores = lgbm_alpha158_scores(
        args.qlib_dir,
        args.region,
        args.universe,
        json.loads(args.segments.read_text()),
        json.loads(args.params.read_text()),
        args.mlflow_uri,
    )
    scores.reset_index().to_parquet(args.out, index=False)


if __name__ == "__main__":
    main()
