"""Signal and portfolio metrics with fixed names: ic, icir, rank_ic, rank_icir, ann_return,
ann_excess_return, information_ratio, max_drawdown, turnover (and *_with_cost).

Conventions: a score known at the close of day t is judged against the return from the close of
t to the close of t + horizon; daily IC is the cross-sectional correlation over instruments;
ICIR = mean / std of the daily IC series. Portfolio figures use 252 trading days a year,
arithmetic (summed) returns as Qlib's risk analysis does, and drawdown on cumulative returns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TRADING_DAYS = 252


def score_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """Signal table -> scores as a (datetime x instrument) frame."""
    return table.pivot(index="datetime", columns="instrument", values="score").sort_index()


def forward_returns(close: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """close (datetime x instrument) -> return from close t to close t + horizon, at row t."""
    return close.shift(-horizon) / close - 1


def mean_forward_returns(close: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """The quantity every score forecasts: mean close over t+1..t+horizon / close t - 1, at row t."""
    return close[::-1].rolling(horizon, min_periods=horizon).mean()[::-1].shift(-1) / close - 1


def daily_ic(scores: pd.DataFrame, returns: pd.DataFrame, rank: bool = False) -> pd.Series:
    """Cross-sectional Pearson (or Spearman with rank=True) correlation per day."""
    scores, returns = scores.align(returns, join="inner")
    valid = scores.notna() & returns.notna()
    scores, returns = scores.where(valid), returns.where(valid)
    if rank:
        scores, returns = scores.rank(axis=1), returns.rank(axis=1)
    scores = scores.sub(scores.mean(axis=1), axis=0)
    returns = returns.sub(returns.mean(axis=1), axis=0)
    covariance = (scores * returns).sum(axis=1)
    norm = np.sqrt((scores**2).sum(axis=1) * (returns**2).sum(axis=1))
    ic = covariance / norm.replace(0, np.nan)
    return ic[valid.sum(axis=1) >= 3].dropna()


def signal_metrics(scores: pd.DataFrame, close: pd.DataFrame, horizon: int) -> dict[str, float]:
    returns = forward_returns(close, horizon)
    ic, rank_ic = daily_ic(scores, returns), daily_ic(scores, returns, rank=True)
    # Forecast error of the score as a horizon return, on the (day, instrument) pairs with an outcome.
    errors = (scores - mean_forward_returns(close, horizon).reindex_like(scores)).stack().dropna()
    return {
        "return_mse": float((errors**2).mean()),
        "return_mae": float(errors.abs().mean()),
        "ic": float(ic.mean()),
        "icir": float(ic.mean() / ic.std()) if ic.std() > 0 else np.nan,
        "rank_ic": float(rank_ic.mean()),
        "rank_icir": float(rank_ic.mean() / rank_ic.std()) if rank_ic.std() > 0 else np.nan,
    }


def portfolio_metrics(
    returns: pd.Series, benchmark: pd.Series, turnover: pd.Series, suffix: str = ""
) -> dict[str, float]:
    """Daily portfolio returns (already net of cost or not) against the benchmark."""
    excess = (returns - benchmark).dropna()
    cumulative = excess.cumsum()
    return {
        f"ann_return{suffix}": float(returns.mean() * TRADING_DAYS),
        f"ann_excess_return{suffix}": float(excess.mean() * TRADING_DAYS),
        f"information_ratio{suffix}": float(excess.mean() / excess.std() * np.sqrt(TRADING_DAYS))
        if excess.std() > 0
        else np.nan,
        f"max_drawdown{suffix}": float((cumulative - cumulative.cummax()).min()),
        f"turnover{suffix}": float(turnover.mean()),
    }
