"""Time-LLM: forecasting by reprogramming a frozen language model (Jin et al., ICLR 2024).

    (B, L, C) prices -> RevIN -> C channel-independent series (N = B*C, L)
        -> patches (N, P, d_model) -> reprogramming attention over text prototypes (N, P, W)
        -> [prompt embeddings (N, T, W) ; reprogrammed patches] -> frozen LM (first llm_layers)
        -> last P positions, first d_ff features -> flatten head -> (N, H) -> (B, H, C) prices

Ablations with the same inputs and budget: `no_llm` sends the reprogrammed patches straight to
the head; `llm_to_attn` puts one trainable self-attention layer where the language model was.
Only the small trainable part is saved (`model.safetensors` + `config.json`); the backbone is
reloaded from `config.backbone`, a hub id or a local folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import safetensors.torch
import torch
import torch.nn as nn
import torch.nn.functional as F

from data_prep.errors import CheckpointError
from models.timellm.backbone import (
    DEFAULT_BACKBONE,
    Backbone,
    last_hidden_states,
    load_backbone,
    warn_float_fallback,
)
from models.timellm.layers import FlattenHead, PatchEmbedding, ReprogrammingAttention, SelfAttentionLayer, revin
from models.timellm.prompt import PROMPT_STYLES, PromptBuilder

VARIANTS = ("llm", "no_llm", "llm_to_attn")
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass(frozen=True)
class TimeLLMConfig:
    seq_len: int = 96  # context the model sees; longer inputs are cut from the left, shorter padded
    pred_len: int = 5
    variant: str = "llm"
    backbone: str = DEFAULT_BACKBONE  # hub id or local folder
    llm_layers: int = 3  # the backbone's first blocks kept: 3 of MiniLM's 6 halve the frozen model's cost on a CPU
    patch_len: int = 16
    stride: int = 8
    d_model: int = 16
    d_ff: int = 32  # features kept from each LM position for the head (<= the LM width)
    n_heads: int = 8
    num_tokens: int = 1000  # text prototypes
    dropout: float = 0.1
    description: str = "Daily stock prices."  # every token is paid for by every series in the frozen model
    # wording of the prompt: compact (44 tokens with the default description) or upstream (Time-LLM's, 70)
    prompt: str = "compact"
    trust_remote_code: bool = False
    load_in_4bit: bool = False

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown Time-LLM variant {self.variant!r}: choose from {VARIANTS}")
        if self.prompt not in PROMPT_STYLES:
            raise ValueError(f"unknown Time-LLM prompt style {self.prompt!r}: choose from {PROMPT_STYLES}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"Time-LLM dropout must be in [0, 1), got {self.dropout}")
        if self.seq_len < self.patch_len:
            raise ValueError(
                f"seq_len ({self.seq_len}) is shorter than patch_len ({self.patch_len}): lower timellm.patch_len"
            )


def read_config(path: Path | str) -> TimeLLMConfig:
    """The config.json of a saved model (save_pretrained)."""
    # Checkpoints saved before the prompt style existed were trained on upstream's wording.
    return TimeLLMConfig(**{"prompt": "upstream", **json.loads(Path(path).read_text())})


class TimeLLM(nn.Module):
    def __init__(self, config: TimeLLMConfig, backbone: Backbone | None = None):
        super().__init__()
        if backbone is None:
            backbone = load_backbone(config.backbone, config.llm_layers, config.trust_remote_code, config.load_in_4bit)
        expected_blocks = min(config.llm_layers, backbone.pretrained_blocks)
        if config.variant == "llm" and backbone.blocks != expected_blocks:
            raise ValueError(
                f"the backbone keeps {backbone.blocks} of its {backbone.pretrained_blocks} blocks but this model runs "
                f"{expected_blocks} (llm_layers={config.llm_layers}): load it with "
                f"load_backbone({config.backbone!r}, {config.llm_layers})"
            )
        if config.d_ff > backbone.width:
            raise ValueError(f"d_ff ({config.d_ff}) is wider than the backbone ({backbone.width}): lower timellm.d_ff")
        self.config = config
        self.patch_embedding = PatchEmbedding(config.patch_len, config.stride, config.d_model, config.dropout)
        self.n_patches = self.patch_embedding.count(config.seq_len)
        self.word_embeddings = cast(nn.Embedding, backbone.model.get_input_embeddings())  # frozen (vocab, W)
        self.mapping = nn.Linear(self.word_embeddings.weight.shape[0], config.num_tokens)  # vocab -> prototypes
        self.reprogramming = ReprogrammingAttention(
            config.d_model, config.n_heads, config.d_ff, backbone.width, config.dropout
        )
        self.prompt = None
        if config.variant != "no_llm":
            self.prompt = PromptBuilder(
                backbone.tokenizer, config.description, config.seq_len, config.pred_len, config.prompt
            )
            longest = self.prompt.max_length + self.n_patches
            if backbone.max_positions is not None and longest > backbone.max_positions:
                raise ValueError(
                    f"prompt ({self.prompt.max_length} tokens) + {self.n_patches} patches exceed the backbone's "
                    f"{backbone.max_positions} positions: shorten timellm.description or split.lookback"
                )
        self.llm = backbone.model if config.variant == "llm" else None
        self.attention = (
            SelfAttentionLayer(backbone.width, config.n_heads, config.dropout)
            if config.variant == "llm_to_attn"
            else None
        )
        self.head = FlattenHead(config.d_ff * self.n_patches, config.pred_len, config.dropout)
        # On a cheaper copy of the backbone: the float one, and once forecasting on the copy has
        # failed, this model on it (a list, so that it is not registered as a submodule).
        self.original_backbone = backbone.original
        self._on_original: list[TimeLLM] = []

    def train(self, mode: bool = True) -> TimeLLM:
        super().train(mode)
        if self.llm is not None:
            self.llm.eval()  # the frozen model stays deterministic (no dropout) while the rest trains
        return self

    def text_prototypes(self) -> torch.Tensor:
        """(num_tokens, W): a learned linear mix of the frozen vocabulary embeddings."""
        return self.mapping(self.word_embeddings.weight.float().T).T

    def prototype_memory(self, prototypes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the text prototypes (default: `text_prototypes()`) for the reprogramming attention."""
        return self.reprogramming.keys_values(self.text_prototypes() if prototypes is None else prototypes)

    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, L, C) values of any length L -> (B, pred_len, C) forecasts in the same units.

        `memory` (from `prototype_memory()`) may be passed in to skip the vocabulary projection and the
        prototypes' keys and values: inference computes them once for all its batches, and a
        training batch run as micro-batches projects the vocabulary once (training.accumulate_gradients).
        """
        x, mean, std = revin(x[:, -self.config.seq_len :])
        b, length, c = x.shape
        series = x.permute(0, 2, 1).reshape(b * c, length)  # (N, L)
        if length < self.config.seq_len:  # too short: repeat the first observation on the left
            series = F.pad(series.unsqueeze(1), (self.config.seq_len - length, 0), mode="replicate").squeeze(1)
        patches = self.patch_embedding(series)  # (N, P, d_model)
        tokens = self.reprogramming(patches, *(self.prototype_memory() if memory is None else memory))  # (N, P, W)
        hidden = self.mix(series, tokens)[..., : self.config.d_ff]  # (N, P, d_ff)
        forecast = self.head(hidden.float()).view(b, c, -1).permute(0, 2, 1)  # (B, H, C)
        return forecast * std + mean

    def mix(self, series: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The sequence model between reprogramming and head (LM, one attention layer, or none):
        tokens (N, P, W) -> hidden states of the patch positions (N, P, W), which the head reads."""
        if self.prompt is None:
            return tokens
        prompt_ids, prompt_mask = self.prompt(series)  # (N, T)
        sequence = torch.cat([self.word_embeddings(prompt_ids).to(tokens.dtype), tokens], dim=1)  # (N, T + P, W)
        mask = torch.cat([prompt_mask, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)], dim=1)
        if self.attention is not None:
            return self.attention(sequence, mask, queries=self.n_patches)
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # left padding: positions start at the first real token
        assert self.llm is not None  # variant "llm": neither prompt-free nor an attention layer
        return last_hidden_states(self.llm, sequence, mask, positions, self.n_patches)

    def with_backbone(self, backbone: Backbone) -> TimeLLM:
        """The same trained model on another copy of the frozen backbone (e.g. an int8 one for forecasting)."""
        model = TimeLLM(self.config, backbone).to(next(self.head.parameters()).device)
        with torch.no_grad():  # parameter by parameter: a quantised backbone has no float state to load
            for name, weight in self.trainable_state().items():
                model.get_parameter(name).copy_(weight)
        return model.eval()

    def forecaster(self) -> TimeLLM:
        """The model forecasts run: this one, or after forecasting on its cheaper backbone copy
        failed (fall_back_to_original), the same model on the float backbone."""
        return self._on_original[0] if self._on_original else self

    def fall_back_to_original(self, error: Exception) -> TimeLLM | None:
        """After `error` while forecasting on a cheaper copy of the backbone (int8_backbone,
        bf16_backbone): the same trained model on the backbone the copy was made from, built once,
        with one warning, and used by `forecaster()` from then on. None when this model runs no
        such copy, or on out-of-memory (the float backbone needs more)."""
        if self.original_backbone is None or isinstance(error, torch.OutOfMemoryError):
            return None
        if not self._on_original:
            warn_float_fallback("forecasting on the cheaper copy of the backbone", error)
            with torch.random.fork_rng(devices=[]):  # initial weights are drawn, then overwritten
                self._on_original.append(self.with_backbone(self.original_backbone))
        return self._on_original[0]

    def parameter_counts(self) -> dict[str, int]:
        unique = {id(p): p for p in self.parameters()}.values()
        trainable = sum(p.numel() for p in unique if p.requires_grad)
        return {"trainable": trainable, "frozen": sum(p.numel() for p in unique) - trainable}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def save_pretrained(self, folder: Path | str) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))
        state = {name: tensor.cpu().contiguous() for name, tensor in self.trainable_state().items()}
        safetensors.torch.save_file(state, folder / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, name_or_path: Path | str, backbone: Backbone | None = None) -> TimeLLM:
        """Load from a folder written by save_pretrained or a hub repository holding one."""
        folder = Path(name_or_path)
        config_file: Path | str
        weights_file: Path | str
        if folder.is_dir():
            config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        else:
            from huggingface_hub import hf_hub_download

            config_file = hf_hub_download(str(name_or_path), CONFIG_NAME)
            weights_file = hf_hub_download(str(name_or_path), WEIGHTS_NAME)
        model = cls(read_config(config_file), backbone)
        state = safetensors.torch.load_file(str(weights_file))
        expected = set(model.trainable_state())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"{weights_file} does not match TimeLLM ({model.config.variant}): "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        model.load_state_dict(state, strict=False)
        return model.eval()
