"""From a backtest to tomorrow's orders: registered models, promotion, positions that repeat the
backtest's scores and orders, and the guards of the positions command."""

from __future__ import annotations

import datetime as dt
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
from pipeline.config import load_config
from pipeline.graph import data_fingerprint
from pipeline.live import decision_day, positions, read_holdings
from pipeline.run import main
from pipeline.runner import run_pipeline
from strategies.topk import topk_dropout_day, topk_dropout_orders, topk_dropout_step
from tests.helpers import QUICK_KRONOS, TINY_PREDICTOR, TINY_TOKENIZER

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

    def config(self, *more: str):
        return load_config(self.path, [*self.overrides, *more])


def sample_subset(path: Path, symbols: int) -> Path:
    """The first `symbols` instruments of the embedded S&P 500 sample, as a CSV of its own."""
    bars = pd.read_csv(sample_bars_path())
    keep = sorted(bars["Symbol"].unique())[:symbols]
    bars[bars["Symbol"].isin(keep)].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def backtested(tmp_path_factory) -> Backtested:
    """A real backtest of Kronos and LightGBM/Alpha158 on 16 instruments of the embedded sample, registered."""
    root = tmp_path_factory.mktemp("live")
    config = {
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
        "signals": {"sources": ["kronos", "lgbm_alpha158"]},
        "kronos": {
            "tokenizer": {"architecture": TINY_TOKENIZER},
            "predictor": {"architecture": TINY_PREDICTOR},
            "inference": {"sample_count": 2},
        },
        "lgbm": {
            "params": {
                "loss": "mse",
                "num_boost_round": 30,
                "early_stopping_rounds": 5,
                "num_leaves": 8,
                "min_data_in_leaf": 5,
                "num_threads": 2,
                "verbosity": -1,
            }
        },
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
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path, QUICK_KRONOS)
    outcomes = {outcome.stage: outcome for outcome in run_pipeline(loaded, "backtest")}
    backtest = outcomes["backtest"]
    versions = registry.register_backtest(loaded, backtest.produced_by)
    return Backtested(
        path,
        list(QUICK_KRONOS),
        root,
        backtest.output,
        backtest.produced_by,
        versions,
        {stage: outcome.produced_by for stage, outcome in outcomes.items()},
    )


def error_line(capsys) -> str:
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    return line


# --- the registry ---


@pytest.mark.slow
def test_a_backtest_registers_each_learned_source_once_linked_to_its_runs(backtested, tmp_path):
    config = backtested.config()
    client = mlflow.MlflowClient(config.tracking.uri)
    assert set(backtested.versions) == {"kronos", "lgbm_alpha158"}
    comparison = pd.read_csv(backtested.backtest / "comparison.csv")
    for source, trained_by in (("kronos", "kronos_predictor"), ("lgbm_alpha158", "lgbm_alpha158")):
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
        assert {"kronos": {"tokenizer", "predictor"}, "lgbm_alpha158": {"booster.txt", "alpha158.json"}}[source] <= {
            path.name for path in folder.iterdir()
        }
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
    if version.tags["significant"] == "True":
        assert main(args) == 0
    else:
        assert main(args) == 2
        line = error_line(capsys)
        assert f"t-stat {float(version.tags['qlib.rank_ic_t']):.2f}" in line and backtested.backtest_run_id in line
        assert "pass --force" in line
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.get_model_version_by_alias(name, registry.CHAMPION)
    parent = client.get_run(backtested.backtest_run_id).data.tags["mlflow.parentRunId"]
    assert main([*args, "--run", parent, "--force"]) == 0  # the invocation's run stands for its backtest
    assert "is now champion" in capsys.readouterr().out
    assert client.get_model_version_by_alias(name, registry.CHAMPION).version == version.version
    assert main([*args, "--run", "0123456789abcdef", "--force"]) == 2
    assert "no such run" in error_line(capsys)


# --- positions ---


def backtest_holdings(matrix: pd.DataFrame, day: pd.Timestamp) -> list[str]:
    """The names the backtest held after the day before `day`, in holding order: its own rule, replayed."""
    held = np.empty(0, dtype=np.int64)
    for row in matrix.loc[: day - pd.Timedelta(days=1)].to_numpy(dtype=float):
        sell, buy = topk_dropout_step(row, held, TOPK, N_DROP)
        held = np.concatenate([held[~np.isin(held, sell)], buy])
    return [matrix.columns[i] for i in held]


def cache_entries(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.glob("*/*") if not path.name.startswith(".")}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["kronos", "lgbm_alpha158"])
def test_positions_repeat_the_backtests_scores_and_orders_without_training(backtested, source, tmp_path):
    matrix = score_matrix(pd.read_parquet(backtested.backtest / "signals" / f"{source}.parquet"))
    first, second = matrix.index[10], matrix.index[11]
    orders = topk_dropout_orders(matrix.loc[:second], TOPK, N_DROP)
    assert orders.loc[[first, second]].notna().any(axis=None)  # the backtest traded on those days
    holdings = tmp_path / "holdings.csv"
    assert len(backtest_holdings(matrix, first)) == TOPK
    pd.DataFrame({"instrument": backtest_holdings(matrix, first)}).to_csv(holdings, index=False)
    before = cache_entries(backtested.root / "cache")
    settings = [f"live.model={source}", f"live.output_dir={tmp_path / 'out'}"]
    if source == "kronos":  # promoted here; lgbm_alpha158 by the promotion test, or here when run alone
        assert main(["--config", str(backtested.path), "--promote", source, "--force"]) == 0
    else:
        registry.promote(backtested.config(), source, force=True)

    day = positions(backtested.config(*settings, f"live.as_of={first.date()}", f"live.holdings={holdings}"))
    assert day.day == first and day.stages == ["ingest"]  # the model is read, never trained
    expected = matrix.loc[first].dropna()
    np.testing.assert_allclose(day.scores.sort_index().to_numpy(), expected.to_numpy(), rtol=1e-9)
    assert list(day.scores.sort_index().index) == list(expected.index)
    by_action = day.orders.groupby("action")["instrument"].apply(set).to_dict()
    assert by_action.get("buy", set()) == set(orders.columns[orders.loc[first] == 1 / TOPK])
    assert by_action.get("sell", set()) == set(orders.columns[orders.loc[first] == 0])
    assert by_action.get("hold", set()) == set(backtest_holdings(matrix, first)) - by_action.get("sell", set())
    written = pd.read_csv(day.path)
    assert day.path == tmp_path / "out" / "positions" / f"{first.date()}.csv"
    assert list(written.columns) == ["instrument", "score", "target_weight", "action"]
    pd.testing.assert_frame_equal(written, day.orders.reset_index(drop=True), check_dtype=False)

    # the next day starts from the positions just written, as the backtest started from its own holdings
    following = positions(backtested.config(*settings, f"live.as_of={second.date()}"))
    assert following.holdings_from == str(day.path)
    assert set(following.orders.loc[following.orders["action"] == "buy", "instrument"]) == set(
        orders.columns[orders.loc[second] == 1 / TOPK]
    )
    assert set(following.orders.loc[following.orders["action"] == "sell", "instrument"]) == set(
        orders.columns[orders.loc[second] == 0]
    )

    again = positions(backtested.config(*settings, f"live.as_of={first.date()}", f"live.holdings={holdings}"))
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
