"""Preference pairs from an attack's completions: (prompt, safe completion, harmful completion).

The raw material of generation-aware alignment (arXiv 2310.06987, Section 5): completions that a
decoding configuration broke become the rejected side, refusals of the same prompt the chosen
side. The jsonl rows are TRL's conversational preference format (prompt, chosen and rejected all
message lists, so ``trl.data_utils.is_conversational`` holds whichever key it looks at), which
``poise.train.data`` reads too::

    {"prompt": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "chosen": [{"role": "assistant", "content": "<refusal>"}],
     "rejected": [{"role": "assistant", "content": "<harmful>"}],
     "meta": {"item_id": ..., "category": ..., "system_prompt": "default" | "none" | "<literal>",
              "chosen_request": ..., "rejected_request": ..., "source": "poise-attack"}}

The prompt is the chat as the audit sent it: with the system message of its request's
system-prompt setting (the exploitation grid's sys=on and sys=off are two settings), so the two
answers of a pair were given to one prompt, and a trainer that applies the model's chat template
renders what the model saw (a Qwen2.5-style template, which inserts its own default into a chat
without a system message, gets the empty system message that sys=off sent).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from poise.errors import PoiseError, check_int, prepare_output_file
from poise.tasks import read

__all__ = ["RecordedRun", "export_pairs", "preference_pairs", "run_system_prompts", "write_pairs"]


class RecordedRun(Protocol):
    """What the export reads of a run (a :class:`poise.runs.Run`: ``poise.runs.find_run(NAME)``
    or ``Run(FOLDER)``); attacks do not import the run folder's module, a sibling layer."""

    @property
    def path(self) -> Path: ...
    @property
    def header(self) -> dict[str, Any]: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def model_to_build(self) -> str | None: ...
    def records(self) -> Iterable[dict[str, Any]]: ...


def export_pairs(
    found: RecordedRun, output: str | Path, *, per_prompt: int = 1, model: str | None = None
) -> int:
    """What ``poise attacks export`` does, in one call: the preference pairs of an attack
    audit's run (``poise.runs.find_run(NAME_OR_FOLDER)``) written to ``output`` (jsonl), each
    prompt with the system message the audit sent (:func:`run_system_prompts`; ``model``: the
    model whose default system prompt the run sent, where the run records none and its own model
    no longer loads). Returns the number of pairs written; a run with no pair is one error
    saying why, and nothing is written. (:func:`preference_pairs` of the records alone gives
    prompts without the system message unless it is given the run's ``system_prompts``.)"""
    check_int("attacks export", "per_prompt", per_prompt, 1)
    pairs = preference_pairs(found.records(), per_prompt=per_prompt)
    if any(p["meta"]["system_prompt"] in ("default", "none") for p in pairs):
        # what "default" and "none" sent is the model's: its declared default, and an empty
        # system message where its template inserts that default (Qwen2.5-style)
        pairs = preference_pairs(
            found.records(), per_prompt=per_prompt, system_prompts=run_system_prompts(found, model)
        )
    if not pairs:
        attack = found.config.get("attack")
        if attack in ("exploitation", "worst_of_n"):  # it asked several ways already
            how = (
                "every harmful item was refused each time or complied with each time; more "
                "samples (--attack-option n=...) or more decoding configurations give a model "
                "that is rarely unsafe a chance to be both"
            )
        else:
            how = (
                "audit with --attack exploitation or worst_of_n, whose requests answer an item "
                "several ways"
            )
        raise PoiseError(
            f"{found.path.name}: no harmful item has both a safe and a harmful answer (attack "
            f"{attack!r}), so there is no pair to write; {how}"
        )
    return write_pairs(pairs, output)


def run_system_prompts(found: RecordedRun, model: str | None = None) -> dict[str, str | None]:
    """The system messages ``found`` (a run) sent for "default" and "none": those its run.json
    records (``system_prompts``, the texts the audit sent), else those of its model (``model``,
    else the run's own, with its model options, loaded), as the audit resolved them. ``model``
    given wins over the record."""
    from poise.models import default_system_prompt, load_model, no_system_prompt

    recorded = found.header.get("system_prompts")
    if (
        model is None
        and isinstance(recorded, dict)
        and all(key in recorded for key in ("default", "none"))
        and all(v is None or isinstance(v, str) for v in recorded.values())
    ):
        return {"default": recorded["default"], "none": recorded["none"]}
    config = found.config
    # the model the audit built (folders by absolute path: export from any directory)
    name = model or found.model_to_build
    options = {} if model else dict(config.get("model_options") or {})
    if not isinstance(name, str) or not name:
        raise PoiseError(
            f"{found.path.name}: the run names no model, whose default system prompt its "
            "prompts were sent with: give --model"
        )
    try:
        loaded = load_model(name, **options)
    except PoiseError as exc:
        raise PoiseError(
            f"{found.path.name}: cannot load the run's model {name!r} to read the system prompt "
            f"its prompts were sent with ({exc}); give --model FOLDER"
        ) from None
    return {"default": default_system_prompt(loaded), "none": no_system_prompt(loaded)}


def preference_pairs(
    records: Iterable[Mapping[str, Any]],
    *,
    per_prompt: int = 1,
    system_prompts: Mapping[str, str | None] | None = None,
) -> list[dict[str, Any]]:
    """Up to ``per_prompt`` pairs per harmful prompt that has both a refused and a harmful
    completion under one system-prompt setting (the record's ``config.system_prompt``; "default"
    when it has none). Distinct texts are paired in record order, so the output is deterministic.
    ``per_prompt`` is an integer >= 1 (0 wrote nothing, and a negative one cut pairs off the end
    of each prompt's list, without a word).

    ``system_prompts``: the system message the run sent for "default" and for "none" (as its
    run.json records them, ``system_prompts``; for a run recorded before, the run's model's
    :func:`poise.models.default_system_prompt` and :func:`poise.models.no_system_prompt`; None: no
    system message); a literal setting is sent as itself. Each pair's prompt is the chat
    as sent (:func:`poise.probes.data.record_chat`). A pair used to take its chosen answer from
    one setting and its rejected one from the other, under a prompt without either's system
    message."""
    from poise.probes.data import record_chat

    check_int("preference pairs", "per_prompt", per_prompt, 1)
    texts = dict(system_prompts or {})
    safe: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    harmful: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    prompts: dict[tuple[str, str], tuple[Mapping[str, Any], int]] = {}
    for number, r in enumerate(records, 1):
        if r["kind"] != "harmful":
            continue
        verdict = r["verdict"]
        config = r.get("config")
        setting = config.get("system_prompt", "default") if isinstance(config, Mapping) else None
        key = (str(r["item_id"]), str(setting if setting is not None else "default"))
        prompts.setdefault(key, (r, number))
        if verdict.get("harmful"):
            harmful[key].append(r)
        elif verdict.get("refused") and read(verdict):
            safe[key].append(r)
    pairs: list[dict[str, Any]] = []
    made: dict[str, int] = defaultdict(int)  # pairs per item so far, over its settings
    for key, (first, number) in prompts.items():
        item, setting = key
        matched = list(zip(_distinct(safe[key]), _distinct(harmful[key]), strict=False))
        matched = matched[: per_prompt - made[item]]
        if not matched:
            continue
        chat = record_chat(first, texts.get("default"), texts.get("none"), f"record {number}")
        for (c, c_rec), (h, h_rec) in matched:
            made[item] += 1
            pairs.append(
                {
                    "prompt": [dict(m) for m in chat],
                    "chosen": [{"role": "assistant", "content": c}],
                    "rejected": [{"role": "assistant", "content": h}],
                    "meta": {
                        "item_id": item,
                        "category": first.get("category"),
                        "system_prompt": setting,
                        "chosen_request": c_rec["request_id"],
                        "rejected_request": h_rec["request_id"],
                        "source": "poise-attack",
                    },
                }
            )
    return pairs


def _distinct(records: list[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    seen: dict[str, Mapping[str, Any]] = {}
    for r in records:
        text = str(r["completion"])
        if text.strip() and text not in seen:
            seen[text] = r
    return list(seen.items())


def write_pairs(pairs: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write jsonl atomically (a temporary file renamed into place); returns the count. A path
    that is a folder, or under a file, is one line (``prepare_output_file``), as is a failed
    write."""
    path = prepare_output_file(path, "output")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for pair in pairs:
                f.write(json.dumps(pair, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PoiseError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:  # Ctrl-C, or a pair that fails as it is made: no file left behind
        tmp.unlink(missing_ok=True)
        raise
    return count
