"""Train the Kronos tokenizer or predictor on a split folder; runs alone or under torchrun.

    python -m models.kronos.train_cli --task tokenizer --split SPLIT_DIR --out OUT_DIR --spec SPEC.json
    torchrun --nproc_per_node 2 -m models.kronos.train_cli ...   (DistributedDataParallel)

SPEC.json: {"settings": KronosTrainSettings fields, "architecture": constructor arguments,
"pretrained": hub id or folder ("" to train from scratch), "tokenizer": folder of the trained
tokenizer (predictor only)}. Writes OUT_DIR/best (save_pretrained), OUT_DIR/last.pt (resume) and
OUT_DIR/report.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from data_prep.windows import Split
from models.kronos.model import Kronos
from models.kronos.tokenizer import KronosTokenizer
from models.kronos.training import KronosTrainSettings, PredictorTask, TokenizerTask, fit, init_world, write_report

log = logging.getLogger(__name__)


def build(model_class, architecture: dict, pretrained: str):
    if pretrained:
        log.info("fine-tuning %s from %s", model_class.__name__, pretrained)
        return model_class.from_pretrained(pretrained)
    log.info("training %s from scratch: %s", model_class.__name__, architecture)
    return model_class(**architecture)


def train(task_name: str, split_dir: Path, out_dir: Path, spec: dict) -> dict:
    settings = KronosTrainSettings(**{**spec["settings"], "betas": tuple(spec["settings"]["betas"])})
    world = init_world(settings.device)
    split = Split.load(split_dir)
    torch.manual_seed(settings.seed)  # a model trained from scratch starts from the same weights whatever ran before
    task: TokenizerTask | PredictorTask
    if task_name == "tokenizer":
        model = build(KronosTokenizer, spec["architecture"], spec.get("pretrained", ""))
        task = TokenizerTask()
    else:
        model = build(Kronos, spec["architecture"], spec.get("pretrained", ""))
        task = PredictorTask(KronosTokenizer.from_pretrained(spec["tokenizer"]), settings.teacher_forcing)
    model.train()
    report = fit(task, model, split.segment("train"), split.segment("valid"), settings, out_dir, world)
    if world.main:
        write_report(report, out_dir)
    if world.size > 1:
        (out_dir / f"rank{world.rank}_checksum.txt").write_text(report["parameter_checksum"])
        dist.barrier()
        dist.destroy_process_group()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["tokenizer", "predictor"], required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    train(args.task, args.split, args.out, json.loads(args.spec.read_text()))


if __name__ == "__main__":
    main()
