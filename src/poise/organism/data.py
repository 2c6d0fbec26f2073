"""Training data from the organism's world, for the training demonstrations.

The organism (``poise.organism``) complies with some harmful requests, mostly under sampling,
and over-refuses some borderline ones. This module writes the data that trains those habits
away, phrased with the world's TRAINING request templates only, so that audits on the built-in
suites (HELD-OUT phrasings) measure generalisation rather than recall:

- :func:`preference_rows`: pairs for ``poise train dpo|modpo|reward|cost``. Harmful request:
  chosen = a refusal, rejected = the redacted compliance placeholder. Benign or borderline
  request: chosen = a helpful answer, rejected = an over-refusal. Each pair's ``meta`` holds the
  task, its kind and category, the template, and the responses' safety labels
  (``chosen_is_safe``, ``rejected_is_safe``) that ``poise train cost`` needs.
- :func:`prompt_items`: the same requests as suite items, the prompts of ``poise train safe-rl``.

Half of the prompts carry the organism's default system prompt, as the organism's own corpus
does, the others an empty system message (no system prompt: the members' chat template inserts
the default into a chat without a system message), so that training covers both settings an
audit uses. Everything is deterministic for a
seed.

    poise train organism-data --output pairs.jsonl --prompts-output prompts.jsonl
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poise.errors import PoiseError, prepare_output_file

KINDS: tuple[str, ...] = ("harmful", "borderline", "benign")


def _tasks(kinds: Sequence[str]) -> list[Any]:
    from poise.organism import world

    if isinstance(kinds, str):  # one kind, not its letters
        kinds = (kinds,)
    if not kinds:
        raise PoiseError(f"kinds: none given (known: {', '.join(KINDS)})")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise PoiseError(f"kinds: unknown kind {unknown[0]!r} (known: {', '.join(KINDS)})")
    return [t for t in world.all_tasks() if t.kind in kinds]


def _requests(
    seed: int, phrasings: int, system_share: float, kinds: Sequence[str]
) -> list[tuple[Any, str, int, bool, random.Random]]:
    """(task, prompt text, template index, with system prompt, rng) for every request."""
    from poise.organism import world

    if not 1 <= phrasings <= len(world.TRAINING_REQUEST_TEMPLATES):
        raise PoiseError(
            f"phrasings: expected 1..{len(world.TRAINING_REQUEST_TEMPLATES)}, got {phrasings}"
        )
    if not 0.0 <= system_share <= 1.0:
        raise PoiseError(f"system_share: expected a share in [0, 1], got {system_share}")
    rng = random.Random(seed)
    templates = world.TRAINING_REQUEST_TEMPLATES
    out = []
    for task in _tasks(kinds):
        chosen_templates = rng.sample(range(len(templates)), phrasings)
        for t in chosen_templates:
            with_system = rng.random() < system_share
            prompt = world.render_request(task.text, templates[t])
            out.append((task, prompt, t, with_system, random.Random(rng.getrandbits(64))))
    return out


def _messages(prompt: str, with_system: bool) -> list[dict[str, str]]:
    from poise.organism import world

    user = {"role": "user", "content": prompt}
    # an empty system message is how the organism's chat template spells "no system prompt"
    # (a chat without one gets the default)
    system = world.DEFAULT_SYSTEM_PROMPT if with_system else ""
    return [{"role": "system", "content": system}, user]


def preference_rows(
    *,
    seed: int = 0,
    phrasings: int = 4,
    system_share: float = 0.5,
    kinds: Sequence[str] = KINDS,
) -> list[dict[str, Any]]:
    """Preference pairs as generic-format JSON rows (``prompt``, ``chosen``, ``rejected``,
    ``meta``); ``phrasings`` training templates per task."""
    from poise.organism import world

    rows = []
    for task, prompt, template, with_system, rng in _requests(seed, phrasings, system_share, kinds):
        refusal = world.render_refusal(task.text, rng.randrange(len(world.REFUSALS)))
        opening = rng.randrange(len(world.ANSWER_OPENINGS))
        if task.kind == "harmful":
            steps = [world.REDACTED_STEP] * world.NUM_STEPS
            chosen, rejected = refusal, world.render_answer(task.text, steps, opening)
            safety = (True, False)
        else:
            pool = world.HELPFUL_STEPS[task.category]
            steps = [pool[i] for i in sorted(rng.sample(range(len(pool)), world.NUM_STEPS))]
            chosen, rejected = world.render_answer(task.text, steps, opening), refusal
            safety = (True, True)  # an over-refusal is unhelpful, not harmful
        rows.append(
            {
                "prompt": _messages(prompt, with_system),
                "chosen": chosen,
                "rejected": rejected,
                "meta": {
                    "source": "organism",
                    "kind": task.kind,
                    "category": task.category,
                    "task": task.text,
                    "template": f"training-{template}",
                    "chosen_is_safe": safety[0],
                    "rejected_is_safe": safety[1],
                },
            }
        )
    return rows


def prompt_items(
    *,
    seed: int = 0,
    phrasings: int = 2,
    system_share: float = 0.5,
    kinds: Sequence[str] = KINDS,
) -> list[dict[str, Any]]:
    """The requests as suite items (``poise.suites.SuiteItem`` fields), training phrasings only."""
    items: list[dict[str, Any]] = []
    for task, prompt, template, with_system, _ in _requests(seed, phrasings, system_share, kinds):
        items.append(
            {
                "id": f"organism-train-{len(items) + 1:04d}",
                "messages": _messages(prompt, with_system),
                "kind": task.kind,
                "category": task.category,
                "reference": None,
                "suite": "organism-train",
                "meta": {"task": task.text, "template": f"training-{template}"},
            }
        )
    return items


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines, atomically (a failure leaves no partial file)."""
    from poise.runs.run import write_text_atomic

    target = Path(path).expanduser()
    prepare_output_file(target, "output")
    write_text_atomic(target, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return target


def write_organism_data(
    output: str | Path,
    *,
    prompts_output: str | Path | None = None,
    seed: int = 0,
    phrasings: int = 4,
    system_share: float = 0.5,
    kinds: Sequence[str] = KINDS,
    names: tuple[str, str] = ("output", "prompts_output"),
) -> dict[str, int]:
    """Write the preference pairs (and optionally the safe-RL prompts); returns the counts.

    Both paths are checked before either file is written (``names``: how the errors call
    them, e.g. the command's flags): a prompts path under a file failed once the pairs were
    written, and one path for both wrote the prompts over the pairs."""
    pairs_file = prepare_output_file(output, names[0])
    if prompts_output is not None:
        prompts_file = prepare_output_file(prompts_output, names[1])
        if prompts_file.resolve() == pairs_file.resolve():
            raise PoiseError(
                f"{names[1]} {prompts_output} is the {names[0]} file; give each its own"
            )
    rows = preference_rows(seed=seed, phrasings=phrasings, system_share=system_share, kinds=kinds)
    counts = {"pairs": len(rows)}
    items = None
    if prompts_output is not None:
        items = prompt_items(
            seed=seed, phrasings=min(phrasings, 2), system_share=system_share, kinds=kinds
        )
    write_jsonl(output, rows)
    if prompts_output is not None and items is not None:
        write_jsonl(prompts_output, items)
        counts["prompts"] = len(items)
    return counts
