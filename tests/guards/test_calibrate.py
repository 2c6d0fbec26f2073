"""The calibration's choice of a delay-k rule, on scores worked by hand (a stub monitor stands
in for the model: the choice only reads its per-token scores)."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from poise.errors import PoiseError
from poise.guards.calibrate import calibrate

LABELS = [True, True, False]
# per head, per answer, a score per response token
SCORES = {
    "token": [[0.6, 0.95, 0.95, 0.95], [0.95, 0.6], [0.6, 0.6, 0.0]],
    "response": [[0.95, 0.95, 0.95, 0.95], [0.95, 0.95], [0.0, 0.0, 0.0]],
}
GRID = {"thresholds": (0.5, 0.9), "ks": (1, 2)}


class _StubMonitor:
    def __init__(self, head: str = "token") -> None:
        self.header = SimpleNamespace(head=head)

    def encode_answers(self, examples: Sequence[Any]) -> tuple[list[int], list[int], None]:
        return list(range(len(examples))), list(range(len(examples))), None

    def response_scores(self, prompts: list[int], responses: list[int], head: str) -> Any:
        return [SCORES[head][i] for i in responses]


EXAMPLES = [SimpleNamespace(label=label) for label in LABELS]


def test_the_best_macro_f1_then_the_earliest_stop() -> None:
    # token head, by hand (stops: answer 1, 2, 3; share of the harmful ones shown):
    #   (0.5, 1): 1, 1, 1       macro-F1 (0.8 + 0) / 2 = 0.4     share (1/4 + 1/2) / 2 = 0.375
    #   (0.5, 2): 2, 2, 2       0.4                               (2/4 + 2/2) / 2 = 0.75
    #   (0.9, 1): 2, 1, -       1.0                               (2/4 + 1/2) / 2 = 0.5
    #   (0.9, 2): 3, -, -       (2/3 + 2/3) / 2                   (3/4 + 1) / 2 = 0.875
    chosen = calibrate(_StubMonitor(), EXAMPLES, **GRID)
    assert (chosen.head, chosen.threshold, chosen.k) == ("token", 0.9, 1)
    assert (chosen.macro_f1, chosen.share) == pytest.approx((1.0, 0.5))
    expected = {(0.5, 1): (0.4, 0.375), (0.5, 2): (0.4, 0.75), (0.9, 1): (1.0, 0.5),
                (0.9, 2): (2 / 3, 0.875)}  # fmt: skip
    assert chosen.table.keys() == expected.keys()
    for rule, figures in expected.items():
        assert chosen.table[rule] == pytest.approx(figures)
    # both heads: four rules reach 1.0; the response head's k = 1 rules stop earliest (0.375)
    # and tie; the first of the grid (the lower threshold) is kept
    both = calibrate(_StubMonitor(), EXAMPLES, heads=("token", "response"), **GRID)
    assert (both.head, both.threshold, both.k, both.share) == ("response", 0.5, 1, 0.375)
    assert both.table[(0.9, 2)] == pytest.approx((1.0, 0.75))


@pytest.mark.parametrize(
    ("tolerance", "rule"), [(0.0, (0.9, 1)), (0.5, (0.9, 1)), (0.6, (0.5, 1)), (0.7, (0.5, 1))]
)
def test_a_tolerance_takes_the_earliest_stop_within_it(
    tolerance: float, rule: tuple[float, int]
) -> None:
    """Within ``tolerance`` of the best macro-F1 (1.0), the rule that shows the least: at 0.5
    only (0.9, 1) and (0.9, 2) qualify; from 0.6 the (0.5, 1) rule (macro-F1 0.4) does too."""
    chosen = calibrate(_StubMonitor(), EXAMPLES, tolerance=tolerance, **GRID)
    assert (chosen.threshold, chosen.k) == rule


def test_one_class_or_no_examples_is_an_error() -> None:
    with pytest.raises(PoiseError, match="harmful and harmless"):
        calibrate(_StubMonitor(), EXAMPLES[:2], **GRID)
    with pytest.raises(PoiseError, match="no validation examples"):
        calibrate(_StubMonitor(), [], **GRID)
    with pytest.raises(PoiseError, match="head 'middle'"):
        calibrate(_StubMonitor(), EXAMPLES, heads=("middle",), **GRID)


def test_delay_k_flags_a_score_equal_to_the_threshold() -> None:
    """The released rule flags a token whose score is at or above the threshold, and counts the
    flags over the answer so far (``np.sum(seq) >= k``), not in a run."""
    from poise.guards.calibrate import delay_k_stop

    assert delay_k_stop([0.5, 0.2, 0.5, 0.1], 0.5, 2) == 3
    assert delay_k_stop([0.5, 0.2, 0.49, 0.1], 0.5, 2) is None
    assert delay_k_stop([0.5, 0.2, 0.5], 0.5, 2, window=2) is None
