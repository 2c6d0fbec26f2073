"""The server in a thread of the test process, over a scripted model (fast, real HTTP)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import (
    Capabilities,
    Chat,
    Completion,
    GenerationError,
    StepView,
    StreamEvent,
    UpstreamError,
)
from poise.models.mock import MockModel
from poise.models.openai import OpenAIModel

from .helpers import EchoModel, ThreadServer, free_port, read_sse, stream_texts

StartServer = Callable[..., ThreadServer]


def chat(text: str) -> Chat:
    return [{"role": "user", "content": text}]


def ask(server: ThreadServer, text: str, **fields: Any) -> httpx.Response:
    payload = {"model": server.state.config.name, "messages": chat(text), **fields}
    return httpx.post(f"{server.base_url}/chat/completions", json=payload, timeout=30)


def ask_stream(server: ThreadServer, text: str, **fields: Any) -> list[dict[str, Any]]:
    payload = {"model": server.state.config.name, "messages": chat(text), "stream": True, **fields}
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=payload, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks, done = read_sse(list(response.iter_lines()))
    assert done
    return chunks


def wait_until_idle(
    server: ThreadServer, baseline_tasks: int, timeout: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health = server.health()
        idle = (
            health["pending"] == health["running"] == health["waiting"] == health["streams"] == 0
            and health["tasks"] <= baseline_tasks
        )
        if idle or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def test_response_has_the_openai_shape(start_server: StartServer, echo_model: EchoModel) -> None:
    server = start_server(echo_model)
    response = ask(server, "hello", temperature=0, max_tokens=4)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "echo"
    [choice] = body["choices"]
    expected = echo_model.reply(chat("hello"), Sampling(max_new_tokens=4), 0)
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == "length"  # the echo model has 6 words, 4 allowed
    assert body["usage"]["completion_tokens"] == 4
    # a model without a tokenizer cannot count its prompt: 0, an int as OpenAI clients expect
    assert body["usage"]["prompt_tokens"] == 0
    assert body["usage"]["total_tokens"] == 4


def test_models_and_health(start_server: StartServer, echo_model: EchoModel) -> None:
    server = start_server(echo_model, served_name="my-model")
    models = httpx.get(f"{server.base_url}/models").json()
    assert [m["id"] for m in models["data"]] == ["my-model"]
    assert httpx.get(f"{server.base_url}/models/my-model").status_code == 200
    assert httpx.get(f"{server.base_url}/models/other").status_code == 404
    health = server.health()
    assert health["status"] == "ok" and health["model"] == "my-model"
    # The model's own name is accepted too; any other name is a 404 naming the served one.
    assert ask(server, "x").status_code == 200
    payload = {"model": "echo", "messages": chat("x")}
    assert httpx.post(f"{server.base_url}/chat/completions", json=payload).status_code == 200
    payload["model"] = "gpt-4"
    response = httpx.post(f"{server.base_url}/chat/completions", json=payload)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert "my-model" in response.json()["error"]["message"]


def test_openai_backend_gets_the_in_process_completions(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    server = start_server(echo_model)
    remote = OpenAIModel("echo", base_urls=[server.base_url], concurrency=8)
    chats = [chat(f"question {i}") for i in range(12)]
    for sampling in (
        Sampling(max_new_tokens=5),  # greedy
        Sampling(temperature=0.8, top_k=20, seed=3, n=3),
        Sampling(temperature=1.0, seed=4, n=2, max_new_tokens=2),
    ):
        local = echo_model.generate(chats, sampling)
        got = remote.generate(chats, sampling)
        assert [[(c.text, c.finish_reason) for c in row] for row in got] == [
            [(c.text, c.finish_reason) for c in row] for row in local
        ]
    # The server batched the concurrent requests rather than calling the model per chat.
    assert len(echo_model.calls) < 3 * 3 + 12 * 3


def test_seeds_reproduce_and_missing_seeds_do_not(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    server = start_server(echo_model)

    def text(**fields: Any) -> str:
        return str(
            ask(server, "roll", temperature=1.0, **fields).json()["choices"][0]["message"][
                "content"
            ]
        )

    assert text(seed=1) == text(seed=1)
    assert text(seed=1) != text(seed=2)
    assert len({text() for _ in range(4)}) == 4


def test_n_choices(start_server: StartServer, echo_model: EchoModel) -> None:
    server = start_server(echo_model)
    body = ask(server, "several", temperature=1.0, n=3, seed=9).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    contents = [c["message"]["content"] for c in body["choices"]]
    sampling = Sampling(temperature=1.0, n=3, seed=9, max_new_tokens=2048)
    assert contents == [echo_model.reply(chat("several"), sampling, i).text for i in range(3)]
    assert len(set(contents)) == 3


def test_text_parts_are_joined_by_newlines_as_vllm_joins_them(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    """A message's content given as text parts reaches the model as vLLM hands it to a chat
    template that takes a string: the parts joined by "\\n" (two sentences sent as two parts are
    not glued into one word)."""
    server = start_server(echo_model)
    parts = [{"type": "text", "text": "first part."}, {"type": "text", "text": "second part"}]
    payload = {"model": "echo", "messages": [{"role": "user", "content": parts}]}
    response = httpx.post(f"{server.base_url}/chat/completions", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    assert echo_model.seen_messages()[-1] == "first part.\nsecond part"


def test_stream_concatenates_to_the_full_text(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    server = start_server(echo_model)
    fields = {"temperature": 1.0, "seed": 11, "n": 2, "max_tokens": 5}
    full = ask(server, "stream me", **fields).json()
    chunks = ask_stream(server, "stream me", stream_options={"include_usage": True}, **fields)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert stream_texts(chunks) == {c["index"]: c["message"]["content"] for c in full["choices"]}
    for index in (0, 1):
        mine = [
            c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index
        ]
        assert mine[0]["delta"]["role"] == "assistant"
        assert len(mine) > 3  # streamed in pieces, not in one delta
        assert [m["finish_reason"] for m in mine[:-1]] == [None] * (len(mine) - 1)
        assert mine[-1]["finish_reason"] == full["choices"][index]["finish_reason"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == full["usage"]["completion_tokens"]


def test_model_failure_is_a_500_and_the_server_keeps_going(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    server = start_server(echo_model)
    response = ask(server, "FAIL please")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert ask(server, "fine").status_code == 200


def test_model_refusing_a_value_is_a_400(start_server: StartServer) -> None:
    class Picky(EchoModel):
        def generate(self, chats: Any, sampling: Sampling, *, progress: Any = None) -> Any:
            raise PoiseError("prompt is longer than the context (512 tokens)")

    response = ask(start_server(Picky("picky")), "long")
    assert response.status_code == 400
    assert "longer than the context" in response.json()["error"]["message"]


def test_client_gone_before_its_batch_is_not_generated(start_server: StartServer) -> None:
    model = EchoModel("slow", delay=1.0)
    server = start_server(model, batch_window_ms=0)
    baseline = server.health()["tasks"]

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            busy = asyncio.create_task(
                client.post("/chat/completions", json={"model": "slow", "messages": chat("busy")})
            )
            while (await client.get(f"{server.url}/health")).json()["running"] == 0:
                await asyncio.sleep(0.02)  # wait until "busy" is being generated
            with pytest.raises(httpx.ReadTimeout):
                await client.post(
                    "/chat/completions",
                    json={"model": "slow", "messages": chat("impatient")},
                    timeout=0.3,
                )
            assert (await busy).status_code == 200

    asyncio.run(main())
    health = wait_until_idle(server, baseline)
    assert health["pending"] == health["waiting"] == 0
    assert model.seen_messages() == ["busy"]


def test_disconnect_mid_stream_does_not_disturb_the_others(start_server: StartServer) -> None:
    model = EchoModel("long")
    server = start_server(model)
    baseline = server.health()["tasks"]
    long_text = "WORDS=4000"  # 4,000 words: far more than socket buffers hold
    sampling = Sampling(temperature=1.0, seed=1, max_new_tokens=2048)
    expected = model.reply(chat(long_text), sampling, 0).text

    async def full_stream(client: httpx.AsyncClient) -> str:
        payload = {"model": "long", "messages": chat(long_text), "stream": True, "seed": 1}
        async with client.stream("POST", "/chat/completions", json=payload) as response:
            chunks, done = read_sse([line async for line in response.aiter_lines()])
        assert done
        return stream_texts(chunks)[0]

    async def leave_early(client: httpx.AsyncClient) -> int:
        payload = {"model": "long", "messages": chat(long_text), "stream": True, "seed": 1}
        received = 0
        async with client.stream("POST", "/chat/completions", json=payload) as response:
            async for _ in response.aiter_lines():
                received += 1
                if received == 5:
                    break  # leaving the block closes the connection mid-stream
        return received

    async def main() -> list[Any]:
        limits = httpx.Limits(max_connections=20)
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client,
            httpx.AsyncClient(base_url=server.base_url, timeout=60) as quitter,
        ):
            jobs = [full_stream(client) for _ in range(6)] + [
                leave_early(quitter) for _ in range(3)
            ]
            return list(await asyncio.wait_for(asyncio.gather(*jobs), timeout=120))

    results = asyncio.run(main())
    assert results[:6] == [expected] * 6
    assert results[6:] == [5, 5, 5]
    health = wait_until_idle(server, baseline)
    assert health["streams"] == health["pending"] == health["waiting"] == 0
    assert health["tasks"] <= baseline
    assert ask(server, "still there?").status_code == 200


def _leave_a_long_stream(url: str, payload: dict[str, Any]) -> None:
    with httpx.stream("POST", url, json=payload, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for received, _ in enumerate(response.iter_lines()):
            if received == 3:
                break  # leaving the block closes the connection mid-stream


def _socket_warnings(records: list[logging.LogRecord]) -> list[str]:
    # asyncio's warning for a write to a connection that is gone
    return [r.getMessage() for r in records if "socket.send() raised" in r.getMessage()]


def test_a_stream_of_a_finished_text_stops_when_its_client_leaves(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, tiny_hf_model_dir: Path
) -> None:
    """A model that cannot stream hands over the whole text at once, and /v1/completions streams
    a finished text: the stream still stops at the client's leaving, instead of writing its
    thousands of pieces to the closed socket, each with asyncio's warning in the log."""
    from poise.models.hf import HFModel

    echo = start_server(EchoModel("long"), max_tokens_limit=32768)
    tiny = start_server(HFModel(str(tiny_hf_model_dir), device="cpu"), served_name="tiny")
    words = {"role": "user", "content": "WORDS=30000"}
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        _leave_a_long_stream(
            f"{echo.base_url}/chat/completions",
            {"model": "long", "messages": [words], "stream": True, "max_tokens": 32768},
        )
        # echoed prompts, in word-sized pieces: no generation needed for a long stream
        prompts = ["a b c d " * 40] * 64
        _leave_a_long_stream(
            f"{tiny.base_url}/completions",
            {"model": "tiny", "prompt": prompts, "echo": True, "max_tokens": 0, "stream": True},
        )
        time.sleep(0.5)
        assert _socket_warnings(caplog.records) == []
    for server in (echo, tiny):
        health = wait_until_idle(server, 10**6)
        assert health["streams"] == health["running"] == 0


def test_a_guard_stop_round_trips_as_content_filter(start_server: StartServer) -> None:
    class Guarded(EchoModel):
        def generate(self, chats: Any, sampling: Sampling, *, progress: Any = None) -> Any:
            return [[Completion("I must stop here.", 4, "guard")] for _ in chats]

    server = start_server(Guarded("guarded"))
    assert ask(server, "x").json()["choices"][0]["finish_reason"] == "content_filter"
    remote = OpenAIModel("guarded", base_urls=[server.base_url])
    assert remote.generate([chat("x")], Sampling())[0][0].finish_reason == "guard"


def test_deeply_nested_json_is_a_400_and_the_server_goes_on(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    server = start_server(echo_model)
    for raw in (b"[" * 100_000, b'{"model": "echo", "messages": ' + b"[" * 50_000):
        response = httpx.post(
            f"{server.base_url}/chat/completions",
            content=raw,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_json"
    assert ask(server, "still here").status_code == 200


# -- shutdown ---------------------------------------------------------------------------------------

SHUTTING_DOWN = {
    "error": {
        "message": "the server is shutting down",
        "type": "server_error",
        "param": None,
        "code": "server_shutting_down",
    }
}


@contextmanager
def serving(model: Any, *, grace_s: float, timeout_s: int) -> Iterator[tuple[Any, str]]:
    """``(server, url)``: ``poise serve``'s own uvicorn server (make_server) in a thread; set
    ``server.should_exit`` to stop it as Ctrl-C does."""
    from poise.serve.app import create_app, make_server
    from poise.serve.schema import ServeConfig

    port = free_port()
    config = ServeConfig(port=port, served_name=model.name)
    server = make_server(create_app(model, config), config, grace_s=grace_s, timeout_s=timeout_s)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield server, f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive(), "the server did not stop"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def logged() -> Iterator[list[logging.LogRecord]]:
    """The records of uvicorn's, poise's and asyncio's loggers (uvicorn's and, after a CLI test,
    poise's do not propagate to the root, so caplog would miss them)."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn", "poise", "asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def slow_model(tokens: int = 2000) -> MockModel:
    # one token per 5 ms engine step: 2,000 tokens take 10 s, far past the shutdown
    return MockModel("slow", default=" ".join(["word"] * tokens), step_delay=0.005)


def no_traceback(records: list[logging.LogRecord]) -> None:
    tracebacks = [r.getMessage() for r in records if r.exc_info]
    assert not tracebacks, tracebacks
    assert not [r for r in records if "Exception in ASGI application" in r.getMessage()]


@pytest.mark.parametrize(
    ("grace_s", "timeout_s"),
    [(0.2, 5), (60.0, 1)],
    # ended: the server ends the stream after its grace; cancelled: uvicorn's graceful timeout
    # cancels the stream's task first
    ids=["ended", "cancelled"],
)
def test_shutdown_mid_stream_ends_it_with_an_error_event_and_no_traceback(
    grace_s: float, timeout_s: int
) -> None:
    payload = {
        "model": "slow",
        "messages": chat("go"),
        "stream": True,
        "n": 4,
        "max_tokens": 2000,
        "temperature": 1,
    }
    lines: list[str] = []
    with (
        serving(slow_model(), grace_s=grace_s, timeout_s=timeout_s) as (server, url),
        logged() as records,
    ):
        started = time.monotonic()
        with httpx.stream("POST", f"{url}/chat/completions", json=payload, timeout=30) as response:
            assert response.status_code == 200
            for line in response.iter_lines():  # ends cleanly: no RemoteProtocolError
                lines.append(line)
                if len(lines) == 20:
                    server.should_exit = True  # what Ctrl-C does
        took = time.monotonic() - started
    chunks, done = read_sse(lines)
    assert not done
    assert chunks[-1] == SHUTTING_DOWN
    assert not any("error" in c for c in chunks[:-1])
    assert not any(ch["finish_reason"] for c in chunks[:-1] for ch in c["choices"])
    assert took < 10
    no_traceback(records)


def test_a_request_still_waiting_at_shutdown_gets_a_503_and_a_short_one_finishes() -> None:
    def ask_plain(url: str, tokens: int) -> httpx.Response:
        payload = {"model": "slow", "messages": chat("go"), "max_tokens": tokens}
        return httpx.post(f"{url}/chat/completions", json=payload, timeout=30)

    # the mock's 2,000-token answer is cut at 2,000 or 60 tokens: 10 s or 0.3 s of decoding,
    # one past the grace of 1 s, one within it
    with (
        serving(slow_model(), grace_s=1.0, timeout_s=5) as (server, url),
        logged() as records,
        ThreadPoolExecutor(2) as pool,
    ):
        long = pool.submit(ask_plain, url, 2000)
        short = pool.submit(ask_plain, url, 60)
        deadline = time.monotonic() + 10
        while httpx.get(url.removesuffix("/v1") + "/health").json()["waiting"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.should_exit = True
        answered, cut = short.result(), long.result()
    assert answered.status_code == 200
    assert answered.json()["choices"][0]["finish_reason"] == "length"
    assert cut.status_code == 503
    assert cut.json() == SHUTTING_DOWN
    no_traceback(records)


def _slow_hf(folder: Path) -> Any:
    """A tiny hf model that never ends an answer early (EOS masked) and takes 40 ms a decoding
    step (480 steps: 19 s); ``steps`` counts the steps it decoded."""
    from poise.models.hf import HFModel

    class SlowHF(HFModel):
        steps = 0

        def complete(self, prompts: Any, sampling: Sampling, **kwargs: Any) -> Any:
            inner = kwargs.pop("logits_hook", None)

            def hook(view: StepView) -> torch.Tensor:
                if inner is not None:
                    inner(view)
                self.steps += 1
                time.sleep(0.04)
                logits = view.logits.clone()
                logits[:, sorted(self.eos_token_ids)] = float("-inf")
                return logits

            return super().complete(prompts, sampling, logits_hook=hook, **kwargs)

    return SlowHF(str(folder), device="cpu")


def test_a_completions_request_still_decoding_at_shutdown_gets_a_503(
    tiny_hf_model_dir: Path,
) -> None:
    """``/v1/completions`` decodes in a worker thread outside the scheduler: the server's end
    of the requests in flight reaches it too, at its next decoding step, instead of leaving the
    thread to decode on (uvicorn cuts the response; the process waits for the thread)."""
    model = _slow_hf(tiny_hf_model_dir)
    payload = {"model": model.name, "prompt": "the cat", "max_tokens": 480}
    with (
        serving(model, grace_s=0.2, timeout_s=60) as (server, url),
        logged() as records,
        ThreadPoolExecutor(1) as pool,
    ):
        cut = pool.submit(httpx.post, f"{url}/completions", json=payload, timeout=60)
        deadline = time.monotonic() + 30
        while model.steps < 3:  # decoding, not waiting for the connection
            assert time.monotonic() < deadline, "the request did not start decoding"
            time.sleep(0.01)
        server.should_exit = True
        response = cut.result()
    assert response.status_code == 503, response.text
    assert response.json() == SHUTTING_DOWN
    no_traceback(records)


def test_a_completions_client_that_leaves_frees_the_model(tiny_hf_model_dir: Path) -> None:
    """The generation of a client that disconnects ends (it held the model, one request at a
    time, for its 480 steps): the next request is answered after a few of them."""
    model = _slow_hf(tiny_hf_model_dir)
    payload = {"model": model.name, "prompt": "the cat", "max_tokens": 480}
    with serving(model, grace_s=0.2, timeout_s=5) as (_, url), logged() as records:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/completions", json=payload, timeout=0.5)
        answer = httpx.post(f"{url}/completions", json={**payload, "max_tokens": 3}, timeout=60)
    no_traceback(records)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 3
    assert model.steps < 100  # of the 480 the first request asked for, and the next one's 3


# -- a served openai: model whose upstream fails ------------------------------------------------


def send_json(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _FailingUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that answers every chat completion with
    ``status`` (a 5xx: a server behind a gateway that keeps failing)."""

    status = 503

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        send_json(self, self.status, {"error": {"message": "the engine is down", "type": "x"}})

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http_stub(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a free port of 127.0.0.1 in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_an_upstream_that_fails_is_a_502_and_a_refusal_of_the_request_stays_a_400(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    """``poise serve`` in front of another OpenAI-compatible server answered an upstream that
    could not be reached, or kept failing with 5xx, with a 400 ``invalid_request_error``: the
    client's fault, which clients (the openai client, inspect, lm-eval) do not retry. It is now
    a 502 ``server_error`` naming the upstream failure; a request the upstream refuses stays a
    400. Checked with the official openai client, plain and streamed."""
    import openai

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with http_stub(_FailingUpstream) as failing:
        for url, why in [(dead, f"cannot reach {dead} ("), (failing, "HTTP 503 from")]:
            remote = OpenAIModel("up", base_urls=[url], max_retries=0)
            front = start_server(remote, served_name="up")
            client = openai.OpenAI(base_url=front.base_url, api_key="x", max_retries=0)
            for stream in (False, True):
                with pytest.raises(openai.InternalServerError) as caught:
                    client.chat.completions.create(
                        model="up", messages=[{"role": "user", "content": "hi"}], stream=stream
                    )
                assert caught.value.status_code == 502
                error = caught.value.body
                assert isinstance(error, dict)
                assert error["type"] == "server_error" and error["code"] == "upstream_error"
                assert "request failed after 1 attempts" in error["message"]
                assert why in error["message"]
    # an upstream that refuses the request (its max_tokens over the upstream's limit): a 400
    upstream = start_server(echo_model, served_name="up", max_tokens_limit=16)
    front = start_server(OpenAIModel("up", base_urls=[upstream.base_url], max_retries=0))
    client = openai.OpenAI(base_url=front.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=front.state.config.name,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=32,
        )
    assert refused.value.status_code == 400
    assert "refused the request (HTTP 400)" in str(refused.value.body)


class _KeyRefusingUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that refuses every chat completion with a 401 (the key the
    front server sends is wrong)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        send_json(self, 401, {"error": {"message": "Incorrect API key provided", "type": "x"}})

    def log_message(self, *args: Any) -> None:
        pass


def test_an_upstream_that_refuses_the_front_servers_key_is_a_502(
    start_server: StartServer,
) -> None:
    """An upstream 401 (the front server's own key is wrong) came back as a 400: the client's
    fault, though no request of theirs could be answered. The key is the front server's
    configuration: a 502, as for an upstream that cannot be reached."""
    import openai

    with http_stub(_KeyRefusingUpstream) as refusing:
        front = start_server(OpenAIModel("up", base_urls=[refusing], max_retries=0))
        client = openai.OpenAI(base_url=front.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(
                model=front.state.config.name, messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "upstream_error"
    assert "refused the request (HTTP 401)" in error["message"]


class _SeedCounter(BaseHTTPRequestHandler):
    """An OpenAI-compatible server of model "up" that answers a chat completion only once
    ``expected`` requests are in flight together (a barrier), with its seed as the text."""

    barrier: threading.Barrier

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        try:
            self.barrier.wait(timeout=20)
        except threading.BrokenBarrierError:
            send_json(self, 500, {"error": {"message": "alone", "type": "x"}})
            return
        message = {"role": "assistant", "content": f"seed {body['seed']}"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        send_json(
            self,
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "up",
                "choices": [choice],
            },
        )

    def log_message(self, *args: Any) -> None:
        pass


def test_seeded_requests_to_a_served_openai_model_go_upstream_together(
    start_server: StartServer,
) -> None:
    """Each distinct seed is its own ``generate`` call, and the server made its calls one after
    another in one worker thread: 3 concurrent seeded requests to a server in front of another
    went upstream one at a time. A call's samples depend on its chats and sampling only, so the
    order changes nothing: the openai backend (``capabilities.concurrent``) now has them sent
    side by side. The upstream here answers only once all 3 are in flight."""
    handler = type("Seeds", (_SeedCounter,), {"barrier": threading.Barrier(3)})
    with http_stub(handler) as url:
        remote = OpenAIModel("up", base_urls=[url], max_retries=0)
        front = start_server(remote, served_name="up", batch_window_ms=1000)

        def one(seed: int) -> httpx.Response:
            payload = {"model": "up", "messages": chat("hi"), "seed": seed, "temperature": 1.0}
            return httpx.post(f"{front.base_url}/chat/completions", json=payload, timeout=60)

        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(one, [11, 22, 33]))
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    # each answer is its own request's (the seed the backend forwards)
    assert [a.json()["choices"][0]["message"]["content"] for a in answers] == [
        "seed 11",
        "seed 22",
        "seed 33",
    ]


def test_a_strategys_refusal_of_the_sampling_is_a_400_as_in_the_audit(
    start_server: StartServer, tiny_hf_model_dir: Path
) -> None:
    """best_of_n under greedy decoding draws N identical answers: the audit refuses it, the
    server answered it (at N times the cost)."""
    from poise.models import load_model

    model = load_model(f"best_of_n({tiny_hf_model_dir}, n=2, reward=keywords:the)")
    server = start_server(model)
    refused = ask(server, "hi", temperature=0, max_tokens=2)
    assert refused.status_code == 400, refused.text
    assert "under greedy decoding draws 2 identical answers" in refused.json()["error"]["message"]
    assert ask(server, "hi", temperature=1, max_tokens=2, seed=1).status_code == 200


# -- what a client reads of a response ---------------------------------------------------------------


def test_a_stream_without_include_usage_sends_no_usage_chunk(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    """OpenAI sends the usage chunk (``choices: []``) only with ``stream_options.include_usage``:
    without it, every chunk is a choice's, and the last is the one with its finish_reason."""
    server = start_server(echo_model)
    chunks = ask_stream(server, "no usage", max_tokens=3)
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_the_served_name_is_the_model_of_every_answer(start_server: StartServer) -> None:
    """A model served under another name (``--served-name``) answers with that name in
    ``model``, plain and streamed, whichever of its names the request used."""
    server = start_server(EchoModel("echo"), served_name="my-model")
    for asked in ("my-model", "echo"):
        payload = {"model": asked, "messages": chat("hi"), "max_tokens": 2}
        body = httpx.post(f"{server.base_url}/chat/completions", json=payload, timeout=30).json()
        assert body["model"] == "my-model"
        with httpx.stream(
            "POST", f"{server.base_url}/chat/completions", json={**payload, "stream": True}
        ) as response:
            chunks, done = read_sse(list(response.iter_lines()))
        assert done and {c["model"] for c in chunks} == {"my-model"}


class _FailsMidStream(EchoModel):
    """A streaming model that sends its first word, then fails with ``error``."""

    capabilities = Capabilities(stream=True)

    def __init__(self, error: Exception) -> None:
        super().__init__("midway")
        self.error = error

    def stream(self, chats: Any, sampling: Sampling) -> Iterator[StreamEvent]:
        yield StreamEvent(0, 0, "first ")
        raise self.error


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (UpstreamError("midway: HTTP 503 from upstream"), "upstream_error", None),
        (
            RuntimeError("a bug's internals /home/x/secret.py"),
            "internal_error",
            "internal server error",
        ),
    ],
    ids=["upstream", "bug"],
)
def test_a_stream_that_fails_after_its_first_token_ends_with_an_error_event(
    start_server: StartServer, error: Exception, code: str, message: str | None
) -> None:
    """Once the 200 and the first token are sent, a failure is an ``error`` object in the
    stream, without ``[DONE]`` (as vLLM sends it): a failed upstream says so (upstream_error,
    with its message), a bug in the server says only "internal server error", never its text."""
    server = start_server(_FailsMidStream(error))
    payload = {"model": "midway", "messages": chat("hi"), "stream": True}
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=payload, timeout=30
    ) as response:
        assert response.status_code == 200
        chunks, done = read_sse(list(response.iter_lines()))
    assert not done
    assert stream_texts(chunks[:-1]) == {0: "first "}
    assert chunks[-1] == {
        "error": {
            "message": message or str(error),
            "type": "server_error",
            "param": None,
            "code": code,
        }
    }


def test_a_partial_failure_is_an_upstream_one_only_when_every_failed_chat_was() -> None:
    """A call whose failed chats were all failed by the server behind the model is a 502; one
    where the model refused any of them is the request's fault (a 400)."""
    from poise.serve.app import failed_upstream

    upstream, refused = UpstreamError("HTTP 503"), PoiseError("too long")
    both = GenerationError(None, [None, None], {0: "503", 1: "too long"}, {0: upstream, 1: refused})
    only = GenerationError(None, [None, None], {0: "503", 1: "503"}, {0: upstream, 1: upstream})
    assert not failed_upstream(both)
    assert failed_upstream(only)


def test_an_unknown_route_or_method_gets_an_openai_error(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    """FastAPI's own 404 and 405 come as OpenAI error objects, with a code a client can test."""
    server = start_server(echo_model)
    missing = httpx.post(f"{server.base_url}/embeddings", json={"model": "echo", "input": "x"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"{server.base_url}/chat/completions")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"
