"""A scriptable OpenAI-compatible chat endpoint on 127.0.0.1 for tests (``endpoint`` fixture in
conftest.py): any status, content type and body, and a gate that holds requests."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

REFUSE = "I'm sorry, but I can't help with that request."

Answer = tuple[int, str, bytes]  # status, content type, body


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


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) answering with ``handler``, served from
    a daemon thread; ``url`` is its OpenAI-style base URL."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Endpoint:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 answering ``reply(request)`` ->
    (status, content type, body bytes). ``gate``: requests wait until it is set."""

    def __init__(self, reply: Callable[[dict[str, Any]], Answer]) -> None:
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

        self.server = LocalServer(Handler)

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.gate.set()
        self.server.close()


def refuse_all(request: dict[str, Any]) -> Answer:
    return 200, "application/json", json.dumps(completion_body(REFUSE)).encode()


@pytest.fixture
def endpoint() -> Iterator[Callable[..., Endpoint]]:
    made: list[Endpoint] = []

    def make(reply: Callable[[dict[str, Any]], Answer] = refuse_all) -> Endpoint:
        made.append(Endpoint(reply))
        return made[-1]

    yield make
    for e in made:
        e.close()


def completion(text: str) -> Answer:
    return 200, "application/json", json.dumps(completion_body(text)).encode()
