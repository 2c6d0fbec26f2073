"""The LanguageModel protocol's shared parts: declarations read with defaults, the default
stream, and the errors every backend raises."""

from __future__ import annotations

from collections.abc import Sequence

from poise.config import Sampling
from poise.models.base import (
    Chat,
    Completion,
    GenerationError,
    ModelBase,
    StreamEvent,
    default_system_prompt,
    no_system_prompt,
    system_prompt_in_template,
)
from poise.models.mock import MockModel


class Counting(ModelBase):
    """A model without the stream capability: answer ``j`` of chat ``i`` is ``"i.j"``."""

    name = "counting"

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, **_: object
    ) -> list[list[Completion]]:
        return [
            [Completion(text=f"{i}.{j}", num_tokens=1) for j in range(sampling.n)]
            for i in range(len(chats))
        ]


def test_the_default_stream_yields_each_rows_answer_once_keyed_by_chat_and_sample() -> None:
    chat = [{"role": "user", "content": "hi"}]
    events = list(Counting().stream([chat, chat, chat], Sampling(n=2)))
    assert [(e.key, e.sample_index, e.text) for e in events] == [
        (0, 0, "0.0"),
        (0, 1, "0.1"),
        (1, 0, "1.0"),
        (1, 1, "1.1"),
        (2, 0, "2.0"),
        (2, 1, "2.1"),
    ]
    assert all(isinstance(e, StreamEvent) and e.finished for e in events)


def test_a_model_that_declares_no_system_prompt_handling_gets_none() -> None:
    """A model that declares nothing (an older plugin, not built on ModelBase) has no default
    system prompt, no template that inserts one, and is asked with no system message at all."""

    class Older:
        name = "older"
        default_system_prompt = None

    plain = Older()
    assert default_system_prompt(plain) is None  # type: ignore[arg-type]
    assert system_prompt_in_template(plain) is False  # type: ignore[arg-type]
    assert no_system_prompt(plain) is None  # type: ignore[arg-type]
    inserting = MockModel(default_system_prompt="Be safe.", system_prompt_in_template=True)
    assert (default_system_prompt(inserting), no_system_prompt(inserting)) == ("Be safe.", "")
    # an empty default is none
    assert default_system_prompt(MockModel(default_system_prompt="")) is None


def test_a_generation_error_names_the_first_failure_and_counts_the_answers_kept() -> None:
    kept = [Completion(text="ok", num_tokens=1)]
    error = GenerationError(Counting(), [None, kept, None, kept], {2: "timed out", 0: "refused"})
    assert str(error) == (
        "counting: 2 of 4 requests failed (refused); the 2 answers received are kept"
    )
