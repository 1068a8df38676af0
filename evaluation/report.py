"""One self-contained HTML report per backtest: the comparison with its uncertainty and the plots a
quant reads, plotly's JavaScript inlined so the file works offline and can be forwarded.

The page records how many plots rendered and any script error in `<body data-...>` attributes, so
a headless browser can check it (tests/test_report.py).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from evaluation.comparison import HEADLINE, excess_after_cost
from evaluation.evaluate import Evaluation

CALIBRATION = (
    "strategy",
    "coverage_80",
    "coverage_90",
    "pinball",
    "baseline_coverage_80",
    "baseline_coverage_90",
    "baseline_pinball",
)
# Counts script errors from the first script on, and renders the counts into <body> once the page has loaded.
WATCHER = """<script>
window.scriptErrors = 0;
window.onerror = function () { window.scriptErrors += 1; };
window.addEventListener("load", function () {
  document.body.dataset.errors = String(window.scriptErrors);
  document.body.dataset.plots = String(document.querySelectorAll(".js-plotly-plot").length);
});
</script>"""


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda value: f"{value:.4f}", na_rep="", border=0, classes="figures")


def _figure(figure: go.Figure, title: str) -> str:
    figure.update_layout(title=title, height=380, margin=dict(l=50, r=20, t=50, b=40), template="plotly_white")
    return figure.to_html(full_html=False, include_plotlyjs=False)


def report_figures(evaluations: list[Evaluation], sweeps: pd.DataFrame) -> list[str]:
    """The plots, Qlib engine after cost unless the title says otherwise."""
    excess = {e.name: excess_after_cost(e, "qlib").cumsum() for e in evaluations}
    cumulative, drawdown, rank_ic, quintiles, costs = go.Figure(), go.Figure(), go.Figure(), go.Figure(), go.Figure()
    for e in evaluations:
        curve = excess[e.name]
        cumulative.add_trace(go.Scatter(x=curve.index, y=curve, name=e.name, mode="lines"))
        drawdown.add_trace(go.Scatter(x=curve.index, y=curve - curve.cummax(), name=e.name, mode="lines"))
        rolling = e.rank_ic.rolling(20, min_periods=5).mean()
        rank_ic.add_trace(go.Scatter(x=rolling.index, y=rolling, name=e.name, mode="lines"))
        quintiles.add_trace(
            go.Bar(x=list(e.factor.quantile_returns.index), y=e.factor.quantile_returns.to_numpy(), name=e.name)
        )
    daily = {e.name: e.daily["qlib"] for e in evaluations}
    costs.add_trace(
        go.Bar(x=list(daily), y=[frame["turnover"].mean() for frame in daily.values()], name="mean daily turnover")
    )
    costs.add_trace(
        go.Bar(x=list(daily), y=[frame["cost"].mean() * 252 for frame in daily.values()], name="annual cost drag")
    )
    parts = [
        _figure(cumulative, "Cumulative excess return vs benchmark, after cost"),
        _figure(drawdown, "Drawdown of the cumulative excess return"),
        _figure(rank_ic, "Daily Rank IC, 20-day mean (out of sample)"),
        _figure(quintiles, "Mean forward return by score quintile (q5 = highest scores)"),
        _figure(costs, "Turnover and cost drag"),
    ]
    for strategy, grid in sweeps.groupby("strategy", sort=False):
        at_cost = grid[grid["cost"] == grid["cost"].max()].pivot(
            index="n_drop", columns="topk", values="ann_return_with_cost"
        )
        heatmap = go.Figure(
            go.Heatmap(
                z=at_cost.to_numpy(),
                x=[str(k) for k in at_cost.columns],
                y=[str(n) for n in at_cost.index],
                colorscale="RdBu",
                zmid=0,
                colorbar=dict(title="ann. return"),
            )
        )
        heatmap.update_xaxes(title="topk")
        heatmap.update_yaxes(title="n_drop")
        parts.append(
            _figure(heatmap, f"vectorbt sweep, {strategy}: annual return after cost (cost x{grid['cost'].max():g})")
        )
    return parts


def write_report(
    path: Path,
    title: str,
    comparison: pd.DataFrame,
    evaluations: list[Evaluation],
    sweeps: pd.DataFrame,
    probabilistic: pd.DataFrame,
    portfolio: pd.DataFrame,
    rolling_sharpe: pd.DataFrame,
    notes: list[str],
) -> Path:
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        *(f"<p>{html.escape(line)}</p>" for line in notes),
        "<h2>Comparison</h2>",
        _table(comparison[list(HEADLINE)]),
        "<h2>Portfolio statistics after cost (quantstats)</h2>",
        _table(portfolio),
    ]
    if not probabilistic.empty:
        sections += ["<h2>Interval coverage of the horizon return</h2>", _table(probabilistic[list(CALIBRATION)])]
    sharpe = go.Figure(
        [go.Scatter(x=rolling_sharpe.index, y=rolling_sharpe[name], name=name, mode="lines") for name in rolling_sharpe]
    )
    sections += [
        "<h2>Plots</h2>",
        *report_figures(evaluations, sweeps),
        _figure(sharpe, "Rolling 63-day Sharpe ratio after cost (quantstats)"),
    ]
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
{WATCHER}
<script>{get_plotlyjs()}</script>
<style>body {{ font-family: sans-serif; margin: 2em; }} table.figures {{ border-collapse: collapse; font-size: 12px; }}
table.figures td, table.figures th {{ padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }}</style>
</head><body data-errors="not loaded" data-plots="0">
{chr(10).join(sections)}
</body></html>
"""
    path.write_text(page)
    return path
