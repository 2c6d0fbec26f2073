"""Requests longer than the model's context get a 400 worded as vLLM words it, before anything is
generated; a request without max_tokens gets what is left of the context. Over the HF engine (a
tiny model built in code, context 512 tokens) and over the batcher (a scripted model that
declares a tokenizer and a context)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from poise.config import Sampling
from poise.models import load_model
from poise.models.base import Chat, LanguageModel

from .helpers import EchoModel, ThreadServer

StartServer = Callable[..., ThreadServer]

VLLM_MESSAGE = re.compile(
    r"This model's maximum context length is (\d+) tokens\. However, you requested (\d+) tokens "
    r"\((\d+) in the messages, (\d+) in the completion\)\. Please reduce the length of the "
    r"messages or completion\."
)


@pytest.fixture(scope="module")
def tiny_model(tiny_hf_model_dir: Path) -> LanguageModel:
    return load_model(str(tiny_hf_model_dir))


def prompt_tokens(model: LanguageModel, text: str) -> int:
    """The prompt's tokens as the HF backend encodes them (rendered text, then tokens)."""
    chat = [{"role": "user", "content": text}]
    rendered = model.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return len(model.tokenizer(rendered, add_special_tokens=False)["input_ids"])


def post(server: ThreadServer, text: str, **fields: Any) -> httpx.Response:
    payload = {"model": "tiny", "messages": [{"role": "user", "content": text}], **fields}
    return httpx.post(f"{server.base_url}/chat/completions", json=payload, timeout=60)


def test_the_tiny_model_declares_its_context(tiny_model: LanguageModel) -> None:
    assert tiny_model.context_length == 512  # max_position_embeddings of its config


def test_an_over_long_request_is_a_400_worded_as_vllm_words_it(
    start_server: StartServer, tiny_model: LanguageModel
) -> None:
    server = start_server(tiny_model, served_name="tiny")
    long_text = "the cat sat on the mat " * 25
    count = prompt_tokens(tiny_model, long_text)
    assert 300 < count < 512
    started = time.monotonic()
    response = post(server, long_text, max_tokens=200)
    assert time.monotonic() - started < 5  # refused before any decoding
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert error["type"] == "invalid_request_error"
    match = VLLM_MESSAGE.fullmatch(error["message"])
    assert match, error["message"]
    assert [int(g) for g in match.groups()] == [512, count + 200, count, 200]
    # the same request with room for its answer is fine
    assert post(server, long_text, max_tokens=512 - count, temperature=0).status_code == 200

    # messages alone over the context, no max_tokens: vLLM's other sentence
    longer = "the cat sat on the mat " * 40
    response = post(server, longer)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message == (
        f"This model's maximum context length is 512 tokens. However, you requested "
        f"{prompt_tokens(tiny_model, longer)} tokens in the messages. Please reduce the length "
        "of the messages."
    )


def test_without_max_tokens_a_request_gets_what_is_left_of_the_context(
    start_server: StartServer, tiny_model: LanguageModel
) -> None:
    server = start_server(tiny_model, served_name="tiny")  # max_tokens_limit 2048 > 512
    text = "the cat sat on the mat " * 20
    count = prompt_tokens(tiny_model, text)
    response = post(server, text, temperature=0)
    assert response.status_code == 200, response.text
    body = response.json()
    usage = body["usage"]
    assert usage["prompt_tokens"] == count
    assert usage["total_tokens"] <= 512
    # the answer is generate's with max_new_tokens = what was left
    expected = tiny_model.generate(
        [[{"role": "user", "content": text}]], Sampling(max_new_tokens=512 - count)
    )[0][0]
    assert body["choices"][0]["message"]["content"] == expected.text
    assert usage["completion_tokens"] == expected.num_tokens


def test_a_served_openai_model_passes_a_request_without_max_tokens_on_without_it(
    start_server: StartServer, tiny_model: LanguageModel
) -> None:
    """``poise serve`` fronting an ``openai:`` model (which knows neither its context nor its
    tokenizer) sent ``max_tokens = --max-tokens-limit`` (2048) upstream for a request without
    one, and the upstream refused it (a 400) once the messages and 2048 tokens passed its
    context. The request now goes on without max_tokens: the upstream fills its context, and
    the answer is the one the upstream gives directly."""
    upstream = start_server(tiny_model, served_name="tiny")  # context 512
    remote = load_model(f"openai:tiny@{upstream.base_url}", max_retries=0)
    assert remote.capabilities.open_limit and remote.context_length is None
    front = start_server(remote, served_name="tiny")
    text = "the cat sat on the mat " * 20
    count = prompt_tokens(tiny_model, text)
    assert count + 2048 > 512
    direct = post(upstream, text, temperature=0)
    through = post(front, text, temperature=0)
    assert through.status_code == 200, through.text
    assert direct.status_code == 200, direct.text
    assert (
        through.json()["choices"][0]["message"]["content"]
        == direct.json()["choices"][0]["message"]["content"]
    )
    assert through.json()["usage"]["completion_tokens"] <= 512 - count
    # a request that sets max_tokens still sends it (and is refused where it does not fit)
    assert post(front, text, temperature=0, max_tokens=4).json()["usage"]["completion_tokens"] <= 4
    refused = post(front, text, temperature=0, max_tokens=2000)
    assert refused.status_code == 400
    assert "maximum context length is 512" in refused.json()["error"]["message"]


def test_an_over_long_request_fails_alone(
    start_server: StartServer, tiny_model: LanguageModel
) -> None:
    server = start_server(tiny_model, served_name="tiny", batch_window_ms=300)
    texts = [f"hello {i}" for i in range(6)]

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            calls = [
                client.post(
                    "/chat/completions",
                    json={
                        "model": "tiny",
                        "messages": [{"role": "user", "content": t}],
                        "max_tokens": 5,
                        "temperature": 0,
                    },
                )
                for t in ["word " * 600, *texts]
            ]
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(main())
    assert responses[0].status_code == 400
    alone = tiny_model.generate(
        [[{"role": "user", "content": t}] for t in texts], Sampling(max_new_tokens=5)
    )
    for response, completions in zip(responses[1:], alone, strict=True):
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == completions[0].text


def test_a_10_mb_prompt_is_refused_at_once_without_tokenizing(
    start_server: StartServer, tiny_model: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a server that accepts such a body: the context check still refuses it from its length
    server = start_server(tiny_model, served_name="tiny", max_body_bytes=64 * 1024 * 1024)
    calls = []
    original = tiny_model.tokenizer.apply_chat_template

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_model.tokenizer, "apply_chat_template", counting)
    started = time.monotonic()
    response = post(server, "x" * (10 * 1000 * 1000), max_tokens=16)
    assert time.monotonic() - started < 10
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("This model's maximum context length is 512 tokens. However, your")
    assert "at least" in message
    assert calls == []  # never tokenized


# -- the batcher (a model without an engine) ---------------------------------------------------


class ContextEcho(EchoModel):
    """EchoModel declaring the tiny model's tokenizer and a context of 64 tokens."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__("tiny", words=200)
        self.tokenizer = tokenizer
        self.context_length = 64

    def generate(self, chats: Sequence[Chat], sampling: Sampling, **kw: Any) -> Any:
        return super().generate(chats, sampling, **kw)


def test_the_batcher_checks_the_context_and_fills_max_tokens(
    start_server: StartServer, tiny_model: LanguageModel
) -> None:
    model = ContextEcho(tiny_model.tokenizer)
    server = start_server(model, served_name="tiny", batch_window_ms=300)
    short, longer = "hi", "the cat sat on the mat " * 2

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            bodies: list[dict[str, Any]] = [
                {"messages": [{"role": "user", "content": "the cat " * 40}], "max_tokens": 8},
                {"messages": [{"role": "user", "content": short}]},
                {"messages": [{"role": "user", "content": longer}]},
            ]
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            "/chat/completions", json={"model": "tiny", "temperature": 0, **b}
                        )
                        for b in bodies
                    )
                )
            )

    too_long, first, second = asyncio.run(main())
    assert too_long.status_code == 400
    assert VLLM_MESSAGE.fullmatch(too_long.json()["error"]["message"])
    assert first.status_code == second.status_code == 200
    # each got what was left of 64 tokens, so the two were generated by separate calls
    asked = sorted(sampling.max_new_tokens for _, sampling in model.calls)
    left = sorted(64 - prompt_tokens(tiny_model, t) for t in (short, longer))
    assert asked == left
    for response, text in ((first, short), (second, longer)):
        usage = response.json()["usage"]
        assert usage["prompt_tokens"] == prompt_tokens(tiny_model, text)
        assert usage["total_tokens"] == 64
