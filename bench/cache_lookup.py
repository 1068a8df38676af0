"""What verifying cached outputs costs: every manifest lookup hashes every file of the output.

    python bench/cache_lookup.py [--cache DIR] [--config FILE] [--stage NAME]

Times `StageCache.lookup` (sizes and content hashes of every file) on each complete output under
`--cache`. Without one, it first runs `--stage` (default: split) of `--config` (default: the CSI300
config, which needs its Qlib folder) into a temporary cache, then times that. Prints each output's
size and lookup time, the total, and the hashing rate on this machine.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from pipeline.cache import MANIFEST, StageCache

REPO_ROOT = Path(__file__).resolve().parents[1]


def time_lookups(cache_dir: Path) -> None:
    cache = StageCache(cache_dir)
    total_bytes, total_seconds = 0, 0.0
    print(f"{'output':<48}{'MB':>10}{'lookup s':>10}")
    for manifest in sorted(cache_dir.glob(f"*/*/{MANIFEST}")):
        folder = manifest.parent
        size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        started = time.perf_counter()
        found = cache.lookup(folder.parent.name, folder.name)
        seconds = time.perf_counter() - started
        assert found is not None, f"{folder} did not verify"
        total_bytes, total_seconds = total_bytes + size, total_seconds + seconds
        print(f"{folder.parent.name + '/' + folder.name:<48}{size / 1e6:>10.1f}{seconds:>10.3f}")
    print(f"{'all outputs':<48}{total_bytes / 1e6:>10.1f}{total_seconds:>10.3f}")
    if total_seconds:
        print(f"hashing rate: {total_bytes / 1e6 / total_seconds:.0f} MB/s on {platform.machine()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="a pipeline cache folder to verify (default: build one)")
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "cn_csi300.yaml"))
    parser.add_argument("--stage", default="split")
    args = parser.parse_args()
    if args.cache:
        time_lookups(args.cache)
        return
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    with tempfile.TemporaryDirectory() as folder:
        overrides = [f"cache_dir={folder}/cache", f"tracking.uri=sqlite:///{folder}/mlflow.db"]
        run_pipeline(load_config(args.config, overrides), args.stage)
        time_lookups(Path(folder) / "cache")


if __name__ == "__main__":
    main()
