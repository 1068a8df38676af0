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
    excess = pd.DataFrame({
        e.name: (e.daily["qlib"]["return"] - e.daily["qlib"]["cost"] - e.daily["qlib"]["bench"]).cumsum() for e in evaluations
    })
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
    pd.DataFrame({e.name: e.ic for e in evaluations}).rolling(5, min_periods=1).mean().plot(ax=axis, title="daily IC (5-day mean)")
    paths.append(_save(figure, folder / "ic_over_time.png"))

    figure = Figure(figsize=(9, 4))
    axis = figure.subplots()
    pd.DataFrame({e.name: e.quantiles for e in evaluations}).plot.bar(ax=axis, title="mean forward return by score quintile")
    paths.append(_save(figure, folder / "quintile_returns.png"))
    return paths
