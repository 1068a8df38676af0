"""Comparison plots of several evaluated signals (PNG files for the MLflow parent run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from evaluation.evaluate import Evaluation


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def comparison_plots(evaluations: list[Evaluation], folder: Path) -> list[Path]:
    """Cumulative excess return and drawdown (Qlib engine, after cost), IC over time, quintiles."""
    excess = pd.DataFrame(
        {
            e.name: (e.daily["qlib"]["return"] - e.daily["qlib"]["cost"] - e.daily["qlib"]["bench"]).cumsum()
            for e in evaluations
        }
    )
    paths = []
    figure = Figure(figsize=(9, 4))
    axis = figure.subplots()
    excess.plot(ax=axis, title="cumulative excess return vs benchmark (Qlib, after cost)")
    paths.append(_save(figure, folder / "cumulative_excess_return.png"))

    figure = Figure(figsize=(9, 4))
    axis = figure.subplots()
    (excess - excess.cummax()).plot(ax=axis, title="drawdown of cumulative excess return")
    paths.append(_save(figure, folder / "drawdown.png"))

    figure = Figure(figsize=(9, 4))
    axis = figure.subplots()
    pd.DataFrame({e.name: e.ic for e in evaluations}).rolling(5, min_periods=1).mean().plot(
        ax=axis, title="daily IC (5-day mean)"
    )
    paths.append(_save(figure, folder / "ic_over_time.png"))

    figure = Figure(figsize=(9, 4))
    axis = figure.subplots()
    pd.DataFrame({e.name: e.factor.quantile_returns for e in evaluations}).plot.bar(
        ax=axis, title="mean forward return by score quintile"
    )
    paths.append(_save(figure, folder / "quintile_returns.png"))
    return paths


def uncertainty_plots(
    comparison: pd.DataFrame, periods: pd.DataFrame, evaluations: list[Evaluation], folder: Path
) -> list[Path]:
    """Rank IC by fold and year; cumulative excess return after cost with the band of its bootstrap
    interval (Qlib engine)."""
    paths = []
    figure = Figure(figsize=(10, 4))
    axis = figure.subplots()
    qlib = periods[periods["engine"] == "qlib"]
    qlib.pivot(index="period", columns="strategy", values="rank_ic").reindex(qlib["period"].unique()).plot.bar(
        ax=axis, title="mean daily Rank IC by fold and by year (out of sample)"
    )
    axis.axhline(0, color="black", linewidth=0.8)
    paths.append(_save(figure, folder / "rank_ic_by_period.png"))

    figure = Figure(figsize=(10, 4))
    axis = figure.subplots()
    rows = comparison[comparison["engine"] == "qlib"].set_index("strategy")
    for evaluation in evaluations:
        daily = evaluation.daily["qlib"]
        excess = (daily["return"] - daily["cost"] - daily["bench"]).dropna()
        line = axis.plot(excess.index, excess.cumsum(), label=evaluation.name)[0]
        steps = pd.Series(range(1, len(excess) + 1), index=excess.index) / 252
        low, high = rows.loc[evaluation.name, ["ann_excess_low", "ann_excess_high"]]
        axis.fill_between(excess.index, steps * low, steps * high, color=line.get_color(), alpha=0.12)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_title("cumulative excess return after cost; band: the 95% bootstrap interval of its mean, accumulated")
    axis.legend(fontsize=7)
    paths.append(_save(figure, folder / "cumulative_excess_band.png"))
    return paths
