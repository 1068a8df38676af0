"""The comparison with its uncertainty: per strategy and engine, the point figures beside HAC
t-statistics, bootstrap intervals, a paired test against the best rule baseline and the Deflated
Sharpe Ratio of the vectorbt sweep; plus the spread across seeds and a per-fold, per-year breakdown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from evaluation.evaluate import ENGINES, Evaluation
from evaluation.metrics import TRADING_DAYS
from evaluation.statistics import (
    bootstrap_intervals,
    deflated_sharpe_ratio,
    hac_lags,
    hac_mean,
    paired_difference,
    signal_statistics,
    significant,
)

# Columns a quant reads first, in the console and comparison.md.
HEADLINE = (
    "strategy",
    "engine",
    "rank_ic",
    "rank_ic_t",
    "hit_rate",
    "ann_excess_return_with_cost",
    "ann_excess_low",
    "ann_excess_high",
    "information_ratio_with_cost",
    "ir_low",
    "ir_high",
    "rank_ic_vs_rule_t",
    "excess_vs_rule_t",
    "sweep_dsr",
    "significant",
)
SEED_FIGURES = ("rank_ic", "rank_ic_t", "ann_excess_return_with_cost", "information_ratio_with_cost")


@dataclass(frozen=True)
class Strategy:
    name: str  # e.g. kronos, "kronos [seed 7]", "kronos [ensemble]", momentum
    source: str
    seed: int | None  # None for rules and seed ensembles
    rule: bool


def excess_after_cost(evaluation: Evaluation, engine: str) -> pd.Series:
    daily = evaluation.daily[engine]
    return (daily["return"] - daily["cost"] - daily["bench"]).dropna()


def comparison_table(
    strategies: list[Strategy],
    evaluations: list[Evaluation],
    sweep_returns: dict[str, pd.DataFrame],
    horizon: int,
    reps: int,
    seed: int,
) -> pd.DataFrame:
    """One row per (strategy, engine): the engines' metrics with t-statistics, intervals and paired tests."""
    lags = hac_lags(horizon)
    rules = [(s, e) for s, e in zip(strategies, evaluations, strict=True) if s.rule]
    best_rule = max(rules, key=lambda pair: pair[1].rank_ic.mean(), default=None)
    rows = []
    for strategy, evaluation in zip(strategies, evaluations, strict=True):
        signal = signal_statistics(evaluation.ic, evaluation.rank_ic, horizon)
        for engine in ENGINES:
            row = {
                "strategy": strategy.name,
                "source": strategy.source,
                "seed": strategy.seed,
                "engine": engine,
                **evaluation.rows[engine],
                **signal,
            }
            row.update(bootstrap_intervals(excess_after_cost(evaluation, engine), seed, reps))
            row["rank_ic_vs_rule"] = row["rank_ic_vs_rule_t"] = row["excess_vs_rule"] = row["excess_vs_rule_t"] = np.nan
            if best_rule is not None and not strategy.rule:
                row["rank_ic_vs_rule"], row["rank_ic_vs_rule_t"] = paired_difference(
                    evaluation.rank_ic, best_rule[1].rank_ic, lags
                )
                difference, row["excess_vs_rule_t"] = paired_difference(
                    excess_after_cost(evaluation, engine), excess_after_cost(best_rule[1], engine), lags
                )
                row["excess_vs_rule"] = difference * TRADING_DAYS
            row["best_rule"] = best_rule[0].name if best_rule is not None else ""
            dsr = deflated_sharpe_ratio(sweep_returns[strategy.name]) if engine == "vectorbt" else {}
            row["sweep_best_sharpe"], row["sweep_dsr"] = dsr.get("best_sharpe", np.nan), dsr.get("dsr", np.nan)
            row["significant"] = significant(float(row["rank_ic_t"] or np.nan), float(row["ann_excess_low"] or np.nan))
            rows.append(row)
    return pd.DataFrame(rows)


def seed_spread(comparison: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count across seeds of the headline figures, per source and engine."""
    seeded = comparison[comparison["seed"].notna()]
    if seeded.empty:
        return pd.DataFrame(columns=["source", "engine", "seeds"])
    grouped = seeded.groupby(["source", "engine"])[list(SEED_FIGURES)]
    spread = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    return spread.assign(seeds=grouped.size()).reset_index()


def breakdown(
    strategies: list[Strategy],
    evaluations: list[Evaluation],
    fold_tests: list[tuple[pd.Timestamp, pd.Timestamp]],
    horizon: int,
) -> pd.DataFrame:
    """Rank IC (with its HAC t) and annualised excess return after cost per fold and per calendar year."""
    lags = hac_lags(horizon)
    periods = [(f"fold {index}", start, end) for index, (start, end) in enumerate(fold_tests)]
    first, last = fold_tests[0][0], fold_tests[-1][1]
    periods += [
        (str(year), max(first, pd.Timestamp(year, 1, 1)), min(last, pd.Timestamp(year, 12, 31)))
        for year in range(first.year, last.year + 1)
    ]
    rows = []
    for strategy, evaluation in zip(strategies, evaluations, strict=True):
        for engine in ENGINES:
            excess = excess_after_cost(evaluation, engine)
            for period, start, end in periods:
                rank_ic = evaluation.rank_ic[start:end]
                mean, t = hac_mean(rank_ic, lags)
                rows.append(
                    {
                        "strategy": strategy.name,
                        "engine": engine,
                        "period": period,
                        "start": start.date(),
                        "end": end.date(),
                        "days": len(excess[start:end]),
                        "rank_ic": mean,
                        "rank_ic_t": t,
                        "ann_excess_return_with_cost": float(excess[start:end].mean() * TRADING_DAYS),
                    }
                )
    return pd.DataFrame(rows)
