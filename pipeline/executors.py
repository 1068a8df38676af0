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

import mlflow

from data_prep.errors import ConfigError, Interrupted
from pipeline import tracking
from pipeline.cache import StageCache
from pipeline.config import PipelineConfig, RayConfig
from pipeline.graph import STAGES
from pipeline.progress import InstanceBoard, ProgressView, Row
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
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as exc:
        raise ConfigError(
            f"ray.address {config.ray.address!r}: no Ray cluster answers there ({exc}); start one (ray start --head) "
            'or leave ray.address empty ("") to start Ray on this machine'
        ) from exc
    finally:
        for signum, handler in handlers.items():  # Ray's own handlers would end the run without its message
            signal.signal(signum, handler)
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        resources = ray.cluster_resources()
        log.info("Ray: %d node(s), %s CPUs, %s GPUs", len(nodes), resources.get("CPU", 0), resources.get("GPU", 0))
        check_tracking_store(tracking_uri, nodes, ray.util.get_node_ip_address())
        check_cache_on_nodes(cache_root, nodes)
        executor = RayExecutor(config.ray, driver_threads(config), resources.get("GPU", 0) > 0, cache_root)
        check_resources(executor.cpus_per_task, nodes)
        yield executor
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
        with torch_threads_kept(self.threads):
            return [
                run_job(job, tracking.create_stage_run(context.parent_run_id, job.stage, job.tags), context, node)
                for job in jobs
            ]


@contextmanager
def torch_threads_kept(threads: int | None) -> Iterator[None]:
    """Give this process its torch thread count back after a run that set `threads` (a notebook, a test)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


class RayExecutor:
    def __init__(self, settings: RayConfig, threads: int, cluster_has_gpus: bool, cache_root: Path):
        self.settings, self.cluster_has_gpus, self.cache = settings, cluster_has_gpus, StageCache(cache_root)
        self.threads: int | None = threads  # set in every worker: they would default to their reservation
        self.cpus_per_task = settings.cpus_per_task or threads

    def run(self, jobs: list[Job], context: RunContext) -> list[StageOutcome]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        board: Any = (
            ray.remote(InstanceBoard)
            .options(num_cpus=0, scheduling_strategy=here, max_restarts=-1, max_task_retries=-1)
            .remote([job.label for job in jobs])
        )
        task = ray.remote(run_job_on_worker)
        done: dict[tuple[str, str], StageOutcome] = {}
        pending: dict[Any, tuple[Job, str]] = {}  # task -> its job and MLflow run
        waiting = list(jobs)
        stop = StopRequest()
        with ProgressView(f"{len(jobs)} stage instances on Ray") as view, stop:
            try:
                while waiting or pending:
                    stop.check()
                    for job in [job for job in waiting if all(need in done for need in job.needs)]:
                        waiting.remove(job)
                        run_id = tracking.create_stage_run(context.parent_run_id, job.stage, job.tags)
                        if self.cached(job):  # reusing only logs to MLflow: no worker, CPUs or GPU to hold
                            done[job.id] = run_job(job, run_id, context, node_label())
                            board.finished.remote(job.label, "reused", done[job.id].node)
                            continue
                        ref = task.options(
                            num_cpus=self.cpus_per_task * self.processes(job),
                            num_gpus=self.gpus(job),
                            max_retries=self.settings.max_retries,
                            name=job.label,
                        ).remote(job, run_id, context, board)
                        pending[ref] = (job, run_id)
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5) if pending else ([], [])
                    for ref in ready:
                        job, _ = pending.pop(ref)
                        outcome = self.result(ref, job, board)
                        done[job.id] = outcome
                        board.finished.remote(job.label, "reused" if outcome.reused else "done", outcome.node)
                    view.update(snapshot(board))
            except KeyboardInterrupt:
                self.cancel(pending)
                raise Interrupted(signal.SIGINT, self.running(pending, board)) from None
            except Interrupted as exc:
                self.cancel(pending)
                raise Interrupted(exc.signum, exc.stage or self.running(pending, board)) from None
            except BaseException:
                self.cancel(pending)
                view.update(snapshot(board))
                raise
        return [done[job.id] for job in jobs]

    def cached(self, job: Job) -> bool:
        return not job.force and self.cache.lookup(job.stage, job.key) is not None

    def processes(self, job: Job) -> int:
        """How many processes the instance runs (torchrun under `kronos.nproc`): each gets `threads` CPUs."""
        key = STAGES[job.stage].processes_key
        return int(job.config.section(key)) if key else 1

    def gpus(self, job: Job) -> int:
        """One GPU per process when the instance's torch device resolves to CUDA: named, or `auto` on a
        cluster with GPUs."""
        key = STAGES[job.stage].device_key
        device = str(job.config.section(key)) if key else "cpu"
        uses_gpu = device.startswith("cuda") or (device == "auto" and self.cluster_has_gpus)
        return self.processes(job) if uses_gpu else 0

    def result(self, ref: Any, job: Job, board: Any) -> StageOutcome:
        """The instance's outcome, or its own error (a ConfigError stays a ConfigError) once Ray's retries are spent."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            board.finished.remote(job.label, "failed")
            cause: BaseException | None = exc
            while isinstance(cause, ray.exceptions.RayTaskError):  # a task that failed inside another task
                cause = getattr(cause, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from exc
            raise
        except ray.exceptions.RayError as exc:  # the worker or its node died once too often, out of memory, ...
            board.finished.remote(job.label, "failed")
            raise RuntimeError(
                f"{job.label}: Ray gave up on it after {self.settings.max_retries} retries ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}); finished instances are cached and a training resumes from its last "
                "checkpoint: rerun, or raise ray.max_retries"
            ) from exc

    @staticmethod
    def running(pending: dict[Any, tuple[Job, str]], board: Any) -> str:
        """The instances that were running when the run was stopped, for the message."""
        rows = {row.label: row.state for row in snapshot(board)}
        return ", ".join(job.label for job, _ in pending.values() if rows.get(job.label) == "running")

    @staticmethod
    def cancel(pending: dict[Any, tuple[Job, str]]) -> None:
        import ray

        client = mlflow.MlflowClient()
        for ref, (_, run_id) in pending.items():
            ray.cancel(ref)  # a running training saves nothing more; its last checkpoint stays to resume from
            client.set_terminated(run_id, "KILLED")


class StopRequest:
    """SIGTERM noted while Ray's calls run, raised between them: an exception raised inside Ray's
    Cython code by a signal handler turns into a SystemError that loses the signal."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __enter__(self) -> StopRequest:
        self.previous = signal.signal(signal.SIGTERM, self.note)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self.previous)

    def note(self, signum: int, frame: object) -> None:
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


def snapshot(board: Any) -> list[Row]:
    """The board's rows; none when its actor is gone (the view is not worth failing a run for)."""
    import ray

    try:
        return ray.get(board.snapshot.remote(), timeout=10)
    except ray.exceptions.RayError:
        return []


def check_resources(cpus_per_task: float, nodes: list[dict[str, Any]]) -> None:
    """Refuse an instance no node can hold: Ray would queue it for ever."""
    largest = max(node["Resources"].get("CPU", 0.0) for node in nodes)
    if cpus_per_task > largest:
        raise ConfigError(
            f"each stage instance asks for {cpus_per_task:g} CPUs (threads, or ray.cpus_per_task) but the largest Ray "
            f"node has {largest:g}: set --set threads={max(int(largest), 1)} (or ray.cpus_per_task) at most"
        )


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


def check_tracking_store(uri: str, nodes: list[dict[str, Any]], driver: str) -> None:
    """A SQLite store (and the artifacts beside it) lives on one machine: with the driver and the nodes on
    several, refuse."""
    hosts = sorted({driver, *(node["NodeManagerAddress"] for node in nodes)})
    if len(hosts) > 1 and uri.startswith(("sqlite:", "file:")):
        raise ConfigError(
            f"tracking.uri {uri} is a local store, but this run spans {len(hosts)} machines "
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
