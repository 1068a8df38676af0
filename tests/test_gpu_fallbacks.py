"""GPU-only speed-ups never stop a run: when torch.compile, CUDA-graph capture, bf16 weights or a
cheaper Time-LLM backbone copy fails, the call falls back to the plain fp32 path with one warning
naming the setting that turns the speed-up off, and gives the plain path's forecasts.

Each failure is injected on the CPU (where the speed-ups are otherwise no-ops or work).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed

import models.kronos.generation as generation
from models.kronos.generation import CachedSampler, Sampling, generate_reference
from models.kronos.model import Kronos
from models.kronos.predictor import KronosPredictor
from models.kronos.tokenizer import KronosTokenizer
from tests.helpers import TINY_PREDICTOR, TINY_TOKENIZER, make_bars, tiny_config

GREEDY = Sampling(top_k=1)


def fallback_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("models.")]


def random_stamps(batch: int, length: int) -> torch.Tensor:
    limits = torch.tensor([60, 24, 7, 32, 13])
    return (torch.rand(batch, length, 5) * limits).long()


def tiny_kronos() -> Kronos:
    torch.manual_seed(0)
    return Kronos(**dict(TINY_PREDICTOR, s1_bits=6, s2_bits=6)).eval()


def context(seed: int, series: int = 3, length: int = 20, horizon: int = 6):
    generator = torch.Generator().manual_seed(seed)
    s1, s2 = torch.randint(0, 64, (2, series, length), generator=generator)
    return s1, s2, random_stamps(series, length + horizon)


def broken_compiler(calls: list[str], when: str):
    """A torch.compile stand-in failing as inductor does without a C++ compiler: at the first call
    of the compiled function, or (as on an unsupported Python) when asked to compile."""

    def compile(function, **options):
        calls.append(when)
        failure = BackendCompilerFailed(lambda: None, RuntimeError("CppCompileError: C++ compile error"), None)
        if when == "compiling":
            raise failure

        def compiled(*args, **kwargs):
            raise failure

        return compiled

    return compile


@pytest.mark.parametrize("when", ["first call", "compiling"])
def test_failed_compile_decodes_eagerly_with_one_warning(monkeypatch, caplog, when):
    model = tiny_kronos()
    calls: list[str] = []
    monkeypatch.setattr(torch, "compile", broken_compiler(calls, when))
    sampler = CachedSampler(model, 512, GREEDY, compile=True)
    for seed, horizon in ((0, 6), (1, 6), (2, 4)):  # a second call of the shape, then a new shape
        s1, s2, stamps = context(seed, horizon=horizon)
        tokens = sampler(s1, s2, stamps, horizon)
        reference = generate_reference(model, s1, s2, stamps, horizon, 512, GREEDY)
        assert torch.equal(tokens[0], reference[0]) and torch.equal(tokens[1], reference[1])
    assert sampler.compile is False and len(calls) <= 2  # both halves of the first DecodeStep, never again
    (message,) = fallback_warnings(caplog)
    assert "torch.compile" in message and "BackendCompilerFailed" in message and "CppCompileError" in message
    assert "kronos.inference.compile_decoding: false" in message


def test_failed_compile_keeps_seeded_sampling_equal_to_eager(monkeypatch, caplog):
    """The retried call decodes the same draws, also without seeds (torch's global generator)."""
    model = tiny_kronos()
    sampling = Sampling(temperature=0.8, top_k=20, top_p=0.9)
    s1, s2, stamps = context(0)
    eager = CachedSampler(model, 512, sampling)
    torch.manual_seed(5)
    expected = eager(s1, s2, stamps, 6)
    monkeypatch.setattr(torch, "compile", broken_compiler([], "first call"))
    torch.manual_seed(5)
    tokens = CachedSampler(model, 512, sampling, compile=True)(s1, s2, stamps, 6)
    assert torch.equal(tokens[0], expected[0]) and torch.equal(tokens[1], expected[1])
    assert len(fallback_warnings(caplog)) == 1


def test_out_of_memory_in_a_compiled_step_is_not_swallowed(monkeypatch, caplog):
    """The predictor answers out-of-memory by halving its batch: the fallback must let it through."""

    def compile(function, **options):
        def compiled():
            raise torch.OutOfMemoryError("CUDA out of memory")

        return compiled

    monkeypatch.setattr(torch, "compile", compile)
    sampler = CachedSampler(tiny_kronos(), 512, GREEDY, compile=True)
    with pytest.raises(torch.OutOfMemoryError):
        sampler(*context(0), 6)
    assert sampler.compile is True and not fallback_warnings(caplog)


def test_failed_graph_capture_decodes_without_graphs_with_one_warning(monkeypatch, caplog):
    """CUDA-graph capture (generation.replayable, a no-op on a CPU) made to fail as it does when an
    operator is not capturable."""
    captures = []

    def failing_capture(function, device):
        captures.append(device)
        function()  # the warm-up run works
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors ...")

    monkeypatch.setattr(generation, "replayable", failing_capture)
    model = tiny_kronos()
    sampler = CachedSampler(model, 512, GREEDY)
    for seed, horizon in ((0, 6), (1, 6), (2, 4)):
        s1, s2, stamps = context(seed, horizon=horizon)
        tokens = sampler(s1, s2, stamps, horizon)
        reference = generate_reference(model, s1, s2, stamps, horizon, 512, GREEDY)
        assert torch.equal(tokens[0], reference[0]) and torch.equal(tokens[1], reference[1])
    assert sampler.cuda_graphs is False and len(captures) == 1
    (message,) = fallback_warnings(caplog)
    assert "CUDA graph capture" in message and "RuntimeError: CUDA error: operation not permitted" in message
    assert "cuda_graphs=False" in message


# KronosPredictor: bf16 weights, and decoding's fallbacks across its samplers.


def frame_inputs(n_days: int = 30, count: int = 3):
    from models.kronos.batches import time_features

    series, x_stamps, y_stamps = [], [], []
    for seed in range(count):
        bars = make_bars(n_symbols=1, n_days=n_days + 4, seed=seed)
        values = bars[["open", "high", "low", "close", "volume"]].to_numpy(np.float32)
        amount = values[:, 4:5] * values[:, :4].mean(1, keepdims=True)
        dates = np.array(bars["date"], dtype="datetime64[ns]")
        series.append(np.concatenate([values, amount], 1)[:n_days])
        x_stamps.append(time_features(dates[:n_days]))
        y_stamps.append(time_features(dates[n_days:]))
    return series, x_stamps, y_stamps


def tiny_predictor(**options) -> KronosPredictor:
    torch.manual_seed(0)  # the same weights every time
    return KronosPredictor(Kronos(**TINY_PREDICTOR), KronosTokenizer(**TINY_TOKENIZER), device="cpu", **options)


def forecast_paths(predictor: KronosPredictor, sampling: Sampling = GREEDY) -> np.ndarray:
    return predictor.forecast(*frame_inputs(), 4, sampling, sample_count=2, seeds=[1, 2, 3]).paths


def all_fp32(predictor: KronosPredictor) -> bool:
    parameters = [*predictor.model.parameters(), *predictor.tokenizer.parameters()]
    return predictor.dtype == torch.float32 and all(p.dtype == torch.float32 for p in parameters)


def test_failed_bf16_conversion_restores_the_fp32_weights(monkeypatch, caplog):
    expected = forecast_paths(tiny_predictor(bf16=False))

    def half_done_conversion(module):  # as a device without bf16 would fail: after some parameters
        for index, parameter in enumerate(module.parameters()):
            if index == 3:
                raise TypeError("Trying to convert BFloat16 to the MPS backend but it does not have support for that")
            parameter.data = parameter.data.to(torch.bfloat16)

    monkeypatch.setattr("models.kronos.predictor.bf16_weights", half_done_conversion)
    predictor = tiny_predictor(bf16=True)
    assert all_fp32(predictor) and not predictor.bf16
    np.testing.assert_array_equal(forecast_paths(predictor), expected)
    (message,) = fallback_warnings(caplog)
    assert "converting the weights to bf16" in message and "TypeError: Trying to convert BFloat16" in message
    assert "kronos.bf16: false" in message


def test_failed_bf16_forecast_runs_again_in_fp32(monkeypatch, caplog):
    sampling = Sampling(temperature=1.0, top_p=0.9)  # seeded sampling: the paths are reproducible
    expected = forecast_paths(tiny_predictor(bf16=False), sampling)
    predictor = tiny_predictor(bf16=True)
    assert predictor.bf16 and predictor.dtype == torch.bfloat16
    prefill = predictor.model.context
    bf16_calls = []

    def no_bf16_kernel(*args, **kwargs):  # the prefill's first matmul, on a device without bf16 kernels
        if predictor.model.head.proj_s1.weight.dtype == torch.bfloat16:
            bf16_calls.append(1)
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'BFloat16'")
        return prefill(*args, **kwargs)

    monkeypatch.setattr(predictor.model, "context", no_bf16_kernel)
    first = forecast_paths(predictor, sampling)
    again = forecast_paths(predictor, sampling)  # no second attempt, no second warning
    assert all_fp32(predictor) and not predictor.bf16 and len(bf16_calls) == 1
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)
    (message,) = fallback_warnings(caplog)
    assert "forecasting with bf16 weights" in message and "not implemented for 'BFloat16'" in message
    assert "kronos.bf16: false" in message


def test_predictor_tries_a_failed_compile_once_for_all_its_samplings(monkeypatch, caplog):
    expected = {sampling: forecast_paths(tiny_predictor(), sampling) for sampling in (GREEDY, Sampling(top_p=0.8))}
    calls: list[str] = []
    monkeypatch.setattr(torch, "compile", broken_compiler(calls, "first call"))
    predictor = tiny_predictor(compile_decoding=True)
    for sampling, paths in expected.items():
        np.testing.assert_array_equal(forecast_paths(predictor, sampling), paths)
    assert predictor.compile_decoding is False and len(calls) == 2  # one DecodeStep's halves, then never
    (message,) = fallback_warnings(caplog)
    assert "kronos.inference.compile_decoding: false" in message


# Time-LLM: the int8 and bf16 copies of the frozen backbone used for forecasts.


@pytest.fixture(scope="module")
def timellm_parts(backbone_dirs):
    from models.timellm import TimeLLM
    from models.timellm.backbone import load_backbone

    backbone = load_backbone(backbone_dirs["bert"], 2)
    torch.manual_seed(0)
    model = TimeLLM(tiny_config(backbone_dirs["bert"]), backbone).eval()
    inputs = (np.random.default_rng(0).random((10, 24, 1)).cumsum(1) + 10).astype(np.float32)
    return model, backbone, inputs


COPIES = {"int8": False, "bf16": True}  # each copy with the precision a run would give it (bf16 autocast)


@pytest.mark.parametrize("kind", COPIES)
def test_failed_backbone_copy_forecasts_with_the_float_backbone(monkeypatch, caplog, timellm_parts, kind):
    import torch.ao.quantization

    from models.timellm.backbone import bf16_backbone, int8_backbone
    from models.timellm.training import forecast

    model, backbone, inputs = timellm_parts
    bf16 = COPIES[kind]

    def fails(*args, **kwargs):
        raise RuntimeError(f"{kind} not supported here\ndetails")

    if kind == "int8":
        monkeypatch.setattr(torch.ao.quantization, "quantize_dynamic", fails)  # "Didn't find engine for operation"
    else:
        monkeypatch.setattr("models.timellm.backbone.bf16_weights", fails)
    copy = (int8_backbone if kind == "int8" else bf16_backbone)(backbone)  # what the timellm stage calls
    assert copy is backbone
    forecaster = model.with_backbone(copy)
    np.testing.assert_array_equal(
        forecast(forecaster, inputs, torch.device("cpu"), bf16, 4),
        forecast(model, inputs, torch.device("cpu"), bf16, 4),
    )
    (message,) = fallback_warnings(caplog)
    assert f"making the {kind} copy of the backbone" in message and f"{kind} not supported here details" in message
    assert "timellm.forecast_backbone: float" in message


@pytest.mark.parametrize("kind", COPIES)
def test_backbone_copy_failing_in_a_forecast_falls_back_to_the_float_backbone(monkeypatch, caplog, timellm_parts, kind):
    import models.timellm.model as timellm_model
    from models.timellm.backbone import bf16_backbone, int8_backbone
    from models.timellm.training import forecast

    model, backbone, inputs = timellm_parts
    bf16 = COPIES[kind]
    expected = forecast(model, inputs, torch.device("cpu"), bf16, 4)
    forecaster = model.with_backbone((int8_backbone if kind == "int8" else bf16_backbone)(backbone))
    assert forecaster.llm is not model.llm
    real = timellm_model.last_hidden_states
    copy_calls = []

    def failing_copy(llm, *args):  # the copy's kernels missing on this device
        if llm is forecaster.llm:
            copy_calls.append(1)
            raise NotImplementedError(f"Could not run 'quantized::linear_dynamic' ({kind} copy)")
        return real(llm, *args)

    monkeypatch.setattr(timellm_model, "last_hidden_states", failing_copy)
    first = forecast(forecaster, inputs, torch.device("cpu"), bf16, 4)
    again = forecast(forecaster, inputs, torch.device("cpu"), bf16, 4)  # straight to the float backbone
    assert len(copy_calls) == 1
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)
    (message,) = fallback_warnings(caplog)
    assert "forecasting on the cheaper copy of the backbone" in message and "NotImplementedError" in message
    assert "timellm.forecast_backbone: float" in message


def test_out_of_memory_on_the_backbone_copy_is_not_swallowed(monkeypatch, caplog, timellm_parts):
    import models.timellm.model as timellm_model
    from models.timellm.backbone import int8_backbone
    from models.timellm.training import forecast

    model, backbone, inputs = timellm_parts
    forecaster = model.with_backbone(int8_backbone(backbone))

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(timellm_model, "last_hidden_states", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        forecast(forecaster, inputs, torch.device("cpu"), False, 4)
    assert forecaster.forecaster() is forecaster and not fallback_warnings(caplog)
