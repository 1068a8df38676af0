"""The Ray executor: the same outputs as the local one, on a local Ray instance and on a two-node
cluster, retries after a killed worker, and a cache a node cannot write refused at start."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from data_prep.errors import ConfigError, DataError
from pipeline.config import load_config
from pipeline.executors import check_resources, check_tracking_store
from pipeline.runner import run_pipeline
from tests.helpers import QUICK_KRONOS, csi300_data, csi300_slice, make_bars

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
        "data": csi300_data(data),
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


def mounts_read_only() -> bool:
    """Whether this system lets a process mount a folder read-only in a namespace of its own."""
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = ["unshare", "-m", "sh", "-c", f"mount --bind -o ro {folder} {folder}"]
        return subprocess.run(probe, capture_output=True).returncode == 0


def stop_processes_under(*folders: Path) -> None:
    """Kill this cluster's processes (each names its temporary folder), not other Ray instances."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if any(str(folder) in cmdline for folder in folders):
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.fixture(scope="module")
def two_node_cluster():
    """A head and a second node on this machine, one CPU each, each with its own temporary folder
    (short paths: Ray's socket paths must fit in 107 characters).

    The second node runs in its own mount namespace (where the system allows one) with one folder
    mounted read-only: a node that cannot write the cache, for the start-up check."""
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    read_only = folder / "read-only"
    read_only.mkdir()
    port = free_port()
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts", "start", "--num-cpus=1", "--disable-usage-stats"]
    env = {**os.environ, **RAY_ENV}
    head = [*ray_cli, "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={folder / 'head'}"]
    node = [*ray_cli, f"--address=127.0.0.1:{port}", f"--temp-dir={folder / 'node'}"]
    isolated = mounts_read_only()
    if isolated:
        mount = f"mount --bind -o ro {read_only} {read_only}"
        node = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *node]
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
        subprocess.run(node, env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}", read_only if isolated else None
    finally:
        stop_processes_under(folder / "head", folder / "node")
        shutil.rmtree(folder, ignore_errors=True)


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


@pytest.mark.slow
def test_a_cache_a_node_cannot_write_is_refused_naming_the_node_and_path(two_node_cluster, bars_csv, write_config):
    address, read_only = two_node_cluster
    if read_only is None:
        pytest.skip("no mount namespaces here (unshare -m): cannot give one node a read-only cache")
    overrides = ["executor=ray", f"ray.address={address}", f"cache_dir={read_only}"]
    config = load_config(write_config(bars_csv), overrides)
    with pytest.raises(ConfigError, match=rf"cache_dir {read_only} on node \S+ \(\w{{8}}\): it cannot write there"):
        run_pipeline(config, "split")
    assert not (read_only / "split").exists()  # refused before any stage ran


def test_a_local_tracking_store_is_refused_for_a_run_on_several_machines():
    nodes = [{"NodeManagerAddress": "10.0.0.1"}, {"NodeManagerAddress": "10.0.0.2"}]
    with pytest.raises(ConfigError, match=r"spans 2 machines \(10.0.0.1, 10.0.0.2\).*tracking.uri=http://"):
        check_tracking_store("sqlite:////data/mlruns/mlflow.db", nodes, "10.0.0.1")
    with pytest.raises(ConfigError, match=r"spans 2 machines"):  # a driver elsewhere than the one node
        check_tracking_store("sqlite:////data/mlruns/mlflow.db", nodes[:1], "10.0.0.9")
    check_tracking_store("http://tracking:5000", nodes, "10.0.0.1")
    check_tracking_store("postgresql://db/mlflow", nodes, "10.0.0.1")
    check_tracking_store("sqlite:////data/mlruns/mlflow.db", nodes[:1] * 2, "10.0.0.1")  # two nodes on one machine


def test_an_instance_no_node_can_hold_is_refused():
    nodes = [{"Resources": {"CPU": 2.0}}, {"Resources": {"CPU": 4.0}}]
    with pytest.raises(ConfigError, match=r"asks for 8 CPUs .* largest Ray node has 4: set --set threads=4"):
        check_resources(8, nodes)
    check_resources(4, nodes)


def start_cli(overrides: list[str], config_path: Path, stage: str, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline.run", "--stage", stage, "--config", str(config_path)]
    with open(log, "w") as output:  # a file, not a pipe: nobody reads while the test waits
        return subprocess.Popen(
            [*command, "--executor", "ray", "--set", *overrides],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **RAY_ENV},
        )


def wait_for_checkpoint(run: subprocess.Popen, stage_folder: Path) -> None:
    """Until a resumable stage of `run` has saved its first checkpoint (or `run` ended)."""
    deadline = time.monotonic() + 300
    while not list(stage_folder.glob(".partial-*/last.pt")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def task_workers(run: subprocess.Popen, task: str) -> list[int]:
    """The Ray workers of this run (its process tree) whose process title names `task` (`ray::<task>`)."""
    import psutil

    return [
        child.pid
        for child in psutil.Process(run.pid).children(recursive=True)
        if " ".join(child.cmdline()).startswith(f"ray::{task}")
    ]


# The Kronos predictor trains long enough here to be caught between its first checkpoint and its end.
LONG_PREDICTOR = [
    *QUICK_KRONOS,
    *(f"kronos.predictor.training.{key}={value}" for key, value in (("epochs", 4), ("steps_per_epoch", 40))),
    "signals.sources=[kronos, momentum]",
]


@pytest.mark.slow
def test_a_worker_killed_during_kronos_training_is_retried_and_resumes(tmp_path, write_config):
    bars = tmp_path / "bars.csv"
    make_bars(n_symbols=6, n_days=120).to_csv(bars, index=False)
    config_path = write_config(bars, experiment="ray-retry")
    log = tmp_path / "run.log"
    run = start_cli(LONG_PREDICTOR, config_path, "kronos_predictor", log)
    try:
        wait_for_checkpoint(run, tmp_path / "cache" / "kronos_predictor")
        workers = task_workers(run, "kronos_predictor")
        assert len(workers) == 1, (
            f"expected the training's worker mid-stage, found {workers}: {log.read_text()[-2000:]}"
        )
        os.kill(workers[0], signal.SIGKILL)
        assert run.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        run.kill()
    output = log.read_text()
    assert "resuming from the partial output" in output and "resuming from epoch" in output, output[-3000:]

    # The retried training ends where an uninterrupted one does (same threads, seed and checkpoints).
    (tmp_path / "local").mkdir()
    local_config = config_path.read_text().replace(str(tmp_path / "cache"), str(tmp_path / "local" / "cache"))
    (tmp_path / "local" / "config.yaml").write_text(local_config)
    command = [sys.executable, "-m", "pipeline.run", "--stage", "kronos_predictor"]
    local = subprocess.run(
        [*command, "--config", str(tmp_path / "local" / "config.yaml"), "--set", *LONG_PREDICTOR],
        capture_output=True,
        text=True,
    )
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    (retried,) = (tmp_path / "cache" / "kronos_predictor").glob("[0-9a-f]*/best/model.safetensors")
    (uninterrupted,) = (tmp_path / "local" / "cache" / "kronos_predictor").glob("*/best/model.safetensors")
    assert retried.read_bytes() == uninterrupted.read_bytes()


@pytest.mark.slow
def test_sigterm_on_ray_ends_with_exit_143_naming_the_running_instance(tmp_path, write_config):
    bars = tmp_path / "bars.csv"
    make_bars(n_symbols=6, n_days=120).to_csv(bars, index=False)
    log = tmp_path / "run.log"
    run = start_cli(LONG_PREDICTOR, write_config(bars, experiment="ray-sigterm"), "kronos_predictor", log)
    try:
        wait_for_checkpoint(run, tmp_path / "cache" / "kronos_predictor")
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=120) == 143, log.read_text()[-3000:]
    finally:
        run.kill()
    output = log.read_text()
    assert "interrupted during stage kronos_predictor; rerun to resume" in output, output[-2000:]
    assert "Traceback" not in output
    assert list((tmp_path / "cache" / "kronos_predictor").glob(".partial-*/last.pt"))  # kept to resume from


@pytest.mark.slow
def test_a_failing_stage_on_ray_fails_the_run_with_its_own_error_and_keeps_finished_instances(
    bars_csv, write_config, tmp_path
):
    config = load_config(
        write_config(bars_csv, data={"benchmark": "NOPE"}), ["executor=ray", "signals.sources=[momentum]", "threads=1"]
    )
    with pytest.raises(DataError, match="data.benchmark 'NOPE' has no data in the Qlib folder"):
        run_pipeline(config, "backtest")
    assert sorted(path.parent.parent.name for path in (tmp_path / "cache").glob("*/*/_stage.json")) == [
        "ingest",
        "split",
    ]
