"""The timellm stage: train Time-LLM and its ablations on the split's windows, score them on the
test windows and write one signal table per variant.

Every variant starts from the same seed, sees the same batches and gets the same budget. The
backbone is loaded once and shared (it is frozen). Output: `models/<source>/` (save_pretrained),
`signals/<source>.parquet`, `report.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_prep.errors import ConfigError
from models.interface import expected_return
from models.timellm.variants import VARIANTS, timellm_source
from pipeline.contract import REPORT, ConfigView, StageInputs, StageResult, StageSpec, signal_path
from pipeline.signals import write_forecast

if TYPE_CHECKING:
    import torch

    from data_prep.windows import ForecastInputs
    from models.interface import Forecast
    from models.timellm import TimeLLM, TimeLLMConfig
    from models.timellm.backbone import Backbone


def timellm(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    import torch  # model code loads when the stage runs, not when the graph is planned

    from models.timellm import TimeLLM, TimeLLMConfig, fit
    from models.timellm.backbone import DEFAULT_BACKBONE
    from models.timellm.training import normalised_errors

    section = config.timellm
    split = inputs.split()
    fields = list(split.panel.fields)
    settings = section.training.settings(config.seed)
    model_options = {"backbone": DEFAULT_BACKBONE, **section.model}
    base = TimeLLMConfig(seq_len=split.lookback, pred_len=split.horizon, **model_options)
    forecasting = Forecasting.resolve(forecast_settings(section), fields, base.load_in_4bit)
    device, bf16, cheaper, channels = forecasting.device, forecasting.bf16, forecasting.cheaper, forecasting.channels
    close_channel = channels.index(fields.index("close"))
    backbone = forecasting.backbone(base)

    series = split.forecast_inputs(*config.split.test)
    known = series.segment_rows("test")
    test_set = split.segment("test")
    test_inputs, test_targets = (
        torch.from_numpy(part[..., channels]) for part in test_set.get(np.arange(len(test_set)))
    )
    persistence = normalised_errors(test_inputs[:, -1:].expand_as(test_targets), test_targets, test_inputs)
    metrics: dict[str, float] = {
        "forecast_series": len(series),
        "test_windows": len(known),
        "bf16": float(bf16),
        "backbone_int8": float(cheaper == "int8"),
        "backbone_bf16": float(cheaper == "bf16"),
        "persistence_test_mse": persistence.pow(2).mean().item(),
        "persistence_test_mae": persistence.abs().mean().item(),
    }
    history: list[dict[str, float]] = []
    summary = [
        f"Time-LLM on {base.backbone} ({base.llm_layers} layers, {device}, {'bf16' if bf16 else 'fp32'}"
        f"{f', {cheaper} backbone for forecasts' if cheaper else ''}): "
        f"{len(split.windows['train']):,} train windows, {len(series):,} test series",
        f"{'source':<22}{'trainable':>11}{'frozen':>11}{'val MSE':>9}{'test MSE':>10}{'test MAE':>10}{'train s':>9}",
    ]
    artifacts = []
    for variant in section.variants:
        name = timellm_source(variant)
        torch.manual_seed(config.seed)  # same initial weights for the shared parts of every variant
        model = TimeLLM(
            TimeLLMConfig(seq_len=split.lookback, pred_len=split.horizon, variant=variant, **model_options), backbone
        ).to(device)
        counts = model.parameter_counts()
        fitted = fit(
            model,
            split.segment("train"),
            split.segment("valid"),
            channels,
            settings,
            device,
            bf16,
            out / "models" / name,
            name,
            out / f"{name}.last.pt",
        )
        history += fitted.history
        report = fitted.report
        forecaster = forecasting.forecaster(model, backbone)
        started = time.perf_counter()
        variant_forecast = forecasting.forecast(forecaster, series, f"{name} forecast")
        seconds = time.perf_counter() - started
        assert variant_forecast.point is not None
        predicted = variant_forecast.point  # (N, H, C)
        # on the cheaper copy, unless it failed to build or to run and fell back to the float backbone (with a warning)
        cheaper_forecasts = forecaster.forecaster().original_backbone is not None
        if variant == "llm" and cheaper:
            metrics[f"backbone_{cheaper}"] = float(cheaper_forecasts)
        if cheaper_forecasts:
            change = forecast_change(
                model, predicted[..., close_channel], series, channels, close_channel, section.batch_size, device
            )
            metrics.update({f"{name}_{cheaper}_{key}": value for key, value in change.items()})
            summary.insert(
                1,
                f"{name} forecasts with the {cheaper} backbone: on {CHANGE_CHECK_SERIES} test series "
                "the forecast moves by "
                f"{change['mean_abs_change']:.4f} (normalised close) from fp32 and its score correlates "
                f"{change['score_correlation']:.4f} with fp32's",
            )
        errors = normalised_errors(torch.from_numpy(predicted[known]), test_targets, test_inputs)
        write_forecast(variant_forecast, name, out)
        artifacts.append(fitted.checkpoint / "config.json")
        results = {
            "trainable_params": counts["trainable"],
            "frozen_params": counts["frozen"],
            "val_mse": report["best_val_mse"],
            "val_mae": report["best_val_mae"],
            "test_mse": errors.pow(2).mean().item(),
            "test_mae": errors.abs().mean().item(),
            "train_seconds": report["train_seconds"],
            "epochs_run": report["epochs_run"],
            "windows_per_second": report["windows_per_second"],
            "forecast_series_per_second": len(series) / seconds,
        }
        metrics.update({f"{name}_{key}": value for key, value in results.items()})
        summary.append(
            f"{name:<22}{counts['trainable']:>11,}{counts['frozen']:>11,}{results['val_mse']:>9.4f}"
            f"{results['test_mse']:>10.4f}{results['test_mae']:>10.4f}{results['train_seconds']:>9.0f}"
        )
    summary.append(
        f"{'persistence':<22}{'':>11}{'':>11}{'':>9}{metrics['persistence_test_mse']:>10.4f}{metrics['persistence_test_mae']:>10.4f}"
        "   (normalised close, test windows)"
    )
    (out / REPORT).write_text(json.dumps(metrics, indent=2))
    return StageResult(metrics=metrics, summary=summary, artifacts=[out / REPORT, *artifacts], history=history)


CHANGE_CHECK_SERIES = 512  # test series forecast with both backbones to report what the cheaper one changes
# The timellm keys its forecasts follow besides the saved model's config: a registered variant keeps them.
FORECAST_SETTINGS = ("channels", "device", "precision", "forecast_backbone", "batch_size")


def forecast_settings(section: Any) -> dict[str, Any]:
    """The FORECAST_SETTINGS values of a timellm config section (what pipeline/registry.py bundles)."""
    return section.model_dump(mode="json", include=set(FORECAST_SETTINGS))


@dataclass(frozen=True)
class Forecasting:
    """How the variants forecast on this machine, resolved from forecast_settings: the stage's, or a
    registered variant's, so the live positions (pipeline/live.py) forecast a day as the stage did."""

    device: torch.device
    bf16: bool  # autocast: where asked, or on auto where the hardware is fast at it
    cheaper: str | None  # the backbone copy the full model forecasts on (forecast_backbone): int8, bf16 or none
    channels: list[int]  # the fields forecast, each as its own series
    batch_size: int

    @classmethod
    def resolve(cls, settings: Mapping[str, Any], fields: Sequence[str], load_in_4bit: bool) -> Forecasting:
        from models.device import bf16_is_fast, pick_device

        device = pick_device(settings["device"])
        bf16 = settings["precision"] == "bf16" or (settings["precision"] == "auto" and bf16_is_fast(device))
        channels = [fields.index("close")] if settings["channels"] == "close" else list(range(len(fields)))
        cheaper = forecast_backbone(settings["forecast_backbone"], device, bf16, load_in_4bit)
        return cls(device, bf16, cheaper, channels, settings["batch_size"])

    def backbone(self, model: TimeLLMConfig) -> Backbone:
        """The frozen backbone `model` runs on, loaded for this device."""
        from models.timellm.backbone import load_backbone

        return load_backbone(model.backbone, model.llm_layers, model.trust_remote_code, model.load_in_4bit, self.device)

    def forecaster(self, model: TimeLLM, backbone: Backbone) -> TimeLLM:
        """The model a variant forecasts with: the full model (the only variant running the backbone) on
        the cheaper copy of `backbone`, any other as trained."""
        from models.timellm.backbone import bf16_backbone, int8_backbone

        if self.cheaper is None or model.config.variant != "llm":
            return model
        return model.with_backbone({"int8": int8_backbone, "bf16": bf16_backbone}[self.cheaper](backbone))

    def forecast(self, model: TimeLLM, series: ForecastInputs, label: str) -> Forecast:
        from models.timellm import forecast

        return forecast(model, series, self.channels, self.device, self.bf16, self.batch_size, label=label)


def forecast_backbone(choice: str, device, bf16: bool, load_in_4bit: bool) -> str | None:
    """The backbone copy forecasts run on: int8, bf16, or None for the backbone as loaded.

    auto: int8 on a CPU where the run is fp32 (no bf16 units); bf16 weights on a GPU that runs
    bf16 autocast (a 4-bit backbone already computes in bf16).
    """
    if choice == "int8" and device.type != "cpu":
        raise ConfigError(
            f"timellm.forecast_backbone is int8 but timellm.device is {device}: int8 dynamic quantisation runs on "
            "the CPU; set it to auto or float"
        )
    if choice == "bf16" and (not bf16 or load_in_4bit):
        raise ConfigError(
            "timellm.forecast_backbone is bf16 but the run "
            + ("loads the backbone in 4 bits" if load_in_4bit else "is fp32 (timellm.precision)")
            + ": set it to auto or float"
        )
    if choice == "auto":
        if device.type == "cpu" and not bf16:
            return "int8"
        return "bf16" if device.type == "cuda" and bf16 and not load_in_4bit else None
    return None if choice == "float" else choice


def forecast_change(
    model, forecast_close: np.ndarray, series, channels: list[int], close_channel: int, batch_size: int, device
) -> dict[str, float]:
    """How far the forecasts the stage made with the cheaper backbone (forecast_close (N, H)) are from
    the float model's in fp32, on test series spread over the segment."""
    from models.timellm.training import forecast

    rows = np.linspace(0, len(series) - 1, min(CHANGE_CHECK_SERIES, len(series))).astype(int)
    values = series.values[rows][..., channels]
    exact = forecast(model, values, device, False, batch_size, label="fp32 check")[..., close_channel]
    approx = forecast_close[rows]
    scale = values[..., close_channel].std(axis=1, keepdims=True) + 1e-8  # the model's normalised units
    last_close = series.last("close")[rows]
    return {
        "mean_abs_change": float(np.mean(np.abs(approx - exact) / scale)),
        "score_correlation": float(
            np.corrcoef(expected_return(exact, last_close), expected_return(approx, last_close))[0, 1]
        ),
    }


def timellm_models(config: ConfigView) -> tuple[str, ...]:
    return tuple(f"models/{timellm_source(variant)}" for variant in config.timellm.variants)


def timellm_outputs(config: ConfigView) -> tuple[str, ...]:
    return (
        REPORT,
        *(signal_path(timellm_source(variant)) for variant in config.timellm.variants),
        *timellm_models(config),
    )


STAGES = (
    StageSpec(
        "timellm",
        timellm,
        needs=("split",),
        reads=("timellm", "split.test", "seed"),
        device_key="timellm.device",
        outputs=timellm_outputs,
        models=timellm_models,
        progress_files=("*.last.pt",),
        signal_sources=tuple(timellm_source(variant) for variant in VARIANTS),
        # 2: the llm_to_attn layer attends from the patch positions only (other dropout draws);
        # 3: the backbone's last block runs for the patch positions only (int8 forecasts move);
        # 4: forecasts batched day by day, as the live positions forecast a day (int8 forecasts move)
        version=4,
        description="Time-LLM and its ablations on the same windows, seed and budget",
    ),
)
