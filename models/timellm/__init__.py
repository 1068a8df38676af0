"""Time-LLM: a frozen language model reprogrammed for forecasting, and its ablations.

    from models.timellm import TimeLLM, TimeLLMConfig, VARIANTS
    from models.timellm import fit, forecast          # the shared model interface

The names load their modules (and torch) on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.lazy import lazy_attributes

if TYPE_CHECKING:
    from models.timellm.api import fit, forecast
    from models.timellm.model import VARIANTS, TimeLLM, TimeLLMConfig

_EXPORTS = {
    "TimeLLM": "models.timellm.model",
    "TimeLLMConfig": "models.timellm.model",
    "VARIANTS": "models.timellm.model",
    "fit": "models.timellm.api",
    "forecast": "models.timellm.api",
}
__all__ = ["VARIANTS", "TimeLLM", "TimeLLMConfig", "fit", "forecast"]

__getattr__ = lazy_attributes(__name__, _EXPORTS)
