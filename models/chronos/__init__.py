"""Chronos-2 as a zero-shot baseline (the `chronos-forecasting` package) and a distilled student.

The package is an optional extra: `pip install -e ".[chronos]"`. Importing this module does not
need it; the functions that load or build models say how to install it when it is missing.
"""

# Config keys a student may change; everything else is inherited from the teacher.
SIZE_KEYS = ("num_layers", "d_model", "d_ff", "num_heads", "d_kv", "dropout_rate")
