"""Evaluate one signal table: IC analysis plus the Qlib and vectorbt backtests, as metric rows.

Signals are checked against the data first: rows on days outside the backtest calendar, for
instruments the data does not know, or with NaN scores are dropped with a logged count; a table
left empty is an error. `run_in_processes` evaluates several tables in parallel processes, since
Qlib's backtest and the order loops are single-threaded Python.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd

from data_prep.errors import DataError
from evaluation.factor_analysis import FactorAnalysis, analyse
from evaluation.metrics import daily_ic, forward_returns, portfolio_metrics, score_matrix, signal_metrics
from evaluation.qlib_backtest import qlib_topk_dropout
from evaluation.vbt_backtest import vbt_topk_dropout
from strategies.topk import TopkSettings

log = logging.getLogger(__name__)

ENGINES = ("qlib", "vectorbt")


@dataclass
class Evaluation:
    name: str
    scores: pd.DataFrame  # (datetime x instrument), after cleaning
    rows: dict[str, dict[str, float]]  # engine -> metrics
    daily: dict[str, pd.DataFrame]  # engine -> return, cost, bench, turnover
    ic: pd.Series  # daily IC
    rank_ic: pd.Series  # daily Rank IC
    factor: FactorAnalysis  # alphalens: IC by holding period, quintile returns, quintile turnover


def clean_signals(table: pd.DataFrame, name: str, calendar: pd.DatetimeIndex, instruments: list[str]) -> pd.DataFrame:
    checks = {
        "NaN score": table["score"].isna(),
        "day outside the backtest calendar": ~table["datetime"].isin(calendar),
        "instrument unknown to the data": ~table["instrument"].isin(instruments),
    }
    keep = pd.Series(True, index=table.index)
    for problem, bad in checks.items():
        if bad.any():
            log.warning("signal %s: dropping %d rows with %s", name, int(bad.sum()), problem)
        keep &= ~bad
    if not keep.any():
        raise DataError(
            f"signal {name}: no usable rows in the backtest period {calendar[0].date()} .. {calendar[-1].date()}"
        )
    return table[keep]


def evaluate(
    table: pd.DataFrame,
    name: str,
    close: pd.DataFrame,
    horizon: int,
    settings: TopkSettings,
    benchmark,
    end: pd.Timestamp,
) -> Evaluation:
    """close: (datetime x instrument) over the data calendar; the table's days define the period."""
    table = clean_signals(table, name, close.loc[:end].index, list(close.columns))
    scores = score_matrix(table)
    signal = signal_metrics(scores, close, horizon)
    qlib_daily = qlib_topk_dropout(scores, settings, benchmark, end)
    vbt_daily = vbt_topk_dropout(scores, close, settings).reindex(qlib_daily.index).fillna(0.0)
    vbt_daily["bench"] = qlib_daily["bench"]  # one benchmark series for both engines
    rows = {}
    for engine, daily in (("qlib", qlib_daily), ("vectorbt", vbt_daily)):
        rows[engine] = {
            **signal,
            **portfolio_metrics(daily["return"], daily["bench"], daily["turnover"]),
            **portfolio_metrics(
                daily["return"] - daily["cost"], daily["bench"], daily["turnover"], suffix="_with_cost"
            ),
        }
    return Evaluation(
        name=name,
        scores=scores,
        rows=rows,
        daily={"qlib": qlib_daily, "vectorbt": vbt_daily},
        ic=daily_ic(scores, forward_returns(close, horizon)),
        rank_ic=daily_ic(scores, forward_returns(close, horizon), rank=True),
        factor=analyse(scores, close, horizon),
    )


# A spawned process pays for imports, Qlib and the market's quotes before its first backtest, which
# costs several strategies' worth of time: a new process pays off only for about this many.
STRATEGIES_PER_PROCESS = 8


def default_workers(jobs: int) -> int:
    """One process per STRATEGIES_PER_PROCESS jobs, at least one, at most one per CPU."""
    return max(1, min(os.cpu_count() or 1, jobs // STRATEGIES_PER_PROCESS))


def run_in_processes(
    jobs: list[tuple[Any, ...]],
    evaluate_one: Callable[..., Any],
    initializer: Callable[..., None],
    initargs: tuple,
    workers: int | None = None,
) -> list[Any]:
    """`evaluate_one(*job)` for every job, in job order, over `workers` processes (default:
    default_workers); each process runs `initializer(*initargs)` once (e.g. qlib.init).

    With one worker everything runs here, after `initializer`. Processes are spawned, not forked:
    the pipeline's process holds torch's and MLflow's threads, which a fork does not carry safely.
    """
    workers = min(workers or default_workers(len(jobs)), len(jobs))
    if workers <= 1:
        initializer(*initargs)
        return [evaluate_one(*job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=initializer, initargs=initargs) as pool:
        futures = [pool.submit(evaluate_one, *job) for job in jobs]
        return [future.result() for future in futures]
