"""The Ray executor: the same outputs as the local one, on a local Ray instance and on a two-node
cluster, retries after a killed worker, and a cache a node cannot write refused at start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from data_prep.errors import ConfigError
from pipeline.config import load_config
from pipeline.executors import check_tracking_store
from pipeline.runner import run_pipeline
from tests.helpers import QUICK_KRONOS, csi300_slice, make_bars

ray = pytest.importorskip("ray", reason='the Ray executor needs the ray extra: pip install -e ".[ray]"')

# Token authentication would need a token file shared by every process of these loopback clusters.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(RAY_ENV)

# 30 CSI300 members over two short walk-forward folds, two seeds, the three kinds of source.
WALK_FORWARD = [
    "evaluation.folds=[{train: [2020-01-01, 2020-12-31], valid: [2021-01-01, 2021-03-31], "
    "test: [2021-04-01, 2021-05-31]}, {train: [2020-01-01, 2021-03-31], valid: [2021-04-01, 2021-05-31], "
    "test: [2021-06-01, 2021-07-30]}]",
    "evaluation.seeds=[1, 2]",
    "evaluation.bootstrap_reps=200",
    "signals.sources=[kronos, lgbm_alpha158, momentum]",
    *QUICK_KRONOS,
    "kronos.inference.sample_count=2",
    "backtest.topk=5",
    "backtest.n_drop=1",
    "backtest.sweep_topk=[5]",
    "backtest.sweep_n_drop=[1]",
    "backtest.sweep_cost=[1.0]",
    "threads=1",  # one torch thread per instance on every executor: equal bits, and two instances at once here
]


def write_slice_config(folder: Path, data: Path, tracking_uri: str) -> Path:
    config = {
        "cache_dir": str(folder / "cache"),
        "data": {
            "source": "qlib",
            "provider_uri": str(data),
            "region": "cn",
            "instruments": "csi300",
            "benchmark": "SH000300",
        },
        "split": {"lookback": 30, "horizon": 5},
        "tracking": {"uri": tracking_uri, "experiment": "ray"},
        "backtest": {"limit_threshold": 0.095, "min_cost": 5, "workers": 1},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def csi300(tmp_path_factory) -> Path:
    return csi300_slice(tmp_path_factory.mktemp("csi300") / "qlib")


@pytest.fixture(scope="module")
def local_run(csi300, tmp_path_factory, mlflow_uri):
    """The walk-forward run on the local executor: what every Ray run must reproduce."""
    folder = tmp_path_factory.mktemp("local")
    config = load_config(write_slice_config(folder, csi300, mlflow_uri), WALK_FORWARD)
    return run_pipeline(config, "backtest")


def assert_same_results(outcomes, expected) -> None:
    """Same instances (stage and cache key), same signal tables, same comparison."""
    assert sorted((o.stage, o.key) for o in outcomes) == sorted((o.stage, o.key) for o in expected)
    assert not any(o.reused for o in outcomes)
    ours, theirs = outcomes[-1].output, expected[-1].output
    tables = sorted(path.name for path in (theirs / "signals").glob("*.parquet"))
    assert tables == ["kronos.parquet", "lgbm_alpha158.parquet", "momentum.parquet"]
    for name in tables:
        ours_table, theirs_table = (pd.read_parquet(folder / "signals" / name) for folder in (ours, theirs))
        pd.testing.assert_frame_equal(ours_table, theirs_table)
    pd.testing.assert_frame_equal(pd.read_csv(ours / "comparison.csv"), pd.read_csv(theirs / "comparison.csv"))
    per_instance = [o for o in outcomes if o.stage == "kronos_signals"]
    assert len(per_instance) == 4  # 2 folds x 2 seeds


@pytest.mark.slow
def test_a_local_ray_instance_gives_the_local_executors_results(csi300, local_run, tmp_path, mlflow_uri):
    config = load_config(write_slice_config(tmp_path, csi300, mlflow_uri), [*WALK_FORWARD, "executor=ray"])
    outcomes = run_pipeline(config, "backtest")
    assert_same_results(outcomes, local_run)
    assert all(o.node.startswith(ray.util.get_node_ip_address()) for o in outcomes)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """A head and a second node on this machine, one CPU each, each with its own temporary folder.

    The second node runs in its own mount namespace (where the system allows one) with one folder
    mounted read-only: a node that cannot write the cache, for the start-up check."""
    folder = tmp_path_factory.mktemp("cluster")
    read_only = folder / "read-only"
    read_only.mkdir()
    port = free_port()
    address = f"127.0.0.1:{port}"
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts", "start", "--num-cpus=1", "--disable-usage-stats"]
    env = {**os.environ, **RAY_ENV}
    head = [*ray_cli, "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={folder / 'head'}"]
    subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
    node = [*ray_cli, f"--address={address}"]
    isolated = subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    if isolated:
        mount = f"mount --bind -o ro {read_only} {read_only}"
        node = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *node]
    try:
        subprocess.run(node, env=env, check=True, capture_output=True, timeout=120)
        yield address, read_only if isolated else None
    finally:
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], env=env, capture_output=True)


@pytest.mark.slow
def test_a_two_node_cluster_gives_the_same_results_and_both_nodes_run_instances(
    csi300, local_run, two_node_cluster, tmp_path, mlflow_uri
):
    address, _ = two_node_cluster
    overrides = [*WALK_FORWARD, "executor=ray", f"ray.address={address}"]
    config = load_config(write_slice_config(tmp_path, csi300, mlflow_uri), overrides)
    outcomes = run_pipeline(config, "backtest")
    assert_same_results(outcomes, local_run)
    client = mlflow.MlflowClient(mlflow_uri)
    nodes = {client.get_run(o.run_id).data.tags["node"] for o in outcomes}
    assert nodes == {o.node for o in outcomes} and len(nodes) == 2, nodes


def test_a_cache_a_node_cannot_write_is_refused_naming_the_node_and_path(two_node_cluster, bars_csv, write_config):
    address, read_only = two_node_cluster
    if read_only is None:
        pytest.skip("no mount namespaces here (unshare -m): cannot give one node a read-only cache")
    overrides = ["executor=ray", f"ray.address={address}", f"cache_dir={read_only}"]
    config = load_config(write_config(bars_csv), overrides)
    with pytest.raises(ConfigError, match=rf"cache_dir {read_only} on node \S+ \(\w{{8}}\): it cannot write there"):
        run_pipeline(config, "split")
    assert not (read_only / "split").exists()  # refused before any stage ran


def test_a_local_tracking_store_is_refused_for_a_cluster_of_several_machines():
    nodes = [{"NodeManagerAddress": "10.0.0.1"}, {"NodeManagerAddress": "10.0.0.2"}]
    with pytest.raises(ConfigError, match=r"spans 2 machines \(10.0.0.1, 10.0.0.2\).*tracking.uri=http://"):
        check_tracking_store("sqlite:////data/mlruns/mlflow.db", nodes)
    check_tracking_store("http://tracking:5000", nodes)
    check_tracking_store("sqlite:////data/mlruns/mlflow.db", nodes[:1] * 2)  # two nodes on one machine


def ray_task_processes(name: str) -> list[int]:
    """Ray workers whose process title names the task running in them (Ray sets `ray::<task name>`)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if cmdline.startswith("ray::") and name in cmdline:
            found.append(process.pid)
    return found


@pytest.mark.slow
def test_a_worker_killed_during_kronos_training_is_retried_and_resumes(tmp_path, write_config):
    bars = tmp_path / "bars.csv"
    make_bars(n_symbols=6, n_days=120).to_csv(bars, index=False)
    training = [f"kronos.predictor.training.{key}={value}" for key, value in (("epochs", 4), ("steps_per_epoch", 40))]
    overrides = [*QUICK_KRONOS, *training, "kronos.inference.sample_count=2", "signals.sources=[kronos, momentum]"]
    config_path = write_config(bars, experiment="ray-retry")
    command = [sys.executable, "-m", "pipeline.run", "--stage", "kronos_predictor", "--config", str(config_path)]
    run = subprocess.Popen(
        [*command, "--executor", "ray", "--set", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **RAY_ENV},
    )
    partial = tmp_path / "cache" / "kronos_predictor"
    deadline = time.monotonic() + 300
    while not list(partial.glob(".partial-*/last.pt")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = ray_task_processes("kronos_predictor")
    assert len(workers) == 1, f"expected the training's worker mid-stage, found {workers}; exit {run.poll()}"
    os.kill(workers[0], signal.SIGKILL)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    assert "resuming from the partial output" in output and "resuming from epoch" in output, output[-3000:]

    # The retried training ends where an uninterrupted one does (same threads, seed and checkpoints).
    (tmp_path / "local").mkdir()
    local_config = config_path.read_text().replace(str(tmp_path / "cache"), str(tmp_path / "local" / "cache"))
    (tmp_path / "local" / "config.yaml").write_text(local_config)
    local_command = [*command[:-1], str(tmp_path / "local" / "config.yaml")]
    local = subprocess.run(
        [*local_command, "--set", *overrides],
        capture_output=True,
        text=True,
    )
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    (retried,) = [path for path in partial.glob("*/best/model.safetensors") if ".partial" not in str(path)]
    (uninterrupted,) = (tmp_path / "local" / "cache" / "kronos_predictor").glob("*/best/model.safetensors")
    assert retried.read_bytes() == uninterrupted.read_bytes()


def test_asking_for_ray_without_it_names_the_install_command(monkeypatch, bars_csv, write_config):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when the extra is not installed
    config = load_config(write_config(bars_csv), ["executor=ray"])
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[ray\]"'):
        run_pipeline(config, "split")
