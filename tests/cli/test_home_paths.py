"""A quoted ``~`` in a path flag is the home folder, as the shell makes a bare one: it made a
folder named ``~`` in the working directory (``poise audit --out "~/runs"``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app
from poise.runs import list_runs


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``~`` is ``tmp_path/home``; the command runs in ``tmp_path/work``."""
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return home


def no_tilde_folder() -> bool:
    return not any(p.name.startswith("~") for p in Path.cwd().rglob("*"))


def test_audit_out_and_the_runs_commands_take_a_quoted_tilde(home: Path) -> None:
    runner = CliRunner()
    audit = ["audit", "--model", "mock", "--suite", "harmful", "--limit", "2", "--no-html"]
    done = runner.invoke(app, [*audit, "--out", "~/runs"], env={"COLUMNS": "300"})
    assert done.exit_code == 0, done.output
    assert no_tilde_folder()
    [run] = list_runs(home / "runs")
    assert run.status == "complete"
    assert run.config["out"] == str(home / "runs")  # run.json records where it is

    # the run is found through ~ too: by its folder, and by its name under --out
    listed = runner.invoke(app, ["runs", "ls", "--out", "~/runs"], env={"COLUMNS": "300"})
    assert listed.exit_code == 0 and run.path.name in listed.output, listed.output
    shown = runner.invoke(app, ["runs", "show", f"~/runs/{run.path.name}"])
    assert shown.exit_code == 0, shown.output
    exported = runner.invoke(
        app, ["runs", "export", run.path.name, "--out", "~/runs", "--csv", "~/csv/samples.csv"]
    )
    assert exported.exit_code == 0, exported.output
    assert (home / "csv" / "samples.csv").is_file()
    assert no_tilde_folder()


def test_a_tilde_from_a_config_file_and_in_a_config_field(home: Path) -> None:
    # a --config file's path and a flag generated from a config (gate's --output, a PathStr)
    runner = CliRunner()
    config = home / "audit.yaml"
    config.write_text("model: mock\nsuite: [harmful]\nlimit: 2\nhtml: false\nout: ~/runs\n")
    done = runner.invoke(app, ["audit", "--config", str(config)], env={"COLUMNS": "300"})
    assert done.exit_code == 0, done.output
    assert len(list_runs(home / "runs")) == 1

    gate = ["gate", "-m", "mock", "--judge", "refusal", "--limit", "3"]
    passed = runner.invoke(
        app, [*gate, "--model-option", "default=I can't help with that.", "-o", "~/gate/a.json"]
    )
    assert passed.exit_code == 0, passed.output
    written = json.loads((home / "gate" / "a.json").read_text(encoding="utf-8"))
    assert written["verdict"] == "PASS"
    assert no_tilde_folder()


def test_expand_paths_expands_a_leading_tilde_only(home: Path) -> None:
    from poise.cli._common import expand_paths
    from poise.config import user_path

    assert user_path("~/runs") == str(home / "runs")
    assert user_path(Path("~")) == str(home)
    assert expand_paths(None) is None
    assert expand_paths(["~/a.jsonl", "harmful", "org/data:test"]) == [
        str(home / "a.jsonl"),
        "harmful",
        "org/data:test",
    ]
    assert expand_paths("runs/~x") == "runs/~x"  # only a leading ~ is the home folder


def test_an_empty_path_is_refused_naming_the_option(home: Path) -> None:
    """``--out "$OUT"`` with OUT unset: the audit wrote its run folder into the working
    directory, and ``runs ls`` said "no runs under " with exit code 0."""
    runner = CliRunner()
    audit = ["audit", "-m", "mock", "-s", "harmful", "--limit", "1", "--no-html"]
    for args, option in (
        ([*audit, "--out", ""], "--out"),
        (["runs", "ls", "--out", " "], "--out"),
        ([*audit, "-s", ""], "--suite"),  # one empty value of a repeatable option
        (["runs", "show", ""], "run"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        flat = " ".join(result.output.split())
        assert f"Invalid value for '{option}'" in flat and "empty" in flat, flat
    assert not any(Path.cwd().iterdir())  # nothing written where the command ran
