"""What ``poise serve`` accepts and answers: its config, request parsing and OpenAI-style errors.

Requests follow OpenAI's chat completions schema (plus vLLM's ``top_k`` extension). Parsing is
done by hand on top of pydantic so that every malformed request ends in the OpenAI error shape
with status 400 and the offending ``param`` named, never a 422 or a 500::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "top_p", "code": ...}}
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from poise.config import PathStr, Sampling, StrictModel
from poise.errors import parse_json
from poise.models.base import Chat, Message, chat_template_kwargs_label
from poise.serve.continuous import SHUTDOWN


class ServeConfig(StrictModel):
    """Settings of ``poise serve``; each field is one CLI flag."""

    model: PathStr = Field(
        default="organism", description="model spec to serve (any name load_model takes)"
    )
    model_options: dict[str, Any] = Field(
        default_factory=dict,
        description="backend options of the model (device, dtype, chat_template_kwargs, ...)",
    )
    host: str = Field(default="127.0.0.1", description="interface to listen on")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port")
    max_batch: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="most rows decoding together (engine) or chats in one generate call",
    )
    join_rows: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="most new rows that join a running batch at one step (continuous batching)",
    )
    join_wait_ms: float = Field(
        default=50.0,
        ge=0.0,
        le=10_000.0,
        description=(
            "while decoding steps are faster than this, new requests wait for join_rows "
            "company or this long before they join (fewer prefill passes on small models)"
        ),
    )
    batch_window_ms: float = Field(
        default=5.0,
        ge=0.0,
        le=10_000.0,
        description="how long an idle server waits for more requests before it starts",
    )
    max_tokens_limit: int = Field(
        default=2048, ge=1, le=32768, description="largest max_tokens a request may ask for"
    )
    max_n: int = Field(default=128, ge=1, le=4096, description="largest n a request may ask for")
    served_name: str | None = Field(
        default=None, description="model name clients send (default: the --model spec)"
    )
    api_key: str | None = Field(
        default=None,
        repr=False,
        description="API key clients must send (Authorization: Bearer KEY) on every route but "
        "/health; none: no key asked",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="largest request body accepted, in bytes (a larger one gets a 413)",
    )
    firewall: str | None = Field(
        default=None, description="firewall folder (poise firewall fit): refuse off-role requests"
    )
    firewall_role: str | None = Field(
        default=None, description="the role whose zone requests must fall in (with --firewall)"
    )

    @property
    def name(self) -> str:
        return self.served_name or self.model


class RequestError(Exception):
    """A request the server refuses, with what the OpenAI error body needs."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, param=self.param, code=self.code, type=self.type)


def shutdown_error() -> RequestError:
    """What a request the server ended because it is stopping gets (a 503)."""
    return RequestError(SHUTDOWN, status=503, type="server_error", code="server_shutting_down")


def error_body(
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type: str = "invalid_request_error",
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# -- the request body ------------------------------------------------------------------------------


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class _MessageIn(BaseModel):
    # ``name`` and other per-message fields change nothing here: ignored.
    model_config = ConfigDict(extra="ignore", strict=True)
    role: str
    # None (or absent) only in an assistant message, as OpenAI's schema allows; see parse_request
    content: str | list[_TextPart] | None = None


class _RequestIn(BaseModel):
    # Strict: "0.5" is not a temperature and true is not an n. Unknown fields are checked
    # separately (see _UNSUPPORTED) instead of being refused, because clients send many
    # harmless ones (user, metadata, stream_options ...).
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: str
    messages: list[_MessageIn] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    # vLLM's extension: -1 (or 0) turns it off.
    top_k: StrictInt | None = Field(None, ge=-1)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    n: StrictInt | None = None
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    # read by no one, but typed as OpenAI's schema types it: "user": 5 is a 400 there too
    user: str | None = None


# the body's schema, for the OpenAPI description (poise.serve.openapi)
ChatRequestBody = _RequestIn

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Parameters that change the output but that poise serve cannot honour, with the values that
# mean "off". A request that turns one on is refused rather than silently answered wrongly.
# vLLM's sampling extensions, which chat and legacy completions share (a request for vLLM sends
# them expecting them honoured); any guided_* field is refused too (check_unsupported).
VLLM_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "min_p": (None, 0, 0.0),
    "min_tokens": (None, 0),
    "ignore_eos": (None, False),
    "stop_token_ids": (None, []),
    "use_beam_search": (None, False),
    "length_penalty": (None, 1, 1.0),
    "prompt_logprobs": (None,),
    "structured_outputs": (None,),
    "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, True),
    "truncate_prompt_tokens": (None,),
    "allowed_token_ids": (None,),
    "bad_words": (None, []),
    "logits_processors": (None, []),
    "return_tokens_as_token_ids": (None, False),
}
_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    # a tool call asked for ("required", a named function) cannot be made without tools; OpenAI
    # and vLLM refuse a tool_choice without tools, and "none" / "auto" ask for nothing here
    "tool_choice": (None, "none", "auto"),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "best_of": (None, 1),
    **VLLM_UNSUPPORTED,
    # vLLM's chat extensions that change the prompt the template renders: the server always
    # renders the chat as given with the generation prompt (an assistant prefill starts a new
    # turn), with the model's own template and no special tokens added, and answers with a new
    # message (vLLM's echo would start it with the last message)
    "add_generation_prompt": (None, True),
    "continue_final_message": (None, False),
    "chat_template": (None,),
    "chat_template_kwargs": (None, {}),
    "documents": (None, []),
    "add_special_tokens": (None, False),
    "echo": (None, False),
}

# Fields that take one of several types: what a value that is none of them should be.
_UNION_TYPES = {
    "stop": "a string or a list of strings",
    "content": "a string or a list of text parts",
    "prompt": "a string, a list of strings, a list of token ids or a list of such lists",
}

_PYDANTIC_CODES = {
    "missing": "missing_required_parameter",
    "too_short": "invalid_value",
    "extra_forbidden": "unknown_parameter",
}


@dataclass(frozen=True)
class ChatRequest:
    """A parsed, validated chat completion request.

    ``sampling.seed`` is the client's seed when ``seeded``; otherwise it is a placeholder and
    the batcher draws a fresh random seed (OpenAI semantics: no seed, no reproducibility).
    """

    model: str
    chat: Chat
    sampling: Sampling
    seeded: bool
    stream: bool
    include_usage: bool
    # no max_tokens given: sampling.max_new_tokens is a ceiling, and the request gets what is
    # left of the model's context under it (poise.models.context.fit_context)
    fill_max_tokens: bool = False
    # per-token log-probs of the answer, with this many alternatives (poise.serve.logprobs)
    logprobs: bool = False
    top_logprobs: int = 0


def parse_request(raw: bytes, config: ServeConfig) -> ChatRequest:
    """Bytes of a request body -> :class:`ChatRequest`, or :class:`RequestError` (400)."""
    data = read_body(raw)
    if data.get("messages") == []:
        raise RequestError(
            "messages must hold at least one message", param="messages", code="invalid_value"
        )
    try:
        req = _RequestIn.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None

    if _same_template_variables(data.get("chat_template_kwargs"), config):
        # the variables the served model renders every chat with already (a poise client
        # given the server's own --model-option sends them in each request)
        data = {k: v for k, v in data.items() if k != "chat_template_kwargs"}
    check_unsupported(data, _UNSUPPORTED)

    chat: Chat = []
    for i, message in enumerate(req.messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise RequestError(
                f"unknown role {message.role!r} in messages[{i}] "
                f"(expected one of: {', '.join(_ROLES)})",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        if message.content is None and role != "assistant":
            # OpenAI's schema lets only an assistant message go without content (vLLM reads
            # any null content as empty)
            given = "content" in data["messages"][i]
            raise RequestError(
                f"messages[{i}].content must be {_UNION_TYPES['content']}"
                if given
                else f"messages[{i}].content is required",
                param=f"messages[{i}].content",
                code="invalid_type" if given else "missing_required_parameter",
            )
        # text parts are one text each, joined by a newline as vLLM joins them for a chat
        # template that takes a string (vllm/entrypoints/chat_utils.py); an assistant message
        # without content is an empty one, as vLLM reads it
        content = (
            ""
            if message.content is None
            else message.content
            if isinstance(message.content, str)
            else "\n".join(part.text for part in message.content)
        )
        check_text(content, f"messages[{i}].content")
        chat.append(Message(role=role, content=content))

    if (
        req.max_tokens is not None
        and req.max_completion_tokens is not None
        and req.max_tokens != req.max_completion_tokens
    ):
        raise RequestError(
            "max_tokens and max_completion_tokens disagree; send only one",
            param="max_completion_tokens",
            code="invalid_value",
        )
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else None
    max_param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, max_param = req.max_tokens, "max_tokens"
    fill_max_tokens = max_tokens is None
    if max_tokens is None:
        # OpenAI's default is "as much as allowed": what is left of the context once the prompt
        # is counted (by the scheduler, which owns the tokenizer), at most this limit.
        max_tokens = config.max_tokens_limit
    elif not 1 <= max_tokens <= config.max_tokens_limit:
        raise RequestError(
            f"{max_param} must be between 1 and {config.max_tokens_limit}, got {max_tokens}",
            param=max_param,
            code="invalid_value",
        )

    sampling = parse_sampling(req, config, max_tokens)

    if req.top_logprobs and not req.logprobs:
        raise RequestError(
            "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value"
        )
    check_stream_options(req.stream, req.stream_options)
    include_usage = bool((req.stream_options or {}).get("include_usage", False))
    return ChatRequest(
        model=req.model,
        chat=chat,
        sampling=sampling,
        seeded=req.seed is not None,
        stream=bool(req.stream),
        include_usage=include_usage,
        fill_max_tokens=fill_max_tokens,
        logprobs=bool(req.logprobs),
        top_logprobs=req.top_logprobs or 0,
    )


def read_body(raw: bytes) -> dict[str, Any]:
    """A request body's JSON object, or a 400 ``invalid_json`` (``invalid_type`` for JSON that is
    not an object). Every way the bytes can fail to be JSON is the client's: a ``ValueError``
    (a syntax error, bytes that are not text, an integer of more digits than Python converts)
    or a ``RecursionError`` (nesting deeper than the parser goes)."""
    try:
        data = parse_json(raw)
    except RecursionError:
        raise RequestError(
            "the request body is JSON nested too deeply", code="invalid_json"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(
            f"the request body is not valid JSON ({exc})", code="invalid_json"
        ) from None
    except ValueError as exc:
        # int("9" * 5000) refuses past sys.get_int_max_str_digits(), with advice for Python
        # programmers that a client cannot follow; no number of a valid request is that long
        why = (
            f"a number of more than {sys.get_int_max_str_digits()} digits"
            if "digits" in str(exc)
            else str(exc).splitlines()[0]
            if str(exc)
            else type(exc).__name__
        )
        raise RequestError(
            f"the request body is not valid JSON for this server ({why})", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object", code="invalid_type")
    return data


def parse_sampling(req: Any, config: ServeConfig, max_new_tokens: int) -> Sampling:
    """The ``Sampling`` of a chat or legacy completion request body (fields ``temperature``,
    ``top_p``, ``top_k``, ``n``, ``seed``, ``stop``), with OpenAI's defaults: temperature 1
    (sampling, not greedy), top_p 1, seed 0 when none is given."""
    n = parse_n(req.n, config)
    stop = parse_stop(req.stop)
    try:
        return Sampling(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=max(0, req.top_k or 0),
            max_new_tokens=max_new_tokens,
            n=n,
            seed=0 if req.seed is None else req.seed,
            stop=stop,
        )
    except ValidationError as exc:
        raise validation_error(exc) from None


_GUIDED_SETTINGS = frozenset({"guided_decoding_backend", "guided_whitespace_pattern"})
# what to do instead, for a field a client is likely to send with a reason
_UNSUPPORTED_HINTS = {
    "chat_template_kwargs": (
        "; the server renders every chat alike: start it with --model-option "
        "chat_template_kwargs=JSON to set template variables for its model (a request may "
        "then give those same variables)"
    ),
}


def _same_template_variables(asked: object, config: ServeConfig) -> bool:
    """Whether a request's ``chat_template_kwargs`` are exactly those the server was started
    with (``--model-option chat_template_kwargs=JSON``): the same label in the model's name
    (compact sorted JSON, so ``true`` is not ``1``)."""
    served = config.model_options.get("chat_template_kwargs")
    if not isinstance(asked, dict) or not asked or not isinstance(served, dict):
        return False
    return chat_template_kwargs_label(asked) == chat_template_kwargs_label(served)


def check_unsupported(data: dict[str, Any], unsupported: dict[str, tuple[object, ...]]) -> None:
    """A 400 ``unsupported_parameter`` for the first field of ``unsupported`` that ``data`` turns
    on (a value other than its "off" ones), or any vLLM ``guided_*`` field (guided decoding) that
    is not null."""
    for key, off_values in unsupported.items():
        if key in data and not _is_off(data[key], off_values):
            raise RequestError(
                f"{key} is not supported by poise serve{_UNSUPPORTED_HINTS.get(key, '')}",
                param=key,
                code="unsupported_parameter",
            )
    for key, value in data.items():
        # the backend and whitespace options only tune a guided decoding asked for otherwise
        if key in _GUIDED_SETTINGS:
            continue
        if key.startswith("guided_") and value is not None:
            raise RequestError(
                f"{key} is not supported by poise serve (no guided decoding)",
                param=key,
                code="unsupported_parameter",
            )


def _is_off(value: object, off_values: tuple[object, ...]) -> bool:
    # Python's True == 1 and 0 == False: "length_penalty": true or "ignore_eos": 1 is not an off
    # value, so booleans only match booleans.
    return any(
        value == off and isinstance(value, bool) == isinstance(off, bool) for off in off_values
    )


def check_stream_options(stream: bool | None, stream_options: object) -> None:
    """``stream_options`` without ``stream: true`` is a 400, as OpenAI and vLLM answer it, and
    so is an ``include_usage`` that is not a boolean (``"no"`` would read as true)."""
    if stream_options is not None and not stream:
        raise RequestError(
            "stream_options is only allowed when stream is true",
            param="stream_options",
            code="invalid_value",
        )
    usage = stream_options.get("include_usage") if isinstance(stream_options, dict) else None
    if usage is not None and not isinstance(usage, bool):
        raise RequestError(
            f"stream_options.include_usage must be a boolean (got {usage!r})",
            param="stream_options.include_usage",
            code="invalid_type",
        )


def parse_n(value: int | None, config: ServeConfig) -> int:
    """A request's ``n`` (default 1), within ``--max-n``."""
    n = 1 if value is None else value
    if not 1 <= n <= config.max_n:
        raise RequestError(
            f"n must be between 1 and {config.max_n}, got {n}", param="n", code="invalid_value"
        )
    return n


def parse_stop(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """A request's stop strings: none, one or a list; never empty, always valid Unicode."""
    if value is None:
        return ()
    stop = (value,) if isinstance(value, str) else tuple(value)
    if any(s == "" for s in stop):
        raise RequestError("stop strings must not be empty", param="stop", code="invalid_value")
    for text in stop:
        check_text(text, "stop")
    return stop


def check_text(text: str, param: str) -> None:
    """Refuse text that is not valid Unicode: JSON's ``\\ud800`` escapes decode to lone
    surrogates, which no tokenizer can encode. The request's fault, so a 400 for it alone
    rather than a failure of the batch it would join."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            f"{param} holds a lone surrogate ({text[exc.start]!r} at character {exc.start}), "
            "which is not valid Unicode text",
            param=param,
            code="invalid_value",
        ) from None


def validation_error(exc: ValidationError) -> RequestError:
    """The first problem of a pydantic error as a 400 naming the parameter."""
    return error_from_details(list(exc.errors(include_url=False)))


def error_from_details(errors: list[Any]) -> RequestError:
    """A 400 from pydantic-style error details (``loc``, ``msg``, ``type``, ``input``), as found
    in a ``ValidationError`` or FastAPI's ``RequestValidationError``."""
    if not errors:
        return RequestError("invalid request")
    err = errors[0]
    kind = str(err.get("type", ""))
    if kind == "json_invalid":
        return RequestError("the request body is not valid JSON", code="invalid_json")
    # Drop FastAPI's "body" prefix and pydantic's union-branch names ("str", "list[_TextPart]").
    raw = [p for p in err.get("loc", ()) if p != "body"]
    loc = [p for p in raw if not _is_union_branch(p)]
    param = _param_path(loc)
    branch = next((i for i, p in enumerate(raw) if _is_union_branch(p)), None)
    if branch is not None:
        # A value none of the union's types accepts: pydantic reports the first type's error
        # ("should be a valid string"), as if no other were allowed; name them all instead.
        field = raw[:branch]
        name = next((p for p in reversed(field) if isinstance(p, str)), "")
        if name in _UNION_TYPES:
            param = _param_path(field)
            message = f"{param} must be {_UNION_TYPES[name]}"
            value = err.get("input")
            if isinstance(value, (str, int, float, bool)):
                message += f" (got {value!r})"
            return RequestError(message, param=param, code="invalid_type")
    if kind == "missing":
        message = f"{param} is required"
    elif kind in ("model_type", "dict_type") and param:
        # pydantic's "a valid dictionary or instance of _MessageIn" names a class of the server
        message = f"{param} must be a JSON object"
        value = err.get("input")
        if isinstance(value, (str, int, float, bool)):
            message += f" (got {value!r})"
    else:
        message = f"{param}: {err.get('msg', 'invalid value')}" if param else str(err.get("msg"))
        value = err.get("input")
        if isinstance(value, (str, int, float, bool)):
            message += f" (got {value!r})"
    code = _PYDANTIC_CODES.get(kind, "invalid_type" if kind.endswith("_type") else "invalid_value")
    return RequestError(message, param=param or None, code=code)


def _is_union_branch(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part in {"str", "list"})


def _param_path(loc: list[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path
