"""One bad request fails alone: the requests batched with it are answered as if it had not come.

Both schedulers: the batcher over ``generate`` / ``stream`` (a scripted model whose batch call
fails when one chat is bad) and continuous batching over the HF engine (a tiny model built in
code, fed a lone surrogate and a text its tokenizer cannot encode)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models import load_model
from poise.models.base import Capabilities, Chat, Completion, LanguageModel, StreamEvent
from poise.serve.batcher import text_pieces

from .helpers import EchoModel, ThreadServer, last_user, read_sse, stream_texts

StartServer = Callable[..., ThreadServer]
GOOD = 15


class PickyEcho(EchoModel):
    """EchoModel whose batch call fails as a whole when one chat is bad: ``BAD`` is the
    request's fault (a PoiseError, like a tokenizer refusing the text), ``FAIL`` is not."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.sizes: list[int] = []  # chats per call

    def generate(self, chats: Sequence[Chat], sampling: Sampling, **kw: Any) -> Any:
        self.sizes.append(len(chats))
        for chat in chats:
            if last_user(chat).startswith("BAD"):
                raise PoiseError("the tokenizer cannot encode this chat")
        return super().generate(chats, sampling, **kw)


class StreamingPickyEcho(PickyEcho):
    """Streams each chat's words in turn; a bad chat fails the call once the chat after it has
    streamed its first word (the chats before it finished, that one half-way)."""

    capabilities = Capabilities(stream=True)

    def stream(self, chats: Sequence[Chat], sampling: Sampling, **kw: Any) -> Iterator[StreamEvent]:
        self.sizes.append(len(chats))
        failure: Exception | None = None
        for row, chat in enumerate(chats):
            message = last_user(chat)
            if message.startswith(("BAD", "FAIL")):
                if message.startswith("BAD"):
                    failure = PoiseError("the tokenizer cannot encode this chat")
                else:
                    failure = RuntimeError("scripted failure")
                continue
            for sample in range(sampling.n):
                completion = self.reply(chat, sampling, sample)
                pieces = text_pieces(completion.text)
                for piece in pieces[:-1]:
                    yield StreamEvent(row, sample, piece)
                    if failure is not None:
                        raise failure  # the row after the bad chat, half-way
                yield StreamEvent(row, sample, pieces[-1], completion)
        if failure is not None:
            raise failure


def body(text: str, **fields: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": text}], **fields}


async def post_all(server: ThreadServer, payloads: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        return list(
            await asyncio.gather(*(client.post("/chat/completions", json=p) for p in payloads))
        )


async def stream_all(
    server: ThreadServer, payloads: list[dict[str, Any]]
) -> list[tuple[int, str | None, Any]]:
    """(status, the stream's text or None, the error body) per request."""

    async def one(client: httpx.AsyncClient, payload: dict[str, Any]) -> tuple[int, Any, Any]:
        async with client.stream(
            "POST", "/chat/completions", json={**payload, "stream": True}
        ) as r:
            if r.status_code != 200:
                return r.status_code, None, (await r.aread()).decode()
            chunks, done = read_sse([line async for line in r.aiter_lines()])
            assert done
            return 200, stream_texts(chunks)[0], None

    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        return list(await asyncio.gather(*(one(client, p) for p in payloads)))


def expected_text(text: str) -> str:
    alone = EchoModel().generate([[{"role": "user", "content": text}]], Sampling(max_new_tokens=16))
    return alone[0][0].text


@pytest.mark.parametrize("model_class", [PickyEcho, StreamingPickyEcho])
def test_a_bad_request_in_a_batch_fails_alone(
    start_server: StartServer, model_class: type[PickyEcho]
) -> None:
    model = model_class("echo")
    # a long window: every request of the burst lands in one batch
    server = start_server(model, batch_window_ms=500, max_batch=64)
    texts = [f"good {i}" for i in range(GOOD)]
    payloads = [body(t, temperature=0, max_tokens=16) for t in texts]
    payloads.insert(5, body("BAD one", temperature=0, max_tokens=16))
    payloads.insert(11, body("FAIL one", temperature=0, max_tokens=16))
    responses = asyncio.run(post_all(server, payloads))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == GOOD, statuses
    bad, fail = responses[5], responses[11]
    assert bad.status_code == 400  # the request's fault
    assert "cannot encode" in bad.json()["error"]["message"]
    assert fail.status_code == 500  # the server's
    good = [r for i, r in enumerate(responses) if i not in (5, 11)]
    for text, response in zip(texts, good, strict=True):
        assert response.json()["choices"][0]["message"]["content"] == expected_text(text)
    # they were batched together, then each chat was retried alone
    assert model.sizes[0] == GOOD + 2
    assert model.sizes[1:] == [1] * (GOOD + 2)


def test_a_bad_request_in_a_streamed_batch_fails_alone_and_nothing_is_sent_twice(
    start_server: StartServer,
) -> None:
    model = StreamingPickyEcho("echo")
    server = start_server(model, batch_window_ms=500, max_batch=64)
    texts = [f"good {i}" for i in range(GOOD)]
    payloads = [body(t, temperature=0, max_tokens=16) for t in texts]
    payloads.insert(9, body("BAD one", temperature=0, max_tokens=16))
    results = asyncio.run(stream_all(server, payloads))
    assert model.sizes[0] == GOOD + 1  # one batch, then each chat alone
    assert results[9][0] == 400
    good = [r for i, r in enumerate(results) if i != 9]
    assert [status for status, _, _ in good] == [200] * GOOD
    for text, (_, streamed, _) in zip(texts, good, strict=True):
        # the chats streamed before the failure are replayed alone without repeating text
        assert streamed == expected_text(text)


# -- the HF engine -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_hf_model_dir: Path) -> LanguageModel:
    return load_model(str(tiny_hf_model_dir))


def test_bad_requests_on_the_engine_fail_alone_with_a_400(
    start_server: StartServer, tiny_model: LanguageModel
) -> None:
    server = start_server(tiny_model, served_name="tiny", batch_window_ms=300, max_batch=32)
    texts = [f"hello {i}" for i in range(8)]
    payloads: list[dict[str, Any]] = [
        {"model": "tiny", "messages": [{"role": "user", "content": t}], "max_tokens": 6}
        for t in texts
    ]
    for payload in payloads:
        payload["temperature"] = 0
    # a lone surrogate, sent as the JSON escape a client writes for it
    raw_bad = b'{"model": "tiny", "messages": [{"role": "user", "content": "x \\ud800 y"}]}'

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            bad = client.post(
                "/chat/completions", content=raw_bad, headers={"content-type": "application/json"}
            )
            return list(
                await asyncio.gather(
                    bad, *(client.post("/chat/completions", json=p) for p in payloads)
                )
            )

    responses = asyncio.run(main())
    assert responses[0].status_code == 400, responses[0].text
    assert responses[0].json()["error"]["param"] == "messages[0].content"
    alone = tiny_model.generate(
        [[{"role": "user", "content": t}] for t in texts], Sampling(max_new_tokens=6)
    )
    for response, completions in zip(responses[1:], alone, strict=True):
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == completions[0].text


def test_a_chat_the_tokenizer_cannot_encode_is_a_poise_error(tiny_model: LanguageModel) -> None:
    """Past the server's own checks (a Python caller of the engine), a tokenizer failure is the
    chat's fault: a one-line PoiseError for that chat, and the engine goes on."""
    engine = tiny_model.engine()  # type: ignore[attr-defined]
    with pytest.raises(PoiseError, match="could not encode"):
        engine.add("bad", [{"role": "user", "content": "x \ud800"}], Sampling(max_new_tokens=3))
    engine.add("good", [{"role": "user", "content": "hi"}], Sampling(max_new_tokens=3))
    finished: list[Completion] = []
    while not engine.idle:
        finished += [e.completion for e in engine.step() if e.completion is not None]
    assert len(finished) == 1
