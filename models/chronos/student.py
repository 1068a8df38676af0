"""A smaller Chronos-2 built from the teacher's config.

Only the size changes (layers, width, feed-forward, heads); everything that defines the task is
inherited: patch size and stride, rotary theta, context length, quantile levels, [REG] token and
scaling. The student is therefore a `Chronos2Model` like any published one: it saves with
`save_pretrained` and loads with `Chronos2Pipeline.from_pretrained`.
"""

from __future__ import annotations

import copy

import torch

from models.chronos import SIZE_KEYS
from models.chronos.forecasting import require_chronos


def student_config(teacher_config, overrides: dict):
    """A copy of the teacher's `Chronos2CoreConfig` with the size overrides applied.

    The per-head width `d_kv` follows d_model / num_heads unless it is given.
    """
    unknown = sorted(set(overrides) - set(SIZE_KEYS))
    if unknown:
        raise ValueError(f"unknown Chronos-2 student key(s) {unknown}: choose from {list(SIZE_KEYS)}")
    config = copy.deepcopy(teacher_config)
    for key, value in overrides.items():
        setattr(config, key, value)
    if "d_kv" not in overrides:
        if config.d_model % config.num_heads:
            raise ValueError(f"student d_model {config.d_model} is not divisible by num_heads {config.num_heads}")
        config.d_kv = config.d_model // config.num_heads
    return config


def build_student(teacher, overrides: dict, seed: int):
    """A randomly initialised student (seeded) for the teacher `Chronos2Model`."""
    require_chronos()
    from chronos.chronos2 import Chronos2Model

    torch.manual_seed(seed)
    return Chronos2Model(student_config(teacher.config, overrides))


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
