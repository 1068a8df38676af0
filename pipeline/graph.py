"""The stage graph: which stages exist, what each needs, and what its cache key depends on.

A stage's key hashes its version, the config keys it reads, a fingerprint of external inputs
(for ingest: the data files) and the keys of the stages it needs. Change any of these and the
stage, and everything downstream of it, runs again; change nothing and its output is reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_prep.sources import sample_bars_path
from pipeline import backtest_stage, baselines_stage, chronos_stages, kronos_stages, stages, timellm_stage
from pipeline.cache import fingerprint
from pipeline.config import ConfigError, PipelineConfig, stable_hash

StageFunction = Callable[[PipelineConfig, dict[str, Path], Path], stages.StageResult]


@dataclass(frozen=True)
class Stage:
    name: str
    # Stages whose outputs this one reads; a function of the config when that decides it
    # (e.g. the backtest needs the model stages only for the signal sources it is given).
    needs: tuple[str, ...] | Callable[[PipelineConfig], tuple[str, ...]]
    run: StageFunction
    # Config keys (dotted) whose values change the stage's output.
    config_keys: tuple[str, ...] = ()
    # Bump when a code change alters the output, so old cache entries stop matching.
    version: int = 1
    external_inputs: Callable[[PipelineConfig], str] | None = None
    # An interrupted run leaves its partial output for the next run to resume from.
    resumable: bool = False

    def needs_for(self, config: PipelineConfig) -> tuple[str, ...]:
        return self.needs(config) if callable(self.needs) else self.needs


def data_fingerprint(config: PipelineConfig) -> str:
    data = config.data
    if data.source == "sample":
        return fingerprint(sample_bars_path())
    if data.source == "csv":
        if not Path(data.path).exists():
            return "missing"  # the ingest stage itself reports the missing file
        return fingerprint(data.path)
    if not Path(data.provider_uri).is_dir():
        return "missing"
    return fingerprint(data.provider_uri, hash_contents=False)


def teacher_fingerprint(config: PipelineConfig) -> str:
    """A local Chronos-2 folder by its files; a hub id stands for itself."""
    teacher = Path(config.chronos.teacher)
    return fingerprint(teacher) if teacher.is_dir() else config.chronos.teacher


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "ingest",
            needs=(),
            config_keys=("data.source", "data.path", "data.provider_uri", "data.columns", "data.instruments"),
            run=stages.ingest,
            external_inputs=data_fingerprint,
        ),
        Stage(
            "split",
            needs=("ingest",),
            config_keys=("split", "data.instruments", "data.fields"),
            run=stages.split,
        ),
        Stage(
            "tokenizer",
            needs=("split",),
            config_keys=("kronos.tokenizer", "kronos.nproc", "kronos.device", "kronos.bf16", "split.clip", "seed"),
            run=kronos_stages.tokenizer,
            resumable=True,
        ),
        Stage(
            "predictor",
            needs=("tokenizer", "split"),
            config_keys=("kronos.predictor", "kronos.nproc", "kronos.device", "kronos.bf16", "split.clip", "seed"),
            run=kronos_stages.predictor,
            resumable=True,
        ),
        Stage(
            "timellm",
            needs=("split",),
            config_keys=("timellm", "seed"),
            run=timellm_stage.timellm,
        ),
        Stage(
            "chronos",
            needs=("split",),
            config_keys=("chronos.teacher", "chronos.covariates", "chronos.device", "chronos.batch_size", "split.test"),
            run=chronos_stages.chronos,
            external_inputs=teacher_fingerprint,
        ),
        Stage(
            "chronos_student",
            needs=("chronos", "split"),
            config_keys=("chronos", "split.test", "seed"),
            run=chronos_stages.chronos_student,
        ),
        Stage(
            "signals",
            needs=("predictor", "tokenizer", "split"),
            config_keys=("kronos.inference", "kronos.device", "split.test", "split.clip", "seed"),
            run=kronos_stages.signals,
            version=2,  # 2: forecasts.npz is logged for the notebook
        ),
        Stage(
            "baselines",
            needs=("ingest", "split"),
            config_keys=("baselines", "split.train", "split.valid", "split.test", "data.instruments", "data.region"),
            run=baselines_stage.baselines,
        ),
        Stage(
            "backtest",
            needs=backtest_stage.backtest_needs,
            config_keys=("signals", "backtest", "data.benchmark", "data.region", "split.test"),
            run=backtest_stage.backtest,
            # 2: daily returns, IC, closes, signals kept; 3: runs named with settings; 4: daily Rank IC;
            # 5: forecast errors of the horizon return (return_mse, return_mae)
            version=5,
        ),
    )
}


def plan(target: str, config: PipelineConfig) -> list[Stage]:
    """The target and every stage it needs under this config, each after the stages it needs."""
    if target not in STAGES:
        raise ConfigError(f"unknown stage {target!r}: choose one of {list(STAGES)} (see --list)")
    ordered: list[Stage] = []

    def visit(name: str) -> None:
        stage = STAGES[name]
        for need in stage.needs_for(config):
            visit(need)
        if stage not in ordered:
            ordered.append(stage)

    visit(target)
    return ordered


def cache_key(stage: Stage, config: PipelineConfig, upstream_keys: dict[str, str]) -> str:
    payload = {
        "stage": stage.name,
        "version": stage.version,
        "config": {key: config.section(key) for key in stage.config_keys},
        "upstream": {name: upstream_keys[name] for name in stage.needs_for(config)},
        "external": stage.external_inputs(config) if stage.external_inputs else None,
    }
    return stable_hash(payload)
