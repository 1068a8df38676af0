"""Kronos training throughput (windows/s) on CPU or GPU for the published mini-size models.

    python bench/train_kronos.py [--device cpu|cuda] [--predictor mini|small] [--steps 20] [--batch-size 32]
        [--lookback 90] [--horizon 10]

Trains tokenizer-base and then Kronos-mini or -small (on the tokenizer's ids) from scratch on the
embedded S&P 500 sample with the pipeline's own training loop (bf16 autocast on CUDA, batches
gathered on the device, fused AdamW), and prints windows per second for each, validation and
checkpoint writing included. The GPU issue's setting: --device cuda --predictor small --batch-size 256.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from pathlib import Path

import torch

from data_prep.ingest import write_qlib_folder
from data_prep.panel import load_panel
from data_prep.sources import read_bars, sample_bars_path
from data_prep.windows import Split, build_windows
from models.kronos.configs import KRONOS_MINI, KRONOS_SMALL, TOKENIZER_BASE
from models.kronos.model import Kronos
from models.kronos.tokenizer import KronosTokenizer
from models.kronos.training import PredictorTask, TokenizerTask, fit, init_world
from pipeline.config import DataConfig, KronosTrainConfig


def sample_split(folder: Path, lookback: int, horizon: int) -> Split:
    write_qlib_folder(read_bars(sample_bars_path(), DataConfig().bars_format())[0], folder / "qlib", "sp500")
    panel = load_panel(folder / "qlib", "sp500", ("open", "high", "low", "close", "volume", "amount"))
    segments = {
        "train": (dt.date(2009, 8, 21), dt.date(2010, 4, 30)),
        "valid": (dt.date(2010, 5, 1), dt.date(2010, 8, 20)),
    }
    windows, _ = build_windows(panel, lookback, horizon, segments)
    return Split(panel, windows, lookback, horizon)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--predictor", choices=["mini", "small"], default="mini")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lookback", type=int, default=90)
    parser.add_argument("--horizon", type=int, default=10)
    args = parser.parse_args()
    world = init_world(args.device)
    settings = KronosTrainConfig(
        epochs=1,
        steps_per_epoch=args.steps,
        batch_size=args.batch_size,
        val_windows=args.batch_size,
        random_context_share=0.0,
    ).settings(clip=5.0, seed=42, device=args.device, bf16=True)
    torch.manual_seed(0)
    print(
        f"device {world.device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"window {args.lookback}+{args.horizon}, {args.steps} steps"
    )
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        split = sample_split(scratch, args.lookback, args.horizon)
        train, valid = split.segment("train"), split.segment("valid")
        tokenizer = KronosTokenizer(**TOKENIZER_BASE)
        report = fit(TokenizerTask(), tokenizer, train, valid, settings, scratch / "tokenizer", world)
        print(
            f"tokenizer-base ({sum(p.numel() for p in tokenizer.parameters()) / 1e6:.1f}M): "
            f"{report['windows_per_second']:8.1f} windows/s"
        )
        predictor = Kronos(**{"mini": KRONOS_MINI, "small": KRONOS_SMALL}[args.predictor])
        report = fit(
            PredictorTask(tokenizer, teacher_forcing=False),
            predictor,
            train,
            valid,
            settings,
            scratch / "predictor",
            world,
        )
        print(
            f"Kronos-{args.predictor:<7}({sum(p.numel() for p in predictor.parameters()) / 1e6:.1f}M): "
            f"{report['windows_per_second']:8.1f} windows/s"
        )


if __name__ == "__main__":
    main()
