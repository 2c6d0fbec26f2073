"""Chats and messages: the ground floor every layer of poise speaks.

A ``Chat`` is a list of ``{role, content}`` messages in the OpenAI / Hugging Face chat-template
shape; the backend applies the chat template.
"""

from __future__ import annotations

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
