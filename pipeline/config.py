"""Typed run configuration: pydantic models, YAML loading and `--set key=value` overrides.

Every default and its valid range lives in the models below (`Field(ge=..., gt=..., le=..., lt=...)`
on the field; the numeric entries of free-form dicts in the *_BOUNDS tables beside them); a YAML
file under `configs/` only states what a run changes. Validation happens once, at start-up, and
errors name the offending key, the value and the valid range.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.util
import json
import re
import types
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from data_prep.errors import ConfigError
from models.kronos import configs as kronos_sizes
from models.kronos.scores import KronosScore
from models.timellm.variants import VARIANTS, Variant, timellm_source

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_PATH = REPO_ROOT / "configs" / "default.yaml"

MODEL_FIELDS = ("open", "high", "low", "close", "volume", "amount")


class StrictModel(BaseModel):
    # allow_inf_nan=False: inf and nan are refused in every float field (they pass `gt=0`-style bounds otherwise).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


DateRange = tuple[dt.date, dt.date]

# Bounds of the numeric entries of the free-form dicts (model sizes passed on to constructors); an
# entry not listed is passed through unchecked.
COUNT_ENTRY = Annotated[int, Field(ge=1)]
DROPOUT_ENTRY = Annotated[float, Field(ge=0, lt=1)]
KRONOS_ARCHITECTURE_BOUNDS: dict[str, Any] = {
    **dict.fromkeys(
        ("d_in", "d_model", "n_heads", "ff_dim", "n_enc_layers", "n_dec_layers", "n_layers", "s1_bits", "s2_bits"),
        COUNT_ENTRY,
    ),
    "group_size": COUNT_ENTRY,
    **dict.fromkeys(("ffn_dropout_p", "attn_dropout_p", "resid_dropout_p", "token_dropout_p"), DROPOUT_ENTRY),
}
TIMELLM_MODEL_BOUNDS: dict[str, Any] = {
    **dict.fromkeys(("llm_layers", "patch_len", "stride", "d_model", "d_ff", "n_heads", "num_tokens"), COUNT_ENTRY),
    "dropout": DROPOUT_ENTRY,
}
CHRONOS_STUDENT_BOUNDS: dict[str, Any] = {
    **dict.fromkeys(("num_layers", "d_model", "d_ff", "num_heads", "d_kv"), COUNT_ENTRY),
    "dropout_rate": DROPOUT_ENTRY,
}


def keyed_error(key: str, message: str) -> PydanticCustomError:
    """A validation error about `key` inside the section being validated (a dict entry, or one field
    of a rule that spans several): describe_errors prints it under the section's path + `key`."""
    return PydanticCustomError("keyed", "{key}: {message}", {"key": key, "message": message})


@functools.cache
def _adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind)


def check_entries(values: dict[str, Any], bounds: dict[str, Any]) -> dict[str, Any]:
    """Refuse a dict entry outside its bounds (the tables above); returns `values` unchanged."""
    for key, kind in bounds.items():
        if key in values:
            try:
                _adapter(kind).validate_python(values[key])
            except ValidationError as exc:
                raise keyed_error(key, describe_value_error(exc.errors()[0], constraints_of(kind)[1])) from None
    return values


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
    max_daily_move: Annotated[float | None, Field(gt=0)] = None

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
    lookback: Annotated[int, Field(ge=1)] = 60  # trading days
    horizon: Annotated[int, Field(ge=1)] = 5
    # The defaults fit the embedded S&P 500 sample (2009-08-21 .. 2010-08-20).
    train: DateRange = (dt.date(2009, 8, 21), dt.date(2010, 4, 30))
    valid: DateRange = (dt.date(2010, 5, 1), dt.date(2010, 6, 15))
    test: DateRange = (dt.date(2010, 6, 16), dt.date(2010, 8, 20))
    # Normalised inputs are clipped to +-clip standard deviations (Kronos uses 5).
    clip: Annotated[float, Field(gt=0)] = 5.0

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
    folds: Annotated[int, Field(ge=1)] = 3
    test_months: Annotated[int, Field(ge=1)] = 12
    valid_months: Annotated[int, Field(ge=1)] = 12
    step_months: Annotated[int | None, Field(ge=1)] = None  # None: test_months, so the test segments tile
    train_months: Annotated[int | None, Field(ge=1)] = None  # rolling window length; required with window: rolling

    @model_validator(mode="after")
    def _lengths(self) -> WalkForwardConfig:
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
    # seeds for the learned stages, each in the range of `seed`; empty: `seed` only
    seeds: tuple[Annotated[int, Field(ge=0, le=2**31 - 1)], ...] = ()
    seed_ensemble: bool = True  # with several seeds, also backtest the mean score across seeds
    bootstrap_reps: Annotated[int, Field(ge=1)] = 1000  # stationary block-bootstrap resamples per interval

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
    epochs: Annotated[int, Field(ge=1)] = 3
    steps_per_epoch: Annotated[int, Field(ge=1)] = 100  # batches per epoch, drawn at random from the training windows
    batch_size: Annotated[int, Field(ge=1)] = 32  # per process
    lr: Annotated[float, Field(gt=0)] = 1e-3  # peak of the one-cycle schedule
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)  # AdamW
    grad_clip: Annotated[float, Field(gt=0)] = 3.0  # max gradient norm (0 would zero every gradient)
    # Epochs without validation improvement before stopping (0 would stop after the first epoch).
    patience: Annotated[int, Field(ge=1)] = 2
    val_windows: Annotated[int, Field(ge=1)] = 512
    min_context: Annotated[int, Field(ge=1)] = 16  # shortest random context (capped at split.lookback)
    # share of batches trained on a shorter, random context
    random_context_share: Annotated[float, Field(ge=0, le=1)] = 0.3
    teacher_forcing: bool = False  # predictor: condition s2 on the true s1 token while training
    # steps between reads of the training loss: each read waits for the GPU
    log_every: Annotated[int, Field(ge=1)] = 10

    def settings(self, clip: float, seed: int, device: str, bf16: bool):
        """The model layer's settings (models.kronos.training.KronosTrainSettings)."""
        from models.kronos.training import KronosTrainSettings

        return KronosTrainSettings(**self.model_dump(), clip=clip, seed=seed, device=device, bf16=bf16)


class KronosInferenceConfig(StrictModel):
    sample_count: Annotated[int, Field(ge=1)] = 5  # sample paths per series and day
    temperature: Annotated[float, Field(gt=0)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0  # 0: off; 1: greedy
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.9  # 1: off
    # token window, > split.horizon; longer contexts are cut from the left
    max_context: Annotated[int, Field(ge=1)] = 512
    batch_size: Annotated[int, Field(ge=1)] = 512  # series per forward pass; halved automatically on out-of-memory
    nproc: Annotated[int, Field(ge=1)] = 1  # >1: shard the series over this many processes (torchrun) and merge
    # torch.compile each decoding step (fused kernels, fewer operator calls). Off: each batch shape
    # pays a compile first, which only a GPU can earn back (docs/performance.md).
    compile_decoding: bool = False
    # Scores from the same sampled paths, each its own source: expected_return is `kronos` (and
    # `kronos_zeroshot`); last, mean, max and min are upstream's signals (the mean path's last, mean,
    # max or min close minus the last close), written as `kronos:mean` and so on.
    scores: tuple[KronosScore, ...] = ("expected_return",)

    @field_validator("scores")
    @classmethod
    def _expected_return_first(cls, scores: tuple[str, ...]) -> tuple[str, ...]:
        if not scores or scores[0] != "expected_return" or len(set(scores)) != len(scores):
            raise ValueError(f"must start with expected_return and name each score once, got {list(scores)}")
        return scores


class KronosZeroShotConfig(StrictModel):
    """The published checkpoints (hub ids or local folders) that the kronos_zeroshot source forecasts
    with, untrained; the defaults are the paper profile's."""

    tokenizer: str = "NeoQuasar/Kronos-Tokenizer-base"
    predictor: str = "NeoQuasar/Kronos-small"


class KronosPartConfig(StrictModel):
    """The tokenizer or the predictor: where it starts from and how it is trained."""

    # Hub id (e.g. NeoQuasar/Kronos-small) or local folder to fine-tune; "" trains from scratch
    # with `architecture` (constructor arguments; ignored when fine-tuning).
    pretrained: str = ""
    architecture: dict[str, Any] = {}  # numeric entries bounded by KRONOS_ARCHITECTURE_BOUNDS
    training: KronosTrainConfig = KronosTrainConfig()

    @field_validator("architecture")
    @classmethod
    def _sizes(cls, architecture: dict[str, Any]) -> dict[str, Any]:
        return check_entries(architecture, KRONOS_ARCHITECTURE_BOUNDS)


class KronosConfig(StrictModel):
    tokenizer: KronosPartConfig = KronosPartConfig()
    predictor: KronosPartConfig = KronosPartConfig()
    inference: KronosInferenceConfig = KronosInferenceConfig()
    zeroshot: KronosZeroShotConfig = KronosZeroShotConfig()
    device: str = "auto"  # cuda, then mps, then cpu
    bf16: bool = True  # on CUDA: autocast for training, bf16 weights for forecasting
    nproc: Annotated[int, Field(ge=1)] = 1  # >1: train under torchrun with DistributedDataParallel


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
    epochs: Annotated[int, Field(ge=1)] = 3
    steps_per_epoch: Annotated[int, Field(ge=1)] = 15  # batches per epoch, drawn at random from the training windows
    # Windows per optimiser step, run as micro-batches whose gradients add up: every step projects
    # the whole 30,522-word vocabulary onto the prototypes once, whatever the batch, so large steps
    # amortise it, while the frozen model is fastest per window in micro-batches of about 32.
    batch_size: Annotated[int, Field(ge=1)] = 128
    # Also the batch of validation forecasts. Not bounded by batch_size: a larger micro_batch runs each
    # batch in one pass, with the same gradient, so `batch_size: 8` alone stays valid.
    micro_batch: Annotated[int, Field(ge=1)] = 32
    # Upstream uses 1e-2 for ETT; on daily bars that diverges, and 1e-3 leaves the ablations
    # undertrained in the default budget (the comparison is in docs/performance.md).
    lr: Annotated[float, Field(gt=0)] = 3e-3
    patience: Annotated[int, Field(ge=1)] = 2  # epochs without validation improvement before stopping
    val_windows: Annotated[int, Field(ge=1)] = 512
    log_every: Annotated[int, Field(ge=1)] = 5  # steps between reads of the training loss: each read waits for the GPU

    def settings(self, seed: int):
        """The model layer's settings (models.timellm.training.TimeLLMTrainSettings)."""
        from models.timellm.training import TimeLLMTrainSettings

        return TimeLLMTrainSettings(**self.model_dump(), seed=seed)


class TimeLLMStageConfig(StrictModel):
    """Time-LLM and its ablations; every variant gets the same windows, seed and budget."""

    variants: tuple[Variant, ...] = VARIANTS
    # Overrides of models.timellm.TimeLLMConfig, where the model's defaults live: backbone (hub id
    # or folder; default the bundled all-MiniLM-L6-v2), llm_layers, patch_len, stride, d_model,
    # d_ff, n_heads, num_tokens, dropout, description, trust_remote_code, load_in_4bit (numeric entries
    # bounded by TIMELLM_MODEL_BOUNDS). seq_len and pred_len come from split.lookback and split.horizon.
    model: dict[str, Any] = {}
    channels: Literal["close", "all"] = "close"  # forecast the close only, or every field (channel-independent)
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast where the hardware is fast at it
    # The frozen backbone when forecasting: int8 (dynamic quantisation of its linear layers, CPU),
    # bf16 (a copy with bf16 weights, under bf16 autocast) or as loaded (float); auto: int8 on a CPU
    # where the run is fp32, bf16 on a GPU that runs bf16. Training always uses the float backbone,
    # and the stage reports how far the cheaper backbone moves the forecasts from fp32 ones.
    forecast_backbone: Literal["auto", "int8", "bf16", "float"] = "auto"
    # series per forward pass when forecasting (2 CPU cores: 32 is 17% faster than 256)
    batch_size: Annotated[int, Field(ge=1)] = 32
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
        return check_entries(overrides, TIMELLM_MODEL_BOUNDS)


class ChronosStudentConfig(StrictModel):
    """Distillation of the Chronos-2 teacher into a smaller Chronos-2 (models/chronos/distill.py)."""

    # Size overrides of the teacher's config; patches, rope_theta, context length and quantile
    # levels are inherited. Keys: num_layers, d_model, d_ff, num_heads, d_kv, dropout_rate (bounded by
    # CHRONOS_STUDENT_BOUNDS).
    architecture: dict[str, Any] = {"num_layers": 3, "d_model": 384, "d_ff": 1536, "num_heads": 6}
    steps: Annotated[int, Field(ge=1)] = 300
    batch_size: Annotated[int, Field(ge=1)] = 64
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    # weight of the true-target pinball loss beside matching the teacher (0: match the teacher only)
    target_weight: Annotated[float, Field(ge=0)] = 0.5
    min_context: Annotated[int, Field(ge=1)] = 16  # shortest random training context
    train_windows: Annotated[int, Field(ge=1)] = 8192  # training windows the teacher labels once
    val_windows: Annotated[int, Field(ge=1)] = 512
    eval_every: Annotated[int, Field(ge=1)] = 50  # steps between validations
    # steps between reads of the training losses: each read waits for the GPU
    log_every: Annotated[int, Field(ge=1)] = 10
    patience: Annotated[int, Field(ge=1)] = 3  # validations without improvement before stopping

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
        return check_entries(overrides, CHRONOS_STUDENT_BOUNDS)


class ChronosConfig(StrictModel):
    """Chronos-2 zero-shot (source chronos2) and its distilled student (source chronos2_student).

    Needs the optional extra: pip install -e ".[chronos]".
    """

    teacher: str = "amazon/chronos-2"  # hub id or local folder (Chronos2Pipeline.from_pretrained)
    covariates: bool = False  # the other data.fields as past-only covariates of the close
    device: str = "auto"
    batch_size: Annotated[int, Field(ge=1)] = 256  # series per forecast batch
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
    # topk: names held (at most the universe: check_topk, once it is known). n_drop: names replaced a day, at
    # most topk (n_drop = topk holds each day's top k; more trades the same); 0: never replace.
    topk: Annotated[int, Field(ge=1)] = 20
    n_drop: Annotated[int, Field(ge=0)] = 2
    hold_thresh: Annotated[int, Field(ge=1)] = 1  # days a name is held before it may be sold (Qlib; 0 acts as 1)
    deal_price: Literal["close", "open"] = "close"
    open_cost: Annotated[float, Field(ge=0, lt=1)] = 0.0005  # fraction of the traded value, on buys
    close_cost: Annotated[float, Field(ge=0, lt=1)] = 0.0015  # on sells
    min_cost: Annotated[float, Field(ge=0)] = 5.0  # minimum fee per order, in account currency
    # daily price limit as a fraction, e.g. 0.095 for A-shares; None: no limits
    limit_threshold: Annotated[float | None, Field(gt=0, lt=1)] = None
    account: Annotated[float, Field(gt=0)] = 100_000_000.0
    # Processes that backtest strategies side by side (Qlib's backtest is single-threaded). None: one
    # per STRATEGIES_PER_PROCESS strategies, at most one per CPU (evaluation.evaluate.default_workers).
    workers: Annotated[int | None, Field(ge=1)] = None
    # vectorbt sweep grid: every (topk, n_drop, cost multiplier) in one vectorised run, each pair with
    # n_drop <= topk (a larger n_drop trades as n_drop = topk and would count as another trial).
    sweep_topk: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)] = (10, 20, 30, 40, 50)
    sweep_n_drop: Annotated[tuple[Annotated[int, Field(ge=0)], ...], Field(min_length=1)] = (1, 2, 3, 4, 5)
    # multipliers of open_cost and close_cost
    sweep_cost: Annotated[tuple[Annotated[float, Field(ge=0)], ...], Field(min_length=1)] = (0.5, 1.0)

    @model_validator(mode="after")
    def _drops_within_topk(self) -> BacktestConfig:
        if self.n_drop > self.topk:
            raise keyed_error(
                "n_drop",
                f"must be <= backtest.topk ({self.topk}), got {self.n_drop}: n_drop = topk already replaces "
                "every holding each day",
            )
        pairs = [(topk, n_drop) for topk in self.sweep_topk for n_drop in self.sweep_n_drop if n_drop > topk]
        if pairs:
            raise keyed_error(
                "sweep_n_drop",
                f"must be <= every backtest.sweep_topk {list(self.sweep_topk)}, got {list(self.sweep_n_drop)}: "
                f"the (topk, n_drop) pairs {pairs} trade exactly as n_drop = topk and would inflate the sweep's "
                "trial count; lower sweep_n_drop or raise sweep_topk",
            )
        return self

    def topk_settings(self):
        """The strategy's settings (strategies.topk.TopkSettings), without the sweep grid."""
        from strategies.costs import TradingCosts
        from strategies.topk import TopkSettings

        costs = TradingCosts(self.open_cost, self.close_cost, self.min_cost)
        return TopkSettings(
            self.topk, self.n_drop, self.hold_thresh, self.deal_price, costs, self.limit_threshold, self.account
        )


class RayConfig(StrictModel):
    """Where `executor: ray` runs the stage instances (see README "Scaling out")."""

    # "": start a Ray instance on this machine with its cores and GPUs; "auto" or "ray://host:10001": join a cluster
    address: str = ""
    # CPUs Ray reserves for each stage instance; None: `threads`, which decides torch's threads too
    cpus_per_task: Annotated[float | None, Field(gt=0, le=1024)] = None
    max_retries: Annotated[int, Field(ge=0, le=100)] = 3  # re-runs of an instance whose worker or node died


class LiveConfig(StrictModel):
    """`--stage positions`: the next bar's orders from a pinned model, which new data never retrains
    (docs/live.md)."""

    # models:/<name>@<alias>, models:/<name>/<version>, a bundle folder (with source.json), or a learned
    # source's name (kronos, lgbm_alpha158, a Time-LLM variant, chronos2_student): this experiment's
    # registered model of it at alias champion.
    model: str = "kronos"
    # The decision day: latest (the data's last bar up to today) or a date (the last bar on or before it).
    as_of: Literal["latest"] | dt.date = "latest"
    # Current positions: a CSV with an `instrument` column (rows whose `action` is sell are not held).
    # None: the newest positions file before the decision day in output_dir (none: start from cash).
    holdings: Path | None = None
    output_dir: Path = Path("live")  # positions/<day>.csv are written here
    # Refuse data whose last bar lies more than this many trading days (weekdays) before the decision
    # day asked for (latest: today); 1 lets a market holiday pass.
    max_staleness_days: Annotated[int, Field(ge=0)] = 1
    # Refuse a decision day on which fewer of the instruments trading lately (last 20 bars) have a bar.
    min_coverage: Annotated[float, Field(gt=0, le=1)] = 0.9


class PipelineConfig(StrictModel):
    profile: Literal["smoke", "cpu", "paper"] = "smoke"
    # numpy's default_rng refuses negative seeds, and LightGBM's `seed` is a C int
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42
    cache_dir: Path = Path(".cache/pipeline")
    # local: every stage instance in this process, one after another; ray: instances as Ray tasks
    executor: Literal["local", "ray"] = "local"
    # torch's threads in every stage instance, on every executor: training results depend on it in their last
    # bits, so equal outputs across executors and machines need it equal. None: the driver machine's cores.
    threads: Annotated[int | None, Field(ge=1, le=1024)] = None
    ray: RayConfig = RayConfig()
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
    live: LiveConfig = LiveConfig()

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
    def _kronos_scores_are_written(self) -> PipelineConfig:
        scores = self.kronos.inference.scores
        missing = [name for name in self.signals.sources if ":" in name and name.split(":", 1)[1] not in scores]
        if missing:
            raise ValueError(
                f"signals.sources lists {missing} but kronos.inference.scores {list(scores)} does not write them: "
                "add the score (e.g. --set 'kronos.inference.scores=[expected_return, mean]') or drop the source"
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
        """What the run computes: where it runs (executor, ray) is left out."""
        return stable_hash(self.model_dump(mode="json", exclude={"executor", "ray"}))


def stable_hash(payload: Any) -> str:
    """Short, order-independent hash of JSON-able data."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ['a.b=1', 'c=[x, y]'] into a nested dict; each value as parse_override_value reads it."""
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
        node[leaf] = parse_override_value(raw_value, item)
    return nested


# Plain scalars YAML reads as these are taken as YAML; any other text is kept as it is.
_YAML_SCALAR_TAGS = {f"tag:yaml.org,2002:{kind}" for kind in ("bool", "int", "float", "null", "timestamp")}
_EXPONENT_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")  # 1e-4, which YAML 1.1 reads as text


def parse_override_value(raw: str, item: str = "") -> Any:
    """The value of one `--set key=value`, with nothing cut: `[...]` and `{...}` (lists, mappings) and a
    quoted scalar are read as YAML, and so is a plain scalar YAML reads as a bool, number, null or date
    (`true`, `7`, `0.5`, `null`, `2022-01-01`; also `1e-4`); anything else is the text itself, `#`
    included (`run #3`, `/tmp/a #b.csv`). Surrounding whitespace is dropped; an empty value is null."""
    text = raw.strip()
    if not text:
        return None
    if text[0] in "[{" or (len(text) > 1 and text[0] == text[-1] and text[0] in "'\""):
        return _read_yaml_whole(text, item or text)
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False))
    if tag in _YAML_SCALAR_TAGS:  # the resolver matched the whole text, so there is no comment to cut
        return _read_yaml_whole(text, item or text)
    if _EXPONENT_FLOAT.fullmatch(text):
        return float(text)
    return text


def _read_yaml_whole(text: str, item: str) -> Any:
    comment = " '#' after a space starts a YAML comment: quote the item that holds it" if "#" in text else ""
    try:
        value = yaml.safe_load(text)
        tokens = list(yaml.scan(text))
    except (yaml.YAMLError, ValueError) as exc:  # YAML raises ValueError on dates such as 2010-13-01
        problem = str(exc)
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem and exc.problem_mark:
            problem = f"{exc.problem} at character {exc.problem_mark.column + 1}"  # one line, not YAML's drawing
        raise ConfigError(
            f"--set {item!r}: the value cannot be read ({problem}); dates are YYYY-MM-DD.{comment}"
        ) from exc
    last = tokens[-2] if len(tokens) > 1 else None  # tokens[-1] ends the stream
    if last is not None and last.end_mark.index != len(text):  # YAML skipped a trailing comment
        raise ConfigError(
            f"--set {item!r}: YAML would drop {text[last.end_mark.index :].strip()!r} after the value;{comment}"
        )
    return value


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

_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def describe_errors(exc: ValidationError) -> str:
    """One line per error: the dotted key, what is wrong, and for a bound its valid range and the value,
    e.g. `kronos.predictor.training.epochs: must be >= 1, got 0`."""
    lines = []
    errors = exc.errors()
    for error in errors:
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "too_short" and any(
            other["loc"][: len(error["loc"])] == error["loc"] and other["loc"] != error["loc"] for other in errors
        ):
            continue  # a tuple whose items were refused counts as too short too: name the items only
        if error["type"] == "extra_forbidden" and key.split(".")[0] in RENAMED_KEYS:
            lines.append(f"  - '{key}' was renamed: use {RENAMED_KEYS[key.split('.')[0]]}")
        elif error["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}': check the spelling against pipeline/config.py")
        elif error["type"] == "keyed":  # keyed_error: a key inside the section at `loc`
            lines.append(f"  - {'.'.join(filter(None, (key, error['ctx']['key'])))}: {error['ctx']['message']}")
        elif error["type"] == "value_error":  # our validators' messages name their keys and what they got
            lines.append(f"  - {key + ': ' if key else ''}{error['msg'].removeprefix('Value error, ')}")
        else:
            metadata, nullable = _metadata_at(error["loc"])
            lines.append(f"  - {key or '<root>'}: {describe_value_error(error, metadata, nullable)}")
    return "\n".join(lines)


def describe_value_error(error: Any, metadata: list[Any], nullable: bool = False) -> str:
    """`must be in (0, 1], got 1.5` for a bound (the field's whole range where `metadata` holds it), else
    pydantic's message and the value."""
    if error["type"] not in _BOUND_ERRORS:
        return f"{error['msg']} (got {error.get('input')!r})"
    valid = range_text(metadata) or range_text([_BOUND_CLASSES[name](value) for name, value in error["ctx"].items()])
    return f"must be {valid}{' or null' if nullable else ''}, got {error.get('input')!r}"


_BOUND_CLASSES: dict[str, Any] = {
    "ge": annotated_types.Ge,
    "gt": annotated_types.Gt,
    "le": annotated_types.Le,
    "lt": annotated_types.Lt,
}


def range_text(metadata: list[Any]) -> str:
    """'>= 1', '> 0', 'in [0, 1)', ... from a field's Ge/Gt/Le/Lt constraints; '' without any."""

    def number(value: Any) -> str:
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    lower = next((("[", ">=", c.ge) if hasattr(c, "ge") else ("(", ">", c.gt) for c in metadata if _is_lower(c)), None)
    upper = next((("]", "<=", c.le) if hasattr(c, "le") else (")", "<", c.lt) for c in metadata if _is_upper(c)), None)
    if lower and upper:
        return f"in {lower[0]}{number(lower[2])}, {number(upper[2])}{upper[0]}"
    if lower:
        return f"{lower[1]} {number(lower[2])}"
    if upper:
        return f"{upper[1]} {number(upper[2])}"
    return ""


def _is_lower(constraint: Any) -> bool:
    return isinstance(constraint, annotated_types.Ge | annotated_types.Gt)


def _is_upper(constraint: Any) -> bool:
    return isinstance(constraint, annotated_types.Le | annotated_types.Lt)


def constraints_of(annotation: Any) -> tuple[Any, list[Any], bool]:
    """(type, constraints, nullable) of an annotation, through Annotated[...] and `X | None`."""
    metadata: list[Any] = []
    nullable = False
    while True:
        if get_origin(annotation) is Annotated:
            annotation, *extra = get_args(annotation)
            for item in extra:
                metadata += item.metadata if isinstance(item, FieldInfo) else [item]
        elif get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation):
            rest = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(rest) != 1:
                return annotation, metadata, True
            annotation, nullable = rest[0], True
        else:
            return annotation, metadata, nullable


def _metadata_at(loc: tuple[Any, ...]) -> tuple[list[Any], bool]:
    """The constraints of the PipelineConfig field at `loc` and whether it may be null; ([], False) if unknown."""
    node: Any = PipelineConfig
    metadata: list[Any] = []
    nullable = False
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            info = node.model_fields[part]
            node, metadata, nullable = constraints_of(info.annotation)
            metadata = list(info.metadata) + metadata
        elif get_origin(node) is tuple and isinstance(part, int) and get_args(node):
            args = get_args(node)
            element = args[0] if len(args) == 2 and args[1] is Ellipsis else args[min(part, len(args) - 1)]
            node, metadata, nullable = constraints_of(element)
        else:
            return [], False
    return metadata, nullable


def check_topk(backtest: BacktestConfig, universe_size: int, universe: str | None = None) -> None:
    """Refuse a `backtest.topk` (or a `backtest.sweep_topk` entry) larger than the universe, which is known
    only after ingest: call it with the number of instruments the backtest trades. `universe` names it in
    the message (e.g. data.instruments)."""
    named = f"universe {universe!r}" if universe else "the universe"
    if backtest.topk > universe_size:
        raise ConfigError(
            f"backtest.topk {backtest.topk} is larger than the {universe_size} instruments of {named}: "
            f"a portfolio of topk names needs at least topk instruments; set backtest.topk to at most {universe_size}"
        )
    too_large = [topk for topk in backtest.sweep_topk if topk > universe_size]
    if too_large:
        raise ConfigError(
            f"backtest.sweep_topk holds {too_large}, larger than the {universe_size} instruments of {named}: "
            f"keep every sweep_topk at most {universe_size}"
        )


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
