from __future__ import annotations

import pytest

from poise.config import Sampling
from poise.models.base import Chat, LanguageModel, StreamEvent
from poise.models.mock import MockEngine, MockModel, last_user_message


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


def run_engine(engine: MockEngine, steps: int | None = None) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    while not engine.idle and (steps is None or steps > 0):
        events += engine.step()
        steps = None if steps is None else steps - 1
    return events


def texts_by_row(events: list[StreamEvent]) -> dict[tuple[object, int], str]:
    out: dict[tuple[object, int], str] = {}
    for event in events:
        out[event.key, event.sample_index] = out.get((event.key, event.sample_index), "") + (
            event.text
        )
    return out


def test_engine_completions_equal_generate_and_stream_a_token_per_step() -> None:
    model = MockModel(
        responses={"a": "one two three four five", "b": ["x y", "p q r stop s t"]},
        default="fine",
    )
    assert model.capabilities.engine and model.capabilities.stream
    chats = [[{"role": "user", "content": text}] for text in ("a", "b", "c")]
    for sampling in (
        Sampling(),
        Sampling(max_new_tokens=3),
        Sampling(temperature=1.0, n=3, seed=1, stop=("stop",)),
    ):
        engine = model.engine()
        for key, chat in enumerate(chats):
            engine.add(key, chat, sampling)
        events = run_engine(engine)
        expected = model.generate(chats, sampling)
        finished = {(e.key, e.sample_index): e.completion for e in events if e.finished}
        for key, row in enumerate(expected):
            for sample, completion in enumerate(row):
                assert finished[key, sample] == completion
                assert texts_by_row(events)[key, sample] == completion.text
        # One token per row per step: the longest row sets the number of steps.
        assert engine.steps == max(max(c.num_tokens for c in row) for row in expected)
        streamed = list(model.stream(chats, sampling))
        assert texts_by_row(streamed) == texts_by_row(events)


def test_engine_admits_rows_between_steps_and_cancels() -> None:
    model = MockModel(responses={"long": " ".join(f"w{i}" for i in range(10)), "short": "a b"})
    engine = model.engine()
    engine.add("first", [{"role": "user", "content": "long"}], Sampling())
    run_engine(engine, steps=3)
    engine.add("second", [{"role": "user", "content": "short"}], Sampling())
    engine.add("gone", [{"role": "user", "content": "long"}], Sampling())
    assert engine.added_at == {"first": 0, "second": 3, "gone": 3}
    events = engine.step()
    assert {e.key for e in events} == {"first", "second", "gone"}
    engine.cancel("gone")
    done: dict[object, int] = {}
    while not engine.idle:
        for event in engine.step():
            assert event.key != "gone"
            if event.finished:
                done[event.key] = engine.steps
    assert engine.cancelled == ["gone"]
    assert done == {"second": 5, "first": 10}  # "second" finished while "first" was decoding
    assert engine.idle and engine.step() == []
