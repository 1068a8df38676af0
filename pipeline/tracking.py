"""MLflow tracking: one parent run per invocation, one nested run per stage.

The default store is a SQLite database inside ./mlruns with artifacts beside it (MLflow 3
refuses its old plain-folder store). Qlib's own recorder is pointed at the same URI.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.data.dataset import Dataset
from mlflow.entities import Metric

from data_prep.errors import ConfigError, ServiceError
from pipeline.config import REPO_ROOT, PipelineConfig

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("mlruns")


def tracking_uri(config: PipelineConfig) -> str:
    """Config first, then MLFLOW_TRACKING_URI, then SQLite inside ./mlruns."""
    if config.tracking.uri:
        return config.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


SERVER_TIMEOUT = 5.0  # seconds to wait for a tracking server before refusing to start


def check_server(uri: str) -> None:
    """Refuse to start, naming the server, when a tracking server does not answer: MLflow's own
    client retries for minutes before it fails, in the middle of a run."""
    import ssl
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_TIMEOUT):
            pass
    except urllib.error.HTTPError:
        return  # it answers; whether it lets this run in (authentication) is MLflow's client's to say
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(getattr(exc, "reason", None), ssl.SSLError):
            return  # it answers over TLS; MLflow's client applies its own certificate settings
        reason = getattr(exc, "reason", exc)
        raise ServiceError(
            f"the tracking server {uri} does not answer ({reason}): start it, or point tracking.uri (or "
            "MLFLOW_TRACKING_URI) at one that runs, e.g. --set tracking.uri=sqlite:///mlruns/mlflow.db"
        ) from exc


def setup(config: PipelineConfig) -> str:
    """Point MLflow at the store and select (or create) the experiment; returns the URI.

    A new SQLite store is created under a file lock, so two first runs sharing it do not both
    try to create its tables.
    """
    uri = tracking_uri(config)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    if "://" not in uri:
        raise ConfigError(
            f"tracking.uri {uri!r} is a plain path, which MLflow 3 does not take as a store: use "
            f"sqlite:///{Path(uri).resolve() / 'mlflow.db'} (a database in that folder) or a server, http://host:5000"
        )
    with _store_lock(uri):
        mlflow.set_tracking_uri(uri)
        name = config.tracking.experiment
        if mlflow.get_experiment_by_name(name) is None:
            artifact_root = None
            if uri.startswith("sqlite:///"):
                artifact_root = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
            mlflow.create_experiment(name, artifact_location=artifact_root)
        mlflow.set_experiment(name)
        # The UI opens a model-development experiment on its runs table, not on the GenAI overview.
        mlflow.set_experiment_tag("mlflow.experimentKind", "custom_model_development")
    return uri


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a SQLite store while it may be created; nothing for other stores."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    folder = Path(uri.removeprefix("sqlite:///")).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / ".mlflow-store.lock", "a")
    except OSError as exc:
        raise ConfigError(
            f"tracking.uri {uri!r}: cannot write to {folder} ({exc.strerror}); point tracking.uri at a "
            "writable place, e.g. --set tracking.uri=sqlite:////tmp/mlruns/mlflow.db"
        ) from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def use_store(uri: str, experiment_id: str) -> None:
    """Point this process (a Ray worker) at the driver's store and experiment."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id)


def run_exists(run_id: str) -> bool:
    """Whether the current tracking store holds this run."""
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def flatten(payload: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for MLflow params."""
    if not isinstance(payload, dict):
        return {prefix: payload}
    flat: dict[str, Any] = {}
    for key, value in payload.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


@contextmanager
def parent_run(config: PipelineConfig, target: str, config_file: str, dataset: Dataset) -> Iterator[mlflow.ActiveRun]:
    tags = {
        "git_commit": git_commit(),
        "config_hash": config.config_hash(),
        "config_file": config_file,
        "target_stage": target,
        "profile": config.profile,
        "data": config.data.source if config.data.source != "qlib" else str(config.data.provider_uri),
        "universe": config.data.instruments,
        "split": " | ".join(
            f"{name} {start}..{end}"
            for name, (start, end) in (
                ("train", config.split.train),
                ("valid", config.split.valid),
                ("test", config.split.test),
            )
        ),
    }
    with mlflow.start_run(run_name=f"{target} [{config.profile}]", tags=tags) as run:
        mlflow.log_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "config.yaml")
        mlflow.log_input(dataset, context="data")
        yield run


def data_set(config: PipelineConfig, location: Path, digest: str) -> Dataset:
    """The data a run uses as an MLflow data set: where it is, its fingerprint, universe and segments.

    Two runs on different data never share a digest, so the UI's Dataset column tells them apart.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # a local path matches MLflow's local artifact source twice; either is right
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(location))
    folds = "; ".join(f"test {fold.test[0]}..{fold.test[1]}" for fold in config.folds())
    name = f"{config.data.instruments} [{config.data.source}, {folds}]"
    # MLflow instantiates MetaDataset itself; its base class only declares `profile` abstract
    return MetaDataset(source, name=name, digest=digest[:32])  # type: ignore[abstract]


RUN_IDENTITY_TAGS = ("git_commit", "config_hash", "profile", "data", "universe", "split")


def active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: stages are tracked inside the invocation's run")
    return run.info.run_id


def _inherited_tags() -> dict[str, str]:
    """The identity tags of the active run, for runs nested in it."""
    tags = mlflow.get_run(active_run_id()).data.tags
    return {key: tags[key] for key in RUN_IDENTITY_TAGS if key in tags}


def create_stage_run(parent_run_id: str, stage: str, tags: dict[str, str]) -> str:
    """A run for one stage instance, nested in the invocation's run and carrying its commit, config
    hash and data identity. The driver creates it; whichever process runs the stage logs into it."""
    from mlflow.tracking.context.registry import resolve_tags

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    identity = {key: parent.data.tags[key] for key in RUN_IDENTITY_TAGS if key in parent.data.tags}
    run = client.create_run(
        parent.info.experiment_id,
        run_name=stage,
        # user, source and commit as mlflow.start_run records them
        tags=resolve_tags({"mlflow.parentRunId": parent_run_id, "stage": stage, **identity, **tags}),
    )
    return run.info.run_id


@contextmanager
def stage_run(
    run_id: str, params: dict[str, Any], tags: dict[str, str], dataset: Dataset, system_metrics: bool = False
) -> Iterator[mlflow.ActiveRun]:
    """Log into the stage run `run_id` (see create_stage_run), in this process or a Ray worker.

    With `system_metrics`, MLflow samples CPU, memory and (where present) GPU use while the stage runs.
    """
    with mlflow.start_run(run_id=run_id, nested=True, log_system_metrics=system_metrics) as run:
        mlflow.set_tags(tags)
        mlflow.log_params({key: _param_text(value) for key, value in flatten(params).items()})
        mlflow.log_input(dataset, context="data")
        yield run


def log_models(run_id: str, models: dict[str, Path], params: dict[str, Any], metrics: dict[str, float]) -> set[str]:
    """Each saved model folder as an MLflow LoggedModel linked to the stage run, with the stage's
    params and its metrics (a metric named `<model>_<name>` belongs to that model as `<name>`;
    with one model, every metric does). Returns the metric names it logged on the run."""
    client = mlflow.MlflowClient()
    flat_params = {key: _param_text(value) for key, value in flatten(params).items()}
    logged: set[str] = set()
    now = int(time.time() * 1000)
    for name, folder in models.items():
        model = mlflow.initialize_logged_model(
            name=name,
            source_run_id=run_id,
            params=flat_params,
            model_type="save_pretrained",
            tags={"stage_run_id": run_id, **_inherited_tags()},
        )
        client.log_model_artifacts(model.model_id, str(folder))
        owned = {key.removeprefix(f"{name}_"): value for key, value in metrics.items() if key.startswith(f"{name}_")}
        owned = owned or (metrics if len(models) == 1 else {})
        linked = [
            Metric(key, float(value), now, 0, model_id=model.model_id, run_id=run_id)
            for key, value in owned.items()
            if value == value
        ]
        for start in range(0, len(linked), 1000):
            client.log_batch(run_id, metrics=linked[start : start + 1000])
        mlflow.finalize_logged_model(model.model_id, "READY")
        logged |= {metric.key for metric in linked}
    return logged


def _param_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def log_metrics(metrics: dict[str, float]) -> None:
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()})


def log_children(children: list[dict[str, Any]]) -> None:
    """One run per child ({name, params, metrics, tags}), nested in the active run."""
    inherited = _inherited_tags()
    for child in children:
        with mlflow.start_run(
            run_name=child["name"], nested=True, tags={"child": child["name"], **inherited, **child["tags"]}
        ):
            mlflow.log_params({key: _param_text(value) for key, value in flatten(child["params"]).items()})
            log_metrics(
                {key: value for key, value in child["metrics"].items() if value == value}
            )  # NaN is not loggable


def log_to_run(run_id: str, paths: list[Path]) -> None:
    client = mlflow.MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path))


def log_history(rows: list[dict[str, float]]) -> None:
    """Per-step metrics (rows of {"step": n, name: value}) in batches, one request per 1000."""
    run_id = active_run_id()
    now = int(time.time() * 1000)
    metrics = [
        Metric(name, float(value), now, int(row["step"]))
        for row in rows
        for name, value in row.items()
        if name != "step"
    ]
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_artifacts(paths: list[Path]) -> None:
    """Files go to the run's artifact root; a folder keeps its name (e.g. best/)."""
    for path in paths:
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=path.name)
        else:
            mlflow.log_artifact(str(path))
