"""``logit_temperature(MODEL, t=0.7)``: the inner model's next-token logits divided by ``t``.

The smallest strategy built on the token-level step: a logits hook that scales every step's
logits, ``softmax(z / t)`` (the temperature of Boltzmann sampling; in language models e.g.
arXiv 1503.02531, Section 2). The audit's own ``sampling.temperature`` T still applies after the
hook, so sampling runs at an effective temperature of ``t * T``; greedy decoding is unchanged
(dividing by ``t > 0`` keeps the argmax). Its use is as a test of the step seam (wrapped models
built on the hook, their names, specs and resumable runs) and as a sharpening or flattening
knob.

Composition: its inner model needs the token-level step (``capabilities.step``: a local ``hf``
model, or ``eft(...)``, whose hook then sees the mixed log-probs). It has no step of its own,
so it is the *inner* model of the strategies that answer through ``generate`` alone
(``best_of_n(logit_temperature(M))``, ``feedback_revision(logit_temperature(M))``), and a
strategy that needs a step (``eft``, ``deal``, ``rain``, another ``logit_temperature``) refuses
it as its inner model; ``logit_temperature(best_of_n(M))`` is refused too (best-of-N has no step
to hook).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from poise.config import Sampling
from poise.decoding import strategies
from poise.errors import PoiseError, check_number
from poise.models.base import (
    Capabilities,
    Chat,
    Completion,
    Engine,
    LanguageModel,
    ProgressFn,
    StepView,
    StreamEvent,
)
from poise.models.wrapped import WrappedModel

if TYPE_CHECKING:
    import torch


def require_model(kind: str, model: object, option: str = "") -> None:
    """Refuse anything that is not a model, naming the option (``option``: e.g. ``"feedback="``;
    empty for the inner model): a spec string passed to a constructor in Python was an
    AttributeError, for some options only once the answers had been generated."""
    if not isinstance(model, LanguageModel):
        where = f" as {option}" if option else ""
        raise PoiseError(
            f"{kind}: expected a model{where} (poise.load_model(SPEC)), got "
            f"{type(model).__name__} {model!r}"
        )


def require_step(kind: str, model: LanguageModel) -> None:
    """Refuse an inner model without the token-level step, naming it; and anything that is not
    a model (:func:`require_model`)."""
    require_model(kind, model)
    if not model.capabilities.step:
        wrapper = getattr(model, "kind", "")
        if getattr(model, "inner", None) is not None and wrapper:
            # a strategy around an hf model: "use an hf model" would not say what is wrong
            advice = (
                f"{wrapper} decodes through its own generate and offers no step for {kind} "
                f"to act on: give {kind} a local Hugging Face model (hf backend) or eft(...) "
                "(best_of_n and feedback_revision can wrap the result)"
            )
        else:
            advice = "use a local Hugging Face model (hf backend)"
        raise PoiseError(
            f"{kind} needs a model with a token-level step (capabilities.step), and "
            f"{model.name!r} has none: {advice}"
        )


@strategies.register(
    "logit_temperature",
    help="divide the next-token logits by t (through the step hook)",
    reference="arXiv 1503.02531",
)
class LogitTemperature(WrappedModel):
    """The inner model with its next-token logits divided by ``t`` at every step."""

    kind = "logit_temperature"

    def __init__(self, model: LanguageModel, *, t: float = 1.0) -> None:
        check_number("logit_temperature", "t", t, positive=True)
        require_step(self.kind, model)
        super().__init__(model, t=float(t))
        self.t = float(t)
        # the tempered distribution is not the inner model's: no pass-through score. Streams and
        # an engine pass through with the hook where the inner model has them.
        self.capabilities = Capabilities(
            score=False, stream=model.capabilities.stream, engine=model.capabilities.engine
        )

    def hook(self, view: StepView) -> torch.Tensor:
        """``logits / t`` [rows, vocab], each row on its own. Where that overflows a finite
        logit to +-inf (a small ``t``: float32 ends near 3.4e38), the row is shifted by its
        largest logit first, ``(logits - max) / t``, the same distribution (softmax is
        shift-invariant) without inf - inf = NaN: as ``t`` goes to 0 the row tends to its
        argmax, and greedy decoding stays the inner model's."""
        import torch

        scaled = view.logits / self.t  # [rows, vocab]
        if bool(torch.isfinite(scaled).all()):  # the usual step: one pass to know it
            return scaled
        overflowed = (torch.isfinite(view.logits) & ~torch.isfinite(scaled)).any(dim=-1)  # [rows]
        if bool(overflowed.any()):
            rows = view.logits[overflowed]  # [bad rows, vocab], each with a finite largest logit
            top = rows.amax(dim=-1, keepdim=True)  # [bad rows, 1]
            # the largest stays 0 where t itself underflows float32 to 0 (0 / 0 is NaN)
            scaled[overflowed] = torch.where(rows == top, 0.0, (rows - top) / self.t)
        return scaled

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        inner: Any = self.inner  # capabilities.step: generate takes a logits_hook
        result: list[list[Completion]] = inner.generate(
            chats, sampling, progress=progress, logits_hook=self.hook
        )
        return result

    def stream(self, chats: Sequence[Chat], sampling: Sampling) -> Iterator[StreamEvent]:
        inner: Any = self.inner
        if not self.capabilities.stream:
            yield from super().stream(chats, sampling)
            return
        yield from inner.stream(chats, sampling, logits_hook=self.hook)

    def engine(self) -> Engine:
        if not self.capabilities.engine:
            raise PoiseError(f"{self.name}: {self.inner.name!r} has no engine")
        inner: Any = self.inner
        engine: Engine = inner.engine(logits_hook=self.hook)
        return engine
