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
