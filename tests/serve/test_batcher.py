from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from poise.config import Sampling
from poise.models.base import Chat
from poise.serve.batcher import Batcher, Generation

from .helpers import EchoModel, last_user

T = TypeVar("T")


def chat(text: str) -> Chat:
    return [{"role": "user", "content": text}]


def run(body: Callable[[Batcher], Awaitable[T]], model: Any, **kwargs: Any) -> T:
    async def main() -> T:
        batcher = Batcher(model, **kwargs)
        await batcher.start()
        try:
            return await asyncio.wait_for(body(batcher), timeout=30)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def texts(generation: Generation) -> list[str]:
    return [c.text for c in generation.completions]


def test_concurrent_requests_share_one_generate_call() -> None:
    model = EchoModel()
    sampling = Sampling(max_new_tokens=8)

    async def body(batcher: Batcher) -> list[Generation]:
        futures = [batcher.submit(chat(f"q{i}"), sampling, seeded=True) for i in range(10)]
        return list(await asyncio.gather(*futures))

    results = run(body, model, max_batch=32, window_s=0.05)
    assert len(model.calls) == 1
    assert model.seen_messages() == [f"q{i}" for i in range(10)]
    # Each request gets its own chat's answer, as the model gives it in-process.
    for i, result in enumerate(results):
        assert texts(result) == [model.reply(chat(f"q{i}"), sampling, 0).text]


def test_max_batch_splits_calls_and_the_model_is_never_used_concurrently() -> None:
    model = EchoModel(delay=0.05)

    async def body(batcher: Batcher) -> None:
        futures = [batcher.submit(chat(f"q{i}"), Sampling(), seeded=True) for i in range(10)]
        await asyncio.gather(*futures)

    run(body, model, max_batch=4, window_s=0.05)
    assert [len(chats) for chats, _ in model.calls] == [4, 4, 2]
    assert model.max_active == 1


def test_groups_by_every_sampling_field() -> None:
    model = EchoModel()
    variants = [
        Sampling(),
        Sampling(temperature=0.7, seed=1),
        Sampling(temperature=0.7, seed=2),
        Sampling(temperature=0.7, seed=1, top_p=0.5),
        Sampling(max_new_tokens=3),
        Sampling(stop=("x",)),
        Sampling(n=2),
    ]

    async def body(batcher: Batcher) -> None:
        futures = [
            batcher.submit(chat(f"q{i}-{j}"), s, seeded=True)
            for j in range(2)
            for i, s in enumerate(variants)
        ]
        await asyncio.gather(*futures)

    run(body, model, max_batch=64, window_s=0.05)
    assert len(model.calls) == len(variants)
    for chats, sampling in model.calls:
        i = variants.index(sampling)
        assert sorted(last_user(c) for c in chats) == [f"q{i}-0", f"q{i}-1"]


def test_seeded_requests_are_reproducible_and_duplicates_generated_once() -> None:
    model = EchoModel()
    sampling = Sampling(temperature=1.0, seed=5, n=2)

    async def body(batcher: Batcher) -> list[Generation]:
        futures = [batcher.submit(chat("same"), sampling, seeded=True) for _ in range(3)]
        first = list(await asyncio.gather(*futures))
        later = await batcher.submit(chat("same"), sampling, seeded=True)
        return [*first, later]

    results = run(body, model, window_s=0.05)
    expected = [model.reply(chat("same"), sampling, i).text for i in range(2)]
    assert all(texts(r) == expected for r in results)
    assert [len(chats) for chats, _ in model.calls] == [1, 1]  # the duplicates shared one row


def test_unseeded_requests_get_fresh_seeds_and_independent_samples() -> None:
    model = EchoModel()
    sampling = Sampling(temperature=1.0)

    async def body(batcher: Batcher) -> list[Generation]:
        futures = [batcher.submit(chat("same"), sampling, seeded=False) for _ in range(3)]
        futures.append(batcher.submit(chat("other"), sampling, seeded=False))
        return list(await asyncio.gather(*futures))

    results = run(body, model, window_s=0.05)
    # The three copies went to three calls with three fresh seeds; "other" rode in the first.
    assert [len(chats) for chats, _ in model.calls] == [2, 1, 1]
    seeds = {s.seed for _, s in model.calls}
    assert len(seeds) == 3
    assert len({texts(r)[0] for r in results[:3]}) == 3


def test_unseeded_greedy_duplicates_share_a_row() -> None:
    model = EchoModel()

    async def body(batcher: Batcher) -> list[Generation]:
        futures = [batcher.submit(chat("same"), Sampling(), seeded=False) for _ in range(4)]
        return list(await asyncio.gather(*futures))

    results = run(body, model, window_s=0.05)
    assert [len(chats) for chats, _ in model.calls] == [1]
    assert len({texts(r)[0] for r in results}) == 1


def test_withdrawn_request_is_not_generated() -> None:
    model = EchoModel(delay=0.3)

    async def body(batcher: Batcher) -> int:
        first = batcher.submit(chat("busy"), Sampling(), seeded=True)
        while batcher.running == 0:  # wait until the first call runs
            await asyncio.sleep(0.01)
        gone = batcher.submit(chat("gone"), Sampling(), seeded=True)
        kept = batcher.submit(chat("kept"), Sampling(), seeded=True)
        assert batcher.pending == 2
        gone.cancel()
        assert batcher.pending == 1
        await asyncio.gather(first, kept)
        return batcher.pending

    assert run(body, model, window_s=0.01) == 0
    assert model.seen_messages() == ["busy", "kept"]


def test_a_failing_call_fails_its_requests_only() -> None:
    model = EchoModel()

    async def body(batcher: Batcher) -> Generation:
        bad = batcher.submit(chat("FAIL now"), Sampling(temperature=0.5), seeded=True)
        good = batcher.submit(chat("fine"), Sampling(), seeded=True)
        with pytest.raises(RuntimeError, match="scripted failure"):
            await bad
        result = await good
        again = await batcher.submit(chat("after"), Sampling(), seeded=True)
        assert texts(again)
        return result

    assert texts(run(body, model, window_s=0.05))


def test_stop_fails_waiting_requests() -> None:
    model = EchoModel(delay=0.2)

    async def main() -> None:
        batcher = Batcher(model, window_s=0.0)
        await batcher.start()
        running = batcher.submit(chat("a"), Sampling(), seeded=True)
        while batcher.running == 0:
            await asyncio.sleep(0.01)
        waiting = batcher.submit(chat("b"), Sampling(), seeded=True)
        await batcher.stop()
        for future in (running, waiting):
            with pytest.raises(RuntimeError, match="shutting down"):
                await future

    asyncio.run(main())
