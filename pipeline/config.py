"""Typed run configuration: pydantic models, YAML loading and `--set key=value` overrides.

Every default lives in the models below; a YAML file under `configs/` only states what a run
changes. Validation happens once, at start-up, and errors name the offending key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError, field_validator, model_validator

from data_prep.errors import ConfigError
from models.kronos import configs as kronos_sizes
from models.timellm.variants import VARIANTS, Variant, timellm_source

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_PATH = REPO_ROOT / "configs" / "default.yaml"

MODEL_FIELDS = ("open", "high", "low", "close", "volume", "amount")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DateRange = tuple[dt.date, dt.date]


class DataConfig(StrictModel):
    source: Literal["sample", "csv", "qlib"] = "sample"
    path: Path | None = None
    provider_uri: Path | None = None
    region: Literal["us", "cn"] = "us"
    instruments: str = "sp500"
    benchmark: str | None = None
    # Canonical field name -> column name in the source file, for files that name columns
    # differently (matching is case-insensitive either way).
    columns: dict[str, str] = {}
    # Per-instrument series the models see, in this order.
    fields: tuple[str, ...] = MODEL_FIELDS
    # How a CSV is written: strftime format of its dates (None: ISO, or numeric dates whose
    # day/month order the values settle), field separator and decimal mark.
    date_format: str | None = None
    delimiter: str = ","
    decimal: str = "."
    # Reject bars whose close moves more than this fraction from the previous close (a data error
    # where prices have a daily limit: 0.21 for A-shares); the rejects are listed at ingest. None: off.
    max_daily_move: float | None = None

    def bars_format(self):
        """How data_prep reads the bars source (data_prep.sources.BarsFormat)."""
        from data_prep.sources import BarsFormat

        return BarsFormat(dict(self.columns), self.date_format, self.delimiter, self.decimal, self.max_daily_move)

    @field_validator("delimiter", "decimal")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError(f"must be one character, got {value!r}")
        return value

    @field_validator("max_daily_move")
    @classmethod
    def _positive_move(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be a positive fraction such as 0.21, or null to turn the filter off")
        return value

    @model_validator(mode="after")
    def _source_needs_location(self) -> DataConfig:
        if self.source == "csv" and self.path is None:
            raise ValueError(
                "data.source is 'csv' but data.path is not set: point it at a CSV/Parquet file "
                "or a folder of per-symbol files"
            )
        if self.source == "qlib" and self.provider_uri is None:
            raise ValueError("data.source is 'qlib' but data.provider_uri is not set: point it at a Qlib data folder")
        return self

    @field_validator("instruments")
    @classmethod
    def _universe_name(cls, name: str) -> str:
        if not name or "/" in name or name.strip() != name:
            raise ValueError(f"data.instruments must be a plain universe name such as 'csi300', got {name!r}")
        return name


class SplitConfig(StrictModel):
    lookback: int = 60
    horizon: int = 5
    # The defaults fit the embedded S&P 500 sample (2009-08-21 .. 2010-08-20).
    train: DateRange = (dt.date(2009, 8, 21), dt.date(2010, 4, 30))
    valid: DateRange = (dt.date(2010, 5, 1), dt.date(2010, 6, 15))
    test: DateRange = (dt.date(2010, 6, 16), dt.date(2010, 8, 20))
    # Normalised inputs are clipped to +-clip standard deviations (Kronos uses 5).
    clip: float = 5.0

    @field_validator("lookback", "horizon")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be a positive number of trading days")
        return value

    @model_validator(mode="after")
    def _ordered_segments(self) -> SplitConfig:
        check_segments(self.train, self.valid, self.test)
        return self


def check_segments(train: DateRange, valid: DateRange, test: DateRange) -> None:
    for name, (start, end) in {"train": train, "valid": valid, "test": test}.items():
        if start > end:
            raise ValueError(f"{name} starts after it ends ({start} > {end})")
    if not train[1] < valid[0] <= valid[1] < test[0]:
        raise ValueError(
            "segments must be in time order without overlap: train ends before valid starts, "
            "valid ends before test starts"
        )


class FoldDates(StrictModel):
    """One walk-forward fold: its own train, valid and test segments (purged like the split's)."""

    train: DateRange
    valid: DateRange
    test: DateRange

    @model_validator(mode="after")
    def _ordered(self) -> FoldDates:
        check_segments(self.train, self.valid, self.test)
        return self


class WalkForwardConfig(StrictModel):
    """Folds generated by calendar months: fold k tests `test_months` from `first_test` + k x `step_months`;
    its valid segment is the `valid_months` before, and its train segment everything from
    `train_start` before that (expanding) or only the `train_months` before (rolling)."""

    window: Literal["expanding", "rolling"] = "expanding"
    train_start: dt.date
    first_test: dt.date
    folds: int = 3
    test_months: int = 12
    valid_months: int = 12
    step_months: int | None = None  # None: test_months, so the test segments tile
    train_months: int | None = None  # rolling window length; required with window: rolling

    @model_validator(mode="after")
    def _lengths(self) -> WalkForwardConfig:
        if min(self.folds, self.test_months, self.valid_months, self.step_months or 1) < 1:
            raise ValueError("folds, test_months, valid_months and step_months must be positive")
        if self.window == "rolling" and not self.train_months:
            raise ValueError("window: rolling needs train_months (the length of each fold's train segment)")
        return self

    def fold_dates(self) -> list[FoldDates]:
        def shift(day: dt.date, months: int) -> dt.date:
            return (pd.Timestamp(day) + pd.DateOffset(months=months)).date()

        one_day = dt.timedelta(days=1)
        folds = []
        for k in range(self.folds):
            test_start = shift(self.first_test, k * (self.step_months or self.test_months))
            valid_start = shift(test_start, -self.valid_months)
            train_start = self.train_start
            if self.window == "rolling":
                assert self.train_months is not None  # _lengths requires it with a rolling window
                train_start = max(self.train_start, shift(valid_start, -self.train_months))
            folds.append(
                FoldDates(
                    train=(train_start, valid_start - one_day),
                    valid=(valid_start, test_start - one_day),
                    test=(test_start, shift(test_start, self.test_months) - one_day),
                )
            )
        return folds


class EvaluationConfig(StrictModel):
    """Folds and seeds: every learned stage runs once per (fold, seed); the backtest scores the
    out-of-sample signals of all folds as one history, per seed, with intervals."""

    walk_forward: WalkForwardConfig | None = None
    folds: tuple[FoldDates, ...] = ()  # explicit folds, instead of walk_forward; neither: the split's segments
    seeds: tuple[int, ...] = ()  # seeds for the learned stages; empty: `seed` only
    seed_ensemble: bool = True  # with several seeds, also backtest the mean score across seeds
    bootstrap_reps: int = 1000  # stationary block-bootstrap resamples per interval

    @model_validator(mode="after")
    def _one_way(self) -> EvaluationConfig:
        if self.walk_forward is not None and self.folds:
            raise ValueError("set evaluation.walk_forward or evaluation.folds, not both")
        folds = self.walk_forward.fold_dates() if self.walk_forward else list(self.folds)
        for earlier, later in pairwise(folds):
            if not earlier.test[1] < later.test[0]:
                raise ValueError(
                    f"fold test segments must be in time order without overlap: {earlier.test} then {later.test}"
                )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"evaluation.seeds repeats a seed: {list(self.seeds)}")
        return self


class TrackingConfig(StrictModel):
    # None: MLFLOW_TRACKING_URI if set, else a SQLite store inside ./mlruns.
    uri: str | None = None
    experiment: str = "kronos-pipeline"


class KronosTrainConfig(StrictModel):
    epochs: int = 3
    steps_per_epoch: int = 100  # batches per epoch, drawn at random from the training windows
    batch_size: int = 32  # per process
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW
    grad_clip: float = 3.0
    patience: int = 2
    val_windows: int = 512
    min_context: int = 16
    random_context_share: float = 0.3  # share of batches trained on a shorter, random context
    teacher_forcing: bool = False  # predictor: condition s2 on the true s1 token while training
    log_every: PositiveInt = 10  # steps between reads of the training loss: each read waits for the GPU

    def settings(self, clip: float, seed: int, device: str, bf16: bool):
        """The model layer's settings (models.kronos.training.KronosTrainSettings)."""
        from models.kronos.training import KronosTrainSettings

        return KronosTrainSettings(**self.model_dump(), clip=clip, seed=seed, device=device, bf16=bf16)


class KronosInferenceConfig(StrictModel):
    sample_count: int = 5  # sample paths per series and day
    temperature: float = 1.0
    top_k: int = 0  # 1: greedy
    top_p: float = 0.9
    max_context: int = 512  # token window; longer contexts are cut from the left
    batch_size: int = 512  # series per forward pass; halved automatically on out-of-memory
    nproc: int = 1  # >1: shard the series over this many processes (torchrun) and merge
    # torch.compile each decoding step (fused kernels, fewer operator calls). Off: each batch shape
    # pays a compile first, which only a GPU can earn back (docs/performance.md).
    compile_decoding: bool = False


class KronosPartConfig(StrictModel):
    """The tokenizer or the predictor: where it starts from and how it is trained."""

    # Hub id (e.g. NeoQuasar/Kronos-small) or local folder to fine-tune; "" trains from scratch
    # with `architecture` (constructor arguments; ignored when fine-tuning).
    pretrained: str = ""
    architecture: dict[str, Any] = {}
    training: KronosTrainConfig = KronosTrainConfig()


class KronosConfig(StrictModel):
    tokenizer: KronosPartConfig = KronosPartConfig()
    predictor: KronosPartConfig = KronosPartConfig()
    inference: KronosInferenceConfig = KronosInferenceConfig()
    device: str = "auto"  # cuda, then mps, then cpu
    bf16: bool = True  # on CUDA: autocast for training, bf16 weights for forecasting
    nproc: int = 1  # >1: train under torchrun with DistributedDataParallel


# Model sizes and training budgets per `profile`; a config's `kronos:` section overrides them.
KRONOS_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {  # tiny, a few steps: CI and the default config
        "tokenizer": {"architecture": kronos_sizes.TOKENIZER_SMOKE},
        "predictor": {"architecture": kronos_sizes.KRONOS_SMOKE},
    },
    "cpu": {  # tokenizer-base and Kronos-mini sizes from scratch: hours on a laptop
        "tokenizer": {
            "architecture": kronos_sizes.TOKENIZER_BASE,
            "training": {"epochs": 10, "steps_per_epoch": 200, "lr": 2e-4, "patience": 3},
        },
        "predictor": {
            "architecture": kronos_sizes.KRONOS_MINI,
            "training": {"epochs": 10, "steps_per_epoch": 200, "lr": 3e-4, "patience": 3},
        },
    },
    "paper": {  # fine-tune the published models on a GPU with the upstream hyper-parameters
        "tokenizer": {
            "pretrained": "NeoQuasar/Kronos-Tokenizer-base",
            "training": {
                "epochs": 30,
                "steps_per_epoch": 2000,
                "batch_size": 50,
                "lr": 2e-4,
                "patience": 3,
                "val_windows": 20000,
            },
        },
        "predictor": {
            "pretrained": "NeoQuasar/Kronos-small",
            "training": {
                "epochs": 30,
                "steps_per_epoch": 2000,
                "batch_size": 50,
                "lr": 4e-5,
                "patience": 3,
                "val_windows": 20000,
            },
        },
        "inference": {"temperature": 0.6, "top_p": 0.9, "sample_count": 5},
    },
}


class TimeLLMTrainConfig(StrictModel):
    # 3 epochs: with 2 the full model stays clearly undertrained (validation MSEs in docs/performance.md).
    epochs: int = 3
    steps_per_epoch: int = 15  # batches per epoch, drawn at random from the training windows
    # Windows per optimiser step, run as micro-batches whose gradients add up: every step projects
    # the whole 30,522-word vocabulary onto the prototypes once, whatever the batch, so large steps
    # amortise it, while the frozen model is fastest per window in micro-batches of about 32.
    batch_size: int = 128
    micro_batch: int = 32
    # Upstream uses 1e-2 for ETT; on daily bars that diverges, and 1e-3 leaves the ablations
    # undertrained in the default budget (the comparison is in docs/performance.md).
    lr: float = 3e-3
    patience: int = 2
    val_windows: int = 512
    log_every: int = 5  # steps between reads of the training loss: each read waits for the GPU

    def settings(self, seed: int):
        """The model layer's settings (models.timellm.training.TimeLLMTrainSettings)."""
        from models.timellm.training import TimeLLMTrainSettings

        return TimeLLMTrainSettings(**self.model_dump(), seed=seed)


class TimeLLMStageConfig(StrictModel):
    """Time-LLM and its ablations; every variant gets the same windows, seed and budget."""

    variants: tuple[Variant, ...] = VARIANTS
    # Overrides of models.timellm.TimeLLMConfig, where the model's defaults live: backbone (hub id
    # or folder; default the bundled all-MiniLM-L6-v2), llm_layers, patch_len, stride, d_model,
    # d_ff, n_heads, num_tokens, dropout, description, trust_remote_code, load_in_4bit.
    # seq_len and pred_len come from split.lookback and split.horizon.
    model: dict[str, Any] = {}
    channels: Literal["close", "all"] = "close"  # forecast the close only, or every field (channel-independent)
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast where the hardware is fast at it
    # The frozen backbone when forecasting: int8 (dynamic quantisation of its linear layers, CPU),
    # bf16 (a copy with bf16 weights, under bf16 autocast) or as loaded (float); auto: int8 on a CPU
    # where the run is fp32, bf16 on a GPU that runs bf16. Training always uses the float backbone,
    # and the stage reports how far the cheaper backbone moves the forecasts from fp32 ones.
    forecast_backbone: Literal["auto", "int8", "bf16", "float"] = "auto"
    batch_size: int = 32  # series per forward pass when forecasting (2 CPU cores: 32 is 17% faster than 256)
    training: TimeLLMTrainConfig = TimeLLMTrainConfig()

    @field_validator("model")
    @classmethod
    def _model_keys(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        if not overrides:
            return overrides
        from models.timellm.model import TimeLLMConfig

        allowed = sorted(set(TimeLLMConfig.__dataclass_fields__) - {"seq_len", "pred_len", "variant"})
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown Time-LLM model key(s) {unknown}: choose from {allowed} "
                "(seq_len/pred_len follow split.lookback/split.horizon, variants are set in timellm.variants)"
            )
        return overrides


class ChronosStudentConfig(StrictModel):
    """Distillation of the Chronos-2 teacher into a smaller Chronos-2 (models/chronos/distill.py)."""

    # Size overrides of the teacher's config; patches, rope_theta, context length and quantile
    # levels are inherited. Keys: num_layers, d_model, d_ff, num_heads, d_kv, dropout_rate.
    architecture: dict[str, Any] = {"num_layers": 3, "d_model": 384, "d_ff": 1536, "num_heads": 6}
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    target_weight: float = 0.5  # weight of the true-target pinball loss beside matching the teacher
    min_context: int = 16  # shortest random training context
    train_windows: int = 8192  # training windows the teacher labels once
    val_windows: int = 512
    eval_every: int = 50
    log_every: int = 10  # steps between reads of the training losses: each read waits for the GPU
    patience: int = 3

    def settings(self, seed: int):
        """The model layer's settings (models.chronos.distill.DistillSettings)."""
        from models.chronos.distill import DistillSettings

        return DistillSettings(**self.model_dump(exclude={"architecture"}), seed=seed)

    @field_validator("architecture")
    @classmethod
    def _size_keys(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        from models.chronos import SIZE_KEYS

        unknown = sorted(set(overrides) - set(SIZE_KEYS))
        if unknown:
            raise ValueError(f"unknown Chronos-2 student key(s) {unknown}: choose from {list(SIZE_KEYS)}")
        return overrides


class ChronosConfig(StrictModel):
    """Chronos-2 zero-shot (source chronos2) and its distilled student (source chronos2_student).

    Needs the optional extra: pip install -e ".[chronos]".
    """

    teacher: str = "amazon/chronos-2"  # hub id or local folder (Chronos2Pipeline.from_pretrained)
    covariates: bool = False  # the other data.fields as past-only covariates of the close
    device: str = "auto"
    batch_size: int = 256  # series per forecast batch
    student: ChronosStudentConfig = ChronosStudentConfig()


class LGBMConfig(StrictModel):
    """LightGBM on Qlib's Alpha158 features (source lgbm_alpha158)."""

    # Qlib's CSI300 Alpha158 benchmark settings for LGBModel (threads sized for this machine).
    params: dict[str, Any] = {
        "loss": "mse",
        "colsample_bytree": 0.8879,
        "learning_rate": 0.2,
        "subsample": 0.8789,
        "lambda_l1": 205.6999,
        "lambda_l2": 580.9768,
        "max_depth": 8,
        "num_leaves": 210,
        "num_threads": 2,
        "early_stopping_rounds": 50,
        "num_boost_round": 1000,
        "verbosity": -1,
    }


class SignalsConfig(StrictModel):
    sources: tuple[str, ...] = (
        "kronos",
        "timellm",
        "timellm_no_llm",
        "timellm_llm_to_attn",
        "lgbm_alpha158",
        "momentum",
        "reversal",
    )

    @field_validator("sources")
    @classmethod
    def _known(cls, sources: tuple[str, ...]) -> tuple[str, ...]:
        from pipeline.graph import SIGNAL_SOURCES  # derived from the stages' declarations and the rules

        unknown = [name for name in sources if name not in SIGNAL_SOURCES]
        if unknown:
            raise ValueError(f"unknown signal source(s) {unknown}: choose from {list(SIGNAL_SOURCES)}")
        if not sources:
            raise ValueError("list at least one signal source")
        return sources


class BacktestConfig(StrictModel):
    # TopkDropout settings shared by the Qlib and vectorbt engines. The defaults suit the
    # 524-stock US sample (no price limits); configs/cn_csi300.yaml uses Qlib's CSI300 setting.
    topk: int = 20
    n_drop: int = 2
    hold_thresh: int = 1
    deal_price: Literal["close", "open"] = "close"
    open_cost: float = 0.0005
    close_cost: float = 0.0015
    min_cost: float = 5.0
    limit_threshold: float | None = None
    account: float = 100_000_000.0
    # Processes that backtest strategies side by side (Qlib's backtest is single-threaded). None: one
    # per STRATEGIES_PER_PROCESS strategies, at most one per CPU (evaluation.evaluate.default_workers).
    workers: PositiveInt | None = None
    # vectorbt sweep grid: every (topk, n_drop, cost multiplier) in one vectorised run
    sweep_topk: tuple[int, ...] = (10, 20, 30, 40, 50)
    sweep_n_drop: tuple[int, ...] = (1, 2, 3, 4, 5)
    sweep_cost: tuple[float, ...] = (0.5, 1.0)

    def topk_settings(self):
        """The strategy's settings (strategies.topk.TopkSettings), without the sweep grid."""
        from strategies.costs import TradingCosts
        from strategies.topk import TopkSettings

        costs = TradingCosts(self.open_cost, self.close_cost, self.min_cost)
        return TopkSettings(
            self.topk, self.n_drop, self.hold_thresh, self.deal_price, costs, self.limit_threshold, self.account
        )


class PipelineConfig(StrictModel):
    profile: Literal["smoke", "cpu", "paper"] = "smoke"
    seed: int = 42
    cache_dir: Path = Path(".cache/pipeline")
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    tracking: TrackingConfig = TrackingConfig()
    kronos: KronosConfig = KronosConfig()
    timellm: TimeLLMStageConfig = TimeLLMStageConfig()
    chronos: ChronosConfig = ChronosConfig()
    signals: SignalsConfig = SignalsConfig()
    lgbm: LGBMConfig = LGBMConfig()
    backtest: BacktestConfig = BacktestConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    def folds(self) -> list[FoldDates]:
        """The walk-forward folds; without any, one fold made of the split's segments."""
        if self.evaluation.walk_forward is not None:
            return self.evaluation.walk_forward.fold_dates()
        return list(self.evaluation.folds) or [
            FoldDates(train=self.split.train, valid=self.split.valid, test=self.split.test)
        ]

    def seeds(self) -> tuple[int, ...]:
        return self.evaluation.seeds or (self.seed,)

    def for_fold(self, fold: FoldDates, seed: int) -> PipelineConfig:
        """This config with one fold's segments as the split and one seed: what each learned stage instance sees."""
        split = self.split.model_copy(update={"train": fold.train, "valid": fold.valid, "test": fold.test})
        return self.model_copy(update={"split": split, "seed": seed})

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("profile", "smoke") in KRONOS_PROFILES:
            preset = KRONOS_PROFILES[raw.get("profile", "smoke")]
            raw = {**raw, "kronos": deep_merge(preset, raw.get("kronos") or {})}
        return raw

    @model_validator(mode="after")
    def _tokenizer_reads_the_fields(self) -> PipelineConfig:
        d_in = self.kronos.tokenizer.architecture.get("d_in")
        if not self.kronos.tokenizer.pretrained and d_in is not None and d_in != len(self.data.fields):
            raise ValueError(
                f"kronos.tokenizer.architecture.d_in is {d_in} but data.fields has {len(self.data.fields)} fields: "
                "make them agree"
            )
        return self

    @model_validator(mode="after")
    def _kronos_window_holds_the_horizon(self) -> PipelineConfig:
        if self.kronos.inference.max_context <= self.split.horizon:
            raise ValueError(
                f"kronos.inference.max_context is {self.kronos.inference.max_context} but split.horizon is "
                f"{self.split.horizon}: the token window must hold the horizon and some context; raise max_context"
            )
        return self

    @model_validator(mode="after")
    def _timellm_sources_are_trained(self) -> PipelineConfig:
        missing = [
            name
            for name in self.signals.sources
            if name.startswith("timellm") and name not in {timellm_source(variant) for variant in self.timellm.variants}
        ]
        if missing:
            raise ValueError(
                f"signals.sources lists {missing} but timellm.variants {list(self.timellm.variants)} "
                "does not train them: add the variant or drop the source"
            )
        return self

    @model_validator(mode="after")
    def _chronos_is_installed(self) -> PipelineConfig:
        wanted = [name for name in self.signals.sources if name.startswith("chronos2")]
        if wanted and importlib.util.find_spec("chronos") is None:
            raise ValueError(
                f'signals.sources lists {wanted} but chronos-forecasting is not installed: pip install -e ".[chronos]"'
            )
        return self

    def section(self, dotted_key: str) -> Any:
        """Value at a dotted key such as 'data.fields', as plain JSON-able data."""
        value: Any = self.model_dump(mode="json")
        for part in dotted_key.split("."):
            value = value[part]
        return value

    def config_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


def stable_hash(payload: Any) -> str:
    """Short, order-independent hash of JSON-able data."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ['a.b=1', 'c=[x, y]'] into a nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw_value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set split.lookback=90")
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set to a value and also used as a section")
        try:
            node[leaf] = yaml.safe_load(raw_value) if raw_value.strip() else None
        except (yaml.YAMLError, ValueError) as exc:  # YAML raises ValueError on dates such as 2010-13-01
            raise ConfigError(f"--set {item!r}: the value cannot be read ({exc}); dates are YYYY-MM-DD") from exc
    return nested


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config (default: configs/default.yaml), apply overrides, validate."""
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not config_path.is_file():
        raise ConfigError(f"config file {config_path} not found: pass --config with an existing YAML file")
    try:
        raw = yaml.safe_load(config_path.read_text()) or {}
    except (yaml.YAMLError, ValueError) as exc:  # YAML raises ValueError on dates such as 2010-13-01
        raise ConfigError(f"config file {config_path} is not valid YAML: {exc} (dates are YYYY-MM-DD)") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {config_path} must hold a mapping of sections, not {type(raw).__name__}")
    raw = deep_merge(_anchor_data_paths(raw, config_path.parent), parse_overrides(overrides or []))
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {config_path}:\n" + describe_errors(exc)) from exc


# Keys renamed with the stage contract (README "Renames" lists every one).
RENAMED_KEYS = {"baselines": "lgbm (baselines.lgbm is now lgbm.params)"}


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden" and key.split(".")[0] in RENAMED_KEYS:
            lines.append(f"  - '{key}' was renamed: use {RENAMED_KEYS[key.split('.')[0]]}")
        elif error["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}': check the spelling against pipeline/config.py")
        else:
            lines.append(f"  - '{key or '<root>'}': {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


def _anchor_data_paths(raw: dict[str, Any], config_dir: Path) -> dict[str, Any]:
    """Data paths written in a config file are relative to that file (overrides: to the cwd)."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return raw
    anchored = dict(data)
    for key in ("path", "provider_uri"):
        value = data.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            anchored[key] = str((config_dir / value).resolve())
    return {**raw, "data": anchored}
