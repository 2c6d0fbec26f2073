"""Confidence intervals for rates and means, and the rate type every count in poise uses."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from poise.errors import PoiseError


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


@dataclass(frozen=True)
class Rate:
    """``k`` successes out of ``n`` trials, with the 95% Wilson interval ``[low, high]``.

    The one rate of poise: audit metrics, the gate and the organism's model cards all count with
    it. ``description`` says what was counted where a rate stands alone (a model card row); it is
    written by :meth:`to_dict` only when set.
    """

    name: str
    k: int
    n: int
    value: float
    low: float
    high: float
    description: str = ""

    @classmethod
    def of(cls, name: str, k: int, n: int, *, description: str = "") -> Rate:
        """The rate k/n with its Wilson interval; ``n`` must be positive (an empty rate is absent)."""
        if n <= 0:
            raise ValueError(f"{name}: a rate needs n > 0, got {k}/{n}")
        low, high = wilson_interval(k, n)
        value = k / n
        # At k = n (or 0) the closed form can land one ulp inside the point estimate
        # (e.g. high = 0.9999999999999999 for 66/66); the interval must contain it.
        return cls(
            name=name,
            k=k,
            n=n,
            value=value,
            low=min(low, value),
            high=max(high, value),
            description=description,
        )

    @classmethod
    def empty(cls, name: str, *, description: str = "") -> Rate:
        """0 of 0: value 0 and the uninformative interval [0, 1] (for a fixed table row)."""
        return cls(name=name, k=0, n=0, value=0.0, low=0.0, high=1.0, description=description)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "k": self.k,
            "n": self.n,
            "value": self.value,
            "low": self.low,
            "high": self.high,
        }
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rate:
        missing = [f for f in ("name", "k", "n", "value", "low", "high") if f not in d]
        if missing:
            raise PoiseError(f"rate {d.get('name', '?')!r} lacks field {missing[0]!r}")
        return cls(
            name=str(d["name"]),
            k=int(d["k"]),
            n=int(d["n"]),
            value=float(d["value"]),
            low=float(d["low"]),
            high=float(d["high"]),
            description=str(d.get("description") or ""),
        )

    def format(self) -> str:
        """``12.5% [8.1, 18.7]``: the value and the 95% interval in percent."""
        return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"

    def __str__(self) -> str:
        return (
            f"{self.name} = {self.value:.1%} [{self.low:.1%}, {self.high:.1%}] ({self.k}/{self.n})"
        )
