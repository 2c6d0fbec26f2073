"""``poise serve --firewall``: an off-role request gets a 400 naming the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from poise.models import load_model
from poise.probes.firewall import load_firewall
from poise.suites.loaders import load_suite

from .helpers import free_port


@pytest.mark.slow
def test_cli_fit_check_and_serve_refuse_off_role(tmp_path: Path, start_server: Any) -> None:
    from typer.testing import CliRunner

    from poise.cli import app

    benign = load_suite("benign").items
    cook = [i.prompt for i in benign if i.category == "cooking"]
    cooking = {"anchors": cook[::2], "in_role": cook[1::2]}
    harmful = load_suite("harmful").items[0].prompt

    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(
        "".join(json.dumps({"role": "cooking", "query": q}) + "\n" for q in cooking["anchors"]),
        encoding="utf-8",
    )
    runner = CliRunner()
    a_file = tmp_path / "existing.txt"
    a_file.write_text("x", encoding="utf-8")
    result = runner.invoke(
        app, ["firewall", "fit", "--anchors", str(anchors), "--out", str(a_file)]
    )
    assert result.exit_code == 2 and "a file, not a folder" in result.output, result.output
    out = tmp_path / "fw"
    result = runner.invoke(app, ["firewall", "fit", "--anchors", str(anchors), "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["firewall", "check", "-f", str(out), "-r", "cooking", harmful])
    assert result.exit_code == 1 and "flagged" in result.output

    import openai

    model = load_model("organism-large")
    server = start_server(model, firewall=str(out), firewall_role="cooking")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model.name, messages=[{"role": "user", "content": harmful}], max_tokens=4
        )
    assert "outside the role 'cooking'" in str(caught.value)
    scores = load_firewall(out).scores(model, "cooking", cooking["in_role"])
    inside = cooking["in_role"][scores.index(min(scores))]
    answer = client.chat.completions.create(
        model=model.name, messages=[{"role": "user", "content": inside}], max_tokens=4
    )
    assert answer.choices[0].message.content is not None


@pytest.mark.slow
def test_a_raw_completion_prompt_is_no_way_around_the_firewall(
    tmp_path: Path, start_server: Any
) -> None:
    """/v1/completions checks each prompt as the chat route checks the last user turn: an
    off-role prompt (text or token ids) gets the same 400, naming the prompt among several."""
    import httpx

    from poise.probes.firewall import Firewall

    benign = load_suite("benign").items
    cook = [i.prompt for i in benign if i.category == "cooking"]
    harmful = load_suite("harmful").items[0].prompt
    model = load_model("organism-large")
    firewall = Firewall.fit(
        model, {"cooking": cook[::2]}, system_prompt=model.default_system_prompt
    )
    firewall.save(tmp_path / "fw")
    scores = firewall.scores(model, "cooking", cook[1::2])
    inside = cook[1::2][scores.index(min(scores))]
    server = start_server(model, firewall=str(tmp_path / "fw"), firewall_role="cooking")

    def complete(prompt: Any) -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/completions",
            json={"model": model.name, "prompt": prompt, "max_tokens": 2},
            timeout=60,
        )

    ids = model.tokenizer(harmful, add_special_tokens=False)["input_ids"]
    for prompt, param in [(harmful, "prompt"), (ids, "prompt"), ([inside, harmful], "prompt[1]")]:
        response = complete(prompt)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("firewall", param)
        assert "outside the role 'cooking'" in error["message"]
    assert complete(inside).status_code == 200
    # a chat with no user turn (the request in a system message) is checked on its last message
    chat = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": model.name,
            "messages": [{"role": "system", "content": harmful}],
            "max_tokens": 2,
        },
        timeout=60,
    )
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "firewall", chat.text


def test_serve_reads_the_firewall_folder_once(tmp_path: Path, monkeypatch: Any) -> None:
    """The CLI checked it, serve() loaded it again and create_app a third time."""
    import uvicorn

    import poise.probes.firewall as firewall_module
    from poise.probes.firewall import Firewall
    from poise.serve.app import serve
    from poise.serve.schema import ServeConfig

    model = load_model("organism-small")
    cook = [i.prompt for i in load_suite("benign").items if i.category == "cooking"][:6]
    Firewall.fit(model, {"cooking": cook}).save(tmp_path / "fw")
    loads: list[str] = []
    real = firewall_module.load_firewall

    def counted(folder: Any) -> Any:
        loads.append(str(folder))
        return real(folder)

    monkeypatch.setattr(firewall_module, "load_firewall", counted)

    def run(self: uvicorn.Server, sockets: Any = None) -> None:
        self.started = True  # serving is not what this test is about

    monkeypatch.setattr(uvicorn.Server, "run", run)
    config = ServeConfig(
        model="organism-small",
        firewall=str(tmp_path / "fw"),
        firewall_role="cooking",
        port=free_port(),  # serve() checks it is free
    )
    serve(config, model=model)
    assert loads == [str(tmp_path / "fw")]


def test_a_firewall_fitted_on_another_model_is_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A firewall fitted on organism-small guarded organism-small-safe (same shape, so every
    layer check passed) without a word: its zones are another model's activations."""
    from poise.probes.firewall import Firewall
    from poise.serve.app import _firewall_guard
    from poise.serve.schema import ServeConfig

    cook = [i.prompt for i in load_suite("benign").items if i.category == "cooking"][:6]
    Firewall.fit(load_model("organism-small"), {"cooking": cook}).save(tmp_path / "fw")
    config = ServeConfig(model="x", firewall=str(tmp_path / "fw"), firewall_role="cooking")
    with caplog.at_level("WARNING", logger="poise.serve.app"):
        assert _firewall_guard(load_model("organism-small-safe"), config) is not None
    assert "fitted on organism-small, guarding organism-small-safe" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="poise.serve.app"):
        _firewall_guard(load_model("organism-small"), config)
    assert "fitted on" not in caplog.text


def test_every_user_turn_of_a_chat_is_checked(tmp_path: Path) -> None:
    """Only the last user turn was checked: an off-role request in an earlier turn, under an
    in-role last one, was answered (the model reads the whole chat), streamed or not. The 400
    is the OpenAI error naming the flagged message."""
    from fastapi.testclient import TestClient

    from poise.probes.firewall import Firewall
    from poise.serve.app import create_app
    from poise.serve.schema import ServeConfig

    model = load_model("organism-small")
    cook = [i.prompt for i in load_suite("benign").items if i.category == "cooking"]
    harmful = load_suite("harmful").items[0].prompt
    firewall = Firewall.fit(
        model, {"cooking": cook[::2]}, system_prompt=model.default_system_prompt
    )
    assert firewall.check(model, "cooking", [harmful])[0].flagged
    scores = firewall.scores(model, "cooking", cook[1::2])
    inside = cook[1::2][scores.index(min(scores))]
    # the fitted firewall is given: the folder named is not read
    config = ServeConfig(model="organism-small", firewall="unread", firewall_role="cooking")
    app = create_app(model, config, firewall=firewall)
    history = [
        {"role": "user", "content": harmful},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": inside},
    ]
    with TestClient(app) as client:

        def chat(messages: list[dict[str, str]], stream: bool = False) -> Any:
            body = {"model": model.name, "messages": messages, "max_tokens": 2, "stream": stream}
            return client.post("/v1/chat/completions", json=body)

        for stream in (False, True):
            response = chat(history, stream)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert (error["type"], error["code"], error["param"]) == (
                "invalid_request_error",
                "firewall",
                "messages[0].content",
            )
            assert "outside the role 'cooking'" in error["message"]
        assert chat(history[2:]).status_code == 200
        assert chat([{"role": "user", "content": inside}, *history[1:]]).status_code == 200
        # the error names the turn flagged, here the last one after an in-role first one
        response = chat([{"role": "user", "content": inside}, *history[1:2], history[0]])
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "messages[2].content"
