"""Is the Hugging Face hub reachable (poise.hub), without touching the network."""

from __future__ import annotations

import socket

import pytest

from poise import hub

PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The connections the probe tries (each refused), with no proxy set and offline mode off."""
    from huggingface_hub import constants

    tried: list[tuple[str, int]] = []

    def refuse(address: tuple[str, int], timeout: float) -> socket.socket:
        tried.append(address)
        raise OSError("refused")

    for name in (*PROXIES, "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tried


def test_a_refused_connection_is_unreachable(
    probes: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    assert hub.hub_reachable() is False and probes == [("huggingface.co", 443)]


def test_an_http_endpoint_behind_an_http_proxy_is_not_probed(
    probes: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a mirror the hub client reaches through HTTP_PROXY was called unreachable: poise refused
    # to download ("no network?") what the hub client would have downloaded
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://mirror.example:8080")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    # the proxy is probed, not the mirror behind it (it refuses here: nothing can be reached)
    assert hub.hub_reachable() is False and probes == [("proxy.example", 3128)]
    probes.clear()
    # an https endpoint does not go through HTTP_PROXY: its direct connection is the answer
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    assert hub.hub_reachable() is False and probes == [("huggingface.co", 443)]


def test_a_name_lookup_that_hangs_is_unreachable_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection's timeout did not bound the name lookup before it: a resolver that hangs
    held the probe (and the command) until it gave up. The probe now answers within its
    timeout."""
    import threading
    import time

    from huggingface_hub import constants

    released = threading.Event()

    def hang(address: tuple[str, int], timeout: float) -> socket.socket:
        released.wait(60)  # a lookup that does not answer (released when the test ends)
        raise OSError("no answer")

    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(socket, "create_connection", hang)
    started = time.monotonic()
    try:
        assert hub.hub_reachable(timeout=0.2) is False
        assert time.monotonic() - started < 30  # it returned; it did not wait out the lookup
    finally:
        released.set()


def test_a_proxy_that_does_not_answer_makes_the_hub_unreachable(
    probes: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTPS_PROXY at a proxy that cannot be reached, the probe said "cannot tell" and the
    hub client spent 23.8 s in five retries before the one-line error. The proxy is probed:
    down, the hub is unreachable; up, whether the hub answers behind it cannot be told."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setenv("HTTPS_PROXY", "proxy.example:3128")  # no scheme: an HTTP proxy
    assert hub.hub_reachable() is False and probes == [("proxy.example", 3128)]
    monkeypatch.setenv("HTTPS_PROXY", "socks5h://socks.example")
    probes.clear()
    assert hub.hub_reachable() is False and probes == [("socks.example", 1080)]

    def accept(address: tuple[str, int], timeout: float) -> socket.socket:
        probes.append(address)
        return socket.socket()

    monkeypatch.setattr(socket, "create_connection", accept)
    probes.clear()
    assert hub.hub_reachable() is None and probes == [("socks.example", 1080)]
    # a host NO_PROXY exempts is reached directly
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    probes.clear()
    assert hub.hub_reachable() is True and probes == [("huggingface.co", 443)]


def test_an_http_endpoint_without_a_port_is_probed_on_port_80(
    probes: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://mirror.example")
    assert hub.hub_reachable() is False and probes == [("mirror.example", 80)]


def test_offline_mode_is_not_probed(
    probes: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # HF_HUB_OFFLINE: the hub client will not try the network, so neither does the probe
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.hub_reachable() is None and probes == []


def test_a_proxy_without_a_port_is_probed_on_its_schemes_port(
    probes: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example")
    assert hub.hub_reachable() is False and probes == [("proxy.example", 80)]
    probes.clear()
    monkeypatch.setenv("HTTPS_PROXY", "https://proxy.example")
    assert hub.hub_reachable() is False and probes == [("proxy.example", 443)]
