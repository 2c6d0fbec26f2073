"""What a guard records about each answer (``Completion.metadata["guard"]``).

Every guard (streaming, chunked, full-answer) writes the same fields, which the audit's judge
completes and the guard metrics read (:mod:`poise.scoring.metrics`):

- ``kind`` (``streaming`` / ``chunked`` / ``full``) and the guard's settings;
- ``stopped``: the guard stopped the answer (its ``finish_reason`` is ``"guard"``);
- ``produced_tokens``: tokens generated before the guard decided to stop (all of them when it
  did not stop): what the stop saved;
- ``shown_tokens``: tokens that reached the user (a streaming guard shows what it generated
  before the stop; a full-answer guard shows nothing of an answer it stops; a chunked guard the
  chunks it passed);
- in audits (``generate``, which decodes every answer to its end) also ``unguarded_tokens``,
  ``decoded_tokens`` (``unguarded_tokens`` and the EOS token that ended the unguarded answer,
  if one did: what the model decoded), ``unguarded_text`` (when stopped: the answer without the
  guard) and ``token_ends`` (the end character of each unguarded token in ``unguarded_text``, so
  a judge's harm onset, a character offset, counts the harmful tokens that were shown);
  a streaming guard's audit records add ``max_score``, the highest score its monitor gave the
  answer's tokens (None for an answer it scored no token of), to see how near an answer that
  went through came to the threshold.

The evaluation core adds ``unguarded_harmful`` (the judge's label of the unguarded answer) and,
with a judge that locates harm (the organism's oracle), ``harm_onset`` (a character offset).

A stopped answer's ``num_tokens`` counts the tokens shown (its ``token_ids``; the refusal is not
counted), which the audit's ``response_tokens`` averages; :func:`generated_tokens` counts what
the model decoded for it, which ``poise serve`` reports as ``usage.completion_tokens``. For any
answer, guarded or not, that count includes the EOS token that ended it (``num_tokens`` does not):
the model decoded it like every other token.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from poise.models.base import Completion

__all__ = [
    "GUARD_KEY",
    "decoded_tokens",
    "generated_tokens",
    "guard_record",
    "refusal_tail",
    "shown_completion",
    "token_ends",
]

GUARD_KEY = "guard"


def guard_record(
    *, stopped: bool, produced: int, shown: int, settings: dict[str, Any], **more: Any
) -> dict[str, Any]:
    """The ``metadata`` of a guarded completion (see the module docstring)."""
    return {
        GUARD_KEY: {
            **settings,
            "stopped": stopped,
            "produced_tokens": produced,
            "shown_tokens": shown,
            **more,
        }
    }


def decoded_tokens(completion: Completion) -> int:
    """The tokens the model decoded for ``completion`` as it stands: its ``token_ids`` where the
    backend knows them (the ``num_tokens`` counted and the EOS token that ended the answer, if
    one did), else ``num_tokens``.

    The EOS token is counted because the model decoded it: it took a decoding step like any
    other token. This is what vLLM, the reference for OpenAI-compatible serving of open models,
    reports: its ``usage.completion_tokens`` is the length of each choice's generated token ids
    (``vllm/entrypoints/openai/chat_completion/serving.py``), and its detokenizer leaves the EOS
    or stop token that ended a request out of the text but keeps it in those ids
    (``vllm/v1/engine/detokenizer.py``). A stop string cuts the text only there, so the tokens
    up to the one that completed it count, as they do in ``num_tokens`` here."""
    ids = completion.token_ids
    return completion.num_tokens if ids is None else max(completion.num_tokens, len(ids))


def generated_tokens(completion: Completion) -> int:
    """The tokens the model decoded for ``completion``: what it cost, the EOS token that ended it
    included (:func:`decoded_tokens`). A guard that decodes every answer to its end and decides
    afterwards (``full_guard``, ``chunked_guard``, ``guarded`` in ``generate``) records them as
    ``decoded_tokens`` (``unguarded_tokens`` and that EOS), also when it showed fewer or none;
    ``guarded``'s ``stream`` and ``engine`` stop decoding at the stop, so a stopped answer's
    ``num_tokens`` is what was decoded (the EOS the guard forces after the stop is not the
    model's answer, and is not counted)."""
    decoded = decoded_tokens(completion)
    record = (completion.metadata or {}).get(GUARD_KEY)
    if not isinstance(record, dict):
        return decoded
    for key in ("decoded_tokens", "unguarded_tokens"):  # the second: records written before
        if isinstance(record.get(key), int):
            return max(int(record[key]), decoded)
    return decoded


def refusal_tail(text: str, refusal: str) -> str:
    """What a stopped answer ends with: ``refusal``, after a space if the text needs one."""
    if not refusal:
        return ""
    return refusal if not text or text.endswith((" ", "\n")) else " " + refusal


def token_ends(tokenizer: Any, ids: list[int]) -> list[int]:
    """The end character of each token in the decoded text of ``ids`` (prefix decodes, so a
    token that completes a multi-byte character ends where the character does)."""
    prefixes = [ids[: i + 1] for i in range(len(ids))]
    if not prefixes:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    plain = getattr(tokenizer, "clean_up_tokenization_spaces", True) is False
    if backend is not None and plain and type(backend.decoder).__name__ == "ByteLevel":
        # a byte-level decoder (GPT-2, Llama 3, Qwen, the organism) turns each token into its
        # bytes and the joined bytes into text: when every token alone is whole characters (no
        # U+FFFD), each prefix decodes to the tokens before it joined, so one decode per token
        # gives every prefix's length (O(n), not the O(n^2) of decoding each prefix)
        pieces = backend.decode_batch([[i] for i in ids], skip_special_tokens=True)
        if not any("\ufffd" in piece for piece in pieces) and "".join(pieces) == backend.decode(
            ids, skip_special_tokens=True
        ):
            return list(itertools.accumulate(len(piece) for piece in pieces))
    if backend is not None and plain:
        # a fast tokenizer without clean-up decodes exactly as its Rust backend does; calling
        # the backend once skips the per-prefix Python of batch_decode (3x faster here)
        texts = backend.decode_batch(prefixes, skip_special_tokens=True)
    else:
        texts = tokenizer.batch_decode(prefixes, skip_special_tokens=True)
    return [len(t) for t in texts]


def shown_completion(
    completion: Completion,
    tokenizer: Any,
    *,
    shown: int | None,
    produced: int | None,
    refusal: str,
    settings: dict[str, Any],
) -> Completion:
    """A fully decoded ``completion`` as the guard delivers it: unchanged when ``shown`` is None
    (not stopped), else its first ``shown`` tokens and ``refusal`` (``finish_reason`` "guard").
    ``produced``: tokens generated when the guard stopped (default: ``shown``)."""
    ids = list(completion.token_ids or ())[: completion.num_tokens]
    ends = token_ends(tokenizer, ids)
    if shown is None:
        meta = guard_record(
            stopped=False,
            produced=completion.num_tokens,
            shown=completion.num_tokens,
            settings=settings,
            unguarded_tokens=completion.num_tokens,
            decoded_tokens=decoded_tokens(completion),
            token_ends=ends,
        )
        return dataclasses.replace(completion, metadata=meta)
    shown = min(shown, completion.num_tokens)
    produced = shown if produced is None else min(produced, completion.num_tokens)
    text = tokenizer.decode(ids[:shown], skip_special_tokens=True) if shown else ""
    text = text + refusal_tail(text, refusal)
    meta = guard_record(
        stopped=True,
        produced=produced,
        shown=shown,
        settings=settings,
        unguarded_tokens=completion.num_tokens,
        decoded_tokens=decoded_tokens(completion),
        unguarded_text=completion.text,
        token_ends=ends,
    )
    logprobs = completion.token_logprobs
    return Completion(
        text=text,
        num_tokens=shown,
        finish_reason="guard",
        token_logprobs=None if logprobs is None else tuple(logprobs[:shown]),
        token_ids=tuple(ids[:shown]),
        metadata=meta,
    )
