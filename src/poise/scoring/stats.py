"""Confidence intervals for rates and means, and the rate type every count in poise uses.

- :func:`wilson_interval`: a rate over independent trials (Wilson 1927).
- :func:`cluster_design_effect` and :meth:`Rate.of_clusters`: a rate over samples that come in
  clusters (several samples of one prompt are not independent): a Wilson interval on the
  effective sample size ``n / deff`` (Kish 1965's design effect; the effective sample size of
  Korn & Graubard, Survey Methodology 24, 1998, who put it in the exact Clopper-Pearson
  interval with a degrees-of-freedom adjustment, where poise puts it in Wilson's), with
  ``deff`` from the cluster-robust (sandwich) variance of the ratio estimator, as recommended
  for evals by Miller, "Adding Error Bars to Evals", arXiv 2411.00640 (its clustered standard
  errors).
- :func:`cluster_mean_interval`: a mean over samples that come in clusters (answer lengths of a
  prompt sampled several times), with the same cluster-robust variance.
- :func:`paired_binary`: two binary outcomes per prompt (system prompt on / off, model A / B,
  before / after training): the difference of rates with Newcombe's paired hybrid score interval
  (Newcombe, Stat. Med. 17:2635, 1998, method 10) and the exact McNemar test.
- :func:`paired_clustered`: two rates over several samples per prompt on the same prompts: the
  difference with a cluster-robust interval and test, prompts as clusters, against Student's t
  with m - 1 degrees of freedom (m prompts; Cameron & Miller 2015, Sec. VI).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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


Z95 = 1.959963984540054  # the standard normal's 0.975 quantile


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` (a, b > 0, 0 <= x <= 1), by its
    continued fraction evaluated with the modified Lentz method (Press et al., Numerical Recipes,
    3rd ed., Sec. 6.4, ``betacf``): for x < (a + 1) / (a + b + 2) directly, else through
    ``I_x(a, b) = 1 - I_{1-x}(b, a)``, where the fraction converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def student_t_two_sided_p(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` for Student's t with ``df`` degrees of freedom:
    ``I_{df / (df + t²)}(df / 2, 1 / 2)`` (Abramowitz & Stegun 26.7.1 with 26.5.2); ``df = inf``
    is the standard normal. The relative error grows with df, as the difference of ``lgamma``
    values of size df·ln(df) loses digits: 1e-8 at df = 1e6, 1e-4 at 1e10."""
    if not df > 0:  # NaN too
        raise ValueError(f"need df > 0, got {df}")
    if math.isinf(t):
        return 0.0
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    a, t2 = df / 2.0, t * t
    x = df / (df + t2)
    if x > (a + 1.0) / (a + 2.5):
        # Near t = 0 (p near 1) the continued fraction runs on the complement, I_x(a, 1/2) =
        # 1 - I_{1-x}(1/2, a): given 1 - x as t² / (df + t²), not as 1 - x rounded next to 1
        # (that rounding alone put p(1e-6, df = 1e5) at 1.0, not 0.9999992).
        return 1.0 - _betainc(0.5, a, t2 / (df + t2))
    return _betainc(a, 0.5, x)


def student_t_quantile(level: float, df: float) -> float:
    """The two-sided ``level`` critical value of Student's t with ``df`` degrees of freedom
    (``t`` with ``P(|T| <= t) = level``: 12.706 for level 0.95 and df 1, 1.960 for
    ``df = inf``), by bisection on :func:`student_t_two_sided_p` to 1e-12 relative."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"need 0 < level < 1, got {level}")
    if not df > 0:  # NaN too: every comparison below would be False, and the bisection end at 0
        raise ValueError(f"need df > 0, got {df}")
    if math.isinf(df):
        return statistics.NormalDist().inv_cdf((1.0 + level) / 2.0)
    target = 1.0 - level
    low, high = 0.0, 1.0
    while student_t_two_sided_p(high, df) > target:  # the p-value falls as t grows
        high *= 2.0
    while high - low > 1e-12 * high:  # relative: small levels have small critical values
        middle = (low + high) / 2.0
        if middle in (low, high):  # no float between them
            break
        if student_t_two_sided_p(middle, df) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def beta_quantile(probability: float, a: float, b: float) -> float:
    """The ``probability``-quantile of the Beta(a, b) distribution: the ``x`` in [0, 1] with
    ``I_x(a, b) = probability``, ``I`` the regularised incomplete beta function (its CDF,
    :func:`_betainc`), by bisection to 1e-15 relative. Against ``scipy.stats.beta.ppf`` the
    relative difference is ~1e-14 for ``a + b`` up to 100, 1e-12 at 1e3 and 4e-10 at 1e5: the
    ``lgamma`` terms of :func:`_betainc`'s prefactor, of size ``(a + b) ln(a + b)``, lose digits.

    The exact binomial bounds are such quantiles (Clopper & Pearson, Biometrika 26:404, 1934):
    with ``k`` successes in ``n`` trials, ``P(X >= k; p) = I_p(k, n - k + 1)``, so the one-sided
    ``1 - δ`` upper bound on ``p`` is ``beta_quantile(1 - δ, k + 1, n - k)`` (``k < n``) and the
    lower one ``beta_quantile(δ, k, n - k + 1)`` (``k > 0``)."""
    if not 0.0 <= probability <= 1.0:  # NaN too
        raise ValueError(f"need 0 <= probability <= 1, got {probability}")
    return _beta_quantile(probability, 1.0 - probability, a, b)


def beta_upper_quantile(tail: float, a: float, b: float) -> float:
    """The ``x`` with ``P(X > x) = tail`` for ``X ~ Beta(a, b)``: :func:`beta_quantile` of
    ``1 - tail``, with ``tail`` itself given, so a tiny one is not rounded in ``1 - tail``
    first (the exact one-sided bound at δ = 1e-12 was computed at δ = 9.99978e-13)."""
    if not 0.0 <= tail <= 1.0:  # NaN too
        raise ValueError(f"need 0 <= tail <= 1, got {tail}")
    return _beta_quantile(1.0 - tail, tail, a, b)


def _beta_quantile(lower: float, upper: float, a: float, b: float) -> float:
    """The ``x`` with ``I_x(a, b) = lower`` and ``1 - I_x(a, b) = upper`` (the two tails, each
    as the caller has it). Above 1/2 the bisection compares upper tails, ``1 - I_x(a, b) =
    I_{1-x}(b, a)``, against ``upper``: ``I_x(a, b)`` itself is within 1e-16 of 1 there, which
    left 6 correct digits at probability 1 - 1e-10 (an exact upper bound at a small δ) and 2
    at 1 - 1e-16."""
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"need finite a > 0 and b > 0, got a={a}, b={b}")
    if upper == 0.0:
        return 1.0
    if lower == 0.0:
        return 0.0
    if upper < 0.5:
        return _beta_bisect(upper, a, b, upper=True)
    return _beta_bisect(lower, a, b, upper=False)


def _beta_bisect(tail: float, a: float, b: float, *, upper: bool) -> float:
    """Bisection for the ``x`` whose upper tail ``1 - I_x(a, b) = I_{1-x}(b, a)`` (``upper``)
    or lower tail ``I_x(a, b)`` is ``tail``, to 1e-15 relative."""
    low, high = 0.0, 1.0  # I_x(a, b) rises from 0 to 1 on [0, 1]
    while high - low > 1e-15 * high:
        middle = (low + high) / 2.0
        if middle in (low, high):  # no float between them
            break
        if (_betainc(b, a, 1.0 - middle) > tail) if upper else (_betainc(a, b, middle) < tail):
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def wilson_interval_effective(
    value: float, effective_n: float, z: float = Z95
) -> tuple[float, float]:
    """Wilson score interval for a proportion ``value`` estimated with ``effective_n`` (a real
    number: the sample size over the design effect) in place of the number of trials. With
    ``effective_n`` an integer and ``value = k / effective_n`` it equals :func:`wilson_interval`."""
    if not 0.0 <= value <= 1.0 or effective_n <= 0:
        raise ValueError(f"need 0 <= value <= 1 and effective_n > 0, got {value}, {effective_n}")
    z2 = z * z
    denom = 1.0 + z2 / effective_n
    centre = (value + z2 / (2 * effective_n)) / denom
    half = z * math.sqrt(value * (1 - value) / effective_n + z2 / (4 * effective_n**2)) / denom
    low = 0.0 if value == 0.0 else max(0.0, centre - half)
    high = 1.0 if value == 1.0 else min(1.0, centre + half)
    return min(low, value), max(high, value)


def cluster_design_effect(successes: Sequence[int], trials: Sequence[int]) -> tuple[float, float]:
    """(design effect, effective sample size) of the rate ``sum(successes) / sum(trials)`` whose
    trials come in clusters (``successes[i]`` of ``trials[i]`` in cluster ``i``; shapes [m]).

    The cluster-robust variance of the ratio estimator ``p = K / N`` (Liang & Zeger 1986; the
    clustered standard error of arXiv 2411.00640, with the usual ``m / (m - 1)`` small-sample
    factor, as statsmodels' cluster covariance of a regression on a constant) is ``v_c = m / (m - 1) · Σ_i (k_i - p n_i)² / N²``;
    over independent trials it would be ``v = p (1 - p) / N``. ``deff = v_c / v``, floored at 1
    (a clustered rate is never reported as surer than independent trials would make it), and
    ``n_eff = N / deff``.

    Where the data cannot estimate it: at ``p = 0`` or ``p = 1`` (every trial alike) or with one
    cluster, the conservative ``n_eff = m`` (as if each cluster were one trial) is used.
    """
    if len(successes) != len(trials) or not trials:
        raise ValueError("successes and trials need the same, non-zero length")
    # a cluster without trials is none: counted, it made deff < 1 and n_eff > N at p = 0
    m = sum(1 for n in trials if n > 0)
    total = sum(trials)
    hits = sum(successes)
    if total <= 0 or any(n < 0 or not 0 <= k <= n for k, n in zip(successes, trials, strict=True)):
        raise ValueError("need 0 <= successes[i] <= trials[i] and some trials")
    p = hits / total
    if m == 1 or hits in (0, total):
        return total / m, float(m)
    residual = sum(
        (k - p * n) ** 2 for k, n in zip(successes, trials, strict=True)
    )  # Σ (k_i - p n_i)²
    v_cluster = m / (m - 1) * residual / total**2
    v_independent = p * (1 - p) / total
    deff = max(1.0, v_cluster / v_independent)
    return deff, total / deff


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``a_only`` successes in
    ``a_only + b_only`` discordant pairs at 1/2 (McNemar 1947; the exact form as
    ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``). 1.0 without discordant pairs."""
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts must be >= 0")
    n = a_only + b_only
    if n == 0:
        return 1.0
    # C(n, i) for i = 0..min, each from the last (one comb per term took 25 s at n = 20,000)
    tail, term = 0, 1
    for i in range(min(a_only, b_only) + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return min(1.0, 2 * tail / 2**n)


def newcombe_paired_interval(
    both: int, a_only: int, b_only: int, neither: int, z: float = Z95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``p_a - p_b`` from paired binary outcomes
    (Newcombe, "Improved confidence intervals for the difference between binomial proportions
    based on paired data", Stat. Med. 17:2635-2650, 1998, method 10).

    ``both``, ``a_only``, ``b_only``, ``neither``: the 2x2 table of pairs (a success in A and in B,
    in A only, in B only, in neither). ``p_a = (both + a_only) / n``, ``p_b = (both + b_only) / n``,
    ``(l_a, u_a)``, ``(l_b, u_b)`` their Wilson intervals, and ``φ`` the correlation of the pair
    with Newcombe's correction (``C = ad - bc``, less ``n / 2`` when above ``n / 2``, 0 between 0
    and ``n / 2``; ``φ = C / sqrt((a+b)(c+d)(a+c)(b+d))``, 0 when a margin is empty):

        low  = D - sqrt((p_a - l_a)² - 2 φ (p_a - l_a)(u_b - p_b) + (u_b - p_b)²)
        high = D + sqrt((p_b - l_b)² - 2 φ (p_b - l_b)(u_a - p_a) + (u_a - p_a)²)
    """
    a, b, c, d = both, a_only, b_only, neither
    n = a + b + c + d
    if n <= 0 or min(a, b, c, d) < 0:
        raise ValueError(f"need non-negative counts and n > 0, got {(a, b, c, d)}")
    p_a, p_b = (a + b) / n, (a + c) / n
    l_a, u_a = wilson_interval(a + b, n, z)
    l_b, u_b = wilson_interval(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    corr: float = a * d - b * c
    corr = corr - n / 2 if corr > n / 2 else (corr if corr < 0 else 0)
    phi = corr / math.sqrt(margins) if margins else 0.0
    diff = p_a - p_b
    low = diff - math.sqrt(
        max(0.0, (p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2)
    )
    high = diff + math.sqrt(
        max(0.0, (p_b - l_b) ** 2 - 2 * phi * (p_b - l_b) * (u_a - p_a) + (u_a - p_a) ** 2)
    )
    return max(-1.0, low), min(1.0, high)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` for one rate measured on the same prompts under two conditions, with its 95%
    interval and a test of no difference.

    ``method``: ``"newcombe"`` (one binary outcome per prompt and condition; ``counts`` holds the
    2x2 table and ``test`` is ``"mcnemar-exact"``) or ``"cluster"`` (several samples per prompt;
    cluster-robust interval and test against t(m - 1), ``test = "t-cluster"``; with no spread
    between prompts, Newcombe's interval with a trial per prompt and the sign test over prompts,
    ``test = "sign-prompts"``). ``pairs``: prompts in both.
    """

    name: str
    a: str
    b: str
    value: float
    low: float
    high: float
    p_value: float
    pairs: int
    method: str
    test: str
    rate_a: float
    rate_b: float
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "a": self.a,
            "b": self.b,
            "difference": self.value,
            "low": self.low,
            "high": self.high,
            "p_value": self.p_value,
            "pairs": self.pairs,
            "method": self.method,
            "test": self.test,
            "rate_a": self.rate_a,
            "rate_b": self.rate_b,
        }
        if self.counts:
            out["counts"] = dict(self.counts)
        return out

    def format(self) -> str:
        """``-6.2 pp [-11.9, -0.5], p = 0.052`` (Cavo et al. 2012: 65/161 before, 75/161 after;
        Newcombe's interval excludes 0 where the exact McNemar test does not reject at 5%): the
        difference in percentage points."""
        return (
            f"{100 * self.value:+.1f} pp [{100 * self.low:+.1f}, {100 * self.high:+.1f}], "
            f"p = {self.p_value:.2g}"
        )


def paired_binary(
    name: str, pairs: Sequence[tuple[bool, bool]], *, a: str = "a", b: str = "b"
) -> PairedDifference:
    """The difference of two rates from one binary outcome per prompt under each condition
    (``pairs[i] = (outcome under a, outcome under b)``): Newcombe's paired interval and the exact
    McNemar test (see :func:`newcombe_paired_interval`, :func:`mcnemar_exact`)."""
    if not pairs:
        raise ValueError(f"{name}: no pairs")
    both = sum(1 for x, y in pairs if x and y)
    a_only = sum(1 for x, y in pairs if x and not y)
    b_only = sum(1 for x, y in pairs if y and not x)
    neither = len(pairs) - both - a_only - b_only
    low, high = newcombe_paired_interval(both, a_only, b_only, neither)
    n = len(pairs)
    return PairedDifference(
        name=name,
        a=a,
        b=b,
        value=(a_only - b_only) / n,
        low=low,
        high=high,
        p_value=mcnemar_exact(a_only, b_only),
        pairs=n,
        method="newcombe",
        test="mcnemar-exact",
        rate_a=(both + a_only) / n,
        rate_b=(both + b_only) / n,
        counts={"both": both, "a_only": a_only, "b_only": b_only, "neither": neither},
    )


def paired_clustered(
    name: str,
    a_counts: Sequence[tuple[int, int]],
    b_counts: Sequence[tuple[int, int]],
    *,
    a: str = "a",
    b: str = "b",
    level: float = 0.95,
) -> PairedDifference:
    """The difference of two rates over several samples per prompt on the same prompts
    (``a_counts[i] = (successes, trials)`` of prompt ``i`` under a; shapes [m]).

    ``D = K_a / N_a - K_b / N_b``; its cluster-robust variance, prompts as clusters, is
    ``m / (m - 1) · Σ_i r_i²`` with ``r_i = (k_ai - p_a n_ai) / N_a - (k_bi - p_b n_bi) / N_b``
    (the linearisation of both ratio estimators, which keeps their within-prompt covariance;
    arXiv 2411.00640, paired differences). Interval ``D ± t_{m-1} · se`` and the two-sided test
    of ``D / se`` against Student's t with m - 1 degrees of freedom: the few-clusters reference
    of Cameron & Miller, "A Practitioner's Guide to Cluster-Robust Inference" (J. Human
    Resources 50, 2015), Sec. VI, and Stata's for clustered standard errors. A normal reference
    is far too ready on few prompts (three prompts at 8/8, 8/8, 7/8 against 0/8 each gave
    p = 5e-117; t(2) gives 0.002). With the same number of samples of each prompt under a and
    b this is exactly the paired t-test on the prompts' differences of rates (and the CR2
    variance with Bell & McCaffrey's degrees of freedom). With no spread between prompts (every
    ``r_i = 0``), Newcombe's interval with a trial per prompt and the exact sign test over the
    prompts whose own rate moved (see the code). Counts outside ``0 <= successes <= trials``
    are a ValueError naming the prompt. A prompt with no trials under either condition is left
    out (m and ``pairs`` count the prompts with trials), as the regression's clusters are only
    those with observations; fewer than 2 such prompts are a ValueError.
    """
    if len(a_counts) != len(b_counts) or len(a_counts) < 2:
        raise ValueError(f"{name}: need the same prompts, at least 2, under both conditions")
    for label, counts in ((a, a_counts), (b, b_counts)):
        for i, (k, n) in enumerate(counts):
            if not 0 <= k <= n:
                raise ValueError(
                    f"{name}: prompt {i} under {label}: need 0 <= successes <= trials, got {k}/{n}"
                )
    # A prompt with no trials under a or b is no cluster (as in cluster_design_effect):
    # counted, 37 such prompts beside 3 real ones turned t(2) into t(39), p = 0.002 into 2e-27.
    kept = [(ca, cb) for ca, cb in zip(a_counts, b_counts, strict=True) if ca[1] + cb[1] > 0]
    if len(kept) < 2:
        raise ValueError(f"{name}: need at least 2 prompts with trials, got {len(kept)}")
    a_counts, b_counts = [ca for ca, _ in kept], [cb for _, cb in kept]
    n_a = sum(n for _, n in a_counts)
    n_b = sum(n for _, n in b_counts)
    if n_a <= 0 or n_b <= 0:
        raise ValueError(f"{name}: no trials")
    k_a, k_b = sum(k for k, _ in a_counts), sum(k for k, _ in b_counts)
    p_a, p_b = k_a / n_a, k_b / n_b
    m = len(a_counts)
    residuals = [
        (ka - p_a * na) / n_a - (kb - p_b * nb) / n_b
        for (ka, na), (kb, nb) in zip(a_counts, b_counts, strict=True)
    ]  # [m]
    se = math.sqrt(m / (m - 1) * sum(r * r for r in residuals))
    diff = p_a - p_b
    t_critical = student_t_quantile(level, m - 1)
    low, high = diff - t_critical * se, diff + t_critical * se
    test = "t-cluster"
    # r_i · N_a² N_b² in integers: "no spread" decided exactly (in floats, every prompt moving
    # by 2/3 left residuals of 1e-17: a point interval with p = 0)
    spread = any(
        (ka * n_a - k_a * na) * n_b**2 != (kb * n_b - k_b * nb) * n_a**2
        for (ka, na), (kb, nb) in zip(a_counts, b_counts, strict=True)
    )
    if not spread:
        # No spread between prompts (every prompt moved alike, e.g. all answers harmful under a
        # and none under b): the t interval is a point and its p-value 0 on any number of
        # prompts. The data are then as if each prompt were one trial (the design effect's
        # limit): Newcombe's hybrid score interval with n = m prompts (his 1998 method 10, no
        # correlation term) and the exact sign test over the prompts: those whose own rate
        # went up against those whose rate went down (compared exactly, k_a n_b vs k_b n_a),
        # prompts that did not move (or lack trials under a or b) left out. Residuals can
        # vanish with no prompt moving at all: (0/1, 2/2) under a and (0/2, 1/1) under b give
        # D = +1/3 from the numbers of trials alone; that is no evidence of a change.
        z = statistics.NormalDist().inv_cdf((1.0 + level) / 2.0)
        l_a, u_a = wilson_interval_effective(p_a, m, z)
        l_b, u_b = wilson_interval_effective(p_b, m, z)
        low = diff - math.sqrt((p_a - l_a) ** 2 + (u_b - p_b) ** 2)
        high = diff + math.sqrt((p_b - l_b) ** 2 + (u_a - p_a) ** 2)
        moved = [
            ka * nb - kb * na
            for (ka, na), (kb, nb) in zip(a_counts, b_counts, strict=True)
            if na > 0 and nb > 0
        ]  # [<= m]: the sign of each prompt's own difference of rates
        up, down = sum(1 for x in moved if x > 0), sum(1 for x in moved if x < 0)
        p_value = 1.0 if diff == 0.0 else mcnemar_exact(up, down)
        test = "sign-prompts"
    else:
        p_value = student_t_two_sided_p(diff / se, m - 1)
    return PairedDifference(
        name=name,
        a=a,
        b=b,
        value=diff,
        low=max(-1.0, low),
        high=min(1.0, high),
        p_value=p_value,
        pairs=m,
        method="cluster",
        test=test,
        rate_a=p_a,
        rate_b=p_b,
    )


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its Student-t interval ``mean ± t_{n-1} · s / sqrt(n)`` (``s`` the sample
    standard deviation, ``t_{n-1}`` the two-sided ``level`` critical value; default 95%). Returns
    (mean, low, high); a single value has no spread. The normal reference (1.96) was 2.2x too
    narrow at 3 values (t_2 = 4.30) and 1.5% at 120."""
    if not values:
        raise ValueError("mean_interval needs at least one value")
    mean = statistics.fmean(values)
    n = len(values)
    if n < 2:
        return mean, mean, mean
    half = student_t_quantile(level, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def cluster_mean_interval(
    clusters: Sequence[Sequence[float]], level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of all values and its cluster-robust interval (default 95%); ``clusters``: the values
    of each cluster (shapes [m][n_i]; the answers to one prompt).

    ``mean ± t_{m-1} · se`` with the sandwich variance of the mean (Liang & Zeger 1986; the
    clustered standard error of arXiv 2411.00640), ``se² = m / (m - 1) · Σ_i (Σ_j (y_ij - ȳ))²
    / N²``, the ``m / (m - 1)`` correction as statsmodels' cluster covariance applies it, and the
    critical value of Student's t with m - 1 degrees of freedom, m the clusters with values (as
    Stata and statsmodels' ``use_t`` do; Cameron & Miller, "A Practitioner's Guide to
    Cluster-Robust Inference", J. Human Resources 50(2), 2015, Sec. VI: with few clusters the
    normal reference is too narrow, 2.2x at 3 clusters). With one value per cluster it is
    :func:`mean_interval`. Returns (mean, low, high); one cluster has no spread.
    """
    values = [v for cluster in clusters for v in cluster]
    if not values:
        raise ValueError("cluster_mean_interval needs at least one value")
    m, n = sum(1 for c in clusters if c), len(values)
    mean = statistics.fmean(values)
    if m < 2:
        return mean, mean, mean
    scores = [sum(v - mean for v in cluster) for cluster in clusters if cluster]  # [m]
    half = (
        student_t_quantile(level, m - 1) * math.sqrt(m / (m - 1) * sum(u * u for u in scores)) / n
    )
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
    clusters: int | None = None  # set when the interval is cluster-robust (items as clusters)
    design_effect: float | None = None

    @property
    def effective_n(self) -> float:
        """``n`` over the design effect (``n`` for a rate over independent trials)."""
        return self.n / self.design_effect if self.design_effect else float(self.n)

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
    def of_clusters(
        cls,
        name: str,
        successes: Sequence[int],
        trials: Sequence[int],
        *,
        description: str = "",
    ) -> Rate:
        """The rate ``sum(successes) / sum(trials)`` over clustered trials (cluster ``i``: a prompt
        with ``trials[i]`` samples, ``successes[i]`` of them successes), with the Wilson interval
        on the effective sample size (:func:`cluster_design_effect`)."""
        k, n = sum(successes), sum(trials)
        if n <= 0:
            raise ValueError(f"{name}: a rate needs n > 0, got {k}/{n}")
        deff, effective_n = cluster_design_effect(successes, trials)
        value = k / n
        low, high = wilson_interval_effective(value, effective_n)
        return cls(
            name=name,
            k=k,
            n=n,
            value=value,
            low=low,
            high=high,
            description=description,
            clusters=sum(1 for t in trials if t > 0),
            design_effect=deff,
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
        if self.clusters is not None:
            out["interval"] = "cluster"
            out["clusters"] = self.clusters
            out["design_effect"] = self.design_effect
            out["effective_n"] = self.effective_n
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
            clusters=int(d["clusters"]) if d.get("clusters") is not None else None,
            design_effect=float(d["design_effect"]) if d.get("design_effect") is not None else None,
        )

    def format(self) -> str:
        """``12.5% [8.1, 18.7]``: the value and the 95% interval in percent."""
        return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"

    def __str__(self) -> str:
        return (
            f"{self.name} = {self.value:.1%} [{self.low:.1%}, {self.high:.1%}] ({self.k}/{self.n})"
        )


def item_rate(name: str, per_item: Sequence[tuple[int, int]]) -> Rate:
    """The rate over items' ``(successes, trials)`` (shape [m]): plain Wilson with one trial per
    item; with several samples of some prompt, which are not independent, prompts are the
    clusters (:meth:`Rate.of_clusters`)."""
    if any(n > 1 for _, n in per_item):
        return Rate.of_clusters(name, [k for k, _ in per_item], [n for _, n in per_item])
    return Rate.of(name, sum(k for k, _ in per_item), sum(n for _, n in per_item))


def item_mean_interval(per_item: Sequence[Sequence[float]]) -> tuple[float, float, float, bool]:
    """Mean of the values of all items (``per_item``: each item's values, [m][n_i]) and its 95%
    interval: Student-t over the values when each item has one (:func:`mean_interval`), else
    cluster-robust (:func:`cluster_mean_interval`) and never narrower than over independent values (as the
    rates floor the design effect at 1). Returns (mean, low, high, clustered)."""
    values = [v for item in per_item for v in item]
    if not any(len(item) > 1 for item in per_item):
        mean, low, high = mean_interval(values)
        return mean, low, high, False
    mean, low, high = cluster_mean_interval(per_item)
    _, iid_low, iid_high = mean_interval(values)
    return mean, min(low, iid_low), max(high, iid_high), True
