"""`--config FILE.yaml` on every command: every flag is a key, flags override the file, and the
resolved config is what run.json records (issue 10, item 12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner, Result

from poise.cli import app

REFUSE = "I'm sorry, but I can't help with that."


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def only_run(out: Path) -> dict:
    (run,) = [p for p in out.iterdir() if (p / "run.json").is_file()]
    return json.loads((run / "run.json").read_text())


def test_every_command_takes_config() -> None:
    root = typer.main.get_command(app)
    missing = []

    def walk(command: Any, path: str) -> None:
        if getattr(command, "commands", None) is not None:  # a group
            assert not any("--config" in p.opts for p in command.params), path
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")
            return
        if not any("--config" in p.opts for p in command.params):
            missing.append(path)

    walk(root, "poise")
    assert not missing, missing


def test_audit_reads_its_fields_from_the_file_and_run_json_records_them(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    config = tmp_path / "audit.yaml"
    config.write_text(
        f"model: mock\n"
        f"suites: [harmful, benign]\n"
        f"limit: 2\n"
        f"sampling: {{temperature: 1.0, n: 2, max_new_tokens: 16}}\n"
        f"model_options: {{default: {json.dumps(REFUSE)}}}\n"
        f"out: {out}\n"
        f"html: false\n"
    )
    result = invoke("audit", "--config", str(config))
    assert result.exit_code == 0, result.output
    recorded = only_run(out)["config"]
    assert recorded["model"] == "mock"
    assert recorded["suites"] == ["harmful", "benign"]
    assert recorded["limit"] == 2
    assert recorded["sampling"]["temperature"] == 1.0 and recorded["sampling"]["n"] == 2
    assert recorded["sampling"]["max_new_tokens"] == 16
    assert recorded["model_options"] == {"default": REFUSE}
    assert recorded["html"] is False


def test_a_run_json_config_block_is_a_config_file(tmp_path: Path) -> None:
    # the module's promise; a block holding judge_options was "unknown key 'judge_options'"
    import yaml

    out = tmp_path / "runs"
    first = invoke("audit", "-m", "mock", "-s", "harmful", "--limit", "2", "--out", str(out))
    assert first.exit_code == 0, first.output
    block = only_run(out)["config"]
    block["judge_options"] = {}
    config = tmp_path / "again.yaml"
    config.write_text(yaml.safe_dump({**block, "out": str(tmp_path / "again")}))
    again = invoke("audit", "--config", str(config))
    assert again.exit_code == 0, again.output


def test_flags_override_the_file(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    config = tmp_path / "audit.yaml"
    config.write_text(f"model: mock\nsuite: [harmful]\nlimit: 2\ntemperature: 0.5\nout: {out}\n")
    result = invoke("audit", "--config", str(config), "--limit", "3", "--no-html")
    assert result.exit_code == 0, result.output
    recorded = only_run(out)["config"]
    assert recorded["limit"] == 3  # the flag
    assert recorded["sampling"]["temperature"] == 0.5  # the file, by its flag name
    assert recorded["suites"] == ["harmful"]


def test_an_unknown_key_is_one_line_naming_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "audit.yaml"
    config.write_text("model: mock\ntemprature: 0.5\n")
    result = invoke("audit", "--config", str(config))
    assert result.exit_code == 2
    assert str(config) in result.output and "temprature" in result.output
    assert "temperature" in result.output  # the nearest key
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_value_of_the_wrong_type_is_blamed_on_the_file_not_on_a_flag(tmp_path: Path) -> None:
    # typer's own message named '--temperature', a flag the user never typed
    config = tmp_path / "audit.yaml"
    config.write_text("model: mock\nsampling: {temperature: hot}\n")
    result = invoke("audit", "--config", str(config))
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1, result.output
    assert f"{config}: sampling.temperature: " in line and "valid number" in line
    assert "--temperature" not in line
    train = tmp_path / "train.yaml"
    train.write_text("epochs: many\n")
    result = invoke("train", "dpo", "--config", str(train))
    assert result.exit_code == 2 and f"{train}: epochs: " in result.output


def test_a_broken_file_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model: [mock\n")
    result = invoke("runs", "ls", "--config", str(config))
    assert result.exit_code == 2
    assert str(config) in result.output and "invalid YAML" in result.output
    result = invoke("runs", "ls", "--config", str(tmp_path / "none.yaml"))
    assert result.exit_code == 2 and "no such file" in result.output


def test_other_commands_read_the_file_too(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    invoke("audit", "--model", "mock", "--suite", "harmful", "--limit", "2", "--out", str(out))
    config = tmp_path / "runs.yaml"
    config.write_text(f"out: {out}\n")
    result = invoke("runs", "ls", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "mock" in result.output


def test_gate_reads_its_fields_from_the_file(tmp_path: Path) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text(
        f"model: mock\njudge: refusal\nlimit: 6\nmodel_options: {{default: {json.dumps(REFUSE)}}}\n"
        f"output: {tmp_path / 'gate.json'}\n"
    )
    result = invoke("gate", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "gate.json").read_text())["n"] == 6
    failed = invoke("gate", "--config", str(config), "--model-option", "default=Sure, here is how.")
    assert failed.exit_code == 1, failed.output
