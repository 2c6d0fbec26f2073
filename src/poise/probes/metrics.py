"""Ranking metrics of a probe's scores: AUROC with a 95% interval, thresholds at a FPR."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["auroc", "auroc_interval", "threshold_at_fpr"]

_Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def _split(scores: Sequence[float], labels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    s = torch.as_tensor(list(scores), dtype=torch.float64)
    y = torch.as_tensor(list(labels), dtype=torch.long)
    positives, negatives = s[y == 1], s[y == 0]
    if positives.numel() == 0 or negatives.numel() == 0:
        raise ValueError("AUROC needs at least one positive and one negative example")
    return positives, negatives


def _placements(positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """psi[i, j] = 1 if positive i outscores negative j, 1/2 on a tie, else 0: [m, n]."""
    diff = positives[:, None] - negatives[None, :]  # [m, n]
    return (diff > 0).double() + 0.5 * (diff == 0).double()


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The area under the ROC curve: P(score of a positive > score of a negative), ties 1/2
    (the Mann-Whitney statistic over m * n pairs)."""
    positives, negatives = _split(scores, labels)
    return float(_placements(positives, negatives).mean())


def auroc_interval(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float, float]:
    """(AUROC, low, high): the 95% interval of DeLong, DeLong & Clarke-Pearson (1988,
    Biometrics 44:837), from the variances of the structural components
    V10_i = mean_j psi[i, j] (per positive) and V01_j = mean_i psi[i, j] (per negative):
    var = S10 / m + S01 / n. Normal approximation, clipped to [0, 1]; with a single positive or
    negative the component variance is taken as 0 for that side."""
    positives, negatives = _split(scores, labels)
    psi = _placements(positives, negatives)  # [m, n]
    m, n = psi.shape
    area = float(psi.mean())
    v10, v01 = psi.mean(dim=1), psi.mean(dim=0)  # [m], [n]
    s10 = float(v10.var(unbiased=True)) if m > 1 else 0.0
    s01 = float(v01.var(unbiased=True)) if n > 1 else 0.0
    half = _Z95 * math.sqrt(max(s10 / m + s01 / n, 0.0))
    return area, max(0.0, area - half), min(1.0, area + half)


def threshold_at_fpr(negative_scores: Sequence[float], fpr: float) -> float:
    """The smallest threshold t such that at most ``fpr`` of the negatives score above t
    (a score > t is flagged): the ceil((1 - fpr) * n)-th smallest negative score."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    ordered = sorted(float(s) for s in negative_scores)
    if not ordered:
        raise ValueError("a threshold at a false-positive rate needs negative scores")
    rank = math.ceil((1.0 - fpr) * len(ordered))  # 1-based; at most floor(fpr * n) lie above
    return ordered[max(rank, 1) - 1]
