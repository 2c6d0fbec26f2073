"""``poise serve``: an OpenAI-compatible HTTP server over any ``LanguageModel``.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (with
``stream: true`` answered as server-sent events). Concurrent requests are batched into
``generate`` calls by :class:`~poise.serve.batcher.Batcher`. Every refused request gets an
OpenAI-style JSON error (400 for a malformed request, 404 for an unknown model or route);
an unexpected failure is logged and answered with a 500 JSON error, and the server keeps going.

Use from Python::

    from poise.serve.app import create_app, serve
    app = create_app(model, ServeConfig(served_name="my-model"))   # an ASGI app, for tests
    serve(ServeConfig(model="organism", port=8000))                 # blocks, like the CLI

FastAPI and uvicorn are imported here, so import this module lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from poise.errors import PoiseError
from poise.models.base import Chat, Completion, LanguageModel
from poise.serve.batcher import Batcher, Generation
from poise.serve.schema import (
    ChatRequest,
    RequestError,
    ServeConfig,
    error_body,
    error_from_details,
    parse_request,
)

logger = logging.getLogger(__name__)

# A streamed completion is cut into word-sized pieces: each piece is a run of whitespace and the
# following word, so the pieces concatenate to the text exactly.
_PIECE = re.compile(r"\s*\S+|\s+")
_FINISH_REASONS = {"stop": "stop", "length": "length", "guard": "content_filter"}


class ServerState:
    """What the handlers share: the model, its batcher and a few live counters."""

    def __init__(self, model: LanguageModel, config: ServeConfig) -> None:
        self.model = model
        self.config = config
        self.batcher = Batcher(
            model,
            max_batch=config.max_batch,
            window_s=config.batch_window_ms / 1000.0,
            count_prompt_tokens=prompt_token_counter(model),
        )
        self.streams = 0  # streaming responses being written
        self.waiting = 0  # handlers waiting for their generation
        self.created = int(time.time())

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.config.name,
            "pending": self.batcher.pending,
            "running": self.batcher.running,
            "waiting": self.waiting,
            "streams": self.streams,
            "generate_calls": self.batcher.generate_calls,
            "generated_chats": self.batcher.generated_chats,
            # asyncio tasks alive in the server's loop (this request's included): returns to its
            # idle value when no request is in flight, so a leak shows.
            "tasks": len(asyncio.all_tasks()),
        }


def create_app(model: LanguageModel, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving ``model`` under ``config.name``."""
    config = config or ServeConfig()
    state = ServerState(model, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.batcher.start()
        try:
            yield
        finally:
            await state.batcher.stop()

    app = FastAPI(title="poise serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.poise = state
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return state.health()

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        if model_id not in _accepted_names(state):
            return _error(_unknown_model(model_id, state))
        return JSONResponse(_model_card(state))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            parsed = parse_request(await request.body(), config)
            if parsed.model not in _accepted_names(state):
                raise _unknown_model(parsed.model, state)
            generation = await _generate_unless_gone(state, request, parsed)
            if generation is None:
                # Nobody is listening any more; this response is never read.
                return Response(status_code=499)
            if parsed.stream:
                return _TrackedStream(state, _sse_events(state, parsed, generation))
            return JSONResponse(_completion_body(state, parsed, generation))
        except RequestError as exc:
            return _error(exc)
        except PoiseError as exc:
            # The model refused the request's values (e.g. a prompt longer than its context).
            return _error(RequestError(str(exc)))
        except Exception:
            logger.exception("unexpected error while answering a chat completion")
            return _error(
                RequestError(
                    "internal server error (see the server log)",
                    status=500,
                    type="server_error",
                    code="internal_error",
                )
            )

    return app


def serve(
    config: ServeConfig,
    *,
    model: LanguageModel | None = None,
    on_ready: Callable[[LanguageModel], None] | None = None,
) -> None:
    """Load ``config.model`` (unless ``model`` is given) and serve it until interrupted."""
    import uvicorn

    check_port(config.host, config.port)
    if model is None:
        from poise.models import load_model

        model = load_model(config.model)
    app = create_app(model, config)
    if on_ready is not None:
        on_ready(model)
    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="info" if verbose else "warning",
        access_log=verbose,
        # One process, one model: batching, not workers, is how this server scales.
        workers=1,
        timeout_graceful_shutdown=5,
    )


def check_port(host: str, port: int) -> None:
    """Fail early, before a model is loaded, when ``host:port`` cannot be listened on."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise PoiseError(f"poise serve: cannot resolve host {host!r}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As uvicorn does, so that a port in TIME_WAIT is not reported as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise PoiseError(
                f"poise serve: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None


# -- request handling -------------------------------------------------------------------------------


async def _generate_unless_gone(
    state: ServerState, request: Request, parsed: ChatRequest
) -> Generation | None:
    """Queue the request and wait for its generation; ``None`` if the client disconnected first
    (the request is then withdrawn from the queue, so nothing is generated for it)."""
    future = state.batcher.submit(parsed.chat, parsed.sampling, seeded=parsed.seeded)
    watcher: asyncio.Future[None] = asyncio.ensure_future(_wait_for_disconnect(request))
    state.waiting += 1
    try:
        waits: set[asyncio.Future[Any]] = {future, watcher}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        state.waiting -= 1
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if not future.done():
            future.cancel()
    if future.cancelled():
        return None
    exc = future.exception()
    if exc is not None:
        raise exc
    return future.result()


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _accepted_names(state: ServerState) -> set[str]:
    return {state.config.name, state.model.name}


def _unknown_model(name: str, state: ServerState) -> RequestError:
    return RequestError(
        f"the model {name!r} does not exist; this server serves {state.config.name!r}",
        status=404,
        param="model",
        code="model_not_found",
    )


def _model_card(state: ServerState) -> dict[str, Any]:
    return {
        "id": state.config.name,
        "object": "model",
        "created": state.created,
        "owned_by": "poise",
    }


def _completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def _usage(generation: Generation) -> dict[str, int]:
    prompt = generation.prompt_tokens or 0
    completion = sum(c.num_tokens for c in generation.completions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion_body(
    state: ServerState, parsed: ChatRequest, generation: Generation
) -> dict[str, Any]:
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": state.config.name,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": _FINISH_REASONS.get(c.finish_reason, "stop"),
                "logprobs": None,
            }
            for i, c in enumerate(generation.completions)
        ],
        "usage": _usage(generation),
    }


# -- streaming --------------------------------------------------------------------------------------


def text_pieces(text: str) -> list[str]:
    """``text`` cut into word-sized pieces whose concatenation is ``text``."""
    return _PIECE.findall(text)


async def _sse_events(
    state: ServerState, parsed: ChatRequest, generation: Generation
) -> AsyncIterator[bytes]:
    """The completions as server-sent events.

    ``LanguageModel.generate`` returns whole completions, so this streams the finished text in
    word-sized chunks: a client sees OpenAI's streaming protocol (a role delta, content deltas,
    a final chunk with ``finish_reason``, ``data: [DONE]``) but not earlier tokens. Token-level
    streaming needs a streaming generate in the model protocol (later, for guards).
    """
    completion_id = _completion_id()
    created = int(time.time())

    def event(index: int, delta: dict[str, str], finish: str | None) -> bytes:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": state.config.name,
            "choices": [
                {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            ],
        }
        return b"data: " + json.dumps(chunk, ensure_ascii=False).encode("utf-8") + b"\n\n"

    for index, completion in enumerate(generation.completions):
        yield event(index, {"role": "assistant", "content": ""}, None)
        for piece in text_pieces(completion.text):
            yield event(index, {"content": piece}, None)
            # Let other connections write between chunks.
            await asyncio.sleep(0)
        yield event(index, {}, _finish(completion))
    if parsed.include_usage:
        usage_chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": state.config.name,
            "choices": [],
            "usage": _usage(generation),
        }
        yield b"data: " + json.dumps(usage_chunk).encode("utf-8") + b"\n\n"
    yield b"data: [DONE]\n\n"


def _finish(completion: Completion) -> str:
    return _FINISH_REASONS.get(completion.finish_reason, "stop")


class _TrackedStream(StreamingResponse):
    """A server-sent-event response that counts itself in ``/health`` and always closes its
    generator, also when the client disconnects mid-stream (the stream is then cancelled
    without disturbing other connections)."""

    def __init__(self, state: ServerState, events: AsyncIterator[bytes]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._state = state
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._state.streams += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._state.streams -= 1
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()


# -- errors -----------------------------------------------------------------------------------------


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _install_error_handlers(app: FastAPI) -> None:
    """OpenAI-style error bodies for everything FastAPI itself would answer differently."""

    async def on_validation(_: Request, exc: Exception) -> Response:
        # FastAPI answers 422 with its own shape; OpenAI clients expect 400 and an error object.
        assert isinstance(exc, RequestValidationError)
        return _error(error_from_details(list(exc.errors())))

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(
            error_body(str(exc.detail), code=code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        logger.error("unexpected error", exc_info=exc)
        return JSONResponse(
            error_body(
                "internal server error (see the server log)",
                type="server_error",
                code="internal_error",
            ),
            status_code=500,
        )

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


# -- helpers ----------------------------------------------------------------------------------------


def prompt_token_counter(model: LanguageModel) -> Callable[[Chat], int | None] | None:
    """A function counting a chat's prompt tokens with the model's chat template, when the model
    exposes a Hugging Face tokenizer (as the hf backend does); else ``None``."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        return None

    def count(chat: Chat) -> int | None:
        try:
            ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        except Exception:
            return None
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)

    return count
