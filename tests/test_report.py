"""The backtest's report.html: written, logged on the invocation's run, and rendered by a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.run import main
from pipeline.runner import run_pipeline
from tests.helpers import QUICK_KRONOS

CHROMIUM = shutil.which("chromium")
OVERRIDES = QUICK_KRONOS + [
    "kronos.inference.sample_count=2",
    "backtest.topk=2",
    "backtest.n_drop=1",
    "signals.sources=[kronos, momentum, reversal]",
    "backtest.sweep_topk=[2, 3]",
    "backtest.sweep_n_drop=[1, 2]",
    "backtest.sweep_cost=[1.0]",
    "evaluation.bootstrap_reps=200",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory, mlflow_uri) -> tuple[Path, Path]:
    """A smoke backtest made for this module: its config file and its report.html."""
    import yaml

    from tests.helpers import make_bars

    folder = tmp_path_factory.mktemp("report")
    make_bars().to_csv(folder / "bars.csv", index=False)
    config_path = folder / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "cache_dir": str(folder / "cache"),
                "data": {"source": "csv", "path": str(folder / "bars.csv"), "instruments": "test"},
                "split": {
                    "lookback": 10,
                    "horizon": 3,
                    "train": ["2021-01-01", "2021-02-28"],
                    "valid": ["2021-03-01", "2021-03-31"],
                    "test": ["2021-04-01", "2021-04-30"],
                },
                "tracking": {"uri": mlflow_uri, "experiment": "report"},
            }
        )
    )
    outcome = run_pipeline(load_config(config_path, OVERRIDES), "backtest")[-1]
    return config_path, outcome.output / "report.html"


def test_the_report_is_written_logged_and_named_last(report, capsys):
    config_path, report_path = report
    assert main(["--stage", "backtest", "--config", str(config_path), "--set", *OVERRIDES]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    path = last_line.removeprefix("report: ")
    assert last_line == f"report: {report_path}"
    page = open(path).read()
    assert "Plotly" in page and "<script src=" not in page  # plotly.js inlined: works offline
    output = Path(path).parent
    stats = pd.read_csv(output / "portfolio_stats.csv")
    assert len(stats) == 6 and (stats["max_drawdown"] <= 0).all() and (stats["max_drawdown_days"] >= 0).all()
    daily = pd.read_csv(output / "daily_returns.csv", index_col="datetime", parse_dates=True)
    momentum = daily[(daily["strategy"] == "momentum") & (daily["engine"] == "qlib")]
    net = momentum["return"] - momentum["cost"]
    cagr = stats.set_index(["strategy", "engine"]).loc[("momentum", "qlib"), "cagr"]
    assert cagr == pytest.approx((1 + net).prod() ** (252 / len(net)) - 1, rel=1e-6)  # compounded over 252-day years
    assert {"year", "month", "return"} <= set(pd.read_csv(output / "monthly_returns.csv").columns)
    config = load_config(config_path, OVERRIDES)
    client = mlflow.MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name("report")
    parents = client.search_runs([experiment.experiment_id], "tags.target_stage = 'backtest'")
    assert len(parents) == 2  # the fixture's run and the cached rerun above: each logs the report
    for parent in parents:
        assert "report.html" in {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`): the report is not rendered"
)
def test_the_report_renders_without_script_errors_and_shows_every_strategy(report, tmp_path):
    _, path = report
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=20000",
    ]
    dom = subprocess.run([*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=180).stdout
    assert re.search(r'<body[^>]*data-errors="0"', dom), dom[:500]
    plots = int(re.search(r'<body[^>]*data-plots="(\d+)"', dom).group(1))
    assert plots == 6 + 3  # six plots and a sweep heatmap per strategy
    for strategy in ("kronos", "momentum", "reversal"):
        assert f">{strategy}<" in dom
    subprocess.run(
        [*flags, "--window-size=1400,2400", f"--screenshot={tmp_path / 'report.png'}", path.as_uri()],
        capture_output=True,
        timeout=180,
    )
    assert (tmp_path / "report.png").stat().st_size > 20_000
