"""Walk-forward folds and seeds: leak-free folds, per-fold caching, one history per seed, figures with
their uncertainty."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from data_prep.errors import ConfigError
from data_prep.windows import Split
from pipeline.config import EvaluationConfig, WalkForwardConfig, load_config
from pipeline.runner import run_pipeline
from tests.helpers import QUICK_KRONOS, make_bars

# 160 business days from 2021-01-04 (to 2021-08-13): three folds testing a month each.
FOLDS = (
    "evaluation.folds=[{train: [2021-01-01, 2021-03-31], valid: [2021-04-01, 2021-04-30], "
    "test: [2021-05-01, 2021-05-31]}, "
    "{train: [2021-01-01, 2021-04-30], valid: [2021-05-01, 2021-05-31], test: [2021-06-01, 2021-06-30]}, "
    "{train: [2021-01-01, 2021-05-31], valid: [2021-06-01, 2021-06-30], test: [2021-07-01, 2021-07-31]}]"
)
QUICK_BACKTEST = [
    "backtest.topk=2",
    "backtest.n_drop=1",
    "backtest.sweep_topk=[2, 3]",
    "backtest.sweep_n_drop=[1]",
    "backtest.sweep_cost=[1.0]",
    "evaluation.bootstrap_reps=200",
]


@pytest.fixture
def long_bars_csv(tmp_path):
    path = tmp_path / "long_bars.csv"
    make_bars(n_symbols=6, n_days=160).to_csv(path, index=False)
    return path


def test_generated_folds_expand_or_roll_and_tile_the_test_years():
    expanding = WalkForwardConfig(
        train_start=dt.date(2018, 1, 1), first_test=dt.date(2020, 1, 1), folds=3, valid_months=6
    ).fold_dates()
    assert [fold.test for fold in expanding] == [(dt.date(y, 1, 1), dt.date(y, 12, 31)) for y in (2020, 2021, 2022)]
    assert all(
        fold.train[0] == dt.date(2018, 1, 1) and fold.valid[1] == fold.test[0] - dt.timedelta(days=1)
        for fold in expanding
    )
    rolling = WalkForwardConfig(
        window="rolling",
        train_start=dt.date(2018, 1, 1),
        first_test=dt.date(2020, 1, 1),
        folds=3,
        valid_months=6,
        train_months=12,
    ).fold_dates()
    assert [fold.train for fold in rolling][1:] == [
        (dt.date(2019, 7, 1), dt.date(2020, 6, 30)),
        (dt.date(2020, 7, 1), dt.date(2021, 6, 30)),
    ]
    with pytest.raises(ValueError, match="in time order without overlap"):
        EvaluationConfig(folds=[expanding[1], expanding[0]])


def test_no_fold_trains_on_data_on_or_after_its_test_start(long_bars_csv, write_config):
    config = load_config(write_config(long_bars_csv, experiment="leak"), [FOLDS])
    outcomes = run_pipeline(config, "split")
    splits = [Split.load(o.output) for o in outcomes if o.stage == "split"]
    assert len(splits) == 3
    for fold, split in zip(config.folds(), splits, strict=True):
        test_start = np.datetime64(fold.test[0])
        for segment in ("train", "valid"):
            windows = split.segment(segment)
            last_target_day = windows.dates(np.arange(len(windows)))[:, -1].max()  # targets included
            assert last_target_day < test_start, (fold, segment)


def test_a_fold_change_reruns_that_fold_only(long_bars_csv, write_config):
    path = write_config(long_bars_csv, experiment="fold-cache")
    first = run_pipeline(load_config(path, [FOLDS, *QUICK_KRONOS]), "kronos_tokenizer")
    assert [o.stage for o in first].count("kronos_tokenizer") == 3 and not any(o.reused for o in first[1:])
    changed = FOLDS.replace("test: [2021-07-01, 2021-07-31]", "test: [2021-07-01, 2021-07-30]")
    second = run_pipeline(load_config(path, [changed, *QUICK_KRONOS]), "kronos_tokenizer")
    ran = [(o.stage, o.output) for o in second if not o.reused]
    assert [stage for stage, _ in ran] == ["split", "kronos_tokenizer"]  # the third fold's split and tokenizer
    ingest, *splits, tokenizer_0, tokenizer_1, _ = first
    assert {o.output for o in second if o.reused} == {
        ingest.output,
        splits[0].output,
        splits[1].output,
        tokenizer_0.output,
        tokenizer_1.output,
    }


@pytest.mark.slow
def test_seeds_give_one_history_each_an_ensemble_and_their_spread(long_bars_csv, write_config):
    overrides = [
        FOLDS,
        *QUICK_KRONOS,
        *QUICK_BACKTEST,
        "kronos.inference.sample_count=2",
        "evaluation.seeds=[1, 2]",
        "signals.sources=[kronos, momentum, reversal]",
    ]
    config = load_config(write_config(long_bars_csv, experiment="seeds"), overrides)
    outcomes = run_pipeline(config, "backtest")
    stages = [o.stage for o in outcomes]
    assert stages.count("split") == 3 and stages.count("kronos_tokenizer") == 6 and stages.count("backtest") == 1
    backtest = outcomes[-1].output
    comparison = pd.read_csv(backtest / "comparison.csv")
    assert set(comparison["strategy"]) == {
        "kronos [seed 1]",
        "kronos [seed 2]",
        "kronos [ensemble]",
        "momentum",
        "reversal",
    }
    for column in (
        "rank_ic_t",
        "ic_t",
        "hit_rate",
        "ann_excess_low",
        "ann_excess_high",
        "ir_low",
        "ir_high",
        "rank_ic_vs_rule_t",
        "excess_vs_rule_t",
        "sweep_dsr",
        "significant",
    ):
        assert column in comparison, column
    kronos = comparison[comparison["strategy"] == "kronos [seed 1]"].iloc[0]
    assert kronos["ann_excess_low"] <= kronos["ann_excess_return_with_cost"] <= kronos["ann_excess_high"]
    assert np.isfinite(kronos["rank_ic_vs_rule_t"]) and kronos["best_rule"] in ("momentum", "reversal")
    assert comparison.loc[comparison["engine"] == "vectorbt", "sweep_dsr"].between(0, 1).all()
    signals = pd.read_parquet(backtest / "signals" / "kronos.parquet")
    test_days = pd.to_datetime(signals["datetime"].unique())
    assert test_days.min() >= pd.Timestamp("2021-05-01") and test_days.max() <= pd.Timestamp("2021-07-31")
    assert {day.month for day in test_days} == {5, 6, 7}  # one history across the three folds
    seeds = pd.read_csv(backtest / "seeds.csv")
    assert set(seeds["source"]) == {"kronos"} and (seeds["seeds"] == 2).all()
    assert seeds["rank_ic_mean"].iloc[0] == pytest.approx(
        comparison.loc[comparison["seed"].notna() & (comparison["engine"] == "qlib"), "rank_ic"].mean()
    )
    periods = pd.read_csv(backtest / "breakdown.csv")
    assert {"fold 0", "fold 1", "fold 2", "2021"} <= set(periods["period"])
    calibration = pd.read_csv(backtest / "probabilistic.csv")
    assert set(calibration["strategy"]) == {"kronos [seed 1]", "kronos [seed 2]", "kronos [ensemble]"}
    assert calibration[["coverage_80", "coverage_90", "baseline_coverage_80"]].stack().between(0, 1).all()
    assert (calibration["coverage_90"] >= calibration["coverage_80"]).all() and (
        calibration["forecasts_scored"] > 0
    ).all()
    assert {"rank_ic_by_period.png", "cumulative_excess_band.png"} <= {path.name for path in backtest.glob("*.png")}


def test_folds_and_the_split_cannot_be_mixed_up(long_bars_csv, write_config):
    with pytest.raises(ConfigError, match="set evaluation.walk_forward or evaluation.folds, not both"):
        load_config(
            write_config(long_bars_csv),
            [FOLDS, "evaluation.walk_forward={train_start: 2021-01-01, first_test: 2021-05-01}"],
        )
