import numpy as np
import pandas as pd
import pytest

from data_prep import qlib_format
from data_prep.ingest import link_qlib_folder, write_qlib_folder
from data_prep.sources import read_bars, sample_bars_path
from pipeline.config import DataConfig
from tests.helpers import PLAIN_CSV, make_bars


def read_back(qlib_dir, universe, fields):
    """Read a folder through Qlib's own data API."""
    from qlib.data import D

    qlib_format.init_qlib(qlib_dir, region="us", kernels=1)  # no forked workers in a threaded test process
    instruments = D.instruments(universe)
    frame = D.features(instruments, [f"${f}" for f in fields], start_time="2000-01-01", end_time="2030-01-01")
    frame.columns = list(fields)
    return frame


def test_round_trip_through_qlib(tmp_path):
    bars = make_bars(n_symbols=4, n_days=30)
    bars = bars.drop(index=[3, 40])  # two missing days for two symbols
    bars.to_csv(tmp_path / "bars.csv", index=False)
    summary = write_qlib_folder(read_bars(tmp_path / "bars.csv", PLAIN_CSV)[0], tmp_path / "qlib", "test")
    assert summary.instruments == 4 and summary.days == 30 and summary.rows == len(bars)

    frame = read_back(tmp_path / "qlib", "test", ["open", "high", "low", "close", "volume", "amount", "factor"])
    expected = bars.assign(date=pd.to_datetime(bars["date"])).set_index(["symbol", "date"]).sort_index()
    got = frame.dropna(subset=["close"])
    assert len(got) == len(expected)
    for field in ("open", "high", "low", "close", "volume"):
        np.testing.assert_allclose(got[field].to_numpy(), expected[field].to_numpy(), rtol=1e-6)
    mean_price = expected[["open", "high", "low", "close"]].mean(axis=1)
    np.testing.assert_allclose(got["amount"].to_numpy(), (expected["volume"] * mean_price).to_numpy(), rtol=1e-5)
    assert (got["factor"] == 1).all()
    # a dropped day is NaN inside its series, not a shift of the later days
    dropped_day = pd.Timestamp(make_bars(n_symbols=4, n_days=30)["date"].iloc[3])
    assert np.isnan(frame.loc[("S000", dropped_day), "close"])


def test_missing_day_is_nan_in_binary_file(tmp_path):
    bars = make_bars(n_symbols=2, n_days=10).drop(index=4)  # S000's fifth day
    write_qlib_folder(read_bars_frame(bars, tmp_path), tmp_path / "qlib", "test")
    series = qlib_format.read_feature(qlib_format.feature_path(tmp_path / "qlib", "S000", "close"), 10)
    assert series.start_index == 0 and len(series.values) == 10
    assert np.isnan(series.values[4]) and np.isfinite(np.delete(series.values, 4)).all()


def read_bars_frame(bars, tmp_path):
    bars.to_csv(tmp_path / "in.csv", index=False)
    return read_bars(tmp_path / "in.csv", PLAIN_CSV)[0]


def test_future_calendar_extends_past_last_day(tmp_path):
    write_qlib_folder(read_bars_frame(make_bars(2, 15), tmp_path), tmp_path / "qlib", "test")
    days = (tmp_path / "qlib" / "calendars" / "day.txt").read_text().split()
    future = (tmp_path / "qlib" / "calendars" / "day_future.txt").read_text().split()
    assert future[: len(days)] == days and len(future) > len(days) and future[len(days)] > days[-1]


def test_embedded_sample_reads():
    bars = read_bars(sample_bars_path(), PLAIN_CSV)[0]
    assert bars["symbol"].nunique() == 524
    assert bars["date"].min() == pd.Timestamp("2009-08-21") and bars["date"].max() == pd.Timestamp("2010-08-20")


def test_folder_of_per_symbol_parquet_files_with_mapped_columns(tmp_path):
    bars = make_bars(n_symbols=3, n_days=12)
    folder = tmp_path / "bars"
    folder.mkdir()
    for symbol, rows in bars.groupby("symbol"):
        renamed = rows.drop(columns="symbol").rename(
            columns={"date": "Timestamp", "close": "Adj Close", "volume": "VOL"}
        )
        renamed.to_parquet(folder / f"{symbol}.parquet")
    loaded, _ = read_bars(folder, DataConfig(columns={"close": "adj close"}).bars_format())
    assert sorted(loaded["symbol"].unique()) == ["S000", "S001", "S002"]
    np.testing.assert_allclose(loaded["close"].to_numpy(), bars.sort_values(["symbol", "date"])["close"].to_numpy())


def test_integer_yyyymmdd_dates(tmp_path):
    bars = make_bars(n_symbols=1, n_days=5)
    bars["date"] = pd.to_datetime(bars["date"]).dt.strftime("%Y%m%d").astype(int)
    assert read_bars_frame(bars, tmp_path)["date"].iloc[0] == pd.Timestamp("2021-01-04")


def upper_case_copy(source, target):
    """A Qlib folder whose feature folders and files are named in upper case."""
    import shutil

    shutil.copytree(source, target)
    for folder in list((target / "features").iterdir()):
        for file in folder.iterdir():
            file.rename(folder / file.name.upper().replace(".DAY.BIN", ".day.bin"))
        folder.rename(folder.with_name(folder.name.upper()))


def test_existing_folder_with_upper_case_features_is_linked(tmp_path):
    bars = make_bars(n_symbols=3, n_days=20)
    write_qlib_folder(read_bars_frame(bars, tmp_path), tmp_path / "written", "test")
    upper_case_copy(tmp_path / "written", tmp_path / "upper")
    for folder in (tmp_path / "upper" / "features").iterdir():  # an existing folder without amount
        (folder / "AMOUNT.day.bin").unlink()
    (tmp_path / "upper" / "calendars" / "day_future.txt").unlink()

    summary = link_qlib_folder(tmp_path / "upper", tmp_path / "view", "test", None)
    assert summary.derived_fields == {"amount": 3}
    assert (tmp_path / "view" / "calendars" / "day_future.txt").is_file()
    original = read_back(tmp_path / "written", "test", ["close", "amount"])
    linked = read_back(tmp_path / "view", "test", ["close", "amount"])
    pd.testing.assert_frame_equal(original, linked, rtol=1e-6)


def test_percent_change_is_converted_in_the_view(tmp_path):
    write_qlib_folder(read_bars_frame(make_bars(2, 20), tmp_path), tmp_path / "written", "test")
    path = qlib_format.feature_path(tmp_path / "written", "S000", "change")
    fractional = qlib_format.read_feature(path, 20)
    qlib_format.write_feature(path, fractional.start_index, fractional.values * 100)

    summary = link_qlib_folder(tmp_path / "written", tmp_path / "view", "test", None)
    assert summary.derived_fields["change"] == 1  # only the symbol stored in percent
    fixed = qlib_format.read_feature(qlib_format.feature_path(tmp_path / "view", "S000", "change"), 20)
    np.testing.assert_allclose(fixed.values, fractional.values, atol=1e-6, equal_nan=True)


def test_link_does_not_touch_the_source(tmp_path):
    write_qlib_folder(read_bars_frame(make_bars(2, 20), tmp_path), tmp_path / "written", "test")
    before = sorted(
        (p.relative_to(tmp_path / "written"), p.stat().st_mtime_ns) for p in (tmp_path / "written").rglob("*")
    )
    link_qlib_folder(tmp_path / "written", tmp_path / "view", "test", None)
    after = sorted(
        (p.relative_to(tmp_path / "written"), p.stat().st_mtime_ns) for p in (tmp_path / "written").rglob("*")
    )
    assert before == after


@pytest.mark.parametrize("universe", ["csi300"])
def test_shared_a_share_folder_reads_through_qlib(tmp_path, universe):
    from tests.helpers import require_shared_data

    source = require_shared_data()
    summary = link_qlib_folder(source, tmp_path / "view", universe, None)
    assert summary.instruments == 462 and summary.days == 1215
    from qlib.data import D

    qlib_format.init_qlib(tmp_path / "view", region="cn", kernels=1)
    frame = D.features(["SH600000"], ["$close", "$change", "$amount"], start_time="2022-01-01", end_time="2022-12-30")
    close = frame["$close"].to_numpy()
    np.testing.assert_allclose(frame["$change"].to_numpy()[1:], close[1:] / close[:-1] - 1, atol=1e-4)
    assert (frame["$amount"] > 0).all()
