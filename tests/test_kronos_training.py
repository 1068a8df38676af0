"""Kronos training: losses fall, interrupted training resumes exactly, DDP ranks agree."""

import json
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from data_prep.windows import Split
from models.kronos import training
from models.kronos.model import Kronos
from models.kronos.tokenizer import KronosTokenizer
from models.kronos.train_cli import train
from models.kronos.training import TokenizerTask, World, fit
from pipeline.cache import StageCache
from tests.helpers import KRONOS_TRAIN_SETTINGS, TINY_PREDICTOR, TINY_TOKENIZER


class Interrupted(Exception):
    """Stands in for a kill or Ctrl-C in the middle of training."""


def spec(**extra):
    return {"settings": asdict(KRONOS_TRAIN_SETTINGS), "architecture": TINY_TOKENIZER, "pretrained": "", **extra}


def mean_loss(report, first: bool):
    """Mean training loss over the first (or last) 5 steps: one history row each (log_every 5)."""
    rows = [row["train_loss"] for row in report["history"] if "train_loss" in row]
    return rows[0] if first else rows[-1]


def test_device_batches_equal_the_host_windows_normalised(tiny_split_dir):
    import numpy as np

    from data_prep.windows import normalise
    from models.kronos.batches import DeviceWindows, time_features

    windows = Split.load(tiny_split_dir).segment("train")
    items, context = np.array([0, 7, len(windows) - 1, 7]), 12
    x, stamps = DeviceWindows(windows, torch.device("cpu")).batch(torch.from_numpy(items), context, clip=2.0)
    inputs, targets = windows.get(items)
    scaled_inputs, scaled_targets, _, _ = normalise(inputs[:, -context:], targets, clip=2.0)
    np.testing.assert_allclose(x.numpy(), np.concatenate([scaled_inputs, scaled_targets], axis=1), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(stamps.numpy(), time_features(windows.dates(items)[:, windows.lookback - context :]))


def test_tokenizer_then_predictor_learn(tiny_split_dir, tmp_path):
    tokenizer_report = train("tokenizer", tiny_split_dir, tmp_path / "tokenizer", spec())
    assert mean_loss(tokenizer_report, first=False) < mean_loss(tokenizer_report, first=True)
    assert 0 < tokenizer_report["best_val_s1_code_usage"] <= 1
    KronosTokenizer.from_pretrained(tmp_path / "tokenizer" / "best")

    # fine-tuning starts from the saved weights (the architecture comes from the checkpoint)
    finetuned = train(
        "tokenizer",
        tiny_split_dir,
        tmp_path / "finetuned",
        spec(pretrained=str(tmp_path / "tokenizer" / "best"), architecture={}),
    )
    assert mean_loss(finetuned, first=True) < mean_loss(tokenizer_report, first=True) / 2

    predictor_spec = spec(architecture=TINY_PREDICTOR, tokenizer=str(tmp_path / "tokenizer" / "best"))
    report = train("predictor", tiny_split_dir, tmp_path / "predictor", predictor_spec)
    assert mean_loss(report, first=False) < mean_loss(report, first=True)
    assert report["best_val_ce_s1"] < 4 * 0.6931  # below uniform guessing over 2^4 codes
    Kronos.from_pretrained(tmp_path / "predictor" / "best")
    saved = json.loads((tmp_path / "predictor" / "report.json").read_text())
    assert saved["steps"] == report["steps"] == 30


def test_interrupted_training_resumes_to_the_same_weights(tiny_split_dir, tmp_path, monkeypatch):
    split = Split.load(tiny_split_dir)
    original = training.validate

    def run(out, interrupt_after_epochs=None):
        calls = {"n": 0}

        def validate(*args, **kwargs):
            calls["n"] += 1
            result = original(*args, **kwargs)
            if interrupt_after_epochs is not None and calls["n"] > interrupt_after_epochs:
                raise Interrupted
            return result

        monkeypatch.setattr(training, "validate", validate)
        torch.manual_seed(0)  # same initial weights in every run
        model = KronosTokenizer(**TINY_TOKENIZER)
        return fit(
            TokenizerTask(), model, split.segment("train"), split.segment("valid"), KRONOS_TRAIN_SETTINGS, out, World()
        )

    uninterrupted = run(tmp_path / "straight")
    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", interrupt_after_epochs=1)  # dies during epoch 2's validation
    resumed = run(tmp_path / "resumed")
    assert resumed["parameter_checksum"] == uninterrupted["parameter_checksum"]
    assert resumed["epochs_run"] == 2


def test_cache_keeps_a_partial_output_for_the_next_attempt(tmp_path):
    cache = StageCache(tmp_path)
    with pytest.raises(Interrupted):
        with cache.writing("predictor", "k1", ("last.pt",)) as (folder, _):
            (folder / "last.pt").write_text("checkpoint")
            raise Interrupted
    assert cache.lookup("predictor", "k1") is None
    with cache.writing("predictor", "k1", ("last.pt",)) as (folder, manifest):
        assert (folder / "last.pt").read_text() == "checkpoint"
        (folder / "best").mkdir()
        (folder / "last.pt.partial").write_text("a save cut short")
        manifest.update(run_id="r", params={}, metrics={}, summary=[])
    published = cache.lookup("predictor", "k1")
    assert published["run_id"] == "r" and published["files"] == {}  # progress is dropped once the stage is done
    assert not (cache.path("predictor", "k1") / "last.pt").exists()


@pytest.mark.slow
def test_two_processes_under_torchrun_agree(tiny_split_dir, tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec()))
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "models.kronos.train_cli",
        "--task",
        "tokenizer",
        "--split",
        str(tiny_split_dir),
        "--out",
        str(out),
        "--spec",
        str(spec_path),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2
    checksums = [(out / f"rank{rank}_checksum.txt").read_text() for rank in (0, 1)]
    assert checksums[0] == checksums[1] == report["parameter_checksum"]
    assert mean_loss(report, first=False) < mean_loss(report, first=True)
