"""Prompt-as-prefix: a text prompt per series with its input statistics, as token ids.

The prompt states the domain, the task and five statistics of the (normalised) input: min, max,
median, trend and the five lags with the strongest autocorrelation. Upstream Time-LLM formats
and tokenises every prompt in a Python loop on every forward pass. `PromptBuilder` instead
tokenises each piece of the template once (fixed text, every number on a 0.01 grid, every lag),
computes the statistics for the whole batch with tensor operations and assembles the ids with
a gather and a scatter. `LoopPromptBuilder` is the per-sample loop, kept as the reference the
tests and `bench/timellm_step.py` compare against; both give identical ids.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

NUMBER_LIMIT = 10.0  # statistics of z-scored inputs; larger magnitudes are clamped for the prompt
NUMBER_STEPS = 100  # two decimals
TOP_LAGS = 5


PROMPT_STYLES = ("compact", "upstream")


def fixed_pieces(description: str, seq_len: int, pred_len: int, style: str = "compact") -> list[str]:
    """The template's constant text; numbers, trend and lags go between these pieces.

    `upstream` is Time-LLM's wording (70 WordPiece tokens with the default description);
    `compact` states the same description, task and statistics in 44, and the frozen model's
    cost grows with every token of every series.
    """
    if style == "upstream":
        return [
            f"Dataset description: {description} Task description: forecast the next {pred_len} steps given the "
            f"previous {seq_len} steps information; Input statistics: min value",
            ", max value",
            ", median value",
            ", the trend of input is",
            f", top {TOP_LAGS} lags are:",
            ",",
            ".",
        ]
    if style != "compact":
        raise ValueError(f"unknown Time-LLM prompt style {style!r}: choose from {PROMPT_STYLES}")
    return [
        f"{description} Forecast {pred_len} steps from {seq_len}; min",
        ", max",
        ", median",
        ", trend",
        ", top lags",
        ",",
        ".",
    ]


def number_text(step: int) -> str:
    """A statistic quantised to `step` hundredths; integer steps avoid printing '-0.00'."""
    return f" {step / NUMBER_STEPS:.2f}"


def quantise(values: torch.Tensor) -> torch.Tensor:
    return torch.round(values.clamp(-NUMBER_LIMIT, NUMBER_LIMIT) * NUMBER_STEPS).long()


def input_statistics(series: torch.Tensor) -> dict[str, torch.Tensor]:
    """Prompt statistics for a batch of series (N, L): quantised min/max/median, trend, top lags."""
    length = series.shape[-1]
    # Linear (zero-padded) autocorrelation by FFT; lag 0 is always the maximum, so it is skipped.
    spectrum = torch.fft.rfft(series - series.mean(-1, keepdim=True), n=2 * length)
    autocorrelation = torch.fft.irfft(spectrum * spectrum.conj(), n=2 * length)[:, 1:length]
    return {
        "min": quantise(series.min(-1).values),
        "max": quantise(series.max(-1).values),
        "median": quantise(series.median(-1).values),
        "upward": (series[:, -1] - series[:, 0]) > 0,  # the sum of first differences
        "lags": autocorrelation.topk(min(TOP_LAGS, length - 1), dim=-1).indices + 1,
    }


def start_token(tokenizer) -> str:
    """The model's sequence-start token ([CLS] for BERT, BOS otherwise), or none."""
    return tokenizer.cls_token or tokenizer.bos_token or ""


class PromptBuilder(nn.Module):
    """(N, L) normalised series -> left-padded prompt ids (N, T) and mask (N, T), all tensor ops."""

    table: torch.Tensor  # registered buffers
    lengths: torch.Tensor

    def __init__(self, tokenizer, description: str, seq_len: int, pred_len: int, style: str = "compact"):
        super().__init__()
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token (e.g. to its EOS token)")
        fixed = fixed_pieces(description, seq_len, pred_len, style)
        numbers = [
            number_text(step) for step in range(-int(NUMBER_LIMIT * NUMBER_STEPS), int(NUMBER_LIMIT * NUMBER_STEPS) + 1)
        ]
        trends = [" downward", " upward"]
        lags = [f" {lag}" for lag in range(seq_len)]
        pieces = fixed + numbers + trends + lags
        assert len(fixed) == 7, "pieces_of() and max_length index the fixed pieces"
        self.number_offset = len(fixed) + int(NUMBER_LIMIT * NUMBER_STEPS)  # table row of 0.00
        self.trend_offset = len(fixed) + len(numbers)
        self.lag_offset = self.trend_offset + len(trends)
        self.pad_id = tokenizer.pad_token_id

        ids = tokenizer(pieces, add_special_tokens=False)["input_ids"]
        start = start_token(tokenizer)
        if start:
            ids[0] = [tokenizer.convert_tokens_to_ids(start), *ids[0]]
        table = torch.full((len(ids), max(map(len, ids))), self.pad_id, dtype=torch.long)
        for row, piece_ids in enumerate(ids):
            table[row, : len(piece_ids)] = torch.tensor(piece_ids, dtype=torch.long)
        self.register_buffer("table", table, persistent=False)  # (pieces, longest piece)
        self.register_buffer("lengths", torch.tensor([len(piece_ids) for piece_ids in ids]), persistent=False)

    @property
    def max_length(self) -> int:
        """The longest prompt possible, to check against the model's position limit."""
        fixed, numbers = self.lengths[:7], self.lengths[7 : self.trend_offset]
        trends, lags = self.lengths[self.trend_offset : self.lag_offset], self.lengths[self.lag_offset :]
        longest = (
            fixed[:5].sum()
            + 3 * numbers.max()
            + trends.max()
            + TOP_LAGS * lags.max()
            + (TOP_LAGS - 1) * fixed[5]
            + fixed[6]
        )
        return int(longest)

    def pieces_of(self, series: torch.Tensor) -> torch.Tensor:
        """Table rows of each sample's prompt, in order: (N, slots)."""
        stats = input_statistics(series.float())
        constant = torch.ones_like(stats["min"])
        numbers = {key: stats[key] + self.number_offset for key in ("min", "max", "median")}
        slots = [
            0 * constant,
            numbers["min"],
            constant,
            numbers["max"],
            2 * constant,
            numbers["median"],
            3 * constant,
            stats["upward"].long() + self.trend_offset,
            4 * constant,
        ]
        lags = stats["lags"] + self.lag_offset
        for k in range(lags.shape[1]):
            slots += [lags[:, k], (5 if k < lags.shape[1] - 1 else 6) * constant]
        return torch.stack(slots, dim=1)

    def forward(self, series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pieces = self.pieces_of(series)  # (N, S)
        tokens, lengths = self.table[pieces], self.lengths[pieces]  # (N, S, W), (N, S)
        totals = lengths.sum(1)  # (N,)
        width = int(totals.max())
        starts = width - totals  # left padding, so every prompt ends right before the patches
        offsets = starts[:, None] + lengths.cumsum(1) - lengths  # (N, S) where each piece begins
        within = torch.arange(tokens.shape[-1], device=series.device)
        real = within < lengths[..., None]  # (N, S, W)
        rows = torch.arange(len(pieces), device=series.device)[:, None, None].expand_as(tokens)
        ids = torch.full((len(pieces), width), self.pad_id, dtype=torch.long, device=series.device)
        ids[rows[real], (offsets[..., None] + within)[real]] = tokens[real]
        mask = torch.arange(width, device=series.device) >= starts[:, None]
        return ids, mask


class LoopPromptBuilder(nn.Module):
    """Reference: the same prompts built like upstream, one Python string per sample, tokenised
    with padding on every call."""

    def __init__(self, tokenizer, description: str, seq_len: int, pred_len: int, style: str = "compact"):
        super().__init__()
        self.tokenizer = tokenizer
        self.fixed = fixed_pieces(description, seq_len, pred_len, style)

    def text(self, series: torch.Tensor) -> str:
        row = series.float().unsqueeze(0)
        stats: dict[str, Any] = {key: value[0].tolist() for key, value in input_statistics(row).items()}
        *fixed, comma, stop = self.fixed
        lags = comma.join(f" {lag}" for lag in stats["lags"])
        return (
            start_token(self.tokenizer)
            + fixed[0]
            + number_text(stats["min"])
            + fixed[1]
            + number_text(stats["max"])
            + fixed[2]
            + number_text(stats["median"])
            + fixed[3]
            + (" upward" if stats["upward"] else " downward")
            + fixed[4]
            + lags
            + stop
        )

    def forward(self, series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [self.text(row) for row in series]
        encoded = self.tokenizer(
            texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"
        )
        return encoded["input_ids"].to(series.device), encoded["attention_mask"].bool().to(series.device)
