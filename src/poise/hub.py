"""Is the Hugging Face hub reachable? Asked once, before a download is tried.

Without this question a machine with no network spends most of a minute in the hub client's
retries before failing (24.9 s for a dataset id). One TCP connection to the hub's endpoint,
its name lookup included, answers it in at most ``timeout`` seconds.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

# With a proxy in between a direct connection says nothing about the hub: the proxy is probed
# instead (down: the hub is unreachable; up: unknown). The hub client takes
# the proxy of its endpoint's scheme: HTTPS_PROXY for https, HTTP_PROXY for an http endpoint (a
# local mirror, HF_ENDPOINT=http://...), ALL_PROXY for both.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
HTTP_PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(timeout: float = 3.0) -> bool | None:
    """True or False when probed; None when it cannot be told (offline mode already set, so
    the hub client will not try the network, or a proxy in between that answers: whether the
    hub answers behind it is the proxy's business). A proxy that does not answer makes the hub
    unreachable: the hub client would spend its retries on it (23.8 s and five "Retrying"
    lines for a dataset id)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    proxy = _proxy_for(endpoint.scheme, host)
    if proxy is not None:
        return False if not _connects(*proxy, timeout) else None
    return _connects(host, port, timeout)


def _proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """(host, port) of the proxy the hub client would go through to ``host``, or None: the
    first of the scheme's variables that is set, unless NO_PROXY exempts the host. A proxy
    written without a scheme ("proxy:3128") is an HTTP proxy, as requests reads it."""
    import urllib.request

    names = HTTP_PROXY_VARIABLES if scheme == "http" else PROXY_VARIABLES
    value = next((os.environ[k] for k in names if os.environ.get(k)), None)
    if value is None or urllib.request.proxy_bypass(host):
        return None
    parsed = urlparse(value if "://" in value else f"http://{value}")
    default = {"https": 443, "socks5": 1080, "socks5h": 1080, "socks4": 1080}
    try:
        port = parsed.port or default.get(parsed.scheme, 80)
    except ValueError:  # a port that is not a number: the hub client will say so itself
        return None
    return (parsed.hostname, port) if parsed.hostname else None


def _connects(host: str, port: int, timeout: float) -> bool:
    """Whether one TCP connection to (host, port), its name lookup included, opens within
    ``timeout`` seconds."""
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError:
            answer.append(False)
        else:
            answer.append(True)

    # the connection's timeout does not bound the name lookup before it, which a machine
    # without a network can spend many seconds on: the probe runs in a thread, waited for
    # ``timeout`` seconds at most (a lookup still running then is left to finish on its own)
    thread = threading.Thread(target=probe, name="poise-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])
