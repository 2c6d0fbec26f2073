"""Fixtures of the server tests (helpers live in ``helpers.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .helpers import EchoModel, ThreadServer, free_port


@pytest.fixture
def echo_model() -> EchoModel:
    return EchoModel()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ThreadServer]]:
    """A factory: ``start_server(model, **ServeConfig fields) -> ThreadServer``."""
    import uvicorn

    from poise.serve.app import create_app
    from poise.serve.schema import ServeConfig

    started: list[ThreadServer] = []

    def start(model: Any, **config: Any) -> ThreadServer:
        port = free_port()
        serve_config = ServeConfig(port=port, **{"served_name": model.name, **config})
        app = create_app(model, serve_config)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        )
        thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.02)
        handle = ThreadServer(f"http://127.0.0.1:{port}", app.state.poise, server, thread)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()
