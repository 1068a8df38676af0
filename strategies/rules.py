"""Rule-based baseline signals that need no training, in the shared signal-table schema.

Both are strictly causal: the score for day t uses closes up to day t only.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from data_prep.panel import Panel
from strategies.signal_table import make_signal_table

RULE_BASELINES = ("momentum", "reversal")


def rule_baseline(name: str, panel: Panel, start: dt.date, end: dt.date) -> pd.DataFrame:
    """momentum: past 20-day return; reversal: minus the past 5-day return."""
    close = panel.field_frame("close")
    if name == "momentum":
        score = close / close.shift(20) - 1
    elif name == "reversal":
        score = -(close / close.shift(5) - 1)
    else:
        raise ValueError(f"unknown rule baseline {name!r}; choose one of {RULE_BASELINES}")
    score = score.where(panel.member_frame()).loc[pd.Timestamp(start) : pd.Timestamp(end)]
    stacked = score.stack().dropna()
    return make_signal_table(
        stacked.index.get_level_values(0), stacked.index.get_level_values(1), stacked.to_numpy(), None, name
    )
