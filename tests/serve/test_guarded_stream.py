"""``poise serve --model "guarded(...)"``: the official ``openai`` client sees the answer stop
early, and a stopped stream ends with ``finish_reason: content_filter``."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from poise.config import Sampling
from poise.models import load_model

from .helpers import ThreadServer


def test_a_guarded_stream_stops_with_content_filter(
    tiny_hf_model_dir: Path,
    monitor_dir: Path,
    start_server: Callable[..., ThreadServer],
) -> None:
    openai = pytest.importorskip("openai")
    # threshold 0: every token is flagged, so the answer stops after k = 3 tokens
    spec = f"guarded('{tiny_hf_model_dir}', monitor='{monitor_dir}', threshold=0, k=3)"
    model = load_model(spec, device="cpu")
    messages = [{"role": "user", "content": "Tell me a story about a dragon in the mountains."}]
    expected = model.generate([messages], Sampling(max_new_tokens=24))[0][0]
    assert expected.finish_reason == "guard" and expected.num_tokens == 3
    server = start_server(model, served_name="guarded")
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model="guarded", messages=messages, temperature=0, max_tokens=24
    )
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    chunks = list(
        client.chat.completions.create(
            model="guarded", messages=messages, temperature=0, max_tokens=24, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert text == expected.text
    assert finishes == ["content_filter"]
    # the same guard that does not fire ends normally
    calm = load_model(f"guarded('{tiny_hf_model_dir}', monitor='{monitor_dir}', threshold=1)")
    plain = calm.generate([messages], Sampling(max_new_tokens=24))[0][0]
    assert plain.finish_reason in ("stop", "length")


@pytest.mark.parametrize("kind", ["full_guard", "chunked_guard"])
def test_a_baseline_guards_usage_counts_the_tokens_it_decoded(
    kind: str, tiny_hf_model_dir: Path, start_server: Callable[..., ThreadServer]
) -> None:
    """A flagged answer shows the refusal (and, chunked, the chunks before the flagged one);
    usage counts the whole answer the baseline decoded before judging it, not 0."""
    import httpx

    from poise.guards.judged import ChunkedGuard, FullGuard
    from poise.guards.record import generated_tokens

    inner = load_model(str(tiny_hf_model_dir), device="cpu")
    messages = [{"role": "user", "content": "Tell me a story about a dragon in the mountains."}]
    plain = inner.generate([messages], Sampling(max_new_tokens=24))[0][0]
    # the last whole word of the answer (the random tiny model's are runs of letters)
    words = re.findall(r"\b[A-Za-z]+\b", plain.text)
    if not words:
        pytest.skip("the tiny model's answer has no word to flag")
    judge = f"keywords:{words[-1]}"
    guard = (
        FullGuard(inner, judge=judge)
        if kind == "full_guard"
        else ChunkedGuard(inner, judge=judge, every=2)
    )
    expected = guard.generate([messages], Sampling(max_new_tokens=24))[0][0]
    assert expected.finish_reason == "guard"
    assert expected.num_tokens < plain.num_tokens
    assert generated_tokens(expected) == generated_tokens(plain)  # the EOS that ended it too
    server = start_server(guard, served_name="guarded")
    payload = {"model": "guarded", "messages": messages, "temperature": 0, "max_tokens": 24}
    body = httpx.post(f"{server.base_url}/chat/completions", json=payload, timeout=60).json()
    assert body["choices"][0]["message"]["content"] == expected.text
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["usage"]["completion_tokens"] == generated_tokens(plain)
