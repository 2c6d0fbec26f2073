"""Training losses as pure, tested functions.

- :mod:`poise.train.losses.preference`: the DPO family (registered by name in :data:`LOSSES`),
  f-divergence rewards, LD-DPO and MODPO.
- :mod:`poise.train.losses.reward`: Bradley-Terry reward-model loss and the Safe RLHF cost loss.

Recipes import from here: ``from poise.train.losses import preference_loss, LOSSES``.
"""

from __future__ import annotations

from poise.train.losses.preference import (
    F_DIVERGENCES,
    LOSSES,
    FDivergence,
    PreferenceLossOutput,
    aot_loss,
    aot_unpaired_loss,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    discopop_loss,
    exo_pair_loss,
    f_divergence_scores,
    hinge_loss,
    ipo_loss,
    ld_dpo_loss,
    ld_logprobs,
    loss_parameters,
    modpo_loss,
    nca_pair_loss,
    preference_loss,
    register_loss,
    robust_loss,
    sigmoid_loss,
    sigmoid_norm_loss,
    sppo_hard_loss,
)
from poise.train.losses.reward import cost_model_loss, reward_model_loss, safety_signs

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
    "cost_model_loss",
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
    "reward_model_loss",
    "robust_loss",
    "safety_signs",
    "sigmoid_loss",
    "sigmoid_norm_loss",
    "sppo_hard_loss",
]
