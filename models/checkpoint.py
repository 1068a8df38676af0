"""Training progress to resume from: written atomically (a kill leaves the previous file whole), read
without unpickling code, and holding the random state of every device the training draws on."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from data_prep.errors import CheckpointError


def random_states() -> dict[str, Any]:
    """The generators a training draws from (dropout, sampling): the CPU's and every GPU's."""
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_random_states(saved: dict[str, Any]) -> None:
    # torch takes generator states on the CPU only, wherever the checkpoint was mapped to
    torch.set_rng_state(saved["torch_rng"].cpu())
    if saved.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in saved["cuda_rng"]])


def save_progress(path: Path, payload: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    partial.replace(path)


def load_progress(path: Path, device: torch.device | str) -> dict[str, Any]:
    try:  # never unpickle code from a cache folder someone may have handed over
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain values, so this pipeline's training did not "
            f"write it; it is not loaded. Delete {path} to start that training from scratch"
        ) from exc
