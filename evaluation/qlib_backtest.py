"""Qlib's TopkDropoutStrategy with the daily SimulatorExecutor.

Timing: Qlib's strategy trades on day t+1 using the score of day t (known at t's close), at
`deal_price` of day t+1. Qlib must already be initialised on the data folder (init_qlib).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class TopkSettings:
    """TopkDropout settings of both engines; the values come from pipeline.config (BacktestConfig), where the defaults live."""

    topk: int
    n_drop: int
    hold_thresh: int
    deal_price: str
    open_cost: float
    close_cost: float
    min_cost: float
    limit_threshold: float | None  # e.g. 0.095 for A-shares; None: no price limits
    account: float


def qlib_topk_dropout(scores: pd.DataFrame, settings: TopkSettings, benchmark: str | list[str], end: pd.Timestamp) -> pd.DataFrame:
    """scores: (datetime x instrument). Returns daily return, cost, bench, turnover from Qlib.

    `benchmark` is an index instrument or a list of instruments (equal-weight benchmark); Qlib
    fails with None. The run ends at `end`, which must be a calendar day (Qlib reads the next
    day from calendars/day_future.txt).
    """
    from qlib.backtest import backtest
    from qlib.contrib.strategy import TopkDropoutStrategy

    signal = scores.stack().rename("score").to_frame()
    signal.index.names = ["datetime", "instrument"]
    strategy = TopkDropoutStrategy(signal=signal, topk=settings.topk, n_drop=settings.n_drop, hold_thresh=settings.hold_thresh)
    executor = {
        "class": "SimulatorExecutor",
        "module_path": "qlib.backtest.executor",
        "kwargs": {"time_per_step": "day", "generate_portfolio_metrics": True, "verbose": False},
    }
    exchange = {
        "freq": "day",
        "limit_threshold": settings.limit_threshold,
        "deal_price": settings.deal_price,
        "open_cost": settings.open_cost,
        "close_cost": settings.close_cost,
        "min_cost": settings.min_cost,
    }
    portfolio, _ = backtest(
        start_time=scores.index[0], end_time=end, strategy=strategy, executor=executor,
        benchmark=benchmark, account=settings.account, exchange_kwargs=exchange,
    )
    report = portfolio["1day"][0]
    return report[["return", "cost", "bench", "turnover"]].astype(float)
