import json
import re
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


def test_a_torn_last_line_cut_inside_a_character_is_not_a_record_yet(tmp_path: Path) -> None:
    """A kill (or a writer still writing) can stop a record between the bytes of one UTF-8
    character: readers (``poise runs show``, the report) saw a UnicodeDecodeError traceback."""
    run = Run.create(tmp_path, "r", {})
    run.append([{**_rec(1), "completion": "déjà vu"}])
    whole = json.dumps({**_rec(2), "completion": "é"}, ensure_ascii=False).encode("utf-8")
    with open(run.samples_path, "ab") as f:
        f.write(whole[: whole.index("é".encode()) + 1])  # the first byte of "é" only
    assert [r["completion"] for r in run.records()] == ["déjà vu"]
    assert run.done_keys() == {("x-1", "greedy", 0)}
    assert run.samples_written() == 1


def test_a_finished_line_that_is_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    run.append([_rec(1)])
    with open(run.samples_path, "ab") as f:
        f.write(b'{"item_id": "x-2", "completion": "\xff"}\n')
    run.append([_rec(3)])
    with pytest.raises(PoiseError, match=r"samples.jsonl:2: not UTF-8 text \(byte 35 of"):
        list(run.records())


def test_last_newline_reads_backwards_across_chunks() -> None:
    import io

    from poise.runs.run import _last_newline

    data = b"ab\ncdefgh\nijklmnopq"
    f = io.BytesIO(data)
    for chunk in (1, 3, 4, 64):
        assert _last_newline(f, len(data), chunk) == data.rfind(b"\n")
        assert _last_newline(f, data.rfind(b"\n"), chunk) == 2
        assert _last_newline(f, 2, chunk) == -1
        assert _last_newline(f, 0, chunk) == -1


def test_repair_finds_a_last_line_longer_than_its_read_chunk(tmp_path: Path) -> None:
    """repair reads the file's tail backwards, not the whole file: a torn record longer than
    the 64 KiB it reads at a time, and a complete one, are told apart as before."""
    run = Run.create(tmp_path, "r", {})
    long = {**_rec(1), "completion": "x" * 200_000}
    run.append([long])
    torn = json.dumps({**_rec(2), "completion": "y" * 150_000}).encode()[:-3]
    with open(run.samples_path, "ab") as f:
        f.write(torn)
    assert run.repair() == len(torn)
    assert run.repair() == 0
    assert [r["completion"] for r in run.records()] == [long["completion"]]


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
    with pytest.raises(
        PoiseError, match=r"matches 2 runs .*; give the folder name of the one you mean"
    ):
        find_run("-", tmp_path)
    with pytest.raises(PoiseError, match=r"no run 'alpha' found \(not a run folder, and .* holds"):
        find_run("alpha", tmp_path / "empty")


def test_a_run_name_beats_a_longer_name_that_contains_it(tmp_path: Path) -> None:
    """``large-t1`` names the run called large-t1, not also ``large-t1-40`` (the documented
    ``poise compare large-t1 ...`` of docs/steering.md); a part of a name still finds a run."""
    plain = Run.create(tmp_path, "large-t1", {})
    Run.create(tmp_path, "large-t1-40", {})
    assert find_run("large-t1", tmp_path).path == plain.path
    assert "large-t1-40" in find_run("t1-40", tmp_path).path.name
    with pytest.raises(PoiseError, match="matches 2 runs"):
        find_run("large", tmp_path)


# ---- the life of a run: resume, start, cached model, finish ---------------------------------


def test_find_unfinished_matches_the_fingerprint_and_skips_complete_runs(tmp_path: Path) -> None:
    done = Run.create(tmp_path, "a", {"fingerprint": "f1"})
    done.finish({"overall": {}})
    assert Run.find_unfinished(tmp_path, "f1") is None  # complete runs are not resumed
    open_run = Run.create(tmp_path, "b", {"fingerprint": "f1"})
    Run.create(tmp_path, "c", {"fingerprint": "other"})
    found = Run.find_unfinished(tmp_path, "f1")
    assert found is not None and found.path == open_run.path
    assert Run.find_unfinished(tmp_path / "missing", "f1") is None


def test_start_marks_running_cuts_a_torn_record_and_returns_the_done_keys(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    run.append([_rec(1), _rec(2)])
    with open(run.samples_path, "a", encoding="utf-8") as f:
        f.write('{"item_id": "x-3", "requ')  # a kill mid-write
    run.update_header(status="interrupted")
    done = run.start(judge_resolved="refusal", model_name="m")
    assert done == {("x-1", "greedy", 0), ("x-2", "greedy", 0)}
    header = run.header
    assert (header["status"], header["judge_resolved"], header["model_name"]) == (
        "running",
        "refusal",
        "m",
    )
    assert run.samples_path.read_text().count("\n") == 2


def test_cached_model_answers_from_the_runs_cache(tmp_path: Path) -> None:
    from poise.config import Sampling
    from poise.models.mock import MockModel

    run = Run.create(tmp_path, "r", {})
    model = MockModel(responses={"hi": "hello"})
    chat = [{"role": "user", "content": "hi"}]
    assert run.cached(model).generate([chat], Sampling())[0][0].text == "hello"
    assert run.cached(model).generate([chat], Sampling())[0][0].text == "hello"
    assert model.calls == 1  # the second answer came from cache.sqlite in the run folder
    assert run.cache_path.exists()


def test_finish_writes_metrics_then_the_report_then_the_status(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    run.append([_rec(1), _rec(2), _rec(3)])
    seen: list[tuple[str, bool]] = []

    def report(r: Run) -> None:
        # metrics are there; the run is complete only once the report is written too
        seen.append((r.status, r.metrics() is not None))
        r.report_path.write_text("<html></html>")

    run.finish({"overall": {"x": 1}}, report=report)
    assert seen == [("running", True)]
    assert run.status == "complete"
    assert run.metrics() == {"overall": {"x": 1}}
    assert run.header["samples"] == 3
    assert run.report_path.read_text() == "<html></html>"


def test_unreadable_metrics_name_the_file(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    (run.path / "metrics.json").write_text("{oops")
    with pytest.raises(PoiseError, match=r"metrics\.json:1: invalid JSON"):
        run.metrics()


def test_a_record_that_is_not_an_object_names_file_and_line(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    run.samples_path.write_text('{"item_id": "a"}\n[1, 2]\n')
    with pytest.raises(PoiseError, match=r"samples\.jsonl:2: expected a JSON object"):
        list(run.records())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"item_id": None}, "the record has no 'item_id'"),
        ({"sample_index": "x"}, "'sample_index' must be an integer >= 0, got 'x'"),
        ({"sample_index": 1.5}, "'sample_index' must be an integer >= 0, got 1.5"),
        ({"sample_index": -1}, "'sample_index' must be an integer >= 0, got -1"),
        ({"sample_index": True}, "'sample_index' must be an integer >= 0, got True"),
    ],
)
def test_a_record_without_its_key_names_file_and_line_and_leaves_the_header(
    tmp_path: Path, change: dict, message: str
) -> None:
    # a KeyError / ValueError traceback, after the header of a complete run said running again
    run = Run.create(tmp_path, "r", {})
    bad = {k: v for k, v in {**_rec(2), **change}.items() if v is not None}
    run.append([_rec(1), bad])
    run.update_header(status="complete")
    with pytest.raises(PoiseError, match=rf"samples.jsonl:2: {re.escape(message)}$"):
        run.start()
    assert run.status == "complete"


def test_create_with_lock_holds_the_lock_before_the_header_exists(
    tmp_path: Path, locked_when_run_json_appears: list[bool]
) -> None:
    # another process finds an unfinished run as soon as its run.json exists: the writer must
    # hold the lock by then, or that process adopts the new run and its writer stops
    run = Run.create(tmp_path, "r", {}, lock=True)
    assert locked_when_run_json_appears == [True]
    with pytest.raises(PoiseError, match="another poise process"):
        Run(run.path).lock()
    run.unlock()
    Run(run.path).lock().unlock()


def test_a_run_continued_under_other_versions_records_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """run.json named only the versions of the process that began the run: a run resumed after
    an upgrade (transformers, torch, poise) said its records were all made under the old ones."""
    import poise.runs.run as module

    began = module.environment_versions()
    run = Run.create(tmp_path, "r", {})
    run.append([_rec(1)])
    run.start()  # the same versions: nothing added
    assert "continued_with" not in run.header
    upgraded = {**began, "transformers_version": "99.0"}
    monkeypatch.setattr(module, "environment_versions", lambda: upgraded)
    with caplog.at_level("WARNING"):
        run.start()
    assert "transformers_version" in caplog.text and "99.0" in caplog.text
    header = run.header
    assert header["transformers_version"] == began["transformers_version"]  # the run began so
    [entry] = header["continued_with"]
    assert {k: entry[k] for k in upgraded} == upgraded and entry["records_before"] == 1
    run.append([_rec(2)])
    run.start()  # continued again under the same upgrade: nothing new to say
    assert len(run.header["continued_with"]) == 1
    fresh = Run.create(tmp_path, "fresh", {})
    fresh.start()  # a new run under any versions has no records to tell apart
    assert "continued_with" not in fresh.header


def test_a_run_reads_its_relative_paths_where_it_began_while_that_directory_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.json's ``workdir`` is where the relative paths of the run's config are read: from
    another directory, that one; from the same one, or once it is gone (a moved project) or for
    a run recorded without it, the working directory, as before."""
    from poise.runs.run import recorded_workdir

    began, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    began.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(began)
    run = Run.create(tmp_path / "runs", "a", {"suites": ["mini.jsonl"]}, workdir=".")
    assert run.header["workdir"] == str(began)
    assert recorded_workdir(run) is None  # here: the paths as typed
    monkeypatch.chdir(elsewhere)
    assert recorded_workdir(run) == began
    # a reference run given as a relative path is found from there, not from here
    (began / "runs").symlink_to(tmp_path / "runs")
    (elsewhere / "runs").mkdir()
    relative = Path("runs") / run.path.name
    assert find_run(relative, base=began).path == began / relative
    with pytest.raises(PoiseError, match="no run"):
        find_run(relative)
    began.rename(tmp_path / "moved")
    assert recorded_workdir(run) is None
    assert recorded_workdir(Run.create(tmp_path / "runs", "old", {})) is None


def test_a_released_lock_can_be_taken_again_and_another_holder_means_running(
    tmp_path: Path,
) -> None:
    run = Run.create(tmp_path, "r", {}, lock=True)
    # another Run of the folder (another process, or this one through another handle) sees
    # the run held: running, not interrupted
    assert Run(run.path).state == "running" and Run(run.path).is_locked()
    run.unlock()
    assert run.state == Run(run.path).state == "interrupted" and not run.is_locked()
    run.lock()  # released for good: taken again, and held
    with pytest.raises(PoiseError, match="another poise process"):
        Run(run.path).lock()
    assert Run(run.path).state == "running"
    run.unlock()


def test_a_failed_create_releases_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import poise.runs.run as run_module

    def full(path: Path, data: object) -> None:
        raise PoiseError(f"{path}: the disk is full")

    monkeypatch.setattr(run_module, "write_json_atomic", full)
    with pytest.raises(PoiseError, match="the disk is full") as info:
        Run.create(tmp_path, "r", {}, lock=True)
    monkeypatch.undo()
    (folder,) = tmp_path.iterdir()
    # released at once, not when the failed Run is garbage-collected (the error's traceback,
    # which a caller may keep, holds it)
    assert info.value.__traceback__ is not None
    Run(folder).lock().unlock()


def _unfinished(root: Path, folder: str, fingerprint: str, name: str) -> Run:
    run = Run.create(root, name, {"fingerprint": fingerprint, "name": name})
    return Run(run.path.rename(root / folder))


def test_find_unfinished_takes_the_newest_run_of_that_name(tmp_path: Path) -> None:
    older = _unfinished(tmp_path, "20250101-000000-a", "f", "a")
    newer = _unfinished(tmp_path, "20260101-000000-a", "f", "a")
    other = _unfinished(tmp_path, "20270101-000000-b", "f", "b")
    assert [r.path for r in list_runs(tmp_path)] == [other.path, newer.path, older.path]
    found = Run.find_unfinished(tmp_path, "f", name="a")
    assert found is not None and found.path == newer.path
    found = Run.find_unfinished(tmp_path, "f")
    assert found is not None and found.path == other.path


def test_a_run_name_is_matched_whole_after_the_timestamp(tmp_path: Path) -> None:
    t1 = _unfinished(tmp_path, "20260101-000000-t1", "f", "t1")
    _unfinished(tmp_path, "20260101-000001-large-t1", "f", "large-t1")
    assert find_run("t1", tmp_path).path == t1.path


def test_a_run_without_records_or_a_version_it_never_named_is_not_said_continued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``continued_with`` tells apart records made under other versions: a run with no record
    yet has none to tell apart, and a version its header never named (a run of an older poise
    that did not record it) is no change."""
    import poise.runs.run as module

    began = module.environment_versions()
    empty = Run.create(tmp_path, "empty", {})
    older = Run.create(tmp_path, "older", {})
    older.append([_rec(1)])
    header = older.header
    del header["python_version"]
    (older.path / "run.json").write_text(json.dumps(header))
    monkeypatch.setattr(
        module, "environment_versions", lambda: {**began, "python_version": "3.99.0"}
    )
    for run in (empty, older):
        run.start()
        assert "continued_with" not in run.header, run.path.name
        run.unlock()


def test_records_are_written_whole_through_short_writes_and_keep_their_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.write may write fewer bytes than asked (a signal, a pipe, some file systems): the rest
    is written too. Text outside ASCII is written as itself, so `grep café samples.jsonl` finds
    it."""
    import os

    import poise.runs.run as module

    real = os.write
    monkeypatch.setattr(module.os, "write", lambda fd, data: real(fd, bytes(data[:7])))
    run = Run.create(tmp_path, "r", {})
    records = [{**_rec(i), "completion": f"café n°{i}"} for i in range(3)]
    assert run.append(records) == 3
    assert list(run.records()) == records
    assert "café n°2" in run.samples_path.read_text(encoding="utf-8")


def test_only_poises_own_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", {})
    left = run.path / ".metrics.json.tmp-123"
    mine = run.path / "notes.tmp-1"  # a user's file that looks alike, not hidden
    left.write_text("{")
    mine.write_text("keep me")
    run.start()
    assert not left.exists() and mine.read_text() == "keep me"


def test_the_lock_names_its_holder_and_holds_only_its_pid(tmp_path: Path) -> None:
    import os

    run = Run.create(tmp_path, "r", {})
    (run.path / ".lock").write_text("1234567890123\n")  # a longer pid left by an earlier holder
    run.lock()
    assert (run.path / ".lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(PoiseError, match=rf"another poise process \(pid {os.getpid()}\)"):
        Run(run.path).lock()
    run.unlock()


def test_a_plain_run_is_labelled_greedy_or_sampled_with_its_n() -> None:
    from poise.runs.run import attack_label

    def label(**sampling: object) -> str:
        return attack_label({"attack": "greedy", "sampling": sampling})

    assert label(temperature=0) == label(temperature=0.0) == label() == "greedy"
    assert label(temperature=1.0) == label(temperature=1.0, n=1) == "sampled T=1"
    assert label(temperature=0.7, n=4) == "sampled T=0.7 n=4"
    assert label(temperature=0.7, top_k=1) == "greedy (top-k=1)"  # one token to draw
    assert label(temperature=0.7, top_k=2) == "sampled T=0.7"
    assert attack_label({"attack": "worst_of_n", "sampling": {"temperature": 1}}) == "worst_of_n"
