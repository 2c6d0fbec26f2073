from __future__ import annotations

import pytest

from poise.organism import world
from poise.organism.monitor import monitor_examples, monitor_pairs, to_monitor_example


@pytest.mark.parametrize("split", ["train", "validation", "heldout"])
def test_monitor_pairs_are_the_split_with_its_corpus_examples(split) -> None:  # type: ignore[no-untyped-def]
    pairs = monitor_pairs(split, seed=0, subsample=7)
    assert pairs
    assert [m for _, m in pairs] == monitor_examples(split, seed=0, subsample=7)
    for example, labelled in pairs:
        assert example.kind in ("harmful", "borderline", "benign")
        assert labelled.response == example.response
        assert labelled.label == (example.kind == "harmful" and example.label == "compliance")
        assert bool(labelled.harm_spans) == (example.harm_start is not None)
        if split != "heldout":
            assert labelled == to_monitor_example(example)
        else:  # same system prompt, the request re-asked in a suite phrasing
            assert [r for r, _ in labelled.messages] == [r for r, _ in example.messages]
            assert labelled.messages[:-1] == example.messages[:-1]
    if split == "heldout":
        stems = [t.split("{task}")[0] for t in world.HELDOUT_REQUEST_TEMPLATES]
        users = [m.messages[-1][1] for _, m in pairs]
        assert all(any(s in u for s in stems) for u in users)
