"""``poise train monitor``: what monitor.json says about the model the monitor was trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitor_examples import four_answers
from poise.cli import app
from poise.guards.monitor import read_header


def test_monitor_json_records_the_folder_a_relative_model_resolved_to(
    tiny_hf_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-m backbone`` (a folder relative to the working directory) was recorded as "backbone"
    only: from anywhere else the monitor named another model, or none."""
    shutil.copytree(tiny_hf_model_dir, tmp_path / "backbone")
    four_answers(tmp_path / "data.jsonl")
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


def test_an_organism_alias_is_recorded_with_its_member() -> None:
    """``-m organism`` (an alias) was recorded as "organism" only; the record names the member
    it stands for (its folder, ``base_model``, is recorded by the training, which resolves it
    once)."""
    from poise.cli.train import _model_record

    assert _model_record("organism") == {"base_name": "organism-large"}
    assert _model_record("organism-small") == {"base_name": "organism-small"}
    assert _model_record("some/folder") == {}


def test_monitor_json_is_written_once_with_the_command_s_metadata(
    tiny_hf_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command rewrote monitor.json after the save to add ``base_model``: two writes, the
    second outside the save's whole-or-nothing; the data files were recorded as typed only."""
    from poise.guards.monitor import Monitor

    four_answers(tmp_path / "data.jsonl")
    monkeypatch.chdir(tmp_path)
    writes: list[Path] = []
    original = Monitor.save_header

    def counted(self: Monitor, folder: str | Path) -> Path:
        writes.append(Path(folder))
        return original(self, folder)

    monkeypatch.setattr(Monitor, "save_header", counted)
    result = CliRunner().invoke(
        app,
        [
            *("train", "monitor", "-m", str(tiny_hf_model_dir), "--data", "data.jsonl"),
            *("-o", "mon", "--layers", "1", "--epochs", "1", "--batch-size", "2"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(writes) == 1 and writes[0] != tmp_path / "mon"  # inside the save's temporary
    raw = json.loads((tmp_path / "mon" / "monitor.json").read_text())["metadata"]
    assert raw["data"] == "data.jsonl"
    assert raw["data_path"] == str((tmp_path / "data.jsonl").resolve())
    assert raw["base_model"] == str(tiny_hf_model_dir.resolve())


def test_monitor_data_names_the_output_flag_of_a_folder(tmp_path: Path) -> None:
    """``-o FOLDER`` said "output: ... is a folder", a name the command has no flag for."""
    result = CliRunner().invoke(app, ["train", "monitor-data", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert f"--output: {tmp_path} is a folder" in result.output


def test_every_monitor_setting_has_a_flag_that_reaches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every field of MonitorSettings is a flag of `poise train monitor` (weight decay, the
    learning rate's decay and the accumulation were Python only), and each flag's value is the
    field's: the command is one call of train_monitor_files."""
    import dataclasses

    import poise.train.monitor as monitor_module
    from poise.errors import PoiseError
    from poise.train.monitor import MonitorSettings

    seen: list[MonitorSettings] = []

    def fake(*args: object, settings: MonitorSettings, **kwargs: object) -> None:
        seen.append(settings)
        raise PoiseError("stopped before training")

    monkeypatch.setattr(monitor_module, "train_monitor_files", fake)
    given = {
        "alpha": 0.5, "gamma": 0.5, "logic_reduce": "avg", "head": "token", "lr": 0.002,
        "lr_decay": 0.95, "weight_decay": 0.1, "epochs": 2, "batch_size": 4, "accumulation": 3,
        "max_length": 64, "seed": 7, "tolerance": 0.01, "layers": 1,
    }  # fmt: skip
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in given.items()]
    result = CliRunner().invoke(
        app,
        [
            *("train", "monitor", "-m", "organism-small", "--data", str(tmp_path / "d.jsonl")),
            *("-o", str(tmp_path / "mon"), "--choose-head", *flags),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "stopped before training" in result.output
    (settings,) = seen
    assert dataclasses.asdict(settings) == {**given, "calibrate_heads": ("response", "token")}
    defaults = CliRunner().invoke(
        app,
        [
            *("train", "monitor", "-m", "organism-small", "--data", str(tmp_path / "d.jsonl")),
            *("-o", str(tmp_path / "mon2")),
        ],
    )
    assert defaults.exit_code == 2, defaults.output
    assert seen[1] == MonitorSettings()  # the flags' defaults are the fields'
