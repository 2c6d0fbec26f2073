from __future__ import annotations

import json
from typing import Any

import pytest

from poise.config import Sampling
from poise.serve.schema import RequestError, ServeConfig, parse_request

CONFIG = ServeConfig(max_tokens_limit=256, max_n=8, served_name="m")


def body(**fields: Any) -> bytes:
    data: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    data.update(fields)
    return json.dumps(data).encode()


def test_defaults_follow_openai() -> None:
    req = parse_request(body(), CONFIG)
    assert req.model == "m"
    assert req.chat == [{"role": "user", "content": "hi"}]
    # OpenAI's default is sampling at temperature 1, as many tokens as allowed, no seed.
    assert req.sampling == Sampling(temperature=1.0, max_new_tokens=256)
    assert not req.seeded and not req.stream and not req.include_usage


def test_sampling_fields_map_onto_sampling() -> None:
    req = parse_request(
        body(temperature=0.5, top_p=0.9, top_k=40, max_tokens=12, n=3, seed=7, stop="END"),
        CONFIG,
    )
    assert req.sampling == Sampling(
        temperature=0.5, top_p=0.9, top_k=40, max_new_tokens=12, n=3, seed=7, stop=("END",)
    )
    assert req.seeded


def test_extensions_and_aliases() -> None:
    req = parse_request(
        body(
            messages=[
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            top_k=-1,
            max_completion_tokens=5,
            stop=["x", "y"],
            stream=True,
            stream_options={"include_usage": True},
            user="someone",  # harmless unknown fields are ignored
        ),
        CONFIG,
    )
    assert req.chat == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},  # as vLLM joins text parts
    ]
    assert req.sampling.top_k == 0
    assert req.sampling.max_new_tokens == 5
    assert req.sampling.stop == ("x", "y")
    assert req.stream and req.include_usage


# (body, param, code) of requests that must be refused with a 400.
MALFORMED: list[tuple[bytes, str | None, str]] = [
    (b"{not json", None, "invalid_json"),
    (b"\xff\xfe", None, "invalid_json"),
    (b"[1, 2]", None, "invalid_type"),
    (json.dumps({"model": "m"}).encode(), "messages", "missing_required_parameter"),
    (body(messages=[]), "messages", "invalid_value"),
    (body(messages="hi"), "messages", "invalid_type"),
    (body(messages=[{"role": "user"}]), "messages[0].content", "missing_required_parameter"),
    (body(messages=[{"role": "user", "content": 3}]), "messages[0].content", "invalid_type"),
    (body(messages=[{"role": "user", "content": None}]), "messages[0].content", "invalid_type"),
    (body(messages=[{"role": "system"}]), "messages[0].content", "missing_required_parameter"),
    (body(messages=[{"role": "robot", "content": "x"}]), "messages[0].role", "invalid_value"),
    (body(messages=[{"role": "tool", "content": "x"}]), "messages[0].role", "invalid_value"),
    (
        json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(),
        "model",
        "missing_required_parameter",
    ),
    (body(user=5), "user", "invalid_type"),  # was accepted: OpenAI's schema has a string
    (body(temperature=-0.1), "temperature", "invalid_value"),
    (body(temperature="hot"), "temperature", "invalid_type"),
    (body(temperature=float("nan")), "temperature", "invalid_value"),  # NaN: JSON's extension
    (body(top_p=float("inf")), "top_p", "invalid_value"),
    (body(top_p=0), "top_p", "invalid_value"),
    (body(top_p=1.5), "top_p", "invalid_value"),
    (body(top_k=-2), "top_k", "invalid_value"),
    (body(max_tokens=0), "max_tokens", "invalid_value"),
    (body(max_tokens=257), "max_tokens", "invalid_value"),
    (body(max_tokens=1.5), "max_tokens", "invalid_type"),
    (body(max_completion_tokens=1000), "max_completion_tokens", "invalid_value"),
    (body(max_tokens=3, max_completion_tokens=4), "max_completion_tokens", "invalid_value"),
    (body(n=0), "n", "invalid_value"),
    (body(n=9), "n", "invalid_value"),
    (body(n=True), "n", "invalid_type"),
    (body(seed="1"), "seed", "invalid_type"),
    (body(stop=[""]), "stop", "invalid_value"),
    (body(stop=5), "stop", "invalid_type"),
    (body(stream="yes"), "stream", "invalid_type"),
    (body(logprobs="yes"), "logprobs", "invalid_type"),
    (body(top_logprobs=2), "top_logprobs", "invalid_value"),
    (body(logprobs=True, top_logprobs=21), "top_logprobs", "invalid_value"),
    (body(presence_penalty=0.5), "presence_penalty", "unsupported_parameter"),
    # a tool call asked for without tools (which are refused too) was answered with plain text
    (body(tool_choice="required"), "tool_choice", "unsupported_parameter"),
    (
        body(tool_choice={"type": "function", "function": {"name": "f"}}),
        "tool_choice",
        "unsupported_parameter",
    ),
    (body(function_call={"name": "f"}), "function_call", "unsupported_parameter"),
    # vLLM's extensions that change the answer, which were ignored with a 200
    (body(min_p=0.99), "min_p", "unsupported_parameter"),
    (body(ignore_eos=True), "ignore_eos", "unsupported_parameter"),
    (body(ignore_eos=1), "ignore_eos", "unsupported_parameter"),  # 1 == True is no off value
    (body(min_tokens=30), "min_tokens", "unsupported_parameter"),
    (body(stop_token_ids=[2, 3]), "stop_token_ids", "unsupported_parameter"),
    (body(use_beam_search=True), "use_beam_search", "unsupported_parameter"),
    (body(length_penalty=0.5), "length_penalty", "unsupported_parameter"),
    (body(length_penalty=True), "length_penalty", "unsupported_parameter"),
    (body(prompt_logprobs=0), "prompt_logprobs", "unsupported_parameter"),
    (body(guided_json={"type": "object"}), "guided_json", "unsupported_parameter"),
    (body(guided_regex="a+"), "guided_regex", "unsupported_parameter"),
    (body(guided_choice=["yes", "no"]), "guided_choice", "unsupported_parameter"),
    (body(guided_grammar="root ::= 'a'"), "guided_grammar", "unsupported_parameter"),
    (body(structured_outputs={"json": {}}), "structured_outputs", "unsupported_parameter"),
    (body(skip_special_tokens=False), "skip_special_tokens", "unsupported_parameter"),
    (body(include_stop_str_in_output=True), "include_stop_str_in_output", "unsupported_parameter"),
    (
        body(
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Sure, here"},
            ],
            continue_final_message=True,
            add_generation_prompt=False,
        ),
        "add_generation_prompt",
        "unsupported_parameter",
    ),
    (body(continue_final_message=True), "continue_final_message", "unsupported_parameter"),
    (body(chat_template="{{ messages }}"), "chat_template", "unsupported_parameter"),
    (
        body(chat_template_kwargs={"enable_thinking": False}),
        "chat_template_kwargs",
        "unsupported_parameter",
    ),
    (body(echo=True), "echo", "unsupported_parameter"),
    (body(add_special_tokens=True), "add_special_tokens", "unsupported_parameter"),
]


@pytest.mark.parametrize(("raw", "param", "code"), MALFORMED)
def test_malformed_requests_are_400_with_the_param(
    raw: bytes, param: str | None, code: str
) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(raw, CONFIG)
    err = info.value
    assert err.status == 400
    assert err.param == param
    assert err.code == code
    assert err.body()["error"]["type"] == "invalid_request_error"
    assert err.message and "\n" not in err.message


def test_an_assistant_message_may_go_without_content_as_openai_allows() -> None:
    """OpenAI's schema lets an assistant message's content be null or absent (vLLM reads it as
    empty); it was a 400. Only an assistant message: a user's or system's stays required."""
    for assistant in ({"role": "assistant", "content": None}, {"role": "assistant"}):
        req = parse_request(
            body(
                messages=[
                    {"role": "user", "content": "hi"},
                    assistant,
                    {"role": "user", "content": "go on"},
                ]
            ),
            CONFIG,
        )
        assert req.chat[1] == {"role": "assistant", "content": ""}


def test_harmless_off_values_of_unsupported_parameters_pass() -> None:
    parse_request(body(logprobs=False, presence_penalty=0, frequency_penalty=0.0, tools=[]), CONFIG)
    parse_request(body(tool_choice="none", function_call="auto"), CONFIG)
    parse_request(body(tool_choice="auto", parallel_tool_calls=True), CONFIG)
    parse_request(
        body(
            min_p=0,
            min_tokens=0,
            ignore_eos=False,
            stop_token_ids=[],
            use_beam_search=False,
            length_penalty=1,
            prompt_logprobs=None,
            guided_json=None,
            guided_decoding_backend="xgrammar",  # tunes a guided decoding not asked for
            guided_whitespace_pattern=None,
            structured_outputs=None,
            skip_special_tokens=True,
            add_generation_prompt=True,
            continue_final_message=False,
            chat_template_kwargs={},
            echo=False,
            add_special_tokens=False,
            priority=0,  # vLLM's extensions that change no answer are ignored
            request_id="r-1",
        ),
        CONFIG,
    )


def test_config_name_defaults_to_the_model_spec() -> None:
    assert ServeConfig(model="organism-small").name == "organism-small"
    assert ServeConfig(model="organism-small", served_name="x").name == "x"


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": '
        + b'{"a": ' * 100_000
        + b"1"
        + b"}" * 100_000
        + b"}",
    ],
)
def test_deeply_nested_json_is_a_400(raw: bytes) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(raw, CONFIG)
    assert info.value.status == 400
    assert info.value.code == "invalid_json"
    assert "nested too deeply" in info.value.message


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user", "content": "bad \ud800 x"}], "messages[0].content"),
        (
            [
                {"role": "system", "content": "fine"},
                {"role": "user", "content": [{"type": "text", "text": "\udfff"}]},
            ],
            "messages[1].content",
        ),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_message(
    messages: list[dict[str, Any]], param: str
) -> None:
    raw = json.dumps({"model": "m", "messages": messages}).encode()  # "\ud800" escaped in JSON
    with pytest.raises(RequestError) as info:
        parse_request(raw, CONFIG)
    assert info.value.status == 400
    assert info.value.param == param
    assert "surrogate" in info.value.message


def test_a_lone_surrogate_in_a_stop_string_is_a_400() -> None:
    raw = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": "\ud800"}
    )
    with pytest.raises(RequestError) as info:
        parse_request(raw.encode(), CONFIG)
    assert info.value.param == "stop"


def test_serve_config_takes_a_path_for_the_model(tmp_path) -> None:
    assert ServeConfig(model=tmp_path / "folder").model == str(tmp_path / "folder")


@pytest.mark.parametrize(
    ("fields", "param", "said"),
    [
        ({"stop": 5}, "stop", "stop must be a string or a list of strings (got 5)"),
        ({"stop": [5]}, "stop", "stop must be a string or a list of strings"),
        ({"stop": ["a", 3]}, "stop", "stop must be a string or a list of strings"),
        (
            {"messages": [{"role": "user", "content": 3}]},
            "messages[0].content",
            "messages[0].content must be a string or a list of text parts (got 3)",
        ),
    ],
)
def test_a_value_of_none_of_a_fields_types_names_every_type(
    fields: dict[str, Any], param: str, said: str
) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(body(**fields), CONFIG)
    assert (info.value.param, info.value.code, info.value.message) == (param, "invalid_type", said)


@pytest.mark.parametrize("stream", [None, False])
def test_stream_options_without_stream_is_a_400_and_unknown_fields_are_ignored(
    stream: bool | None,
) -> None:
    # as OpenAI and vLLM answer it; unknown fields are ignored, as vLLM does
    parse_request(body(foo=1, stream=True, stream_options={"include_usage": True}), CONFIG)
    parse_request(body(foo=1, stream=stream, stream_options=None), CONFIG)
    with pytest.raises(RequestError) as info:
        parse_request(body(stream=stream, stream_options={"include_usage": True}), CONFIG)
    assert (info.value.status, info.value.param, info.value.code) == (
        400,
        "stream_options",
        "invalid_value",
    )
    assert info.value.message == "stream_options is only allowed when stream is true"


@pytest.mark.parametrize("usage", ["no", 0, 1, None, [True]])
def test_include_usage_must_be_a_boolean(usage: Any) -> None:
    # "no" is truthy: read as bool(), it asked for the usage chunk
    options = {"include_usage": usage}
    if usage is None:
        assert not parse_request(body(stream=True, stream_options=options), CONFIG).include_usage
        return
    with pytest.raises(RequestError) as info:
        parse_request(body(stream=True, stream_options=options), CONFIG)
    assert (info.value.status, info.value.param, info.value.code) == (
        400,
        "stream_options.include_usage",
        "invalid_type",
    )
    assert info.value.message == f"stream_options.include_usage must be a boolean (got {usage!r})"


def test_a_non_finite_number_is_called_so() -> None:
    # it read "should be less than or equal to 100 (got nan)"
    with pytest.raises(RequestError, match=r"^temperature: Input should be a finite number"):
        parse_request(body(temperature=float("nan")), CONFIG)


def test_a_message_that_is_not_an_object_is_named_without_the_servers_class_names() -> None:
    with pytest.raises(RequestError) as info:
        parse_request(body(messages=[{"role": "user", "content": "hi"}, "hello"]), CONFIG)
    assert info.value.param == "messages[1]"
    assert info.value.message == "messages[1] must be a JSON object (got 'hello')"
    with pytest.raises(RequestError) as info:
        parse_request(body(stream=True, stream_options=["include_usage"]), CONFIG)
    assert info.value.param == "stream_options"
    assert info.value.message == "stream_options must be a JSON object"


def test_a_request_body_with_a_key_given_twice_is_a_400() -> None:
    # json kept the last value: the server answered a request the client did not send
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi", "content": "ho"}]}'
    with pytest.raises(RequestError) as info:
        parse_request(raw, CONFIG)
    assert (info.value.status, info.value.code) == (400, "invalid_json")
    assert "key 'content' given twice: line 1 column 63" in info.value.message


def test_top_logprobs_takes_0_to_20_and_needs_logprobs_true() -> None:
    """As the ``openai`` client's schema words ``top_logprobs``: "An integer between 0 and 20
    ... `logprobs` must be set to `true` if this parameter is used"; an explicit
    ``logprobs: false`` is not true."""
    for k in (0, 1, 20):
        req = parse_request(body(logprobs=True, top_logprobs=k), CONFIG)
        assert (req.logprobs, req.top_logprobs) == (True, k)
    with pytest.raises(RequestError) as info:
        parse_request(body(logprobs=False, top_logprobs=2), CONFIG)
    assert (info.value.status, info.value.param, info.value.code) == (
        400,
        "top_logprobs",
        "invalid_value",
    )


def test_a_seed_of_0_is_a_seed() -> None:
    # a seeded request is reproducible; without a seed the batcher draws a fresh one
    req = parse_request(body(seed=0), CONFIG)
    assert req.seeded and req.sampling.seed == 0
    assert not parse_request(body(), CONFIG).seeded


def test_a_request_with_template_variables_is_told_how_the_server_takes_them() -> None:
    with pytest.raises(RequestError) as info:
        parse_request(body(chat_template_kwargs={"enable_thinking": False}), CONFIG)
    assert "start it with --model-option chat_template_kwargs=JSON" in info.value.message


def test_a_request_may_repeat_the_template_variables_the_server_was_started_with() -> None:
    """A poise client given the server's own ``--model-option chat_template_kwargs`` sends them
    in every request: the same variables are what the server renders with, so they are taken;
    others (or the same keys with other values, ``1`` for ``true`` included) are refused."""
    served = {"enable_thinking": False, "date_string": "26 Jul 2024"}
    config = CONFIG.model_copy(update={"model_options": {"chat_template_kwargs": served}})
    same = {"date_string": "26 Jul 2024", "enable_thinking": False}  # any key order
    assert parse_request(body(chat_template_kwargs=same), config).chat[-1]["content"] == "hi"
    for other in ({"enable_thinking": True}, {**same, "enable_thinking": 0}, {**same, "x": 1}):
        with pytest.raises(RequestError, match="start it with --model-option") as info:
            parse_request(body(chat_template_kwargs=other), config)
        assert info.value.param == "chat_template_kwargs"
    with pytest.raises(RequestError, match="chat_template_kwargs"):  # a server started without
        parse_request(body(chat_template_kwargs=same), CONFIG)


def test_the_servers_limits_are_inclusive_and_temperature_goes_to_100() -> None:
    """``--max-n`` and ``--max-tokens-limit`` are the largest values taken, not the first refused;
    a temperature above OpenAI's 2 is taken up to poise's own 100 (the exploitation attack's grid
    sends such temperatures to a served model through ``openai:``)."""
    req = parse_request(body(n=8, max_tokens=256, temperature=100.0), CONFIG)
    assert (req.sampling.n, req.sampling.max_new_tokens, req.sampling.temperature) == (8, 256, 100)
    assert parse_request(body(max_completion_tokens=256), CONFIG).sampling.max_new_tokens == 256
    # max_tokens given: exactly that many at most; none given: what is left of the context
    assert not req.fill_max_tokens
    assert parse_request(body(), CONFIG).fill_max_tokens


def test_whitespace_stop_strings_and_empty_stream_options_are_taken() -> None:
    """A newline is a common stop string (only "" is refused), and ``stream_options: {}`` asks
    for no usage chunk (``include_usage`` defaults to false, as OpenAI's)."""
    assert parse_request(body(stop=["\n", " "]), CONFIG).sampling.stop == ("\n", " ")
    assert parse_request(body(stop="\n\n"), CONFIG).sampling.stop == ("\n\n",)
    assert not parse_request(body(stream=True, stream_options={}), CONFIG).include_usage


def test_refusals_say_where_and_what() -> None:
    with pytest.raises(RequestError) as info:
        parse_request(body(messages=[{"role": "user", "content": "bad \ud800 x"}]), CONFIG)
    assert info.value.message == (
        "messages[0].content holds a lone surrogate ('\\ud800' at character 4), which is not "
        "valid Unicode text"
    )
    with pytest.raises(RequestError) as info:
        parse_request(body(messages=[]), CONFIG)
    assert info.value.message == "messages must hold at least one message"


def test_serve_defaults_are_those_the_docs_give() -> None:
    # docs/serving.md, "What a request may ask"
    config = ServeConfig()
    assert (config.max_body_bytes, config.max_tokens_limit, config.max_n) == (4194304, 2048, 128)
