"""``poise serve`` over a tiny Hugging Face model built in code: continuous batching on the HF
engine, streamed text equal to the plain text and to ``generate`` in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from poise.config import Sampling
from poise.models import load_model
from poise.models.base import Chat, LanguageModel

from .helpers import ThreadServer, read_sse, stream_texts

StartServer = Callable[..., ThreadServer]


def chat(text: str) -> Chat:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def tiny_model(tiny_hf_model_dir: Path) -> LanguageModel:
    return load_model(str(tiny_hf_model_dir))


async def stream(client: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with client.stream("POST", "/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        chunks, done = read_sse([line async for line in r.aiter_lines()])
    assert done
    return chunks


def test_served_on_the_engine(start_server: StartServer, tiny_model: LanguageModel) -> None:
    assert tiny_model.capabilities.engine
    server = start_server(tiny_model, max_batch=8, served_name="tiny")
    assert server.health()["batching"] == "continuous"


def test_streamed_equals_plain_equals_generate(
    start_server: StartServer, tiny_model: LanguageModel
) -> None:
    server = start_server(tiny_model, max_batch=8, served_name="tiny")
    questions = ["hello there", "what is the capital of France?", "a b c", "tell me a story"]

    async def main() -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            bodies = [
                {"model": "tiny", "messages": chat(q), "max_tokens": 24, "temperature": 0}
                for q in questions
            ]
            plain = await asyncio.gather(
                *(client.post("/chat/completions", json=b) for b in bodies)
            )
            # All four streams at once: rows share steps, and each row's text must not depend
            # on its neighbours.
            streams = await asyncio.gather(*(stream(client, b) for b in bodies))
            return [r.json() for r in plain], list(streams)

    plain, streams = asyncio.run(main())
    expected = tiny_model.generate([chat(q) for q in questions], Sampling(max_new_tokens=24))
    for body, chunks, [completion] in zip(plain, streams, expected, strict=True):
        assert body["choices"][0]["message"]["content"] == completion.text
        assert body["choices"][0]["finish_reason"] == completion.finish_reason
        assert stream_texts(chunks)[0] == completion.text
        contents = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
        # Streamed as decoded: several content chunks, not one finished text.
        assert completion.num_tokens < 4 or len(contents) > 1
    assert server.health()["steps"] > 0


def test_sampled_n_rows_equal_generate(
    start_server: StartServer, tiny_model: LanguageModel
) -> None:
    server = start_server(tiny_model, max_batch=8, served_name="tiny")
    body = {
        "model": "tiny",
        "messages": chat("roll the dice"),
        "max_tokens": 12,
        "temperature": 1.0,
        "top_k": 50,
        "n": 3,
        "seed": 123,
    }
    got = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=120).json()
    sampling = Sampling(temperature=1.0, top_k=50, n=3, seed=123, max_new_tokens=12)
    [expected] = tiny_model.generate([chat("roll the dice")], sampling)
    assert [c["message"]["content"] for c in got["choices"]] == [c.text for c in expected]
    assert got["usage"]["prompt_tokens"] > 0  # counted with the model's chat template
