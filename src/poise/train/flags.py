"""How ``poise train`` spells the flag of each config field: one place for the CLI, which
declares them, and for the config errors, which name them (a light module: the CLI imports it
before any recipe)."""

from __future__ import annotations

__all__ = ["FIELD_FLAGS", "field_flag"]

#: the flag of a config field that ``poise train`` does not spell ``--FIELD`` (short forms
#: aside): what the CLI declares and what errors name
FIELD_FLAGS = {
    "margin_reward_models": "--margin-reward-model",
    "loss_options": "--loss-option",
    "model_options": "--model-option",
    # the suite options, spelled as `poise suites show` spells them
    "suite_format": "--format",
    "suite_columns": "--column",
    "suite_kind": "--kind",
    "suite_category": "--category",
}


def field_flag(field: str) -> str:
    """The ``poise train`` flag of a config field."""
    return FIELD_FLAGS.get(field, "--" + field.replace("_", "-"))
