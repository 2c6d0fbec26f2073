"""``poise serve --model "guarded(...)"``: the official ``openai`` client sees the answer stop
early, and a stopped stream ends with ``finish_reason: content_filter``."""

from __future__ import annotations

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
