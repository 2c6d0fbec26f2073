"""Models that wrap models: decoding strategies, guards, the response cache.

A :class:`WrappedModel` is a ``LanguageModel`` around one or more inner models (the first is
``inner``) with keyword options. Its identity is composed, never invented:

- ``name`` = ``kind(inner.name, ..., key=value, ...)``: the registered kind, the inner models'
  names and every option (sorted, one spelling per value; an option that is a model is written as
  its name). Two wrappers that can answer differently have different names, so response-cache
  keys never collide; the same wrapper built twice has the same name.
- ``spec`` = the same composition over the inner models' specs: the string that rebuilds it
  through ``load_model`` (``None`` when an inner model has no spec).

It passes through what describes the inner model rather than the wrapper: the default system
prompt, the tokenizer and the recommended judge (an organism member wrapped in a strategy is
still judged by the oracle), and ``progress``. ``score`` passes through only where the wrapper
leaves the inner model's distribution alone (``preserves_distribution``); a strategy that changes
it declares ``capabilities.score`` false, or computes its own.

A *transparent* wrapper (the response cache) answers exactly as its inner model, so it keeps the
inner model's ``name`` and ``spec``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from poise.config import Sampling
from poise.models.base import (
    Capabilities,
    Chat,
    Completion,
    LanguageModel,
    ModelBase,
    ProgressFn,
    TokenLogprobs,
    system_prompt_in_template,
)
from poise.models.spec import SpecText, format_call

__all__ = ["OptionValue", "WrappedModel", "compose"]

OptionValue = bool | int | float | str | LanguageModel


def _is_model(value: object) -> bool:
    return isinstance(value, LanguageModel)


def compose(
    kind: str,
    models: Sequence[LanguageModel],
    options: Mapping[str, object],
    *,
    attribute: str,
) -> str | None:
    """``kind(m.<attribute>, ..., key=value)`` in canonical form; ``None`` if any model's
    ``attribute`` (``name`` or ``spec``) is None."""
    parts: list[str] = []
    for model in models:
        value = getattr(model, attribute)
        if value is None:
            return None
        parts.append(value)
    written: dict[str, object] = {}
    for key, value in options.items():
        if _is_model(value):
            inner = getattr(value, attribute)
            if inner is None:
                return None
            written[key] = SpecText(inner)
        else:
            written[key] = value
    return format_call(kind, [SpecText(p) for p in parts], written)


def check_wrapper_kind(name: str, obj: object) -> None:
    """A wrapper class registered as ``name`` must have ``kind == name``: its spec is written
    with ``kind`` (run.json, resume, serve), and another kind would not be found again."""
    if isinstance(obj, type) and issubclass(obj, WrappedModel) and obj.kind != name:
        raise ValueError(
            f"{obj.__qualname__} is registered as {name!r} but its kind is {obj.kind!r}: the "
            "spec it writes would not rebuild it; set kind = " + repr(name)
        )


class WrappedModel(ModelBase):
    """Base of every model that wraps models (see the module docstring).

    Subclasses set ``kind`` (their registered name), call ``super().__init__(inner, *others,
    **options)`` with exactly the options their constructor takes (so ``spec`` rebuilds them),
    and override ``generate`` (and ``capabilities``) as they need.
    """

    kind: ClassVar[str] = ""
    # answers exactly as the inner model (a cache): keeps the inner model's name and spec
    transparent: ClassVar[bool] = False
    # leaves the inner model's distribution alone, so score() passes through
    preserves_distribution: ClassVar[bool] = False

    def __init__(self, inner: LanguageModel, *others: LanguageModel, **options: OptionValue):
        self.inner = inner
        self.models: tuple[LanguageModel, ...] = (inner, *others)
        self.options: dict[str, OptionValue] = dict(options)
        if self.transparent:
            self.name = inner.name
            self.spec = inner.spec
        else:
            if not self.kind:
                raise TypeError(f"{type(self).__name__} must set its registered kind")
            self.name = str(compose(self.kind, self.models, self.options, attribute="name"))
            self.spec = compose(self.kind, self.models, self.options, attribute="spec")
        self.default_system_prompt = inner.default_system_prompt
        self.system_prompt_in_template = system_prompt_in_template(inner)
        # whether the inner model knows that declaration (a served openai: model may not; an
        # audit asking with no system prompt warns then, wrapped or not)
        self.system_prompt_declared = getattr(inner, "system_prompt_declared", True) is not False
        self.tokenizer = inner.tokenizer
        self.context_length = inner.context_length
        self.recommended_judge = inner.recommended_judge
        self.capabilities = Capabilities(
            score=inner.capabilities.score and (self.transparent or self.preserves_distribution)
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def check_sampling(self, sampling: Sampling) -> None:
        """Refuse (PoiseError) decoding settings this model would answer wrongly under, before
        anything is generated; checks the wrapped models too. By default nothing is refused;
        a strategy with a rule overrides it and calls ``super().check_sampling``. The wrapped
        models are the positional ones and those given as options (eft's ``tuned_N``, a
        ``draft``)."""
        named = (v for v in self.options.values() if _is_model(v))
        for model in (*self.models, *named):
            if isinstance(model, WrappedModel):
                model.check_sampling(sampling)

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        return self.inner.generate(chats, sampling, progress=progress)

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[TokenLogprobs]:
        if not self.capabilities.score:
            raise NotImplementedError(
                f"{self.name}: this model cannot score continuations (its distribution is not "
                "its inner model's)"
            )
        return self.inner.score(chats, continuations)
