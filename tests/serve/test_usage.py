"""``usage.completion_tokens`` counts every token the model decoded, the EOS token that ended an
answer included (as vLLM counts it): chat completions, streamed or not, and ``/v1/completions``,
on a tiny model whose greedy answer ends with EOS."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from poise.config import Sampling
from poise.models.base import Completion
from poise.models.hf import HFModel

from .helpers import ThreadServer, read_sse

# the chat of ``eos_hf_model_dir`` (tests/conftest.py), whose greedy answer ends with EOS
CHAT = [{"role": "user", "content": "the cat sat"}]


@pytest.fixture(scope="module")
def model(eos_hf_model_dir: Path) -> HFModel:
    return HFModel(str(eos_hf_model_dir), device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def expected(model: HFModel) -> Completion:
    """The greedy answer: a few tokens, then the EOS token (in ``token_ids``, not counted by
    ``num_tokens``)."""
    (answer,) = model.generate([CHAT], Sampling(max_new_tokens=16))[0]
    assert answer.finish_reason == "stop" and answer.token_ids is not None
    assert answer.num_tokens >= 3 and len(answer.token_ids) == answer.num_tokens + 1
    assert answer.token_ids[-1] in model.eos_token_ids
    return answer


@pytest.fixture
def server(model: HFModel, start_server: Callable[..., ThreadServer]) -> ThreadServer:
    return start_server(model, served_name="tiny", max_tokens_limit=64, max_n=4)


def post(server: ThreadServer, path: str, **payload: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{path}", json={"model": "tiny", **payload}, timeout=60)


def test_a_chat_answer_that_ends_on_eos_counts_the_eos(
    server: ThreadServer, expected: Completion
) -> None:
    payload = {"messages": CHAT, "max_tokens": 16, "temperature": 0, "logprobs": True}
    body = post(server, "chat/completions", **payload).json()
    (choice,) = body["choices"]
    assert choice["message"]["content"] == expected.text
    assert choice["finish_reason"] == "stop"
    decoded = expected.num_tokens + 1
    assert body["usage"]["completion_tokens"] == decoded
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + decoded
    # the tokens the log-probs cover are the tokens usage counts
    assert len(choice["logprobs"]["content"]) == decoded
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={
            "model": "tiny",
            **payload,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=60,
    ) as response:
        chunks, done = read_sse(list(response.iter_lines()))
    assert done
    assert chunks[-1]["usage"]["completion_tokens"] == decoded


def test_a_raw_completion_that_ends_on_eos_counts_the_eos(
    server: ThreadServer, model: HFModel, expected: Completion
) -> None:
    prompt = model.prompt_ids(CHAT)
    body = post(server, "completions", prompt=prompt, max_tokens=16, temperature=0, n=2).json()
    assert [c["text"] for c in body["choices"]] == [expected.text] * 2
    assert body["usage"]["completion_tokens"] == 2 * (expected.num_tokens + 1)
    # cut by max_tokens: the tokens decoded, no EOS among them
    short = post(server, "completions", prompt=prompt, max_tokens=2, temperature=0).json()
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] == 2
