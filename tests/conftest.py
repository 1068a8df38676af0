"""Shared fixtures: small synthetic bars, run configs with an isolated cache and MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import make_bars


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


@pytest.fixture
def write_config(tmp_path, mlflow_uri):
    """Write a YAML config for a CSV source into tmp_path; returns its path."""

    def write(csv_path: Path, experiment: str = "tests", **sections) -> Path:
        config = {
            "cache_dir": str(tmp_path / "cache"),
            "data": {"source": "csv", "path": str(csv_path), "instruments": "test"},
            "split": {
                "lookback": 10,
                "horizon": 3,
                "train": ["2021-01-01", "2021-02-28"],
                "valid": ["2021-03-01", "2021-03-31"],
                "test": ["2021-04-01", "2021-04-30"],
            },
            "tracking": {"uri": mlflow_uri, "experiment": experiment},
            # One process: spawning backtest workers costs more than it saves on these tiny runs
            # (tests/test_backtest.py checks that workers give the same results).
            "backtest": {"workers": 1},
        }
        for name, values in sections.items():
            config[name] = {**config.get(name, {}), **values}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture
def bars_csv(tmp_path) -> Path:
    path = tmp_path / "bars.csv"
    make_bars().to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_split_dir(tmp_path_factory) -> Path:
    """A saved split over synthetic bars: 8 symbols x 120 days, lookback 24, horizon 4."""
    import datetime as dt

    from data_prep.ingest import write_qlib_folder
    from data_prep.panel import load_panel
    from data_prep.sources import validate_bars
    from data_prep.windows import Split, build_windows

    root = tmp_path_factory.mktemp("tiny_split")
    bars = make_bars(n_symbols=8, n_days=120)
    write_qlib_folder(
        validate_bars(bars.assign(_where="synthetic", _line=range(len(bars))), None), root / "qlib", "test"
    )
    panel = load_panel(root / "qlib", "test", ("open", "high", "low", "close", "volume", "amount"))
    segments = {
        "train": (dt.date(2021, 1, 1), dt.date(2021, 4, 30)),
        "valid": (dt.date(2021, 5, 1), dt.date(2021, 5, 31)),
        "test": (dt.date(2021, 6, 1), dt.date(2021, 6, 30)),
    }
    windows, _ = build_windows(panel, 24, 4, segments)
    Split(panel, windows, 24, 4).save(root / "split")
    return root / "split"


@pytest.fixture(scope="session")
def backbone_dirs(tmp_path_factory) -> dict[str, str]:
    """Tiny random GPT-2 and BERT models with real tokenizers, saved to folders."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model, GPT2TokenizerFast

    from models.timellm.backbone import bundled_minilm_path

    root = tmp_path_factory.mktemp("backbones")
    texts = [
        "Dataset description: daily prices. Task description: forecast the next steps; min value -1.25, max value 2.50."
    ] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, special_tokens=["<|endoftext|>"])
    gpt2_tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    end = gpt2_tokenizer.eos_token_id
    GPT2Model(
        GPT2Config(
            vocab_size=len(gpt2_tokenizer),
            n_embd=48,
            n_layer=3,
            n_head=2,
            n_positions=256,
            bos_token_id=end,
            eos_token_id=end,
        )
    ).save_pretrained(root / "gpt2")
    gpt2_tokenizer.save_pretrained(root / "gpt2")
    bert_tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_path())  # a real WordPiece vocabulary
    BertModel(
        BertConfig(
            vocab_size=bert_tokenizer.vocab_size,
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
        )
    ).save_pretrained(root / "bert")
    bert_tokenizer.save_pretrained(root / "bert")
    return {"gpt2": str(root / "gpt2"), "bert": str(root / "bert")}


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """A tiny random Chronos-2 model saved to a folder (needs the chronos extra)."""
    pytest.importorskip("chronos", reason='chronos-forecasting is an optional extra: pip install -e ".[chronos]"')
    from models.chronos.tiny import tiny_chronos2

    return tiny_chronos2(tmp_path_factory.mktemp("chronos") / "teacher", context_length=256)
