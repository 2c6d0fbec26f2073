"""``token_ends``: each token's end character in the decoded text, as decoding its prefix says;
``generated_tokens``: what the model decoded for an answer, the EOS that ended it included."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from poise.guards.record import generated_tokens, guard_record, shown_completion, token_ends
from poise.models.base import Completion
from poise.models.resolve import model_folder


@pytest.mark.parametrize("clean_up", [False, True])
@pytest.mark.parametrize(
    "text",
    [
        # characters of several bytes, some split across tokens: prefix decodes
        "Sure! Step 1: mix it , then wait . Done? café ☃ 😀 ok",
        # whole characters in every token: one decode per token (byte-level decoder)
        "Sure! Step 1: mix it , then wait . Done?\n\nStep 2: the rest, in  two  spaces.",
    ],
    ids=["split-characters", "whole-characters"],
)
def test_token_ends_are_prefix_decode_lengths(clean_up: bool, text: str) -> None:
    folder = model_folder("organism-large")
    assert folder is not None
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.clean_up_tokenization_spaces = clean_up  # True: the wrapper's path
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


def test_generated_tokens_counts_the_eos_that_ended_an_answer(tiny_hf_model_dir: Path) -> None:
    """An answer that ended on EOS carries it in ``token_ids`` (not in ``num_tokens``): the model
    decoded it, so it is counted, guarded or not; a baseline guard that withholds the answer
    records it (``decoded_tokens``) beside ``unguarded_tokens``."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    eos = tokenizer.eos_token_id
    ids = tuple(tokenizer("the cat", add_special_tokens=False)["input_ids"])
    ended = Completion("the cat", len(ids), "stop", token_ids=(*ids, eos))
    cut = Completion("the cat", len(ids), "length", token_ids=ids)
    assert generated_tokens(ended) == len(ids) + 1
    assert generated_tokens(cut) == len(ids)
    settings = {"kind": "full"}
    for shown in (None, 0, 1):
        guarded = shown_completion(
            ended, tokenizer, shown=shown, produced=None, refusal="No.", settings=settings
        )
        record = (guarded.metadata or {})["guard"]
        assert record["unguarded_tokens"] == len(ids)
        assert record["decoded_tokens"] == len(ids) + 1
        assert generated_tokens(guarded) == len(ids) + 1
    # a record written before decoded_tokens existed: unguarded_tokens stands in for it
    old = guard_record(stopped=True, produced=0, shown=0, settings=settings, unguarded_tokens=7)
    assert generated_tokens(Completion("No.", 0, "guard", token_ids=(), metadata=old)) == 7


def test_a_stopped_answer_is_its_first_shown_tokens_and_the_refusal(
    tiny_hf_model_dir: Path,
) -> None:
    """``shown_completion`` by hand: the refusal follows a space unless the text is empty or
    already ends with a space or newline, an empty refusal adds nothing, ``produced`` defaults
    to ``shown``, and ``shown`` past the answer's end is the whole answer."""
    from poise.guards.record import refusal_tail

    assert refusal_tail("It is", "No.") == " No."
    assert refusal_tail("It is ", "No.") == "No."
    assert refusal_tail("It is\n", "No.") == "No."
    assert refusal_tail("", "No.") == "No."
    assert refusal_tail("It is", "") == ""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    eos = tokenizer.eos_token_id
    ids = tuple(tokenizer("the cat sat on the mat", add_special_tokens=False)["input_ids"])
    ended = Completion("the cat sat on the mat", len(ids), "stop", token_ids=(*ids, eos))
    settings = {"kind": "chunked"}
    first = tokenizer.decode(ids[:2], skip_special_tokens=True)
    cut = shown_completion(ended, tokenizer, shown=2, produced=None, refusal="", settings=settings)
    record = (cut.metadata or {})["guard"]
    assert cut.text == first and cut.finish_reason == "guard"
    assert cut.num_tokens == 2 and cut.token_ids == ids[:2]
    assert record["shown_tokens"] == record["produced_tokens"] == 2
    whole = shown_completion(
        ended, tokenizer, shown=len(ids) + 5, produced=None, refusal="No.", settings=settings
    )
    record = (whole.metadata or {})["guard"]
    assert whole.num_tokens == len(ids) and whole.token_ids == ids
    assert record["shown_tokens"] == record["produced_tokens"] == len(ids)
    assert whole.text == tokenizer.decode(ids, skip_special_tokens=True) + " No."


def test_a_stopped_answer_keeps_the_logprobs_of_what_it_shows_and_caps_what_was_produced(
    tiny_hf_model_dir: Path,
) -> None:
    """Shown 2 tokens of an answer of n: its logprobs are those 2; ``produced`` past the
    answer's end is the answer's length (a guard cannot have generated more than there is)."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    ids = tuple(tokenizer("the cat sat on the mat", add_special_tokens=False)["input_ids"])
    logprobs = tuple(-0.5 * (i + 1) for i in range(len(ids)))
    answer = Completion("the cat sat on the mat", len(ids), "length", logprobs, ids)
    cut = shown_completion(
        answer, tokenizer, shown=2, produced=len(ids) + 3, refusal="No.", settings={"kind": "x"}
    )
    record = (cut.metadata or {})["guard"]
    assert cut.token_logprobs == (-0.5, -1.0)
    assert (record["shown_tokens"], record["produced_tokens"]) == (2, len(ids))
    assert record["unguarded_text"] == "the cat sat on the mat"
