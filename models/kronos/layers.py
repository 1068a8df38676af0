"""Transformer building blocks shared by the Kronos tokenizer and predictor.

Parameter and buffer names follow the published Kronos checkpoints (norm1, self_attn.q_proj,
self_attn.rotary.inv_freq, ffn.w1, ...), so their state dicts load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One operator (a fused kernel on CUDA); it normalises in float32 whatever x's dtype.
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Rotary positions: a cos/sin table that grows on demand, so there is no maximum length."""

    inv_freq: torch.Tensor  # registered buffer

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self._cos: torch.Tensor | None = None  # (positions, head_dim), not saved
        self._sin: torch.Tensor | None = None

    def _tables(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos is None or self._cos.shape[0] < size or self._cos.device != self.inv_freq.device:
            size = max(size, 2 * (0 if self._cos is None else self._cos.shape[0]), 256)
            angles = torch.arange(size, device=self.inv_freq.device, dtype=self.inv_freq.dtype)[:, None] * self.inv_freq
            angles = torch.cat([angles, angles], dim=-1)
            self._cos, self._sin = angles.cos(), angles.sin()
        assert self._sin is not None  # set together with _cos
        return self._cos, self._sin

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, heads, T, head_dim); positions: (T,) or (B, T) integer positions."""
        cos_table, sin_table = self._tables(int(positions.max()) + 1)
        cos, sin = cos_table[positions].to(x.dtype), sin_table[positions].to(x.dtype)  # (..., T, head_dim)
        if cos.dim() == 3:  # per-sequence positions: (B, T, D) -> (B, 1, T, D)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-second, first], dim=-1) * sin


def attention_mask(
    query_positions: torch.Tensor, key_positions: torch.Tensor, key_padding: torch.Tensor | None
) -> torch.Tensor | None:
    """Boolean mask (True = may attend) for causal attention with optional key padding.

    query_positions (Tq,), key_positions (Tk,): a query attends to keys at or before its position.
    key_padding (B, Tk): nonzero where a key is padding. A query always keeps itself (or its
    latest key), so padded rows never produce NaN.
    """
    mask = key_positions[None, :] <= query_positions[:, None]  # (Tq, Tk)
    if key_padding is None:
        return mask
    mask = mask[None, None] & ~key_padding.bool()[:, None, None, :]  # (B, 1, Tq, Tk)
    diagonal = key_positions[None, :] == query_positions[:, None]
    return mask | diagonal[None, None]


class LayerCache:
    """Keys and values (B, heads, T, head_dim) of the positions seen so far, for decoding.

    Stored in buffers of `capacity` positions, so adding a position writes in place instead of
    copying the whole cache.
    """

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    @property
    def keys(self) -> torch.Tensor:
        assert self._keys is not None, "the cache is empty until extend() is called"
        return self._keys[:, :, : self.length]

    @property
    def values(self) -> torch.Tensor:
        assert self._values is not None, "the cache is empty until extend() is called"
        return self._values[:, :, : self.length]

    def extend(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + keys.shape[2]
        if end > self.capacity:
            raise ValueError(f"cache holds {self.capacity} positions, {end} requested")
        if self._keys is None:
            shape = (keys.shape[0], keys.shape[1], self.capacity, keys.shape[3])
            self._keys, self._values = keys.new_empty(shape), values.new_empty(shape)
        assert self._values is not None  # allocated together with _keys
        self._keys[:, :, self.length : end] = keys
        self._values[:, :, self.length : end] = values
        self.length = end
        return self.keys, self.values

    def repeat_interleave(self, repeats: int) -> None:
        """Share each row's cache with `repeats` consecutive rows (sample paths of one series)."""
        assert self._keys is not None and self._values is not None, "the cache is empty until extend() is called"
        self._keys = self._keys.repeat_interleave(repeats, 0)
        self._values = self._values.repeat_interleave(repeats, 0)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with rotary positions; self-attention when key_value is query."""

    def __init__(self, d_model: int, n_heads: int, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(self.head_dim)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, heads, T, head_dim)
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    def project_keys_values(
        self, key_value: torch.Tensor, key_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Tk, D) -> rotated keys and values, each (B, heads, Tk, head_dim)."""
        keys = self.rotary(self.split_heads(self.k_proj(key_value)), key_positions)
        return keys, self.split_heads(self.v_proj(key_value))

    def forward(
        self,
        query: torch.Tensor,  # (B, Tq, D)
        key_value: torch.Tensor,  # (B, Tk, D)
        query_positions: torch.Tensor,  # (Tq,) or (B, Tq)
        key_positions: torch.Tensor,  # (Tk,) or (B, Tk)
        mask: torch.Tensor | None,  # bool, True = may attend; None = attend to every key
        cache: LayerCache | None = None,  # earlier positions' keys/values, extended in place
    ) -> torch.Tensor:
        k, v = self.project_keys_values(key_value, key_positions)
        if cache is not None:
            k, v = cache.extend(k, v)
        return self.attend(query, k, v, query_positions, mask)

    def attend(
        self,
        query: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        query_positions: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention of query (B, Tq, D) to projected keys/values -> (B, Tq, D)."""
        q = self.rotary(self.split_heads(self.q_proj(query)), query_positions)
        dropout = self.attn_dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, heads, Tq, head_dim)
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
        return self.resid_dropout(self.out_proj(out))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, ff_dim: int, dropout_p: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    """Pre-norm causal block: x + attn(norm1(x)), then x + ffn(norm2(x))."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ff_dim: int,
        ffn_dropout_p: float = 0.0,
        attn_dropout_p: float = 0.0,
        resid_dropout_p: float = 0.0,
    ):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, attn_dropout_p, resid_dropout_p)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim, ffn_dropout_p)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: LayerCache | None = None
    ) -> torch.Tensor:
        """x: (B, T, D); positions: (T,); mask from attention_mask (None: attend to all keys)."""
        h = self.norm1(x)
        x = x + self.self_attn(h, h, positions, positions, mask, cache)
        return x + self.ffn(self.norm2(x))


def run_causal(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    start: int = 0,
    caches: list[LayerCache] | None = None,
    key_padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """x (B, T, D) at positions start .. start + T - 1 through causal TransformerBlocks.

    With `caches` (one LayerCache per block) earlier positions' keys and values are reused and
    extended, so T new positions cost T positions of work. key_padding: see attention_mask.
    """
    positions = torch.arange(start, start + x.shape[1], device=x.device)
    key_positions = torch.arange(start + x.shape[1], device=x.device) if caches is not None else positions
    mask = attention_mask(positions, key_positions, key_padding)
    for index, block in enumerate(blocks):
        x = block(x, positions, mask, None if caches is None else caches[index])
    return x
