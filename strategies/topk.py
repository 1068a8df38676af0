"""TopkDropout: hold the `topk` best-scored names, replacing at most `n_drop` of them a day.

The same settings drive Qlib's TopkDropoutStrategy and the vectorbt engine; `topk_dropout_orders`
is the rule day by day, as Qlib's strategy applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from strategies.costs import TradingCosts


@dataclass(frozen=True)
class TopkSettings:
    """TopkDropout settings of both engines; the values come from pipeline.config (BacktestConfig), where
    the defaults live."""

    topk: int
    n_drop: int
    hold_thresh: int
    deal_price: str
    costs: TradingCosts
    limit_threshold: float | None  # e.g. 0.095 for A-shares; None: no price limits
    account: float


def descending(values: np.ndarray) -> np.ndarray:
    """Positions from the highest value to the lowest, NaN last, in exactly the order pandas'
    `sort_values(ascending=False)` gives (ties included), which is the order Qlib's strategy ranks by."""
    valid = np.flatnonzero(~np.isnan(values))[::-1]
    order = valid[values[valid].argsort(kind="quicksort")][::-1]
    return np.concatenate([order, np.flatnonzero(np.isnan(values))])


def topk_dropout_orders(scores: pd.DataFrame, topk: int, n_drop: int) -> pd.DataFrame:
    """Target weights per day (NaN = no order): 1/topk on buys, 0 on sells. Same index as scores."""
    values = scores.to_numpy(dtype=float)
    orders = np.full(values.shape, np.nan)
    held = np.empty(0, dtype=np.int64)  # column positions, in the order they were bought
    for day, row in enumerate(values):
        ranked = descending(row)[: np.count_nonzero(~np.isnan(row))]
        candidates = ranked[~np.isin(ranked, held)][: max(n_drop + topk - len(held), 0)]
        # held names without a score today rank last, as in Qlib
        combined = np.concatenate([held, candidates])
        worst = combined[descending(row[combined])][-n_drop:] if n_drop else combined[:0]
        sell = held[np.isin(held, worst)]
        buy = candidates[: len(sell) + topk - len(held)]
        orders[day, sell] = 0.0
        orders[day, buy] = 1.0 / topk
        held = np.concatenate([held[~np.isin(held, sell)], buy])
    return pd.DataFrame(orders, index=scores.index, columns=scores.columns)
