"""The stage graph: the registry of declared stages, which stage produces which signal source,
the order stages run in, and what each stage's cache key depends on.

A stage's key hashes its version, the config keys it reads, a fingerprint of external inputs
(for ingest: the data files) and the keys of the stages it needs. Change any of these and the
stage, and everything downstream of it, runs again; change nothing and its output is reused.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import ConfigError
from data_prep.sources import sample_bars_path
from pipeline.cache import fingerprint
from pipeline.config import FoldDates, PipelineConfig, stable_hash
from pipeline.contract import StageSpec
from pipeline.stages import backtest, chronos, data, kronos, lgbm, timellm
from strategies.rules import RULE_BASELINES

log = logging.getLogger(__name__)

STAGES: dict[str, StageSpec] = {
    spec.name: spec for module in (data, kronos, timellm, chronos, lgbm, backtest) for spec in module.STAGES
}

# Signal source -> the stage that writes its table; rule baselines are computed by the backtest.
SIGNAL_PRODUCERS: dict[str, str] = {source: spec.name for spec in STAGES.values() for source in spec.signal_sources}
# Every source a run may list in signals.sources.
SIGNAL_SOURCES: tuple[str, ...] = (*SIGNAL_PRODUCERS, *RULE_BASELINES)


def data_location(config: PipelineConfig) -> Path:
    """The file or folder the run's data comes from."""
    data = config.data
    if data.source == "sample":
        return sample_bars_path()
    location = data.path if data.source == "csv" else data.provider_uri
    assert location is not None  # DataConfig requires the location of its source
    return Path(location)


def data_fingerprint(config: PipelineConfig) -> str:
    location = data_location(config)
    if config.data.source == "sample":
        return fingerprint(location)
    if config.data.source == "csv":
        if not location.exists():
            return "missing"  # the ingest stage itself reports the missing file
        return fingerprint(location)
    if not location.is_dir():
        return "missing"
    return fingerprint(location, hash_contents=False)


@functools.lru_cache(maxsize=32)
def model_fingerprint(source: str) -> str | None:
    """A pretrained model by its files' names, sizes and modification times when it is a local folder
    (a rewritten file changes them; hashing gigabytes of weights on every run would not pay); a hub id
    stands for itself ("" for none). Once per process: every (fold, seed) instance asks again."""
    if not source:
        return None
    folder = Path(source)
    return fingerprint(folder, hash_contents=False) if folder.is_dir() else source


def teacher_fingerprint(config: PipelineConfig) -> str | None:
    return model_fingerprint(config.chronos.teacher)


def backbone_fingerprint(config: PipelineConfig) -> str | None:
    from models.timellm.bundled import DEFAULT_BACKBONE, bundled_minilm_path

    backbone = config.timellm.model.get("backbone", DEFAULT_BACKBONE)
    return model_fingerprint(str(bundled_minilm_path()) if backbone == DEFAULT_BACKBONE else backbone)


# Stages that read inputs from outside the graph, and the identity of those inputs: a changed file at
# the same path changes the stage's key.
EXTERNAL_INPUTS: dict[str, Callable[[PipelineConfig], str | None]] = {
    "ingest": data_fingerprint,
    "chronos2": teacher_fingerprint,
    "chronos2_student": teacher_fingerprint,
    "kronos_tokenizer": lambda config: model_fingerprint(config.kronos.tokenizer.pretrained),
    "kronos_predictor": lambda config: model_fingerprint(config.kronos.predictor.pretrained),
    "kronos_zeroshot": lambda config: (
        f"{model_fingerprint(config.kronos.zeroshot.tokenizer)}|{model_fingerprint(config.kronos.zeroshot.predictor)}"
    ),
    "timellm": backbone_fingerprint,
}

# Stage names before the stage contract; still accepted on the command line.
STAGE_ALIASES = {
    "tokenizer": "kronos_tokenizer",
    "predictor": "kronos_predictor",
    "signals": "kronos_signals",
    "baselines": "lgbm_alpha158",
    "chronos": "chronos2",
    "chronos_student": "chronos2_student",
}


def resolve(name: str) -> str:
    """A stage name, or an old alias of one (with a notice), checked against the registry."""
    if name in STAGE_ALIASES:
        log.warning("stage %r is now called %r; the old name still works", name, STAGE_ALIASES[name])
        return STAGE_ALIASES[name]
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}: choose one of {list(STAGES)} (see --list)")
    return name


def needs(stage: StageSpec, config: PipelineConfig) -> tuple[str, ...]:
    """The stages whose outputs `stage` reads under this config."""
    if not stage.consumes_signals:
        return stage.needs
    producers = sorted({SIGNAL_PRODUCERS[name] for name in config.signals.sources if name in SIGNAL_PRODUCERS})
    return (*stage.needs, *producers)


def plan(target: str, config: PipelineConfig) -> list[StageSpec]:
    """The target and every stage it needs under this config, each after the stages it needs."""
    ordered: list[StageSpec] = []

    def visit(name: str) -> None:
        stage = STAGES[name]
        for need in needs(stage, config):
            visit(need)
        if stage not in ordered:
            ordered.append(stage)

    visit(resolve(target))
    return ordered


@dataclass(frozen=True)
class Instance:
    """One (fold, seed) of the run: the config every stage but the backtest sees in it."""

    fold: int
    seed: int
    dates: FoldDates
    config: PipelineConfig

    @property
    def label(self) -> str:
        return f"fold {self.fold}, seed {self.seed}"


def instances(config: PipelineConfig) -> list[Instance]:
    """Every (fold, seed) of the run, folds first; a config without folds or seeds has one."""
    return [
        Instance(index, seed, fold, config.for_fold(fold, seed))
        for index, fold in enumerate(config.folds())
        for seed in config.seeds()
    ]


def upstream_keys(stage: StageSpec, runs: list[Instance], keys: list[dict[str, str]]) -> dict[str, str]:
    """The cache keys of what a stage reads: its needs in one instance, or in every instance when it
    consumes the signals of all of them (instance labels keep them apart). Two instances whose
    outputs are the same (a stage that reads no seed) share a key."""
    if not stage.consumes_signals:
        (instance,), (instance_keys,) = runs, keys
        return {name: instance_keys[name] for name in needs(stage, instance.config)}
    return {
        f"{name} [{instance.label}]": instance_keys[name]
        for instance, instance_keys in zip(runs, keys, strict=True)
        for name in needs(stage, instance.config)
    }


def cache_key(stage: StageSpec, config: PipelineConfig, upstream: dict[str, str]) -> str:
    payload = {
        "stage": stage.name,
        "version": stage.version,
        "config": {key: config.section(key) for key in stage.reads},
        "upstream": upstream,
        "external": EXTERNAL_INPUTS[stage.name](config) if stage.name in EXTERNAL_INPUTS else None,
    }
    return stable_hash(payload)
