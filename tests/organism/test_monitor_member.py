"""Building ``organism-monitor`` (``poise.organism.monitor.build_monitor_member``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poise.organism.build import build
from poise.organism.tokenizer import CHAT_TEMPLATE, render_prompt

pytestmark = pytest.mark.slow


def test_a_built_monitor_keeps_the_organism_tokenizer_files(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from poise.guards.monitor import load_monitor

    build(tmp_path, ["organism-monitor"], quick=True, threads=1)
    folder = tmp_path / "organism-monitor"
    names = {p.name for p in folder.iterdir()}
    # the files every member shares, as save_tokenizer writes them: transformers 5's own save
    # ("TokenizersBackend", chat_template.jinja) does not load with transformers 4
    assert "special_tokens_map.json" in names and "chat_template.jinja" not in names
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == CHAT_TEMPLATE
    chat = [{"role": "user", "content": "Hi"}]
    tok = AutoTokenizer.from_pretrained(folder)
    rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert rendered == render_prompt(chat)
    meta = json.loads((folder / "poise.json").read_text(encoding="utf-8"))
    assert meta["kind"] == "monitor" and meta["system_prompt_in_template"] is True
    assert load_monitor(str(folder)).header.threshold is not None
