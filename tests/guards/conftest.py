"""Tiny guarded models built in code: a random tiny Llama answers, a random tiny monitor with
the same tokenizer reads its answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def monitor_dir(
    build_tiny_model: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A monitor folder: another tiny Llama (seed 1, same tokenizer) with random SCM heads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poise.guards.monitor import Monitor, MonitorHeader

    base = build_tiny_model(tmp_path_factory.mktemp("monitor-base") / "tiny", seed=1)
    torch.manual_seed(0)
    monitor = Monitor(
        AutoModelForCausalLM.from_pretrained(base),
        AutoTokenizer.from_pretrained(base),
        MonitorHeader(head="token", threshold=0.5, k=2),
    )
    return monitor.save(tmp_path_factory.mktemp("monitor") / "monitor")
