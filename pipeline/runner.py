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
    needs,
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
    node: str = ""  # the machine (Ray node) that ran or reused it


@dataclass(frozen=True)
class Job:
    """One stage instance to run or reuse: everything a process needs to do it, on any executor."""

    stage: str
    key: str
    config: PipelineConfig
    inputs: StageInputs
    tags: dict[str, str]  # the fold and seed it stands for
    needs: tuple[tuple[str, str], ...]  # (stage, key) of the instances whose outputs it reads
    label: str  # e.g. "kronos_predictor [fold 1, seed 2]"
    force: bool  # rerun even when cached

    @property
    def id(self) -> tuple[str, str]:
        return (self.stage, self.key)


@dataclass(frozen=True)
class RunContext:
    """What every instance of one invocation shares: where it tracks to and where the cache is."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    dataset: Dataset
    cache_root: Path  # absolute: workers may start elsewhere
    cwd: Path  # the driver's working directory, against which relative data paths resolve
    threads: int | None  # torch's threads in every instance (PipelineConfig.threads); None: this process's default


def plan_jobs(config: PipelineConfig, target: str, force: bool, cache_root: Path, tracking_uri: str) -> list[Job]:
    """Every stage instance `target` needs, each after the instances it reads, without duplicates.

    A stage instance is identified by its cache key, so a stage that reads no seed runs once per
    fold, ingest once in all, and the backtest once over the outputs of every instance.
    """
    cache = StageCache(cache_root)
    runs = instances(config)
    jobs: dict[tuple[str, str], Job] = {}
    per_instance: list[dict[str, str]] = [{} for _ in runs]  # stage -> key, per (fold, seed)
    for stage in plan(target, config):
        # A consumer of every instance's signals runs once on the run's config; any other stage once per instance.
        groups = (
            [(runs, per_instance)]
            if stage.consumes_signals
            else [([run], [keys]) for run, keys in zip(runs, per_instance, strict=True)]
        )
        for group, group_keys in groups:
            stage_config = config if stage.consumes_signals else group[0].config
            key = cache_key(stage, stage_config, upstream_keys(stage, group, group_keys))
            for keys in group_keys:
                keys[stage.name] = key
            if (stage.name, key) in jobs:
                continue
            reads = [
                {name: keys[name] for name in needs(stage, run.config)}
                for run, keys in zip(group, group_keys, strict=True)
            ]
            inputs = StageInputs(
                stage.name,
                [
                    InstanceOutputs(
                        run.fold, run.seed, run.dates, {name: cache.path(name, k) for name, k in instance_reads.items()}
                    )
                    for run, instance_reads in zip(group, reads, strict=True)
                ],
                SIGNAL_PRODUCERS,
                tracking_uri,
            )
            tags = instance_tags(stage, group[0]) if len(runs) > 1 and not stage.consumes_signals else {}
            label = stage.name + (f" [{', '.join(f'{k} {v}' for k, v in tags.items())}]" if tags else "")
            upstream = tuple(dict.fromkeys(item for instance_reads in reads for item in instance_reads.items()))
            jobs[(stage.name, key)] = Job(
                stage.name, key, stage_config, inputs, tags, upstream, label, force and stage.name == target
            )
    return list(jobs.values())


def run_pipeline(config: PipelineConfig, target: str, force: bool = False, config_file: str = "") -> list[StageOutcome]:
    """Run `target` and the stages it needs, once per (fold, seed) where they differ, on the
    configured executor; `force` reruns the target even if cached."""
    from pipeline.executors import open_executor

    stages = plan(target, config)
    target = stages[-1].name  # an old alias resolved
    cache = StageCache(config.cache_dir.resolve())
    cache.ensure_writable()
    uri = tracking.setup(config)
    log.info("tracking to %s (experiment %r)", uri, config.tracking.experiment)
    jobs = plan_jobs(config, target, force, cache.root, uri)
    if len(instances(config)) > 1:
        log.info(
            "%d folds x %d seeds: learned stages run per (fold, seed), each cached on its own",
            len(config.folds()),
            len(config.seeds()),
        )
    dataset = tracking.data_set(config, data_location(config), data_fingerprint(config))
    with open_executor(config, cache.root, uri) as executor:
        with tracking.parent_run(config, target, config_file, dataset) as parent:
            log.info("MLflow parent run %s", parent.info.run_id)
            context = RunContext(
                parent.info.run_id,
                parent.info.experiment_id,
                uri,
                dataset,
                cache.root,
                Path.cwd().resolve(),
                executor.threads,
            )
            outcomes = executor.run(jobs, context)
            mlflow.log_metric("stages_run", sum(not o.reused for o in outcomes))
    if target == "backtest":  # each learned source's model becomes a registered version (docs/live.md)
        from pipeline.registry import register_backtest

        register_backtest(config, outcomes[-1].produced_by)
    return outcomes


def instance_tags(stage: StageSpec, instance: Instance) -> dict[str, str]:
    """The fold and seed an instance's run stands for: only those the stage reads."""
    tags = {}
    if any(key == "split" or key.startswith("split.") for key in stage.reads):
        tags["fold"] = str(instance.fold)
    if "seed" in stage.reads:
        tags["seed"] = str(instance.seed)
    return tags


def run_job(job: Job, run_id: str, context: RunContext, node: str) -> StageOutcome:
    """Run or reuse one stage instance, logging into its run `run_id`: in the driver's process
    (local executor) or in a Ray worker on any node. Ends with Interrupted on Ctrl-C or SIGTERM."""
    stage = STAGES[job.stage]
    cache = StageCache(context.cache_root)
    try:
        with cache.lock(stage.name, job.key):
            manifest = cache.lookup(stage.name, job.key)
            if manifest is None or job.force:
                outcome = _execute(stage, job, cache, run_id, context, node)
            elif manifest["run_id"] == run_id:  # this run produced it: a retried task whose worker died after that
                output, seconds = cache.path(stage.name, job.key), manifest["metrics"]["seconds"]
                outcome = StageOutcome(stage.name, job.key, output, False, run_id, run_id, seconds, manifest["summary"])
            else:
                outcome = _reuse(stage, job, cache.path(stage.name, job.key), manifest, run_id, context, node)
                if outcome.produced_by != manifest["run_id"]:  # artifacts logged again into this store
                    cache.update(stage.name, job.key, run_id=outcome.produced_by)
    except KeyboardInterrupt:
        raise Interrupted(signal.SIGINT, stage.name) from None
    except Interrupted as exc:
        raise Interrupted(exc.signum, exc.stage or stage.name) from None
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
    stage: StageSpec, job: Job, output: Path, manifest: dict, run_id: str, context: RunContext, node: str
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
    tags = {"cache_key": job.key, "reused": "true", "node": node}
    tags["produced_by_run_id" if produced_in_store else "first_produced_by_run_id"] = manifest["run_id"]
    with tracking.stage_run(run_id, manifest["params"], tags, context.dataset):
        linked: set[str] = set()
        if not produced_in_store:  # the new store's Models page lists this run's checkpoints too
            models = {name: output / path for name, path in stage.models_for(job.config).items()}
            linked = tracking.log_models(run_id, models, manifest["params"], manifest["metrics"])
        tracking.log_metrics({name: value for name, value in manifest["metrics"].items() if name not in linked})
        tracking.log_children(manifest.get("children", []))
        tracking.log_to_run(context.parent_run_id, [output / name for name in manifest.get("parent_artifacts", [])])
        if not produced_in_store:
            tracking.log_artifacts([output / name for name in manifest.get("artifacts", [])])
    producer = manifest["run_id"] if produced_in_store else run_id
    return StageOutcome(stage.name, job.key, output, True, run_id, producer, 0.0, manifest["summary"], node)


def _execute(
    stage: StageSpec, job: Job, cache: StageCache, run_id: str, context: RunContext, node: str
) -> StageOutcome:
    log.info("stage %s: running (cache key %s)", job.label, job.key)
    config, key = job.config, job.key
    params = {name: config.section(name) for name in stage.reads}
    threads = seed_everything(config.seed, context.threads)
    models = stage.models_for(config)
    heavy = bool(models or stage.signal_sources)  # training and forecasting stages: sample CPU, memory and GPU use
    tags = {"cache_key": key, "reused": "false", "node": node, "torch_threads": str(threads)}
    with tracking.stage_run(run_id, params, tags, context.dataset, heavy):
        try:
            with cache.writing(stage.name, key, stage.progress_files) as (folder, manifest):
                started = time.perf_counter()
                result = stage.run(stage.view(config), job.inputs, folder)
                seconds = time.perf_counter() - started
                check_outputs(stage, config, folder)
                metrics = {**result.metrics, "seconds": seconds}
                linked = tracking.log_models(
                    run_id, {name: folder / path for name, path in models.items()}, params, metrics
                )
                tracking.log_metrics({name: value for name, value in metrics.items() if name not in linked})
                tracking.log_history(result.history)
                tracking.log_artifacts(result.artifacts)
                children = [asdict(child) for child in result.children]
                tracking.log_children(children)
                tracking.log_to_run(context.parent_run_id, result.parent_artifacts)
                manifest.update(
                    run_id=run_id,
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
    log.info("stage %s: done in %.1fs", job.label, seconds)
    output = cache.path(stage.name, key)
    return StageOutcome(stage.name, key, output, False, run_id, run_id, seconds, result.summary, node)


class StageContractError(RuntimeError):
    """A stage returned without writing an output it declares."""


def check_outputs(stage: StageSpec, config: PipelineConfig, folder: Path) -> None:
    missing = [name for name in stage.outputs_for(config) if not (folder / name).exists()]
    if missing:
        raise StageContractError(f"stage {stage.name!r} returned without writing its declared output(s) {missing}")


def seed_everything(seed: int, threads: int | None = None) -> int:
    """Seed every generator; with `threads`, fix torch's thread count, which decides a training's last
    bits. Returns the thread count the stage runs with."""
    import torch  # only stages that run need it; a cached rerun does not

    if threads is not None:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.get_num_threads()
