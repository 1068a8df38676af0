"""Time-LLM: prompts, shapes at any context length, frozen backbones, saving, training, the stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from data_prep.errors import CheckpointError
from data_prep.windows import Split
from models.timellm import VARIANTS, TimeLLM, TimeLLMConfig
from models.timellm.backbone import int8_backbone, load_backbone
from models.timellm.prompt import PROMPT_STYLES, LoopPromptBuilder, PromptBuilder, input_statistics
from models.timellm.training import accumulate_gradients, evaluate, fit, forecast
from pipeline.config import TimeLLMTrainConfig
from tests.helpers import tiny_config

DEVICE = torch.device("cpu")


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
@pytest.mark.parametrize("style", PROMPT_STYLES)
def test_vectorised_prompts_equal_the_per_sample_loop(backbone_dirs, kind, style):
    tokenizer = load_backbone(backbone_dirs[kind], 1).tokenizer
    series = torch.randn(16, 24).cumsum(-1)
    series = (series - series.mean(-1, keepdim=True)) / series.std(-1, keepdim=True)
    series[0] = 0.0  # a flat series: zero statistics, arbitrary lags
    ids, mask = PromptBuilder(tokenizer, "Daily stock prices.", 24, 4, style)(series)
    loop_ids, loop_mask = LoopPromptBuilder(tokenizer, "Daily stock prices.", 24, 4, style)(series)
    assert torch.equal(ids, loop_ids) and torch.equal(mask, loop_mask)
    assert not mask[:, -1].logical_not().any()  # left padding: every prompt ends at the last position
    text = tokenizer.decode(ids[1][mask[1]]).lower()
    assert "daily stock prices" in text and "4 steps" in text and "24" in text
    assert (
        ("max value" in text and "lags are" in text)
        if style == "upstream"
        else (", max" in text and "top lags" in text)
    )


def test_compact_prompt_states_the_same_statistics_in_fewer_tokens():
    tokenizer = load_backbone("all-MiniLM-L6-v2", 1).tokenizer  # the default backbone's WordPiece vocabulary
    series = torch.randn(64, 60).cumsum(-1)
    series = (series - series.mean(-1, keepdim=True)) / series.std(-1, keepdim=True)
    prompts = {style: PromptBuilder(tokenizer, TimeLLMConfig.description, 60, 5, style) for style in PROMPT_STYLES}
    lengths = {style: builder(series)[1].sum(1).float().mean().item() for style, builder in prompts.items()}
    assert lengths["compact"] < 0.75 * lengths["upstream"]
    assert torch.equal(
        prompts["compact"].pieces_of(series)[:, 1::2], prompts["upstream"].pieces_of(series)[:, 1::2]
    )  # same numbers, trend, lags


def test_checkpoints_without_a_prompt_style_load_with_upstreams_wording(backbone_dirs, tmp_path):
    backbone = load_backbone(backbone_dirs["bert"], 2)
    model = TimeLLM(tiny_config(backbone_dirs["bert"], prompt="upstream"), backbone).eval()
    model.save_pretrained(tmp_path / "saved")
    config_file = tmp_path / "saved" / "config.json"
    config_file.write_text(
        config_file.read_text().replace('"prompt": "upstream",', "")
    )  # as saved before the styles existed
    loaded = TimeLLM.from_pretrained(tmp_path / "saved", backbone)
    x = torch.rand(2, 24, 1) + 3
    assert loaded.config.prompt == "upstream" and torch.allclose(model(x), loaded(x), atol=1e-6)
    with pytest.raises(ValueError, match="prompt style"):
        tiny_config(backbone_dirs["bert"], prompt="chatty")


def test_prompt_statistics_match_numpy():
    steps = torch.arange(60, dtype=torch.float32)
    series = torch.stack([torch.sin(2 * torch.pi * steps / 7), torch.linspace(-2, 1, 60), -torch.linspace(-1, 1, 60)])
    stats = input_statistics(series)
    values = series.numpy()
    assert stats["min"].tolist() == np.round(values.min(1) * 100).astype(int).tolist()
    assert stats["max"].tolist() == np.round(values.max(1) * 100).astype(int).tolist()
    assert stats["upward"].tolist() == [bool(values[0, -1] > values[0, 0]), True, False]
    assert stats["lags"][0, 0].item() == 7  # the sine's period has the strongest autocorrelation


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_every_variant_forecasts_any_context_length(backbone_dirs, kind):
    backbone = load_backbone(backbone_dirs[kind], 2)
    assert len(backbone.model.h if kind == "gpt2" else backbone.model.encoder.layer) == 2  # truncated from 3
    for variant in VARIANTS:
        model = TimeLLM(tiny_config(backbone_dirs[kind], variant), backbone).eval()
        for length in (5, 24, 300):  # shorter (left-padded), equal, longer (cut from the left)
            out = model(torch.rand(3, length, 2) * 10 + 100)
            assert out.shape == (3, 4, 2) and torch.isfinite(out).all()
        long_input = torch.rand(2, 300, 1) + 50
        assert torch.allclose(model(long_input), model(long_input[:, -24:]))


def test_only_the_reprogramming_parts_train(backbone_dirs):
    backbone = load_backbone(backbone_dirs["gpt2"], 2)
    frozen_before = {name: p.clone() for name, p in backbone.model.named_parameters()}
    model = TimeLLM(tiny_config(backbone_dirs["gpt2"]), backbone)
    counts = model.parameter_counts()
    assert counts["frozen"] == sum(p.numel() for p in backbone.model.parameters())
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    assert not backbone.model.training  # the frozen model keeps dropout off
    model(torch.rand(4, 24, 1) + 1).pow(2).mean().backward()
    optimiser.step()
    assert all(p.grad is None for p in backbone.model.parameters())
    assert all(torch.equal(p, frozen_before[name]) for name, p in backbone.model.named_parameters())
    assert model.mapping.weight.grad is not None and model.head.linear.weight.grad is not None


def einsum_reprogramming(layer, patches: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Upstream Time-LLM's reprogramming attention: two einsums, nn.Dropout on the (N, h, P, S) weights."""
    n, p, _ = patches.shape
    h, e = layer.n_heads, layer.d_keys
    q = layer.query(patches).view(n, p, h, e)
    k, v = layer.key(prototypes).view(-1, h, e), layer.value(prototypes).view(-1, h, e)
    weights = torch.softmax(torch.einsum("nphe,she->nhps", q, k) / e**0.5, dim=-1)
    weights = torch.nn.functional.dropout(weights, layer.dropout, layer.training)
    return layer.out(torch.einsum("nhps,she->nphe", weights, v).reshape(n, p, h * e))


@pytest.mark.parametrize("training", [False, True])
def test_reprogramming_equals_upstreams_einsums_with_the_same_dropout_masks(training):
    from models.timellm.layers import ReprogrammingAttention

    torch.manual_seed(0)
    layer = ReprogrammingAttention(d_model=8, n_heads=4, d_keys=16, d_llm=48, dropout=0.3).train(training)
    patches, prototypes = torch.randn(5, 7, 8, requires_grad=True), torch.randn(50, 48, requires_grad=True)

    def ours(layer, patches, prototypes):
        return layer(patches, *layer.keys_values(prototypes))

    results = []
    for attention in (einsum_reprogramming, ours):
        torch.manual_seed(1)
        for tensor in (patches, prototypes, *layer.parameters()):
            tensor.grad = None
        out = attention(layer, patches, prototypes)
        out.pow(2).sum().backward()
        results.append([out.detach(), patches.grad, prototypes.grad, *(p.grad for p in layer.parameters())])
    for upstream, heads_first in zip(*results, strict=True):
        assert torch.equal(upstream, heads_first)  # bit for bit: a seed trains the same model either way
    with torch.no_grad():
        without_dropout = layer.eval()(patches, *layer.keys_values(prototypes))
    assert torch.equal(results[1][0], without_dropout) != training  # in training the masks did drop weights


def test_ablation_layer_computes_only_the_positions_the_head_reads():
    from models.timellm.layers import SelfAttentionLayer

    torch.manual_seed(0)
    layer = SelfAttentionLayer(32, 4, dropout=0.1).eval()
    x = torch.randn(6, 20, 32)
    mask = torch.ones(6, 20, dtype=torch.bool)
    mask[:3, :5] = False  # left padding, as the prompts have
    full = layer(x, mask)
    last = layer(x, mask, queries=7)
    assert last.shape == (6, 7, 32)
    torch.testing.assert_close(last, full[:, -7:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_backbone_computes_the_patch_positions_as_the_whole_model_does(backbone_dirs, kind):
    from models.timellm.backbone import last_hidden_states

    model = load_backbone(backbone_dirs[kind], 3).model
    torch.manual_seed(0)
    embeddings = torch.randn(5, 20, model.config.hidden_size)
    mask = torch.ones(5, 20, dtype=torch.bool)
    mask[:2, :4] = False  # left-padded prompts
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        whole = model(inputs_embeds=embeddings, attention_mask=mask.long(), position_ids=positions).last_hidden_state
        kept = last_hidden_states(model, embeddings, mask, positions, keep=6)
    assert kept.shape == (5, 6, model.config.hidden_size)
    torch.testing.assert_close(kept, whole[:, -6:], rtol=1e-5, atol=1e-5)


def test_save_and_load_round_trip(backbone_dirs, tmp_path):
    backbone = load_backbone(backbone_dirs["bert"], 2)
    torch.manual_seed(1)
    model = TimeLLM(tiny_config(backbone_dirs["bert"], "llm_to_attn"), backbone).eval()
    model.save_pretrained(tmp_path / "saved")
    loaded = TimeLLM.from_pretrained(tmp_path / "saved")  # reloads the backbone from its folder
    x = torch.rand(2, 24, 1) + 3
    assert torch.allclose(model(x), loaded(x), atol=1e-6)
    (tmp_path / "saved" / "config.json").write_text(
        (tmp_path / "saved" / "config.json").read_text().replace("llm_to_attn", "no_llm")
    )
    with pytest.raises(CheckpointError, match="unexpected keys"):
        TimeLLM.from_pretrained(tmp_path / "saved")


def test_a_backbone_of_another_depth_is_refused(backbone_dirs, tmp_path):
    backbone = load_backbone(backbone_dirs["bert"], 2)
    TimeLLM(tiny_config(backbone_dirs["bert"]), backbone).save_pretrained(
        tmp_path / "saved"
    )  # trained with llm_layers=2
    with pytest.raises(ValueError, match=r"keeps 3 of its 3 blocks but this model runs 2 \(llm_layers=2\)"):
        TimeLLM.from_pretrained(tmp_path / "saved", load_backbone(backbone_dirs["bert"], 3))
    TimeLLM(
        tiny_config(backbone_dirs["bert"], llm_layers=5), load_backbone(backbone_dirs["bert"], 5)
    )  # all 3 it has: fine
    TimeLLM(tiny_config(backbone_dirs["bert"], "no_llm"), load_backbone(backbone_dirs["bert"], 3))  # runs none of them


def test_int8_backbone_forecasts_near_fp32_with_the_same_trained_weights(backbone_dirs):
    backbone = load_backbone(backbone_dirs["bert"], 2)
    torch.manual_seed(0)
    model = TimeLLM(tiny_config(backbone_dirs["bert"]), backbone).eval()
    quantised = model.with_backbone(int8_backbone(backbone))
    trained = quantised.trainable_state()
    assert all(torch.equal(weight, trained[name]) for name, weight in model.trainable_state().items())
    assert any(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in quantised.llm.modules())
    assert not any(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in model.llm.modules())  # a copy
    x = torch.rand(64, 24, 1).cumsum(1) + 10
    with torch.no_grad():
        exact, approx = model(x), quantised(x)
    spread = (exact - exact.mean(0)).abs().mean()
    assert 0 < (approx - exact).abs().mean() < 0.1 * spread


def test_bf16_backbone_copy_forecasts_near_fp32_and_leaves_the_float_backbone(backbone_dirs):
    from models.device import autocast
    from models.timellm.backbone import bf16_backbone

    backbone = load_backbone(backbone_dirs["bert"], 2)
    torch.manual_seed(0)
    model = TimeLLM(tiny_config(backbone_dirs["bert"]), backbone).eval()
    halved = model.with_backbone(bf16_backbone(backbone))
    assert all(p.dtype == torch.bfloat16 for p in halved.llm.parameters())
    assert all(p.dtype == torch.float32 for p in model.llm.parameters())  # the copy, not the backbone training uses
    x = torch.rand(64, 24, 1).cumsum(1) + 10
    with torch.no_grad(), autocast(DEVICE, True):  # the CPU runs the GPU path's dtypes, slowly
        approx = halved(x).float()
    with torch.no_grad():
        exact = model(x)
    spread = (exact - exact.mean(0)).abs().mean()
    assert 0 < (approx - exact).abs().mean() < 0.1 * spread


def test_forecast_backbone_follows_the_device_and_precision():
    from data_prep.errors import ConfigError
    from pipeline.stages.timellm import forecast_backbone

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert forecast_backbone("auto", cpu, False, False) == "int8"  # a CPU without bf16 units
    assert forecast_backbone("auto", cpu, True, False) is None  # bf16 autocast on a CPU with bf16 units
    assert forecast_backbone("auto", cuda, True, False) == "bf16"
    assert forecast_backbone("auto", cuda, True, True) is None  # 4-bit weights already compute in bf16
    assert forecast_backbone("auto", cuda, False, False) is None
    assert forecast_backbone("float", cpu, False, False) is None
    with pytest.raises(ConfigError, match="int8 dynamic quantisation runs on the CPU"):
        forecast_backbone("int8", cuda, True, False)
    with pytest.raises(ConfigError, match="is fp32"):
        forecast_backbone("bf16", cuda, False, False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_micro_batches_give_the_whole_batchs_gradient(backbone_dirs, variant):
    backbone = load_backbone(backbone_dirs["gpt2"], 2)
    torch.manual_seed(0)
    model = TimeLLM(tiny_config(backbone_dirs["gpt2"], variant), backbone).train()  # dropout 0: the same function
    x, y = torch.rand(10, 24, 1).cumsum(1) + 5, torch.rand(10, 4, 1) + 5
    gradients = []
    for micro_batch in (10, 3):
        model.zero_grad(set_to_none=True)
        loss = accumulate_gradients(model, x, y, micro_batch, DEVICE, bf16=False)
        gradients.append(
            (loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad})
        )
    (whole_loss, whole), (micro_loss, micro) = gradients
    assert micro_loss == pytest.approx(whole_loss, rel=1e-5)
    for name, grad in whole.items():
        torch.testing.assert_close(micro[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    assert whole["mapping.weight"].abs().sum() > 0  # the vocabulary projection gets its gradient


def test_training_beats_the_untrained_model_and_is_seeded(backbone_dirs, tiny_split_dir):
    split = Split.load(tiny_split_dir)
    backbone = load_backbone(backbone_dirs["gpt2"], 2)
    # log_every 4 does not divide the 15 steps of an epoch: the losses are also read at its end
    settings = TimeLLMTrainConfig(
        epochs=2, steps_per_epoch=15, batch_size=16, lr=1e-2, val_windows=64, log_every=4
    ).settings(seed=3)
    close = [list(split.panel.fields).index("close")]
    valid = split.segment("valid")
    reports = []
    for _ in range(2):
        torch.manual_seed(0)
        model = TimeLLM(tiny_config(backbone_dirs["gpt2"]), backbone)
        before = evaluate(model, valid, np.arange(len(valid)), close, DEVICE, bf16=False)
        history, report = fit(
            model, split.segment("train"), valid, close, settings, DEVICE, bf16=False, label="timellm"
        )
        reports.append(report["best_val_mse"])
    assert report["best_val_mse"] < before["mse"]
    assert reports[0] == reports[1]  # same seed, same batches, same result
    assert [row["step"] for row in history if "timellm_train_mse" in row] == list(range(1, report["steps"] + 1))
    assert [row["step"] for row in history if "timellm_val_mse" in row] == [
        15 * (epoch + 1) for epoch in range(report["epochs_run"])
    ]
    history_values, _ = split.forecast_windows(*split_dates(split)).get(np.arange(5))
    assert forecast(model, history_values[..., close], DEVICE, bf16=False, batch_size=2).shape == (5, 4, 1)


def test_an_interrupted_training_resumes_to_the_same_weights(backbone_dirs, tiny_split_dir, tmp_path, monkeypatch):
    from models.timellm import training

    split = Split.load(tiny_split_dir)
    backbone = load_backbone(backbone_dirs["gpt2"], 2)
    settings = TimeLLMTrainConfig(
        epochs=3, steps_per_epoch=6, batch_size=16, lr=1e-2, val_windows=32, log_every=4, patience=3
    ).settings(seed=3)
    close = [list(split.panel.fields).index("close")]

    def run(progress=None):
        torch.manual_seed(0)
        model = TimeLLM(tiny_config(backbone_dirs["gpt2"]), backbone)
        args = (model, split.segment("train"), split.segment("valid"), close, settings, DEVICE, False, "timellm")
        history, report = fit(*args, progress)
        return model, history, report

    straight, straight_history, straight_report = run()

    class Killed(BaseException):
        pass

    real, calls = training.evaluate, []

    def dies_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's validation: epoch 1 is saved, epoch 2's steps are lost
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", dies_in_epoch_two)
    with pytest.raises(Killed):
        run(tmp_path / "last.pt")
    monkeypatch.setattr(training, "evaluate", real)
    resumed, history, report = run(tmp_path / "last.pt")
    for name, tensor in straight.trainable_state().items():
        assert torch.equal(resumed.trainable_state()[name], tensor), name
    assert history == straight_history and report["best_val_mse"] == straight_report["best_val_mse"]
    assert report["epochs_run"] == straight_report["epochs_run"] == 3


def split_dates(split: Split):
    days = split.segment("test").dates(np.array([0]))[0]
    return pd.Timestamp(days[split.lookback - 1]).date(), pd.Timestamp(days[-1]).date()


def test_stage_writes_every_variant_and_joins_the_backtest(backbone_dirs, bars_csv, write_config):
    import mlflow

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    overrides = [
        f"timellm.model={{backbone: {backbone_dirs['gpt2']}, llm_layers: 2, patch_len: 4, stride: 2, "
        "d_model: 8, d_ff: 16, n_heads: 2, num_tokens: 32}",
        "timellm.training={epochs: 1, steps_per_epoch: 5, batch_size: 8, val_windows: 32}",
        "signals.sources=[timellm, timellm_no_llm, timellm_llm_to_attn, momentum]",
        "backtest.topk=2",
        "backtest.n_drop=1",
        "backtest.sweep_topk=[2]",
        "backtest.sweep_n_drop=[1]",
        "backtest.sweep_cost=[1.0]",
        "timellm.forecast_backbone=int8",
    ]
    config = load_config(write_config(bars_csv, experiment="timellm"), overrides)
    outcomes = run_pipeline(config, "backtest")
    assert [o.stage for o in outcomes] == ["ingest", "split", "timellm", "backtest"]
    stage = outcomes[2]
    for name in ("timellm", "timellm_no_llm", "timellm_llm_to_attn"):
        table = pd.read_parquet(stage.output / "signals" / f"{name}.parquet")
        assert len(table) > 0 and table["score"].notna().all() and (table["model"] == name).all()
        assert (stage.output / "models" / name / "model.safetensors").is_file()
    comparison = pd.read_csv(outcomes[-1].output / "comparison.csv")
    assert {"timellm", "timellm_no_llm", "timellm_llm_to_attn", "momentum"} == set(comparison["strategy"])
    assert comparison[["return_mse", "return_mae"]].notna().all().all()
    metrics = mlflow.MlflowClient(config.tracking.uri).get_run(stage.run_id).data.metrics
    assert (
        metrics["timellm_frozen_params"] > 0
        and metrics["timellm_no_llm_frozen_params"] < metrics["timellm_frozen_params"]
    )
    assert {"timellm_test_mse", "timellm_llm_to_attn_val_mse", "persistence_test_mse"} <= set(metrics)
    assert (
        metrics["backbone_int8"] == 1 and -1 <= metrics["timellm_int8_score_correlation"] <= 1
    )  # forecast with int8, checked against fp32
    assert "timellm_no_llm_int8_score_correlation" not in metrics  # no other variant runs the backbone's layers
