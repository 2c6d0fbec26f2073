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
