"""Building blocks of Time-LLM: instance normalisation, patch embedding, reprogramming
cross-attention, the flatten head, and the self-attention layer of the `llm_to_attn` ablation."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def revin(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reversible instance normalisation: z-score each series (B, L, C) with statistics of the
    input window only; returns (normalised, mean, std) so forecasts map back by `y * std + mean`."""
    mean = x.mean(dim=1, keepdim=True)
    std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + eps)
    return (x - mean) / std, mean, std


class PatchEmbedding(nn.Module):
    """(N, L) series -> (N, P, d_model) patch embeddings, P = (L - patch_len) // stride + 2.

    The end is replicate-padded by `stride` so the last observations get a patch of their own.
    """

    def __init__(self, patch_len: int, stride: int, d_model: int, dropout: float):
        super().__init__()
        self.patch_len, self.stride = patch_len, stride
        # A 1-D convolution over neighbouring patches (circular, as in Time-LLM's token embedding).
        self.conv = nn.Conv1d(patch_len, d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.dropout = nn.Dropout(dropout)

    def count(self, seq_len: int) -> int:
        return (seq_len - self.patch_len) // self.stride + 2

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        padded = F.pad(series.unsqueeze(1), (0, self.stride), mode="replicate").squeeze(1)  # (N, L + stride)
        patches = padded.unfold(-1, self.patch_len, self.stride)  # (N, P, patch_len)
        return self.dropout(self.conv(patches.transpose(1, 2)).transpose(1, 2))  # (N, P, d_model)


class ReprogrammingAttention(nn.Module):
    """Cross-attention from patch embeddings (queries) to text prototypes (keys and values),
    projected to the language model's width: patches re-expressed in words the model knows."""

    def __init__(self, d_model: int, n_heads: int, d_keys: int, d_llm: int, dropout: float):
        super().__init__()
        self.n_heads, self.d_keys, self.dropout = n_heads, d_keys, dropout
        self.query = nn.Linear(d_model, d_keys * n_heads)
        self.key = nn.Linear(d_llm, d_keys * n_heads)
        self.value = nn.Linear(d_llm, d_keys * n_heads)
        self.out = nn.Linear(d_keys * n_heads, d_llm)

    def keys_values(self, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """prototypes (S, W) -> keys (h, e, S) and values (h, S, e). They depend on the weights only,
        so inference computes them once and reuses them for every batch."""
        k = self.key(prototypes).view(-1, self.n_heads, self.d_keys).permute(1, 2, 0)
        v = self.value(prototypes).view(-1, self.n_heads, self.d_keys).transpose(0, 1)
        return k, v

    def forward(self, patches: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        n, p, _ = patches.shape
        h, e = self.n_heads, self.d_keys
        # Heads lead, so both products are one batched matmul over contiguous (h, N * P, .) tensors.
        q = self.query(patches).view(n * p, h, e).transpose(0, 1)  # (h, N * P, e)
        weights = torch.softmax(torch.bmm(q, keys) / math.sqrt(e), dim=-1)  # (h, N * P, S)
        if self.training and self.dropout > 0:
            # Drawn in (N, h, P, S) order, as nn.Dropout draws it for upstream's einsum layout of the
            # weights: a seed trains the same model in either layout.
            keep = 1 - self.dropout
            noise = (
                torch.empty((n, h, p, weights.shape[-1]), dtype=weights.dtype, device=weights.device)
                .bernoulli_(keep)
                .div_(keep)
            )
            weights = weights * noise.transpose(0, 1).reshape_as(weights)
        mixed = torch.bmm(weights, values)  # (h, N * P, e)
        return self.out(mixed.transpose(0, 1).reshape(n, p, h * e))  # (N, P, d_llm)


class FlattenHead(nn.Module):
    """(N, P, d_ff) hidden states of the patch positions -> (N, horizon)."""

    def __init__(self, n_features: int, horizon: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(n_features, horizon)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.linear(hidden.flatten(start_dim=1)))


class SelfAttentionLayer(nn.Module):
    """The `llm_to_attn` ablation: one trainable pre-norm self-attention layer in the LLM's place."""

    def __init__(self, width: int, n_heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, n_heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """x (N, T, W), mask (N, T) True = real token -> (N, Q, W) for the last `queries` positions (all by
        default): the others attend as keys and values only, which saves their projections."""
        h = self.norm(x)
        last = h.shape[1] - (queries or h.shape[1])
        attended, _ = self.attention(h[:, last:], h, h, key_padding_mask=~mask, need_weights=False)
        return x[:, last:] + attended
