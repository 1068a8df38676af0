"""The backtest stage: every enabled signal source through IC analysis, Qlib and vectorbt, with
the uncertainty of every figure.

The out-of-sample signals of all walk-forward folds form one test history per source and seed
(plus a seed ensemble); rules are computed over the same test segments. Writes comparison.csv /
comparison.md (one row per strategy and engine, with HAC t-statistics, bootstrap intervals,
paired tests against the best rule and the sweep's Deflated Sharpe Ratio), seeds.csv (spread
across seeds), breakdown.csv (per fold and year), plots, quintile returns, IC decay and the
vectorbt sweep; each (strategy, engine) becomes a nested MLflow run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from data_prep.errors import DataError
from data_prep.qlib_format import init_qlib
from data_prep.windows import Split
from evaluation.evaluate import Evaluation, evaluate
from evaluation.vbt_backtest import unmodelled as vbt_unmodelled
from evaluation.vbt_backtest import vbt_sweep
from pipeline.config import check_topk
from pipeline.contract import ChildRun, ConfigView, StageInputs, StageResult, StageSpec, signal_path
from strategies.rules import RULE_BASELINES, rule_baseline
from strategies.signal_table import make_signal_table

if TYPE_CHECKING:
    from evaluation.comparison import Strategy

log = logging.getLogger(__name__)

# Files of the backtest output; the first three go to the invocation's run, the rest to the stage's.
BACKTEST_FILES = (
    "comparison.csv",
    "comparison.md",
    "report.html",
    "quintile_returns.csv",
    "ic_decay.csv",
    "quintile_turnover.csv",
    "portfolio_stats.csv",
    "monthly_returns.csv",
    "vbt_sweep.csv",
    "daily_returns.csv",
    "daily_ic.csv",
    "close.parquet",
    "seeds.csv",
    "breakdown.csv",
    "probabilistic.csv",
)


def strategy_tables(
    config: ConfigView, inputs: StageInputs, split: Split, fold_tests
) -> list[tuple[Strategy, pd.DataFrame]]:
    """Every strategy to backtest: each source per seed (one history over all folds), the seed
    ensemble where asked, and the rules over the same test segments."""
    from evaluation.comparison import Strategy

    strategies = []
    for source in config.signals.sources:
        if source in RULE_BASELINES:
            table = pd.concat(
                [rule_baseline(source, split.panel, start.date(), end.date()) for start, end in fold_tests],
                ignore_index=True,
            )
            strategies.append((Strategy(source, source, None, rule=True), table))
            continue
        for name, (seed, table) in per_strategy(
            source, inputs.signal_history(source), config.evaluation.seed_ensemble
        ).items():
            if seed is None:  # the ensemble: the mean score across seeds, no spread
                table = make_signal_table(table["datetime"], table["instrument"], table["score"], None, name)
            strategies.append((Strategy(name, source, seed, rule=False), table))
    return strategies


def per_strategy(
    source: str, history: dict[int, pd.DataFrame], ensemble: bool
) -> dict[str, tuple[int | None, pd.DataFrame]]:
    """Strategy name -> (seed, table): one per seed (the source's own name with a single seed), and
    with several seeds and `ensemble` the mean of every numeric column across seeds (seed None)."""
    named: dict[str, tuple[int | None, pd.DataFrame]] = {
        source if len(history) == 1 else f"{source} [seed {seed}]": (seed, table) for seed, table in history.items()
    }
    if len(history) > 1 and ensemble:
        mean = pd.concat(history.values()).groupby(["datetime", "instrument"], as_index=False).mean(numeric_only=True)
        named[f"{source} [ensemble]"] = (None, mean)
    return named


def probabilistic_scores(
    config: ConfigView, inputs: StageInputs, close: pd.DataFrame, horizon: int, fold_tests
) -> pd.DataFrame:
    """Interval coverage and pinball loss of every source with quantiles (per seed and for the ensemble),
    beside the trailing-volatility baseline."""
    from evaluation.probabilistic import interval_scores

    rows = []
    start, end = fold_tests[0][0], fold_tests[-1][1]
    for source in config.signals.sources:
        if not inputs.has_quantiles(source):
            continue
        for name, (_, table) in per_strategy(
            source, inputs.quantile_history(source), config.evaluation.seed_ensemble
        ).items():
            table = table[(table["datetime"] >= start) & (table["datetime"] <= end)]
            rows.append({"strategy": name, "source": source, **interval_scores(table, close, horizon)})
    return pd.DataFrame(rows)


def evaluate_strategy(
    table: pd.DataFrame,
    name: str,
    close: pd.DataFrame,
    horizon: int,
    settings,
    benchmark,
    last_day: pd.Timestamp,
    grid: tuple,
) -> tuple[Evaluation, pd.DataFrame, pd.DataFrame]:
    """One strategy through IC analysis, both engines and the vectorbt sweep (in a worker process of
    the stage's fan-out)."""
    evaluation = evaluate(table, name, close, horizon, settings, benchmark, last_day)
    summary, returns = vbt_sweep(evaluation.scores, close, settings, *grid)
    return evaluation, summary, returns


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def backtest(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    from evaluation.comparison import HEADLINE, breakdown, comparison_table, seed_spread
    from evaluation.plots import comparison_plots, uncertainty_plots
    from evaluation.portfolio_report import portfolio_statistics
    from evaluation.report import write_report

    split = inputs.split()
    calendar = split.panel.calendar
    folds = {instance.fold: instance.dates.test for instance in inputs.instances}
    fold_tests = [(pd.Timestamp(start), pd.Timestamp(end)) for start, end in folds.values()]
    start, end = fold_tests[0][0], fold_tests[-1][1]
    last_day = calendar[calendar <= end][-1]
    close = split.panel.field_frame("close")
    # No index in the data: benchmark against the equal-weight universe (Qlib fails on None).
    benchmark = config.data.benchmark or list(split.panel.instruments)
    if config.data.benchmark and not (inputs.qlib_dir / "features" / config.data.benchmark.lower()).is_dir():
        raise DataError(
            f"data.benchmark {config.data.benchmark!r} has no data in the Qlib folder: name an index instrument "
            "of the folder, or set it to null to benchmark against the equal-weight universe"
        )
    check_topk(config.backtest, len(split.panel.instruments))  # the engines disagree on a portfolio they cannot fill
    settings = config.backtest.topk_settings()
    unmodelled = vbt_unmodelled(settings)
    if unmodelled:
        log.warning("the vectorbt engine does not model %s: its rows differ from Qlib's by design", unmodelled)

    strategies, jobs = [], []
    grid = (config.backtest.sweep_topk, config.backtest.sweep_n_drop, config.backtest.sweep_cost)
    (out / "signals").mkdir()
    for strategy, table in strategy_tables(config, inputs, split, fold_tests):
        table = table[(table["datetime"] >= start) & (table["datetime"] <= end)]
        if not (out / signal_path(strategy.source)).exists():  # a seeded source: its first seed's table
            table.to_parquet(out / signal_path(strategy.source), index=False)
        log.info("backtesting %s: %d scores over %d days", strategy.name, len(table), table["datetime"].nunique())
        strategies.append(strategy)
        jobs.append((table, strategy.name, close, split.horizon, settings, benchmark, last_day, grid))
    # One Qlib process inside each worker: the workers already share out the CPUs.
    results = inputs.fan_out(
        jobs,
        evaluate_strategy,
        init_qlib,
        (inputs.qlib_dir, config.data.region, inputs.tracking_uri, 1),
        config.backtest.workers,
    )
    evaluations = [evaluation for evaluation, _, _ in results]
    sweeps = [summary.assign(strategy=evaluation.name).reset_index() for evaluation, summary, _ in results]
    sweep_returns = {evaluation.name: returns for evaluation, _, returns in results}
    comparison = comparison_table(
        strategies, evaluations, sweep_returns, split.horizon, config.evaluation.bootstrap_reps, config.seed
    )
    probabilistic = probabilistic_scores(config, inputs, close, split.horizon, fold_tests)
    probabilistic.to_csv(out / "probabilistic.csv", index=False)
    if not probabilistic.empty:
        comparison = comparison.merge(probabilistic.drop(columns="source"), on="strategy", how="left")
    comparison.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(markdown_table(comparison[list(HEADLINE)]) + "\n")
    seed_spread(comparison).to_csv(out / "seeds.csv", index=False)
    by_period = breakdown(strategies, evaluations, fold_tests, split.horizon)
    by_period.to_csv(out / "breakdown.csv", index=False)
    pd.DataFrame({e.name: e.factor.quantile_returns for e in evaluations}).to_csv(out / "quintile_returns.csv")
    pd.DataFrame({e.name: e.factor.ic_by_period for e in evaluations}).rename_axis("period").to_csv(
        out / "ic_decay.csv"
    )
    pd.DataFrame({e.name: e.factor.turnover for e in evaluations}).to_csv(out / "quintile_turnover.csv")
    portfolio, monthly, rolling_sharpe = portfolio_statistics(evaluations)
    portfolio.to_csv(out / "portfolio_stats.csv", index=False)
    monthly.to_csv(out / "monthly_returns.csv", index=False)
    pd.concat(sweeps).to_csv(out / "vbt_sweep.csv", index=False)
    daily = pd.concat(
        [frame.assign(strategy=e.name, engine=engine) for e in evaluations for engine, frame in e.daily.items()]
    ).rename_axis("datetime")
    daily.to_csv(out / "daily_returns.csv")
    daily_ic = pd.concat(
        {
            "ic": pd.DataFrame({e.name: e.ic for e in evaluations}),
            "rank_ic": pd.DataFrame({e.name: e.rank_ic for e in evaluations}),
        },
        names=["measure", "datetime"],
    )
    daily_ic.to_csv(out / "daily_ic.csv")
    # closes from the test start to `horizon` days past it: what the forecasts are judged against
    close.loc[start:].iloc[: len(close.loc[start:end]) + split.horizon].to_parquet(out / "close.parquet")
    plots = comparison_plots(evaluations, out) + uncertainty_plots(comparison, by_period, evaluations, out)

    children = [
        ChildRun(
            name=f"{row.strategy} [{row.engine}, top {settings.topk}, drop {settings.n_drop}]",
            params={"strategy": row.strategy, "engine": row.engine, **config.backtest.model_dump(mode="json")},
            metrics={
                key: float(value)
                for key, value in row._asdict().items()
                if isinstance(value, (int, float, np.number)) and key != "seed"
            },
            tags={"strategy": row.strategy, "model": row.source, "engine": row.engine, "seed": str(row.seed)},
        )
        for row in comparison.itertuples(index=False)
    ]
    test_days = int(sum(((calendar >= a) & (calendar <= b)).sum() for a, b in fold_tests))
    segments = ", ".join(f"{a.date()}..{b.date()}" for a, b in fold_tests)
    headline = comparison[list(HEADLINE)]
    calibration = [
        f"{row.strategy}: 80%/90% intervals cover {row.coverage_80:.1%}/{row.coverage_90:.1%} of outcomes, pinball "
        f"{row.pinball:.5f} (trailing-volatility baseline "
        f"{row.baseline_coverage_80:.1%}/{row.baseline_coverage_90:.1%}, "
        f"{row.baseline_pinball:.5f})"
        for row in probabilistic.itertuples(index=False)
    ]
    summary = [
        f"comparison over {len(fold_tests)} test segment(s) ({segments}, {test_days} days); t: Newey-West, "
        "low/high: 95% block-bootstrap interval, "
        f"vs_rule: paired against {comparison['best_rule'].iloc[0] or 'no rule'}:",
        *markdown_table(headline).splitlines(),
        *calibration,
    ]
    write_report(
        out / "report.html",
        f"Backtest of {', '.join(config.signals.sources)} ({len(fold_tests)} fold(s), {segments})",
        comparison,
        evaluations,
        pd.concat(sweeps),
        probabilistic,
        portfolio,
        rolling_sharpe,
        [summary[0], *calibration],
    )
    return StageResult(
        metrics={
            "strategies": len(evaluations),
            "test_days": test_days,
            "folds": len(fold_tests),
            "significant": int(comparison["significant"].sum()),
        },
        summary=summary,
        artifacts=[*(out / name for name in BACKTEST_FILES[3:]), out / "signals"],
        children=children,
        parent_artifacts=[*(out / name for name in BACKTEST_FILES[:3]), *plots],
    )


def backtest_outputs(config: ConfigView) -> tuple[str, ...]:
    return (*BACKTEST_FILES, *(signal_path(name) for name in config.signals.sources))


STAGES = (
    StageSpec(
        "backtest",
        backtest,
        needs=("ingest", "split"),
        reads=("signals", "backtest", "evaluation", "data.benchmark", "data.region", "seed"),
        outputs=backtest_outputs,
        consumes_signals=True,
        # 2: daily returns, IC, closes, signals kept; 3: runs named with settings; 4: daily Rank IC;
        # 5: forecast errors of the horizon return (return_mse, return_mae); 6: folds, seeds, t-statistics, intervals;
        # 7: report.html, alphalens factor analysis
        version=7,
        description="every signal source through IC analysis, Qlib's TopkDropout backtest and vectorbt",
    ),
)
