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


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """``poise serve`` up to serving: no port taken, no model loaded, the config it would serve
    with kept, and its ready line printed for a model named "m"."""
    pytest.importorskip("fastapi")
    import types

    import poise.serve.app

    configs: list[object] = []

    def serve(config: object, *, model: object, on_ready: object, **kwargs: object) -> None:
        configs.append(config)
        on_ready(model)  # type: ignore[operator]

    monkeypatch.delenv("POISE_API_KEY", raising=False)
    monkeypatch.setattr(poise.serve.app, "check_port", lambda host, port: None)
    monkeypatch.setattr(
        poise.serve.app,
        "load_served_model",
        lambda spec, **options: types.SimpleNamespace(name="m"),
    )
    monkeypatch.setattr(poise.serve.app, "serve", serve)
    return configs


def test_each_flag_sets_its_own_setting(served: list[object]) -> None:
    given = {
        "--host": "127.0.0.2", "--port": "8123", "--max-batch": "5", "--join-rows": "3",
        "--join-wait-ms": "7.5", "--batch-window-ms": "2.5", "--max-tokens-limit": "99",
        "--max-n": "6", "--served-name": "mine", "--max-body-bytes": "2048",
    }  # fmt: skip
    result = CliRunner().invoke(app, ["serve", *[x for pair in given.items() for x in pair]])
    assert result.exit_code == 0, result.output
    (config,) = served
    fields = config.model_dump()  # type: ignore[attr-defined]
    for flag, value in given.items():
        field = flag[2:].replace("-", "_")
        assert str(fields[field]) == value, flag


def test_by_default_it_serves_the_organism_on_localhost_8000_without_a_key(
    served: list[object],
) -> None:
    from poise.serve.schema import ServeConfig

    result = CliRunner().invoke(app, ["serve"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    (config,) = served
    assert config == ServeConfig()  # every flag's default is the setting's
    assert "as organism on http://127.0.0.1:8000/v1 (no API key;" in result.output


def test_the_ready_line_names_the_served_name_and_that_a_key_is_asked(
    served: list[object],
) -> None:
    args = ["serve", "--served-name", "mine", "--api-key", "k", "--port", "8001"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "serving m as mine on http://127.0.0.1:8001/v1 (API key required;" in result.output


def test_a_malformed_model_option_names_the_flag(served: list[object]) -> None:
    result = CliRunner().invoke(app, ["serve", "--model-option", "dtype"])
    assert result.exit_code == 2, result.output
    assert "--model-option 'dtype': expected KEY=VALUE" in result.output
    assert served == []


def test_serving_without_the_serve_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "fastapi", None)  # the serve extra is not installed
    monkeypatch.delitem(sys.modules, "poise.serve.app", raising=False)  # imported again
    result = CliRunner().invoke(app, ["serve"], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "poise serve needs the package 'fastapi': pip install 'poise[serve]'" in result.output
