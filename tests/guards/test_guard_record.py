"""``token_ends``: each token's end character in the decoded text, as decoding its prefix says."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from poise.guards.record import token_ends
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
