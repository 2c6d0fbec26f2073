"""Confidence intervals for rates and means."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def wilson_interval(
    successes: int, total: int, z: float = 1.959963984540054
) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; default 95%).

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is sensible at k = 0 or k = n.
    Returns (low, high); (0.0, 1.0) when ``total == 0``.
    """
    if total < 0 or successes < 0 or successes > total:
        raise ValueError(f"need 0 <= successes <= total, got {successes}/{total}")
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    z2 = z * z
    denom = 1.0 + z2 / total
    centre = (p + z2 / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / denom
    # at k = 0 (k = n) the exact bound is 0 (1); rounding would leave it a few ulps off
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return low, high


def mean_interval(
    values: Sequence[float], z: float = 1.959963984540054
) -> tuple[float, float, float]:
    """Mean and normal-approximation interval ``mean ± z · s / sqrt(n)`` (``s`` the sample
    standard deviation; default 95%). Returns (mean, low, high); a single value has no spread."""
    if not values:
        raise ValueError("mean_interval needs at least one value")
    mean = statistics.fmean(values)
    half = z * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, mean - half, mean + half
