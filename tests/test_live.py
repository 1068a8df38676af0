"""From a backtest to tomorrow's orders: registered models, promotion, positions that repeat the
backtest's scores and orders, and the guards of the positions command."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from data_prep.errors import CheckpointError, ConfigError, DataError
from data_prep.sources import sample_bars_path
from evaluation.metrics import score_matrix
from pipeline import registry, tracking
from pipeline.config import LGBMConfig, load_config
from pipeline.graph import data_fingerprint
from pipeline.live import Positions, decision_day, positions, read_holdings
from pipeline.run import main
from pipeline.runner import run_pipeline
from strategies.topk import topk_dropout_day, topk_dropout_orders, topk_dropout_step
from tests.helpers import QUICK_KRONOS, TINY_PREDICTOR, TINY_TOKENIZER, csi300_data, csi300_slice

TOPK, N_DROP = 4, 1


@dataclass(frozen=True)
class Backtested:
    path: Path  # the config file
    overrides: list[str]
    root: Path
    backtest: Path  # the backtest's output folder
    backtest_run_id: str
    versions: dict[str, str]
    training_runs: dict[str, str]  # stage -> the run that produced it
    topk: int = TOPK
    n_drop: int = N_DROP

    def config(self, *more: str):
        return load_config(self.path, [*self.overrides, *more])

    def matrix(self, source: str) -> pd.DataFrame:
        """The backtest's (day x instrument) scores of `source`."""
        return score_matrix(pd.read_parquet(self.backtest / "signals" / f"{source}.parquet"))


def sample_subset(path: Path, symbols: int) -> Path:
    """The first `symbols` instruments of the embedded S&P 500 sample, as a CSV of its own."""
    bars = pd.read_csv(sample_bars_path())
    keep = sorted(bars["Symbol"].unique())[:symbols]
    bars[bars["Symbol"].isin(keep)].to_csv(path, index=False)
    return path


def sample_config(root: Path, sources: list[str], **sections) -> dict:
    """A backtest of `sources` on 16 instruments of the embedded sample, in `root`; `sections` add to it."""
    return {
        "cache_dir": str(root / "cache"),
        "data": {"source": "csv", "path": str(sample_subset(root / "bars.csv", 16)), "instruments": "sample16"},
        "split": {
            "lookback": 20,
            "horizon": 3,
            "train": ["2009-08-21", "2010-04-30"],
            "valid": ["2010-05-01", "2010-06-15"],
            "test": ["2010-06-16", "2010-08-20"],
        },
        "tracking": {"uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", "experiment": "live-tests"},
        "signals": {"sources": sources},
        "backtest": {
            "workers": 1,
            "topk": TOPK,
            "n_drop": N_DROP,
            "sweep_topk": [TOPK],
            "sweep_n_drop": [N_DROP],
            "sweep_cost": [1.0],
        },
        "evaluation": {"bootstrap_reps": 200},
        "live": {"output_dir": str(root / "live")},
        **sections,
    }


@pytest.fixture(scope="module")
def backtested(tmp_path_factory) -> Backtested:
    """A real backtest of Kronos and LightGBM/Alpha158 on 16 instruments of the embedded sample, registered."""
    root = tmp_path_factory.mktemp("live")
    kronos = {
        "tokenizer": {"architecture": TINY_TOKENIZER},
        "predictor": {"architecture": TINY_PREDICTOR},
        "inference": {"sample_count": 2},
    }
    lgbm = {
        "params": {
            "loss": "mse",
            "num_boost_round": 30,
            "early_stopping_rounds": 5,
            "num_leaves": 8,
            "min_data_in_leaf": 5,
            "num_threads": 2,
            "verbosity": -1,
        }
    }
    config = sample_config(root, ["kronos", "lgbm_alpha158"], kronos=kronos, lgbm=lgbm)
    return backtest_and_register(root, config, QUICK_KRONOS)


@pytest.fixture(scope="module")
def timellm_backtested(tmp_path_factory, backbone_dirs) -> Backtested:
    """The same for every Time-LLM variant, tiny, on a tiny BERT; the full model forecasts on its int8 copy, in
    two batches a day."""
    root = tmp_path_factory.mktemp("live-timellm")
    timellm = {
        "model": {
            "backbone": backbone_dirs["bert"],
            "llm_layers": 2,
            "patch_len": 4,
            "stride": 2,
            "d_model": 8,
            "d_ff": 16,
            "n_heads": 2,
            "num_tokens": 32,
        },
        "device": "cpu",  # int8 copies run on the CPU
        "precision": "fp32",
        "forecast_backbone": "int8",
        "batch_size": 8,
        "training": {"epochs": 1, "steps_per_epoch": 5, "batch_size": 8, "val_windows": 32},
    }
    config = sample_config(root, ["timellm", "timellm_no_llm", "timellm_llm_to_attn"], timellm=timellm)
    return backtest_and_register(root, config, [])


@pytest.fixture(scope="module")
def chronos_backtested(tmp_path_factory, teacher_dir) -> Backtested:
    """The same for a Chronos-2 student distilled from a tiny random teacher, with covariates."""
    root = tmp_path_factory.mktemp("live-chronos")
    chronos = {
        "teacher": str(teacher_dir),
        "covariates": True,
        "batch_size": 16,
        "student": {
            "architecture": {"num_layers": 1, "d_model": 16, "d_ff": 32, "num_heads": 2},
            "steps": 10,
            "batch_size": 8,
            "train_windows": 64,
            "val_windows": 16,
            "eval_every": 5,
        },
    }
    return backtest_and_register(root, sample_config(root, ["chronos2_student"], chronos=chronos), [])


# Learned source -> the fixture that backtests and registers it, the stage that trains it, its bundle's files.
LEARNED = {
    "kronos": ("backtested", "kronos_predictor", {"tokenizer", "predictor"}),
    "lgbm_alpha158": ("backtested", "lgbm_alpha158", {"booster.txt", "alpha158.json"}),
    "timellm": ("timellm_backtested", "timellm", {"model"}),
    "timellm_no_llm": ("timellm_backtested", "timellm", {"model"}),
    "timellm_llm_to_attn": ("timellm_backtested", "timellm", {"model"}),
    "chronos2_student": ("chronos_backtested", "chronos2_student", {"student"}),
}


def backtest_and_register(root: Path, config: dict, overrides: list[str]) -> Backtested:
    """Write `config` into `root`, run its backtest and register its learned sources."""
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path, overrides)
    outcomes = {outcome.stage: outcome for outcome in run_pipeline(loaded, "backtest")}
    backtest = outcomes["backtest"]
    versions = registry.register_backtest(loaded, backtest.produced_by)
    return Backtested(
        path,
        list(overrides),
        root,
        backtest.output,
        backtest.produced_by,
        versions,
        {stage: outcome.produced_by for stage, outcome in outcomes.items()},
        loaded.backtest.topk,
        loaded.backtest.n_drop,
    )


def error_line(capsys) -> str:
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    return line


# --- the registry ---


@pytest.mark.slow
@pytest.mark.parametrize("fixture", sorted({fixture for fixture, _, _ in LEARNED.values()}))
def test_a_backtest_registers_each_learned_source_once_linked_to_its_runs(fixture, request, tmp_path):
    backtested: Backtested = request.getfixturevalue(fixture)
    config = backtested.config()
    client = mlflow.MlflowClient(tracking.setup(config))  # models:/ URIs download from the current store
    assert set(backtested.versions) == {source for source, (where, _, _) in LEARNED.items() if where == fixture}
    comparison = pd.read_csv(backtested.backtest / "comparison.csv")
    for source in backtested.versions:
        _, trained_by, files = LEARNED[source]
        name = registry.registered_name(config, source)
        version = client.get_model_version(name, backtested.versions[source])
        assert version.run_id == backtested.training_runs[trained_by]
        tags = version.tags
        assert tags["backtest_run_id"] == backtested.backtest_run_id
        assert (tags["fold"], tags["seed"], tags["universe"]) == ("0", "42", "sample16")
        assert tags["data_digest"] == data_fingerprint(config)
        row = comparison[(comparison["source"] == source) & (comparison["engine"] == "qlib")].iloc[0]
        assert float(tags["qlib.rank_ic_t"]) == pytest.approx(row["rank_ic_t"], rel=1e-5)
        assert tags["significant"] == str(bool(row["significant"]))
        assert float(tags["rank_ic_p"]) == pytest.approx(registry.rank_ic_p(row["rank_ic_t"]), rel=1e-5)
        model = client.get_logged_model(registry.logged_model_id(version))
        assert model.source_run_id == backtested.training_runs[trained_by]
        linked = {metric.key: metric for metric in model.metrics or []}
        assert linked[f"{source}.qlib.rank_ic_t"].value == pytest.approx(row["rank_ic_t"])
        assert linked[f"{source}.qlib.rank_ic_t"].dataset_digest == data_fingerprint(config)[:32]
        folder, meta = registry.fetch_bundle(
            registry.ModelRef(f"models:/{name}/{version.version}", name, version.version),
            tmp_path / source,
            config.tracking.uri,
        )
        assert meta["data"]["universe"] == "sample16" and len(meta["data"]["instruments"]) == 16
        assert meta["runs"][trained_by] == backtested.training_runs[trained_by]
        assert files <= {path.name for path in folder.iterdir()}
    assert registry.register_backtest(config, backtested.backtest_run_id) == backtested.versions  # not twice


@pytest.mark.slow
def test_promotion_refuses_an_insignificant_backtest_unless_forced(backtested, capsys):
    config = backtested.config()
    client = mlflow.MlflowClient(config.tracking.uri)
    name = registry.registered_name(config, "lgbm_alpha158")
    version = client.get_model_version(name, backtested.versions["lgbm_alpha158"])
    if registry.CHAMPION in client.get_registered_model(name).aliases:  # promoted by a test that ran before
        client.delete_registered_model_alias(name, registry.CHAMPION)
    args = ["--config", str(backtested.path), "--set", *backtested.overrides, "--promote", "lgbm_alpha158"]
    significant = version.tags["significant"]
    try:  # both answers, whichever this tiny backtest gave
        client.set_model_version_tag(name, version.version, "significant", "False")
        assert main(args) == 2
        line = error_line(capsys)
        assert f"t-stat {float(version.tags['qlib.rank_ic_t']):.2f}" in line and backtested.backtest_run_id in line
        assert "pass --force" in line
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.get_model_version_by_alias(name, registry.CHAMPION)
        client.set_model_version_tag(name, version.version, "significant", "True")
        assert main(args) == 0 and "is now champion" in capsys.readouterr().out
        client.delete_registered_model_alias(name, registry.CHAMPION)
    finally:
        client.set_model_version_tag(name, version.version, "significant", significant)
    parent = client.get_run(backtested.backtest_run_id).data.tags["mlflow.parentRunId"]
    assert main([*args, "--run", parent, "--force"]) == 0  # the invocation's run stands for its backtest
    assert "is now champion" in capsys.readouterr().out
    assert client.get_model_version_by_alias(name, registry.CHAMPION).version == version.version
    assert main([*args, "--run", "0123456789abcdef", "--force"]) == 2
    assert "no such run" in error_line(capsys)


# --- positions ---


def backtest_holdings(matrix: pd.DataFrame, day: pd.Timestamp, topk: int, n_drop: int) -> list[str]:
    """The names the backtest held after the day before `day`, in holding order: its own rule, replayed."""
    held = np.empty(0, dtype=np.int64)
    for row in matrix.loc[: day - pd.Timedelta(days=1)].to_numpy(dtype=float):
        sell, buy = topk_dropout_step(row, held, topk, n_drop)
        held = np.concatenate([held[~np.isin(held, sell)], buy])
    return [matrix.columns[i] for i in held]


def positions_from_backtest_holdings(backtested: Backtested, source: str, day: pd.Timestamp, folder: Path, *settings):
    """`--stage positions` as of `day` from the holdings the backtest had after the day before."""
    held = backtest_holdings(backtested.matrix(source), day, backtested.topk, backtested.n_drop)
    assert len(held) == backtested.topk
    holdings = folder / "holdings.csv"
    pd.DataFrame({"instrument": held}).to_csv(holdings, index=False)
    return positions(backtested.config(*settings, f"live.as_of={day.date()}", f"live.holdings={holdings}"))


def assert_backtest_day(backtested: Backtested, source: str, day: Positions) -> None:
    """The positions' scores are the backtest's of that day, and its orders the ones its rule made there."""
    matrix, topk, n_drop = backtested.matrix(source), backtested.topk, backtested.n_drop
    expected = matrix.loc[day.day].dropna()
    assert expected.nunique() > 1  # the model tells the instruments apart: the comparison means something
    scores = day.scores.sort_index()
    assert list(scores.index) == list(expected.index)
    np.testing.assert_allclose(scores.to_numpy(), expected.to_numpy(), rtol=1e-9)
    orders = topk_dropout_orders(matrix.loc[: day.day], topk, n_drop).loc[day.day]
    by_action = day.orders.groupby("action")["instrument"].apply(set).to_dict()
    assert by_action.get("buy", set()) == set(orders.index[orders == 1 / topk])
    assert by_action.get("sell", set()) == set(orders.index[orders == 0])
    held = set(backtest_holdings(matrix, day.day, topk, n_drop))
    assert by_action.get("hold", set()) == held - by_action.get("sell", set())


def cache_entries(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.glob("*/*") if not path.name.startswith(".")}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["kronos", "lgbm_alpha158", "timellm", "timellm_llm_to_attn", "chronos2_student"])
def test_positions_repeat_the_backtests_scores_and_orders_without_training(source, request, tmp_path):
    backtested: Backtested = request.getfixturevalue(LEARNED[source][0])
    matrix = backtested.matrix(source)
    first, second = matrix.index[10], matrix.index[11]
    orders = topk_dropout_orders(matrix.loc[:second], TOPK, N_DROP)
    assert orders.loc[[first, second]].notna().any(axis=None)  # the backtest traded on those days
    before = cache_entries(backtested.root / "cache")
    settings = [f"live.model={source}", f"live.output_dir={tmp_path / 'out'}"]
    if source == "kronos":  # promoted here; lgbm_alpha158 by the promotion test, or here when run alone
        assert main(["--config", str(backtested.path), "--promote", source, "--force"]) == 0
    else:
        registry.promote(backtested.config(), source, force=True)

    day = positions_from_backtest_holdings(backtested, source, first, tmp_path, *settings)
    assert day.day == first and day.stages == ["ingest"]  # the model is read, never trained
    assert_backtest_day(backtested, source, day)
    written = pd.read_csv(day.path)
    assert day.path == tmp_path / "out" / "positions" / f"{first.date()}.csv"
    assert list(written.columns) == ["instrument", "score", "target_weight", "action"]
    pd.testing.assert_frame_equal(written, day.orders.reset_index(drop=True), check_dtype=False)

    # the next day starts from the positions just written, as the backtest started from its own holdings
    following = positions(backtested.config(*settings, f"live.as_of={second.date()}"))
    assert following.holdings_from == str(day.path)
    assert_backtest_day(backtested, source, following)

    again = positions_from_backtest_holdings(backtested, source, first, tmp_path, *settings)
    assert again.path == day.path and pd.read_csv(again.path).equals(written)  # a rerun replaces the day's file
    assert sorted(path.name for path in (tmp_path / "out" / "positions").iterdir()) == [
        f"{first.date()}.csv",
        f"{second.date()}.csv",
    ]
    assert cache_entries(backtested.root / "cache") == before  # no stage output was added: nothing trained
    run = mlflow.MlflowClient(backtested.config().tracking.uri).get_run(day.run_id)
    name = registry.registered_name(backtested.config(), source)
    assert (run.data.tags["model_name"], run.data.tags["model_version"]) == (name, backtested.versions[source])
    assert run.data.tags["decision_day"] == str(first.date())


@pytest.fixture(scope="module")
def csi300_backtested(tmp_path_factory) -> Backtested:
    """A real backtest of Kronos and LightGBM/Alpha158 on 20 CSI300 members of the shared A-share data, registered."""
    root = tmp_path_factory.mktemp("live-csi300")
    data = csi300_slice(root / "qlib", 20)
    config = {
        "cache_dir": str(root / "cache"),
        "data": csi300_data(data),
        "split": {
            "lookback": 30,
            "horizon": 5,
            "train": ["2020-01-01", "2020-12-31"],
            "valid": ["2021-01-01", "2021-03-31"],
            "test": ["2021-04-01", "2021-05-31"],
        },
        "tracking": {"uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", "experiment": "live-csi300"},
        "signals": {"sources": ["kronos", "lgbm_alpha158"]},
        "kronos": {"inference": {"sample_count": 2}},
        # Qlib's CSI300 settings regularise 20 names' trees away (one score for all): lighter penalties
        "lgbm": {"params": {**LGBMConfig().params, "lambda_l1": 1.0, "lambda_l2": 1.0, "min_data_in_leaf": 50}},
        "backtest": {
            "limit_threshold": 0.095,
            "min_cost": 5,
            "workers": 1,
            "topk": 5,
            "n_drop": 1,
            "sweep_topk": [5],
            "sweep_n_drop": [1],
            "sweep_cost": [1.0],
        },
        "evaluation": {"bootstrap_reps": 200},
        "live": {"output_dir": str(root / "live")},
    }
    return backtest_and_register(root, config, QUICK_KRONOS)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["kronos", "lgbm_alpha158"])
def test_positions_repeat_a_csi300_backtest(csi300_backtested, source, tmp_path):
    matrix = csi300_backtested.matrix(source)
    day = matrix.index[10]
    orders = topk_dropout_orders(matrix.loc[:day], csi300_backtested.topk, csi300_backtested.n_drop)
    assert orders.loc[day].notna().any()  # the backtest traded that day
    model = (
        f"models:/{registry.registered_name(csi300_backtested.config(), source)}/{csi300_backtested.versions[source]}"
    )
    settings = [f"live.model={model}", f"live.output_dir={tmp_path / 'out'}"]
    assert_backtest_day(
        csi300_backtested, source, positions_from_backtest_holdings(csi300_backtested, source, day, tmp_path, *settings)
    )


# --- the guards: one line, exit code 2 ---


@pytest.mark.slow
def test_positions_refuse_what_the_model_was_not_trained_on(backtested, tmp_path, capsys):
    registry.promote(backtested.config(), "kronos", force=True)
    command = ["--config", str(backtested.path), "--stage", "positions", "--set", *backtested.overrides]
    out = f"live.output_dir={tmp_path / 'out'}"

    assert main([*command, out]) == 2  # as_of latest: today, and the sample ends in 2010
    assert "2010-08-20" in (line := error_line(capsys)) and "trading days earlier" in line

    assert main([*command, out, "data.instruments=sp500"]) == 2
    assert "data.instruments 'sp500' (the model's: 'sample16')" in error_line(capsys)

    fields = ["data.fields=[open, high, low, close, volume]", "kronos.tokenizer.architecture.d_in=5"]
    assert main([*command, out, *fields]) == 2
    assert "data.fields" in error_line(capsys)

    wider = sample_subset(tmp_path / "wider.csv", 17)
    assert main([*command, out, f"data.path={wider}", "live.as_of=2010-07-15"]) == 2
    assert "1 new instrument(s)" in error_line(capsys)

    holdings = tmp_path / "holdings.csv"
    holdings.write_text("instrument,action\nA,hold\nNOPE,buy\nAA,sell\n")
    assert main([*command, out, f"live.holdings={holdings}", "live.as_of=2010-07-15"]) == 2
    assert f"{holdings} names 1 instrument(s)" in (line := error_line(capsys)) and "line 3: 'NOPE'" in line

    assert main([*command, out, "live.model=models:/live-tests.nope@champion"]) == 2
    line = error_line(capsys)
    assert "models:/live-tests.nope@champion" in line and "live-tests.kronos (versions [" in line

    # a decided day is a record: the same orders again are fine, other orders need --force
    day = [*command, out, "live.as_of=2010-07-15"]
    assert main(day) == 0 and main(day) == 0
    written = (tmp_path / "out" / "positions" / "2010-07-15.csv").read_text()
    holdings.write_text("instrument\nA\n")
    assert main([*day, f"live.holdings={holdings}"]) == 2
    assert "already holds other orders for that day" in error_line(capsys)
    assert (tmp_path / "out" / "positions" / "2010-07-15.csv").read_text() == written
    assert main([*day, f"live.holdings={holdings}", "--force"]) == 0
    assert (tmp_path / "out" / "positions" / "2010-07-15.csv").read_text() != written
    assert [path.name for path in (tmp_path / "out" / "positions").iterdir()] == ["2010-07-15.csv"]


@pytest.mark.slow
def test_positions_name_a_time_llm_backbone_that_changed_or_is_gone(timellm_backtested, tmp_path, capsys, caplog):
    config = timellm_backtested.config()
    model = f"models:/{registry.registered_name(config, 'timellm')}/{timellm_backtested.versions['timellm']}"
    client = mlflow.MlflowClient(tracking.setup(config))  # models:/ URIs download from the current store
    ref = registry.resolve(timellm_backtested.config(f"live.model={model}"), client)
    bundle, _ = registry.fetch_bundle(ref, tmp_path / "bundle", config.tracking.uri)
    saved = bundle / "model" / "config.json"
    trained = json.loads(saved.read_text())
    command = ["--config", str(timellm_backtested.path), "--stage", "positions", "--set", f"live.model={bundle}"]
    command += [f"live.output_dir={tmp_path / 'out'}", "live.as_of=2010-07-15"]

    moved = shutil.copytree(trained["backbone"], tmp_path / "backbone", copy_function=shutil.copy)  # new file times
    saved.write_text(json.dumps({**trained, "backbone": str(moved)}))
    assert main(command) == 0
    assert f"backbone {moved} is not the one" in caplog.text

    saved.write_text(json.dumps({**trained, "backbone": str(tmp_path / "gone")}))
    assert main(command) == 2
    assert f"cannot load its Time-LLM backbone '{tmp_path / 'gone'}'" in error_line(capsys)


def test_topk_dropout_day_is_the_backtests_rule_from_live_holdings():
    rng = np.random.default_rng(3)
    scores = pd.DataFrame(rng.integers(0, 4, (30, 12)).astype(float), columns=[f"S{i:02d}" for i in range(12)])
    scores = scores.mask(rng.random(scores.shape) < 0.2)  # ties, and held names without a score
    orders = topk_dropout_orders(scores, 3, 1)
    held: list[str] = []
    for day, row in scores.iterrows():
        kept, bought, sold = topk_dropout_day(row.dropna(), held, 3, 1)
        assert set(bought) == set(orders.columns[orders.loc[day] == 1 / 3])
        assert set(sold) == set(orders.columns[orders.loc[day] == 0])
        assert set(kept) == set(held) - set(sold)
        held = kept + bought


def test_decision_day_is_the_last_bar_and_refuses_stale_data():
    calendar = pd.bdate_range("2024-01-01", "2024-01-12")  # ends on a Friday
    friday = pd.Timestamp("2024-01-12")
    assert decision_day(calendar, "latest", dt.date(2024, 1, 14), 0) == friday  # the weekend is no trading day
    assert decision_day(calendar, "latest", dt.date(2024, 1, 15), 1) == friday  # e.g. a market holiday
    assert decision_day(calendar, dt.date(2024, 1, 6), dt.date(2030, 1, 1), 0) == pd.Timestamp("2024-01-05")
    with pytest.raises(DataError, match=r"is 2024-01-12, 2 trading days earlier \(live.max_staleness_days 1\)"):
        decision_day(calendar, "latest", dt.date(2024, 1, 16), 1)
    with pytest.raises(DataError, match="the data starts on 2024-01-01"):
        decision_day(calendar, dt.date(2023, 12, 29), dt.date(2024, 1, 2), 1)


def test_holdings_name_known_instruments_once(tmp_path):
    path = tmp_path / "positions.csv"
    path.write_text("instrument,score,target_weight,action\nB,0.1,,hold\nA,0.3,0.5,buy\nC,-0.2,0,sell\n")
    assert read_holdings(path, ["A", "B", "C"]) == ["B", "A"]  # the sold name is no longer held
    path.write_text("instrument\nA\nX\nB\nY\n")
    with pytest.raises(DataError, match=r"names 2 instrument\(s\) the data does not hold \(line 3: 'X', line 5: 'Y'\)"):
        read_holdings(path, ["A", "B"])
    path.write_text("instrument\nA\nA\n")
    with pytest.raises(DataError, match="line 3 names 'A' again"):
        read_holdings(path, ["A"])
    path.write_text("symbol\nA\n")
    with pytest.raises(DataError, match="no 'instrument' column"):
        read_holdings(path, ["A"])


def test_a_model_the_registry_cannot_resolve_is_named_with_what_exists(tmp_path):
    config = load_config(
        overrides=[f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.experiment=empty", "live.model=kronos"]
    )
    client = mlflow.MlflowClient(tracking.setup(config))
    with pytest.raises(ConfigError, match=r"cannot resolve models:/empty.kronos@champion .*--promote kronos.*empty"):
        registry.resolve(config, client)
    with pytest.raises(ConfigError, match="is not a folder"):
        registry.resolve(config.model_copy(update={"live": config.live.model_copy(update={"model": "x"})}), client)
    folder = tmp_path / "bundle"
    folder.mkdir()
    ref = registry.resolve(
        config.model_copy(update={"live": config.live.model_copy(update={"model": str(folder)})}), client
    )
    with pytest.raises(CheckpointError, match="source.json cannot be read"):
        registry.fetch_bundle(ref, tmp_path / "unused", config.tracking.uri or "")
