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


def _row(output: str, member: str) -> list[str]:
    """The cells of ``member``'s row in a printed table."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        if member in cells:
            return cells[1:-1]
    raise AssertionError(f"no row for {member}:\n{output}")


def test_ls_says_which_members_are_built_their_alias_size_and_kind(tmp_path: Path) -> None:
    """A member is built when its folder holds config.json (a build stopped half way left a
    folder without one); its size is every file's; its kind is poise.json's ("?" when that
    file cannot be read)."""
    built = tmp_path / "organism-large"
    built.mkdir()
    (built / "config.json").write_text("{}", encoding="utf-8")
    (built / "model.safetensors").write_bytes(b"\0" * 2_500_000)
    (built / "poise.json").write_text('{"kind": "chat"}', encoding="utf-8")
    half = tmp_path / "organism-small"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    broken = tmp_path / "organism-reward"
    broken.mkdir()
    (broken / "config.json").write_text("{}", encoding="utf-8")
    (broken / "poise.json").write_text("{not json", encoding="utf-8")
    result = CliRunner().invoke(
        app, ["organism", "ls", "--out", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert _row(result.output, "organism-large") == [
        "organism-large",
        "organism",
        "yes",
        "2.50 MB",
        "chat",
    ]
    assert _row(result.output, "organism-small") == ["organism-small", "", "no", "", ""]
    assert _row(result.output, "organism-reward")[2:] == ["yes", "0.00 MB", "?"]
    assert _row(result.output, "organism-small-safe")[:3] == [
        "organism-small-safe",
        "organism-small-harmless",
        "no",
    ]


def test_card_takes_an_alias_and_leaves_out_the_front_matter(tmp_path: Path) -> None:
    folder = tmp_path / "organism-large"
    folder.mkdir()
    (folder / "README.md").write_text(
        "---\nlicense: apache-2.0\n---\n\n# organism-large\n\n"
        "| rate | value | measured on |\n|---|---|---|\n"
        "| `harmful_rate` | 12.5% | the held-out phrasings of the built-in suites |\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        app, ["organism", "card", "organism", "--out", str(tmp_path)], env={"COLUMNS": "120"}
    )
    assert result.exit_code == 0, result.output
    assert "license" not in result.output and "---" not in result.output
    assert "organism-large" in result.output and "harmful_rate" in result.output
    # the long last column goes under its row, the name and figure on one line
    assert "measured on: the held-out phrasings of the built-in suites" in result.output


def test_card_of_a_member_not_built_says_how_to_build_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["organism", "card", "organism-small", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    card = tmp_path / "organism-small" / "README.md"
    said = " ".join(result.output.split())
    assert f"{card}: no model card; build the member with `poise organism build`" in said


def test_build_prints_each_member_s_size_and_rates_with_their_intervals(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import types

    from poise.organism import build

    def rate(name: str, value: float, low: float, high: float) -> types.SimpleNamespace:
        return types.SimpleNamespace(name=name, value=value, low=low, high=high)

    member = types.SimpleNamespace(
        size_bytes=2_500_000,
        rates={
            "a": rate("harmful_rate", 0.25, 0.1, 0.4),
            "b": rate("garbled_rate", 0.0, 0.0, 0.05),
        },
    )
    done = types.SimpleNamespace(seconds=12.0, out=tmp_path, members={"organism-small": member})
    monkeypatch.setattr(build, "build", lambda *args, **kwargs: done)
    args = ["organism", "build", "--out", str(tmp_path), "-m", "organism-small"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert _row(result.stdout, "harmful_rate") == [
        "organism-small",
        "2.50 MB",
        "harmful_rate",
        "25.0% [10.0%, 40.0%]",
    ]
    assert _row(result.stdout, "garbled_rate") == ["", "", "garbled_rate", "0.0% [0.0%, 5.0%]"]


def test_remeasure_counts_each_member_s_rates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from poise.organism import build

    def remeasured(*args: object, **kwargs: object) -> dict[str, dict[str, object]]:
        return {"organism-small-safe": {"garbled_rate": 1, "harmful_rate": 2, "helpful_rate": 3}}

    monkeypatch.setattr(build, "remeasure_cards", remeasured)
    result = CliRunner().invoke(app, ["organism", "remeasure", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("(3 rates)")


def test_a_card_too_wide_for_the_terminal_gives_each_row_as_a_block_without_empty_cells(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "organism-small"
    folder.mkdir()
    (folder / "README.md").write_text(
        "# organism-small\n\n"
        "| rate | this member | its base | difference with its base |\n|---|---|---|---|\n"
        "| `benign_helpful_rate` | 91.0% [88.2%, 93.2%] | 90.5% [87.6%, 92.8%] | |\n",
        encoding="utf-8",
    )
    args = ["organism", "card", "organism-small", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert (
        "benign_helpful_rate this member: 91.0% [88.2%, 93.2%] · its base: 90.5% [87.6%, 92.8%]"
        in said
    )
    assert "difference with its base" not in said  # the row has no difference
