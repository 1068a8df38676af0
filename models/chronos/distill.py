"""Distil a Chronos-2 teacher into a smaller student on the split's training windows.

The teacher labels a fixed sample of training windows once (its quantile forecasts); the student
then learns to reproduce those quantiles, plus the true targets with weight `target_weight`:

    loss = mean |student_q - teacher_q| + target_weight * pinball(student_q, target)

both on the model's own scaled space (instance normalisation of the context, arcsinh), summed
over quantile levels and averaged over the horizon, as the package's training loss is. Every
labelled window gets a random context length between `min_context` and the lookback (the steps
before it are NaN, which the model masks), so the student keeps the any-length behaviour. Early
stopping on the validation loss, the best weights are restored. No tracking here.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data_prep.windows import WindowSet
from models.checkpoint import load_progress, random_states, restore_random_states, save_progress
from models.chronos.forecasting import model_quantiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillSettings:
    """How to distil; the values come from pipeline.config (ChronosStudentConfig), where the defaults live."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    target_weight: float  # weight of the true-target pinball loss beside the teacher-matching loss
    min_context: int
    train_windows: int  # training windows the teacher labels (once)
    val_windows: int
    eval_every: int  # steps between validations
    log_every: int  # steps between reads of the training losses (each read waits for the device)
    patience: int  # validations without improvement before stopping
    seed: int


@dataclass
class Labelled:
    """Windows with random context lengths and what the student learns from, on the training device."""

    inputs: torch.Tensor  # (N, L, F), NaN before each window's context start
    targets: torch.Tensor  # (N, H) true future of the target channel
    teacher: torch.Tensor  # (N, Q, H) teacher quantiles


def random_length_inputs(
    windows: WindowSet, items: np.ndarray, target: int, min_context: int, max_context: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs cut from the left to at most `max_context` steps, then to a random length each."""
    inputs, targets = windows.get(items)
    inputs = np.array(inputs[:, -max_context:], dtype=np.float32)
    length = inputs.shape[1]
    keep = rng.integers(min(min_context, length), length + 1, len(items))
    inputs[np.arange(length)[None, :] < (length - keep)[:, None]] = np.nan
    return torch.from_numpy(inputs), torch.from_numpy(np.ascontiguousarray(targets[..., target], dtype=np.float32))


@torch.no_grad()
def label(
    teacher,
    windows: WindowSet,
    items: np.ndarray,
    target: int,
    covariates: list[int],
    settings: DistillSettings,
    rng: np.random.Generator,
    device: torch.device,
    what: str,
) -> Labelled:
    inputs, targets = random_length_inputs(
        windows, items, target, settings.min_context, teacher.chronos_config.context_length, rng
    )
    inputs, targets = inputs.to(device), targets.to(device)
    teacher.eval()
    quantiles = []
    for start in tqdm(range(0, len(items), 256), desc=f"teacher labels {what}", leave=False):
        quantiles.append(
            model_quantiles(teacher, inputs[start : start + 256], target, covariates, windows.horizon).float()
        )
    return Labelled(inputs, targets, torch.cat(quantiles))


def scaled(model, context_target: torch.Tensor, *series: torch.Tensor) -> list[torch.Tensor]:
    """Each (B, ..., H) tensor on the model's scaled space of the target context (B, L)."""
    _, loc_scale = model.instance_norm(context_target)
    out = []
    for values in series:
        flat = values.reshape(len(values), -1)
        out.append(model.instance_norm(flat, loc_scale)[0].reshape(values.shape))
    return out


def pinball(quantiles: torch.Tensor, targets: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Quantile loss of (B, Q, H) forecasts at `levels` (Q,) against (B, H) targets, reduced as
    the package's training loss: twice the pinball, mean over the horizon, sum over levels, mean over series."""
    levels = levels.view(1, -1, 1).to(quantiles)
    below = (targets[:, None] <= quantiles).float()
    return (2 * ((targets[:, None] - quantiles) * (below - levels)).abs()).mean(-1).sum(-1).mean()


def losses(student, batch: Labelled, target: int, covariates: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher-matching loss, true-target pinball loss) for one batch."""
    inputs, targets, teacher = batch.inputs, batch.targets, batch.teacher
    predicted = model_quantiles(student, inputs, target, covariates, targets.shape[-1])  # (B, Q, H)
    predicted, teacher, targets = scaled(student, inputs[..., target], predicted, teacher, targets)
    match = (predicted - teacher).abs().mean(-1).sum(-1).mean()
    return match, pinball(predicted, targets, student.quantiles)


def subset(data: Labelled, items: torch.Tensor | slice) -> Labelled:
    return Labelled(data.inputs[items], data.targets[items], data.teacher[items])


@torch.no_grad()
def evaluate(
    student, data: Labelled, target: int, covariates: list[int], settings: DistillSettings, device: torch.device
) -> dict[str, float]:
    student.eval()
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # summed on the device, read once
    for start in range(0, len(data.targets), 256):
        batch = subset(data, slice(start, start + 256))
        sums += torch.stack(losses(student, batch, target, covariates)).double() * len(batch.targets)
    match, pinball = (sums / len(data.targets)).tolist()
    return {"match": match, "pinball": pinball, "loss": match + settings.target_weight * pinball}


def teacher_pinball(teacher, data: Labelled, target: int) -> float:
    """The teacher's own pinball loss on the labelled windows: the level the student aims at."""
    teacher_quantiles, targets = scaled(teacher, data.inputs[..., target], data.teacher, data.targets)
    return pinball(teacher_quantiles, targets, teacher.quantiles).item()


def distil(
    student,
    teacher,
    train: WindowSet,
    valid: WindowSet,
    target: int,
    covariates: list[int],
    settings: DistillSettings,
    device: torch.device,
    checkpoint: Path | None = None,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Train `student` in place; returns the per-step history and a report. With `checkpoint`, the
    progress is saved there at every validation check and a later call resumes from it."""
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    train_items = np.sort(rng.choice(len(train), min(settings.train_windows, len(train)), replace=False))
    val_items = np.sort(rng.choice(len(valid), min(settings.val_windows, len(valid)), replace=False))
    started = time.perf_counter()
    train_data = label(teacher, train, train_items, target, covariates, settings, rng, device, "train")
    val_data = label(teacher, valid, val_items, target, covariates, settings, rng, device, "valid")
    label_seconds = time.perf_counter() - started
    log.info(
        "teacher labelled %d training and %d validation windows in %.1f s",
        len(train_items),
        len(val_items),
        label_seconds,
    )

    student.to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(1, settings.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
    )
    initial = evaluate(student, val_data, target, covariates, settings, device)  # the untrained student, for reference
    history: list[dict[str, float]] = [{"step": 0, **{f"val_{key}": value for key, value in initial.items()}}]
    best, best_state, stale = {"loss": float("inf")}, None, 0
    plan = torch.from_numpy(rng.integers(0, len(train_items), (settings.steps, settings.batch_size))).to(
        device
    )  # every step's batch
    unread: list[torch.Tensor] = []  # (loss, match, pinball) of the steps since the last read, on the device
    first, finished, earlier_seconds = 1, False, 0.0
    if checkpoint is not None and checkpoint.is_file():
        saved = load_progress(checkpoint, device)
        student.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        restore_random_states(saved)
        best, best_state, stale, history = (saved[k] for k in ("best", "best_state", "stale", "history"))
        first, finished, earlier_seconds = saved["step"] + 1, saved["finished"], saved["seconds"]
        log.info("student: resuming from step %d of %d (%s)", first - 1, settings.steps, checkpoint)
    last = first - 1 if finished else settings.steps  # an early stop stays stopped
    progress = tqdm(range(first, last + 1), desc="distilling Chronos-2 student", leave=False)
    step = first - 1
    for step in progress:
        student.train()
        match, pinball = losses(student, subset(train_data, plan[step - 1]), target, covariates)
        loss = match + settings.target_weight * pinball
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        unread.append(torch.stack([loss, match, pinball]).detach())
        validating = step % settings.eval_every == 0 or step == settings.steps
        if step % settings.log_every and not validating:
            continue
        rows = torch.stack(unread).tolist()
        history += [
            {
                "step": step - len(rows) + 1 + k,
                "distill_loss": loss_,
                "distill_match": match_,
                "distill_pinball": pinball_,
            }
            for k, (loss_, match_, pinball_) in enumerate(rows)
        ]
        progress.set_postfix(loss=f"{rows[-1][0]:.4f}")
        unread = []
        if not validating:
            continue
        scores = evaluate(student, val_data, target, covariates, settings, device)
        history.append({"step": step, **{f"val_{key}": value for key, value in scores.items()}})
        log.info(
            "student step %d: train loss %.4f, validation loss %.4f (match %.4f, pinball %.4f)",
            step,
            rows[-1][0],
            scores["loss"],
            scores["match"],
            scores["pinball"],
        )
        if scores["loss"] < best["loss"]:
            best, best_state, stale = scores, copy.deepcopy(student.state_dict()), 0
        else:
            stale += 1
        if checkpoint is not None:
            state = {
                "student": student.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
            }
            progress_state = {
                "step": step, "best": best, "best_state": best_state, "stale": stale, "history": history,
                "finished": stale >= settings.patience or step == settings.steps,
                "seconds": earlier_seconds + time.perf_counter() - started - label_seconds,
            }  # fmt: skip
            save_progress(checkpoint, {**state, **random_states(), **progress_state})
        if stale >= settings.patience:
            log.info("student: no validation improvement for %d checks, stopping at step %d", stale, step)
            break
    student.load_state_dict(best_state)
    student.eval()
    report = {
        "steps": step,
        "label_seconds": label_seconds,
        "train_seconds": earlier_seconds + time.perf_counter() - started - label_seconds,
        **{f"best_val_{key}": value for key, value in best.items()},
        **{f"initial_val_{key}": value for key, value in initial.items()},
        "teacher_val_pinball": teacher_pinball(teacher, val_data, target),
    }
    return history, report
