"""``eft(BASE, tuned=T, reference=R, beta=1.0)``: emulated fine-tuning (arXiv 2310.12962).

Mitchell et al. read fine-tuning as KL-constrained RL whose solution is
``pi_ft(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta)``, so a fine-tuned model carries an implicit
reward ``log pi_ft - log pi_ref`` (Section 3.1). Emulated fine-tuning adds that reward, learned
at one scale, to a base model of another (Section 3.2): up-scaling (large base, small tuned and
reference) and down-scaling. Sampling uses the per-timestep approximation (Section 3.3), each
token drawn from

    log p(y_t) = log p_base(y_t) + sum_i w_i (log p_tuned_i(y_t) - log p_ref(y_t)) - log Z_t

renormalised over the vocabulary at every step (``Z_t``). Several tuned models with weights give
the paper's test-time reward interpolation (Section 4.2: the helpful / harmless dial,
``w_help (log p_help - log p_ref) + w_safe (log p_safe - log p_ref)``); a negative weight
subtracts a behaviour (emulated disalignment, arXiv 2402.12343).

The spec takes up to four tuned models: ``tuned`` / ``beta``, ``tuned_2`` / ``beta_2``,
``tuned_3`` / ``beta_3``, ``tuned_4`` / ``beta_4`` (the weights). Every model keeps its own KV
cache and decodes the same rows in lockstep (:mod:`poise.decoding.lockstep`); the models must
share one vocabulary (a mismatch is refused before decoding). The audit's ``sampling``
(temperature, top-k, top-p, seed) applies to the mixed distribution, as to any model's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from poise.config import Sampling
from poise.decoding import strategies
from poise.errors import PoiseError
from poise.models.base import (
    Capabilities,
    Chat,
    Completion,
    Engine,
    LanguageModel,
    LogitsHook,
    ProgressFn,
    StreamEvent,
)
from poise.models.wrapped import WrappedModel

if TYPE_CHECKING:
    import torch

    from poise.decoding.lockstep import LockstepModel, LockstepState

__all__ = ["EmulatedFineTuning", "eft_logits"]

_SLOTS = ("", "_2", "_3", "_4")


def eft_logits(
    base: torch.Tensor,
    tuned: Sequence[torch.Tensor],
    reference: torch.Tensor,
    weights: Sequence[float],
) -> torch.Tensor:
    """The EFT next-token log-probs, [rows, vocab] (arXiv 2310.12962, Section 3.3).

    ``base``, each of ``tuned`` and ``reference``: [rows, vocab] logits of the three kinds of
    model at the same step; ``weights[i]`` scales tuned model i's behaviour delta. Each input is
    normalised to log-probs first (a model's logits are defined up to a constant per row), then
    the sum is renormalised, so the result is a log-distribution."""
    log_ref = reference.log_softmax(dim=-1)  # [rows, vocab]
    mixed = base.log_softmax(dim=-1)
    for logits, weight in zip(tuned, weights, strict=True):
        mixed = mixed + weight * (logits.log_softmax(dim=-1) - log_ref)
    return mixed.log_softmax(dim=-1)  # renormalised per token: minus log Z_t


def _weight(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PoiseError(f"eft: {name} must be a finite number, got {value!r}")
    return float(value)


@strategies.register(
    "eft",
    help="emulated fine-tuning: base + sum of weighted (tuned - reference) log-probs per token",
    reference="arXiv 2310.12962",
)
class EmulatedFineTuning(WrappedModel):
    """``base`` steered by the behaviour deltas of tuned models over a reference model."""

    kind = "eft"

    def __init__(
        self,
        base: LanguageModel,
        *,
        tuned: LanguageModel | None = None,
        reference: LanguageModel | None = None,
        beta: float = 1.0,
        tuned_2: LanguageModel | None = None,
        beta_2: float = 1.0,
        tuned_3: LanguageModel | None = None,
        beta_3: float = 1.0,
        tuned_4: LanguageModel | None = None,
        beta_4: float = 1.0,
        batch_size: int = 32,
    ) -> None:
        from poise.decoding.lockstep import LockstepModel, check_shared_vocabulary
        from poise.decoding.temperature import require_step

        given = {"tuned": tuned, "tuned_2": tuned_2, "tuned_3": tuned_3, "tuned_4": tuned_4}
        weights = {"beta": beta, "beta_2": beta_2, "beta_3": beta_3, "beta_4": beta_4}
        if tuned is None:
            raise PoiseError("eft: needs a tuned model (tuned=MODEL)")
        if reference is None:
            raise PoiseError(
                "eft: needs a reference model (reference=MODEL), the tuned model's base"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PoiseError(f"eft: batch_size must be a positive integer, got {batch_size!r}")
        options: dict[str, Any] = {"reference": reference}
        self.tuned: list[LanguageModel] = []
        self.weights: list[float] = []
        for slot in _SLOTS:
            model = given[f"tuned{slot}"]
            weight = _weight(f"beta{slot}", weights[f"beta{slot}"])
            if model is None:
                if slot and weight != 1.0:
                    raise PoiseError(f"eft: beta{slot} is set but tuned{slot} is not")
                continue
            options[f"tuned{slot}"] = model
            options[f"beta{slot}"] = weight
            self.tuned.append(model)
            self.weights.append(weight)
        if batch_size != 32:
            options["batch_size"] = batch_size
        self.reference = reference
        everyone = [base, *self.tuned, reference]
        for model in everyone:
            require_step(self.kind, model)
        check_shared_vocabulary(self.kind, everyone)
        super().__init__(base, **options)
        self.capabilities = Capabilities(stream=True, step=True, engine=True)
        self._lockstep: LockstepModel = LockstepModel(
            self.name, everyone, self.combine, batch_size=batch_size
        )

    def combine(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """``logits``: [base, tuned..., reference], each [rows, vocab] -> EFT log-probs."""
        return eft_logits(logits[0], logits[1:-1], logits[-1], self.weights)

    # -- the token-level step: the lockstep model's, so EFT composes with other strategies

    def prefill(
        self, prompts: Sequence[Chat] | Sequence[Sequence[int]], *, reserve: int = 0
    ) -> LockstepState:
        return self._lockstep.prefill(prompts, reserve=reserve)

    def generate(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        *,
        progress: ProgressFn | None = None,
        logits_hook: LogitsHook | None = None,
    ) -> list[list[Completion]]:
        return self._lockstep.generate(chats, sampling, progress=progress, logits_hook=logits_hook)

    def stream(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        *,
        logits_hook: LogitsHook | None = None,
    ) -> Iterator[StreamEvent]:
        yield from self._lockstep.stream(chats, sampling, logits_hook=logits_hook)

    def engine(
        self, *, logits_hook: LogitsHook | None = None, capacity: int | None = None
    ) -> Engine:
        return self._lockstep.engine(logits_hook=logits_hook, capacity=capacity)
