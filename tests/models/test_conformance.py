"""The ``LanguageModel`` contract, checked the same way on every backend and every wrapper.

One parametrised suite: batch independence, seed determinism, ``n``, stop strings, ``score``
agreeing with the log-probs that generation reports, and streaming text equal to the
non-streamed text. A backend opts out of a property only through its declared capabilities
(``capabilities.score``, ``capabilities.stream``), never by being left out of the list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from poise.config import Sampling
from poise.models import load_model
from poise.models.base import Chat, Completion, LanguageModel

CHATS: list[Chat] = [
    [{"role": "user", "content": "Hello there, the cat!"}],
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "Be helpful and kind to everyone you meet."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    [{"role": "user", "content": "Tell me a story about a dragon in the mountains."}],
]
GREEDY = Sampling(max_new_tokens=12)
SAMPLED = Sampling(temperature=1.0, top_k=40, n=3, seed=7, max_new_tokens=12)


def _texts(rows: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in row] for row in rows]


@pytest.fixture(scope="module")
def served(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``poise serve`` of the tiny model on 127.0.0.1; yields its /v1 URL."""
    from tests.serve.helpers import start_serve_process

    log = tmp_path_factory.mktemp("conformance-serve") / "serve.log"
    server = start_serve_process(["--model", str(tiny_hf_model_dir), "--served-name", "tiny"], log)
    try:
        yield server.base_url
    finally:
        server.stop()


def _hf(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    return load_model(str(folder))


def _mock(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    from poise.models.mock import MockModel

    # each chat has several scripted replies; the seed picks where a chat's samples start
    script = {
        chat[-1]["content"]: [
            f"{chat[-1]['content'][:10]} reply {k} and some more words to cut at a stop"
            for k in range(5)
        ]
        for chat in CHATS
    }
    return MockModel("mock:conformance", responses=script)


def _cache(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    from poise.models.cache import CachedModel, ResponseCache

    return CachedModel(load_model(str(folder)), ResponseCache(tmp / "cache.sqlite"))


def _openai(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    url = request.getfixturevalue("served")
    return load_model(f"openai:tiny@{url}")


def _logit_temperature(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    return load_model(f"logit_temperature({folder}, t=0.8)")


def _eft(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    build = request.getfixturevalue("build_tiny_model")
    tuned, reference = build(tmp / "tuned", seed=1), build(tmp / "reference", seed=2)
    return load_model(f"eft({folder}, tuned={tuned}, reference={reference}, beta=1.5)")


def _eft_speculative(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    build = request.getfixturevalue("build_tiny_model")
    tuned, reference = build(tmp / "tuned", seed=1), build(tmp / "reference", seed=2)
    spec = f"eft({folder}, tuned={tuned}, reference={reference}, beta=1.5, speculative=3)"
    return load_model(spec)


def _best_of_n(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    return load_model(f"best_of_n({folder}, n=3, reward=keywords:the|a, cost=length:6)")


def _deal(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    return load_model(f"deal({folder}, k=3, lookahead=2, beam=2, lam=0.5, reward=keywords:the|a)")


def _feedback_revision(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    import json
    import shutil

    # the feedback prompt (the instructions, the request and the answer) is about 610 tokens on
    # the tiny tokenizer, past its 512-token context, which the hf backend refuses: the same
    # weights with room for it (rotary positions, so nothing else changes)
    long = tmp / "long-context"
    shutil.copytree(folder, long)
    config = json.loads((long / "config.json").read_text())
    (long / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    return load_model(f"feedback_revision({long}, max_feedback_tokens=16)")


def _rain(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    return load_model(f"rain({folder}, max_searches=3, extra_searches=2, min_visits=0)")


def _steer(folder: Path, request: pytest.FixtureRequest, tmp: Path) -> LanguageModel:
    import json

    from tests.decoding.test_steer import write_direction

    hidden = json.loads((folder / "config.json").read_text())["hidden_size"]
    probe = write_direction(tmp / "direction", hidden)
    return load_model(f"steer({folder}, direction={probe}, mode=add, strength=2.0)")


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest, Path], LanguageModel]] = {
    "hf": _hf,
    "mock": _mock,
    "cache": _cache,
    "openai": _openai,
    "logit_temperature": _logit_temperature,
    "eft": _eft,
    "eft_speculative": _eft_speculative,
    "best_of_n": _best_of_n,
    "deal": _deal,
    "feedback_revision": _feedback_revision,
    "rain": _rain,
    "steer": _steer,
}


@pytest.fixture(params=sorted(BACKENDS))
def model(request: pytest.FixtureRequest, tiny_hf_model_dir: Path, tmp_path: Path) -> LanguageModel:
    return BACKENDS[request.param](tiny_hf_model_dir, request, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_a_chat_does_not_depend_on_its_batch(model: LanguageModel, sampling: Sampling) -> None:
    together = model.generate(CHATS, sampling)
    alone = [model.generate([chat], sampling)[0] for chat in CHATS]
    assert _texts(together) == _texts(alone)
    reordered = model.generate(CHATS[::-1], sampling)
    assert _texts(reordered)[::-1] == _texts(together)


@pytest.mark.slow
def test_a_seed_reproduces_and_n_counts(model: LanguageModel) -> None:
    first = model.generate(CHATS, SAMPLED)
    assert all(len(row) == SAMPLED.n for row in first)
    assert _texts(model.generate(CHATS, SAMPLED)) == _texts(first)
    other = model.generate(CHATS, SAMPLED.model_copy(update={"seed": 8}))
    assert _texts(other) != _texts(first)
    # the samples of one chat are not all the same
    assert any(len(set(row)) > 1 for row in _texts(first))


@pytest.mark.slow
def test_stop_strings_cut_the_text(model: LanguageModel) -> None:
    free = model.generate(CHATS, GREEDY)
    for chat, [completion] in zip(CHATS, free, strict=True):
        text = completion.text
        if len(text.strip()) < 4:
            continue
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        [[cut]] = model.generate([chat], GREEDY.model_copy(update={"stop": (stop,)}))
        assert cut.text == text[: text.find(stop)]
        assert stop not in cut.text
        assert cut.finish_reason == "stop"


@pytest.mark.slow
def test_score_agrees_with_the_log_probs_of_generation(model: LanguageModel) -> None:
    if not model.capabilities.score:
        with pytest.raises(NotImplementedError):
            model.score(CHATS[:1], ["x"])
        return
    rows = model.generate(CHATS, GREEDY)
    completions = [row[0] for row in rows]
    scored = model.score(CHATS, [c.text for c in completions])
    compared = 0
    for completion, result in zip(completions, scored, strict=True):
        if completion.token_logprobs is None:
            continue  # a backend that reports no generation log-probs has nothing to agree with
        if len(result.logprobs) != completion.num_tokens:
            continue  # re-encoding the text gave other tokens: nothing to compare token-wise
        assert result.logprobs == pytest.approx(completion.token_logprobs, abs=1e-4)
        compared += 1
    if any(c.token_logprobs is not None for c in completions):
        assert compared > 0, "no completion re-encoded to its own tokens: the check checked nothing"


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_streamed_text_equals_the_generated_text(model: LanguageModel, sampling: Sampling) -> None:
    joined: dict[tuple[int, int], str] = {}
    finals: dict[tuple[int, int], Completion] = {}
    for event in model.stream(CHATS, sampling):
        key = (int(event.key), event.sample_index)
        assert key not in finals, "text after the row's final event"
        joined[key] = joined.get(key, "") + event.text
        if event.completion is not None:
            finals[key] = event.completion
    generated = model.generate(CHATS, sampling)
    for c, row in enumerate(generated):
        for s, completion in enumerate(row):
            assert joined[(c, s)] == completion.text
            assert finals[(c, s)].text == completion.text
