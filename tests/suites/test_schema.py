"""SuiteItem: what an audit prompt may hold, refused in one message naming the message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from poise.suites import SuiteItem


def test_a_message_of_a_role_a_chat_template_has_no_turn_for_is_refused() -> None:
    # a tool's result cannot be sent: poise sends system, user and assistant turns
    messages = [
        {"role": "user", "content": "What is the weather?"},
        {"role": "tool", "content": "sunny"},
        {"role": "user", "content": "So?"},
    ]
    with pytest.raises(ValidationError, match="message 1 has unknown role 'tool'"):
        SuiteItem(id="a", messages=messages, kind="benign")
    item = SuiteItem(
        id="a",
        messages=[*messages[:1], {"role": "assistant", "content": "Sunny."}, messages[2]],
        kind="benign",
    )
    assert (item.prompt, item.category) == ("So?", "uncategorized")
