from __future__ import annotations

import pytest

from poise.config import Sampling
from poise.models.base import Chat, LanguageModel
from poise.models.mock import MockModel, last_user_message


def user(text: str) -> Chat:
    return [{"role": "user", "content": text}]


def test_is_a_language_model() -> None:
    assert isinstance(MockModel(), LanguageModel)


def test_mapping_lookup_by_last_user_message_and_default() -> None:
    model = MockModel(responses={"hi": "hello there"}, default="no idea")
    chat: Chat = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "hi"},
    ]
    out = model.generate([chat, user("other")], Sampling())
    assert [c[0].text for c in out] == ["hello there", "no idea"]
    assert out[0][0].num_tokens == 2
    assert out[0][0].finish_reason == "stop"
    assert last_user_message([{"role": "system", "content": "x"}]) == ""


def test_sequence_cycles_over_samples_with_seed_offset() -> None:
    model = MockModel(responses={"q": ["a", "b", "c"]})
    texts = [c.text for c in model.generate([user("q")], Sampling(n=4, seed=0))[0]]
    assert texts == ["a", "b", "c", "a"]
    shifted = [c.text for c in model.generate([user("q")], Sampling(n=2, seed=1))[0]]
    assert shifted == ["b", "c"]
    again = [c.text for c in model.generate([user("q")], Sampling(n=2, seed=1))[0]]
    assert again == shifted


def test_callable_gets_chat_and_sample_index() -> None:
    model = MockModel(responses=lambda chat, i: f"{last_user_message(chat)}-{i}")
    out = model.generate([user("x"), user("y")], Sampling(n=2))
    assert [[c.text for c in row] for row in out] == [["x-0", "x-1"], ["y-0", "y-1"]]


def test_counts_calls_and_completions_and_reports_progress() -> None:
    model = MockModel()
    seen: list[int] = []
    model.generate([user("a"), user("b")], Sampling(n=3), progress=seen.append)
    model.generate([user("c")], Sampling())
    assert model.calls == 2
    assert model.generated == 7
    assert [last_user_message(c) for c in model.prompts] == ["a", "b", "c"]
    assert seen == [2]


def test_stop_strings_and_max_new_tokens() -> None:
    model = MockModel(default="one two three. four five")
    stopped = model.generate([user("q")], Sampling(stop=(".",)))[0][0]
    assert stopped.text == "one two three"
    assert stopped.finish_reason == "stop"
    capped = model.generate([user("q")], Sampling(max_new_tokens=2))[0][0]
    assert capped.text == "one two "
    assert capped.num_tokens == 2
    assert capped.finish_reason == "length"


def test_score_is_minus_one_per_token_or_not_implemented() -> None:
    model = MockModel()
    [lp] = model.score([user("q")], ["a b  c"])
    assert lp.tokens == ("a", "b", "c")
    assert lp.total == -3.0
    assert model.score([user("q")], ["a b  c"])[0].token_ids == lp.token_ids
    with pytest.raises(NotImplementedError):
        MockModel(scores=False).score([user("q")], ["a"])
    with pytest.raises(ValueError):
        model.score([user("q")], [])
