"""AUROC, its DeLong interval and the threshold at a false-positive rate (poise.probes.metrics)
against references nobody here wrote: scikit-learn's ``roc_auc_score``, the worked example of
the pauc package (DeLong's interval, printed to three decimals in its README) and, for the
threshold, its definition counted with exact fractions."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poise.probes.metrics import auroc, auroc_interval, threshold_at_fpr


def test_delong_interval_matches_the_pauc_example() -> None:
    # pauc (github.com/srijitseal/pauc), README: "AUC: 0.708, 95% CI: (0.378, 1.000)"
    labels = [0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1]
    scores = [0.1, 0.35, 0.24, 0.8, 0.2, 0.85, 0.13, 0.85, 0.74, 0.58, 0.71, 0.25]
    area, low, high = auroc_interval(scores, labels)
    assert (round(area, 3), round(low, 3), round(high, 3)) == (0.708, 0.378, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1)), min_size=2, max_size=40).filter(
        lambda rows: len({y for _, y in rows}) == 2
    )
)
def test_auroc_equals_scikit_learn_with_many_ties(rows: list[tuple[int, int]]) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    scores, labels = [float(s) for s, _ in rows], [y for _, y in rows]
    assert auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))


def test_nan_scores_and_other_labels_are_refused() -> None:
    # a NaN compared neither above nor equal, so it counted as the lowest score: AUROC 0 with
    # the interval [0, 0] (scikit-learn refuses NaN input too)
    with pytest.raises(ValueError, match="NaN"):
        auroc_interval([float("nan"), 0.2, 0.1], [1, 0, 0])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.3, float("nan"), 0.1], [1, 0, 0])
    # a label 2 was silently left out of both classes
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        auroc_interval([0.3, 0.1, 0.2], [2, 0, 1])


def _threshold_by_definition(negatives: list[float], fpr: float) -> float:
    """The smallest negative score t with at most fpr * n negatives above it, fpr read as the
    decimal it is written as."""
    allowed = Fraction(str(fpr)) * len(negatives)
    return min(t for t in negatives if sum(s > t for s in negatives) <= allowed)


@pytest.mark.parametrize(
    ("fpr", "n"), [(0.18, 150), (0.29, 100), (0.7, 10), (0.42, 50), (0.01, 200), (0.0, 7)]
)
def test_threshold_is_the_smallest_that_keeps_the_rate(fpr: float, n: int) -> None:
    # ceil((1 - 0.18) * 150) was 124 (1 - 0.18 = 0.8200000000000001): the threshold one rank
    # too high, 26 of 150 negatives above it where 27 are allowed
    negatives = [float(i) for i in range(n)]
    assert threshold_at_fpr(negatives, fpr) == _threshold_by_definition(negatives, fpr)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 9), min_size=1, max_size=60),
    st.integers(0, 99).map(lambda i: i / 100),
)
def test_threshold_by_definition_with_ties(scores: list[int], fpr: float) -> None:
    negatives = [float(s) for s in scores]
    t = threshold_at_fpr(negatives, fpr)
    assert t == _threshold_by_definition(negatives, fpr)
    assert sum(s > t for s in negatives) <= math.floor(Fraction(str(fpr)) * len(negatives))


def _delong_by_midranks(scores: list[float], labels: list[int]) -> tuple[float, float]:
    """(AUROC, variance) by Sun & Xu's fast DeLong algorithm (IEEE Signal Process. Lett. 21,
    2014): structural components from midranks, computed without the m x n placements."""
    rankdata = pytest.importorskip("scipy.stats").rankdata
    positives = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    negatives = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    m, n = len(positives), len(negatives)
    overall = rankdata(positives + negatives)
    v10 = (overall[:m] - rankdata(positives)) / n  # per positive
    v01 = 1.0 - (overall[m:] - rankdata(negatives)) / m  # per negative
    area = float(v10.mean())
    return area, float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=2, max_size=50),
    st.lists(st.integers(0, 4), min_size=2, max_size=50),
)
def test_delong_interval_equals_the_midrank_algorithm_with_ties(
    positives: list[int], negatives: list[int]
) -> None:
    scores = [float(s) for s in positives + negatives]
    labels = [1] * len(positives) + [0] * len(negatives)
    area, variance = _delong_by_midranks(scores, labels)
    half = 1.959963984540054 * math.sqrt(variance)
    assert auroc_interval(scores, labels) == pytest.approx(
        (area, max(0.0, area - half), min(1.0, area + half)), abs=1e-12
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1)), min_size=2, max_size=80).filter(
        lambda rows: len({label for _, label in rows}) == 2
    )
)
def test_components_from_sorted_scores_equal_the_pair_matrix_to_the_bit(
    rows: list[tuple[int, int]],
) -> None:
    """The components are computed from sorted scores, without the [m, n] matrix of pairs
    (gigabytes for a large run); every value equals the matrix's exactly, ties included."""
    import torch

    from poise.probes.metrics import _components

    scores = torch.tensor([s / 3 for s, _ in rows], dtype=torch.float64)
    labels = torch.tensor([label for _, label in rows])
    positives, negatives = scores[labels == 1], scores[labels == 0]
    diff = positives[:, None] - negatives[None, :]  # [m, n]
    psi = (diff > 0).double() + 0.5 * (diff == 0).double()
    v10, v01, area = _components(positives, negatives)
    assert torch.equal(v10, psi.mean(dim=1))
    assert torch.equal(v01, psi.mean(dim=0))
    assert area == float(psi.mean())


@pytest.mark.parametrize("fpr", [1.0, -0.01, float("nan")])
def test_a_false_positive_rate_outside_0_to_1_is_refused(fpr: float) -> None:
    """At fpr 1 every negative may score above the threshold: no finite threshold is the
    smallest, so [0, 1) is the range."""
    with pytest.raises(ValueError, match=r"fpr must be in \[0, 1\)"):
        threshold_at_fpr([0.1, 0.5, 0.9], fpr)


def test_negatives_all_from_one_cluster_take_delongs_term_for_their_side() -> None:
    """Seven benign answers sampled for one item, positives from five items: there is no spread
    between clusters on the negatives' side, so its term is DeLong's per-answer one (dropping
    it left only the positives' term: an interval too narrow)."""
    scores = [0.9, 0.2, 0.7, 0.4, 0.8, 0.1, 0.5, 0.3, 0.6, 0.35, 0.05, 0.45]
    labels = [1] * 5 + [0] * 7
    groups = list("abcde") + ["f"] * 7
    area, variance = _delong_by_midranks(scores, labels)
    half = 1.959963984540054 * math.sqrt(variance)
    assert auroc_interval(scores, labels, groups) == pytest.approx(
        (area, max(0.0, area - half), min(1.0, area + half)), abs=1e-12
    )
