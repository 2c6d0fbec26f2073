"""`poise attacks ls` and `poise attacks export` through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import poise
from poise.attacks.export import preference_pairs
from poise.cli import app
from poise.errors import PoiseError


def test_ls_lists_every_attack_with_what_it_does() -> None:
    from poise.attacks import attacks

    result = CliRunner().invoke(app, ["attacks", "ls"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in attacks:
        row = next(line for line in result.output.splitlines() if f" {name} " in line)
        assert attacks.help(name)[:30] in row


def test_export_writes_the_runs_preference_pairs(tmp_path: Path) -> None:
    run = poise.audit(
        model="organism-small",
        suites=["harmful"],
        attack="exploitation",
        attack_options={
            "families": ["temperature"],
            "temperatures": [1.0, 1.5],
            "system_prompt": ["on", "off"],
        },
        limit=10,
        out=tmp_path / "runs",
        html=False,
    )
    from poise.models import default_system_prompt, load_model, no_system_prompt

    model = load_model("organism-small")  # each prompt carries the system message it was sent
    sent = {"default": default_system_prompt(model), "none": no_system_prompt(model)}
    expected = preference_pairs(list(run.run.records()), system_prompts=sent)
    assert expected  # refused under one decoding, complied under another
    assert {p["prompt"][0]["role"] for p in expected} == {"system"}
    output = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(
        app,
        ["attacks", "export", run.path.name, "--out", str(tmp_path / "runs"), "-o", str(output)],
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {len(expected)} preference pairs" in result.output
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows == expected


def test_export_takes_the_system_prompts_the_run_recorded_without_loading_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.json records the system messages "default" and "none" sent; export loaded the run's
    model to rebuild them, and failed where the model no longer loads (a moved folder, an
    endpoint down). A run recorded before keeps the old way."""
    import poise.models

    run = poise.audit(
        model="organism-small",
        suites=["harmful"],
        attack="exploitation",
        attack_options={"families": ["temperature"], "temperatures": [1.0, 1.5]},
        limit=10,
        out=tmp_path / "runs",
        html=False,
    )
    sent = {"default": "You are a helpful, harmless and honest assistant.", "none": ""}
    assert run.run.header["system_prompts"] == sent
    expected = preference_pairs(list(run.run.records()), system_prompts=sent)
    assert expected and {p["prompt"][0]["content"] for p in expected} == set(sent.values())
    command = ["attacks", "export", str(run.path), "-o", str(tmp_path / "pairs.jsonl")]

    def no_model(*args: object, **kwargs: object) -> None:
        raise PoiseError("no such model")

    loaded = poise.models.load_model
    monkeypatch.setattr(poise.models, "load_model", no_model)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert rows == expected
    # a run recorded before: its model is loaded to read them, as before
    header = json.loads((run.path / "run.json").read_text())
    del header["system_prompts"]
    (run.path / "run.json").write_text(json.dumps(header))
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2 and "cannot load the run's model" in result.output
    monkeypatch.setattr(poise.models, "load_model", loaded)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    # the model as the audit built it (run.json's model_spec), not the config's spec as typed:
    # a relative folder was read from the directory export ran in
    header["config"]["model"] = "./a-folder-of-the-directory-the-audit-ran-in"
    (run.path / "run.json").write_text(json.dumps(header))
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()] == (
        expected
    )


def test_export_of_an_unknown_run_is_one_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["attacks", "export", "no-such-run", "--out", str(tmp_path), "-o", "x.jsonl"]
    )
    assert result.exit_code == 2
    assert "no-such-run" in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_export_of_a_run_without_pairs_is_one_clear_error(tmp_path: Path) -> None:
    run = poise.audit(
        model="organism-small", suites=["harmful"], limit=4, out=tmp_path / "runs", html=False
    )
    output = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(
        app,
        ["attacks", "export", run.path.name, "--out", str(tmp_path / "runs"), "-o", str(output)],
    )
    assert result.exit_code == 2
    assert "no harmful item has both" in result.output and "exploitation" in result.output
    assert not output.exists()


def test_export_of_a_worst_of_n_run_without_pairs_does_not_advise_worst_of_n(
    tmp_path: Path,
) -> None:
    # the error told a user who had audited with worst_of_n to audit with worst_of_n
    run = poise.audit(
        model="mock",
        suites=["harmful"],
        attack="worst_of_n",
        attack_options={"n": 2},
        limit=2,
        out=tmp_path / "runs",
        html=False,
    )  # the mock complies every time: no safe answer to pair
    output = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(
        app,
        ["attacks", "export", run.path.name, "--out", str(tmp_path / "runs"), "-o", str(output)],
    )
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "no harmful item has both" in said and "audit with --attack" not in said
    assert "--attack-option n=" in said
    assert not output.exists()


def test_ls_and_train_losses_print_a_help_with_brackets_as_written(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # a plugin's one line of help was read as rich markup: "[/x]" raised MarkupError, and a
    # "[word]" vanished; judges ls and suites ls escaped theirs
    from poise.attacks import attacks
    from poise.train.losses import LOSSES

    text = "see [/x] and [ref]"
    for registry in (attacks, LOSSES):
        monkeypatch.setattr(registry, "help", lambda name: text)
    for command in (["attacks", "ls"], ["train", "losses"]):
        result = CliRunner().invoke(app, command, env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        assert text in result.output
