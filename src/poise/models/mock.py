"""A scripted ``LanguageModel`` for tests: no weights, no torch, fully deterministic.

``MockModel`` answers from a script keyed by the last user message (or from a callable), and
behaves like a real backend where tests care: ``n`` samples per chat, stop strings truncate the
text, ``max_new_tokens`` caps the number of whitespace-delimited "tokens", and it counts its calls
so a test can assert that a cache answered instead::

    model = MockModel(responses={"hi": "hello", "joke": ["a", "b"]}, default="I can't help.")
    model.generate([[{"role": "user", "content": "hi"}]], Sampling())  # [[Completion("hello", ...)]]
    model.calls, model.generated  # 1, 1
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping, Sequence

from poise.config import Sampling
from poise.models.base import Capabilities, Chat, Completion, FinishReason, ModelBase, TokenLogprobs

Script = Mapping[str, str | Sequence[str]] | Callable[[Chat, int], str]

# A "token" of the mock is a run of non-space characters with its trailing whitespace, so
# truncating at a token boundary keeps the text exactly as scripted.
_TOKEN = re.compile(r"\S+\s*|\s+")


def last_user_message(chat: Chat) -> str:
    """The content of the last user turn ("" when there is none)."""
    for message in reversed(chat):
        if message["role"] == "user":
            return message["content"]
    return ""


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
    """

    def __init__(
        self,
        name: str = "mock",
        responses: Script | None = None,
        default: str = "...",
        *,
        scores: bool = True,
        default_system_prompt: str | None = None,
    ) -> None:
        self.name = name
        self.responses = responses
        self.default = default
        self.scores = scores
        self.capabilities = Capabilities(score=scores)
        self.default_system_prompt = default_system_prompt
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
