"""The walk-forward run on the local executor and on Ray, side by side in one invocation.

    python bench/scale_out.py [--config FILE] [--set key=value ...] [--slice N]

Each executor runs `python -m pipeline.run --stage backtest` cold in its own fresh cache and
MLflow store, as a user would start it. Prints the machine, each run's wall clock, every stage's
time summed over its instances (from the cache manifests), the instance-seconds per wall-second
(above 1: instances overlapped) and Ray's wall clock relative to the local one. Checks that both
wrote the same signal tables and says how closely their comparison figures agree (the Qlib
engine's accounting sums in another order when each strategy is its own task: last bits).

`--slice N` runs on the first N CSI300 members of the shared A-share folder (a quick figure);
without it the config's own data. Overrides apply to both runs, e.g. `--set threads=1` to let
two single-threaded instances share a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # bench/ and tests/ helpers, as for every script here


def run(workdir: Path, config: str, overrides: list[str], executor: str) -> float:
    command = [
        sys.executable, "-m", "pipeline.run", "--stage", "backtest", "--config", config, "--executor", executor,
        "--set", f"cache_dir={workdir / 'cache'}", f"tracking.uri=sqlite:///{workdir / 'mlruns' / 'mlflow.db'}",
        *overrides,
    ]  # fmt: skip
    started = time.perf_counter()
    with open(workdir / "log.txt", "w") as log:
        subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def outputs(workdir: Path) -> dict[str, pd.DataFrame]:
    (backtest,) = (workdir / "cache" / "backtest").glob("[0-9a-f]*")
    tables = {path.name: pd.read_parquet(path) for path in sorted((backtest / "signals").glob("*.parquet"))}
    return {**tables, "comparison.csv": pd.read_csv(backtest / "comparison.csv")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cn_csi300_walkforward.yaml")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    parser.add_argument("--slice", type=int, help="run on the first N CSI300 members of the shared folder")
    args = parser.parse_args()
    from bench.default_run import stage_seconds

    root = Path(tempfile.mkdtemp(prefix="scale-out-"))
    overrides = list(args.overrides)
    if args.slice:
        from tests.helpers import csi300_slice

        overrides.append(f"data.provider_uri={csi300_slice(root / 'qlib', args.slice)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; config {args.config}")
    print(f"overrides: {overrides}")
    walls, stages = {}, {}
    for executor in ("local", "ray"):
        workdir = root / executor
        workdir.mkdir()
        walls[executor] = run(workdir, args.config, overrides, executor)
        stages[executor] = stage_seconds(workdir / "cache")
        print(f"{executor}: {walls[executor]:.1f} s wall", flush=True)
    local, ray = (outputs(root / executor) for executor in ("local", "ray"))
    tables = [name for name in local if name.endswith(".parquet")]
    same_tables = local.keys() == ray.keys() and all(local[name].equals(ray[name]) for name in tables)
    numbers = local["comparison.csv"].select_dtypes("number").columns
    relative = (local["comparison.csv"][numbers] - ray["comparison.csv"][numbers]).abs() / (
        local["comparison.csv"][numbers].abs().clip(lower=1e-12)
    )
    table = pd.DataFrame(stages).fillna(0.0).round(1)
    table.loc["all instances"] = table.sum()
    table.loc["wall clock"] = pd.Series(walls).round(1)
    table.loc["instance-s per wall-s"] = (table.loc["all instances"] / pd.Series(walls)).round(2)
    print(table.to_string())
    print(f"ray / local wall clock: {walls['ray'] / walls['local']:.3f}")
    print(f"signal tables identical: {same_tables}; comparison figures agree to {relative.max().max():.1e} (relative)")
    print(f"logs and caches in {root}")


if __name__ == "__main__":
    main()
