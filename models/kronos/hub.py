"""Hugging Face Hub save/load (`config.json` + `model.safetensors`) with strict key checking.

huggingface_hub's PyTorchModelHubMixin loads with strict=False by default, which silently
keeps random weights for any key a checkpoint lacks. Here a mismatch is an error that lists the
keys.
"""

from __future__ import annotations

import safetensors.torch
import torch
from huggingface_hub import PyTorchModelHubMixin

from data_prep.errors import CheckpointError


class StrictHubMixin(PyTorchModelHubMixin):
    @classmethod
    def _load_as_safetensor(cls, model, model_file: str, map_location: str, strict: bool):
        state = safetensors.torch.load_file(model_file, device=str(map_location))
        return cls._load_checked(model, state, model_file)

    @classmethod
    def _load_as_pickle(cls, model, model_file: str, map_location: str, strict: bool):
        state = torch.load(model_file, map_location=torch.device(map_location), weights_only=True)
        return cls._load_checked(model, state, model_file)

    @staticmethod
    def _load_checked(model, state: dict[str, torch.Tensor], source: str):
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not match {type(model).__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}. Check that config.json matches the weights."
            )
        model.load_state_dict(state, strict=True)
        model.eval()
        return model
