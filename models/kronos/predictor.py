"""KronosPredictor: forecasts of OHLCV bars, with upstream's `predict` / `predict_batch` API.

Upstream behaviour kept so user code and published checkpoints give the same greedy forecasts:
each series is z-scored with its own context statistics and clipped, tokenised whole, its token
window cut from the left to `max_context`, decoded step by step (here with the KV-cached
sampler), and the window's last `pred_len` bars decoded back and de-normalised.

New on top: `forecast` takes many series at once (grouped by length, so no padding is needed),
returns every sample path in price space (B, samples, pred_len, fields) and quantiles, uses
per-series seeds, and halves its batch on out-of-memory. The tokenizer's decoder is causal, so
each series' context is decoded once for all its sample paths.

bf16 weights are a speed-up that may fail on some devices: when converting the weights, or a
forecast with them, raises, the predictor puts the fp32 weights back (it keeps a copy on the CPU),
logs one warning and forecasts with them from then on, the same as a predictor made with
bf16=False. Decoding's own speed-ups fall back likewise (generation.CachedSampler).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from models.device import bf16_weights, describe_failure, pick_device, without_cudnn_attention
from models.kronos.batches import time_features
from models.kronos.generation import CachedSampler, Sampling
from models.kronos.model import Kronos
from models.kronos.tokenizer import KronosTokenizer

PRICE_COLUMNS = ["open", "high", "low", "close"]
FIELDS = PRICE_COLUMNS + ["volume", "amount"]
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)

log = logging.getLogger(__name__)


@dataclass
class Forecast:
    paths: np.ndarray  # (B, samples, pred_len, fields) prices

    @property
    def mean(self) -> np.ndarray:  # (B, pred_len, fields)
        return self.paths.mean(axis=1)

    @cached_property
    def quantiles(self) -> np.ndarray:  # (B, len(QUANTILES), pred_len, fields)
        # On first use: a sort over every path, which callers reading only the paths, like the
        # signals stage, should not wait for.
        return np.quantile(self.paths, QUANTILES, axis=1).transpose(1, 0, 2, 3)


class KronosPredictor:
    def __init__(
        self,
        model: Kronos,
        tokenizer: KronosTokenizer,
        device=None,
        max_context: int = 512,
        clip: float = 5,
        bf16: bool | None = None,
        compile_decoding: bool = False,
        cuda_graphs: bool = True,
    ):
        """bf16: run both models with bf16 weights (converted in place); None = on CUDA GPUs that
        support bf16. compile_decoding: compile each decoding step (generation.DecodeStep), seconds
        per batch shape. cuda_graphs: replay each decoding step as a CUDA graph (on CUDA)."""
        self.device = pick_device("auto" if device is None else str(device))
        if bf16 is None:
            bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer.to(self.device).eval()
        self.max_context, self.clip = max_context, clip
        self.compile_decoding, self.cuda_graphs = compile_decoding, cuda_graphs
        self._samplers: dict[Sampling, CachedSampler] = {}  # their buffers (and CUDA graphs) are reused across batches
        self._fp32_weights: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # while bf16: to go back to
        if bf16:
            self._to_bf16()

    @property
    def dtype(self) -> torch.dtype:
        return self.model.head.proj_s1.weight.dtype

    @property
    def bf16(self) -> bool:
        """Whether the weights are bf16 (False after a bf16 failure put the fp32 ones back)."""
        return bool(self._fp32_weights)

    def _to_bf16(self) -> None:
        """bf16 weights for both models, keeping the fp32 ones on the CPU: on a CPU the very same
        tensors (no copy), on a GPU one copy in host memory."""
        self._fp32_weights = [
            (parameter, parameter.detach().cpu())
            for module in (self.model, self.tokenizer)
            for parameter in module.parameters()
        ]
        try:
            bf16_weights(self.model)
            bf16_weights(self.tokenizer)
        except Exception as error:
            self._back_to_fp32("converting the weights to bf16", error)

    def _back_to_fp32(self, what: str, error: Exception) -> None:
        """Put the fp32 weights back (decoding steps hold fused copies of the old ones, so the
        samplers go too), with a warning."""
        for parameter, weight in self._fp32_weights:
            parameter.data = weight.to(parameter.device)
        self._fp32_weights = []
        self._samplers.clear()
        log.warning(
            "Kronos: %s failed (%s); forecasting with the fp32 weights from now on. To skip the attempt: kronos.bf16: "
            "false (KronosPredictor(bf16=False))",
            what,
            describe_failure(error),
        )

    def forecast(
        self,
        series: list[np.ndarray],  # each (T_i, 6) raw open, high, low, close, volume, amount
        x_stamps: list[np.ndarray],  # each (T_i, 5) minute, hour, weekday, day, month
        y_stamps: list[np.ndarray],  # each (pred_len, 5)
        pred_len: int,
        sampling: Sampling | None = None,  # None: Sampling()
        sample_count: int = 1,
        seeds: list[int] | None = None,  # one per series; None: torch's global generator
        batch_size: int = 256,
        verbose: bool = False,
    ) -> Forecast:
        if sampling is None:
            sampling = Sampling()
        if pred_len >= self.max_context:
            raise ValueError(
                f"pred_len {pred_len} must be shorter than max_context {self.max_context}: "
                "every decoded window holds max_context tokens, context included"
            )
        arguments = (series, x_stamps, y_stamps, pred_len, sampling, sample_count, seeds, batch_size, verbose)
        if not self.bf16:
            return self._forecast_all(*arguments)
        try:
            return self._forecast_all(*arguments)
        except torch.OutOfMemoryError:  # not bf16's fault: fp32 needs more memory still
            raise
        except (RuntimeError, NotImplementedError, TypeError) as error:  # an operator bf16 lacks; not bad inputs
            self._back_to_fp32("forecasting with bf16 weights", error)
        return self._forecast_all(*arguments)  # the whole call again, all of it in fp32

    def _forecast_all(
        self, series, x_stamps, y_stamps, pred_len, sampling, sample_count, seeds, batch_size, verbose
    ) -> Forecast:
        paths = np.empty((len(series), sample_count, pred_len, len(FIELDS)), dtype=np.float32)
        groups: dict[int, list[int]] = {}
        for index, values in enumerate(series):
            groups.setdefault(len(values), []).append(index)
        chunks = [
            members[i : i + batch_size] for members in groups.values() for i in range(0, len(members), batch_size)
        ]
        bar = tqdm(total=len(series), desc="forecasting", unit="series", disable=not verbose, mininterval=1.0)
        while chunks:
            chunk = chunks.pop(0)
            try:
                paths[chunk] = self._forecast_group(
                    [series[i] for i in chunk],
                    [x_stamps[i] for i in chunk],
                    [y_stamps[i] for i in chunk],
                    pred_len,
                    sampling,
                    sample_count,
                    None if seeds is None else [seeds[i] for i in chunk],
                )
            except torch.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                batch_size = len(chunk) // 2  # retry in halves, and keep every later batch that small
                pending = [chunk] + chunks
                chunks = [part[i : i + batch_size] for part in pending for i in range(0, len(part), batch_size)]
                continue
            bar.update(len(chunk))
        bar.close()
        return Forecast(paths)

    @torch.no_grad()
    def _forecast_group(self, series, x_stamps, y_stamps, pred_len, sampling, sample_count, seeds) -> np.ndarray:
        x = np.stack(series).astype(np.float32)  # (B, T, F), all of one length
        mean, std = x.mean(axis=1, keepdims=True), x.std(axis=1, keepdims=True)
        scaled = np.clip((x - mean) / (std + 1e-5), -self.clip, self.clip)
        stamps = torch.from_numpy(np.concatenate([np.stack(x_stamps), np.stack(y_stamps)], axis=1)).to(self.device)
        if sampling not in self._samplers:
            self._samplers[sampling] = CachedSampler(
                self.model, self.max_context, sampling, compile=self.compile_decoding, cuda_graphs=self.cuda_graphs
            )
        sampler = self._samplers[sampling]
        with without_cudnn_attention(self.device):
            s1, s2 = self.tokenizer.encode(torch.from_numpy(scaled).to(self.device, self.dtype), half=True)
            path_seeds = (
                None if seeds is None else [seed * 1_000 + sample for seed in seeds for sample in range(sample_count)]
            )
            new_s1, new_s2 = sampler(s1, s2, stamps, pred_len, path_seeds, sample_count)
            # A speed-up that failed (and warned) in this sampler is not tried by the later ones either.
            self.compile_decoding &= sampler.compile
            self.cuda_graphs &= sampler.cuda_graphs
            start = max(0, s1.shape[1] + pred_len - self.max_context)  # the decoded window holds max_context tokens
            decoded = self.tokenizer.decode_paths([s1[:, start:], s2[:, start:]], [new_s1, new_s2], sample_count)
        prices = decoded.float().cpu().numpy().reshape(len(series), sample_count, pred_len, -1)
        return prices * (std[:, None] + 1e-5) + mean[:, None]

    def _prepare(self, df: pd.DataFrame, where: str) -> np.ndarray:
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
        missing = [column for column in PRICE_COLUMNS if column not in df.columns]
        if missing:
            raise ValueError(f"{where}: missing price columns {missing}")
        df = df.copy()
        if "volume" not in df.columns:
            df["volume"], df["amount"] = 0.0, 0.0
        if "amount" not in df.columns:
            df["amount"] = df["volume"] * df[PRICE_COLUMNS].mean(axis=1)
        if df[FIELDS].isnull().values.any():
            raise ValueError(f"{where}: NaN in price, volume or amount columns")
        return df[FIELDS].to_numpy(dtype=np.float32)

    def predict_batch(
        self,
        df_list,
        x_timestamp_list,
        y_timestamp_list,
        pred_len,
        T=1.0,
        top_k=0,
        top_p=0.9,
        sample_count=1,
        verbose=True,
    ):
        """Upstream's batch API: one DataFrame of mean forecasts per input, indexed by y_timestamp."""
        if not (len(df_list) == len(x_timestamp_list) == len(y_timestamp_list)):
            raise ValueError("df_list, x_timestamp_list and y_timestamp_list must have the same length")
        series = [self._prepare(df, f"DataFrame {i}") for i, df in enumerate(df_list)]
        x_stamps = [time_features(pd.DatetimeIndex(ts).values) for ts in x_timestamp_list]
        y_stamps = [time_features(pd.DatetimeIndex(ts).values) for ts in y_timestamp_list]
        for i, (values, stamps, future) in enumerate(zip(series, x_stamps, y_stamps, strict=True)):
            if len(values) != len(stamps):
                raise ValueError(f"series {i}: {len(values)} rows but {len(stamps)} x timestamps")
            if len(future) != pred_len:
                raise ValueError(f"series {i}: y_timestamp has {len(future)} entries, pred_len is {pred_len}")
        result = self.forecast(
            series, x_stamps, y_stamps, pred_len, Sampling(T, top_k, top_p), sample_count, verbose=verbose
        )
        return [pd.DataFrame(mean, columns=FIELDS, index=y_timestamp_list[i]) for i, mean in enumerate(result.mean)]

    def predict(self, df, x_timestamp, y_timestamp, pred_len, T=1.0, top_k=0, top_p=0.9, sample_count=1, verbose=True):
        """Upstream's single-series API: a DataFrame of mean forecasts indexed by y_timestamp."""
        return self.predict_batch([df], [x_timestamp], [y_timestamp], pred_len, T, top_k, top_p, sample_count, verbose)[
            0
        ]
