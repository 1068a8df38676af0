"""Cached Kronos sampling against the full-recompute reference, on CPU.

    python bench/kronos_inference.py [--batch 8] [--context 400] [--horizon 120] [--max-context 512]

Random-weight Kronos-small (the issue's setting), then Kronos-mini at context 90 / horizon 10
(the backtest setting). Greedy decoding (top_k = 1), so both samplers must return identical
tokens; prints both times and the speed-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from models.kronos.configs import KRONOS_MINI, KRONOS_SMALL
from models.kronos.generation import Sampling, generate_cached, generate_reference
from models.kronos.model import Kronos


def compare(name: str, config: dict, batch: int, context: int, horizon: int, max_context: int) -> None:
    torch.manual_seed(0)
    model = Kronos(**config).eval()
    vocab = 2 ** config["s1_bits"]
    s1, s2 = torch.randint(0, vocab, (2, batch, context))
    steps = torch.arange(context + horizon)
    stamps = torch.stack([torch.zeros_like(steps), torch.zeros_like(steps), steps % 5, steps % 28 + 1, steps % 12 + 1], -1)
    stamps = stamps.expand(batch, -1, -1)
    greedy = Sampling(top_k=1)
    timings = {}
    for label, sampler in (("cached", generate_cached), ("reference", generate_reference)):
        started = time.perf_counter()
        timings[label] = (sampler(model, s1, s2, stamps, horizon, max_context, greedy), time.perf_counter() - started)
    (cached, cached_s), (reference, reference_s) = timings["cached"], timings["reference"]
    same = all(torch.equal(a, b) for a, b in zip(cached, reference))
    print(f"{name:<12} batch {batch} context {context} horizon {horizon} max_context {max_context}: "
          f"cached {cached_s:7.2f} s  reference {reference_s:7.2f} s  speed-up {reference_s / cached_s:5.1f}x  "
          f"identical greedy tokens: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=400)
    parser.add_argument("--horizon", type=int, default=120)
    parser.add_argument("--max-context", type=int, default=512)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    compare("Kronos-small", KRONOS_SMALL, args.batch, args.context, args.horizon, args.max_context)
    compare("Kronos-mini", KRONOS_MINI, args.batch, 90, 10, args.max_context)


if __name__ == "__main__":
    main()
