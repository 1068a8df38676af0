"""The MLflow Model Registry side of a backtest: each learned source's model as a registered version,
the promotion of one version to `champion`, and the resolution of the model the live positions read.

After a backtest, `register_backtest` bundles each learned source's model of the last fold (trained on
the newest data) and the first seed into a self-describing folder: the checkpoints it forecasts with
and `source.json` (data, windows, inference and strategy settings, the runs behind it). The folder is
logged as an MLflow LoggedModel of the run that trained it and registered as a version of
`<experiment>.<source>`, tagged with the backtest's figures for that source; the backtest's metrics
are also linked to the LoggedModel and its data set. Registering the same backtest again returns
the versions it registered before.

Every learned source is bundled: Kronos, LightGBM/Alpha158, each Time-LLM variant and the Chronos-2
student. The zero-shot sources (kronos_zeroshot, chronos2) learn nothing of the backtest and are not.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from data_prep.errors import CheckpointError, ConfigError
from models.timellm.variants import VARIANTS, timellm_source
from pipeline import tracking
from pipeline.cache import StageCache
from pipeline.config import PipelineConfig, stable_hash
from pipeline.contract import CHECKPOINT
from pipeline.graph import (
    SIGNAL_PRODUCERS,
    Instance,
    backbone_fingerprint,
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

BUNDLE_META = "source.json"
BUNDLE_FORMAT = 1
CHAMPION = "champion"
TIMELLM_MODEL, CHRONOS_STUDENT = "model", "student"  # the saved model's folder in a Time-LLM / Chronos-2 bundle
# Learned source -> (family, the stages that trained it, the stage whose settings scored it).
BUNDLED: dict[str, tuple[str, tuple[str, ...], str]] = {
    "kronos": ("kronos", ("kronos_tokenizer", "kronos_predictor"), "kronos_signals"),
    "lgbm_alpha158": ("lgbm", ("lgbm_alpha158",), "lgbm_alpha158"),
    **{timellm_source(variant): ("timellm", ("timellm",), "timellm") for variant in VARIANTS},
    "chronos2_student": ("chronos2", ("chronos2_student",), "chronos2_student"),
}
# Figures of the comparison tagged on a version, per engine (`qlib.rank_ic_t`, ...).
TAGGED_FIGURES = (
    "rank_ic",
    "rank_ic_t",
    "ic",
    "ic_t",
    "hit_rate",
    "ann_return_with_cost",
    "ann_excess_return_with_cost",
    "ann_excess_low",
    "ann_excess_high",
    "information_ratio_with_cost",
    "ir_low",
    "ir_high",
    "max_drawdown_with_cost",
    "turnover_with_cost",
    "sweep_best_sharpe",
    "sweep_dsr",
    "significant",
)
PROMOTION_ENGINE = "qlib"  # the engine whose `significant` a promotion asks for: it models every setting


def registered_name(config: PipelineConfig, source: str) -> str:
    """One registered model per experiment and source, so runs on other data never share versions."""
    return f"{config.tracking.experiment}.{source}"


def rank_ic_p(t_stat: float) -> float:
    """Two-sided p-value of a HAC t-statistic, read against the normal distribution."""
    return math.erfc(abs(t_stat) / math.sqrt(2)) if t_stat == t_stat else math.nan


def register_backtest(config: PipelineConfig, backtest_run_id: str) -> dict[str, str]:
    """Register each learned source of the backtest `config` ran as a model version; returns source ->
    version. `backtest_run_id` is the run that produced the backtest's output (its comparison). A
    source whose model cannot be bundled (an output cached before the bundle existed) is skipped with
    a warning that says how to rerun it."""
    sources = [source for source in config.signals.sources if source in BUNDLED]
    unbundled = [source for source in config.signals.sources if source in SIGNAL_PRODUCERS and source not in BUNDLED]
    if unbundled:
        log.info("not registering %s: the registry bundles %s only", unbundled, list(BUNDLED))
    if not sources:
        return {}
    client = mlflow.MlflowClient(tracking.tracking_uri(config))
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None:
        raise ConfigError(f"tracking.experiment {config.tracking.experiment!r} does not exist: run the backtest first")
    cache = StageCache(config.cache_dir)
    instance, keys, backtest_key = newest_instance(config)
    if cache.lookup("backtest", backtest_key) is None:
        raise ConfigError(
            f"no backtest output of this config in {cache.root} (key {backtest_key}): register with the config the "
            "backtest ran with, after it ran"
        )
    comparison = pd.read_csv(cache.path("backtest", backtest_key) / "comparison.csv")
    backtest = Backtest(backtest_run_id, backtest_key, comparison, data_fingerprint(config))
    dataset = tracking.data_set(config, data_location(config), backtest.digest)
    versions = {}
    for source in sources:
        stages = dict.fromkeys((*BUNDLED[source][1], BUNDLED[source][2], "split"))
        manifests = {stage: cache.lookup(stage, keys[stage]) for stage in stages}
        missing = [stage for stage, manifest in manifests.items() if manifest is None]
        if missing:
            log.warning("not registering %s: the outputs of %s are not in the cache %s", source, missing, cache.root)
            continue
        runs = {stage: manifest["run_id"] for stage, manifest in manifests.items() if manifest is not None}
        name = registered_name(config, source)
        registration = stable_hash({"source": source, "backtest": backtest_key, "stages": {s: keys[s] for s in stages}})
        existing = [v for v in _versions(client, name) if v.tags.get("registration") == registration]
        if existing:
            versions[source] = str(existing[0].version)
            continue
        with tempfile.TemporaryDirectory(prefix=".registry-", dir=config.cache_dir) as work:
            try:
                meta = write_bundle(
                    source, instance, {stage: cache.path(stage, keys[stage]) for stage in stages}, Path(work) / source
                )
            except FileNotFoundError as exc:
                log.warning(
                    "not registering %s: %s is missing (an output cached before its model was saved for the "
                    "registry); rerun with --stage %s --force, then the backtest",
                    source,
                    exc.filename,
                    BUNDLED[source][1][-1],
                )
                continue
            meta.update(runs={**runs, "backtest": backtest_run_id}, backtest_cache_key=backtest_key)
            meta["data"]["digest"] = backtest.digest
            (Path(work) / source / BUNDLE_META).write_text(json.dumps(meta, indent=1, default=str))
            version = _register(
                client, experiment.experiment_id, name, registration, meta, Path(work) / source, backtest, dataset
            )
        log.info("registered %s as %s version %s", source, name, version.version)
        versions[source] = str(version.version)
    return versions


@dataclass(frozen=True)
class Backtest:
    """What a registration reads of the backtest: its run, cache key, comparison and data digest."""

    run_id: str
    key: str
    comparison: pd.DataFrame
    digest: str


def _register(
    client: mlflow.MlflowClient,
    experiment_id: str,
    name: str,
    registration: str,
    meta: dict[str, Any],
    folder: Path,
    backtest: Backtest,
    dataset: Dataset,
):
    """Log the bundle `folder` as a LoggedModel of its training run, link the backtest's figures for
    its source to it, and register it as a new version of `name` tagged with them."""
    source, seed, fold = meta["source"], meta["seed"], meta["fold"]
    trained_by = meta["runs"][BUNDLED[source][1][-1]]
    rows = backtest.comparison[(backtest.comparison["source"] == source) & (backtest.comparison["seed"] == seed)]
    figures = {row["engine"]: row for _, row in rows.iterrows()}
    tags = {
        "source": source,
        "family": meta["family"],
        "backtest_run_id": backtest.run_id,
        "backtest_cache_key": backtest.key,
        "fold": str(fold),
        "seed": str(seed),
        "data_digest": backtest.digest,
        "universe": meta["data"]["universe"],
        "registration": registration,  # what register_backtest finds again on a second call
        **_figure_tags(figures),
    }
    model = client.create_logged_model(
        experiment_id,
        name=source,
        source_run_id=trained_by,
        tags={key: tags[key] for key in ("source", "backtest_run_id", "fold", "seed", "data_digest")},
        params={key: str(value) for key, value in tracking.flatten(_params(meta)).items()},
        model_type="live_bundle",
    )
    client.log_model_artifacts(model.model_id, str(folder))
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{source}.{engine}.{figure}", float(row[figure]), now, 0, model.model_id, dataset.name, dataset.digest)
        for engine, row in figures.items()
        for figure in TAGGED_FIGURES
        if figure in row and pd.notna(row[figure])
    ]
    client.log_batch(backtest.run_id, metrics=metrics)  # on the backtest's run, linked to the model and data set
    client.finalize_logged_model(model.model_id, "READY")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"{source} models, one version per backtest")
    return client.create_model_version(
        name,
        f"models:/{model.model_id}",
        run_id=trained_by,
        tags=tags,
        description=f"{source} of fold {fold}, seed {seed}; backtest run {backtest.run_id}",
        model_id=model.model_id,
    )


def newest_instance(config: PipelineConfig) -> tuple[Instance, dict[str, str], str]:
    """The (fold, seed) whose models are registered (the last fold, the first seed), the cache key of
    every stage of it, and the backtest's key: computed from the config as the runner computes them."""
    runs = instances(config)
    keys: list[dict[str, str]] = [{} for _ in runs]
    backtest_key = ""
    for stage in plan("backtest", config):
        if stage.consumes_signals:
            backtest_key = cache_key(stage, config, upstream_keys(stage, runs, keys))
            continue
        for run, run_keys in zip(runs, keys, strict=True):
            run_keys[stage.name] = cache_key(stage, run.config, upstream_keys(stage, [run], [run_keys]))
    last_fold = max(run.fold for run in runs)
    index = next(i for i, run in enumerate(runs) if run.fold == last_fold and run.seed == config.seeds()[0])
    return runs[index], keys[index], backtest_key


def write_bundle(source: str, instance: Instance, outputs: dict[str, Path], folder: Path) -> dict[str, Any]:
    """The files `source` forecasts with, copied from its stages' outputs into `folder`; returns what
    source.json says of them (the caller adds the runs)."""
    from data_prep.windows import Split
    from models.lgbm.alpha158 import BOOSTER, FEATURES
    from pipeline.stages.chronos import student_settings
    from pipeline.stages.timellm import forecast_settings

    config = instance.config
    family = BUNDLED[source][0]
    folder.mkdir(parents=True)
    inference: dict[str, Any]
    if family == "kronos":
        shutil.copytree(outputs["kronos_tokenizer"] / CHECKPOINT, folder / "tokenizer")
        shutil.copytree(outputs["kronos_predictor"] / CHECKPOINT, folder / "predictor")
        inference = {
            **config.kronos.inference.model_dump(mode="json"),
            "device": config.kronos.device,
            "bf16": config.kronos.bf16,
        }
    elif family == "lgbm":
        for name in (BOOSTER, FEATURES):
            shutil.copy2(outputs["lgbm_alpha158"] / name, folder / name)
        inference = {"params": {"seed": config.seed, **config.lgbm.params}}
    elif family == "timellm":
        # the trained layers and their config.json; the frozen backbone it names is not copied (it may be
        # gigabytes): its fingerprint tells the live positions when it is no longer the one trained on
        shutil.copytree(outputs["timellm"] / "models" / source, folder / TIMELLM_MODEL)
        inference = {**forecast_settings(config.timellm), "backbone_fingerprint": backbone_fingerprint(config)}
    else:
        shutil.copytree(outputs["chronos2_student"] / CHECKPOINT, folder / CHRONOS_STUDENT)
        inference = student_settings(config.chronos)
    panel = Split.load(outputs["split"]).panel
    return {
        "format": BUNDLE_FORMAT,
        "source": source,
        "family": family,
        "data": {
            "source": config.data.source,
            "region": config.data.region,
            "universe": config.data.instruments,
            "fields": list(config.data.fields),
            "instruments": list(panel.instruments),
            "first_day": str(panel.calendar[0].date()),
            "last_day": str(panel.calendar[-1].date()),
        },
        "split": config.split.model_dump(mode="json"),
        "fold": instance.fold,
        "seed": instance.seed,
        "inference": inference,
        "strategy": asdict(config.backtest.topk_settings()),
    }


def _params(meta: dict[str, Any]) -> dict[str, Any]:
    """What a LoggedModel shows of its bundle: the settings, not the instrument list or the runs."""
    data = {key: value for key, value in meta["data"].items() if key != "instruments"}
    return {key: meta[key] for key in ("source", "family", "split", "fold", "seed", "inference")} | {"data": data}


def _figure_tags(figures: dict[str, pd.Series]) -> dict[str, str]:
    """`<engine>.<figure>` for every engine's row, and the promotion's figures without prefix."""
    tags = {
        f"{engine}.{figure}": str(row[figure]) if figure == "significant" else f"{float(row[figure]):.6g}"
        for engine, row in figures.items()
        for figure in TAGGED_FIGURES
        if figure in row and pd.notna(row[figure])
    }
    if PROMOTION_ENGINE in figures:
        row = figures[PROMOTION_ENGINE]
        tags["significant"] = str(row["significant"] is True or str(row["significant"]) == "True")
        tags["rank_ic_p"] = f"{rank_ic_p(float(row['rank_ic_t'])):.6g}"
    return tags


def _versions(client: mlflow.MlflowClient, name: str) -> list:
    """Every version of a registered model, newest first (none when it is not registered)."""
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda version: int(version.version), reverse=True)


def promote(config: PipelineConfig, source: str, run_id: str | None = None, force: bool = False) -> str:
    """Point `champion` at `source`'s version from the backtest `run_id` (default: the newest version),
    refusing a version whose backtest row is not significant unless `force`; returns what it did."""
    if source not in BUNDLED:
        raise ConfigError(f"--promote {source!r}: only learned sources are registered, choose one of {list(BUNDLED)}")
    tracking.setup(config)
    client = mlflow.MlflowClient(tracking.tracking_uri(config))
    name = registered_name(config, source)
    versions = _versions(client, name)
    if not versions:
        raise ConfigError(
            f"--promote {source}: no version of {name!r} is registered (a backtest with {source} in signals.sources "
            f"registers one); {describe_registry(client)}"
        )
    chosen = versions[0]
    if run_id:
        wanted = _backtest_run_ids(client, run_id)
        matching = [version for version in versions if version.tags.get("backtest_run_id") in wanted]
        if not matching:
            known = ", ".join(f"{v.version} (backtest run {v.tags.get('backtest_run_id')})" for v in versions)
            raise ConfigError(f"--run {run_id}: no version of {name} comes from that backtest; its versions: {known}")
        chosen = matching[0]
    tags = chosen.tags
    figures = (
        f"Rank IC t-stat {float(tags.get('qlib.rank_ic_t', 'nan')):.2f}, p {float(tags.get('rank_ic_p', 'nan')):.2f}, "
        f"excess return after cost 95% interval low {float(tags.get('qlib.ann_excess_low', 'nan')):.2%}"
    )
    if tags.get("significant") != "True" and not force:
        raise ConfigError(
            f"{source}: {figures} in backtest run {tags.get('backtest_run_id')} (version {chosen.version}, "
            f"{PROMOTION_ENGINE} engine) is not significant (Rank IC t >= 2 and the interval above 0); "
            "pass --force to promote anyway"
        )
    try:
        previous = client.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException:
        previous = None
    client.set_registered_model_alias(name, CHAMPION, chosen.version)
    was = f" (was version {previous})" if previous and previous != chosen.version else ""
    forced = "" if tags.get("significant") == "True" else ", not significant: promoted with --force"
    return (
        f"{name} version {chosen.version} is now {CHAMPION}{was}: backtest run {tags.get('backtest_run_id')}, "
        f"fold {tags.get('fold')}, seed {tags.get('seed')}; {figures}{forced}"
    )


def _backtest_run_ids(client: mlflow.MlflowClient, run_id: str) -> set[str]:
    """The backtest runs `run_id` stands for: itself, the run that produced its output when it reused one,
    and, for an invocation's run, its backtest stage's."""
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"--run {run_id}: no such run in the tracking store {client.tracking_uri}") from exc
    runs = [run]
    if "stage" not in run.data.tags:  # an invocation: its backtest stage
        runs = client.search_runs(
            [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' and tags.stage = 'backtest'"
        )
    return {run_id} | {r.info.run_id for r in runs} | {r.data.tags.get("produced_by_run_id", "") for r in runs}


@dataclass(frozen=True)
class ModelRef:
    """The model live.model names: a registered version, or a bundle folder."""

    uri: str  # models:/<name>@<alias>, models:/<name>/<version>, or the folder
    name: str = ""
    version: str = ""
    model_id: str = ""  # the LoggedModel behind the version

    @property
    def label(self) -> str:
        return f"{self.name} version {self.version}" if self.version else self.uri


def resolve(config: PipelineConfig, client: mlflow.MlflowClient) -> ModelRef:
    """live.model as a registered version (a source's name stands for this experiment's champion of it)
    or a bundle folder; an unknown one is named with what the registry holds."""
    given = config.live.model
    if given not in BUNDLED and not given.startswith("models:/") and Path(given).is_dir():
        return ModelRef(str(Path(given).resolve()))
    uri = f"models:/{registered_name(config, given)}@{CHAMPION}" if given in BUNDLED else given
    if not uri.startswith("models:/"):
        raise ConfigError(
            f"live.model {given!r} is not a folder, a models:/<name>@<alias> or models:/<name>/<version> URI, nor a "
            f"learned source ({', '.join(BUNDLED)}); {describe_registry(client)}"
        )
    name, alias = uri.removeprefix("models:/"), ""
    try:
        if "@" in name:
            name, alias = name.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = name.rsplit("/", 1) if "/" in name else (name, "")
            version = client.get_model_version(name, number)
    except MlflowException as exc:
        hint = f" (promote one: python -m pipeline.run --promote {given})" if given in BUNDLED else ""
        raise ConfigError(
            f"live.model {given!r}: the registry of {client.tracking_uri} cannot resolve {uri}{hint}; "
            f"{describe_registry(client)}"
        ) from exc
    return ModelRef(uri, name, str(version.version), logged_model_id(version))


def logged_model_id(version) -> str:
    """The LoggedModel behind a model version: its model_id, which MLflow's SQL store leaves empty and
    keeps in the version's source (models:/<model_id>) only."""
    source = version.source or ""
    return version.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else "")


def describe_registry(client: mlflow.MlflowClient) -> str:
    """What the registry holds, in one line: each model's versions and aliases."""
    models = client.search_registered_models(max_results=50)
    if not models:
        return "the registry is empty: each backtest of a learned source registers its models"
    described = []
    for model in models:
        numbers = sorted(int(version.version) for version in _versions(client, model.name))
        aliases = ", ".join(f"@{alias} -> {version}" for alias, version in sorted(model.aliases.items()))
        described.append(f"{model.name} (versions {numbers}{'; ' + aliases if aliases else ''})")
    return "registered: " + "; ".join(described)


def fetch_bundle(ref: ModelRef, dst: Path, tracking_uri: str) -> tuple[Path, dict[str, Any]]:
    """The bundle folder of `ref` (downloaded into `dst` for a registered version) and its source.json."""
    folder = Path(ref.uri)
    if ref.version:
        artifacts = f"models:/{ref.model_id}" if ref.model_id else f"models:/{ref.name}/{ref.version}"
        folder = Path(mlflow.artifacts.download_artifacts(artifacts, dst_path=str(dst), tracking_uri=tracking_uri))
    return folder, read_bundle(folder, ref)


def read_bundle(folder: Path, ref: ModelRef) -> dict[str, Any]:
    path = folder / BUNDLE_META
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"live.model {ref.label}: {path} cannot be read ({exc}); a live bundle is the folder a registered "
            "version holds, made by pipeline/registry.py after a backtest"
        ) from exc
    if meta.get("format") != BUNDLE_FORMAT or meta.get("source") not in BUNDLED:
        raise CheckpointError(
            f"live.model {ref.label}: {path} is format {meta.get('format')!r} of source {meta.get('source')!r}; this "
            f"code reads format {BUNDLE_FORMAT} of {list(BUNDLED)}: register the model again with this code"
        )
    return meta
