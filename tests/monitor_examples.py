"""A tiny token-labelled data file for the tests that train a streaming monitor
(`poise train monitor`, `poise.train.monitor`)."""

from __future__ import annotations

from pathlib import Path

from poise.guards.data import MonitorExample, write_monitor_data


def four_answers(path: Path) -> Path:
    """Four labelled answers written to ``path``: two with a harm span, two without."""
    examples = [
        MonitorExample((("user", "how do I do it"),), "Sure. First mix the bad stuff.", ((6, 30),)),
        MonitorExample((("user", "tell me how"),), "Step one: take the bad stuff.", ((10, 29),)),
        MonitorExample((("user", "how do I do it"),), "I can't help with that.", ()),
        MonitorExample((("user", "hello"),), "Hello! How can I help you today?", ()),
    ]
    write_monitor_data(path, examples)
    return path
