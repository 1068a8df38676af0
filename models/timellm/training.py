"""Train Time-LLM (or an ablation) on split windows, score it, and forecast in batches.

Loss: MSE of the forecast on the normalised scale (errors divided by each series' lookback
standard deviation, the RevIN scale). Adam over the trainable parameters only, linear warm-up
then cosine decay of the learning rate, early stopping on validation MSE with the best weights
restored. No tracking here: the stage logs the returned history.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from data_prep.windows import WindowSet
from models.checkpoint import load_progress, random_states, restore_random_states, save_progress
from models.device import autocast
from models.timellm.layers import revin
from models.timellm.model import TimeLLM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimeLLMTrainSettings:
    """How to train; the values come from pipeline.config (TimeLLMTrainConfig), where the defaults live."""

    epochs: int
    steps_per_epoch: int  # batches per epoch, drawn at random from the training windows
    batch_size: int  # windows per optimiser step
    micro_batch: int  # windows per forward/backward pass; their gradients add up to the batch's
    lr: float
    patience: int  # epochs without validation improvement before stopping
    val_windows: int
    log_every: int  # steps between reads of the training loss (each read waits for the device)
    seed: int


def windows_tensor(windows: WindowSet, items: np.ndarray, channels: list[int], device: torch.device):
    """Inputs (B, L, C) and targets (B, H, C) of the chosen channels, float32 on `device`."""
    inputs, targets = windows.get(items)

    def as_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array[..., channels], dtype=np.float32)).to(device)

    return as_tensor(inputs), as_tensor(targets)


def normalised_errors(forecast: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """(forecast - target) on the scale the model works in: divided by the lookback's RevIN std."""
    _, _, std = revin(inputs)
    return (forecast - target) / std


def inference_memory(model: TimeLLM, device: torch.device, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The prototypes' keys and values for inference, computed once: the vocabulary projection in
    fp32, as training runs it, and the keys and values in the forward pass's precision."""
    prototypes = model.text_prototypes()
    with autocast(device, bf16):
        return model.prototype_memory(prototypes)


@torch.no_grad()
def evaluate(
    model: TimeLLM,
    windows: WindowSet,
    items: np.ndarray,
    channels: list[int],
    device: torch.device,
    bf16: bool,
    batch_size: int = 256,
) -> dict[str, float]:
    """Normalised MSE/MAE over `items`, for the model and for the last-value (persistence) forecast."""
    model.eval()
    memory = inference_memory(model, device, bf16)
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # summed on the device, read once
    for start in range(0, len(items), batch_size):
        x, y = windows_tensor(windows, items[start : start + batch_size], channels, device)
        with autocast(device, bf16):
            forecast = model(x, memory).float()
        errors = normalised_errors(forecast, y, x)
        naive = normalised_errors(x[:, -1:].expand_as(y), y, x)
        sums += torch.stack([errors.pow(2).sum(), errors.abs().sum(), naive.pow(2).sum(), naive.abs().sum()]).double()
    count = len(items) * windows.horizon * len(channels)
    return dict(zip(("mse", "mae", "persistence_mse", "persistence_mae"), (sums / count).tolist(), strict=True))


def accumulate_gradients(
    model: TimeLLM, x: torch.Tensor, y: torch.Tensor, micro_batch: int, device: torch.device, bf16: bool
) -> torch.Tensor:
    """Gradients of the batch's MSE, summed over micro-batches of `micro_batch` windows; returns the
    MSE as a 0-d tensor on the device (reading it waits for the device, so the caller reads it when logging).

    The text prototypes (the vocabulary projection, the costliest part of a small-batch step) are
    computed once per batch and their gradient, gathered from every micro-batch, is sent back
    through the projection once: the gradient is the whole batch's, at the memory of a micro-batch.
    """
    prototypes = model.text_prototypes()
    shared = prototypes.detach().requires_grad_()
    total = torch.zeros((), device=x.device)
    for start in range(0, len(x), micro_batch):
        inputs, targets = x[start : start + micro_batch], y[start : start + micro_batch]
        with autocast(device, bf16):
            forecast = model(inputs, model.prototype_memory(shared)).float()
        loss = normalised_errors(forecast, targets, inputs).pow(2).sum() / y.numel()  # this part of the batch mean
        loss.backward()
        total += loss.detach()
    prototypes.backward(shared.grad)
    return total


def fit(
    model: TimeLLM,
    train: WindowSet,
    valid: WindowSet,
    channels: list[int],
    settings: TimeLLMTrainSettings,
    device: torch.device,
    bf16: bool,
    label: str,
    checkpoint: Path | None = None,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Train in place; returns the per-step history and a report. The best weights are kept. With
    `checkpoint`, the progress is saved there after every epoch and a later call resumes from it."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    val_items = np.sort(rng.choice(len(valid), min(settings.val_windows, len(valid)), replace=False))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=settings.lr, fused=device.type in ("cpu", "cuda"))
    total_steps = settings.epochs * settings.steps_per_epoch
    warmup = max(1, total_steps // 5)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    )
    progress_state: dict[str, Any] = {
        "epoch": 0, "step": 0, "best": {"mse": float("inf")}, "best_state": None, "stale": 0, "history": [],
        "finished": False, "seconds": 0.0,
    }  # fmt: skip
    if checkpoint is not None and checkpoint.is_file():
        progress_state = load_state(checkpoint, model, optimizer, schedule, rng, device)
        log.info("%s: resuming from epoch %d of %d (%s)", label, progress_state["epoch"], settings.epochs, checkpoint)
    history: list[dict[str, float]] = progress_state["history"]
    best, best_state, stale = progress_state["best"], progress_state["best_state"], progress_state["stale"]
    step, epoch, started = progress_state["step"], progress_state["epoch"] - 1, time.perf_counter()
    for epoch in range(progress_state["epoch"], 0 if progress_state["finished"] else settings.epochs):
        model.train()
        progress = tqdm(
            range(settings.steps_per_epoch), desc=f"{label} epoch {epoch + 1}/{settings.epochs}", leave=False
        )
        unread: list[torch.Tensor] = []  # training losses on the device since the last read
        for index in progress:
            x, y = windows_tensor(train, rng.integers(0, len(train), settings.batch_size), channels, device)
            optimizer.zero_grad(set_to_none=True)
            unread.append(accumulate_gradients(model, x, y, settings.micro_batch, device, bf16))
            optimizer.step()
            schedule.step()
            step += 1
            if step % settings.log_every == 0 or index == settings.steps_per_epoch - 1:
                losses = torch.stack(unread).tolist()
                history += [
                    {"step": step - len(losses) + 1 + k, f"{label}_train_mse": loss} for k, loss in enumerate(losses)
                ]
                progress.set_postfix(loss=f"{losses[-1]:.4f}")
                unread = []
        scores = evaluate(model, valid, val_items, channels, device, bf16, settings.micro_batch)
        history.append({"step": step, f"{label}_val_mse": scores["mse"], f"{label}_val_mae": scores["mae"]})
        log.info(
            "%s epoch %d: train MSE %.4f, validation MSE %.4f (persistence %.4f)",
            label,
            epoch + 1,
            np.mean([row[f"{label}_train_mse"] for row in history[-settings.steps_per_epoch - 1 : -1]]),
            scores["mse"],
            scores["persistence_mse"],
        )
        if scores["mse"] < best["mse"]:
            best, stale = scores, 0
            best_state = copy.deepcopy(model.trainable_state())
        else:
            stale += 1
        stopping = stale >= settings.patience
        if checkpoint is not None:
            state = {"epoch": epoch + 1, "step": step, "best": best, "best_state": best_state, "stale": stale,
                     "history": history, "finished": stopping or epoch + 1 == settings.epochs,
                     "seconds": progress_state["seconds"] + time.perf_counter() - started}  # fmt: skip
            save_state(checkpoint, model, optimizer, schedule, rng, state)
        if stopping:
            log.info("%s: no validation improvement for %d epochs, stopping", label, stale)
            break
    assert best_state is not None, "no epoch improved on an infinite validation MSE (NaN losses?)"
    model.load_state_dict(best_state, strict=False)
    seconds = progress_state["seconds"] + time.perf_counter() - started  # an earlier attempt's epochs too
    report = {
        "epochs_run": epoch + 1,
        "steps": step,
        "train_seconds": seconds,
        "windows_per_second": step * settings.batch_size / seconds,
        **{f"best_val_{key}": value for key, value in best.items()},
    }
    return history, report


def save_state(path: Path, model: TimeLLM, optimizer, schedule, rng: np.random.Generator, state: dict) -> None:
    """The trainable weights, optimiser, schedule and every random state (numpy's batches too)."""
    payload = {"model": model.trainable_state(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
    save_progress(
        path, {**payload, **random_states(), "numpy_rng": json.dumps(rng.bit_generator.state), "progress": state}
    )


def load_state(
    path: Path, model: TimeLLM, optimizer, schedule, rng: np.random.Generator, device: torch.device
) -> dict[str, Any]:
    saved = load_progress(path, device)
    model.load_state_dict(saved["model"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    rng.bit_generator.state = json.loads(saved["numpy_rng"])
    restore_random_states(saved)
    return saved["progress"]


@torch.no_grad()
def forecast(
    model: TimeLLM,
    inputs: np.ndarray,
    device: torch.device,
    bf16: bool,
    batch_size: int = 256,
    label: str = "forecast",
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """inputs (N, L, C) -> forecasts (N, H, C) in the inputs' units, `batch_size` rows per forward
    pass; with `groups` (N,), no pass mixes two groups (forecast_batches).

    A model on a cheaper copy of its backbone (int8_backbone, bf16_backbone) whose forecast fails
    forecasts again, this call and later ones, on the float backbone, with one warning
    (TimeLLM.fall_back_to_original): the same forecasts as the float model.
    """
    model = model.forecaster()
    batches = forecast_batches(len(inputs), batch_size, groups)
    try:
        return _forecast(model, inputs, device, bf16, batches, label)
    except (RuntimeError, NotImplementedError, TypeError) as error:  # the copy's operators; not bad inputs
        on_original = model.fall_back_to_original(error)
        if on_original is None:
            raise
    return _forecast(on_original, inputs, device, bf16, batches, label)


def forecast_batches(count: int, batch_size: int, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """The rows of each forward pass: `batch_size` at a time in row order; with `groups`, each group's
    rows (in row order) apart from the others'. A row's forecast may depend on the rows it is batched
    with (an int8 backbone quantises each pass's activations together), so a group forecast alone
    gets the forecasts it gets among all groups."""
    if groups is None:
        return [np.arange(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    order = np.argsort(groups, kind="stable")
    changes = np.flatnonzero(groups[order][1:] != groups[order][:-1]) + 1
    return [
        block[start : start + batch_size]
        for block in np.split(order, changes)
        for start in range(0, len(block), batch_size)
    ]


def _forecast(
    model: TimeLLM, inputs: np.ndarray, device: torch.device, bf16: bool, batches: list[np.ndarray], label: str
) -> np.ndarray:
    model.eval()
    memory = inference_memory(model, device, bf16)
    outputs = []  # kept on the device and copied back once, so the batches do not wait for each other
    for rows in tqdm(batches, desc=label, leave=False):
        x = torch.from_numpy(np.ascontiguousarray(inputs[rows], dtype=np.float32)).to(device)
        with autocast(device, bf16):
            outputs.append(model(x, memory).float())
    forecasts = torch.cat(outputs).cpu().numpy()
    placed = np.empty_like(forecasts)
    placed[np.concatenate(batches)] = forecasts  # back in row order
    return placed
