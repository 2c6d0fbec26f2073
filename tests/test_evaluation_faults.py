"""The evaluation core when the backend gives up on some requests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from poise.attacks.base import Request
from poise.config import Sampling
from poise.evaluation import RequestsFailed, generate
from poise.models.base import Chat, Completion, GenerationError
from poise.models.mock import MockModel, last_user_message
from poise.suites.schema import SuiteItem


def request(i: int) -> Request:
    it = SuiteItem(id=f"i{i}", messages=[{"role": "user", "content": f"q{i}"}], kind="benign")
    return Request(it, "r", it.chat, Sampling(), "default")


class Flaky(MockModel):
    """Answers every chat except those ``fails`` picks, as a backend that gives up would."""

    def __init__(self, fails: Callable[[str], bool]) -> None:
        super().__init__(default="ok")
        self.fails = fails
        self.asked: list[list[str]] = []

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: object = None
    ) -> list[list[Completion]]:
        texts = [last_user_message(c) for c in chats]
        self.asked.append(texts)
        results: list[list[Completion] | None] = [
            None if self.fails(t) else [Completion(f"a{t}", 1)] for t in texts
        ]
        failures = {i: "HTTP 500: broke" for i, t in enumerate(texts) if self.fails(t)}
        if failures:
            raise GenerationError(self, results, failures)
        return [r for r in results if r is not None]


def test_the_other_answers_of_a_block_are_yielded_and_the_failed_named_at_the_end() -> None:
    model = Flaky(lambda t: t == "q1")
    got: list[str] = []
    with pytest.raises(RequestsFailed) as caught:
        for block in generate(model, [request(i) for i in range(5)], batch_size=2):
            got += [g.request.item.id for g in block]
    assert got == ["i0", "i2", "i3", "i4"]  # the later blocks still ran
    assert [r.item.id for r, _ in caught.value.failed] == ["i1"]
    assert str(caught.value) == "1 request failed: item i1 (r): HTTP 500: broke"


def test_a_block_of_which_nothing_came_back_stops_at_once() -> None:
    model = Flaky(lambda t: True)  # the endpoint is down
    with pytest.raises(RequestsFailed, match=r"2 requests failed: .*; 4 requests not tried"):
        list(generate(model, [request(i) for i in range(6)], batch_size=2))
    assert len(model.asked) == 1
