"""Who may use ``poise serve`` and how much one request may send.

:class:`AccessGuard` is one ASGI middleware in front of every route:

- **API key.** With ``ServeConfig.api_key`` set (``poise serve --api-key KEY`` or the
  ``POISE_API_KEY`` environment variable), every route but ``GET /health`` asks for
  ``Authorization: Bearer KEY``, as the OpenAI API does; a missing or wrong key gets a 401 with an
  OpenAI-style error body (the official ``openai`` client raises ``AuthenticationError``). The key
  is compared in constant time and never echoed back.
- **Body size.** A request body over ``ServeConfig.max_body_bytes`` gets a 413 before the app
  sees it: when its ``Content-Length`` says so, or as soon as the bytes received pass the limit.
  The rest of the body is read and dropped (so that the client, still sending, gets the answer),
  never kept: a 10 MB prompt is refused without being held in memory, parsed or tokenized.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from poise.serve.schema import error_body

__all__ = ["AccessGuard"]

# Routes anyone may call: a load balancer's health check carries no key.
OPEN_PATHS = frozenset({"/health"})
# How much of a refused body is read (and dropped) so that its client gets the 413; past it the
# connection is closed on a client still sending.
DRAIN_BYTES = 64 * 1024 * 1024


class AccessGuard:
    """ASGI middleware: the API key check, then the request body size limit."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        max_body_bytes: int,
        open_paths: Iterable[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.api_key = api_key.encode("utf-8") if api_key else None
        self.max_body_bytes = max_body_bytes
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        if self.api_key is not None and scope.get("path") not in self.open_paths:
            refusal = self._key_refusal(headers.get(b"authorization"))
            if refusal is not None:
                await _respond(
                    send,
                    401,
                    error_body(refusal[0], code=refusal[1]),
                    {"www-authenticate": "Bearer"},
                )
                return
        declared = _content_length(headers.get(b"content-length"))
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(receive, send, declared, received=0)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                received, more = len(body), bool(message.get("more_body", False))
                body.clear()
                await self._refuse(receive, send, declared, received=received, more=more)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(
        self,
        receive: Receive,
        send: Send,
        declared: int | None,
        *,
        received: int,
        more: bool = True,
    ) -> None:
        """A 413. The rest of the body is read and dropped first (up to ``DRAIN_BYTES``): a
        client still sending when the connection closes sees a broken connection, not the
        answer. Nothing of it is kept."""
        while more and received <= max(DRAIN_BYTES, 4 * self.max_body_bytes):
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            received += len(message.get("body", b""))
            more = bool(message.get("more_body", False))
        await _respond(send, 413, self._too_large(declared), {"connection": "close"})

    def _key_refusal(self, header: bytes | None) -> tuple[str, str | None] | None:
        """``(message, code)`` when the request's key is missing or wrong; else ``None``."""
        assert self.api_key is not None
        scheme, _, token = (header or b"").strip().partition(b" ")
        if not header or scheme.lower() != b"bearer" or not token.strip():
            return (
                "You didn't provide an API key. This server asks for one in an Authorization "
                "header using Bearer auth (Authorization: Bearer YOUR_KEY).",
                None,
            )
        if not secrets.compare_digest(token.strip(), self.api_key):
            return ("Incorrect API key provided.", "invalid_api_key")
        return None

    def _too_large(self, declared: int | None) -> dict[str, Any]:
        # a chunked body has no declared size, and the server stops counting once it passes the
        # limit: say only that it is over
        over = declared is not None and declared > self.max_body_bytes
        size = f"of {declared} bytes is" if over else "is"
        return error_body(
            f"the request body {size} over this server's limit of {self.max_body_bytes} bytes "
            "(poise serve --max-body-bytes)",
            code="request_too_large",
        )


def _content_length(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # a malformed header: the bytes received are counted instead


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body read already, then the client's next messages
    (its disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _respond(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode("utf-8")
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
