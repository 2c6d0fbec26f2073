"""One concept, one spelling: a flag learnt on one command works on the next (``-h``, ``-s``,
``-f``, ``-j``, ``--n``, ``-o/--output``), and the help says what the command does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from poise.cli import app
from poise.errors import PoiseError


def _commands() -> list[tuple[list[str], Any]]:
    """Every command and group under ``poise``, as (its words, the click command)."""
    found: list[tuple[list[str], Any]] = []

    def walk(command: Any, path: list[str]) -> None:
        found.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def _option(path: list[str], name: str) -> Any:
    command = dict((tuple(p), c) for p, c in _commands())[tuple(path)]
    (param,) = [p for p in command.params if p.name == name]
    return param


def test_h_is_help_on_every_command() -> None:
    """``-h`` was "No such option: -h" (exit 2) everywhere; only ``--help`` printed the help."""
    runner = CliRunner()
    for path, _ in _commands():
        result = runner.invoke(app, [*path, "-h"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output, path
    # a usage error still points to the long form
    assert "Try 'poise audit --help'" in runner.invoke(app, ["audit", "--nope"]).output


def test_no_command_gives_one_spelling_to_two_options() -> None:
    for path, command in _commands():
        spellings = [o for p in command.params for o in (*p.opts, *p.secondary_opts)]
        twice = {o for o in spellings if spellings.count(o) > 1}
        assert not twice, (path, twice)


def test_gate_takes_the_audits_spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``poise gate -s FILE -f xstest -j refusal --n 2`` was "No such option: -s"; gate spelt
    them --prompts, --format, --judge and --samples-per-prompt only."""
    import poise.gate

    seen: dict[str, Any] = {}

    def gate(**fields: Any) -> None:
        seen.update(fields)
        raise PoiseError("stopped before the model loads")

    monkeypatch.setattr(poise.gate, "gate", gate)
    prompts = str(tmp_path / "prompts.csv")
    result = CliRunner().invoke(
        app,
        ["gate", "-m", "mock", "-s", prompts, "-f", "xstest", "-j", "refusal", "--n", "2"],
    )
    assert result.exit_code == 2, result.output
    assert "stopped before the model loads" in result.output
    assert seen["prompts"] == prompts and seen["suite_format"] == "xstest"
    assert seen["judge"] == "refusal" and seen["samples_per_prompt"] == 2
    # the long forms are as they were
    result = CliRunner().invoke(
        app, ["gate", "-m", "mock", "--prompts", "benign", "--samples-per-prompt", "3"]
    )
    assert seen["prompts"] == "benign" and seen["samples_per_prompt"] == 3


def test_safe_rl_takes_the_audits_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    import poise.cli.train

    seen: dict[str, Any] = {}
    monkeypatch.setattr(poise.cli.train, "_run_recipe", lambda name, fields: seen.update(fields))
    result = CliRunner().invoke(
        app,
        ["train", "safe-rl", "-m", "organism-small", "-o", "out", "--reward-model", "organism-reward",
         "--cost-model", "organism-cost", "-s", "harmful", "--n", "2", "-f", "generic"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["prompts"] == "harmful" and seen["samples_per_prompt"] == 2
    assert seen["suite_format"] == "generic"


def test_audit_takes_gates_spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``poise audit --samples-per-prompt 3 -j refusal`` was "No such option"; gate and
    judges validate spell them so. A config file's ``samples_per_prompt`` key is --n too."""
    import poise.auditing

    seen: list[Any] = []

    def audit(config: Any, **kwargs: Any) -> None:
        seen.append(config)
        raise PoiseError("stopped before the model loads")

    monkeypatch.setattr(poise.auditing, "audit", audit)
    args = ["audit", "-m", "mock", "--out", str(tmp_path / "runs"), "--temperature", "1"]
    result = CliRunner().invoke(app, [*args, "-j", "refusal", "--samples-per-prompt", "3"])
    assert result.exit_code == 2, result.output
    assert "stopped before the model loads" in result.output
    assert seen[-1].judge == "refusal" and seen[-1].sampling.n == 3
    config = tmp_path / "audit.yaml"
    config.write_text("samples_per_prompt: 4\n", encoding="utf-8")
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert "stopped before the model loads" in result.output, result.output
    assert seen[-1].sampling.n == 4


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["probe", "train"], "a file, not a folder"),
        (["firewall", "fit", "--anchors", "anchors.jsonl"], "a file, not a folder"),
    ],
)
def test_probe_and_firewall_take_output_as_the_other_writers_do(
    command: list[str], message: str, tmp_path: Path
) -> None:
    """What a command writes is ``-o/--output`` (train, gate, compare, attacks export); probe
    train and firewall fit took ``--out`` (elsewhere the folder of the runs) and ``-o`` only."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    result = CliRunner().invoke(app, [*command, "--output", str(a_file)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "No such option" not in result.output


def test_list_flags_say_their_form_once() -> None:
    """``--lora-targets`` said "(comma-separated), or all-linear (comma-separated or
    repeated)"; ``--margin-reward-model`` and ``--weights`` the same."""
    for path, name in [
        (["train", "dpo"], "lora_targets"),
        (["train", "modpo"], "margin_reward_models"),
        (["train", "modpo"], "weights"),
    ]:
        text = _option(path, name).help
        assert text.count("comma-separated") == 1 and text.endswith("(repeatable)"), text


def test_help_says_what_the_commands_do() -> None:
    runner = CliRunner()
    said = " ".join(runner.invoke(app, ["runs", "--help"]).output.split())
    assert "export" in said.split("Commands")[0]  # the group's own line, not just the list
    said = " ".join(runner.invoke(app, ["serve", "--help"]).output.split())
    assert "/v1/completions" in said  # a route the server has (tests/serve)
    # --limit of judges validate lists fewer disagreements; it judges every row (audit's
    # --limit, of the same spelling, cuts the items)
    assert "every row is judged" in _option(["judges", "validate"], "limit").help
    # probe train --run names a run under ./runs: it has no --out of runs to look under
    assert "./runs" in _option(["probe", "train"], "run").help


def test_an_audit_spelling_a_config_field_owns_stays_that_fields() -> None:
    """A config (a plugin's recipe) with a field ``suite`` besides ``prompts``: ``--suite`` is
    the field's own flag; the audit spelling of ``--prompts`` gives way."""
    from pydantic import BaseModel

    from poise.cli.train import command_from_config

    class Config(BaseModel):
        prompts: str = "harmful"
        suite: str = "benign"

    seen: dict[str, Any] = {}
    plugin = typer.Typer()
    plugin.command("go")(command_from_config(Config, seen.update, "a plugin's recipe"))
    plugin.command("other")(lambda: None)  # two commands: a group, as under `poise train`
    result = CliRunner().invoke(plugin, ["go", "--suite", "x", "-s", "y"])
    assert result.exit_code == 0, result.output
    assert seen == {"suite": "x", "prompts": "y"}


@pytest.fixture
def poise_log_level() -> Any:
    import logging

    logger = logging.getLogger("poise")
    level = logger.level
    yield logger
    logger.setLevel(level)


def test_verbose_works_after_the_command_too(tmp_path: Path, poise_log_level: Any) -> None:
    """``poise audit ... -v`` was "No such option: -v": the flag was the root's only, so it
    worked before the command (``poise -v audit``) and nowhere else."""
    import logging

    runner = CliRunner()
    for path, _ in _commands():
        result = runner.invoke(app, [*path, "-v", "-h"])
        assert result.exit_code == 0, (path, result.output)
        result = runner.invoke(app, [*path, "--verbose", "-h"])
        assert result.exit_code == 0, (path, result.output)
    out = str(tmp_path / "runs")
    for args in (
        ["runs", "ls", "--out", out, "-v"],  # after the command
        ["runs", "-v", "ls", "--out", out],  # after the group
        ["-v", "runs", "ls", "--out", out],  # before the command, as it was
    ):
        poise_log_level.setLevel(logging.WARNING)
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert poise_log_level.level == logging.DEBUG, args
    # merge's group runs `run` when no subcommand is named: its -v ran `run` with "methods"
    result = runner.invoke(app, ["merge", "-v", "methods"])
    assert result.exit_code == 0, result.output
    assert "ties" in result.output
    # left out, it leaves the level at warnings
    result = runner.invoke(app, ["runs", "ls", "--out", out])
    assert result.exit_code == 0, result.output
    assert poise_log_level.level == logging.WARNING


def test_the_commands_panel_gives_each_command_s_summary_on_one_line() -> None:
    """A docstring whose first paragraph wraps in the source broke there in the commands panel
    of ``--help`` (rich markup keeps newlines): "... /v1/completions," then "/v1/models)."."""
    wrapped = []
    for path, command in _commands():
        if not path:
            continue
        shown = command.short_help or (command.help or "").split("\n\n", 1)[0]
        if "\n" in shown.strip():
            wrapped.append(" ".join(path))
    assert wrapped == []
    serve = dict((tuple(p), c) for p, c in _commands())[("serve",)]
    assert serve.short_help and serve.short_help.endswith("/v1/completions, /v1/models).")
