"""Chronos-2 teacher and distilled student on tiny random models built and saved here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from data_prep.windows import Split
from models.chronos.distill import distil, random_length_inputs
from models.chronos.forecasting import load_pipeline, model_quantiles, pipeline_quantiles
from models.chronos.student import build_student, parameter_count, student_config
from models.interface import Forecast
from pipeline.config import ChronosStudentConfig

chronos = pytest.importorskip("chronos", reason='chronos-forecasting is an optional extra: pip install -e ".[chronos]"')

DEVICE = torch.device("cpu")
STUDENT = {"num_layers": 1, "d_model": 16, "d_ff": 32, "num_heads": 2}


def test_tiny_model_loads_through_the_package_entry_points(teacher_dir):
    assert isinstance(chronos.BaseChronosPipeline.from_pretrained(teacher_dir), chronos.Chronos2Pipeline)
    pipeline = load_pipeline(str(teacher_dir), DEVICE)
    values = np.cumsum(np.random.default_rng(0).normal(size=(5, 40, 3)), axis=1).astype(np.float32) + 50
    quantiles = pipeline_quantiles(pipeline, values, 0, [], ["close", "open", "volume"], horizon=7, batch_size=2)
    assert quantiles.shape == (5, 21, 7) and np.isfinite(quantiles).all()
    # the pipeline's forecast equals one forward pass of the model (horizon within one pass)
    direct = model_quantiles(pipeline.model, torch.from_numpy(values), 0, [], 7).detach().numpy()
    np.testing.assert_allclose(quantiles, direct, rtol=1e-4, atol=1e-4)
    with_covariates = pipeline_quantiles(
        pipeline, values, 0, [1, 2], ["close", "open", "volume"], horizon=7, batch_size=2
    )
    direct = model_quantiles(pipeline.model, torch.from_numpy(values), 0, [1, 2], 7).detach().numpy()
    np.testing.assert_allclose(with_covariates, direct, rtol=1e-4, atol=1e-4)
    assert not np.allclose(with_covariates, quantiles)  # the covariates reach the forecast


def test_scores_use_the_median_and_the_spread():
    levels = [0.1, 0.5, 0.9]
    quantiles = np.array([[[9.0, 9.0], [11.0, 12.0], [13.0, 15.0]]])  # (1, 3 levels, 2 steps)
    rows = (np.array(["2021-01-04"], dtype="datetime64[ns]"), np.array(["A"]))
    forecast = Forecast.from_quantiles(*rows, quantiles, levels, np.array([10.0]))
    assert forecast.score[0] == pytest.approx(11.5 / 10 - 1)
    assert forecast.score_std[0] == pytest.approx((4 + 6) / 2 / 10 / (2 * 1.2816))
    crossed = Forecast.from_quantiles(*rows, quantiles[:, ::-1], levels, np.array([10.0]))  # 90% below 10%
    assert np.allclose((crossed.score, crossed.score_std), (forecast.score, forecast.score_std))


def test_student_inherits_everything_but_its_size(teacher_dir):
    teacher = load_pipeline(str(teacher_dir), DEVICE).model
    student = build_student(teacher, STUDENT, seed=0)
    assert student.chronos_config == teacher.chronos_config
    assert (student.config.num_layers, student.config.d_model, student.config.d_kv) == (1, 16, 8)
    assert student.config.rope_theta == teacher.config.rope_theta
    assert parameter_count(student) < parameter_count(teacher)
    with pytest.raises(ValueError, match="unknown Chronos-2 student key"):
        student_config(teacher.config, {"patch_size": 8})


@pytest.mark.parametrize("length", [20, 100, 2000])
def test_student_forecasts_any_context_length(teacher_dir, length):
    student = build_student(load_pipeline(str(teacher_dir), DEVICE).model, STUDENT, seed=0).eval()
    series = torch.cumsum(torch.randn(3, length, 1, generator=torch.Generator().manual_seed(1)), dim=1) + 100
    with torch.no_grad():
        forecast = model_quantiles(student, series, 0, [], 5)
        assert forecast.shape == (3, 21, 5) and torch.isfinite(forecast).all()
        if length > student.chronos_config.context_length:  # cut from the left to the context limit
            kept = series[:, -student.chronos_config.context_length :]
            assert torch.allclose(forecast, model_quantiles(student, kept, 0, [], 5), atol=1e-5)


def test_random_length_contexts_mask_the_left(tiny_split_dir):
    train = Split.load(tiny_split_dir).segment("train")
    inputs, targets = random_length_inputs(train, np.arange(50), 3, 5, 24, np.random.default_rng(0))
    observed = (~torch.isnan(inputs[..., 0])).sum(1)
    assert observed.min() >= 5 and observed.max() <= 24 and len(set(observed.tolist())) > 5
    assert not torch.isnan(inputs[:, -1]).any() and targets.shape == (50, 4)


def test_distillation_moves_the_student_towards_the_teacher_and_is_seeded(teacher_dir, tiny_split_dir):
    split = Split.load(tiny_split_dir)
    teacher = load_pipeline(str(teacher_dir), DEVICE).model
    # losses are read every 4 steps and at each validation (every 10)
    settings = ChronosStudentConfig(
        steps=30, batch_size=16, lr=3e-3, train_windows=256, val_windows=64, eval_every=10, log_every=4
    ).settings(seed=5)
    reports = []
    for _ in range(2):
        student = build_student(teacher, STUDENT, seed=0)
        history, report = distil(
            student, teacher, split.segment("train"), split.segment("valid"), 3, [0, 1], settings, DEVICE
        )
        reports.append(report["best_val_loss"])
    assert report["best_val_match"] < 0.9 * report["initial_val_match"]  # closer to the teacher than at the start
    assert reports[0] == reports[1]  # same seed, same labels and batches, same result
    assert history[0] == {
        "step": 0,
        **{f"val_{key}": report[f"initial_val_{key}"] for key in ("match", "pinball", "loss")},
    }
    assert [row["step"] for row in history if "distill_loss" in row] == list(range(1, report["steps"] + 1))


def test_an_interrupted_distillation_resumes_to_the_same_student(teacher_dir, tiny_split_dir, tmp_path, monkeypatch):
    from models.chronos import distill as distill_module

    split = Split.load(tiny_split_dir)
    teacher = load_pipeline(str(teacher_dir), DEVICE).model
    settings = ChronosStudentConfig(
        steps=30, batch_size=16, lr=3e-3, train_windows=128, val_windows=32, eval_every=10, log_every=5, patience=5
    ).settings(seed=5)

    def run(progress=None):
        student = build_student(teacher, STUDENT, seed=0)
        args = (student, teacher, split.segment("train"), split.segment("valid"), 3, [0, 1], settings, DEVICE)
        history, report = distil(*args, progress)
        return student, history, report

    straight, straight_history, straight_report = run()

    class Killed(BaseException):
        pass

    evaluate, calls = distill_module.evaluate, []

    def dies_at_the_third_check(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the initial check, step 10, then step 20: dies there, after step 10's save
            raise Killed
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(distill_module, "evaluate", dies_at_the_third_check)
    with pytest.raises(Killed):
        run(tmp_path / "last.pt")
    monkeypatch.setattr(distill_module, "evaluate", evaluate)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 10
    resumed, history, report = run(tmp_path / "last.pt")
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    assert history == straight_history and report["best_val_loss"] == straight_report["best_val_loss"]


@pytest.mark.slow
def test_stages_join_the_backtest_comparison(teacher_dir, bars_csv, write_config):
    import mlflow

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    overrides = [
        f"chronos.teacher={teacher_dir}",
        "chronos.covariates=true",
        "chronos.batch_size=16",
        "chronos.student={architecture: {num_layers: 1, d_model: 16, d_ff: 32, num_heads: 2}, "
        "steps: 10, batch_size: 8, train_windows: 64, val_windows: 16, eval_every: 5}",
        "signals.sources=[chronos2, chronos2_student, momentum]",
        "backtest.topk=2",
        "backtest.n_drop=1",
        "backtest.sweep_topk=[2]",
        "backtest.sweep_n_drop=[1]",
        "backtest.sweep_cost=[1.0]",
    ]
    config = load_config(write_config(bars_csv, experiment="chronos"), overrides)
    outcomes = run_pipeline(config, "backtest")
    assert [o.stage for o in outcomes] == ["ingest", "split", "chronos2", "chronos2_student", "backtest"]
    teacher_stage, student_stage = outcomes[2], outcomes[3]
    for stage, name in ((teacher_stage, "chronos2"), (student_stage, "chronos2_student")):
        table = pd.read_parquet(stage.output / "signals" / f"{name}.parquet")
        assert len(table) > 0 and table["score"].notna().all() and (table["score_std"] > 0).all()
    reloaded = chronos.BaseChronosPipeline.from_pretrained(student_stage.output / "best")
    assert reloaded.model.config.num_layers == 1
    comparison = pd.read_csv(outcomes[-1].output / "comparison.csv")
    assert {"chronos2", "chronos2_student", "momentum"} == set(comparison["strategy"])
    metrics = mlflow.MlflowClient(config.tracking.uri).get_run(student_stage.run_id).data.metrics
    assert metrics["student_parameters"] < metrics["teacher_parameters"]
    assert {"speedup", "score_correlation", "median_mae_scaled", "distill_best_val_loss", "distill_loss"} <= set(
        metrics
    )
