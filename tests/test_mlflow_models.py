"""MLflow 3: trained checkpoints as LoggedModels that load again, the data set on every run, the experiment kind."""

from __future__ import annotations

import mlflow

from models.kronos.model import Kronos
from pipeline.config import load_config
from pipeline.graph import data_fingerprint
from pipeline.runner import run_pipeline
from tests.helpers import QUICK_KRONOS


def test_checkpoints_are_logged_models_linked_to_their_runs_and_load_again(bars_csv, write_config, tmp_path):
    config = load_config(write_config(bars_csv, experiment="models"), QUICK_KRONOS)
    outcomes = {o.stage: o for o in run_pipeline(config, "kronos_predictor")}
    client = mlflow.MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name("models")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    models = {model.name: model for model in client.search_logged_models([experiment.experiment_id])}
    assert set(models) == {"kronos_tokenizer", "kronos_predictor"}
    predictor = models["kronos_predictor"]
    assert predictor.source_run_id == outcomes["kronos_predictor"].run_id
    linked = {metric.key: metric.value for metric in predictor.metrics}
    run_metrics = client.get_run(predictor.source_run_id).data.metrics
    assert linked["best_val_ce_s1"] == run_metrics["best_val_ce_s1"] < linked["uniform_ce_s1"]
    assert predictor.params["kronos.predictor.training.epochs"] == "2"
    local = mlflow.artifacts.download_artifacts(
        f"models:/{predictor.model_id}", dst_path=str(tmp_path / "downloaded"), tracking_uri=config.tracking.uri
    )
    Kronos.from_pretrained(local)  # the save_pretrained folder, as logged


def test_every_run_names_its_data_set(bars_csv, write_config, tmp_path):
    config = load_config(write_config(bars_csv, experiment="datasets"))
    outcomes = run_pipeline(config, "split")
    client = mlflow.MlflowClient(config.tracking.uri)
    parent_id = client.get_run(outcomes[-1].run_id).data.tags["mlflow.parentRunId"]
    for run_id in (parent_id, outcomes[0].run_id, outcomes[1].run_id):
        (dataset,) = [entry.dataset for entry in client.get_run(run_id).inputs.dataset_inputs]
        assert dataset.digest == data_fingerprint(config)[:32] and dataset.name.startswith("test [csv")
    other = tmp_path / "other.csv"
    other.write_text(bars_csv.read_text().replace("S000", "S999"))
    assert data_fingerprint(load_config(write_config(other)))[:32] != dataset.digest


def test_a_cached_reuse_into_another_store_registers_its_models_there(bars_csv, write_config, tmp_path):
    config = load_config(write_config(bars_csv, experiment="models-moved"), QUICK_KRONOS)
    run_pipeline(config, "kronos_predictor")
    other_uri = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    moved = load_config(write_config(bars_csv, experiment="models-moved"), [*QUICK_KRONOS, f"tracking.uri={other_uri}"])
    outcomes = {o.stage: o for o in run_pipeline(moved, "kronos_predictor")}
    assert all(o.reused for o in outcomes.values())
    client = mlflow.MlflowClient(other_uri)
    experiment = client.get_experiment_by_name("models-moved")
    models = {model.name: model for model in client.search_logged_models([experiment.experiment_id])}
    assert set(models) == {"kronos_tokenizer", "kronos_predictor"}
    assert models["kronos_predictor"].source_run_id == outcomes["kronos_predictor"].run_id
    assert "best_val_ce_s1" in {metric.key for metric in models["kronos_predictor"].metrics}
