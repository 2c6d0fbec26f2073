"""Ranking metrics of a probe's scores: AUROC with a 95% interval, thresholds at a FPR."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

__all__ = ["auroc", "auroc_interval", "threshold_at_fpr"]

_Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def _split(scores: Sequence[float], labels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    s = torch.as_tensor(list(scores), dtype=torch.float64)
    if bool(s.isnan().any()):
        # a NaN compares neither above nor equal: it would count as the lowest score
        raise ValueError("AUROC of NaN scores")
    y = torch.as_tensor(list(labels), dtype=torch.long)
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(y.tolist()))}")
    positives, negatives = s[y == 1], s[y == 0]
    if positives.numel() == 0 or negatives.numel() == 0:
        raise ValueError("AUROC needs at least one positive and one negative example")
    return positives, negatives


def _components(
    positives: torch.Tensor, negatives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """DeLong's structural components and the area, from sorted scores (no [m, n] matrix: a
    run of 30k judged answers would need gigabytes for it).

    With psi[i, j] = 1 if positive i outscores negative j, 1/2 on a tie, else 0:
    V10_i = mean_j psi[i, j] [m], V01_j = mean_i psi[i, j] [n], area = mean psi. Each count of
    halves is exact in float64, so the values are those of the matrix to the last bit."""
    m, n = positives.numel(), negatives.numel()
    neg_sorted, pos_sorted = negatives.sort().values, positives.sort().values
    below = torch.searchsorted(neg_sorted, positives, right=False).double()  # negatives < p_i
    up_to = torch.searchsorted(neg_sorted, positives, right=True).double()  # negatives <= p_i
    wins10 = below + 0.5 * (up_to - below)  # [m]: sum_j psi[i, j]
    p_below = torch.searchsorted(pos_sorted, negatives, right=False).double()
    p_up_to = torch.searchsorted(pos_sorted, negatives, right=True).double()
    wins01 = (m - p_up_to) + 0.5 * (p_up_to - p_below)  # [n]: sum_i psi[i, j]
    return wins10 / n, wins01 / m, float(wins10.sum()) / (m * n)


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The area under the ROC curve: P(score of a positive > score of a negative), ties 1/2
    (the Mann-Whitney statistic over m * n pairs)."""
    positives, negatives = _split(scores, labels)
    return _components(positives, negatives)[2]


def auroc_interval(
    scores: Sequence[float], labels: Sequence[int], groups: Sequence[Hashable] | None = None
) -> tuple[float, float, float]:
    """(AUROC, low, high): the 95% interval of DeLong, DeLong & Clarke-Pearson (1988,
    Biometrics 44:837), from the variances of the structural components
    V10_i = mean_j psi[i, j] (per positive) and V01_j = mean_i psi[i, j] (per negative):
    var = S10 / m + S01 / n. Normal approximation, clipped to [0, 1]; with a single positive or
    negative the component variance is taken as 0 for that side.

    With ``groups`` (one per row: the item a row answers), rows of one group are not independent
    (several sampled answers to one prompt) and the variance is Obuchowski's for clustered data
    (1997, Biometrics 53:567): per cluster c the sums X_c = sum of V10 over its positives and
    Y_c = sum of V01 over its negatives (m_c, n_c rows),
    S10 = I10 / ((I10 - 1) m) sum_c (X_c - m_c A)^2, S01 likewise over the I01 clusters with a
    negative, S11 = I / (I - 1) sum_c (X_c - m_c A)(Y_c - n_c A), and
    var = S10 / m + S01 / n + 2 S11 / (m n). With one row per group it is DeLong's. A side whose
    rows all come from one cluster has no spread between clusters to estimate its term from
    (0 would shrink the interval below DeLong's): that side's term is DeLong's."""
    positives, negatives = _split(scores, labels)
    v10, v01, area = _components(positives, negatives)  # [m], [n], float
    m, n = v10.numel(), v01.numel()
    if groups is None:
        s10 = float(v10.var(unbiased=True)) if m > 1 else 0.0
        s01 = float(v01.var(unbiased=True)) if n > 1 else 0.0
        variance = s10 / m + s01 / n
    else:
        variance = _clustered_variance(labels, groups, v10, v01, area)
    half = _Z95 * math.sqrt(max(variance, 0.0))
    return area, max(0.0, area - half), min(1.0, area + half)


def _clustered_variance(
    labels: Sequence[int],
    groups: Sequence[Hashable],
    v10: torch.Tensor,
    v01: torch.Tensor,
    area: float,
) -> float:
    """Obuchowski's (1997) variance of the AUROC over clusters (see :func:`auroc_interval`);
    ``v10`` [m] and ``v01`` [n] are the structural components, in the rows' order."""
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups but {len(labels)} labels")
    index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    clusters = len(index)
    x = torch.zeros(clusters, dtype=torch.float64)  # X_c: V10 summed over the cluster
    y = torch.zeros(clusters, dtype=torch.float64)  # Y_c: V01 summed over the cluster
    m_c = torch.zeros(clusters, dtype=torch.float64)
    n_c = torch.zeros(clusters, dtype=torch.float64)
    positive = [index[g] for g, label in zip(groups, labels, strict=True) if int(label) == 1]
    negative = [index[g] for g, label in zip(groups, labels, strict=True) if int(label) == 0]
    x.index_add_(0, torch.tensor(positive), v10)
    y.index_add_(0, torch.tensor(negative), v01)
    m_c.index_add_(0, torch.tensor(positive), torch.ones(len(positive), dtype=torch.float64))
    n_c.index_add_(0, torch.tensor(negative), torch.ones(len(negative), dtype=torch.float64))
    m, n = len(positive), len(negative)
    dx, dy = x - m_c * area, y - n_c * area  # [clusters]
    with_positive, with_negative = int((m_c > 0).sum()), int((n_c > 0).sum())
    # one cluster on a side: DeLong's per-row variance for it (0 when it is one row)
    s10 = (
        with_positive / ((with_positive - 1) * m) * float((dx * dx).sum())
        if with_positive > 1
        else (float(v10.var(unbiased=True)) if m > 1 else 0.0)
    )
    s01 = (
        with_negative / ((with_negative - 1) * n) * float((dy * dy).sum())
        if with_negative > 1
        else (float(v01.var(unbiased=True)) if n > 1 else 0.0)
    )
    s11 = clusters / (clusters - 1) * float((dx * dy).sum()) if clusters > 1 else 0.0
    return s10 / m + s01 / n + 2 * s11 / (m * n)


def threshold_at_fpr(negative_scores: Sequence[float], fpr: float) -> float:
    """The smallest threshold t such that at most ``fpr`` of the negatives score above t
    (a score > t is flagged): the (n - floor(fpr * n))-th smallest negative score."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    ordered = sorted(float(s) for s in negative_scores)
    if not ordered:
        raise ValueError("a threshold at a false-positive rate needs negative scores")
    n = len(ordered)
    # floor(fpr * n) may lie above t; the relative slack absorbs the rounding of a decimal fpr
    # (0.29 * 100 = 28.999999999999996; ceil((1 - 0.18) * 150) was 124, one rank too high)
    above = min(math.floor(fpr * n * (1.0 + 1e-9)), n - 1)
    return ordered[n - above - 1]
