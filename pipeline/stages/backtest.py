"""The backtest stage: every enabled signal source through IC analysis, Qlib and vectorbt.

Writes comparison.csv / comparison.md (one row per strategy and engine), plots, quintile
returns, IC decay and a vectorbt sweep per strategy; each (strategy, engine) becomes a nested
MLflow run with the fixed metric names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from data_prep.errors import DataError
from data_prep.qlib_format import init_qlib
from data_prep.windows import Split
from evaluation.evaluate import ENGINES, evaluate
from evaluation.plots import comparison_plots
from evaluation.rules import RULE_BASELINES, rule_baseline
from evaluation.vbt_backtest import vbt_sweep
from pipeline.contract import ChildRun, ConfigView, StageInputs, StageResult, StageSpec, signal_path

log = logging.getLogger(__name__)

SIGNAL_COLUMNS = ("return_mse", "return_mae", "ic", "icir", "rank_ic", "rank_icir")
PORTFOLIO_COLUMNS = ("ann_return", "ann_excess_return", "information_ratio", "max_drawdown", "turnover")
COLUMNS = SIGNAL_COLUMNS + PORTFOLIO_COLUMNS + tuple(f"{name}_with_cost" for name in PORTFOLIO_COLUMNS)


def load_signals(name: str, config: ConfigView, inputs: StageInputs, split: Split) -> pd.DataFrame:
    if name in RULE_BASELINES:
        return rule_baseline(name, split.panel, *config.split.test)
    return inputs.signals(name)


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def backtest(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    split = inputs.split()
    calendar = split.panel.calendar
    start, end = (pd.Timestamp(day) for day in config.split.test)
    last_day = calendar[calendar <= end][-1]
    close = split.panel.field_frame("close")
    init_qlib(inputs.qlib_dir, config.data.region, inputs.tracking_uri)
    # No index in the data: benchmark against the equal-weight universe (Qlib fails on None).
    benchmark = config.data.benchmark or list(split.panel.instruments)
    if config.data.benchmark and not (inputs.qlib_dir / "features" / config.data.benchmark.lower()).is_dir():
        raise DataError(
            f"data.benchmark {config.data.benchmark!r} has no data in the Qlib folder: name an index instrument "
            "of the folder, or set it to null to benchmark against the equal-weight universe"
        )
    settings = config.backtest.topk_settings()

    evaluations, sweeps = [], []
    (out / "signals").mkdir()
    for name in config.signals.sources:
        table = load_signals(name, config, inputs, split)
        table = table[(table["datetime"] >= start) & (table["datetime"] <= end)]
        table.to_parquet(out / signal_path(name), index=False)
        log.info("backtesting %s: %d scores over %d days", name, len(table), table["datetime"].nunique())
        evaluation = evaluate(table, name, close, split.horizon, settings, benchmark, last_day)
        evaluations.append(evaluation)
        sweep = vbt_sweep(evaluation.scores, close, settings, config.backtest.sweep_topk, config.backtest.sweep_n_drop, config.backtest.sweep_cost)
        sweeps.append(sweep.assign(strategy=name).reset_index())

    rows = [{"strategy": e.name, "engine": engine, **{k: e.rows[engine][k] for k in COLUMNS}} for e in evaluations for engine in ENGINES]
    comparison = pd.DataFrame(rows)
    comparison.to_csv(out / "comparison.csv", index=False)
    table_text = markdown_table(comparison[["strategy", "engine", *COLUMNS]])
    (out / "comparison.md").write_text(table_text + "\n")
    pd.DataFrame({e.name: e.quantiles for e in evaluations}).to_csv(out / "quintile_returns.csv")
    pd.DataFrame({e.name: e.decay for e in evaluations}).rename_axis("lag").to_csv(out / "ic_decay.csv")
    pd.concat(sweeps).to_csv(out / "vbt_sweep.csv", index=False)
    daily = pd.concat(
        [frame.assign(strategy=e.name, engine=engine) for e in evaluations for engine, frame in e.daily.items()]
    ).rename_axis("datetime")
    daily.to_csv(out / "daily_returns.csv")
    daily_ic = pd.concat({"ic": pd.DataFrame({e.name: e.ic for e in evaluations}),
                          "rank_ic": pd.DataFrame({e.name: e.rank_ic for e in evaluations})}, names=["measure", "datetime"])
    daily_ic.to_csv(out / "daily_ic.csv")
    # closes from the test start to `horizon` days past it: what the forecasts are judged against
    close.loc[start:].iloc[: len(close.loc[start:end]) + split.horizon].to_parquet(out / "close.parquet")
    plots = comparison_plots(evaluations, out)

    children = [
        ChildRun(name=f"{e.name} [{engine}, top {settings.topk}, drop {settings.n_drop}]",
                 params={"strategy": e.name, "engine": engine, **config.backtest.model_dump(mode="json")},
                 metrics=e.rows[engine], tags={"strategy": e.name, "model": e.name, "engine": engine})
        for e in evaluations for engine in ENGINES
    ]
    compact = comparison[["strategy", "engine", "return_mae", "ic", "rank_ic", "ann_excess_return", "ann_excess_return_with_cost", "information_ratio_with_cost", "max_drawdown_with_cost", "turnover"]]
    return StageResult(
        metrics={"strategies": len(evaluations), "test_days": int(((calendar >= start) & (calendar <= end)).sum())},
        summary=["comparison (test segment):", *markdown_table(compact).splitlines()],
        artifacts=[out / name for name in ("quintile_returns.csv", "ic_decay.csv", "vbt_sweep.csv", "daily_returns.csv",
                                           "daily_ic.csv", "close.parquet", "signals")],
        children=children,
        parent_artifacts=[out / "comparison.csv", out / "comparison.md", *plots],
    )



BACKTEST_FILES = ("comparison.csv", "comparison.md", "quintile_returns.csv", "ic_decay.csv", "vbt_sweep.csv", "daily_returns.csv",
                  "daily_ic.csv", "close.parquet")


def backtest_outputs(config: ConfigView) -> tuple[str, ...]:
    return (*BACKTEST_FILES, *(signal_path(name) for name in config.signals.sources))


STAGES = (
    StageSpec(
        "backtest", backtest, needs=("ingest", "split"),
        reads=("signals", "backtest", "data.benchmark", "data.region", "split.test"),
        outputs=backtest_outputs,
        consumes_signals=True,
        # 2: daily returns, IC, closes, signals kept; 3: runs named with settings; 4: daily Rank IC;
        # 5: forecast errors of the horizon return (return_mse, return_mae)
        version=5,
        description="every signal source through IC analysis, Qlib's TopkDropout backtest and vectorbt",
    ),
)
