"""Kronos signals throughput: the signals stage's forecast call at the scale of a CSI300 test year.

    python bench/kronos_signals.py [--device cpu|cuda] [--series 92000] [--batch-size 512] [--fp32] [--compile]

Random-weight Kronos-small and tokenizer-base, random-walk bars, context 90 -> 10 bars, 5 paths
per series at T 0.6 and top-p 0.9 with one seed per series, as `kronos_signals` forecasts every
(day, instrument): `KronosPredictor.forecast`, the tokenizer's encode and decode included (bf16
weights on a CUDA GPU with bf16 unless --fp32). Prints series/s, the time for `--series` series
and the GPU issue's target (one CSI300 test year, about 92,000 series, under 20 s). One warm-up
batch runs first, so CUDA start-up and kernel selection are not counted (with --compile, the
compiled decoding steps of `kronos.inference.compile_decoding`, a last batch of another size
compiles again inside the timed run, as it would in the stage). On a 2-core CPU use e.g.
--series 512.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from models.device import pick_device
from models.kronos.batches import time_features
from models.kronos.configs import KRONOS_SMALL, TOKENIZER_BASE
from models.kronos.generation import Sampling
from models.kronos.model import Kronos
from models.kronos.predictor import KronosPredictor
from models.kronos.tokenizer import KronosTokenizer

LOOKBACK, HORIZON, PATHS = 90, 10, 5
CSI300_YEAR_SERIES, TARGET_SECONDS = 92_000, 20.0


def random_bars(count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, LOOKBACK, 6) open, high, low, close, volume, amount of random walks."""
    close = 20 * np.exp(np.cumsum(rng.normal(0, 0.02, (count, LOOKBACK)), axis=1))
    open_ = close * np.exp(rng.normal(0, 0.005, close.shape))
    high, low = np.maximum(open_, close) * 1.01, np.minimum(open_, close) * 0.99
    volume = rng.lognormal(12, 0.5, close.shape)
    return np.stack([open_, high, low, close, volume, volume * close], axis=-1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--series", type=int, default=CSI300_YEAR_SERIES)
    parser.add_argument(
        "--batch-size", type=int, default=512, help="series per forward pass (kronos.inference.batch_size)"
    )
    parser.add_argument("--fp32", action="store_true", help="fp32 weights on a GPU too")
    parser.add_argument(
        "--compile", action="store_true", help="compiled decoding steps (kronos.inference.compile_decoding)"
    )
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    predictor = KronosPredictor(
        Kronos(**KRONOS_SMALL),
        KronosTokenizer(**TOKENIZER_BASE),
        device=device,
        bf16=False if args.fp32 else None,
        compile_decoding=args.compile,
    )
    rng = np.random.default_rng(0)
    bars = random_bars(args.series, rng)
    days = pd.bdate_range("2025-01-02", periods=LOOKBACK + HORIZON).values
    x_stamps, y_stamps = time_features(days[:LOOKBACK]), time_features(days[LOOKBACK:])
    sampling = Sampling(temperature=0.6, top_p=0.9)

    def run(count: int) -> float:
        started = time.perf_counter()
        predictor.forecast(
            list(bars[:count]),
            [x_stamps] * count,
            [y_stamps] * count,
            HORIZON,
            sampling,
            PATHS,
            list(range(count)),
            args.batch_size,
            verbose=True,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    run(min(args.batch_size, args.series))  # warm-up
    seconds = run(args.series)
    rate = args.series / seconds
    print(
        f"Kronos-small + tokenizer-base, random weights, {device}, "
        f"{'bf16' if predictor.dtype == torch.bfloat16 else 'fp32'} weights, "
        f"{'compiled' if args.compile else 'eager'} decoding steps, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"{args.series:,} series x {PATHS} paths, {LOOKBACK} -> {HORIZON}: {seconds:.2f} s, {rate:,.0f} series/s; "
        f"a CSI300 test year ({CSI300_YEAR_SERIES:,} series) at this rate: {CSI300_YEAR_SERIES / rate:.1f} s "
        f"(target {TARGET_SECONDS:.0f} s)"
    )


if __name__ == "__main__":
    main()
