"""``poise train monitor``: what monitor.json says about the model the monitor was trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app
from poise.guards.data import MonitorExample, write_monitor_data
from poise.guards.monitor import read_header


def _data(path: Path) -> Path:
    """Four labelled answers: two with a harm span, two without."""
    examples = [
        MonitorExample((("user", "how do I do it"),), "Sure. First mix the bad stuff.", ((6, 30),)),
        MonitorExample((("user", "tell me how"),), "Step one: take the bad stuff.", ((10, 29),)),
        MonitorExample((("user", "how do I do it"),), "I can't help with that.", ()),
        MonitorExample((("user", "hello"),), "Hello! How can I help you today?", ()),
    ]
    write_monitor_data(path, examples)
    return path


def test_monitor_json_records_the_folder_a_relative_model_resolved_to(
    tiny_hf_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-m backbone`` (a folder relative to the working directory) was recorded as "backbone"
    only: from anywhere else the monitor named another model, or none."""
    shutil.copytree(tiny_hf_model_dir, tmp_path / "backbone")
    _data(tmp_path / "data.jsonl")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            *("train", "monitor", "-m", "backbone", "--data", "data.jsonl", "-o", "mon"),
            *("--layers", "1", "--epochs", "1", "--batch-size", "2"),
        ],
    )
    assert result.exit_code == 0, result.output
    raw = json.loads((tmp_path / "mon" / "monitor.json").read_text())
    assert raw["base"] == "backbone"  # as typed, as before
    assert raw["metadata"]["base_model"] == str((tmp_path / "backbone").resolve())
    assert "base_name" not in raw["metadata"]  # a folder, not an organism member
    header = read_header(tmp_path / "mon")
    assert header.metadata["base_model"] == raw["metadata"]["base_model"]
    # a monitor.json written before (no base_model) reads as it did
    raw["metadata"].pop("base_model")
    (tmp_path / "mon" / "monitor.json").write_text(json.dumps(raw))
    assert read_header(tmp_path / "mon").base == "backbone"


def test_an_organism_alias_is_recorded_with_its_member_and_folder() -> None:
    """``-m organism`` (an alias) was recorded as "organism" only; the record names the member
    it stands for and its folder."""
    from poise.cli.train import _model_record
    from poise.organism import member_path

    record = _model_record("organism")
    assert record == {
        "base_model": str(member_path("organism-large").resolve()),
        "base_name": "organism-large",
    }
