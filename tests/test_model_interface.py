"""The shared model interface: package exports as upstream's, Forecast's scores and quantiles, and
the one writer of a source's files."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from models.interface import Forecast
from pipeline.signals import write_forecast
from strategies.signal_table import read_signal_table
from tests.helpers import TINY_PREDICTOR, TINY_TOKENIZER

DAYS = np.array(["2021-01-04", "2021-01-04", "2021-01-05"], dtype="datetime64[ns]")
INSTRUMENTS = np.array(["B", "A", "A"])


def test_kronos_imports_as_upstream_and_loads_torch_only_when_used(tmp_path):
    script = f"""
import sys
import models.kronos
assert "torch" not in sys.modules, "importing the package loaded torch"
from models.kronos import Kronos, KronosPredictor, KronosTokenizer
assert "torch" in sys.modules
Kronos(**{TINY_PREDICTOR!r}).save_pretrained({str(tmp_path / "predictor")!r})
KronosTokenizer(**{TINY_TOKENIZER!r}).save_pretrained({str(tmp_path / "tokenizer")!r})
predictor = KronosPredictor(
    Kronos.from_pretrained({str(tmp_path / "predictor")!r}),
    KronosTokenizer.from_pretrained({str(tmp_path / "tokenizer")!r}),
    device="cpu",
)
print(type(predictor).__name__)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "KronosPredictor"
    import models.kronos

    with pytest.raises(AttributeError, match="has no attribute 'Predictor'"):
        _ = models.kronos.Predictor


def test_scores_from_paths_quantiles_and_points():
    last_close = np.array([100.0, 50.0, 10.0])
    # two paths per series: each path's mean close over the horizon is exact below
    paths = np.array([[[101.0, 103.0], [99.0, 99.0]], [[50.0, 50.0], [55.0, 45.0]], [[11.0, 11.0], [12.0, 12.0]]])
    forecast = Forecast.from_paths(DAYS, INSTRUMENTS, paths, last_close)
    path_returns = np.array([[0.02, -0.01], [0.0, 0.0], [0.1, 0.2]])
    np.testing.assert_allclose(forecast.score, path_returns.mean(1))
    np.testing.assert_allclose(forecast.score_std, [0.015, 0.0, 0.05])
    # the empirical median of the horizon's last close over two paths is their midpoint
    np.testing.assert_allclose(forecast.return_quantiles([0.5])[:, 0], [0.01, -0.05, 0.15])

    levels = (0.1, 0.5, 0.9)
    quantiles = np.array([[[90.0, 90.0], [110.0, 110.0], [130.0, 130.0]]] * 3)  # (3, Q, 2); the median rises 10%
    crossed = quantiles[:, ::-1]  # a model that put its 10% above its 90%
    by_levels = Forecast.from_quantiles(DAYS, INSTRUMENTS, crossed, levels, np.full(3, 100.0))
    np.testing.assert_allclose(by_levels.score, 0.1)
    np.testing.assert_allclose(by_levels.score_std, 0.4 / (2 * 1.2816))
    np.testing.assert_allclose(by_levels.return_quantiles([0.3, 0.5]), [[0.0, 0.1]] * 3, atol=1e-12)

    point = np.stack([np.full((3, 2), 7.0), np.array([[104.0, 106.0], [45.0, 45.0], [10.0, 12.0]])], axis=-1)
    by_point = Forecast.from_point(DAYS, INSTRUMENTS, point, 1, last_close)
    np.testing.assert_allclose(by_point.score, [0.05, -0.1, 0.1])
    assert by_point.score_std is None and not by_point.has_quantiles and by_point.arrays() == {}


def test_one_writer_for_signal_table_quantiles_and_arrays(tmp_path):
    paths = np.random.default_rng(0).lognormal(np.log(100), 0.02, (3, 8, 4))
    forecast = Forecast.from_paths(DAYS, INSTRUMENTS, paths, np.full(3, 100.0))
    table = write_forecast(forecast, "demo", tmp_path)
    stored = read_signal_table(tmp_path / "signals" / "demo.parquet")
    pd.testing.assert_frame_equal(stored, table)
    # sorted by (datetime, instrument), each score still beside its own row
    assert list(zip(stored["datetime"].astype(str), stored["instrument"], strict=True)) == [
        ("2021-01-04", "A"),
        ("2021-01-04", "B"),
        ("2021-01-05", "A"),
    ]
    np.testing.assert_allclose(stored["score"], forecast.score[[1, 0, 2]])
    quantiles = pd.read_parquet(tmp_path / "quantiles" / "demo.parquet")
    np.testing.assert_allclose(quantiles["q0.5"], np.median(paths[:, :, -1] / 100 - 1, axis=1)[[1, 0, 2]])
    with np.load(tmp_path / "forecasts.npz") as saved:
        assert saved["close_paths"].shape == (3, 8, 4) and list(saved["instruments"]) == list(INSTRUMENTS)
        assert str(saved["decision_days"][2]) == "2021-01-05"
