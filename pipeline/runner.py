"""Run a stage and everything it needs: reuse cached outputs, track every stage in MLflow."""

from __future__ import annotations

import logging
import random
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np

from data_prep.errors import Interrupted, StorageError, storage_problem
from pipeline import tracking
from pipeline.cache import StageCache
from pipeline.config import PipelineConfig
from pipeline.contract import InstanceOutputs, StageInputs, StageSpec
from pipeline.graph import (
    SIGNAL_PRODUCERS,
    STAGES,
    Instance,
    cache_key,
    data_fingerprint,
    data_location,
    instances,
    plan,
    upstream_keys,
)

if TYPE_CHECKING:
    from mlflow.data.dataset import Dataset

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
    """Run `target` and the stages it needs, once per (fold, seed) where they differ; `force` reruns the
    target even if cached.

    A stage instance is identified by its cache key, so a stage that reads no seed runs once per
    fold, ingest once in all, and the backtest once over the outputs of every instance.
    """
    stages = plan(target, config)
    target = stages[-1].name  # an old alias resolved
    cache = StageCache(config.cache_dir)
    cache.ensure_writable()
    uri = tracking.setup(config)
    log.info("tracking to %s (experiment %r)", uri, config.tracking.experiment)
    runs = instances(config)
    dataset = tracking.data_set(config, data_location(config), data_fingerprint(config))
    if len(runs) > 1:
        log.info(
            "%d folds x %d seeds: learned stages run per (fold, seed), each cached on its own",
            len(config.folds()),
            len(config.seeds()),
        )
    done: dict[tuple[str, str], StageOutcome] = {}  # (stage, key) -> outcome, in run order
    per_instance: list[dict[str, StageOutcome]] = [{} for _ in runs]
    with tracking.parent_run(config, target, config_file, dataset) as parent:
        log.info("MLflow parent run %s", parent.info.run_id)
        for stage in stages:
            # A consumer of every instance's signals runs once on the run's config; any other stage once per instance.
            groups = (
                [(runs, per_instance)]
                if stage.consumes_signals
                else [([run], [outcomes]) for run, outcomes in zip(runs, per_instance, strict=True)]
            )
            for group, group_outcomes in groups:
                stage_config = config if stage.consumes_signals else group[0].config
                upstream = upstream_keys(
                    stage, group, [{name: o.key for name, o in outcomes.items()} for outcomes in group_outcomes]
                )
                key = cache_key(stage, stage_config, upstream)
                if (stage.name, key) not in done:
                    tags = instance_tags(stage, group[0]) if len(runs) > 1 and not stage.consumes_signals else {}
                    inputs = StageInputs(
                        stage.name,
                        [
                            InstanceOutputs(
                                run.fold, run.seed, run.dates, {name: o.output for name, o in outcomes.items()}
                            )
                            for run, outcomes in zip(group, group_outcomes, strict=True)
                        ],
                        SIGNAL_PRODUCERS,
                        uri,
                    )
                    try:
                        done[(stage.name, key)] = _run_or_reuse(
                            stage,
                            key,
                            stage_config,
                            cache,
                            inputs,
                            RunContext(parent.info.run_id, dataset, tags),
                            force and stage.name == target,
                        )
                    except KeyboardInterrupt:
                        raise Interrupted(signal.SIGINT, stage.name) from None
                    except Interrupted as exc:
                        raise Interrupted(exc.signum, exc.stage or stage.name) from None
                for outcomes in group_outcomes:
                    outcomes[stage.name] = done[(stage.name, key)]
        mlflow.log_metric("stages_run", sum(not o.reused for o in done.values()))
    return list(done.values())


def instance_tags(stage: StageSpec, instance: Instance) -> dict[str, str]:
    """The fold and seed an instance's run stands for: only those the stage reads."""
    tags = {}
    if any(key == "split" or key.startswith("split.") for key in stage.reads):
        tags["fold"] = str(instance.fold)
    if "seed" in stage.reads:
        tags["seed"] = str(instance.seed)
    return tags


@dataclass(frozen=True)
class RunContext:
    """Where a stage's run goes in MLflow: under the invocation's run, with its data set and the instance's tags."""

    parent_run_id: str
    dataset: Dataset
    tags: dict[str, str]


def _run_or_reuse(
    stage: StageSpec,
    key: str,
    config: PipelineConfig,
    cache: StageCache,
    inputs: StageInputs,
    context: RunContext,
    force: bool,
) -> StageOutcome:
    with cache.lock(stage.name, key):
        manifest = cache.lookup(stage.name, key)
        if manifest is None or force:
            return _execute(stage, key, config, cache, inputs, context)
        outcome = _reuse(stage, key, cache.path(stage.name, key), manifest, context, config)
        if outcome.produced_by != manifest["run_id"]:  # artifacts logged again into this store
            cache.update(stage.name, key, run_id=outcome.produced_by)
        return outcome


def stage_status(config: PipelineConfig) -> list[dict[str, str]]:
    """Each stage under this config (its first fold and seed): cached or not, when and by which run,
    where its outputs are."""
    cache = StageCache(config.cache_dir)
    client = mlflow.MlflowClient(tracking.tracking_uri(config))
    runs = instances(config)
    keys: list[dict[str, str]] = [{} for _ in runs]
    rows = []
    for stage in STAGES.values():
        if stage.consumes_signals:
            key = cache_key(stage, config, upstream_keys(stage, runs, keys))
        else:
            for run, run_keys in zip(runs, keys, strict=True):
                run_keys[stage.name] = cache_key(stage, run.config, upstream_keys(stage, [run], [run_keys]))
            key = keys[0][stage.name]
        manifest = cache.lookup(stage.name, key)
        if manifest is None:
            rows.append(
                {
                    "stage": stage.name,
                    "state": "not cached: will run",
                    "created": "-",
                    "run": "-",
                    "output": "-",
                    "artifacts": "-",
                }
            )
            continue
        try:
            artifacts = client.get_run(manifest["run_id"]).info.artifact_uri
        except mlflow.exceptions.MlflowException:
            artifacts = "run not in this tracking store"
        rows.append(
            {
                "stage": stage.name,
                "state": "cached",
                "created": manifest.get("created_at", "-"),
                "run": manifest["run_id"],
                "output": str(cache.path(stage.name, key)),
                "artifacts": artifacts,
            }
        )
    return rows


def _reuse(
    stage: StageSpec, key: str, output: Path, manifest: dict, context: RunContext, config: PipelineConfig
) -> StageOutcome:
    """Log the cached output as a run of this invocation.

    When the run that produced it is not in the current tracking store (another store, or a
    cleared one), this run logs the output's artifacts and its checkpoints (as LoggedModels) again
    and stands as its producer, so the UI and the notebook find them.
    """
    produced_in_store = tracking.run_exists(manifest["run_id"])
    log.info(
        "stage %s: inputs unchanged, reusing %s (produced by run %s%s)",
        stage.name,
        output,
        manifest["run_id"],
        "" if produced_in_store else ", which this tracking store does not have: logging its artifacts again",
    )
    tags = {"cache_key": key, "reused": "true", **context.tags}
    tags["produced_by_run_id" if produced_in_store else "first_produced_by_run_id"] = manifest["run_id"]
    with tracking.stage_run(stage.name, manifest["params"], tags, context.dataset) as run:
        linked: set[str] = set()
        if not produced_in_store:  # the new store's Models page lists this run's checkpoints too
            models = {name: output / path for name, path in stage.models_for(config).items()}
            linked = tracking.log_models(run.info.run_id, models, manifest["params"], manifest["metrics"])
        tracking.log_metrics({name: value for name, value in manifest["metrics"].items() if name not in linked})
        tracking.log_children(manifest.get("children", []))
        tracking.log_to_run(context.parent_run_id, [output / name for name in manifest.get("parent_artifacts", [])])
        if not produced_in_store:
            tracking.log_artifacts([output / name for name in manifest.get("artifacts", [])])
    producer = manifest["run_id"] if produced_in_store else run.info.run_id
    return StageOutcome(stage.name, key, output, True, run.info.run_id, producer, 0.0, manifest["summary"])


def _execute(
    stage: StageSpec, key: str, config: PipelineConfig, cache: StageCache, inputs: StageInputs, context: RunContext
) -> StageOutcome:
    log.info("stage %s: running (cache key %s)", stage.name, key)
    params = {name: config.section(name) for name in stage.reads}
    seed_everything(config.seed)
    models = stage.models_for(config)
    heavy = bool(models or stage.signal_sources)  # training and forecasting stages: sample CPU, memory and GPU use
    with tracking.stage_run(
        stage.name, params, {"cache_key": key, "reused": "false", **context.tags}, context.dataset, heavy
    ) as run:
        try:
            with cache.writing(stage.name, key, stage.progress_files) as (folder, manifest):
                started = time.perf_counter()
                result = stage.run(stage.view(config), inputs, folder)
                seconds = time.perf_counter() - started
                check_outputs(stage, config, folder)
                metrics = {**result.metrics, "seconds": seconds}
                linked = tracking.log_models(
                    run.info.run_id, {name: folder / path for name, path in models.items()}, params, metrics
                )
                tracking.log_metrics({name: value for name, value in metrics.items() if name not in linked})
                tracking.log_history(result.history)
                tracking.log_artifacts(result.artifacts)
                children = [asdict(child) for child in result.children]
                tracking.log_children(children)
                tracking.log_to_run(context.parent_run_id, result.parent_artifacts)
                manifest.update(
                    run_id=run.info.run_id,
                    params=params,
                    metrics=metrics,
                    summary=result.summary,
                    children=children,
                    parent_artifacts=[str(path.relative_to(folder)) for path in result.parent_artifacts],
                    artifacts=[str(path.relative_to(folder)) for path in result.artifacts],
                )
        except (OSError, RuntimeError) as exc:
            cause = storage_problem(exc, cache.root)
            if cause is None:
                raise
            if stage.resumable:
                where, kept = cache.partial(stage.name, key), "its progress is kept there to resume from"
            else:
                where, kept = cache.path(stage.name, key), "nothing half-written was kept"
            raise StorageError(
                f"stage {stage.name} could not write {getattr(exc, 'filename', None) or where}: {cause} ({exc}); "
                f"{kept}. Make room (or raise the limit) and rerun: finished stages are reused"
            ) from exc
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
    import torch  # only stages that run need it; a cached rerun does not

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
