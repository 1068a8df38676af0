"""Time-LLM behind the shared model interface: `fit` trains one variant and saves it, `forecast`
predicts the horizon for forecast inputs and scores the close."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from data_prep.windows import ForecastInputs, WindowSet
from models.interface import Fitted, Forecast

if TYPE_CHECKING:
    import torch

    from models.timellm.model import TimeLLM
    from models.timellm.training import TimeLLMTrainSettings


def fit(
    model: TimeLLM,
    train: WindowSet,
    valid: WindowSet,
    channels: list[int],
    settings: TimeLLMTrainSettings,
    device: torch.device,
    bf16: bool,
    out: Path,
    label: str,
    progress: Path | None = None,
) -> Fitted:
    """Train `model` in place on the `channels` of the train windows, keep its best weights on the
    valid windows and save them to `out` (save_pretrained). With `progress`, a file to save the
    training's progress to after every epoch and resume it from."""
    from models.timellm import training

    history, report = training.fit(model, train, valid, channels, settings, device, bf16, label, progress)
    model.save_pretrained(out)
    return Fitted(out, report, history)


def forecast(
    model: TimeLLM,
    series: ForecastInputs,
    channels: list[int],
    device: torch.device,
    bf16: bool,
    batch_size: int,
    label: str = "forecast",
) -> Forecast:
    """The model's point forecast of every series (kept in `Forecast.point`, (N, horizon, channels)),
    scored by the expected return of its close. Series are batched day by day, so forecasting one
    decision day (the live positions) gives the forecasts of that day among a whole test segment."""
    from models.timellm import training

    values = series.values[..., channels]
    predicted = training.forecast(model, values, device, bf16, batch_size, label=label, groups=series.days)
    close = channels.index(series.fields.index("close"))
    return Forecast.from_point(series.days, series.instruments, predicted, close, series.last("close"))
