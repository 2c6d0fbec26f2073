"""scripts/rechoose_monitor_rule.py: a command line that never rewrites the shipped monitor
unasked (it rewrites the folder it is given in place)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "rechoose_monitor_rule.py"


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """The package's weights folder moved to tmp_path, and the rule choice replaced by a
    recorder (it would retrain nothing, but rewrites the folder it is given)."""
    import poise.organism.build
    import poise.organism.monitor

    monkeypatch.setattr(poise.organism.build, "WEIGHTS_DIR", tmp_path / "weights")
    chosen: list[Path] = []

    def rechoose(folder: Path, **kwargs: Any) -> dict[str, Any]:
        chosen.append(folder)
        return {}

    monkeypatch.setattr(poise.organism.monitor, "rechoose_monitor_rule", rechoose)
    return chosen


def run(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return int(info.value.code or 0)


def monitor_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "monitor.json").write_text("{}", encoding="utf-8")
    (path / "README.md").write_text("# card\n", encoding="utf-8")
    return path


def test_help_is_help_not_a_folder(
    monkeypatch: pytest.MonkeyPatch, shipped: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, "--help") == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--shipped" in out
    assert shipped == []


def test_no_folder_is_a_usage_error_not_the_shipped_monitor(
    monkeypatch: pytest.MonkeyPatch, shipped: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch) == 2
    err = capsys.readouterr().err
    assert "one of the arguments folder --shipped is required" in err
    assert shipped == []


def test_a_wrong_folder_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    shipped: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "nowhere"
    assert run(monkeypatch, str(missing)) == 1
    assert capsys.readouterr().err == (
        f"error: {missing}: no such folder (give a monitor folder, or --shipped)\n"
    )
    assert run(monkeypatch, str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: not a monitor folder (no monitor.json)")
    assert err.count("\n") == 1
    assert shipped == []


def test_the_folder_given_or_the_shipped_one_when_asked(
    monkeypatch: pytest.MonkeyPatch,
    shipped: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mine = monitor_folder(tmp_path / "mine")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(mine)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    assert shipped == [mine]
    assert capsys.readouterr().out == "# card\n\n"
    package = monitor_folder(tmp_path / "weights" / "organism-monitor")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--shipped"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    assert shipped == [mine, package]
    assert run(monkeypatch, str(mine), "--shipped") == 2  # one or the other
