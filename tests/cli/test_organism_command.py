"""``poise organism ls`` on the shipped members, in an 80-column terminal."""

from __future__ import annotations

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
