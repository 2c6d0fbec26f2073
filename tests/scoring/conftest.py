"""Fixtures shared by the scoring tests: the hub unreachable, or not to be asked at all."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def hub_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No route to the hub, an empty hub cache, and a tokenizer loader that fails the test if
    called (a judge must stop at the hub check, before any download)."""
    import transformers
    from huggingface_hub import constants

    from poise.hub import PROXY_VARIABLES

    def unreachable(*args: object, **kwargs: object) -> socket.socket:
        raise OSError("network is unreachable")

    def no_download(*args: object, **kwargs: object) -> Any:
        raise AssertionError(f"a download was tried: {args}")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_download)


@pytest.fixture
def no_hub_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection attempt fails the test: a local folder needs no hub check."""

    def no_probe(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("a local folder needs no hub check")

    monkeypatch.setattr(socket, "create_connection", no_probe)
