"""Window index and splits: index arithmetic, purged segments, statistics from the past only."""

import datetime as dt

import numpy as np
import pytest

from data_prep.errors import DataError
from data_prep.ingest import write_qlib_folder
from data_prep.panel import Panel, load_panel
from data_prep.sources import validate_bars
from data_prep.windows import SEGMENTS, Split, build_windows, normalise
from tests.helpers import make_bars

FIELDS = ("open", "high", "low", "close", "volume", "amount")
SEGMENT_DATES = {
    "train": (dt.date(2021, 1, 1), dt.date(2021, 2, 28)),
    "valid": (dt.date(2021, 3, 1), dt.date(2021, 3, 31)),
    "test": (dt.date(2021, 4, 1), dt.date(2021, 4, 30)),
}


def panel_from(bars, tmp_path, universe="test") -> Panel:
    bars = bars.assign(_where="test", _line=range(len(bars)))
    write_qlib_folder(validate_bars(bars, None), tmp_path / "qlib", universe)
    return load_panel(tmp_path / "qlib", universe, FIELDS)


@pytest.fixture
def panel(tmp_path):
    return panel_from(make_bars(n_symbols=5, n_days=80), tmp_path)


def test_windows_are_views_of_the_panel(panel):
    windows, _ = build_windows(panel, 10, 3, SEGMENT_DATES)
    split = Split(panel, windows, 10, 3)
    train = split.segment("train")
    inputs, targets = train.get(np.arange(len(train)))
    assert inputs.shape == (len(train), 10, 6) and targets.shape == (len(train), 3, 6)
    instrument, end = train.index[17]
    series = panel.series(panel.instruments[instrument]).to_numpy()
    np.testing.assert_array_equal(inputs[17], series[end - 9 : end + 1])
    np.testing.assert_array_equal(targets[17], series[end + 1 : end + 4])


def test_no_target_reaches_into_the_next_segment(panel):
    lookback, horizon = 10, 3
    windows, _ = build_windows(panel, lookback, horizon, SEGMENT_DATES)
    split = Split(panel, windows, lookback, horizon)
    for name in SEGMENTS:
        segment = split.segment(name)
        dates = segment.dates(np.arange(len(segment)))
        start, end = (np.datetime64(d) for d in SEGMENT_DATES[name])
        decision, target = dates[:, lookback - 1], dates[:, lookback:]
        assert ((decision >= start) & (decision <= end)).all()
        assert (target <= end).all(), f"{name} target crosses its segment's end"
    # the purge is tight: a segment's last decision day is `horizon` trading days before its end
    valid = split.segment("valid")
    last_decision = valid.dates(np.arange(len(valid)))[:, lookback - 1].max()
    calendar = panel.calendar
    last_day = calendar[calendar <= np.datetime64(SEGMENT_DATES["valid"][1])][-1]
    assert calendar.get_loc(last_day) - calendar.get_loc(last_decision) == horizon


def test_normalised_inputs_ignore_the_future(panel):
    windows, _ = build_windows(panel, 10, 3, SEGMENT_DATES)
    segment = Split(panel, windows, 10, 3).segment("train")
    items = np.arange(len(segment))
    inputs, targets = segment.get(items)
    before, _, _, _ = normalise(inputs, targets)

    changed = targets.copy()
    changed[:, -1, :] *= 1000.0  # a wild future
    after, scaled_targets, _, _ = normalise(inputs, changed)
    np.testing.assert_array_equal(before, after)
    assert not np.allclose(scaled_targets, normalise(inputs, targets)[1])


def test_changing_a_future_value_in_the_panel_leaves_inputs_identical(tmp_path):
    bars = make_bars(n_symbols=2, n_days=80)
    first = panel_from(bars, tmp_path / "a")
    bars.loc[(bars["symbol"] == "S000") & (bars.index == 60), ["close", "high"]] *= 3
    second = panel_from(bars, tmp_path / "b")
    windows, _ = build_windows(first, 10, 3, SEGMENT_DATES)
    index = windows["train"]
    # every window whose decision day is before day 60 sees identical normalised inputs
    early = index[(index[:, 0] == 0) & (index[:, 1] < 60)]
    for panel_version in (first, second):
        assert len(Split(panel_version, {"train": early}, 10, 3).segment("train")) == len(early)
    a, _ = Split(first, {"train": early}, 10, 3).segment("train").get(np.arange(len(early)))
    b, _ = Split(second, {"train": early}, 10, 3).segment("train").get(np.arange(len(early)))
    np.testing.assert_array_equal(normalise(a)[0], normalise(b)[0])


def test_windows_with_missing_values_are_dropped_and_counted(tmp_path):
    bars = make_bars(n_symbols=3, n_days=80)
    bars = bars.drop(index=bars.index[(bars["symbol"] == "S001") & (bars.index % 80 == 30)])
    panel = panel_from(bars, tmp_path)
    windows, reports = build_windows(panel, 10, 3, SEGMENT_DATES)
    # every window of S001 whose input or target covers day 30, among those not purged
    last_train_day = int(np.searchsorted(panel.calendar, np.datetime64("2021-02-28"), "right")) - 1
    covering = [end for end in range(30 - 3, 30 + 10) if end + 3 <= last_train_day]
    assert reports["train"].missing_values == len(covering) == 10
    split = Split(panel, windows, 10, 3)
    for name in SEGMENTS:
        inputs, targets = split.segment(name).get(np.arange(len(split.segment(name))))
        assert np.isfinite(inputs).all() and np.isfinite(targets).all()


def test_universe_membership_limits_decision_days(tmp_path):
    panel = panel_from(make_bars(n_symbols=2, n_days=80), tmp_path)
    spans_path = tmp_path / "qlib" / "instruments" / "late.txt"
    spans_path.write_text("S000\t2021-03-15\t2021-04-30\nS001\t2021-01-04\t2021-04-30\n")
    late = load_panel(tmp_path / "qlib", "late", FIELDS)
    windows, reports = build_windows(late, 10, 3, SEGMENT_DATES)
    dates = Split(late, windows, 10, 3).segment("valid").dates(np.arange(len(windows["valid"])))
    s000 = windows["valid"][:, 0] == late.instruments.index("S000")
    assert (dates[s000, 9] >= np.datetime64("2021-03-15")).all()
    assert reports["train"].not_member > 0
    assert len(windows["train"]) < len(build_windows(panel, 10, 3, SEGMENT_DATES)[0]["train"])


def test_segment_without_windows_is_an_error(panel):
    dates = dict(SEGMENT_DATES, valid=(dt.date(2021, 3, 1), dt.date(2021, 3, 2)))
    with pytest.raises(DataError, match=r"split.valid = \[2021-03-01, 2021-03-02\] yields no window"):
        build_windows(panel, 10, 3, dates)


def test_split_round_trips_through_disk(panel, tmp_path):
    windows, _ = build_windows(panel, 10, 3, SEGMENT_DATES)
    Split(panel, windows, 10, 3).save(tmp_path / "split")
    loaded = Split.load(tmp_path / "split")
    np.testing.assert_array_equal(loaded.panel.values, panel.values)
    for name in SEGMENTS:
        np.testing.assert_array_equal(loaded.windows[name], windows[name])
    assert loaded.panel.calendar.equals(panel.calendar)


def test_forecast_windows_keep_the_last_days(panel):
    windows, _ = build_windows(panel, 10, 3, SEGMENT_DATES)
    split = Split(panel, windows, 10, 3)
    forecast = split.forecast_windows(*SEGMENT_DATES["test"])
    assert len(forecast) > len(split.segment("test"))
    last_decision = forecast.dates(np.arange(len(forecast)))[:, -1].max()
    assert last_decision == panel.calendar[-1]
    inputs, targets = forecast.get(np.arange(len(forecast)))
    assert inputs.shape[1:] == (10, 6) and targets.shape[1] == 0
