"""The A-share config on the shared Qlib folder (skipped where the folder is absent)."""

from data_prep.windows import Split
from pipeline.config import REPO_ROOT, load_config
from pipeline.runner import run_pipeline
from tests.helpers import require_shared_data


def test_cn_csi300_split_runs_on_the_shared_folder(tmp_path, mlflow_uri):
    require_shared_data()
    config = load_config(
        REPO_ROOT / "configs" / "cn_csi300.yaml",
        [f"cache_dir={tmp_path / 'cache'}", f"tracking.uri={mlflow_uri}"],
    )
    outcomes = run_pipeline(config, "split")
    split = Split.load(outcomes[-1].output)
    assert len(split.panel.instruments) == 460  # CSI300 members with data; the indices are not members
    assert split.lookback == 90 and split.horizon == 10
    for name in ("train", "valid", "test"):
        assert len(split.windows[name]) > 50_000
    again = run_pipeline(config, "split")
    assert all(outcome.reused for outcome in again)
