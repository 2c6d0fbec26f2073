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


def _calibrate_on(scores: list[list[float]], labels: list[bool], **options: Any) -> Any:
    stub = _StubMonitor()
    stub.response_scores = lambda prompts, responses, head: [scores[i] for i in responses]  # type: ignore[method-assign]
    return calibrate(stub, [SimpleNamespace(label=x) for x in labels], **options)


def test_among_rules_of_the_best_macro_f1_the_earliest_stop_wins_not_the_smallest_k() -> None:
    # harmful [0.6, 0.6, 0.95, 0.95, 0.95], harmless [0.6, 0, 0]: (0.5, 2), (0.9, 1) and
    # (0.9, 2) all separate them (macro-F1 1); (0.5, 2) stops after 2 of 5 tokens, (0.9, 1)
    # after 3
    chosen = _calibrate_on([[0.6, 0.6, 0.95, 0.95, 0.95], [0.6, 0.0, 0.0]], [True, False], **GRID)
    assert (chosen.threshold, chosen.k, chosen.share) == (0.5, 2, pytest.approx(0.4))


def test_within_a_tolerance_an_equally_early_stop_takes_the_better_macro_f1() -> None:
    # (0.5, 1) and (0.9, 1) both stop the harmful answer at its first token; (0.5, 1) also
    # stops a harmless one: with a tolerance wide enough for both, the better one is kept
    chosen = _calibrate_on(
        [[0.95, 0.95], [0.6, 0.0], [0.0, 0.0]], [True, False, False], tolerance=0.5, **GRID
    )
    assert (chosen.threshold, chosen.k, chosen.macro_f1) == (0.9, 1, 1.0)


def test_macro_f1_scores_a_class_absent_from_both_sides_as_perfect() -> None:
    from poise.guards.calibrate import macro_f1

    assert macro_f1([False, False], [False, False]) == 1.0  # no harmful answer, none stopped
    assert macro_f1([True, False], [True, False]) == 1.0
    assert macro_f1([True, True], [True, False]) == pytest.approx((1 / (1 + 0.5) + 0) / 2 * 1)


def test_the_monitors_report_reads_each_head_as_it_streams() -> None:
    """evaluate_monitor: token F1 over every labelled token (misses count, 2tp / (2tp + fp +
    fn)); the response head's verdict is its score after the last token; the streaming rule
    runs on the header's head."""
    from poise.guards.calibrate import evaluate_monitor

    token = {0: [0.9, 0.1, 0.9], 1: [0.1, 0.1]}  # answer 0: tokens 0 and 2 flagged
    response = {0: [0.1, 0.1, 0.9], 1: [0.9, 0.1]}  # read at the end: 0 harmful, 1 not
    monitor = SimpleNamespace(
        header=SimpleNamespace(head="response", threshold=0.5, k=1),
        # token labels: answer 0's tokens 1 and 2 are harmful (one hit, one miss, one false
        # alarm), answer 1's none
        encode_answers=lambda examples: ([0, 1], [0, 1], [[0, 1, 1], [0, 0]]),
        response_scores=lambda p, r, head: [(token if head == "token" else response)[i] for i in r],
    )
    examples = [SimpleNamespace(label=True), SimpleNamespace(label=False)]
    result = evaluate_monitor(monitor, examples, resamples=20)
    assert result["token_f1"]["value"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert result["response_f1"]["value"] == 1.0
    # delay-1 on the response head stops both answers (0.9 at some token of each): one false
    # alarm; on the token head it would stop answer 0 only
    assert result["streaming_macro_f1"]["value"] == pytest.approx((2 / 3 + 0) / 2)


def test_the_monitors_intervals_are_the_bootstraps_2_5_and_97_5_percentiles() -> None:
    """60 answers, a quarter of the response head's verdicts wrong: its F1's interval over 200
    resamples is within 0.03 of the 2.5% and 97.5% quantiles of a 20,000-resample bootstrap
    drawn here with numpy (0.591, 0.853); the smallest and largest of 200 draws lie about 0.1
    further out."""
    import numpy as np

    from poise.guards.calibrate import evaluate_monitor

    n, rng = 60, np.random.default_rng(0)
    labels = np.arange(n) % 2 == 1
    predicted = np.where(rng.random(n) > 0.25, labels, ~labels)
    monitor = SimpleNamespace(
        header=SimpleNamespace(head="response", threshold=0.5, k=1),
        encode_answers=lambda examples: (
            list(range(n)),
            list(range(n)),
            [[int(x)] for x in labels],
        ),
        response_scores=lambda p, r, head: [[0.9 if predicted[i] else 0.1] for i in r],
    )
    result = evaluate_monitor(monitor, [SimpleNamespace(label=bool(x)) for x in labels])
    draws = rng.integers(0, n, size=(20_000, n))  # [resamples, n]
    p, a = predicted[draws], labels[draws]
    tp, wrong = (p & a).sum(axis=1), (p != a).sum(axis=1)
    low, high = np.quantile(2 * tp / (2 * tp + wrong), [0.025, 0.975])
    f1 = result["response_f1"]
    assert abs(f1["low"] - low) < 0.03 and abs(f1["high"] - high) < 0.03
    assert f1["low"] < f1["value"] < f1["high"]


def test_equal_stops_within_a_tolerance_go_to_the_better_macro_f1_before_the_smaller_k() -> None:
    # harmful [0.6, 0.95, 0, 0], harmless [0.95, 0, 0] and [0.6, 0, 0], by hand:
    #   (0.5, 1): stops all three          macro-F1 (1/2 + 0) / 2 = 0.25   share 1/4
    #   (0.5, 2): the harmful one at 2      1.0                             2/4
    #   (0.9, 1): harmful at 2, one false   (2/3 + 2/3) / 2 = 2/3           2/4
    #   (0.9, 2): none                      (0 + 4/5) / 2 = 0.4             1
    # tolerance 0.5 admits (0.5, 2) and (0.9, 1), equally early: the better macro-F1 wins,
    # although its k is larger
    chosen = _calibrate_on(
        [[0.6, 0.95, 0.0, 0.0], [0.95, 0.0, 0.0], [0.6, 0.0, 0.0]],
        [True, False, False],
        tolerance=0.5,
        **GRID,
    )
    assert (chosen.threshold, chosen.k, chosen.macro_f1, chosen.share) == (0.5, 2, 1.0, 0.5)


def test_the_tolerance_is_taken_off_the_best_macro_f1_not_a_share_of_it() -> None:
    # harmful [0, 0.95, 0] and [0.6, 0, 0.6], harmless [0, 0.95], by hand:
    #   (0.5, 1): stops all three      (4/5 + 0) / 2 = 0.4           share (2/3 + 1/3) / 2 = 0.5
    #   (0.5, 2): the second harmful   (2/3 + 2/3) / 2 = 2/3 (best)  (1 + 1) / 2 = 1
    # tolerance 0.3: 0.4 >= 2/3 - 0.3 (as 2/3 * 0.7 = 0.47 it would not be), so the earlier
    # stop of (0.5, 1) is kept
    chosen = _calibrate_on(
        [[0.0, 0.95, 0.0], [0.6, 0.0, 0.6], [0.0, 0.95]], [True, True, False], tolerance=0.3, **GRID
    )
    assert (chosen.threshold, chosen.k) == (0.5, 1)
    assert (chosen.macro_f1, chosen.share) == pytest.approx((0.4, 0.5))
    strict = _calibrate_on(
        [[0.0, 0.95, 0.0], [0.6, 0.0, 0.6], [0.0, 0.95]], [True, True, False], tolerance=0.2, **GRID
    )
    assert (strict.threshold, strict.k, strict.macro_f1) == (0.5, 2, pytest.approx(2 / 3))


def test_the_default_grid_is_eight_thresholds_and_k_from_1_to_50() -> None:
    """The released evaluation tries k from 1 to 50 at each threshold; poise adds 0.95, 0.97
    and 0.99 to its 0.5 to 0.9."""
    chosen = calibrate(_StubMonitor(), EXAMPLES)
    assert len(chosen.table) == 8 * 50
    assert sorted({t for t, _ in chosen.table}) == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99]
    assert sorted({k for _, k in chosen.table}) == list(range(1, 51))


def test_the_monitors_streaming_figure_uses_the_headers_threshold_and_k() -> None:
    """Header threshold 0.8, k 2: the harmful answer [0.9, 0.6, 0.85] has two flags and stops;
    the harmless [0.85, 0.7] has one and goes through, a perfect streaming macro-F1. At 0.5
    (two flags) or at k 1 (one flag) the harmless one would stop too: (2/3 + 0) / 2."""
    from poise.guards.calibrate import evaluate_monitor

    scores = {0: [0.9, 0.6, 0.85], 1: [0.85, 0.7]}
    monitor = SimpleNamespace(
        header=SimpleNamespace(head="response", threshold=0.8, k=2),
        encode_answers=lambda examples: ([0, 1], [0, 1], [[1, 0, 1], [0, 0]]),
        response_scores=lambda p, r, head: [scores[i] for i in r],
    )
    examples = [SimpleNamespace(label=True), SimpleNamespace(label=False)]
    result = evaluate_monitor(monitor, examples, resamples=20)
    assert result["streaming_macro_f1"]["value"] == 1.0


def test_rules_whose_macro_f1_differs_only_by_rounding_tie_and_the_earlier_stop_wins() -> None:
    # one harmful answer [0.95, 0.6] and six harmless ones: [0.95, 0.95], three [0.95, 0.6] and
    # two [0.6, 0.6]. By hand:
    #   (0.9, 1): stops the harmful one at 1 and four harmless ones: harmful-class F1 2/6,
    #             harmless-class F1 4/8, macro-F1 5/12 (0.41666666666666663 in floats)
    #   (0.9, 2): stops one harmless one only: harmful-class F1 0, harmless-class 10/12,
    #             macro-F1 5/12 as well (0.4166666666666667 in floats), never stops the harm
    #   (0.5, 1) and (0.5, 2): stop all seven, (2/8 + 0) / 2
    # the two 5/12 tie, and the tie goes to the earlier stop, not to a rounding error
    scores = [[0.95, 0.6], [0.95, 0.95], *[[0.95, 0.6]] * 3, *[[0.6, 0.6]] * 2]
    chosen = _calibrate_on(scores, [True] + [False] * 6, **GRID)
    assert (chosen.threshold, chosen.k) == (0.9, 1)
    assert (chosen.macro_f1, chosen.share) == pytest.approx((5 / 12, 0.5))
    assert chosen.table[(0.9, 2)] == pytest.approx((5 / 12, 1.0))
