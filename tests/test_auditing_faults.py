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

import pytest
from typer.testing import CliRunner

from chat_endpoint import Endpoint
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
