"""A random Chronos-2 model saved to a folder, for tests and benchmarks without a download.

It has the published model's structure (patch 16, stride 16, [REG] token, arcsinh scaling, the
21 quantile levels) at a fraction of its width and depth, and loads through the same
`Chronos2Pipeline.from_pretrained` path as `amazon/chronos-2`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.chronos.forecasting import require_chronos

# The quantile levels of amazon/chronos-2; 0.1..0.9 must be among them for predict_quantiles.
QUANTILES = [
    0.01,
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.55,
    0.6,
    0.65,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.95,
    0.99,
]


# The size of amazon/chronos-2 (120M parameters), for benchmarks with random weights.
CHRONOS2_SIZE = {
    "d_model": 768,
    "d_ff": 3072,
    "num_layers": 12,
    "num_heads": 12,
    "context_length": 8192,
    "max_output_patches": 64,
}


def tiny_chronos2(
    folder: Path | str,
    d_model: int = 32,
    d_ff: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    context_length: int = 512,
    max_output_patches: int = 4,
    seed: int = 0,
) -> Path:
    """Build, save and return the folder of a random Chronos-2 model of the given size."""
    require_chronos()
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    config = Chronos2CoreConfig(
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        rope_theta=10000.0,
        architectures=["Chronos2Model"],
        chronos_pipeline_class="Chronos2Pipeline",
        chronos_config={
            "context_length": context_length,
            "input_patch_size": 16,
            "input_patch_stride": 16,
            "output_patch_size": 16,
            "max_output_patches": max_output_patches,
            "quantiles": QUANTILES,
            "use_reg_token": True,
            "use_arcsinh": True,
        },
    )
    torch.manual_seed(seed)
    Chronos2Model(config).save_pretrained(folder)
    return Path(folder)
