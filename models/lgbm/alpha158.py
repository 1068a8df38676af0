"""LightGBM on Qlib's Alpha158 features: the standard baseline quants know.

    python -m models.lgbm.alpha158 --qlib-dir DIR --region us --universe sp500 \
        --segments SEGMENTS.json --params PARAMS.json --mlflow-uri URI --out predictions.parquet [--save-model DIR]

Uses Qlib's own `Alpha158` handler, `DatasetH` and `LGBModel`: trained on the train segment,
early-stopped on valid, scored on test; the scores are written as (datetime, instrument, score).
With --save-model the booster is kept as LightGBM's text model beside the feature list it reads
(`alpha158_day_scores` scores a later day with them: the live positions).
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

from data_prep.errors import CheckpointError
from data_prep.qlib_format import init_qlib

LABEL_DAYS = 2  # Alpha158's label looks two trading days ahead
BOOSTER = "booster.txt"  # the trained booster, LightGBM's text format
FEATURES = "alpha158.json"  # the feature names and Qlib expressions the booster reads, in its column order


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
    save_to: Path | None = None,
) -> pd.Series:
    """Test-segment predictions indexed by (datetime, instrument); `kernels` as in init_qlib. With
    `save_to`, the booster and its feature list are written there (BOOSTER, FEATURES)."""
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
    if save_to is not None:
        save_booster(model.model, handler, save_to)
    return model.predict(dataset, segment="test").dropna().rename("score")


def save_booster(booster, handler, folder: Path) -> None:
    """The booster as text and what it reads: Alpha158's features in column order. Inference applies
    no processor (Alpha158's infer_processors are empty; its learn processors touch the label only),
    so nothing fitted on the train segment stands between the features and the booster."""
    if handler.infer_processors:
        raise ValueError(f"Alpha158 has inference processors {handler.infer_processors}: they would need saving too")
    expressions, names = handler.get_feature_config()
    booster.save_model(str(folder / BOOSTER))
    (folder / FEATURES).write_text(json.dumps({"names": list(names), "expressions": list(expressions)}, indent=1))


def alpha158_day_scores(qlib_dir: Path, region: str, universe: str, day: pd.Timestamp, model_dir: Path) -> pd.Series:
    """The saved booster's score for every instrument of `universe` on `day`, indexed by instrument.

    Qlib computes the Alpha158 features of that day alone, reading each rolling feature's own
    lookback before it, so they equal the features the training run's handler computed for that day.
    """
    import lightgbm as lgb

    init_qlib(qlib_dir, region, kernels=1)  # no forked workers: the caller runs MLflow's and torch's threads
    from qlib.contrib.data.handler import Alpha158
    from qlib.data.dataset.handler import DataHandlerLP

    saved = json.loads((model_dir / FEATURES).read_text())
    handler = Alpha158(instruments=universe, start_time=day, end_time=day)
    expressions, names = handler.get_feature_config()
    current = list(zip(names, expressions, strict=True))
    trained = list(zip(saved["names"], saved["expressions"], strict=True))
    if current != trained:
        differ = [new for new, old in zip(current, trained, strict=False) if new != old]
        first = differ[0] if differ else f"{len(current)} features, not {len(trained)}"
        raise CheckpointError(
            f"{model_dir / FEATURES}: the installed Qlib computes other Alpha158 features than the booster was trained "
            f"on (first difference: {first}); install the Qlib version of the training run, or retrain"
        )
    features = handler.fetch(col_set="feature", data_key=DataHandlerLP.DK_I)
    booster = lgb.Booster(model_file=str(model_dir / BOOSTER))
    return pd.Series(
        booster.predict(features.to_numpy()), index=features.index.get_level_values("instrument"), name="score"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qlib-dir", type=Path, required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--universe", required=True)
    parser.add_argument("--segments", type=Path, required=True)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--mlflow-uri", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--save-model", type=Path, help="folder to save the booster and its feature list in")
    args = parser.parse_args()
    scores = lgbm_alpha158_scores(
        args.qlib_dir,
        args.region,
        args.universe,
        json.loads(args.segments.read_text()),
        json.loads(args.params.read_text()),
        args.mlflow_uri,
        save_to=args.save_model,
    )
    scores.reset_index().to_parquet(args.out, index=False)


if __name__ == "__main__":
    main()
