"""Kronos: the autoregressive predictor over hierarchical (s1, s2) K-line tokens.

    (s1, s2) ids -> hierarchical embedding (+ temporal embedding) -> causal RoPE blocks -> norm
        -> s1 head                                   -> s1 logits
        -> cross-attention to the s1 token's embedding -> s2 head -> s2 logits (s2 given s1)

Constructor arguments and state-dict keys match the published NeoQuasar/Kronos-* checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.kronos.hub import StrictHubMixin
from models.kronos.layers import LayerCache, MultiHeadAttention, RMSNorm, TransformerBlock, attention_mask, run_causal

TIME_FEATURES = ("minute", "hour", "weekday", "day", "month")
TIME_FEATURE_SIZES = (60, 24, 7, 32, 13)


class HierarchicalEmbedding(nn.Module):
    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.emb_s1 = nn.Embedding(2**s1_bits, d_model)
        self.emb_s2 = nn.Embedding(2**s2_bits, d_model)
        self.fusion_proj = nn.Linear(2 * d_model, d_model)

    def forward(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor) -> torch.Tensor:  # (B, T) x2 -> (B, T, D)
        scale = math.sqrt(self.d_model)
        return self.fusion_proj(torch.cat([self.emb_s1(s1_ids) * scale, self.emb_s2(s2_ids) * scale], dim=-1))


class SinusoidalEmbedding(nn.Module):
    """A frozen sinusoidal table, stored as `.emb` like the published non-learned variant."""

    def __init__(self, size: int, d_model: int):
        super().__init__()
        position = torch.arange(size).float()[:, None]
        frequency = torch.exp(torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model))
        table = torch.zeros(size, d_model)
        table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
        self.emb = nn.Embedding(size, d_model)
        self.emb.weight = nn.Parameter(table, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x).detach()


class TemporalEmbedding(nn.Module):
    """Sum of minute, hour, weekday, day-of-month and month embeddings of each bar's time."""

    def __init__(self, d_model: int, learn_te: bool):
        super().__init__()
        make = (
            (lambda size: nn.Embedding(size, d_model))
            if learn_te
            else (lambda size: SinusoidalEmbedding(size, d_model))
        )
        for name, size in zip(TIME_FEATURES, TIME_FEATURE_SIZES, strict=True):
            setattr(self, f"{name}_embed", make(size))

    def forward(self, stamp: torch.Tensor) -> torch.Tensor:  # (B, T, 5) -> (B, T, D)
        stamp = stamp.long()
        return sum(getattr(self, f"{name}_embed")(stamp[..., i]) for i, name in enumerate(TIME_FEATURES))


class DependencyAwareLayer(nn.Module):
    """Lets the s2 prediction attend from the chosen s1 token's embedding to the context."""

    def __init__(self, d_model: int, n_heads: int = 4, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        self.cross_attn = MultiHeadAttention(d_model, n_heads, attn_dropout_p, resid_dropout_p)
        self.norm = RMSNorm(d_model)

    def forward(self, hidden, sibling, query_positions, key_positions, mask) -> torch.Tensor:
        """hidden: (B, T, D) context; sibling: (B, Tq, D) s1 embeddings; -> (B, Tq, D)."""
        attended = self.cross_attn(sibling, hidden, query_positions, key_positions, mask)
        return self.norm(hidden[:, -sibling.shape[1] :] + attended)


class DualHead(nn.Module):
    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.vocab_s1, self.vocab_s2 = 2**s1_bits, 2**s2_bits
        self.proj_s1 = nn.Linear(d_model, self.vocab_s1)
        self.proj_s2 = nn.Linear(d_model, self.vocab_s2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_s1(x)

    def cond_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_s2(x)

    def compute_loss(self, s1_logits, s2_logits, s1_targets, s2_targets, padding_mask=None):
        """(CE_s1 + CE_s2) / 2 over non-padded positions; returns (loss, ce_s1, ce_s2)."""
        if padding_mask is not None:
            keep = padding_mask == 0
            s1_logits, s2_logits, s1_targets, s2_targets = (
                s1_logits[keep],
                s2_logits[keep],
                s1_targets[keep],
                s2_targets[keep],
            )
        ce_s1 = F.cross_entropy(s1_logits.reshape(-1, self.vocab_s1), s1_targets.reshape(-1))
        ce_s2 = F.cross_entropy(s2_logits.reshape(-1, self.vocab_s2), s2_targets.reshape(-1))
        return (ce_s1 + ce_s2) / 2, ce_s1, ce_s2


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """(B, V) probabilities and (B,) uniforms -> (B,) ids: the first id whose cumulative probability
    reaches its uniform times the row's total. A uniform above 0 never lands on an id of probability 0."""
    cumulative = probs.cumsum(-1)
    ids = torch.searchsorted(cumulative, (uniforms * cumulative[:, -1]).unsqueeze(-1)).squeeze(-1)
    return ids.clamp_max(probs.shape[-1] - 1)


class Kronos(nn.Module, StrictHubMixin):
    def __init__(
        self,
        s1_bits: int,
        s2_bits: int,
        n_layers: int,
        d_model: int,
        n_heads: int,
        ff_dim: int,
        ffn_dropout_p: float,
        attn_dropout_p: float,
        resid_dropout_p: float,
        token_dropout_p: float,
        learn_te: bool,
    ):
        super().__init__()
        self.s1_bits, self.s2_bits, self.d_model = s1_bits, s2_bits, d_model
        self.s1_vocab_size = 2**s1_bits
        self.embedding = HierarchicalEmbedding(s1_bits, s2_bits, d_model)
        self.time_emb = TemporalEmbedding(d_model, learn_te)
        self.token_drop = nn.Dropout(token_dropout_p)
        self.transformer = nn.ModuleList(
            TransformerBlock(d_model, n_heads, ff_dim, ffn_dropout_p, attn_dropout_p, resid_dropout_p)
            for _ in range(n_layers)
        )
        self.norm = RMSNorm(d_model)
        self.dep_layer = DependencyAwareLayer(d_model)
        self.head = DualHead(s1_bits, s2_bits, d_model)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.weight.requires_grad:
            nn.init.normal_(module.weight, mean=0.0, std=self.d_model**-0.5)

    def decode_s1(self, s1_ids, s2_ids, stamp=None, padding_mask=None):
        """(B, T) ids [+ (B, T, 5) stamps] -> s1 logits (B, T, vocab_s1), context (B, T, D)."""
        context = self.context(s1_ids, s2_ids, stamp, padding_mask)
        return self.head(context), context

    def context(
        self, s1_ids, s2_ids, stamp=None, padding_mask=None, start: int = 0, caches: list[LayerCache] | None = None
    ):
        """Normalised hidden states (B, T, D) of tokens at positions start .. start + T - 1.

        With `caches` (one LayerCache per block) earlier positions' keys and values are reused
        and extended, so decoding one more token costs one position of work.
        """
        x = self.embedding(s1_ids, s2_ids)
        if stamp is not None:
            x = x + self.time_emb(stamp)
        return self.norm(run_causal(self.transformer, self.token_drop(x), start, caches, padding_mask))

    def decode_s2(self, context, s1_ids, padding_mask=None):
        """s2 logits given the context (B, T, D) and s1 ids.

        With s1 ids for every position (B, T), position t attends to context positions <= t.
        With a single s1 id per series (B, 1), this is the published inference step: the query
        attends to the whole context and both sides take rotary position 0, as upstream Kronos
        builds its rotary table for the query length. Published checkpoints expect that.
        """
        sibling = self.embedding.emb_s1(s1_ids)
        steps = context.shape[1]
        if s1_ids.shape[1] == steps:
            positions = torch.arange(steps, device=context.device)
            mask = attention_mask(positions, positions, padding_mask)
            hidden = self.dep_layer(context, sibling, positions, positions, mask)
        elif s1_ids.shape[1] == 1:
            zeros = torch.zeros(1, dtype=torch.long, device=context.device)
            mask = None if padding_mask is None else ~padding_mask.bool()[:, None, None, :]
            hidden = self.dep_layer(context, sibling, zeros, zeros.expand(steps), mask)
        else:
            raise ValueError(
                f"s1_ids must cover every context position ({steps}) or be a single step, got {s1_ids.shape[1]}"
            )
        return self.head.cond_forward(hidden)

    def forward(self, s1_ids, s2_ids, stamp=None, padding_mask=None, use_teacher_forcing=False, s1_targets=None):
        """Training step: -> (s1 logits, s2 logits), both (B, T, vocab).

        s2 is conditioned on the true next s1 token with teacher forcing, else on an s1 token
        sampled from the model's own s1 distribution (what it will see at inference).
        """
        s1_logits, context = self.decode_s1(s1_ids, s2_ids, stamp, padding_mask)
        if use_teacher_forcing:
            condition = s1_targets
        else:
            # The distribution torch.multinomial samples, without its cost on a CPU, where
            # multinomial draws an exponential for every vocabulary entry of every position.
            probs = F.softmax(s1_logits.detach().float(), dim=-1).reshape(-1, self.s1_vocab_size)
            condition = inverse_cdf(probs, torch.rand(len(probs), device=probs.device)).reshape(s1_ids.shape)
        return s1_logits, self.decode_s2(context, condition, padding_mask)
