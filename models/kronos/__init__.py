"""Kronos: K-line tokenizer (BSQ) and autoregressive predictor, checkpoint-compatible upstream.

    from models.kronos import Kronos, KronosTokenizer, KronosPredictor   # as upstream's `from model import ...`
    from models.kronos import fit, forecast                              # the shared model interface

The names load their modules (and torch) on first use, so importing the package is cheap;
`models.kronos.configs` (model sizes) imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.lazy import lazy_attributes

if TYPE_CHECKING:
    from models.kronos.api import fit, forecast
    from models.kronos.model import Kronos
    from models.kronos.predictor import KronosPredictor
    from models.kronos.tokenizer import KronosTokenizer

_EXPORTS = {
    "Kronos": "models.kronos.model",
    "KronosTokenizer": "models.kronos.tokenizer",
    "KronosPredictor": "models.kronos.predictor",
    "fit": "models.kronos.api",
    "forecast": "models.kronos.api",
}
__all__ = ["Kronos", "KronosPredictor", "KronosTokenizer", "fit", "forecast"]

__getattr__ = lazy_attributes(__name__, _EXPORTS)
