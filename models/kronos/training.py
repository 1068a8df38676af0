"""Training loops for the Kronos tokenizer and predictor: one CPU, one GPU, or many via torchrun.

The same `fit` runs everywhere: AdamW, one-cycle schedule, gradient clipping, bf16 autocast on
CUDA, early stopping on validation, a `last.pt` checkpoint after every epoch to resume from, and
the best model saved with `save_pretrained`. Under torchrun (WORLD_SIZE > 1) the model is wrapped
in DistributedDataParallel (gloo on CPU, nccl on GPU); each rank trains on its own share of every
batch and validation sums are all-reduced. No tracking here: the caller logs the history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from data_prep.windows import WindowSet
from models.checkpoint import load_progress, random_states, restore_random_states, save_progress
from models.device import pick_device
from models.kronos.batches import DeviceWindows, draw_context
from models.kronos.model import Kronos
from models.kronos.tokenizer import KronosTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KronosTrainSettings:
    """How to train; the values come from pipeline.config (KronosTrainConfig), where the defaults live."""

    epochs: int
    steps_per_epoch: int  # batches per epoch, drawn at random from the training windows
    batch_size: int  # per process
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    grad_clip: float
    patience: int  # epochs without validation improvement before stopping
    val_windows: int
    min_context: int
    random_context_share: float  # share of batches with a random, shorter context
    clip: float  # normalised values are clipped to +-clip
    seed: int
    device: str
    bf16: bool  # autocast on CUDA only
    teacher_forcing: bool  # predictor: condition s2 on the true s1 token
    log_every: int  # steps between reads of the training metrics (each read waits for the device)


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_world(preference: str = "auto") -> World:
    """The process group under torchrun; a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=pick_device(preference))
    device = pick_device(preference)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    rank = dist.get_rank()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return World(rank=rank, size=dist.get_world_size(), device=device)


class TokenizerTask:
    """loss = (MSE(coarse) + MSE(fine) + BSQ) / 2; validation on the fine reconstruction."""

    name = "tokenizer"

    def step(self, model, x: torch.Tensor, stamps: torch.Tensor):
        (coarse, fine), bsq_loss, _, _ = model(x)
        recon_coarse, recon_fine = F.mse_loss(coarse, x), F.mse_loss(fine, x)
        loss = (recon_coarse + recon_fine + bsq_loss) / 2
        return loss, {"loss": loss, "recon_coarse": recon_coarse, "recon_fine": recon_fine, "bsq": bsq_loss}

    @torch.no_grad()
    def evaluate(self, model: KronosTokenizer, x: torch.Tensor, stamps: torch.Tensor) -> dict[str, torch.Tensor]:
        (_, fine), _, _, _ = model(x)
        s1_ids, _ = model.encode(x, half=True)
        used = torch.zeros(2**model.s1_bits, device=x.device)
        used[s1_ids.reshape(-1)] = 1
        return {"recon_fine": ((fine - x) ** 2).mean(dim=(1, 2)).sum(), "s1_codes_used": used}


class PredictorTask:
    """Next-token prediction on ids from a frozen tokenizer: (CE_s1 + CE_s2) / 2."""

    name = "predictor"

    def __init__(self, tokenizer: KronosTokenizer, teacher_forcing: bool):
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.teacher_forcing = teacher_forcing

    def _tokens(self, x: torch.Tensor):
        with torch.no_grad():
            s1, s2 = self.tokenizer.encode(x, half=True)
        return s1, s2

    def step(self, model, x: torch.Tensor, stamps: torch.Tensor):
        s1, s2 = self._tokens(x)
        s1_logits, s2_logits = model(
            s1[:, :-1], s2[:, :-1], stamps[:, :-1], use_teacher_forcing=self.teacher_forcing, s1_targets=s1[:, 1:]
        )
        head = model.module.head if isinstance(model, DistributedDataParallel) else model.head
        loss, ce_s1, ce_s2 = head.compute_loss(s1_logits, s2_logits, s1[:, 1:], s2[:, 1:])
        return loss, {"loss": loss, "ce_s1": ce_s1, "ce_s2": ce_s2}

    @torch.no_grad()
    def evaluate(self, model: Kronos, x: torch.Tensor, stamps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums over predicted positions; s2 is scored given the true s1 (deterministic)."""
        s1, s2 = self._tokens(x)
        s1_logits, s2_logits = model(
            s1[:, :-1], s2[:, :-1], stamps[:, :-1], use_teacher_forcing=True, s1_targets=s1[:, 1:]
        )
        targets_s1, targets_s2 = s1[:, 1:], s2[:, 1:]
        return {
            "ce_s1": F.cross_entropy(s1_logits.flatten(0, 1).float(), targets_s1.flatten(), reduction="sum"),
            "ce_s2": F.cross_entropy(s2_logits.flatten(0, 1).float(), targets_s2.flatten(), reduction="sum"),
            "acc_s1": (s1_logits.argmax(-1) == targets_s1).sum().float(),
            "acc_s2": (s2_logits.argmax(-1) == targets_s2).sum().float(),
            "positions": torch.tensor(float(targets_s1.numel()), device=x.device),
            "s1_counts": torch.bincount(targets_s1.flatten(), minlength=s1_logits.shape[-1]).float(),
        }


def fit(
    task,
    model: Kronos | KronosTokenizer,
    train: WindowSet,
    valid: WindowSet,
    settings: KronosTrainSettings,
    out_dir: Path,
    world: World,
) -> dict:
    """Train `model` on `task`; resumes from out_dir/last.pt when present. Returns the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    model.to(world.device)
    if isinstance(task, PredictorTask):
        task.tokenizer.to(world.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable,
        lr=settings.lr,
        betas=settings.betas,
        weight_decay=settings.weight_decay,
        fused=world.device.type in ("cuda", "cpu"),
    )
    total_steps = settings.epochs * settings.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=total_steps, pct_start=0.03, div_factor=10
    )
    state: dict[str, Any] = {"epoch": 0, "best": float("inf"), "bad_epochs": 0, "history": [], "best_metrics": {}}
    last = out_dir / "last.pt"
    if last.is_file():
        saved = load_progress(last, world.device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        restore_random_states(saved)
        state = saved["state"]
        log.info("%s: resuming from epoch %d of %d (%s)", task.name, state["epoch"], settings.epochs, last)
    wrapped = DistributedDataParallel(model) if world.size > 1 else model
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if settings.bf16 and world.device.type == "cuda" else nullcontext()
    )
    val_items = np.random.default_rng(settings.seed).permutation(len(valid))[: settings.val_windows]
    train_batches, valid_batches = DeviceWindows(train, world.device), DeviceWindows(valid, world.device)
    started, windows_seen = time.perf_counter(), 0

    for epoch in range(state["epoch"], settings.epochs):
        # Every rank draws the same plan (same seed), then takes its own slice of each batch.
        rng = np.random.default_rng([settings.seed, epoch])
        plan = torch.from_numpy(
            rng.integers(0, len(train), (settings.steps_per_epoch, world.size, settings.batch_size))
        ).to(world.device)
        contexts = [
            draw_context(rng, train.lookback, settings.min_context, settings.random_context_share)
            for _ in range(settings.steps_per_epoch)
        ]
        wrapped.train()
        bar = tqdm(
            range(settings.steps_per_epoch),
            desc=f"{task.name} epoch {epoch + 1}/{settings.epochs}",
            disable=not world.main,
            leave=False,
            mininterval=1.0,
        )
        running: dict[str, torch.Tensor] = {}  # metric sums on the device since the last read
        for step in bar:
            x, stamps = train_batches.batch(plan[step, world.rank], contexts[step], settings.clip)
            with autocast:
                loss, metrics = task.step(wrapped, x, stamps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            windows_seen += len(x) * world.size
            for key, value in metrics.items():
                running[key] = running[key] + value.detach() if key in running else value.detach().clone()
            last_step = step == settings.steps_per_epoch - 1
            if (step + 1) % settings.log_every == 0 or last_step:
                steps_read = (step % settings.log_every) + 1
                row = {
                    f"train_{k}": float(v) / steps_read for k, v in running.items()
                }  # mean over the steps since the last read
                state["history"].append(
                    {"step": epoch * settings.steps_per_epoch + step, **row, "lr": scheduler.get_last_lr()[0]}
                )
                bar.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)
                running = {}
        validation = validate(task, model, valid_batches, val_items, settings, world)
        state["history"].append(
            {"step": (epoch + 1) * settings.steps_per_epoch - 1, **{f"val_{k}": v for k, v in validation.items()}}
        )
        score = validation["loss"]
        log.info("%s epoch %d: %s", task.name, epoch + 1, ", ".join(f"val_{k}={v:.4f}" for k, v in validation.items()))
        improved = score < state["best"]
        state.update(epoch=epoch + 1, bad_epochs=0 if improved else state["bad_epochs"] + 1)
        if improved:
            state.update(best=score, best_metrics={f"best_val_{k}": v for k, v in validation.items()})
            if world.main:
                model.save_pretrained(out_dir / "best")
        if world.main:
            _save_last(last, model, optimizer, scheduler, state)
        if world.size > 1:
            dist.barrier()
        if state["bad_epochs"] >= settings.patience:
            log.info("%s: no validation improvement for %d epochs, stopping early", task.name, settings.patience)
            break

    seconds = time.perf_counter() - started
    return {
        "epochs_run": state["epoch"],
        "steps": state["epoch"] * settings.steps_per_epoch,  # epochs always run all their steps
        **state["best_metrics"],
        "train_seconds": seconds,
        "windows_per_second": windows_seen / seconds if seconds else 0.0,
        "history": state["history"],
        "parameter_checksum": parameter_checksum(model),
        "world_size": world.size,
        "settings": asdict(settings),
    }


@torch.no_grad()
def validate(
    task, model, valid: DeviceWindows, items: np.ndarray, settings: KronosTrainSettings, world: World
) -> dict[str, float]:
    """Validation metrics over `items` (full lookback), shared across ranks and summed."""
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=world.device)
    for chunk in np.array_split(
        items[world.rank :: world.size], max(1, len(items) // (settings.batch_size * world.size))
    ):
        if not len(chunk):
            continue
        x, stamps = valid.batch(torch.from_numpy(chunk).to(world.device), valid.lookback, settings.clip)
        sums = task.evaluate(model, x, stamps)
        for key, value in sums.items():
            totals[key] = totals[key] + value if key in totals else value.clone()
        count += len(chunk)
    if world.size > 1:
        for value in list(totals.values()) + [count]:
            dist.all_reduce(value)
    return summarise(task, totals, float(count))


def summarise(task, totals: dict[str, torch.Tensor], count: float) -> dict[str, float]:
    if isinstance(task, TokenizerTask):
        recon = float(totals["recon_fine"]) / count
        return {
            "loss": recon,
            "recon_fine": recon,
            "s1_code_usage": float((totals["s1_codes_used"] > 0).float().mean()),
        }
    positions = float(totals["positions"])
    ce_s1, ce_s2 = float(totals["ce_s1"]) / positions, float(totals["ce_s2"]) / positions
    # CE of always predicting the validation set's own s1 code frequencies: a model that only
    # learned which codes are common gets this, not the uniform log(2^bits).
    frequencies = totals["s1_counts"] / totals["s1_counts"].sum()
    marginal = float(-(frequencies[frequencies > 0] * frequencies[frequencies > 0].log()).sum())
    return {
        "loss": (ce_s1 + ce_s2) / 2,
        "ce_s1": ce_s1,
        "ce_s2": ce_s2,
        "acc_s1": float(totals["acc_s1"]) / positions,
        "acc_s2": float(totals["acc_s2"]) / positions,
        "marginal_ce_s1": marginal,
    }


def _save_last(path: Path, model, optimizer, scheduler, state: dict) -> None:
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    save_progress(path, {**payload, **random_states(), "state": state})


def parameter_checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def write_report(report: dict, out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
