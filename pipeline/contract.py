"""What a stage is: its declaration, what it is handed, and what it returns.

A stage is a plain function `run(config, inputs, out) -> StageResult` declared with a `StageSpec`
beside it (in `pipeline/stages/`). The runner hands it
- `config`: a read-only view of the run configuration holding only the keys the stage declared
  in `reads` (the same keys its cache key hashes), so an undeclared read fails at once instead
  of silently sharing a cache entry;
- `inputs`: typed access to the outputs of the stages it `needs`;
- `out`: an empty folder to write its declared `outputs` into.
Stages know nothing of caching or tracking; the runner does both.

The artifact names below are the contract between stages: a stage writes and a later stage reads
through them, never through path literals of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import FoldDates, PipelineConfig

if TYPE_CHECKING:
    import pandas as pd

    from data_prep.windows import Split

# Artifacts inside a stage's output folder.
QLIB_FOLDER = "qlib"  # ingest: the Qlib data folder
SPLIT_META = "split.json"  # split: panel and window indices beside it (data_prep.windows.Split)
CHECKPOINT = "best"  # trained model folder (save_pretrained)
REPORT = "report.json"  # a stage's figures as JSON
FORECASTS = "forecasts.npz"  # paths or quantiles behind a source's scores


def signal_path(source: str) -> str:
    """Where the stage that produces `source` writes its signal table (`kronos:mean` -> kronos.mean)."""
    return f"signals/{source.replace(':', '.')}.parquet"


def quantile_path(source: str) -> str:
    """Where a probabilistic source writes the quantiles of its horizon return (evaluation.probabilistic)."""
    return f"quantiles/{source}.parquet"


class UndeclaredConfigRead(AttributeError):
    """A stage read a config key it did not declare in `reads`."""


class ConfigView:
    """Read-only view of the config that lets through only the declared dotted keys.

    `view.split.test` is allowed when `reads` holds "split" or "split.test"; reading
    `view.data.region` with only "data.instruments" declared raises UndeclaredConfigRead.
    A declared key gives the real (frozen) value; a section only partly declared gives another view.
    """

    def __init__(self, value: Any, reads: tuple[str, ...], stage: str, prefix: str = ""):
        self._value, self._reads, self._stage, self._prefix = value, reads, stage, prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        dotted = f"{self._prefix}{name}"
        if any(dotted == key or dotted.startswith(key + ".") for key in self._reads):
            return getattr(self._value, name)
        if any(key.startswith(dotted + ".") for key in self._reads):
            return ConfigView(getattr(self._value, name), self._reads, self._stage, dotted + ".")
        raise UndeclaredConfigRead(
            f"stage {self._stage!r} reads config key {dotted!r} without declaring it: add it to the stage's `reads` "
            f"so its cache key follows it (declared: {list(self._reads)})"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            raise AttributeError(f"the config is read-only inside a stage (tried to set {self._prefix}{name})")


@dataclass(frozen=True)
class InstanceOutputs:
    """The output folders of one (fold, seed) instance of the upstream stages."""

    fold: int
    seed: int
    dates: FoldDates
    folders: dict[str, Path]


class StageInputs:
    """Typed access to the outputs of the stages a stage needs.

    A stage runs per (fold, seed) and sees one instance; a stage that consumes the signals of
    every instance (the backtest) sees them all, in fold order, through `signal_history`.
    """

    def __init__(self, stage: str, instances: list[InstanceOutputs], producers: dict[str, str], tracking_uri: str):
        from evaluation.evaluate import run_in_processes

        self._stage, self.instances, self._producers = stage, instances, producers
        self.tracking_uri = tracking_uri  # the store the invocation tracks to (Qlib's recorder writes there too)
        # Runs independent pieces of a stage (the backtest's strategies) in parallel; the executor sets it
        # (processes on this machine, or Ray tasks), with the signature of run_in_processes.
        self.fan_out: Callable[..., list[Any]] = run_in_processes

    def folder(self, stage: str, instance: InstanceOutputs | None = None) -> Path:
        folders = (instance or self.instances[0]).folders
        if stage not in folders:
            raise KeyError(f"stage {self._stage!r} reads the output of {stage!r} without needing it: add it to `needs`")
        return folders[stage]

    @property
    def qlib_dir(self) -> Path:
        return self.folder("ingest") / QLIB_FOLDER

    def split(self) -> Split:
        """The split of the (first) instance; its panel is the same in every fold."""
        from data_prep.windows import Split

        return Split.load(self.folder("split"))

    def checkpoint(self, stage: str) -> Path:
        """The saved model folder a training stage produced."""
        return self.folder(stage) / CHECKPOINT

    def forecasts(self, stage: str) -> Path:
        return self.folder(stage) / FORECASTS

    def signals(self, source: str, instance: InstanceOutputs | None = None) -> pd.DataFrame:
        """The signal table of a source produced by an upstream stage."""
        from strategies.signal_table import read_signal_table

        return read_signal_table(self.folder(self._producers[source], instance) / signal_path(source))

    def has_quantiles(self, source: str) -> bool:
        return source in self._producers and (self.folder(self._producers[source]) / quantile_path(source)).is_file()

    def signal_history(self, source: str) -> dict[int, pd.DataFrame]:
        """Per seed, the out-of-sample signals of every fold as one table, each fold cut to its test segment."""
        return self._history(source, lambda instance: self.signals(source, instance))

    def quantile_history(self, source: str) -> dict[int, pd.DataFrame]:
        """Per seed, the horizon-return quantiles of every fold as one table (see `signal_history`)."""
        import pandas as pd

        return self._history(
            source,
            lambda instance: pd.read_parquet(self.folder(self._producers[source], instance) / quantile_path(source)),
        )

    def _history(self, source: str, read) -> dict[int, pd.DataFrame]:
        import pandas as pd

        by_seed: dict[int, list[pd.DataFrame]] = {}
        for instance in self.instances:
            table = read(instance)
            start, end = (pd.Timestamp(day) for day in instance.dates.test)
            by_seed.setdefault(instance.seed, []).append(
                table[(table["datetime"] >= start) & (table["datetime"] <= end)]
            )
        return {seed: pd.concat(tables, ignore_index=True) for seed, tables in by_seed.items()}


@dataclass
class ChildRun:
    """A nested result inside a stage (e.g. one strategy of the backtest)."""

    name: str
    params: dict[str, object]
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class StageResult:
    metrics: dict[str, float]
    summary: list[str]  # lines for the console
    artifacts: list[Path] = field(default_factory=list)  # small files inside `out` to log
    # Metrics over training steps: rows of {"step": n, name: value, ...}.
    history: list[dict[str, float]] = field(default_factory=list)
    children: list[ChildRun] = field(default_factory=list)  # logged as runs nested in the stage's run
    parent_artifacts: list[Path] = field(default_factory=list)  # files inside `out` for the invocation's run


StageFunction = Callable[[ConfigView, StageInputs, Path], StageResult]


@dataclass(frozen=True)
class StageSpec:
    """A stage's declaration: everything the graph, the cache and the runner need to know."""

    name: str
    run: StageFunction
    # Stages whose outputs this one reads.
    needs: tuple[str, ...]
    # Dotted config keys the stage reads: the only ones its config view shows, and its cache key.
    reads: tuple[str, ...]
    # Paths inside the output folder the stage promises (artifact names above); a function of the
    # stage's config view where the config decides them.
    outputs: tuple[str, ...] | Callable[[ConfigView], tuple[str, ...]]
    # Saved model folders among the outputs (save_pretrained), logged as MLflow models.
    models: tuple[str, ...] | Callable[[ConfigView], tuple[str, ...]] = ()
    # Bump when a code change alters the output, so old cache entries stop matching.
    version: int = 1
    # Signal sources the stage can write (the graph maps each source to its stage).
    signal_sources: tuple[str, ...] = ()
    # Reads the signal tables of every source in `signals.sources`: the graph adds the stages
    # that produce them to the needs.
    consumes_signals: bool = False
    # Files (glob patterns in the output folder) the stage saves its progress to: such a stage is
    # resumable, its partial output waits for the next attempt however this one ends, and these
    # files are dropped once it succeeds.
    progress_files: tuple[str, ...] = ()
    # The config key of the stage's torch device: a stage whose device resolves to CUDA gets a GPU from Ray.
    device_key: str = ""
    # The config key of how many processes the stage runs (torchrun), each with `threads` CPUs and a GPU on CUDA.
    processes_key: str = ""
    description: str = ""

    @property
    def resumable(self) -> bool:
        return bool(self.progress_files)

    def view(self, config: PipelineConfig) -> ConfigView:
        return ConfigView(config, self.reads, self.name)

    def outputs_for(self, config: PipelineConfig) -> tuple[str, ...]:
        return self.outputs(self.view(config)) if callable(self.outputs) else self.outputs

    def models_for(self, config: PipelineConfig) -> dict[str, str]:
        """Model name -> folder: the stage's name for its checkpoint, else the folder's name (a Time-LLM variant)."""
        folders = self.models(self.view(config)) if callable(self.models) else self.models
        return {self.name if folder == CHECKPOINT else Path(folder).name: folder for folder in folders}
