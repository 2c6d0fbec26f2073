"""The LanguageModel protocol: what every backend, decoding strategy and guard implements.

A decoding strategy or a guard wraps another ``LanguageModel`` and is one itself, so an audit
runs unchanged on ``base``, ``eft(base, ...)`` or ``guarded(bon(base, ...), ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict, runtime_checkable

from poise.config import Sampling


class Message(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


Chat = list[Message]

FinishReason = Literal["stop", "length", "guard"]


@dataclass(frozen=True)
class Completion:
    """One generated continuation of a chat."""

    text: str
    num_tokens: int
    finish_reason: FinishReason = "stop"
    # log-prob of each generated token under the sampling distribution's model, if asked for
    token_logprobs: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "num_tokens": self.num_tokens,
            "finish_reason": self.finish_reason,
            "token_logprobs": list(self.token_logprobs)
            if self.token_logprobs is not None
            else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Completion:
        lp = d.get("token_logprobs")
        return cls(
            text=str(d["text"]),
            num_tokens=int(d["num_tokens"]),  # type: ignore[call-overload]
            finish_reason=d.get("finish_reason", "stop"),  # type: ignore[arg-type]
            token_logprobs=tuple(float(x) for x in lp) if isinstance(lp, list) else None,
        )


@dataclass(frozen=True)
class TokenLogprobs:
    """Per-token log-probs of a given continuation after a chat (teacher forcing)."""

    tokens: tuple[str, ...]
    logprobs: tuple[float, ...]  # [len(tokens)], natural log
    token_ids: tuple[int, ...] = field(default=())

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))


@runtime_checkable
class LanguageModel(Protocol):
    """Anything that turns chats into completions.

    ``name`` is a stable identity used in cache keys and reports: two models with the same name
    must produce the same outputs for the same inputs.
    """

    name: str

    def generate(self, chats: Sequence[Chat], sampling: Sampling) -> list[list[Completion]]:
        """One list of ``sampling.n`` completions per chat; batched inside; deterministic for
        a given ``sampling.seed`` (a chat's completions do not depend on the rest of the batch)."""
        ...

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[TokenLogprobs]:
        """Per-token log-probs of ``continuations[i]`` as the assistant's reply to ``chats[i]``.
        Backends that cannot do this raise ``NotImplementedError``."""
        ...


def default_system_prompt(model: object) -> str | None:
    """The system prompt a model declares as its recommended default, if any."""
    value = getattr(model, "default_system_prompt", None)
    return value if isinstance(value, str) and value else None


def with_system_prompt(chat: Chat, system_prompt: str | None) -> Chat:
    """``chat`` with its system message replaced by ``system_prompt`` (removed when None)."""
    rest = [m for m in chat if m["role"] != "system"]
    if system_prompt is None:
        return rest
    return [{"role": "system", "content": system_prompt}, *rest]
