"""Preference pairs from an attack's completions: (prompt, safe completion, harmful completion).

The raw material of generation-aware alignment (arXiv 2310.06987, Section 5): completions that a
decoding configuration broke become the rejected side, refusals of the same prompt the chosen
side. The jsonl rows are TRL's conversational preference format (prompt, chosen and rejected all
message lists, so ``trl.data_utils.is_conversational`` holds whichever key it looks at), which
``poise.train.data`` reads too::

    {"prompt": [{"role": "user", "content": "..."}],
     "chosen": [{"role": "assistant", "content": "<refusal>"}],
     "rejected": [{"role": "assistant", "content": "<harmful>"}],
     "meta": {"item_id": ..., "category": ..., "chosen_request": ..., "rejected_request": ..., "source": "poise-attack"}}
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from poise.errors import PoiseError, check_int, prepare_output_file
from poise.tasks import read


def preference_pairs(
    records: Iterable[Mapping[str, Any]], *, per_prompt: int = 1
) -> list[dict[str, Any]]:
    """Up to ``per_prompt`` pairs per harmful prompt that has both a refused and a harmful
    completion. Distinct texts are paired in record order, so the output is deterministic.
    ``per_prompt`` is an integer >= 1 (0 wrote nothing, and a negative one cut pairs off the end
    of each prompt's list, without a word)."""
    check_int("preference pairs", "per_prompt", per_prompt, 1)
    safe: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    harmful: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    prompts: dict[str, Mapping[str, Any]] = {}
    for r in records:
        if r["kind"] != "harmful":
            continue
        verdict = r["verdict"]
        key = str(r["item_id"])
        prompts.setdefault(key, r)
        if verdict.get("harmful"):
            harmful[key].append(r)
        elif verdict.get("refused") and read(verdict):
            safe[key].append(r)
    pairs = []
    for key, first in prompts.items():
        chosen_texts = _distinct(safe[key])
        rejected_texts = _distinct(harmful[key])
        for (c, c_rec), (h, h_rec) in list(zip(chosen_texts, rejected_texts, strict=False))[
            :per_prompt
        ]:
            pairs.append(
                {
                    # the item's whole chat where the record has it (several turns, its own
                    # system message), else its one user turn
                    "prompt": first.get("messages")
                    or [{"role": "user", "content": first["prompt"]}],
                    "chosen": [{"role": "assistant", "content": c}],
                    "rejected": [{"role": "assistant", "content": h}],
                    "meta": {
                        "item_id": key,
                        "category": first.get("category"),
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
