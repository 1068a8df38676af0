"""Cached Kronos decoding (DecodeStep; CUDA graphs on a GPU) against the full-recompute reference.

    python bench/kronos_inference.py [--device cpu|cuda] [--model small|mini|base] [--long-series 8]
        [--short-series 300] [--compile]

Random weights, the two settings of the Kronos GPU issue, each run by both samplers in one process:
  long:  `long-series` series, context 400 -> 120 bars, greedy (top_k = 1): tokens must be identical;
  short: `short-series` series x 5 paths, context 90 -> 10, T 0.6, top-p 0.9, per-path seeds (one
         CSI300 day at 300): both samplers invert the same uniforms, so tokens agree except where
         rounding moves a cumulative probability across a uniform, and the path differs from there
         on (seen on an AVX-512 CPU in fp32 for 1 of 100 paths with earlier uniforms; never with float64 weights).
Also prints the operators one decoded token calls (torch.profiler, CPU dispatch, top level and all).
`--compile` runs the cached sampler with compiled decoding steps (`kronos.inference.compile_decoding`)
and prints their operator count beside the eager one and the time of the first call, which compiles.
On a 2-core CPU use e.g. --short-series 20: the reference recomputes every window for every token.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from torch.profiler import ProfilerActivity, profile

from models.device import bf16_weights, pick_device, without_cudnn_attention
from models.kronos.configs import KRONOS_BASE, KRONOS_MINI, KRONOS_SMALL
from models.kronos.generation import CachedSampler, Sampling, generate_reference
from models.kronos.model import Kronos

MODELS = {"mini": KRONOS_MINI, "small": KRONOS_SMALL, "base": KRONOS_BASE}


def inputs(series: int, context: int, horizon: int, vocab: int, device: torch.device):
    generator = torch.Generator().manual_seed(series + context)
    s1, s2 = torch.randint(0, vocab, (2, series, context), generator=generator)
    steps = torch.arange(context + horizon)
    stamps = torch.stack(
        [torch.zeros_like(steps), torch.zeros_like(steps), steps % 5, steps % 28 + 1, steps % 12 + 1], -1
    )
    return s1.to(device), s2.to(device), stamps.expand(series, -1, -1).to(device)


def timed(function, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


def operators_per_token(model: Kronos, device: torch.device, compile: bool) -> dict[str, tuple[float, float]]:
    """(top-level, all) aten operators per decoded token, from two horizons' difference."""
    vocab = 2**model.s1_bits
    counts = {}
    for name in ("cached", "compiled", "reference") if compile else ("cached", "reference"):
        sampler = CachedSampler(model, 512, Sampling(top_k=1), compile=name == "compiled")
        per_horizon = []
        for horizon in (4, 12):
            s1, s2, stamps = inputs(2, 32, horizon, vocab, device)
            run = (
                functools.partial(generate_reference, model, s1, s2, stamps, horizon, 512, Sampling(top_k=1))
                if name == "reference"
                else functools.partial(sampler, s1, s2, stamps, horizon)
            )
            run()  # builds the DecodeStep (and its graphs) outside the count
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                run()
            events = [e for e in profiled.events() if e.name.startswith("aten::")]
            top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
            per_horizon.append((len(top), len(events)))
        counts[name] = tuple((b - a) / 8 for a, b in zip(*per_horizon, strict=True))
    return counts


def compare(
    label: str,
    model: Kronos,
    device,
    series: int,
    context: int,
    horizon: int,
    sampling: Sampling,
    samples: int,
    compile: bool,
) -> None:
    s1, s2, stamps = inputs(series, context, horizon, 2**model.s1_bits, device)
    seeds = list(range(series * samples)) if samples > 1 else None
    sampler = CachedSampler(model, 512, sampling, compile=compile)
    _, first_s = timed(
        lambda: sampler(s1, s2, stamps, horizon, seeds, samples), device
    )  # warm-up: buffers, CUDA graphs, kernels, compiles
    cached, cached_s = timed(lambda: sampler(s1, s2, stamps, horizon, seeds, samples), device)
    rows = (s1.repeat_interleave(samples, 0), s2.repeat_interleave(samples, 0), stamps.repeat_interleave(samples, 0))
    reference, reference_s = timed(lambda: generate_reference(model, *rows, horizon, 512, sampling, seeds), device)
    same = torch.stack([a == b for a, b in zip(cached, reference, strict=True)]).all(0).all(1)  # (paths,)
    print(
        f"{label:<6} {series} series x {samples} paths, {context} -> {horizon}, {sampling}: cached {cached_s:8.3f} s  "
        f"reference {reference_s:8.3f} s  speed-up {reference_s / cached_s:6.1f}x  "
        f"identical paths: {int(same.sum())}/{len(same)}  "
        f"(cached first call {first_s:.1f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights (what the signals stage uses on a CUDA GPU)")
    parser.add_argument("--long-series", type=int, default=8)
    parser.add_argument("--short-series", type=int, default=300)
    parser.add_argument(
        "--compile", action="store_true", help="compiled decoding steps (kronos.inference.compile_decoding)"
    )
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = Kronos(**MODELS[args.model]).to(device).eval()
    if args.bf16:
        bf16_weights(model)
    print(
        f"Kronos-{args.model}, random weights, {device}, {'bf16' if args.bf16 else 'fp32'} weights, "
        f"{'compiled' if args.compile else 'eager'} decoding steps, torch threads {torch.get_num_threads()}"
    )
    with without_cudnn_attention(device):
        for name, (top, total) in operators_per_token(model, device, args.compile).items():
            print(f"operators per decoded token, {name:<9}: {top:6.1f} top-level, {total:7.1f} with nested calls")
        compare("long", model, device, args.long_series, 400, 120, Sampling(top_k=1), 1, args.compile)
        compare(
            "short", model, device, args.short_series, 90, 10, Sampling(temperature=0.6, top_p=0.9), 5, args.compile
        )


if __name__ == "__main__":
    main()
