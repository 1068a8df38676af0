"""Chronos-2 teacher vs distilled-student inference time per 1,000 series on the CPU.

    python bench/chronos_student.py [--series 1000] [--contexts 64 256] [--horizon 5] [--teacher PATH]

Without `--teacher` the teacher is a random model of amazon/chronos-2's size (120M parameters;
nothing can be downloaded here), the student the default `chronos.student.architecture` built
from it. Speed does not depend on the weights, so the figures hold for the published model.
Both forecast the same series through `Chronos2Pipeline.predict` with the same batch size.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from models.chronos.forecasting import load_pipeline, pipeline_for, pipeline_quantiles
from models.chronos.student import build_student, parameter_count
from models.chronos.tiny import CHRONOS2_SIZE, tiny_chronos2
from pipeline.config import ChronosStudentConfig


def seconds_per_1000(pipeline, values: np.ndarray, horizon: int, batch_size: int) -> float:
    pipeline_quantiles(pipeline, values[:batch_size], 0, [], ["close"], horizon, batch_size, "warm-up")
    started = time.perf_counter()
    pipeline_quantiles(pipeline, values, 0, [], ["close"], horizon, batch_size, "timing")
    return (time.perf_counter() - started) / len(values) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--contexts", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--teacher", default="", help="a local Chronos-2 folder instead of the random full-size one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        source = args.teacher or str(tiny_chronos2(folder, **CHRONOS2_SIZE))
        teacher = load_pipeline(source, torch.device("cpu"))
    student_model = build_student(teacher.model, ChronosStudentConfig().architecture, seed=0).eval()
    student = pipeline_for(student_model)
    print(
        f"torch threads {torch.get_num_threads()}; teacher {parameter_count(teacher.model) / 1e6:.1f}M parameters, "
        f"student {parameter_count(student_model) / 1e6:.1f}M; {args.series} series, horizon {args.horizon}, "
        f"batch {args.batch_size}"
    )
    rng = np.random.default_rng(0)
    for context in args.contexts:
        values = (100 + rng.normal(size=(args.series, context, 1)).cumsum(axis=1)).astype(np.float32)
        teacher_time = seconds_per_1000(teacher, values, args.horizon, args.batch_size)
        student_time = seconds_per_1000(student, values, args.horizon, args.batch_size)
        print(
            f"context {context:>5}: teacher {teacher_time:7.2f} s per 1,000 series, student {student_time:6.2f} s, "
            f"speed-up {teacher_time / student_time:.1f}x"
        )


if __name__ == "__main__":
    main()
