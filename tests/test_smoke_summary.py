"""Every default signal source through the whole pipeline, against a stored summary of its outputs.

The summary was written by the code before the stage-contract refactor; a restructuring that
changes what any stage computes changes these figures. Regenerate it only for an intended
change of results: UPDATE_SMOKE_SUMMARY=1 python -m pytest tests/test_smoke_summary.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.runner import run_pipeline
from tests.helpers import QUICK_KRONOS

pytest.importorskip("chronos", reason='chronos-forecasting is an optional extra: pip install -e ".[chronos]"')

SUMMARY = Path(__file__).parent / "data" / "smoke_summary.json"
SOURCES = [
    "kronos",
    "timellm",
    "timellm_no_llm",
    "timellm_llm_to_attn",
    "lgbm_alpha158",
    "chronos2",
    "chronos2_student",
    "momentum",
    "reversal",
]
COMPARED = ["ic", "rank_ic", "return_mae", "ann_excess_return", "ann_excess_return_with_cost", "turnover"]


def summarise(backtest_output: Path) -> dict:
    summary: dict = {"signals": {}, "comparison": {}}
    for source in SOURCES:
        table = pd.read_parquet(backtest_output / "signals" / f"{source}.parquet")
        summary["signals"][source] = {
            "rows": len(table),
            "days": int(table["datetime"].nunique()),
            "instruments": int(table["instrument"].nunique()),
            "mean_score": float(table["score"].mean()),
            "std_score": float(table["score"].std()),
        }
    comparison = pd.read_csv(backtest_output / "comparison.csv")
    for row in comparison.itertuples(index=False):
        summary["comparison"][f"{row.strategy}/{row.engine}"] = {
            column: float(getattr(row, column)) for column in COMPARED
        }
    return summary


@pytest.mark.slow
def test_every_default_source_matches_the_stored_summary(bars_csv, write_config, backbone_dirs, teacher_dir):
    overrides = QUICK_KRONOS + [
        "kronos.inference.sample_count=2",
        # The prompt wording, description and learning rate the summary was written with (the defaults changed since).
        f"timellm.model={{backbone: {backbone_dirs['gpt2']}, llm_layers: 2, patch_len: 4, stride: 2, "
        "d_model: 8, d_ff: 16, n_heads: 2, num_tokens: 32, prompt: upstream, "
        "description: 'Daily prices of large-cap stocks, one stock per series.'}",
        "timellm.training={epochs: 1, steps_per_epoch: 5, batch_size: 8, val_windows: 32, lr: 0.001}",
        "timellm.precision=fp32",
        f"chronos.teacher={teacher_dir}",
        "chronos.batch_size=16",
        "chronos.student={architecture: {num_layers: 1, d_model: 16, d_ff: 32, num_heads: 2}, "
        "steps: 10, batch_size: 8, train_windows: 64, val_windows: 16, eval_every: 5}",
        f"signals.sources=[{', '.join(SOURCES)}]",
        "backtest.topk=2",
        "backtest.n_drop=1",
        "backtest.sweep_topk=[2]",
        "backtest.sweep_n_drop=[1]",
        "backtest.sweep_cost=[1.0]",
        "lgbm.params={num_boost_round: 20, num_leaves: 8, num_threads: 1, verbosity: -1}",
    ]
    config = load_config(write_config(bars_csv, experiment="smoke-summary"), overrides)
    summary = summarise(run_pipeline(config, "backtest")[-1].output)
    if os.environ.get("UPDATE_SMOKE_SUMMARY"):
        SUMMARY.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    stored = json.loads(SUMMARY.read_text())
    assert summary.keys() == stored.keys()
    for part in ("signals", "comparison"):
        assert sorted(summary[part]) == sorted(stored[part])
        for name, figures in stored[part].items():
            for key, value in figures.items():
                # Counts exactly; floats to what another x86 CPU's kernels may change after a few training steps.
                assert summary[part][name][key] == pytest.approx(value, rel=1e-3, abs=1e-6, nan_ok=True), (
                    part,
                    name,
                    key,
                )
    assert not np.isnan(stored["comparison"]["kronos/qlib"]["rank_ic"])
