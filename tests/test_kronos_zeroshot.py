"""Kronos as its authors evaluate it: the published checkpoints untrained (`kronos_zeroshot`), and
upstream's last/mean/max/min signals from the same sampled paths."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from data_prep.errors import ConfigError
from models.interface import Forecast
from models.kronos.scores import upstream_score
from pipeline import graph
from pipeline.config import load_config
from pipeline.contract import InstanceOutputs, StageInputs
from pipeline.runner import run_pipeline
from strategies.signal_table import read_signal_table
from tests.helpers import TINY_PREDICTOR, TINY_TOKENIZER


def test_upstream_scores_are_the_mean_paths_last_mean_max_and_min_minus_the_last_close():
    # two series, two paths each, horizon 3: the mean paths are [11, 13, 12] and [9, 8, 10]
    paths = np.array([[[10.0, 12.0, 12.0], [12.0, 14.0, 12.0]], [[9.0, 8.0, 11.0], [9.0, 8.0, 9.0]]])
    forecast = Forecast.from_paths(np.arange(2), np.array(["A", "B"]), paths, np.array([10.0, 10.0]))
    expected = {"last": [2.0, 0.0], "mean": [2.0, -1.0], "max": [3.0, 0.0], "min": [1.0, -2.0]}
    for score, values in expected.items():
        upstream = upstream_score(forecast, score)
        np.testing.assert_allclose(upstream.score, values)
        assert upstream.score_std is None and not upstream.has_quantiles


def test_a_score_source_needs_its_score(bars_csv, write_config):
    path = write_config(bars_csv)
    with pytest.raises(ConfigError, match=r"lists \['kronos:mean'\] but kronos.inference.scores"):
        load_config(path, ["signals.sources=[kronos, kronos:mean]"])
    with pytest.raises(ConfigError, match="must start with expected_return"):
        load_config(path, ["kronos.inference.scores=[mean]"])
    load_config(path, ["signals.sources=[kronos, kronos:mean]", "kronos.inference.scores=[expected_return, mean]"])


@pytest.mark.slow
def test_zeroshot_equals_the_signals_stage_fed_the_same_weights_and_joins_the_backtest(
    bars_csv, write_config, tmp_path
):
    from models.kronos import Kronos, KronosTokenizer

    published = tmp_path / "published"
    KronosTokenizer(**TINY_TOKENIZER).save_pretrained(published / "tokenizer")
    Kronos(**TINY_PREDICTOR).save_pretrained(published / "predictor")
    overrides = [
        "seed=0",  # the zero-shot stage reads no seed: its paths are seeded as a run with seed 0
        f"kronos.zeroshot.tokenizer={published / 'tokenizer'}",
        f"kronos.zeroshot.predictor={published / 'predictor'}",
        "kronos.inference.sample_count=2",
        "kronos.inference.scores=[expected_return, mean, last]",
        "signals.sources=[kronos_zeroshot, 'kronos_zeroshot:mean', momentum]",
        "backtest.topk=2",
        "backtest.n_drop=1",
        "backtest.sweep_topk=[2]",
        "backtest.sweep_n_drop=[1]",
        "backtest.sweep_cost=[1.0]",
        "evaluation.bootstrap_reps=100",
    ]
    config = load_config(write_config(bars_csv, experiment="zeroshot"), overrides)
    outcomes = {outcome.stage: outcome for outcome in run_pipeline(config, "backtest")}
    assert "kronos_predictor" not in outcomes and not outcomes["kronos_zeroshot"].reused  # nothing trained
    comparison = pd.read_csv(outcomes["backtest"].output / "comparison.csv")
    assert {"kronos_zeroshot", "kronos_zeroshot:mean", "momentum"} <= set(comparison["strategy"])

    # kronos_signals fed the same untrained weights as the outputs of its training stages
    upstream = {"split": outcomes["split"].output}
    for stage, part in (("kronos_tokenizer", "tokenizer"), ("kronos_predictor", "predictor")):
        upstream[stage] = tmp_path / stage
        shutil.copytree(published / part, upstream[stage] / "best")
    (instance,) = graph.instances(config)
    inputs = StageInputs(
        "kronos_signals",
        [InstanceOutputs(0, 0, instance.dates, upstream)],
        graph.SIGNAL_PRODUCERS,
        config.tracking.uri or "",
    )
    signals_out = tmp_path / "kronos_signals"
    signals_out.mkdir()
    stage = graph.STAGES["kronos_signals"]
    stage.run(stage.view(instance.config), inputs, signals_out)
    zeroshot_out = outcomes["kronos_zeroshot"].output
    for ours, theirs in (("kronos", "kronos_zeroshot"), ("kronos.mean", "kronos_zeroshot.mean")):
        fine_tuned_path = read_signal_table(signals_out / "signals" / f"{ours}.parquet")
        zero_shot = read_signal_table(zeroshot_out / "signals" / f"{theirs}.parquet")
        pd.testing.assert_frame_equal(fine_tuned_path.drop(columns="model"), zero_shot.drop(columns="model"))
    assert (zeroshot_out / "signals" / "kronos_zeroshot.last.parquet").is_file()
