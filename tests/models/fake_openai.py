"""A fake OpenAI-compatible server on 127.0.0.1 for the openai backend's tests: POSTs answered
from a script, GETs (``/v1/models``) from an optional function; every request recorded."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from chat_endpoint import LocalServer

# What a fake server answers: status, extra headers, JSON body.
Reply = tuple[int, dict[str, str], Any]


@dataclass
class FakeServer:
    """A threaded HTTP server answering /v1/chat/completions from a script.

    ``script`` is a list of replies used in order (the last one repeats) or a function of the
    request body; ``get`` answers GETs by path (None: no GET route, a 501 as http.server
    sends). Every POST body is recorded in ``requests`` (with its time), every GET in ``gets``
    (path, Authorization header).
    """

    script: list[Reply] | Callable[[dict[str, Any]], Reply]
    get: Callable[[str], Reply] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    gets: list[tuple[str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def answer(self, reply: Reply) -> None:
                status, headers, body = reply
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                # A client that timed out has left.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def do_GET(self) -> None:
                with lock:
                    fake.gets.append((self.path, self.headers.get("authorization")))
                if fake.get is None:
                    self.send_error(501)
                    return
                self.answer(fake.get(self.path))

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                request = json.loads(self.rfile.read(length))
                with lock:
                    fake.requests.append(request)
                    fake.times.append(time.monotonic())
                    number = len(fake.requests)
                script = fake.script
                if callable(script):
                    self.answer(script(request))
                else:
                    self.answer(script[min(number, len(script)) - 1])

            def log_message(self, *args: Any) -> None:
                pass

        self.server = LocalServer(Handler)

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    """``fake_server(script, get=None)``: a server, closed after the test."""
    servers: list[FakeServer] = []

    def make(
        script: list[Reply] | Callable[[dict[str, Any]], Reply],
        get: Callable[[str], Reply] | None = None,
    ) -> FakeServer:
        servers.append(FakeServer(script, get))
        return servers[-1]

    yield make
    for server in servers:
        server.close()
