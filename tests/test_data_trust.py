"""What real files contain, built here: each case is refused with a message naming the place, or read correctly."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
import pytest
import torch

from data_prep import qlib_format
from data_prep.errors import CheckpointError, DataError
from data_prep.ingest import link_qlib_folder, write_qlib_folder
from data_prep.sources import read_bars
from pipeline.config import DataConfig
from pipeline.run import main
from tests.helpers import PLAIN_CSV, cache_entries, make_bars, run_split


def message(capsys) -> str:
    return " ".join(capsys.readouterr().out.split())  # undo the console's line wrapping


def write_csv(tmp_path, bars: pd.DataFrame, name: str = "bars.csv", **options) -> pathlib.Path:
    path = tmp_path / name
    bars.to_csv(path, index=False, **options)
    return path


# --- symbols --------------------------------------------------------------------------------


def test_symbols_with_separators_stay_inside_the_folder_and_round_trip_through_qlib(tmp_path):
    bars = make_bars(n_symbols=4, n_days=30)
    bars["symbol"] = bars["symbol"].map({"S000": "../../x", "S001": "/tmp/x", "S002": "BF/B", "S003": ".."})
    out = tmp_path / "out"
    summary = write_qlib_folder(read_bars(write_csv(tmp_path, bars), PLAIN_CSV)[0], out / "qlib", "test")
    assert summary.encoded_symbols == 4
    written = {path.resolve() for path in tmp_path.rglob("*") if path.is_file()}
    assert all(path.is_relative_to(out.resolve()) or path.name == "bars.csv" for path in written)
    assert not (tmp_path / "x").exists() and not pathlib.Path("/tmp/x/close.day.bin").exists()
    codes = sorted(path.name for path in (out / "qlib" / "features").iterdir())
    assert codes == ["%2e%2e", "%2ftmp%2fx", "..%2f..%2fx", "bf%2fb"]
    mapping = pd.read_csv(out / "qlib" / "instruments" / qlib_format.SYMBOL_MAP, sep="\t")
    assert dict(zip(mapping["code"], mapping["symbol"], strict=True)) == {
        "%2E%2E": "..",
        "%2FTMP%2FX": "/TMP/X",
        "..%2F..%2FX": "../../X",
        "BF%2FB": "BF/B",
    }

    from qlib.data import D

    qlib_format.init_qlib(out / "qlib", region="us", kernels=1)  # no forked workers in a threaded test process
    frame = D.features(D.instruments("test"), ["$close"], start_time="2000-01-01", end_time="2030-01-01")
    assert set(frame.index.get_level_values("instrument")) == set(mapping["code"])


def test_a_qlib_folder_whose_instrument_list_names_a_path_is_refused(tmp_path):
    with pytest.raises(DataError, match="is not a plain folder name"):
        qlib_format.feature_path(tmp_path, "../../etc", "close")


def test_codes_keep_their_leading_zeros(tmp_path):
    bars = make_bars(n_symbols=2, n_days=20)
    bars["symbol"] = bars["symbol"].map({"S000": "000001", "S001": "600519"})
    loaded, _ = read_bars(write_csv(tmp_path, bars), PLAIN_CSV)
    assert sorted(loaded["symbol"].unique()) == ["000001", "600519"]


# --- dates ----------------------------------------------------------------------------------


def day_first(bars: pd.DataFrame) -> pd.DataFrame:
    return bars.assign(date=pd.to_datetime(bars["date"]).dt.strftime("%d/%m/%Y"))


def test_day_first_dates_where_some_day_exceeds_12_are_read_day_first(tmp_path):
    bars = make_bars(n_symbols=2, n_days=40)  # 2021-01-04 .. 2021-02-26: days above 12 settle the order
    loaded, _ = read_bars(write_csv(tmp_path, day_first(bars)), PLAIN_CSV)
    assert (loaded["date"].dt.dayofweek < 5).all()
    np.testing.assert_array_equal(np.sort(loaded["date"].unique()), np.sort(pd.to_datetime(bars["date"]).unique()))


def test_ambiguous_day_month_dates_are_refused_until_the_format_is_given(tmp_path, write_config, capsys):
    bars = make_bars(n_symbols=2, n_days=8)  # 2021-01-04 .. 2021-01-13: 04/01/2021 reads both ways
    bars = bars[pd.to_datetime(bars["date"]).dt.day <= 12]
    path = write_csv(tmp_path, day_first(bars))
    config = write_config(path)
    assert run_split(config) == 2
    output = message(capsys)
    assert (
        f"{path}: the date column ('04/01/2021', ...) reads both day-first and month-first; set data.date_format"
        in output
    )
    assert cache_entries(config) == []
    loaded, _ = read_bars(path, DataConfig(date_format="%d/%m/%Y").bars_format())
    assert loaded["date"].min() == pd.Timestamp("2021-01-04") and (loaded["date"].dt.dayofweek < 5).all()


def test_impossible_dates_in_overrides_and_files_are_config_errors(bars_csv, write_config, tmp_path, capsys):
    config = write_config(bars_csv)
    assert run_split(config, "split.test=[2010-13-01, 2010-12-31]") == 2
    assert "--set 'split.test=[2010-13-01, 2010-12-31]': the value cannot be read (month must be in 1..12)" in message(
        capsys
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("'2021-04-30'", "2021-13-30"))  # unquoted: a YAML date
    assert main(["--stage", "split", "--config", str(bad)]) == 2
    assert f"config file {bad} is not valid YAML: month must be in 1..12 (dates are YYYY-MM-DD)" in message(capsys)


def test_intraday_bars_are_refused_as_such(tmp_path, write_config, capsys):
    bars = make_bars(n_symbols=2, n_days=30)
    bars["date"] = pd.to_datetime(bars["date"]) + pd.Timedelta(hours=9, minutes=30)
    later = bars.assign(date=bars["date"] + pd.Timedelta(hours=1))
    config = write_config(write_csv(tmp_path, pd.concat([bars, later]).sort_values(["symbol", "date"])))
    assert run_split(config) == 2
    assert (
        "are intraday bars (one symbol at several times of a day): this pipeline takes daily bars; resample"
        in message(capsys)
    )


def test_daily_bars_with_a_time_of_day_are_daily(tmp_path):
    bars = make_bars(n_symbols=2, n_days=10)
    bars["date"] = bars["date"] + " 16:00:00"
    loaded, _ = read_bars(write_csv(tmp_path, bars), PLAIN_CSV)
    assert (loaded["date"] == loaded["date"].dt.normalize()).all() and loaded["date"].nunique() == 10


# --- file formats ---------------------------------------------------------------------------


def test_header_only_file_is_named(tmp_path, write_config, capsys):
    path = write_csv(tmp_path, make_bars().iloc[:0])
    assert run_split(write_config(path)) == 2
    assert f"{path} holds a header but no rows" in message(capsys)


def test_semicolon_files_get_the_delimiter_hint_and_then_read(tmp_path, write_config, capsys):
    bars = make_bars(n_symbols=3, n_days=30)
    path = write_csv(tmp_path, bars, sep=";", decimal=",")
    assert run_split(write_config(path)) == 2
    assert "is separated by ';', not ','. Set data.delimiter=';' (and data.decimal=','" in message(capsys)
    assert run_split(write_config(path), "data.delimiter=;") == 2
    assert "non-numeric open (numbers written like 12,5: set data.decimal=',')" in message(capsys)
    loaded, _ = read_bars(path, DataConfig(delimiter=";", decimal=",").bars_format())
    np.testing.assert_allclose(
        loaded.sort_values(["symbol", "date"])["close"], bars.sort_values(["symbol", "date"])["close"], rtol=1e-12
    )


# --- prices ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda b: b.loc.__setitem__((6, "close"), np.inf), "1 row(s) has an infinite value: {file} line 8"),
        (lambda b: b.loc.__setitem__((9, "close"), 1e12), "1 row(s) has a close outside [low, high]: {file} line 11"),
        (
            lambda b: b.loc.__setitem__((4, "open"), b.loc[4, "high"] * 2),
            "1 row(s) has an open more than 5% outside [low, high]: {file} line 6",
        ),
    ],
    ids=["inf", "close-above-high", "open-far-outside"],
)
def test_impossible_prices_are_refused(tmp_path, write_config, capsys, change, expected):
    bars = make_bars()
    change(bars)
    path = write_csv(tmp_path, bars)
    config = write_config(path)
    assert run_split(config) == 2
    assert expected.format(file=path) in message(capsys)
    assert cache_entries(config) == []


def test_jump_filter_rejects_a_spike_and_lists_it(tmp_path, caplog):
    bars = make_bars(n_symbols=2, n_days=30)
    bars.loc[12, ["open", "high", "low", "close"]] *= 1e6  # a misprinted day, consistent within its row
    path = write_csv(tmp_path, bars)
    kept, rejects = read_bars(path, PLAIN_CSV)
    assert len(kept) == len(bars) and rejects.count == 0  # off by default
    kept, rejects = read_bars(path, DataConfig(max_daily_move=0.21).bars_format())
    assert len(kept) == len(bars) - 1 and rejects.count == 1  # the spike only, not the return back from it
    assert rejects.places[0].startswith(f"{path} line 14 (symbol=S000, date=2021-01-20")
    assert "rejected as price jumps" in caplog.text


def test_missing_values_are_counted_at_ingest(tmp_path, write_config):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    bars = make_bars()
    bars.loc[[3, 30, 31], "volume"] = np.nan
    outcome = run_pipeline(load_config(write_config(write_csv(tmp_path, bars), experiment="missing")), "ingest")[0]
    assert any("3 rows with a missing price or volume kept as missing days" in line for line in outcome.summary)


# --- existing Qlib folders ------------------------------------------------------------------


@pytest.fixture
def qlib_source(tmp_path):
    write_qlib_folder(
        read_bars(write_csv(tmp_path, make_bars(n_symbols=3, n_days=40)), PLAIN_CSV)[0], tmp_path / "source", "test"
    )
    return tmp_path / "source"


def test_truncated_feature_file_is_named(qlib_source, tmp_path):
    close = qlib_format.feature_path(qlib_source, "S001", "close")
    close.write_bytes(close.read_bytes()[:-3])
    with pytest.raises(DataError, match=f"feature file {close} holds 161 bytes, not a whole number of float32 values"):
        link_qlib_folder(qlib_source, tmp_path / "view", "test", None)


def test_corrupt_start_index_is_named(qlib_source, tmp_path):
    close = qlib_format.feature_path(qlib_source, "S002", "close")
    values = np.fromfile(close, dtype="<f4")
    values[0] = 2_000_000
    values.tofile(close)
    with pytest.raises(
        DataError, match=f"feature file {close} starts at calendar index 2000000.0, outside the calendar's 40 days"
    ):
        link_qlib_folder(qlib_source, tmp_path / "view", "test", None)


def test_jump_filter_blanks_jump_days_in_a_linked_folder(qlib_source, tmp_path):
    close = qlib_format.feature_path(qlib_source, "S000", "close")
    values = np.fromfile(close, dtype="<f4")
    values[11] *= 100
    values.tofile(close)
    summary = link_qlib_folder(qlib_source, tmp_path / "view", "test", 0.21)
    assert summary.jump_rejects.count == 1 and "2021-01-18" in summary.jump_rejects.places[0]
    for field in ("open", "close", "volume", "change"):
        series = qlib_format.read_feature(qlib_format.feature_path(tmp_path / "view", "S000", field), 40)
        assert np.isnan(series.values[10]) and np.isfinite(series.values[9]) and np.isfinite(series.values[11]), field
    assert np.isfinite(np.fromfile(close, dtype="<f4")[11])  # the source folder is never modified


# --- checkpoints ----------------------------------------------------------------------------


class RunsCode:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_handed_over_checkpoint_is_never_unpickled(tiny_split_dir, tmp_path):
    from data_prep.windows import Split
    from models.kronos.tokenizer import KronosTokenizer
    from models.kronos.training import TokenizerTask, World, fit
    from tests.helpers import KRONOS_TRAIN_SETTINGS, TINY_TOKENIZER

    marker = tmp_path / "code_ran"
    out = tmp_path / "handed_over"
    out.mkdir()
    torch.save({"model": RunsCode(marker)}, out / "last.pt")
    split = Split.load(tiny_split_dir)
    with pytest.raises(CheckpointError, match="last.pt holds objects other than tensors and plain values"):
        fit(
            TokenizerTask(),
            KronosTokenizer(**TINY_TOKENIZER),
            split.segment("train"),
            split.segment("valid"),
            KRONOS_TRAIN_SETTINGS,
            out,
            World(),
        )
    assert not marker.exists()


# --- the cache and the tracking store -------------------------------------------------------


def test_a_cached_output_that_lost_a_file_is_produced_again(bars_csv, write_config):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    config = load_config(write_config(bars_csv, experiment="lost-file"))
    first = run_pipeline(config, "split")
    (first[1].output / "panel" / "offsets.npy").unlink()
    (first[0].output / "ingest_summary.json").write_text("{}")  # same folder, changed contents
    again = run_pipeline(config, "split")
    assert [o.reused for o in again] == [False, False]
    assert (again[1].output / "panel" / "offsets.npy").is_file()
    assert all(o.reused for o in run_pipeline(config, "split"))


@pytest.mark.slow
def test_two_first_runs_on_one_cache_and_a_new_store_share_the_work(bars_csv, write_config, tmp_path):
    import subprocess
    import sys

    config = write_config(
        bars_csv, experiment="concurrent", tracking={"uri": f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"}
    )
    command = [sys.executable, "-m", "pipeline.run", "--stage", "split", "--config", str(config)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    together = "\n".join(logs)
    assert together.count("stage split: running") == 1 and together.count("stage split: inputs unchanged, reusing") == 1


def test_a_cache_reused_against_another_store_logs_its_artifacts_there(bars_csv, write_config, tmp_path):
    import mlflow

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    path = write_config(bars_csv, experiment="switch")
    run_pipeline(load_config(path), "split")
    other_uri = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    switched = run_pipeline(load_config(path, [f"tracking.uri={other_uri}"]), "split")
    assert all(o.reused for o in switched)
    client = mlflow.MlflowClient(other_uri)
    producer = client.get_run(switched[1].produced_by)  # exists in the new store
    assert {"split.json", "windows_per_day.png"} <= {a.path for a in client.list_artifacts(producer.info.run_id)}
    assert producer.data.tags["first_produced_by_run_id"] != producer.info.run_id
    again = run_pipeline(load_config(path, [f"tracking.uri={other_uri}"]), "split")
    assert again[1].produced_by == switched[1].produced_by  # the manifest now names the run in this store


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("cache_dir={blocker}/cache", "cache_dir {blocker}/cache is not writable (Not a directory)"),
        (
            "tracking.uri={tmp}/plain-store",
            "tracking.uri '{tmp}/plain-store' is a plain path, which MLflow 3 does not take",
        ),
        (
            "tracking.uri=sqlite:///{blocker}/store/mlflow.db",
            "tracking.uri 'sqlite:///{blocker}/store/mlflow.db': cannot write to {blocker}/store",
        ),
    ],
    ids=["cache-not-writable", "plain-path-store", "store-not-writable"],
)
def test_unusable_cache_and_store_are_named(bars_csv, write_config, tmp_path, capsys, override, expected):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = write_config(bars_csv)
    assert run_split(config, override.format(blocker=blocker, tmp=tmp_path)) == 2
    assert expected.format(blocker=blocker, tmp=tmp_path) in message(capsys)
