from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import Capabilities, Chat, Completion, GenerationError
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


class PartlyRefusing(EchoModel):
    """EchoModel that answers a call's chats but those starting "BAD", and then raises
    GenerationError as the openai backend does when its server refuses one request (the
    others' answers in ``results``, each failure's reason in ``failures``)."""

    capabilities = Capabilities(open_limit=True)

    def __init__(self) -> None:
        super().__init__()
        self.open_limits: list[bool] = []

    def generate(  # type: ignore[override]
        self, chats: Any, sampling: Sampling, *, progress: Any = None, open_limit: bool = False
    ) -> list[list[Completion]]:
        self.calls.append(([list(c) for c in chats], sampling))
        self.open_limits.append(open_limit)
        results: list[list[Completion] | None] = []
        failures: dict[int, str] = {}
        for i, c in enumerate(chats):
            if last_user(c).startswith("BAD"):
                results.append(None)
                failures[i] = f"upstream refused the request (HTTP 400): no {last_user(c)}"
            else:
                results.append([self.reply(c, sampling, k) for k in range(sampling.n)])
        if failures:
            raise GenerationError(self, results, failures)
        return [r for r in results if r is not None]


def test_a_call_that_answers_some_chats_is_not_made_again() -> None:
    """A model that answers some chats of a call and says why the others failed (the openai
    backend's GenerationError) was asked again, chat by chat: every answered chat's request was
    sent upstream twice, and the failed request's error read "1 of 1 requests failed (...); the
    0 answers received are kept". The answers are kept, and each failure is its own reason."""
    model = PartlyRefusing()
    sampling = Sampling(max_new_tokens=2048, n=2, temperature=0.7, seed=3)

    async def body(batcher: Batcher) -> list[Generation | BaseException]:
        futures = [
            batcher.submit(chat(text), sampling, seeded=True, fill=True)
            for text in ["one", "BAD one", "two", "BAD two"]
        ]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    one, bad_one, two, bad_two = run(body, model, window_s=0.05)
    assert len(model.calls) == 1
    for result, text in [(one, "one"), (two, "two")]:
        assert isinstance(result, Generation)
        assert texts(result) == [model.reply(chat(text), sampling, k).text for k in range(2)]
    for error, text in [(bad_one, "BAD one"), (bad_two, "BAD two")]:
        assert isinstance(error, PoiseError) and not isinstance(error, GenerationError)
        assert str(error) == f"echo: upstream refused the request (HTTP 400): no {text}"


@pytest.mark.parametrize("seeded", [False, True])
def test_a_request_without_max_tokens_never_shares_a_call_with_one_that_sets_it(
    seeded: bool,
) -> None:
    """In one batch window, the same chat and sampling with and without max_tokens: the one
    without is sent with ``open_limit`` (no max_tokens upstream), the other with its limit, so
    they are two calls, not one answer shared (with the client's seed or without)."""
    model = PartlyRefusing()
    sampling = Sampling(max_new_tokens=2048)  # greedy: identical requests would share a row

    async def body(batcher: Batcher) -> None:
        futures = [
            batcher.submit(chat("same"), sampling, seeded=seeded, fill=fill)
            for fill in (True, False, True, False)
        ]
        await asyncio.gather(*futures)

    run(body, model, window_s=0.05)
    assert sorted(model.open_limits) == [False, True]
    assert [len(chats) for chats, _ in model.calls] == [1, 1]


def test_a_chat_whose_upstream_failed_is_told_from_one_it_refused() -> None:
    """The openai backend's GenerationError says per chat why it failed; the batcher turned every
    failure into a plain PoiseError (a 400), the server behind the model being down included.
    The backend's exception for each chat is now kept: an UpstreamError stays one (a 502)."""
    from poise.models.base import UpstreamError

    class HalfDown(PartlyRefusing):
        def generate(  # type: ignore[override]
            self, chats: Any, sampling: Sampling, **_: Any
        ) -> list[list[Completion]]:
            failures = {0: "upstream refused the request (HTTP 400): no", 1: "cannot reach it"}
            errors: dict[int, Exception] = {0: PoiseError("refused"), 1: UpstreamError("down")}
            raise GenerationError(
                self, [None, None, [self.reply(chats[2], sampling, 0)]], failures, errors
            )

    model = HalfDown()

    async def body(batcher: Batcher) -> list[Generation | BaseException]:
        futures = [batcher.submit(chat(t), Sampling(), seeded=True) for t in ("a", "b", "c")]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    refused, down, answered = run(body, model, window_s=0.05)
    assert isinstance(refused, PoiseError) and not isinstance(refused, UpstreamError)
    assert str(refused) == "echo: upstream refused the request (HTTP 400): no"
    assert isinstance(down, UpstreamError) and str(down) == "echo: cannot reach it"
    assert isinstance(answered, Generation)


def test_a_concurrent_model_gets_its_calls_for_distinct_seeds_side_by_side() -> None:
    """Distinct seeds are distinct ``generate`` calls, made one after another in one worker
    thread. A model that may be called from several threads (``capabilities.concurrent``, the
    openai backend) now gets them side by side: here each call waits until all 3 are running.
    Each request still gets its own chat's answer, as the model gives it alone."""
    barrier = threading.Barrier(3)

    class Together(EchoModel):
        capabilities = Capabilities(concurrent=True)

        def generate(self, chats: Any, sampling: Sampling, **kwargs: Any) -> list[list[Completion]]:
            barrier.wait(timeout=20)  # a BrokenBarrierError when the calls run one by one
            return super().generate(chats, sampling, **kwargs)

    model = Together()
    samplings = [Sampling(temperature=1.0, seed=seed) for seed in (1, 2, 3)]

    async def body(batcher: Batcher) -> list[Generation]:
        futures = [batcher.submit(chat("same"), s, seeded=True) for s in samplings]
        return list(await asyncio.gather(*futures))

    results = run(body, model, window_s=0.05)
    assert len(model.calls) == 3
    for result, sampling in zip(results, samplings, strict=True):
        assert texts(result) == [model.reply(chat("same"), sampling, 0).text]


def test_a_plain_request_sharing_a_streamed_requests_row_gets_all_its_choices() -> None:
    """The same seeded chat asked twice in one batch, streamed and not, on a model that streams:
    one row answers both, and each gets its n choices in sample order."""

    class Streaming(EchoModel):
        capabilities = Capabilities(stream=True)

    model = Streaming()
    sampling = Sampling(temperature=1.0, seed=3, n=2)

    async def body(batcher: Batcher) -> tuple[Generation, Generation]:
        streamed = batcher.open(chat("same"), sampling, seeded=True, stream=True)
        plain = batcher.open(chat("same"), sampling, seeded=True, stream=False)
        return await streamed.generation(), await plain.generation()

    streamed, plain = run(body, model, window_s=0.05)
    expected = [model.reply(chat("same"), sampling, k).text for k in range(2)]
    assert texts(streamed) == texts(plain) == expected
    assert len(model.calls) == 1


def test_a_request_withdrawn_while_an_earlier_call_of_its_batch_runs_is_not_generated() -> None:
    """A batch's groups of distinct sampling are calls made one after another: a request whose
    client leaves while an earlier group's call runs is not generated."""
    model = EchoModel(delay=0.3)

    async def body(batcher: Batcher) -> None:
        first = batcher.submit(chat("busy"), Sampling(), seeded=True)
        later = batcher.submit(chat("gone"), Sampling(temperature=0.5), seeded=True)
        while batcher.running == 0:  # the batch runs: "busy" is being generated
            await asyncio.sleep(0.01)
        later.cancel()
        await first
        await batcher.submit(chat("after"), Sampling(), seeded=True)  # the next batch's

    run(body, model, window_s=0.05)
    assert model.seen_messages() == ["busy", "after"]


def test_a_wrapped_models_partial_failure_is_not_read_as_the_calls_own() -> None:
    """A GenerationError from a model inside the served one counts the chats of that model's
    call (here asked in reverse order), not of the batcher's: its answers are not handed to the
    batcher's chats by position; each chat is generated alone instead."""

    class Reversing(EchoModel):
        def __init__(self) -> None:
            super().__init__()
            self.inner = PartlyRefusing()

        def generate(self, chats: Any, sampling: Sampling, **_: Any) -> list[list[Completion]]:
            return self.inner.generate(list(reversed(chats)), sampling)[::-1]

    model = Reversing()

    async def body(batcher: Batcher) -> list[Generation | BaseException]:
        futures = [batcher.submit(chat(t), Sampling(), seeded=True) for t in ("one", "BAD one")]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    one, bad = run(body, model, window_s=0.05)
    assert isinstance(one, Generation)
    assert texts(one) == [model.reply(chat("one"), Sampling(), 0).text]
    assert isinstance(bad, PoiseError)
