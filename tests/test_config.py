import datetime as dt
from pathlib import Path
from typing import get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from data_prep.errors import ConfigError
from pipeline.config import (
    REPO_ROOT,
    BacktestConfig,
    PipelineConfig,
    check_topk,
    constraints_of,
    load_config,
    parse_overrides,
    range_text,
)
from pipeline.run import main


def test_default_config_is_the_embedded_sample():
    config = load_config()
    assert config.data.source == "sample"
    assert config.split.lookback == 60 and config.split.horizon == 5


def test_overrides_are_parsed_as_yaml():
    config = load_config(overrides=["split.test=[2010-07-01, 2010-08-20]", "split.lookback=30", "seed=7"])
    assert config.split.test == (dt.date(2010, 7, 1), dt.date(2010, 8, 20))
    assert config.split.lookback == 30
    assert config.seed == 7


def test_several_overrides_in_one_flag(tmp_path):
    config = load_config(overrides=["data.source=csv", f"data.path={tmp_path / 'x.csv'}"])
    assert config.data.source == "csv"
    assert config.data.path == tmp_path / "x.csv"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'split.lookbak'"):
        load_config(overrides=["split.lookbak=30"])


def test_csv_source_needs_a_path():
    with pytest.raises(ConfigError, match="data.path"):
        load_config(overrides=["data.source=csv"])


def test_segments_must_be_in_time_order():
    with pytest.raises(ConfigError, match="time order"):
        load_config(overrides=["split.valid=[2009-09-01, 2009-10-01]"])


def test_kronos_window_must_hold_the_horizon():
    with pytest.raises(ConfigError, match="kronos.inference.max_context is 5 but split.horizon is 5"):
        load_config(overrides=["kronos.inference.max_context=5"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lookback"])


def test_config_hash_changes_with_any_value():
    base = PipelineConfig()
    assert base.config_hash() == PipelineConfig().config_hash()
    assert base.config_hash() != PipelineConfig(seed=1).config_hash()


def test_cli_reports_unknown_key_with_exit_code(capsys):
    assert main(["--stage", "split", "--set", "data.sourc=csv"]) == 2
    assert "data.sourc" in capsys.readouterr().out


def test_paths_in_config_files_are_relative_to_the_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text("data: {source: csv, path: ../bars.csv}\n")
    config = load_config(tmp_path / "configs" / "run.yaml")
    assert config.data.path == (tmp_path / "bars.csv").resolve()


# --- bounds: every count, size and fraction is checked at start-up, and the error names the key ---

BAD_VALUES = [
    ("kronos.predictor.training.epochs=0", "kronos.predictor.training.epochs: must be >= 1, got 0"),
    ("kronos.predictor.training.epochs=-3", "kronos.predictor.training.epochs: must be >= 1, got -3"),
    ("kronos.tokenizer.training.steps_per_epoch=0", "kronos.tokenizer.training.steps_per_epoch: must be >= 1, got 0"),
    ("kronos.tokenizer.training.batch_size=0", "kronos.tokenizer.training.batch_size: must be >= 1, got 0"),
    ("kronos.predictor.training.lr=0", "kronos.predictor.training.lr: must be > 0, got 0"),
    ("kronos.predictor.training.weight_decay=-0.1", "kronos.predictor.training.weight_decay: must be >= 0, got -0.1"),
    ("kronos.predictor.training.betas=[0.9, 1.0]", "kronos.predictor.training.betas.1: must be in [0, 1), got 1.0"),
    ("kronos.predictor.training.grad_clip=0", "kronos.predictor.training.grad_clip: must be > 0, got 0"),
    ("kronos.predictor.training.patience=0", "kronos.predictor.training.patience: must be >= 1, got 0"),
    ("kronos.predictor.training.val_windows=0", "kronos.predictor.training.val_windows: must be >= 1, got 0"),
    ("kronos.predictor.training.min_context=0", "kronos.predictor.training.min_context: must be >= 1, got 0"),
    (
        "kronos.predictor.training.random_context_share=1.5",
        "kronos.predictor.training.random_context_share: must be in [0, 1], got 1.5",
    ),
    ("kronos.predictor.training.log_every=0", "kronos.predictor.training.log_every: must be >= 1, got 0"),
    ("kronos.inference.sample_count=0", "kronos.inference.sample_count: must be >= 1, got 0"),
    ("kronos.inference.temperature=0", "kronos.inference.temperature: must be > 0, got 0"),
    ("kronos.inference.top_k=-1", "kronos.inference.top_k: must be >= 0, got -1"),
    ("kronos.inference.top_p=0", "kronos.inference.top_p: must be in (0, 1], got 0"),
    ("kronos.inference.top_p=1.5", "kronos.inference.top_p: must be in (0, 1], got 1.5"),
    ("kronos.inference.max_context=0", "kronos.inference.max_context: must be >= 1, got 0"),
    ("kronos.inference.batch_size=0", "kronos.inference.batch_size: must be >= 1, got 0"),
    ("kronos.inference.nproc=0", "kronos.inference.nproc: must be >= 1, got 0"),
    ("kronos.nproc=0", "kronos.nproc: must be >= 1, got 0"),
    ("kronos.predictor.architecture={n_layers: 0}", "kronos.predictor.architecture.n_layers: must be >= 1, got 0"),
    (
        "kronos.tokenizer.architecture={ffn_dropout_p: 1.0}",
        "kronos.tokenizer.architecture.ffn_dropout_p: must be in [0, 1), got 1.0",
    ),
    ("timellm.training.epochs=0", "timellm.training.epochs: must be >= 1, got 0"),
    ("timellm.training.steps_per_epoch=0", "timellm.training.steps_per_epoch: must be >= 1, got 0"),
    ("timellm.training.batch_size=0", "timellm.training.batch_size: must be >= 1, got 0"),
    ("timellm.training.micro_batch=0", "timellm.training.micro_batch: must be >= 1, got 0"),
    ("timellm.training.lr=-0.001", "timellm.training.lr: must be > 0, got -0.001"),
    ("timellm.training.patience=0", "timellm.training.patience: must be >= 1, got 0"),
    ("timellm.training.val_windows=0", "timellm.training.val_windows: must be >= 1, got 0"),
    ("timellm.training.log_every=0", "timellm.training.log_every: must be >= 1, got 0"),
    ("timellm.batch_size=0", "timellm.batch_size: must be >= 1, got 0"),
    ("timellm.model={llm_layers: 0}", "timellm.model.llm_layers: must be >= 1, got 0"),
    ("timellm.model={dropout: 1.0}", "timellm.model.dropout: must be in [0, 1), got 1.0"),
    ("chronos.batch_size=0", "chronos.batch_size: must be >= 1, got 0"),
    ("chronos.student.steps=0", "chronos.student.steps: must be >= 1, got 0"),
    ("chronos.student.batch_size=0", "chronos.student.batch_size: must be >= 1, got 0"),
    ("chronos.student.lr=0", "chronos.student.lr: must be > 0, got 0"),
    ("chronos.student.weight_decay=-1", "chronos.student.weight_decay: must be >= 0, got -1"),
    ("chronos.student.target_weight=-0.5", "chronos.student.target_weight: must be >= 0, got -0.5"),
    ("chronos.student.min_context=0", "chronos.student.min_context: must be >= 1, got 0"),
    ("chronos.student.train_windows=0", "chronos.student.train_windows: must be >= 1, got 0"),
    ("chronos.student.val_windows=0", "chronos.student.val_windows: must be >= 1, got 0"),
    ("chronos.student.eval_every=0", "chronos.student.eval_every: must be >= 1, got 0"),
    ("chronos.student.log_every=0", "chronos.student.log_every: must be >= 1, got 0"),
    ("chronos.student.patience=0", "chronos.student.patience: must be >= 1, got 0"),
    ("chronos.student.architecture={num_layers: 0}", "chronos.student.architecture.num_layers: must be >= 1, got 0"),
    (
        "chronos.student.architecture={dropout_rate: -0.1}",
        "chronos.student.architecture.dropout_rate: must be in [0, 1), got -0.1",
    ),
    ("split.lookback=0", "split.lookback: must be >= 1, got 0"),
    ("split.horizon=0", "split.horizon: must be >= 1, got 0"),
    ("split.clip=0", "split.clip: must be > 0, got 0"),
    ("data.max_daily_move=-0.1", "data.max_daily_move: must be > 0 or null, got -0.1"),
    ("seed=-1", "seed: must be in [0, 2147483647], got -1"),
    ("evaluation.seeds=[1, -2]", "evaluation.seeds.1: must be in [0, 2147483647], got -2"),
    ("evaluation.bootstrap_reps=0", "evaluation.bootstrap_reps: must be >= 1, got 0"),
    ("backtest.topk=0", "backtest.topk: must be >= 1, got 0"),
    ("backtest.n_drop=-1", "backtest.n_drop: must be >= 0, got -1"),
    ("backtest.hold_thresh=0", "backtest.hold_thresh: must be >= 1, got 0"),
    ("backtest.open_cost=-0.001", "backtest.open_cost: must be in [0, 1), got -0.001"),
    ("backtest.close_cost=1", "backtest.close_cost: must be in [0, 1), got 1"),
    ("backtest.min_cost=-5", "backtest.min_cost: must be >= 0, got -5"),
    ("backtest.limit_threshold=0", "backtest.limit_threshold: must be in (0, 1) or null, got 0"),
    ("backtest.limit_threshold=1.0", "backtest.limit_threshold: must be in (0, 1) or null, got 1.0"),
    ("backtest.account=0", "backtest.account: must be > 0, got 0"),
    ("backtest.workers=0", "backtest.workers: must be >= 1 or null, got 0"),
    ("backtest.sweep_topk=[10, 0]", "backtest.sweep_topk.1: must be >= 1, got 0"),
    ("backtest.sweep_n_drop=[-1]", "backtest.sweep_n_drop.0: must be >= 0, got -1"),
    ("backtest.sweep_cost=[1.0, -0.5]", "backtest.sweep_cost.1: must be >= 0, got -0.5"),
    ("backtest.sweep_topk=[]", "backtest.sweep_topk: Tuple should have at least 1 item"),
    ("kronos.predictor.training.lr=.inf", "kronos.predictor.training.lr: Input should be a finite number"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[item[0] for item in BAD_VALUES])
def test_out_of_range_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[override])
    header, *lines = str(caught.value).splitlines()
    assert header.startswith("invalid config ")
    assert len(lines) == 1 and lines[0].startswith(f"  - {message}")


def test_bound_messages_read_exactly():
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=["kronos.predictor.training.epochs=0", "kronos.inference.top_p=1.5"])
    assert str(caught.value).splitlines()[1:] == [
        "  - kronos.predictor.training.epochs: must be >= 1, got 0",
        "  - kronos.inference.top_p: must be in (0, 1], got 1.5",
    ]


@pytest.mark.parametrize(
    ("section", "overrides"),
    [
        ("evaluation.walk_forward.folds", {"folds": 0}),
        ("evaluation.walk_forward.test_months", {"test_months": 0}),
        ("evaluation.walk_forward.valid_months", {"valid_months": 0}),
        ("evaluation.walk_forward.step_months", {"step_months": 0}),
        ("evaluation.walk_forward.train_months", {"window": "rolling", "train_months": 0}),
    ],
)
def test_walk_forward_lengths_are_bounded(section, overrides):
    fields = ", ".join(f"{key}: {value}" for key, value in overrides.items())
    override = f"evaluation.walk_forward={{train_start: 2009-08-21, first_test: 2010-06-16, {fields}}}"
    with pytest.raises(ConfigError, match=rf"{section}: must be >= 1(?: or null)?, got 0"):
        load_config(overrides=[override])


def test_cli_reports_a_bound_in_one_message_with_exit_code(capsys):
    assert main(["--stage", "split", "--set", "kronos.predictor.training.epochs=0"]) == 2
    out = capsys.readouterr().out
    assert "kronos.predictor.training.epochs: must be >= 1, got 0" in " ".join(out.split())


def test_n_drop_may_not_exceed_topk():
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=["backtest.topk=5", "backtest.n_drop=6"])
    assert str(caught.value).splitlines()[1] == (
        "  - backtest.n_drop: must be <= backtest.topk (5), got 6: "
        "n_drop = topk already replaces every holding each day"
    )
    with pytest.raises(ValidationError, match="n_drop: must be <= backtest.topk"):
        BacktestConfig(topk=3, n_drop=4)
    # n_drop = topk is allowed: each day the portfolio becomes that day's top k
    assert BacktestConfig(topk=3, n_drop=3, sweep_topk=(3,), sweep_n_drop=(3,)).n_drop == 3


def test_sweep_pairs_with_more_drops_than_names_are_refused():
    with pytest.raises(ConfigError, match=r"backtest.sweep_n_drop: must be <= every backtest.sweep_topk \[2, 3\]") as e:
        load_config(
            overrides=[
                "backtest.topk=2",
                "backtest.n_drop=1",
                "backtest.sweep_topk=[2, 3]",
                "backtest.sweep_n_drop=[1, 3]",
            ]
        )
    assert "[(2, 3)]" in str(e.value)
    config = load_config(overrides=["backtest.sweep_topk=[2, 3]", "backtest.sweep_n_drop=[1, 2]", "backtest.topk=3"])
    assert config.backtest.sweep_n_drop == (1, 2)


def test_micro_batch_above_batch_size_is_one_micro_batch_not_an_error():
    # the Time-LLM loop then runs each batch as one micro-batch (same gradient); tests rely on it
    config = load_config(overrides=["timellm.training={batch_size: 8}"])
    assert config.timellm.training.micro_batch > config.timellm.training.batch_size


# --- every default is valid ---


def _numeric_fields(model: type[BaseModel], prefix: str = ""):
    for name, info in model.model_fields.items():
        annotation, metadata, _ = constraints_of(info.annotation)
        metadata = list(info.metadata) + metadata
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _numeric_fields(annotation, f"{prefix}{name}.")
        elif get_origin(annotation) is tuple:
            for element in get_args(annotation):
                if element is not Ellipsis:
                    inner, innerconstraints_of, _ = constraints_of(element)
                    if inner in (int, float):
                        yield f"{prefix}{name}[]", innerconstraints_of
        elif annotation in (int, float):
            yield f"{prefix}{name}", metadata


def test_every_numeric_field_declares_its_range():
    fields = dict(_numeric_fields(PipelineConfig))
    assert len(fields) > 60
    assert not [name for name, metadata in fields.items() if not range_text(metadata)]


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_default_is_inside_its_range(profile):
    config = PipelineConfig(profile=profile)
    # pydantic does not validate defaults: validate every value of the dumped config again
    assert PipelineConfig.model_validate(config.model_dump()) == config


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_config_validates(path):
    config = load_config(path)
    assert PipelineConfig.model_validate(config.model_dump()) == config


def test_defaults_did_not_move():
    config = PipelineConfig()
    training = config.kronos.predictor.training
    assert (training.epochs, training.steps_per_epoch, training.batch_size, training.patience) == (3, 100, 32, 2)
    assert (config.backtest.topk, config.backtest.n_drop, config.backtest.hold_thresh) == (20, 2, 1)
    assert config.evaluation.bootstrap_reps == 1000 and config.seed == 42


# --- `--set key=value` takes the value as written ---


@pytest.mark.parametrize(
    ("item", "value"),
    [
        ("tracking.experiment=run #3", "run #3"),
        ("data.path=/tmp/a #b.csv", "/tmp/a #b.csv"),
        ("tracking.experiment=a#b", "a#b"),
        ("tracking.experiment='quoted #1'", "quoted #1"),
        ("tracking.experiment=*star", "*star"),
        ("tracking.experiment= spaced ", "spaced"),
        ("seed=7", 7),
        ("kronos.bf16=false", False),
        ("data.benchmark=null", None),
        ("data.benchmark=", None),
        ("backtest.open_cost=0.001", 0.001),
        ("kronos.predictor.training.lr=1e-4", 1e-4),
        ("evaluation.walk_forward.train_start=2018-01-01", dt.date(2018, 1, 1)),
        ("split.test=[2010-07-01, 2010-08-20]", [dt.date(2010, 7, 1), dt.date(2010, 8, 20)]),
        ("signals.sources=['a #1', b]", ["a #1", "b"]),
        ("lgbm.params={num_leaves: 8, verbosity: -1}", {"num_leaves": 8, "verbosity": -1}),
    ],
)
def test_override_values_are_taken_verbatim(item, value):
    *parents, leaf = item.partition("=")[0].split(".")
    node = parse_overrides([item])
    for part in parents:
        node = node[part]
    assert node[leaf] == value


def test_override_strings_with_hash_reach_the_config(tmp_path):
    config = load_config(overrides=["tracking.experiment=run #3", f"data.path={tmp_path} #b.csv", "data.source=csv"])
    assert config.tracking.experiment == "run #3"
    assert config.data.path == Path(f"{tmp_path} #b.csv")


@pytest.mark.parametrize("item", ["signals.sources=[kronos] #momentum", "split.lookback=[30] # note"])
def test_a_comment_after_a_list_is_not_dropped_silently(item):
    with pytest.raises(ConfigError, match="YAML would drop '#"):
        parse_overrides([item])


def test_a_comment_inside_a_list_says_to_quote():
    with pytest.raises(ConfigError, match="quote the item that holds it"):
        parse_overrides(["signals.sources=[kronos #x]"])


def test_impossible_dates_stay_config_errors():
    with pytest.raises(ConfigError, match="dates are YYYY-MM-DD"):
        parse_overrides(["split.test=[2010-13-01, 2010-08-20]"])
    with pytest.raises(ConfigError, match="dates are YYYY-MM-DD"):
        parse_overrides(["evaluation.walk_forward.train_start=2010-13-01"])


# --- topk against the universe (known only after ingest) ---


def test_check_topk_against_the_universe():
    backtest = BacktestConfig(topk=50, n_drop=5)
    with pytest.raises(ConfigError) as caught:
        check_topk(backtest, 30, "x")
    assert str(caught.value).startswith("backtest.topk 50 is larger than the 30 instruments of universe 'x': ")
    with pytest.raises(ConfigError, match=r"backtest.sweep_topk holds \[40, 50\], larger than the 30 instruments"):
        check_topk(BacktestConfig(topk=20), 30)
    check_topk(BacktestConfig(topk=5, sweep_topk=(5, 30)), 30)  # at most the universe: fine
