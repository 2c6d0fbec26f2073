"""The openai backend when the endpoint misbehaves: bodies that are not chat completions, and a
request that fails for good among many that succeed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import poise.models.openai as openai_backend
from chat_endpoint import Answer, Endpoint, completion
from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.openai import OpenAIModel


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_backend, "_BACKOFF_BASE_S", 0.01)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    ("content_type", "body", "said"),
    [
        ("text/html", b"<html><body>502 Bad Gateway</body></html>", "got text: '<html><body>502"),
        ("application/json", b'{"object": "error", "message": "overloaded"}', "without 'choices'"),
        ("application/json", b'{"choices": null}', "without 'choices'"),
        ("application/json", b"[1, 2]", "without 'choices'"),
        ("application/json", b'{"choices": [{"index": 0}]}', "a choice without a message"),
    ],
)
def test_a_200_that_is_not_a_chat_completion_is_retried_then_one_line(
    endpoint: Callable[..., Endpoint], content_type: str, body: bytes, said: str
) -> None:
    server = endpoint(lambda request: (200, content_type, body))
    model = OpenAIModel("m", base_urls=[server.url], max_retries=2)
    with pytest.raises(PoiseError) as caught:
        model.generate([chat("x")], Sampling())
    message = str(caught.value)
    assert "\n" not in message
    assert "after 3 attempts: HTTP 200, but the body is not a chat completion" in message
    assert said in message
    assert len(server.requests) == 3  # retried like a 5xx


def test_a_bad_200_then_a_good_answer_succeeds(endpoint: Callable[..., Endpoint]) -> None:
    answers: list[Answer] = [(200, "text/html", b"<html>busy</html>"), completion("fine")]

    def reply(request: dict[str, Any]) -> Answer:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    server = endpoint(reply)
    model = OpenAIModel("m", base_urls=[server.url], max_retries=2)
    [[answer]] = model.generate([chat("x")], Sampling())
    assert answer.text == "fine"
    assert len(server.requests) == 2
    assert server.requests[0]["messages"] == chat("x")
