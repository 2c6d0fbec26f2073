"""``poise serve`` as a real subprocess on 127.0.0.1: the CLI path end to end, malformed requests,
a bounded load test, and (slow) a tiny Hugging Face model served and compared in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from poise.config import Sampling
from poise.models import load_model
from poise.models.base import Chat
from poise.models.openai import OpenAIModel

from .helpers import ServeProcess, free_port, read_sse, start_serve_process, stream_texts

MAX_TOKENS_LIMIT = 64


def chat(text: str) -> Chat:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def mock_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    server = start_serve_process(
        ["--model", "mock", "--max-tokens-limit", str(MAX_TOKENS_LIMIT), "--max-n", "8"], log
    )
    yield server
    server.stop()


def post(server: ServeProcess, payload: Any, **kwargs: Any) -> httpx.Response:
    if isinstance(payload, (bytes, str)):
        return httpx.post(
            f"{server.base_url}/chat/completions",
            content=payload,
            headers={"content-type": "application/json"},
            timeout=30,
            **kwargs,
        )
    return httpx.post(f"{server.base_url}/chat/completions", json=payload, timeout=30, **kwargs)


def wait_until_idle(server: ServeProcess, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health = server.health()
        busy = health["pending"] + health["running"] + health["waiting"] + health["streams"]
        if busy == 0 or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def test_health_and_models(mock_server: ServeProcess) -> None:
    health = mock_server.health()
    assert health["status"] == "ok"
    assert health["model"] == "mock"
    models = httpx.get(f"{mock_server.base_url}/models").json()
    assert [m["id"] for m in models["data"]] == ["mock"]


def test_openai_backend_matches_the_model_in_process(mock_server: ServeProcess) -> None:
    remote = OpenAIModel("mock", base_urls=[mock_server.base_url])
    local = load_model("mock")
    chats = [chat(f"q{i}") for i in range(5)]
    for sampling in (
        Sampling(max_new_tokens=16),
        Sampling(temperature=1.0, n=3, seed=4, max_new_tokens=16),
        Sampling(temperature=1.0, n=2, seed=4, max_new_tokens=16, stop=("..",)),
    ):
        got = remote.generate(chats, sampling)
        want = local.generate(chats, sampling)
        assert [[(c.text, c.finish_reason) for c in row] for row in got] == [
            [(c.text, c.finish_reason) for c in row] for row in want
        ]
        assert all(len(row) == sampling.n for row in got)


def test_streaming_chunks_concatenate_to_the_full_text(mock_server: ServeProcess) -> None:
    payload = {"model": "mock", "messages": chat("hi"), "n": 2, "seed": 3, "max_tokens": 8}
    full = post(mock_server, payload).json()
    with httpx.stream(
        "POST",
        f"{mock_server.base_url}/chat/completions",
        json={**payload, "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        chunks, done = read_sse(list(response.iter_lines()))
    assert done
    assert stream_texts(chunks) == {c["index"]: c["message"]["content"] for c in full["choices"]}
    finals = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"] is not None]
    assert [f["index"] for f in finals] == [0, 1]


GOOD: dict[str, Any] = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}

# (body, expected status, expected param)
MALFORMED: list[tuple[Any, int, str | None]] = [
    ('{"model": "mock", "messages": [', 400, None),  # bad JSON
    ("", 400, None),
    ("null", 400, None),
    ({"model": "mock"}, 400, "messages"),
    ({**GOOD, "messages": []}, 400, "messages"),
    (
        {**GOOD, "messages": [{"role": "user", "content": ["not", "parts"]}]},
        400,
        "messages[0].content",
    ),
    ({**GOOD, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({**GOOD, "messages": [{"content": "hi"}]}, 400, "messages[0].role"),
    ({**GOOD, "temperature": -1}, 400, "temperature"),
    ({**GOOD, "temperature": "warm"}, 400, "temperature"),
    ({**GOOD, "top_p": 0}, 400, "top_p"),
    ({**GOOD, "top_p": 1.01}, 400, "top_p"),
    ({**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ({**GOOD, "max_tokens": MAX_TOKENS_LIMIT + 1}, 400, "max_tokens"),
    ({**GOOD, "max_completion_tokens": -5}, 400, "max_completion_tokens"),
    ({**GOOD, "n": 0}, 400, "n"),
    ({**GOOD, "n": 9}, 400, "n"),
    ({**GOOD, "n": "two"}, 400, "n"),
    ({**GOOD, "seed": 1.5}, 400, "seed"),
    ({**GOOD, "stop": {"a": 1}}, 400, "stop"),
    ({**GOOD, "model": "not-served"}, 404, "model"),
    ({**GOOD, "model": 7}, 400, "model"),
]


def test_malformed_requests_get_openai_errors_and_the_server_keeps_answering(
    mock_server: ServeProcess,
) -> None:
    for payload, status, param in MALFORMED:
        response = post(mock_server, payload)
        assert response.status_code == status, (payload, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param, (payload, error)
        assert isinstance(error["message"], str) and error["message"]
    # FastAPI's own answers use the same shape.
    missing = httpx.get(f"{mock_server.url}/v2/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = httpx.get(f"{mock_server.base_url}/chat/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert mock_server.process.poll() is None
    assert post(mock_server, GOOD).status_code == 200
    assert mock_server.health()["status"] == "ok"


def test_load_many_concurrent_streaming_clients(mock_server: ServeProcess) -> None:
    clients = 60
    steps_before = mock_server.health()["steps"]

    async def one(client: httpx.AsyncClient, i: int) -> str:
        payload = {**GOOD, "messages": chat(f"load {i}"), "stream": True, "seed": i % 3}
        async with client.stream("POST", "/chat/completions", json=payload) as response:
            assert response.status_code == 200
            chunks, done = read_sse([line async for line in response.aiter_lines()])
        assert done, f"client {i}: no [DONE]"
        return stream_texts(chunks)[0]

    async def main() -> list[str]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(
            base_url=mock_server.base_url, timeout=60, limits=limits
        ) as client:
            return list(
                await asyncio.wait_for(
                    asyncio.gather(*(one(client, i) for i in range(clients))), timeout=120
                )
            )

    texts = asyncio.run(main())
    assert texts == ["..."] * clients  # the mock's default reply, for every client
    health = wait_until_idle(mock_server)
    assert health["pending"] == health["streams"] == health["waiting"] == 0
    # The mock is served by continuous batching (its engine); its default reply is one token,
    # so a request takes one step: 60 requests shared far fewer than 60 steps.
    assert health["batching"] == "continuous"
    assert health["steps"] - steps_before < clients / 2
    assert post(mock_server, GOOD).status_code == 200


def test_a_client_leaving_mid_stream_does_not_disturb_the_others(mock_server: ServeProcess) -> None:
    async def full(client: httpx.AsyncClient, i: int) -> bool:
        payload = {**GOOD, "messages": chat(f"stay {i}"), "stream": True}
        async with client.stream("POST", "/chat/completions", json=payload) as response:
            _, done = read_sse([line async for line in response.aiter_lines()])
        return done

    async def leave(client: httpx.AsyncClient) -> bool:
        payload = {**GOOD, "messages": chat("leave"), "stream": True}
        async with client.stream("POST", "/chat/completions", json=payload) as response:
            async for line in response.aiter_lines():
                json.loads(line[len("data: ") :])
                return False  # gone after the first chunk
        return True

    async def main() -> list[bool]:
        async with (
            httpx.AsyncClient(base_url=mock_server.base_url, timeout=60) as stayer,
            httpx.AsyncClient(base_url=mock_server.base_url, timeout=60) as leaver,
        ):
            jobs = [full(stayer, i) for i in range(10)] + [leave(leaver) for _ in range(5)]
            return list(await asyncio.wait_for(asyncio.gather(*jobs), timeout=60))

    results = asyncio.run(main())
    assert results == [True] * 10 + [False] * 5
    health = wait_until_idle(mock_server)
    assert health["pending"] == health["streams"] == health["waiting"] == 0
    assert post(mock_server, GOOD).status_code == 200


# serve() as the CLI runs it, in the main thread of its process (so uvicorn handles Ctrl-C),
# over a mock that decodes one token per 5 ms: a 2,000-token answer takes 10 s
SLOW_SERVER = """
import sys
from poise.models.mock import MockModel
from poise.serve.app import serve
from poise.serve.schema import ServeConfig

model = MockModel("slow", default=" ".join(["word"] * 2000), step_delay=0.005)
serve(ServeConfig(model="slow", port=int(sys.argv[1])), model=model)
print("stopped", flush=True)
"""


@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_mid_stream_ends_it_with_an_error_event_and_no_traceback(
    presses: int, tmp_path: Path
) -> None:
    """Once: the stream gets the grace (2 s) to finish, then its error event; twice (0.3 s
    apart): its error event at once. Either way no traceback, and the process exits 0."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    with log.open("wb") as sink:
        command = [sys.executable, "-c", SLOW_SERVER, str(port)]
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    payload = {
        "model": "slow",
        "messages": chat("go"),
        "stream": True,
        "n": 8,
        "max_tokens": 2000,
        "temperature": 4,
    }
    lines: list[str] = []
    pressed: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=30) as r:
            assert r.status_code == 200
            for line in r.iter_lines():  # ends cleanly: no RemoteProtocolError
                lines.append(line)
                due = not pressed or time.monotonic() - pressed[-1] > 0.3
                if len(lines) >= 20 and len(pressed) < presses and due:
                    process.send_signal(signal.SIGINT)
                    pressed.append(time.monotonic())
        took = time.monotonic() - pressed[0]
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=15)
    chunks, done = read_sse(lines)
    assert not done
    assert chunks[-1]["error"]["message"] == "the server is shutting down"
    assert chunks[-1]["error"]["code"] == "server_shutting_down"
    # the grace (2 s) or at once, not the 10 s of the whole answer
    assert 1.5 < took < 8 if presses == 1 else took < 1.5
    output = log.read_text()
    assert "stopped" in output
    for noise in ("Traceback", "CancelledError", "ERROR"):
        assert noise not in output, output


class _HeldUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that lists model "held" and answers a chat completion only
    once ``release`` is set: a remote model whose call is in flight for as long as a test likes."""

    received: threading.Event
    release: threading.Event

    def _send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": "held", "object": "model"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.received.set()
        self.release.wait(timeout=300)
        message = {"role": "assistant", "content": "late"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        with contextlib.suppress(OSError):  # the client may have left
            self._send(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "held",
                    "choices": [choice],
                    "usage": usage,
                }
            )

    def log_message(self, *args: Any) -> None:
        pass


def test_ctrl_c_exits_without_waiting_for_a_remote_models_call_in_flight(tmp_path: Path) -> None:
    """``poise serve --model openai:...`` stopped by Ctrl-C while its upstream still worked on a
    request answered its client (503) but then did not exit until the upstream answered (the
    interpreter joins the model's worker thread at exit), minutes for a long generation, and a
    second Ctrl-C did not end the wait. The process now exits without that answer."""
    handler = type("Held", (_HeldUpstream,), {})
    handler.received, handler.release = threading.Event(), threading.Event()
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    upstream_url = f"http://127.0.0.1:{upstream.server_address[1]}/v1"
    server = start_serve_process(
        ["--model", f"openai:held@{upstream_url}", "--served-name", "held"], tmp_path / "serve.log"
    )
    answers: list[httpx.Response] = []

    def ask() -> None:
        body = {"model": "held", "messages": chat("hi"), "stream": True}
        answers.append(httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=120))

    client = threading.Thread(target=ask)
    try:
        client.start()
        assert handler.received.wait(timeout=60)
        server.process.send_signal(signal.SIGINT)
        # the upstream still holds its answer (until released below)
        assert server.process.wait(timeout=60) == 0, server.log.read_text()
        client.join(timeout=60)
        assert [a.status_code for a in answers] == [503]
        assert answers[0].json()["error"]["code"] == "server_shutting_down"
        output = server.log.read_text()
        for noise in ("Traceback", "CancelledError", "ERROR"):
            assert noise not in output, output
    finally:
        handler.release.set()
        server.stop()
        upstream.shutdown()
        upstream.server_close()


@pytest.mark.slow
def test_tiny_hf_model_served_matches_in_process(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    server = start_serve_process(
        ["--model", str(tiny_hf_model_dir), "--served-name", "tiny", "--max-batch", "8"],
        tmp_path / "serve.log",
    )
    try:
        local = load_model(str(tiny_hf_model_dir))
        remote = OpenAIModel("tiny", base_urls=[server.base_url], concurrency=4)
        chats = [chat("hello there"), chat("what is the capital of France?"), chat("a b c")]
        greedy = Sampling(max_new_tokens=12)
        assert [[c.text for c in row] for row in remote.generate(chats, greedy)] == [
            [c.text for c in row] for row in local.generate(chats, greedy)
        ]
        sampled = Sampling(temperature=1.0, top_k=50, n=3, seed=123, max_new_tokens=12)
        first = remote.generate(chats, sampled)
        assert first == remote.generate(chats, sampled)  # a seed reproduces
        assert [[c.text for c in row] for row in first] == [
            [c.text for c in row] for row in local.generate(chats, sampled)
        ]
        assert all(len(row) == 3 for row in first)

        payload = {"model": "tiny", "messages": chats[1], "max_tokens": 12, "seed": 5}
        full = httpx.post(f"{server.base_url}/chat/completions", json=payload, timeout=60).json()
        with httpx.stream(
            "POST",
            f"{server.base_url}/chat/completions",
            json={**payload, "stream": True},
            timeout=60,
        ) as response:
            chunks, done = read_sse(list(response.iter_lines()))
        assert done
        assert stream_texts(chunks)[0] == full["choices"][0]["message"]["content"]
        assert full["usage"]["prompt_tokens"] > 0  # counted with the model's chat template
    finally:
        server.stop()


def test_a_base_model_without_a_chat_template_serves_raw_prompts(
    no_template_hf_model_dir: Path, tmp_path: Path
) -> None:
    """``poise serve`` refused to start on a model whose tokenizer has no chat template (a base
    model), though ``/v1/completions`` feeds raw prompts and needs none. It now starts, as vLLM
    does: ``/v1/completions`` answers, and each chat request gets one 400 saying the model has
    no chat template (vLLM: "default chat template is no longer allowed"). Checked with the
    official openai client."""
    import openai

    server = start_serve_process(
        ["--model", str(no_template_hf_model_dir), "--served-name", "base"],
        tmp_path / "serve.log",
    )
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        completion = client.completions.create(
            model="base", prompt="the cat sat", max_tokens=4, temperature=0
        )
        assert completion.choices[0].finish_reason in ("stop", "length")
        assert completion.usage is not None and completion.usage.prompt_tokens > 0
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(
                    model="base", messages=[{"role": "user", "content": "hi"}], stream=stream
                )
            error = refused.value.body
            assert isinstance(error, dict) and error["code"] == "no_chat_template"
            assert "'base' has no chat template" in error["message"]
            assert "/v1/completions" in error["message"]
        # the server said so once at start, and is still healthy
        assert "no chat template" in server.log.read_text()
        assert server.health()["status"] == "ok"
    finally:
        server.stop()
