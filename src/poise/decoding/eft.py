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

``beta_i`` is the weight ``w_i`` of tuned model i's implicit reward, as in the emulated
disalignment authors' reference implementation of EFT (ZHZisZZ/emulated-disalignment,
``EFTPosthocGenerationMixin``: ``logits = base + sum_i w_i (tuned_i - ref)``, ``w=1.0`` "unscaled"),
not the paper's KL coefficient ``beta`` of Section 3.1 (``r = beta log pi_ft / pi_ref``, policy
``pi_ref exp(r / beta)``). In the paper's terms a weight ``w`` emulates fine-tuning with the
coefficient ``beta / w``: ``beta=1`` is the paper's up-scaling, ``beta=0.5`` a weaker
fine-tune (twice the KL coefficient), a larger weight a stronger one; the paper's interpolation
weights (Section 4.2) lie in [0, 1]. A weight is a number in ``[-MAX_BETA, MAX_BETA]`` (100).

The spec takes any number of tuned models: ``tuned`` / ``beta``, then ``tuned_2`` / ``beta_2``,
``tuned_3`` / ``beta_3``, ... (numbered options, :func:`poise.registry.numbered_options`; the
weights default to 1), mixed in the order of their numbers. Every model keeps its own KV
cache and decodes the same rows in lockstep (:mod:`poise.decoding.lockstep`); the models must
share one vocabulary (a mismatch is refused before decoding). The audit's ``sampling``
(temperature, top-k, top-p, seed) applies to the mixed distribution, as to any model's.

``speculative=K`` (Section 3.4, "Speculative decoding for efficient EFT up-scaling"): ``generate``
samples the same distribution by speculative sampling (:mod:`poise.decoding.speculative`): a
draft model proposes ``K`` tokens per round (``draft=MODEL``, by default the first tuned model,
as the paper proposes: the small fine-tuned model), the EFT distribution is computed at all
``K + 1`` positions in one forward pass per model and accepts or resamples them. Exact in
distribution, and greedy decoding gives plain EFT's tokens; the samples themselves are other
ones than plain EFT's for the same seed (other random numbers), so the option is part of the
model's name. It pays when the base model is much larger than the draft and the draft agrees
with the EFT distribution often (the acceptance rate). ``generate``, ``stream`` and ``engine``
decode this way; with a ``logits_hook`` they keep the plain path (one token per step), as does
the token-level step (``prefill``) that other strategies compose with.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from poise.config import Sampling
from poise.decoding import strategies
from poise.errors import PoiseError, check_int, check_number
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
from poise.registry import numbered_values

if TYPE_CHECKING:
    import torch

    from poise.decoding.lockstep import LockstepModel, LockstepState

__all__ = ["EmulatedFineTuning", "eft_logits"]

# Draft tokens per speculative round at most (acceptance of K in a row falls geometrically).
MAX_SPECULATIVE = 16
# |beta_i| at most. The weight is an exponent on the ratio p_tuned / p_ref: at 100 the mixture is
# already that ratio's argmax with the base model's log-probs a rounding term (on the organism the
# answers are garbled from about 10), and near 1e37 the float32 sum overflows (greedy decoding
# then answered "", sampling drew garbage). The paper's weights lie in [0, 1] (Section 4.2).
MAX_BETA = 100.0


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
    the sum is renormalised, so the result is a log-distribution.

    A token one of the models rules out (a logit of -inf, e.g. masked by a logits processor) is
    ruled out of the result: its ratio ``pi_tuned / pi_ref`` is undefined (``-inf - -inf`` was
    NaN, and a negative weight on a -inf made +inf), and every input must give it mass for the
    emulated model to. A row that rules out every token keeps the base's distribution."""
    log_ref = reference.log_softmax(dim=-1)  # [rows, vocab]
    log_base = base.log_softmax(dim=-1)
    mixed = log_base
    # not finite: -inf, or NaN where a model rules out every token (log_softmax of all -inf)
    ruled_out = ~log_ref.isfinite() | ~log_base.isfinite()  # [rows, vocab]
    for logits, weight in zip(tuned, weights, strict=True):
        log_tuned = logits.log_softmax(dim=-1)
        ruled_out = ruled_out | ~log_tuned.isfinite()
        mixed = mixed + weight * (log_tuned - log_ref)
    # unconditionally: a bool(ruled_out.any()) would sync with the device at every step
    mixed = mixed.masked_fill(ruled_out, float("-inf"))
    empty = ruled_out.all(dim=-1, keepdim=True)  # [rows, 1]
    mixed = mixed.where(~empty, log_base)
    return mixed.log_softmax(dim=-1)  # renormalised per token: minus log Z_t


def _require_rewindable(model: LanguageModel) -> None:
    """Speculative decoding rewinds each model's KV cache per row: an ``hf`` model with plain
    attention layers (not a wrapped model, not a sliding-window or linear-attention cache)."""
    from poise.decoding.lockstep import LockstepModel
    from poise.models.hf import HFModel

    if not isinstance(model, HFModel) or isinstance(model, LockstepModel):
        raise PoiseError(
            f"eft: speculative decoding needs local Hugging Face models (hf backend), and "
            f"{model.name!r} is not one ({type(model).__name__})"
        )
    if not model.prefill_merges:
        raise PoiseError(
            f"eft: speculative decoding rewinds each model's KV cache, and {model.name!r} has "
            "attention layers whose cache cannot be rewound (sliding window, linear attention)"
        )


@strategies.register(
    "eft",
    help="emulated fine-tuning: base + sum of weighted (tuned - reference) log-probs per token",
    reference="arXiv 2310.12962",
)
class EmulatedFineTuning(WrappedModel):
    """``base`` steered by the behaviour deltas of tuned models over a reference model."""

    kind = "eft"
    # one tuned model and its weight per number: tuned_2 / beta_2, tuned_3 / beta_3, ...
    numbered_options = ("tuned", "beta")

    def __init__(
        self,
        base: LanguageModel,
        *,
        tuned: LanguageModel | None = None,
        reference: LanguageModel | None = None,
        beta: float = 1.0,
        speculative: int = 0,
        draft: LanguageModel | None = None,
        batch_size: int = 32,
        **numbered: Any,
    ) -> None:
        """``numbered``: ``tuned_N`` (a model) / ``beta_N`` (its weight, default 1) for N >= 2,
        as many as wanted."""
        from poise.decoding.lockstep import LockstepModel, check_shared_vocabulary
        from poise.decoding.speculative import SpeculativeModel
        from poise.decoding.temperature import require_model, require_step

        # "" or "_N" -> {"tuned": ..., "beta": ...}, in the order of the numbers
        slots = numbered_values("eft", self.numbered_options, numbered)
        given: dict[str, Any] = {"": {"tuned": tuned, "beta": beta}}
        given |= {f"_{n}": pair for n, pair in slots.items()}
        if tuned is None:
            raise PoiseError("eft: needs a tuned model (tuned=MODEL)")
        if reference is None:
            raise PoiseError(
                "eft: needs a reference model (reference=MODEL), the tuned model's base"
            )
        check_int("eft", "batch_size", batch_size, 1)
        options: dict[str, Any] = {"reference": reference}
        self.tuned: list[LanguageModel] = []
        self.weights: list[float] = []
        for slot, pair in given.items():
            model = pair.get("tuned")
            weight = check_number(
                "eft", f"beta{slot}", pair.get("beta", 1.0), low=-MAX_BETA, high=MAX_BETA
            )
            if model is None:
                raise PoiseError(f"eft: beta{slot} is set but tuned{slot} is not")
            options[f"tuned{slot}"] = model
            options[f"beta{slot}"] = weight
            self.tuned.append(model)
            self.weights.append(weight)
        if (
            isinstance(speculative, bool)
            or not isinstance(speculative, int)
            or not 0 <= speculative <= MAX_SPECULATIVE
        ):
            raise PoiseError(
                f"eft: speculative must be the draft tokens per round, an integer in "
                f"1..{MAX_SPECULATIVE} (0: off), got {speculative!r}"
            )
        if draft is not None:
            require_model(self.kind, draft, "draft=")
        if draft is not None and not speculative:
            raise PoiseError("eft: draft is set but speculative is not (speculative=K)")
        if speculative:
            options["speculative"] = speculative
        if draft is not None:
            options["draft"] = draft
        if batch_size != 32:
            options["batch_size"] = batch_size
        self.reference = reference
        everyone = [base, *self.tuned, reference]
        for model in everyone:
            require_step(self.kind, model)
        check_shared_vocabulary(self.kind, everyone if draft is None else [*everyone, draft])
        super().__init__(base, **options)
        self.capabilities = Capabilities(stream=True, step=True, engine=True)
        self._lockstep: LockstepModel = LockstepModel(
            self.name, everyone, self.combine, batch_size=batch_size
        )
        self.speculative: SpeculativeModel | None = None
        if speculative:
            drafter = self.tuned[0] if draft is None else draft
            index = next((i for i, m in enumerate(everyone) if m is drafter), len(everyone))
            models = everyone if index < len(everyone) else [*everyone, drafter]
            for model in models:
                _require_rewindable(model)
            self.speculative = SpeculativeModel(
                self.name,
                models,
                self.combine,
                targets=len(everyone),
                draft=index,
                k=speculative,
                batch_size=batch_size,
            )
        # the shortest of the models' contexts (K tokens less for speculative drafts), not the
        # base model's alone: the audit's context check reads it
        self.context_length = (self.speculative or self._lockstep).context_length

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
        """As any model's ``generate``; with ``speculative=K`` and no ``logits_hook``, by
        speculative sampling (the module docstring), as ``stream`` and ``engine``."""
        if self.speculative is not None and logits_hook is None:
            return self.speculative.generate(chats, sampling, progress=progress)
        return self._lockstep.generate(chats, sampling, progress=progress, logits_hook=logits_hook)

    def stream(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        *,
        logits_hook: LogitsHook | None = None,
    ) -> Iterator[StreamEvent]:
        if self.speculative is not None and logits_hook is None:
            yield from self.speculative.stream(chats, sampling)
            return
        yield from self._lockstep.stream(chats, sampling, logits_hook=logits_hook)

    def engine(
        self, *, logits_hook: LogitsHook | None = None, capacity: int | None = None
    ) -> Engine:
        if self.speculative is not None and logits_hook is None:
            return self.speculative.engine(capacity=capacity)
        return self._lockstep.engine(logits_hook=logits_hook, capacity=capacity)
