"""Signal metrics, baselines, the two backtest engines and their agreement, bad signal files."""

import datetime as dt
import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from data_prep.errors import DataError
from data_prep.qlib_format import init_qlib
from data_prep.windows import Split
from evaluation.evaluate import clean_signals, run_in_processes
from evaluation.metrics import daily_ic, forward_returns, score_matrix, signal_metrics
from evaluation.qlib_backtest import qlib_topk_dropout
from evaluation.vbt_backtest import vbt_sweep, vbt_topk_dropout
from pipeline.config import BacktestConfig
from strategies.rules import rule_baseline
from strategies.signal_table import check_signal_table, make_signal_table
from strategies.topk import topk_dropout_orders
from tests.helpers import require_shared_data


def random_scores(close: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=close.shape), index=close.index, columns=close.columns).where(close.notna())


@pytest.fixture(scope="module")
def panel(tiny_split_dir):
    return Split.load(tiny_split_dir).panel


def test_ic_matches_an_independent_pandas_and_scipy_computation(panel):
    close = panel.field_frame("close").astype(float)
    scores = random_scores(close) + 3 * forward_returns(close, 4).fillna(0)  # some real signal
    returns = forward_returns(close, 4)
    pearson = scores.corrwith(returns, axis=1).dropna()
    spearman = pd.Series(
        {day: stats.spearmanr(scores.loc[day], returns.loc[day], nan_policy="omit")[0] for day in pearson.index}
    )
    np.testing.assert_allclose(daily_ic(scores, returns).loc[pearson.index], pearson, atol=1e-6)
    np.testing.assert_allclose(daily_ic(scores, returns, rank=True).loc[pearson.index], spearman, atol=1e-6)
    metrics = signal_metrics(scores, close, 4)
    assert metrics["ic"] == pytest.approx(pearson.mean(), abs=1e-6)
    assert metrics["icir"] == pytest.approx(pearson.mean() / pearson.std(), abs=1e-6)
    assert metrics["rank_ic"] == pytest.approx(spearman.mean(), abs=1e-6)


def test_alphalens_agrees_with_the_project_where_they_overlap(panel):
    from alphalens.performance import factor_information_coefficient

    from evaluation.factor_analysis import analyse, factor_data

    close = panel.field_frame("close").astype(float)
    scores = (random_scores(close, seed=5) + 3 * forward_returns(close, 4).fillna(0)).iloc[30:100]
    alphalens_ic = factor_information_coefficient(factor_data(scores, close, 4))["4D"]
    own = daily_ic(scores, forward_returns(close, 4), rank=True).reindex(alphalens_ic.index)
    np.testing.assert_allclose(alphalens_ic.to_numpy(), own.to_numpy(), atol=1e-6)  # the same Rank IC, day by day
    analysis = analyse(scores, close, 4)
    assert analysis.ic_by_period.loc[4] == pytest.approx(own.mean(), abs=1e-6)
    assert list(analysis.quantile_returns.index) == ["q1", "q2", "q3", "q4", "q5"]
    assert analysis.quantile_returns["q5"] > analysis.quantile_returns["q1"]  # the score holds real signal
    assert analysis.turnover.between(0, 1).all()
    tied = analyse(scores.round(1), close, 4)  # blocks of equal scores, as a tree model gives
    assert tied.ic_by_period.notna().all() and tied.quantile_returns.notna().all() and len(tied.quantile_returns) == 5


def test_rule_baselines_are_causal(panel):
    start, end = dt.date(2021, 3, 1), dt.date(2021, 4, 30)
    before = rule_baseline("momentum", panel, start, end)
    future = panel.values.copy()
    instrument = 0
    last_rows = slice(panel.offsets[instrument + 1] - 10, panel.offsets[instrument + 1])
    future[last_rows] *= 2  # change the last 10 days of one instrument
    changed = type(panel)(
        panel.instruments, panel.fields, panel.calendar, future, panel.offsets, panel.starts, panel.member
    )
    after = rule_baseline("momentum", changed, start, end)
    cutoff = panel.calendar[panel.starts[instrument] + panel.offsets[instrument + 1] - panel.offsets[instrument] - 10]
    early = before["datetime"] < cutoff
    pd.testing.assert_frame_equal(before[early], after[early])
    reversal = rule_baseline("reversal", panel, start, end)
    close = panel.field_frame("close")
    day, name = reversal.iloc[30][["datetime", "instrument"]]
    position = close.index.get_loc(day)
    assert reversal.iloc[30]["score"] == pytest.approx(
        -(close[name].iloc[position] / close[name].iloc[position - 5] - 1), rel=1e-5
    )


def test_topk_dropout_rule_limits_holdings_and_sells(panel):
    scores = random_scores(panel.field_frame("close"), seed=1).dropna(how="all")
    orders = topk_dropout_orders(scores, topk=3, n_drop=1)
    held = set()
    for _, row in orders.iterrows():
        sells, buys = set(row.index[row == 0]), set(row.index[row > 0])
        assert sells <= held and len(sells) <= 1 and not buys & held
        held = (held - sells) | buys
        assert len(held) <= 3


def pandas_topk_dropout_orders(scores: pd.DataFrame, topk: int, n_drop: int) -> pd.DataFrame:
    """Reference: the rule written with pandas, name by name, as Qlib's TopkDropoutStrategy does it."""
    orders = np.full(scores.shape, np.nan)
    column = {name: i for i, name in enumerate(scores.columns)}
    held: list[str] = []
    for day, (_, row) in enumerate(scores.iterrows()):
        ranked = row.dropna().sort_values(ascending=False)
        candidates = [name for name in ranked.index if name not in held][: max(n_drop + topk - len(held), 0)]
        combined = ranked.reindex(held + candidates).sort_values(ascending=False, na_position="last")
        worst = set(combined.index[-n_drop:]) if n_drop else set()
        sell = [name for name in held if name in worst]
        buy = candidates[: len(sell) + topk - len(held)]
        orders[day, [column[name] for name in sell]] = 0.0
        orders[day, [column[name] for name in buy]] = 1.0 / topk
        held = [name for name in held if name not in sell] + buy
    return pd.DataFrame(orders, index=scores.index, columns=scores.columns)


@pytest.mark.parametrize(("topk", "n_drop"), [(3, 1), (5, 2), (4, 0), (20, 5)])
def test_topk_dropout_orders_equal_the_pandas_rule_with_ties_and_gaps(topk, n_drop):
    rng = np.random.default_rng(topk + n_drop)
    scores = pd.DataFrame(
        rng.integers(0, 4, (60, 40)).astype(float), columns=[f"S{i:02d}" for i in range(40)]
    )  # many ties
    scores = scores.mask(rng.random(scores.shape) < 0.2)  # names without a score on some days, held ones among them
    pd.testing.assert_frame_equal(
        topk_dropout_orders(scores, topk, n_drop), pandas_topk_dropout_orders(scores, topk, n_drop)
    )


@pytest.mark.slow
def test_qlib_and_vectorbt_agree_without_limits(tiny_split_dir, panel, tmp_path):
    init_qlib(tiny_split_dir.parent / "qlib", "us", f"sqlite:///{tmp_path / 'mlflow.db'}", kernels=1)
    close = panel.field_frame("close").astype(float)
    scores = random_scores(close, seed=2).loc["2021-03-01":"2021-05-31"]
    settings = BacktestConfig(topk=3, n_drop=1, min_cost=0.0, limit_threshold=None, account=1e7).topk_settings()
    qlib_daily = qlib_topk_dropout(scores, settings, list(panel.instruments), scores.index[-1])
    vbt_daily = vbt_topk_dropout(scores, close, settings).reindex(qlib_daily.index)
    difference = (qlib_daily["return"] - vbt_daily["return"]).abs()
    print(
        f"daily return difference: mean {difference.mean():.2e}, max {difference.max():.2e}, "
        f"correlation {qlib_daily['return'].corr(vbt_daily['return']):.4f}"
    )
    assert qlib_daily["return"].corr(vbt_daily["return"]) > 0.95
    assert difference.mean() < 2e-3
    assert abs(qlib_daily["cost"].sum() - vbt_daily["cost"].sum()) < 0.5 * qlib_daily["cost"].sum()


@pytest.mark.slow
def test_engines_stay_close_under_a_share_price_limits_and_minimum_cost(tmp_path):
    """The CN configs' exchange (9.5% price limits, a minimum fee) on real CSI300 bars: vectorbt models
    neither, so the engines drift apart; this bounds by how much over half a year of momentum."""
    import yaml

    from data_prep.panel import load_panel
    from pipeline.config import REPO_ROOT

    qlib_dir = require_shared_data()
    init_qlib(qlib_dir, "cn", f"sqlite:///{tmp_path / 'mlflow.db'}", kernels=1)
    cn = yaml.safe_load((REPO_ROOT / "configs" / "cn_csi300.yaml").read_text())["backtest"]
    settings = BacktestConfig(**cn).topk_settings()
    assert settings.costs.min_cost > 0 and settings.limit_threshold == 0.095
    panel = load_panel(qlib_dir, "csi300", ("close",))
    scores_table = rule_baseline("momentum", panel, dt.date(2022, 1, 4), dt.date(2022, 6, 30))
    scores = score_matrix(scores_table)
    close = panel.field_frame("close").astype(float)
    qlib_daily = qlib_topk_dropout(scores, settings, "SH000300", scores.index[-1])
    vbt_daily = vbt_topk_dropout(scores, close, settings).reindex(qlib_daily.index)
    net = {"qlib": qlib_daily["return"] - qlib_daily["cost"], "vectorbt": vbt_daily["return"] - vbt_daily["cost"]}
    total = {engine: float((1 + daily).prod() - 1) for engine, daily in net.items()}
    correlation = net["qlib"].corr(net["vectorbt"])
    print(
        f"net return over the half year: qlib {total['qlib']:.2%}, vectorbt {total['vectorbt']:.2%}; "
        f"daily correlation {correlation:.3f}"
    )
    # measured: qlib -8.62%, vectorbt -9.92%, correlation 0.998 (2022-01..06, topk 50 / drop 5)
    assert correlation > 0.99
    assert abs(total["qlib"] - total["vectorbt"]) < 0.03


def qlib_backtest_unshared(scores: pd.DataFrame, settings, benchmark: list[str], end: pd.Timestamp) -> pd.DataFrame:
    """Qlib's backtest as its docs call it: an exchange and the benchmark built from settings for this run alone."""
    from qlib.backtest import backtest
    from qlib.contrib.strategy import TopkDropoutStrategy

    signal = scores.stack().rename("score").to_frame().rename_axis(["datetime", "instrument"])
    exchange = {
        "freq": "day",
        "limit_threshold": settings.limit_threshold,
        "deal_price": settings.deal_price,
        "open_cost": settings.costs.open_cost,
        "close_cost": settings.costs.close_cost,
        "min_cost": settings.costs.min_cost,
    }
    portfolio, _ = backtest(
        start_time=scores.index[0],
        end_time=end,
        benchmark=benchmark,
        account=settings.account,
        exchange_kwargs=exchange,
        strategy=TopkDropoutStrategy(
            signal=signal, topk=settings.topk, n_drop=settings.n_drop, hold_thresh=settings.hold_thresh
        ),
        executor={
            "class": "SimulatorExecutor",
            "module_path": "qlib.backtest.executor",
            "kwargs": {"time_per_step": "day", "generate_portfolio_metrics": True, "verbose": False},
        },
    )
    return portfolio["1day"][0][["return", "cost", "bench", "turnover"]].astype(float)


@pytest.mark.slow
def test_strategies_sharing_a_market_get_qlibs_own_results(tiny_split_dir, panel, tmp_path):
    from evaluation.qlib_backtest import market

    init_qlib(tiny_split_dir.parent / "qlib", "us", f"sqlite:///{tmp_path / 'mlflow.db'}", kernels=1)
    market.cache_clear()
    close = panel.field_frame("close").astype(float)
    settings = BacktestConfig(topk=3, n_drop=1, account=1e7).topk_settings()
    benchmark = list(panel.instruments)
    for seed in (7, 8):  # the second strategy reuses the first one's exchange and benchmark
        scores = random_scores(close, seed=seed).loc["2021-03-01":"2021-05-31"]
        shared = qlib_topk_dropout(scores, settings, benchmark, scores.index[-1])
        pd.testing.assert_frame_equal(
            shared, qlib_backtest_unshared(scores, settings, benchmark, scores.index[-1]), rtol=1e-12
        )
    assert market.cache_info().hits == 1 and market.cache_info().misses == 1


@pytest.mark.slow
def test_strategies_backtested_in_processes_equal_one_process(tiny_split_dir, panel, tmp_path):
    from pipeline.stages.backtest import evaluate_strategy

    close = panel.field_frame("close").astype(float)
    settings = BacktestConfig(topk=3, n_drop=1, account=1e7).topk_settings()
    jobs = []
    for seed in (4, 5, 6):
        scores = (
            random_scores(close, seed=seed)
            .loc["2021-03-01":"2021-05-31"]
            .stack()
            .rename_axis(["datetime", "instrument"])
            .rename("score")
            .reset_index()
        )
        table = make_signal_table(scores["datetime"], scores["instrument"], scores["score"], None, f"random {seed}")
        jobs.append(
            (
                table,
                f"random {seed}",
                close,
                4,
                settings,
                list(panel.instruments),
                pd.Timestamp("2021-05-31"),
                ((2, 3), (1,), (1.0,)),
            )
        )
    qlib_init = (tiny_split_dir.parent / "qlib", "us", f"sqlite:///{tmp_path / 'mlflow.db'}")
    alone = run_in_processes(jobs, evaluate_strategy, init_qlib, qlib_init, workers=1)
    side_by_side = run_in_processes(jobs, evaluate_strategy, init_qlib, qlib_init, workers=2)
    assert [evaluation.name for evaluation, _, _ in side_by_side] == [
        "random 4",
        "random 5",
        "random 6",
    ]  # job order kept
    for (one, sweep_one, returns_one), (other, sweep_other, returns_other) in zip(alone, side_by_side, strict=True):
        assert one.rows == other.rows
        for engine in ("qlib", "vectorbt"):
            pd.testing.assert_frame_equal(one.daily[engine], other.daily[engine])
        pd.testing.assert_frame_equal(sweep_one, sweep_other)
        pd.testing.assert_frame_equal(returns_one, returns_other)


def test_sweep_runs_every_combination(panel):
    close = panel.field_frame("close").astype(float)
    scores = random_scores(close, seed=3).loc["2021-03-01":"2021-05-31"]
    sweep, returns = vbt_sweep(
        scores, close, BacktestConfig(account=1e7).topk_settings(), topks=(2, 3), n_drops=(1, 2), costs=(0.0, 1.0)
    )
    assert len(sweep) == 8 and returns.shape == (len(scores), 8)
    np.testing.assert_allclose(sweep["ann_return_with_cost"], returns.mean() * 252)
    free, costly = sweep.xs(0.0, level="cost"), sweep.xs(1.0, level="cost")
    assert (free["final_value"].to_numpy() > costly["final_value"].to_numpy()).all()  # costs only subtract
    single, _ = vbt_sweep(
        scores, close, BacktestConfig(account=1e7).topk_settings(), topks=(3,), n_drops=(1,), costs=(1.0,)
    )
    assert single.loc[(3, 1, 1.0), "final_value"] == pytest.approx(sweep.loc[(3, 1, 1.0), "final_value"])
    alone = vbt_topk_dropout(scores, close, BacktestConfig(topk=3, n_drop=1, account=1e7).topk_settings())
    np.testing.assert_allclose(
        returns[(3, 1, 1.0)], alone["return"] - alone["cost"], atol=1e-12
    )  # a cell is the rule run alone


def test_sweep_reuses_the_single_runs_compiled_simulation(panel):
    """A fresh install compiles vectorbt's simulation per argument signature (seconds each): the
    sweep must call it with the types the single run used."""
    from vectorbt.portfolio.nb import simulate_from_orders_nb

    close = panel.field_frame("close").astype(float)
    scores = random_scores(close, seed=4).loc["2021-03-01":"2021-04-30"]
    settings = BacktestConfig(topk=3, n_drop=1, account=1e7).topk_settings()
    vbt_topk_dropout(scores, close, settings)
    compiled = set(simulate_from_orders_nb.signatures)
    vbt_sweep(scores, close, settings, topks=(2, 3), n_drops=(1,), costs=(0.0, 1.0))
    assert set(simulate_from_orders_nb.signatures) == compiled


def test_bad_signal_tables(panel, caplog):
    close = panel.field_frame("close")
    table = make_signal_table([close.index[40]] * 3, panel.instruments[:3], [0.1, np.nan, 0.3], None, "x")
    with pytest.raises(DataError, match=r"missing column\(s\) \['score'\]"):
        check_signal_table(table.drop(columns="score"), "bad.parquet")
    with pytest.raises(DataError, match="duplicate"):
        check_signal_table(pd.concat([table, table.iloc[:1]]), "bad.parquet")
    odd = pd.concat(
        [
            table,
            make_signal_table([pd.Timestamp("2035-01-02"), close.index[40]], ["S000", "NOPE"], [0.2, 0.2], None, "x"),
        ]
    )
    with caplog.at_level(logging.WARNING):
        kept = clean_signals(odd, "x", close.index, list(close.columns))
    assert len(kept) == 2
    assert "dropping 1 rows with NaN score" in caplog.text
    assert "dropping 1 rows with day outside the backtest calendar" in caplog.text
    assert "dropping 1 rows with instrument unknown to the data" in caplog.text
    with pytest.raises(DataError, match="no usable rows"):
        clean_signals(odd.iloc[1:2], "x", close.index, list(close.columns))


def test_score_matrix_round_trip(panel):
    close = panel.field_frame("close")
    table = make_signal_table(
        [close.index[5], close.index[5], close.index[6]], ["S000", "S001", "S000"], [1.0, 2.0, 3.0], None, "x"
    )
    matrix = score_matrix(table)
    assert matrix.loc[close.index[5], "S001"] == 2.0 and np.isnan(matrix.loc[close.index[6], "S001"])


def test_the_vectorbt_engine_names_the_settings_it_does_not_model():
    from evaluation.vbt_backtest import unmodelled

    assert unmodelled(BacktestConfig(min_cost=0.0).topk_settings()) == ""
    upstream = BacktestConfig(deal_price="open", hold_thresh=5, min_cost=5, limit_threshold=0.095).topk_settings()
    assert unmodelled(upstream) == (
        "deal_price open (it trades at the close), hold_thresh 5 (it may sell a name the day after buying it), "
        "min_cost 5, limit_threshold 0.095 (it trades at limit prices)"
    )
