"""``poise serve``: an OpenAI-compatible HTTP server over any ``LanguageModel``.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (with
``stream: true`` answered as server-sent events; ``logprobs`` / ``top_logprobs`` by
:mod:`poise.serve.logprobs`), ``POST /v1/completions`` (:mod:`poise.serve.completions`) and
``GET /openapi.json`` (:mod:`poise.serve.openapi`). A model with the ``engine`` capability is
served by continuous batching (:class:`~poise.serve.continuous.ContinuousBatcher`): requests join
the running batch at the next decoding step and a stream sends each token's text as soon as it is
decoded. Other models are served by :class:`~poise.serve.batcher.Batcher`, which batches
concurrent requests into ``generate`` (or ``stream``) calls. Every refused request gets an
OpenAI-style JSON error (400 for a malformed request or one longer than the model's context,
401 for a missing or wrong API key, 404 for an unknown model or route, 413 for a body over the
limit; see :mod:`poise.serve.access` and :mod:`poise.models.context`); an unexpected failure is
logged and answered with a 500 JSON error, and the server keeps going. A request fails alone:
the requests batched with it are answered as if it had not come. At shutdown the requests in
flight get a short grace, then end with an error (:func:`make_server`). docs/serving.md has the
user's view.

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
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from poise.config import Sampling
from poise.errors import PoiseError
from poise.guards.record import generated_tokens
from poise.models.base import (
    Chat,
    Completion,
    GenerationError,
    LanguageModel,
    NoChatTemplateError,
    StreamEvent,
    UpstreamError,
    system_prompt_in_template,
)
from poise.models.context import ContextLengthError, fit_context, prompt_token_count
from poise.serve.access import AccessGuard
from poise.serve.batcher import Batcher, text_pieces
from poise.serve.completions import CompletionRequestBody, add_completions_route
from poise.serve.continuous import SHUTDOWN, ContinuousBatcher
from poise.serve.logprobs import add_chat_logprobs, check_tokens_capability, stream_logprobs
from poise.serve.openapi import document_request_bodies
from poise.serve.schema import (
    ChatRequest,
    ChatRequestBody,
    RequestError,
    ServeConfig,
    error_body,
    error_from_details,
    parse_request,
    shutdown_error,
)
from poise.serve.ticket import Generation, Ticket

if TYPE_CHECKING:
    from poise.probes.firewall import Firewall

__all__ = [
    "admission",
    "check_firewall",
    "check_port",
    "create_app",
    "exposure_warning",
    "failed_upstream",
    "load_served_model",
    "make_server",
    "prompt_token_counter",
    "renders_chats",
    "serve",
    "text_pieces",
]

logger = logging.getLogger(__name__)

_FINISH_REASONS = {"stop": "stop", "length": "length", "guard": "content_filter"}
T = TypeVar("T")

# At shutdown (Ctrl-C, SIGTERM) the requests in flight get SHUTDOWN_GRACE_S to finish; those
# still running are then ended with an error (a stream's ``error`` event, a waiting request's
# 503), which they have until SHUTDOWN_TIMEOUT_S to send: then uvicorn cancels what is left.
SHUTDOWN_GRACE_S = 2.0
SHUTDOWN_TIMEOUT_S = 5


class _ShuttingDown(Exception):
    """What a request still in flight when the server stops is failed with."""

    def __init__(self) -> None:
        super().__init__(SHUTDOWN)


class Scheduler(Protocol):
    """What the handlers need of a batcher (both batchers implement it)."""

    @property
    def pending(self) -> int: ...

    @property
    def running(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def open(
        self,
        chat: Chat,
        sampling: Sampling,
        *,
        seeded: bool,
        stream: bool = True,
        fill: bool = False,
    ) -> Ticket: ...


class ServerState:
    """What the handlers share: the model, its scheduler and a few live counters."""

    def __init__(self, model: LanguageModel, config: ServeConfig) -> None:
        self.model = model
        self.config = config
        self.scheduler: Scheduler
        if model.capabilities.engine:
            self.scheduler = ContinuousBatcher(
                model,
                max_rows=config.max_batch,
                join_rows=config.join_rows,
                join_wait_s=config.join_wait_ms / 1000.0,
                window_s=config.batch_window_ms / 1000.0,
                admit=admission(model),
            )
        else:
            self.scheduler = Batcher(
                model,
                max_batch=config.max_batch,
                window_s=config.batch_window_ms / 1000.0,
                admit=admission(model),
            )
        self.streams = 0  # streaming responses being written
        self.waiting = 0  # handlers waiting for their generation (or its first event)
        self.created = int(time.time())
        self.shutting_down = False  # the server is stopping (see make_server)
        self._ended = False  # ... and has ended the requests in flight
        self._in_flight: set[Ticket] = set()  # the chat requests' open tickets
        self._endings: set[threading.Event] = set()  # the /v1/completions requests' (ending)

    def open(self, parsed: ChatRequest) -> Ticket:
        """Open ``parsed``'s ticket, kept until :meth:`release` so that shutdown can end it."""
        ticket = self.scheduler.open(
            parsed.chat,
            parsed.sampling,
            seeded=parsed.seeded,
            stream=parsed.stream,
            fill=parsed.fill_max_tokens,
        )
        self._in_flight.add(ticket)
        if self._ended:  # came in on a connection that was open when the requests were ended
            _end(ticket)
        return ticket

    def release(self, ticket: Ticket) -> None:
        """``ticket``'s response is over: cancel what is left of it (a client that left)."""
        ticket.cancel()  # no-op for a finished ticket
        self._in_flight.discard(ticket)

    @contextlib.contextmanager
    def ending(self) -> Iterator[threading.Event]:
        """An event that :meth:`end_requests` sets, for a request that runs outside the
        scheduler (``/v1/completions``, which stops decoding once it is set)."""
        event = threading.Event()
        self._endings.add(event)
        if self._ended:
            event.set()
        try:
            yield event
        finally:
            self._endings.discard(event)

    def end_requests(self) -> None:
        """End every request in flight (the server is stopping): a stream sends what was
        decoded, then the ``error`` event; a request still waiting gets a 503."""
        self._ended = True
        for ticket in list(self._in_flight):
            _end(ticket)
        for event in list(self._endings):
            event.set()

    def health(self) -> dict[str, Any]:
        scheduler = self.scheduler
        continuous = isinstance(scheduler, ContinuousBatcher)
        steps = scheduler.steps if isinstance(scheduler, ContinuousBatcher) else 0
        calls, chats = (
            (scheduler.generate_calls, scheduler.generated_chats)
            if isinstance(scheduler, Batcher)
            else (0, 0)
        )
        return {
            "status": "ok",
            "model": self.config.name,
            # "continuous" (an engine stepped by one worker) or "batch" (generate calls)
            "batching": "continuous" if continuous else "batch",
            "pending": scheduler.pending,
            "running": scheduler.running,
            "waiting": self.waiting,
            "streams": self.streams,
            "steps": steps,
            # continuous batching: requests accepted and not yet finished (0 when idle, so a
            # request never let go of shows); null in batch mode, which keeps none
            "open": scheduler.open_requests if isinstance(scheduler, ContinuousBatcher) else None,
            "generate_calls": calls,
            "generated_chats": chats,
            # asyncio tasks alive in the server's loop (this request's included): returns to its
            # idle value when no request is in flight, so a leak shows.
            "tasks": len(asyncio.all_tasks()),
        }


def _end(ticket: Ticket) -> None:
    if ticket.done:
        return
    ticket.fail(_ShuttingDown())  # its reader gets what was decoded, then this
    # ... and its rows stop decoding (Ticket.cancel does nothing to a failed ticket)
    if ticket.on_cancel is not None:
        ticket.on_cancel(ticket)


def create_app(
    model: LanguageModel, config: ServeConfig | None = None, *, firewall: Firewall | None = None
) -> FastAPI:
    """The ASGI app serving ``model`` under ``config.name``; ``firewall``: ``config``'s, when the
    caller has loaded it already (:func:`check_firewall`), else it is loaded here."""
    config = config or ServeConfig()
    _quiet_length_warning(model)
    state = ServerState(model, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.scheduler.start()
        try:
            yield
        finally:
            await state.scheduler.stop()

    guard = _firewall_guard(model, config, firewall)
    chats = renders_chats(model)
    app = FastAPI(title="poise serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.poise = state
    _install_error_handlers(app)
    # The API key and the body size limit, in front of every route (see poise.serve.access).
    app.add_middleware(AccessGuard, api_key=config.api_key, max_body_bytes=config.max_body_bytes)

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
            if not chats:
                raise _no_chat_template(state)
            if parsed.logprobs:
                check_tokens_capability(state.model, "logprobs")
            if guard is not None:
                # every user turn: the model reads the whole chat, so an off-role request in an
                # earlier turn (a history the client wrote) is as much the query as the last
                # turn; a chat without one (a request put in a system message) is checked on
                # its last message, not let through unchecked
                turns = [i for i, m in enumerate(parsed.chat) if m["role"] == "user"]
                turns = turns or [len(parsed.chat) - 1]
                await asyncio.to_thread(
                    guard,
                    [parsed.chat[i]["content"] for i in turns],
                    "messages",
                    [f"messages[{i}].content" for i in turns],
                )
            check = getattr(state.model, "check_sampling", None)
            if callable(check):  # a strategy's refusal of these settings, as the audit's
                check(parsed.sampling)  # (best_of_n under greedy: N identical draws)
            return await _answer(state, request, parsed)
        except RequestError as exc:
            return _error(exc)
        except _ShuttingDown:
            return _error(shutdown_error())
        except ContextLengthError as exc:
            return _error(RequestError(str(exc), param="messages", code="context_length_exceeded"))
        except NoChatTemplateError:
            return _error(_no_chat_template(state))
        except PoiseError as exc:
            if failed_upstream(exc):
                # the server behind the model failed, not the request: a 502, which clients retry
                return _error(_upstream_error(exc))
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

    add_completions_route(app, model, config, firewall=guard, ending=state.ending)
    document_request_bodies(
        app,
        {"/v1/chat/completions": ChatRequestBody, "/v1/completions": CompletionRequestBody},
    )
    return app


# transformers' key for "Token indices sequence length is longer than the specified maximum
# sequence length for this model ... will result in indexing errors", which it logs once per
# tokenizer unless this flag is set
_LENGTH_WARNING = "sequence-length-is-longer-than-the-specified-maximum"


def _quiet_length_warning(model: LanguageModel) -> None:
    """Keep transformers' warning about a sequence longer than the tokenizer's maximum out of the
    server log when the server checks every request's length itself (a model that knows its
    context: :func:`admission`): such a request is refused with a 400, never run."""
    warnings = getattr(model.tokenizer, "deprecation_warnings", None)
    if model.context_length is not None and isinstance(warnings, dict):
        warnings[_LENGTH_WARNING] = True


class _Guard(Protocol):
    def __call__(
        self, queries: Sequence[str], param: str, where: Sequence[str] | None = None
    ) -> None: ...


def _firewall_guard(
    model: LanguageModel, config: ServeConfig, firewall: Firewall | None = None
) -> _Guard | None:
    """With ``config.firewall``: ``check(queries, param, where=None)``, which raises a 400
    naming the reason and where the flagged query is (``where[i]``, else ``param``, or
    ``param[i]`` among several) when a query (each user turn of a chat request, each prompt of
    a completion request) falls outside ``config.firewall_role``'s zone
    (``poise.probes.firewall``)."""
    if firewall is None:
        firewall = check_firewall(config)
    if firewall is None:
        return None
    role = config.firewall_role
    assert role is not None
    served = {model.spec, model.name} - {None, ""}
    if firewall.model and firewall.model not in served:
        # a firewall's zones are one model's activations: another model of the same shape
        # passes the layer checks below and is guarded by distances that mean nothing for it
        logger.warning(
            "firewall: fitted on %s, guarding %s: its zones describe the activations of the "
            "model it was fitted on; fit it again on the served model (poise firewall fit)",
            firewall.model,
            model.spec or model.name,
        )
    # one query at start: a model without activations, or with other layers than the
    # firewall's, fails now rather than on every request
    firewall.scores(model, role, ["hello"])

    def check(queries: Sequence[str], param: str, where: Sequence[str] | None = None) -> None:
        for i, verdict in enumerate(firewall.check(model, role, queries)):
            if verdict.flagged:
                if where is not None:
                    at = where[i]
                else:
                    at = param if len(queries) == 1 else f"{param}[{i}]"
                raise RequestError(f"firewall: {verdict.reason}", code="firewall", param=at)

    return check


def check_firewall(config: ServeConfig) -> Firewall | None:
    """``config``'s firewall (None without ``--firewall``), once its flags are checked: both
    given, a firewall folder, a role it has. Cheap, so the CLI calls it before loading the model:
    a wrong flag fails at start, not per request nor after minutes of loading."""
    if config.firewall is None:
        if config.firewall_role is not None:
            raise PoiseError("poise serve --firewall-role needs --firewall (the firewall folder)")
        return None
    from poise.probes.firewall import load_firewall

    firewall = load_firewall(config.firewall)
    if config.firewall_role is None:
        raise PoiseError("poise serve --firewall needs --firewall-role (the role to allow)")
    firewall.zone(config.firewall_role)
    return firewall


def serve(
    config: ServeConfig,
    *,
    model: LanguageModel | None = None,
    firewall: Firewall | None = None,
    on_ready: Callable[[LanguageModel], None] | None = None,
) -> bool:
    """Load ``config.model`` (unless ``model`` is given) and serve it until interrupted;
    ``firewall``: ``config``'s, when the caller has loaded it (:func:`check_firewall`).

    Returns whether a call of the model was still running when the server stopped: a model
    without an engine (an ``openai:`` model, a decoding strategy) cannot be interrupted in a
    ``generate`` call, and its worker thread runs on until the call returns (a remote request
    may take minutes), though every request has been answered. A process about to exit should
    then not wait for that thread (``poise serve`` exits at once)."""
    check_port(config.host, config.port)
    warning = exposure_warning(config.host, config.api_key)
    if warning is not None:
        logger.warning(warning)
    if firewall is None:  # checked before the model loads, and loaded once
        firewall = check_firewall(config)
    if model is None:
        model = load_served_model(config.model, **config.model_options)
    app = create_app(model, config, firewall=firewall)
    if on_ready is not None:
        on_ready(model)
    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    server = make_server(
        app, config, log_level="info" if verbose else "warning", access_log=verbose
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn raises the Ctrl-C again once stopped
        server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn has logged why (as uvicorn.run exits)
    scheduler = app.state.poise.scheduler
    return isinstance(scheduler, Batcher) and scheduler.calling


def make_server(
    app: FastAPI,
    config: ServeConfig,
    *,
    grace_s: float = SHUTDOWN_GRACE_S,
    timeout_s: int = SHUTDOWN_TIMEOUT_S,
    log_level: str = "warning",
    access_log: bool = False,
) -> uvicorn.Server:
    """A uvicorn server of ``app`` (:func:`create_app`) on ``config.host:config.port``, whose
    shutdown gives the requests in flight ``grace_s`` seconds to finish, then ends them with an
    error, which they have until ``timeout_s`` to send (uvicorn's graceful timeout). ``run()``
    it; ``should_exit = True`` stops it as Ctrl-C does."""
    settings = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        access_log=access_log,
        # One process, one model: batching, not workers, is how this server scales.
        workers=1,
        timeout_graceful_shutdown=timeout_s,
    )
    return _Server(settings, app.state.poise, grace_s)


class _Server(uvicorn.Server):
    """uvicorn's server, which ends the requests still in flight ``grace_s`` after shutdown
    begins (at once at a second Ctrl-C): uvicorn would cancel them at its graceful timeout,
    cutting a stream without its ``error`` event and logging the cancellation's traceback."""

    def __init__(self, config: uvicorn.Config, state: ServerState, grace_s: float) -> None:
        super().__init__(config)
        self.poise_state = state
        self.grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.poise_state.shutting_down = True
        ender = asyncio.ensure_future(self._end_requests())
        try:
            await super().shutdown(sockets)
        finally:
            ender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ender
            # a forced exit (a second Ctrl-C) does not wait for the requests: they end now
            self.poise_state.end_requests()
            if self.force_exit:
                # ... nor does uvicorn shut the app down then, which would leave the model's
                # worker running and the app's lifespan to be cancelled with a traceback
                await self.lifespan.shutdown()

    async def _end_requests(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while not self.force_exit and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.poise_state.end_requests()


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server that anyone on the network can use: one listening on an address
    other than loopback without an API key (None when there is nothing to warn about)."""
    if api_key or _loopback(host):
        return None
    return (
        f"poise serve: listening on {host} without an API key: anyone who can reach this "
        "machine can use the model; set one with --api-key KEY or POISE_API_KEY"
    )


def _loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (``localhost``, 127.0.0.0/8,
    ``::1``); a name that does not resolve counts as exposed."""
    import ipaddress

    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses
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


class _Gone(Exception):
    """The client disconnected while its handler waited."""


async def _answer(state: ServerState, request: Request, parsed: ChatRequest) -> Response:
    """Open the request's ticket; a plain response waits for every row, a stream for the first
    events only (so that a request the model refuses still gets an error status), then sends the
    rest as they are decoded. A client that leaves cancels its rows."""
    ticket = state.open(parsed)
    handed_over = False
    try:
        if not parsed.stream:
            generation = await _unless_gone(state, request, ticket.generation())
            body = _completion_body(state, parsed, generation)
            await add_chat_logprobs(state.model, parsed, generation.completions, body["choices"])
            return JSONResponse(body)
        events = ticket.events()
        first = await _unless_gone(state, request, _first_event(events))
        handed_over = True
        return _TrackedStream(state, ticket, _sse_events(state, parsed, ticket, first, events))
    except _Gone:
        # Nobody is listening any more; this response is never read.
        return Response(status_code=499)
    finally:
        if not handed_over:
            state.release(ticket)


async def _first_event(events: AsyncIterator[StreamEvent]) -> StreamEvent | None:
    return await anext(events, None)


async def _unless_gone(state: ServerState, request: Request, waiting: Awaitable[T]) -> T:
    """``await waiting``, unless the client disconnects first (then :class:`_Gone`)."""
    task: asyncio.Future[T] = asyncio.ensure_future(waiting)
    watcher: asyncio.Future[None] = asyncio.ensure_future(_wait_for_disconnect(request))
    state.waiting += 1
    try:
        waits: set[asyncio.Future[Any]] = {task, watcher}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        state.waiting -= 1
        for future in (watcher, task):
            if not future.done():
                future.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await future
    if task.cancelled():
        raise _Gone
    return task.result()


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def renders_chats(model: LanguageModel) -> bool:
    """Whether ``model`` can render a chat: False for a model whose Hugging Face tokenizer has no
    chat template (a base model, loaded by :func:`load_served_model`), which serves only
    ``/v1/completions``."""
    tokenizer = model.tokenizer
    return not (
        tokenizer is not None
        and hasattr(tokenizer, "apply_chat_template")
        and not getattr(tokenizer, "chat_template", None)
    )


def load_served_model(spec: str, **options: Any) -> LanguageModel:
    """``spec`` loaded for serving, with backend ``options`` (``--model-option``). A model
    whose tokenizer has no chat template (a base model) is loaded all the same, as vLLM serves
    one: ``/v1/completions`` takes raw prompts, and ``/v1/chat/completions`` answers each
    request with a 400 saying the model has no chat template (vLLM's "default chat template is
    no longer allowed")."""
    from poise.models import load_model

    try:
        return load_model(spec, **options)
    except NoChatTemplateError:
        model = load_model(spec, **options, require_chat_template=False)
        logger.warning(
            "%s: the tokenizer has no chat template (a base model): /v1/completions serves raw "
            "prompts, /v1/chat/completions answers 400",
            spec,
        )
        return model


def failed_upstream(exc: BaseException) -> bool:
    """Whether ``exc`` is the failure of the server behind a remote model (unreachable, timed
    out, 5xx through every retry: :class:`~poise.models.base.UpstreamError`), for every chat it
    failed, rather than a refusal of the request."""
    if isinstance(exc, UpstreamError):
        return True
    return (
        isinstance(exc, GenerationError)
        and bool(exc.failures)
        and all(isinstance(exc.errors.get(i), UpstreamError) for i in exc.failures)
    )


def _upstream_error(exc: BaseException) -> RequestError:
    return RequestError(str(exc), status=502, type="server_error", code="upstream_error")


def _no_chat_template(state: ServerState) -> RequestError:
    return RequestError(
        f"the model {state.config.name!r} has no chat template (its tokenizer defines none), so "
        "it cannot answer a chat; send a raw prompt to /v1/completions, or serve a model with "
        "a chat template",
        code="no_chat_template",
    )


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
        # an extension field: whether the model's chat template inserts a default system prompt
        # into a chat without a system message; poise's openai backend reads it, so an audit
        # through this server asks with no system prompt as the in-process one does
        "system_prompt_in_template": system_prompt_in_template(state.model),
    }


def _completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def _usage(generation: Generation) -> dict[str, int]:
    # A model without a tokenizer (mock, an openai: model) cannot count its prompt: 0, not
    # null, which OpenAI clients do not expect there (docs/serving.md says so).
    prompt = generation.prompt_tokens or 0
    # usage counts the tokens decoded: the EOS token that ended an answer included, and a
    # guard's whole answer where it showed fewer or none (poise.guards.record.generated_tokens)
    completion = sum(generated_tokens(c) for c in generation.completions)
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


async def _sse_events(
    state: ServerState,
    parsed: ChatRequest,
    ticket: Ticket,
    first: StreamEvent | None,
    events: AsyncIterator[StreamEvent],
) -> AsyncIterator[bytes]:
    """The request's events as server-sent events, in OpenAI's streaming protocol: a role delta
    per choice, a content delta per event (a token's text from an engine or a streaming model,
    a word-sized piece of the finished text from a model that can only ``generate``), a chunk
    with each choice's ``finish_reason``, the usage if asked for, ``data: [DONE]``.

    A failure after the first event can no longer change the status: it is sent as an
    ``error`` object (as vLLM does) and the stream ends without ``[DONE]``; so does a stream
    the server ends because it is stopping (:meth:`ServerState.end_requests`).
    """
    completion_id = _completion_id()
    created = int(time.time())

    def chunk(index: int, delta: dict[str, str], finish: str | None, logprobs: Any = None) -> bytes:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": state.config.name,
            "choices": [
                {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
            ],
        }
        return _sse(body)

    async def for_event(event: StreamEvent) -> bytes:
        out = b""
        if event.text:
            out += chunk(event.sample_index, {"content": event.text}, None)
        if event.completion is not None:
            # log-probs, when asked for, come with the choice's last chunk, all at once
            logprobs = await stream_logprobs(state.model, parsed, event.completion)
            out += chunk(event.sample_index, {}, _finish(event.completion), logprobs)
        return out

    try:
        yield b"".join(
            chunk(i, {"role": "assistant", "content": ""}, None) for i in range(ticket.n)
        )
        if first is not None:
            yield await for_event(first)
        try:
            async for event in events:
                piece = await for_event(event)
                if piece:
                    yield piece
                    # a model that cannot stream hands over the whole text at once: let the loop
                    # see a client that left (else every piece after it is written to a closed
                    # socket, with a warning in the log each)
                    await asyncio.sleep(0)
        except _ShuttingDown:
            # not this request's failure: nothing for the log
            yield _sse(shutdown_error().body())
            return
        except Exception as exc:
            logger.exception("a streamed generation failed after its first event")
            yield _sse(
                error_body(
                    str(exc) if isinstance(exc, PoiseError) else "internal server error",
                    type="server_error",
                    code="upstream_error" if failed_upstream(exc) else "internal_error",
                )
            )
            return
        if parsed.include_usage:
            yield _sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": state.config.name,
                    "choices": [],
                    "usage": _usage(ticket.result()),
                }
            )
        yield b"data: [DONE]\n\n"
    finally:
        state.release(ticket)  # a client that left mid-stream: its rows stop decoding
        await events.aclose()  # type: ignore[attr-defined]


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n\n"


def _finish(completion: Completion) -> str:
    return _FINISH_REASONS.get(completion.finish_reason, "stop")


class _TrackedStream(StreamingResponse):
    """A server-sent-event response that counts itself in ``/health`` and always closes its
    generator and releases its ticket, also when the client disconnects mid-stream (the stream
    is then cancelled without disturbing other connections)."""

    def __init__(self, state: ServerState, ticket: Ticket, events: AsyncIterator[bytes]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._state = state
        self._ticket = ticket
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._state.streams += 1
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            if not self._state.shutting_down:
                raise
            # uvicorn cancels what still runs when its graceful timeout ends (a client that
            # does not read, a forced exit): the stream ends as an ended one does, instead of
            # being cut with the cancellation's traceback in the log
            await self._send_shutdown_error(send)
        finally:
            self._state.streams -= 1
            self._state.release(self._ticket)
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()

    @staticmethod
    async def _send_shutdown_error(send: Send) -> None:
        async def finish() -> None:
            error = _sse(shutdown_error().body())
            await send({"type": "http.response.body", "body": error, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        # a client that does not read would block these sends: a second at most, then the
        # connection is dropped (uvicorn says so in one line)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(finish(), 1.0)


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


def admission(
    model: LanguageModel,
) -> Callable[[Chat, Sampling, bool], tuple[Sampling, int | None]]:
    """What the schedulers check before a chat joins (in their worker thread, which owns the
    tokenizer): that it fits in the model's context, and with ``fill`` (no max_tokens given) the
    max_tokens left to it; also its prompt token count for ``usage``
    (:func:`poise.models.context.fit_context`)."""

    def admit(chat: Chat, sampling: Sampling, fill: bool) -> tuple[Sampling, int | None]:
        return fit_context(model, chat, sampling, fill=fill)

    return admit


def prompt_token_counter(model: LanguageModel) -> Callable[[Chat], int | None] | None:
    """A function counting a chat's prompt tokens with the model's chat template, when the model
    exposes a Hugging Face tokenizer (as the hf backend does); else ``None``."""
    if model.tokenizer is None or not hasattr(model.tokenizer, "apply_chat_template"):
        return None

    def count(chat: Chat) -> int | None:
        try:
            return prompt_token_count(model, chat)
        except PoiseError:
            return None

    return count
