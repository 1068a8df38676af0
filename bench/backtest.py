"""Backtest timings on CSI300 for one year (2022): one Qlib TopkDropout run, one 50-setting
vectorbt sweep (topk 10..50 x n_drop 1..5 x two cost levels), on the momentum signal.

    python bench/backtest.py [--qlib-folder ../shared/data/cn_csi300_2018_2022]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

from data_prep.ingest import link_qlib_folder
from data_prep.panel import load_panel
from data_prep.qlib_format import init_qlib
from evaluation.metrics import score_matrix
from evaluation.qlib_backtest import qlib_topk_dropout
from evaluation.vbt_backtest import vbt_sweep, vbt_topk_dropout
from pipeline.config import BacktestConfig
from strategies.rules import rule_baseline

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "cn_csi300_2018_2022"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qlib-folder", type=Path, default=DEFAULT_FOLDER)
    args = parser.parse_args()
    settings = BacktestConfig(topk=50, n_drop=5, limit_threshold=0.095).topk_settings()
    with tempfile.TemporaryDirectory() as scratch:
        view = Path(scratch) / "view"
        link_qlib_folder(args.qlib_folder, view, "csi300", None)
        init_qlib(view, "cn", f"sqlite:///{Path(scratch) / 'mlflow.db'}")
        panel = load_panel(view, "csi300", ("open", "high", "low", "close", "volume", "amount"))
        scores = score_matrix(rule_baseline("momentum", panel, dt.date(2022, 1, 1), dt.date(2022, 12, 30)))
        close = panel.field_frame("close").astype(float)
        print(f"CSI300 2022: {len(scores)} days x {scores.notna().sum(axis=1).mean():.0f} scored instruments a day")

        started = time.perf_counter()
        qlib_topk_dropout(scores, settings, "SH000300", scores.index[-1])
        print(f"Qlib TopkDropout backtest (topk 50, n_drop 5):        {time.perf_counter() - started:6.1f} s")

        vbt_topk_dropout(scores.iloc[:5], close, settings)  # numba compiles once; not part of the timing
        started = time.perf_counter()
        vbt_topk_dropout(scores, close, settings)
        print(f"vectorbt, the same rule:                              {time.perf_counter() - started:6.1f} s")
        started = time.perf_counter()
        sweep, _ = vbt_sweep(scores, close, settings, (10, 20, 30, 40, 50), (1, 2, 3, 4, 5), (0.5, 1.0))
        print(f"vectorbt sweep of {len(sweep)} settings in one run:            {time.perf_counter() - started:6.1f} s")


if __name__ == "__main__":
    main()
