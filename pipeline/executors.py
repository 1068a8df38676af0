"""Executors: where the stage instances of a run execute.

- `local` (the default): in this process, one after another, in plan order.
- `ray`: every instance is a Ray task, submitted as soon as the instances it reads are done, so
  folds, seeds and independent stages overlap as far as the graph and the machines allow; on a
  Ray instance started on this machine or on a running cluster (`ray.address`).

Both call `runner.run_job` on the same jobs, so cache keys, outputs and tracking are the same.
The driver (this process) owns the invocation's MLflow run and creates each instance's nested run;
the process that runs an instance logs into the run it is given.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from data_prep.errors import ConfigError, Interrupted
from pipeline import tracking
from pipeline.config import PipelineConfig, RayConfig
from pipeline.graph import STAGES
from pipeline.progress import InstanceBoard, ProgressView
from pipeline.runner import Job, RunContext, StageOutcome, run_job

log = logging.getLogger(__name__)


class Executor(Protocol):
    threads: int | None  # torch's threads in every instance; None: the process's default

    def run(self, jobs: list[Job], context: RunContext) -> list[StageOutcome]:
        """Every job's outcome, in job order; a job starts only after the jobs it needs."""
        ...


@contextmanager
def open_executor(config: PipelineConfig, cache_root: Path, tracking_uri: str) -> Iterator[Executor]:
    if config.executor == "local":
        yield LocalExecutor(config.threads)
        return
    ray = import_ray()
    address = config.ray.address or "local"  # "local" always starts a new instance, never joins one
    log.info("starting Ray (address %s)", address)
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        log.info(
            "Ray: %d node(s), %s CPUs, %s GPUs",
            len(nodes),
            ray.cluster_resources().get("CPU", 0),
            ray.cluster_resources().get("GPU", 0),
        )
        check_tracking_store(tracking_uri, nodes)
        check_cache_on_nodes(cache_root, nodes)
        yield RayExecutor(config.ray, driver_threads(config), ray.cluster_resources().get("GPU", 0) > 0)
    finally:
        ray.shutdown()


def driver_threads(config: PipelineConfig) -> int:
    """`threads`, else torch's default here: what the local executor would use, so both give the same bits."""
    import torch

    return config.threads or torch.get_num_threads()


class LocalExecutor:
    def __init__(self, threads: int | None):
        self.threads = threads  # None: leave torch's default

    def run(self, jobs: list[Job], context: RunContext) -> list[StageOutcome]:
        node = socket.gethostname()
        return [
            run_job(job, tracking.create_stage_run(context.parent_run_id, job.stage, job.tags), context, node)
            for job in jobs
        ]


class RayExecutor:
    def __init__(self, settings: RayConfig, threads: int, cluster_has_gpus: bool):
        self.settings, self.cluster_has_gpus = settings, cluster_has_gpus
        self.threads: int | None = threads  # set in every worker: they would default to their reservation
        self.cpus_per_task = settings.cpus_per_task or threads

    def run(self, jobs: list[Job], context: RunContext) -> list[StageOutcome]:
        import ray

        board: Any = ray.remote(InstanceBoard).options(num_cpus=0).remote([job.label for job in jobs])
        task = ray.remote(run_job_on_worker)
        done: dict[tuple[str, str], StageOutcome] = {}
        pending: dict[Any, Job] = {}
        waiting = list(jobs)
        with ProgressView(f"{len(jobs)} stage instances on Ray") as view:
            try:
                while waiting or pending:
                    for job in [job for job in waiting if all(need in done for need in job.needs)]:
                        waiting.remove(job)
                        gpus = 1 if self.uses_gpu(job) else 0
                        run_id = tracking.create_stage_run(context.parent_run_id, job.stage, job.tags)
                        ref = task.options(
                            num_cpus=self.cpus_per_task,
                            num_gpus=gpus,
                            max_retries=self.settings.max_retries,
                            name=job.label,
                        ).remote(job, run_id, context, board)
                        pending[ref] = job
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                    for ref in ready:
                        job = pending.pop(ref)
                        outcome = self.result(ref, job, board)
                        done[job.id] = outcome
                        board.finished.remote(job.label, "reused" if outcome.reused else "done", outcome.node)
                    view.update(ray.get(board.snapshot.remote()))
            except KeyboardInterrupt:
                self.cancel(pending)
                raise Interrupted(signal.SIGINT, ", ".join(job.label for job in pending.values())) from None
            except Interrupted as exc:
                self.cancel(pending)
                raise Interrupted(exc.signum, exc.stage or ", ".join(job.label for job in pending.values())) from None
            except BaseException:
                self.cancel(pending)
                view.update(ray.get(board.snapshot.remote()))
                raise
        return [done[job.id] for job in jobs]

    def uses_gpu(self, job: Job) -> bool:
        """Whether the instance's torch device resolves to CUDA: named, or `auto` on a cluster with GPUs."""
        key = STAGES[job.stage].device_key
        if not key:
            return False
        device = str(job.config.section(key))
        return device.startswith("cuda") or (device == "auto" and self.cluster_has_gpus)

    def result(self, ref: Any, job: Job, board: Any) -> StageOutcome:
        """The instance's outcome, or its own error (a ConfigError stays a ConfigError) once Ray's retries are spent."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            board.finished.remote(job.label, "failed")
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
            board.finished.remote(job.label, "failed")
            raise RuntimeError(
                f"{job.label}: its worker died {self.settings.max_retries + 1} time(s) ({type(exc).__name__}); "
                "finished instances are cached and training resumes from its last checkpoint: rerun, or raise "
                "ray.max_retries"
            ) from None

    @staticmethod
    def cancel(pending: dict[Any, Job]) -> None:
        import ray

        for ref in pending:
            ray.cancel(ref)  # a running training saves nothing more; its last checkpoint stays to resume from


def run_job_on_worker(job: Job, run_id: str, context: RunContext, board: Any) -> StageOutcome:
    """A Ray task: run one stage instance in a worker process on whichever node Ray chose."""
    import ray

    node = node_label()
    board.started.remote(job.label, node)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    if context.cwd.is_dir():  # relative data paths in the config resolve as on the driver
        os.chdir(context.cwd)
    tracking.use_store(context.tracking_uri, context.experiment_id)
    job.inputs.fan_out = fan_out_on_ray
    ray.get_runtime_context()  # fails here, not mid-stage, if the worker lost its Ray connection
    return run_job(job, run_id, context, node)


def node_label() -> str:
    """The Ray node this process runs on: its address and the start of its id."""
    import ray

    return f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"


def fan_out_on_ray(
    jobs: list[tuple[Any, ...]],
    call: Callable[..., Any],
    initializer: Callable[..., None],
    initargs: tuple,
    workers: int | None = None,
) -> list[Any]:
    """`call(*job)` for every job, each a Ray task (one CPU), in job order: the Ray form of
    evaluation.evaluate.run_in_processes, so the backtest's strategies spread over the cluster."""
    import ray

    task = ray.remote(num_cpus=1)(call_initialized)
    return ray.get([task.remote(initializer, initargs, call, job) for job in jobs])


_initialized_with: tuple | None = None  # the initializer a worker process last ran, and its arguments


def call_initialized(initializer: Callable[..., None], initargs: tuple, call: Callable[..., Any], job: tuple) -> Any:
    """Run `initializer(*initargs)` once per worker process (it sets process state, e.g. qlib.init), then `call`."""
    global _initialized_with
    key = (initializer.__module__, initializer.__qualname__, initargs)
    if _initialized_with != key:
        initializer(*initargs)
        _initialized_with = key
    return call(*job)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            'executor: ray needs Ray, which is not installed: pip install -e ".[ray]" (or run with --executor local)'
        ) from None
    return ray


def check_tracking_store(uri: str, nodes: list[dict[str, Any]]) -> None:
    """A SQLite store (and the artifacts beside it) lives on one machine: with nodes on several, refuse."""
    hosts = sorted({node["NodeManagerAddress"] for node in nodes})
    if len(hosts) > 1 and not uri.startswith(("http://", "https://", "databricks")):
        raise ConfigError(
            f"tracking.uri {uri} is a local store, but the Ray cluster spans {len(hosts)} machines "
            f"({', '.join(hosts)}), which cannot all write it: start an MLflow tracking server "
            "(mlflow server --backend-store-uri postgresql://... --artifacts-destination s3://...) and set "
            "tracking.uri=http://HOST:5000"
        )


def check_cache_on_nodes(cache_root: Path, nodes: list[dict[str, Any]]) -> None:
    """Refuse to start unless every node reads what this driver wrote into the cache and can write there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probes = cache_root / ".nodes"
    probes.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    (probes / token).write_text(token)
    probe = ray.remote(probe_cache)
    try:
        refs = [
            probe.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(str(probes), token)
            for node in nodes
        ]
        for node, problem in zip(nodes, ray.get(refs, timeout=120), strict=True):
            if problem:
                raise ConfigError(
                    f"cache_dir {cache_root} on node {node['NodeManagerAddress']} ({node['NodeID'][:8]}): {problem}. "
                    "Every node must read and write the same cache: mount one shared filesystem at that path on "
                    "every node, or set cache_dir to such a path"
                )
    finally:
        (probes / token).unlink(missing_ok=True)


def probe_cache(folder: str, token: str) -> str:
    """On one node: "" when the driver's probe file is readable and a file can be written beside it, else why not."""
    probes = Path(folder)
    try:
        if (probes / token).read_text() != token:
            return "it sees a different file under the same name, so it is not the driver's filesystem"
    except OSError as exc:
        return f"it does not see the file the driver wrote there ({exc.strerror}): it is not a shared filesystem"
    mine = probes / f"{token}-{socket.gethostname()}-{os.getpid()}"
    try:
        mine.write_text(token)
        mine.unlink()
    except OSError as exc:
        return f"it cannot write there ({exc.strerror})"
    return ""
