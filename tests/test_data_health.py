"""Data health on every Qlib folder read, and one column per field in bars files.

Each damaged input is built for real: a Qlib folder written by the project's own writer and then
damaged, or a bars file with repeated columns. What would be read wrong is refused with a message
naming the file and the line or column; what is only incomplete is named in a warning.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import qlib_format
from data_prep.errors import DataError
from data_prep.ingest import link_qlib_folder, write_qlib_folder
from data_prep.panel import load_panel
from data_prep.sources import read_bars
from pipeline.config import DataConfig
from tests.helpers import PLAIN_CSV, make_bars, require_shared_data, run_split

FIELDS = ("open", "high", "low", "close", "volume", "amount")


def write_folder(tmp_path: Path, bars: pd.DataFrame, name: str = "qlib") -> Path:
    """Bars -> CSV -> the project's reader and Qlib writer; returns the folder (universe 'test')."""
    csv = tmp_path / f"{name}.csv"
    bars.to_csv(csv, index=False)
    write_qlib_folder(read_bars(csv, PLAIN_CSV)[0], tmp_path / name, "test")
    return tmp_path / name


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path, make_bars(n_symbols=4, n_days=30))  # 2021-01-04 .. 2021-02-12


def calendar_file(folder: Path) -> Path:
    return folder / "calendars" / "day.txt"


def edit_lines(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    change(lines)
    path.write_text("\n".join(lines) + "\n")


def health_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("data_prep")]


# --- the calendar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda lines: lines.insert(6, lines[5]),  # line 7 repeats line 6 (2021-01-11)
            "{file}: 1 day(s) appear more than once, which shifts every later bar by one day: "
            "line 7 repeats 2021-01-11 of line 6. Remove the duplicate line(s) 7",
        ),
        (
            lambda lines: lines.__setitem__(slice(4, 6), [lines[5], lines[4]]),  # 2021-01-08 and 2021-01-11 swapped
            "{file}: the days are not in increasing order, so bars would be read on the wrong dates: "
            "line 6 (2021-01-08) comes after line 5 (2021-01-11)",
        ),
        (
            lambda lines: lines.__setitem__(3, "2021-02-30"),
            "{file}: 1 line(s) are not dates (expected YYYY-MM-DD): line 4 '2021-02-30'",
        ),
    ],
    ids=["duplicate-day", "out-of-order", "invalid-date"],
)
def test_a_damaged_calendar_is_refused_with_its_line(folder, tmp_path, change, expected):
    edit_lines(calendar_file(folder), change)
    message = expected.format(file=calendar_file(folder))
    with pytest.raises(DataError) as raised:
        load_panel(folder, "test", FIELDS)
    assert message in str(raised.value)
    with pytest.raises(DataError) as raised:
        link_qlib_folder(folder, tmp_path / "view", "test", None)
    assert message in str(raised.value)


def test_an_invalid_calendar_line_is_one_message_from_the_command_line(folder, bars_csv, write_config, capsys):
    edit_lines(calendar_file(folder), lambda lines: lines.__setitem__(9, "2021-02-30"))
    config = write_config(bars_csv)
    assert run_split(config, "data.source=qlib", f"data.provider_uri={folder}") == 2
    output = " ".join(capsys.readouterr().out.split())
    assert f"{calendar_file(folder)}: 1 line(s) are not dates (expected YYYY-MM-DD): line 10 '2021-02-30'" in output
    assert "Traceback" not in output


def test_blank_lines_in_the_calendar_are_skipped_and_counted(folder):
    edit_lines(calendar_file(folder), lambda lines: lines.insert(2, ""))
    edit_lines(calendar_file(folder), lambda lines: lines.insert(8, lines[7]))  # line 9 repeats line 8
    with pytest.raises(DataError, match="line 9 repeats 2021-01-12 of line 8"):
        qlib_format.read_calendar(folder)


def test_a_future_calendar_that_drops_days_is_refused(folder, tmp_path):
    future = folder / "calendars" / "day_future.txt"
    edit_lines(future, lambda lines: lines.pop(3))
    with pytest.raises(DataError, match=re.escape(f"{future} lacks 1 day(s) of ") + ".*day.txt, e.g. 2021-01-07"):
        link_qlib_folder(folder, tmp_path / "view", "test", None)


# --- instruments ----------------------------------------------------------------------------


def test_instruments_without_a_feature_folder_are_named_and_left_out(folder, tmp_path, caplog):
    universe = folder / "instruments" / "test.txt"
    universe.write_text(universe.read_text() + "GONE1\t2021-01-04\t2021-02-12\nGONE2\t2021-01-04\t2021-02-12\n")
    with caplog.at_level(logging.WARNING):
        panel = load_panel(folder, "test", FIELDS)
    assert panel.instruments == ["S000", "S001", "S002", "S003"]
    assert (
        f"universe file {universe}: 2 of its 6 instruments have no folder under {folder / 'features'} "
        "(no data at all) and are left out: GONE1, GONE2"
    ) in health_warnings(caplog)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        link_qlib_folder(folder, tmp_path / "view", "test", None)
    assert any("are left out: GONE1, GONE2" in line for line in health_warnings(caplog))


def test_a_universe_without_any_feature_folder_is_refused(folder):
    universe = folder / "instruments" / "ghosts.txt"
    universe.write_text("GONE1\t2021-01-04\t2021-02-12\nGONE2\t2021-01-04\t2021-02-12\n")
    expected = f"universe file {universe}: none of its 2 instruments (GONE1, GONE2) has a folder under"
    with pytest.raises(DataError, match=re.escape(expected)):
        load_panel(folder, "ghosts", FIELDS)


def damage_close(folder: Path, symbol: str, make) -> None:
    path = qlib_format.feature_path(folder, symbol, "close")
    series = qlib_format.read_feature(path, 30)
    qlib_format.write_feature(path, series.start_index, make(series.values))


def test_all_nan_and_constant_closes_are_named_and_left_out(folder, tmp_path, caplog):
    damage_close(folder, "S001", lambda values: np.full_like(values, np.nan))
    damage_close(folder, "S003", lambda values: np.full_like(values, 12.5))
    with caplog.at_level(logging.WARNING):
        panel = load_panel(folder, "test", FIELDS)
    assert panel.instruments == ["S000", "S002"]
    assert len(panel.values) == 60 and panel.offsets.tolist() == [0, 30, 60]
    assert (
        f"universe 'test' in {folder}: 2 instrument(s) have no usable close (NaN on every day, or one constant value "
        "that cannot be normalised) and are left out of the panel: S001 (close is NaN on all 30 days), "
        "S003 (close is 12.5 on all 30 days with data)"
    ) in health_warnings(caplog)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        link_qlib_folder(folder, tmp_path / "view", "test", None)
    assert any(
        "will be left out of the panel: S001 (close is NaN on all 30 days), S003 (close is 12.5" in line
        for line in health_warnings(caplog)
    )


def test_a_universe_without_any_usable_close_is_refused(folder):
    for symbol in ("S000", "S001", "S002", "S003"):
        damage_close(folder, symbol, lambda values: np.full_like(values, np.nan))
    with pytest.raises(DataError, match="no instrument has a usable close, so the universe is empty: S000 "):
        load_panel(folder, "test", FIELDS)


# --- calendar days past the last data -------------------------------------------------------


def test_calendar_days_past_the_last_data_are_warned_about(tmp_path, caplog):
    bars = make_bars(n_symbols=3, n_days=30)
    last_days = sorted(bars["date"].unique())[-3:]  # 2021-02-10 .. 2021-02-12: rows kept, close missing
    bars.loc[bars["date"].isin(last_days), "close"] = np.nan
    folder = write_folder(tmp_path, bars)
    assert qlib_format.read_calendar(folder)[-1] == pd.Timestamp("2021-02-12")
    with caplog.at_level(logging.WARNING):
        load_panel(folder, "test", FIELDS)
    assert (
        f"{calendar_file(folder)} runs 3 trading day(s) past the last data: no instrument has data after 2021-02-09 "
        "(the calendar ends 2021-02-12)"
    ) in " ".join(health_warnings(caplog))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        link_qlib_folder(folder, tmp_path / "view", "test", None)
    assert any("runs 3 trading day(s) past the last data" in line for line in health_warnings(caplog))


# --- a healthy folder -----------------------------------------------------------------------


def test_a_healthy_folder_passes_without_warnings(folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        link_qlib_folder(folder, tmp_path / "view", "test", None)
        panel = load_panel(tmp_path / "view", "test", FIELDS)
    assert health_warnings(caplog) == []
    assert panel.instruments == ["S000", "S001", "S002", "S003"] and len(panel.calendar) == 30


def test_the_shared_csi300_folder_passes_the_health_checks(caplog):
    source = require_shared_data()
    with caplog.at_level(logging.WARNING):
        panel = load_panel(source, "csi300", ("open", "high", "low", "close", "volume"))
    assert len(panel.instruments) == 460 and len(panel.calendar) == 1215
    # the only finding: constituents the folder holds no data for (named, left out as before)
    warnings = health_warnings(caplog)
    assert len(warnings) == 1 and "13 of its 473 instruments have no folder under" in warnings[0], warnings


# --- one column per field in bars files -----------------------------------------------------


def with_extra_column(bars: pd.DataFrame, name: str, values) -> pd.DataFrame:
    extra = pd.DataFrame({name: values}, index=range(len(bars)))
    return pd.concat([bars.reset_index(drop=True), extra], axis=1)


@pytest.mark.parametrize(
    ("extra", "columns", "expected"),
    [
        (
            "close",
            {},
            "{file}: columns 'close' (column 6) and 'close' (column 8) both read as 'close': they carry the same "
            "name (pandas reads the repeat as 'close.1' and ignores it)",
        ),
        (
            "Close",
            {},
            "{file}: columns 'close' (column 6) and 'Close' (column 8) both read as 'close': they differ only in "
            "case or spaces",
        ),
    ],
    ids=["same-name", "case-only"],
)
def test_two_columns_for_one_field_are_refused(tmp_path, extra, columns, expected):
    bars = make_bars(n_symbols=2, n_days=10)
    path = tmp_path / "bars.csv"
    with_extra_column(bars, extra, bars["close"] * 1.1).to_csv(path, index=False)
    assert path.read_text().splitlines()[0].split(",")[7] == extra  # the file really holds both columns
    with pytest.raises(DataError) as raised:
        read_bars(path, DataConfig(columns=columns).bars_format())
    assert expected.format(file=path) in str(raised.value)


def test_an_explicit_mapping_reads_its_column_beside_one_named_like_the_field(tmp_path):
    bars = make_bars(n_symbols=2, n_days=10)
    path = tmp_path / "bars.csv"
    adjusted = (bars["low"] + bars["high"]) / 2  # another close, inside the day's range
    with_extra_column(bars, "Adj Close", adjusted).to_csv(path, index=False)  # the Yahoo layout
    read, _ = read_bars(path, DataConfig(columns={"close": "Adj Close"}).bars_format())
    np.testing.assert_allclose(np.sort(read["close"].to_numpy()), np.sort(adjusted.to_numpy()))


def test_a_repeated_column_in_a_parquet_file_is_refused(tmp_path):
    bars = make_bars(n_symbols=2, n_days=10)
    table = pa.Table.from_pandas(bars, preserve_index=False)
    table = table.append_column("close", pa.array(bars["close"] * 1.1))
    pq.write_table(table, tmp_path / "bars.parquet")
    with pytest.raises(DataError, match="columns 'close' \\(column 6\\) and 'close' \\(column 8\\) both read as"):
        read_bars(tmp_path / "bars.parquet", PLAIN_CSV)


def test_a_repeated_column_that_no_field_reads_is_fine(tmp_path):
    bars = make_bars(n_symbols=2, n_days=10)
    path = tmp_path / "bars.csv"
    with_extra_column(with_extra_column(bars, "note", "a"), "note", "b").to_csv(path, index=False)
    loaded, _ = read_bars(path, PLAIN_CSV)
    np.testing.assert_allclose(loaded["close"].to_numpy(), bars.sort_values(["symbol", "date"])["close"].to_numpy())
