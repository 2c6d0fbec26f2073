"""Reward- and cost-model losses against closed forms written with ``math``."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from poise.errors import PoiseError
from poise.train.losses import cost_model_loss, reward_model_loss, safety_signs


def _neg_log_sigmoid(z: float) -> float:
    return math.log1p(math.exp(-z)) if z > -30 else -z


def test_bradley_terry_closed_form() -> None:
    chosen = torch.tensor([1.5, -0.2, 3.0], dtype=torch.float64)
    rejected = torch.tensor([0.5, 0.4, -1.0], dtype=torch.float64)
    losses = reward_model_loss(chosen, rejected)
    expected = [
        _neg_log_sigmoid(c - r) for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)
    ]
    assert losses.tolist() == pytest.approx(expected, rel=1e-12)


def test_margin_scalar_and_per_pair() -> None:
    chosen = torch.tensor([1.5, -0.2], dtype=torch.float64)
    rejected = torch.tensor([0.5, 0.4], dtype=torch.float64)
    scalar = reward_model_loss(chosen, rejected, margin=0.75)
    assert scalar.tolist() == pytest.approx(
        [_neg_log_sigmoid(1.0 - 0.75), _neg_log_sigmoid(-0.6 - 0.75)], rel=1e-12
    )
    per_pair = reward_model_loss(
        chosen, rejected, margin=torch.tensor([0.0, 2.0], dtype=torch.float64)
    )
    assert per_pair.tolist() == pytest.approx(
        [_neg_log_sigmoid(1.0), _neg_log_sigmoid(-0.6 - 2.0)], rel=1e-12
    )


def test_reward_centering_adds_the_squared_sum() -> None:
    chosen = torch.tensor([2.0, 1.0, -0.5], dtype=torch.float64)
    rejected = torch.tensor([1.0, 3.0, -2.5], dtype=torch.float64)
    eta = 0.01
    losses = reward_model_loss(chosen, rejected, center_rewards_coefficient=eta)
    pairs = list(zip(chosen.tolist(), rejected.tolist(), strict=True))
    expected_batch = (
        sum(_neg_log_sigmoid(c - r) for c, r in pairs) / 3
        + eta * sum((c + r) ** 2 for c, r in pairs) / 3
    )
    assert float(losses.mean()) == pytest.approx(expected_batch, rel=1e-12)
    with pytest.raises(PoiseError, match="center_rewards_coefficient"):
        reward_model_loss(chosen, rejected, center_rewards_coefficient=-1.0)


def test_reward_loss_shape_check() -> None:
    with pytest.raises(ValueError, match="one shape"):
        reward_model_loss(torch.zeros(3), torch.zeros(2))
    # a column of margins would broadcast the [3] logits to [3, 3]
    with pytest.raises(ValueError, match="margin must be a number or \\[batch\\]"):
        reward_model_loss(torch.zeros(3), torch.zeros(3), margin=torch.ones(3, 1))
    with pytest.raises(ValueError, match="margin must be"):
        reward_model_loss(torch.zeros(3), torch.zeros(3), margin=torch.ones(2))
    # [B, 1] scores (a classifier's logits not yet squeezed) are refused, not returned as [B, 1]
    with pytest.raises(ValueError, match="one shape"):
        reward_model_loss(torch.zeros(3, 1), torch.zeros(3, 1))
    flags = torch.ones(3, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="one shape"):
        cost_model_loss(torch.zeros(3, 1), torch.zeros(3, 1), flags, flags)
    # a 0-d tensor is a number
    assert reward_model_loss(torch.zeros(3), torch.zeros(3), margin=torch.tensor(1.0)).shape == (3,)


def test_safety_signs() -> None:
    assert safety_signs(torch.tensor([True, False])).tolist() == [-1.0, 1.0]


def test_cost_loss_closed_form() -> None:
    """Safe RLHF: BT on costs (the more harmful costs more) plus the sign terms."""
    chosen = torch.tensor([-1.0, 0.5, -2.0], dtype=torch.float64)  # safer responses
    rejected = torch.tensor([2.0, 1.0, -0.5], dtype=torch.float64)  # more harmful responses
    chosen_safe = torch.tensor([True, False, True])
    rejected_safe = torch.tensor([False, False, True])
    losses = cost_model_loss(chosen, rejected, chosen_safe, rejected_safe)
    for i in range(3):
        c, r = float(chosen[i]), float(rejected[i])
        s_c = -1.0 if bool(chosen_safe[i]) else 1.0
        s_r = -1.0 if bool(rejected_safe[i]) else 1.0
        expected = _neg_log_sigmoid(r - c) + _neg_log_sigmoid(s_c * c) + _neg_log_sigmoid(s_r * r)
        assert float(losses[i]) == pytest.approx(expected, rel=1e-12)


def test_cost_loss_prefers_the_right_signs() -> None:
    """A safe response with negative cost and an unsafe one with positive cost score best."""
    safe, unsafe = torch.tensor([True]), torch.tensor([False])
    right = cost_model_loss(torch.tensor([-3.0]), torch.tensor([3.0]), safe, unsafe)
    wrong_level = cost_model_loss(torch.tensor([3.0]), torch.tensor([6.0]), safe, unsafe)
    wrong_order = cost_model_loss(torch.tensor([3.0]), torch.tensor([-3.0]), safe, unsafe)
    assert float(right[0]) < float(wrong_level[0])
    assert float(right[0]) < float(wrong_order[0])


@pytest.mark.parametrize(
    ("margin", "eta"), [(None, None), (0.5, None), ("per-pair", None), (None, 0.01), (0.5, 0.01)]
)
def test_reward_loss_matches_trl(margin: object, eta: float | None) -> None:
    """The batch mean against TRL 1.16's ``RewardTrainer.compute_loss`` itself, run on a stand-in
    model that returns the scores as ``[2B, 1]`` logits (chosen rows first, as TRL's collator
    stacks them) and a stub trainer that carries only what the method reads."""
    from types import SimpleNamespace
    from typing import Any

    reward_trainer = pytest.importorskip("trl.trainer.reward_trainer")
    g = torch.Generator().manual_seed(0)
    chosen = torch.randn(6, generator=g, dtype=torch.float64)
    rejected = torch.randn(6, generator=g, dtype=torch.float64)
    if margin == "per-pair":
        margin = torch.rand(6, generator=g, dtype=torch.float64)

    class _StandIn(torch.nn.Module):
        def forward(self, **kwargs: Any) -> SimpleNamespace:
            return SimpleNamespace(logits=torch.cat([chosen, rejected])[:, None])

    model = _StandIn()
    stub = SimpleNamespace(
        model=model,
        args=SimpleNamespace(center_rewards_coefficient=eta),
        accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs: dict[str, Any] = {"attention_mask": torch.ones(12, 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    expected = reward_trainer.RewardTrainer.compute_loss(stub, model, inputs)
    ours = reward_model_loss(
        chosen,
        rejected,
        margin=margin,  # type: ignore[arg-type]
        center_rewards_coefficient=eta,
    )
    assert float(ours.mean()) == pytest.approx(float(expected), rel=1e-12)
