"""One request's way back from the model to its HTTP handler.

Both schedulers of the server (:class:`~poise.serve.continuous.ContinuousBatcher` over an
engine, :class:`~poise.serve.batcher.Batcher` over ``generate``) answer a request with a
:class:`Ticket`: the handler reads the request's :class:`~poise.models.base.StreamEvent` s as
they are decoded (a streamed response) or waits for all of them (a plain one), and cancels the
ticket when its client goes away.

A ticket is touched only in the server's event loop; schedulers that work in another thread hand
events over with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from poise.models.base import Completion, StreamEvent


def fresh_seed() -> int:
    """A random seed for a request that did not give one."""
    return secrets.randbits(31)


@dataclass(frozen=True)
class Generation:
    """The answer to one request: ``sampling.n`` completions and the prompt's token count
    (``None`` where the model does not expose a tokenizer)."""

    completions: list[Completion]
    prompt_tokens: int | None


class Ticket:
    """The events of one request's ``n`` rows, in the order they were decoded.

    The producer calls :meth:`deliver` (events) or :meth:`fail` (an exception for the whole
    request); the consumer iterates :meth:`events` once, or awaits :meth:`generation`. The
    ticket is ``done`` once every row's last event (the one carrying its completion) has been
    delivered, or it failed, or it was cancelled.
    """

    def __init__(self, n: int, on_cancel: Callable[[Ticket], None] | None = None) -> None:
        self.n = n
        self.prompt_tokens: int | None = None
        self.on_cancel = on_cancel
        self.cancelled = False
        self._queue: asyncio.Queue[Sequence[StreamEvent] | BaseException] = asyncio.Queue()
        self._completions: list[Completion | None] = [None] * n
        self._delivered_rows = 0  # rows whose completion was delivered (not yet read, maybe)
        self._failed = False

    @property
    def done(self) -> bool:
        return self.cancelled or self._failed or self._delivered_rows >= self.n

    # -- producer side (the event loop's thread) -------------------------------------------------

    def deliver(self, events: Sequence[StreamEvent], prompt_tokens: int | None = None) -> None:
        if self.done:
            return
        if prompt_tokens is not None:
            self.prompt_tokens = prompt_tokens
        self._delivered_rows += sum(1 for event in events if event.completion is not None)
        self._queue.put_nowait(events)

    def fail(self, exc: BaseException) -> None:
        if self.done:
            return
        self._failed = True
        self._queue.put_nowait(exc)

    # -- consumer side ---------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[StreamEvent]:
        """The request's events until every row has finished; raises the request's failure."""
        finished = 0
        while finished < self.n:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            for event in item:
                if event.completion is not None:
                    if not 0 <= event.sample_index < self.n:
                        raise RuntimeError(
                            f"an event for sample {event.sample_index} of a request with n={self.n}"
                        )
                    self._completions[event.sample_index] = event.completion
                    finished += 1
                yield event

    async def generation(self) -> Generation:
        """Wait for every row; the completions in sample order."""
        async for _ in self.events():
            pass
        return self.result()

    def result(self) -> Generation:
        """The completions read so far (all of them once :meth:`events` is exhausted)."""
        completions = [c for c in self._completions if c is not None]
        if len(completions) != self.n:
            raise RuntimeError(f"{self.n - len(completions)} of {self.n} rows did not finish")
        return Generation(completions=completions, prompt_tokens=self.prompt_tokens)

    def cancel(self) -> None:
        """Withdraw the request (its client went away): its rows stop being decoded."""
        if self.done:
            return
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel(self)
