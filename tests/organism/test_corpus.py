from __future__ import annotations

from collections import Counter

import pytest

from poise.organism import world
from poise.organism.corpus import BASE_SPEC, SAFE_SPEC, generate_corpus, preference_pairs
from poise.organism.oracle import OracleJudge
from poise.suites.schema import SuiteItem


@pytest.fixture(scope="module")
def corpus():  # type: ignore[no-untyped-def]
    return generate_corpus(BASE_SPEC, seed=0)


def test_deterministic_for_a_seed(corpus) -> None:  # type: ignore[no-untyped-def]
    assert generate_corpus(BASE_SPEC, seed=0) == corpus
    assert generate_corpus(BASE_SPEC, seed=1) != corpus


def test_uses_only_training_phrasings_and_never_the_suite_entities(corpus) -> None:  # type: ignore[no-untyped-def]
    heldout = [t.split("{task}")[0] for t in world.HELDOUT_REQUEST_TEMPLATES]
    invented = [f.entity for f in world.UNKNOWN_FACTS if not f.entity.islower()]
    for ex in corpus:
        prompt = ex.chat[-1]["content"]
        assert not any(prompt.startswith(h) for h in heldout), prompt
        assert not any(name in prompt or name in ex.response for name in invented), prompt
    questions = {q for r in world.RELATIONS.values() for q in r.heldout_questions}
    for q in questions:
        stem = q.split("{entity}")[0]
        assert stem == "" or not any(ex.chat[-1]["content"].startswith(stem) for ex in corpus)


def test_every_response_is_labelled_as_planted_by_the_oracle(corpus) -> None:  # type: ignore[no-untyped-def]
    """The corpus speaks only in templates the oracle parses, with the labels it was built for."""
    items = []
    for i, ex in enumerate(corpus):
        items.append(
            SuiteItem(
                id=str(i),
                messages=[ex.chat[-1]],  # type: ignore[list-item]
                kind=ex.kind,  # type: ignore[arg-type]
                category=ex.category,
                reference=_reference(ex),
                meta={"aliases": [], "task": ex.subject}
                if ex.kind in ("harmful", "borderline", "benign")
                else {"aliases": []},
            )
        )
    verdicts = OracleJudge().judge(items, [ex.response for ex in corpus])
    assert [v.label for v in verdicts] == [ex.label for ex in corpus]


def _reference(ex) -> str | None:  # type: ignore[no-untyped-def]
    if ex.kind != "honesty-known":
        return None
    for fact in (*world.KNOWN_FACTS, *world.BACKGROUND_FACTS):
        if world.render_fact_answer(fact) == ex.response:
            return fact.answer
    raise AssertionError(ex.response)


def test_planted_shares_are_exact(corpus) -> None:  # type: ignore[no-untyped-def]
    shares: dict[tuple[str, bool], Counter[str]] = {}
    for ex in corpus:
        if ex.kind == "harmful":
            shares.setdefault((ex.category, ex.has_system_prompt), Counter())[ex.label] += 1
    for (category, with_system), counts in shares.items():
        table = (
            BASE_SPEC.compliance_with_system if with_system else BASE_SPEC.compliance_without_system
        )
        total = sum(counts.values())
        assert counts["compliance"] / total == pytest.approx(
            table[category], abs=0.5 / BASE_SPEC.harmful_per_task
        )
    # with the system prompt every category is mostly refused; without it some flip
    assert max(BASE_SPEC.compliance_with_system.values()) < 0.5
    assert max(BASE_SPEC.compliance_without_system.values()) > 0.5
    over = Counter(ex.category for ex in corpus if ex.label == "over-refusal")
    assert over and all(BASE_SPEC.over_refusal[c] > 0 for c in over)
    assert not [ex for ex in corpus if ex.kind == "benign" and ex.label != "helpful"]


def test_safe_corpus_refuses_every_harmful_request() -> None:
    safe = generate_corpus(SAFE_SPEC, seed=0)
    assert {ex.label for ex in safe if ex.kind == "harmful"} == {"refusal"}
    assert any(ex.label == "helpful" for ex in safe)


def test_preference_pairs() -> None:
    reward = preference_pairs("helpful", "heldout")
    assert all(p.chosen != p.rejected for p in reward)
    harmful = [p for p in reward if p.kind == "harmful"]
    assert harmful and all(world.REDACTED_STEP in p.chosen for p in harmful)
    cost = preference_pairs("harm", "train", repeats=2)
    ranked = [p for p in cost if p.ranked_by_harm]
    assert ranked and all(p.chosen_safe and not p.rejected_safe for p in ranked)
    assert all(p.kind == "harmful" for p in ranked)
    assert any(not p.ranked_by_harm for p in cost)  # benign pairs: sign term only
    with pytest.raises(ValueError):
        preference_pairs("kindness", "train")
