"""The openai backend against small fake OpenAI-compatible servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fake_openai import FakeServer, Reply

import poise.models.openai as openai_backend
from poise.config import Sampling
from poise.errors import MissingExtraError, PoiseError
from poise.models.base import Chat, LanguageModel
from poise.models.openai import OpenAIModel, load


def ok(texts: list[str], finish: str = "stop", completion_tokens: int | None = None) -> Reply:
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
            for i, t in enumerate(texts)
        ],
    }
    if completion_tokens is not None:
        body["usage"] = {
            "prompt_tokens": 3,
            "completion_tokens": completion_tokens,
            "total_tokens": 3 + completion_tokens,
        }
    return 200, {}, body


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return (
        status,
        headers or {},
        {"error": {"message": message, "type": "x", "param": None, "code": None}},
    )


def echo(request: dict[str, Any]) -> Reply:
    """Answers with the last user message and the n asked for."""
    content = request["messages"][-1]["content"]
    return ok([f"{content}#{i}" for i in range(request.get("n", 1))], completion_tokens=4)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_backend, "_BACKOFF_BASE_S", 0.01)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def chat(text: str) -> Chat:
    return [{"role": "user", "content": text}]


def test_is_a_language_model(fake_server: Callable[..., FakeServer]) -> None:
    assert isinstance(OpenAIModel("m", base_urls=["http://127.0.0.1:1/v1"]), LanguageModel)


def test_generate_maps_the_response(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server([ok(["a b c"], finish="length", completion_tokens=7)])
    model = OpenAIModel("m", base_urls=[server.url])
    [[completion]] = model.generate([chat("hi")], Sampling())
    assert completion.text == "a b c"
    assert completion.num_tokens == 7
    assert completion.finish_reason == "length"
    assert model.generate([], Sampling()) == []
    for reason, mapped in [("stop", "stop"), ("content_filter", "guard"), ("tool_calls", "stop")]:
        server.script = [ok(["t"], finish=reason)]
        assert model.generate([chat("hi")], Sampling())[0][0].finish_reason == mapped


def test_choices_sent_out_of_order_are_read_in_index_order(
    fake_server: Callable[..., FakeServer],
) -> None:
    _, _, body = ok(["first", "second answer"], completion_tokens=6)
    body["choices"][1]["finish_reason"] = "length"
    body["choices"].reverse()  # index 1 comes first in the body
    server = fake_server([(200, {}, body)])
    [row] = OpenAIModel("m", base_urls=[server.url]).generate(
        [chat("x")], Sampling(temperature=1.0, n=2)
    )
    assert [(c.text, c.finish_reason, c.num_tokens) for c in row] == [
        ("first", "stop", 2),
        ("second answer", "length", 4),
    ]


def test_sampling_maps_onto_the_request(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server(echo)
    model = OpenAIModel("my-model", base_urls=[server.url])
    system_chat: Chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    model.generate(
        [system_chat],
        Sampling(
            temperature=0.7, top_p=0.9, top_k=40, max_new_tokens=33, n=2, seed=5, stop=("X", "Y")
        ),
    )
    model.generate([chat("greedy")], Sampling(top_p=0.5, seed=2))
    model.generate([chat("no top_k")], Sampling(temperature=1.0))
    model.generate([chat("top_k one")], Sampling(temperature=1.0, top_k=1))
    sampled, greedy, plain, top_k_one = server.requests
    assert sampled == {
        "model": "my-model",
        "messages": system_chat,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,  # extra_body puts it at the top level of the JSON body, as vLLM expects
        "max_tokens": 33,
        "n": 2,
        "seed": 5,
        "stop": ["X", "Y"],
    }
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy and "top_k" not in greedy
    assert "top_k" not in plain and "stop" not in plain
    assert top_k_one["temperature"] == 0.0 and "top_k" not in top_k_one  # top_k 1 is greedy


def test_chat_template_kwargs_go_in_every_request_body_and_the_name(
    fake_server: Callable[..., FakeServer],
) -> None:
    server = fake_server(echo)
    kwargs = {"enable_thinking": False}
    model = OpenAIModel("m", base_urls=[server.url], chat_template_kwargs=kwargs)
    model.generate([chat("a")], Sampling(temperature=1.0, top_k=5))
    model.generate([chat("b")], Sampling())
    sampled, greedy = server.requests
    # at the top level of the JSON body, beside top_k, as vLLM and SGLang read it
    assert sampled["chat_template_kwargs"] == kwargs and sampled["top_k"] == 5
    assert greedy["chat_template_kwargs"] == kwargs
    # answers to prompts rendered otherwise never share a cache key
    assert model.name == f'openai:m@{server.url}+{{"enable_thinking":false}}'
    plain = OpenAIModel("m", base_urls=[server.url])
    plain.generate([chat("c")], Sampling())
    assert "chat_template_kwargs" not in server.requests[-1]
    assert plain.name == f"openai:m@{server.url}"
    loaded = load(f"openai:m@{server.url}", chat_template_kwargs=kwargs, check_endpoint=False)
    assert loaded.chat_template_kwargs == kwargs


@pytest.mark.parametrize(
    "value, message",
    [
        ("enable_thinking=false", r"expected a JSON object of template variables"),
        ({"add_generation_prompt": False}, r"add_generation_prompt is a keyword of apply_chat"),
        ({"x": float("nan")}, r"not JSON"),
    ],
)
def test_chat_template_kwargs_that_are_no_template_variables_are_refused(
    value: object, message: str
) -> None:
    with pytest.raises(PoiseError, match=rf"chat_template_kwargs of the openai backend: {message}"):
        OpenAIModel("m", base_urls=["http://127.0.0.1:1/v1"], chat_template_kwargs=value)  # type: ignore[arg-type]


def test_a_server_refusing_chat_template_kwargs_stops_the_call_at_once(
    fake_server: Callable[..., FakeServer],
) -> None:
    server = fake_server(
        lambda request: error(400, "chat_template_kwargs: this server takes no template variables")
    )
    model = OpenAIModel("m", base_urls=[server.url], chat_template_kwargs={"x": 1}, concurrency=1)
    with pytest.raises(openai_backend.EndpointRefused, match=r"chat_template_kwargs"):
        model.generate([chat(str(i)) for i in range(6)], Sampling())
    assert len(server.requests) == 1  # a refusal of the request's form, not of each chat


def test_retries_on_429_and_503_then_succeeds(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server(
        [
            error(429, "slow down", {"retry-after": "0.3"}),
            error(503, "overloaded"),
            ok(["finally"], completion_tokens=1),
        ]
    )
    model = OpenAIModel("m", base_urls=[server.url], max_retries=4)
    [[completion]] = model.generate([chat("x")], Sampling())
    assert completion.text == "finally"
    assert len(server.requests) == 3
    # Retry-After was honoured (the backoff alone would be at most 0.01 s here).
    assert server.times[1] - server.times[0] >= 0.29


def test_retries_on_connection_errors_by_moving_to_the_next_url(
    fake_server: Callable[..., FakeServer],
) -> None:
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server = fake_server(echo)
    model = OpenAIModel("m", base_urls=[dead, server.url], max_retries=2)
    out = model.generate([chat("a"), chat("b"), chat("c")], Sampling())
    assert [row[0].text for row in out] == ["a#0", "b#0", "c#0"]
    assert len(server.requests) == 3


def test_retries_after_a_timeout(fake_server: Callable[..., FakeServer]) -> None:
    def first_too_slow(request: dict[str, Any]) -> Reply:
        if request["messages"][0]["content"] == "x" and not slow_done.is_set():
            slow_done.set()
            time.sleep(1.0)
        return echo(request)

    slow_done = threading.Event()
    server = fake_server(first_too_slow)
    model = OpenAIModel("m", base_urls=[server.url], timeout=0.3, max_retries=2)
    [[completion]] = model.generate([chat("x")], Sampling())
    assert completion.text == "x#0"
    assert len(server.requests) == 2


def test_gives_up_after_max_retries(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server([error(500, "broken")])
    model = OpenAIModel("m", base_urls=[server.url], max_retries=2)
    with pytest.raises(PoiseError) as caught:
        model.generate([chat("x")], Sampling())
    # the status, the server's message and the URL that gave them (one of several base URLs)
    assert f"after 3 attempts: HTTP 500 from {server.url}: broken" in str(caught.value)
    assert len(server.requests) == 3


def test_a_timeout_that_no_retry_escapes_names_the_url_and_the_limit(
    fake_server: Callable[..., FakeServer],
) -> None:
    def too_slow(request: dict[str, Any]) -> Reply:
        time.sleep(0.6)
        return echo(request)

    server = fake_server(too_slow)
    model = OpenAIModel("m", base_urls=[server.url], timeout=0.2, max_retries=1)
    with pytest.raises(PoiseError) as caught:
        model.generate([chat("x")], Sampling())
    message = str(caught.value)
    assert f"after 2 attempts: no answer from {server.url} within 0.2s" in message
    assert "\n" not in message


def test_no_retry_on_400_and_the_servers_message_is_shown(
    fake_server: Callable[..., FakeServer],
) -> None:
    server = fake_server([error(400, "max_tokens must be at most 2048")])
    model = OpenAIModel("m", base_urls=[server.url], max_retries=4)
    with pytest.raises(PoiseError) as info:
        model.generate([chat("x")], Sampling())
    message = str(info.value)
    assert "HTTP 400" in message and "max_tokens must be at most 2048" in message
    assert "\n" not in message
    assert len(server.requests) == 1


def test_requests_spread_round_robin_over_base_urls(fake_server: Callable[..., FakeServer]) -> None:
    first, second = fake_server(echo), fake_server(echo)
    model = OpenAIModel("m", base_urls=[first.url, second.url], concurrency=4)
    out = model.generate([chat(f"q{i}") for i in range(10)], Sampling())
    assert [row[0].text for row in out] == [f"q{i}#0" for i in range(10)]
    assert len(first.requests) == len(second.requests) == 5
    assert {r["messages"][0]["content"] for r in first.requests} == {
        f"q{i}" for i in range(0, 10, 2)
    }


def test_asks_again_when_the_server_returns_fewer_than_n(
    fake_server: Callable[..., FakeServer],
) -> None:
    def one_choice(request: dict[str, Any]) -> Reply:
        return ok([f"seed {request['seed']}"], completion_tokens=2)

    server = fake_server(one_choice)
    model = OpenAIModel("m", base_urls=[server.url])
    [row] = model.generate([chat("x")], Sampling(temperature=1.0, n=3, seed=7))
    assert len(row) == 3
    assert [r["n"] for r in server.requests] == [3, 2, 1]
    # The follow-ups use other (derived, reproducible) seeds, so the samples differ.
    assert len({c.text for c in row}) == 3
    [again] = model.generate([chat("x")], Sampling(temperature=1.0, n=3, seed=7))
    assert again == row


def test_token_counts_are_split_over_choices(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server([ok(["aaaa", "aaaaaaaaaaaa"], completion_tokens=8)])
    model = OpenAIModel("m", base_urls=[server.url])
    [row] = model.generate([chat("x")], Sampling(temperature=1.0, n=2))
    assert [c.num_tokens for c in row] == [2, 6]


def test_concurrency_is_bounded(fake_server: Callable[..., FakeServer]) -> None:
    active = 0
    most = 0
    lock = threading.Lock()

    def slow(request: dict[str, Any]) -> Reply:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return echo(request)

    server = fake_server(slow)
    model = OpenAIModel("m", base_urls=[server.url], concurrency=3)
    out = model.generate([chat(str(i)) for i in range(9)], Sampling())
    assert [row[0].text for row in out] == [f"{i}#0" for i in range(9)]
    assert most == 3


def test_works_inside_a_running_event_loop(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server(echo)
    model = OpenAIModel("m", base_urls=[server.url])

    async def main() -> str:
        return model.generate([chat("loop")], Sampling())[0][0].text

    assert asyncio.run(main()) == "loop#0"
    # and from a plain worker thread
    results: list[str] = []
    thread = threading.Thread(
        target=lambda: results.append(model.generate([chat("thread")], Sampling())[0][0].text)
    )
    thread.start()
    thread.join()
    assert results == ["thread#0"]


def test_progress_counts_finished_chats(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server(echo)
    seen: list[int] = []
    OpenAIModel("m", base_urls=[server.url]).generate(
        [chat("a"), chat("b"), chat("c")], Sampling(), progress=seen.append
    )
    assert sum(seen) == 3


def test_score_is_not_supported() -> None:
    model = OpenAIModel("m", base_urls=["http://127.0.0.1:1/v1"])
    with pytest.raises(NotImplementedError, match="log-probs"):
        model.score([chat("x")], ["y"])


def test_load_parses_specs_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    model = load("openai:org/model-7b@http://a:8000/v1,http://b:8000/v1/", check_endpoint=False)
    assert model.model == "org/model-7b"
    assert model.base_urls == ("http://a:8000/v1", "http://b:8000/v1")
    assert model.name == "openai:org/model-7b@http://a:8000/v1"

    model = load(
        "openai:m",
        base_urls="http://x:1/v1, http://y:2/v1",
        concurrency="8",
        name="m@v2",
        check_endpoint=False,
    )
    assert model.base_urls == ("http://x:1/v1", "http://y:2/v1")
    assert model.concurrency == 8
    assert model.name == "m@v2"

    assert load("openai:m", base_url="http://z:3/v1", check_endpoint=False).base_urls == (
        "http://z:3/v1",
    )

    monkeypatch.setenv("OPENAI_BASE_URL", "http://from-env:9/v1")
    assert load("openai:m", check_endpoint="false").base_urls == ("http://from-env:9/v1",)
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert load("openai:m", check_endpoint=False).base_urls == ("https://api.openai.com/v1",)


@pytest.mark.parametrize(
    ("spec", "options", "match"),
    [
        ("openai:", {}, "bad openai model spec"),
        ("gpt-4", {}, "bad openai model spec"),
        ("openai:m@localhost:8000/v1", {}, r"the URL after '@' needs its scheme"),
        ("openai:m@10.0.0.2:8000", {}, r"needs its scheme.*openai:MODEL@http://host:port/v1"),
        ("openai:m", {"base_urls": "ftp://x"}, "must start with http"),
        ("openai:m", {"concurency": 4}, r"unknown option\(s\).*concurency.*known: .*concurrency"),
        ("openai:m", {"concurrency": 0}, "concurrency must be >= 1"),
        ("openai:m", {"max_retries": "many"}, "max_retries must be an integer"),
        ("openai:m", {"timeout": 0}, "timeout must be > 0"),
    ],
)
def test_load_errors_are_one_clear_line(spec: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(PoiseError, match=match) as info:
        load(spec, **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "options"),
    [
        ("openai:m@http://user:secret@gpu1:8000/v1", {}),
        ("openai:m", {"base_url": "https://user:secret@gpu1/v1"}),
        ("openai:m", {"base_urls": "http://gpu0:1/v1,http://:secret@gpu2:8000/v1"}),
    ],
)
def test_a_url_with_credentials_is_refused_without_echoing_them(
    spec: str, options: dict[str, Any]
) -> None:
    """The URL is the model's name, written to run.json, reports and logs: credentials in it
    would be too. Refused in one line that does not repeat them."""
    with pytest.raises(PoiseError, match="must not hold credentials") as info:
        load(spec, check_endpoint=False, **options)
    assert "secret" not in str(info.value) and "\n" not in str(info.value)
    # an '@' after the host (a path or query) is no credential
    model = load("openai:m@http://gpu1:8000/v1/team@a", check_endpoint=False)
    assert model.base_urls == ("http://gpu1:8000/v1/team@a",)


def test_missing_openai_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'poise\[serve\]'"):
        OpenAIModel("m", base_urls=["http://127.0.0.1:1/v1"])


def test_backoff_and_retry_after_parsing() -> None:
    assert openai_backend._retry_after_seconds({"retry-after": "2"}) == 2.0
    assert openai_backend._retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert openai_backend._retry_after_seconds({"retry-after": "soon"}) is None
    assert openai_backend._retry_after_seconds({}) is None
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= (openai_backend._retry_after_seconds({"retry-after": http_date}) or 0) <= 31
    assert openai_backend._backoff_seconds(0, 5.0) == 5.0
    assert openai_backend._backoff_seconds(0, 1e6) == openai_backend._RETRY_AFTER_CAP_S
    delays = [openai_backend._backoff_seconds(3, None) for _ in range(200)]
    assert min(delays) >= 0 and max(delays) <= 0.01 * 2**3  # base patched to 0.01
    assert len(set(delays)) > 100  # jittered, not in lockstep


def test_the_resolver_hands_openai_specs_to_this_backend() -> None:
    from poise.models import load_model

    model = load_model("openai:served@http://127.0.0.1:1/v1", concurrency=2, check_endpoint=False)
    assert isinstance(model, OpenAIModel)
    assert (model.model, model.base_urls, model.concurrency) == (
        "served",
        ("http://127.0.0.1:1/v1",),
        2,
    )
    assert model.name == "openai:served@http://127.0.0.1:1/v1"


@pytest.mark.parametrize("n", [2, 3])
def test_greedy_n_asks_for_one_completion(fake_server: Callable[..., FakeServer], n: int) -> None:
    server = fake_server(echo)
    [row] = OpenAIModel("m", base_urls=[server.url]).generate([chat("g")], Sampling(n=n))
    assert [c.text for c in row] == ["g#0"] * n
    assert [r["n"] for r in server.requests] == [1]


@pytest.mark.parametrize(
    "refusal",
    [
        # llama.cpp's server, in its older (500) and newer (400) forms
        (500, {}, {"error": {"code": 500, "message": "Only one completion choice is allowed"}}),
        (400, {}, {"error": {"message": "Only one completion choice is allowed"}}),
        error(400, "'n' must be 1"),
        (400, {}, {"error": {"message": "invalid value", "param": "n"}}),
    ],
)
def test_a_server_refusing_n_above_one_is_asked_one_completion_at_a_time(
    fake_server: Callable[..., FakeServer], refusal: Reply
) -> None:
    def one_at_a_time(request: dict[str, Any]) -> Reply:
        if request.get("n", 1) != 1:
            return refusal
        return ok([f"{request['messages'][-1]['content']} {request['seed']}"], completion_tokens=2)

    server = fake_server(one_at_a_time)
    model = OpenAIModel("m", base_urls=[server.url], concurrency=1)
    sampling = Sampling(temperature=1.0, n=3, seed=7)
    rows = model.generate([chat("a"), chat("b")], sampling)
    # every answer came back, the samples of a chat differ, and they are the ones a server that
    # ignores n would give (the same reproducible seeds)
    assert [[c.text for c in row] for row in rows] == [
        [f"{q} {7 + 1_000_003 * k}" for k in range(3)] for q in "ab"
    ]
    # the refusal was met once and not retried; then one choice per request
    assert [r["n"] for r in server.requests] == [3, 1, 1, 1, 1, 1, 1]
    assert model.generate([chat("a")], sampling) == rows[:1]
    assert [r["n"] for r in server.requests[7:]] == [1, 1, 1]


def test_seeds_sent_stay_in_the_range_every_server_takes(
    fake_server: Callable[..., FakeServer],
) -> None:
    server = fake_server(echo)
    model = OpenAIModel("m", base_urls=[server.url])
    for seed in (-1, 2**40, -(2**63), 5):
        model.generate([chat("x")], Sampling(temperature=1.0, seed=seed))
    sent = [r["seed"] for r in server.requests]
    assert all(0 <= s < 2**31 - 1 for s in sent)
    assert sent[-1] == 5  # seeds already in the range are sent as they are
    assert len(set(sent)) == 4


def unsupported(param: str, message: str) -> Reply:
    """A refusal as OpenAI's API words it for a reasoning model (o1, o3, gpt-5)."""
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": "unsupported_parameter",
        }
    }
    return 400, {}, body


def reasoning_model(request: dict[str, Any]) -> Reply:
    """A fake OpenAI reasoning model: no max_tokens, no top_p, only the default temperature."""
    if "max_tokens" in request:
        return unsupported(
            "max_tokens",
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
        )
    if "top_p" in request:
        return unsupported(
            "top_p", "Unsupported parameter: 'top_p' is not supported with this model."
        )
    if request.get("temperature", 1) != 1:
        return (
            400,
            {},
            {
                "error": {
                    "message": f"Unsupported value: 'temperature' does not support "
                    f"{request['temperature']} with this model. Only the default (1) value is "
                    "supported.",
                    "type": "invalid_request_error",
                    "param": "temperature",
                    "code": "unsupported_value",
                }
            },
        )
    limit = request["max_completion_tokens"]
    return ok([f"{request['messages'][-1]['content']} <= {limit}"], completion_tokens=2)


def test_a_reasoning_model_gets_max_completion_tokens_and_no_top_p(
    fake_server: Callable[..., FakeServer],
) -> None:
    server = fake_server(reasoning_model)
    model = OpenAIModel("o3-mini", base_urls=[server.url], concurrency=1, max_retries=0)
    sampling = Sampling(temperature=1.0, max_new_tokens=50, seed=3)
    rows = model.generate([chat("a"), chat("b")], sampling)
    # the limit asked for is the one sent, in the field the model takes; top_p (1: none) left out
    assert [[c.text for c in row] for row in rows] == [["a <= 50"], ["b <= 50"]]
    first, second, third, fourth = server.requests
    assert "max_tokens" in first and "max_completion_tokens" not in first
    assert second["max_completion_tokens"] == 50 and second["top_p"] == 1.0
    assert "top_p" not in third and "max_tokens" not in third and "top_p" not in fourth
    # learnt once: the next call sends the form the model takes at once
    [[again]] = model.generate([chat("c")], sampling)
    assert again.text == "c <= 50"
    assert len(server.requests) == 5


def test_what_a_reasoning_model_cannot_do_still_stops_with_its_message(
    fake_server: Callable[..., FakeServer],
) -> None:
    server = fake_server(reasoning_model)
    model = OpenAIModel("o3-mini", base_urls=[server.url], concurrency=1)
    # greedy is temperature 0, which the model refuses: one line naming the parameter
    with pytest.raises(openai_backend.EndpointRefused, match="'temperature' does not support 0"):
        model.generate([chat("a")], Sampling())
    # a top_p that truncates is not dropped silently
    with pytest.raises(openai_backend.EndpointRefused, match="'top_p' is not supported"):
        model.generate([chat("a")], Sampling(temperature=1.0, top_p=0.9))
    # nor is a max_tokens refused for its value
    other = fake_server([error(400, "max_tokens must be at most 2048")])
    plain = OpenAIModel("m", base_urls=[other.url])
    with pytest.raises(PoiseError, match="max_tokens must be at most 2048"):
        plain.generate([chat("a")], Sampling(max_new_tokens=4096))
    assert plain.max_tokens_param == "max_tokens" and len(other.requests) == 1


def test_a_408_is_retried_as_the_openai_client_retries_it(
    fake_server: Callable[..., FakeServer],
) -> None:
    # openai-python's own _should_retry retries 408 (request timeout), 429 and 5xx
    server = fake_server([error(408, "request timeout"), ok(["then"], completion_tokens=1)])
    model = OpenAIModel("m", base_urls=[server.url], max_retries=1)
    [[completion]] = model.generate([chat("x")], Sampling())
    assert completion.text == "then" and len(server.requests) == 2


def test_the_backoff_of_a_late_retry_stays_under_its_cap() -> None:
    cap = openai_backend._BACKOFF_CAP_S
    delays = [openai_backend._backoff_seconds(40, None) for _ in range(200)]
    assert max(delays) <= cap and len(set(delays)) > 100
    assert max(delays) > cap / 2  # uniform up to the cap, not up to the base


def test_a_server_returning_more_choices_than_asked_gives_n(
    fake_server: Callable[..., FakeServer],
) -> None:
    server = fake_server([ok(["a", "b", "c"], completion_tokens=3)])
    [row] = OpenAIModel("m", base_urls=[server.url]).generate(
        [chat("x")], Sampling(temperature=1.0, n=2)
    )
    assert [c.text for c in row] == ["a", "b"]


def test_a_422_refusal_of_max_tokens_adapts_as_a_400_does(
    fake_server: Callable[..., FakeServer],
) -> None:
    def unprocessable(request: dict[str, Any]) -> Reply:
        status, headers, body = reasoning_model(request)
        return (422 if status == 400 else status), headers, body

    server = fake_server(unprocessable)
    model = OpenAIModel("o3-mini", base_urls=[server.url], concurrency=1, max_retries=0)
    rows = model.generate([chat("a")], Sampling(temperature=1.0, max_new_tokens=50, seed=3))
    assert [[c.text for c in row] for row in rows] == [["a <= 50"]]
    assert model.max_tokens_param == "max_completion_tokens" and not model.send_top_p


def test_a_top_p_below_1_is_still_sent_once_top_p_1_was_left_out(
    fake_server: Callable[..., FakeServer],
) -> None:
    server = fake_server(reasoning_model)
    model = OpenAIModel("o3-mini", base_urls=[server.url], concurrency=1, max_retries=0)
    model.generate([chat("a")], Sampling(temperature=1.0, max_new_tokens=50))
    assert not model.send_top_p
    # leaving out a top_p of 1 changes nothing; a top_p that truncates is asked for, and refused
    with pytest.raises(openai_backend.EndpointRefused, match="'top_p' is not supported"):
        model.generate([chat("b")], Sampling(temperature=1.0, top_p=0.9, max_new_tokens=50))
    assert server.requests[-1]["top_p"] == 0.9


def test_token_counts_are_split_by_largest_remainder(
    fake_server: Callable[..., FakeServer],
) -> None:
    # 4 tokens over texts of 1 and 2 characters: 1.33 and 2.67, the larger remainder rounds up
    assert openai_backend._split_proportionally(4, [1, 2]) == [1, 3]
    assert openai_backend._split_proportionally(5, [1, 1, 2]) == [1, 1, 3]
    assert openai_backend._split_proportionally(3, [0, 0]) == [2, 1]  # no text: evenly
    server = fake_server([ok(["a", "bb"], completion_tokens=4)])
    [row] = OpenAIModel("m", base_urls=[server.url]).generate(
        [chat("x")], Sampling(temperature=1.0, n=2)
    )
    assert [c.num_tokens for c in row] == [1, 3]


def test_an_open_limit_sends_no_max_tokens(fake_server: Callable[..., FakeServer]) -> None:
    server = fake_server(echo)
    model = OpenAIModel("m", base_urls=[server.url])
    model.generate([chat("x")], Sampling(max_new_tokens=9), open_limit=True)
    model.generate([chat("y")], Sampling(max_new_tokens=9))
    first, second = server.requests
    assert "max_tokens" not in first and "max_completion_tokens" not in first
    assert second["max_tokens"] == 9


def test_a_server_that_refuses_every_form_of_a_request_ends_in_an_error_not_a_loop(
    fake_server: Callable[..., FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal the client can meet by sending a field in another form is sent again at once,
    not counted as a retry; at most once per such field (two), so a server that refuses every
    form (here: each refusal read as adaptable) stops with its message instead of being asked
    for ever."""
    server = fake_server(
        lambda request: unsupported("max_tokens", "Unsupported parameter: 'max_tokens'.")
    )
    model = OpenAIModel("m", base_urls=[server.url], concurrency=1, max_retries=0)
    monkeypatch.setattr(model, "_adapt_to_refusal", lambda *args: True)
    with pytest.raises(PoiseError, match="Unsupported parameter: 'max_tokens'"):
        model.generate([chat("a")], Sampling(temperature=1.0))
    assert len(server.requests) == 3  # the first and two sent again at once
