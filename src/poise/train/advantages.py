"""Advantages and the Lagrange multiplier for safe RL, as pure functions.

- Safe RLHF (arXiv 2310.12773): the Lagrangian relaxation ``max_θ min_{λ≥0} J_R(θ) - λ (J_C(θ) - d)``
  of "maximise reward subject to expected cost ≤ d". The policy ascends on the combined
  advantage, the multiplier ascends on the constraint violation.
- GRPO (DeepSeekMath, arXiv 2402.03300 §4.1.2): advantages normalised within each group of
  completions sampled for the same prompt.
- RLOO (arXiv 2402.14740, after Kool et al. 2019): leave-one-out baselines within a group.

Group layout: rewards are ``[num_groups, group_size]``, or flat ``[num_groups * group_size]`` with
``group_size`` given, consecutive entries belonging to the same prompt (as a sampler that draws
``n`` completions per prompt lays them out). The output has the input's shape.
"""

from __future__ import annotations

import math

from torch import Tensor

from poise.errors import PoiseError

__all__ = [
    "grpo_advantages",
    "lagrange_multiplier_step",
    "log_lagrange_multiplier_step",
    "rloo_advantages",
    "safe_rlhf_advantages",
]


def lagrange_multiplier_step(
    multiplier: float, episode_cost: float, threshold: float, lr: float
) -> float:
    """Projected dual ascent on ``λ``: ``λ ← max(0, λ + lr · (J_C - d))``.

    ``episode_cost`` is the estimate of ``J_C`` (mean cost of recent episodes), ``threshold`` the
    budget ``d``. The multiplier grows while the constraint is violated and shrinks (down to 0,
    never below: a negative multiplier would reward cost) once it holds.
    """
    if lr < 0:
        raise PoiseError(f"lr must be >= 0, got {lr}")
    return max(0.0, multiplier + lr * (episode_cost - threshold))


def log_lagrange_multiplier_step(
    log_multiplier: float,
    episode_cost: float,
    threshold: float,
    lr: float,
    *,
    max_multiplier: float | None = None,
) -> float:
    """Dual ascent on ``log λ``, the parameterisation Safe RLHF uses (arXiv 2310.12773 §3.3).

    ``ln λ ← ln λ + lr · λ · (J_C - d)``: gradient ascent on ``λ (J_C - d)`` with respect to
    ``ln λ`` (the chain rule contributes the factor ``λ``). Storing ``ln λ`` keeps ``λ > 0`` without
    a projection, and the step is multiplicative, so a small multiplier can grow by orders of
    magnitude without a huge learning rate. ``max_multiplier`` caps ``λ`` (Safe RLHF's
    ``lambda_max``). Returns the new ``ln λ``.
    """
    if lr < 0:
        raise PoiseError(f"lr must be >= 0, got {lr}")
    updated = log_multiplier + lr * math.exp(log_multiplier) * (episode_cost - threshold)
    if max_multiplier is not None:
        if not max_multiplier > 0:
            raise PoiseError(f"max_multiplier must be > 0, got {max_multiplier}")
        updated = min(updated, math.log(max_multiplier))
    return updated


def safe_rlhf_advantages(
    reward_advantages: Tensor, cost_advantages: Tensor, multiplier: float
) -> Tensor:
    """Safe RLHF's policy advantage ``(A_R - λ A_C) / (1 + λ)`` (arXiv 2310.12773 §3.3).

    Any shape (``[B, T]`` per token or ``[B]``), the two inputs alike. Dividing by ``1 + λ`` keeps
    the advantage on the reward's scale whatever ``λ`` is, so the PPO clip range and the learning
    rate mean the same thing early (``λ ≈ 0``) and late (``λ`` large) in training.
    """
    if reward_advantages.shape != cost_advantages.shape:
        raise ValueError(
            f"reward and cost advantages must have one shape, got "
            f"{tuple(reward_advantages.shape)} and {tuple(cost_advantages.shape)}"
        )
    if multiplier < 0:
        raise PoiseError(f"the Lagrange multiplier must be >= 0, got {multiplier}")
    return (reward_advantages - multiplier * cost_advantages) / (1.0 + multiplier)


def _grouped(rewards: Tensor, group_size: int | None) -> Tensor:
    if rewards.dim() == 2:
        if group_size is not None and group_size != rewards.shape[1]:
            raise ValueError(
                f"group_size {group_size} disagrees with rewards of shape {tuple(rewards.shape)}"
            )
        return rewards
    if rewards.dim() != 1 or group_size is None:
        raise ValueError("rewards must be [num_groups, group_size], or [N] with group_size given")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def grpo_advantages(
    rewards: Tensor,
    group_size: int | None = None,
    *,
    scale_rewards: bool = True,
    eps: float = 1e-4,
) -> Tensor:
    """GRPO outcome advantages, arXiv 2402.03300 §4.1.2: ``(r - mean_group) / (std_group + eps)``.

    ``std_group`` is the sample standard deviation (``n - 1`` denominator), as in TRL's GRPO;
    ``eps`` keeps a group whose completions all got the same reward at advantage 0 rather than
    NaN. ``scale_rewards=False`` drops the division (Dr. GRPO, arXiv 2503.20783, which argues
    the std normalisation over-weights prompts that are too easy or too hard).
    """
    grouped = _grouped(rewards, group_size)  # [G, K]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_rewards:
        if grouped.shape[1] < 2:
            raise ValueError("a group needs at least 2 completions for a standard deviation")
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(rewards.shape)


def rloo_advantages(rewards: Tensor, group_size: int | None = None) -> Tensor:
    """REINFORCE leave-one-out advantages, arXiv 2402.14740: ``r_i - mean_{j≠i} r_j``.

    Each completion's baseline is the mean reward of the *other* completions of its prompt, an
    unbiased baseline (it does not depend on the completion itself). Equivalently
    ``K/(K-1) · (r_i - mean_group)``, so the advantages of a group sum to zero.
    """
    grouped = _grouped(rewards, group_size)  # [G, K]
    k = grouped.shape[1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 completions per prompt")
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)  # [G, K]
    return (grouped - others_mean).reshape(rewards.shape)
