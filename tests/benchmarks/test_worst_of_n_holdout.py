"""benchmarks/worst_of_n_holdout.py: bad run folders fail with one line before anything is
generated."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "worst_of_n_holdout.py"


def test_a_missing_run_folder_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import poise

    def audit(**kwargs: object) -> None:
        raise AssertionError("no audit runs while a given run folder is missing")

    monkeypatch.setattr(poise, "audit", audit)
    missing = tmp_path / "no-run"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--fit-run", str(missing)])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert str(info.value.code).startswith(f"error: {missing}: no such run folder")
