"""Collect concurrent requests into batched ``generate`` calls (models without an engine).

Models with the ``engine`` capability are served by continuous batching instead
(:mod:`poise.serve.continuous`); this batcher serves the others (the openai backend, wrappers
that cannot step).

A ``LanguageModel`` is batch-first: one call over 32 chats costs little more than one over a
single chat. The server therefore never calls the model per request. Requests wait in a queue
for up to ``window_s`` (or until ``max_batch`` chats are waiting); the batch is then split into
groups of identical sampling parameters, and each group is one ``model.generate`` call made in a
single worker thread, so the model is never used by two threads at once. A model that declares
``capabilities.concurrent`` (the openai backend: a client whose calls share nothing) has its
groups called side by side instead, each in its own worker thread: a server in front of another
server would otherwise send requests with distinct seeds upstream one after another. The order
of the calls changes no output: a call's samples depend on its chats and sampling only (below).
While a batch's calls run, new requests queue up and form the next batch.

Seeds. A request with a seed is reproducible: it is generated with exactly its ``Sampling``.
Requests without a seed share one freshly drawn seed per call, which keeps them batchable; since
a backend's samples depend on (chat, seed, sample index) only, two identical chats in one call
would get identical samples, so when sampling (not greedy) a repeated chat goes to a later call
with another fresh seed. Identical (chat, sampling) pairs that must give identical outputs (with
a seed, or greedy) are generated once and the result shared.

A call that fails fails no request by itself when it held several chats: each chat is then
generated alone (a streamed row sends only the text it had not sent yet), so a request whose chat
the model refuses (a PoiseError: 400) or cannot generate (500) fails alone. A model that answers
some chats of a call and says why the others failed (a
:class:`~poise.models.base.GenerationError`, as the openai backend raises when its server refuses
one request) is not asked again: the answered chats keep their answers and each failed one fails
with its own reason.

A call runs to its end once started (nothing can interrupt a model's ``generate``):
:attr:`Batcher.calling` says whether one is still running after :meth:`Batcher.stop`, so that a
process about to exit need not wait for an answer nobody will read.

A request whose client went away before its batch ran is dropped from the queue (its future is
cancelled), so no generation is wasted on it.

Streaming. :meth:`Batcher.open` answers with a :class:`~poise.serve.ticket.Ticket`. For a model
with the ``stream`` capability the call is ``model.stream`` and each row's text reaches its
tickets as it is decoded; otherwise the finished text is cut into word-sized events.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import (
    Chat,
    Completion,
    GenerationError,
    LanguageModel,
    StreamEvent,
    UpstreamError,
)
from poise.serve.ticket import Generation, Ticket, fresh_seed

__all__ = ["Batcher", "Generation", "fresh_seed", "text_pieces"]

logger = logging.getLogger(__name__)

# A finished text is streamed in word-sized pieces: each piece is a run of whitespace and the
# following word, so the pieces concatenate to the text exactly.
_PIECE = re.compile(r"\s*\S+|\s+")

# Checks a chat against the model before it is generated, in the worker thread (see
# poise.serve.continuous.Admit): (chat, sampling, fill) -> (sampling to use, prompt tokens).
Admit = Callable[[Chat, Sampling, bool], "tuple[Sampling, int | None]"]

# Receives a row's stream events (and the prompt's token count) in the event loop's thread.
Listener = Callable[[Sequence[StreamEvent], "int | None"], None]


def text_pieces(text: str) -> list[str]:
    """``text`` cut into word-sized pieces whose concatenation is ``text``."""
    return _PIECE.findall(text)


def whole_text_events(completions: Sequence[Completion]) -> list[StreamEvent]:
    """Finished completions as stream events, one per word-sized piece (for models that cannot
    stream); the last event of each row carries its completion."""
    events: list[StreamEvent] = []
    for sample, completion in enumerate(completions):
        pieces = text_pieces(completion.text) or [""]
        events += [StreamEvent(0, sample, piece) for piece in pieces[:-1]]
        events.append(StreamEvent(0, sample, pieces[-1], completion))
    return events


@dataclass(eq=False)
class _Queued:
    chat: Chat
    sampling: Sampling
    seeded: bool
    future: asyncio.Future[Generation]
    listener: Listener | None = None
    fill: bool = False  # no max_tokens given: what is left of the context (see ``admit``)
    chat_key: str = field(init=False)

    def __post_init__(self) -> None:
        self.chat_key = json.dumps(self.chat, sort_keys=True, ensure_ascii=False)

    @property
    def group_key(self) -> tuple[bool, str, bool]:
        # Every sampling field that changes the output is in the key; the seed of an unseeded
        # request is a placeholder and is replaced by the call's fresh seed.
        if self.seeded:
            return (True, self.sampling.key(), self.fill)
        return (False, self.sampling.model_copy(update={"seed": 0}).key(), self.fill)


class _Sent:
    """What one chat's listeners have been sent, per sample, across calls of the model: when a
    batch fails after some rows streamed and a chat is generated again alone, the replay (the
    same chat, sampling and seed give the same text) sends only what was not sent before."""

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}  # characters sent, by sample index
        self.finished: set[int] = set()
        self.seen: dict[int, int] = {}  # characters of the current call's events so far

    def restart(self) -> None:
        self.seen = {}

    def news(self, event: StreamEvent) -> StreamEvent | None:
        """``event`` less the text sent already; ``None`` when nothing is new."""
        sample = event.sample_index
        if sample in self.finished:
            return None
        start = self.seen.get(sample, 0)
        self.seen[sample] = start + len(event.text)
        text = event.text[max(0, self.sent.get(sample, 0) - start) :]
        self.sent[sample] = max(self.sent.get(sample, 0), self.seen[sample])
        if event.completion is not None:
            self.finished.add(sample)
        elif not text:
            return None
        return StreamEvent(event.key, sample, text, event.completion)


class Batcher:
    """Queue of pending requests in front of one ``LanguageModel``.

    Use from one event loop: ``await start()``, then ``submit(...)`` from request handlers and
    ``await`` the returned future (cancel it when the client leaves), ``await stop()`` at the end.
    """

    def __init__(
        self,
        model: LanguageModel,
        *,
        max_batch: int = 32,
        window_s: float = 0.005,
        admit: Admit | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model = model
        self.max_batch = max_batch
        self.window_s = max(0.0, window_s)
        self.admit = admit
        self._queue: deque[_Queued] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.running = 0  # chats in the generate calls now running
        # the calls running in the worker threads (several only for a concurrent model)
        self._calls: set[concurrent.futures.Future[list[Generation | Exception]]] = set()
        self.generate_calls = 0
        self.generated_chats = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._arrived = asyncio.Event()
        # one worker: the model is never used by two threads at once, unless it says it may be
        workers = self.max_batch if self.model.capabilities.concurrent else 1
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="poise-generate"
        )
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="poise-batcher")

    async def stop(self) -> None:
        """Stop batching; requests still waiting fail with ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- API -------------------------------------------------------------------------------------

    def submit(
        self,
        chat: Chat,
        sampling: Sampling,
        *,
        seeded: bool,
        listener: Listener | None = None,
        fill: bool = False,
    ) -> asyncio.Future[Generation]:
        """Queue one chat; the future resolves to its :class:`Generation`.

        Cancel the future to withdraw the request (a client that disconnected). ``listener``,
        for a model with the ``stream`` capability, receives the row's events as decoded.
        ``fill``: ``sampling.max_new_tokens`` is a ceiling; the chat gets what is left of the
        context under it (``admit``).
        """
        if self._task is None or self._arrived is None:
            raise RuntimeError("the batcher is not started")
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(chat, sampling, seeded, future, listener, fill))
        self._arrived.set()
        return future

    def open(
        self,
        chat: Chat,
        sampling: Sampling,
        *,
        seeded: bool,
        stream: bool = True,
        fill: bool = False,
    ) -> Ticket:
        """Queue one chat and answer with a :class:`Ticket` of its events (the server's common
        interface with :class:`~poise.serve.continuous.ContinuousBatcher`). A request that is
        not streamed (``stream=False``) skips ``model.stream`` and takes ``generate``'s
        answer."""
        streams = stream and self.model.capabilities.stream
        ticket = Ticket(sampling.n)
        future = self.submit(
            chat, sampling, seeded=seeded, listener=ticket.deliver if streams else None, fill=fill
        )

        def withdraw(_: Ticket) -> None:
            future.cancel()

        ticket.on_cancel = withdraw

        def finished(done: asyncio.Future[Generation]) -> None:
            if done.cancelled():
                return
            exc = done.exception()
            if exc is not None:
                ticket.fail(exc)
                return
            generation = done.result()
            ticket.prompt_tokens = generation.prompt_tokens
            if not streams:
                ticket.deliver(whole_text_events(generation.completions))

        future.add_done_callback(finished)
        return ticket

    @property
    def calling(self) -> bool:
        """Whether a call of the model is running in the worker thread, even after
        :meth:`stop` (which cannot interrupt it: a remote model's request, a strategy's
        generate)."""
        return any(not call.done() for call in list(self._calls))

    @property
    def pending(self) -> int:
        """Requests waiting for a batch (withdrawn ones excluded)."""
        return sum(1 for item in self._queue if not item.future.done())

    # -- internals -------------------------------------------------------------------------------

    def _drop_withdrawn(self) -> None:
        if any(item.future.done() for item in self._queue):
            self._queue = deque(item for item in self._queue if not item.future.done())

    async def _loop(self) -> None:
        assert self._arrived is not None
        while True:
            self._drop_withdrawn()
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                # A request reached an idle server: wait a moment for company. Requests that
                # queued up behind a running call skip this; they have already waited.
                await self._window()
                continue
            batch: list[_Queued] = []
            while self._queue and len(batch) < self.max_batch:
                batch.append(self._queue.popleft())
            try:
                await self._run_batch(batch)
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(RuntimeError("the server is shutting down"))
                raise

    async def _window(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while self.pending < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _run_batch(self, batch: list[_Queued]) -> None:
        groups: dict[tuple[bool, str, bool], list[_Queued]] = {}
        for item in batch:
            groups.setdefault(item.group_key, []).append(item)
        calls: list[tuple[list[_Queued], Sampling]] = []
        for (seeded, _, _), items in groups.items():
            sampling = items[0].sampling
            if seeded or sampling.greedy:
                calls.append((items, sampling))
                continue
            # Unseeded sampling: the k-th copy of a chat goes to the k-th call so that copies
            # get independent samples.
            rounds: list[list[_Queued]] = []
            seen: dict[str, int] = {}
            for item in items:
                k = seen.get(item.chat_key, 0)
                seen[item.chat_key] = k + 1
                if k == len(rounds):
                    rounds.append([])
                rounds[k].append(item)
            for round_items in rounds:
                calls.append((round_items, sampling.model_copy(update={"seed": fresh_seed()})))
        if self.model.capabilities.concurrent:
            await asyncio.gather(*(self._generate(items, sampling) for items, sampling in calls))
            return
        for items, sampling in calls:
            await self._generate(items, sampling)

    async def _generate(self, items: list[_Queued], sampling: Sampling) -> None:
        live = [item for item in items if not item.future.done()]
        if not live:
            return
        index: dict[str, int] = {}
        chats: list[Chat] = []
        for item in live:
            if item.chat_key not in index:
                index[item.chat_key] = len(chats)
                chats.append(item.chat)
        listeners: list[list[Listener]] = [[] for _ in chats]
        for item in live:
            if item.listener is not None:
                listeners[index[item.chat_key]].append(item.listener)
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        self.running += len(live)

        fill = live[0].fill  # one group: the same for all
        # a request without max_tokens, to a model that cannot size it (no context known) but
        # can leave it to the server behind it: sent on without max_tokens, as it came
        open_limit = fill and self.model.capabilities.open_limit

        def call() -> list[Generation | Exception]:
            # Each chat is admitted on its own (a prompt longer than the context fails alone);
            # with ``fill`` the chats' samplings may differ, so each sampling is one call.
            results: list[Generation | Exception | None] = [None] * len(chats)
            groups: dict[str, list[int]] = {}
            admitted: list[tuple[Sampling, int | None]] = []
            for i, chat in enumerate(chats):
                try:
                    admitted.append(
                        self.admit(chat, sampling, fill) if self.admit else (sampling, None)
                    )
                except Exception as exc:
                    admitted.append((sampling, None))
                    results[i] = exc
                    continue
                groups.setdefault(admitted[i][0].key(), []).append(i)
            for rows in groups.values():
                outcomes = self._generate_rows(
                    [chats[i] for i in rows],
                    admitted[rows[0]][0],
                    [listeners[i] for i in rows],
                    [admitted[i][1] for i in rows],
                    loop,
                    open_limit=open_limit and all(admitted[i][1] is None for i in rows),
                )
                for i, outcome in zip(rows, outcomes, strict=True):
                    results[i] = outcome
            return [r if r is not None else RuntimeError("not generated") for r in results]

        running = self._executor.submit(call)
        self._calls.add(running)
        running.add_done_callback(self._calls.discard)
        try:
            results = await asyncio.wrap_future(running)
        finally:
            self.running -= len(live)
        self.generate_calls += 1
        self.generated_chats += len(chats)
        for item in live:
            if item.future.done():
                continue
            result = results[index[item.chat_key]]
            if isinstance(result, Exception):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def _generate_rows(
        self,
        chats: list[Chat],
        sampling: Sampling,
        listeners: list[list[Listener]],
        prompt_tokens: list[int | None],
        loop: asyncio.AbstractEventLoop,
        *,
        open_limit: bool = False,
    ) -> list[Generation | Exception]:
        """One call for ``chats``; when it fails, one call per chat, so that one bad chat (a
        text the model refuses ...) fails alone. Runs in the worker thread."""
        sent = [_Sent() for _ in chats]
        try:
            return list(
                self._call_model(
                    chats, sampling, listeners, prompt_tokens, loop, sent, open_limit=open_limit
                )
            )
        except GenerationError as exc:
            partial = self._partial(exc, chats, sampling, prompt_tokens)
            if partial is not None:
                return partial
            if len(chats) == 1:
                return [exc]
        except Exception as exc:
            if len(chats) == 1:
                if not isinstance(exc, PoiseError):
                    logger.exception("generate failed on a chat")
                return [exc]
        logger.warning(
            "generate failed on a batch of %d chats; each is generated alone", len(chats)
        )
        outcomes: list[Generation | Exception] = []
        for i, chat in enumerate(chats):
            try:
                (result,) = self._call_model(
                    [chat],
                    sampling,
                    [listeners[i]],
                    [prompt_tokens[i]],
                    loop,
                    [sent[i]],
                    open_limit=open_limit,
                )
            except Exception as exc:
                if not isinstance(exc, PoiseError):
                    logger.exception("generate failed on a chat")
                outcomes.append(exc)
                continue
            outcomes.append(result)
        return outcomes

    def _partial(
        self,
        exc: GenerationError,
        chats: list[Chat],
        sampling: Sampling,
        prompt_tokens: list[int | None],
    ) -> list[Generation | Exception] | None:
        """The outcome of each chat of a call that answered some chats and failed the others
        for good (the model has retried them already): the answers it gave, and for each failed
        chat a :class:`PoiseError` with its own reason (not the whole call's summary). None when
        ``exc`` is not this call's (a wrapped model's, or the wrong length)."""
        if exc.model is not self.model or len(exc.results) != len(chats):
            return None
        if any(r is not None and len(r) != sampling.n for r in exc.results):
            return None
        outcomes: list[Generation | Exception] = []
        for i, result in enumerate(exc.results):
            if result is not None:
                outcomes.append(
                    Generation(completions=list(result), prompt_tokens=prompt_tokens[i])
                )
            else:
                reason = exc.failures.get(i, "the model gave no answer")
                # the server behind the model failed (a 502), or refused the request (a 400)
                kind = UpstreamError if isinstance(exc.errors.get(i), UpstreamError) else PoiseError
                outcomes.append(kind(f"{self.model.name}: {reason}"))
        return outcomes

    def _call_model(
        self,
        chats: list[Chat],
        sampling: Sampling,
        listeners: list[list[Listener]],
        prompt_tokens: list[int | None],
        loop: asyncio.AbstractEventLoop,
        sent: list[_Sent],
        *,
        open_limit: bool = False,
    ) -> list[Generation]:
        """Runs in the worker thread: the model and its tokenizer are only touched here.
        ``open_limit``: ``generate(..., open_limit=True)`` (see ``Capabilities.open_limit``)."""
        logger.debug("generate: %d chats, %s", len(chats), sampling.key())
        if self.model.capabilities.stream and any(listeners):
            outputs = self._stream(chats, sampling, listeners, prompt_tokens, loop, sent)
        elif open_limit:
            generate: Any = self.model.generate
            outputs = generate(chats, sampling, open_limit=True)
        else:
            outputs = self.model.generate(chats, sampling)
        if len(outputs) != len(chats):
            raise RuntimeError(
                f"model {self.model.name!r} returned {len(outputs)} results for {len(chats)} chats"
            )
        return [
            Generation(completions=list(completions), prompt_tokens=count)
            for count, completions in zip(prompt_tokens, outputs, strict=True)
        ]

    def _stream(
        self,
        chats: list[Chat],
        sampling: Sampling,
        listeners: list[list[Listener]],
        prompt_tokens: list[int | None],
        loop: asyncio.AbstractEventLoop,
        sent: list[_Sent],
    ) -> list[list[Completion]]:
        """``model.stream`` over the batch, handing each event to its row's listeners (what a
        row's listeners were sent by an earlier, failed call is not sent again)."""

        def hand_over(row: int, event: StreamEvent) -> None:
            for listener in listeners[row]:
                listener([event], prompt_tokens[row])

        for log in sent:
            log.restart()
        results: list[list[Completion | None]] = [[None] * sampling.n for _ in chats]
        events: Iterator[StreamEvent] = self.model.stream(chats, sampling)
        for event in events:
            row = event.key  # the chat's index in ``chats``
            assert isinstance(row, int)
            if event.completion is not None:
                results[row][event.sample_index] = event.completion
            if listeners[row]:
                news = sent[row].news(event)
                if news is not None:
                    loop.call_soon_threadsafe(hand_over, row, news)
        complete = [[c for c in row if c is not None] for row in results]
        if any(len(row) != sampling.n for row in complete):
            raise RuntimeError(f"model {self.model.name!r} left rows of its stream unfinished")
        return complete
