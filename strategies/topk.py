"""TopkDropout: hold the `topk` best-scored names, replacing at most `n_drop` of them a day.

The same settings drive Qlib's TopkDropoutStrategy and the vectorbt engine; `topk_dropout_orders`
is the rule day by day, as Qlib's strategy applies it, and `topk_dropout_day` the same rule for one
day from live holdings (the positions command, pipeline/live.py).
"""

from __future__ import annotations

from collections.abc import Sequence
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


def topk_dropout_step(row: np.ndarray, held: np.ndarray, topk: int, n_drop: int) -> tuple[np.ndarray, np.ndarray]:
    """One day of the rule: the positions to sell and to buy, given the day's scores by position (NaN: no
    score) and the held positions in the order they were bought (that order breaks ties, as in Qlib)."""
    ranked = descending(row)[: np.count_nonzero(~np.isnan(row))]
    candidates = ranked[~np.isin(ranked, held)][: max(n_drop + topk - len(held), 0)]
    # held names without a score today rank last, as in Qlib
    combined = np.concatenate([held, candidates])
    worst = combined[descending(row[combined])][-n_drop:] if n_drop else combined[:0]
    sell = held[np.isin(held, worst)]
    return sell, candidates[: len(sell) + topk - len(held)]


def topk_dropout_orders(scores: pd.DataFrame, topk: int, n_drop: int) -> pd.DataFrame:
    """Target weights per day (NaN = no order): 1/topk on buys, 0 on sells. Same index as scores."""
    values = scores.to_numpy(dtype=float)
    orders = np.full(values.shape, np.nan)
    held = np.empty(0, dtype=np.int64)  # column positions, in the order they were bought
    for day, row in enumerate(values):
        sell, buy = topk_dropout_step(row, held, topk, n_drop)
        orders[day, sell] = 0.0
        orders[day, buy] = 1.0 / topk
        held = np.concatenate([held[~np.isin(held, sell)], buy])
    return pd.DataFrame(orders, index=scores.index, columns=scores.columns)


def topk_dropout_day(
    scores: pd.Series, held: Sequence[str], topk: int, n_drop: int
) -> tuple[list[str], list[str], list[str]]:
    """The rule for one day from live holdings: (kept, bought, sold) names, kept and bought in holding
    order. `scores` holds the day's score per instrument (NaN or absent: no score, also for a held name).
    Names take their positions in sorted order, as in the backtest's score matrix, so ties break alike
    and the day gives the orders `topk_dropout_orders` gives after the same holdings."""
    names = sorted(set(scores.index) | set(held))
    position = {name: i for i, name in enumerate(names)}
    held_positions = np.array([position[name] for name in held], dtype=np.int64)
    sell, buy = topk_dropout_step(scores.reindex(names).to_numpy(dtype=float), held_positions, topk, n_drop)
    kept = held_positions[~np.isin(held_positions, sell)]
    return [names[i] for i in kept], [names[i] for i in buy], [names[i] for i in sell]
