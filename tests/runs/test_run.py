import json
from pathlib import Path

import pytest

from poise.errors import PoiseError
from poise.runs import Run, find_run, list_runs


def _rec(i: int, request_id: str = "greedy", k: int = 0) -> dict:
    return {"item_id": f"x-{i}", "request_id": request_id, "sample_index": k, "completion": f"c{i}"}


def test_create_writes_header_and_empty_samples(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "my run", {"model": "m"})
    header = json.loads((run.path / "run.json").read_text())
    assert header["schema"] == 1
    assert header["status"] == "running"
    assert header["config"] == {"model": "m"}
    assert header["poise_version"]
    assert (run.path / "samples.jsonl").read_text() == ""
    assert run.path.name.endswith("-my-run")


def test_two_runs_in_the_same_second_get_distinct_folders(tmp_path: Path) -> None:
    a = Run.create(tmp_path, "same", {})
    b = Run.create(tmp_path, "same", {})
    assert a.path != b.path
    assert {r.path for r in list_runs(tmp_path)} == {a.path, b.path}


def test_append_and_read_back(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    assert run.append([_rec(1), _rec(2)]) == 2
    assert run.append([]) == 0
    assert [r["item_id"] for r in run.records()] == ["x-1", "x-2"]
    assert run.done_keys() == {("x-1", "greedy", 0), ("x-2", "greedy", 0)}


def test_repair_cuts_a_torn_last_line(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    run.append([_rec(1), _rec(2)])
    with open(run.samples_path, "ab") as f:
        f.write(b'{"item_id": "x-3", "request_')  # killed mid-write
    # a reader never sees the torn record
    assert len(list(run.records())) == 2
    removed = run.repair()
    assert removed == len(b'{"item_id": "x-3", "request_')
    assert run.samples_path.read_bytes().endswith(b"\n")
    run.append([_rec(3)])
    assert [r["item_id"] for r in run.records()] == ["x-1", "x-2", "x-3"]


def test_repair_cuts_a_complete_but_invalid_last_line(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    run.append([_rec(1)])
    with open(run.samples_path, "ab") as f:
        f.write(b'{"item_id": \n')
    assert run.repair() > 0
    assert run.done_keys() == {("x-1", "greedy", 0)}


def test_repair_of_a_clean_file_changes_nothing(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    run.append([_rec(1)])
    before = run.samples_path.read_bytes()
    assert run.repair() == 0
    assert run.samples_path.read_bytes() == before


def test_invalid_line_in_the_middle_names_file_and_line(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    run.append([_rec(1)])
    with open(run.samples_path, "a") as f:
        f.write("not json\n")
    run.append([_rec(2)])
    with pytest.raises(PoiseError, match=r"samples.jsonl:2: invalid JSON"):
        list(run.records())


def test_update_header_is_atomic_and_keeps_fields(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {"a": 1})
    run.update_header(status="complete", samples=3)
    assert run.status == "complete"
    assert run.config == {"a": 1}
    assert not list(run.path.glob(".run.json.tmp*"))


def test_open_rejects_non_runs(tmp_path: Path) -> None:
    with pytest.raises(PoiseError, match="no such run folder"):
        Run.open(tmp_path / "missing")
    with pytest.raises(PoiseError, match="not a poise run folder"):
        Run.open(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text("{oops")
    with pytest.raises(PoiseError, match=r"run.json:1: invalid JSON"):
        Run.open(bad)


def test_find_run_by_name_and_substring(tmp_path: Path) -> None:
    a = Run.create(tmp_path, "alpha", {})
    Run.create(tmp_path, "beta", {})
    assert find_run(a.path.name, tmp_path).path == a.path
    assert find_run("alpha", tmp_path).path == a.path
    assert find_run(str(a.path)).path == a.path
    with pytest.raises(PoiseError, match="no run 'gamma' found"):
        find_run("gamma", tmp_path)
    with pytest.raises(PoiseError, match="matches 2 runs"):
        find_run("-", tmp_path)
