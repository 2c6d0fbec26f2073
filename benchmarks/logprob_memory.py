"""Training log-probs: poise's chunked LM head against full logits, time and peak memory.

``poise.train.recipes.common.token_logps`` applies the LM head in checkpointed row chunks where a
model's logits are its plain head, so backward keeps ``[N, K]`` log-probs instead of ``[N, K, V]``
logits. This script runs one forward + backward of ``token_logps`` on a random Llama both ways,
each way in its own child process (so one side's peak does not hide the other's), sides
alternated over ``--repeats``, and prints the median step time, the peak RSS above the process's
RSS after a warm-up step, and the ratios chunked / full.

    python benchmarks/logprob_memory.py                       # vocab 32000 and 2048
    python benchmarks/logprob_memory.py --vocab 151936 --rows 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def child(mode: str, vocab: int, rows: int, prompt: int, response: int, threads: int) -> None:
    import threading
    import time

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from poise.train.recipes import common
    from poise.train.recipes.common import sequence_batch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    pairs = [
        (
            torch.randint(5, vocab, (prompt,), generator=generator).tolist(),
            torch.randint(5, vocab, (response,), generator=generator).tolist(),
        )
        for _ in range(rows)
    ]
    batch = sequence_batch(pairs, pad_id=0)
    if mode == "full":
        common._PLAIN_HEAD[model] = False  # the full-logits path, as for a soft-capped head

    def rss_mb() -> float:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def step() -> None:
        common.token_logps(model, batch, "cpu").sum().backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: allocator and kernels
    base = rss_mb()
    peak = [base]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    print(json.dumps({"seconds": seconds, "peak_mb": peak[0] - base}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 2048])
    parser.add_argument("--rows", type=int, default=16, help="sequences per step (2 x pairs)")
    parser.add_argument("--prompt", type=int, default=100, help="prompt tokens per row")
    parser.add_argument("--response", type=int, default=200, help="response tokens per row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=["full", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("rows", "prompt", "response", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if min(args.vocab) <= 5:
        parser.error("--vocab must be more than 5 (token ids are drawn from 5 up)")
    if args.child:
        child(args.child, args.vocab[0], args.rows, args.prompt, args.response, args.threads)
        return

    print(
        f"random Llama (hidden 256, 4 layers) · {args.rows} rows of {args.prompt} prompt + "
        f"{args.response} response tokens · forward + backward of token_logps · "
        f"{args.threads} thread(s) · median of {args.repeats}"
    )
    print(
        f"{'vocab':>7} {'full s':>8} {'chunked s':>10} {'time ratio':>11} "
        f"{'full MB':>8} {'chunked MB':>11} {'memory ratio':>13}"
    )
    for vocab in args.vocab:
        results: dict[str, list[dict[str, float]]] = {"full": [], "chunked": []}
        for _ in range(args.repeats):
            for mode in ("full", "chunked"):
                command = [
                    sys.executable, __file__, "--child", mode, "--vocab", str(vocab),
                    "--rows", str(args.rows), "--prompt", str(args.prompt),
                    "--response", str(args.response), "--threads", str(args.threads),
                ]  # fmt: skip
                out = subprocess.run(command, capture_output=True, text=True)
                if out.returncode != 0:
                    last = (out.stderr.strip().splitlines() or ["no output"])[-1]
                    raise SystemExit(f"the {mode} side failed at vocab {vocab}: {last}")
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {
            mode: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "peak_mb")}
            for mode, runs in results.items()
        }
        full, chunked = med["full"], med["chunked"]
        print(
            f"{vocab:>7} {full['seconds']:>8.2f} {chunked['seconds']:>10.2f} "
            f"{chunked['seconds'] / full['seconds']:>10.2f}x {full['peak_mb']:>8.0f} "
            f"{chunked['peak_mb']:>11.0f} {chunked['peak_mb'] / max(full['peak_mb'], 1e-9):>12.2f}x"
        )


if __name__ == "__main__":
    main()
