"""A hub dataset id fails at once when the hub cannot be reached (issue 10, item 17)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from poise.errors import PoiseError
from poise.hub import PROXY_VARIABLES
from poise.suites import load_suite

pytest.importorskip("datasets")


def test_hub_dataset_id_fails_at_once_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from huggingface_hub import constants

    def unreachable(*args: object, **kwargs: object) -> socket.socket:
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    start = time.monotonic()
    with pytest.raises(PoiseError, match="cannot be reached") as err:
        load_suite("someone/some-dataset:test")
    assert time.monotonic() - start < 5.0
    assert "someone/some-dataset" in str(err.value)
