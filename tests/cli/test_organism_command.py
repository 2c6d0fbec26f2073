"""``poise organism ls``, ``card`` (at 80 columns) and ``remeasure``: what they print."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app
from poise.organism import MEMBERS


def test_ls_never_cuts_a_member_name_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(app, ["organism", "ls"])
    assert result.exit_code == 0, result.output
    for member in MEMBERS:
        assert member in result.output
    assert "…" not in result.output


@pytest.mark.parametrize("columns", ["80", "160"])
def test_card_never_cuts_a_rate_name(monkeypatch: pytest.MonkeyPatch, columns: str) -> None:
    """organism-small-safe's card: the measured rates and the comparison with its base, whose
    rate names rich's Markdown tables cut at 80 columns."""
    from poise.organism import WEIGHTS_DIR

    card = (WEIGHTS_DIR / "organism-small-safe" / "README.md").read_text(encoding="utf-8")
    names = {
        line.split("|")[1].strip().strip("`")
        for line in card.splitlines()
        if line.startswith("| ") and "_rate" in line
    }
    assert len(names) > 5
    monkeypatch.setenv("COLUMNS", columns)
    result = CliRunner().invoke(app, ["organism", "card", "organism-small-safe"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    words = set(result.output.split())
    assert names <= words
    assert ("this member: " in result.output) == (columns == "80")  # blocks when too narrow


def test_remeasure_prints_each_rewritten_card_as_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A members folder with brackets in its path (``runs/[exp]``) lost them in the printed
    card path (read as rich markup), as other commands' output paths once did."""
    from poise.organism import build

    out = tmp_path / "[exp]" / "organism"

    def remeasured(*args: object, **kwargs: object) -> dict[str, dict[str, object]]:
        return {"organism-small-safe": {"garbled_rate": object()}}

    monkeypatch.setattr(build, "remeasure_cards", remeasured)
    result = CliRunner().invoke(
        app, ["organism", "remeasure", "--out", str(out)], terminal_width=300
    )
    assert result.exit_code == 0, result.output
    card = out / "organism-small-safe" / "README.md"
    assert f"card rewritten: {card} (1 rates)" in result.output.splitlines()


def test_the_bars_stay_off_a_piped_stdout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On a pipe rich printed the bars' last state on stdout, before the result: and before
    the error of a --threads the build refused once the bars had started."""
    from poise.organism import build

    def remeasured(*args: object, progress: object, **kwargs: object) -> dict[str, object]:
        progress("evaluate organism-small-safe", 3, 3)  # type: ignore[operator]
        return {"organism-small-safe": {"garbled_rate": object()}}

    monkeypatch.setattr(build, "remeasure_cards", remeasured)
    result = CliRunner().invoke(app, ["organism", "remeasure", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert [line for line in result.stdout.splitlines() if line.strip()] == [
        f"card rewritten: {tmp_path / 'organism-small-safe' / 'README.md'} (1 rates)"
    ]
    for command in ("build", "remeasure"):
        args = ["organism", command, "--out", str(tmp_path / "o"), "--threads", "0"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        assert f"organism {command}: --threads must be an integer >= 1, got 0" in result.stderr


def test_ls_of_a_folder_with_brackets_names_it(tmp_path: Path) -> None:
    # the table's title read the folder as rich markup: "[/x]" was a MarkupError traceback
    folder = tmp_path / "[/x]"
    result = CliRunner().invoke(
        app, ["organism", "ls", "--out", str(folder)], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 0, result.output
    flat = "".join(result.output.split())  # the title wraps to the table's width
    assert f"organismmembersin{folder}" in flat


@pytest.mark.parametrize(
    "command",
    [
        ["ls"],
        ["card", "organism-small"],
        ["build", "--quick", "-m", "organism-small"],
        ["remeasure", "--quick"],
    ],
)
def test_out_of_a_file_is_one_error_as_runs_ls_gives(command: list[str], tmp_path: Path) -> None:
    """``organism ls --out FILE`` listed every member as not built, exit code 0 (``runs ls
    --out FILE`` refuses); ``card`` said the member had no card, to be built."""
    a_file = tmp_path / "members.txt"
    a_file.write_text("x", encoding="utf-8")
    result = CliRunner().invoke(app, ["organism", *command, "--out", str(a_file)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert f"--out {a_file}: is a file; give the folder of the organism's members" in said
    assert a_file.read_text(encoding="utf-8") == "x"
