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

# With a proxy in between a direct connection says nothing about the hub. The hub client takes
# the proxy of its endpoint's scheme: HTTPS_PROXY for https, HTTP_PROXY for an http endpoint (a
# local mirror, HF_ENDPOINT=http://...), ALL_PROXY for both.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
HTTP_PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(timeout: float = 3.0) -> bool | None:
    """True or False when probed; None when it cannot be probed (offline mode already set, so
    the hub client will not try the network, or a proxy in between)."""
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    proxies = HTTP_PROXY_VARIABLES if endpoint.scheme == "http" else PROXY_VARIABLES
    if constants.HF_HUB_OFFLINE or any(os.environ.get(k) for k in proxies):
        return None
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
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
