"""Chronos-2 as a zero-shot baseline (the `chronos-forecasting` package) and a distilled student.

    from models.chronos import fit, forecast          # the shared model interface

The package is an optional extra: `pip install -e ".[chronos]"`. Importing this module does not
need it; the functions that load or build models say how to install it when it is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.lazy import lazy_attributes

if TYPE_CHECKING:
    from models.chronos.api import fit, forecast

# Config keys a student may change; everything else is inherited from the teacher.
SIZE_KEYS = ("num_layers", "d_model", "d_ff", "num_heads", "d_kv", "dropout_rate")

__all__ = ["SIZE_KEYS", "fit", "forecast"]

__getattr__ = lazy_attributes(__name__, {"fit": "models.chronos.api", "forecast": "models.chronos.api"})
