"""The uncertainty figures against the libraries and a published worked example."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from arch.bootstrap import StationaryBootstrap

from evaluation.statistics import (
    bootstrap_intervals,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    hac_mean,
    paired_difference,
    probabilistic_sharpe,
    signal_statistics,
    significant,
)


def autocorrelated(seed: int, n: int = 400, mean: float = 0.02) -> pd.Series:
    """An MA(4) series, like the daily IC of a five-day-horizon score."""
    noise = np.random.default_rng(seed).normal(0, 0.1, n + 4)
    return pd.Series(
        mean + np.convolve(noise, np.ones(5) / 5, mode="valid"), index=pd.bdate_range("2020-01-01", periods=n)
    )


def test_hac_t_equals_a_newey_west_computation_by_hand():
    series = autocorrelated(0)
    mean, t = hac_mean(series, lags=4)
    centred = series.to_numpy() - series.mean()
    n = len(centred)
    long_run = centred @ centred / n + 2 * sum(
        (1 - lag / 5) * (centred[lag:] @ centred[:-lag]) / n for lag in range(1, 5)
    )
    assert mean == pytest.approx(series.mean())
    assert t == pytest.approx(series.mean() / np.sqrt(long_run / n), rel=1e-9)
    naive_t = series.mean() / (series.std(ddof=1) / np.sqrt(n))
    assert abs(t) < abs(naive_t)  # overlap inflates the naive t-statistic


def test_signal_statistics_use_horizon_minus_one_lags():
    ic, rank_ic = autocorrelated(1), autocorrelated(2)
    figures = signal_statistics(ic, rank_ic, horizon=5)
    fit = sm.OLS(rank_ic.to_numpy(), np.ones(len(rank_ic))).fit(cov_type="HAC", cov_kwds={"maxlags": 4})
    assert figures["rank_ic_t"] == pytest.approx(fit.tvalues[0])
    assert figures["hit_rate"] == pytest.approx((rank_ic > 0).mean())
    assert figures["icir"] == pytest.approx(ic.mean() / ic.std())


def test_bootstrap_intervals_are_arch_percentile_intervals():
    excess = autocorrelated(3, mean=0.0004) / 10
    figures = bootstrap_intervals(excess, seed=7, reps=300)
    bootstrap = StationaryBootstrap(figures["block_length"], excess.to_numpy(), seed=np.random.default_rng(7))
    low, high = bootstrap.conf_int(lambda x: np.array([x.mean() * 252]), reps=300, method="percentile")[:, 0]
    assert (figures["ann_excess_low"], figures["ann_excess_high"]) == pytest.approx((low, high))
    assert low < excess.mean() * 252 < high
    assert figures["ir_low"] < figures["ir_high"]


def test_deflated_sharpe_ratio_reproduces_the_published_example():
    # Bailey and Lopez de Prado (2014), "The Deflated Sharpe Ratio", numerical example: N = 100 trials,
    # T = 1250 days, best annualised SR 2.5, variance of annualised SRs 0.5, skew -3, kurtosis 10:
    # SR0 = 0.1132 per day and DSR = 0.9004.
    benchmark = expected_max_sharpe(0.5 / 250, 100)
    assert benchmark == pytest.approx(0.1132, abs=5e-5)
    assert probabilistic_sharpe(2.5 / np.sqrt(250), benchmark, 1250, -3, 10) == pytest.approx(0.9004, abs=5e-4)


def test_the_best_of_many_noise_settings_is_not_called_skill():
    noise = pd.DataFrame(np.random.default_rng(4).normal(0, 0.01, (750, 40)))
    figures = deflated_sharpe_ratio(noise)
    assert figures["best_sharpe"] > 0.5 and figures["dsr"] < 0.95 and figures["trials"] == 40
    skilled = noise.copy()
    skilled[0] += 0.003
    assert deflated_sharpe_ratio(skilled)["dsr"] > 0.99


def test_paired_difference_and_significance():
    baseline = autocorrelated(5, mean=0.0)
    better = baseline + autocorrelated(6, mean=0.03) / 3
    difference, t = paired_difference(better, baseline, lags=4)
    assert difference == pytest.approx((better - baseline).mean()) and t > 2
    assert significant(2.5, 0.01) and not significant(2.5, -0.01) and not significant(1.5, 0.01)


def test_interval_scores_of_a_calibrated_forecast_and_the_volatility_baseline():
    from scipy import stats as scipy_stats

    from evaluation.probabilistic import LEVELS, interval_scores, quantile_table
    from models.interface import Forecast

    rng = np.random.default_rng(8)
    days = pd.bdate_range("2021-01-04", periods=300)
    close = pd.DataFrame(
        100 * np.exp(np.cumsum(rng.normal(0, 0.01, (300, 40)), axis=0)),
        index=days,
        columns=[f"S{i}" for i in range(40)],
    )
    horizon, sigma = 5, 0.01 * np.sqrt(5)
    forecast_days = days[30:290]
    frame = close.loc[forecast_days].stack()
    calibrated = np.exp(sigma * scipy_stats.norm.ppf(LEVELS))[None, :] - 1  # the true quantiles of the 5-day return
    table = quantile_table(
        frame.index.get_level_values(0), frame.index.get_level_values(1), np.repeat(calibrated, len(frame), axis=0)
    )
    scores = interval_scores(table, close, horizon)
    assert scores["coverage_80"] == pytest.approx(0.8, abs=0.03) and scores["coverage_90"] == pytest.approx(
        0.9, abs=0.03
    )
    assert scores["baseline_coverage_90"] == pytest.approx(0.9, abs=0.04)  # trailing volatility is right here too
    overconfident = quantile_table(
        table["datetime"], table["instrument"], table[["q0.05", "q0.1", "q0.5", "q0.9", "q0.95"]].to_numpy() / 4
    )
    worse = interval_scores(overconfident, close, horizon)
    assert worse["coverage_80"] < 0.4 and worse["pinball"] > scores["pinball"]
    paths = rng.normal(100, 1, (3, 200, horizon))
    np.testing.assert_allclose(
        Forecast.from_paths(np.arange(3), np.arange(3), paths, np.full(3, 100.0)).return_quantiles(LEVELS),
        np.quantile(paths[:, :, -1] / 100 - 1, LEVELS, axis=1).T,
    )
