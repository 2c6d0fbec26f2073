"""``token_ends``: each token's end character in the decoded text, as decoding its prefix says."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from poise.guards.record import generated_tokens, guard_record, token_ends
from poise.models.base import Completion
from poise.models.resolve import model_folder


@pytest.mark.parametrize("clean_up", [False, True])
def test_token_ends_are_prefix_decode_lengths(clean_up: bool) -> None:
    folder = model_folder("organism-large")
    assert folder is not None
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.clean_up_tokenization_spaces = clean_up  # True: the wrapper's path
    text = "Sure! Step 1: mix it , then wait . Done? café ☃ 😀 ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = [
        len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True)) for i in range(len(ids))
    ]
    assert token_ends(tokenizer, ids) == expected
    assert expected[-1] == len(tokenizer.decode(ids, skip_special_tokens=True))
    assert token_ends(tokenizer, []) == []


def test_generated_tokens_counts_what_was_decoded() -> None:
    settings = {"kind": "full"}
    plain = Completion("an answer", 2)
    assert generated_tokens(plain) == 2
    # a baseline guard decoded 30 tokens and showed none
    withheld = guard_record(
        stopped=True, produced=30, shown=0, settings=settings, unguarded_tokens=30
    )
    assert generated_tokens(Completion("I'm sorry", 0, "guard", metadata=withheld)) == 30
    # guarded's stream stops decoding at the stop: no unguarded_tokens, num_tokens is all
    streamed = guard_record(stopped=True, produced=18, shown=18, settings={"kind": "streaming"})
    assert generated_tokens(Completion("... I'm sorry", 18, "guard", metadata=streamed)) == 18
