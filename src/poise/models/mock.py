"""A scripted ``LanguageModel`` for tests: no weights, no torch, fully deterministic.

``MockModel`` answers from a script keyed by the last user message (or from a callable), and
behaves like a real backend where tests care: ``n`` samples per chat, stop strings truncate the
text, ``max_new_tokens`` caps the number of whitespace-delimited "tokens", and it counts its calls
so a test can assert that a cache answered instead::

    model = MockModel(responses={"hi": "hello", "joke": ["a", "b"]}, default="I can't help.")
    model.generate([[{"role": "user", "content": "hi"}]], Sampling())  # [[Completion("hello", ...)]]
    model.calls, model.generated  # 1, 1

It also declares the ``stream`` and ``engine`` capabilities: ``engine()`` returns a
:class:`MockEngine`, a continuous batch that emits each row's reply one token per step, so the
server's continuous batching and streaming can be tested without weights. Its completions equal
``generate``'s.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from poise.chat import last_user_message
from poise.config import Sampling
from poise.models.base import (
    Capabilities,
    Chat,
    Completion,
    FinishReason,
    ModelBase,
    StreamEvent,
    TokenLogprobs,
)

Script = Mapping[str, str | Sequence[str]] | Callable[[Chat, int], str]

# A "token" of the mock is a run of non-space characters with its trailing whitespace, so
# truncating at a token boundary keeps the text exactly as scripted.
_TOKEN = re.compile(r"\S+\s*|\s+")


class MockModel(ModelBase):
    """A deterministic, scripted language model.

    - ``responses`` as a mapping: the last user message selects the reply; a sequence of replies
      is cycled over samples, starting at an offset given by ``sampling.seed`` (sample ``i`` gets
      ``replies[(seed + i) % len(replies)]``), so a fixed seed always yields the same samples.
    - ``responses`` as a callable: ``responses(chat, sample_index)`` returns the reply.
    - anything not scripted gets ``default``.

    ``calls`` counts ``generate`` calls, ``generated`` counts completions produced, and
    ``prompts`` records every chat sent to ``generate`` (in order), so tests can see cache hits.
    ``score`` returns -1.0 per whitespace token of the continuation, or raises
    ``NotImplementedError`` when ``scores=False`` (like an endpoint without log-probs).

    ``engine()`` returns a fresh :class:`MockEngine` (``engines`` lists those made);
    ``step_delay`` seconds of sleep per engine step stand in for a forward pass. ``stream``
    runs a private engine to completion, so streamed text is the engine's.
    """

    def __init__(
        self,
        name: str = "mock",
        responses: Script | None = None,
        default: str = "...",
        *,
        scores: bool = True,
        default_system_prompt: str | None = None,
        system_prompt_in_template: bool = False,
        step_delay: float = 0.0,
    ) -> None:
        self.name = name
        self.responses = responses
        self.default = default
        self.scores = scores
        self.capabilities = Capabilities(score=scores, stream=True, engine=True)
        self.default_system_prompt = default_system_prompt
        self.system_prompt_in_template = system_prompt_in_template
        self.step_delay = step_delay
        self.engines: list[MockEngine] = []
        self.calls = 0
        self.generated = 0
        self.score_calls = 0
        self.prompts: list[Chat] = []

    def reply(self, chat: Chat, sample_index: int, seed: int = 0) -> str:
        """The scripted full reply (before stop strings and the token limit apply)."""
        if self.responses is None:
            return self.default
        if callable(self.responses):
            return self.responses(chat, sample_index)
        scripted = self.responses.get(last_user_message(chat))
        if scripted is None:
            return self.default
        if isinstance(scripted, str):
            return scripted
        if not scripted:
            return self.default
        return scripted[(seed + sample_index) % len(scripted)]

    def generate(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        self.calls += 1
        results: list[list[Completion]] = []
        for chat in chats:
            self.prompts.append(list(chat))
            samples = [
                _shape(self.reply(chat, i, sampling.seed), sampling) for i in range(sampling.n)
            ]
            self.generated += len(samples)
            results.append(samples)
        if progress is not None and chats:
            progress(len(chats))
        return results

    def engine(self) -> MockEngine:
        """A new continuous batch over this model."""
        engine = MockEngine(self)
        self.engines.append(engine)
        return engine

    def stream(self, chats: Sequence[Chat], sampling: Sampling) -> Iterator[StreamEvent]:
        """Each row's text a token at a time (a private engine run to completion)."""
        engine = MockEngine(self)
        for index, chat in enumerate(chats):
            engine.add(index, chat, sampling)
        while not engine.idle:
            yield from engine.step()

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[TokenLogprobs]:
        if not self.scores:
            raise NotImplementedError(f"model {self.name!r} does not provide log-probs")
        if len(chats) != len(continuations):
            raise ValueError(
                f"score needs one continuation per chat ({len(chats)} chats, "
                f"{len(continuations)} continuations)"
            )
        self.score_calls += 1
        out: list[TokenLogprobs] = []
        for continuation in continuations:
            tokens = tuple(continuation.split())
            out.append(
                TokenLogprobs(
                    tokens=tokens,
                    logprobs=tuple(-1.0 for _ in tokens),
                    token_ids=tuple(zlib.crc32(t.encode("utf-8")) % 50_000 for t in tokens),
                )
            )
        return out


def _shape(text: str, sampling: Sampling) -> Completion:
    """Apply stop strings and ``max_new_tokens`` the way a real backend would."""
    finish: FinishReason = "stop"
    tokens = _TOKEN.findall(text)
    if len(tokens) > sampling.max_new_tokens:
        tokens = tokens[: sampling.max_new_tokens]
        finish = "length"
    text = "".join(tokens)
    cut = min((i for i in (text.find(s) for s in sampling.stop if s) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
        finish = "stop"
        tokens = _TOKEN.findall(text)
    return Completion(
        text=text,
        num_tokens=len(tokens),
        finish_reason=finish,
        token_logprobs=tuple(-1.0 for _ in tokens),
    )


@dataclass
class _MockRow:
    key: Hashable
    sample_index: int
    pieces: list[str]  # the completion's tokens, emitted one per step
    completion: Completion
    emitted: int = 0
    stream: bool = True


class MockEngine:
    """A continuous batch over a :class:`MockModel` (the ``Engine`` protocol).

    ``add`` computes each row's completion as ``MockModel.generate`` would (same reply, seed,
    stop strings and token limit) and queues it; every ``step`` emits one more token of every
    live row, the row's last event carrying its completion. A row added between two steps joins
    at the next one, like a real engine's prefill at a step boundary. ``steps`` counts steps,
    ``added_at[key]`` records how many steps had run when ``key`` was added (so tests can prove
    that a request joined a running batch), ``samplings[key]`` what it was added with and
    ``cancelled`` the keys cancelled while they had rows.
    """

    def __init__(self, model: MockModel) -> None:
        self.model = model
        self.rows: list[_MockRow] = []
        self.steps = 0
        self.added_at: dict[Hashable, int] = {}
        self.samplings: dict[Hashable, Sampling] = {}
        self.cancelled: list[Hashable] = []

    def add(self, key: Hashable, chat: Chat, sampling: Sampling, *, stream: bool = True) -> None:
        if any(row.key == key for row in self.rows):
            raise ValueError(f"key {key!r} is already in the batch")
        rows = []
        for sample in range(sampling.n):
            # The reply is computed first, so a scripted failure fails the add, not a step.
            completion = _shape(self.model.reply(chat, sample, sampling.seed), sampling)
            rows.append(
                _MockRow(key, sample, _TOKEN.findall(completion.text), completion, stream=stream)
            )
        self.rows.extend(rows)
        self.added_at[key] = self.steps
        self.samplings[key] = sampling

    def cancel(self, key: Hashable) -> None:
        before = len(self.rows)
        self.rows = [row for row in self.rows if row.key != key]
        if len(self.rows) != before:
            self.cancelled.append(key)

    def step(self) -> list[StreamEvent]:
        if not self.rows:
            return []
        if self.model.step_delay:
            time.sleep(self.model.step_delay)
        self.steps += 1
        events: list[StreamEvent] = []
        live: list[_MockRow] = []
        for row in self.rows:
            # An empty completion still takes one step to report.
            text = row.pieces[row.emitted] if row.emitted < len(row.pieces) else ""
            row.emitted += 1
            done = row.emitted >= len(row.pieces)
            if not row.stream:  # no text while decoding; the final event carries all of it
                if done:
                    events.append(
                        StreamEvent(row.key, row.sample_index, row.completion.text, row.completion)
                    )
            else:
                events.append(
                    StreamEvent(row.key, row.sample_index, text, row.completion if done else None)
                )
            if not done:
                live.append(row)
        self.rows = live
        return events

    @property
    def idle(self) -> bool:
        return not self.rows
