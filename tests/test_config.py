import datetime as dt

import pytest

from data_prep.errors import ConfigError
from pipeline.config import PipelineConfig, load_config, parse_overrides
from pipeline.run import main


def test_default_config_is_the_embedded_sample():
    config = load_config()
    assert config.data.source == "sample"
    assert config.split.lookback == 60 and config.split.horizon == 5


def test_overrides_are_parsed_as_yaml():
    config = load_config(overrides=["split.test=[2010-07-01, 2010-08-20]", "split.lookback=30", "seed=7"])
    assert config.split.test == (dt.date(2010, 7, 1), dt.date(2010, 8, 20))
    assert config.split.lookback == 30
    assert config.seed == 7


def test_several_overrides_in_one_flag(tmp_path):
    config = load_config(overrides=["data.source=csv", f"data.path={tmp_path / 'x.csv'}"])
    assert config.data.source == "csv"
    assert config.data.path == tmp_path / "x.csv"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'split.lookbak'"):
        load_config(overrides=["split.lookbak=30"])


def test_csv_source_needs_a_path():
    with pytest.raises(ConfigError, match="data.path"):
        load_config(overrides=["data.source=csv"])


def test_segments_must_be_in_time_order():
    with pytest.raises(ConfigError, match="time order"):
        load_config(overrides=["split.valid=[2009-09-01, 2009-10-01]"])


def test_kronos_window_must_hold_the_horizon():
    with pytest.raises(ConfigError, match="kronos.inference.max_context is 5 but split.horizon is 5"):
        load_config(overrides=["kronos.inference.max_context=5"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lookback"])


def test_config_hash_changes_with_any_value():
    base = PipelineConfig()
    assert base.config_hash() == PipelineConfig().config_hash()
    assert base.config_hash() != PipelineConfig(seed=1).config_hash()


def test_cli_reports_unknown_key_with_exit_code(capsys):
    assert main(["--stage", "split", "--set", "data.sourc=csv"]) == 2
    assert "data.sourc" in capsys.readouterr().out


def test_paths_in_config_files_are_relative_to_the_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text("data: {source: csv, path: ../bars.csv}\n")
    config = load_config(tmp_path / "configs" / "run.yaml")
    assert config.data.path == (tmp_path / "bars.csv").resolve()
