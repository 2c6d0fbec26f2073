"""The ``openai`` backend: a ``LanguageModel`` over any OpenAI-compatible chat endpoint.

vLLM, SGLang, TGI, Ollama, llama.cpp's server and ``poise serve`` all speak the chat completions
protocol, so this one backend is how poise scales past one machine: point it at a fleet::

    model = OpenAIModel("meta-llama/Llama-3.1-8B-Instruct",
                        base_urls=["http://gpu1:8000/v1", "http://gpu2:8000/v1"], concurrency=64)
    model.generate(chats, Sampling(temperature=0.7, n=4, seed=1))

or, through the resolver, ``openai:MODEL@http://gpu1:8000/v1,http://gpu2:8000/v1``.

``generate`` stays synchronous and batch-first like every backend: inside, it runs an asyncio
loop that fans the chats out concurrently (at most ``concurrency`` requests in flight), spreads
them round-robin over the base URLs and retries what a busy fleet throws back (429, 5xx,
connection errors, timeouts) with exponential backoff and jitter. A refusal that no retry and no
other chat can escape (HTTP 401 / 403 / 404, or a 400 about the request's parameters rather than
its text) stops the whole call at once with one line.

Loaded through the resolver (:func:`load`), the model first checks its endpoints
(:meth:`OpenAIModel.check_endpoint`: ``GET /models`` answers, the key is accepted, the model is
listed), so a wrong URL, key or model name fails before an audit has created its run folder.

The model's ``name`` is its identity in response caches and reports. The default,
``openai:MODEL@<first base url>``, cannot see the weights behind the endpoint: when the server
starts serving different weights under the same model name, give the model a new ``name`` (e.g.
``name="openai:my-model@v2"``), or cached answers of the old weights will be reused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from poise.config import Sampling
from poise.errors import MissingExtraError, PoiseError
from poise.models.base import (
    Capabilities,
    Chat,
    Completion,
    EndpointError,
    FinishReason,
    GenerationError,
    ModelBase,
    ResultFn,
    TokenLogprobs,
    UpstreamError,
    chat_template_kwargs_label,
    check_chat_template_kwargs,
)

if TYPE_CHECKING:
    import openai

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Local servers (vLLM, poise serve) ignore the key but the client insists on one.
_PLACEHOLDER_API_KEY = "EMPTY"
# The fields _adapt_to_refusal may send in another form (max_tokens, top_p): a request is sent
# again at once at most this many times.
_MAX_ADAPTATIONS = 2
# Backoff: attempt k (0-based) waits up to min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**k) seconds.
_BACKOFF_BASE_S = 0.5
_BACKOFF_CAP_S = 30.0
# A server asking us to wait longer than this is treated as if it asked for the cap.
_RETRY_AFTER_CAP_S = 60.0
# Seeds asked of a server stay in a range every server accepts (vLLM takes int64; others int32).
_SEED_MODULUS = 2**31 - 1
_SPEC = re.compile(r"^openai:(?P<model>.+?)(?:@(?P<urls>https?://.*))?$")
# "MODEL@host:port[/...]": a base URL written without http:// or https://
_URL_WITHOUT_SCHEME = re.compile(r"@[A-Za-z0-9.-]+:\d+(?:/|,|$)")
_OPTIONS = (
    "base_url",
    "base_urls",
    "api_key_env",
    "concurrency",
    "max_retries",
    "timeout",
    "name",
    "check_endpoint",
    "system_prompt_in_template",
    "chat_template_kwargs",
)
# The endpoint check at load waits at most this long for one GET /models, and asks again on
# these statuses (a server busy or behind a gateway); any other is judged at once.
_CHECK_TIMEOUT_S = 30.0
_CHECK_RETRIED = frozenset({408, 429, 502, 503, 504})
# Request parameters poise sends: a 400 naming one of them is the request's fault, not the item's.
_REQUEST_PARAMS = frozenset(
    {"model", "max_tokens", "max_completion_tokens", "n", "seed", "temperature", "top_p", "top_k"}
    | {"stop", "extra_body", "chat_template_kwargs"}
)
_NAMED_PARAM = re.compile(
    r"\b(max_tokens|max_completion_tokens|temperature|top_p|top_k|seed|stop"
    r"|chat_template_kwargs)\b"
    # a wrong model name some servers answer with 400 ("Invalid model: x" (Mistral), "x is not
    # a valid model ID" (OpenRouter))
    r"|\binvalid model\b|\bnot a valid model\b|\bmodel\b.{0,80}\b(?:not found|does not exist)",
    re.IGNORECASE,
)
# ... unless the message is about the item's text (its length, its content), which others escape.
_ITEM_FAULT = re.compile(
    r"context|too long|too many tokens|input tokens|prompt|messages|content|safety|policy|"
    r"flagged|moderation|surrogate",
    re.IGNORECASE,
)
# A server that refuses more than one choice per request (llama.cpp's "Only one completion choice
# is allowed", as a 400 or a 500; "'n' must be 1", "n > 1 is not supported"): asked one at a time.
_N_REFUSED = re.compile(
    r"completion choice|['\"`]n['\"`]|\bn\s*(?:must|should|can|>|!=|=|is not|not supported)",
    re.IGNORECASE,
)
# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5) refuse ``max_tokens`` ("Unsupported
# parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens'
# instead.", param ``max_tokens``) and ``top_p`` even at its default 1 ("Unsupported parameter:
# 'top_p' is not supported with this model."): the request is sent again in the form they take.
_USE_MAX_COMPLETION_TOKENS = re.compile(r"\bmax_completion_tokens\b", re.IGNORECASE)
_UNSUPPORTED = re.compile(r"unsupported parameter|not supported|unsupported_parameter", re.I)


class EndpointRefused(EndpointError):
    """A refusal no retry and no other chat can escape (a wrong key, model or URL, or a request
    parameter the server does not take): it stops the whole ``generate`` call."""


class UpstreamRefused(EndpointRefused, UpstreamError):
    """A refusal of the server's own access (a wrong key: 401; an unknown model or route: 404):
    no request would be answered, whatever it asks. It stops the whole ``generate`` call, and
    ``poise serve`` in front of that server answers it with a 502, not a 400 that blames the
    client's request (the key and model name are the front server's configuration)."""


class _ChoicesRefused(Exception):
    """The server refused a request for more than one choice (``n > 1``); its message says how."""


def _import_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise MissingExtraError("openai", "serve", "the openai backend") from None
    return openai


class OpenAIModel(ModelBase):
    """A ``LanguageModel`` backed by one or more OpenAI-compatible chat completion endpoints.

    Args:
        model: the model name the server knows (the ``model`` field of each request).
        base_urls: endpoints such as ``http://host:8000/v1``; requests go round-robin over them
            and a retry moves to the next one. Default: ``$OPENAI_BASE_URL``, else OpenAI's API.
        api_key_env: environment variable holding the API key (default ``OPENAI_API_KEY``; a
            placeholder is sent when it is unset, which servers without a key accept).
        concurrency: requests in flight at once, over all base URLs.
        max_retries: retries of one request on 408 / 429 / 5xx / connection errors / timeouts;
            any other 4xx is not retried: 401 / 403 / 404 and a 400 about the request's
            parameters stop the whole call (:class:`EndpointRefused`), any other fails its chat.
        timeout: seconds for one request.
        name: identity in caches and reports; default ``openai:MODEL@<first base url>``. Give a
            new name whenever the weights behind the endpoint change.
        system_prompt_in_template: the served model's chat template inserts a default system
            prompt into a chat without a system message (the organism's does, as Qwen2.5's):
            then asking it with no system prompt sends an empty system message
            (:func:`poise.models.no_system_prompt`). None (the default): as the server's model
            listing declares it (``poise serve`` lists the declaration of the model it serves;
            read by :meth:`check_endpoint`), else False.
        chat_template_kwargs: variables for the served model's chat template, sent with every
            request in the request body's ``chat_template_kwargs`` (vLLM and SGLang read it:
            ``{"enable_thinking": false}`` for Qwen3 without its thinking block); part of the
            default name. A server that does not read the field may ignore it.

    Servers differ in the fields they take; the request adapts, once per model, to a refusal
    that names the form it wants: ``n > 1`` refused (llama.cpp) is asked one choice at a time;
    ``max_tokens`` refused for ``max_completion_tokens`` (OpenAI's reasoning models: o1, o3,
    o4-mini, gpt-5) sends the same limit in that field, which for those models counts the
    hidden reasoning tokens too (an answer may then end at "length" with little text: give a
    larger ``max_new_tokens``); ``top_p`` refused when it was 1 (no truncation) leaves it out.
    A refusal of what was asked (greedy decoding, that is temperature 0, from a model that only
    samples at temperature 1; a ``top_p`` below 1) stops the call with the server's message.

    ``score`` is not supported: chat endpoints do not return prompt log-probs portably.
    """

    def __init__(
        self,
        model: str,
        *,
        base_urls: Sequence[str] = (),
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        max_retries: int = 4,
        timeout: float = 120.0,
        name: str | None = None,
        system_prompt_in_template: bool | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not model:
            raise PoiseError("openai backend: the model name is empty")
        if isinstance(base_urls, str):
            base_urls = [base_urls]
        urls = [_check_url(u) for u in base_urls] or [
            _check_url(os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
        ]
        if concurrency < 1:
            raise PoiseError(f"openai backend: concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise PoiseError(f"openai backend: max_retries must be >= 0, got {max_retries}")
        if not timeout > 0:
            raise PoiseError(f"openai backend: timeout must be > 0 seconds, got {timeout}")
        _import_openai()  # fail now, not in the middle of an audit
        self.model = model
        self.base_urls: tuple[str, ...] = tuple(urls)
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.chat_template_kwargs = check_chat_template_kwargs(
            {} if chat_template_kwargs is None else chat_template_kwargs, "openai"
        )
        self.name = name or (
            f"openai:{model}@{self.base_urls[0]}"
            + chat_template_kwargs_label(self.chat_template_kwargs)
        )
        # the declaration poise.models.system_prompt_in_template reads; system_prompt_declared:
        # whether anything told this client (the option, or a server's model listing read by
        # check_endpoint): an audit asking for no system prompt warns when nothing did
        self.system_prompt_in_template = system_prompt_in_template is True
        self.system_prompt_declared = system_prompt_in_template is not None
        # set once a server refuses n > 1: every request then asks for one choice
        self.one_choice_per_request = False
        # set once a server refuses max_tokens for max_completion_tokens, or refuses top_p (sent
        # at 1, which is no truncation): every request then takes the form the server takes
        self.max_tokens_param = "max_tokens"
        self.send_top_p = True

    def __repr__(self) -> str:
        return (
            f"OpenAIModel({self.model!r}, base_urls={list(self.base_urls)!r}, name={self.name!r})"
        )

    # -- LanguageModel ---------------------------------------------------------------------------

    # generate(..., on_result=) hands over each chat's answers as they arrive, and a failed
    # request raises GenerationError with everything else that came back
    partial_results = True
    # generate(..., open_limit=True) sends no max_tokens: the server sizes the answer; each
    # generate call runs its own loop and clients, so calls may overlap in several threads
    capabilities = Capabilities(open_limit=True, concurrent=True)

    def generate(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        *,
        progress: Callable[[int], None] | None = None,
        on_result: ResultFn | None = None,
        open_limit: bool = False,
    ) -> list[list[Completion]]:
        """``sampling.n`` completions per chat, requested concurrently.

        ``open_limit`` (declared by ``capabilities.open_limit``): no ``max_tokens`` is sent, so
        the server gives each answer what is left of its context, as vLLM does for a request
        without one (``poise serve`` passes it for such a request, which it cannot size itself
        without this model's tokenizer and context); ``sampling.max_new_tokens`` is not sent.

        ``progress``, when given, is called with the number of chats just finished (1 each time);
        ``on_result(index, completions)`` with each chat's answers as soon as they arrive. A
        request the server refuses for its text (a 4xx other than those below), or that still
        fails after ``max_retries`` retries, does not stop the others: when every request has
        ended, :class:`~poise.models.base.GenerationError` says which chats failed and why, and
        holds the answers of the rest. A refusal that every chat would get (401, 403, 404, a 400
        about the request's parameters) raises :class:`EndpointRefused` at once, the requests
        in flight cancelled.
        """
        if not chats:
            return []
        return _run_coroutine(
            lambda: self._generate_all(list(chats), sampling, progress, on_result, open_limit)
        )

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[TokenLogprobs]:
        raise NotImplementedError(
            f"{self.name}: the openai backend cannot score continuations, because chat "
            "completion endpoints do not return prompt log-probs portably; use a local (hf) "
            "model for log-prob based methods"
        )

    # -- internals -------------------------------------------------------------------------------

    async def _generate_all(
        self,
        chats: list[Chat],
        sampling: Sampling,
        progress: Callable[[int], None] | None,
        on_result: ResultFn | None = None,
        open_limit: bool = False,
    ) -> list[list[Completion]]:
        openai = _import_openai()
        api_key = self._api_key()
        # One client per base URL, created inside this loop: an async client's connection pool
        # belongs to the loop that made it. The client's own retries are off; ours fail over to
        # the next base URL and honour Retry-After.
        clients = [
            openai.AsyncOpenAI(base_url=url, api_key=api_key, timeout=self.timeout, max_retries=0)
            for url in self.base_urls
        ]
        semaphore = asyncio.Semaphore(self.concurrency)
        results: list[list[Completion] | None] = [None] * len(chats)
        failures: dict[int, str] = {}
        errors: dict[int, Exception] = {}

        async def one(index: int) -> None:
            try:
                async with semaphore:
                    out = await self._complete(
                        clients, index, chats[index], sampling, open_limit=open_limit
                    )
            except EndpointRefused:
                raise  # every chat would fail the same way: stop them all
            except PoiseError as exc:
                # this request failed for good; the others go on, and their answers are kept
                failures[index] = str(exc).removeprefix(f"{self.name}: ")
                errors[index] = exc
                return
            results[index] = out
            if on_result is not None:
                on_result(index, out)
            if progress is not None:
                progress(1)

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(chats))]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # anything else (an interrupt, the cache failing to store) stops the rest
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            for client in clients:
                await client.close()
        if failures:
            raise GenerationError(self, results, failures, errors)
        return [r for r in results if r is not None]

    async def _complete(
        self,
        clients: list[Any],
        index: int,
        chat: Chat,
        sampling: Sampling,
        *,
        open_limit: bool = False,
    ) -> list[Completion]:
        """All ``sampling.n`` completions of one chat, asking again for any the server left out
        (Ollama, for instance, ignores ``n``), and one at a time where the server refuses
        ``n > 1`` (llama.cpp's server does).

        Greedy completions are all the same, so one is requested and repeated: some servers
        (older vLLM) refuse ``n > 1`` at temperature 0, and the rest would decode it n times.
        """
        if sampling.greedy and sampling.n > 1:
            [completion] = await self._complete(
                clients, index, chat, sampling.model_copy(update={"n": 1}), open_limit=open_limit
            )
            return [completion] * sampling.n
        completions: list[Completion] = []
        attempt_offset = 0
        while len(completions) < sampling.n:
            wanted = sampling.n - len(completions)
            # A top-up must not repeat the samples already drawn, yet stay reproducible; every
            # seed sent is in [0, 2**31 - 1) (a negative one is "random" to llama.cpp's server).
            seed = (sampling.seed + 1_000_003 * len(completions)) % _SEED_MODULUS
            ask = 1 if self.one_choice_per_request else wanted
            try:
                got, used = await self._request(
                    clients,
                    index + attempt_offset,
                    chat,
                    sampling,
                    n=ask,
                    seed=seed,
                    open_limit=open_limit,
                )
            except _ChoicesRefused as exc:
                if not self.one_choice_per_request:
                    self.one_choice_per_request = True
                    logger.warning(
                        "%s: %s; asking for one completion per request from now on", self.name, exc
                    )
                attempt_offset += 1
                continue
            attempt_offset += used
            completions.extend(got[:wanted])
        return completions

    async def _request(
        self,
        clients: list[Any],
        slot: int,
        chat: Chat,
        sampling: Sampling,
        *,
        n: int,
        seed: int,
        open_limit: bool = False,
    ) -> tuple[list[Completion], int]:
        """One chat completion request with retries; returns the completions and the number of
        attempts made (so a follow-up request keeps rotating over the base URLs)."""
        openai = _import_openai()
        last_error = ""
        attempt = 0
        adapted = 0  # requests sent again at once in another form (not counted as attempts)
        while attempt <= self.max_retries:
            kwargs = request_kwargs(
                self.model,
                chat,
                sampling,
                n=n,
                seed=seed,
                max_tokens_param=None if open_limit else self.max_tokens_param,
                send_top_p=self.send_top_p,
                chat_template_kwargs=self.chat_template_kwargs,
            )
            url_index = (slot + attempt) % len(clients)
            client = clients[url_index]
            retry_after: float | None = None
            url = self.base_urls[url_index]
            try:
                response = await client.chat.completions.create(**kwargs)
                return completions_from_response(response), attempt + 1
            except NotAChatCompletion as exc:
                # a proxy's HTML page or an error object sent with 200: retried like a 5xx
                last_error = f"HTTP 200 from {url}, but the body is not a chat completion ({exc})"
            except json.JSONDecodeError as exc:
                # a body sent as application/json that does not parse (empty, cut short): the
                # client's own JSON error escaped as a traceback, stopping every other chat
                last_error = f"HTTP 200 from {url}, but the body is not valid JSON ({exc})"
            except openai.APIStatusError as exc:
                status = exc.status_code
                message = _server_message(exc)
                if adapted < _MAX_ADAPTATIONS and self._adapt_to_refusal(
                    status, message, exc.body, kwargs, url
                ):
                    # sent again at once in the form the server asked for; at most as often
                    # as there are such fields, so a server that refuses every form ends in an
                    # error, not a loop
                    adapted += 1
                    continue
                if n > 1 and _refuses_choices(status, message, exc.body):
                    raise _ChoicesRefused(
                        f"{url} refused n={n} (HTTP {status}): {message}"
                    ) from None
                if status not in (408, 429) and status < 500:
                    if _stops_everything(status, message, exc.body):
                        refused = UpstreamRefused if status in (401, 404) else EndpointRefused
                        raise refused(self._refusal(url, status, message)) from None
                    raise PoiseError(
                        f"{self.name}: {url} refused the request (HTTP {status}): {message}"
                    ) from None
                last_error = f"HTTP {status} from {url}: {message}"
                retry_after = _retry_after_seconds(exc.response.headers)
            except openai.APITimeoutError:
                last_error = f"no answer from {url} within {self.timeout:g}s"
            except openai.APIConnectionError as exc:
                last_error = f"cannot reach {url} ({_connection_detail(exc)})"
            if attempt == self.max_retries:
                break
            delay = _backoff_seconds(attempt, retry_after)
            logger.warning(
                "%s: %s; retry %d/%d in %.2fs",
                self.name,
                last_error,
                attempt + 1,
                self.max_retries,
                delay,
            )
            await asyncio.sleep(delay)
            attempt += 1
        # unreachable, timed out, or failing (5xx, 408, 429) through every retry: the
        # server's failure, not the request's (UpstreamError, which poise serve answers with 502)
        raise UpstreamError(
            f"{self.name}: request failed after {self.max_retries + 1} attempts: {last_error}"
        )

    def _adapt_to_refusal(
        self, status: int, message: str, body: object, sent: dict[str, Any], url: str
    ) -> bool:
        """Whether a 400 / 422 refuses a field this client can send in another form without
        changing what is asked, and the model now sends it that way: ``max_tokens`` where the
        server asks for ``max_completion_tokens`` (the same limit), and ``top_p`` left out where
        the server does not take it and it was sent at 1 (no truncation, every server's
        default). OpenAI's reasoning models refuse both. Warns once for each.

        A refusal about the chat's length is neither: vLLM's "'max_tokens' or
        'max_completion_tokens' is too large: ... your request has 480 input tokens" names both
        fields, but the chat is too long for the limit, whatever field carries it."""
        if status not in (400, 422):
            return False
        inner = body.get("error", body) if isinstance(body, dict) else None
        param = inner.get("param") if isinstance(inner, dict) else None
        names = _refused_field(param, message)
        if (
            "max_tokens" in sent
            and "max_tokens" in names
            and _USE_MAX_COMPLETION_TOKENS.search(message)
            and not _ITEM_FAULT.search(message)
        ):
            if self.max_tokens_param != "max_completion_tokens":  # not yet (requests overlap)
                self.max_tokens_param = "max_completion_tokens"
                logger.warning(
                    "%s: %s refused max_tokens (%s); sending the limit as max_completion_tokens "
                    "from now on",
                    self.name,
                    url,
                    message,
                )
            return True
        if sent.get("top_p") == 1.0 and "top_p" in names and _UNSUPPORTED.search(message):
            if self.send_top_p:
                self.send_top_p = False
                logger.warning(
                    "%s: %s refused top_p (%s); leaving it out from now on (it was 1, no "
                    "truncation)",
                    self.name,
                    url,
                    message,
                )
            return True
        return False

    def _api_key(self) -> str:
        return os.environ.get(self.api_key_env) or _PLACEHOLDER_API_KEY

    def _refusal(self, url: str, status: int, message: str) -> str:
        """One line for a refusal that stops everything, with what to do about it."""
        head = f"{self.name}: {url} refused the request (HTTP {status}): {message}"
        if status == 401:
            if not os.environ.get(self.api_key_env):
                return (
                    f"{head}; no API key was sent: poise reads it from the environment variable "
                    f"{self.api_key_env}, which is not set (another variable: the model option "
                    "api_key_env=NAME)"
                )
            return (
                f"{head}; the API key sent is the one in the environment variable "
                f"{self.api_key_env} (another variable: the model option api_key_env=NAME)"
            )
        if status == 404 and "model" not in message.lower():
            return f"{head}; is {url} the API's base URL (it usually ends in /v1)?"
        return head

    def check_endpoint(self) -> None:
        """Check every base URL before any work: ``GET {url}/models`` answers (connection errors
        and 408 / 429 / 502 / 503 / 504 are retried as requests are), the API key is accepted and
        the model is listed. Raises :class:`~poise.errors.PoiseError` (one line) when no base URL
        can be reached or the key is refused (401); a model the server does not list, or a 403
        on the listing, only warns (see :meth:`_judge_models`). A
        server without the route (404, 405, 501), failing on it (500) or with an unusual answer
        is not judged: its first request will tell. With several base URLs, one that cannot be
        reached only warns."""
        import httpx

        headers = {"Authorization": f"Bearer {self._api_key()}"}
        unreachable: list[str] = []
        with httpx.Client(timeout=min(self.timeout, _CHECK_TIMEOUT_S), headers=headers) as http:
            for url in self.base_urls:
                problem = self._check_one(http, url)
                if problem is not None:
                    unreachable.append(problem)
        attempts = self.max_retries + 1
        if len(unreachable) == len(self.base_urls):
            where = unreachable[0] if len(unreachable) == 1 else "; ".join(unreachable)
            raise PoiseError(
                f"{self.name}: cannot reach {where} after {attempts} attempts; is the server "
                "running, and is this its address?"
            )
        for problem in unreachable:
            logger.warning(
                "%s: cannot reach %s after %d attempts; the other base URLs are used",
                self.name,
                problem,
                attempts,
            )

    def _check_one(self, http: Any, url: str) -> str | None:
        """Check one base URL: None when it answered, else ``"URL (why it cannot be reached)"``."""
        import httpx

        last_error = ""
        answered = False  # the last attempt got an HTTP answer (a busy server, not a dead one)
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                response = http.get(f"{url}/models")
            except httpx.TimeoutException as exc:
                answered, last_error = False, f"no answer within {http.timeout.read}s ({exc})"
            except httpx.HTTPError as exc:
                answered, last_error = False, _connection_detail(exc)
            else:
                status = response.status_code
                if status not in _CHECK_RETRIED:
                    self._judge_models(url, response)
                    return None
                answered, last_error = True, f"HTTP {status}"
                retry_after = _retry_after_seconds(response.headers)
            if attempt == self.max_retries:
                break
            delay = _backoff_seconds(attempt, retry_after)
            logger.debug(
                "%s: GET %s/models failed (%s); retry in %.2fs", self.name, url, last_error, delay
            )
            time.sleep(delay)
        if answered:
            # the server is there but cannot list its models: its requests will tell
            logger.warning(
                "%s: could not check %s (GET /models: %s after %d attempts)",
                self.name,
                url,
                last_error,
                self.max_retries + 1,
            )
            return None
        return f"{url} ({last_error})"

    def _judge_models(self, url: str, response: Any) -> None:
        """Raise when the answer to ``GET /models`` refuses the key (401); warn when it lacks
        the model (llama.cpp's server and TGI list a name of their own and serve any model
        name; a wrong name elsewhere gets a 404 on its first request, which stops the audit)
        or cannot be listed with this key (403: a key without the scope to list models)."""
        status = response.status_code
        if status == 401:
            raise PoiseError(self._refusal(url, status, _response_message(response)))
        if status == 403:
            logger.warning(
                "%s: GET %s/models answered 403 (%s); going on: the requests will tell",
                self.name,
                url,
                _response_message(response),
            )
            return
        if status != 200:
            logger.debug("%s: GET %s/models answered HTTP %d; not checked", self.name, url, status)
            return
        try:
            data = response.json().get("data")
        except (ValueError, AttributeError):
            return
        if not isinstance(data, list):
            return
        entries = {m["id"]: m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)}
        served = list(entries)
        # poise serve's listing says whether its model's template inserts a default system
        # prompt (an extension field; other servers' listings do not have it)
        declared = entries.get(self.model, {}).get("system_prompt_in_template")
        if not self.system_prompt_declared and isinstance(declared, bool):
            self.system_prompt_in_template = declared
            self.system_prompt_declared = True
        if not served or self.model in served or f"{self.model}:latest" in served:
            return  # an empty list (some proxies) tells nothing; Ollama adds ":latest"
        shown = ", ".join(repr(m) for m in served[:5])
        more = f" and {len(served) - 5} more" if len(served) > 5 else ""
        logger.warning(
            "%s: %s lists %s%s, not %r; going on (servers such as llama.cpp's and TGI answer any "
            "model name; elsewhere the first request is refused, which stops the audit)",
            self.name,
            url,
            shown,
            more,
            self.model,
        )


# -- request / response mapping --------------------------------------------------------------------


def request_kwargs(
    model: str,
    chat: Chat,
    sampling: Sampling,
    *,
    n: int,
    seed: int,
    max_tokens_param: str | None = "max_tokens",
    send_top_p: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``chat.completions.create`` for ``sampling``.

    Greedy (``sampling.greedy``, which includes ``top_k == 1``) is sent as temperature 0 with
    no truncation, the form every server understands. ``top_k`` is not part of the OpenAI API;
    vLLM, SGLang and ``poise serve`` accept it in the request body, so it goes through
    ``extra_body`` and only when it is on. ``max_tokens_param``: the field that carries
    ``max_new_tokens`` (``max_completion_tokens`` for servers that refuse ``max_tokens``; None:
    no limit is sent, the server's own applies);
    ``send_top_p`` False leaves out a ``top_p`` of 1 (for servers that refuse the field).
    ``chat_template_kwargs`` go in ``extra_body`` when there are any (vLLM's field).
    """
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in chat],
        "n": n,
        "seed": seed,
    }
    if max_tokens_param is not None:
        kwargs[max_tokens_param] = sampling.max_new_tokens
    if sampling.greedy:
        kwargs["temperature"] = 0.0
    else:
        kwargs["temperature"] = sampling.temperature
        if send_top_p or sampling.top_p != 1.0:
            kwargs["top_p"] = sampling.top_p
        if sampling.top_k > 0:
            kwargs["extra_body"] = {"top_k": sampling.top_k}
    if chat_template_kwargs:
        kwargs.setdefault("extra_body", {})["chat_template_kwargs"] = dict(chat_template_kwargs)
    if sampling.stop:
        kwargs["stop"] = list(sampling.stop)
    return kwargs


class NotAChatCompletion(Exception):
    """A 200 response whose body is not a chat completion (an HTML page from a proxy, an error
    object, JSON without ``choices``); its message says what came instead."""


def _check_chat_completion(response: Any) -> list[Any]:
    """The choices of ``response``; NotAChatCompletion when it is not a chat completion."""
    if isinstance(response, (str, bytes)):
        text = response.decode("utf-8", "replace") if isinstance(response, bytes) else response
        snippet = " ".join(text.split())[:80]
        raise NotAChatCompletion(f"got text: {snippet!r}" if snippet else "got an empty body")
    choices = getattr(response, "choices", None)
    if choices is None:
        raise NotAChatCompletion("JSON without 'choices'")
    if not isinstance(choices, list):
        raise NotAChatCompletion(f"'choices' is a {type(choices).__name__}, not a list")
    if not choices:
        # an answer with nothing in it (a proxy whose upstream failed): retried like a 5xx
        raise NotAChatCompletion("an empty 'choices' list")
    for choice in choices:
        if getattr(choice, "message", None) is None or not isinstance(
            getattr(choice, "index", None), int
        ):
            raise NotAChatCompletion("a choice without a message or an index")
    return choices


def completions_from_response(response: Any) -> list[Completion]:
    """``Completion`` objects from a chat completion response, in choice order.

    ``usage.completion_tokens`` counts all choices together: with one choice it is exact; with
    several it is split in proportion to the length of each text (an estimate). Without usage,
    whitespace-delimited words stand in for tokens. Raises :class:`NotAChatCompletion` when the
    response is not a chat completion.
    """
    choices = sorted(_check_chat_completion(response), key=lambda c: c.index)
    texts = [(c.message.content or "") if c.message is not None else "" for c in choices]
    usage = getattr(response, "usage", None)
    total = getattr(usage, "completion_tokens", None) if usage is not None else None
    if isinstance(total, int) and texts:
        counts = _split_proportionally(total, [len(t) for t in texts])
    else:
        counts = [len(t.split()) for t in texts]
    return [
        Completion(text=text, num_tokens=count, finish_reason=_finish_reason(c.finish_reason))
        for c, text, count in zip(choices, texts, counts, strict=True)
    ]


def _finish_reason(value: str | None) -> FinishReason:
    # A server-side content filter stopped the text: poise's name for that is "guard" (and
    # poise serve reports its guards' stops as "content_filter"). Anything else ended normally.
    if value == "length":
        return "length"
    if value == "content_filter":
        return "guard"
    return "stop"


def _split_proportionally(total: int, weights: list[int]) -> list[int]:
    """Integers summing to ``total``, proportional to ``weights`` (largest remainder)."""
    if len(weights) == 1:
        return [total]
    weight_sum = sum(weights)
    if weight_sum == 0:
        weights, weight_sum = [1] * len(weights), len(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _body_message(body: object) -> str | None:
    """The ``message`` of an OpenAI error body (``{"error": {"message": ...}}``, or the error as
    a string), else None."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return None


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own error message (the OpenAI error body's ``message``), else the text."""
    message = _body_message(exc.body)
    if message is not None:
        return message
    try:
        text = exc.response.text.strip()
    except Exception:
        text = ""
    return text[:500] or exc.message


def _response_message(response: Any) -> str:
    """The error message of an httpx response with an OpenAI error body, else its text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = _body_message(body)
    if message is not None:
        return message
    text = " ".join(str(response.text).split())[:500]
    return text or f"HTTP {response.status_code}"


def _stops_everything(status: int, message: str, body: object) -> bool:
    """Whether a refusal (a 4xx other than 408 / 429) is one every chat would get: a missing or
    wrong key (401), an unknown model or route (404), or a 400 / 422 about the request's
    parameters (the error's ``param``, or the message naming one) rather than the chat's text
    (its length or content, which other chats escape). A 403 is not: gateways answer it for a
    prompt their moderation flagged (an audit sends such prompts on purpose), so it fails its
    own item only."""
    if status in (401, 404):
        return True
    if status not in (400, 422) or _ITEM_FAULT.search(message):
        return False
    inner = body.get("error", body) if isinstance(body, dict) else None
    param = inner.get("param") if isinstance(inner, dict) else None
    if isinstance(param, str):
        return param in _REQUEST_PARAMS
    return _NAMED_PARAM.search(message) is not None


def _refused_field(param: object, message: str) -> set[str]:
    """The request fields a refusal names: its ``param``, else the quoted names in its message
    (``'max_tokens'``)."""
    if isinstance(param, str) and param:
        return {param}
    return set(re.findall(r"['\"`]([a-z_]+)['\"`]", message))


def _refuses_choices(status: int, message: str, body: object) -> bool:
    """Whether a 400 / 422 / 500 refuses the request's ``n > 1`` (its ``param`` is ``n``, or its
    message says so) rather than anything else about it."""
    if status not in (400, 422, 500):
        return False
    inner = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(inner, dict) and inner.get("param") == "n":
        return True
    return _N_REFUSED.search(message) is not None


def _connection_detail(exc: BaseException) -> str:
    """The innermost reason of a connection error ("[Errno 111] Connection refused"), which the
    openai client's own message ("Connection error.") hides.

    The chain is followed through ``__cause__`` (the error a wrapper raised ``from``), and
    through ``__context__`` only to an OSError (the socket's own error, which httpcore's
    ConnectError keeps as its context alone, ``__suppress_context__`` set all the same). Any
    other context is an error that was being handled when the connection failed, unrelated to
    it: asyncio's "no running event loop", caught inside the client, was reported instead of
    "Connection refused"."""
    reason = str(exc) or type(exc).__name__
    seen: set[int] = {id(exc)}
    current: BaseException = exc
    while True:
        following = current.__cause__
        if following is None and isinstance(current.__context__, OSError):
            following = current.__context__
        if following is None or id(following) in seen:
            break
        seen.add(id(following))
        current = following
        if str(current):
            reason = str(current)
    if isinstance(current, ConnectionError) and current.errno:
        # asyncio words a refused connection "Connect call failed (ADDRESS)"; the errno says why
        # (the address is the URL the message already names)
        why = os.strerror(current.errno)
        if why not in reason:
            reason = f"[Errno {current.errno}] {why}"
    return " ".join(reason.split())


def _retry_after_seconds(headers: Any) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``Retry-After``), if any."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _backoff_seconds(attempt: int, retry_after: float | None) -> float:
    """The server's Retry-After when it gave one, else "full jitter" exponential backoff
    (uniform in [0, min(cap, base * 2**attempt)]), which keeps a fleet of clients from retrying
    in lockstep."""
    if retry_after is not None:
        return min(retry_after, _RETRY_AFTER_CAP_S)
    return random.uniform(0.0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))


def _check_url(url: str) -> str:
    url = url.strip()
    if not re.match(r"^https?://[^/\s]+", url):
        raise PoiseError(f"openai backend: base URL {url!r} must start with http:// or https://")
    host = re.match(r"^https?://([^/?#\s]*)", url)
    if host is not None and "@" in host.group(1):
        # the URL is the model's name: it would be written to run.json, reports, logs and cache
        # keys, credentials and all; the key comes from the environment instead (api_key_env)
        raise PoiseError(
            "openai backend: a base URL must not hold credentials (user:password@host): the "
            "URL is written to run.json and reports; put the key in OPENAI_API_KEY (or the "
            "variable the model option api_key_env names)"
        )
    return url.rstrip("/")


# -- event loop plumbing ---------------------------------------------------------------------------


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code.

    In a thread without a running loop this is ``asyncio.run``. Inside a running loop (a notebook,
    an async application) blocking that loop's thread on itself would deadlock, so the coroutine
    gets a private loop in a worker thread instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_quiet_interrupts(make))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(_quiet_interrupts(make))).result()


async def _quiet_interrupts(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``make()`` on a loop that does not log an interrupt that landed in one of its tasks.
    Ctrl-C, or SIGTERM raised as one by the CLI (``cli._common.sigterm_as_interrupt``), is
    raised in whatever code runs in the main thread; in a task's step asyncio keeps it as the
    task's exception and re-raises it out of the loop, and once the loop stopped no one
    retrieved it: "Task exception was never retrieved" and a traceback followed the CLI's one
    line, in about one stop in ten. Other errors are logged as before."""
    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not _an_interrupt(context.get("exception")):
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return await make()


def _an_interrupt(exc: object) -> bool:
    """A KeyboardInterrupt, or an exception group (anyio's, in the HTTP client) of only those."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    inner = getattr(exc, "exceptions", None)
    return (
        isinstance(exc, BaseException)
        and isinstance(inner, (list, tuple))
        and bool(inner)
        and all(map(_an_interrupt, inner))
    )


# -- resolver entry point --------------------------------------------------------------------------


def load(spec: str, **options: Any) -> OpenAIModel:
    """``openai:MODEL`` or ``openai:MODEL@URL[,URL...]`` -> :class:`OpenAIModel`.

    Options: ``base_url`` (one URL), ``base_urls`` (a list or a comma-separated string),
    ``api_key_env``, ``concurrency``, ``max_retries``, ``timeout``, ``name``, ``check_endpoint``
    (default true: :meth:`OpenAIModel.check_endpoint` before the model is returned),
    ``system_prompt_in_template`` (true / false; see :class:`OpenAIModel`),
    ``chat_template_kwargs`` (a JSON object; see :class:`OpenAIModel`). Without any
    URL the base URL comes from ``$OPENAI_BASE_URL`` (else OpenAI's API).
    """
    match = _SPEC.match(spec.strip())
    if match is None or not match.group("model").strip():
        raise PoiseError(
            f"bad openai model spec {spec!r}: expected openai:MODEL or "
            "openai:MODEL@http://host:port/v1[,http://host2:port/v1]"
        )
    if _URL_WITHOUT_SCHEME.search(match.group("model")):
        # else "m@localhost:8000/v1" would be taken for the model's name and sent, with the key,
        # to $OPENAI_BASE_URL or OpenAI's API
        raise PoiseError(
            f"bad openai model spec {spec!r}: the URL after '@' needs its scheme, e.g. "
            "openai:MODEL@http://host:port/v1"
        )
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise PoiseError(
            f"unknown option(s) for the openai backend: {', '.join(unknown)} "
            f"(known: {', '.join(_OPTIONS)})"
        )
    urls: list[str] = []
    if match.group("urls"):
        urls += _split_urls(match.group("urls"))
    if options.get("base_url") is not None:
        urls += _split_urls(options["base_url"])
    if options.get("base_urls") is not None:
        urls += _split_urls(options["base_urls"])
    check = _bool_option(options, "check_endpoint", True)
    model = OpenAIModel(
        match.group("model").strip(),
        base_urls=urls,
        api_key_env=str(options.get("api_key_env", "OPENAI_API_KEY")),
        concurrency=_int_option(options, "concurrency", 16),
        max_retries=_int_option(options, "max_retries", 4),
        timeout=_float_option(options, "timeout", 120.0),
        name=str(options["name"]) if options.get("name") else None,
        system_prompt_in_template=(
            _bool_option(options, "system_prompt_in_template", False)
            if options.get("system_prompt_in_template") is not None
            else None
        ),
        chat_template_kwargs=options.get("chat_template_kwargs"),
    )
    if check:
        model.check_endpoint()
    return model


def _split_urls(value: object) -> list[str]:
    if isinstance(value, str):
        return [u for u in (p.strip() for p in value.split(",")) if u]
    if isinstance(value, Sequence):
        return [str(u).strip() for u in value if str(u).strip()]
    raise PoiseError(f"openai backend: base URLs must be a string or a list, got {value!r}")


def _int_option(options: dict[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PoiseError(
            f"openai backend: option {key} must be an integer, got {value!r}"
        ) from None


def _float_option(options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PoiseError(f"openai backend: option {key} must be a number, got {value!r}") from None


def _bool_option(options: dict[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise PoiseError(f"openai backend: option {key} must be true or false, got {value!r}")
