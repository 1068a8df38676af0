"""The README's first command, timed: `python -m pipeline.run --stage backtest` cold in a fresh
cache and MLflow store, then again fully cached.

    python bench/default_run.py [--set key=value ...] [--keep DIR] [--isa avx2]

Both runs are separate processes, as a user would start them, so start-up (imports, Qlib and
MLflow set-up) is counted. Prints every stage's own time (from its cache manifest), the cold
wall-clock total and the cached rerun's total. `--set` passes overrides to both runs, e.g.
`--set 'signals.sources=[kronos, momentum]'`; `--keep DIR` keeps the cache and store there.
`--isa avx2` runs both as on a CPU without AVX-512 and bf16 units (the issue's reference machine)
by capping the instruction sets of PyTorch's kernels, oneDNN and MKL: the pipeline then picks
fp32 and the int8 Time-LLM backbone as it would there. The clock and caches stay this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


# Environment variables that cap the instruction sets each library dispatches to.
ISA_CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def run_cli(workdir: Path, overrides: list[str], isa: str | None) -> float:
    """Run the backtest stage in `workdir` (its own cache and store); returns the wall-clock seconds."""
    command = [
        sys.executable,
        "-m",
        "pipeline.run",
        "--stage",
        "backtest",
        "--set",
        f"cache_dir={workdir / 'cache'}",
        f"tracking.uri=sqlite:///{workdir / 'mlruns' / 'mlflow.db'}",
        *overrides,
    ]
    started = time.perf_counter()
    subprocess.run(
        command, cwd=REPO_ROOT, check=True, env={**os.environ, **ISA_CAPS.get(isa, {}), "PYTHONPATH": str(REPO_ROOT)}
    )
    return time.perf_counter() - started


def stage_seconds(cache: Path) -> dict[str, float]:
    """Each stage's own run time, summed over its instances, from the manifests in the cache."""
    seconds: dict[str, float] = {}
    for manifest in sorted(cache.glob("*/*/_stage.json"), key=lambda path: path.stat().st_mtime):
        stage = manifest.parent.parent.name
        seconds[stage] = seconds.get(stage, 0.0) + json.loads(manifest.read_text())["metrics"]["seconds"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--keep", type=Path, help="keep the cache and MLflow store in this folder (default: a temporary one)"
    )
    parser.add_argument("--isa", choices=sorted(ISA_CAPS), help="cap the CPU instruction sets the libraries use")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="default-run-") as scratch:
        workdir = (args.keep or Path(scratch)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        cold = run_cli(workdir, args.overrides, args.isa)
        cached = run_cli(workdir, args.overrides, args.isa)
        stages = stage_seconds(workdir / "cache")
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"instruction sets: {args.isa or 'all'}; overrides: {args.overrides or 'none'}"
    )
    for stage, seconds in stages.items():
        print(f"  {stage:<18}{seconds:8.1f} s")
    print(f"  {'stages':<18}{sum(stages.values()):8.1f} s")
    print(f"cold run, wall clock:   {cold:8.1f} s ({cold / 60:.1f} min)")
    print(f"cached rerun:           {cached:8.1f} s")


if __name__ == "__main__":
    main()
