"""Reward- and cost-model losses on scalar scores, as pure functions.

A reward model scores a (prompt, response) with one number per response; these losses train it
from preference pairs. All inputs are ``[B]`` (one score per response of each pair) and all
outputs are per-pair losses ``[B]``; the recipe reduces them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from poise.errors import PoiseError

__all__ = ["cost_model_loss", "reward_model_loss", "safety_signs"]


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected [batch] tensors of one shape, got {shapes}")


def reward_model_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | float | None = None,
    center_rewards_coefficient: float | None = None,
) -> Tensor:
    """Bradley-Terry reward-model loss ``-log σ(r_c - r_r - m)`` per pair, ``[B] -> [B]``.

    The Bradley-Terry likelihood of the human label (InstructGPT, arXiv 2203.02155 Eq. 1; DPO
    arXiv 2305.18290 Eq. 2). ``margin`` (a number or ``[B]``) asks the chosen reward to win by at
    least ``m``, as Llama 2 does with graded preferences (arXiv 2307.09288 Eq. 2).

    ``center_rewards_coefficient = η`` adds ``η (r_c + r_r)²`` per pair, the auxiliary term of
    "Helping or Herding" (arXiv 2312.09244): Bradley-Terry only sees reward differences, so the
    overall level drifts freely; the penalty keeps rewards centred on zero, which makes rewards
    of different models and training runs comparable (and ensembles meaningful). The mean of
    these per-pair losses equals the batch objective ``mean BT + η mean (r_c + r_r)²``.
    """
    _check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    logits = chosen_rewards - rejected_rewards  # [B]
    if margin is not None:
        if isinstance(margin, Tensor) and margin.dim() and margin.shape != logits.shape:
            # a [B, 1] margin would broadcast the [B] logits to [B, B] pairs of pairs
            raise ValueError(
                f"margin must be a number or [batch] like the rewards, got shape "
                f"{tuple(margin.shape)} for {tuple(logits.shape)} rewards"
            )
        logits = logits - (margin if isinstance(margin, Tensor) else float(margin))
    losses = -F.logsigmoid(logits)  # [B]
    if center_rewards_coefficient is not None:
        if center_rewards_coefficient < 0:
            raise PoiseError(
                f"center_rewards_coefficient must be >= 0, got {center_rewards_coefficient}"
            )
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return losses


def safety_signs(is_safe: Tensor) -> Tensor:
    """Safe RLHF's harmfulness sign ``s``: ``+1`` for an unsafe response, ``-1`` for a safe one.

    ``[B]`` bool -> ``[B]`` float. The cost model should give unsafe responses positive cost.
    """
    return torch.where(is_safe.bool(), -1.0, 1.0)


def cost_model_loss(
    chosen_costs: Tensor,
    rejected_costs: Tensor,
    chosen_is_safe: Tensor,
    rejected_is_safe: Tensor,
) -> Tensor:
    """Safe RLHF cost-model loss, arXiv 2310.12773 (its cost-model objective), ``[B] -> [B]``.

    In a harmlessness pair the chosen response is the safer one and the rejected response the
    more harmful one, so with ``C`` the cost model's score::

        -log σ(C(y_rejected) - C(y_chosen))          # Bradley-Terry: the more harmful costs more
        -log σ(s_chosen   · C(y_chosen))             # sign term: unsafe -> C > 0, safe -> C < 0
        -log σ(s_rejected · C(y_rejected))

    with ``s = +1`` for an unsafe response and ``-1`` for a safe one (:func:`safety_signs`). The
    sign terms pin the cost's zero to the safe/unsafe boundary, which is what lets the safe-RL
    stage use ``C <= 0`` (or a threshold ``d``) as its constraint; a Bradley-Terry loss alone
    would leave the level of ``C`` arbitrary.

    Args:
        chosen_costs: ``[B]`` cost of the safer response.
        rejected_costs: ``[B]`` cost of the more harmful response.
        chosen_is_safe, rejected_is_safe: ``[B]`` bool safety labels of each response.
    """
    _check_same_shape(
        chosen_costs=chosen_costs,
        rejected_costs=rejected_costs,
        chosen_is_safe=chosen_is_safe,
        rejected_is_safe=rejected_is_safe,
    )
    sign_chosen = safety_signs(chosen_is_safe).to(chosen_costs.dtype)  # [B]
    sign_rejected = safety_signs(rejected_is_safe).to(rejected_costs.dtype)  # [B]
    ranking = -F.logsigmoid(rejected_costs - chosen_costs)
    classification = -F.logsigmoid(sign_chosen * chosen_costs) - F.logsigmoid(
        sign_rejected * rejected_costs
    )
    return ranking + classification
