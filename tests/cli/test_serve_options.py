"""``poise serve``'s flags, up to the model it loads (the server itself: tests/serve)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app


def test_a_model_folder_with_brackets_loads_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "loading MODEL" status read the spec as rich markup: on a terminal a folder named
    "[/x]" was a MarkupError traceback before the model loaded."""
    pytest.importorskip("fastapi")
    from rich.console import Console

    import poise.cli.serve
    import poise.models
    import poise.serve.app

    loaded: list[str] = []
    monkeypatch.setattr(poise.serve.app, "check_port", lambda host, port: None)
    monkeypatch.setattr(poise.models, "load_model", lambda spec: loaded.append(spec))
    monkeypatch.setattr(poise.serve.app, "serve", lambda config, **kwargs: None)
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    monkeypatch.setattr(poise.cli.serve, "console", terminal)
    folder = str(tmp_path / "[/x]")
    result = CliRunner().invoke(app, ["serve", "--model", folder])
    assert result.exit_code == 0, result.output
    assert loaded == [folder]
