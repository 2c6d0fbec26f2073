"""``poise train monitor``: what monitor.json says about the model the monitor was trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

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


@pytest.fixture
def monitor_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[tuple[object, ...], dict[str, Any]]]:
    """``train monitor`` with a fake training: its arguments kept, a trained monitor's header
    (head token, threshold 0.7, k 3) returned after 5 s."""
    import types

    import poise.train.monitor as monitor_module

    calls: list[tuple[tuple[object, ...], dict[str, Any]]] = []

    def fake(*args: object, **kwargs: Any) -> object:
        calls.append((args, kwargs))
        header = types.SimpleNamespace(head="token", threshold=0.7, k=3)
        return types.SimpleNamespace(monitor=types.SimpleNamespace(header=header), seconds=5.0)

    monkeypatch.setattr(monitor_module, "train_monitor_files", fake)
    return calls


def test_train_monitor_passes_the_validation_and_the_member_and_says_what_it_wrote(
    tmp_path: Path, monitor_calls: list[tuple[tuple[object, ...], dict[str, Any]]]
) -> None:
    data, validation, out = tmp_path / "d.jsonl", tmp_path / "v.jsonl", tmp_path / "mon"
    result = CliRunner().invoke(
        app,
        [
            *("train", "monitor", "-m", "organism", "--data", str(data), "-o", str(out)),
            *("--validation", str(validation)),
        ],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 0, result.output
    [(args, kwargs)] = monitor_calls
    assert args == ("organism", str(data), str(out))
    assert kwargs["validation"] == str(validation)
    assert kwargs["metadata"] == {"base_name": "organism-large"}
    assert result.stdout.strip() == f"wrote {out} (head token, threshold 0.7, k 3; 5 s)"


def test_a_bad_monitor_setting_is_refused_before_any_training(
    tmp_path: Path, monitor_calls: list[tuple[tuple[object, ...], dict[str, Any]]]
) -> None:
    result = CliRunner().invoke(
        app,
        [
            *("train", "monitor", "-m", "organism-small", "--data", str(tmp_path / "d.jsonl")),
            *("-o", str(tmp_path / "mon"), "--lr-decay", "2"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "lr_decay (--lr-decay): expected a number in (0, 1], got 2.0" in result.output
    assert monitor_calls == []


def test_monitor_data_writes_the_split_and_seed_asked(tmp_path: Path) -> None:
    from poise.organism.monitor import write_organism_monitor_data

    out = tmp_path / "heldout.jsonl"
    args = ["train", "monitor-data", "-o", str(out), "--split", "heldout", "--seed", "1"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    count = write_organism_monitor_data(tmp_path / "same.jsonl", "heldout", seed=1)
    assert out.read_text() == (tmp_path / "same.jsonl").read_text()
    assert result.stdout.strip() == f"wrote {count} answers to {out}"
    default = tmp_path / "default.jsonl"
    result = CliRunner().invoke(app, ["train", "monitor-data", "-o", str(default)])
    assert result.exit_code == 0, result.output
    write_organism_monitor_data(tmp_path / "train.jsonl", "train", seed=0)
    assert default.read_text() == (tmp_path / "train.jsonl").read_text()


def test_monitor_data_of_an_unknown_split_is_one_line_and_no_file(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    result = CliRunner().invoke(app, ["train", "monitor-data", "-o", str(out), "--split", "test"])
    assert result.exit_code == 2, result.output
    assert "--split 'test': expected train, validation or heldout" in result.output
    assert not out.exists()
