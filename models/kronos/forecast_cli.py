"""Forecast a shard of series in each process under torchrun; the caller merges the shards.

    torchrun --nproc_per_node N -m models.kronos.forecast_cli --inputs INPUTS.npz --out DIR --spec SPEC.json

INPUTS.npz holds `history` (S, T, 6), `x_stamps` (S, T, 5), `y_stamps` (S, H, 5) and `seeds` (S,).
Rank r forecasts series r, r + N, r + 2N, ... (on cuda:LOCAL_RANK when GPUs are used) and writes
DIR/shard_<r>.npz with their indices and sample paths. Per-series seeds make the result the same
however the series are sharded.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from models.kronos.generation import Sampling
from models.kronos.model import Kronos
from models.kronos.predictor import KronosPredictor
from models.kronos.tokenizer import KronosTokenizer


def load_predictor(spec: dict, device: str) -> KronosPredictor:
    """The predictor a forecast spec (the signals stage's) describes, on `device`."""
    return KronosPredictor(
        Kronos.from_pretrained(spec["predictor"]),
        KronosTokenizer.from_pretrained(spec["tokenizer"]),
        device=device,
        max_context=spec["max_context"],
        clip=spec["clip"],
        bf16=spec["bf16"],
        compile_decoding=spec["compile_decoding"],
        cuda_graphs=spec.get("cuda_graphs", True),  # no pipeline setting yet: on unless a spec says otherwise
    )


def forecast_shard(inputs: Path, out_dir: Path, spec: dict) -> Path:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = spec["device"]
    if device == "auto" and world > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    predictor = load_predictor(spec, device)
    data = np.load(inputs)
    index = np.arange(len(data["history"]))[rank::world]
    forecast = predictor.forecast(
        list(data["history"][index]),
        list(data["x_stamps"][index]),
        list(data["y_stamps"][index]),
        spec["pred_len"],
        Sampling(**spec["sampling"]),
        spec["sample_count"],
        data["seeds"][index].tolist(),
        spec["batch_size"],
        verbose=rank == 0,
    )
    shard = out_dir / f"shard_{rank}.npz"
    np.savez(shard, index=index, paths=forecast.paths)
    return shard


def merge_shards(out_dir: Path, count: int) -> np.ndarray:
    """Sample paths of all `count` series, in input order, from the shard files."""
    paths = None
    for shard in sorted(out_dir.glob("shard_*.npz")):
        part = np.load(shard)
        if paths is None:
            paths = np.empty((count, *part["paths"].shape[1:]), dtype=part["paths"].dtype)
        paths[part["index"]] = part["paths"]
    assert paths is not None, f"no shard_*.npz files in {out_dir}"  # every rank writes one
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args()
    forecast_shard(args.inputs, args.out, json.loads(args.spec.read_text()))


if __name__ == "__main__":
    main()
