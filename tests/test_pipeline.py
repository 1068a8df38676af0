"""Stage graph: reuse of unchanged stages, atomic outputs, MLflow parent and nested runs."""

import dataclasses
import signal

import mlflow
import pandas as pd
import pytest

from data_prep.errors import Interrupted
from pipeline import graph
from pipeline.config import load_config
from pipeline.run import main
from pipeline.runner import run_pipeline
from tests.helpers import QUICK_KRONOS


def runs_of(config, parent_id):
    client = mlflow.MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.data.tags["stage"]: run for run in children}


def parent_id_of(outcomes, config):
    client = mlflow.MlflowClient(config.tracking.uri)
    return client.get_run(outcomes[-1].run_id).data.tags["mlflow.parentRunId"]


def test_second_run_reuses_every_stage_and_logs_it(bars_csv, write_config):
    config = load_config(write_config(bars_csv, experiment="reuse"))
    first = run_pipeline(config, "split")
    second = run_pipeline(config, "split")
    assert [o.reused for o in first] == [False, False]
    assert [o.reused for o in second] == [True, True]
    assert [o.produced_by for o in second] == [o.run_id for o in first]

    client = mlflow.MlflowClient(config.tracking.uri)
    produced = runs_of(config, parent_id_of(first, config))
    assert set(produced) == {"ingest", "split"}
    assert produced["split"].data.metrics["windows_train"] > 0
    assert produced["split"].data.params["split.lookback"] == "10"
    assert produced["ingest"].data.metrics["instruments"] == 6
    assert produced["split"].data.tags["config_hash"] == config.config_hash()
    assert produced["split"].data.tags["git_commit"]
    artifacts = {a.path for a in client.list_artifacts(produced["split"].info.run_id)}
    assert {"split.json", "windows_per_day.png"} <= artifacts

    reused = runs_of(config, parent_id_of(second, config))
    assert reused["split"].data.tags["reused"] == "true"
    assert reused["split"].data.tags["produced_by_run_id"] == first[1].run_id
    assert reused["split"].data.metrics["windows_train"] == produced["split"].data.metrics["windows_train"]
    parent = client.get_run(parent_id_of(second, config))
    assert parent.data.tags["config_hash"] == config.config_hash()
    assert parent.data.tags["git_commit"]


def test_changed_split_setting_reruns_split_only(bars_csv, write_config):
    path = write_config(bars_csv, experiment="partial")
    first = run_pipeline(load_config(path), "split")
    second = run_pipeline(load_config(path, ["split.horizon=2"]), "split")
    assert second[0].reused and not second[1].reused
    assert second[1].key != first[1].key


def test_changed_input_file_reruns_everything(bars_csv, write_config):
    config = load_config(write_config(bars_csv, experiment="input-change"))
    run_pipeline(config, "split")
    with open(bars_csv, "a") as handle:
        handle.write("2021-05-03,S000,20,21,19,20.5,1000\n")
    again = run_pipeline(config, "split")
    assert not again[0].reused and not again[1].reused


def test_interrupted_stage_leaves_nothing_a_rerun_would_reuse(bars_csv, write_config, monkeypatch):
    config = load_config(write_config(bars_csv, experiment="interrupt"))

    def interrupted(config, inputs, out):
        (out / "panel").mkdir()
        (out / "panel" / "values.npy").write_bytes(b"half")
        raise KeyboardInterrupt

    real = graph.STAGES["split"]
    monkeypatch.setitem(graph.STAGES, "split", dataclasses.replace(real, run=interrupted))
    with pytest.raises(Interrupted) as interrupted_run:
        run_pipeline(config, "split")
    assert interrupted_run.value.stage == "split" and interrupted_run.value.signum == signal.SIGINT
    split_dir = config.cache_dir / "split"
    assert not any(split_dir.iterdir())  # no final folder, no temporary left behind

    monkeypatch.setitem(graph.STAGES, "split", real)
    outcomes = run_pipeline(config, "split")
    assert outcomes[0].reused and not outcomes[1].reused
    assert (outcomes[1].output / "panel" / "values.npy").stat().st_size > 100


def test_force_reruns_the_requested_stage(bars_csv, write_config):
    config = load_config(write_config(bars_csv, experiment="force"))
    first = run_pipeline(config, "split")
    forced = run_pipeline(config, "split", force=True)
    assert forced[0].reused and not forced[1].reused
    assert forced[1].output == first[1].output and (forced[1].output / "split.json").is_file()


def test_cli_runs_and_lists(bars_csv, write_config, capsys):
    path = write_config(bars_csv, experiment="cli")
    assert main(["--stage", "split", "--config", str(path)]) == 0
    assert "windows" in capsys.readouterr().out
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    for name in ("ingest", "split", "kronos_tokenizer", "kronos_predictor", "timellm", "kronos_signals", "backtest"):
        assert name in listing


def test_same_config_gives_identical_outputs(bars_csv, write_config, tmp_path):
    """Every file the split and the Kronos stages write (panel, windows, checkpoints, signals, paths),
    byte for byte, when each stage is forced to run again."""
    import hashlib
    import json

    from pipeline.cache import MANIFEST

    def digests(folder):
        files = {}
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name == MANIFEST:  # the manifest records when and by which run
                continue
            if path.name == "report.json":  # its figures, less the clock's (seconds, windows per second)
                report = json.loads(path.read_text())
                files["report.json"] = {key: value for key, value in report.items() if "second" not in key}
            else:
                files[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        return files

    config = load_config(write_config(bars_csv, experiment="repro"), QUICK_KRONOS)
    stages = ("split", "kronos_tokenizer", "kronos_predictor", "kronos_signals")
    first = {o.stage: digests(o.output) for o in run_pipeline(config, "kronos_signals") if o.stage in stages}
    for stage in stages:
        again = run_pipeline(config, stage, force=True)[-1]
        assert not again.reused and digests(again.output) == first[stage], stage
    assert {"panel/values.npy", "windows_test.npy"} <= set(first["split"])
    assert {"best/model.safetensors", "signals/kronos.parquet", "forecasts.npz"} <= set(
        first["kronos_predictor"]
    ) | set(first["kronos_signals"])


@pytest.mark.slow
def test_predictor_stage_trains_and_logs_its_history(bars_csv, write_config):
    config = load_config(write_config(bars_csv, experiment="kronos"), QUICK_KRONOS)
    outcomes = run_pipeline(config, "kronos_predictor")
    assert [o.stage for o in outcomes] == ["ingest", "split", "kronos_tokenizer", "kronos_predictor"]
    client = mlflow.MlflowClient(config.tracking.uri)
    predictor_run = client.get_run(outcomes[-1].run_id)
    assert predictor_run.data.metrics["best_val_ce_s1"] < predictor_run.data.metrics["uniform_ce_s1"]
    losses = client.get_metric_history(outcomes[-1].run_id, "train_loss")
    assert [m.step for m in losses] == [9, 19]  # 20 steps, the loss read every log_every = 10 steps
    assert (outcomes[-1].output / "best" / "model.safetensors").is_file()
    assert all(o.reused for o in run_pipeline(config, "predictor"))  # the old name still works


def test_signals_stage_scores_every_test_day_and_instrument(bars_csv, write_config):
    import numpy as np

    from strategies.signal_table import SIGNAL_COLUMNS, read_signal_table

    config = load_config(
        write_config(bars_csv, experiment="signals"), QUICK_KRONOS + ["kronos.inference.sample_count=3"]
    )
    outcome = run_pipeline(config, "kronos_signals")[-1]
    table = read_signal_table(outcome.output / "signals" / "kronos.parquet")
    assert list(table.columns) == list(SIGNAL_COLUMNS)
    assert set(table["model"]) == {"kronos"}
    test_days = table["datetime"].unique()
    assert test_days.min() >= np.datetime64("2021-04-01") and len(table) == 6 * len(test_days)
    assert np.isfinite(table["score"]).all() and (table["score_std"] > 0).all()
    forecasts = np.load(outcome.output / "forecasts.npz")
    assert forecasts["close_paths"].shape == (len(table), 3, 3)


def test_a_kronos_score_equals_the_predictor_run_by_hand_on_the_raw_bars(bars_csv, write_config):
    """One (day, instrument) score, recomputed without the pipeline's data path: the window cut from
    the CSV itself, the checkpoints loaded through the upstream-style API, greedy decoding."""
    import numpy as np
    import pandas as pd

    from models.kronos import Kronos, KronosPredictor, KronosTokenizer
    from models.kronos.batches import time_features
    from models.kronos.generation import Sampling
    from strategies.signal_table import read_signal_table

    greedy = QUICK_KRONOS + ["kronos.inference.sample_count=1", "kronos.inference.top_k=1"]
    config = load_config(write_config(bars_csv, experiment="greedy"), greedy)
    outcomes = {outcome.stage: outcome.output for outcome in run_pipeline(config, "kronos_signals")}
    table = read_signal_table(outcomes["kronos_signals"] / "signals" / "kronos.parquet")
    predictor = KronosPredictor(
        Kronos.from_pretrained(outcomes["kronos_predictor"] / "best"),
        KronosTokenizer.from_pretrained(outcomes["kronos_tokenizer"] / "best"),
        device="cpu",
        clip=config.split.clip,
    )
    bars = pd.read_csv(bars_csv, parse_dates=["date"])
    calendar = pd.DatetimeIndex(sorted(bars["date"].unique()))
    for day, instrument in [(pd.Timestamp("2021-04-01"), "S002"), (pd.Timestamp("2021-04-15"), "S005")]:
        window = bars[(bars["symbol"] == instrument) & (bars["date"] <= day)].tail(config.split.lookback)
        window = window.assign(amount=window["volume"] * window[["open", "high", "low", "close"]].mean(axis=1))
        values = window[["open", "high", "low", "close", "volume", "amount"]].to_numpy(np.float32)  # Qlib's storage
        future = calendar[calendar > day][: config.split.horizon]
        paths = predictor.forecast(
            [values.astype(np.float64)],
            [time_features(window["date"].to_numpy())],
            [time_features(future.to_numpy())],
            config.split.horizon,
            Sampling(top_k=1),
        ).paths  # (1, 1, horizon, fields)
        expected = paths[0, 0, :, 3].mean() / values[-1, 3] - 1
        row = table[(table["datetime"] == day) & (table["instrument"] == instrument)]
        assert len(row) == 1 and row["score"].iloc[0] == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_signals_sharded_over_two_processes_match_one(bars_csv, write_config):
    from strategies.signal_table import read_signal_table

    base = QUICK_KRONOS + ["kronos.inference.sample_count=2", "kronos.inference.top_k=1"]
    config = load_config(write_config(bars_csv, experiment="shards"), base)
    single = read_signal_table(run_pipeline(config, "kronos_signals")[-1].output / "signals" / "kronos.parquet")
    sharded_config = load_config(write_config(bars_csv, experiment="shards"), base + ["kronos.inference.nproc=2"])
    outcomes = run_pipeline(sharded_config, "kronos_signals")
    assert outcomes[-2].reused and not outcomes[-1].reused  # same predictor, new signals
    sharded = read_signal_table(outcomes[-1].output / "signals" / "kronos.parquet")
    pd.testing.assert_frame_equal(single, sharded, rtol=1e-5)


def test_status_reports_cached_stages_with_their_runs(bars_csv, write_config, capsys):
    from pipeline.runner import stage_status

    path = write_config(bars_csv, experiment="status")
    config = load_config(path)
    outcomes = run_pipeline(config, "split")
    rows = {row["stage"]: row for row in stage_status(config)}
    assert rows["split"]["state"] == "cached" and rows["split"]["run"] == outcomes[1].run_id
    assert rows["split"]["output"] == str(outcomes[1].output)
    assert rows["split"]["artifacts"].startswith("file:")
    assert rows["kronos_tokenizer"]["state"] == "not cached: will run"
    changed = {row["stage"]: row for row in stage_status(load_config(path, ["split.horizon=2"]))}
    assert changed["ingest"]["state"] == "cached" and changed["split"]["state"] == "not cached: will run"
    assert main(["--status", "--config", str(path)]) == 0
    assert "cached" in capsys.readouterr().out


def test_backtest_stage_compares_every_source_on_both_engines(bars_csv, write_config):
    config = load_config(
        write_config(bars_csv, experiment="backtest"),
        QUICK_KRONOS
        + [
            "kronos.inference.sample_count=2",
            "backtest.topk=2",
            "backtest.n_drop=1",
            "signals.sources=[kronos, momentum, reversal]",
            "backtest.sweep_topk=[2, 3]",
            "backtest.sweep_n_drop=[1]",
            "backtest.sweep_cost=[1.0]",
        ],
    )
    outcomes = run_pipeline(config, "backtest")
    assert [o.stage for o in outcomes] == [
        "ingest",
        "split",
        "kronos_tokenizer",
        "kronos_predictor",
        "kronos_signals",
        "backtest",
    ]
    comparison = pd.read_csv(outcomes[-1].output / "comparison.csv")
    assert set(zip(comparison["strategy"], comparison["engine"], strict=True)) == {
        (s, e) for s in ("kronos", "momentum", "reversal") for e in ("qlib", "vectorbt")
    }
    for column in (
        "ic",
        "icir",
        "rank_ic",
        "rank_icir",
        "ann_return",
        "ann_excess_return",
        "information_ratio",
        "max_drawdown",
        "turnover",
        "ann_return_with_cost",
        "max_drawdown_with_cost",
        "turnover_with_cost",
    ):
        assert column in comparison
    client = mlflow.MlflowClient(config.tracking.uri)
    stage_run = outcomes[-1].run_id
    experiment = client.get_experiment_by_name("backtest").experiment_id
    strategies = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{stage_run}'")
    assert len(strategies) == 6
    assert all({"ic", "rank_ic", "ann_return", "turnover_with_cost"} <= set(run.data.metrics) for run in strategies)
    assert {run.data.tags["engine"] for run in strategies} == {"qlib", "vectorbt"}
    assert {run.info.run_name for run in strategies} >= {
        "kronos [qlib, top 2, drop 1]",
        "reversal [vectorbt, top 2, drop 1]",
    }
    assert all(
        run.data.tags["config_hash"] == config.config_hash() and "test 2021-04-01..2021-04-30" in run.data.tags["split"]
        for run in strategies
    )
    parent = client.get_run(stage_run).data.tags["mlflow.parentRunId"]
    names = {artifact.path for artifact in client.list_artifacts(parent)}
    assert {
        "comparison.csv",
        "comparison.md",
        "cumulative_excess_return.png",
        "drawdown.png",
        "ic_over_time.png",
        "quintile_returns.png",
    } <= names

    again = run_pipeline(config, "backtest")
    assert all(o.reused for o in again)
    assert len(client.search_runs([experiment], f"tags.mlflow.parentRunId = '{again[-1].run_id}'")) == 6


def test_unknown_signal_source_is_named(bars_csv, write_config, capsys):
    assert (
        main(
            ["--stage", "backtest", "--config", str(write_config(bars_csv)), "--set", "signals.sources=[kronos, lgbm]"]
        )
        == 2
    )
    assert "unknown signal source(s) ['lgbm']" in capsys.readouterr().out


def test_missing_benchmark_is_named(bars_csv, write_config, capsys):
    overrides = ["signals.sources=[momentum]", "data.benchmark=SPX"]
    assert main(["--stage", "backtest", "--config", str(write_config(bars_csv)), "--set", *overrides]) == 2
    assert "data.benchmark 'SPX' has no data in the Qlib folder" in " ".join(capsys.readouterr().out.split())
