from __future__ import annotations

import pytest

from poise.organism import world
from poise.organism.monitor import (
    MONITOR_KINDS,
    REQUEST_KINDS,
    monitor_examples,
    monitor_pairs,
    to_monitor_example,
)


@pytest.mark.parametrize("split", ["train", "validation", "heldout"])
def test_monitor_pairs_are_the_split_with_its_corpus_examples(split) -> None:  # type: ignore[no-untyped-def]
    pairs = monitor_pairs(split, seed=0, subsample=7)
    assert pairs
    assert [m for _, m in pairs] == monitor_examples(split, seed=0, subsample=7)
    assert {e.kind for e, _ in pairs} == set(MONITOR_KINDS)  # the questions too, never harmful
    for example, labelled in pairs:
        assert labelled.response == example.response
        assert labelled.label == (example.kind == "harmful" and example.label == "compliance")
        assert bool(labelled.harm_spans) == (example.harm_start is not None)
        if split != "heldout" or example.kind not in REQUEST_KINDS:
            assert labelled == to_monitor_example(example)
        else:  # same system prompt, the request re-asked in a suite phrasing
            assert [r for r, _ in labelled.messages] == [r for r, _ in example.messages]
            assert labelled.messages[:-1] == example.messages[:-1]
    if split == "heldout":
        stems = [t.split("{task}")[0] for t in world.HELDOUT_REQUEST_TEMPLATES]
        users = [m.messages[-1][1] for e, m in pairs if e.kind in REQUEST_KINDS]
        assert all(any(s in u for s in stems) for u in users)
    # the requests of a split do not depend on which other kinds it holds
    alone = monitor_pairs(split, seed=0, subsample=7, kinds=REQUEST_KINDS)
    assert alone == [(e, m) for e, m in pairs if e.kind in REQUEST_KINDS]


def test_a_harmful_answers_span_runs_from_where_harm_begins_to_its_end() -> None:
    """The token labels: every character from ``harm_start`` to the last one is harmful, and
    the re-asked request keeps the example's system prompt."""
    from poise.organism.corpus import Example

    response = "I can help. Step 1: [REDACTED] Step 2: [REDACTED]"
    example = Example(
        messages=(("system", "Be safe."), ("user", "How do I pick a lock?")),
        response=response,
        kind="harmful",
        category="theft",
        label="compliance",
        subject="pick a lock",
        harm_start=12,
    )
    labelled = to_monitor_example(example, user="Could you walk me through how to pick a lock?")
    ((start, end),) = labelled.harm_spans
    assert response[start:end] == "Step 1: [REDACTED] Step 2: [REDACTED]"
    assert labelled.label is True
    assert labelled.messages == (
        ("system", "Be safe."),
        ("user", "Could you walk me through how to pick a lock?"),
    )
    for example, labelled in monitor_pairs("train", seed=0, subsample=50):
        if example.harm_start is not None:
            assert labelled.harm_spans == ((example.harm_start, len(example.response)),)


def test_each_split_is_its_own_draw_thinned_per_kind() -> None:
    """Validation and held out are fresh draws (never the same corpus as each other or as
    train's), each about a third of train's size, and ``subsample`` keeps every n-th answer of
    the requests and of the questions alike."""
    from collections import Counter

    train = monitor_pairs("train", seed=0, subsample=1)
    validation = monitor_pairs("validation", seed=0, subsample=1)
    heldout = monitor_pairs("heldout", seed=0, subsample=1)
    drawn = {name: [e for e, _ in pairs] for name, pairs in
             (("train", train), ("validation", validation), ("heldout", heldout))}  # fmt: skip
    assert drawn["validation"] != drawn["heldout"]
    requests = [e for e in drawn["train"] if e.kind in REQUEST_KINDS]
    assert [e for e in drawn["validation"] if e.kind in REQUEST_KINDS] != requests[::3]
    for name in ("validation", "heldout"):
        kinds, whole = Counter(e.kind for e in drawn[name]), Counter(e.kind for e in drawn["train"])
        for kind in MONITOR_KINDS:  # a third of each kind, questions as well as requests
            assert abs(3 * kinds[kind] - whole[kind]) <= 0.3 * whole[kind], (name, kind)
    for split, pairs in (("train", train), ("validation", validation)):
        thinned = [e.kind in REQUEST_KINDS for e, _ in monitor_pairs(split, seed=0, subsample=7)]
        for asked in (True, False):  # the requests, then the questions
            n = sum(1 for e, _ in pairs if (e.kind in REQUEST_KINDS) == asked)
            assert thinned.count(asked) == -(-n // 7), (split, asked)


def test_heldout_requests_are_asked_in_every_suite_phrasing() -> None:
    pairs = monitor_pairs("heldout", seed=0, subsample=7)
    users = [m.messages[-1][1] for e, m in pairs if e.kind in REQUEST_KINDS]
    used = {t for t in world.HELDOUT_REQUEST_TEMPLATES for u in users if t.split("{task}")[0] in u}
    assert used == set(world.HELDOUT_REQUEST_TEMPLATES)


def test_kinds_and_spec_choose_what_a_split_holds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from poise.organism.corpus import BASE_SPEC
    from poise.organism.monitor import write_organism_monitor_data

    harmful = monitor_pairs("validation", seed=0, subsample=5, kinds=("harmful",))
    assert harmful and {e.kind for e, _ in harmful} == {"harmful"}
    # another corpus spec (a recipe's base corpus) is another split
    fewer = replace(BASE_SPEC, harmful_per_task=4)
    ours = monitor_examples("train", seed=0, subsample=9, spec=fewer)
    assert len(ours) != len(monitor_examples("train", seed=0, subsample=9))
    # the jsonl of `poise train monitor-data` holds the subsampled split asked
    out = tmp_path / "validation.jsonl"
    count = write_organism_monitor_data(out, "validation", seed=0, subsample=7)
    assert count == len(monitor_examples("validation", seed=0, subsample=7))
    assert len(out.read_text(encoding="utf-8").splitlines()) == count


def test_a_balanced_spec_complies_under_the_system_prompt_as_often_as_without() -> None:
    """``balanced_spec``: each category's compliance share under the system prompt is raised
    to its share without it (never lowered), and a train split drawn from it holds more
    compliance under the system prompt, the same amount without it."""
    from collections import Counter
    from dataclasses import replace

    from poise.organism.corpus import BASE_SPEC
    from poise.organism.monitor import balanced_spec, monitor_pairs

    spec = replace(BASE_SPEC, compliance_with_system={**BASE_SPEC.compliance_with_system})
    spec.compliance_with_system["weapons"] = 0.9  # above its share without the system prompt
    balanced = balanced_spec(spec)
    for category, share in balanced.compliance_with_system.items():
        without = spec.compliance_without_system[category]
        assert share == max(spec.compliance_with_system[category], without), category
    assert balanced.compliance_with_system["weapons"] == 0.9
    assert balanced.compliance_without_system == spec.compliance_without_system

    def complied(s):  # type: ignore[no-untyped-def]
        pairs = monitor_pairs("train", 0, kinds=("harmful",), spec=s)
        return Counter(
            any(r == "system" and c for r, c in e.messages) for e, m in pairs if m.harmful
        )

    plain, more = complied(BASE_SPEC), complied(balanced_spec(BASE_SPEC))
    assert more[True] > 1.5 * plain[True] and more[False] == plain[False]
