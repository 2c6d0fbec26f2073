"""Audits under faults: two processes on one run folder, kill -9, a failing endpoint, a kill
between the status and the report."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from poise.cli import app
from poise.runs import list_runs

REFUSE = "I'm sorry, but I can't help with that request."


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


def completion_body(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
    }


class Endpoint:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 answering ``reply(request)`` ->
    (status, content type, body bytes). ``gate``: requests wait until it is set."""

    def __init__(self, reply: Callable[[dict[str, Any]], tuple[int, str, bytes]]) -> None:
        self.reply = reply
        self.gate = threading.Event()
        self.gate.set()
        self.asked = threading.Event()
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                endpoint.requests.append(body)
                endpoint.asked.set()
                endpoint.gate.wait(120)
                status, kind, data = endpoint.reply(body)
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def refuse_all(request: dict[str, Any]) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(completion_body(REFUSE)).encode()


@pytest.fixture
def endpoint() -> Iterator[Callable[..., Endpoint]]:
    made: list[Endpoint] = []

    def make(reply: Callable[[dict[str, Any]], tuple[int, str, bytes]] = refuse_all) -> Endpoint:
        made.append(Endpoint(reply))
        return made[-1]

    yield make
    for e in made:
        e.close()


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
