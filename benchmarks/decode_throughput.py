"""Decoding throughput on a ~90M-parameter Llama: poise's step-based loop against ``generate``.

Builds, in code, a Llama with random (seeded) weights (hidden 640, 10 layers, intermediate 1728,
10 heads, vocabulary 32k; ~90M parameters) and a 32k-word tokenizer with a chat template,
writes them to a temporary folder, and decodes 256 chats of varied prompt lengths, greedy,
64 new tokens each (no EOS: the tokenizer has none, so every row runs the full 64 steps), on
one torch thread, three ways in one process:

1. ``poise``: ``HFModel.generate`` (continuous batch of ``--batch-size`` rows, preallocated KV
   cache, rows admitted as others finish);
2. ``chunked``: transformers ``model.generate`` over chunks of 32 prompts in the given order,
   left-padded;
3. ``sorted``: the same over chunks of 32 prompts sorted by length (least padding).

It checks that the three produce the same greedy tokens, prints tokens/s and the ratios, the
CPU's matmul rate at the model's shapes (one thread), poise's rate as a share of it, and a
short profile of the poise side (``--profile``).

    python benchmarks/decode_throughput.py [--prompts 256] [--new-tokens 64] [--batch-size 128 32] [--repeats 1] [--profile]

Goal (issue: one open core for steering): poise >= 1.3x the length-sorted chunked generate.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + ' <|end|> ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)
SPECIALS = ("<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>")


def build_model(path: Path, *, vocab: int = 32000, seed: int = 0) -> Path:
    """A random ~90M Llama and a word-level tokenizer of ``vocab`` entries, saved to ``path``.
    No EOS token anywhere, so greedy decoding always runs to ``max_new_tokens``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    words = {token: i for i, token in enumerate(SPECIALS)}
    for i in range(vocab - len(SPECIALS)):
        words[f"w{i}"] = len(words)
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.add_special_tokens(list(SPECIALS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=640,
        intermediate_size=1728,
        num_hidden_layers=10,
        num_attention_heads=10,
        num_key_value_heads=10,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(pad_token_id=0, eos_token_id=None)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_chats(count: int, vocab: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Chats whose prompts are 8 to 120 random words long."""
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        n = rng.randint(8, 120)
        words = " ".join(f"w{rng.randrange(vocab - len(SPECIALS))}" for _ in range(n))
        chats.append([{"role": "user", "content": words}])
    return chats


def matmul_rate(rows: int, repeats: int = 30) -> float:
    """GFLOP/s (per CPU second) of ``[rows, 640] x [640, 1728]`` (the MLP's up projection) on
    this thread."""
    a, b = torch.randn(rows, 640), torch.randn(640, 1728)
    out = torch.empty(rows, 1728)
    for _ in range(3):
        torch.mm(a, b, out=out)
    start = time.process_time()
    for _ in range(repeats):
        torch.mm(a, b, out=out)
    return 2 * rows * 640 * 1728 * repeats / (time.process_time() - start) / 1e9


def matmul_params(model: Any) -> int:
    """Parameters that take part in a matrix multiply (every linear layer, LM head included)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(CPU seconds of this process, wall seconds, result). On one thread the CPU time is the
    work done; on a shared machine the wall time also counts the time other jobs ran."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[128, 32],
        help="poise's rows per step (one poise side per value)",
    )
    parser.add_argument("--chunk", type=int, default=32, help="prompts per generate call")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="profile a short poise run")
    args = parser.parse_args()
    for name in ("prompts", "new_tokens", "chunk", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.batch_size) < 1:
        parser.error("--batch-size must be at least 1")
    torch.set_num_threads(args.threads)

    from poise.config import Sampling
    from poise.models.hf import HFModel

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(Path(tmp) / "llama-90m")
        model = HFModel(str(folder), device="cpu", dtype="float32")
    hf, tok = model.model, model.tokenizer
    assert not model.eos_token_ids, "the benchmark model must have no EOS"
    vocab = int(hf.config.vocab_size)
    params = sum(p.numel() for p in hf.parameters())
    linear = matmul_params(hf)
    chats = make_chats(args.prompts, vocab)
    prompts = [model.prompt_text(c) for c in chats]
    lengths = [len(ids) for ids in model._encode_prompts(chats)]
    sampling = Sampling(max_new_tokens=args.new_tokens)
    print(
        f"model: {params / 1e6:.1f}M parameters ({linear / 1e6:.1f}M in matrix multiplies), "
        f"vocab {vocab}; {len(chats)} prompts of {min(lengths)}-{max(lengths)} tokens "
        f"(mean {statistics.mean(lengths):.0f}), {args.new_tokens} new tokens, greedy, "
        f"threads={torch.get_num_threads()}"
    )

    tok.padding_side = "left"

    def hf_generate(order: list[int]) -> list[str]:
        texts: list[str] = [""] * len(prompts)
        with torch.inference_mode():
            for start in range(0, len(order), args.chunk):
                chunk = order[start : start + args.chunk]
                enc = tok(
                    [prompts[i] for i in chunk],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                )
                out = hf.generate(
                    **enc,
                    max_new_tokens=args.new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=None,
                )
                new = out[:, enc["input_ids"].size(1) :]
                for i, text in zip(
                    chunk, tok.batch_decode(new, skip_special_tokens=True), strict=True
                ):
                    texts[i] = text
        return texts

    def run_poise(batch_size: int) -> Callable[[], list[str]]:
        def run() -> list[str]:
            model.batch_size = batch_size
            return [row[0].text for row in model.generate(chats, sampling)]

        return run

    given = list(range(len(prompts)))
    by_length = sorted(given, key=lambda i: lengths[i])
    sides: dict[str, Callable[[], list[str]]] = {
        **{f"poise@{b}": run_poise(b) for b in args.batch_size},
        "chunked": lambda: hf_generate(given),
        "sorted": lambda: hf_generate(by_length),
    }
    # warm-up: the first forward passes of a process pay one-off set-up (both loops)
    model.generate(chats[:4], Sampling(max_new_tokens=2))
    with torch.inference_mode():
        enc = tok(prompts[:4], return_tensors="pt", padding=True, add_special_tokens=False)
        hf.generate(
            **enc,
            max_new_tokens=2,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=None,
        )
    times: dict[str, list[float]] = {name: [] for name in sides}
    outputs: dict[str, list[str]] = {}
    for _ in range(args.repeats):  # sides alternate, so load on a shared machine hits all
        for name, side in sides.items():
            seconds, wall, outputs[name] = timed(side)
            times[name].append(seconds)
            print(f"  {name:8s} {seconds:7.1f} CPU s ({wall:.1f} s wall)")
    tokens = len(chats) * args.new_tokens
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    print(f"medians of {args.repeats} run(s); {tokens} new tokens per side; tokens per CPU second")
    for b in args.batch_size:
        print(f"poise HFModel.generate, batch {b:3d}:           {rate[f'poise@{b}']:7.1f} tokens/s")
    print(f"transformers generate, chunks of {args.chunk}:        {rate['chunked']:7.1f} tokens/s")
    print(f"transformers generate, sorted chunks of {args.chunk}: {rate['sorted']:7.1f} tokens/s")
    for b in args.batch_size:
        name = f"poise@{b}"
        print(
            f"{name}: {rate[name] / rate['chunked']:5.2f}x chunked, "
            f"{rate[name] / rate['sorted']:5.2f}x sorted (goal >= 1.3x)"
        )
        for other in ("chunked", "sorted"):
            same = sum(a == b for a, b in zip(outputs[name], outputs[other], strict=True))
            print(f"  greedy outputs equal to {other}: {same}/{len(chats)}")

    # the matmul rate at these shapes (decode steps: rows = batch; prefill: rows = tokens), and
    # each side's share of the best of them
    print()
    rates = {rows: matmul_rate(rows) for rows in sorted({32, *args.batch_size, 2048})}
    for rows, value in rates.items():
        print(f"matmul [{rows},640]x[640,1728], one thread: {value:6.1f} GFLOP/s")
    peak = max(rates.values())
    layer_params = linear - hf.lm_head.weight.numel()
    # prefill runs every prompt token through the layers and the LM head only at the last one;
    # each new token runs through the layers and the LM head (attention scores not counted)
    flops = 2 * (sum(lengths) * layer_params + tokens * linear)
    print(
        f"work: {flops / 1e9:.0f} GFLOP of matrix multiplies ({sum(lengths)} prompt tokens, "
        f"{tokens} new tokens at 2 x {linear / 1e6:.0f}M = {2 * linear / 1e9:.2f} GFLOP each)"
    )
    for name, t in times.items():
        achieved = flops / statistics.median(t) / 1e9
        print(f"{name:10s} {achieved:5.1f} GFLOP/s = {achieved / peak:4.0%} of {peak:.1f} GFLOP/s")

    if args.profile:
        profile(model, chats[: max(args.batch_size)])


def profile(model: Any, chats: list[Any], steps: int = 12) -> None:
    """Where poise's decoding steps spend their CPU time, by operator: ``chats`` prefilled as
    one batch, then ``steps`` steps of ``DecodeState.step`` (greedy tokens) under the profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    state = model.prefill(chats, reserve=steps + 4)
    for _ in range(3):
        state.step(state.logits.argmax(dim=-1))
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            state.step(state.logits.argmax(dim=-1))
        wall = time.perf_counter() - start  # the profiler times operators by the wall clock
    events = prof.key_averages()
    total_ops = sum(e.self_cpu_time_total for e in events) / 1e6
    print()
    print(
        f"profile of {steps} decoding steps, {len(state)} rows, cache width "
        f"{state.mask.size(1)}: {wall / steps * 1e3:.0f} ms per step (wall)"
    )
    print(f"{'operator':52s} {'self s':>7s} {'share':>6s}")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        seconds = event.self_cpu_time_total / 1e6
        print(f"{event.key:52s} {seconds:7.3f} {seconds / wall:6.1%}")
    rest = wall - total_ops
    print(f"{'(outside operators: python, the profiler)':52s} {rest:7.3f} {rest / wall:6.1%}")


if __name__ == "__main__":
    main()
