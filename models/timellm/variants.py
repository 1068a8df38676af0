"""Time-LLM's variants, the full model and its two ablations, and the signal source each writes.

No torch here: the config validates variant names without loading the model.
"""

from __future__ import annotations

from typing import Literal

Variant = Literal["llm", "no_llm", "llm_to_attn"]
# llm: the full model; no_llm: the reprogrammed patches go straight to the head; llm_to_attn: one
# trainable self-attention layer where the language model was
VARIANTS: tuple[Variant, ...] = ("llm", "no_llm", "llm_to_attn")


def timellm_source(variant: str) -> str:
    """Signal source name of a variant: timellm, timellm_no_llm, timellm_llm_to_attn."""
    return "timellm" if variant == "llm" else f"timellm_{variant}"
