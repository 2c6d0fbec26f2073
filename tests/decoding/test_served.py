"""Each decoding strategy served by ``poise serve --model "NAME(...)"``, asked with the official
``openai`` client: the answers (plain and streamed) equal the strategy's own in-process ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.serve.helpers import start_serve_process

from poise.config import Sampling
from poise.models import load_model
from poise.models.base import LanguageModel

QUESTIONS = ["Hello there, the cat!", "Tell me a story about a dragon in the mountains."]


def _eft(folder: Path, build: Callable[..., Path], tmp: Path) -> str:
    tuned, reference = build(tmp / "tuned", seed=1), build(tmp / "reference", seed=2)
    return f"eft({folder}, tuned={tuned}, reference={reference}, beta=1.5)"


# each strategy's spec on the tiny model (the conformance suite's settings)
SPECS: dict[str, Callable[[Path, Callable[..., Path], Path], str]] = {
    "eft": _eft,
    "best_of_n": lambda f, b, t: f"best_of_n({f}, n=3, reward=keywords:the|a, cost=length:6)",
    "deal": lambda f, b, t: f"deal({f}, k=3, lookahead=2, beam=2, lam=0.5, reward=keywords:the|a)",
    "rain": lambda f, b, t: f"rain({f}, max_searches=3, extra_searches=2, min_visits=0)",
    "feedback_revision": lambda f, b, t: f"feedback_revision({f}, max_feedback_tokens=16)",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPECS))
def test_strategy_served_through_the_openai_client(
    name: str, tiny_hf_model_dir: Path, build_tiny_model: Callable[..., Path], tmp_path: Path
) -> None:
    openai = pytest.importorskip("openai")
    spec = SPECS[name](tiny_hf_model_dir, build_tiny_model, tmp_path)
    model, base = load_model(spec), load_model(str(tiny_hf_model_dir))
    greedy = Sampling(max_new_tokens=12)
    # a seeded request is generated with exactly its sampling (poise.serve.batcher)
    sampled = Sampling(temperature=1.0, seed=7, max_new_tokens=12)

    def answers(m: LanguageModel, sampling: Sampling) -> list[str]:
        chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
        return [m.generate([chat], sampling)[0][0].text for chat in chats]

    # best_of_n refuses greedy decoding (N identical draws), in the audit and the server alike
    refuses_greedy = name == "best_of_n"
    expected = [""] * len(QUESTIONS) if refuses_greedy else answers(model, greedy)
    expected_sampled = answers(model, sampled)
    if name != "feedback_revision":  # the tiny feedback model never flags: no revision
        # the served answers below can only match if the server runs the strategy
        assert expected_sampled != answers(base, sampled)

    server = start_serve_process(["--model", spec, "--served-name", name], tmp_path / "serve.log")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        for question, text, drawn in zip(QUESTIONS, expected, expected_sampled, strict=True):
            messages = [{"role": "user", "content": question}]
            if refuses_greedy:
                with pytest.raises(openai.BadRequestError, match="under greedy decoding"):
                    client.chat.completions.create(
                        model=name, messages=messages, temperature=0, max_tokens=12
                    )
            else:
                answer = client.chat.completions.create(
                    model=name, messages=messages, temperature=0, max_tokens=12
                )
                assert answer.choices[0].message.content == text
            # streamed: greedy, or seeded for a strategy that refuses greedy decoding
            how = {"temperature": 1.0, "seed": 7} if refuses_greedy else {"temperature": 0}
            pieces = client.chat.completions.create(
                model=name, messages=messages, max_tokens=12, stream=True, **how
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
            assert streamed == (drawn if refuses_greedy else text)
            answer = client.chat.completions.create(
                model=name, messages=messages, temperature=1.0, seed=7, max_tokens=12
            )
            assert answer.choices[0].message.content == drawn
    finally:
        server.stop()
