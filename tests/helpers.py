"""Builders the tests share: synthetic bars, quick training settings, tiny model sizes, the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.kronos.configs import KRONOS_MINI, TOKENIZER_BASE
from pipeline.config import DataConfig, KronosTrainConfig
from pipeline.run import main

SHARED_CSI300 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cn_csi300_2018_2022"
PLAIN_CSV = DataConfig().bars_format()  # comma-separated, ISO or unambiguous dates, no jump filter


def make_bars(n_symbols: int = 6, n_days: int = 80, seed: int = 0, start: str = "2021-01-04") -> pd.DataFrame:
    """Random-walk daily OHLCV bars in long format, valid by construction."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=n_days)
    frames = []
    for i in range(n_symbols):
        close = 20 * np.exp(np.cumsum(rng.normal(0, 0.02, n_days)))
        open_ = close * np.exp(rng.normal(0, 0.005, n_days))
        high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n_days))
        low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n_days))
        frames.append(
            pd.DataFrame(
                {
                    "date": dates.strftime("%Y-%m-%d"),
                    "symbol": f"S{i:03d}",
                    "open": open_,
                    "high": high,
                    "low": low,
                    "close": close,
                    "volume": rng.integers(1_000, 100_000, n_days).astype(float),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def require_shared_data() -> Path:
    if not (SHARED_CSI300 / "calendars" / "day.txt").is_file():
        pytest.skip(f"shared A-share data not found at {SHARED_CSI300} (see shared/data/README.md)")
    return SHARED_CSI300


def csi300_slice(folder: Path, count: int = 30, benchmark: str = "SH000300") -> Path:
    """A Qlib folder of `count` CSI300 members listed over the whole shared period (and the index),
    linked to the shared files: the real A-share data at a size a test can run."""
    source = require_shared_data()
    full_period = [
        line
        for line in (source / "instruments" / "csi300.txt").read_text().splitlines()
        if line.split("\t")[1:] == ["2018-01-02", "2022-12-30"]
        and (source / "features" / line.split("\t")[0].lower()).is_dir()
    ][:count]
    for name in ("instruments", "features"):
        (folder / name).mkdir(parents=True)
    (folder / "calendars").symlink_to(source / "calendars")
    (folder / "instruments" / "csi300.txt").write_text("\n".join(full_period) + "\n")
    # Qlib's exchange loads the market `all`: the members and the index
    index_line = f"{benchmark}\t2018-01-02\t2022-12-30"
    (folder / "instruments" / "all.txt").write_text("\n".join([*full_period, index_line]) + "\n")
    for code in [line.split("\t")[0] for line in full_period] + [benchmark]:
        (folder / "features" / code.lower()).symlink_to(source / "features" / code.lower())
    return folder


def csi300_data(folder: Path) -> dict:
    """The `data` section of a config on a csi300_slice folder."""
    return {
        "source": "qlib",
        "provider_uri": str(folder),
        "region": "cn",
        "instruments": "csi300",
        "benchmark": "SH000300",
    }


# Kronos training overrides that keep a pipeline test to seconds.
QUICK_KRONOS = [
    f"kronos.{part}.training.{key}={value}"
    for part in ("tokenizer", "predictor")
    for key, value in (
        ("epochs", 2),
        ("steps_per_epoch", 10),
        ("batch_size", 16),
        ("val_windows", 64),
        ("min_context", 6),
    )
]

# Kronos sizes small enough to train in a test.
TINY_TOKENIZER = dict(TOKENIZER_BASE, d_model=32, n_heads=2, ff_dim=64, s1_bits=4, s2_bits=4)
TINY_PREDICTOR = dict(KRONOS_MINI, d_model=32, n_heads=2, ff_dim=64, n_layers=2, s1_bits=4, s2_bits=4)

KRONOS_TRAIN_SETTINGS = KronosTrainConfig(
    epochs=2,
    steps_per_epoch=15,
    batch_size=16,
    lr=3e-3,
    val_windows=64,
    min_context=8,
    random_context_share=0.5,
    log_every=5,
).settings(clip=5.0, seed=42, device="auto", bf16=True)


def run_split(config_path, *overrides):
    return main(["--stage", "split", "--config", str(config_path), *(["--set", *overrides] if overrides else [])])


def cache_entries(config_path):
    """Every folder under the cache's stage folders, complete or temporary (the lock files are not outputs)."""
    cache = config_path.parent / "cache"
    return (
        sorted(p.relative_to(cache) for p in cache.glob("*/*") if p.parent.name != ".locks") if cache.exists() else []
    )


def tiny_config(backbone: str, variant: str = "llm", **overrides):
    """A Time-LLM small enough to train in a test, on the backbone folder `backbone`."""
    from models.timellm import TimeLLMConfig

    options = dict(
        seq_len=24,
        pred_len=4,
        variant=variant,
        backbone=backbone,
        llm_layers=2,
        patch_len=8,
        stride=4,
        d_model=8,
        d_ff=16,
        n_heads=2,
        num_tokens=32,
        dropout=0.0,
    )
    return TimeLLMConfig(**{**options, **overrides})
