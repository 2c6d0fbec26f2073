"""Preference pairs for DPO-style training, reward and cost models, and their file formats.

    from poise.train.data import load_preferences

    pairs = load_preferences("pairs.jsonl")                              # format detected
    pairs = load_preferences("harmless-base/train.jsonl.gz")             # Anthropic HH-RLHF
    pairs = load_preferences("pku.jsonl", pku_preference="better")       # PKU-SafeRLHF rows

Formats (``format=`` or detected from the first row):

- ``generic``: ``{"prompt": str | [messages], "chosen": str, "rejected": str, "meta"?: {...}}``;
  other keys of the row are kept in ``meta``.
- ``attack``: what poise's attacks export: ``{"prompt": [messages], "chosen": <safe completion>,
  "rejected": <harmful completion>, "meta": {...}}``; the prompt must be a chat and meta present.
- ``hh-rlhf``: Anthropic HH-RLHF jsonl(.gz) (arXiv 2204.05862): ``chosen`` and ``rejected`` are
  whole "\\n\\nHuman: …\\n\\nAssistant: …" transcripts sharing every turn but the final Assistant
  reply; the shared dialogue becomes the prompt, the two final replies the responses. Rows
  whose two dialogues differ before the final reply (the public files hold a few) are skipped
  with one warning that counts them and names their lines, as are rows whose two final replies
  are the same text.
- ``pku-saferlhf``: PKU-SafeRLHF rows (arXiv 2406.15513) ``prompt, response_0, response_1,
  better_response_id, safer_response_id, is_response_0_safe, is_response_1_safe``; the pair
  follows ``safer_response_id`` (harmlessness, the default) or ``better_response_id``
  (helpfulness) as ``pku_preference`` says, and ``meta`` keeps both responses' safety labels
  (``chosen_is_safe``, ``rejected_is_safe``) for the Safe RLHF cost model. Rows whose two
  responses are the same text are skipped with one warning, as HH-RLHF's are.

In the generic and attack formats a pair whose ``chosen`` and ``rejected`` are the same text is
an error (no preference). Every file may be gzip-compressed (``.gz``). A bad row raises :class:`~poise.errors.PoiseError`
naming ``file:line`` and the field.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, get_args

from poise.errors import PoiseError, decode_line, invalid_json, located, parse_json
from poise.models.base import Chat, Message
from poise.suites import parse_hh_transcript  # shared with the suite loader: one HH reader

__all__ = [
    "PREFERENCE_FORMATS",
    "PreferenceFormat",
    "PreferencePair",
    "load_preferences",
]

logger = logging.getLogger(__name__)

PreferenceFormat = Literal["generic", "attack", "hh-rlhf", "pku-saferlhf"]
PREFERENCE_FORMATS: tuple[str, ...] = get_args(PreferenceFormat)
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PreferencePair:
    """One preference: ``chosen`` is preferred to ``rejected`` as a reply to ``prompt``.

    ``prompt`` is a plain string (one user turn) or a chat (list of ``{role, content}``
    messages ending with a user turn). ``meta`` holds the source row number and format-specific
    fields (safety labels, attack details, …).
    """

    prompt: str | Chat
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def messages(self) -> Chat:
        """The prompt as a chat: a string prompt becomes one user turn."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [{"role": m["role"], "content": m["content"]} for m in self.prompt]


class _Row:
    """A parsed JSON object and where it came from, for located errors."""

    def __init__(self, path: Path, line: int, data: dict[str, Any]) -> None:
        self.path = path
        self.line = line
        self.data = data

    def error(self, field_name: str, message: str) -> PoiseError:
        return located(self.path, self.line, f"field {field_name!r}: {message}")

    def require(self, field_name: str) -> Any:
        if field_name not in self.data:
            raise located(self.path, self.line, f"missing field {field_name!r}")
        return self.data[field_name]

    def text(self, field_name: str, *, allow_empty: bool = False) -> str:
        value = self.require(field_name)
        if not isinstance(value, str):
            raise self.error(field_name, f"expected a string, got {_json_type(value)}")
        if not allow_empty and not value.strip():
            raise self.error(field_name, "expected a non-empty string")
        return value

    def flag(self, field_name: str) -> bool:
        value = self.require(field_name)
        if not isinstance(value, bool):
            raise self.error(field_name, f"expected true or false, got {_json_type(value)}")
        return value

    def response_id(self, field_name: str) -> int:
        value = self.require(field_name)
        if isinstance(value, bool) or value not in (0, 1):
            raise self.error(field_name, f"expected 0 or 1, got {json.dumps(value)}")
        return int(value)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _messages(row: _Row, field_name: str, value: object) -> Chat:
    """Validate a list of ``{role, content}`` messages that ends with a user turn."""
    if not isinstance(value, list) or not value:
        raise row.error(field_name, "expected a non-empty list of {role, content} messages")
    chat: Chat = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise row.error(field_name, f"message {i} must be an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in _ROLES:
            raise row.error(field_name, f"message {i} has unknown role {role!r}")
        if not isinstance(content, str):
            raise row.error(field_name, f"message {i} content must be a string")
        chat.append(Message(role=role, content=content))
    if chat[-1]["role"] != "user":
        raise row.error(field_name, "the prompt must end with a user turn")
    return chat


def _prompt(row: _Row, *, chat_only: bool) -> str | Chat:
    value = row.require("prompt")
    if isinstance(value, str) and not chat_only:
        if not value.strip():
            raise row.error("prompt", "expected a non-empty string")
        return value
    if isinstance(value, list):
        return _messages(row, "prompt", value)
    expected = "a list of messages" if chat_only else "a string or a list of messages"
    raise row.error("prompt", f"expected {expected}, got {_json_type(value)}")


def _response(row: _Row, field_name: str) -> str:
    """A response: a string, or a one-message assistant list (the conversational layout)."""
    value = row.require(field_name)
    if isinstance(value, list):
        if (
            len(value) != 1
            or not isinstance(value[0], dict)
            or value[0].get("role") != "assistant"
            or not isinstance(value[0].get("content"), str)
        ):
            raise row.error(field_name, "expected a string or a single assistant message")
        value = value[0]["content"]
    if not isinstance(value, str):
        raise row.error(field_name, f"expected a string, got {_json_type(value)}")
    if not value.strip():
        raise row.error(field_name, "expected a non-empty string")
    return value


def _meta(row: _Row, *, required: bool, known: tuple[str, ...]) -> dict[str, Any]:
    value = row.data.get("meta")
    if value is None and required:
        raise located(row.path, row.line, "missing field 'meta'")
    if value is not None and not isinstance(value, dict):
        raise row.error("meta", f"expected an object, got {_json_type(value)}")
    meta: dict[str, Any] = {"row": row.line}
    # Unknown top-level keys (ids, sources, scores) travel along instead of being dropped.
    meta.update({k: v for k, v in row.data.items() if k not in known and k != "meta"})
    meta.update(value or {})
    return meta


def _generic(row: _Row, *, attack: bool = False) -> PreferencePair:
    known = ("prompt", "chosen", "rejected")
    pair = PreferencePair(
        prompt=_prompt(row, chat_only=attack),
        chosen=_response(row, "chosen"),
        rejected=_response(row, "rejected"),
        meta=_meta(row, required=attack, known=known),
    )
    if _same_responses(pair):
        # no preference: every loss's gradient on it is 0, and the row counts as data
        raise row.error("rejected", "the same text as 'chosen' (no preference between them)")
    return pair


def _same_responses(pair: PreferencePair) -> bool:
    return pair.chosen.strip() == pair.rejected.strip()


def _attack(row: _Row, detected_at: int | None) -> PreferencePair:
    """An attack-export row. When the format was detected (from the row at ``detected_at``) and
    this row is a generic one the attack format refuses (a string prompt, no meta), the error
    says so and what reads the file: the generic format, which takes both shapes."""
    try:
        return _generic(row, attack=True)
    except PoiseError as exc:
        if detected_at is None:
            raise
        try:
            _generic(row)
        except PoiseError:
            raise exc from None  # not a pair in the generic format either: its own error says why
        raise PoiseError(
            f"{exc} (the file was read as the attack format, detected from its first row, line "
            f"{detected_at}; --data-format generic reads rows of either shape)"
        ) from None


_HH_DIVERGING = "whose 'chosen' and 'rejected' dialogues differ before the final Assistant turn"
_HH_REPEATED = "with two turns of one speaker in a row (e.g. Assistant, Assistant)"
_SAME = "whose two responses are the same text (no preference between them)"


def _hh_rlhf(row: _Row) -> PreferencePair | str:
    """The row's pair, or why it is skipped: its two dialogues differ before the final reply, or
    one speaker has two turns in a row.

    A few rows of the public HH-RLHF files are like that (transcripts sampled from different
    conversations, or a reply split over two Assistant turns): well-formed, but not a preference
    between two replies to one alternating dialogue. They are skipped and counted, not treated
    as a malformed file.
    """
    turns: dict[str, Chat] = {}
    for name in ("chosen", "rejected"):
        text = row.text(name)
        try:
            parsed = parse_hh_transcript(text)
        except PoiseError as exc:
            raise row.error(name, str(exc)) from None
        if parsed[-1]["role"] != "assistant":
            raise row.error(name, "the transcript must end with an Assistant turn")
        turns[name] = [Message(role=m["role"], content=m["content"]) for m in parsed]
        if any(a["role"] == b["role"] for a, b in pairwise(parsed)):
            return _HH_REPEATED
    prompt = turns["chosen"][:-1]
    if not prompt or prompt[-1]["role"] != "user":
        raise row.error("chosen", "no Human turn before the final Assistant turn")
    if prompt != turns["rejected"][:-1]:
        return _HH_DIVERGING
    # HH-RLHF holds a few empty final replies; they are data, not a malformed row.
    return PreferencePair(
        prompt=prompt,
        chosen=turns["chosen"][-1]["content"],
        rejected=turns["rejected"][-1]["content"],
        meta={"row": row.line},
    )


def _pku_saferlhf(row: _Row, preference: str) -> PreferencePair:
    prompt = row.text("prompt")
    # an empty reply is data (a model that said nothing), as HH-RLHF's empty final replies are:
    # one such row stopped the whole file
    responses = (
        row.text("response_0", allow_empty=True),
        row.text("response_1", allow_empty=True),
    )
    safe = (row.flag("is_response_0_safe"), row.flag("is_response_1_safe"))
    better = row.response_id("better_response_id")
    safer = row.response_id("safer_response_id")
    chosen_id = safer if preference == "safer" else better
    rejected_id = 1 - chosen_id
    meta: dict[str, Any] = {
        "row": row.line,
        "preference": preference,
        "chosen_is_safe": safe[chosen_id],
        "rejected_is_safe": safe[rejected_id],
        "better_response_id": better,
        "safer_response_id": safer,
    }
    return PreferencePair(
        prompt=prompt, chosen=responses[chosen_id], rejected=responses[rejected_id], meta=meta
    )


def _detect(row: _Row) -> str:
    keys = set(row.data)
    if {"response_0", "response_1"} <= keys:
        return "pku-saferlhf"
    if {"prompt", "chosen", "rejected"} <= keys:
        is_chat = isinstance(row.data["prompt"], list)
        return "attack" if is_chat and isinstance(row.data.get("meta"), dict) else "generic"
    if {"chosen", "rejected"} <= keys:
        return "hh-rlhf"
    # one field short of a format: name it (the format could not be told, which pointed away)
    for fields, name in (
        ({"prompt", "chosen", "rejected"}, "generic"),
        ({"chosen", "rejected"}, "hh-rlhf"),
    ):
        if len(fields - keys) == 1:  # the one missing field of a format the others start
            raise PoiseError(
                f"{row.path}:{row.line}: missing field {next(iter(fields - keys))!r} (a {name} "
                f"preference pair has {', '.join(sorted(fields))})"
            )
    raise PoiseError(
        f"{row.path}:{row.line}: cannot tell the preference format from the keys "
        f"{sorted(keys)}; give the format (--data-format) as one of {', '.join(PREFERENCE_FORMATS)}"
    )


def _rows(path: Path) -> Iterator[_Row]:
    opener = gzip.open if path.suffix == ".gz" else open
    if path.exists() and not path.is_dir() and not path.is_file():
        # opening a FIFO would wait for a writer forever
        raise PoiseError(f"{path}: not a regular file (a FIFO, socket or device)")
    try:
        # bytes, decoded line by line: a line that is not UTF-8 is named (a text stream decodes
        # ahead in blocks, so its error could not say which line)
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line = decode_line(raw, path, number)
                if number == 1:
                    line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark is fine
                if not line.strip():
                    continue
                try:
                    data = parse_json(line)
                except json.JSONDecodeError as exc:
                    raise located(path, number, invalid_json(exc)) from None
                except RecursionError:
                    raise located(path, number, "invalid JSON (nested too deeply)") from None
                if not isinstance(data, dict):
                    raise located(path, number, f"expected a JSON object, got {_json_type(data)}")
                yield _Row(path, number, data)
    except FileNotFoundError:
        raise PoiseError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PoiseError(f"{path}: is a directory, expected a .jsonl file") from None
    except (gzip.BadGzipFile, EOFError):
        raise PoiseError(f"{path}: not a readable gzip file") from None


def load_preferences(
    path: str | Path,
    format: PreferenceFormat | str | None = None,
    *,
    pku_preference: Literal["safer", "better"] | str = "safer",
) -> list[PreferencePair]:
    """Read preference pairs from a JSONL(.gz) file.

    Args:
        path: the file.
        format: one of :data:`PREFERENCE_FORMATS`; ``None`` detects it from the first row.
        pku_preference: for PKU-SafeRLHF rows, ``"safer"`` (harmlessness pairs, the default) or
            ``"better"`` (helpfulness pairs).

    Returns the pairs in file order. Raises :class:`PoiseError` (``file:line: field …``) on the
    first malformed row, an unknown format, or a file with no pairs; nothing is returned half-read.
    """
    if format is not None and format not in PREFERENCE_FORMATS:
        raise PoiseError(
            f"unknown preference format {format!r} (known: {', '.join(PREFERENCE_FORMATS)})"
        )
    if pku_preference not in ("safer", "better"):
        raise PoiseError(f"pku_preference must be 'safer' or 'better', got {pku_preference!r}")
    source = Path(path)
    pairs: list[PreferencePair] = []
    # HH-RLHF rows that are well-formed but not a preference between two replies to one prompt,
    # by why: skipped and counted
    skipped: dict[str, list[int]] = {}
    chosen_format = format
    detected_at: int | None = None  # the line the format was detected from, if it was
    for row in _rows(source):
        if chosen_format is None:
            chosen_format = _detect(row)
            detected_at = row.line
            logger.info("%s: reading preference pairs as %s", source, chosen_format)
        if chosen_format in ("pku-saferlhf", "hh-rlhf"):
            # public data sets: a row that is no preference between two replies is skipped
            pair = (
                _pku_saferlhf(row, pku_preference)
                if chosen_format == "pku-saferlhf"
                else _hh_rlhf(row)
            )
            if not isinstance(pair, str) and _same_responses(pair):
                pair = _SAME
            if isinstance(pair, str):
                skipped.setdefault(pair, []).append(row.line)
            else:
                pairs.append(pair)
        elif chosen_format == "attack":
            pairs.append(_attack(row, detected_at))
        else:
            pairs.append(_generic(row))
    for why, lines in skipped.items():
        shown = ", ".join(str(n) for n in lines[:5]) + (", ..." if len(lines) > 5 else "")
        kind = "HH-RLHF" if chosen_format == "hh-rlhf" else "PKU-SafeRLHF"
        message = f"{source}: skipped {len(lines)} {kind} row(s) {why} (lines {shown})"
        if not pairs:
            raise PoiseError(message + "; no preference pairs are left")
        logger.warning("%s", message)
    if not pairs:
        raise PoiseError(f"{source}: no preference pairs (the file is empty)")
    return pairs
