"""Chats and messages: the ground floor every layer of poise speaks.

A ``Chat`` is a list of ``{role, content}`` messages in the OpenAI / Hugging Face chat-template
shape; the backend applies the chat template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict


class Message(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


Chat = list[Message]


def with_system_prompt(chat: Chat, system_prompt: str | None) -> Chat:
    """``chat`` with its system message replaced by ``system_prompt`` (removed when None)."""
    rest = [m for m in chat if m["role"] != "system"]
    if system_prompt is None:
        return rest
    return [{"role": "system", "content": system_prompt}, *rest]


def with_default_system_prompt(chat: Chat, system_prompt: str | None) -> Chat:
    """``chat`` with ``system_prompt`` (none when None), unless it brings a system message of
    its own, which is sent as it is: how an audit builds an item's chat, and so how anything
    that reads the model on the audit's prompts must build it."""
    if any(m["role"] == "system" for m in chat):
        return chat
    return with_system_prompt(chat, system_prompt)


def last_user_message(chat: Sequence[Mapping[str, object]]) -> str:
    """The content of the chat's last user turn ("" when there is none): what an audit records
    as an item's prompt."""
    for message in reversed(chat):
        if message["role"] == "user":
            return str(message["content"])
    return ""
