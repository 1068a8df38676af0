"""Every default signal source through the whole pipeline, against a stored summary of its outputs.

A restructuring that changes what any stage computes changes these figures. Regenerate the
summary only for an intended change of results:
UPDATE_SMOKE_SUMMARY=1 python -m pytest tests/test_smoke_summary.py
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.runner import run_pipeline
from tests.helpers import QUICK_KRONOS, make_bars

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
def test_every_default_source_matches_the_stored_summary(tmp_path, write_config, backbone_dirs, teacher_dir):
    # 30 instruments over 54 test days, top 5: enough that no two sources pick the same names every day
    bars_csv = tmp_path / "bars.csv"
    make_bars(n_symbols=30, n_days=160, seed=3).to_csv(bars_csv, index=False)
    test_segment = {"test": ["2021-06-01", "2021-08-31"]}
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
        "backtest.topk=5",
        "backtest.n_drop=2",
        "backtest.sweep_topk=[5]",
        "backtest.sweep_n_drop=[2]",
        "backtest.sweep_cost=[1.0]",
        "lgbm.params={num_boost_round: 20, num_leaves: 8, num_threads: 1, verbosity: -1}",
    ]
    config = load_config(write_config(bars_csv, experiment="smoke-summary", split=test_segment), overrides)
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
    # a source's figures are its own: no two sources share their Rank IC to within the tolerance above
    rank_ics = sorted(figures["rank_ic"] for name, figures in stored["comparison"].items() if name.endswith("/qlib"))
    assert all(b - a > 1e-3 * abs(b) + 1e-6 for a, b in itertools.pairwise(rank_ics))
