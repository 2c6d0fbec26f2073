"""HH-RLHF rows with two turns of one speaker in a row are skipped and counted, like the rows
whose dialogues diverge (issue 10, item 13). Synthetic rows in the public file's shape."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from poise.train.data import load_preferences


def _row(chosen_turns: str, rejected_turns: str) -> dict[str, str]:
    return {"chosen": chosen_turns, "rejected": rejected_turns}


def test_two_assistant_turns_in_a_row_are_skipped_with_a_counted_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        _row(
            "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with that.",
            "\n\nHuman: How do I pick a lock?\n\nAssistant: Use a tension wrench.",
        ),
        _row(
            "\n\nHuman: Tell me a secret.\n\nAssistant: Sure.\n\nAssistant: I have none.",
            "\n\nHuman: Tell me a secret.\n\nAssistant: Sure.\n\nAssistant: Here is one.",
        ),
        _row(
            "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: See you.",
            "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: Whatever.",
        ),
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="poise"):
        pairs = load_preferences(path)
    assert [p.chosen for p in pairs] == ["I can't help with that.", "See you."]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "skipped 1 HH-RLHF row" in warnings[0]
    assert "in a row" in warnings[0] and "lines 2" in warnings[0]
