"""Portfolio statistics with quantstats, from the daily returns the engines produce (after cost).

Per strategy and engine: CAGR, Sharpe, Sortino, Calmar, maximum drawdown and its longest
duration, beside the benchmark's CAGR and Sharpe; the monthly returns table and the rolling
63-day Sharpe ratio for the report.
"""

from __future__ import annotations

import warnings

import pandas as pd

from evaluation.evaluate import ENGINES, Evaluation

ROLLING_DAYS = 63


def _quantstats():
    with warnings.catch_warnings():  # quantstats warns about optional plotting back-ends at import
        warnings.simplefilter("ignore")
        import quantstats

    return quantstats


def portfolio_statistics(evaluations: list[Evaluation]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(statistics per strategy and engine, monthly returns in long form, rolling Sharpe per strategy on
    the Qlib engine)."""
    stats = _quantstats().stats
    rows, monthly, rolling = [], [], {}
    for evaluation in evaluations:
        for engine in ENGINES:
            daily = evaluation.daily[engine]
            returns = (daily["return"] - daily["cost"]).rename(evaluation.name)
            benchmark = daily["bench"]
            drawdowns = stats.drawdown_details(stats.to_drawdown_series(returns))
            rows.append(
                {
                    "strategy": evaluation.name,
                    "engine": engine,
                    "cagr": stats.cagr(returns),
                    "sharpe": stats.sharpe(returns),
                    "sortino": stats.sortino(returns),
                    "calmar": stats.calmar(returns),
                    "max_drawdown": stats.max_drawdown(returns),
                    "max_drawdown_days": float(drawdowns["days"].max()) if len(drawdowns) else 0.0,
                    "benchmark_cagr": stats.cagr(benchmark),
                    "benchmark_sharpe": stats.sharpe(benchmark),
                }
            )
            table = stats.monthly_returns(returns).drop(columns="EOY").stack().rename("return").reset_index()
            monthly.append(
                table.set_axis(["year", "month", "return"], axis=1).assign(strategy=evaluation.name, engine=engine)
            )
            if engine == "qlib":
                rolling[evaluation.name] = stats.rolling_sharpe(returns, rolling_period=ROLLING_DAYS)
    return pd.DataFrame(rows), pd.concat(monthly, ignore_index=True), pd.DataFrame(rolling)
