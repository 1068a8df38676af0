"""LightGBM on Alpha158 through Qlib's own handler and model, on a small real Qlib folder."""

import re

import numpy as np
import pandas as pd

from models.lgbm.alpha158 import LABEL_DAYS, lgbm_alpha158_scores, purged_segments
from pipeline.config import LGBMConfig


def test_train_and_valid_end_before_their_labels_cross():
    calendar = pd.bdate_range("2021-01-04", periods=120)
    purged = purged_segments(
        calendar,
        {
            "train": ("2021-01-01", "2021-04-30"),
            "valid": ("2021-05-01", "2021-05-31"),
            "test": ("2021-06-01", "2021-06-30"),
        },
    )
    # The gap Qlib's own label needs: Alpha158's label looks as far ahead as its furthest Ref($close, -n).
    from qlib.contrib.data.handler import Alpha158

    (label,), _ = Alpha158.get_label_config(None)
    lookahead = max(int(days) for days in re.findall(r"Ref\(\$close,\s*-(\d+)\)", label))
    last_train = calendar[calendar <= "2021-04-30"][-1]
    assert calendar.get_loc(last_train) - calendar.get_loc(purged["train"][1]) == lookahead == LABEL_DAYS
    last_valid = calendar[calendar <= "2021-05-31"][-1]
    assert calendar.get_loc(last_valid) - calendar.get_loc(purged["valid"][1]) == lookahead
    assert purged["test"][1] == calendar[calendar <= "2021-06-30"][-1]


def test_lgbm_alpha158_scores_the_test_segment(tiny_split_dir, tmp_path):
    params = {
        **LGBMConfig().params,
        "num_boost_round": 20,
        "early_stopping_rounds": 5,
        "num_leaves": 8,
        "min_data_in_leaf": 5,
    }
    scores = lgbm_alpha158_scores(
        tiny_split_dir.parent / "qlib",
        "us",
        "test",
        {
            "train": ("2021-01-01", "2021-04-30"),
            "valid": ("2021-05-01", "2021-05-31"),
            "test": ("2021-06-01", "2021-06-30"),
        },
        params,
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        kernels=1,  # no forked workers in a threaded test process
    )
    days = scores.index.get_level_values("datetime")
    assert days.min() >= pd.Timestamp("2021-06-01") and days.max() <= pd.Timestamp("2021-06-30")
    assert scores.index.get_level_values("instrument").nunique() == 8 and np.isfinite(scores).all()
