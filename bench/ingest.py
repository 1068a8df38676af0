"""Ingestion throughput: CSV -> validated bars -> Qlib binary folder.

    python bench/ingest.py [--symbols 500] [--years 10]

Measures the embedded S&P 500 sample and a generated long-format CSV (default 500 symbols x
10 years of business days). Target: the 500 x 10-year CSV in under 20 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.ingest import write_qlib_folder
from data_prep.sources import read_bars, sample_bars_path
from pipeline.config import DataConfig


def generate_csv(path: Path, n_symbols: int, years: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2010-01-04", periods=252 * years)
    n_days = len(dates)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (n_symbols, n_days)), axis=1))
    open_ = close * np.exp(rng.normal(0, 0.005, close.shape))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, close.shape))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, close.shape))
    frame = pd.DataFrame(
        {
            "date": np.tile(dates.strftime("%Y-%m-%d"), n_symbols),
            "symbol": np.repeat([f"SYM{i:04d}" for i in range(n_symbols)], n_days),
            "open": open_.ravel().round(4),
            "high": high.ravel().round(4),
            "low": low.ravel().round(4),
            "close": close.ravel().round(4),
            "volume": rng.integers(1_000, 1_000_000, n_symbols * n_days),
        }
    )
    frame.to_csv(path, index=False)
    return len(frame)


def measure(label: str, csv_path: Path, out_dir: Path) -> None:
    started = time.perf_counter()
    bars = read_bars(csv_path, DataConfig().bars_format())[0]
    read_seconds = time.perf_counter() - started
    summary = write_qlib_folder(bars, out_dir, "bench")
    total = time.perf_counter() - started
    print(
        f"{label:<28} {summary.rows:>10,} rows  {summary.instruments:>4} symbols  "
        f"read+validate {read_seconds:6.2f} s  write {total - read_seconds:6.2f} s  "
        f"total {total:6.2f} s  {summary.rows / total:>12,.0f} rows/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--years", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        measure("embedded S&P 500 sample", sample_bars_path(), scratch / "sample")
        generated = scratch / "generated.csv"
        started = time.perf_counter()
        rows = generate_csv(generated, args.symbols, args.years)
        print(
            f"(generated {rows:,} rows, {generated.stat().st_size / 1e6:.0f} MB "
            f"in {time.perf_counter() - started:.1f} s)"
        )
        measure(f"generated {args.symbols} x {args.years}y CSV", generated, scratch / "generated")


if __name__ == "__main__":
    main()
