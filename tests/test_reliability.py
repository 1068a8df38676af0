"""Faults built for real: killed and stopped processes, a file-size limit, damaged caches, a tracking
server that does not answer. Each ends with one line and a documented exit code, and a rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.errors import ConfigError
from pipeline.cache import MANIFEST, StageCache
from pipeline.config import load_config
from pipeline.run import main
from pipeline.runner import run_pipeline, stage_status
from tests.helpers import QUICK_KRONOS, make_bars

# A predictor that trains for several epochs without stopping early: time to be killed in between.
LONG_PREDICTOR = [
    *QUICK_KRONOS,
    "kronos.predictor.training.epochs=6",
    "kronos.predictor.training.steps_per_epoch=20",
    "kronos.predictor.training.patience=6",
]


def cli(config: Path, *overrides: str, stage: str = "kronos_predictor") -> list[str]:
    command = [sys.executable, "-m", "pipeline.run", "--stage", stage, "--config", str(config)]
    return [*command, "--set", *overrides] if overrides else command


def wait_for(pattern: str, root: Path, process: subprocess.Popen, timeout: float = 120) -> Path:
    """The first file matching `pattern` under `root` while `process` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = next(root.glob(pattern), None)
        if found is not None:
            return found
        assert process.poll() is None, "the run ended before the file appeared"
        time.sleep(0.005)
    raise TimeoutError(pattern)


def final_weights(cache: Path) -> bytes:
    (folder,) = (cache / "kronos_predictor").glob("[!.]*")
    return (folder / "best" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_a_killed_training_resumes_to_the_weights_of_an_uninterrupted_run(bars_csv, write_config, tmp_path):
    config = write_config(bars_csv, experiment="killed")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(cli(config, *LONG_PREDICTOR, f"cache_dir={straight}"), check=True, capture_output=True)

    process = subprocess.Popen(cli(config, *LONG_PREDICTOR, f"cache_dir={killed}"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoint = wait_for("kronos_predictor/.partial-*/last.pt", killed, process)
    process.send_signal(signal.SIGKILL)  # no handler runs: what a preemption or an OOM kill does
    process.wait()
    epochs_before = torch_load_epoch(checkpoint)
    assert 1 <= epochs_before < 6 and not list((killed / "kronos_predictor").glob("[!.]*"))

    rerun = subprocess.run(cli(config, *LONG_PREDICTOR, f"cache_dir={killed}"), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from the partial output of an earlier attempt" in rerun.stderr
    assert f"resuming from epoch {epochs_before}" in rerun.stderr
    assert final_weights(killed) == final_weights(straight)


def torch_load_epoch(checkpoint: Path) -> int:
    import torch

    return int(torch.load(checkpoint, weights_only=True)["state"]["epoch"])


@pytest.mark.slow
def test_sigterm_ends_with_one_line_and_exit_143_and_the_rerun_resumes(bars_csv, write_config, tmp_path):
    config = write_config(bars_csv, experiment="terminated")
    cache = tmp_path / "cache"
    process = subprocess.Popen(cli(config, *LONG_PREDICTOR, f"cache_dir={cache}"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for("kronos_predictor/.partial-*/last.pt", cache, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143
    assert out.strip().splitlines()[-1] == "interrupted during stage kronos_predictor; rerun to resume"
    assert "Traceback" not in out + err
    rerun = subprocess.run(cli(config, *LONG_PREDICTOR, f"cache_dir={cache}"), capture_output=True, text=True)
    assert rerun.returncode == 0 and "resuming from epoch" in rerun.stderr


@pytest.mark.slow
def test_a_file_size_limit_is_named_and_leaves_nothing_half_written(write_config, tmp_path):
    bars = tmp_path / "bars.csv"
    make_bars(n_symbols=600, n_days=200).to_csv(bars, index=False)  # a panel of about 3 MB
    store = tmp_path / "store" / "mlflow.db"
    config = write_config(bars, experiment="full-disk", tracking={"uri": f"sqlite:///{store}"})
    assert main(["--stage", "ingest", "--config", str(config)]) == 0  # the store and the Qlib folder exist
    limit_kib = store.stat().st_size // 1024 + 512  # room for the store to grow, not for the panel
    # The shell sets the limit and ignores SIGXFSZ (so a write fails with EFBIG instead of killing the
    # process), then becomes the run: a preexec_fn could deadlock in this threaded test process.
    limited = ["bash", "-c", f'trap "" XFSZ; ulimit -f {limit_kib}; exec "$@"', "bash"]
    done = subprocess.run([*limited, *cli(config, stage="split")], capture_output=True, text=True)
    message = " ".join(done.stdout.split())
    assert done.returncode == 4, done.stdout + done.stderr[-2000:]
    assert "error: stage split could not write" in message and "disk full or file-size limit" in message
    assert "Traceback" not in done.stdout + done.stderr
    assert [p.name for p in (tmp_path / "cache" / "split").iterdir()] == []  # no output, complete or not


def test_a_damaged_manifest_means_not_cached(bars_csv, write_config, caplog):
    config = load_config(write_config(bars_csv, experiment="manifest"))
    split = run_pipeline(config, "split")[-1].output
    for damage in ("{not json", json.dumps({"stage": "split", "files": {}})):
        (split / MANIFEST).write_text(damage)
        assert [row["state"] for row in stage_status(config)][:2] == ["cached", "not cached: will run"]
        with caplog.at_level("WARNING", logger="pipeline.cache"):
            again = run_pipeline(config, "split")[-1]
        assert not again.reused and "manifest" in caplog.text and "is damaged" in caplog.text
        caplog.clear()
    assert run_pipeline(config, "split")[-1].reused


def test_a_same_size_change_in_a_large_file_is_caught(tmp_path, caplog):
    cache = StageCache(tmp_path)
    with cache.writing("demo", "k") as (folder, manifest):
        (folder / "values.npy").write_bytes(os.urandom(3 << 20))
        manifest.update(run_id="r", params={}, metrics={}, summary=[])
    assert cache.lookup("demo", "k") is not None
    path = cache.path("demo", "k") / "values.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped, size unchanged
    path.write_bytes(bytes(data))
    assert cache.lookup("demo", "k") is None and "lost or changed 1 file(s)" in caplog.text


def test_debug_shows_the_traceback_and_otherwise_one_line(bars_csv, write_config, capsys):
    config = write_config(bars_csv)
    assert main(["--stage", "split", "--config", str(config), "--set", "split.lookback=0"]) == 2
    assert "Traceback" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="split.lookback"):
        main(["--stage", "split", "--config", str(config), "--set", "split.lookback=0", "--debug"])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("server", ["closed port", "silent listener"])
def test_a_tracking_server_that_does_not_answer_fails_fast(server, bars_csv, write_config, capsys):
    listener = socket.socket()
    if server == "closed port":
        port = closed_port()
    else:  # accepts connections into its backlog and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with listener:
        code = main(["--stage", "split", "--config", str(write_config(bars_csv)), "--set", f"tracking.uri={uri}"])
    assert code == 3 and time.monotonic() - started < 10
    message = " ".join(capsys.readouterr().out.split())
    assert f"error: the tracking server {uri} does not answer" in message


def test_a_pretrained_folder_changed_in_place_changes_the_stage_key(tmp_path):
    from models.kronos import KronosTokenizer
    from pipeline import graph
    from tests.helpers import TINY_TOKENIZER

    tokenizer, backbone = tmp_path / "tokenizer", tmp_path / "backbone"
    backbone.mkdir()
    (backbone / "config.json").write_text("{}")
    overrides = [f"kronos.tokenizer.pretrained={tokenizer}", f"timellm.model={{backbone: {backbone}}}"]
    config = load_config(Path(__file__).parents[1] / "configs" / "default.yaml", overrides)

    def keys() -> tuple[str, str]:
        graph.model_fingerprint.cache_clear()  # one run hashes each folder once; a new run sees changes
        return tuple(graph.cache_key(graph.STAGES[name], config, {}) for name in ("kronos_tokenizer", "timellm"))

    KronosTokenizer(**TINY_TOKENIZER).save_pretrained(tokenizer)
    before = keys()
    assert keys() == before
    KronosTokenizer(**dict(TINY_TOKENIZER, d_model=48)).save_pretrained(tokenizer)  # new weights, same path
    (backbone / "config.json").write_text('{"n_layer": 1}')
    after = keys()
    assert after[0] != before[0] and after[1] != before[1]
