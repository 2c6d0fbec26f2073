"""A decoding strategy served by ``poise serve --model "eft(...)"``, asked with the official
``openai`` client: the answers (plain and streamed) equal the strategy's own in-process ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.serve.helpers import start_serve_process

from poise.config import Sampling
from poise.models import load_model

QUESTIONS = ["Hello there, the cat!", "Tell me a story about a dragon in the mountains."]


@pytest.mark.slow
def test_eft_served_through_the_openai_client(
    tiny_hf_model_dir: Path, build_tiny_model: Callable[..., Path], tmp_path: Path
) -> None:
    openai = pytest.importorskip("openai")
    tuned = build_tiny_model(tmp_path / "tuned", seed=1)
    reference = build_tiny_model(tmp_path / "reference", seed=2)
    spec = f"eft({tiny_hf_model_dir}, tuned={tuned}, reference={reference}, beta=1.5)"
    model = load_model(spec)
    greedy = Sampling(max_new_tokens=12)
    expected = [
        model.generate([[{"role": "user", "content": q}]], greedy)[0][0].text for q in QUESTIONS
    ]

    server = start_serve_process(["--model", spec, "--served-name", "eft"], tmp_path / "serve.log")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        for question, text in zip(QUESTIONS, expected, strict=True):
            messages = [{"role": "user", "content": question}]
            answer = client.chat.completions.create(
                model="eft", messages=messages, temperature=0, max_tokens=12
            )
            assert answer.choices[0].message.content == text
            pieces = client.chat.completions.create(
                model="eft", messages=messages, temperature=0, max_tokens=12, stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == text
    finally:
        server.stop()
