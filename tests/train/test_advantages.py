"""Safe-RL multiplier updates and group advantages against closed forms (numpy / math)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poise.errors import PoiseError
from poise.train.advantages import (
    grpo_advantages,
    lagrange_multiplier_step,
    log_lagrange_multiplier_step,
    rloo_advantages,
    safe_rlhf_advantages,
)


def test_projected_multiplier_step() -> None:
    assert lagrange_multiplier_step(0.5, episode_cost=2.0, threshold=0.5, lr=0.1) == pytest.approx(
        0.65
    )
    # satisfied constraint: λ shrinks, but never below zero
    assert lagrange_multiplier_step(0.05, episode_cost=-3.0, threshold=0.0, lr=0.1) == 0.0
    with pytest.raises(PoiseError, match="lr"):
        lagrange_multiplier_step(0.5, 1.0, 0.0, lr=-1.0)


def test_log_multiplier_step() -> None:
    log_lambda = math.log(2.0)
    new = log_lagrange_multiplier_step(log_lambda, episode_cost=1.5, threshold=0.5, lr=0.05)
    assert new == pytest.approx(math.log(2.0) + 0.05 * 2.0 * 1.0)
    # the same step as SGD on -(J_C - d)·exp(log λ) with respect to log λ
    param = torch.tensor(log_lambda, dtype=torch.float64, requires_grad=True)
    (-(1.5 - 0.5) * param.exp()).backward()
    assert param.grad is not None
    assert new == pytest.approx(log_lambda - 0.05 * float(param.grad))
    capped = log_lagrange_multiplier_step(log_lambda, 100.0, 0.0, lr=1.0, max_multiplier=3.0)
    assert capped == pytest.approx(math.log(3.0))


def test_safe_rlhf_advantage_combination() -> None:
    reward_adv = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    cost_adv = torch.tensor([[0.5, 1.0], [-1.0, 2.0]])
    lam = 1.5
    out = safe_rlhf_advantages(reward_adv, cost_adv, lam)
    expected = (reward_adv.numpy() - lam * cost_adv.numpy()) / (1 + lam)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    torch.testing.assert_close(safe_rlhf_advantages(reward_adv, cost_adv, 0.0), reward_adv)
    with pytest.raises(PoiseError, match=">= 0"):
        safe_rlhf_advantages(reward_adv, cost_adv, -0.1)
    with pytest.raises(ValueError, match="one shape"):
        safe_rlhf_advantages(reward_adv, cost_adv[:1], 1.0)


def test_grpo_closed_form() -> None:
    rewards = np.array([1.0, 2.0, 4.0, 0.0, 0.0, 3.0])
    out = grpo_advantages(torch.tensor(rewards, dtype=torch.float64), group_size=3, eps=1e-4)
    groups = rewards.reshape(2, 3)
    expected = (groups - groups.mean(1, keepdims=True)) / (
        groups.std(1, ddof=1, keepdims=True) + 1e-4
    )
    np.testing.assert_allclose(out.numpy(), expected.reshape(-1), rtol=1e-12)
    unscaled = grpo_advantages(torch.tensor(rewards).view(2, 3), scale_rewards=False)
    np.testing.assert_allclose(unscaled.numpy(), groups - groups.mean(1, keepdims=True))
    # identical rewards: advantage 0, not NaN
    assert grpo_advantages(torch.ones(4), group_size=4).abs().max() == 0


def test_rloo_closed_form() -> None:
    rewards = [1.0, 2.0, 6.0, -1.0, 3.0, 0.0, 0.0, 4.0]
    out = rloo_advantages(torch.tensor(rewards, dtype=torch.float64), group_size=4)
    expected = []
    for g in range(2):
        group = rewards[4 * g : 4 * g + 4]
        for i, r in enumerate(group):
            others = [x for j, x in enumerate(group) if j != i]
            expected.append(r - sum(others) / len(others))
    assert out.tolist() == pytest.approx(expected, rel=1e-12)


def test_group_shape_errors() -> None:
    with pytest.raises(ValueError, match="do not split"):
        rloo_advantages(torch.zeros(5), group_size=2)
    with pytest.raises(ValueError, match="group_size given"):
        grpo_advantages(torch.zeros(6))
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.zeros(3, 1))


_groups = st.integers(1, 5).flatmap(
    lambda g: st.integers(2, 6).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(st.floats(-100, 100, allow_nan=False), min_size=g * k, max_size=g * k),
        )
    )
)


@settings(max_examples=80, deadline=None)
@given(_groups)
def test_rloo_advantages_sum_to_zero_per_group(data: tuple[int, list[float]]) -> None:
    k, rewards = data
    out = rloo_advantages(torch.tensor(rewards, dtype=torch.float64), group_size=k)
    sums = out.view(-1, k).sum(dim=1)
    assert sums.abs().max() <= 1e-9 * max(1.0, max(abs(r) for r in rewards))


@settings(max_examples=80, deadline=None)
@given(_groups, st.booleans())
def test_grpo_advantages_have_zero_mean_per_group(
    data: tuple[int, list[float]], scale: bool
) -> None:
    k, rewards = data
    out = grpo_advantages(
        torch.tensor(rewards, dtype=torch.float64), group_size=k, scale_rewards=scale
    )
    means = out.view(-1, k).mean(dim=1)
    assert means.abs().max() <= 1e-9 * max(1.0, max(abs(r) for r in rewards))


def test_grpo_default_eps_is_trls() -> None:
    """TRL's GRPOTrainer divides by ``std + 1e-4``; a group whose rewards barely differ (std
    7.1e-4) shows the default."""
    rewards = torch.tensor([0.0, 1e-3, 0.0, 1e-3], dtype=torch.float64)
    std = float(rewards.view(2, 2)[0].std())
    out = grpo_advantages(rewards, group_size=2)
    assert out.tolist() == pytest.approx([-5e-4 / (std + 1e-4), 5e-4 / (std + 1e-4)] * 2, rel=1e-12)
