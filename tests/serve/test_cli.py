"""``poise serve`` refuses bad settings with one line and exit code 2, before loading a model."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import poise.models
from poise.cli import app


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["serve", *args])
    return result.exit_code, result.output


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(spec: str, **options: object) -> None:
        raise AssertionError(f"the model {spec!r} was loaded before the settings were checked")

    monkeypatch.setattr(poise.models, "load_model", refuse)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_help_lists_the_flags() -> None:
    code, output = run("--help")
    assert code == 0
    for flag in ("--model", "--host", "--port", "--max-batch", "--batch-window-ms"):
        assert flag in output
    assert "--max-tokens-limit" in output and "--served-name" in output


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--max-batch", "0"], "max_batch"),
        (["--batch-window-ms", "-1"], "batch_window_ms"),
        (["--max-tokens-limit", "0"], "max_tokens_limit"),
        (["--port", "70000"], "port"),
        (["--port", "0"], "port"),
        (["--max-n", "0"], "max_n"),
    ],
)
def test_bad_values_name_the_field(args: list[str], field: str, no_model_loading: None) -> None:
    code, output = run(*args)
    assert code == 2
    # the field, the flag typed and the value given (the flag and value were missing)
    assert "error:" in output and f"{field} ({args[0]}):" in output
    assert f"got {args[1]}" in output  # -1 of a float field reads -1.0
    assert len(output.strip().splitlines()) == 1


def test_a_taken_port_is_reported_before_loading(busy_port: int, no_model_loading: None) -> None:
    code, output = run("--port", str(busy_port))
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{busy_port}" in output


def test_unknown_model_names_the_nearest(unused_port: int) -> None:
    code, output = run("--model", "organizm", "--port", str(unused_port))
    assert code == 2
    assert "organizm" in output and "organism" in output


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--api-key", "sk-flag"], {}, "sk-flag"),
        ([], {"POISE_API_KEY": "sk-env"}, "sk-env"),
        (["--api-key", "sk-flag"], {"POISE_API_KEY": "sk-env"}, "sk-flag"),
        ([], {}, None),
    ],
)
def test_the_api_key_comes_from_the_flag_or_the_environment(
    args: list[str],
    env: dict[str, str],
    expected: str | None,
    unused_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import poise.serve.app

    monkeypatch.delenv("POISE_API_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen = []
    monkeypatch.setattr(poise.models, "load_model", lambda spec, **_: object())
    monkeypatch.setattr(poise.serve.app, "serve", lambda config, **_: seen.append(config))
    code, output = run("--port", str(unused_port), *args)
    assert code == 0, output
    assert seen[0].api_key == expected
    assert "sk-" not in repr(seen[0])  # never printed with the config


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--firewall-role", "cooking"], "--firewall-role needs --firewall"),
        (["--firewall", "{missing}"], "not a firewall folder"),
        (["--firewall", "{fw}"], "--firewall needs --firewall-role"),
        (["--firewall", "{fw}", "--firewall-role", "baking"], "no role 'baking'"),
    ],
)
def test_wrong_firewall_flags_are_one_line_before_loading(
    args: list[str], said: str, tmp_path: Path, unused_port: int, no_model_loading: None
) -> None:
    from poise.probes.firewall import Firewall, Zone

    zone = Zone(torch.zeros(1, 4), torch.ones(1), threshold=1.0, percentile=95.0, anchors=3)
    Firewall("organism-large", [4], {"cooking": zone}).save(tmp_path / "fw")
    paths = {"fw": str(tmp_path / "fw"), "missing": str(tmp_path / "missing")}
    code, output = run(*[a.format(**paths) for a in args], "--port", str(unused_port))
    assert code == 2
    assert said in output and len(output.strip().splitlines()) == 1


def test_an_empty_api_key_is_refused_before_loading(
    unused_port: int, no_model_loading: None
) -> None:
    # "--api-key $KEY" with KEY unset: not silently a server without a key
    code, output = run("--api-key", "", "--port", str(unused_port))
    assert code == 2
    assert "--api-key is empty" in output and len(output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "warned"),
    [
        (["--host", "0.0.0.0"], True),
        (["--host", "0.0.0.0", "--api-key", "sk-flag"], False),
        (["--host", "127.0.0.1"], False),
    ],
)
def test_serving_the_network_without_a_key_warns(
    args: list[str], warned: bool, unused_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from poise.models.mock import MockModel

    def run_nothing(self: uvicorn.Server, sockets: object = None) -> None:
        self.started = True  # the warning comes before serving

    monkeypatch.delenv("POISE_API_KEY", raising=False)
    monkeypatch.setattr(poise.models, "load_model", lambda spec, **_: MockModel())
    monkeypatch.setattr(uvicorn.Server, "run", run_nothing)
    code, output = run("--port", str(unused_port), *args)
    assert code == 0, output
    said = " ".join(output.split())  # the log line may wrap
    assert ("without an API key" in said) is warned, output
    if warned:
        assert "--api-key KEY or POISE_API_KEY" in said


@pytest.mark.parametrize(
    ("host", "exposed"),
    [
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("localhost", False),
        ("::1", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.5", True),
    ],
)
def test_which_hosts_are_exposed(host: str, exposed: bool) -> None:
    from poise.serve.app import exposure_warning

    assert (exposure_warning(host, None) is not None) is exposed
    assert exposure_warning(host, "sk-key") is None


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:{port}/v1"), ("::1", "http://[::1]:{port}/v1")],
)
def test_the_url_said_at_start_is_one_a_client_can_use(
    host: str, url: str, unused_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The line printed once the model is loaded gives the base URL to paste into a client; an
    IPv6 address goes in brackets there (http://::1:8000/v1 is no URL)."""
    import types

    import poise.serve.app

    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", unused_port))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    monkeypatch.setattr(
        poise.models, "load_model", lambda spec, **_: types.SimpleNamespace(name="m")
    )

    def serve(config: object, *, model: object, on_ready: Any, **_: object) -> None:
        on_ready(model)

    monkeypatch.setattr(poise.serve.app, "serve", serve)
    code, output = run("--host", host, "--port", str(unused_port), "--api-key", "k")
    assert code == 0, output
    assert url.format(port=unused_port) in output


def test_model_options_reach_the_served_model(
    tiny_hf_model_dir: Path, unused_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--model-option, as poise audit takes it: here template variables for every chat the
    server renders, and a wrong option name is one line before anything is served."""
    import shutil

    import poise.serve.app

    folder = tmp_path / "model"
    shutil.copytree(tiny_hf_model_dir, folder)
    served: list[Any] = []
    monkeypatch.setattr(
        poise.serve.app, "serve", lambda config, model, **_: served.append((config, model))
    )
    kwargs = 'chat_template_kwargs={"enable_thinking": false}'
    code, output = run("--model", str(folder), "--port", str(unused_port), "--model-option", kwargs)
    assert code == 0, output
    [(config, model)] = served
    assert config.model_options == {"chat_template_kwargs": {"enable_thinking": False}}
    assert model.chat_template_kwargs == {"enable_thinking": False}
    assert model.name.endswith('+{"enable_thinking":false}')
    code, output = run(
        "--model", str(folder), "--port", str(unused_port), "--model-option", "dtyp=float32"
    )
    assert code == 2 and "dtyp" in output and "dtype" in output
