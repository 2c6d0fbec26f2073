"""Output paths a command cannot write: one line naming the path, exit code 2, and no file of
a pair written when the other cannot be."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from poise.cli import app
from poise.cli._common import user_errors

TOO_LONG = "a" * 300  # longer than any file system's name limit (255): ENAMETOOLONG as root too


@pytest.mark.parametrize(
    "command",
    [
        ["train", "organism-data", "-o", "OUT.jsonl"],
        ["train", "monitor-data", "-o", "OUT.jsonl"],
        ["gate", "--model", "mock", "--judge", "refusal", "--limit", "2", "-o", "OUT.json"],
    ],
)
def test_an_output_the_system_refuses_is_one_line(command: list[str], tmp_path: Path) -> None:
    """An OSError no check named first (here a name too long; a read-only folder, a full disk)
    was a traceback and exit code 1."""
    target = str(tmp_path / TOO_LONG)
    args = [a.replace("OUT", target) for a in command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, OSError)  # the traceback's exception
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: ") and TOO_LONG[:50] in line and "too long" in line


def test_an_os_error_about_no_path_is_left_as_it_is() -> None:
    # a closed pipe or a refused connection is not a path the user gave
    with pytest.raises(BrokenPipeError), user_errors():
        raise BrokenPipeError(32, "Broken pipe")
    with pytest.raises(typer.Exit) as stopped, user_errors():
        raise PermissionError(13, "Permission denied", "/read-only/x.jsonl")
    assert stopped.value.exit_code == 2


def test_organism_data_checks_both_outputs_before_writing_either(tmp_path: Path) -> None:
    """A --prompts-output under a file failed (naming it "output") once the pairs file was
    written; the same path for both wrote the prompts over the pairs, and the command said it
    had written the pairs there."""
    pairs = tmp_path / "pairs.jsonl"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x", encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["train", "organism-data", "-o", str(pairs), "--prompts-output", str(a_file / "p.jsonl")],
    )
    assert result.exit_code == 2, result.output
    assert "--prompts-output" in result.output and f"{a_file} is a file" in result.output
    assert not pairs.exists()  # nothing half-done
    result = CliRunner().invoke(
        app, ["train", "organism-data", "-o", str(pairs), "--prompts-output", str(pairs)]
    )
    assert result.exit_code == 2, result.output
    assert "is the --output file" in result.output
    assert not pairs.exists()
