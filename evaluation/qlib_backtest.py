"""Qlib's TopkDropoutStrategy with the daily SimulatorExecutor.

Timing: Qlib's strategy trades on day t+1 using the score of day t (known at t's close), at
`deal_price` of day t+1. Qlib must already be initialised on the data folder (init_qlib).

Loading every instrument's quotes into Qlib's exchange and computing the benchmark take most of
a backtest (the order loop is cheap), so both are built once per process and period (`market`)
and shared by every strategy backtested there.
"""

from __future__ import annotations

import functools

import pandas as pd

from strategies.topk import TopkSettings


@functools.lru_cache(maxsize=4)
def market(start: pd.Timestamp, end: pd.Timestamp, settings: TopkSettings, benchmark: str | tuple[str, ...]):
    """Qlib's exchange over [start, end] and the benchmark's daily returns, as Qlib's backtest would
    build them for that period: the exchange holds only quotes and cost rules, which no backtest
    changes, so strategies can share it. A tuple benchmark is an equal-weight basket."""
    from qlib.backtest import get_exchange
    from qlib.utils.resam import get_higher_eq_freq_feature

    exchange = get_exchange(
        freq="day",
        start_time=start,
        end_time=end,
        limit_threshold=settings.limit_threshold,
        deal_price=settings.deal_price,
        open_cost=settings.costs.open_cost,
        close_cost=settings.costs.close_cost,
        min_cost=settings.costs.min_cost,
    )
    codes = list(benchmark) if isinstance(benchmark, tuple) else [benchmark]
    changes, _ = get_higher_eq_freq_feature(codes, ["$close/Ref($close,1)-1"], start, end, freq="day")
    if changes.empty:
        raise ValueError(f"the benchmark {benchmark} has no data between {start.date()} and {end.date()}")
    bench = changes.groupby(level="datetime", group_keys=False)[changes.columns[0]].mean().fillna(0)
    return exchange, bench


def qlib_topk_dropout(
    scores: pd.DataFrame, settings: TopkSettings, benchmark: str | list[str], end: pd.Timestamp
) -> pd.DataFrame:
    """scores: (datetime x instrument). Returns daily return, cost, bench, turnover from Qlib.

    `benchmark` is an index instrument or a list of instruments (equal-weight benchmark); Qlib
    fails with None. The run ends at `end`, which must be a calendar day (Qlib reads the next
    day from calendars/day_future.txt).
    """
    from qlib.backtest import backtest
    from qlib.contrib.strategy import TopkDropoutStrategy

    signal = scores.stack().rename("score").to_frame()
    signal.index.names = ["datetime", "instrument"]
    strategy = TopkDropoutStrategy(
        signal=signal, topk=settings.topk, n_drop=settings.n_drop, hold_thresh=settings.hold_thresh
    )
    executor = {
        "class": "SimulatorExecutor",
        "module_path": "qlib.backtest.executor",
        "kwargs": {"time_per_step": "day", "generate_portfolio_metrics": True, "verbose": False},
    }
    start = pd.Timestamp(scores.index[0])
    exchange, bench = market(
        start, pd.Timestamp(end), settings, benchmark if isinstance(benchmark, str) else tuple(benchmark)
    )
    portfolio, _ = backtest(
        start_time=start,
        end_time=end,
        strategy=strategy,
        executor=executor,
        benchmark=bench,
        account=settings.account,
        exchange_kwargs={"exchange": exchange},
    )
    report = portfolio["1day"][0]
    return report[["return", "cost", "bench", "turnover"]].astype(float)
