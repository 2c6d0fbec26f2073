"""Audit throughput: poise's batched backend against a per-prompt loop and one raw batched call.

Runs the same greedy generation over the built-in suites on an organism member three ways, in
one process, and prints the wall time of each and the ratios:

1. ``poise``: the whole ``poise.audit`` (batched HF backend with its own KV-cache decoding loop,
   response cache, oracle judge, run folder; no HTML) in a fresh output folder, so nothing is
   cached;
2. ``per-prompt loop``: ``model.generate`` called once per prompt, as many research scripts do;
3. ``raw batched``: one ``model.generate`` call over all prompts with left padding, the limit for
   this backend (no judging, no records).

    python benchmarks/audit_throughput.py [--model organism] [--limit 0] [--batch-size N] [--repeats 3] [--threads 1]

Goals (issue: foundation): poise >= 5x the per-prompt loop and within 15% of raw batched.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch

from poise.errors import PoiseError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--limit", type=int, default=0, help="items per suite (0 = all)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the audit's chats per generate call (default: poise's own default)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (median)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for all three sides (1 keeps a shared machine from distorting the figures)",
    )
    parser.add_argument(
        "--loop-sample",
        type=int,
        default=120,
        help="prompts timed in the per-prompt loop (extrapolated)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import poise
    from poise.attacks import SystemPrompt, attacks
    from poise.auditing import spread_subset
    from poise.config import DEFAULT_SUITES, Sampling
    from poise.models import default_system_prompt, load_model
    from poise.suites import load_suite

    limit = args.limit or None
    items = [it for name in DEFAULT_SUITES for it in load_suite(name, limit=limit).items]
    model = load_model(args.model)
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    requests = attacks.get("greedy")(
        items, sampling, SystemPrompt("default", default_system_prompt(model))
    )
    chats = [r.chat for r in requests]
    hf, tok = model.model, model.tokenizer  # type: ignore[attr-defined]
    prompts = [
        tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats
    ]
    eos = hf.generation_config.eos_token_id
    pad = (
        tok.pad_token_id
        if tok.pad_token_id is not None
        else (eos if isinstance(eos, int) else eos[0])
    )
    print(
        f"{len(prompts)} prompts, max_new_tokens={args.max_new_tokens}, threads={torch.get_num_threads()}"
    )

    audit_options: dict[str, Any] = {"sampling": {"max_new_tokens": args.max_new_tokens}}
    if args.batch_size is not None:
        audit_options["batch_size"] = args.batch_size

    def run_poise() -> float:
        """The whole audit, uncached (a fresh output folder each time)."""
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            poise.audit(model=args.model, limit=limit, out=out, html=False, **audit_options)
            return time.perf_counter() - start

    # prompts spread evenly over the suites: the suites are ordered (harmful first, whose
    # refusals are short), so the first N prompts would under-sample long answers
    sample = spread_subset(prompts, args.loop_sample)

    def run_loop() -> float:
        """``model.generate`` once per prompt over the sample, extrapolated to all prompts."""
        start = time.perf_counter()
        with torch.inference_mode():
            for text in sample:
                enc = tok(text, return_tensors="pt", add_special_tokens=False)
                hf.generate(
                    **enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad
                )
        return (time.perf_counter() - start) * len(prompts) / len(sample)

    def run_raw() -> float:
        """One raw batched ``model.generate`` call over every prompt."""
        tok.padding_side = "left"
        start = time.perf_counter()
        with torch.inference_mode():
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            hf.generate(
                **enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad
            )
        return time.perf_counter() - start

    # warm-up: the first forward passes of a process pay one-off kernel set-up
    with torch.inference_mode():
        enc = tok(prompts[:4], return_tensors="pt", padding=True, add_special_tokens=False)
        hf.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=pad)
    times: dict[str, list[float]] = {"poise": [], "loop": [], "raw": []}
    for _ in range(args.repeats):  # sides alternate, so load on a shared machine hits all
        times["poise"].append(run_poise())
        times["loop"].append(run_loop())
        times["raw"].append(run_raw())
    t_poise, t_loop, t_raw = (statistics.median(times[k]) for k in ("poise", "loop", "raw"))
    print(f"medians of {args.repeats} repeats")
    print(f"poise audit (batched backend, judged, recorded): {t_poise:8.2f} s")
    print(f"per-prompt model.generate loop (extrapolated from {len(sample)}): {t_loop:8.2f} s")
    print(f"raw batched model.generate (one call):           {t_raw:8.2f} s")

    print()
    print(f"poise vs per-prompt loop: {t_loop / t_poise:6.2f}x faster   (goal >= 5x)")
    print(f"poise vs raw batched:     {t_poise / t_raw:6.2f}x the time  (goal <= 1.15x)")


if __name__ == "__main__":
    try:
        main()
    except PoiseError as exc:  # bad input (a file, a model, a monitor): one line, no traceback
        raise SystemExit(f"error: {exc}") from None
