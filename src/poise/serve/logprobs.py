"""Log-probs in OpenAI's shapes, computed by a model with the ``tokens`` capability.

Two shapes (both as vLLM fills them):

- chat completions (``logprobs: true``, ``top_logprobs: k``): ``choices[i].logprobs.content``
  is one entry per generated token, ``{token, logprob, bytes, top_logprobs: [{token, logprob,
  bytes}] * k}``;
- legacy completions (``logprobs: k``, optionally ``echo``): ``choices[i].logprobs`` is
  ``{tokens, token_logprobs, top_logprobs, text_offset}``, where ``top_logprobs[j]`` maps the
  ``k`` most likely token strings (and the chosen one) to their log-probs, and the prompt's
  first token has ``None`` for both (nothing predicts it).

The numbers come from one teacher-forced pass over prompt + generated tokens
(:meth:`~poise.models.base.SequenceLogprobs`), so a token's log-prob and its alternatives are
from the same forward pass: natural logs of the model's next-token distribution at temperature
1, whatever the request's sampling settings (vLLM's default, "raw" log-probs). The generated
tokens are the completion's ``token_ids``, the EOS token that ended it included.

Model calls run in a worker thread, one at a time per process (:func:`run_in_thread`), beside
the scheduler's own thread: they read the weights only, with caches of their own.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from poise.models.base import Chat, Completion, LanguageModel, SequenceLogprobs
from poise.serve.schema import ChatRequest, RequestError

__all__ = [
    "add_chat_logprobs",
    "chat_logprobs",
    "check_tokens_capability",
    "completion_logprobs",
    "run_in_thread",
    "stream_logprobs",
    "text_offsets",
    "token_bytes",
    "token_text",
]

T = TypeVar("T")
_MODEL_LOCK = threading.Lock()
# Most alternatives per token a request may ask for (OpenAI allows 20 in chat, 5 in legacy
# completions; vLLM 20 in both).
MAX_TOP_LOGPROBS = 20
# What a log-prob of -inf (a token the model rules out, a logit of -inf) is sent as: JSON has no
# infinity, so vLLM sends "the JSON-serializable float that OpenAI uses" in its place
# (vllm/entrypoints/openai, max(logprob, -9999.0)).
LOGPROB_FLOOR = -9999.0


def _sendable(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


def check_tokens_capability(model: LanguageModel, what: str) -> None:
    """A 400 naming ``what`` when the served model cannot score raw token sequences."""
    if not model.capabilities.tokens or model.tokenizer is None:
        raise RequestError(
            f"{what} needs a model that scores raw token sequences (the tokens capability); "
            f"{model.name} does not",
            param=what.split()[0],
            code="unsupported_parameter",
        )


async def run_in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, one such call at a time."""

    def locked() -> T:
        with _MODEL_LOCK:
            return fn(*args, **kwargs)

    return await asyncio.to_thread(locked)


# -- token strings ----------------------------------------------------------------------------------


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (Radford et al. 2019): the character that stands for each
    byte, inverted. Printable bytes stand for themselves; the others are shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + shift)
            shift += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_text(tokenizer: Any, token_id: int) -> str:
    """The text of one token alone (a piece of a multi-byte character decodes to U+FFFD)."""
    return str(tokenizer.decode([token_id], skip_special_tokens=False))


def token_bytes(tokenizer: Any, token_id: int) -> list[int]:
    """The UTF-8 bytes a token stands for. A token holding part of a multi-byte character has
    no text of its own: its bytes are read from the byte-level BPE symbols or SentencePiece's
    ``<0xNN>`` byte fallback."""
    text = token_text(tokenizer, token_id)
    if "\ufffd" not in text:
        return list(text.encode("utf-8"))
    piece = str(tokenizer.convert_ids_to_tokens(token_id))
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return [int(piece[3:5], 16)]
        except ValueError:
            pass
    decoder = _byte_decoder()
    if piece and all(c in decoder for c in piece):
        return [decoder[c] for c in piece]
    return list(text.encode("utf-8"))


# -- chat completions -------------------------------------------------------------------------------


def _chat_logprobs_sync(
    model: Any, chat: Chat, completions: Sequence[Completion], top_logprobs: int
) -> list[dict[str, Any]]:
    prompt = list(model.prompt_ids(chat))
    generated = [list(c.token_ids or ()) for c in completions]
    scored: list[SequenceLogprobs] = model.sequence_logprobs(
        [prompt + g for g in generated], top_k=top_logprobs, start=[len(prompt)] * len(generated)
    )
    tokenizer = model.tokenizer
    texts: dict[int, str] = {}
    raw: dict[int, list[int]] = {}

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        if token_id not in texts:
            texts[token_id] = token_text(tokenizer, token_id)
            raw[token_id] = token_bytes(tokenizer, token_id)
        return {"token": texts[token_id], "logprob": _sendable(logprob), "bytes": raw[token_id]}

    out = []
    for result in scored:
        content = []
        for token_id, logprob, top in zip(
            result.token_ids, result.logprobs, result.top, strict=True
        ):
            assert logprob is not None  # generated tokens always have a prefix
            item = entry(token_id, logprob)
            item["top_logprobs"] = [entry(t, v) for t, v in top]
            content.append(item)
        out.append({"content": content, "refusal": None})
    return out


async def chat_logprobs(
    model: LanguageModel, chat: Chat, completions: Sequence[Completion], top_logprobs: int
) -> list[dict[str, Any]]:
    """Each completion's ``logprobs`` object of a chat completion choice."""
    return await run_in_thread(_chat_logprobs_sync, model, chat, completions, top_logprobs)


async def add_chat_logprobs(
    model: LanguageModel,
    request: ChatRequest,
    completions: Sequence[Completion],
    choices: list[dict[str, Any]],
) -> None:
    """Set ``choices[i]["logprobs"]`` when the request asked for log-probs."""
    if not request.logprobs:
        return
    found = await chat_logprobs(model, request.chat, completions, request.top_logprobs)
    for choice, logprobs in zip(choices, found, strict=True):
        choice["logprobs"] = logprobs


async def stream_logprobs(
    model: LanguageModel, request: ChatRequest, completion: Completion
) -> dict[str, Any] | None:
    """One streamed choice's ``logprobs`` object (None when not asked for)."""
    if not request.logprobs:
        return None
    (found,) = await chat_logprobs(model, request.chat, [completion], request.top_logprobs)
    return found


# -- legacy completions -----------------------------------------------------------------------------


_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")  # a byte fallback token (SentencePiece)


def text_offsets(
    tokenizer: Any, ids: Sequence[int], text: str, *, skip_special_tokens: bool
) -> list[int]:
    """Where each token of ``ids`` starts in ``text``, the text they decode to (with
    ``skip_special_tokens`` as ``text`` was decoded), in characters.

    Token ``j`` starts where the decode of ``ids[:j]`` ends, up to its last whole character: a
    token that starts inside a multi-byte character (a byte-level piece of "é") gets the start of
    that character, and the character counts once, not once per piece. When each token's own
    text joins into the decoded text (ASCII text, mostly) those lengths are summed; otherwise the
    tokens are decoded incrementally, a window from the last whole character on (as vLLM's
    detokenizer does), so the cost stays linear in the number of tokens. Where ``text`` is not
    exactly the decode, offsets are counted from where it starts in the decode (special tokens a
    tokenizer added before a string prompt) and never pass its end (tokens after a stop string).
    """
    ids = [int(t) for t in ids]
    if not ids:
        return []

    def decode(part: Sequence[int]) -> str:
        return str(tokenizer.decode(part, skip_special_tokens=skip_special_tokens))

    decoded = decode(ids)
    singles = tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=skip_special_tokens)
    pieces = [str(piece) for piece in singles]
    starts: list[int] = []
    if "".join(pieces) == decoded:
        length = 0
        for piece in pieces:
            starts.append(length)
            length += len(piece)
    else:
        byte_tokens: dict[int, bool] = {}

        def byte_token(token_id: int) -> bool:
            if token_id not in byte_tokens:
                piece = tokenizer.convert_ids_to_tokens(token_id)
                byte_tokens[token_id] = isinstance(piece, str) and bool(_BYTE_TOKEN.match(piece))
            return byte_tokens[token_id]

        length = prefix_offset = read_offset = 0
        waiting: str | None = None  # the window's text while it ends in U+FFFD
        for j in range(len(ids)):
            before = decode(ids[prefix_offset:read_offset]) if read_offset > prefix_offset else ""
            after = decode(ids[prefix_offset : j + 1])
            if (
                waiting is not None
                and len(after) > len(waiting)
                and after.startswith(waiting)
                and not (byte_token(ids[j]) and set(after[len(waiting) :]) == {"\ufffd"})
            ):
                # the U+FFFD the window waited on is text (a U+FFFD in the text, invalid bytes):
                # the next token added to it instead of completing a character. Taken as is,
                # where waiting on it stalled every later offset and grew the window. A byte
                # fallback token (Llama's <0xF0>) that only adds U+FFFD is one more byte of the
                # character (such decoders write one U+FFFD per byte of an unfinished one)
                length += len(waiting) - len(before)
                prefix_offset, read_offset = read_offset, j
                before = decode(ids[prefix_offset:read_offset])
                after = decode(ids[prefix_offset : j + 1])
            starts.append(length)
            # a window that ends inside a character decodes to U+FFFD there: wait for the rest
            if len(after) > len(before) and not after.endswith("\ufffd"):
                length += len(after) - len(before)
                prefix_offset, read_offset = read_offset, j + 1
                waiting = None
            else:
                waiting = after
    head = 0
    if not decoded.startswith(text) and decoded.endswith(text):
        head = len(decoded) - len(text)
    return [min(max(start - head, 0), len(text)) for start in starts]


def completion_logprobs(
    tokenizer: Any, result: SequenceLogprobs, top_k: int, text_offset: Sequence[int]
) -> dict[str, Any]:
    """The legacy ``logprobs`` object of one choice. ``result`` covers the tokens the choice's
    text is made of (the prompt's too when echoed); ``text_offset[j]`` is where token ``j``
    starts in the choice's text (:func:`text_offsets`)."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    texts: dict[int, str] = {}

    def text_of(token_id: int) -> str:
        if token_id not in texts:
            texts[token_id] = token_text(tokenizer, token_id)
        return texts[token_id]

    for token_id, logprob, top in zip(result.token_ids, result.logprobs, result.top, strict=True):
        text = text_of(token_id)
        tokens.append(text)
        if logprob is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(_sendable(logprob))
        alternatives: dict[str, float] = {}
        for alt_id, value in top[:top_k]:
            alternatives.setdefault(text_of(alt_id), _sendable(value))
        # the chosen token is always listed (so there can be top_k + 1 entries)
        alternatives.setdefault(text, _sendable(logprob))
        top_logprobs.append(alternatives)
    if len(text_offset) != len(tokens):
        raise ValueError(f"{len(text_offset)} text offsets for {len(tokens)} tokens")
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": list(text_offset),
    }
