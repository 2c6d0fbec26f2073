"""Training recipes: one short loop per method, HF model folders in and out.

    from poise.train.recipes import train
    train("dpo", model="organism-small", data="pairs.jsonl", output="out/dpo", lr=5e-5)

or call a recipe directly (``poise.train.recipes.dpo.train_dpo``, ``modpo.train_modpo``,
``reward.train_reward`` / ``train_cost``, ``safe_rl.train_safe_rl``). ``poise train <name>``
exposes the same fields as flags. Shared machinery (configs, accelerate, LoRA, checkpoints,
the output folder) lives in :mod:`poise.train.recipes.common`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from poise.plugins import load_plugins
from poise.registry import Registry
from poise.train.recipes.common import TrainConfig, TrainResult
from poise.train.recipes.dpo import DPOConfig, train_dpo
from poise.train.recipes.modpo import MODPOConfig, train_modpo
from poise.train.recipes.reward import CostConfig, RewardConfig, train_cost, train_reward
from poise.train.recipes.safe_rl import SafeRLConfig, train_safe_rl

__all__ = [
    "RECIPES",
    "CostConfig",
    "DPOConfig",
    "MODPOConfig",
    "Recipe",
    "RewardConfig",
    "SafeRLConfig",
    "TrainConfig",
    "TrainResult",
    "train",
]


@dataclass(frozen=True)
class Recipe:
    """A recipe's config class, its training function and one line of help."""

    config: type[TrainConfig]
    train: Callable[..., TrainResult]
    help: str


RECIPES: Registry[Recipe] = Registry("recipe", loader=load_plugins)
RECIPES.add(
    "dpo",
    Recipe(DPOConfig, train_dpo, "DPO or any registered preference loss; LD-DPO with --ld-alpha."),
)
RECIPES.add(
    "modpo",
    Recipe(MODPOConfig, train_modpo, "Multi-objective DPO with margins from other reward models."),
)
RECIPES.add(
    "reward",
    Recipe(RewardConfig, train_reward, "A Bradley-Terry reward model (sequence classifier)."),
)
RECIPES.add(
    "cost", Recipe(CostConfig, train_cost, "A Safe RLHF cost model: cost > 0 means harmful.")
)
RECIPES.add(
    "safe_rl",
    Recipe(
        SafeRLConfig,
        train_safe_rl,
        "On-policy RL for reward under a cost limit (Safe RLHF, HC-RLHF).",
    ),
)


RECIPES.alias("safe-rl", "safe_rl")


def train(recipe: str, config: TrainConfig | None = None, /, **fields: Any) -> TrainResult:
    """Run the recipe ``recipe`` (``dpo``, ``modpo``, ``reward``, ``cost``, ``safe_rl``)."""
    return RECIPES.get(recipe).train(config, **fields)
