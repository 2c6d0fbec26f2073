"""``POST /v1/completions``: OpenAI's legacy completions API (prompt in, text out).

The prompt is fed as given, without the chat template: a string (tokenized with the model's
tokenizer, special tokens added as the tokenizer adds them, as vLLM does), a list of strings, a
list of token ids, or a list of such lists. Each prompt gets ``n`` choices, ``choices[i * n +
j]`` for prompt ``i`` and sample ``j``. Fields: ``max_tokens`` (default 16; 0 with ``echo``
scores the prompt without generating), ``temperature`` (default 1), ``top_p``, ``top_k``
(vLLM's extension), ``n``, ``stop``, ``seed``, ``stream``, ``echo`` (the choice's text starts
with the prompt) and ``logprobs`` (an int k: per-token log-probs with the k most likely
alternatives; see :mod:`poise.serve.logprobs`). With ``echo`` and ``logprobs`` the prompt's
tokens are scored too, which is what lm-evaluation-harness's ``local-completions`` model reads
for log-likelihood tasks (``max_tokens: 1, echo: true, logprobs: 1``).

The endpoint needs a model with the ``tokens`` capability (the hf backend); other models get a
501. Requests run on the model in a worker thread beside the server's scheduler, one request at
a time (the prompts of one request are batched together): a client that wants throughput sends
its prompts as a list. A streamed response sends each choice's text in word-sized pieces once it
is generated (with ``logprobs``: the whole text in one chunk with its log-probs). At shutdown
a request still generating after the server's grace is ended with a 503 at the next decoding
step, as a chat completion's is (:func:`poise.serve.app.make_server`); so does the request of a
client that disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from poise.config import Sampling
from poise.errors import PoiseError
from poise.guards.record import generated_tokens
from poise.models.base import Completion, LanguageModel, SequenceLogprobs, StepView
from poise.models.context import tokens_at_least
from poise.serve.batcher import text_pieces
from poise.serve.logprobs import (
    MAX_TOP_LOGPROBS,
    completion_logprobs,
    run_in_thread,
    text_offsets,
)
from poise.serve.schema import (
    VLLM_UNSUPPORTED,
    RequestError,
    ServeConfig,
    check_stream_options,
    check_text,
    check_unsupported,
    error_body,
    parse_sampling,
    read_body,
    shutdown_error,
    validation_error,
)
from poise.serve.ticket import fresh_seed

__all__ = ["CompletionRequest", "add_completions_route", "parse_completion_request"]

logger = logging.getLogger(__name__)

_FINISH_REASONS = {"stop": "stop", "length": "length", "guard": "content_filter"}
# Prompts one request may hold (lm-eval sends its batch as one list).
MAX_PROMPTS = 1024
# Choices (prompts x n) one request may ask for, or --max-n when larger: each is a row of the
# model's batch and a part of the response, and the whole request holds the model (one request
# at a time), so a small body must not ask for an unbounded amount of work.
MAX_CHOICES = 1024
# Log-prob alternatives per token position summed over the choices (choices x logprobs): what
# makes a response with log-probs large (1000 echoed prompts with logprobs 20 made 87 MB).
# lm-eval's log-likelihood requests (logprobs 1) stay far below it.
MAX_ALTERNATIVES = 4096
# OpenAI's default max_tokens for legacy completions.
DEFAULT_MAX_TOKENS = 16
# transformers' placeholder model_max_length for a tokenizer that declares none is 1e30.
_NO_DECLARED_LIMIT = 10**9

# As in chat completions: parameters that change the output but cannot be honoured, with the
# values that mean "off" (and any guided_* field, see check_unsupported).
_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "suffix": (None, ""),
    "best_of": (None, 1),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}),
    **VLLM_UNSUPPORTED,
    # a string prompt gets the special tokens its tokenizer adds, vLLM's default
    "add_special_tokens": (None, True),
}


class _CompletionIn(BaseModel):
    # Strict like chat requests; unknown harmless fields (user, metadata ...) are allowed.
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: str
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: StrictInt | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(None, ge=-1)
    n: StrictInt | None = None
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    echo: StrictBool | None = None
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    user: str | None = None  # read by no one, typed as OpenAI's schema types it


# the body's schema, for the OpenAPI description (poise.serve.openapi)
CompletionRequestBody = _CompletionIn


@dataclass(frozen=True)
class CompletionRequest:
    """A parsed legacy completion request. ``prompts`` are strings or token-id lists;
    ``max_tokens`` 0 means score only (``echo``); ``logprobs`` None means none asked for."""

    model: str
    prompts: list[str | list[int]]
    sampling: Sampling
    max_tokens: int
    seeded: bool
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None


def parse_completion_request(raw: bytes, config: ServeConfig) -> CompletionRequest:
    """Bytes of a request body -> :class:`CompletionRequest`, or :class:`RequestError` (400)."""
    data = read_body(raw)
    try:
        req = _CompletionIn.model_validate(data)
    except (ValidationError, RecursionError) as exc:
        if isinstance(exc, RecursionError):
            raise RequestError(
                "the request body is JSON nested too deeply", code="invalid_json"
            ) from None
        raise validation_error(exc) from None
    check_unsupported(data, _UNSUPPORTED)

    prompt = req.prompt
    prompts: list[str | list[int]]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompts = [[int(t) for t in prompt]]
    else:
        prompts = list(prompt)  # type: ignore[arg-type]
    if not prompts:
        raise RequestError("prompt must not be empty", param="prompt", code="invalid_value")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(
            f"prompt holds {len(prompts)} prompts; at most {MAX_PROMPTS} per request",
            param="prompt",
            code="invalid_value",
        )
    for i, p in enumerate(prompts):
        if len(p) == 0:
            name = f"prompt[{i}]" if len(prompts) > 1 else "prompt"
            raise RequestError(f"{name} is empty", param=name, code="invalid_value")
        if not isinstance(p, str) and any(t < 0 for t in p):
            raise RequestError(
                f"prompt[{i}] holds a negative token id", param="prompt", code="invalid_value"
            )
        if isinstance(p, str):
            check_text(p, f"prompt[{i}]" if len(prompts) > 1 else "prompt")

    check_stream_options(req.stream, req.stream_options)
    echo = bool(req.echo)
    max_tokens = DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    if max_tokens == 0 and not echo:
        raise RequestError(
            "max_tokens must be at least 1 (0 only with echo, to score the prompt)",
            param="max_tokens",
            code="invalid_value",
        )
    if max_tokens > config.max_tokens_limit:
        raise RequestError(
            f"max_tokens must be at most {config.max_tokens_limit}, got {max_tokens}",
            param="max_tokens",
            code="invalid_value",
        )
    sampling = parse_sampling(req, config, max(1, max_tokens))
    _check_size(len(prompts), sampling.n, req.logprobs, config)
    return CompletionRequest(
        model=req.model,
        prompts=prompts,
        sampling=sampling,
        max_tokens=max_tokens,
        seeded=req.seed is not None,
        stream=bool(req.stream),
        include_usage=bool((req.stream_options or {}).get("include_usage", False)),
        echo=echo,
        logprobs=req.logprobs,
    )


def _check_size(prompts: int, n: int, logprobs: int | None, config: ServeConfig) -> None:
    """Refuse a request whose answer would be too much work or too large a response for one
    request: more than :data:`MAX_CHOICES` choices, or with ``logprobs`` more than
    :data:`MAX_ALTERNATIVES` alternatives per token position over all choices."""
    choices = prompts * n
    most = max(MAX_CHOICES, config.max_n)
    asked = f"{prompts} prompt" + ("s" if prompts > 1 else "") + (f" x n={n}" if n > 1 else "")
    if choices > most:
        raise RequestError(
            f"this request asks for {choices} choices ({asked}); at most {most} per request: "
            "send fewer prompts per request or a smaller n",
            param="n",  # prompts alone are fewer (MAX_PROMPTS)
            code="invalid_value",
        )
    if logprobs and choices * logprobs > MAX_ALTERNATIVES:
        raise RequestError(
            f"this request asks for {choices} choices ({asked}) with logprobs {logprobs}, "
            f"{choices * logprobs} alternatives per token; at most {MAX_ALTERNATIVES} per "
            "request: send fewer prompts per request or a smaller logprobs",
            param="logprobs",
            code="invalid_value",
        )


# -- answering --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Choice:
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None
    completion_tokens: int


def _encode(tokenizer: Any, prompts: Sequence[str | list[int]]) -> list[list[int]]:
    vocab = len(tokenizer)
    encoded = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            # verbose=False: no "Token indices sequence length is longer than ..." warning in
            # the log, because _check_context refuses such a prompt itself
            ids = [int(t) for t in tokenizer(prompt, verbose=False)["input_ids"]]
            if not ids:
                raise RequestError(
                    f"prompt[{i}] has no tokens", param="prompt", code="invalid_value"
                )
        else:
            ids = list(prompt)
            bad = next((t for t in ids if t >= vocab), None)
            if bad is not None:
                raise RequestError(
                    f"prompt[{i}] holds token id {bad}, outside the vocabulary (0..{vocab - 1})",
                    param="prompt",
                    code="invalid_value",
                )
        encoded.append(ids)
    return encoded


def _context_limit(model: Any) -> int | None:
    """The context a request must fit in: ``model.context_length`` (from its config, as the chat
    route and the audit check it), or else the context its tokenizer declares
    (``model_max_length``; tokenizers that declare none have a huge placeholder there); the
    smaller when both are declared; None when neither is."""
    declared = getattr(model.tokenizer, "model_max_length", None)
    limits = [
        limit
        for limit in (getattr(model, "context_length", None), declared)
        if isinstance(limit, int) and limit < _NO_DECLARED_LIMIT
    ]
    return min(limits) if limits else None


def _check_max_tokens(model: Any, max_tokens: int) -> None:
    """A 400 naming ``max_tokens`` when it alone is more than the model's context: no prompt
    can fit, and the prompt is not what to shorten."""
    limit = _context_limit(model)
    if limit is not None and max_tokens > limit:
        raise RequestError(
            f"max_tokens {max_tokens} is more than the model's context of {limit} tokens, "
            "which holds the prompt and the completion together",
            param="max_tokens",
            code="invalid_value",
        )


def _check_characters(model: Any, prompts: Sequence[str | list[int]], max_tokens: int) -> None:
    """Refuse, before tokenizing, a text prompt whose length in characters alone proves it too
    long for the context (so a huge prompt costs neither time nor memory), with the bound of
    :func:`poise.models.context.tokens_at_least`, as ``fit_context`` bounds chat messages.
    Anything shorter is tokenized and counted exactly (:func:`_check_context`)."""
    texts = [(i, p) for i, p in enumerate(prompts) if isinstance(p, str)]
    limit = _context_limit(model) if texts else None
    if limit is None:
        return
    for i, prompt in texts:
        at_least = tokens_at_least(model.tokenizer, len(prompt))
        if at_least is None:
            return
        if at_least + max_tokens > limit:
            raise RequestError(
                f"This model's maximum context length is {limit} tokens. However, prompt[{i}] "
                f"is at least {at_least} tokens long ({len(prompt)} characters), and "
                f"{max_tokens} are asked for the completion. Please reduce the prompt or "
                "max_tokens.",
                param="prompt",
                code="context_length_exceeded",
            )


def _check_context(model: Any, prompts: list[list[int]], max_tokens: int) -> None:
    """A 400 (as OpenAI and vLLM word it) for a prompt plus ``max_tokens`` longer than the
    model's context (:func:`_context_limit`)."""
    limit = _context_limit(model)
    if limit is None:
        return
    for i, prompt in enumerate(prompts):
        if len(prompt) + max_tokens > limit:
            raise RequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(prompt) + max_tokens} tokens ({len(prompt)} in prompt[{i}], {max_tokens} "
                "for the completion). Please reduce the prompt or max_tokens.",
                param="prompt",
                code="context_length_exceeded",
            )


# the status a request whose client left is logged with (nginx's "client closed request")
CLIENT_CLOSED_REQUEST = 499


def _stop_when(ended: threading.Event) -> Callable[[StepView], None]:
    """A logits hook that ends the generation at the next decoding step once ``ended`` is set
    (the server is stopping, or the client left): ``complete`` runs in a worker thread that
    nothing else can stop, and the interpreter waits for such threads before it exits."""

    def hook(view: StepView) -> None:
        if ended.is_set():
            raise shutdown_error()

    return hook


def _complete(
    model: Any, prompts: list[list[int]], parsed: CompletionRequest, ended: threading.Event
) -> list[list[Completion]]:
    """``model.complete`` over ``prompts``. Its rows are seeded from (seed, prompt, sample), so
    without the client's seed the k-th copy of a prompt the request repeats is generated in a
    k-th call, with a fresh seed of its own: the copies are independent samples, as OpenAI's
    and vLLM's are (with the client's seed they repeat, as vLLM's do)."""
    hook = _stop_when(ended)
    if parsed.seeded or parsed.sampling.greedy:
        return list(model.complete(prompts, parsed.sampling, logits_hook=hook))
    rounds: list[list[int]] = []  # prompt indices: the k-th copies of each prompt
    copies: dict[tuple[int, ...], int] = {}
    for i, prompt in enumerate(prompts):
        k = copies.get(tuple(prompt), 0)
        copies[tuple(prompt)] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(i)
    generated: list[list[Completion]] = [[] for _ in prompts]
    for k, rows in enumerate(rounds):
        sampling = parsed.sampling
        if k:
            sampling = sampling.model_copy(update={"seed": fresh_seed()})
        found = model.complete([prompts[i] for i in rows], sampling, logits_hook=hook)
        for i, completions in zip(rows, found, strict=True):
            generated[i] = list(completions)
    return generated


def _answer_sync(
    model: Any, parsed: CompletionRequest, ended: threading.Event
) -> tuple[list[_Choice], int]:
    """The choices of a request (prompt-major, sample-minor) and its prompt token count; once
    ``ended`` is set, a :func:`shutdown_error` at the next decoding step."""
    tokenizer = model.tokenizer
    _check_max_tokens(model, parsed.max_tokens)
    _check_characters(model, parsed.prompts, parsed.max_tokens)
    prompts = _encode(tokenizer, parsed.prompts)
    _check_context(model, prompts, parsed.max_tokens)
    n = parsed.sampling.n
    generated: list[list[Completion]]
    if parsed.max_tokens == 0:
        generated = [[Completion(text="", num_tokens=0, finish_reason="length", token_ids=())] * n]
        generated = generated * len(prompts)
    else:
        generated = _complete(model, prompts, parsed, ended)
    scored: list[SequenceLogprobs] | None = None
    if parsed.logprobs is not None:
        if ended.is_set():
            raise shutdown_error()
        sequences = [
            p + list(c.token_ids or ())
            for p, cs in zip(prompts, generated, strict=True)
            for c in cs
        ]
        starts = [0 if parsed.echo else len(p) for p in prompts for _ in range(n)]
        scored = model.sequence_logprobs(sequences, top_k=parsed.logprobs, start=starts)
    choices = []
    for i, (prompt, completions) in enumerate(zip(prompts, generated, strict=True)):
        given = parsed.prompts[i]
        prefix = ""
        if parsed.echo:
            prefix = (
                given
                if isinstance(given, str)
                else str(tokenizer.decode(prompt, skip_special_tokens=False))
            )
        # A choice's text is the echoed prompt (as given, or its ids decoded with their special
        # tokens) and then the completion's text (decoded without them): each part's tokens are
        # placed in that part.
        prompt_offsets: list[int] = []
        if scored is not None and parsed.echo:
            prompt_offsets = text_offsets(tokenizer, prompt, prefix, skip_special_tokens=False)
        for j, completion in enumerate(completions):
            logprobs = None
            if scored is not None:
                found = text_offsets(
                    tokenizer, completion.token_ids or (), completion.text, skip_special_tokens=True
                )
                offsets = prompt_offsets + [len(prefix) + o for o in found]
                logprobs = completion_logprobs(
                    tokenizer, scored[i * n + j], parsed.logprobs or 0, offsets
                )
            choices.append(
                _Choice(
                    text=str(prefix) + completion.text,
                    finish_reason=_FINISH_REASONS.get(completion.finish_reason, "stop"),
                    logprobs=logprobs,
                    # what was decoded, the EOS that ended the answer included
                    completion_tokens=generated_tokens(completion),
                )
            )
    return choices, sum(len(p) for p in prompts)


def add_completions_route(
    app: FastAPI,
    model: LanguageModel,
    config: ServeConfig,
    *,
    firewall: Callable[[Sequence[str], str], None] | None = None,
    ending: Callable[[], contextlib.AbstractContextManager[threading.Event]],
) -> None:
    """Register ``POST /v1/completions`` for ``model`` served as ``config.name``; with
    ``firewall`` (``poise serve --firewall``), each prompt is checked as a chat's last user turn
    is, so that raw prompts are no way around it. ``ending()`` gives each request an event the
    server sets when it ends the requests in flight (shutdown; ``ServerState.ending``); the
    request's generation also ends when its client disconnects."""

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            parsed = parse_completion_request(await request.body(), config)
            if parsed.model not in {config.name, model.name}:
                raise RequestError(
                    f"the model {parsed.model!r} does not exist; this server serves "
                    f"{config.name!r}",
                    status=404,
                    param="model",
                    code="model_not_found",
                )
            if not model.capabilities.tokens or model.tokenizer is None:
                raise RequestError(
                    f"/v1/completions needs a model that takes raw token prompts (the tokens "
                    f"capability); {model.name} does not: use /v1/chat/completions",
                    status=501,
                    type="not_implemented_error",
                    code="not_implemented",
                )
            if firewall is not None:
                texts = [
                    p if isinstance(p, str) else model.tokenizer.decode(p, skip_special_tokens=True)
                    for p in parsed.prompts
                ]
                await asyncio.to_thread(firewall, texts, "prompt")
            if not parsed.seeded:
                parsed = _with_seed(parsed, fresh_seed())
            with ending() as ended:
                # a client that leaves ends its generation too: it would hold the model (one
                # request at a time) until its last token
                gone = threading.Event()
                watcher = asyncio.ensure_future(_end_when_gone(request, ended, gone))
                try:
                    choices, prompt_tokens = await run_in_thread(_answer_sync, model, parsed, ended)
                except RequestError:
                    if gone.is_set():  # no one to answer: nginx's 499, not "shutting down"
                        return Response(status_code=CLIENT_CLOSED_REQUEST)
                    raise
                finally:
                    watcher.cancel()
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except PoiseError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return JSONResponse(error_body(first), status_code=400)
        except Exception:
            # answered here, as the chat route answers it: left to the app's handler, the error
            # would be logged twice, the second time by uvicorn as "Exception in ASGI application"
            logger.exception("unexpected error while answering a completion")
            body = error_body(
                "internal server error (see the server log)",
                type="server_error",
                code="internal_error",
            )
            return JSONResponse(body, status_code=500)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": sum(c.completion_tokens for c in choices),
            "total_tokens": prompt_tokens + sum(c.completion_tokens for c in choices),
        }
        completion_id = f"cmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        if parsed.stream:
            return StreamingResponse(
                _sse(completion_id, created, config.name, choices, parsed, usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return JSONResponse(
            {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": config.name,
                "choices": [
                    {
                        "index": i,
                        "text": c.text,
                        "logprobs": c.logprobs,
                        "finish_reason": c.finish_reason,
                    }
                    for i, c in enumerate(choices)
                ],
                "usage": usage,
            }
        )


async def _end_when_gone(request: Request, ended: threading.Event, gone: threading.Event) -> None:
    """Set ``gone`` and ``ended`` once the client of ``request`` has disconnected."""
    while not ended.is_set():
        if await request.is_disconnected():
            gone.set()
            ended.set()
            return
        await asyncio.sleep(0.1)


def _with_seed(parsed: CompletionRequest, seed: int) -> CompletionRequest:
    from dataclasses import replace

    return replace(parsed, sampling=parsed.sampling.model_copy(update={"seed": seed}))


async def _sse(
    completion_id: str,
    created: int,
    name: str,
    choices: list[_Choice],
    parsed: CompletionRequest,
    usage: dict[str, int],
) -> AsyncIterator[bytes]:
    """OpenAI's streamed text completion: chunks of ``choices[0].text`` per choice, the last
    with its ``finish_reason``, the usage if asked for, then ``data: [DONE]``."""

    def chunk(index: int, text: str, logprobs: Any, finish: str | None) -> bytes:
        body = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "choices": [
                {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            ],
        }
        return b"data: " + json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n\n"

    for index, choice in enumerate(choices):
        if choice.logprobs is not None:
            yield chunk(index, choice.text, choice.logprobs, None)
        else:
            for piece in text_pieces(choice.text):
                yield chunk(index, piece, None, None)
                # the text is all there: let the loop see a client that left (else every
                # chunk after it is written to a closed socket, with a warning in the log each)
                await asyncio.sleep(0)
        yield chunk(index, "", None, choice.finish_reason)
        await asyncio.sleep(0)
    if parsed.include_usage:
        body = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "choices": [],
            "usage": usage,
        }
        yield b"data: " + json.dumps(body).encode("utf-8") + b"\n\n"
    yield b"data: [DONE]\n\n"
