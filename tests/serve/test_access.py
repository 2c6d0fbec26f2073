"""``poise serve --api-key`` and the request body limit, checked with real HTTP and the official
``openai`` client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from .helpers import EchoModel, ThreadServer

StartServer = Callable[..., ThreadServer]

KEY = "sk-poise-test-key"


def ask(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    return reply.choices[0].message.content or ""


def test_api_key_is_checked_with_the_openai_client(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    server = start_server(echo_model, api_key=KEY)
    right = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    assert ask(right, "echo")
    assert [m.id for m in right.models.list()] == ["echo"]
    for wrong_key in ("sk-wrong", KEY + "x", KEY[:-1]):
        wrong = openai.OpenAI(base_url=server.base_url, api_key=wrong_key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            ask(wrong, "echo")
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["code"] == "invalid_api_key"
        assert wrong_key not in str(body)  # the key is never echoed back
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    # no key at all (the openai client insists on one, so plain HTTP)
    for headers in ({}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        response = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 401, headers
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert "API key" in error["message"]
        assert response.headers["www-authenticate"] == "Bearer"
    # every route but health: unknown routes too, so that nothing is learnt without the key
    assert httpx.get(f"{server.base_url}/models", timeout=10).status_code == 401
    assert httpx.get(f"{server.base_url}/models/echo", timeout=10).status_code == 401
    assert httpx.get(f"{server.base_url}/nowhere", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    # the refused requests never reached the model
    assert echo_model.seen_messages() == ["hello"]


def test_without_a_key_every_route_is_open(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    server = start_server(echo_model)
    client = openai.OpenAI(base_url=server.base_url, api_key="anything", max_retries=0)
    assert ask(client, "echo")
    # an empty key is no key (as an empty POISE_API_KEY is), not a key nobody can send
    open_server = start_server(echo_model, api_key="")
    response = httpx.post(
        f"{open_server.base_url}/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_a_body_over_the_limit_gets_413_before_it_is_read(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    server = start_server(echo_model, max_body_bytes=64 * 1024)
    huge = "x" * (10 * 1000 * 1000)  # a 10 MB prompt
    started = time.monotonic()
    response = httpx.post(
        f"{server.base_url}/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": huge}]},
        timeout=30,
    )
    assert response.status_code == 413
    assert time.monotonic() - started < 5
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert error["message"].startswith("the request body of ")
    assert error["message"].endswith(
        " bytes is over this server's limit of 65536 bytes (poise serve --max-body-bytes)"
    )
    assert echo_model.calls == []

    # an async client still uploading when the server answers gets the 413 too, not a broken
    # connection (the server reads and drops the rest of the body before answering)
    async def upload() -> list[int]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            sent = [
                client.post(
                    "/chat/completions",
                    json={"model": "echo", "messages": [{"role": "user", "content": huge}]},
                )
                for _ in range(3)
            ]
            return [r.status_code for r in await asyncio.gather(*sent)]

    assert asyncio.run(upload()) == [413, 413, 413]

    # a chunked body (no Content-Length) is cut off once it passes the limit
    def chunks() -> object:
        for _ in range(100):
            yield b"x" * 4096

    response = httpx.post(
        f"{server.base_url}/chat/completions",
        content=chunks(),  # type: ignore[arg-type]
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    # it said "the request body is larger than that; ...": than what?
    assert response.json()["error"]["message"] == (
        "the request body is over this server's limit of 65536 bytes (poise serve --max-body-bytes)"
    )
    # the server goes on answering, and a body under the limit is fine
    ok = httpx.post(
        f"{server.base_url}/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "y" * 1000}]},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text


def test_the_default_body_limit_refuses_a_10_mb_prompt() -> None:
    from poise.serve.schema import ServeConfig

    assert ServeConfig().max_body_bytes < 10 * 1000 * 1000


def test_a_body_of_exactly_the_limit_is_answered(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    """--max-body-bytes is the largest body taken: one of exactly that many bytes is answered,
    one byte more is a 413, with its size declared or not (chunked)."""
    limit = 4096
    server = start_server(echo_model, max_body_bytes=limit)
    raw = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}).encode()
    exact = raw + b" " * (limit - len(raw))
    for content, status in ((exact, 200), (exact + b" ", 413)):
        for chunked in (False, True):
            response = httpx.post(
                f"{server.base_url}/chat/completions",
                content=iter([content]) if chunked else content,  # type: ignore[arg-type]
                headers={"content-type": "application/json"},
                timeout=30,
            )
            assert response.status_code == status, (len(content), chunked, response.text)
            if status == 413 and not chunked:
                # the size it declared is the size said, not the limit
                assert response.json()["error"]["message"] == (
                    f"the request body of {limit + 1} bytes is over this server's limit of "
                    f"{limit} bytes (poise serve --max-body-bytes)"
                )


def test_the_bearer_scheme_is_any_case_and_an_empty_token_is_no_key(
    start_server: StartServer, echo_model: EchoModel
) -> None:
    """HTTP auth schemes are case-insensitive (RFC 9110 11.1): "bearer KEY" is the key, and so
    is a key after two spaces; "Bearer" with no token is a missing key, not a wrong one."""
    server = start_server(echo_model, api_key=KEY)

    def post(authorization: str) -> httpx.Response:
        return httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": authorization},
            timeout=10,
        )

    for authorization in (f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY}"):
        response = post(authorization)
        assert response.status_code == 200, (authorization, response.text)
    response = post("Bearer")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] is None
    assert error["message"].startswith("You didn't provide an API key.")
