"""poise.chat: the system prompt an item's chat is sent with, and the prompt an audit records."""

from __future__ import annotations

from poise.chat import Chat, last_user_message, with_default_system_prompt, with_system_prompt

ASKED: Chat = [
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "an answer"},
    {"role": "user", "content": "second question"},
]
OWN: Chat = [{"role": "system", "content": "the item's own"}, *ASKED]


def test_a_system_prompt_replaces_the_chats_own_and_comes_first() -> None:
    assert with_system_prompt(OWN, "be brief") == [
        {"role": "system", "content": "be brief"},
        *ASKED,
    ]
    assert with_system_prompt(ASKED, "be brief")[0] == {"role": "system", "content": "be brief"}
    assert with_system_prompt(OWN, None) == ASKED  # None: no system message at all


def test_an_empty_system_prompt_is_an_explicit_empty_message_not_none() -> None:
    """``no_system_prompt`` asks a model whose template inserts its default with an empty system
    message: dropping it would send the default prompt instead of none."""
    assert with_system_prompt(OWN, "") == [{"role": "system", "content": ""}, *ASKED]


def test_the_default_system_prompt_is_added_unless_the_chat_brings_its_own() -> None:
    assert with_default_system_prompt(ASKED, "default") == [
        {"role": "system", "content": "default"},
        *ASKED,
    ]
    assert with_default_system_prompt(OWN, "default") == OWN
    assert with_default_system_prompt(OWN, None) == OWN
    assert with_default_system_prompt(ASKED, None) == ASKED


def test_the_recorded_prompt_is_the_last_user_turn() -> None:
    assert last_user_message(OWN) == "second question"
    answered = [*ASKED, {"role": "assistant", "content": "another answer"}]
    assert last_user_message(answered) == "second question"
    assert last_user_message([{"role": "system", "content": "only a system prompt"}]) == ""
    assert last_user_message([]) == ""
