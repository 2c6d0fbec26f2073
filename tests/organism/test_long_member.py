"""organism-large-long and organism-monitor-long: how the build makes them (the shipped weights'
behaviours are in test_weights.py)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from poise.organism.build import _eval_budget, _Family, default_recipe


def _tokenizer_hash(family: _Family) -> str:
    return hashlib.sha256(family.tokenizer.to_str().encode()).hexdigest()


def test_the_long_corpus_is_not_shown_to_the_tokenizer() -> None:
    """Every member shares one tokenizer, trained on the chat corpora: the long corpus repeats
    the base one with longer harmful answers and was added after the shipped tokenizer was
    trained, so changing it leaves the tokenizer, and every other member, as it was."""
    quick = default_recipe(quick=True)
    family = _Family(quick, None)
    assert "organism-large-long" in family.corpora
    other = replace(quick, long_corpus=replace(quick.long_corpus, harmful_steps=4))
    assert _tokenizer_hash(_Family(other, None)) == _tokenizer_hash(family)
    # a change to the base corpus does reach it (the check above can fail)
    base = replace(quick, base_corpus=replace(quick.base_corpus, harmful_steps=8))
    assert _tokenizer_hash(_Family(base, None)) != _tokenizer_hash(family)


def test_the_long_member_is_measured_with_room_for_its_answers() -> None:
    recipe = default_recipe()
    assert _eval_budget(recipe, "organism-large-long") == recipe.long_eval_max_new_tokens == 192
    for member in ("organism-large", "organism-small", "organism-large-selfeval"):
        assert _eval_budget(recipe, member) == recipe.eval_max_new_tokens == 80
    assert _eval_budget(default_recipe(quick=True), "organism-large-long") == 12


def test_the_long_monitor_trains_with_a_slower_decay_and_guards_the_long_member() -> None:
    from poise.organism.monitor import (
        GUARDS,
        LONG_LR_DECAY,
        LONG_MONITOR_MEMBER,
        MONITOR_MEMBER,
        monitor_settings,
    )
    from poise.train.monitor import MonitorSettings

    assert monitor_settings(0).lr_decay == MonitorSettings().lr_decay == 0.99
    assert monitor_settings(0, lr_decay=LONG_LR_DECAY).lr_decay == 0.999
    assert replace(monitor_settings(0, lr_decay=0.999), lr_decay=0.99) == monitor_settings(0)
    assert GUARDS == {
        MONITOR_MEMBER: ("organism-large", "base"),
        LONG_MONITOR_MEMBER: ("organism-large-long", "long"),
    }
