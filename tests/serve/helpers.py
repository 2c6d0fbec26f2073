"""Helpers of the server tests: a deterministic scripted model, a server running in a thread of
the test process, a ``poise serve`` subprocess and SSE parsing. Only 127.0.0.1 is used."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from poise.config import Sampling
from poise.models.base import (
    Capabilities,
    Chat,
    Completion,
    ModelBase,
    ProgressFn,
    TokenLogprobs,
)


def last_user(chat: Chat) -> str:
    return next((m["content"] for m in reversed(chat) if m["role"] == "user"), "")


class EchoModel(ModelBase):
    """A deterministic LanguageModel whose replies show what the server asked of it. It has
    no engine and does not stream: the server's fallback path.

    A reply is ``words`` pseudo-random words derived from the last user message and, when
    sampling, from the seed and the sample index (greedy replies ignore both), cut at
    ``max_new_tokens`` words. ``delay`` seconds of sleep per call stand in for real work.
    Records every call and the most calls that ever ran at once.
    """

    capabilities = Capabilities()

    def __init__(self, name: str = "echo", *, words: int = 6, delay: float = 0.0) -> None:
        self.name = name
        self.words = words
        self.delay = delay
        self.calls: list[tuple[list[Chat], Sampling]] = []
        self.max_active = 0
        self._active = 0
        self._lock = threading.Lock()

    def reply(self, chat: Chat, sampling: Sampling, index: int) -> Completion:
        message = last_user(chat)
        if message.startswith("FAIL"):
            raise RuntimeError("scripted failure")
        key = message if sampling.greedy else f"{message}|{sampling.seed}|{index}"
        digest = hashlib.sha256(key.encode()).hexdigest()
        count = int(message.split("WORDS=")[1]) if "WORDS=" in message else self.words
        words = [f"{message[:12]}-{digest[(k * 3) % 60 : (k * 3) % 60 + 4]}" for k in range(count)]
        finish = "length" if len(words) > sampling.max_new_tokens else "stop"
        words = words[: sampling.max_new_tokens]
        return Completion(text=" ".join(words), num_tokens=len(words), finish_reason=finish)

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            self.calls.append(([list(c) for c in chats], sampling))
            if self.delay:
                time.sleep(self.delay)
            return [[self.reply(chat, sampling, i) for i in range(sampling.n)] for chat in chats]
        finally:
            with self._lock:
                self._active -= 1

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[TokenLogprobs]:
        raise NotImplementedError

    def seen_messages(self) -> list[str]:
        return [last_user(chat) for chats, _ in self.calls for chat in chats]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ThreadServer:
    """``poise serve``'s app run by uvicorn in a daemon thread of the test process."""

    url: str
    state: Any  # poise.serve.app.ServerState
    server: Any  # uvicorn.Server
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/health", timeout=10).json())

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@dataclass
class ServeProcess:
    """A ``poise serve`` subprocess."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/health", timeout=10).json())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def start_serve_process(args: Sequence[str], log: Path, *, timeout: float = 120.0) -> ServeProcess:
    """Run ``poise serve ARGS --port <free port>`` and wait until ``/health`` answers."""
    port = free_port()
    command = [
        sys.executable,
        "-c",
        "from poise.cli import main; main()",
        "serve",
        *args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # One torch thread: the cores are shared with the test process (and CI neighbours), and
    # oversubscribed OpenMP threads slow batched decoding by orders of magnitude.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    handle = ServeProcess(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"poise serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{handle.url}/health", timeout=2).status_code == 200:
                return handle
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            handle.stop()
            raise RuntimeError(f"poise serve did not become healthy:\n{log.read_text()}")
        time.sleep(0.1)


def read_sse(lines: Sequence[str]) -> tuple[list[dict[str, Any]], bool]:
    """Parse server-sent event lines into chunks; also whether ``[DONE]`` ended the stream."""
    chunks: list[dict[str, Any]] = []
    done = False
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: ") :]
        if payload == "[DONE]":
            done = True
            continue
        assert not done, "data after [DONE]"
        chunks.append(json.loads(payload))
    return chunks, done


def stream_texts(chunks: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Concatenated content deltas per choice index."""
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["delta"].get(
                "content", ""
            )
    return texts
