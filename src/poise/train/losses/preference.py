"""The DPO family of preference losses, LD-DPO and MODPO, as pure functions.

Every registered loss takes the summed log-probs of the chosen and rejected responses under the
policy and under the frozen reference model (four tensors of shape ``[B]``) plus ``beta`` and its
own parameters, and returns :class:`PreferenceLossOutput` (per-pair losses ``[B]`` and the implicit
rewards of the chosen and rejected responses, ``[B]`` each). Reduce the losses (``.mean()``) in the
recipe; keeping them per pair lets a recipe weight, mask or log them.

Notation used in the comments: ``logratio = log π_θ(y|x) - log π_ref(y|x)`` per response, ``u`` is
its exponential (the likelihood ratio), ``score = f'(u)`` the implicit reward before ``beta`` (equal
to ``logratio`` for the standard reverse-KL regulariser), and ``Δ = score_chosen - score_rejected``.

Pick a loss by name::

    out = preference_loss("ipo", pc, pr, rc, rr, beta=0.1)
    out.losses.mean().backward()

or call the function directly (``sigmoid_loss(pc, pr, rc, rr, beta=0.1)``). Unknown names and
parameters a loss does not take raise :class:`~poise.errors.PoiseError` with the valid choices.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from poise.errors import PoiseError
from poise.plugins import load_plugins
from poise.registry import Registry
from poise.train.logprobs import masked_sum, token_positions

__all__ = [
    "F_DIVERGENCES",
    "LOSSES",
    "FDivergence",
    "PreferenceLossOutput",
    "aot_loss",
    "aot_unpaired_loss",
    "apo_down_loss",
    "apo_zero_loss",
    "bco_pair_loss",
    "discopop_loss",
    "exo_pair_loss",
    "f_divergence_scores",
    "hinge_loss",
    "ipo_loss",
    "ld_dpo_loss",
    "ld_logprobs",
    "loss_parameters",
    "modpo_loss",
    "nca_pair_loss",
    "preference_loss",
    "register_loss",
    "robust_loss",
    "sigmoid_loss",
    "sigmoid_norm_loss",
    "sppo_hard_loss",
]


class PreferenceLossOutput(NamedTuple):
    """Per-pair losses and implicit rewards, all ``[B]``."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


PreferenceLoss = Callable[..., PreferenceLossOutput]

LOSSES: Registry[PreferenceLoss] = Registry("loss", loader=load_plugins)
"""Preference losses by name: ``LOSSES.get("sigmoid")``, ``LOSSES.names()``."""

FDivergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]
F_DIVERGENCES: tuple[str, ...] = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# exp() of anything above ~88 overflows float32; the f-divergence scores and discopop's
# exponential term clamp their exponent here so that a far-off-policy batch gives a large
# finite loss instead of inf/NaN gradients.
_MAX_EXPONENT = 80.0


# ---------------------------------------------------------------------------------------------
# shared pieces


def _check_pair_shapes(*tensors: Tensor) -> None:
    shape = tensors[0].shape
    if len(shape) != 1 or any(t.shape != shape for t in tensors):
        raise ValueError(
            "preference losses take four [batch] tensors of summed log-probs; got shapes "
            + ", ".join(str(tuple(t.shape)) for t in tensors)
        )


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise PoiseError(f"beta must be > 0, got {beta}")


def _check_smoothing(label_smoothing: float, *, low: float = 0.0, high: float = 0.5) -> None:
    if not low <= label_smoothing < high:
        raise PoiseError(f"label_smoothing must be in [{low}, {high}), got {label_smoothing}")


def f_divergence_scores(
    logratios: Tensor, f_divergence: str = "reverse_kl", f_alpha: float = 0.5
) -> Tensor:
    """The implicit reward ``f'(u)`` (before ``beta``) of f-DPO, arXiv 2309.16240.

    ``logratios``: ``[B]`` ``log π_θ(y|x) - log π_ref(y|x)``; ``u = exp(logratios)``.

    - ``reverse_kl`` (standard DPO): ``f'(u) = log u`` (the paper's ``log u + 1``; constants cancel
      in every loss below, which only uses score differences).
    - ``forward_kl``: ``f'(u) = 1 - 1/u`` (the paper's ``-1/u`` plus 1, again a cancelling constant).
    - ``js_divergence``: ``f'(u) = log(2u / (1 + u)) = log 2 + log σ(log u)``.
    - ``alpha_divergence``: ``f'(u) = (1 - u^(-α)) / α`` with ``α = f_alpha`` in (0, 1), the paper's
      parameterisation: α → 0 recovers reverse KL, α → 1 forward KL. (TRL's
      ``f_alpha_divergence_coef`` is ``1 - f_alpha``.)
    """
    if f_divergence == "reverse_kl":
        return logratios
    if f_divergence == "forward_kl":
        # 1 - exp(-x) = -expm1(-x): accurate near u = 1, where policy ≈ reference.
        return -torch.expm1((-logratios).clamp(max=_MAX_EXPONENT))
    if f_divergence == "js_divergence":
        return math.log(2.0) + F.logsigmoid(logratios)
    if f_divergence == "alpha_divergence":
        if not 0.0 < f_alpha < 1.0:
            raise PoiseError(f"f_alpha must be in (0, 1) for alpha_divergence, got {f_alpha}")
        exponent = (-f_alpha * logratios).clamp(max=_MAX_EXPONENT)
        return -torch.expm1(exponent) / f_alpha
    raise PoiseError(f"unknown f_divergence {f_divergence!r} (known: {', '.join(F_DIVERGENCES)})")


def _scores(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    f_divergence: str,
    f_alpha: float,
) -> tuple[Tensor, Tensor]:
    _check_pair_shapes(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    chosen = f_divergence_scores(
        policy_chosen_logps - reference_chosen_logps, f_divergence, f_alpha
    )
    rejected = f_divergence_scores(
        policy_rejected_logps - reference_rejected_logps, f_divergence, f_alpha
    )
    return chosen, rejected  # [B], [B]


def _smoothed_logistic(logits: Tensor, label_smoothing: float) -> Tensor:
    """``-(1-ε) log σ(z) - ε log σ(-z)``: the logistic loss against a soft label ``1 - ε``."""
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def _per_token(scores: Tensor, lengths: Tensor | None, loss: str, which: str) -> Tensor:
    if lengths is None:
        raise PoiseError(f"loss {loss!r} needs {which}_lengths (response token counts, [batch])")
    if lengths.shape != scores.shape:
        raise ValueError(f"{which}_lengths must be [batch] like the log-probs")
    return scores / lengths.to(scores.dtype).clamp(min=1.0)


def register_loss(name: str) -> Callable[[PreferenceLoss], PreferenceLoss]:
    """Register a preference loss under ``name`` in :data:`LOSSES`.

    A loss is ``fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
    reference_rejected_logps, *, beta=..., <options>) -> PreferenceLossOutput``: four ``[B]``
    tensors of summed log-probs, then keyword-only options with defaults (``poise train dpo``
    passes ``beta`` always, the others from ``--loss-option``; ``poise train losses`` lists
    them). A function that cannot be called so is refused here (ValueError), naming it."""

    def add(fn: PreferenceLoss) -> PreferenceLoss:
        _check_loss_signature(name, fn)
        LOSSES.add(name, fn)
        return fn

    return add


def _check_loss_signature(name: str, fn: PreferenceLoss) -> None:
    """Refuse a loss that cannot take the four log-prob tensors positionally, or whose options
    are not keyword-only (:func:`loss_parameters` reads those only: a positional option with a
    default was "does not take beta (it takes: )")."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature (a builtin): the call itself checks
        return
    params = list(signature.parameters.values())
    where = f"loss {name!r} ({getattr(fn, '__qualname__', fn)!r})"
    zero = [None] * 4
    options = {p.name: None for p in params if p.kind is p.KEYWORD_ONLY}
    try:
        signature.bind(*zero, **options)
    except TypeError as exc:
        raise ValueError(
            f"{where} must take the four [B] log-prob tensors positionally, then keyword-only "
            f"options: {exc}"
        ) from None
    extra = [p.name for p in params[4:] if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if extra:
        raise ValueError(
            f"{where}: option {extra[0]!r} must be keyword-only (after a bare '*'), or "
            "poise train dpo cannot pass it"
        )


# ---------------------------------------------------------------------------------------------
# the DPO family


@register_loss("sigmoid")
def sigmoid_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    f_divergence: FDivergence = "reverse_kl",
    f_alpha: float = 0.5,
) -> PreferenceLossOutput:
    """DPO, arXiv 2305.18290 Eq. 7: ``-log σ(β Δ)``.

    ``label_smoothing = ε > 0`` gives conservative DPO (cDPO, Mitchell 2023, as restated in rDPO
    arXiv 2403.00409): the label is flipped with probability ε, so the target is ``1 - ε`` and
    the loss ``-(1-ε) log σ(βΔ) - ε log σ(-βΔ)`` no longer drives the margin to infinity.
    """
    _check_beta(beta)
    _check_smoothing(label_smoothing)
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        f_divergence,
        f_alpha,
    )
    losses = _smoothed_logistic(beta * (chosen - rejected), label_smoothing)
    return PreferenceLossOutput(losses, beta * chosen, beta * rejected)


@register_loss("ipo")
def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    f_divergence: FDivergence = "reverse_kl",
    f_alpha: float = 0.5,
) -> PreferenceLossOutput:
    """IPO, arXiv 2310.12036 Eq. 17: ``(Δ - 1/(2β))²`` with ``β`` the paper's ``τ``.

    The paper writes Δ on whole-sequence log-probs. Summed log-probs make the square grow with
    response length, so when ``chosen_lengths``/``rejected_lengths`` (token counts, ``[B]``) are
    given each score is first divided by its length (per-token average), the normalisation TRL
    uses and reports as agreed with the IPO authors. Without lengths, Eq. 17 is used as written.
    """
    _check_beta(beta)
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        f_divergence,
        f_alpha,
    )
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise PoiseError("ipo: give both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is None:
        delta = chosen - rejected
    else:
        delta = _per_token(chosen, chosen_lengths, "ipo", "chosen") - _per_token(
            rejected, rejected_lengths, "ipo", "rejected"
        )
    losses = (delta - 1.0 / (2.0 * beta)) ** 2
    return PreferenceLossOutput(losses, beta * chosen, beta * rejected)


@register_loss("hinge")
def hinge_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    f_divergence: FDivergence = "reverse_kl",
    f_alpha: float = 0.5,
) -> PreferenceLossOutput:
    """SLiC-HF hinge calibration loss, arXiv 2305.10425, on log-ratios: ``max(0, 1 - βΔ)``.

    SLiC writes ``max(0, δ - log π(y+) + log π(y-))``; dividing by ``δ = 1/β`` gives this form.
    """
    _check_beta(beta)
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        f_divergence,
        f_alpha,
    )
    losses = torch.relu(1.0 - beta * (chosen - rejected))
    return PreferenceLossOutput(losses, beta * chosen, beta * rejected)


@register_loss("robust")
def robust_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    f_divergence: FDivergence = "reverse_kl",
    f_alpha: float = 0.5,
) -> PreferenceLossOutput:
    """Robust DPO (rDPO), arXiv 2403.00409: an unbiased loss under label-flip rate ε.

    ``[(1-ε) L(y_w, y_l) - ε L(y_l, y_w)] / (1 - 2ε)`` with ``L(a, b) = -log σ(β(score_a - score_b))``;
    ``ε = label_smoothing`` must be in [0, 0.5).
    """
    _check_beta(beta)
    _check_smoothing(label_smoothing)
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        f_divergence,
        f_alpha,
    )
    logits = beta * (chosen - rejected)
    clean = -F.logsigmoid(logits)  # loss if the label is right
    flipped = -F.logsigmoid(-logits)  # loss if the label is flipped
    losses = ((1.0 - label_smoothing) * clean - label_smoothing * flipped) / (
        1.0 - 2.0 * label_smoothing
    )
    return PreferenceLossOutput(losses, beta * chosen, beta * rejected)


@register_loss("exo_pair")
def exo_pair_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 1e-3,
    f_divergence: FDivergence = "reverse_kl",
    f_alpha: float = 0.5,
) -> PreferenceLossOutput:
    """EXO for pairwise preferences, arXiv 2402.00856 Eq. 16: ``KL(p_θ || p_label)`` over {chosen, rejected}.

    ``p_θ = softmax(β·score)`` over the two responses, i.e. ``(σ(βΔ), σ(-βΔ))``; the label
    distribution is ``(1-ε, ε)``. ε must be > 0 (the KL needs ``log ε``); the paper uses 1e-3.
    """
    _check_beta(beta)
    if not 0.0 < label_smoothing < 0.5:
        raise PoiseError(f"exo_pair needs label_smoothing in (0, 0.5), got {label_smoothing}")
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        f_divergence,
        f_alpha,
    )
    logits = beta * (chosen - rejected)
    log_q_chosen, log_q_rejected = F.logsigmoid(logits), F.logsigmoid(-logits)
    losses = log_q_chosen.exp() * (log_q_chosen - math.log1p(-label_smoothing)) + (
        log_q_rejected.exp() * (log_q_rejected - math.log(label_smoothing))
    )
    return PreferenceLossOutput(losses, beta * chosen, beta * rejected)


@register_loss("nca_pair")
def nca_pair_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """NCA for pairs, arXiv 2402.05369 (its pairwise, K = 2, form): absolute, not relative, likelihood targets.

    ``-log σ(r_w) - ½ log σ(-r_w) - ½ log σ(-r_l)`` with ``r = β·logratio``. It pushes the chosen
    reward up in absolute terms instead of only widening the gap, so the chosen likelihood does
    not fall with the rejected one. Defined for the reverse-KL reward only.
    """
    _check_beta(beta)
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        "reverse_kl",
        0.5,
    )
    r_chosen, r_rejected = beta * chosen, beta * rejected
    losses = (
        -F.logsigmoid(r_chosen) - 0.5 * F.logsigmoid(-r_chosen) - 0.5 * F.logsigmoid(-r_rejected)
    )
    return PreferenceLossOutput(losses, r_chosen, r_rejected)


@register_loss("bco_pair")
def bco_pair_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    reward_shift: float = 0.0,
) -> PreferenceLossOutput:
    """Binary-classifier optimisation on pairs, arXiv 2404.04656.

    Each response is classified on its own: chosen as desirable, rejected as undesirable,
    ``-log σ(r_w - δ) - log σ(-(r_l - δ))`` with ``r = β·logratio``. The paper's ``δ`` is a running
    mean of the rewards kept by the recipe; pass it as ``reward_shift`` (0, as in TRL, by default).
    """
    _check_beta(beta)
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        "reverse_kl",
        0.5,
    )
    r_chosen, r_rejected = beta * chosen, beta * rejected
    losses = -F.logsigmoid(r_chosen - reward_shift) - F.logsigmoid(-(r_rejected - reward_shift))
    return PreferenceLossOutput(losses, r_chosen, r_rejected)


@register_loss("sppo_hard")
def sppo_hard_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """SPPO with hard win probabilities, arXiv 2405.00675 Eq. 4.7 with ``P = 1`` for the winner.

    ``(logratio_w - 1/(2β))² + (logratio_l + 1/(2β))²``: each log-ratio regresses to ``±1/(2β)``,
    the value the self-play game assigns a sure win or a sure loss. The paper estimates ``P`` with
    a preference model; with a labelled pair it is 1 and 0.
    """
    _check_beta(beta)
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        "reverse_kl",
        0.5,
    )
    target = 0.5 / beta
    losses = (chosen - target) ** 2 + (rejected + target) ** 2
    return PreferenceLossOutput(losses, beta * chosen, beta * rejected)


@register_loss("aot")
def aot_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """Alignment via optimal transport (paired), arXiv 2406.05882.

    AOT asks the policy's chosen-minus-rejected log-ratio to stochastically dominate the
    reference's. In one dimension the optimal coupling is the sorted order, so both batches of
    margins are sorted and compared rank by rank with the (smoothed) logistic loss. The loss of
    row ``i`` therefore belongs to the ``i``-th smallest margins, not to pair ``i``; only the batch
    mean is meaningful, and the batch must be large enough for the quantiles to mean something.
    """
    _check_beta(beta)
    _check_smoothing(label_smoothing)
    _check_pair_shapes(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    policy_margins = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0).values  # [B]
    reference_margins = torch.sort(reference_chosen_logps - reference_rejected_logps, dim=0).values
    losses = _smoothed_logistic(beta * (policy_margins - reference_margins), label_smoothing)
    chosen = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected = beta * (policy_rejected_logps - reference_rejected_logps)
    return PreferenceLossOutput(losses, chosen, rejected)


@register_loss("aot_unpaired")
def aot_unpaired_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """Alignment via optimal transport (unpaired), arXiv 2406.05882.

    For data without pairing: the chosen log-ratios should dominate the rejected ones as
    distributions, so each set is sorted separately and compared rank by rank. As with ``aot``,
    only the batch mean of the losses is meaningful.
    """
    _check_beta(beta)
    _check_smoothing(label_smoothing)
    _check_pair_shapes(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    chosen = policy_chosen_logps - reference_chosen_logps  # [B]
    rejected = policy_rejected_logps - reference_rejected_logps  # [B]
    delta = torch.sort(chosen, dim=0).values - torch.sort(rejected, dim=0).values
    losses = _smoothed_logistic(beta * delta, label_smoothing)
    return PreferenceLossOutput(losses, beta * chosen, beta * rejected)


@register_loss("apo_zero")
def apo_zero_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """Anchored preference optimisation, APO-zero, arXiv 2408.06266 Eq. 7.

    ``(1 - σ(r_w)) + σ(r_l)``: raise the chosen likelihood and lower the rejected one, each
    anchored at the reference. For data whose chosen answers beat the model's own outputs.
    """
    _check_beta(beta)
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        "reverse_kl",
        0.5,
    )
    r_chosen, r_rejected = beta * chosen, beta * rejected
    losses = (1.0 - torch.sigmoid(r_chosen)) + torch.sigmoid(r_rejected)
    return PreferenceLossOutput(losses, r_chosen, r_rejected)


@register_loss("apo_down")
def apo_down_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """Anchored preference optimisation, APO-down, arXiv 2408.06266 Eq. 8.

    ``σ(r_w) + (1 - σ(r_w - r_l))``: lower both likelihoods, the rejected one more. For data whose
    chosen answers are still worse than what the model already writes.
    """
    _check_beta(beta)
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        "reverse_kl",
        0.5,
    )
    r_chosen, r_rejected = beta * chosen, beta * rejected
    losses = torch.sigmoid(r_chosen) + (1.0 - torch.sigmoid(r_chosen - r_rejected))
    return PreferenceLossOutput(losses, r_chosen, r_rejected)


@register_loss("discopop")
def discopop_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    discopop_tau: float = 0.05,
    f_divergence: FDivergence = "reverse_kl",
    f_alpha: float = 0.5,
) -> PreferenceLossOutput:
    """DiscoPOP's log-ratio modulated loss, arXiv 2406.08414 Eq. 5.

    With ``z = βΔ`` and mixing weight ``m = σ(z / τ)``: ``(1 - m)·(-log σ(z)) + m·exp(-z)``, a blend of
    the logistic (DPO) and exponential losses chosen by the sign and size of the margin.
    """
    _check_beta(beta)
    if not discopop_tau > 0:
        raise PoiseError(f"discopop_tau must be > 0, got {discopop_tau}")
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        f_divergence,
        f_alpha,
    )
    logits = beta * (chosen - rejected)
    # m·exp(-z) as exp(log σ(z/τ) - z): far below zero, σ(z/τ) underflows to 0 while exp(-z)
    # overflows to inf, and the product 0·inf was NaN (in the loss and its gradient).
    logistic = torch.sigmoid(-logits / discopop_tau) * -F.logsigmoid(logits)
    exponent = (F.logsigmoid(logits / discopop_tau) - logits).clamp(max=_MAX_EXPONENT)
    losses = logistic + torch.exp(exponent)
    return PreferenceLossOutput(losses, beta * chosen, beta * rejected)


@register_loss("sigmoid_norm")
def sigmoid_norm_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    f_divergence: FDivergence = "reverse_kl",
    f_alpha: float = 0.5,
) -> PreferenceLossOutput:
    """Length-normalised DPO: ``-log σ(β (score_w/|y_w| - score_l/|y_l|))``.

    DPO's Eq. 7 (arXiv 2305.18290) on per-token average log-ratios, the normalisation SimPO
    (arXiv 2405.14734) applies to the policy likelihood, here kept relative to the
    reference. ``chosen_lengths``/``rejected_lengths`` (token counts, ``[B]``) are required.
    """
    _check_beta(beta)
    chosen, rejected = _scores(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        f_divergence,
        f_alpha,
    )
    delta = _per_token(chosen, chosen_lengths, "sigmoid_norm", "chosen") - _per_token(
        rejected, rejected_lengths, "sigmoid_norm", "rejected"
    )
    losses = -F.logsigmoid(beta * delta)
    return PreferenceLossOutput(losses, beta * chosen, beta * rejected)


# ---------------------------------------------------------------------------------------------
# dispatch by name


def loss_parameters(loss_type: str) -> dict[str, Any]:
    """The keyword parameters of a registered loss and their defaults, e.g. for help text."""
    fn = LOSSES.get(loss_type)
    return {
        name: param.default
        for name, param in inspect.signature(fn).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }


def preference_loss(
    loss_type: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    **params: Any,
) -> PreferenceLossOutput:
    """Compute the registered loss ``loss_type`` on summed log-probs (each ``[B]``).

    ``params`` are the loss's keyword parameters (``beta``, ``label_smoothing``, ``f_divergence``…);
    a parameter the loss does not take is an error rather than silently ignored, so that a typo
    or a setting that has no meaning for this loss (``f_divergence`` for ``nca_pair``) is caught.
    """
    fn = LOSSES.get(loss_type)
    accepted = loss_parameters(loss_type)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise PoiseError(
            f"loss {loss_type!r} does not take {', '.join(repr(u) for u in unknown)} "
            f"(it takes: {', '.join(accepted)})"
        )
    return fn(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        **params,
    )


# ---------------------------------------------------------------------------------------------
# LD-DPO


def ld_logprobs(
    per_token_logps_chosen: Tensor,
    mask_chosen: Tensor,
    per_token_logps_rejected: Tensor,
    mask_rejected: Tensor,
    alpha: float,
) -> tuple[Tensor, Tensor]:
    """Length-desensitised sequence log-probs of LD-DPO, arXiv 2409.06411.

    With ``l_p = min(|y_w|, |y_l|)`` the public length of the pair, LD-DPO replaces each response's
    likelihood by ``π̂(y|x) = Π_{i ≤ l_p} p(y_i|·) · (Π_{i > l_p} p(y_i|·))^α``: the first ``l_p``
    response tokens count fully, the longer response's excess tokens are weighted by ``α``. In log
    space: ``log π̂ = Σ_{i ≤ l_p} log p_i + α Σ_{i > l_p} log p_i``. ``α = 1`` is plain summation
    (standard DPO); ``α = 0`` truncates both responses to the shorter one's length.

    Args:
        per_token_logps_chosen: ``[B, Tc]`` per-token log-probs (0 where masked out).
        mask_chosen: ``[B, Tc]`` 1 on the chosen response's tokens.
        per_token_logps_rejected: ``[B, Tr]``.
        mask_rejected: ``[B, Tr]``.
        alpha: the paper's ``α`` in [0, 1].

    Returns:
        ``(chosen [B], rejected [B])`` desensitised log-probs. Token order is counted along each
        row of the mask, so prompt tokens or padding before the response do not shift ``l_p``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise PoiseError(f"ld_alpha must be in [0, 1], got {alpha}")
    if per_token_logps_chosen.shape != mask_chosen.shape:
        raise ValueError("per_token_logps_chosen and mask_chosen must have the same [B, T] shape")
    if per_token_logps_rejected.shape != mask_rejected.shape:
        raise ValueError("per_token_logps_rejected and mask_rejected must have the same shape")
    if per_token_logps_chosen.shape[0] != per_token_logps_rejected.shape[0]:
        raise ValueError("chosen and rejected must have the same batch size")
    positions_chosen = token_positions(mask_chosen)  # [B, Tc], 1-based within the response
    positions_rejected = token_positions(mask_rejected)  # [B, Tr]
    public = torch.minimum(
        positions_chosen.max(dim=-1).values, positions_rejected.max(dim=-1).values
    )
    public = public.unsqueeze(-1)  # [B, 1]

    def desensitise(logps: Tensor, positions: Tensor) -> Tensor:
        counted = positions > 0  # [B, T]
        weights = torch.where(positions <= public, 1.0, alpha).to(logps.dtype)  # [B, T]
        return masked_sum(logps * weights, counted)  # [B]

    return (
        desensitise(per_token_logps_chosen, positions_chosen),
        desensitise(per_token_logps_rejected, positions_rejected),
    )


def ld_dpo_loss(
    policy_chosen_token_logps: Tensor,
    policy_rejected_token_logps: Tensor,
    reference_chosen_token_logps: Tensor,
    reference_rejected_token_logps: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    *,
    ld_alpha: float,
    ld_apply_to_reference: bool = True,
    loss_type: str = "sigmoid",
    **params: Any,
) -> PreferenceLossOutput:
    """LD-DPO, arXiv 2409.06411: a preference loss on length-desensitised log-probs.

    Per-token log-probs (``[B, Tc]`` for chosen, ``[B, Tr]`` for rejected, 0 off the mask) are
    reduced with :func:`ld_logprobs` and then fed to the registered loss ``loss_type``
    (``"sigmoid"`` is the paper's LD-DPO; ``params`` go to that loss, e.g. ``beta``).

    ``ld_apply_to_reference``: whether the reference model's likelihoods are desensitised too.
    The paper's LD-DPO objective substitutes the desensitised likelihood ``π̂`` for *both*
    ``π_θ`` and ``π_ref`` in DPO's log-ratio, ``β log π̂_θ(y|x)/π̂_ref(y|x)``, so that the excess
    tokens enter as a weighted log-ratio ``α(log π_θ - log π_ref)`` rather than leaving an
    un-weighted ``-(1-α)·log π_ref`` of the excess in the reward; ``True`` (the default) follows
    it, as TRL does. LLaMA-Factory weights the policy only (``False`` here): the reference then
    keeps its full-length likelihood, which re-introduces a length-dependent constant per pair.
    """
    chosen, rejected = ld_logprobs(
        policy_chosen_token_logps, chosen_mask, policy_rejected_token_logps, rejected_mask, ld_alpha
    )
    if ld_apply_to_reference:
        ref_chosen, ref_rejected = ld_logprobs(
            reference_chosen_token_logps,
            chosen_mask,
            reference_rejected_token_logps,
            rejected_mask,
            ld_alpha,
        )
    else:
        ref_chosen = masked_sum(reference_chosen_token_logps, chosen_mask)
        ref_rejected = masked_sum(reference_rejected_token_logps, rejected_mask)
    return preference_loss(loss_type, chosen, rejected, ref_chosen, ref_rejected, **params)


# ---------------------------------------------------------------------------------------------
# MODPO


def modpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_margin_rewards: Tensor,
    rejected_margin_rewards: Tensor,
    weights: Tensor | list[float] | tuple[float, ...],
    *,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """Multi-objective DPO (MODPO), arXiv 2310.03708 (the MODPO loss).

    Trains on the preferences of objective ``k`` while the other objectives' reward models
    ``r_{-k}`` (already trained) act as a margin, so the result optimises ``w^T r`` for the weights
    ``w`` (on the simplex, ``w[0] = w_k`` for the objective whose pairs these are)::

        -log σ( (β / w_k) · (logratio_w - logratio_l)
                - (1 / w_k) · w_{-k}^T (r_{-k}(x, y_w) - r_{-k}(x, y_l)) )

    Args:
        policy_*_logps, reference_*_logps: ``[B]`` summed log-probs.
        chosen_margin_rewards, rejected_margin_rewards: ``[B, K-1]`` the other objectives'
            rewards of each response (``[B]`` is accepted when ``K = 2``).
        weights: ``[K]`` non-negative, summing to 1, ``weights[0] > 0``.

    Returns:
        losses ``[B]``; rewards are the implicit rewards of objective ``k``,
        ``(β·logratio - w_{-k}^T r_{-k}) / w_k``, whose difference is the logit above.
    """
    _check_beta(beta)
    _check_pair_shapes(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    w = torch.as_tensor(weights, dtype=policy_chosen_logps.dtype, device=policy_chosen_logps.device)
    if w.dim() != 1 or w.numel() < 2:
        raise PoiseError(f"modpo weights must be a list of at least 2 numbers, got {weights!r}")
    if bool((w < 0).any()) or not float(w[0]) > 0 or abs(float(w.sum()) - 1.0) > 1e-4:
        raise PoiseError(
            f"modpo weights must be >= 0, sum to 1 and have weights[0] > 0, got {w.tolist()}"
        )
    margins_chosen = chosen_margin_rewards.to(w.dtype)
    margins_rejected = rejected_margin_rewards.to(w.dtype)
    if margins_chosen.dim() == 1:
        margins_chosen = margins_chosen.unsqueeze(-1)  # [B, 1]
        margins_rejected = margins_rejected.unsqueeze(-1)
    batch = policy_chosen_logps.shape[0]
    expected = (batch, w.numel() - 1)
    if tuple(margins_chosen.shape) != expected or tuple(margins_rejected.shape) != expected:
        raise ValueError(
            f"margin rewards must be [batch, K-1] = {expected}; got "
            f"{tuple(margins_chosen.shape)} and {tuple(margins_rejected.shape)}"
        )
    w_k, w_rest = w[0], w[1:]
    chosen = (beta * (policy_chosen_logps - reference_chosen_logps) - margins_chosen @ w_rest) / w_k
    rejected = (
        beta * (policy_rejected_logps - reference_rejected_logps) - margins_rejected @ w_rest
    ) / w_k
    losses = -F.logsigmoid(chosen - rejected)
    return PreferenceLossOutput(losses, chosen, rejected)
