"""Uncertainty of every comparison: HAC t-statistics, block-bootstrap intervals, paired tests and
the Deflated Sharpe Ratio of a parameter sweep.

Daily IC series of a horizon-h score overlap (consecutive targets share h - 1 days), so their
t-statistics use Newey-West standard errors with at least h - 1 lags (statsmodels). Portfolio
figures get 95% intervals from a stationary block bootstrap of the daily excess returns (arch),
with the block length chosen by Politis and White's rule and a fixed seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm
from arch.bootstrap import StationaryBootstrap, optimal_block_length
from scipy import stats

from evaluation.metrics import TRADING_DAYS

EULER_GAMMA = 0.5772156649015329


def hac_lags(horizon: int) -> int:
    return max(horizon - 1, 1)


def hac_mean(series: pd.Series, lags: int) -> tuple[float, float]:
    """Mean of a daily series and its Newey-West t-statistic (NaN with fewer than 3 days)."""
    values = pd.Series(series).dropna().to_numpy(dtype=float)
    if len(values) < 3 or np.allclose(values, values[0]):
        return (float(values.mean()) if len(values) else np.nan), np.nan
    fit = sm.OLS(values, np.ones(len(values))).fit(cov_type="HAC", cov_kwds={"maxlags": lags})
    return float(fit.params[0]), float(fit.tvalues[0])


def signal_statistics(ic: pd.Series, rank_ic: pd.Series, horizon: int) -> dict[str, float]:
    """Mean IC and Rank IC with HAC t-statistics, ICIR and the share of days with a positive Rank IC."""
    lags = hac_lags(horizon)
    ic_mean, ic_t = hac_mean(ic, lags)
    rank_mean, rank_t = hac_mean(rank_ic, lags)
    return {
        "ic": ic_mean,
        "ic_t": ic_t,
        "icir": float(ic.mean() / ic.std()) if ic.std() > 0 else np.nan,
        "rank_ic": rank_mean,
        "rank_ic_t": rank_t,
        "rank_icir": float(rank_ic.mean() / rank_ic.std()) if rank_ic.std() > 0 else np.nan,
        "hit_rate": float((rank_ic > 0).mean()) if len(rank_ic) else np.nan,
        "days": float(len(rank_ic)),
    }


def annualised_excess(excess: np.ndarray) -> float:
    return float(np.mean(excess) * TRADING_DAYS)


def information_ratio(excess: np.ndarray) -> float:
    deviation = np.std(excess, ddof=1)
    return float(np.mean(excess) / deviation * np.sqrt(TRADING_DAYS)) if deviation > 0 else np.nan


def bootstrap_intervals(excess: pd.Series, seed: int, reps: int, size: float = 0.95) -> dict[str, float]:
    """95% stationary-bootstrap intervals of the annualised excess return and the information ratio."""
    values = pd.Series(excess).dropna().to_numpy(dtype=float)
    if len(values) < 10 or np.allclose(values, values[0]):
        return {key: np.nan for key in ("ann_excess_low", "ann_excess_high", "ir_low", "ir_high", "block_length")}
    block = max(float(optimal_block_length(values)["stationary"].iloc[0]), 1.0)
    rng = np.random.default_rng(seed)
    intervals = {}
    for name, statistic in (("ann_excess", annualised_excess), ("ir", information_ratio)):
        # arch takes the expected block length as a float, though its annotation says int
        bootstrap = StationaryBootstrap(block, values, seed=rng)  # type: ignore[arg-type]
        low, high = bootstrap.conf_int(
            lambda x, statistic=statistic: np.array([statistic(x)]), reps=reps, method="percentile", size=size
        )[:, 0]
        intervals[f"{name}_low"], intervals[f"{name}_high"] = float(low), float(high)
    intervals["block_length"] = block
    return intervals


def paired_difference(model: pd.Series, baseline: pd.Series, lags: int) -> tuple[float, float]:
    """Mean of model - baseline on their common days and its HAC t-statistic (a Diebold-Mariano-style test)."""
    model, baseline = model.align(baseline, join="inner")
    return hac_mean(model - baseline, lags)


def deflated_sharpe_ratio(returns: pd.DataFrame) -> dict[str, float]:
    """Deflated Sharpe Ratio (Bailey and Lopez de Prado, 2014) of the best of N tried settings.

    `returns`: daily returns (T x N), one column per tried setting. The best setting's Sharpe
    ratio is compared with the maximum expected from N unskilled trials with the observed
    variance of Sharpe ratios across trials, correcting for the skew and kurtosis of its returns
    and the sample length. The result is the probability that the best setting's true Sharpe
    ratio exceeds that benchmark; near 0.5 or below means the best cell is what luck alone gives.
    """
    returns = returns.dropna(how="all").fillna(0.0)
    sharpe = returns.mean() / returns.std(ddof=1)
    sharpe = sharpe.replace([np.inf, -np.inf], np.nan).dropna()
    trials, days = len(sharpe), len(returns)
    if trials < 2 or days < 3:
        return {"best_sharpe": np.nan, "expected_max_sharpe": np.nan, "dsr": np.nan, "trials": float(trials)}
    best = sharpe.idxmax()
    expected_max = expected_max_sharpe(float(sharpe.var(ddof=1)), trials)
    return {
        "best_sharpe": float(sharpe[best] * np.sqrt(TRADING_DAYS)),
        "expected_max_sharpe": float(expected_max * np.sqrt(TRADING_DAYS)),
        "dsr": probabilistic_sharpe(
            float(sharpe[best]),
            expected_max,
            days,
            float(stats.skew(returns[best])),
            float(stats.kurtosis(returns[best], fisher=False)),
        ),
        "trials": float(trials),
    }


def expected_max_sharpe(variance: float, trials: int) -> float:
    """The largest of `trials` Sharpe ratios expected from luck alone, given their variance (per period)."""
    return float(
        np.sqrt(variance)
        * ((1 - EULER_GAMMA) * stats.norm.ppf(1 - 1 / trials) + EULER_GAMMA * stats.norm.ppf(1 - 1 / (trials * np.e)))
    )


def probabilistic_sharpe(sharpe: float, benchmark: float, days: int, skew: float, kurtosis: float) -> float:
    """P(true Sharpe > benchmark) for a per-period Sharpe estimated on `days` returns with this skew and
    (non-excess) kurtosis."""
    spread = np.sqrt(1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2)
    return float(stats.norm.cdf((sharpe - benchmark) * np.sqrt(days - 1) / spread))


def significant(rank_ic_t: float, excess_low: float) -> bool:
    """Skill worth acting on: Rank IC t >= 2 and the 95% interval of the excess return (after cost) above 0."""
    return bool(rank_ic_t >= 2 and excess_low > 0)
