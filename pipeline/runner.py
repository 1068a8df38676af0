"""Run a stage and everything it needs: reuse cached outputs, track every stage in MLflow."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from pipeline import tracking
from pipeline.cache import StageCache
from pipeline.config import PipelineConfig
from pipeline.contract import StageInputs, StageSpec
from pipeline.graph import SIGNAL_PRODUCERS, STAGES, cache_key, needs, plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    key: str
    output: Path
    reused: bool
    run_id: str  # this invocation's nested MLflow run for the stage
    produced_by: str  # the nested MLflow run that produced the output (run_id unless reused)
    seconds: float
    summary: list[str]


def run_pipeline(config: PipelineConfig, target: str, force: bool = False, config_file: str = "") -> list[StageOutcome]:
    """Run `target` and the stages it needs; `force` reruns the target even if cached."""
    stages = plan(target, config)
    target = stages[-1].name  # an old alias resolved
    cache = StageCache(config.cache_dir)
    cache.ensure_writable()
    uri = tracking.setup(config)
    log.info("tracking to %s (experiment %r)", uri, config.tracking.experiment)
    outcomes: dict[str, StageOutcome] = {}
    with tracking.parent_run(config, target, config_file) as parent:
        log.info("MLflow parent run %s", parent.info.run_id)
        for stage in stages:
            upstream = {name: outcomes[name] for name in needs(stage, config)}
            key = cache_key(stage, config, {name: o.key for name, o in upstream.items()})
            with cache.lock(stage.name, key):
                manifest = cache.lookup(stage.name, key)
                if manifest is not None and not (force and stage.name == target):
                    outcome = _reuse(stage, key, cache.path(stage.name, key), manifest, parent.info.run_id)
                    if outcome.produced_by != manifest["run_id"]:  # artifacts logged again into this store
                        cache.update(stage.name, key, run_id=outcome.produced_by)
                else:
                    inputs = StageInputs(stage.name, {name: o.output for name, o in upstream.items()}, SIGNAL_PRODUCERS, uri)
                    outcome = _execute(stage, key, config, cache, inputs, parent.info.run_id)
            outcomes[stage.name] = outcome
        mlflow.log_metric("stages_run", sum(not o.reused for o in outcomes.values()))
    return list(outcomes.values())


def stage_status(config: PipelineConfig) -> list[dict[str, str]]:
    """Each stage under this config: cached or not, when and by which run, where its outputs are."""
    cache = StageCache(config.cache_dir)
    client = mlflow.MlflowClient(tracking.tracking_uri(config))
    keys: dict[str, str] = {}
    rows = []
    for stage in STAGES.values():
        keys[stage.name] = key = cache_key(stage, config, {need: keys[need] for need in needs(stage, config)})
        manifest = cache.lookup(stage.name, key)
        if manifest is None:
            rows.append({"stage": stage.name, "state": "not cached: will run", "created": "-", "run": "-", "output": "-", "artifacts": "-"})
            continue
        try:
            artifacts = client.get_run(manifest["run_id"]).info.artifact_uri
        except mlflow.exceptions.MlflowException:
            artifacts = "run not in this tracking store"
        rows.append({
            "stage": stage.name, "state": "cached", "created": manifest.get("created_at", "-"), "run": manifest["run_id"],
            "output": str(cache.path(stage.name, key)), "artifacts": artifacts,
        })
    return rows


def _reuse(stage: StageSpec, key: str, output: Path, manifest: dict, parent_run_id: str) -> StageOutcome:
    """Log the cached output as a run of this invocation.

    When the run that produced it is not in the current tracking store (another store, or a
    cleared one), this run logs the output's artifacts again and stands as its producer, so the
    UI and the notebook find them.
    """
    produced_in_store = tracking.run_exists(manifest["run_id"])
    log.info("stage %s: inputs unchanged, reusing %s (produced by run %s%s)", stage.name, output, manifest["run_id"],
             "" if produced_in_store else ", which this tracking store does not have: logging its artifacts again")
    tags = {"cache_key": key, "reused": "true"}
    tags["produced_by_run_id" if produced_in_store else "first_produced_by_run_id"] = manifest["run_id"]
    with tracking.stage_run(stage.name, manifest["params"], tags) as run:
        tracking.log_metrics(manifest["metrics"])
        tracking.log_children(manifest.get("children", []))
        tracking.log_to_run(parent_run_id, [output / name for name in manifest.get("parent_artifacts", [])])
        if not produced_in_store:
            tracking.log_artifacts([output / name for name in manifest.get("artifacts", [])])
    producer = manifest["run_id"] if produced_in_store else run.info.run_id
    return StageOutcome(stage.name, key, output, True, run.info.run_id, producer, 0.0, manifest["summary"])


def _execute(stage: StageSpec, key: str, config: PipelineConfig, cache: StageCache, inputs: StageInputs, parent_run_id: str) -> StageOutcome:
    log.info("stage %s: running (cache key %s)", stage.name, key)
    params = {name: config.section(name) for name in stage.reads}
    seed_everything(config.seed)
    with tracking.stage_run(stage.name, params, {"cache_key": key, "reused": "false"}) as run:
        with cache.writing(stage.name, key, keep_partial=stage.resumable) as (folder, manifest):
            started = time.perf_counter()
            result = stage.run(stage.view(config), inputs, folder)
            seconds = time.perf_counter() - started
            check_outputs(stage, config, folder)
            metrics = {**result.metrics, "seconds": seconds}
            tracking.log_metrics(metrics)
            tracking.log_history(result.history)
            tracking.log_artifacts(result.artifacts)
            children = [asdict(child) for child in result.children]
            tracking.log_children(children)
            tracking.log_to_run(parent_run_id, result.parent_artifacts)
            manifest.update(
                run_id=run.info.run_id, params=params, metrics=metrics, summary=result.summary, children=children,
                parent_artifacts=[str(path.relative_to(folder)) for path in result.parent_artifacts],
                artifacts=[str(path.relative_to(folder)) for path in result.artifacts],
            )
    for line in result.summary:
        log.info("stage %s: %s", stage.name, line)
    log.info("stage %s: done in %.1fs", stage.name, seconds)
    run_id = run.info.run_id
    return StageOutcome(stage.name, key, cache.path(stage.name, key), False, run_id, run_id, seconds, result.summary)


class StageContractError(RuntimeError):
    """A stage returned without writing an output it declares."""


def check_outputs(stage: StageSpec, config: PipelineConfig, folder: Path) -> None:
    missing = [name for name in stage.outputs_for(config) if not (folder / name).exists()]
    if missing:
        raise StageContractError(f"stage {stage.name!r} returned without writing its declared output(s) {missing}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
