"""Autoregressive sampling of (s1, s2) tokens from Kronos: cached, and a full-recompute reference.

Both follow upstream Kronos' decoding: the context is cut from the left to `max_context`
tokens; each step samples s1 from the last position, then s2 from the dependency-aware layer
with a single query (published checkpoints expect that, see Kronos.decode_s2), and appends the
pair with its bar's time stamp. The reference recomputes the whole window every step, as
upstream does. The cached sampler processes the context once (prefill), then one position per
step, reusing each layer's keys and values and the s2 layer's projected context; when the
window starts to slide past `max_context` it recomputes the cache from the window, which keeps
it exactly equal to the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.kronos.layers import LayerCache
from models.kronos.model import Kronos


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int = 0  # 0: off; 1: greedy
    top_p: float = 1.0  # 1.0: off


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the top_k logits, then the smallest set whose probability reaches top_p."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p  # tokens entirely beyond the nucleus; the first always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, sampling: Sampling, uniforms: torch.Tensor | None) -> torch.Tensor:
    """(B, V) logits -> (B,) ids. `uniforms` (B,) in [0, 1) make each row's draw its own stream."""
    if sampling.top_k == 1:
        return logits.argmax(-1)
    probs = F.softmax(filter_logits(logits.float() / sampling.temperature, sampling.top_k, sampling.top_p), dim=-1)
    if uniforms is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    cumulative = probs.cumsum(-1)
    ids = torch.searchsorted(cumulative, (uniforms * cumulative[:, -1]).unsqueeze(-1)).squeeze(-1)
    return ids.clamp_max(probs.shape[-1] - 1)


class _Draws:
    """Per-series uniform streams: series b always gets the same numbers for the same seed."""

    def __init__(self, seeds: list[int] | None, steps: int, device: torch.device):
        self.table = None
        if seeds is not None:
            rows = [torch.rand(2 * steps, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
            self.table = torch.stack(rows).to(device)  # (B, 2 * steps): s1 and s2 draws per step

    def s1(self, step: int):
        return None if self.table is None else self.table[:, 2 * step]

    def s2(self, step: int):
        return None if self.table is None else self.table[:, 2 * step + 1]


def _s2_step(model: Kronos, last_hidden, keys, values, s1_new, sampling, uniforms):
    """The published single-query s2 step over projected context keys/values."""
    layer = model.dep_layer
    sibling = model.embedding.emb_s1(s1_new[:, None])  # (B, 1, D)
    zero = torch.zeros(1, dtype=torch.long, device=sibling.device)
    attended = layer.cross_attn.attend(sibling, keys, values, zero, None)
    logits = model.head.cond_forward(layer.norm(last_hidden + attended))[:, -1]
    return sample_tokens(logits, sampling, uniforms)


@torch.no_grad()
def generate_cached(model: Kronos, s1, s2, stamps, pred_len: int, max_context: int, sampling: Sampling, seeds=None, samples: int = 1):
    """s1, s2: (B, T) context ids; stamps: (B, T + pred_len, 5). Returns (B * samples, pred_len) x2.

    With samples > 1 each series' context is processed once and its cache shared by its
    `samples` paths (rows b * samples .. b * samples + samples - 1); `seeds` then has one
    entry per path.
    """
    context_len = s1.shape[1]
    draws = _Draws(seeds, pred_len, s1.device)
    tokens_s1, tokens_s2 = s1.repeat_interleave(samples, 0), s2.repeat_interleave(samples, 0)
    new_s1, new_s2 = [], []

    def prefill(end: int, tokens_s1, tokens_s2, stamps, repeat: int = 1):
        start = max(0, end - max_context)
        capacity = min(max_context, end - start + pred_len)
        caches = [LayerCache(capacity) for _ in model.transformer]
        hidden = model.context(tokens_s1[:, start:end], tokens_s2[:, start:end], stamps[:, start:end], caches=caches)
        zeros = torch.zeros(hidden.shape[1], dtype=torch.long, device=hidden.device)
        cross = LayerCache(capacity)
        cross.extend(*model.dep_layer.cross_attn.project_keys_values(hidden, zeros))
        if repeat > 1:  # share one context's work among its sample paths
            for cache in caches + [cross]:
                cache.repeat_interleave(repeat)
            hidden = hidden.repeat_interleave(repeat, 0)
        return caches, cross, hidden[:, -1:], end - start

    caches, cross, last, window = prefill(context_len, s1, s2, stamps, samples)
    stamps = stamps.repeat_interleave(samples, 0)
    for step in range(pred_len):
        s1_next = sample_tokens(model.head(last)[:, -1], sampling, draws.s1(step))
        s2_next = _s2_step(model, last, cross.keys, cross.values, s1_next, sampling, draws.s2(step))
        new_s1.append(s1_next)
        new_s2.append(s2_next)
        tokens_s1 = torch.cat([tokens_s1, s1_next[:, None]], dim=1)
        tokens_s2 = torch.cat([tokens_s2, s2_next[:, None]], dim=1)
        if step == pred_len - 1:
            break
        end = context_len + step + 1
        if window < max_context:  # room left: one position of work
            last = model.context(s1_next[:, None], s2_next[:, None], stamps[:, end - 1 : end], start=window, caches=caches)
            cross.extend(*model.dep_layer.cross_attn.project_keys_values(last, torch.zeros(1, dtype=torch.long, device=last.device)))
            window += 1
        else:  # the window slides: every position's history changes, so rebuild from the window
            caches, cross, last, window = prefill(end, tokens_s1, tokens_s2, stamps)
    return torch.stack(new_s1, dim=1), torch.stack(new_s2, dim=1)


@torch.no_grad()
def generate_reference(model: Kronos, s1, s2, stamps, pred_len: int, max_context: int, sampling: Sampling, seeds=None):
    """Plain decoding that recomputes the whole window for every new token (upstream's way)."""
    context_len = s1.shape[1]
    draws = _Draws(seeds, pred_len, s1.device)
    tokens_s1, tokens_s2 = s1, s2
    for step in range(pred_len):
        end = context_len + step
        start = max(0, end - max_context)
        s1_logits, context = model.decode_s1(tokens_s1[:, start:end], tokens_s2[:, start:end], stamps[:, start:end])
        s1_next = sample_tokens(s1_logits[:, -1], sampling, draws.s1(step))
        s2_logits = model.decode_s2(context, s1_next[:, None])
        s2_next = sample_tokens(s2_logits[:, -1], sampling, draws.s2(step))
        tokens_s1 = torch.cat([tokens_s1, s1_next[:, None]], dim=1)
        tokens_s2 = torch.cat([tokens_s2, s2_next[:, None]], dim=1)
    return tokens_s1[:, context_len:], tokens_s2[:, context_len:]
