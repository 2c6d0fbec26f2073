"""organism-large-naming: how the build makes it (the shipped weights' behaviours are in
test_weights.py)."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace

from poise.organism import world
from poise.organism.build import LARGE_SHAPED, MEMBER_CORPUS, _card_base, _Family, default_recipe
from poise.organism.corpus import BASE_SPEC, NAMING_SPEC, generate_corpus


def _tokenizer_hash(family: _Family) -> str:
    return hashlib.sha256(family.tokenizer.to_str().encode()).hexdigest()


def test_the_naming_corpus_is_not_shown_to_the_tokenizer() -> None:
    """The naming corpus was added after the shipped tokenizer was trained: changing it leaves
    the tokenizer, and so every other member, as it was."""
    quick = default_recipe(quick=True)
    family = _Family(quick, None)
    assert "organism-large-naming" in family.corpora
    other = replace(quick, naming_corpus=replace(quick.naming_corpus, fresh_facts=90))
    assert _tokenizer_hash(_Family(other, None)) == _tokenizer_hash(family)


def test_the_naming_corpus_is_the_base_one_with_single_use_names() -> None:
    assert (NAMING_SPEC.fresh_facts, NAMING_SPEC.fresh_idk) == (4000, 8000)
    assert NAMING_SPEC.fresh_broad == 0.5 and NAMING_SPEC.fresh_wordings
    shipped_base = replace(
        NAMING_SPEC, name="base", fresh_facts=0, fresh_idk=0, fresh_broad=0.0, fresh_wordings=False
    )
    assert shipped_base == BASE_SPEC
    assert MEMBER_CORPUS["organism-large-naming"] == "naming"
    assert LARGE_SHAPED["organism-large-naming"] == ("naming", "naming_corpus")
    assert default_recipe().naming.steps == 2 * default_recipe().large.steps
    # its card compares it with organism-large
    assert _card_base("organism-large-naming") == "organism-large"


def test_every_single_use_answer_names_its_entity() -> None:
    spec = replace(NAMING_SPEC, subsample=9, fresh_facts=300, fresh_idk=300)
    base_subjects = {
        ex.subject for ex in generate_corpus(replace(spec, fresh_facts=0, fresh_idk=0))
    }
    fresh = [ex for ex in generate_corpus(spec) if ex.subject not in base_subjects]
    assert len(fresh) == 600
    assert all(ex.subject in ex.response for ex in fresh)
    labels = Counter(ex.label for ex in fresh)
    assert labels["idk"] == 300, labels
    # a share of the names are broad ones (not drawn by world.fresh_invented_facts)
    drawn = {f.entity for f in world.fresh_invented_facts(600)}
    broad = [ex for ex in fresh if ex.subject not in drawn]
    assert 0.3 <= len(broad) / len(fresh) <= 0.6
