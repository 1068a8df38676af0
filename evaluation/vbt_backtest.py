"""The top-k / dropout rule as vectorbt orders, and a vectorised sweep over its settings.

The holdings follow Qlib's TopkDropoutStrategy rule day by day: among held names and the best
`n_drop + topk - held` new ones, sell the held names that rank in the bottom `n_drop`, and buy the
best new names to get back to `topk`. As in Qlib, the score of day t is traded at day t+1's
close; sold names go to 0 and each bought name to 1/topk of the portfolio, while names kept are
not rebalanced. Costs: `open_cost` on buys and `close_cost` on sells, as fractions of the traded
value (vectorbt has no minimum fee, so Qlib's `min_cost` is not modelled).
"""

from __future__ import annotations

from itertools import product

import numpy as np
import pandas as pd

from evaluation.qlib_backtest import TopkSettings


def topk_dropout_orders(scores: pd.DataFrame, topk: int, n_drop: int) -> pd.DataFrame:
    """Target weights per day (NaN = no order): 1/topk on buys, 0 on sells. Same index as scores."""
    orders = np.full(scores.shape, np.nan)
    column = {name: i for i, name in enumerate(scores.columns)}
    held: list[str] = []
    for day, (_, row) in enumerate(scores.iterrows()):
        ranked = row.dropna().sort_values(ascending=False)
        candidates = [name for name in ranked.index if name not in held][: max(n_drop + topk - len(held), 0)]
        # held names without a score today rank last, as in Qlib
        combined = ranked.reindex(held + candidates).sort_values(ascending=False, na_position="last")
        worst = set(combined.index[-n_drop:]) if n_drop else set()
        sell = [name for name in held if name in worst]
        buy = candidates[: len(sell) + topk - len(held)]
        orders[day, [column[name] for name in sell]] = 0.0
        orders[day, [column[name] for name in buy]] = 1.0 / topk
        held = [name for name in held if name not in sell] + buy
    return pd.DataFrame(orders, index=scores.index, columns=scores.columns)


def _portfolio(close: pd.DataFrame, orders: pd.DataFrame, settings: TopkSettings, group_by=True):
    import vectorbt as vbt

    targets = orders.shift(1)  # decided at t's close, traded at t+1's close
    fees = pd.DataFrame(np.where(targets > 0, settings.open_cost, settings.close_cost), index=targets.index, columns=targets.columns)
    return vbt.Portfolio.from_orders(
        close.ffill(), size=targets, size_type="targetpercent", fees=fees, group_by=group_by,
        cash_sharing=True, call_seq="auto", init_cash=settings.account, freq="1D",
    )


def _daily(portfolio) -> pd.DataFrame:
    value = portfolio.value()
    traded = portfolio.orders.records_readable
    traded_value = (traded["Size"] * traded["Price"]).groupby(traded["Timestamp"]).sum() if len(traded) else pd.Series(dtype=float)
    fees = traded["Fees"].groupby(traded["Timestamp"]).sum() if len(traded) else pd.Series(dtype=float)
    previous = value.shift(1).fillna(value.iloc[0])
    return pd.DataFrame({
        "return_with_cost": portfolio.returns(),
        "cost": fees.reindex(value.index, fill_value=0.0) / previous,
        "turnover": traded_value.reindex(value.index, fill_value=0.0) / previous,
    })


def vbt_topk_dropout(scores: pd.DataFrame, close: pd.DataFrame, settings: TopkSettings) -> pd.DataFrame:
    """Daily return (before cost), cost and turnover of the rule; close is (datetime x instrument)."""
    close = close.reindex(index=scores.index, columns=scores.columns)
    daily = _daily(_portfolio(close, topk_dropout_orders(scores, settings.topk, settings.n_drop), settings))
    daily["return"] = daily["return_with_cost"] + daily["cost"]
    return daily[["return", "cost", "turnover"]]


def vbt_sweep(scores: pd.DataFrame, close: pd.DataFrame, settings: TopkSettings, topks, n_drops, costs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every (topk, n_drop, cost) combination in one vectorbt run; cost scales open and close cost.

    Returns one row per combination with annualised return (after cost) and the final value, and
    the daily returns after cost (datetime x combination), from which the Deflated Sharpe Ratio
    of the best combination is computed.
    """
    close = close.reindex(index=scores.index, columns=scores.columns)
    grid = list(product(topks, n_drops, costs))
    orders, fees = [], []
    for topk, n_drop, cost in grid:
        frame = topk_dropout_orders(scores, topk, n_drop).shift(1)
        orders.append(frame)
        fees.append(pd.DataFrame(np.where(frame > 0, settings.open_cost * cost, settings.close_cost * cost), index=frame.index, columns=frame.columns))
    keys = pd.MultiIndex.from_tuples(grid, names=["topk", "n_drop", "cost"])
    size = pd.concat(orders, axis=1, keys=keys)
    import vectorbt as vbt

    portfolio = vbt.Portfolio.from_orders(
        pd.concat([close.ffill()] * len(grid), axis=1, keys=keys), size=size, size_type="targetpercent",
        fees=pd.concat(fees, axis=1, keys=keys), group_by=["topk", "n_drop", "cost"], cash_sharing=True,
        call_seq="auto", init_cash=settings.account, freq="1D",
    )
    # vectorbt squeezes a single group to a Series or scalars; index by the grid either way
    returns = pd.DataFrame(np.asarray(portfolio.returns()).reshape(len(close), len(grid)), index=close.index, columns=keys)
    summary = pd.DataFrame({
        "ann_return_with_cost": returns.mean().to_numpy() * 252,
        "final_value": np.atleast_1d(portfolio.final_value()),
    }, index=keys)
    return summary, returns
