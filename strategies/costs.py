"""What a trade costs, as both backtest engines charge it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TradingCosts:
    """Proportional costs per order, as fractions of the traded value, and Qlib's minimum fee.

    The values come from pipeline.config (BacktestConfig), where the defaults live.
    """

    open_cost: float  # on buys
    close_cost: float  # on sells
    min_cost: float  # minimum fee per order in account currency (Qlib's exchange; vectorbt has no minimum fee)

    def fees(self, targets: np.ndarray, scale: float | np.ndarray = 1.0) -> np.ndarray:
        """Fee fraction of each order given its target weight: a buy (weight > 0) pays `open_cost`, a
        sell (weight 0) `close_cost`; `scale` multiplies both (the sweep's cost multipliers)."""
        return np.where(np.asarray(targets) > 0, self.open_cost * scale, self.close_cost * scale)
