"""The exploration notebook runs top to bottom against a backtest made by the smoke config."""

import nbformat
import pytest
from nbclient import NotebookClient

from pipeline.config import REPO_ROOT, load_config
from pipeline.runner import run_pipeline
from tests.helpers import QUICK_KRONOS

PLOTLY = "application/vnd.plotly.v1+json"


@pytest.mark.slow
def test_notebook_executes_against_a_smoke_run(bars_csv, write_config, monkeypatch):
    config = load_config(
        write_config(bars_csv, experiment="notebook"),
        QUICK_KRONOS
        + [
            "kronos.inference.sample_count=3",
            "backtest.topk=2",
            "backtest.n_drop=1",
            "signals.sources=[kronos, momentum, reversal]",
            "backtest.sweep_topk=[2]",
            "backtest.sweep_n_drop=[1]",
            "backtest.sweep_cost=[1.0]",
        ],
    )
    run_pipeline(config, "backtest")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", config.tracking.uri)
    monkeypatch.setenv("EXPLORE_EXPERIMENT", "notebook")
    notebook = nbformat.read(REPO_ROOT / "notebooks" / "explore_signals.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}}
    ).execute()
    figures = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if PLOTLY in output.get("data", {})
    ]
    titles = " ".join(figure["data"][PLOTLY]["layout"]["title"]["text"] for figure in figures)
    assert len(figures) == 9, titles
    for expected in (
        "daily IC and Rank IC",
        "holding period",
        "quintile",
        "cumulative excess",
        "drawdown",
        "turnover",
        "score distribution",
        "sample paths",
    ):
        assert expected in titles
