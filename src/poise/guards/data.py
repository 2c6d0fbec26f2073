"""Token-labelled answers for training and calibrating a streaming monitor.

One JSON object per line (``.jsonl``)::

    {"messages": [{"role": "user", "content": "How do I ..."}],
     "response": "Sure. Step 1: ...",
     "harm_spans": [[5, 17]],
     "harmful": true}

- ``messages``: the prompt, as chat messages (``role`` system / user / assistant, ``content``).
- ``response``: the assistant's answer to them.
- ``harm_spans``: character ranges ``[start, end)`` of ``response`` (Unicode code points, as
  Python indexes a ``str``; not UTF-8 bytes or UTF-16 units) that are harmful (the
  token-level labels: a token is harmful when its characters, whitespace at its ends aside,
  overlap a span); ``[]`` or absent for a harmless answer. Spans may touch (``[0, 5], [5,
  9]``) but not overlap: overlapping spans, or a span given twice, are refused.
- ``harmful`` (optional): the response-level label; defaults to "has a span". A response can be
  harmful without spans only if you say so (its tokens then carry no positive label); ``false``
  with spans is refused (the labels contradict each other).

``poise train monitor-data`` writes such a file from the organism's corpus.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poise.errors import (
    PoiseError,
    invalid_json,
    json_lines,
    located,
    parse_json,
    prepare_output_file,
)

__all__ = [
    "MonitorExample",
    "encode_example",
    "read_monitor_data",
    "visible_offsets",
    "write_monitor_data",
]

_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class MonitorExample:
    """One labelled answer (see the module docstring)."""

    messages: tuple[tuple[str, str], ...]
    response: str
    harm_spans: tuple[tuple[int, int], ...] = ()
    harmful: bool | None = None

    @property
    def label(self) -> bool:
        """The response-level label: ``harmful`` if given, else whether a span is present."""
        return bool(self.harm_spans) if self.harmful is None else self.harmful

    @property
    def chat(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.chat,
            "response": self.response,
            "harm_spans": [list(s) for s in self.harm_spans],
            "harmful": self.label,
        }


def _parse(path: Path, line: int, raw: Any) -> MonitorExample:
    def fail(message: str) -> PoiseError:
        return located(path, line, message)

    if not isinstance(raw, dict):
        raise fail("expected a JSON object")
    unknown = set(raw) - {"messages", "response", "harm_spans", "harmful"}
    if unknown:
        raise fail(f"unknown field {sorted(unknown)[0]!r}")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise fail("field 'messages' must be a non-empty list of {role, content}")
    pairs = []
    for m in messages:
        if (
            not isinstance(m, dict)
            or m.get("role") not in _ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise fail(f"field 'messages': each needs role ({'/'.join(_ROLES)}) and content")
        pairs.append((str(m["role"]), str(m["content"])))
    response = raw.get("response")
    if not isinstance(response, str) or not response:
        raise fail("field 'response' must be a non-empty string")
    given = raw.get("harm_spans")
    if given is not None and not isinstance(given, list):
        raise fail("field 'harm_spans' must be a list of [start, end) character ranges")
    spans: list[tuple[int, int]] = []
    for span in given or []:
        if (
            not isinstance(span, list)
            or len(span) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)
        ):
            raise fail(f"field 'harm_spans': {span!r} is not [start, end), two integers")
        if not 0 <= span[0] < span[1] <= len(response):
            raise fail(
                f"field 'harm_spans': {span!r} is not [start, end) inside the response "
                f"(0 <= start < end <= {len(response)}, its length in characters)"
            )
        spans.append((span[0], span[1]))
    # spans that overlap (or one given twice) are a slip in the data, not two harms: one error
    # naming both, as the spans' union is what the token labels would have read
    ordered = sorted(spans)
    for before, after in itertools.pairwise(ordered):
        if after[0] < before[1]:
            union = [before[0], max(before[1], after[1])]
            raise fail(
                f"field 'harm_spans': {list(before)} and {list(after)} overlap; "
                f"give their union, {union}, once"
            )
    harmful = raw.get("harmful")
    if harmful is not None and not isinstance(harmful, bool):
        raise fail("field 'harmful' must be true or false")
    if harmful is False and spans:
        # token labels that say harm and a response label that says none: the SCM loss's
        # logic-consistency term would be trained on a contradiction
        raise fail("field 'harmful' is false but 'harm_spans' marks harm in the response")
    return MonitorExample(tuple(pairs), response, tuple(spans), harmful)


def read_monitor_data(path: str | Path) -> list[MonitorExample]:
    """The examples of a jsonl file; one clear line (file:line, field) for a bad one."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise PoiseError(f"{file}: cannot read ({exc.strerror})") from None
    try:
        lines = json_lines(data.decode("utf-8"))
    except UnicodeDecodeError as exc:  # a Latin-1 or UTF-16 export: was a traceback
        line = data.count(b"\n", 0, exc.start) + 1
        raise located(
            file, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None
    out = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            raw = parse_json(text)
        except json.JSONDecodeError as exc:
            raise located(file, number, invalid_json(exc)) from None
        out.append(_parse(file, number, raw))
    if not out:
        raise PoiseError(f"{file}: no examples")
    return out


def write_monitor_data(path: str | Path, examples: Iterable[MonitorExample]) -> int:
    """Write examples as jsonl (whole or not at all); returns how many."""
    file = prepare_output_file(path, "output")
    tmp = file.with_name(f".{file.name}.tmp")
    count = 0
    try:
        with tmp.open("w", encoding="utf-8") as out:
            for example in examples:
                out.write(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
                count += 1
        tmp.replace(file)
    except BaseException:
        # ``examples`` may be a generator that fails (or is interrupted) half-way: no partial
        # file is left beside the output either
        tmp.unlink(missing_ok=True)
        raise
    return count


def token_labels(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for a token whose characters ``[start, end)`` overlap a harm span, else 0."""
    return [
        int(any(start < s_end and s_start < end for s_start, s_end in spans))
        for start, end in offsets
    ]


def visible_offsets(text: str, offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each token's character range without the whitespace at its ends (a whitespace-only token
    keeps its range). Byte-level and SentencePiece tokenizers merge a word's leading space into
    its token (" Step": the space included in its offsets), so a span that ends on a space
    would otherwise label the next word, whose only overlap with it is that space."""
    out = []
    for start, end in offsets:
        piece = text[start:end]
        if piece.strip():
            start += len(piece) - len(piece.lstrip())
            end -= len(piece) - len(piece.rstrip())
        out.append((start, end))
    return out


def encode_example(
    tokenizer: Any, prompt_ids: Sequence[int], example: MonitorExample
) -> tuple[list[int], list[int]]:
    """(token ids, token labels) of prompt + response: prompt positions labelled -100, response
    tokens by :func:`token_labels` on their :func:`visible_offsets` (a fast tokenizer's
    character offsets)."""
    encoded = tokenizer(example.response, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    if not ids:
        raise PoiseError(f"response {example.response[:40]!r} encodes to no tokens")
    offsets = visible_offsets(example.response, [tuple(o) for o in encoded["offset_mapping"]])
    labels = token_labels(offsets, example.harm_spans)
    return [*prompt_ids, *ids], [-100] * len(prompt_ids) + labels
