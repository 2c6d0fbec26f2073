"""``poise serve --firewall``: an off-role request gets a 400 naming the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from poise.models import load_model
from poise.probes.firewall import load_firewall
from poise.suites.loaders import load_suite


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
