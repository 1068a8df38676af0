"""The lgbm_alpha158 stage: LightGBM on Qlib's Alpha158 features, scored on the test segment."""

from __future__ import annotations

from pathlib import Path

from models.lgbm.alpha158 import BOOSTER, FEATURES
from pipeline.contract import ConfigView, StageInputs, StageResult, StageSpec, signal_path
from pipeline.signals import write_forecast

SOURCE = "lgbm_alpha158"


def lgbm_alpha158(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    from models.lgbm import fit_forecast

    segments = {name: [str(day) for day in getattr(config.split, name)] for name in ("train", "valid", "test")}
    params = {"seed": config.seed, **config.lgbm.params}  # bagging and feature sampling follow the run's seed
    forecast = fit_forecast(
        inputs.qlib_dir, config.data.region, config.data.instruments, segments, params, inputs.tracking_uri, out
    )
    table = write_forecast(forecast, SOURCE, out)
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
        outputs=(signal_path(SOURCE), "lgbm_params.json", BOOSTER, FEATURES),
        signal_sources=(SOURCE,),
        version=2,  # 2: the booster and its feature list are kept for the registry
        description="LightGBM on Qlib's Alpha158 features (Qlib's handler, dataset and model)",
    ),
)
