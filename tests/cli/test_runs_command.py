"""``poise runs ls``: how a run's attack reads."""

from __future__ import annotations

import pytest

from poise.cli.runs import _attack_label


@pytest.mark.parametrize(
    ("config", "label"),
    [
        ({"attack": "greedy", "sampling": {"temperature": 0.0, "n": 1}}, "greedy"),
        ({"attack": "greedy", "sampling": {"temperature": 1.0, "n": 1}}, "sampled T=1"),
        ({"attack": "greedy", "sampling": {"temperature": 0.7, "n": 4}}, "sampled T=0.7 n=4"),
        ({"attack": "worst_of_n", "sampling": {"temperature": 1.0}}, "worst_of_n"),
        ({"attack": "greedy"}, "greedy"),
    ],
)
def test_a_sampled_plain_run_does_not_read_as_greedy(config: dict[str, object], label: str) -> None:
    assert _attack_label(config) == label
