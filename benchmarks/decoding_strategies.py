"""Decoding strategies: what the mixing, the batching and the search cost, side by side.

Comparisons on the organism, in one process, each printed with its ratio:

1. ``eft``: emulated fine-tuning (organism-large + organism-small-safe - organism-small) against
   its three models' forwards alone. Both sides step the same rows for the same number of
   steps from the same prompts: the forwards side feeds fixed tokens to three decode states and
   does nothing else; the EFT side is the lockstep state (three forwards, the per-token mixing
   of arXiv 2310.12962) plus sampling each row's token. Also: ``EmulatedFineTuning.generate``
   end to end (tokens per second, stop on EOS, continuous batching) for reference.
2. ``best_of_n``: N samples of every prompt and the cost model's scores in one batched call,
   against a per-prompt loop (``best_of_n.generate([chat])`` per prompt: its N samples still
   batched together, the prompts one at a time), and against a loop that draws the N samples of
   each prompt one at a time (other seeds, so other samples: a timing, not an equality check).
3. ``deal``: the batched search over all prompts against the same search per prompt (how the
   research code runs), and both against plain sampling of the base model (cost per token).
4. ``rain``: RAIN's search, every prompt's search batched in lockstep, against the same search
   one prompt at a time (as the reference runs) and against plain greedy decoding of the base
   model: the cost per generated token.
5. ``eft_speculative``: EFT up-scaling's ``generate`` with speculative decoding (arXiv
   2310.12962, Section 3.4: organism-small-safe drafts K tokens, the EFT distribution verifies)
   against plain EFT ``generate``, greedy and at T = 1, tokens/s and the share of drafted
   tokens accepted; the sides alternate, medians of ``--repeats``. Greedy: also whether the
   tokens are plain EFT's.

    python benchmarks/decoding_strategies.py [--prompts 32] [--threads 1] [--max-new-tokens 48]
    python benchmarks/decoding_strategies.py --only eft_speculative [--speculative 2,4]

Goals (decoding-strategies issue): EFT >= 0.8x the three forwards' tokens/s; best-of-N batched
>= 3x the per-prompt loop; DeAL and RAIN batched >= 3x per-prompt.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch


def _chats(count: int) -> list[Any]:
    from poise.suites import load_suite

    harmful = [list(i.messages) for i in load_suite("harmful") if i.kind == "harmful"]
    benign = [list(i.messages) for i in load_suite("benign")]
    half = count // 2
    if half > len(harmful) or count - half > len(benign):
        raise SystemExit(
            f"--prompts {count}: the suites hold {len(harmful)} harmful and {len(benign)} benign "
            "prompts (half of each)"
        )
    return harmful[:half] + benign[: count - half]


def _tokens(rows: list[list[Any]]) -> int:
    return sum(c.num_tokens for row in rows for c in row)


def bench_eft(chats: list[Any], steps: int) -> None:
    from poise.config import Sampling
    from poise.decoding.eft import EmulatedFineTuning
    from poise.models import load_model
    from poise.models.hf import sample_tokens

    large, safe, small = (
        load_model("organism-large"),
        load_model("organism-small-safe"),
        load_model("organism-small"),
    )
    eft = EmulatedFineTuning(large, tuned=safe, reference=small, beta=1.0)
    sampling = Sampling(temperature=1.0, seed=0, max_new_tokens=steps)
    models: list[Any] = [large, safe, small]
    prompts = large._encode_prompts(chats)  # type: ignore[attr-defined]
    rows = len(chats)
    fixed = torch.full((rows,), 42, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)

    # warm-up of both sides (first calls allocate and set kernels up), not timed; at most 4
    # rows, fewer when --prompts asks for fewer
    warm = min(4, rows)
    states = [m.prefill(prompts[:warm], reserve=2) for m in models]
    for state in states:
        state.step(fixed[:warm])
    state = eft.prefill(prompts[:warm], reserve=2)
    state.step(sample_tokens(state.logits, torch.rand(warm, generator=generator), sampling))

    # side 1: the three models' forwards alone
    start = time.perf_counter()
    states = [m.prefill(prompts, reserve=steps) for m in models]
    for _ in range(steps):
        for state in states:
            state.step(fixed)
    forwards = time.perf_counter() - start

    # side 2: the same rows and steps through EFT's lockstep state, mixing and sampling
    generator.manual_seed(0)
    start = time.perf_counter()
    state = eft.prefill(prompts, reserve=steps)
    for _ in range(steps):
        uniforms = torch.rand(rows, generator=generator)
        tokens = sample_tokens(state.logits, uniforms, sampling)
        state.step(tokens)
    mixed = time.perf_counter() - start
    produced = rows * steps
    print(
        f"eft      three forwards alone: {produced / forwards:8.1f} tokens/s ({forwards:.2f} s); "
        f"EFT mixing + sampling: {produced / mixed:8.1f} tokens/s ({mixed:.2f} s); "
        f"ratio {forwards / mixed:.2f}x"
    )
    start = time.perf_counter()
    rows_out = eft.generate(chats, sampling)
    seconds = time.perf_counter() - start
    print(
        f"eft      generate end to end: {_tokens(rows_out) / seconds:8.1f} tokens/s "
        f"({_tokens(rows_out)} tokens, {seconds:.2f} s, stops at EOS)"
    )


def bench_eft_speculative(chats: list[Any], steps: int, ks: list[int], repeats: int) -> None:

    from poise.config import Sampling
    from poise.decoding.eft import EmulatedFineTuning
    from poise.models import load_model

    large, safe, small = (
        load_model("organism-large"),
        load_model("organism-small-safe"),
        load_model("organism-small"),
    )
    plain = EmulatedFineTuning(large, tuned=safe, reference=small, beta=1.0)
    fast = {
        k: EmulatedFineTuning(large, tuned=safe, reference=small, beta=1.0, speculative=k)
        for k in ks
    }
    for name, sampling in (
        ("greedy", Sampling(max_new_tokens=steps)),
        ("T=1", Sampling(temperature=1.0, seed=0, max_new_tokens=steps)),
    ):
        for model in (plain, *fast.values()):  # warm up (first calls allocate)
            model.generate(chats[:4], sampling)
        times: dict[Any, list[float]] = {"plain": [], **{k: [] for k in ks}}
        tokens: dict[Any, int] = {}
        outputs: dict[Any, list[list[Any]]] = {}
        accepted: dict[Any, float] = {}
        for _ in range(repeats):
            for key, model in (("plain", plain), *fast.items()):
                start = time.perf_counter()
                outputs[key] = model.generate(chats, sampling)
                times[key].append(time.perf_counter() - start)
                tokens[key] = _tokens(outputs[key])
                if key != "plain":
                    batch: Any = model.speculative.last  # type: ignore[union-attr]
                    accepted[key] = batch.accepted / max(1, batch.proposed)
        plain_rate = tokens["plain"] / statistics.median(times["plain"])
        print(
            f"eft_speculative {name}: plain EFT generate {plain_rate:8.1f} tokens/s "
            f"({tokens['plain']} tokens, median of {repeats}: "
            f"{statistics.median(times['plain']):.2f} s)"
        )
        for k in ks:
            rate = tokens[k] / statistics.median(times[k])
            same = ""
            if name == "greedy":
                ids = [c.token_ids for r in outputs[k] for c in r]
                same = f", same tokens as plain: {ids == [c.token_ids for r in outputs['plain'] for c in r]}"
            print(
                f"eft_speculative {name}: speculative K={k}: {rate:8.1f} tokens/s "
                f"({tokens[k]} tokens, {statistics.median(times[k]):.2f} s), "
                f"{rate / plain_rate:.2f}x plain, {accepted[k]:.1%} of drafts accepted{same}"
            )


@dataclass
class Sides:
    """A strategy batched over every prompt against the same strategy one prompt at a time:
    medians of alternating runs (so a load change hits both sides), each run's ratio, and
    whether the two sides gave the same answers."""

    together: float
    alone: float
    ratios: list[float]
    batched: list[list[Any]]
    same: bool

    def runs(self) -> str:
        return ", ".join(f"{r:.2f}" for r in self.ratios)


def batched_vs_per_prompt(model: Any, chats: list[Any], sampling: Any, repeats: int) -> Sides:
    model.generate(chats[:2], sampling)  # warm up (first-call costs) before either side
    together_times, alone_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        batched = model.generate(chats, sampling)
        together_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        looped = [model.generate([chat], sampling)[0] for chat in chats]
        alone_times.append(time.perf_counter() - start)
    same = [c.text for r in batched for c in r] == [c.text for r in looped for c in r]
    ratios = sorted(a / t for a, t in zip(alone_times, together_times, strict=True))
    return Sides(
        statistics.median(together_times), statistics.median(alone_times), ratios, batched, same
    )


def bench_best_of_n(
    chats: list[Any], n: int, max_new_tokens: int, batch_size: int, repeats: int
) -> None:
    from poise.config import Sampling
    from poise.decoding.best_of_n import BestOfN
    from poise.models import load_model

    # batch_size: rows per forward pass of the base model, the same on both sides (a prompt's
    # N samples fill at most N rows of it, however large it is)
    bon = BestOfN(load_model("organism-large", batch_size=batch_size), n=n, cost="organism-cost")
    bon.scorer("organism-cost")  # load before timing
    sampling = Sampling(temperature=1.0, seed=0, max_new_tokens=max_new_tokens)
    sides = batched_vs_per_prompt(bon, chats, sampling, repeats)
    together = sides.together
    print(
        f"best_of_n N={n}, {len(chats)} prompts, batch size {batch_size}, median of {repeats}: "
        f"batched {together:.2f} s, per-prompt loop {sides.alone:.2f} s, ratio "
        f"{sides.alone / together:.2f}x (runs {sides.runs()}; same answers: {sides.same})"
    )
    # one sample at a time, scored per prompt: how research scripts often draw N samples
    base, cost = bon.inner, bon.scorer("organism-cost")
    start = time.perf_counter()
    for chat in chats:
        texts = [
            base.generate([chat], sampling.model_copy(update={"seed": seed}))[0][0].text
            for seed in range(n)
        ]
        scores = cost([chat] * n, texts)
        _ = texts[min(range(n), key=scores.__getitem__)]
    one_by_one = time.perf_counter() - start
    print(
        f"best_of_n one sample at a time per prompt: {one_by_one:.2f} s, batched vs it "
        f"{one_by_one / together:.2f}x"
    )


def bench_deal(chats: list[Any], max_new_tokens: int, batch_size: int, repeats: int) -> None:
    from poise.config import Sampling
    from poise.decoding.deal import DeAL
    from poise.models import load_model

    base = load_model("organism-large", batch_size=batch_size)
    deal = DeAL(base, k=2, lookahead=8, beam=2, lam=1.0, cost="organism-cost")
    deal._scorer("organism-cost")  # load before timing
    greedy = Sampling(max_new_tokens=max_new_tokens)
    base.generate(chats[:2], greedy)  # warm up before timing plain decoding
    start = time.perf_counter()
    plain = base.generate(chats, greedy)
    plain_s = time.perf_counter() - start
    sides = batched_vs_per_prompt(deal, chats, greedy, repeats)
    per_token = sides.together / max(1, _tokens(sides.batched))
    print(
        f"deal     k=2 lookahead=8 beam=2, {len(chats)} prompts, batch size {batch_size}, median "
        f"of {repeats}: plain greedy {plain_s / max(1, _tokens(plain)) * 1e3:.1f} ms/token, DeAL "
        f"batched {per_token * 1e3:.1f} ms/token ({sides.together:.2f} s), per-prompt "
        f"{sides.alone:.2f} s, batched vs per-prompt {sides.alone / sides.together:.2f}x (runs "
        f"{sides.runs()}; same answers: {sides.same})"
    )


def bench_rain(
    chats: list[Any], max_new_tokens: int, searches: int, repeats: int, batch_size: int | None
) -> None:
    from poise.config import Sampling
    from poise.decoding.rain import Rain
    from poise.models import load_model

    base = load_model("organism-large")
    # the prompts' searches in lockstep batches (default: all in one), against the same search
    # one prompt at a time
    lockstep = batch_size or max(1, len(chats))
    rain = Rain(
        base, max_searches=searches, extra_searches=max(1, searches // 2), batch_size=lockstep
    )
    greedy = Sampling(max_new_tokens=max_new_tokens)
    base.generate(chats[:2], greedy)  # warm up before timing plain decoding
    start = time.perf_counter()
    plain = base.generate(chats, greedy)
    plain_ms = (time.perf_counter() - start) / max(1, _tokens(plain)) * 1e3
    sides = batched_vs_per_prompt(rain, chats, greedy, repeats)
    rain_ms = sides.together / max(1, _tokens(sides.batched)) * 1e3
    runs = sum(c.metadata["rain_searches"] for r in sides.batched for c in r if c.metadata)
    print(
        f"rain     max_searches={searches}, {len(chats)} prompts, {lockstep} searches in "
        f"lockstep, median of {repeats}: plain "
        f"greedy {plain_ms:.1f} ms/token, RAIN batched {rain_ms:.1f} ms/token "
        f"({sides.together:.2f} s, {runs} searches), {rain_ms / plain_ms:.0f}x the cost per "
        f"token; per prompt {sides.alone:.2f} s, batched vs per-prompt "
        f"{sides.alone / sides.together:.2f}x (runs {sides.runs()}; same answers: {sides.same})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--n", type=int, default=8, help="best-of-N's N")
    parser.add_argument(
        "--only", choices=["eft", "eft_speculative", "best_of_n", "deal", "rain"], default=None
    )
    parser.add_argument("--rain-searches", type=int, default=8, help="RAIN's max_searches")
    parser.add_argument(
        "--rain-batch-size",
        type=int,
        default=None,
        help="RAIN's searches in lockstep (default: every prompt's; fewer: a queue refills it)",
    )
    parser.add_argument(
        "--speculative", default="2,4", help="draft tokens per round to compare (comma list)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="eft_speculative / best_of_n / deal / rain: runs per side",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="best_of_n / deal: the base model's rows per forward pass (both sides)",
    )
    args = parser.parse_args()
    for name in ("prompts", "threads", "max_new_tokens", "n", "rain_searches", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_size < 1 or (args.rain_batch_size is not None and args.rain_batch_size < 1):
        parser.error("--batch-size and --rain-batch-size must be at least 1")
    try:
        ks = [int(k) for k in args.speculative.split(",")]
    except ValueError:
        parser.error(f"--speculative {args.speculative!r}: a comma list of integers, e.g. 2,4")
    if min(ks) < 1:
        parser.error("--speculative: every K must be at least 1")
    torch.set_num_threads(args.threads)
    chats = _chats(args.prompts)
    if args.only in (None, "eft"):
        bench_eft(chats, args.max_new_tokens)
    if args.only in (None, "eft_speculative"):
        bench_eft_speculative(chats, args.max_new_tokens, ks, args.repeats)
    if args.only in (None, "best_of_n"):
        bench_best_of_n(chats, args.n, args.max_new_tokens, args.batch_size, args.repeats)
    if args.only in (None, "deal"):
        bench_deal(chats, args.max_new_tokens, args.batch_size, args.repeats)
    if args.only in (None, "rain"):
        bench_rain(
            chats, args.max_new_tokens, args.rain_searches, args.repeats, args.rain_batch_size
        )


if __name__ == "__main__":
    main()
