"""The LanguageModel protocol: what every backend, decoding strategy and guard implements.

A decoding strategy or a guard wraps another ``LanguageModel`` and is one itself, so an audit
runs unchanged on ``base``, ``eft(base, ...)`` or ``guarded(bon(base, ...), ...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from poise.chat import Chat, Message, with_system_prompt
from poise.config import Sampling
from poise.errors import PoiseError

if TYPE_CHECKING:
    import torch

__all__ = [
    "Capabilities",
    "Chat",
    "Completion",
    "Engine",
    "FinishReason",
    "GenerationError",
    "LanguageModel",
    "LogitsHook",
    "Message",
    "ModelBase",
    "ProgressFn",
    "ResultFn",
    "RowTokens",
    "SequenceLogprobs",
    "StepView",
    "StreamEvent",
    "TokenLogprobs",
    "default_system_prompt",
    "no_system_prompt",
    "system_prompt_in_template",
    "with_system_prompt",
]

FinishReason = Literal["stop", "length", "guard"]


@dataclass(frozen=True)
class Completion:
    """One generated continuation of a chat."""

    text: str
    num_tokens: int
    finish_reason: FinishReason = "stop"
    # log-prob of each generated token under the sampling distribution's model, if asked for
    token_logprobs: tuple[float, ...] | None = None
    # every token id the backend generated, where it knows them: the ``num_tokens`` counted and
    # the EOS token that ended the completion, if one did (as vLLM reports them); what the
    # server's log-probs cover. Not recorded (``to_dict``) and not compared: a completion read
    # back from a cache equals the one generated.
    token_ids: tuple[int, ...] | None = field(default=None, compare=False)
    # what a wrapped model records about how it answered (e.g. whether feedback fired), as
    # JSON-ready values; None for plain answers, so their records carry no such field
    metadata: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "text": self.text,
            "num_tokens": self.num_tokens,
            "finish_reason": self.finish_reason,
            "token_logprobs": list(self.token_logprobs)
            if self.token_logprobs is not None
            else None,
        }
        if self.metadata is not None:
            out["metadata"] = dict(self.metadata)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Completion:
        lp = d.get("token_logprobs")
        return cls(
            text=str(d["text"]),
            num_tokens=int(d["num_tokens"]),  # type: ignore[call-overload]
            finish_reason=d.get("finish_reason", "stop"),  # type: ignore[arg-type]
            token_logprobs=tuple(float(x) for x in lp) if isinstance(lp, list) else None,
            metadata=dict(meta) if isinstance(meta := d.get("metadata"), dict) else None,
        )


# on_result(chat index, its completions): a backend hands over each chat's answers as they arrive
ResultFn = Callable[[int, list[Completion]], None]


class EndpointError(PoiseError):
    """A model's endpoint refused every request, or could not be reached: no retry and no
    other chat can escape it (a wrong key, model name or URL). An audit that got no answer at
    all then keeps no run folder."""


class UpstreamError(PoiseError):
    """The server behind a remote model failed to answer a request that may well be good: it
    could not be reached, did not answer in time, or kept failing (HTTP 5xx, 408, 429) through
    every retry. Not the request's fault: ``poise serve`` answers it with a 502 (Bad Gateway),
    where a refusal of the request is a 400."""


class NoChatTemplateError(PoiseError):
    """The model's tokenizer has no chat template (a base model), so it cannot render a chat.
    ``poise serve`` still serves such a model's raw-prompt ``/v1/completions``."""


class GenerationError(PoiseError):
    """Some chats of one ``generate`` call failed for good, the others were answered.

    ``results[i]`` holds chat ``i``'s completions, or None where it failed; ``failures[i]`` says
    why chat ``i`` failed (one line each), and ``errors[i]``, where the backend keeps it, is the
    exception that failed it (its type tells an :class:`UpstreamError` from a refusal of the
    request). ``model`` is the model whose ``generate`` raised, so
    a wrapper can tell whether the indices are those of its own call. A backend that raises it
    sets ``partial_results = True`` and accepts ``generate(..., on_result=ResultFn)``, through
    which it hands over each chat's completions as they arrive (the response cache stores them
    at once, so a failure or a kill loses none)."""

    def __init__(
        self,
        model: object,
        results: Sequence[list[Completion] | None],
        failures: dict[int, str],
        errors: dict[int, Exception] | None = None,
    ) -> None:
        self.model = model
        self.results = list(results)
        self.failures = dict(failures)
        self.errors = dict(errors or {})
        name = getattr(model, "name", type(model).__name__)
        first = failures[min(failures)] if failures else "?"
        received = sum(r is not None for r in self.results)
        super().__init__(
            f"{name}: {len(failures)} of {len(self.results)} requests failed ({first}); "
            f"the {received} answers received are kept"
        )


@dataclass(frozen=True)
class TokenLogprobs:
    """Per-token log-probs of a given continuation after a chat (teacher forcing)."""

    tokens: tuple[str, ...]
    logprobs: tuple[float, ...]  # [len(tokens)], natural log
    token_ids: tuple[int, ...] = field(default=())

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))


@dataclass(frozen=True)
class SequenceLogprobs:
    """Log-probs of a whole token sequence, position by position (teacher forcing, no chat
    template): what OpenAI's completions API returns for ``echo`` with ``logprobs``.

    The positions are ``start .. len(sequence) - 1`` of the sequence that was scored.
    ``logprobs[i]`` is the natural log-prob of ``token_ids[i]`` given every token before it
    (``None`` for the sequence's first token, which nothing predicts); ``top[i]`` holds the
    ``top_k`` most likely token ids at that position with their log-probs, most likely first
    (``()`` for the first token).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float | None, ...]
    top: tuple[tuple[tuple[int, float], ...], ...]


# progress(k): k more chats finished since the previous call
ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class Capabilities:
    """What a model can do beyond ``generate``. Declared by each model, never probed.

    - ``score``: teacher-forced per-token log-probs (``score``).
    - ``stream``: ``stream(chats, sampling)`` yields each row's new text as it is decoded.
    - ``step``: a token-level step: ``generate`` / ``stream`` / ``engine`` take a ``logits_hook``
      that sees (and may change) every step's next-token logits for the whole batch, and the
      model exposes ``prefill`` / ``DecodeState.step`` for strategies that drive several models
      in lockstep (emulated fine-tuning, reward-guided search).
    - ``engine``: ``engine()`` returns an :class:`Engine`, a continuous batch that admits new
      requests at step boundaries (``poise serve`` uses it).
    - ``tokens``: raw token sequences, no chat template (``poise serve``'s ``/v1/completions``
      and log-probs use it): ``prompt_ids(chat)`` is the chat as ``generate`` feeds it,
      ``complete(prompts, sampling)`` generates after each prompt of token ids as
      ``generate`` does after a chat (its completions carry ``token_ids``), and
      ``sequence_logprobs(sequences, top_k=, start=)`` gives every token's log-prob after its
      prefix with the ``top_k`` most likely alternatives (:class:`SequenceLogprobs`). The
      model's ``tokenizer`` turns text into those ids and back.
    - ``activations``: ``hidden_states(chats, continuations=None, *, reduce=...)`` returns the
      residual stream at every layer ([rows, layers + 1, hidden]) and ``decoder_layers()`` the
      decoder blocks (``torch.nn.Module``), for probes and steering (``poise.probes``).
    - ``open_limit``: ``generate(..., open_limit=True)`` leaves an answer's length to the server
      behind the model (what is left of its context) instead of ``sampling.max_new_tokens``:
      ``poise serve`` fronting a model that knows neither its context nor its tokenizer (an
      ``openai:`` model) passes a request without ``max_tokens`` on as one without it.
    - ``concurrent``: ``generate`` may run in several threads at once (a client of a remote
      server, each call with its own connections): ``poise serve`` makes such a model's calls
      for different samplings (distinct seeds) side by side instead of one after another.
    """

    score: bool = False
    stream: bool = False
    step: bool = False
    engine: bool = False
    tokens: bool = False
    activations: bool = False
    open_limit: bool = False
    concurrent: bool = False


@dataclass(frozen=True)
class StreamEvent:
    """New text of one row (one chat and sample index), as it is decoded.

    ``key`` names the row's request: the chat's index for ``stream(chats, ...)``, the id given
    to ``Engine.add`` for an engine. The ``text`` of a row's events concatenated is exactly the
    row's final ``Completion.text`` (text that could still turn into a stop string or an
    incomplete character is held back). The row's last event carries its ``completion``.
    """

    key: Hashable
    sample_index: int
    text: str
    completion: Completion | None = None

    @property
    def finished(self) -> bool:
        return self.completion is not None


@dataclass
class StepView:
    """What a logits hook sees at one decoding step, for the rows still decoding.

    ``logits``: [rows, vocab] float32 next-token logits (before temperature / top-k / top-p).
    ``rows``: [rows] int64, which rows these are: for ``generate`` / ``stream`` the index into
    the flattened (chat, sample) rows ``chat * n + sample``; for an engine, the engine's row ids.
    ``generated``: [rows] int64, how many tokens each row has generated before this step.
    ``tokens``: the tokens each row generated so far (``tokens[i]``: a [generated[i]] int64
    tensor; a batcher hands a :class:`RowTokens`, which builds it when asked, and whose
    ``ids(i)`` gives the plain list). Valid during the hook's call only.
    """

    logits: torch.Tensor
    rows: torch.Tensor
    generated: torch.Tensor
    tokens: Sequence[torch.Tensor]


class RowTokens(Sequence["torch.Tensor"]):
    """Each row's generated token ids, as a logits hook sees them (:class:`StepView`): built
    into a tensor only for the rows a hook reads (a hook that reads one token of each row, or
    none, no longer pays for copying every row's tokens at every step)."""

    def __init__(self, rows: Sequence[list[int]], device: Any) -> None:
        self._rows = rows
        self._device = device

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: Any) -> Any:
        import torch

        if isinstance(index, slice):
            return [
                torch.tensor(r, dtype=torch.long, device=self._device) for r in self._rows[index]
            ]
        return torch.tensor(self._rows[index], dtype=torch.long, device=self._device)

    def ids(self, index: int) -> list[int]:
        """Row ``index``'s token ids (the batcher's own list: do not change it)."""
        return self._rows[index]


# A logits hook returns the changed logits ([rows, vocab]) or None to keep them. It must treat
# each row independently (a row's output may not depend on which other rows share the batch).
LogitsHook = Callable[[StepView], "torch.Tensor | None"]


@runtime_checkable
class LanguageModel(Protocol):
    """Anything that turns chats into completions.

    ``name`` is a stable identity used in cache keys and reports: two models with the same name
    must produce the same outputs for the same inputs. ``spec`` is the string that rebuilds the
    model through ``poise.models.load_model`` (recorded in run.json); ``None`` for a model that
    cannot be rebuilt from a string. The other attributes are declarations that audits, the
    server and wrappers read instead of probing: ``capabilities``, ``default_system_prompt``,
    ``recommended_judge`` (a judge spec, e.g. ``"oracle"`` for organism members),
    ``tokenizer`` (a Hugging Face tokenizer or None) and ``context_length`` (the most tokens of
    prompt and completion together, or None where unknown; see :mod:`poise.models.context`).
    :class:`ModelBase` gives the defaults. One optional declaration is read with a default
    rather than required, so models written before it stay ``LanguageModel``s:
    ``system_prompt_in_template`` (see :func:`system_prompt_in_template`).
    """

    name: str
    spec: str | None
    capabilities: Capabilities
    default_system_prompt: str | None
    recommended_judge: str | None
    tokenizer: Any
    context_length: int | None

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        """One list of ``sampling.n`` completions per chat; batched inside; deterministic for
        a given ``sampling.seed`` (a chat's completions do not depend on the rest of the batch).
        ``progress(k)`` is called as chats finish, ``k`` the number finished since last call."""
        ...

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[TokenLogprobs]:
        """Per-token log-probs of ``continuations[i]`` as the assistant's reply to ``chats[i]``.
        Backends that cannot do this (``capabilities.score`` false) raise
        ``NotImplementedError``."""
        ...

    def stream(self, chats: Sequence[Chat], sampling: Sampling) -> Iterator[StreamEvent]:
        """Each row's text as it is decoded (``StreamEvent.key`` is the chat's index); the row's
        event texts join to its ``generate`` text. A model without ``capabilities.stream``
        yields each row once, after generating it (``ModelBase.stream``)."""
        ...


class ModelBase:
    """Defaults of the declarations of :class:`LanguageModel`, for backends to inherit."""

    name: str
    spec: str | None = None
    capabilities: Capabilities = Capabilities()
    default_system_prompt: str | None = None
    # True where the chat template itself inserts default_system_prompt into a chat without a
    # system message (as Qwen2.5's does); such a model is asked with no system prompt by an
    # explicit empty system message (no_system_prompt)
    system_prompt_in_template: bool = False
    recommended_judge: str | None = None
    tokenizer: Any = None
    context_length: int | None = None

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[TokenLogprobs]:
        raise NotImplementedError(f"{self.name}: this model cannot score continuations")

    def stream(self, chats: Sequence[Chat], sampling: Sampling) -> Iterator[StreamEvent]:
        """Each row's text as it is decoded. This default, for models without the ``stream``
        capability, generates everything first and yields each row once."""
        results = self.generate(chats, sampling)  # type: ignore[attr-defined]
        for index, completions in enumerate(results):
            for sample, completion in enumerate(completions):
                yield StreamEvent(index, sample, completion.text, completion)


class Engine(Protocol):
    """A continuous batch (``capabilities.engine``): requests join at step boundaries.

    Driven from one thread: ``add`` and ``cancel`` between calls of ``step``. ``step`` advances
    every live row by one token (prefilling rows added since the last step first) and returns the
    events of that step; a request with ``sampling.n > 1`` is ``n`` rows with sample indices
    ``0..n-1``, seeded as ``generate`` seeds them, so an engine's completions equal
    ``generate``'s for the same chat and sampling. A request added with ``stream=False`` gets
    no text events while it decodes, only its final events (with the whole text): an engine
    need not detokenize it step by step.
    """

    def add(
        self, key: Hashable, chat: Chat, sampling: Sampling, *, stream: bool = True
    ) -> None: ...

    def cancel(self, key: Hashable) -> None: ...

    def step(self) -> list[StreamEvent]: ...

    @property
    def idle(self) -> bool:
        """No row is waiting or decoding."""
        ...


def default_system_prompt(model: LanguageModel) -> str | None:
    """The system prompt a model declares as its recommended default, if any."""
    value = model.default_system_prompt
    return value if isinstance(value, str) and value else None


def system_prompt_in_template(model: LanguageModel) -> bool:
    """Whether the model declares that its chat template inserts its default system prompt into
    a chat that has no system message (``model.system_prompt_in_template``; False when the model
    does not declare it). Such a template renders a system message with empty content as no
    system prompt at all."""
    return getattr(model, "system_prompt_in_template", False) is True


def no_system_prompt(model: LanguageModel) -> str | None:
    """The system prompt that asks ``model`` with none: ``""`` (an explicit empty system message)
    where its template would otherwise insert its default, else None (no system message: an
    empty one would change the prompt of other chat models, and some templates reject system
    messages)."""
    return "" if system_prompt_in_template(model) else None


# Keywords of ``apply_chat_template`` itself (transformers): poise sets them per call (the
# generation prompt, tokenizing, the template), so a chat template variable of one of these
# names cannot be fixed for a model.
_TEMPLATE_CALL_KEYWORDS = frozenset(
    {
        "conversation",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "processor_kwargs",
    }
)


def check_chat_template_kwargs(value: object, backend: str) -> dict[str, Any]:
    """``chat_template_kwargs``, the variables a backend gives its chat template in every render
    (Qwen3's ``enable_thinking``, Llama 3.1's ``date_string``), checked: a JSON object (the
    run's config and the model's name hold it) whose keys name no keyword of
    ``apply_chat_template`` itself. Returns a plain dict with its keys sorted."""
    import json

    where = f"option chat_template_kwargs of the {backend} backend"
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise PoiseError(
            f"{where}: expected a JSON object of template variables, e.g. "
            f'{{"enable_thinking": false}}, got {type(value).__name__} {value!r}'
        )
    reserved = sorted(set(value) & _TEMPLATE_CALL_KEYWORDS)
    if reserved:
        raise PoiseError(
            f"{where}: {', '.join(reserved)} is a keyword of apply_chat_template itself, set by "
            "poise for each render, not a template variable"
        )
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PoiseError(f"{where}: not JSON ({exc})") from None
    return {k: value[k] for k in sorted(value)}


def chat_template_kwargs_label(kwargs: dict[str, Any]) -> str:
    """What a model's name gains from its ``chat_template_kwargs`` (compact sorted JSON after a
    ``+``; empty without any), so that answers to differently rendered prompts never share a
    cache key or pass as one model's in a resumed run."""
    import json

    if not kwargs:
        return ""
    return "+" + json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
