"""Attacks turn suite items into requests: the chat to send and how to decode it.

The plain audit is the ``greedy`` attack (one request per item with the audit's own sampling).
Other attacks (a grid of decoding configurations, worst-of-N sampling) return several requests per
item, each with its own ``request_id``, so metrics can be computed per configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from poise.config import Sampling
from poise.models.base import Chat, with_system_prompt
from poise.registry import Registry
from poise.suites.schema import SuiteItem


@dataclass(frozen=True)
class Request:
    """One (item, decoding configuration) pair of an audit."""

    item: SuiteItem
    request_id: str  # e.g. "greedy", "temperature=0.70/sys=off"; unique per item
    chat: Chat
    sampling: Sampling
    system_prompt: str  # "default" | "none" | a literal prompt: how the chat was built


AttackFn = Callable[[Sequence[SuiteItem], Sampling, "SystemPrompt"], list[Request]]

attacks: Registry[AttackFn] = Registry("attack")


@dataclass(frozen=True)
class SystemPrompt:
    """The audit's system-prompt setting, resolved against the model.

    ``setting`` is what the user asked for ("default", "none" or a literal prompt);
    ``default_text`` is the model's own recommended prompt (None if it declares none);
    ``in_template`` is whether the model's chat template inserts that default into a chat
    without a system message (``poise.models.system_prompt_in_template``): then "none" is
    sent as an explicit empty system message, which such a template renders as nothing.
    """

    setting: str
    default_text: str | None
    in_template: bool = False

    def text(self, setting: str | None = None) -> str | None:
        """The system prompt to send (None: no system message)."""
        setting = self.setting if setting is None else setting
        if setting == "default":
            return self.default_text
        if setting == "none":
            return "" if self.in_template else None
        return setting


def build_chat(item: SuiteItem, system_prompt: str | None) -> Chat:
    """The item's chat with the audit's system prompt, unless the item brings its own."""
    chat = item.chat
    if any(m["role"] == "system" for m in chat):
        return chat
    return with_system_prompt(chat, system_prompt)


@attacks.register(
    "greedy", help="one request per item with the audit's sampling (greedy by default)"
)
def greedy(items: Sequence[SuiteItem], sampling: Sampling, system: SystemPrompt) -> list[Request]:
    request_id = "greedy" if sampling.greedy else "sampled"
    text = system.text()
    return [
        Request(item, request_id, build_chat(item, text), sampling, system.setting)
        for item in items
    ]
