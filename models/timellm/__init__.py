"""Time-LLM: a frozen language model reprogrammed for forecasting, and its ablations."""

from models.timellm.model import VARIANTS, TimeLLM, TimeLLMConfig

__all__ = ["VARIANTS", "TimeLLM", "TimeLLMConfig"]
