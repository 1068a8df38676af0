"""Autoregressive sampling of (s1, s2) tokens from Kronos: cached, and a full-recompute reference.

Both follow upstream Kronos' decoding: the context is cut from the left to `max_context`
tokens; each step samples s1 from the last position, then s2 from the dependency-aware layer
with a single query (published checkpoints expect that, see Kronos.decode_s2), and appends the
pair with its bar's time stamp. The reference recomputes the whole window every step, as
upstream does. The cached sampler processes the context once (prefill, the model's own code),
then one position per token with `DecodeStep`, reusing each layer's keys and values and the s2
layer's projected context; when the window starts to slide past `max_context` it prefills the
window again, which keeps it exactly equal to the reference.

`DecodeStep` works on static shapes over buffers it allocates once, with the write position
and token index as device tensors, so on CUDA each half of a token (sample, advance) is captured
as a CUDA graph and replayed: one launch instead of hundreds of kernel launches per half. On
other devices the same functions run eagerly. With `compile` each half is first compiled
(torch.compile, whole graph, static shapes), which fuses its elementwise operators: fewer
kernels inside each CUDA graph, and far fewer operator calls where there is no graph. The
compile costs seconds per DecodeStep shape, so it is off unless asked for.

Both speed-ups are optional: when compiling or capturing fails (at construction or at a compiled
step's first call), CachedSampler logs one warning per kind and decodes that call, and every later
DecodeStep, without the failed speed-up: the same tokens, only slower (`SpeedupFailed`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F

from models.device import describe_failure
from models.kronos.layers import LayerCache, MultiHeadAttention, TransformerBlock
from models.kronos.model import Kronos, inverse_cdf

log = logging.getLogger(__name__)


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


def sample_tokens(logits: torch.Tensor, sampling: Sampling, uniforms: torch.Tensor) -> torch.Tensor:
    """(B, V) logits -> (B,) ids by inverting each row's distribution at its uniform (B,) in (0, 1):
    above 0, so a filtered id (probability 0) is never drawn."""
    if sampling.top_k == 1:
        return logits.argmax(-1)
    probs = F.softmax(filter_logits(logits.float() / sampling.temperature, sampling.top_k, sampling.top_p), dim=-1)
    return inverse_cdf(probs, uniforms)


MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for int64 x in [0, 2**32), in 16-bit halves so no product overflows int64."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 integer hash of int64 x in [0, 2**32): each output bit depends on every input bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seeded_uniforms(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """(rows,) int64 seeds -> (rows, count) float32 uniforms in (0, 1), computed where the seeds are.

    Counter-based: element j of row b is a keyed hash of (seeds[b], j) alone, so a row's numbers do
    not depend on the batch, and a batch needs a few tensor operations instead of seeding a torch
    generator per row, which costs host time in proportion to the rows.
    """
    key = _hash32((seeds & MASK32) ^ _hash32((seeds >> 32) & MASK32))  # every bit of a 64-bit seed
    second_key = _hash32(key ^ 0x9E3779B9)
    counters = _hash32(torch.arange(count, device=seeds.device))
    bits = _hash32(_hash32(key[:, None] ^ counters) ^ second_key[:, None])  # (rows, count)
    return ((bits >> 9).float() + 0.5) * 2.0**-23  # 23 bits, centred: exact in float32, never 0 or 1


def draw_uniforms(seeds: list[int] | None, rows: int, steps: int, device: torch.device) -> torch.Tensor:
    """(rows, steps, 2) uniforms for the s1 and s2 draws of every step.

    With seeds (one per row) row b always gets the same numbers, however rows are batched and on
    any device (seeded_uniforms); without, each row's seed comes from torch's global generator.
    """
    if seeds is None:
        row_seeds = torch.randint(0, 2**62, (rows,)).to(device)
    else:
        row_seeds = torch.tensor(seeds, dtype=torch.int64, device=device)
    return seeded_uniforms(row_seeds, steps * 2).view(rows, steps, 2)


COMPILE, GRAPHS = "compile", "graphs"  # the optional speed-ups of a DecodeStep
HOW_TO_TURN_OFF = {
    COMPILE: ("torch.compile of the decoding step", "kronos.inference.compile_decoding: false"),
    GRAPHS: (
        "CUDA graph capture of the decoding step",
        "cuda_graphs=False (KronosPredictor, CachedSampler; no pipeline setting)",
    ),
}


class SpeedupFailed(RuntimeError):
    """An optional speed-up of decoding (`kind`: COMPILE or GRAPHS) failed with `error`; decoding
    without it gives the same tokens."""

    def __init__(self, kind: str, error: Exception):
        super().__init__(f"{HOW_TO_TURN_OFF[kind][0]} failed: {describe_failure(error)}")
        self.kind, self.error = kind, error


@contextmanager
def _failures_as(kind: str):
    """Re-raise any error inside as SpeedupFailed(kind), except out-of-memory (which the predictor
    answers by halving its batch) and a failure already classified."""
    try:
        yield
    except (SpeedupFailed, torch.OutOfMemoryError):
        raise
    except Exception as error:
        raise SpeedupFailed(kind, error) from error


def compiled(function):
    """torch.compile(function) (whole graph, static shapes), whose failures, when compiling or at
    any call (compile errors surface at the first), raise SpeedupFailed(COMPILE)."""
    with _failures_as(COMPILE):
        fast = torch.compile(function, fullgraph=True, dynamic=False)

    def run():
        try:
            return fast()
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            raise SpeedupFailed(COMPILE, error) from error

    return run


def replayable(function, device: torch.device):
    """`function` captured once as a CUDA graph, returned as its replay on CUDA; itself elsewhere.

    `function` must read and write only tensors that outlive the graph; it runs once on a side
    stream first, so its allocations and library handles exist before capture.
    """
    if device.type != "cuda":
        return function
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        function()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.current_stream(device)
    try:
        with torch.cuda.graph(graph):
            function()
    except BaseException:
        # When ending a failed capture raises too, torch.cuda.graph leaves its capture stream current.
        torch.cuda.set_stream(stream)
        raise
    return graph.replay


def _rotary_tables(attention: MultiHeadAttention, capacity: int, dtype: torch.dtype):
    """Rotary positions for a fused [q | k | v] projection (rows, 3D): `x * cos + x[:, swap] * sin`.

    rotate_half (per head: -second half, first half) is a signed permutation of channels: `swap`
    is the permutation and the signs go into the sin table, which is exact. v gets cos 1, sin 0.
    Returns swap (3D,) and cos, sin (capacity, 3D).
    """
    heads, half = attention.n_heads, attention.head_dim // 2
    channel = torch.arange(heads * 2 * half).view(heads, 2, half)
    swap = torch.cat([channel[:, 1], channel[:, 0]], 1).flatten()  # rotate_half's source channel
    sign = torch.tensor([-1.0, 1.0]).repeat_interleave(half).repeat(heads)
    cos, sin = attention.rotary._tables(capacity)
    cos, sin = cos[:capacity].repeat(1, heads), sin[:capacity].repeat(1, heads) * sign.to(sin.device)  # (capacity, D)
    d_model = heads * 2 * half
    swap = torch.cat([swap, swap + d_model, torch.arange(2 * d_model, 3 * d_model)]).to(cos.device)
    cos = torch.cat([cos, cos, torch.ones_like(cos)], 1)
    sin = torch.cat([sin, sin, torch.zeros_like(sin)], 1)
    return swap, cos.to(dtype), sin.to(dtype)


class DecodeStep:
    """One token of cached decoding for `rows` sequences in windows of `capacity` positions.

    Buffers (allocated once): per block keys/values (rows, heads, capacity, head_dim); the s2
    layer's projected context likewise; `last` (rows, D), the normalised hidden state of the
    newest position; an additive attention mask over the capacity; the sampled tokens
    (rows, steps, 2); per-step uniforms and time embeddings; `position` (the next slot) and
    `step` (the token index) as device tensors. Per block q|k|v run as one matmul, and w1|w3.
    `compile`: compile both halves before they are captured (see the module docstring); `graphs`:
    capture them as CUDA graphs on CUDA. A failure of either raises SpeedupFailed, here or (for a
    compiled half on a CPU) at the first call.
    """

    def __init__(
        self,
        model: Kronos,
        rows: int,
        capacity: int,
        steps: int,
        sampling: Sampling,
        compile: bool = False,
        graphs: bool = True,
    ):
        weight = model.head.proj_s1.weight
        device, dtype, d_model = weight.device, weight.dtype, model.d_model
        self.model, self.sampling, self.rows = model, sampling, rows

        def zeros(*shape, kind=dtype):
            return torch.zeros(*shape, dtype=kind, device=device)

        def cache_for(attention: MultiHeadAttention):
            return zeros(rows, attention.n_heads, capacity, attention.head_dim)

        blocks = cast(list[TransformerBlock], list(model.transformer))  # a ModuleList of TransformerBlocks
        attentions = [block.self_attn for block in blocks]
        self.keys, self.values = [cache_for(a) for a in attentions], [cache_for(a) for a in attentions]
        cross = model.dep_layer.cross_attn
        self.cross_keys, self.cross_values = cache_for(cross), cache_for(cross)
        self.cross_kv = (
            torch.cat([cross.k_proj.weight, cross.v_proj.weight]),
            torch.cat([cross.k_proj.bias, cross.v_proj.bias]),
        )
        self.last = zeros(rows, d_model)
        self.mask = zeros(1, capacity)  # 0 where a position is filled, -inf elsewhere
        self.latest = zeros(rows, 2, kind=torch.long)  # the tokens sampled last
        self.tokens = zeros(rows, steps, 2, kind=torch.long)
        self.uniforms = zeros(rows, steps, 2, kind=torch.float32)
        self.time = zeros(rows, steps, d_model)  # temporal embedding of each future bar
        self.position = zeros(1, kind=torch.long)
        self.step = zeros(1, kind=torch.long)

        self.qkv, self.swaps, cos, sin, self.gate_up = [], [], [], [], []
        for attention, block in zip(attentions, blocks, strict=True):
            projections = (attention.q_proj, attention.k_proj, attention.v_proj)
            self.qkv.append((torch.cat([p.weight for p in projections]), torch.cat([p.bias for p in projections])))
            swap, block_cos, block_sin = _rotary_tables(attention, capacity, dtype)
            self.swaps.append(swap)
            cos.append(block_cos)
            sin.append(block_sin)
            self.gate_up.append(torch.cat([block.ffn.w1.weight, block.ffn.w3.weight]))
        self.cos, self.sin = torch.stack(cos, 1), torch.stack(sin, 1)  # (capacity, blocks, 3D)
        sample, advance = self._sample, self._advance
        if compile:
            sample, advance = compiled(sample), compiled(advance)
        if graphs:  # a compiled half that fails in the warm-up run stays a COMPILE failure
            with _failures_as(GRAPHS):
                sample, advance = replayable(sample, device), replayable(advance, device)
        self.sample, self.advance = sample, advance

    def begin(self, uniforms: torch.Tensor, time: torch.Tensor) -> None:
        """Per-generation inputs: uniforms (rows, steps, 2) and time embeddings (rows, steps, D)."""
        self.uniforms.copy_(uniforms)
        self.time.copy_(time)

    def load(self, caches: list[LayerCache], cross: LayerCache, last: torch.Tensor, step: int) -> None:
        """Take a prefill's caches and newest hidden state, each row repeated for its sample paths."""
        length = cross.length
        for buffers, cache in zip(
            zip(self.keys + [self.cross_keys], self.values + [self.cross_values], strict=True),
            caches + [cross],
            strict=True,
        ):
            for buffer, filled in zip(buffers, (cache.keys, cache.values), strict=True):
                # Slots past `length` keep finite values from earlier use (or zeros); the mask hides them.
                buffer.unflatten(0, (filled.shape[0], -1))[:, :, :, :length].copy_(filled[:, None])
        self.last.unflatten(0, (last.shape[0], -1)).copy_(last[:, None])
        self.mask.fill_(float("-inf"))[:, :length] = 0
        self.position.fill_(length)
        self.step.fill_(step)

    def _sample(self) -> None:
        """Sample this step's s1 and s2 from `last`; they go to `latest` and `tokens[:, step]`."""
        model, rows = self.model, self.rows
        uniforms = self.uniforms.index_select(1, self.step)[:, 0]  # (rows, 2)
        s1 = sample_tokens(model.head(self.last), self.sampling, uniforms[:, 0])
        cross = model.dep_layer.cross_attn
        query = cross.q_proj(model.embedding.emb_s1(s1)).view(
            rows, cross.n_heads, 1, cross.head_dim
        )  # rotary at 0 is the identity
        attended = F.scaled_dot_product_attention(query, self.cross_keys, self.cross_values, attn_mask=self.mask)
        hidden = model.dep_layer.norm(self.last + cross.out_proj(attended.view(rows, -1)))
        s2 = sample_tokens(model.head.cond_forward(hidden), self.sampling, uniforms[:, 1])
        torch.stack([s1, s2], 1, out=self.latest)
        self.tokens.index_copy_(1, self.step, self.latest[:, None])

    def _advance(self) -> None:
        """Run the `latest` tokens through the model at `position`: caches, `last`, then position + 1."""
        model, rows = self.model, self.rows
        x = model.embedding(self.latest[:, :1], self.latest[:, 1:]) + self.time.index_select(
            1, self.step
        )  # (rows, 1, D)
        x = x.view(rows, -1)
        self.mask.index_fill_(1, self.position, 0.0)
        cos, sin = (
            self.cos.index_select(0, self.position)[0],
            self.sin.index_select(0, self.position)[0],
        )  # (blocks, 3D)
        for block, (weight, bias), swap, block_cos, block_sin, gate_up, keys, values in zip(
            model.transformer, self.qkv, self.swaps, cos, sin, self.gate_up, self.keys, self.values, strict=True
        ):
            attention = block.self_attn
            projected = F.linear(block.norm1(x), weight, bias)  # (rows, 3D): q, k, v
            rotated = projected * block_cos + projected.index_select(1, swap) * block_sin  # rotary positions on q and k
            query, key, value = rotated.view(rows, 3, attention.n_heads, 1, attention.head_dim).unbind(1)
            keys.index_copy_(2, self.position, key)
            values.index_copy_(2, self.position, value)
            attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=self.mask)
            x = x + attention.out_proj(attended.view(rows, -1))
            gate, up = F.linear(block.norm2(x), gate_up).chunk(2, -1)
            x = x + block.ffn.w2(F.silu(gate) * up)
        self.last.copy_(model.norm(x))
        cross = model.dep_layer.cross_attn
        key, value = F.linear(self.last, *self.cross_kv).view(rows, 2, cross.n_heads, 1, cross.head_dim).unbind(1)
        self.cross_keys.index_copy_(2, self.position, key)  # rotary at position 0 is the identity
        self.cross_values.index_copy_(2, self.position, value)
        self.position.add_(1)
        self.step.add_(1)


class CachedSampler:
    """Cached decoding with one model and sampling; keeps its DecodeSteps (and CUDA graphs) for reuse.

    A DecodeStep holds fused copies of the weights as they were when it was built: make a new
    sampler after changing the model's weights. `compile`, `cuda_graphs`: see DecodeStep. When one
    of them fails, the sampler logs one warning (per kind, over its life), decodes the call again
    without it and builds every later DecodeStep without it; the attributes `compile` and
    `cuda_graphs` say what is still on.
    """

    def __init__(
        self,
        model: Kronos,
        max_context: int,
        sampling: Sampling,
        keep: int = 2,
        compile: bool = False,
        cuda_graphs: bool = True,
    ):
        self.model, self.max_context, self.sampling, self.keep = model, max_context, sampling, keep
        self.compile, self.cuda_graphs = compile, cuda_graphs
        self._steps: dict[tuple[int, int, int], DecodeStep] = {}

    def _decode_step(self, rows: int, capacity: int, steps: int) -> DecodeStep:
        key = (rows, capacity, steps)
        if key not in self._steps:
            while len(self._steps) >= self.keep:  # their buffers hold a full cache each
                self._steps.pop(next(iter(self._steps)))
            while True:  # each failure turns one speed-up off, so this ends with a plain DecodeStep
                try:
                    self._steps[key] = DecodeStep(
                        self.model, rows, capacity, steps, self.sampling, self.compile, self.cuda_graphs
                    )
                    break
                except SpeedupFailed as failure:
                    if not self._give_up(failure):  # not one that was on: nothing left to turn off
                        raise
        return self._steps[key]

    def _give_up(self, failure: SpeedupFailed) -> bool:
        """Turn the failed speed-up off for this sampler's later DecodeSteps, with one warning;
        False if it was off already (a step built before it was turned off: warned already)."""
        attribute = {COMPILE: "compile", GRAPHS: "cuda_graphs"}[failure.kind]
        if not getattr(self, attribute):
            return False
        setattr(self, attribute, False)
        what, setting = HOW_TO_TURN_OFF[failure.kind]
        log.warning(
            "Kronos decoding: %s failed (%s); decoding without it from now on (same tokens, slower). "
            "To skip the attempt: %s",
            what,
            describe_failure(failure.error),
            setting,
        )
        return True

    def _prefill(self, s1, s2, stamps, end: int, capacity: int) -> tuple[list[LayerCache], LayerCache, torch.Tensor]:
        """The model's own forward over the window ending at `end`: caches and the newest hidden state."""
        model = self.model
        start = max(0, end - self.max_context)
        caches = [LayerCache(capacity) for _ in model.transformer]
        hidden = model.context(s1[:, start:end], s2[:, start:end], stamps[:, start:end], caches=caches)
        cross = LayerCache(capacity)
        cross.extend(
            *model.dep_layer.cross_attn.project_keys_values(
                hidden, torch.zeros(hidden.shape[1], dtype=torch.long, device=hidden.device)
            )
        )
        return caches, cross, hidden[:, -1]

    @torch.no_grad()
    def __call__(self, s1, s2, stamps, pred_len: int, seeds=None, samples: int = 1):
        """s1, s2: (B, T) context ids; stamps: (B, T + pred_len, 5). Returns (B * samples, pred_len) x2.

        Each series' context is processed once and shared by its `samples` paths (rows
        b * samples .. b * samples + samples - 1); `seeds` has one entry per path.
        """
        model, (series, context_len) = self.model, s1.shape
        rows, capacity = series * samples, min(self.max_context, context_len + pred_len)
        future = model.time_emb(stamps[:, context_len : context_len + pred_len]).repeat_interleave(
            samples, 0
        )  # (rows, pred_len, D)
        uniforms = draw_uniforms(seeds, rows, pred_len, s1.device)  # once: a retry decodes the same draws
        while True:
            decoder = self._decode_step(rows, capacity, pred_len)
            try:
                return self._decode(decoder, s1, s2, stamps, pred_len, samples, uniforms, future)
            except SpeedupFailed as failure:  # a compiled half failing at its first call (CPU)
                self._give_up(failure)
                del self._steps[(rows, capacity, pred_len)]  # rebuilt without it; its buffers may be half written

    def _decode(self, decoder: DecodeStep, s1, s2, stamps, pred_len: int, samples: int, uniforms, future):
        context_len, capacity = s1.shape[1], decoder.mask.shape[1]
        decoder.begin(uniforms, future)
        decoder.load(*self._prefill(s1, s2, stamps, context_len, capacity), step=0)
        for step in range(pred_len - 1):
            decoder.sample()
            end = context_len + step + 1  # tokens once this step's are appended
            if end <= self.max_context:  # the window still grows: one more position
                decoder.advance()
            else:  # the window slides: every position's history changes, so prefill it again
                sampled = decoder.tokens[:, : step + 1]
                window_s1 = torch.cat([s1.repeat_interleave(samples, 0), sampled[..., 0]], dim=1)
                window_s2 = torch.cat([s2.repeat_interleave(samples, 0), sampled[..., 1]], dim=1)
                decoder.load(
                    *self._prefill(window_s1, window_s2, stamps.repeat_interleave(samples, 0), end, capacity),
                    step=step + 1,
                )
        decoder.sample()
        new = decoder.tokens.clone()
        return new[..., 0], new[..., 1]


def generate_cached(
    model: Kronos, s1, s2, stamps, pred_len: int, max_context: int, sampling: Sampling, seeds=None, samples: int = 1
):
    """One-off cached decoding (see CachedSampler); keep a CachedSampler to reuse its buffers."""
    return CachedSampler(model, max_context, sampling)(s1, s2, stamps, pred_len, seeds, samples)


@torch.no_grad()
def generate_reference(model: Kronos, s1, s2, stamps, pred_len: int, max_context: int, sampling: Sampling, seeds=None):
    """Plain decoding that recomputes the whole window for every new token (upstream's way)."""
    context_len = s1.shape[1]
    uniforms = draw_uniforms(seeds, s1.shape[0], pred_len, s1.device)
    tokens_s1, tokens_s2 = s1, s2
    for step in range(pred_len):
        end = context_len + step
        start = max(0, end - max_context)
        s1_logits, context = model.decode_s1(tokens_s1[:, start:end], tokens_s2[:, start:end], stamps[:, start:end])
        s1_next = sample_tokens(s1_logits[:, -1], sampling, uniforms[:, step, 0])
        s2_logits = model.decode_s2(context, s1_next[:, None])
        s2_next = sample_tokens(s2_logits[:, -1], sampling, uniforms[:, step, 1])
        tokens_s1 = torch.cat([tokens_s1, s1_next[:, None]], dim=1)
        tokens_s2 = torch.cat([tokens_s2, s2_next[:, None]], dim=1)
    return tokens_s1[:, context_len:], tokens_s2[:, context_len:]
