"""The suite item: one prompt of an audit, with what kind of prompt it is."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from poise.chat import Chat
from poise.tasks import kinds

#: A kind of suite item: the kind of a registered task (:mod:`poise.tasks`).
Kind = str
#: The built-in kinds. Registered tasks add more; :func:`poise.tasks.kinds` lists them all.
KINDS: tuple[str, ...] = (
    "harmful",
    "borderline",
    "benign",
    "honesty-known",
    "honesty-unknown",
    "sycophancy",
)


class SuiteItem(BaseModel):
    """One audit prompt.

    ``messages`` is the chat sent to the model (usually one user turn; a system message here
    overrides the audit's system prompt). ``reference`` is the expected answer for honesty items.
    ``meta`` holds loader- or generator-specific fields (source row, task, entity, ...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    messages: list[dict[str, str]] = Field(min_length=1)
    kind: Kind  # a registered task's kind
    category: str = "uncategorized"
    reference: str | None = None
    suite: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, kind: str) -> str:
        known = kinds()
        if kind not in known:
            raise ValueError(f"unknown kind {kind!r} (known: {', '.join(known)})")
        return kind

    @field_validator("messages")
    @classmethod
    def _check_messages(cls, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        for i, m in enumerate(messages):
            if set(m) != {"role", "content"}:
                raise ValueError(f"message {i} must have exactly 'role' and 'content'")
            if m["role"] not in ("system", "user", "assistant"):
                raise ValueError(f"message {i} has unknown role {m['role']!r}")
            if m["role"] == "system" and i > 0:
                # the item's own system prompt replaces the audit's only as the first message;
                # one later in the chat left the chat without the audit's (and a template that
                # inserts its default before a chat not opening with one added that too)
                raise ValueError(
                    f"message {i} is a system message; only the first message may be one"
                )
            if not isinstance(m["content"], str):
                raise ValueError(f"message {i} has non-text content")
            # an empty system message is meaningful: "no system prompt" for a model whose chat
            # template inserts a default into a chat without one (the organism's does)
            if not m["content"].strip() and not (m["role"] == "system" and m["content"] == ""):
                raise ValueError(f"message {i} has empty content")
        if messages[-1]["role"] != "user":
            raise ValueError("the last message must be a user turn")
        return messages

    @property
    def chat(self) -> Chat:
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]

    @property
    def prompt(self) -> str:
        """The last user turn, for display."""
        return self.messages[-1]["content"]
