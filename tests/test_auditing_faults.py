"""Audits under faults: two processes on one run folder, kill -9, a failing endpoint, a kill
between the status and the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chat_endpoint import REFUSE, Answer, Endpoint, completion
from poise.cli import app
from poise.runs import list_runs


def write_suite(path: Path, n: int) -> Path:
    rows = [
        {
            "id": f"h-{i:02d}",
            "messages": [{"role": "user", "content": f"harmful request {i}"}],
            "kind": "harmful",
            "category": "fraud",
            "suite": "mini",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def audit_argv(model: str, suite: Path, out: Path, *extra: str) -> list[str]:
    return [
        "audit",
        "--model",
        model,
        "--suite",
        str(suite),
        "--judge",
        "refusal",
        "--out",
        str(out),
        "--no-html",
        *extra,
    ]


def poise_process(argv: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "poise.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(event: threading.Event, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not event.wait(0.05):
        if proc.poll() is not None:
            pytest.fail(f"the audit ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail("the audit never reached the endpoint")


# ---- 1. one writer per run folder ------------------------------------------------------------


def test_a_second_process_on_the_same_unfinished_run_stops_with_one_line(
    tmp_path: Path, endpoint: Callable[..., Endpoint]
) -> None:
    server = endpoint()
    server.gate.clear()  # the first audit waits inside its run, holding it
    suite = write_suite(tmp_path / "mini.jsonl", 6)
    out = tmp_path / "runs"
    argv = audit_argv(f"openai:m@{server.url}", suite, out)
    first = poise_process(argv)
    try:
        wait_for(server.asked, first)
        second = poise_process(argv)
        try:
            _, err = second.communicate(timeout=60)
        finally:
            second.kill()
        assert second.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert "another poise process" in lines[0] and "is writing this run" in lines[0]
        assert f"pid {first.pid}" in lines[0]
        server.gate.set()
        first.communicate(timeout=120)
        assert first.returncode == 0
    finally:
        first.kill()
    [run] = list_runs(out)
    assert run.status == "complete"
    records = list(run.records())
    assert len(records) == 6  # one record per item: nobody wrote the run twice
    assert not run.is_locked()


# ---- 5. a killed run is interrupted, not running ---------------------------------------------


def test_a_run_killed_with_kill_9_shows_as_interrupted(
    tmp_path: Path, endpoint: Callable[..., Endpoint]
) -> None:
    server = endpoint()
    server.gate.clear()
    suite = write_suite(tmp_path / "mini.jsonl", 4)
    out = tmp_path / "runs"
    proc = poise_process(audit_argv(f"openai:m@{server.url}", suite, out))
    try:
        wait_for(server.asked, proc)
        [run] = list_runs(out)
        assert run.state == "running"  # its process holds the lock
        listing = CliRunner().invoke(app, ["runs", "ls", "--out", str(out)], env={"COLUMNS": "200"})
        assert "running" in listing.output
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    [run] = list_runs(out)
    assert run.status == "running"  # what the header says: the kill left no time to change it
    assert run.state == "interrupted"
    listing = CliRunner().invoke(app, ["runs", "ls", "--out", str(out)], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    assert "interrupted" in listing.output and "running" not in listing.output

    # the kill left no stale lock: the same command resumes and completes the run
    server.gate.set()
    again = poise_process(audit_argv(f"openai:m@{server.url}", suite, out))
    again.communicate(timeout=120)
    assert again.returncode == 0
    [run] = list_runs(out)
    assert run.state == "complete" and len(list(run.records())) == 4


# ---- 2. one request failing for good loses no other answer -----------------------------------


def test_an_audit_keeps_every_answer_when_one_request_fails_and_resume_retries_it(
    tmp_path: Path, endpoint: Callable[..., Endpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    import poise.models.openai as openai_backend

    monkeypatch.setattr(openai_backend, "_BACKOFF_BASE_S", 0.01)
    broken = {"harmful request 3"}

    def reply(request: dict[str, Any]) -> Answer:
        if request["messages"][-1]["content"] in broken:
            return 503, "application/json", b'{"error": {"message": "overloaded"}}'
        return completion(REFUSE)

    server = endpoint(reply)
    suite = write_suite(tmp_path / "mini.jsonl", 8)
    argv = audit_argv(f"openai:m@{server.url}", suite, tmp_path / "runs")
    argv += ["--model-option", "max_retries=1"]  # one block of 8 (batch size 256)
    failed = CliRunner().invoke(app, argv, env={"COLUMNS": "300"})
    assert failed.exit_code == 2, failed.output
    line = failed.output.strip().splitlines()[-1]
    assert "1 request failed: item h-03 (greedy): request failed after 2 attempts: HTTP 503" in line
    assert "run the same command again" in line and "Traceback" not in failed.output
    [run] = list_runs(tmp_path / "runs")
    assert sorted(r["item_id"] for r in run.records()) == [f"h-{i:02d}" for i in range(8) if i != 3]
    assert run.state == "interrupted"

    broken.clear()
    asked = len(server.requests)
    again = CliRunner().invoke(app, argv, env={"COLUMNS": "300"})
    assert again.exit_code == 0, again.output
    [run] = list_runs(tmp_path / "runs")
    assert run.status == "complete"
    assert sorted(r["item_id"] for r in run.records()) == [f"h-{i:02d}" for i in range(8)]
    # only the failed request was asked again
    assert [r["messages"][-1]["content"] for r in server.requests[asked:]] == ["harmful request 3"]


def test_an_audit_of_which_no_answer_comes_back_leaves_no_run(
    tmp_path: Path, endpoint: Callable[..., Endpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request fails (an endpoint that answers 503 to all): one line, and no run folder
    holding zero answers to resume."""
    import poise.models.openai as openai_backend

    monkeypatch.setattr(openai_backend, "_BACKOFF_BASE_S", 0.01)

    def reply(request: dict[str, Any]) -> Answer:
        return 503, "application/json", b'{"error": {"message": "overloaded"}}'

    server = endpoint(reply)
    suite = write_suite(tmp_path / "mini.jsonl", 4)
    argv = audit_argv(f"openai:m@{server.url}", suite, tmp_path / "runs")
    argv += ["--model-option", "max_retries=1"]
    failed = CliRunner().invoke(app, argv, env={"COLUMNS": "300"})
    assert failed.exit_code == 2, failed.output
    assert "no answer came back, so no run was written" in failed.output
    assert "Traceback" not in failed.output
    assert list_runs(tmp_path / "runs") == []


def test_a_judge_failing_before_the_first_record_keeps_the_run_and_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the endpoint failing removes a run with no answer: a judge's error keeps the folder
    and the generations cached in it, so the same command does not generate them again."""
    import poise
    from poise.errors import PoiseError
    from poise.scoring.judges import RefusalJudge

    def broken(self: object, items: object, completions: object) -> None:
        raise PoiseError("judge endpoint: 401 unauthorized")

    monkeypatch.setattr(RefusalJudge, "judge", broken)
    with pytest.raises(PoiseError, match="401 unauthorized") as info:
        poise.audit(
            model="organism-small", suites=["harmful"], limit=2, judge="refusal", out=tmp_path
        )
    assert "no run was written" not in str(info.value)
    [run] = list_runs(tmp_path)
    assert run.cache_path.is_file()


def test_an_endpoint_failing_behind_a_wrapper_leaves_no_run_either(
    tmp_path: Path, endpoint: Callable[..., Endpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrapper's generate raises its inner model's GenerationError (its indices are not the
    wrapper's call's): with no answer at all, no run folder is kept either."""
    from collections.abc import Sequence

    import poise
    import poise.models.openai as openai_backend
    from poise.config import Sampling
    from poise.errors import PoiseError
    from poise.models import load_model
    from poise.models.base import Chat, Completion
    from poise.models.wrapped import WrappedModel

    class Passthrough(WrappedModel):
        kind = "test_passthrough"

        def generate(
            self, chats: Sequence[Chat], sampling: Sampling, *, progress: object = None
        ) -> list[list[Completion]]:
            return self.inner.generate(chats, sampling)

    monkeypatch.setattr(openai_backend, "_BACKOFF_BASE_S", 0.01)

    def reply(request: dict[str, Any]) -> Answer:
        return 503, "application/json", b'{"error": {"message": "overloaded"}}'

    server = endpoint(reply)
    inner = load_model(f"openai:m@{server.url}", max_retries=1)
    with pytest.raises(PoiseError, match="no answer came back, so no run was written"):
        poise.audit(
            model=Passthrough(inner),
            suites=[str(write_suite(tmp_path / "mini.jsonl", 4))],
            judge="refusal",
            out=tmp_path / "runs",
        )
    assert list_runs(tmp_path / "runs") == []


def test_an_endpoint_refusing_midway_keeps_the_run_and_says_how_to_resume(
    tmp_path: Path, endpoint: Callable[..., Endpoint]
) -> None:
    """The key stops working after two answers: the run (its cache holds them) is kept, and the
    error names it and how to resume."""
    import poise
    from poise.errors import PoiseError

    served: list[int] = []

    def reply(request: dict[str, Any]) -> Answer:
        served.append(1)
        if len(served) > 2:
            return 401, "application/json", b'{"error": {"message": "key revoked"}}'
        return completion(REFUSE)

    server = endpoint(reply)
    with pytest.raises(PoiseError) as info:
        poise.audit(
            model=f"openai:m@{server.url}",
            model_options={"concurrency": 1, "check_endpoint": False},
            suites=[str(write_suite(tmp_path / "mini.jsonl", 6))],
            judge="refusal",
            out=tmp_path / "runs",
        )
    [run] = list_runs(tmp_path / "runs")
    message = str(info.value)
    assert "key revoked" in message and f"poise audit --resume {run.path}" in message


def test_ctrl_c_in_an_audit_says_where_the_answers_are_and_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C ended the audit with exit code 130 and not a word: the user did not know that the
    answers so far were kept, nor how to continue. Now one line names the run and the resume;
    the same command then finishes it."""
    from poise.scoring.judges import RefusalJudge

    judge = RefusalJudge.judge
    calls: list[int] = []

    def interrupted(self: object, items: Any, completions: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return judge(self, items, completions)  # type: ignore[arg-type]

    monkeypatch.setattr(RefusalJudge, "judge", interrupted)
    suite = write_suite(tmp_path / "mini.jsonl", 4)
    argv = audit_argv("mock", suite, tmp_path / "runs", "--batch-size", "2")
    stopped = CliRunner().invoke(app, argv, env={"COLUMNS": "300"})
    assert stopped.exit_code == 130, stopped.output
    [run] = list_runs(tmp_path / "runs")
    assert len(list(run.records())) == 2
    said = " ".join(stopped.output.split())
    assert f"interrupted: the answers judged so far are recorded in {run.path}" in said
    assert f"run the same command again (or poise audit --resume {run.path})" in said

    again = CliRunner().invoke(app, argv, env={"COLUMNS": "300"})
    assert again.exit_code == 0, again.output
    assert "continuing unfinished run" in again.output
    [run] = list_runs(tmp_path / "runs")
    assert run.status == "complete" and len(list(run.records())) == 4


def test_sigterm_in_an_audit_says_what_ctrl_c_says_and_resume_finishes_it(
    tmp_path: Path, endpoint: Callable[..., Endpoint]
) -> None:
    """SIGTERM (``kill``, ``timeout``, a batch scheduler ending a job) ended the audit at once,
    without a word of the answers so far. Now it is Ctrl-C's: the same line names the run and
    the resume, the exit code is 143 (128 + SIGTERM), samples.jsonl holds whole records only, and
    --resume finishes the run."""
    first_block = {"harmful request 0", "harmful request 1"}
    released = threading.Event()

    def reply(request: dict[str, Any]) -> Answer:
        if request["messages"][-1]["content"] not in first_block:
            released.wait(60)  # the second block waits: the audit is mid-run when stopped
        return completion(REFUSE)

    server = endpoint(reply)
    suite = write_suite(tmp_path / "mini.jsonl", 6)
    out = tmp_path / "runs"
    proc = poise_process(audit_argv(f"openai:m@{server.url}", suite, out, "--batch-size", "2"))
    try:
        deadline = time.monotonic() + 60
        while not (runs := list_runs(out)) or runs[0].samples_written() < 2:
            if proc.poll() is not None:
                pytest.fail(f"the audit ended early: {proc.communicate()}")
            if time.monotonic() > deadline:
                pytest.fail("the audit wrote no answer within 60 s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        released.set()
        proc.kill()
    assert proc.returncode == 143, err
    [run] = list_runs(out)
    said = " ".join(err.split())
    assert f"interrupted: the answers judged so far are recorded in {run.path}" in said
    assert f"run the same command again (or poise audit --resume {run.path})" in said
    assert "Traceback" not in err
    written = run.samples_path.read_bytes()
    assert written.endswith(b"\n")  # whole lines: no record cut in two
    assert sorted(json.loads(line)["item_id"] for line in written.splitlines()) == ["h-00", "h-01"]
    assert run.state == "interrupted" and not run.is_locked()

    resumed = poise_process(["audit", "--resume", str(run.path), "--out", str(out)])
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    [run] = list_runs(out)
    assert run.status == "complete"
    assert sorted(r["item_id"] for r in run.records()) == [f"h-{i:02d}" for i in range(6)]


def test_a_generation_error_before_any_answer_leaves_no_run(tmp_path: Path) -> None:
    """A strategy failing on its first answers with a PoiseError that is no endpoint's (a
    best_of_n reward model refusing answers longer than its context): one line, and no
    0-sample "interrupted" run folder that the message did not name."""
    from collections.abc import Sequence

    import poise
    from poise.config import Sampling
    from poise.errors import PoiseError
    from poise.models import load_model
    from poise.models.base import Chat, Completion
    from poise.models.wrapped import WrappedModel

    class Failing(WrappedModel):
        kind = "test_failing"

        def generate(
            self, chats: Sequence[Chat], sampling: Sampling, *, progress: object = None
        ) -> list[list[Completion]]:
            raise PoiseError("scorer rm: pair 1 is past this classifier's context")

    with pytest.raises(PoiseError) as info:
        poise.audit(
            model=Failing(load_model("mock")),
            suites=[str(write_suite(tmp_path / "mini.jsonl", 4))],
            judge="refusal",
            out=tmp_path / "runs",
        )
    assert str(info.value) == (
        "scorer rm: pair 1 is past this classifier's context; no answer was recorded, so no run "
        "was written"
    )
    assert list_runs(tmp_path / "runs") == []
