"""Factor analysis of a score with alphalens-reloaded, the library quants read tear sheets from.

Scores (datetime x instrument) and closes go through `get_clean_factor_and_forward_returns`
with holding periods 1..horizon (the factor is the day's score rank, ties broken in instrument
order so that tied scores still bin into quintiles); from its factor data come the Spearman IC per holding period
(what the tear sheets call IC decay), the mean forward return per score quintile at the horizon
and the turnover of the top and bottom quintiles. The daily IC series used for t-statistics
stay with evaluation.metrics (a test shows alphalens gives the same Rank IC to 1e-6).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

QUANTILES = 5


@dataclass(frozen=True)
class FactorAnalysis:
    ic_by_period: pd.Series  # mean daily Spearman IC per holding period 1..horizon
    quantile_returns: pd.Series  # q1..q5: mean forward return over the horizon (q5 = highest scores)
    turnover: pd.Series  # top and bottom quintile: mean share of names replaced from one day to the next


def factor_data(scores: pd.DataFrame, close: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """alphalens factor data: forward returns for periods 1..horizon, the factor and its quintile per (date, asset)."""
    import alphalens

    # Cross-sectional ranks, ties broken in column order: alphalens' quintile binning (qcut) fails on tied
    # scores, which tree models such as LightGBM give in blocks; without ties the ranks change nothing.
    factor = scores.rank(axis=1, method="first").stack().rename_axis(["date", "asset"]).rename("factor")
    logging.getLogger("alphalens").setLevel(logging.WARNING)
    return alphalens.utils.get_clean_factor_and_forward_returns(
        factor,
        close.loc[scores.index[0] :],
        quantiles=QUANTILES,
        periods=tuple(range(1, horizon + 1)),
        max_loss=1.0,
        filter_zscore=None,
    )


def analyse(scores: pd.DataFrame, close: pd.DataFrame, horizon: int) -> FactorAnalysis:
    from alphalens import performance
    from alphalens.utils import get_forward_returns_columns

    data = factor_data(scores, close, horizon)
    periods = list(get_forward_returns_columns(data.columns))  # 1D .. <horizon>D
    # Select the periods by name: on some inputs alphalens' grouped apply also returns the factor columns.
    ic = performance.factor_information_coefficient(data)[periods]
    returns, _ = performance.mean_return_by_quantile(data, by_date=True, demeaned=False)
    by_quantile = returns[periods[-1]].groupby(level="factor_quantile").mean()
    quantile = data["factor_quantile"]
    return FactorAnalysis(
        ic_by_period=pd.Series(ic.mean().to_numpy(), index=pd.Index(range(1, horizon + 1), name="period"), name="ic"),
        quantile_returns=by_quantile.rename(lambda q: f"q{int(q)}"),
        turnover=pd.Series(
            {f"q{q}": performance.quantile_turnover(quantile, q, 1).mean() for q in (QUANTILES, 1)}, name="turnover"
        ),
    )
