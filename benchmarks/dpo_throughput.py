"""DPO training throughput and peak memory: ``poise train dpo`` against TRL's ``DPOTrainer``.

Both sides train the same model on the same preference pairs with the same batch size, sequence
budget, learning rate, beta, loss (sigmoid DPO), reference model (a frozen copy), precision,
activation checkpointing (off unless asked; TRL's own default is on) and number of optimizer
steps, each in its own child process of this one invocation (so the peak
memory of one side does not hide the other's). Printed: pairs per second over the steps after
warm-up, peak memory, and the ratios poise / TRL.

Memory: on CUDA, ``torch.cuda.max_memory_allocated``; on CPU, the resident set size (RSS) of the
child process sampled every 5 ms until the last step ends, reported as the whole-process peak and
as ``train_mem_mb``, the peak minus the RSS after the side's libraries are imported and before its
training call starts (model, reference, data, optimizer state and activations; the libraries each
side imports differ and would otherwise blur the comparison).

    python benchmarks/dpo_throughput.py                       # organism-small if built
    python benchmarks/dpo_throughput.py --model random --hidden 256 --layers 4 --steps 30
    python benchmarks/dpo_throughput.py --model path/to/hf-folder --batch-size 4

Data: the organism's preference pairs (``poise.organism.data``), which need no weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MARKER = "DPO-BENCH-RESULT "


# ----------------------------------------------------------------------------- inputs


def write_data(folder: Path, pairs: int, seed: int) -> Path:
    from poise.organism.data import preference_rows, write_jsonl

    rows = preference_rows(seed=seed, phrasings=4)
    if pairs > len(rows):
        raise SystemExit(f"--pairs {pairs}: the organism data has {len(rows)} pairs")
    return write_jsonl(folder / "pairs.jsonl", rows[:pairs])


def random_model(folder: Path, hidden: int, layers: int, seed: int) -> Path:
    """A randomly initialised Llama with the organism's tokenizer if built, else a byte-level
    tokenizer over printable ASCII made here."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _tokenizer() -> Any:
    try:
        from transformers import AutoTokenizer

        from poise.organism import member_path

        return AutoTokenizer.from_pretrained(str(member_path("organism-small")))
    except Exception:  # the organism is not built: make a small byte-level tokenizer
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        specials = ["<pad>", "<s>", "</s>", "<unk>"]
        chars = [chr(b) for b in range(33, 127)] + ["Ġ", "Ċ"]
        vocab = {t: i for i, t in enumerate(specials + chars)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(specials)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
        )
        fast.chat_template = (
            "{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}"
            "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
        )
        return fast


# ----------------------------------------------------------------------------- measuring


class PeakRSS:
    """Samples this process's RSS every 5 ms (CPU peak memory, including what torch allocates)."""

    def __init__(self) -> None:
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def begin(self) -> None:
        self.start = self.rss()
        self.peak = self.start
        self._thread.start()

    def end(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


class StepClock:
    """Times of optimizer-step ends (the first ``warmup`` steps are not counted) and memory from
    :meth:`start` to the end of the last step (saving and teardown do not count)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.times: list[float] = []
        self.warmup = warmup
        self.steps = steps
        self.memory = PeakRSS()

    def start(self) -> None:
        self.memory.begin()

    def tick(self) -> None:
        self.times.append(time.perf_counter())
        if len(self.times) == self.steps:
            self.memory.end()

    def result(self, batch_size: int, side: str, wall: float) -> dict[str, Any]:
        import torch

        steps = len(self.times)
        # from the end of the last warm-up step (main() asks for 1 <= warmup < steps)
        counted = self.times[self.warmup - 1 :]
        span = counted[-1] - counted[0] if len(counted) > 1 else float("nan")
        out: dict[str, Any] = {
            "side": side,
            "steps": steps,
            "pairs_per_s": batch_size * (len(counted) - 1) / span,
            "wall_s": wall,
            "rss_peak_mb": self.memory.peak / 2**20,
            "train_mem_mb": (self.memory.peak - self.memory.start) / 2**20,
        }
        if torch.cuda.is_available():
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out


# ----------------------------------------------------------------------------- the two sides


def preload_libraries() -> None:
    """Import what both sides use (transformers imports lazily), so that the memory baseline
    taken next holds the libraries and ``train_mem_mb`` counts training alone."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.llama import modeling_llama

    del torch, Accelerator, AutoModelForCausalLM, AutoTokenizer, modeling_llama


def run_poise(args: argparse.Namespace, clock: StepClock) -> None:
    import poise.train.data
    import poise.train.losses
    from poise.train.recipes.dpo import train_dpo

    del poise
    preload_libraries()
    clock.start()
    train_dpo(
        model=args.model,
        data=args.data,
        output=tempfile.mkdtemp(prefix="poise-dpo-bench-"),
        lr=args.lr,
        beta=0.1,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_steps=args.steps,
        save_steps=0,
        lr_scheduler="constant",
        mixed_precision="bf16" if args.bf16 else "no",
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        progress=lambda event: clock.tick(),
    )


def run_trl(args: argparse.Namespace, clock: StepClock) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from poise.train.data import load_preferences
    from poise.train.recipes.common import resolve_model_folder

    folder = str(resolve_model_folder(args.model))
    # the data as TRL's conversational format: prompt messages, one assistant message per side
    rows = [
        {
            "prompt": p.messages,
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in load_preferences(args.data)
    ]

    class Tick(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            clock.tick()

    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-dpo-bench-"),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        beta=0.1,
        loss_type=["sigmoid"],
        max_length=args.max_length,
        max_steps=args.steps,
        save_strategy="no",
        report_to="none",
        logging_steps=10**6,
        use_cpu=not torch.cuda.is_available(),
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,  # TRL's default is True
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    preload_libraries()
    clock.start()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(folder),
        callbacks=[Tick()],
    )
    trainer.train()


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    clock = StepClock(warmup=args.warmup, steps=args.steps)
    started = time.perf_counter()
    (run_poise if args.child == "poise" else run_trl)(args, clock)
    result = clock.result(args.batch_size, args.child, time.perf_counter() - started)
    print(MARKER + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- the parent


def run_child(side: str, passthrough: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", side, *passthrough],
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"the {side} side failed (exit {done.returncode})")
    return dict(json.loads(lines[-1][len(MARKER) :]))


def median_result(values: list[dict[str, Any]]) -> dict[str, Any]:
    import statistics

    numeric = [k for k, v in values[0].items() if isinstance(v, (int, float))]
    return {k: statistics.median(v[k] for v in values) for k in numeric}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="organism-small", help="organism member, HF folder, or 'random'"
    )
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of --model random")
    parser.add_argument("--layers", type=int, default=4, help="layers of --model random")
    parser.add_argument("--pairs", type=int, default=512, help="preference pairs in the data")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="pairs per optimizer step (both sides)"
    )
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sequence at most")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=3, help="first steps not timed")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per side")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side (median reported)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="activation checkpointing on both sides",
    )
    parser.add_argument("--child", choices=["poise", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("pairs", "batch_size", "max_length", "steps", "warmup", "threads", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.steps <= args.warmup:
        # throughput is timed from the end of the last warm-up step to the end of the last step
        parser.error(f"--steps {args.steps} must be more than --warmup {args.warmup}")
    if args.child:
        child(args)
        return

    work = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    data = write_data(work, args.pairs, args.seed)
    model = args.model
    if model == "random":
        model = str(random_model(work / "model", args.hidden, args.layers, args.seed))
    passthrough = [
        "--model", model, "--data", str(data), "--batch-size", str(args.batch_size),
        "--max-length", str(args.max_length), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--lr", str(args.lr), "--seed", str(args.seed), "--threads", str(args.threads),
    ]  # fmt: skip
    if args.bf16:
        passthrough.append("--bf16")
    if args.gradient_checkpointing:
        passthrough.append("--gradient-checkpointing")
    # sides alternate (poise, trl, trl, poise, ...) so that a change in the machine's load
    # falls on both; each figure is the median over the repeats
    runs: dict[str, list[dict[str, Any]]] = {"poise": [], "trl": []}
    for repeat in range(args.repeats):
        for side in ("poise", "trl") if repeat % 2 == 0 else ("trl", "poise"):
            runs[side].append(run_child(side, passthrough))
    results = {side: median_result(values) for side, values in runs.items()}
    poise, trl = results["poise"], results["trl"]
    memory_keys = ["cuda_peak_mb"] if "cuda_peak_mb" in poise else ["rss_peak_mb", "train_mem_mb"]
    print(
        f"model {model} · {args.pairs} pairs · batch {args.batch_size} · max_length {args.max_length} · "
        f"{args.steps} steps ({args.warmup} warm-up) · {'bf16' if args.bf16 else 'fp32'} · "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'} · "
        f"{args.threads} threads · median of {args.repeats}"
    )
    print(f"{'':16}{'poise':>12}{'trl':>12}{'poise/trl':>12}")
    for key in ["pairs_per_s", *memory_keys, "wall_s"]:
        ratio = poise[key] / trl[key] if trl[key] else float("nan")
        print(f"{key:16}{poise[key]:12.2f}{trl[key]:12.2f}{ratio:12.2f}")


if __name__ == "__main__":
    main()
