"""The openai backend against endpoints it can never succeed with: a wrong model name, key or
URL, a request parameter the server refuses, a server that is down. Such an endpoint fails at
load (``GET /models``: a refused key, no server) or stops the whole ``generate`` call with one
line (a wrong model name, a parameter the server refuses), instead of being retried item by
item; what other chats escape (a 403, a too-long prompt) fails its own item only."""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
from fake_openai import FakeServer, Reply

import poise.models.openai as openai_backend
from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import Chat, GenerationError
from poise.models.openai import EndpointRefused, OpenAIModel, load


def completion(text: str) -> Reply:
    return (
        200,
        {},
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        },
    )


def error(status: int, message: str, param: str | None = None) -> Reply:
    return status, {}, {"error": {"message": message, "type": "x", "param": param, "code": None}}


def models(*ids: str) -> Reply:
    return 200, {}, {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}


@pytest.fixture
def server(fake_server: Callable[..., FakeServer]) -> Callable[..., FakeServer]:
    """``server(post=..., get=...)``: a fake endpoint answering POSTs with ``post(body)`` and
    GETs with ``get(path)`` (None: no GET route)."""

    def make(
        post: Callable[[dict[str, Any]], Reply] = lambda body: completion("ok"),
        get: Callable[[str], Reply] | None = None,
    ) -> FakeServer:
        return fake_server(post, get)

    return make


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_backend, "_BACKOFF_BASE_S", 0.01)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def chat(text: str) -> Chat:
    return [{"role": "user", "content": text}]


# what a refused connection reads as ("[Errno 111] Connection refused" on Linux)
REFUSED = f"[Errno {errno.ECONNREFUSED}] {os.strerror(errno.ECONNREFUSED)}"


def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# -- at load: GET /models ----------------------------------------------------------------------


def test_load_warns_when_the_server_does_not_list_the_model(
    server: Callable[..., FakeServer], caplog: pytest.LogCaptureFixture
) -> None:
    """llama.cpp's server and TGI list a name of their own and answer any model name, so a
    name the list lacks only warns; a wrong name elsewhere gets a 404 on its first request,
    which stops the call (below)."""
    endpoint = server(get=lambda path: models("/models/Llama-3.2-3B-Instruct-Q4_K_M.gguf"))
    with caplog.at_level("WARNING", logger="poise"):
        model = load(f"openai:llama@{endpoint.url}")
    assert model.model == "llama"
    assert "lists '/models/Llama-3.2-3B-Instruct-Q4_K_M.gguf', not 'llama'; going on" in caplog.text
    assert [path for path, _ in endpoint.gets] == ["/v1/models"]
    assert endpoint.requests == []
    caplog.clear()
    with caplog.at_level("WARNING", logger="poise"):
        assert load(f"openai:tiny@{server(get=lambda path: models('tiny')).url}").model == "tiny"
        # Ollama lists "llama3:latest" for "llama3"; an empty list (some proxies) tells nothing
        assert load(f"openai:llama3@{server(get=lambda path: models('llama3:latest')).url}")
        assert load(f"openai:anything@{server(get=lambda path: models()).url}")
    assert "going on" not in caplog.text


def test_a_403_on_the_listing_only_warns(
    server: Callable[..., FakeServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A key without the scope to list models can still ask for completions."""
    endpoint = server(get=lambda path: error(403, "missing scope: models.read"))
    with caplog.at_level("WARNING", logger="poise"):
        model = load(f"openai:m@{endpoint.url}")
    assert "answered 403 (missing scope: models.read); going on" in caplog.text
    assert model.generate([chat("q")], Sampling())[0][0].text == "ok"


@pytest.mark.parametrize("get", [None, lambda path: error(404, "Not Found")])
def test_load_does_not_judge_a_server_without_a_models_route(
    server: Callable[..., FakeServer], get: Callable[[str], Reply] | None
) -> None:
    endpoint = server(get=get)
    model = load(f"openai:m@{endpoint.url}")
    assert len(endpoint.gets) == 1
    [[answer]] = model.generate([chat("x")], Sampling())
    assert answer.text == "ok"


def test_load_on_a_401_names_the_key_variable(
    server: Callable[..., FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = server(get=lambda path: error(401, "Incorrect API key provided."))
    with pytest.raises(PoiseError) as info:
        load(f"openai:m@{endpoint.url}")
    message = str(info.value)
    assert "\n" not in message
    assert "(HTTP 401): Incorrect API key provided." in message
    assert "no API key was sent" in message
    assert "environment variable OPENAI_API_KEY, which is not set" in message
    assert "api_key_env=NAME" in message
    assert len(endpoint.gets) == 1  # not retried

    monkeypatch.setenv("MY_KEY", "wrong")
    with pytest.raises(PoiseError, match="the one in the environment variable MY_KEY") as info:
        load(f"openai:m@{endpoint.url}", api_key_env="MY_KEY")
    assert endpoint.gets[-1][1] == "Bearer wrong"


def test_load_of_a_down_server_is_one_line_after_the_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = closed_port_url()
    caplog.set_level(logging.INFO)
    with pytest.raises(PoiseError) as info:
        load(f"openai:m@{url}", max_retries=2)
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot reach {url} ({REFUSED}) after 3 attempts" in message
    assert "is the server running" in message
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]  # no retry warnings


def test_load_with_one_of_two_servers_down_warns_and_goes_on(
    server: Callable[..., FakeServer], caplog: pytest.LogCaptureFixture
) -> None:
    down = closed_port_url()
    up = server(get=lambda path: models("m"))
    model = load(f"openai:m@{up.url},{down}", max_retries=0)
    assert model.base_urls == (up.url, down)
    assert any(f"cannot reach {down}" in r.getMessage() for r in caplog.records)


def test_load_skips_the_check_when_told(server: Callable[..., FakeServer]) -> None:
    endpoint = server(get=lambda path: models("tiny"))
    load(f"openai:nosuch@{endpoint.url}", check_endpoint=False)
    assert endpoint.gets == []


# -- while generating: refusals that every chat would get --------------------------------------


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (error(401, "Incorrect API key provided."), "environment variable OPENAI_API_KEY"),
        (error(404, "the model 'nosuch' does not exist"), "does not exist"),
        (error(404, "Not Found"), "it usually ends in /v1"),
        (error(400, "max_tokens must be between 1 and 256, got 512", "max_tokens"), "max_tokens"),
        (error(400, "Unrecognized request argument supplied: top_k"), "top_k"),
        (error(400, "Invalid model: nosuch"), "Invalid model"),  # Mistral's API
        (error(400, "nosuch is not a valid model ID"), "not a valid model"),  # OpenRouter
    ],
)
def test_a_refusal_every_chat_would_get_stops_the_call_at_once(
    server: Callable[..., FakeServer], reply: Reply, said: str
) -> None:
    endpoint = server(post=lambda body: reply)
    model = OpenAIModel("m", base_urls=[endpoint.url], concurrency=1, max_retries=4)
    with pytest.raises(EndpointRefused) as info:
        model.generate([chat(f"q{i}") for i in range(8)], Sampling())
    message = str(info.value)
    assert not isinstance(info.value, GenerationError)
    assert "\n" not in message and f"HTTP {reply[0]}" in message and said in message
    assert len(endpoint.requests) == 1  # neither retried nor asked for the other chats


def test_a_403_fails_its_own_chat_only(server: Callable[..., FakeServer]) -> None:
    """Gateways answer 403 for a prompt their moderation flagged; an audit sends such prompts
    on purpose, so the other chats are answered."""

    def reply(body: dict[str, Any]) -> Reply:
        if body["messages"][-1]["content"] == "flagged":
            return error(403, 'your input was flagged for "violence"')
        return completion("ok")

    endpoint = server(post=reply)
    model = OpenAIModel("m", base_urls=[endpoint.url], concurrency=1, max_retries=2)
    with pytest.raises(GenerationError) as info:
        model.generate([chat("a"), chat("flagged"), chat("b")], Sampling())
    assert [r is not None for r in info.value.results] == [True, False, True]
    assert "flagged" in info.value.failures[1] and "API key" not in info.value.failures[1]


def test_a_400_stops_the_call_only_when_it_is_about_the_request(
    server: Callable[..., FakeServer],
) -> None:
    def reply(body: dict[str, Any]) -> Reply:
        text = body["messages"][-1]["content"]
        if body["max_tokens"] > 100:
            return error(400, "max_tokens must be at most 100", "max_tokens")
        if text == "long":
            return error(
                400,
                "This model's maximum context length is 512 tokens. However, you requested 600 "
                "tokens (504 in the messages, 96 in the completion).",
                "messages",
            )
        return completion(f"answer to {text}")

    endpoint = server(post=reply)
    model = OpenAIModel("m", base_urls=[endpoint.url], concurrency=1)
    with pytest.raises(GenerationError) as info:
        model.generate([chat("a"), chat("long"), chat("b")], Sampling())
    assert set(info.value.failures) == {1}
    assert [r[0].text if r else None for r in info.value.results] == [
        "answer to a",
        None,
        "answer to b",
    ]
    # the same server refusing a parameter every chat sends: one request, then a stop
    asked = len(endpoint.requests)
    with pytest.raises(EndpointRefused, match=r"HTTP 400\): max_tokens must be at most 100"):
        model.generate([chat("a"), chat("b")], Sampling(max_new_tokens=200))
    assert len(endpoint.requests) == asked + 1


def test_a_server_that_is_down_is_named_as_unreachable() -> None:
    url = closed_port_url()
    model = OpenAIModel("m", base_urls=[url], max_retries=1)
    with pytest.raises(GenerationError) as info:
        model.generate([chat("x")], Sampling())
    assert f"request failed after 2 attempts: cannot reach {url} (" in info.value.failures[0]
    assert "Connection error." not in info.value.failures[0]


def test_a_refused_connection_is_named_as_such_not_by_an_unrelated_context() -> None:
    # the openai client catches asyncio's "no running event loop" while connecting, which
    # becomes the refused socket's __context__: that is no reason the server cannot be reached
    url = closed_port_url()
    model = load(f"openai:m@{url}", check_endpoint=False, max_retries=0)
    with pytest.raises(GenerationError) as info:
        model.generate([chat("x")], Sampling())
    assert info.value.failures[0] == (
        f"request failed after 1 attempts: cannot reach {url} ({REFUSED})"
    )


def test_a_server_that_dies_mid_audit_is_named_as_refusing(
    server: Callable[..., FakeServer],
) -> None:
    endpoint = server(get=lambda path: models("m"))
    model = load(f"openai:m@{endpoint.url}", max_retries=0)
    assert model.generate([chat("x")], Sampling())[0][0].text == "ok"
    endpoint.close()
    with pytest.raises(GenerationError) as info:
        model.generate([chat("x")], Sampling())
    assert f"cannot reach {endpoint.url} ({REFUSED})" in (info.value.failures[0])


def test_connection_detail_follows_the_cause_and_only_socket_contexts() -> None:
    from poise.models.openai import _connection_detail

    def raised(make: Callable[[], Exception]) -> Exception:
        try:
            raise make()
        except Exception as exc:  # the exception, with its context set, is the value here
            return exc

    def refused() -> Exception:
        try:
            raise RuntimeError("no running event loop")
        except RuntimeError:
            return raised(
                lambda: ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('h', 1)")
            )

    def wrapped() -> Exception:
        try:
            raise OSError("All connection attempts failed") from refused()
        except OSError:  # a context alone, as httpcore's ConnectError keeps it
            return raised(lambda: ConnectionError("All connection attempts failed"))

    class APIConnectionError(Exception):
        pass

    outer = APIConnectionError("Connection error.")
    outer.__cause__ = wrapped()
    assert _connection_detail(outer) == REFUSED
    # an unrelated context alone is not followed: the error's own message stays
    try:
        raise RuntimeError("no running event loop")
    except RuntimeError:
        lone = raised(lambda: APIConnectionError("Server disconnected"))
    assert _connection_detail(lone) == "Server disconnected"


# -- the system prompt declaration ---------------------------------------------------------------


def test_the_listing_or_the_option_declares_the_system_prompt_in_the_template(
    server: Callable[..., FakeServer],
) -> None:
    """poise serve lists whether its model's template inserts a default system prompt; the
    backend takes it from there unless the model option says otherwise, so an audit asking for
    no system prompt sends an empty system message only where the template needs one."""
    from poise.models import no_system_prompt

    def listing(flag: object) -> Callable[[str], Reply]:
        entry = {"id": "organism", "object": "model", "system_prompt_in_template": flag}
        other = {"id": "other", "object": "model", "system_prompt_in_template": True}
        return lambda path: (200, {}, {"object": "list", "data": [other, entry]})

    declared = load(f"openai:organism@{server(get=listing(True)).url}")
    assert (declared.system_prompt_in_template, declared.system_prompt_declared) == (True, True)
    assert no_system_prompt(declared) == ""
    said_false = load(f"openai:organism@{server(get=listing(False)).url}")
    assert (said_false.system_prompt_in_template, said_false.system_prompt_declared) == (
        False,
        True,
    )
    assert no_system_prompt(said_false) is None
    # a listing without the field (vLLM, transformers serve), or a value of another type
    for get in (lambda path: models("organism"), listing("yes")):
        silent = load(f"openai:organism@{server(get=get).url}")
        assert (silent.system_prompt_in_template, silent.system_prompt_declared) == (False, False)
    # the option wins over the listing, either way
    url = server(get=listing(True)).url
    assert not load(
        f"openai:organism@{url}", system_prompt_in_template="false"
    ).system_prompt_in_template
    url = server(get=lambda path: models("organism")).url
    forced = load(f"openai:organism@{url}", system_prompt_in_template="true")
    assert (forced.system_prompt_in_template, forced.system_prompt_declared) == (True, True)
    with pytest.raises(PoiseError, match="system_prompt_in_template must be true or false"):
        load(f"openai:organism@{url}", system_prompt_in_template="maybe")


def test_asking_an_undeclared_server_model_with_no_system_prompt_warns(
    server: Callable[..., FakeServer], caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    import poise

    url = server(get=lambda path: models("m")).url
    warning = "add the model option system_prompt_in_template=true"

    def logged(out: str, model: str = f"openai:m@{url}", **fields: Any) -> str:
        """Audit one benign item of ``model``; what the audit logged at WARNING."""
        caplog.clear()
        with caplog.at_level("WARNING", logger="poise"):
            poise.audit(
                model=model,
                suites=["benign"],
                limit=1,
                judge="refusal",
                html=False,
                out=str(tmp_path / out),
                **fields,
            )
        return caplog.text

    assert warning in logged("none", system_prompt="none")
    # a wrapper around the served model says it too
    assert warning in logged(
        "wrapped",
        model=f"best_of_n(openai:m@{url}, n=2, reward=organism-reward)",
        system_prompt="none",
        sampling={"temperature": 1.0},
    )
    # the default system prompt, or a declaration: nothing to warn about
    quiet = logged("default") + logged(
        "declared", model_options={"system_prompt_in_template": "false"}, system_prompt="none"
    )
    assert "system_prompt_in_template" not in quiet


@pytest.mark.parametrize(
    ("reply", "upstream"),
    [
        (error(401, "Incorrect API key provided"), True),
        (error(404, "the model 'nosuch' does not exist"), True),
        (error(400, "max_tokens must be at most 100", "max_tokens"), False),
    ],
)
def test_a_refusal_of_the_servers_own_access_is_the_upstreams(
    server: Callable[..., FakeServer], reply: Reply, upstream: bool
) -> None:
    """A wrong key (401) or an unknown model or route (404) is the server's configuration, which
    poise serve in front of it answers with a 502; a 400 about a parameter is the request's."""
    from poise.models.base import UpstreamError

    endpoint = server(post=lambda body: reply)
    model = OpenAIModel("m", base_urls=[endpoint.url], max_retries=0)
    with pytest.raises(EndpointRefused) as info:
        model.generate([chat("x")], Sampling())
    assert isinstance(info.value, UpstreamError) is upstream


def test_a_vllm_context_refusal_fails_its_chat_and_changes_no_request_field(
    server: Callable[..., FakeServer],
) -> None:
    """vLLM refuses a chat too long for its max_tokens with a 400 that quotes both 'max_tokens'
    and 'max_completion_tokens', param null (its body, as vLLM sends it). That is the chat's
    length, which shorter chats escape; not a refusal of the max_tokens field, which a
    reasoning model's "Use 'max_completion_tokens' instead" is: the limit stays in max_tokens."""
    too_long = {
        "error": {
            "message": "'max_tokens' or 'max_completion_tokens' is too large: 96. This model's "
            "maximum context length is 512 tokens and your request has 480 input tokens "
            "(96 > 512 - 480). None",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }

    def reply(body: dict[str, Any]) -> Reply:
        text = body["messages"][-1]["content"]
        return (400, {}, too_long) if text == "long" else completion(f"answer to {text}")

    endpoint = server(post=reply)
    model = OpenAIModel("m", base_urls=[endpoint.url], concurrency=1, max_retries=0)
    with pytest.raises(GenerationError) as info:
        model.generate([chat("a"), chat("long"), chat("b")], Sampling(max_new_tokens=96))
    assert set(info.value.failures) == {1}
    assert "maximum context length is 512 tokens" in info.value.failures[1]
    assert [r[0].text if r else None for r in info.value.results] == [
        "answer to a",
        None,
        "answer to b",
    ]
    assert model.max_tokens_param == "max_tokens"
    assert [r.get("max_tokens") for r in endpoint.requests] == [96, 96, 96]
    assert not any("max_completion_tokens" in r for r in endpoint.requests)


def test_a_400_about_one_field_of_one_chat_fails_that_chat_only(
    server: Callable[..., FakeServer],
) -> None:
    """OpenAI names the field it refuses in ``param``: a role of one chat's message
    (``messages[1].role``) is that chat's, not a request parameter every chat sends."""

    def reply(body: dict[str, Any]) -> Reply:
        if body["messages"][-1]["content"] == "odd":
            return error(
                400,
                "Invalid value: 'tool'. Supported values are: 'system', 'assistant', 'user', "
                "'function', and 'developer'.",
                "messages[1].role",
            )
        return completion("ok")

    endpoint = server(post=reply)
    model = OpenAIModel("m", base_urls=[endpoint.url], concurrency=1, max_retries=0)
    with pytest.raises(GenerationError) as info:
        model.generate([chat("a"), chat("odd"), chat("b")], Sampling())
    assert set(info.value.failures) == {1}
    assert [r is not None for r in info.value.results] == [True, False, True]
