"""What a probe adds to generation: organism-large, greedy, in one process.

Four sides over the same chats (the harmful and benign suites, with the default system prompt),
each timed as the median of ``--repeats`` runs on ``--threads`` torch threads:

1. ``generate``: ``HFModel.generate``, ``--new-tokens`` new tokens at most;
2. ``probe``: reading the last prompt token's hidden states (``hidden_states``) and scoring
   them with a linear probe: what a compliance probe adds to a request;
3. ``read during generate``: ``generate`` with a :class:`~poise.probes.reading.PromptReader` on
   the probe's layer (the states are read in generation's own prefill), then the probe's score
   of every chat: what a compliance probe costs when it rides along;
4. ``steer (strength 0)``: ``generate`` through ``steer(..., mode=ablate, strength=0)``: the
   cost of the forward hooks at every block.

Every side runs once untimed first (warm-up). Prints wall and process CPU times and the ratios
(generate + probe) / generate, read-during / generate and steer / generate. The ratios are taken
on CPU time (one torch thread, so the process's CPU time is its own work, little disturbed by
other jobs on a shared machine), as the median of the per-repeat ratios of sides timed back to
back.

    python benchmarks/probe_overhead.py [--new-tokens 64] [--repeats 9] [--threads 1]

Goal (issue: guards and probes): probes add under 5% to generation time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from poise.config import Sampling
from poise.models import load_model
from poise.models.base import default_system_prompt
from poise.probes.data import harmful_vs_benign
from poise.probes.linear import LinearProbe
from poise.probes.reading import PromptReader
from poise.probes.sweep import collect
from poise.suites.loaders import load_suite


def _medians(
    sides: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """Median wall time and median process CPU time of each side, and each side's CPU time
    per repeat. The sides alternate within each repeat, so load from other jobs on a shared
    machine falls on all of them; with one torch thread the process's CPU time counts only this
    process's work, so it is far less disturbed by other jobs than wall time."""
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return (
        {name: statistics.median(values) for name, values in wall.items()},
        {name: statistics.median(values) for name, values in cpu.items()},
        cpu,
    )


def _paired(cpu: dict[str, list[float]], side: str, added: bool = False) -> str:
    """The median over repeats of side / generate (with ``added``: (generate + side) /
    generate), each repeat's pair timed back to back, with the range of the per-repeat
    ratios."""
    ratios = sorted(
        (b + a if added else a) / b for a, b in zip(cpu[side], cpu["generate"], strict=True)
    )
    return (
        f"{statistics.median(ratios):.3f}x (per-repeat ratios {ratios[0]:.3f} to {ratios[-1]:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for name in ("new_tokens", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    torch.set_num_threads(args.threads)

    model = load_model("organism-large")
    items = [*load_suite("harmful").items, *load_suite("benign").items]
    examples = harmful_vs_benign(items, default_system_prompt(model))
    chats = [e.chat for e in examples]
    features = collect(model, examples)  # [rows, layers + 1, hidden]
    labels = torch.tensor([e.label for e in examples])
    probe = LinearProbe.fit(features[:, 2], labels, layer=2, model="organism-large")
    sampling = Sampling(max_new_tokens=args.new_tokens)

    with tempfile.TemporaryDirectory() as tmp:
        folder = probe.save(Path(tmp) / "probe")
        steered = load_model(f"steer(organism-large, direction={folder}, mode=ablate, strength=0)")

        def read_during(rows: list[Any]) -> None:
            reader = PromptReader(model, 2)
            with reader.reading():
                model.generate(rows, sampling)
            probe.score(reader.states_for(rows))

        # warm-up, untimed: every side once on a few chats
        model.generate(chats[:8], sampling)
        probe.score(collect(model, examples[:8], upto=2))
        read_during(chats[:8])
        steered.generate(chats[:8], sampling)

        times, cpu_times, cpu = _medians(
            {
                "generate": lambda: model.generate(chats, sampling),
                "probe": lambda: probe.score(collect(model, examples, upto=2)),
                "riding": lambda: read_during(chats),
                "steer": lambda: steered.generate(chats, sampling),
            },
            args.repeats,
        )
    tokens = sum(c.num_tokens for row in model.generate(chats, sampling) for c in row)
    print(
        f"{len(chats)} chats, {tokens} generated tokens, {args.threads} thread(s), "
        f"medians of {args.repeats}"
    )
    names = {
        "generate": "generate",
        "probe": "probe (read + score)",
        "riding": "read during generate",
        "steer": "steer (hooks, strength 0)",
    }
    print(f"{'side':28s} {'wall':>9s} {'CPU':>9s}")
    for key, label in names.items():
        print(f"{label:28s} {times[key]:8.3f}s {cpu_times[key]:8.3f}s")
    print(f"CPU time, (generate + probe) / generate: {_paired(cpu, 'probe', added=True)}")
    print(f"CPU time, read during / generate:        {_paired(cpu, 'riding')}")
    print(f"CPU time, steer / generate:              {_paired(cpu, 'steer')}")
    print(
        f"wall time, read during / generate: {times['riding'] / times['generate']:.3f}x, "
        f"steer / generate: {times['steer'] / times['generate']:.3f}x"
    )


if __name__ == "__main__":
    main()
