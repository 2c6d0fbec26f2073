"""``/v1/completions`` and log-probs on chat completions, against a tiny hf model served in a
thread of the test process; numbers are checked against the model's own ``score`` and
``generate``, and responses are read with the official openai client where it can."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from poise.config import Sampling
from poise.models.hf import HFModel

from .helpers import EchoModel, ThreadServer, read_sse

CHAT = [{"role": "user", "content": "the cat sat"}]


@pytest.fixture(scope="module")
def model(tiny_hf_model_dir: Path) -> HFModel:
    return HFModel(str(tiny_hf_model_dir), device="cpu", batch_size=8)


@pytest.fixture
def server(model: HFModel, start_server: Callable[..., ThreadServer]) -> ThreadServer:
    return start_server(model, served_name="tiny", max_tokens_limit=64, max_n=4)


def _post_in_process(app: Any) -> httpx.Response:
    """A completion of "the cat" (2 tokens) asked of ``app`` in process, through httpx's ASGI
    transport (which raises what the app lets out)."""
    import asyncio

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://poise") as client:
            body = {"model": "tiny", "prompt": "the cat", "max_tokens": 2}
            return await client.post("/v1/completions", json=body)

    return asyncio.run(main())


def post(server: ThreadServer, path: str, **payload: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{path}", json={"model": "tiny", **payload}, timeout=60)


def stream_completion(
    server: ThreadServer, payload: dict[str, Any]
) -> tuple[list[dict[str, Any]], bool]:
    """The chunks of ``payload`` asked as a streamed completion, and whether [DONE] ended it."""
    with httpx.stream(
        "POST",
        f"{server.url}/v1/completions",
        json={"model": "tiny", **payload, "stream": True},
        timeout=60,
    ) as response:
        return read_sse(list(response.iter_lines()))


def test_echo_with_max_tokens_0_scores_the_prompt_as_score_does(
    server: ThreadServer, model: HFModel
) -> None:
    answer = " the answer"
    (scored,) = model.score([CHAT], [answer])
    prompt = model.prompt_ids(CHAT)
    ids = prompt + list(scored.token_ids)
    response = post(server, "completions", prompt=ids, max_tokens=0, echo=True, logprobs=2)
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(ids)
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["token_logprobs"][len(prompt) :] == pytest.approx(scored.logprobs, abs=1e-4)
    for chosen, token, top in zip(
        logprobs["token_logprobs"][1:],
        logprobs["tokens"][1:],
        logprobs["top_logprobs"][1:],
        strict=True,
    ):
        assert top[token] == chosen  # the chosen token is always listed
        assert 2 <= len(top) <= 3
        assert max(top.values()) >= chosen
    assert choice["text"] == model.tokenizer.decode(ids)
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    # ASCII text: each token starts where the ones before it end
    assert offsets == [sum(len(t) for t in logprobs["tokens"][:j]) for j in range(len(ids))]
    assert choice["finish_reason"] == "length"
    assert response.json()["usage"]["prompt_tokens"] == len(ids)


def test_generation_from_a_raw_prompt_equals_generate_after_the_chat_template(
    server: ThreadServer, model: HFModel
) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    text = model.prompt_text(CHAT)
    sampling = Sampling(temperature=0, max_new_tokens=10)
    (expected,) = model.generate([CHAT], sampling)
    result = client.completions.create(model="tiny", prompt=text, max_tokens=10, temperature=0)
    assert result.choices[0].text == expected[0].text
    assert result.usage is not None
    assert result.usage.completion_tokens == expected[0].num_tokens
    echoed = client.completions.create(
        model="tiny", prompt=[text, text], max_tokens=10, temperature=0, echo=True, n=2
    )
    assert [c.index for c in echoed.choices] == [0, 1, 2, 3]
    assert {c.text for c in echoed.choices} == {text + expected[0].text}


def test_seeded_samples_repeat_and_streaming_joins_to_the_same_text(server: ThreadServer) -> None:
    payload = {"prompt": "the cat", "max_tokens": 12, "temperature": 1.0, "seed": 5, "n": 2}
    first = post(server, "completions", **payload).json()
    again = post(server, "completions", **payload).json()
    texts = [c["text"] for c in first["choices"]]
    assert texts == [c["text"] for c in again["choices"]]
    chunks, done = stream_completion(server, payload)
    assert done
    joined = ["", ""]
    for chunk in chunks:
        for choice in chunk["choices"]:
            joined[choice["index"]] += choice["text"]
    assert joined == texts


def test_a_repeated_prompt_is_sampled_anew_unless_seeded(server: ThreadServer) -> None:
    """Copies of one prompt in a request without a seed are independent samples (lm-eval's
    repeats, pass@k), as from OpenAI and vLLM; with a seed they repeat, as from vLLM."""
    payload = {"prompt": ["the cat"] * 3 + ["a dog"], "max_tokens": 12, "temperature": 1.0}
    unseeded = post(server, "completions", **payload).json()
    texts = [c["text"] for c in unseeded["choices"]]
    assert len(set(texts[:3])) == 3, texts
    seeded = post(server, "completions", **payload, seed=7).json()
    texts = [c["text"] for c in seeded["choices"]]
    assert texts[0] == texts[1] == texts[2]
    assert texts == [
        c["text"] for c in post(server, "completions", **payload, seed=7).json()["choices"]
    ]


def test_chat_logprobs_cover_the_generated_tokens(server: ThreadServer, model: HFModel) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    sampling = Sampling(temperature=0, max_new_tokens=8)
    (expected,) = model.generate([CHAT], sampling)
    result = client.chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = result.choices[0]
    assert choice.message.content == expected[0].text
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert [t.logprob for t in content][: expected[0].num_tokens] == pytest.approx(
        list(expected[0].token_logprobs or ()), abs=1e-4
    )
    for token in content:
        assert len(token.top_logprobs) == 3
        values = [t.logprob for t in token.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert token.top_logprobs[0].token == token.token  # greedy: the chosen is the likeliest
        assert token.top_logprobs[0].logprob == token.logprob
        assert values[1] < values[0]  # each alternative with its own log-prob, not the chosen's
        assert bytes(token.bytes or []).decode("utf-8") == token.token

    stream = client.chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    streamed = [
        t
        for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for t in (chunk.choices[0].logprobs.content or [])
    ]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in content]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["a", ""]}, "prompt[1]"),
        ({"prompt": [[1, 2], [10**9]]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": "x", "n": 5}, "n"),
        ({"prompt": "x", "max_tokens": 65}, "max_tokens"),
        ({"prompt": "x", "echo": "yes"}, "echo"),
        ({"prompt": "x", "user": 5}, "user"),  # was accepted: a string in OpenAI's schema
        ({"prompt": "x", "stop": [""]}, "stop"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        (
            {"prompt": "x", "stream": True, "stream_options": {"include_usage": "no"}},
            "stream_options.include_usage",
        ),
    ],
)
def test_malformed_completion_requests_are_400(
    server: ThreadServer, payload: dict[str, Any], param: str
) -> None:
    response = post(server, "completions", **payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["code"] is not None  # "prompt is empty" had none


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ('"prompt": "x", "stop": "ok\\ud800"', "stop"),
        ('"prompt": "ok\\ud800"', "prompt"),
        ('"prompt": ["fine", "x\\udfff y"]', "prompt[1]"),
    ],
)
def test_a_lone_surrogate_in_a_prompt_or_a_stop_string_is_400(
    server: ThreadServer, fields: str, param: str
) -> None:
    """As a chat message's: JSON's \\ud800 escape decodes to text no tokenizer encodes, the
    request's fault, not a 500."""
    raw = f'{{"model": "tiny", {fields}, "max_tokens": 2}}'
    response = httpx.post(
        f"{server.url}/v1/completions",
        content=raw.encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert "lone surrogate" in error["message"]


def test_a_model_without_the_tokens_capability_says_so(
    start_server: Callable[..., ThreadServer],
) -> None:
    server = start_server(EchoModel(), served_name="tiny")
    response = post(server, "completions", prompt="hi")
    assert response.status_code == 501
    assert "tokens capability" in response.json()["error"]["message"]
    chat = post(server, "chat/completions", messages=CHAT, logprobs=True)
    assert chat.status_code == 400
    assert chat.json()["error"]["param"] == "logprobs"
    assert post(server, "chat/completions", messages=CHAT).status_code == 200


def test_openapi_describes_both_request_bodies(server: ThreadServer) -> None:
    schema = httpx.get(f"{server.url}/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        name = body["schema"]["$ref"].rsplit("/", 1)[-1]
        assert "model" in schema["components"]["schemas"][name]["properties"]
        assert not name.startswith("_")  # a public name for client generators
        operation = schema["paths"][path]["post"]
        assert operation["requestBody"]["required"] is True
        assert "400" in operation["responses"]  # every malformed body gets OpenAI's error
    # every reference resolves (a message of a chat is a schema of its own): a generator or
    # fuzzer reading the description finds each type it names
    text = json.dumps(schema)  # serialisable as served
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs and refs <= set(schema["components"]["schemas"])


@pytest.mark.slow
def test_completions_beside_a_full_continuous_batch_give_the_same_answers(
    model: HFModel, start_server: Callable[..., ThreadServer]
) -> None:
    """Completions and log-probs run on the model in their own thread while the engine's worker
    decodes 32 chat rows: neither disturbs the other."""
    import asyncio

    server = start_server(model, served_name="tiny", max_batch=64, join_rows=64)
    chats = [[{"role": "user", "content": f"question {i} about the cat"}] for i in range(32)]
    sampling = Sampling(temperature=0, max_new_tokens=16)
    expected = [c[0].text for c in model.generate(chats, sampling)]
    prompts = [model.prompt_ids(c) for c in chats[:8]]
    expected_scores = model.sequence_logprobs(prompts, top_k=2)

    async def main() -> tuple[list[str], list[dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=f"{server.url}/v1", timeout=120) as client:

            async def chat_answer(messages: list[dict[str, str]]) -> str:
                body = {"model": "tiny", "messages": messages, "max_tokens": 16, "temperature": 0}
                response = await client.post("/chat/completions", json=body)
                return str(response.json()["choices"][0]["message"]["content"])

            async def scored(ids: list[int]) -> dict[str, Any]:
                body = {"model": "tiny", "prompt": ids, "max_tokens": 0, "echo": True}
                response = await client.post("/completions", json={**body, "logprobs": 2})
                return dict(response.json()["choices"][0]["logprobs"])

            chat_tasks = [asyncio.ensure_future(chat_answer(c)) for c in chats]
            score_tasks = [asyncio.ensure_future(scored(p)) for p in prompts]
            return list(await asyncio.gather(*chat_tasks)), list(await asyncio.gather(*score_tasks))

    answers, scores = asyncio.run(main())
    assert answers == expected
    for found, reference in zip(scores, expected_scores, strict=True):
        assert found["token_logprobs"][0] is None
        assert found["token_logprobs"][1:] == pytest.approx(reference.logprobs[1:], abs=1e-4)


@pytest.mark.parametrize("declared_by", ["model", "tokenizer"])
def test_a_prompt_past_the_declared_context_is_400(
    model: HFModel,
    start_server: Callable[..., ThreadServer],
    monkeypatch: pytest.MonkeyPatch,
    declared_by: str,
) -> None:
    # the model's context (its config, as the chat route and the audit read it) or the
    # tokenizer's declared one, whichever is smaller
    monkeypatch.setattr(
        model if declared_by == "model" else model.tokenizer,
        "context_length" if declared_by == "model" else "model_max_length",
        12,
    )
    server = start_server(model, served_name="tiny")
    ids = list(range(10, 20))
    assert post(server, "completions", prompt=ids, max_tokens=2).status_code == 200
    response = post(server, "completions", prompt=ids, max_tokens=3)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and "12 tokens" in error["message"]
    scored = post(server, "completions", prompt=[*ids, 20, 21, 22], max_tokens=0, echo=True)
    assert scored.status_code == 400


def test_a_wrong_type_names_every_type_the_field_takes(server: ThreadServer) -> None:
    response = post(server, "completions", prompt="x", stop=5)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "stop must be a string or a list of strings (got 5)"
    )
    response = post(server, "completions", prompt=5)
    assert response.json()["error"]["message"] == (
        "prompt must be a string, a list of strings, a list of token ids or a list of such lists "
        "(got 5)"
    )


def test_a_huge_prompt_is_refused_before_it_is_tokenized(
    server: ThreadServer, model: HFModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    tokenizer_type = type(model.tokenizer)
    original = tokenizer_type.__call__

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tokenizer_type, "__call__", counting)
    response = post(server, "completions", prompt="x" * 3_500_000, max_tokens=4)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert error["message"].startswith(
        "This model's maximum context length is 512 tokens. However, prompt[0] is at least"
    )
    assert calls == []  # never tokenized
    # a prompt the character count cannot judge is still tokenized and counted exactly
    response = post(server, "completions", prompt="the cat sat " * 200, max_tokens=4)
    assert response.status_code == 400
    assert "in prompt[0]" in response.json()["error"]["message"] and calls


def test_requests_refused_as_too_long_leave_no_transformers_warning_in_the_log(
    model: HFModel, start_server: Callable[..., ThreadServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    # the warning comes once per tokenizer: make this one able to give it again
    monkeypatch.setattr(model.tokenizer, "model_max_length", 64)
    monkeypatch.setitem(
        model.tokenizer.deprecation_warnings,
        "sequence-length-is-longer-than-the-specified-maximum",
        False,
    )
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addHandler(handler)
    try:
        server = start_server(model, served_name="tiny")
        long_text = "the cat sat " * 250  # about 750 tokens: counted, then refused
        chat = post(server, "chat/completions", messages=[{"role": "user", "content": long_text}])
        assert chat.status_code == 400 and chat.json()["error"]["code"] == "context_length_exceeded"
        raw = post(server, "completions", prompt=long_text, max_tokens=4)
        assert raw.status_code == 400 and raw.json()["error"]["code"] == "context_length_exceeded"
    finally:
        logger.removeHandler(handler)
    assert not [m for m in seen if "Token indices sequence length" in m]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_p", 0.99),
        ("min_tokens", 30),
        ("ignore_eos", True),
        ("stop_token_ids", [5]),
        ("use_beam_search", True),
        ("length_penalty", 2.0),
        ("prompt_logprobs", 1),
        ("guided_json", {"type": "object"}),
        ("guided_regex", "[ab]+"),
        ("guided_choice", ["a", "b"]),
        ("guided_grammar", "root ::= 'a'"),
        ("guided_whatever", "x"),
        ("structured_outputs", {"choice": ["a", "b"]}),
        ("include_stop_str_in_output", True),
        ("skip_special_tokens", False),
        ("add_special_tokens", False),
        ("response_format", {"type": "json_object"}),
    ],
)
def test_vllm_extensions_that_change_the_output_are_refused(
    server: ThreadServer, field: str, value: Any
) -> None:
    """They were ignored with a 200: an answer a vLLM client reads as honouring them."""
    response = post(server, "completions", prompt="the cat", max_tokens=2, **{field: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (field, "unsupported_parameter")


def test_off_values_of_vllm_extensions_pass(server: ThreadServer) -> None:
    off = {
        "min_p": 0.0,
        "min_tokens": 0,
        "ignore_eos": False,
        "stop_token_ids": [],
        "use_beam_search": False,
        "length_penalty": 1.0,
        "prompt_logprobs": None,
        "guided_json": None,
        "structured_outputs": None,
        "skip_special_tokens": True,
        "add_special_tokens": True,
        "priority": 0,  # changes no answer: ignored
    }
    response = post(server, "completions", prompt="the cat", max_tokens=2, **off)
    assert response.status_code == 200, response.text


def test_max_tokens_over_the_context_is_said_so(
    model: HFModel, start_server: Callable[..., ThreadServer]
) -> None:
    # it read "prompt[0] is at least 0 tokens long (1 characters), and 600 are asked ..."
    server = start_server(model, served_name="tiny")
    for prompt in ("x", [5, 6]):
        response = post(server, "completions", prompt=prompt, max_tokens=600)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("max_tokens", "invalid_value")
        assert error["message"] == (
            "max_tokens 600 is more than the model's context of 512 tokens, which holds the "
            "prompt and the completion together"
        )


@pytest.mark.parametrize(
    ("count", "n", "logprobs", "param"),
    [
        (300, 4, None, "n"),
        (1000, 1, 20, "logprobs"),
        (200, 4, 6, "logprobs"),
    ],
)
def test_a_request_for_too_many_choices_is_refused_before_any_work(
    server: ThreadServer, count: int, n: int, logprobs: int | None, param: str
) -> None:
    """A 364 KB request (1000 echoed prompts, logprobs 20) made an 87 MB answer and held the
    model 24 s; n multiplies the choices."""
    payload: dict[str, Any] = {"prompt": ["the cat sat"] * count, "n": n, "max_tokens": 1}
    if logprobs is not None:
        payload.update(echo=True, logprobs=logprobs)
    response = post(server, "completions", **payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert "per request" in error["message"]


def test_many_prompts_with_one_log_prob_each_still_pass(server: ThreadServer) -> None:
    # lm-eval's log-likelihood batch: many prompts, n 1, echo, logprobs 1
    response = post(
        server, "completions", prompt=[[5, 6, 7]] * 1024, max_tokens=0, echo=True, logprobs=1
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 1024


@pytest.fixture(scope="module")
def organism_small() -> Any:
    from poise.models import load_model

    return load_model("organism-small")


def _check_offsets(text: str, logprobs: dict[str, Any]) -> None:
    """Offsets never go back, and a token that decodes to whole characters is found in the
    choice's text at its offset."""
    offsets, tokens = logprobs["text_offset"], logprobs["tokens"]
    assert offsets == sorted(offsets) and len(offsets) == len(tokens)
    assert all(0 <= o <= len(text) for o in offsets)
    for offset, token in zip(offsets, tokens, strict=True):
        if "\ufffd" not in token:
            assert text[offset : offset + len(token)] == token, (offset, token)


@pytest.mark.slow
def test_text_offsets_count_characters_of_non_ascii_text(
    organism_small: Any, start_server: Callable[..., ThreadServer]
) -> None:
    """A byte-level piece of "é" decodes to U+FFFD alone: counting each as a character put every
    later token past its place (" n" of "café naïve" at 5, not 4)."""
    server = start_server(organism_small, served_name="organism-small")
    client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    prompt = "café naïve 日本語, façade"
    result = client.completions.create(
        model="organism-small", prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=1
    )
    choice = result.choices[0]
    assert choice.logprobs is not None
    logprobs = choice.logprobs.model_dump()
    assert choice.text.startswith(prompt)
    _check_offsets(choice.text, logprobs)
    tokens, offsets = logprobs["tokens"], logprobs["text_offset"]
    assert tokens[:5] == ["ca", "f", "\ufffd", "\ufffd", " n"]
    assert offsets[:5] == [0, 2, 3, 3, 4]  # both pieces of "é" start where "é" does
    # the generated tokens follow the prompt's, and token-id prompts are placed the same way
    ids = organism_small.tokenizer(prompt)["input_ids"]
    by_ids = post(
        server,
        "completions",
        prompt=ids,
        max_tokens=4,
        temperature=0,
        echo=True,
        logprobs=1,
        model="organism-small",
    ).json()["choices"][0]
    _check_offsets(by_ids["text"], by_ids["logprobs"])
    assert by_ids["logprobs"]["text_offset"] == offsets
    # without echo: the completion's tokens, from 0
    plain = post(
        server,
        "completions",
        prompt=prompt,
        max_tokens=4,
        temperature=0,
        logprobs=1,
        model="organism-small",
    ).json()["choices"][0]
    _check_offsets(plain["text"], plain["logprobs"])
    assert plain["logprobs"]["text_offset"][0] == 0


def test_text_offsets_of_byte_pieces_special_tokens_and_a_cut_text() -> None:
    from transformers import AutoTokenizer

    from poise.organism import WEIGHTS_DIR
    from poise.serve.logprobs import text_offsets

    # the organism's byte-level BPE has no token for "ï" or "日": they are byte pieces
    tokenizer = AutoTokenizer.from_pretrained(WEIGHTS_DIR / "organism-small")
    text = "naïve 日本語 done"
    ids = tokenizer(text)["input_ids"]
    offsets = text_offsets(tokenizer, ids, text, skip_special_tokens=False)
    pieces = [tokenizer.decode([t]) for t in ids]
    _check_offsets(text, {"text_offset": offsets, "tokens": pieces})
    # "日" is three byte pieces: all start at its character
    assert offsets[pieces.index(" ") + 1 : pieces.index(" ") + 4] == [text.index("日")] * 3
    # a special token the tokenizer added before a string prompt is not in the echoed text
    bos = tokenizer.convert_tokens_to_ids("<|bos|>")
    assert text_offsets(tokenizer, [bos, *ids], text, skip_special_tokens=False) == [0, *offsets]
    # a completion: its EOS token (skipped) and tokens past a stop string end at the text's end
    eos = tokenizer.convert_tokens_to_ids("<|end|>")
    cut = text_offsets(tokenizer, [*ids, eos], "naïve", skip_special_tokens=True)
    assert cut == [min(o, len("naïve")) for o in offsets] + [len("naïve")]


def test_text_offsets_after_a_replacement_character_in_the_text_itself() -> None:
    """A U+FFFD that is in the text (or invalid bytes) never completes: waiting on it stalled
    every later offset (' b' of 'a\\ufffd\\ufffd\\ufffd b' at 1, not 4) and grew the window
    with every token, quadratic in the prompt's length."""
    from transformers import AutoTokenizer

    from poise.organism import WEIGHTS_DIR
    from poise.serve.logprobs import text_offsets

    tokenizer = AutoTokenizer.from_pretrained(WEIGHTS_DIR / "organism-small")
    text = "a\ufffd\ufffd\ufffd b."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    offsets = text_offsets(tokenizer, ids, text, skip_special_tokens=False)
    pieces = [tokenizer.decode([t]) for t in ids]
    assert offsets[pieces.index(" b")] == text.index(" b")
    assert offsets[-1] == text.index(".")
    assert offsets == sorted(offsets)
    # 3,000 byte pieces of replacement characters, then a word (every offset was 0): each
    # piece at its character, the word after them
    long_text = "\ufffd" * 1000 + " end"
    long_ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    long_offsets = text_offsets(tokenizer, long_ids, long_text, skip_special_tokens=False)
    assert long_offsets[:3000] == [i // 3 for i in range(3000)]
    assert long_offsets[-2:] == [1000, 1001]  # " ", "end"


def test_text_offsets_with_a_byte_fallback_tokenizer() -> None:
    """Llama / Mistral-style tokenizers fall back to byte tokens (<0xF0>) and decode an unfinished
    character as one U+FFFD per byte: those bytes are one character still, not text."""
    from poise.serve.logprobs import text_offsets

    tokenizer = _byte_fallback_tokenizer()
    for text, expected in [
        ("a😀 b", [0, 1, 1, 1, 1, 2]),
        ("a 中 b", [0, 1, 2, 2, 2, 3]),
        ("a\ufffd b", [0, 1, 1, 1, 2]),
    ]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.decode(ids)
        assert decoded == text
        assert text_offsets(tokenizer, ids, decoded, skip_special_tokens=True) == expected


def test_a_completion_request_body_with_a_key_given_twice_is_a_400() -> None:
    from poise.serve.completions import parse_completion_request
    from poise.serve.schema import RequestError, ServeConfig

    raw = b'{"model": "tiny", "prompt": "x", "prompt": "y"}'
    with pytest.raises(RequestError) as info:
        parse_completion_request(raw, ServeConfig(served_name="tiny"))
    assert (info.value.status, info.value.code) == (400, "invalid_json")
    assert "key 'prompt' given twice: line 1 column 34" in info.value.message


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
def test_a_number_too_long_to_read_is_a_400_not_a_500(server: ThreadServer, route: str) -> None:
    """Python refuses to convert an integer of more than 4300 digits (a ValueError that is not a
    JSONDecodeError): the client's malformed body, so a 400 as for any other, not a 500 with a
    traceback in the log."""
    fields = (
        '"prompt": "x"'
        if route == "completions"
        else '"messages": [{"role": "user", "content": "x"}]'
    )
    for number in ("9" * 5000, "-" + "1" * 4301):
        raw = f'{{"model": "tiny", {fields}, "max_tokens": {number}}}'
        response = httpx.post(
            f"{server.url}/v1/{route}",
            content=raw,
            headers={"content-type": "application/json"},
            timeout=60,
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_json")
        assert "more than 4300 digits" in error["message"]
    # ... and a long number that Python does read is still a number (a 400 naming the field)
    raw = f'{{"model": "tiny", {fields}, "max_tokens": {"9" * 4300}}}'
    response = httpx.post(
        f"{server.url}/v1/{route}", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"


def test_a_model_failure_in_a_completion_is_a_500_logged_once(
    model: HFModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As in the chat route: the route answers an unexpected failure itself with the 500 error
    object, logged once. Left to the app's exception handler, Starlette re-raised it after the
    response, and uvicorn logged it a second time as "Exception in ASGI application" (here,
    httpx's ASGI transport raises what the app lets out)."""
    import logging

    from poise.serve.app import create_app
    from poise.serve.schema import ServeConfig

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("scripted failure")

    monkeypatch.setattr(model, "complete", fail)
    app = create_app(model, ServeConfig(served_name="tiny"))

    with caplog.at_level(logging.ERROR):
        response = _post_in_process(app)
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "internal server error (see the server log)",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and "scripted failure" in str(failures[0].exc_info[1])


def test_a_log_prob_of_minus_infinity_is_sent_as_vllm_sends_it(
    server: ThreadServer, model: HFModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token the model rules out (a logit of -inf) has a log-prob of -inf, which JSON cannot
    hold: a plain response failed with a 500 and a stream sent ``-Infinity``, which strict JSON
    parsers refuse. vLLM sends -9999.0 in its place (its source calls it "the JSON-serializable
    float that OpenAI uses"); so does poise serve, in both routes."""
    from poise.models.base import SequenceLogprobs

    original = model.sequence_logprobs

    def ruled_out(*args: Any, **kwargs: Any) -> list[SequenceLogprobs]:
        found = []
        for result in original(*args, **kwargs):
            logprobs = list(result.logprobs)
            top = [list(alternatives) for alternatives in result.top]
            # the last position: a generated token, never the prompt's first
            logprobs[-1] = float("-inf")
            if top[-1]:  # with alternatives asked for
                top[-1][-1] = (top[-1][-1][0], float("-inf"))
            found.append(
                SequenceLogprobs(result.token_ids, tuple(logprobs), tuple(map(tuple, top)))
            )
        return found

    monkeypatch.setattr(model, "sequence_logprobs", ruled_out)
    fields: dict[str, Any] = {"max_tokens": 4, "temperature": 0}
    chat = post(server, "chat/completions", messages=CHAT, logprobs=True, top_logprobs=2, **fields)
    assert chat.status_code == 200, chat.text
    assert "Infinity" not in chat.text
    last = chat.json()["choices"][0]["logprobs"]["content"][-1]
    assert last["logprob"] == -9999.0
    assert last["top_logprobs"][-1]["logprob"] == -9999.0
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={"model": "tiny", "messages": CHAT, "logprobs": True, "stream": True, **fields},
        timeout=60,
    ) as response:
        lines = list(response.iter_lines())
    assert not any("Infinity" in line for line in lines)
    chunks, done = read_sse(lines)
    assert done
    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    assert streamed[-1]["content"][-1]["logprob"] == -9999.0
    legacy = post(server, "completions", prompt="the cat", logprobs=2, **fields)
    assert legacy.status_code == 200, legacy.text
    assert "Infinity" not in legacy.text
    logprobs = legacy.json()["choices"][0]["logprobs"]
    assert logprobs["token_logprobs"][-1] == -9999.0
    assert -9999.0 in logprobs["top_logprobs"][-1].values()


def _byte_fallback_tokenizer() -> Any:
    """A Llama / Mistral-style tokenizer: byte tokens <0x00> ... <0xFF> for what its vocabulary
    lacks, decoded by the tokenizers library's ByteFallback decoder."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab |= {f"<0x{b:02X}>": 3 + b for b in range(256)}
    # "ï" is a token of its own: a piece whose character is also one of GPT-2's byte symbols
    for word in ["▁", "a", "b", "▁a", "▁b", "ï"]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[("▁", "a"), ("▁", "b")],
            byte_fallback=True,
            unk_token="<unk>",
            fuse_unk=True,
        )
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def test_token_bytes_are_the_bytes_each_token_stands_for() -> None:
    """A token holding part of a character decodes to U+FFFD alone: its bytes (the ``bytes`` of
    a chat log-prob entry) are read from its byte-level BPE symbol, by GPT-2's byte table as
    transformers writes it, or from a <0xNN> byte-fallback token, in hex as the tokenizers
    library's ByteFallback decoder reads it."""
    from transformers import AutoTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from poise.organism import WEIGHTS_DIR
    from poise.serve.logprobs import token_bytes

    tokenizer = AutoTokenizer.from_pretrained(WEIGHTS_DIR / "organism-small")
    for byte, symbol in bytes_to_unicode().items():
        token_id = tokenizer.convert_tokens_to_ids(symbol)
        assert token_id != tokenizer.unk_token_id
        assert token_bytes(tokenizer, token_id) == [byte], (byte, symbol)
    fallback = _byte_fallback_tokenizer()
    for byte in range(0x80, 0x100):  # alone, each decodes to U+FFFD
        token_id = fallback.convert_tokens_to_ids(f"<0x{byte:02X}>")
        assert token_bytes(fallback, token_id) == [byte]
    # a text's tokens: their bytes joined are the text's (the fallback tokenizer's decoder strips
    # the space it puts before a word, in a token alone too: a text without spaces there)
    for tok, text in ((tokenizer, "a naïve 日本語 😀 b"), (fallback, "a😀中ï")):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert b"".join(bytes(token_bytes(tok, t)) for t in ids) == text.encode("utf-8")


# ids 3 and 4 are two byte pieces of one character, each U+FFFD alone
_PIECES = {0: "a", 1: "b", 2: "c", 3: "\ufffd", 4: "\ufffd", 5: "ï", 6: "ve", 7: "日本"}


class _PieceTokenizer:
    """Each token id decodes to its piece of ``_PIECES``."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(_PIECES[i] for i in ids)

    def batch_decode(self, batch: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids) for ids in batch]


def test_text_offsets_of_whole_non_ascii_tokens_count_characters() -> None:
    """Tokens that each decode to whole characters ("ï", "日本"): an offset counts characters of
    the text, as ``text[offset:]`` reads it, not UTF-8 bytes."""
    from poise.serve.logprobs import text_offsets

    text = "aïve日本a"
    offsets = text_offsets(_PieceTokenizer(), [0, 5, 6, 7, 0], text, skip_special_tokens=True)
    assert offsets == [0, 1, 2, 4, 6]
    assert [text[o:][:1] for o in offsets] == ["a", "ï", "v", "日", "a"]


def test_legacy_logprobs_list_k_alternatives_the_chosen_token_and_null_first() -> None:
    """``logprobs: k`` of a legacy completion: ``top_logprobs[j]`` maps the ``k`` likeliest
    token strings to their log-probs, plus the chosen token when it is not among them; the
    first token (nothing predicts it) has null for both, and two alternatives of the same text
    keep the likelier log-prob."""
    from poise.models.base import SequenceLogprobs
    from poise.serve.logprobs import completion_logprobs

    result = SequenceLogprobs(
        token_ids=(0, 1, 2),
        logprobs=(None, -0.5, -3.0),
        top=((), ((1, -0.5), (3, -1.0), (4, -2.0)), ((0, -0.1), (1, -0.2), (2, -3.0))),
    )
    one = completion_logprobs(_PieceTokenizer(), result, 1, [0, 1, 2])
    assert one == {
        "tokens": ["a", "b", "c"],
        "token_logprobs": [None, -0.5, -3.0],
        "top_logprobs": [None, {"b": -0.5}, {"a": -0.1, "c": -3.0}],
        "text_offset": [0, 1, 2],
    }
    three = completion_logprobs(_PieceTokenizer(), result, 3, [0, 1, 2])
    assert three["top_logprobs"] == [
        None,
        {"b": -0.5, "\ufffd": -1.0},
        {"a": -0.1, "b": -0.2, "c": -3.0},
    ]


def test_chat_logprobs_without_top_logprobs_list_no_alternatives(server: ThreadServer) -> None:
    """``top_logprobs`` defaults to 0 (OpenAI's range is 0 to 20): each token's entry lists no
    alternatives, streamed or not."""
    client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    result = client.chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        logprobs=True,
    )
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert all(token.top_logprobs == [] for token in logprobs.content)
    stream = client.chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        logprobs=True,
        stream=True,
    )
    streamed = [
        t
        for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for t in (chunk.choices[0].logprobs.content or [])
    ]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in logprobs.content]


def test_max_tokens_defaults_to_16_and_may_be_the_servers_limit() -> None:
    """OpenAI's legacy completions (and vLLM's CompletionRequest) default max_tokens to 16; the
    server's --max-tokens-limit itself is allowed, one more is not."""
    from poise.serve.completions import parse_completion_request
    from poise.serve.schema import RequestError, ServeConfig

    config = ServeConfig(max_tokens_limit=64)

    def parse(**fields: Any) -> Any:
        return parse_completion_request(json.dumps({"model": "m", **fields}).encode(), config)

    default = parse(prompt="x")
    assert (default.max_tokens, default.sampling.max_new_tokens) == (16, 16)
    assert parse(prompt="x", max_tokens=64).sampling.max_new_tokens == 64
    with pytest.raises(RequestError) as info:
        parse(prompt="x", max_tokens=65)
    assert (info.value.param, info.value.code) == ("max_tokens", "invalid_value")


def test_usage_counts_each_prompt_once_and_totals_prompt_and_completion(
    server: ThreadServer,
) -> None:
    """The ``openai`` client's CompletionUsage: prompt_tokens is "Number of tokens in the
    prompt" (each prompt once, however many choices it gets: vLLM sums its prompts' tokens),
    total_tokens "Total number of tokens used in the request (prompt + completion)"; each
    choice's generated tokens are its log-prob tokens (the EOS that ended it included)."""
    client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    result = client.completions.create(
        model="tiny", prompt=prompts, max_tokens=5, n=2, seed=3, logprobs=0
    )
    assert result.usage is not None and len(result.choices) == 4
    generated = [len(c.logprobs.tokens or []) for c in result.choices if c.logprobs is not None]
    assert len(generated) == 4 and all(1 <= g <= 5 for g in generated)
    assert result.usage.prompt_tokens == 3 + 5
    assert result.usage.completion_tokens == sum(generated)
    assert result.usage.total_tokens == 3 + 5 + sum(generated)
    # choices[i * n + j] is prompt i's sample j, its log-probs its own: each token at its place
    for choice in result.choices:
        assert choice.logprobs is not None
        _check_offsets(choice.text, choice.logprobs.model_dump())
    one = [
        client.completions.create(model="tiny", prompt=p, max_tokens=5, seed=3, logprobs=0)
        for p in prompts
    ]
    for i, alone in enumerate(one):
        assert result.choices[2 * i].text == alone.choices[0].text
        assert result.choices[2 * i].logprobs.tokens == alone.choices[0].logprobs.tokens


def test_a_stream_sends_its_usage_only_when_asked(server: ThreadServer) -> None:
    """stream_options.include_usage: "If set, an additional chunk will be streamed before the
    data: [DONE] message" with the usage and no choices (OpenAI); unset, there is none."""
    client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    plain = list(
        client.completions.create(model="tiny", prompt="the cat", max_tokens=4, stream=True)
    )
    assert plain and all(chunk.usage is None and chunk.choices for chunk in plain)
    asked = list(
        client.completions.create(
            model="tiny",
            prompt="the cat",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].choices == [] and asked[-1].usage is not None
    assert all(chunk.usage is None for chunk in asked[:-1])
    # the last chunk of the choice says why it ended, as the whole answer does
    whole = client.completions.create(model="tiny", prompt="the cat", max_tokens=4, seed=1)
    streamed = list(
        client.completions.create(model="tiny", prompt="the cat", max_tokens=4, seed=1, stream=True)
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in streamed][-1] == whole.choices[0].finish_reason
    assert whole.choices[0].finish_reason in ("stop", "length")


def test_a_completion_answers_to_the_models_own_name_as_a_chat_does(
    server: ThreadServer, model: HFModel
) -> None:
    for name in ("tiny", model.name):
        response = post(server, "completions", model=name, prompt="the cat", max_tokens=2)
        assert response.status_code == 200, response.text
    response = post(server, "completions", model="nosuch", prompt="the cat", max_tokens=2)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_a_token_id_one_past_the_vocabulary_is_400(server: ThreadServer, model: HFModel) -> None:
    vocab = len(model.tokenizer)
    assert post(server, "completions", prompt=[vocab - 1], max_tokens=1).status_code == 200
    response = post(server, "completions", prompt=[1, vocab], max_tokens=1)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("prompt", "invalid_value")
    assert f"token id {vocab}, outside the vocabulary (0..{vocab - 1})" in error["message"]


def test_max_n_above_the_choices_limit_raises_it(
    model: HFModel, start_server: Callable[..., ThreadServer]
) -> None:
    """A server started with --max-n 2048 takes a request for 1500 choices of one prompt (the
    limit on choices is --max-n where that is larger than 1024)."""
    server = start_server(model, served_name="tiny", max_n=2048)
    response = post(server, "completions", prompt=[5, 6], n=1500, max_tokens=0, echo=True)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 1500


def test_a_request_at_the_alternatives_limit_passes_and_one_past_it_does_not(
    server: ThreadServer,
) -> None:
    """At most 4096 log-prob alternatives per token position over all choices: 256 x 16 is
    answered, 256 x 17 is a 400 naming logprobs."""
    payload: dict[str, Any] = {"prompt": [[5, 6]] * 256, "max_tokens": 0, "echo": True}
    answered = post(server, "completions", **payload, logprobs=16)
    assert answered.status_code == 200, answered.text
    assert len(answered.json()["choices"]) == 256
    refused = post(server, "completions", **payload, logprobs=17)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "logprobs"


def test_a_streamed_completion_with_logprobs_sends_them_with_its_text(
    server: ThreadServer,
) -> None:
    """A streamed legacy completion with ``logprobs`` sends its log-probs (the plain answer's)
    in the chunk with its text; every chunk is a ``text_completion``, as OpenAI's are."""
    payload = {"prompt": "the cat", "max_tokens": 4, "temperature": 0, "logprobs": 2}
    whole = post(server, "completions", **payload).json()
    assert whole["object"] == "text_completion"
    chunks, done = stream_completion(server, payload)
    assert done
    assert {c["object"] for c in chunks} == {"text_completion"}
    (choice,) = whole["choices"]
    sent = [c["choices"][0] for c in chunks]
    assert "".join(s["text"] for s in sent) == choice["text"]
    assert [s["logprobs"] for s in sent if s["logprobs"]] == [choice["logprobs"]]
    assert sent[-1]["finish_reason"] == choice["finish_reason"]


def test_requests_without_a_seed_are_sampled_anew(server: ThreadServer) -> None:
    """Two requests alike without a seed get independent samples, as from OpenAI and vLLM."""
    payload = {"prompt": "the cat", "max_tokens": 12, "temperature": 1.0}
    texts = {post(server, "completions", **payload).json()["choices"][0]["text"] for _ in range(3)}
    assert len(texts) == 3


def test_a_model_refusing_a_completion_is_a_400_with_the_first_line_of_why(
    model: HFModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PoiseError from the model (it refuses the request's values) is the request's fault: a
    400 with the error's first line, as a chat completion's refusal is."""

    from poise.errors import PoiseError
    from poise.serve.app import create_app
    from poise.serve.schema import ServeConfig

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PoiseError("top_k 3 is not allowed here\n(a second line of detail)")

    monkeypatch.setattr(model, "complete", refuse)
    app = create_app(model, ServeConfig(served_name="tiny"))

    response = _post_in_process(app)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["message"]) == (
        "invalid_request_error",
        "top_k 3 is not allowed here",
    )
