"""How ``poise train`` spells the flag of each config field: one place for the CLI, which
declares them, and for the config errors, which name them (a light module: the CLI imports it
before any recipe)."""

from __future__ import annotations

from collections.abc import Iterable

from poise.config import COMMON_FIELD_FLAGS, dashed_flag, flag_keywords

__all__ = ["AUDIT_SPELLINGS", "FIELD_FLAGS", "field_flag", "field_spellings"]

#: the flag of a config field that ``poise train`` does not spell ``--FIELD`` (short forms
#: aside): what the CLI declares and what errors name
FIELD_FLAGS = {
    **COMMON_FIELD_FLAGS,
    "margin_reward_models": "--margin-reward-model",
    "loss_options": "--loss-option",
}

#: the spellings ``poise audit`` (and ``judges validate``) give the same things, which the
#: commands built from a config (``poise train``, ``poise gate``) take too: a flag learnt on one
#: command works on the next (``poise gate -s FILE -f xstest -j refusal --n 4``)
AUDIT_SPELLINGS: dict[str, tuple[str, ...]] = {
    "suite_format": ("-f",),
    "judge": ("-j",),
    "prompts": ("--suite", "-s"),
    "samples_per_prompt": ("--n",),
}


def field_flag(field: str) -> str:
    """The ``poise train`` flag of a config field."""
    return FIELD_FLAGS.get(field) or dashed_flag(field)


def field_spellings(fields: Iterable[str]) -> dict[str, str]:
    """``{a flag's name as a keyword: its field}`` for a config of ``fields`` whose flags are
    made as ``poise train``'s: ``format`` -> ``suite_format``, ``suite`` -> ``prompts``,
    ``loss_option`` -> ``loss_options`` (for :func:`poise.config.format_field_error`)."""
    return flag_keywords(fields, field_flag, AUDIT_SPELLINGS)
