"""Time-LLM forecasting on the CPU: the frozen backbone in fp32 against int8 dynamic quantisation,
on the same windows of the default run's test segment.

    python bench/timellm_forecast.py [--model DIR] [--days 5] [--batch 32]

`--model` is a trained Time-LLM folder (e.g. `<cache_dir>/timellm/<key>/models/timellm`); without
it a seeded, untrained model is used. Prints series/s for each precision, and how far the int8
forecasts move from the fp32 ones: the error in the model's normalised units, the correlation of
the scores (expected horizon return) and the overlap of each day's top 20.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from data_prep.ingest import write_qlib_folder
from data_prep.panel import load_panel
from data_prep.sources import read_bars, sample_bars_path
from data_prep.windows import Split, build_windows
from models.interface import expected_return
from models.timellm import TimeLLM, TimeLLMConfig
from models.timellm.backbone import int8_backbone, load_backbone
from models.timellm.training import forecast
from pipeline.config import PipelineConfig


def default_test_inputs(scratch: Path):
    """The default config's test-segment forecast inputs (every day and instrument), built as the split stage does."""
    config = PipelineConfig()
    bars, _ = read_bars(sample_bars_path(), config.data.bars_format())
    write_qlib_folder(bars, scratch / "qlib", config.data.instruments)
    panel = load_panel(scratch / "qlib", config.data.instruments, config.data.fields)
    segments = {"train": config.split.train, "valid": config.split.valid, "test": config.split.test}
    windows, _ = build_windows(panel, config.split.lookback, config.split.horizon, segments)
    split = Split(panel, windows, config.split.lookback, config.split.horizon)
    return split.forecast_inputs(*config.split.test)


def timed_forecast(model: TimeLLM, values: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    forecast(model, values[:batch], torch.device("cpu"), False, batch)  # warm-up: first-call allocations
    started = time.perf_counter()
    predicted = forecast(model, values, torch.device("cpu"), False, batch)
    return predicted, time.perf_counter() - started


def top_overlap(days: np.ndarray, a: np.ndarray, b: np.ndarray, k: int = 20) -> float:
    frame = pd.DataFrame({"day": days, "a": a, "b": b})
    shares = [
        len(set(group.nlargest(k, "a").index) & set(group.nlargest(k, "b").index)) / min(k, len(group))
        for _, group in frame.groupby("day")
    ]
    return float(np.mean(shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="trained Time-LLM folder (save_pretrained); default: seeded, untrained"
    )
    parser.add_argument(
        "--days", type=int, default=5, help="forecast every instrument on the first DAYS test days (default 5 of 46)"
    )
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        inputs = default_test_inputs(Path(scratch))
    rows = np.flatnonzero(np.isin(inputs.days, np.unique(inputs.days)[: args.days]))
    close = inputs.fields.index("close")
    values, days, last_close = inputs.values[rows][..., [close]], inputs.days[rows], inputs.last("close")[rows]
    split = PipelineConfig().split
    if args.model:
        saved = TimeLLM.from_pretrained(args.model).config  # the backbone at the depth the model was trained with
        backbone = load_backbone(saved.backbone, saved.llm_layers)
        model = TimeLLM.from_pretrained(args.model, backbone)
    else:
        config = TimeLLMConfig(seq_len=split.lookback, pred_len=split.horizon)
        backbone = load_backbone(config.backbone, config.llm_layers)
        torch.manual_seed(0)
        model = TimeLLM(config, backbone).eval()
    print(
        f"torch threads {torch.get_num_threads()}, {len(values)} series ({args.days} days), batch {args.batch}, "
        f"prompt {model.config.prompt!r}, "
        f"at most {model.prompt.max_length} prompt tokens + {model.n_patches} patches"
    )
    fp32, fp32_s = timed_forecast(model, values, args.batch)
    int8, int8_s = timed_forecast(model.with_backbone(int8_backbone(backbone)), values, args.batch)
    print(f"fp32 backbone: {len(values) / fp32_s:7.1f} series/s")
    print(f"int8 backbone: {len(values) / int8_s:7.1f} series/s  ({fp32_s / int8_s:.2f}x)")
    scale = values.std(axis=1, keepdims=True)  # the model's normalised units (RevIN std of the lookback)
    change = np.abs(int8 - fp32) / scale
    move = np.abs(fp32 - values[:, -1:]) / scale  # how far the fp32 forecast moves from the last close
    score_fp32 = expected_return(fp32[..., 0], last_close)
    score_int8 = expected_return(int8[..., 0], last_close)
    rank = (
        pd.DataFrame({"day": days, "a": score_fp32, "b": score_int8})
        .groupby("day")[["a", "b"]]
        .corr("spearman")
        .xs("a", level=1)["b"]
    )
    print(
        f"int8 - fp32 forecast, normalised units: mean |change| {change.mean():.4f}, max {change.max():.4f} "
        f"(the fp32 forecast moves {move.mean():.4f} from the last close)"
    )
    print(
        f"scores: Pearson {np.corrcoef(score_fp32, score_int8)[0, 1]:.4f}, daily Spearman mean {rank.mean():.4f} "
        f"(min {rank.min():.4f}), top-20 overlap per day {top_overlap(days, score_fp32, score_int8):.1%}"
    )


if __name__ == "__main__":
    main()
