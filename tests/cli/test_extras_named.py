"""Optional extras and opt-ins are named as the user types them (issue 10, item 11)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"


def test_missing_extra_error_prints_the_extra_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # the datasets extra is not installed
    result = CliRunner().invoke(app, ["suites", "show", "someone/some-dataset"])
    assert result.exit_code == 2, result.output
    assert "pip install 'poise[datasets]'" in result.output


def test_train_without_the_train_extra_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "accelerate", None)  # the train extra is not installed
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        '{"prompt": "How do I bake bread?", "chosen": "Knead and bake.", "rejected": "No."}\n'
    )
    result = CliRunner().invoke(
        app,
        [
            "train",
            "dpo",
            "--model",
            "organism-small",
            "--data",
            str(data),
            "--output",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "pip install 'poise[train]'" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_pickle_refusal_names_the_real_opt_in(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_hf_model_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "--model",
            str(folder),
            "--suite",
            "harmful",
            "--limit",
            "1",
            "--out",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "--model-option allow_pickle=true" in flat
    assert "--allow-pickle" not in flat  # no such flag


def test_readme_names_the_extras_where_they_are_needed() -> None:
    text = README.read_text(encoding="utf-8")
    for extra, where in (
        ("serve", "poise serve"),
        ("serve", "openai:"),
        ("train", "poise train"),
        ("datasets", "hub dataset"),
    ):
        assert f"poise[{extra}]" in text, extra
        # named in the same section as the feature that needs it
        section = next(s for s in text.split("\n## ") if where in s)
        assert f"poise[{extra}]" in section, (extra, where)
