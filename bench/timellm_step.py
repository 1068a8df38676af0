"""Time-LLM training-step time: batched prompts (this implementation) against the per-sample
prompt loop (upstream's way), on the same model and data.

    python bench/timellm_step.py [--batch 32] [--seq 96] [--channels 7] [--horizon 96] [--layers 6] [--steps 3] [--bf16]

The backbone is a GPT-2-width model (768 wide, 12 heads, `--layers` blocks) with random weights,
since nothing can be downloaded here, and the bundled all-MiniLM WordPiece vocabulary as its
tokenizer; `--backbone PATH` uses a real local model instead. Both versions run the same weights,
batches and precision; only the prompt construction differs. Prints the step times, their ratio
and the prompt-construction time alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2Model

from models.device import autocast
from models.timellm import TimeLLM, TimeLLMConfig
from models.timellm.backbone import bundled_minilm_path, load_backbone
from models.timellm.prompt import LoopPromptBuilder


def gpt2_width_backbone(folder: str, layers: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_path())
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_embd=768,
        n_head=12,
        n_layer=layers,
        n_positions=1024,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    GPT2Model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def time_steps(model: TimeLLM, batches: list[tuple[torch.Tensor, torch.Tensor]], bf16: bool) -> float:
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    started = time.perf_counter()
    for x, y in batches:
        with autocast(torch.device("cpu"), bf16):
            loss = (model(x).float() - y).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return (time.perf_counter() - started) / len(batches)


def time_prompts(builder, series: torch.Tensor, repeats: int = 20) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        builder(series)
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=96)
    parser.add_argument("--channels", type=int, default=7)
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for both versions")
    parser.add_argument(
        "--backbone", default="", help="a local language-model folder instead of the random GPT-2-width one"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        source = args.backbone or gpt2_width_backbone(folder, args.layers)
        backbone = load_backbone(source, args.layers)
        config = TimeLLMConfig(
            seq_len=args.seq,
            pred_len=args.horizon,
            backbone=source,
            llm_layers=args.layers,
            d_model=32,
            d_ff=128,
            n_heads=8,
            dropout=0.0,
        )
        torch.manual_seed(0)
        model = TimeLLM(config, backbone)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(args.batch, args.seq, args.channels, generator=generator).cumsum(1),
            torch.randn(args.batch, args.horizon, args.channels, generator=generator),
        )
        for _ in range(args.steps + 1)
    ]
    vectorised = model.prompt
    loop = LoopPromptBuilder(backbone.tokenizer, config.description, config.seq_len, config.pred_len)
    counts = model.parameter_counts()
    print(
        f"torch threads {torch.get_num_threads()}; "
        f"batch {args.batch} x {args.channels} channels = {args.batch * args.channels} series, "
        f"seq {args.seq}, horizon {args.horizon}; backbone width {backbone.width}, {args.layers} layers; "
        f"{counts['trainable'] / 1e6:.1f}M trainable / {counts['frozen'] / 1e6:.1f}M frozen parameters; "
        f"{'bf16' if args.bf16 else 'fp32'}"
    )

    initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    timings = {}
    for label, builder in (("batched prompts", vectorised), ("per-sample loop", loop)):
        model.load_state_dict(initial, strict=False)
        model.prompt = builder
        time_steps(model, batches[:1], args.bf16)  # warm-up
        timings[label] = time_steps(model, batches[1:], args.bf16)
    model.prompt = vectorised

    series = batches[0][0].permute(0, 2, 1).reshape(-1, args.seq)
    series = (series - series.mean(-1, keepdim=True)) / series.std(-1, keepdim=True)
    prompt_batched, prompt_loop = time_prompts(vectorised, series), time_prompts(loop, series)
    same = all(torch.equal(a, b) for a, b in zip(vectorised(series), loop(series), strict=True))
    fast, slow = timings["batched prompts"], timings["per-sample loop"]
    print(f"training step: batched prompts {fast:.3f} s, per-sample loop {slow:.3f} s, speed-up {slow / fast:.2f}x")
    print(
        f"prompt construction alone ({len(series)} series): batched {prompt_batched * 1e3:.2f} ms, "
        f"loop {prompt_loop * 1e3:.2f} ms, "
        f"speed-up {prompt_loop / prompt_batched:.1f}x; identical token ids: {same}"
    )
    print(
        f"share of the step spent building prompts: batched {prompt_batched / fast:.1%}, loop {prompt_loop / slow:.1%}"
    )


if __name__ == "__main__":
    main()
