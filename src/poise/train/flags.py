"""How ``poise train`` spells the flag of each config field: one place for the CLI, which
declares them, and for the config errors, which name them (a light module: the CLI imports it
before any recipe)."""

from __future__ import annotations

from poise.config import COMMON_FIELD_FLAGS, dashed_flag

__all__ = ["FIELD_FLAGS", "field_flag"]

#: the flag of a config field that ``poise train`` does not spell ``--FIELD`` (short forms
#: aside): what the CLI declares and what errors name
FIELD_FLAGS = {
    **COMMON_FIELD_FLAGS,
    "margin_reward_models": "--margin-reward-model",
    "loss_options": "--loss-option",
}


def field_flag(field: str) -> str:
    """The ``poise train`` flag of a config field."""
    return FIELD_FLAGS.get(field) or dashed_flag(field)
