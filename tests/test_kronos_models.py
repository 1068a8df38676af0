"""Kronos tokenizer and predictor: published sizes, checkpoint round trips, strict loading, causality."""

import functools
import json

import numpy as np
import pytest
import safetensors.torch
import torch

from data_prep.errors import CheckpointError
from models.kronos.configs import KRONOS_BASE, KRONOS_MINI, KRONOS_SMALL, TOKENIZER_BASE
from models.kronos.model import Kronos
from models.kronos.tokenizer import KronosTokenizer
from tests.helpers import TINY_PREDICTOR, TINY_TOKENIZER


def n_parameters(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 1)


@pytest.mark.parametrize(
    ("config", "millions"),
    [(KRONOS_MINI, 4.1), (KRONOS_SMALL, 24.7), (KRONOS_BASE, 102.3)],
    ids=["mini", "small", "base"],
)
def test_published_predictor_sizes(config, millions):
    assert n_parameters(Kronos(**config)) == millions


def random_stamps(batch: int, steps: int) -> torch.Tensor:
    return torch.stack(
        [
            torch.zeros(batch, steps),
            torch.zeros(batch, steps),
            torch.randint(0, 5, (batch, steps)),
            torch.randint(1, 29, (batch, steps)),
            torch.randint(1, 13, (batch, steps)),
        ],
        dim=-1,
    ).long()


@pytest.mark.parametrize("config", [TOKENIZER_BASE, TINY_TOKENIZER], ids=["tokenizer-base", "tiny"])
def test_tokenizer_round_trip(tmp_path, config):
    torch.manual_seed(0)
    tokenizer = KronosTokenizer(**config).eval()
    tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == config
    loaded = KronosTokenizer.from_pretrained(tmp_path)
    x = torch.randn(3, 40, 6)
    for a, b in zip(tokenizer.encode(x, half=True), loaded.encode(x, half=True), strict=True):
        assert torch.equal(a, b)
    ids = tokenizer.encode(x, half=True)
    assert torch.equal(tokenizer.decode(ids, half=True), loaded.decode(ids, half=True))


@pytest.mark.parametrize("config", [KRONOS_MINI, KRONOS_SMALL, KRONOS_BASE], ids=["mini", "small", "base"])
def test_predictor_round_trip(tmp_path, config):
    torch.manual_seed(0)
    model = Kronos(**config).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == config
    loaded = Kronos.from_pretrained(tmp_path)
    s1, s2 = torch.randint(0, 1024, (2, 2, 30))
    stamps = random_stamps(2, 30)
    with torch.no_grad():
        expected = model(s1, s2, stamps, use_teacher_forcing=True, s1_targets=s1)
        got = loaded(s1, s2, stamps, use_teacher_forcing=True, s1_targets=s1)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


def test_state_dict_uses_the_published_names():
    keys = set(Kronos(**TINY_PREDICTOR).state_dict())
    for name in (
        "embedding.emb_s1.weight",
        "embedding.fusion_proj.weight",
        "time_emb.weekday_embed.weight",
        "transformer.1.self_attn.rotary.inv_freq",
        "transformer.0.ffn.w3.weight",
        "norm.weight",
        "dep_layer.cross_attn.q_proj.bias",
        "dep_layer.norm.weight",
        "head.proj_s1.weight",
        "head.proj_s2.bias",
    ):
        assert name in keys
    tokenizer_keys = set(KronosTokenizer(**TINY_TOKENIZER).state_dict())
    for name in (
        "embed.weight",
        "encoder.2.norm1.weight",
        "decoder.0.self_attn.out_proj.bias",
        "quant_embed.weight",
        "post_quant_embed_pre.weight",
        "post_quant_embed.bias",
        "head.weight",
        "tokenizer.bsq.basis",
        "tokenizer.bsq.group_basis",
    ):
        assert name in tokenizer_keys


def test_loading_is_strict_and_names_the_keys(tmp_path):
    KronosTokenizer(**TINY_TOKENIZER).save_pretrained(tmp_path)
    weights = safetensors.torch.load_file(tmp_path / "model.safetensors")
    weights.pop("quant_embed.bias")
    weights["extra.weight"] = torch.zeros(1)
    safetensors.torch.save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"missing keys \['quant_embed.bias'\], unexpected keys \['extra.weight'\]"
    ):
        KronosTokenizer.from_pretrained(tmp_path)


def test_tokenizer_is_causal():
    tokenizer = KronosTokenizer(**TINY_TOKENIZER).eval()
    x = torch.randn(2, 50, 6)
    changed = x.clone()
    changed[:, 30:] = torch.randn(2, 20, 6) * 10
    for a, b in zip(tokenizer.encode(x, half=True), tokenizer.encode(changed, half=True), strict=True):
        assert torch.equal(a[:, :30], b[:, :30])


@torch.no_grad()
def test_decoding_paths_after_a_shared_context_equals_decoding_whole_windows():
    """decode_paths runs each series' context once for all its paths (the decoder is causal)."""
    torch.manual_seed(0)
    tokenizer = KronosTokenizer(**TINY_TOKENIZER).eval()
    vocab_s1, vocab_s2 = 2**tokenizer.s1_bits, 2**tokenizer.s2_bits
    for context_len, new_len, paths in ((30, 5, 3), (1, 4, 1), (12, 1, 4)):
        context = [torch.randint(0, vocab, (2, context_len)) for vocab in (vocab_s1, vocab_s2)]
        new = [torch.randint(0, vocab, (2 * paths, new_len)) for vocab in (vocab_s1, vocab_s2)]
        windows = [torch.cat([c.repeat_interleave(paths, 0), n], 1) for c, n in zip(context, new, strict=True)]
        expected = tokenizer.decode(windows, half=True)[:, -new_len:]
        torch.testing.assert_close(tokenizer.decode_paths(context, new, paths), expected, rtol=1e-5, atol=1e-5)


def test_predictor_is_causal_for_both_heads():
    model = Kronos(**TINY_PREDICTOR).eval()
    s1, s2 = torch.randint(0, 16, (2, 2, 40))
    stamps = random_stamps(2, 40)
    later_s1, later_s2 = s1.clone(), s2.clone()
    later_s1[:, 25:], later_s2[:, 25:] = torch.randint(0, 16, (2, 2, 15))
    with torch.no_grad():
        a = model(s1, s2, stamps, use_teacher_forcing=True, s1_targets=s1)
        b = model(later_s1, later_s2, stamps, use_teacher_forcing=True, s1_targets=later_s1)
    for first, second in zip(a, b, strict=True):
        torch.testing.assert_close(first[:, :25], second[:, :25])


def test_any_context_length():
    tokenizer = KronosTokenizer(**TINY_TOKENIZER).eval()
    model = Kronos(**TINY_PREDICTOR).eval()
    with torch.no_grad():
        s1, s2 = tokenizer.encode(torch.randn(1, 3000, 6), half=True)
        s1_logits, context = model.decode_s1(s1, s2, random_stamps(1, 3000))
        s2_logits = model.decode_s2(context, s1_logits[:, -1:].argmax(-1))
    assert s1_logits.shape == (1, 3000, 16) and s2_logits.shape == (1, 1, 16)
    assert torch.isfinite(s1_logits).all() and torch.isfinite(s2_logits).all()


def test_token_ids_and_codes_agree():
    tokenizer = KronosTokenizer(**TINY_TOKENIZER).eval()
    x = torch.randn(2, 20, 6)
    with torch.no_grad():
        _, _, codes, _ = tokenizer(x)
        ids = tokenizer.encode(x, half=True)
    torch.testing.assert_close(tokenizer.ids_to_codes(ids, half=True), codes)
    assert int(ids[0].max()) < 2 ** TINY_TOKENIZER["s1_bits"] and int(ids[1].max()) < 2 ** TINY_TOKENIZER["s2_bits"]


def test_padded_positions_do_not_change_the_others():
    model = Kronos(**TINY_PREDICTOR).eval()
    s1, s2 = torch.randint(0, 16, (2, 1, 20))
    stamps = random_stamps(1, 20)
    pad = 5  # left padding: junk tokens marked in padding_mask must not matter
    junk_s1 = torch.cat([torch.randint(0, 16, (1, pad)), s1], dim=1)
    junk_s2 = torch.cat([torch.randint(0, 16, (1, pad)), s2], dim=1)
    junk_stamps = torch.cat([random_stamps(1, pad), stamps], dim=1)
    mask = torch.cat([torch.ones(1, pad), torch.zeros(1, 20)], dim=1)
    with torch.no_grad():
        plain, _ = model.decode_s1(s1, s2, stamps)
        padded, _ = model.decode_s1(junk_s1, junk_s2, junk_stamps, padding_mask=mask)
    # rotary positions are relative, so shifting every real token by `pad` keeps their scores
    torch.testing.assert_close(plain, padded[:, pad:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("context", "max_context", "horizon"),
    [(12, 512, 10), (30, 40, 20), (50, 40, 8), (40, 40, 6)],
    ids=["fits", "crosses-limit", "longer-than-limit", "at-limit"],
)
def test_cached_sampler_matches_full_recompute(context, max_context, horizon):
    from models.kronos.generation import Sampling, generate_cached, generate_reference

    torch.manual_seed(0)
    model = Kronos(**dict(TINY_PREDICTOR, s1_bits=6, s2_bits=6)).eval()
    s1, s2 = torch.randint(0, 64, (2, 3, context))
    stamps = random_stamps(3, context + horizon)
    for sampling, seeds in ((Sampling(top_k=1), None), (Sampling(temperature=0.8, top_k=20, top_p=0.9), [7, 8, 9])):
        cached = generate_cached(model, s1, s2, stamps, horizon, max_context, sampling, seeds)
        reference = generate_reference(model, s1, s2, stamps, horizon, max_context, sampling, seeds)
        assert torch.equal(cached[0], reference[0]) and torch.equal(cached[1], reference[1])


def test_decode_steps_are_reused_and_replay_without_capture_on_cpu():
    """The CUDA-graph path's CPU fallback: the same DecodeStep object serves every call of one shape."""
    from models.kronos.generation import CachedSampler, Sampling, generate_reference, replayable

    torch.manual_seed(0)
    model = Kronos(**dict(TINY_PREDICTOR, s1_bits=6, s2_bits=6)).eval()

    def function():
        return None

    assert replayable(function, torch.device("cpu")) is function
    sampler = CachedSampler(model, 512, Sampling(top_k=1))
    for seed in range(3):  # different contexts through the same buffers
        s1, s2 = torch.randint(0, 64, (2, 4, 20), generator=torch.Generator().manual_seed(seed))
        stamps = random_stamps(4, 28)
        cached = sampler(s1, s2, stamps, 8)
        reference = generate_reference(model, s1, s2, stamps, 8, 512, Sampling(top_k=1))
        assert torch.equal(cached[0], reference[0]) and torch.equal(cached[1], reference[1])
    assert len(sampler._steps) == 1


@pytest.mark.slow
def test_compiled_decode_steps_give_identical_greedy_tokens_with_fewer_operators():
    """kronos.inference.compile_decoding on CPU: the same tokens as the reference, far fewer operator calls."""
    from torch.profiler import ProfilerActivity, profile

    from models.kronos.generation import CachedSampler, Sampling, generate_reference

    def top_level_operators(run) -> int:
        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            run()
        events = [e for e in profiled.events() if e.name.startswith("aten::")]
        return sum(e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::") for e in events)

    torch.manual_seed(0)
    model = Kronos(**dict(TINY_PREDICTOR, s1_bits=6, s2_bits=6)).eval()
    s1, s2 = torch.randint(0, 64, (2, 4, 20), generator=torch.Generator().manual_seed(0))
    stamps = random_stamps(4, 32)
    reference = generate_reference(model, s1, s2, stamps, 12, 512, Sampling(top_k=1))
    counts = {}
    for compile in (False, True):
        sampler = CachedSampler(model, 512, Sampling(top_k=1), compile=compile)
        tokens = sampler(s1, s2, stamps, 12)  # compiles, when asked, on this first call
        assert torch.equal(tokens[0], reference[0]) and torch.equal(tokens[1], reference[1])
        counts[compile] = top_level_operators(functools.partial(sampler, s1, s2, stamps, 12))
    assert counts[True] * 2 < counts[False], counts  # the prefill, eager in both, is a third of the compiled count


def test_per_series_seeds_do_not_depend_on_the_batch():
    from models.kronos.generation import Sampling, generate_cached

    torch.manual_seed(0)
    model = Kronos(**dict(TINY_PREDICTOR, s1_bits=6, s2_bits=6)).eval()
    s1, s2 = torch.randint(0, 64, (2, 3, 16))
    stamps = random_stamps(3, 26)
    sampling = Sampling(temperature=1.0, top_p=0.95)
    together = generate_cached(model, s1, s2, stamps, 10, 512, sampling, seeds=[1, 2, 3])
    alone = generate_cached(model, s1[1:2], s2[1:2], stamps[1:2], 10, 512, sampling, seeds=[2])
    assert torch.equal(together[0][1:2], alone[0]) and torch.equal(together[1][1:2], alone[1])
    other_seed = generate_cached(model, s1[1:2], s2[1:2], stamps[1:2], 10, 512, sampling, seeds=[99])
    assert not torch.equal(other_seed[0], alone[0])


def lowbias32(x: int) -> int:
    """Wellons' lowbias32 in plain Python integers, the reference for the tensor version."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_seeded_uniforms_are_a_per_row_hash_and_uniform():
    from scipy import stats

    from models.kronos.generation import _hash32, seeded_uniforms

    values = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 123456789]
    assert _hash32(torch.tensor(values)).tolist() == [lowbias32(v) for v in values]  # no int64 overflow near 2**32

    seeds = torch.tensor([0, 1, 2, -1, 2**40 + 3, 10**13])  # negative and wider than 32 bits
    uniforms = seeded_uniforms(seeds, 8)
    assert uniforms.shape == (6, 8) and uniforms.dtype == torch.float32 and 0 < uniforms.min() and uniforms.max() < 1
    for row, seed in enumerate(seeds):
        assert torch.equal(seeded_uniforms(seed[None], 8)[0], uniforms[row])  # a row alone gets the same numbers
    assert torch.equal(seeded_uniforms(seeds, 3), uniforms[:, :3])  # a longer stream extends a shorter one
    assert len({tuple(row.tolist()) for row in uniforms}) == 6  # 2**40 + 3 is not confused with 3

    many = seeded_uniforms(torch.arange(20_000), 10)  # consecutive seeds, as the signals stage uses
    assert stats.kstest(many.flatten().numpy(), "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(many[:-1, 0], many[1:, 0])[0, 1]) < 0.03  # neighbouring seeds
    assert abs(np.corrcoef(many[:, 0], many[:, 1])[0, 1]) < 0.03  # neighbouring draws of one seed


def test_inverse_cdf_draws_the_distribution_and_never_a_filtered_id():
    from models.kronos.model import inverse_cdf

    probs = torch.tensor([0.0, 0.5, 0.3, 0.2, 0.0])  # the first and last ids filtered out
    grid = (torch.arange(100_000) + 0.5) / 100_000  # evenly spread uniforms: frequencies must match exactly
    frequencies = torch.bincount(inverse_cdf(probs.expand(len(grid), -1), grid), minlength=5) / len(grid)
    assert frequencies[0] == 0 and frequencies[4] == 0
    assert torch.allclose(frequencies, probs, atol=1e-4), frequencies
    extremes = torch.tensor([0.5 * 2.0**-23, 1 - 0.5 * 2.0**-23])  # the smallest and largest seeded uniforms
    assert inverse_cdf(probs.expand(2, -1) * 0.7, extremes).tolist() == [1, 3]  # rows need not sum to 1


def test_top_k_then_top_p_filtering():
    from models.kronos.generation import filter_logits

    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_k=4, top_p=0.6))
    assert kept.tolist() == [[True, True, False, False, False]]  # top 4, then the 0.6 nucleus
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.01)).sum() == 1
