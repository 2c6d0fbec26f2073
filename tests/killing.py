"""Kill an audit process with SIGKILL once its run folder holds some records (crash tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from poise.runs import list_runs


def kill_after_records(
    argv: Sequence[str], out: Path, *, records: int = 6, timeout: float = 120.0
) -> Path:
    """Run ``argv`` (an audit writing under ``out``), SIGKILL it as soon as its samples.jsonl
    holds at least ``records`` lines, and return that samples.jsonl. Fails the test if the
    process ends first or no records appear within ``timeout`` seconds."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(list(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    samples = None
    try:
        while time.monotonic() < deadline:
            runs = list_runs(out)
            if runs and (runs[0].path / "samples.jsonl").exists():
                samples = runs[0].path / "samples.jsonl"
                if samples.read_bytes().count(b"\n") >= records:
                    break
            if proc.poll() is not None:
                assert proc.stderr is not None
                pytest.fail(f"audit ended before it could be killed: {proc.stderr.read().decode()}")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert samples is not None, f"no records under {out} within {timeout} s"
    return samples
