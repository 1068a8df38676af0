"""Every kind of bad input: one clear message naming the place, exit code 2, nothing half-written."""

import sys

import pandas as pd
import pytest

from tests.helpers import cache_entries, make_bars, run_split


def corrupt(tmp_path, change):
    bars = make_bars()
    change(bars)
    path = tmp_path / "bad.csv"
    bars.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda b: b.drop(columns="volume", inplace=True), "missing required column(s) ['volume']"),
        (
            lambda b: b.loc.__setitem__((7, "date"), "2021-13-45"),
            "unparsable date (use YYYY-MM-DD, or set data.date_format): {file} line 9",
        ),
        (lambda b: b.loc.__setitem__((5, "date"), b.loc[4, "date"]), "repeats a (date, symbol) pair"),
        (
            lambda b: b.loc.__setitem__((11, "close"), 0.0),
            "non-positive price (open/high/low/close must be > 0): {file} line 13",
        ),
        (lambda b: b.loc.__setitem__((3, "high"), b.loc[3, "low"] / 2), "high < low: {file} line 5"),
        (lambda b: b.drop(index=b.index, inplace=True), "no rows"),
    ],
    ids=["missing-column", "bad-date", "duplicate-row", "non-positive-price", "high-below-low", "empty"],
)
def test_bad_bars_fail_cleanly(tmp_path, write_config, capsys, change, expected):
    path = corrupt(tmp_path, change)
    config = write_config(path)
    assert run_split(config) == 2
    output = " ".join(capsys.readouterr().out.split())  # undo the console's line wrapping
    assert expected.format(file=path) in output
    assert cache_entries(config) == []


def test_missing_file(tmp_path, write_config, capsys):
    config = write_config(tmp_path / "nowhere.csv")
    assert run_split(config) == 2
    assert f"bars file {tmp_path / 'nowhere.csv'} not found" in " ".join(capsys.readouterr().out.split())
    assert cache_entries(config) == []


def test_date_range_without_data(bars_csv, write_config, capsys):
    config = write_config(bars_csv)
    assert run_split(config, "split.test=[2030-01-01, 2030-02-01]") == 2
    assert "split.test = [2030-01-01, 2030-02-01] holds no trading day" in " ".join(capsys.readouterr().out.split())
    assert not [p for p in cache_entries(config) if p.parts[0] == "split"]


def test_window_longer_than_any_series(bars_csv, write_config, capsys):
    config = write_config(bars_csv)
    assert run_split(config, "split.lookback=500") == 2
    assert "longer than any series (the longest has 80 days)" in " ".join(capsys.readouterr().out.split())
    assert not [p for p in cache_entries(config) if p.parts[0] == "split"]


def test_unknown_config_key(bars_csv, write_config, capsys):
    config = write_config(bars_csv)
    assert run_split(config, "split.horizn=5") == 2
    assert "unknown key 'split.horizn'" in capsys.readouterr().out
    assert cache_entries(config) == []


def test_empty_universe_in_existing_qlib_folder(tmp_path, bars_csv, write_config, capsys):
    config = write_config(bars_csv)
    assert run_split(config) == 0
    ingest_output = next((tmp_path / "cache" / "ingest").iterdir())
    qlib_dir = tmp_path / "copied"
    import shutil

    shutil.copytree(ingest_output / "qlib", qlib_dir)
    (qlib_dir / "instruments" / "empty.txt").write_text("")
    assert run_split(config, "data.source=qlib", f"data.provider_uri={qlib_dir}", "data.instruments=empty") == 2
    assert "lists no instruments: the universe is empty" in capsys.readouterr().out


def test_unknown_universe_lists_the_available_ones(tmp_path, bars_csv, write_config, capsys):
    config = write_config(bars_csv)
    assert run_split(config) == 0
    qlib_dir = next((tmp_path / "cache" / "ingest").iterdir()) / "qlib"
    assert run_split(config, "data.source=qlib", f"data.provider_uri={qlib_dir}", "data.instruments=csi500") == 2
    assert "set data.instruments to one of ['all', 'test']" in " ".join(capsys.readouterr().out.split())


def test_non_numeric_price_names_the_line(tmp_path, write_config, capsys):
    bars = make_bars().astype({"open": object})
    bars.loc[2, "open"] = "n/a?"
    path = tmp_path / "bad.csv"
    bars.to_csv(path, index=False)
    assert run_split(write_config(path)) == 2
    assert f"non-numeric open: {path} line 4" in " ".join(capsys.readouterr().out.split())


def test_parquet_rows_are_named_as_rows(tmp_path, write_config, capsys):
    bars = make_bars()
    bars.loc[0, "low"] = bars.loc[0, "high"] * 2
    bars.to_parquet(tmp_path / "bad.parquet")
    assert run_split(write_config(tmp_path / "bad.parquet")) == 2
    assert f"{tmp_path / 'bad.parquet'} row 1" in " ".join(capsys.readouterr().out.split())
    pd.read_parquet(tmp_path / "bad.parquet")  # the input itself is untouched


def test_asking_for_ray_without_it_names_the_install_command(monkeypatch, bars_csv, write_config, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when the extra is not installed
    assert run_split(write_config(bars_csv), "executor=ray") == 2
    assert 'executor: ray needs Ray, which is not installed: pip install -e ".[ray]"' in capsys.readouterr().out
