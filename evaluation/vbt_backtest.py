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

from strategies.topk import TopkSettings, topk_dropout_orders


def _portfolio(close: pd.DataFrame, orders: pd.DataFrame, settings: TopkSettings, group_by=True):
    import vectorbt as vbt

    targets = orders.shift(1)  # decided at t's close, traded at t+1's close
    fees = pd.DataFrame(settings.costs.fees(targets.to_numpy()), index=targets.index, columns=targets.columns)
    return vbt.Portfolio.from_orders(
        close.ffill(),
        size=targets,
        size_type="targetpercent",
        fees=fees,
        group_by=group_by,
        cash_sharing=True,
        call_seq="auto",
        init_cash=settings.account,
        freq="1D",
    )


def unmodelled(settings: TopkSettings) -> str:
    """The settings this engine does not follow, in words ("" when it follows them all): it trades
    at the close, sells any name the rule drops, charges no minimum fee and knows no price limits."""
    missing = []
    if settings.deal_price != "close":
        missing.append(f"deal_price {settings.deal_price} (it trades at the close)")
    if settings.hold_thresh > 1:
        missing.append(f"hold_thresh {settings.hold_thresh} (it may sell a name the day after buying it)")
    if settings.costs.min_cost > 0:
        missing.append(f"min_cost {settings.costs.min_cost:g}")
    if settings.limit_threshold is not None:
        missing.append(f"limit_threshold {settings.limit_threshold:g} (it trades at limit prices)")
    return ", ".join(missing)


def _daily(portfolio) -> pd.DataFrame:
    value = portfolio.value()
    traded = portfolio.orders.records_readable
    traded_value = (
        (traded["Size"] * traded["Price"]).groupby(traded["Timestamp"]).sum() if len(traded) else pd.Series(dtype=float)
    )
    fees = traded["Fees"].groupby(traded["Timestamp"]).sum() if len(traded) else pd.Series(dtype=float)
    previous = value.shift(1).fillna(value.iloc[0])
    return pd.DataFrame(
        {
            "return_with_cost": portfolio.returns(),
            "cost": fees.reindex(value.index, fill_value=0.0) / previous,
            "turnover": traded_value.reindex(value.index, fill_value=0.0) / previous,
        }
    )


def vbt_topk_dropout(scores: pd.DataFrame, close: pd.DataFrame, settings: TopkSettings) -> pd.DataFrame:
    """Daily return (before cost), cost and turnover of the rule; close is (datetime x instrument)."""
    close = close.reindex(index=scores.index, columns=scores.columns)
    daily = _daily(_portfolio(close, topk_dropout_orders(scores, settings.topk, settings.n_drop), settings))
    daily["return"] = daily["return_with_cost"] + daily["cost"]
    return daily[["return", "cost", "turnover"]]


def vbt_sweep(
    scores: pd.DataFrame, close: pd.DataFrame, settings: TopkSettings, topks, n_drops, costs
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every (topk, n_drop, cost) combination in one vectorbt run; cost scales open and close cost.

    Returns one row per combination with annualised return (after cost) and the final value, and
    the daily returns after cost (datetime x combination), from which the Deflated Sharpe Ratio
    of the best combination is computed.
    """
    close = close.reindex(index=scores.index, columns=scores.columns)
    grid = list(product(topks, n_drops, costs))
    targets = {
        (topk, n_drop): topk_dropout_orders(scores, topk, n_drop).shift(1).to_numpy()
        for topk, n_drop in product(topks, n_drops)
    }
    # One wide frame of (combination x instrument) columns, grouped by combination number: plain
    # integer labels spare vectorbt the factorising of a 4-level column index.
    size = np.concatenate([targets[(topk, n_drop)] for topk, n_drop, _ in grid], axis=1)
    cost = np.repeat([cost for _, _, cost in grid], scores.shape[1])
    fees = settings.costs.fees(size, cost)

    def wide(values: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(values, index=scores.index)

    import vectorbt as vbt

    # init_cash as one contiguous value per group: a scalar would reach numba as a strided array,
    # a second signature of vectorbt's simulation that a fresh install compiles again (2 s).
    portfolio = vbt.Portfolio.from_orders(
        wide(np.tile(close.ffill().to_numpy(), len(grid))),
        size=wide(size),
        size_type="targetpercent",
        fees=wide(fees),
        group_by=np.repeat(np.arange(len(grid)), scores.shape[1]),
        cash_sharing=True,
        call_seq="auto",
        init_cash=np.full(len(grid), settings.account),
        freq="1D",
    )
    keys = pd.MultiIndex.from_tuples(grid, names=["topk", "n_drop", "cost"])
    # vectorbt squeezes a single group to a Series or scalars; index by the grid either way
    returns = pd.DataFrame(
        np.asarray(portfolio.returns()).reshape(len(close), len(grid)), index=close.index, columns=keys
    )
    summary = pd.DataFrame(
        {
            "ann_return_with_cost": returns.mean().to_numpy() * 252,
            "final_value": np.atleast_1d(portfolio.final_value()),
        },
        index=keys,
    )
    return summary, returns
