"""The stage contract: declared reads are all a stage sees, declared outputs must exist, stages know
nothing of tracking."""

from __future__ import annotations

import ast
import dataclasses
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline import graph
from pipeline.config import PipelineConfig, load_config
from pipeline.contract import ConfigView, UndeclaredConfigRead
from pipeline.runner import StageContractError, run_pipeline

STAGE_MODULES = sorted((Path(graph.__file__).parent / "stages").glob("*.py"))


def test_the_view_shows_declared_keys_and_nothing_else():
    view = ConfigView(PipelineConfig(), ("split.test", "data", "seed"), "demo")
    assert view.seed == 42
    assert view.split.test == PipelineConfig().split.test
    assert view.data.region == "us" and view.data.fields == PipelineConfig().data.fields
    with pytest.raises(UndeclaredConfigRead, match="'split.lookback' without declaring it"):
        _ = view.split.lookback
    with pytest.raises(UndeclaredConfigRead, match="'backtest'"):
        _ = view.backtest
    with pytest.raises(AttributeError, match="read-only"):
        view.seed = 1
    with pytest.raises(ValidationError, match="frozen"):  # the declared sections themselves are frozen pydantic models
        view.data.region = "cn"


def test_a_stage_reading_an_undeclared_key_fails(bars_csv, write_config, monkeypatch):
    config = load_config(write_config(bars_csv, experiment="undeclared"))
    real = graph.STAGES["split"]

    def sneaky(config, inputs, out):
        _ = config.data.region  # split does not declare data.region: its cache key would not follow it
        return real.run(config, inputs, out)

    monkeypatch.setitem(graph.STAGES, "split", dataclasses.replace(real, run=sneaky))
    with pytest.raises(UndeclaredConfigRead, match="stage 'split' reads config key 'data.region'"):
        run_pipeline(config, "split")
    assert not any((config.cache_dir / "split").iterdir())  # nothing cached


def test_a_stage_that_skips_a_declared_output_fails_and_caches_nothing(bars_csv, write_config, monkeypatch):
    config = load_config(write_config(bars_csv, experiment="outputs"))
    real = graph.STAGES["split"]
    monkeypatch.setitem(
        graph.STAGES, "split", dataclasses.replace(real, outputs=(*real.outputs, "windows_per_week.png"))
    )
    with pytest.raises(
        StageContractError,
        match=r"'split' returned without writing its declared output\(s\) \['windows_per_week.png'\]",
    ):
        run_pipeline(config, "split")
    assert not any((config.cache_dir / "split").iterdir())


def test_every_declaration_names_real_keys_stages_and_sources():
    config = PipelineConfig()
    for stage in graph.STAGES.values():
        for key in stage.reads:
            config.section(key)  # raises KeyError on a key the config does not have
        for need in graph.needs(stage, config):
            assert list(graph.STAGES).index(need) < list(graph.STAGES).index(stage.name), (stage.name, need)
        assert stage.outputs_for(config), stage.name
    assert set(graph.SIGNAL_PRODUCERS) < set(graph.SIGNAL_SOURCES)
    assert set(graph.STAGE_ALIASES.values()) <= set(graph.STAGES)


def test_old_stage_names_still_run_with_a_notice(bars_csv, write_config, caplog):
    config = load_config(write_config(bars_csv, experiment="alias"))
    with caplog.at_level(logging.WARNING, logger="pipeline.graph"):
        assert [stage.name for stage in graph.plan("tokenizer", config)] == ["ingest", "split", "kronos_tokenizer"]
    assert "stage 'tokenizer' is now called 'kronos_tokenizer'" in caplog.text


@pytest.mark.parametrize("module", STAGE_MODULES, ids=lambda path: path.stem)
def test_stages_know_nothing_of_tracking_or_caching(module):
    tree = ast.parse(module.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {
        name
        for name in imported
        if name and (name.startswith("mlflow") or name in {"pipeline.tracking", "pipeline.runner", "pipeline.cache"})
    }
