"""Continuous batching: requests join a running batch at step boundaries.

For a model with the ``engine`` capability the server runs one worker thread that owns
``engine = model.engine()`` (an :class:`~poise.models.base.Engine`). Each turn of its loop it

1. cancels the rows of requests whose clients went away,
2. adds the requests that arrived since the last step, at most ``join_rows`` new rows a step
   and while fewer than ``max_rows`` rows are decoding (the rest wait their turn); each is first
   checked by ``admit`` (it fits in the model's context; without max_tokens it gets what is left
   of it), and a request refused there or by ``engine.add`` fails alone, and
3. calls ``engine.step()``, which prefills the new rows and advances every row by one token,
   and hands the step's :class:`~poise.models.base.StreamEvent` s to the event loop in one
   ``loop.call_soon_threadsafe`` call, which routes each to its request's
   :class:`~poise.serve.ticket.Ticket`.

So a request never waits for another to finish (only for the step in progress), and a streamed
response gets each token's text as soon as it is decoded. The engine and the model's tokenizer
are touched only in the worker thread.

``join_rows`` spreads a burst's prefill over several steps. Prefill is costly: on one CPU
thread, for a ~90M-parameter Llama, the prefill of one 42-token prompt took about 0.27 s, two
thirds of a decoding step of 32 rows (0.42 s), so a burst of 32 prompts prefilled at once took
about 20 decoding steps, and every request of the burst waited for all of it. Joining 8 rows a
step gives the first 8 their first token after a quarter of that, and rows that join at
different steps also finish at different steps, so later requests arrive spread out and join at
the next step (32 clients, 64-token answers, one run each: median time to first token 3.9 s
against 7.9 s with all 32 joining at once, and no lower throughput; see BENCHMARKS.md).

``join_wait_s`` is the other side of that trade, for small models. There a prefill forward costs
about as much as a decoding step whatever its rows, so joining one row at a time adds a forward
per request. While steps are faster than ``join_wait_s`` (50 ms by default), requests that
arrive during decoding wait until ``join_rows`` rows wait or the oldest has waited that long,
and join together. Steps slower than that (a real-size model) admit at once, as above.

Seeds. A request with a seed is generated with exactly its ``Sampling`` (an engine seeds each
row from the seed, the chat and the sample index, as ``generate`` does, so the answer does not
depend on the rest of the batch). A request without one gets a fresh random seed of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from poise.config import Sampling
from poise.models.base import Chat, Engine, LanguageModel, StreamEvent
from poise.serve.ticket import Ticket, fresh_seed

logger = logging.getLogger(__name__)

SHUTDOWN = "the server is shutting down"


@dataclass(eq=False)
class _Request:
    key: int
    chat: Chat
    sampling: Sampling
    ticket: Ticket
    stream: bool
    fill: bool = False  # no max_tokens given: what is left of the context (see ``admit``)
    arrived: float = field(default_factory=lambda: _now())
    rows_left: int = 0
    # A request that is not streamed is handed its events when it finishes, not every step.
    held: list[StreamEvent] = field(default_factory=list)


# Checks a request against the model before it joins (in the worker thread, which owns the
# tokenizer): (chat, sampling, fill) -> (the sampling to generate with, prompt tokens or None);
# raises for a request the model cannot take (poise.models.context.fit_context).
Admit = Callable[[Chat, Sampling, bool], "tuple[Sampling, int | None]"]

# What the worker hands the event loop: per ticket, its events of a step or its failure.
_Delivery = tuple[Ticket, "Sequence[StreamEvent] | BaseException", "int | None"]


class ContinuousBatcher:
    """One worker thread stepping one engine; requests join at step boundaries.

    Use from one event loop: ``await start()``, ``open(...)`` from request handlers (read or
    cancel the returned ticket), ``await stop()`` at the end.
    """

    def __init__(
        self,
        model: LanguageModel,
        *,
        max_rows: int = 32,
        join_rows: int = 8,
        window_s: float = 0.005,
        join_wait_s: float = 0.05,
        admit: Admit | None = None,
    ) -> None:
        if max_rows < 1 or join_rows < 1:
            raise ValueError("max_rows and join_rows must be >= 1")
        if not model.capabilities.engine:
            raise ValueError(f"model {model.name!r} does not declare the engine capability")
        self.model = model
        self.max_rows = max_rows
        self.join_rows = join_rows
        self.window_s = max(0.0, window_s)
        self.join_wait_s = max(0.0, join_wait_s)
        self._step_s = 0.0  # how long the last step took
        self.admit = admit
        self._keys = itertools.count()
        self._wake = threading.Condition()
        # Guarded by _wake: what handlers asked for since the worker last looked.
        self._arrivals: deque[_Request] = deque()
        self._cancels: list[int] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Only in the event loop's thread: every ticket not yet done, by key.
        self._open: dict[int, Ticket] = {}
        # Written by the worker, read by /health.
        self._waiting = 0  # requests the worker holds back (the engine has max_rows rows)
        self.running = 0  # rows in the engine
        self.steps = 0
        self.admitted = 0
        self.engine: Engine | None = None
        self._broken: BaseException | None = None  # the engine failed beyond repair

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        # Made here, so that a model that cannot make one fails the server's start.
        self.engine = self.model.engine()  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._work, name="poise-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the worker (after the step in progress); open requests fail with
        ``RuntimeError``."""
        if self._thread is None:
            return
        with self._wake:
            self._stopping = True
            self._wake.notify()
        thread, self._thread = self._thread, None
        await asyncio.to_thread(thread.join, 30.0)
        for ticket in list(self._open.values()):
            ticket.fail(RuntimeError(SHUTDOWN))
        self._open.clear()

    # -- API -------------------------------------------------------------------------------------

    def open(
        self,
        chat: Chat,
        sampling: Sampling,
        *,
        seeded: bool,
        stream: bool = True,
        fill: bool = False,
    ) -> Ticket:
        """Queue one request; its rows join the engine at the next step boundary. The events
        of a request that is not streamed (``stream=False``) are handed over when it finishes,
        so that its handler is not woken at every step. ``fill``: ``sampling.max_new_tokens``
        is a ceiling, the request gets what is left of the context under it (``admit``)."""
        if self._thread is None:
            raise RuntimeError("the batcher is not started")
        if self._broken is not None:
            raise RuntimeError(f"the engine failed: {self._broken}")
        if not seeded:
            # Rows are seeded per (seed, chat, sample), so a seed of its own per request keeps
            # two identical unseeded requests independent without costing any batching.
            sampling = sampling.model_copy(update={"seed": fresh_seed()})
        key = next(self._keys)
        ticket = Ticket(sampling.n, on_cancel=lambda _: self._cancel(key))
        self._open[key] = ticket
        with self._wake:
            self._arrivals.append(_Request(key, chat, sampling, ticket, stream, fill))
            self._wake.notify()
        return ticket

    @property
    def pending(self) -> int:
        """Requests not yet added to the engine."""
        return len(self._arrivals) + self._waiting

    @property
    def open_requests(self) -> int:
        """Requests accepted and not yet finished, failed or withdrawn (queued, held back or
        decoding): 0 again once the server is idle, so a request the batcher never lets go of
        shows in ``/health``."""
        return len(self._open)

    # -- the event loop's side -------------------------------------------------------------------

    def _cancel(self, key: int) -> None:
        self._open.pop(key, None)
        with self._wake:
            self._cancels.append(key)
            self._wake.notify()

    def _deliver(self, deliveries: list[_Delivery]) -> None:
        for ticket, item, prompt_tokens in deliveries:
            if isinstance(item, BaseException):
                ticket.fail(item)
            else:
                ticket.deliver(item, prompt_tokens)
        for key in [key for key, ticket in self._open.items() if ticket.done]:
            del self._open[key]

    # -- the worker thread -----------------------------------------------------------------------

    def _post(self, deliveries: list[_Delivery]) -> None:
        if not deliveries or self._loop is None:
            return
        # RuntimeError: the loop closed under a server that is going away.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver, deliveries)

    def _work(self) -> None:
        live: dict[int, _Request] = {}
        waiting: deque[_Request] = deque()
        while True:
            try:
                if not self._turn(live, waiting):
                    return
            except Exception as exc:
                # The batch's state is unknown after a failed step (or a failed cancel): fail
                # the requests in it and start over with a fresh engine; waiting requests go on.
                logger.exception("the engine failed; %d requests fail", len(live))
                self._post([(r.ticket, exc, None) for r in live.values()])
                live.clear()
                self.running = 0
                try:
                    self.engine = self.model.engine()  # type: ignore[attr-defined]
                except Exception as fatal:
                    logger.exception("could not make a fresh engine; the server cannot generate")
                    self._broken = fatal
                    self._post([(r.ticket, fatal, None) for r in waiting])
                    return

    def _turn(self, live: dict[int, _Request], waiting: deque[_Request]) -> bool:
        """Cancel, admit, step once and hand the events over; ``False`` when stopping."""
        engine = self.engine
        assert engine is not None
        cancels = self._collect(waiting, idle=not live)
        if cancels is None:
            return False
        for key in cancels:
            if key in live:
                engine.cancel(key)
                self.running -= live.pop(key).rows_left
        if cancels:
            dropped = set(cancels)
            kept = [r for r in waiting if r.key not in dropped]
            waiting.clear()
            waiting.extend(kept)
        deliveries: list[_Delivery] = []
        joined = 0
        join = bool(waiting) and self._join_now(live, waiting)
        while (
            join
            and waiting
            and (
                # At most join_rows new rows a step (at least one request), within max_rows.
                not joined or joined + waiting[0].sampling.n <= self.join_rows
            )
            and (not live or self.running + waiting[0].sampling.n <= self.max_rows)
        ):
            request = waiting.popleft()
            try:
                prompt_tokens = None
                if self.admit is not None:
                    request.sampling, prompt_tokens = self.admit(
                        request.chat, request.sampling, request.fill
                    )
                engine.add(request.key, request.chat, request.sampling, stream=request.stream)
            except Exception as exc:
                # A request refused at admission or by the engine (a prompt longer than the
                # context, a text the tokenizer cannot encode) fails alone.
                deliveries.append((request.ticket, exc, None))
                continue
            request.rows_left = request.sampling.n
            live[request.key] = request
            self.running += request.sampling.n
            joined += request.sampling.n
            self.admitted += 1
            # The prompt's length rides ahead of the request's first events.
            deliveries.append((request.ticket, (), prompt_tokens))
        self._waiting = len(waiting)
        # Hand over the refusals first: a step can take a while.
        self._post(deliveries)
        if live:
            started = _now()
            events = engine.step()
            self._step_s = _now() - started
            self.steps += 1
            # Only when a handler has something to do: each wake-up of the event loop takes the
            # GIL from this thread.
            self._post(self._route(events, live))
        return True

    def _join_now(self, live: dict[int, _Request], waiting: deque[_Request]) -> bool:
        """Whether the waiting requests join the batch at this step.

        Each join costs the batch a prefill forward, whose fixed cost is about one decoding
        step on a small model. While steps are fast (under ``join_wait_s``), waiting requests
        are held back until ``join_rows`` rows wait or the oldest has waited ``join_wait_s``,
        so that they join in fewer, larger groups; a wait that short is below the noise of a
        request's latency. While steps are slow (a real-size model), holding a request back
        would cost it a whole step, so it joins at once.
        """
        if not live or self._step_s >= self.join_wait_s:
            return True
        rows = sum(r.sampling.n for r in waiting)
        free = self.max_rows - self.running
        return rows >= min(self.join_rows, free) or _now() - waiting[0].arrived >= self.join_wait_s

    def _route(self, events: Sequence[StreamEvent], live: dict[int, _Request]) -> list[_Delivery]:
        by_key: dict[int, list[StreamEvent]] = {}
        for event in events:
            by_key.setdefault(event.key, []).append(event)  # type: ignore[arg-type]
        out: list[_Delivery] = []
        for key, mine in by_key.items():
            request = live.get(key)
            if request is None:
                continue  # cancelled in the meantime
            finished = sum(1 for event in mine if event.completion is not None)
            request.rows_left -= finished
            self.running -= finished
            if request.rows_left <= 0:
                del live[key]
            if request.stream:
                out.append((request.ticket, mine, None))
            elif request.rows_left > 0:
                request.held += mine
            else:
                out.append((request.ticket, [*request.held, *mine], None))
        return out

    def _collect(self, waiting: deque[_Request], *, idle: bool) -> list[int] | None:
        """New arrivals into ``waiting``; the keys to cancel; ``None`` when stopping. An idle
        worker sleeps until a request arrives, then waits up to ``window_s`` for company so
        that a burst of requests is prefilled together."""
        with self._wake:
            if idle and not waiting:
                while not self._arrivals and not self._stopping:
                    self._wake.wait()
                if self.window_s and not self._stopping:
                    deadline = _now() + self.window_s
                    while (
                        not self._stopping
                        and sum(r.sampling.n for r in self._arrivals) < self.max_rows
                        and (remaining := deadline - _now()) > 0
                    ):
                        self._wake.wait(remaining)
            if self._stopping:
                return None
            waiting.extend(self._arrivals)
            self._arrivals.clear()
            cancels, self._cancels = self._cancels, []
            return cancels


def _now() -> float:
    return time.monotonic()
