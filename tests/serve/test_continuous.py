"""Continuous batching: the server over a model's engine (the mock engine here, the HF engine in
``test_hf_engine.py``), in a thread of the test process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Any

import httpx
import pytest

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import Capabilities, Chat, StreamEvent
from poise.models.mock import MockEngine, MockModel

from .helpers import ThreadServer, read_sse, stream_texts

StartServer = Callable[..., ThreadServer]


def chat(text: str) -> Chat:
    return [{"role": "user", "content": text}]


def words(count: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(count))


def payload(server: ThreadServer, text: str, **fields: Any) -> dict[str, Any]:
    return {"model": server.state.config.name, "messages": chat(text), **fields}


def burst(server: ThreadServer, text: str, count: int) -> list[httpx.Response]:
    """``count`` plain chat requests of ``text`` sent at once; their responses, in order."""

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            body = payload(server, text)
            return list(
                await asyncio.gather(
                    *(client.post("/chat/completions", json=body) for _ in range(count))
                )
            )

    return asyncio.run(main())


def engine_of(server: ThreadServer) -> MockEngine:
    engine = server.state.scheduler.engine
    assert isinstance(engine, MockEngine)
    return engine


async def timed_stream(
    client: httpx.AsyncClient, body: dict[str, Any], stop_after: int | None = None
) -> tuple[list[tuple[float, dict[str, Any]]], bool]:
    """The stream's chunks with their arrival times (perf_counter); whether [DONE] came."""
    got: list[tuple[float, dict[str, Any]]] = []
    lines: list[str] = []
    async with client.stream("POST", "/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            lines.append(line)
            if line.startswith("data: {"):
                chunks, _ = read_sse([line])
                got.append((time.perf_counter(), chunks[0]))
                if stop_after is not None and len(got) >= stop_after:
                    return got, False
    _, done = read_sse(lines)
    return got, done


def content_times(chunks: list[tuple[float, dict[str, Any]]]) -> list[float]:
    return [t for t, c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]


def test_health_says_continuous(start_server: StartServer) -> None:
    server = start_server(MockModel())
    health = server.health()
    assert health["batching"] == "continuous"
    assert health["steps"] == 0


def test_a_request_joins_the_running_batch(start_server: StartServer) -> None:
    """ "short" arrives while "long" is mid-decode, finishes first, and the engine's step count
    shows that it joined the running batch instead of waiting for "long" to end."""
    model = MockModel(responses={"long": words(60), "short": words(4, "s")}, step_delay=0.02)
    server = start_server(model)

    async def main() -> tuple[list[tuple[float, dict[str, Any]]], float, str]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            long_task = asyncio.create_task(
                timed_stream(client, payload(server, "long", max_tokens=100))
            )
            while server.health()["steps"] < 5:
                await asyncio.sleep(0.01)
            response = await client.post(
                "/chat/completions", json=payload(server, "short", max_tokens=100)
            )
            short_done = time.perf_counter()
            assert response.status_code == 200
            chunks, done = await long_task
            assert done
            return chunks, short_done, response.json()["choices"][0]["message"]["content"]

    chunks, short_done, short_text = asyncio.run(main())
    assert short_text == words(4, "s")
    engine = engine_of(server)
    long_key, short_key = sorted(engine.added_at, key=engine.added_at.__getitem__)
    # "short" was added mid-decode (not after "long"'s 60 steps), and both shared the steps.
    assert engine.added_at[long_key] == 0
    assert 5 <= engine.added_at[short_key] < 60 - 4
    assert engine.steps == 60
    # ... and its answer came back while "long" was still streaming.
    assert short_done < content_times(chunks)[-1]
    assert stream_texts([c for _, c in chunks])[0] == words(60)


def test_stream_chunks_arrive_as_decoded(start_server: StartServer) -> None:
    model = MockModel(responses={"long": words(40)}, step_delay=0.02)
    server = start_server(model)

    async def main() -> tuple[list[tuple[float, dict[str, Any]]], float]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            start = time.perf_counter()
            chunks, done = await timed_stream(client, payload(server, "long", max_tokens=100))
            assert done
            return chunks, start

    chunks, start = asyncio.run(main())
    times = content_times(chunks)
    assert len(times) == 40  # one content chunk per decoded token
    assert times[-1] - start > 0.6  # 40 steps of 20 ms
    # Chunks are spread over the decode, not sent in one burst at the end: the first and the last
    # content chunk are at least 39 steps apart (less slack for a busy machine), and the middle one
    # falls well inside. Only lower bounds, so a loaded machine that delays the first request (as
    # the CI machine once did, by 0.48 s) cannot fail it; a server that buffered the answer would.
    span = times[-1] - times[0]
    assert span > 0.5
    assert times[len(times) // 2] - times[0] > 0.3 * span


def test_streamed_equals_plain_and_generate_with_n(start_server: StartServer) -> None:
    replies = [f"{words(3 + k, f'r{k}-')} stop {words(2)}" for k in range(5)]
    model = MockModel(responses={"many": replies})
    server = start_server(model)
    fields = {"temperature": 1.0, "n": 4, "seed": 7, "max_tokens": 6, "stop": ["stop"]}
    plain = httpx.post(
        f"{server.base_url}/chat/completions", json=payload(server, "many", **fields), timeout=30
    ).json()
    sampling = Sampling(temperature=1.0, n=4, seed=7, max_new_tokens=6, stop=("stop",))
    [expected] = model.generate([chat("many")], sampling)
    assert [c["message"]["content"] for c in plain["choices"]] == [c.text for c in expected]
    assert [c["finish_reason"] for c in plain["choices"]] == [c.finish_reason for c in expected]
    assert plain["usage"]["completion_tokens"] == sum(c.num_tokens for c in expected)

    async def main() -> list[tuple[float, dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            body = payload(server, "many", stream_options={"include_usage": True}, **fields)
            chunks, done = await timed_stream(client, body)
            assert done
            return chunks

    chunks = [c for _, c in asyncio.run(main())]
    assert stream_texts(chunks) == {i: c.text for i, c in enumerate(expected)}
    finals = {
        c["choices"][0]["index"]: c["choices"][0]["finish_reason"]
        for c in chunks
        if c["choices"] and c["choices"][0]["finish_reason"]
    }
    assert finals == {i: c["finish_reason"] for i, c in enumerate(plain["choices"])}
    assert chunks[-1]["usage"] == plain["usage"]
    # The four rows were decoded together: their chunks interleave.
    order = [c["choices"][0]["index"] for c in chunks if c["choices"]]
    assert order[4:8] == [0, 1, 2, 3]


def test_unseeded_requests_get_their_own_seeds(start_server: StartServer) -> None:
    model = MockModel(responses={"roll": [f"reply {k}" for k in range(1000)]})
    server = start_server(model)
    for seed in (None, None, None, 5, 5):
        fields = {"temperature": 1.0} if seed is None else {"temperature": 1.0, "seed": seed}
        response = httpx.post(
            f"{server.base_url}/chat/completions", json=payload(server, "roll", **fields)
        )
        assert response.status_code == 200
    seeds = [s.seed for s in engine_of(server).samplings.values()]
    assert len(set(seeds[:3])) == 3 and seeds[3:] == [5, 5]


def test_a_client_that_leaves_cancels_its_rows(start_server: StartServer) -> None:
    model = MockModel(responses={"long": words(500)}, step_delay=0.01)
    server = start_server(model)
    baseline = server.health()["tasks"]

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            body = payload(server, "long", max_tokens=1000)
            _, done = await timed_stream(client, body, stop_after=5)
            assert not done
            with pytest.raises(httpx.ReadTimeout):  # a plain request whose client gives up
                await client.post("/chat/completions", json=body, timeout=0.3)

    asyncio.run(main())
    engine = engine_of(server)
    deadline = time.monotonic() + 10
    while len(engine.cancelled) < 2 or not engine.idle:
        assert time.monotonic() < deadline, (engine.cancelled, engine.steps)
        time.sleep(0.02)
    assert engine.steps < 200  # far from the 500 tokens of either request
    health = server.health()
    while health["tasks"] > baseline or health["streams"] or health["waiting"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
        health = server.health()
    assert health["running"] == health["pending"] == 0
    assert (
        httpx.post(f"{server.base_url}/chat/completions", json=payload(server, "x")).status_code
        == 200
    )


def test_max_batch_caps_the_rows_decoded_together(start_server: StartServer) -> None:
    model = MockModel(responses={"q": words(10)}, step_delay=0.005)
    server = start_server(model, max_batch=4)

    replies = burst(server, "q", 10)
    assert [r.json()["choices"][0]["message"]["content"] for r in replies] == [words(10)] * 10
    # 10 requests of 10 tokens, at most 4 at a time: at least 3 rounds of 10 steps.
    assert engine_of(server).steps >= 30


class _Failing(MockModel):
    """Refuses prompts with "LONG" (as a backend refuses a prompt longer than its context), fails
    on "FAIL" when adding, and fails a whole step once a "CRASH" row is in the batch."""

    def reply(self, chat: Chat, sample_index: int, seed: int = 0) -> str:
        text = chat[-1]["content"]
        if text.startswith("LONG"):
            raise PoiseError("the prompt is longer than the context (512 tokens)")
        if text.startswith("FAIL"):
            raise RuntimeError("scripted failure")
        return super().reply(chat, sample_index, seed)

    def engine(self) -> MockEngine:
        engine = _CrashingEngine(self)
        self.engines.append(engine)
        return engine


class _CrashingEngine(MockEngine):
    def __init__(self, model: MockModel) -> None:
        super().__init__(model)
        self.crash: set[Hashable] = set()

    def add(self, key: Hashable, chat: Chat, sampling: Sampling, *, stream: bool = True) -> None:
        super().add(key, chat, sampling, stream=stream)
        if chat[-1]["content"] == "CRASH":
            self.crash.add(key)

    def step(self) -> list[StreamEvent]:
        if self.crash:
            raise RuntimeError("the step failed")
        return super().step()


def test_errors_keep_their_status_and_the_server_keeps_going(start_server: StartServer) -> None:
    model = _Failing(responses={"ok": "fine thanks"})
    server = start_server(model, max_tokens_limit=64)

    def post(text: str, **fields: Any) -> httpx.Response:
        return httpx.post(
            f"{server.base_url}/chat/completions", json=payload(server, text, **fields), timeout=30
        )

    def post_stream(text: str) -> httpx.Response:
        with httpx.stream(
            "POST",
            f"{server.base_url}/chat/completions",
            json=payload(server, text, stream=True),
            timeout=30,
        ) as response:
            response.read()
            return response

    assert post("ok", max_tokens=65).json()["error"]["param"] == "max_tokens"
    for send in (post, post_stream):
        refused = send("LONG prompt")
        assert refused.status_code == 400
        assert "longer than the context" in refused.json()["error"]["message"]
        failed = send("FAIL now")
        assert failed.status_code == 500
        assert failed.json()["error"]["type"] == "server_error"
        assert send("ok").status_code == 200
    first_engine = engine_of(server)
    crashed = post("CRASH")
    assert crashed.status_code == 500
    # A failed step fails the requests in it; a fresh engine serves the next ones.
    assert post("ok").json()["choices"][0]["message"]["content"] == "fine thanks"
    assert engine_of(server) is not first_engine
    assert server.health()["running"] == 0
    # every request above is over, answered or failed: the batcher holds none of them
    assert server.health()["open"] == 0


def test_health_counts_the_requests_in_flight_and_none_once_they_finish(
    start_server: StartServer,
) -> None:
    model = MockModel(responses={"long": words(60), "short": words(3)}, step_delay=0.01)
    server = start_server(model)
    assert server.health()["open"] == 0

    async def main() -> list[int]:
        seen: list[int] = []
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:

            async def watch() -> None:
                for _ in range(200):
                    seen.append((await client.get(f"{server.url}/health")).json()["open"])
                    if seen[-1] == 2:
                        return
                    await asyncio.sleep(0.01)

            await asyncio.gather(
                client.post("/chat/completions", json=payload(server, "long", max_tokens=100)),
                timed_stream(client, payload(server, "long", max_tokens=100, n=2)),
                watch(),
            )
            for _ in range(3):  # short ones, plain and streamed, one after another
                await client.post("/chat/completions", json=payload(server, "short"))
                await timed_stream(client, payload(server, "short"))
        return seen

    seen = asyncio.run(main())
    assert 2 in seen  # both long requests (one with two samples) counted while they ran
    assert server.health()["open"] == 0


def test_health_has_no_open_count_in_batch_mode(start_server: StartServer, echo_model: Any) -> None:
    server = start_server(echo_model)  # no engine: generate calls in batches
    assert server.health()["batching"] == "batch"
    assert server.health()["open"] is None


def test_a_model_that_streams_without_an_engine_streams_through_the_batcher(
    start_server: StartServer,
) -> None:
    class StreamOnly(MockModel):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.capabilities = Capabilities(stream=True)

    model = StreamOnly(responses={"long": words(30)}, step_delay=0.03)
    server = start_server(model)
    assert server.health()["batching"] == "batch"

    async def main() -> tuple[list[tuple[float, dict[str, Any]]], float]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            start = time.perf_counter()
            chunks, done = await timed_stream(client, payload(server, "long", max_tokens=50))
            assert done
            return chunks, start

    chunks, start = asyncio.run(main())
    times = content_times(chunks)
    assert stream_texts([c for _, c in chunks])[0] == words(30)
    assert times[0] - start < 0.5 * (times[-1] - start)  # streamed, not the finished text
    assert server.health()["generate_calls"] == 1


def test_a_burst_joins_a_few_rows_a_step(start_server: StartServer) -> None:
    model = MockModel(responses={"q": words(12)}, step_delay=0.005)
    server = start_server(model, join_rows=4, batch_window_ms=1000)

    assert all(r.status_code == 200 for r in burst(server, "q", 10))
    joined_at = sorted(engine_of(server).added_at.values())
    # The burst arrived within the window; it joined 4, 4 and 2 rows at three steps in a row.
    assert joined_at == [0] * 4 + [1] * 4 + [2] * 2


def _join_steps(server: ThreadServer, gap_s: float) -> tuple[int, int, int]:
    """A long request runs; "a" arrives at step 5 and "b" ``gap_s`` later. Returns the steps
    at which "a" arrived, "a" joined and "b" joined."""

    async def main() -> int:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            long_task = asyncio.create_task(
                client.post("/chat/completions", json=payload(server, "long", max_tokens=400))
            )
            while server.health()["steps"] < 5:
                await asyncio.sleep(0.002)
            arrived = int(server.health()["steps"])
            a = asyncio.create_task(client.post("/chat/completions", json=payload(server, "a")))
            await asyncio.sleep(gap_s)
            b = asyncio.create_task(client.post("/chat/completions", json=payload(server, "b")))
            assert all(r.status_code == 200 for r in await asyncio.gather(long_task, a, b))
            return arrived

    arrived = asyncio.run(main())
    engine = engine_of(server)
    _, a_key, b_key = sorted(engine.added_at, key=engine.added_at.__getitem__)
    return arrived, engine.added_at[a_key], engine.added_at[b_key]


def test_while_steps_are_fast_a_joiner_waits_for_company(start_server: StartServer) -> None:
    """Steps of 5 ms, join wait 2 s, join_rows 2: "a" is held back until "b" arrives ~0.3 s
    later, and both join at one step (one prefill instead of two)."""
    model = MockModel(
        responses={"long": words(300), "a": words(3), "b": words(3)}, step_delay=0.005
    )
    server = start_server(model, join_rows=2, join_wait_ms=2000)
    arrived, a_joined, b_joined = _join_steps(server, gap_s=0.3)
    assert a_joined == b_joined
    assert a_joined > arrived + 10  # it waited many steps for company


def test_a_lone_joiner_waits_at_most_the_join_wait(start_server: StartServer) -> None:
    model = MockModel(
        responses={"long": words(300), "a": words(3), "b": words(3)}, step_delay=0.005
    )
    server = start_server(model, join_rows=2, join_wait_ms=50)
    arrived, a_joined, b_joined = _join_steps(server, gap_s=0.5)
    assert a_joined < b_joined  # "a" did not wait 0.5 s for "b"
    assert a_joined <= arrived + 40  # ~50 ms of 5 ms steps, with slack for a loaded machine


def test_while_steps_are_slow_a_joiner_joins_at_once(start_server: StartServer) -> None:
    """Steps slower than the join wait: holding a request back would cost it a whole step."""
    model = MockModel(responses={"long": words(60), "a": words(3), "b": words(3)}, step_delay=0.03)
    server = start_server(model, join_rows=8, join_wait_ms=20)
    arrived, a_joined, _ = _join_steps(server, gap_s=0.5)
    assert a_joined <= arrived + 2


def test_max_batch_rows_decode_together(start_server: StartServer) -> None:
    """--max-batch 4 decodes 4 rows together, not one fewer: a burst of 4 requests joins at
    the first step and takes one request's steps."""
    model = MockModel(responses={"q": words(10)}, step_delay=0.005)
    server = start_server(model, max_batch=4, batch_window_ms=1000)

    assert all(r.status_code == 200 for r in burst(server, "q", 4))
    engine = engine_of(server)
    assert sorted(engine.added_at.values()) == [0] * 4
    assert engine.steps == 10


def test_rows_that_fill_the_batch_join_without_waiting_for_join_rows(
    start_server: StartServer,
) -> None:
    """Steps of 5 ms, join wait 5 s, join_rows 8, but room for only 2 more rows (--max-batch 3,
    one decoding): "a" and "b" fill the batch, so they join as soon as both wait, instead of
    waiting for 8 rows that could never join."""
    model = MockModel(
        responses={"long": words(300), "a": words(3), "b": words(3)}, step_delay=0.005
    )
    server = start_server(model, max_batch=3, join_rows=8, join_wait_ms=5000)
    arrived, a_joined, b_joined = _join_steps(server, gap_s=0.1)
    assert a_joined == b_joined
    assert b_joined < arrived + 100  # 0.1 s of 5 ms steps (20), not the 300 of "long"
