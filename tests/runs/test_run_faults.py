"""A run folder under faults: a kill between the report and the status, leftovers of killed
writes, a symlinked samples file, a full disk, a failing SQLite cache."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app
from poise.errors import PoiseError
from poise.models.base import Completion
from poise.models.cache import ResponseCache
from poise.runs import Run, list_runs


def _rec(i: int) -> dict[str, object]:
    return {"item_id": f"x-{i}", "request_id": "greedy", "sample_index": 0, "completion": "c"}


class Killed(BaseException):
    """Stands in for the process ending at that point (nothing catches it)."""


def test_finish_draws_the_report_before_the_run_is_complete(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {"fingerprint": "f"})
    run.start()
    run.append([_rec(1)])

    def killed_while_drawing(r: Run) -> None:
        raise Killed

    with pytest.raises(Killed):
        run.finish({"overall": {}}, report=killed_while_drawing)
    assert run.status == "running"  # not complete: the same command will resume it
    found = Run.find_unfinished(tmp_path, "f")
    assert found is not None and found.path == run.path


def test_a_kill_before_the_report_is_repaired_by_running_the_command_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import poise.report.html

    fields = dict(model="mock", suites=["harmful"], limit=3, out=str(tmp_path), judge="refusal")

    def killed(run: Run) -> None:
        raise Killed

    with monkeypatch.context() as patched:
        patched.setattr(poise.report.html, "write_run_report", killed)
        with pytest.raises(Killed):
            poise.audit(**fields)
    [run] = list_runs(tmp_path)
    assert not run.report_path.exists()
    assert run.state == "interrupted"
    again = poise.audit(**fields)
    assert again.run.path == run.path  # the same run, resumed, not a new one
    assert run.status == "complete" and run.report_path.is_file()
    assert len(list(run.records())) == 3


def test_temporary_files_of_a_killed_writer_are_removed_on_resume(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    leftovers = [
        run.path / ".run.json.tmp-4242",
        run.path / ".metrics.json.tmp-4242",
        run.path / ".report.html.tmp-4242",
    ]
    for path in leftovers:
        path.write_text("half")
    Run(run.path).start()
    assert not [p for p in leftovers if p.exists()]
    assert sorted(p.name for p in run.path.iterdir()) == [".lock", "run.json", "samples.jsonl"]


def test_training_leftovers_are_removed_when_a_run_resumes(tmp_path: Path) -> None:
    from poise.train.recipes.common import OutputFolder, TrainConfig

    config = TrainConfig(model="m", output=str(tmp_path))
    staging = tmp_path / ".final-abc123"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".poise_train.json.xyz.tmp").write_text("{")
    (tmp_path / "checkpoints" / ".partial-step-5").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-4").mkdir()
    out = OutputFolder(path=tmp_path, recipe="sft", config=config, status="running")
    out.begin({})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-4"]


def test_a_symlinked_samples_file_is_refused_never_cut(tmp_path: Path) -> None:
    outside = tmp_path / "precious.jsonl"
    outside.write_bytes(b'{"a": 1}\n{"half')
    run = Run.create(tmp_path / "runs", "r", {})
    run.samples_path.unlink()
    run.samples_path.symlink_to(outside)
    with pytest.raises(PoiseError, match=r"samples.jsonl: is a symbolic link"):
        Run(run.path).start()
    with pytest.raises(PoiseError, match=r"samples.jsonl: is a symbolic link"):
        run.append([_rec(1)])
    with pytest.raises(PoiseError, match=r"samples.jsonl: is a symbolic link"):
        run.repair()
    assert outside.read_bytes() == b'{"a": 1}\n{"half'  # untouched

    result = CliRunner().invoke(app, ["audit", "--resume", str(run.path), "--no-html"])
    assert result.exit_code == 2
    assert "is a symbolic link" in result.output and "Traceback" not in result.output
    assert outside.read_bytes() == b'{"a": 1}\n{"half'


def test_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if b'"item_id"' in bytes(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    args = ["audit", "--model", "mock", "--suite", "harmful", "--limit", "3"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), "--no-html"])
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert "samples.jsonl: the disk is full (No space left on device)" in line
    assert "run the same command again to resume" in line
    assert "Traceback" not in result.output


def test_a_full_json_write_is_one_line_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run.create(tmp_path, "r", {})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(PoiseError, match=r"run.json: the disk is full"):
        run.update_header(status="x")
    monkeypatch.undo()
    assert not list(run.path.glob(".*.tmp-*"))
    assert json.loads((run.path / "run.json").read_text())["status"] == "running"


def test_a_sqlite_error_in_the_cache_is_one_line(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache.sqlite")
    pages = cache._conn.execute("PRAGMA page_count").fetchone()[0]
    cache._conn.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow: "full"
    big = [Completion(text="x" * 200_000, num_tokens=1, finish_reason="stop")]
    with pytest.raises(PoiseError, match=r"cache.sqlite: cannot write to the response cache") as e:
        cache.put_many("m", {"k": big})
    assert "full" in str(e.value) and "\n" not in str(e.value)
    assert not isinstance(e.value.__cause__, sqlite3.Error) or e.value.__suppress_context__
    assert cache.get("k") is None  # nothing half-stored
    cache.put_many("m", {"small": [Completion(text="ok", num_tokens=1, finish_reason="stop")]})
    assert cache.get("small") is not None


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every atomic writer goes through write_text_atomic; it removed its temporary file on an
    OSError only, so Ctrl-C between the write and the rename left it beside the output."""
    from poise.runs import run as run_module

    target = tmp_path / "out.json"
    target.write_text("old\n")

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_module.write_text_atomic(target, "new\n")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert target.read_text() == "old\n"
