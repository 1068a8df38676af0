"""KronosPredictor: upstream API, grouped series of different lengths, paths in price space."""

import numpy as np
import pandas as pd
import torch

from models.kronos.generation import Sampling, generate_reference
from models.kronos.model import Kronos
from models.kronos.predictor import KronosPredictor
from models.kronos.tokenizer import KronosTokenizer
from tests.helpers import TINY_PREDICTOR, TINY_TOKENIZER, make_bars


def predictor(max_context: int = 512) -> KronosPredictor:
    torch.manual_seed(0)
    return KronosPredictor(
        Kronos(**TINY_PREDICTOR), KronosTokenizer(**TINY_TOKENIZER), device="cpu", max_context=max_context
    )


def frame(n_days: int, seed: int = 0):
    bars = make_bars(n_symbols=1, n_days=n_days, seed=seed)
    x_time = pd.Series(pd.to_datetime(bars["date"]))
    y_time = pd.Series(pd.bdate_range(x_time.iloc[-1] + pd.Timedelta(days=1), periods=5))
    return bars[["open", "high", "low", "close", "volume"]], x_time, y_time


def manual_greedy(kronos: KronosPredictor, df, x_time, y_time, pred_len):
    """The forecast spelled out with the full-recompute reference decoder."""
    from models.kronos.batches import time_features

    x = df.assign(amount=df["volume"] * df[["open", "high", "low", "close"]].mean(axis=1)).to_numpy(np.float32)
    mean, std = x.mean(0), x.std(0)
    scaled = torch.from_numpy(np.clip((x - mean) / (std + 1e-5), -5, 5))[None]
    stamps = torch.from_numpy(np.concatenate([time_features(x_time.values), time_features(y_time.values)]))[None]
    with torch.no_grad():
        s1, s2 = kronos.tokenizer.encode(scaled, half=True)
        new_s1, new_s2 = generate_reference(
            kronos.model, s1, s2, stamps, pred_len, kronos.max_context, Sampling(top_k=1)
        )
        all_s1, all_s2 = torch.cat([s1, new_s1], 1), torch.cat([s2, new_s2], 1)
        start = max(0, all_s1.shape[1] - kronos.max_context)
        decoded = kronos.tokenizer.decode([all_s1[:, start:], all_s2[:, start:]], half=True)[0, -pred_len:].numpy()
    return decoded * (std + 1e-5) + mean


def test_greedy_predict_matches_the_reference_decoder():
    for max_context in (512, 24):  # the second cuts the 40-bar context's tokens from the left
        kronos = predictor(max_context)
        df, x_time, y_time = frame(40)
        forecast = kronos.predict(df, x_time, y_time, pred_len=5, top_k=1, verbose=False)
        assert list(forecast.columns) == ["open", "high", "low", "close", "volume", "amount"]
        assert forecast.index.equals(pd.DatetimeIndex(y_time))
        np.testing.assert_allclose(
            forecast.to_numpy(), manual_greedy(kronos, df, x_time, y_time, 5), rtol=1e-5, atol=1e-3
        )


def test_batch_of_different_lengths_equals_one_by_one():
    kronos = predictor()
    frames = [frame(n, seed=n) for n in (30, 45, 30)]
    batch = kronos.predict_batch(
        [f[0] for f in frames], [f[1] for f in frames], [f[2] for f in frames], pred_len=5, top_k=1, verbose=False
    )
    for (df, x_time, y_time), got in zip(frames, batch, strict=True):
        alone = kronos.predict(df, x_time, y_time, pred_len=5, top_k=1, verbose=False)
        np.testing.assert_allclose(got.to_numpy(), alone.to_numpy(), rtol=1e-4, atol=1e-3)


def test_forecast_returns_every_path_and_is_reproducible_per_seed():
    from models.kronos.batches import time_features

    kronos = predictor()
    df, x_time, y_time = frame(40)
    x = df.assign(amount=df["volume"]).to_numpy(np.float32)
    args = (
        [x, x],
        [time_features(x_time.values)] * 2,
        [time_features(y_time.values)] * 2,
        5,
        Sampling(1.0, 0, 0.95),
        4,
    )
    first = kronos.forecast(*args, seeds=[1, 2])
    again = kronos.forecast(*args, seeds=[1, 2])
    assert first.paths.shape == (2, 4, 5, 6) and first.quantiles.shape == (2, 5, 5, 6)
    np.testing.assert_array_equal(first.paths, again.paths)
    assert not np.array_equal(first.paths[0], first.paths[1])  # same input, different seeds
    assert (first.quantiles[:, 0] <= first.quantiles[:, -1]).all()
    assert np.isfinite(first.paths).all()


def test_nan_input_is_rejected():
    import pytest

    kronos = predictor()
    df, x_time, y_time = frame(20)
    df.loc[3, "close"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kronos.predict(df, x_time, y_time, pred_len=5, verbose=False)


def test_horizon_must_leave_room_for_context_in_the_window():
    import pytest

    df, x_time, y_time = frame(20)
    with pytest.raises(ValueError, match="pred_len 5 must be shorter than max_context 5"):
        predictor(max_context=5).predict(df, x_time, y_time, pred_len=5, verbose=False)


def test_out_of_memory_halves_the_batch(monkeypatch):
    from models.kronos.batches import time_features

    kronos = predictor()
    df, x_time, y_time = frame(30)
    x = df.assign(amount=df["volume"]).to_numpy(np.float32)
    args = ([x] * 8, [time_features(x_time.values)] * 8, [time_features(y_time.values)] * 8, 5, Sampling(top_k=1), 1)
    expected = kronos.forecast(*args, batch_size=8).paths
    real, sizes = kronos._forecast_group, []

    def limited(series, *rest):
        sizes.append(len(series))
        if len(series) > 2:  # pretend the device only fits two series
            raise torch.OutOfMemoryError("simulated")
        return real(series, *rest)

    monkeypatch.setattr(kronos, "_forecast_group", limited)
    got = kronos.forecast(*args, batch_size=8).paths
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) <= 2
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_bf16_weights_forecast_close_to_fp32():
    """The bf16 path (what a CUDA GPU runs) on CPU: bf16 parameters, fp32 rotary buffers, sane prices."""
    df, x_time, y_time = frame(40)
    fp32 = predictor().predict(df, x_time, y_time, pred_len=5, top_k=1, verbose=False)
    torch.manual_seed(0)
    half = KronosPredictor(Kronos(**TINY_PREDICTOR), KronosTokenizer(**TINY_TOKENIZER), device="cpu", bf16=True)
    assert half.model.head.proj_s1.weight.dtype == torch.bfloat16
    assert half.model.transformer[0].self_attn.rotary.inv_freq.dtype == torch.float32
    forecast = half.predict(df, x_time, y_time, pred_len=5, top_k=1, verbose=False)
    assert np.isfinite(forecast.to_numpy()).all()
    spread = df["close"].max() - df["close"].min()
    assert np.abs(forecast["close"].to_numpy() - fp32["close"].to_numpy()).max() < spread
