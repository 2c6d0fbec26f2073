"""The top-level package: what a notebook's tab-completion and help() show."""

from __future__ import annotations

import pydoc

import poise


def test_dir_and_help_name_the_api() -> None:
    public = [n for n in dir(poise) if not n.startswith("_")]
    assert public == ["Sampling", "audit", "load_model"]
    text = pydoc.render_doc(poise)
    for name in ("poise.audit(", "poise.load_model(", "poise.Sampling"):
        assert name in text
    assert poise.audit.__name__ == "audit"  # the lazy names resolve
