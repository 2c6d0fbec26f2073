"""A test-only strategy, registered for the duration of a test: ``test_suffix(MODEL, ...)``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from poise.config import Sampling
from poise.decoding import strategies
from poise.errors import check_int
from poise.models.base import Chat, Completion, LanguageModel, ProgressFn
from poise.models.wrapped import WrappedModel
from poise.registry import Entry


class Suffix(WrappedModel):
    """Appends ``text`` ``times`` times (and ``other``'s first answer, if given)."""

    kind = "test_suffix"
    preserves_distribution = True  # it does not, but lets score pass-through be tested

    def __init__(
        self,
        model: LanguageModel,
        *,
        text: str = "!",
        times: int = 1,
        weight: float = 1.0,
        loud: bool = False,
        other: LanguageModel | None = None,
    ) -> None:
        check_int("test_suffix", "times", times, 0)
        options: dict[str, object] = {"text": text, "times": times, "weight": weight, "loud": loud}
        if other is not None:
            options["other"] = other
        super().__init__(model, **options)  # type: ignore[arg-type]
        self.text, self.times, self.other = text, times, other

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        results = self.inner.generate(chats, sampling, progress=progress)
        extra = ""
        if self.other is not None:
            extra = self.other.generate(chats[:1], sampling)[0][0].text
        return [
            [
                Completion(c.text + self.text * self.times + extra, c.num_tokens, c.finish_reason)
                for c in row
            ]
            for row in results
        ]


@pytest.fixture
def suffix_strategy(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Suffix]]:
    entry = Entry("test_suffix", Suffix, "append text (tests)", None)
    monkeypatch.setitem(strategies._entries, "test_suffix", entry)  # type: ignore[arg-type]
    yield Suffix
