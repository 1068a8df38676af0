"""Device choice shared by every model: an explicit name, or the best one present."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def pick_device(preference: str = "auto") -> torch.device:
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 pays off on CUDA and on CPUs with bf16 units (AVX512-BF16 / AMX); elsewhere it is slow."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on `device` when asked for, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def without_cudnn_attention(device: torch.device):
    """On CUDA, scaled_dot_product_attention without the cuDNN backend, which builds a plan per
    new shape (decoding meets a new key length at every token); a no-op context elsewhere."""
    if device.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def bf16_weights(module: torch.nn.Module) -> torch.nn.Module:
    """Cast a module's floating-point parameters to bf16 in place; buffers (rotary frequencies,
    bit place values) keep their dtype, so positions stay exact."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(torch.bfloat16)
    return module


def describe_failure(error: BaseException, limit: int = 200) -> str:
    """`Type: message` on one line, cut to `limit` characters, for a fallback's warning (compiler
    errors run to pages; the cause is often on the second line, as in BackendCompilerFailed)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    message = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."
