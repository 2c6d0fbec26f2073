"""High-confidence safety statistics of HC-RLHF (arXiv 2506.08266).

HC-RLHF follows the Seldonian recipe (Thomas et al., Science 2019): split the prompts into a
candidate-selection set and a held-out safety-test set, then

1. **candidate selection**: train the policy to maximise reward subject to a *pessimistic*
   version of the cost constraint, an upper bound on the expected cost inflated to anticipate
   the safety test (:func:`pessimistic_upper_bound`, with the per-sample
   :func:`augmented_costs` that turn that bound into a policy-gradient signal);
2. **safety test**: on the held-out set, accept the model only if a one-sided Student-t upper
   confidence bound on its expected cost is at most ``τ`` (:func:`safety_test`). If the costs'
   mean is approximately normal, the probability of passing an unsafe model is at most ``δ``.

Costs are per-response scalars from a cost model (positive = harmful, Safe RLHF convention).

The Student-t bound is HC-RLHF's (and the Seldonian t-test of Thomas et al. 2019): exact for
normal costs, approximate otherwise. Two distribution-free bounds are one call away
(:func:`upper_bound`, ``bound=``): ``"hoeffding"`` for any costs in [0, 1] (Hoeffding 1963; the
other bound Thomas et al. 2019 offer) and ``"clopper-pearson"``, the exact binomial bound, for
0/1 costs (Clopper & Pearson 1934). Both hold with probability at least ``1 - δ`` whatever the
distribution, and are wider than the t bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from poise.errors import PoiseError
from poise.scoring.stats import beta_upper_quantile
from poise.scoring.stats import student_t_quantile as two_sided_t_quantile

__all__ = [
    "BOUNDS",
    "Bound",
    "SafetyTestResult",
    "augmented_costs",
    "clopper_pearson_upper_bound",
    "hoeffding_upper_bound",
    "pessimistic_coefficient",
    "pessimistic_upper_bound",
    "safety_test",
    "student_t_quantile",
    "student_t_upper_bound",
    "upper_bound",
]

Costs = Sequence[float] | np.ndarray | Tensor

#: the one-sided upper confidence bounds the safety test can use (see :func:`upper_bound`)
Bound = Literal["student-t", "hoeffding", "clopper-pearson"]
BOUNDS: tuple[Bound, ...] = ("student-t", "hoeffding", "clopper-pearson")


@dataclass(frozen=True)
class SafetyTestResult:
    """Outcome of the HC-RLHF safety test on ``n`` held-out costs."""

    n: int
    mean: float
    std: float  # sample standard deviation (n - 1 denominator)
    upper_bound: float  # mean + t_{1-δ, n-1} · std / √n (or the ``bound`` named)
    tau: float  # the cost threshold the bound must not exceed
    delta: float  # allowed probability of passing an unsafe model
    passed: bool
    bound: Bound = "student-t"  # which upper confidence bound (see :func:`upper_bound`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_array(costs: Costs) -> np.ndarray:
    if isinstance(costs, Tensor):
        array = costs.detach().to(torch.float64).cpu().numpy()
    else:
        array = np.asarray(costs, dtype=np.float64)
    array = array.reshape(-1)
    if array.size < 2:
        raise PoiseError(f"a confidence bound needs at least 2 costs, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise PoiseError("costs contain NaN or infinity")
    return array


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise PoiseError(f"delta must be in (0, 1), got {delta}")


def student_t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """``t_{p, ν}``, the ``p``-quantile of Student's t with ``ν`` degrees of freedom (one-sided:
    ``P(T <= t_{p, ν}) = p``; 1.8331 for ``p = 0.95``, ``ν = 9``, as ``scipy.stats.t.ppf``).

    For ``p > 1/2`` it is the two-sided ``2p - 1`` critical value
    (:func:`poise.scoring.stats.student_t_quantile`, from the incomplete beta function), as
    ``P(T <= t) = (1 + P(|T| <= t)) / 2``; for ``p < 1/2`` it is ``-t_{1-p, ν}`` (t is symmetric).
    """
    if not 0.0 < probability < 1.0:  # NaN too
        raise PoiseError(f"a t quantile needs 0 < probability < 1, got {probability}")
    if not degrees_of_freedom > 0:
        raise PoiseError(f"a t quantile needs degrees of freedom > 0, got {degrees_of_freedom}")
    if probability == 0.5:
        return 0.0
    if probability < 0.5:
        return -student_t_quantile(1.0 - probability, degrees_of_freedom)
    return two_sided_t_quantile(2.0 * probability - 1.0, degrees_of_freedom)


def student_t_upper_bound(costs: Costs, delta: float) -> tuple[float, float, float]:
    """One-sided ``1 - δ`` upper confidence bound on the expected cost.

    ``U = mean(c) + t_{1-δ, n-1} · std(c) / √n`` (arXiv 2506.08266, the safety test; Student's t
    interval, exact for normal costs and approximate otherwise). Returns ``(U, mean, std)``.
    """
    _check_delta(delta)
    return _upper_bound(_as_array(costs), delta)


def _upper_bound(array: np.ndarray, delta: float) -> tuple[float, float, float]:
    n = array.size
    mean = float(array.mean())
    std = float(array.std(ddof=1))
    bound = mean + student_t_quantile(1.0 - delta, n - 1) * std / math.sqrt(n)
    return bound, mean, std


def hoeffding_upper_bound(costs: Costs, delta: float) -> float:
    """Hoeffding's one-sided ``1 - δ`` upper bound on the expected cost of costs in [0, 1]:
    ``U = mean(c) + sqrt(ln(1/δ) / (2n))`` (Hoeffding 1963, Thm. 2 with range 1). It holds for
    any distribution on [0, 1] (a cost model's ``σ(score)``, a judge's 0/1, per-prompt means of
    several answers); ``[n]`` costs outside [0, 1] are an error."""
    _check_delta(delta)
    array = _as_array(costs)
    _check_unit_interval(array, "hoeffding")
    return float(array.mean()) + math.sqrt(math.log(1.0 / delta) / (2.0 * array.size))


def clopper_pearson_upper_bound(costs: Costs, delta: float) -> float:
    """The exact one-sided ``1 - δ`` upper bound on a rate from ``[n]`` 0/1 costs, ``k`` of them 1
    (Clopper & Pearson 1934): ``U = B⁻¹(1 - δ; k + 1, n - k)``, the ``1 - δ`` quantile of the
    Beta(k + 1, n - k) distribution, and 1 when ``k = n``; for ``k = 0`` that is
    ``1 - δ^{1/n}``. Equal to the upper end of ``scipy.stats.binomtest(k, n,
    alternative="less").proportion_ci(1 - δ, method="exact")``. Costs other than 0 and 1 (a
    cost model's, or per-prompt means of several judged answers) are an error."""
    _check_delta(delta)
    array = _as_array(costs)
    if not np.all((array == 0.0) | (array == 1.0)):
        raise PoiseError(
            "the clopper-pearson bound needs 0/1 costs (a judge, one answer per prompt); "
            f"got {_first_other(array, lambda v: v not in (0.0, 1.0))}"
        )
    n, k = int(array.size), int(array.sum())
    if k == n:
        return 1.0
    return beta_upper_quantile(delta, k + 1, n - k)  # P(p > U) = δ, δ not rounded in 1 - δ


def _check_unit_interval(array: np.ndarray, bound: str) -> None:
    if not np.all((array >= 0.0) & (array <= 1.0)):
        raise PoiseError(
            f"the {bound} bound needs costs in [0, 1] (a judge, or sigmoid costs); got "
            f"{_first_other(array, lambda v: not 0.0 <= v <= 1.0)}"
        )


def _first_other(array: np.ndarray, other: Any) -> str:
    index = next(i for i, v in enumerate(array.tolist()) if other(v))
    return f"cost {float(array[index])!r} at index {index}"


def upper_bound(costs: Costs, delta: float, bound: Bound = "student-t") -> float:
    """The one-sided ``1 - δ`` upper confidence bound on the expected cost that ``bound`` names:
    ``"student-t"`` (:func:`student_t_upper_bound`, HC-RLHF's), ``"hoeffding"``
    (:func:`hoeffding_upper_bound`, costs in [0, 1]) or ``"clopper-pearson"``
    (:func:`clopper_pearson_upper_bound`, 0/1 costs)."""
    if bound == "student-t":
        return student_t_upper_bound(costs, delta)[0]
    if bound == "hoeffding":
        return hoeffding_upper_bound(costs, delta)
    if bound == "clopper-pearson":
        return clopper_pearson_upper_bound(costs, delta)
    raise PoiseError(f"bound must be one of {', '.join(BOUNDS)}; got {bound!r}")


def safety_test(
    costs: Costs, tau: float, delta: float, *, bound: Bound = "student-t"
) -> SafetyTestResult:
    """HC-RLHF's safety test: pass iff ``mean + t_{1-δ, n-1} · std / √n <= τ``.

    ``costs``: the cost model's scores of the candidate policy's responses on the held-out
    safety-test prompts (never seen during candidate selection, or the guarantee is void).
    ``bound`` swaps the Student-t bound for a distribution-free one (:func:`upper_bound`).
    """
    _check_delta(delta)
    array = _as_array(costs)
    _, mean, std = _upper_bound(array, delta)
    value = upper_bound(array, delta, bound)
    return SafetyTestResult(
        n=int(array.size),
        mean=mean,
        std=std,
        upper_bound=value,
        tau=float(tau),
        delta=float(delta),
        passed=value <= tau,
        bound=bound,
    )


def pessimistic_coefficient(
    candidate_size: int,
    safety_test_size: int,
    delta: float,
    *,
    candidate_coef: float = 1.0,
    safety_coef: float = 1.0,
) -> float:
    """The multiplier ``κ`` of ``std`` in the candidate-selection bound ``mean + κ · std``.

    ``κ = c1 · t_{1-δ, n_c-1} / √n_c + c2 · t_{1-δ, n_s-1} / √n_s`` with ``n_c`` the number of costs
    the estimate uses and ``n_s`` the size of the later safety test.

    Why inflate: the safety test will use ``n_s`` fresh samples, so a candidate that merely
    satisfies the bound on its own data would fail the test about half the time; the ``c2`` term
    predicts the safety test's own bound, the ``c1`` term the error of the estimate on ``n_c``
    costs.

    Defaults ``c1 = c2 = 1``: the defaults of HC-RLHF's public code
    (github.com/UMass-SCALAR-Lab/HC-RLHF, commit a265945,
    ``safe_rlhf/algorithms/reinforce_lag/main.py``: ``--students_c1`` and ``--students_c2``
    default to 1.0, and ``scripts/reinforce-ci-lag.sh`` sets ``STUDENTS_C1=1``,
    ``STUDENTS_C2=1``); the same code's sweep script ran ``c1 = 4, c2 = 2``. The Seldonian
    heuristic of Thomas et al. (2019), ``c1 = 0, c2 = 2``, is one call away. ``safe-rl`` exposes
    both as ``--pessimism-c1`` / ``--pessimism-c2``.
    """
    _check_delta(delta)
    if safety_test_size < 2:
        raise PoiseError(f"safety_test_size must be >= 2, got {safety_test_size}")
    if candidate_coef < 0 or safety_coef < 0:
        raise PoiseError("candidate_coef and safety_coef must be >= 0")
    coefficient = (
        safety_coef
        * student_t_quantile(1.0 - delta, safety_test_size - 1)
        / math.sqrt(safety_test_size)
    )
    if candidate_coef:
        if candidate_size < 2:
            raise PoiseError(f"candidate_size must be >= 2, got {candidate_size}")
        coefficient += (
            candidate_coef
            * student_t_quantile(1.0 - delta, candidate_size - 1)
            / math.sqrt(candidate_size)
        )
    return coefficient


def pessimistic_upper_bound(
    costs: Costs,
    safety_test_size: int,
    delta: float,
    *,
    candidate_coef: float = 1.0,
    safety_coef: float = 1.0,
) -> float:
    """Candidate selection's pessimistic cost bound ``mean(c) + κ · std(c)``.

    ``costs`` are the candidate policy's costs on candidate-selection prompts; ``κ`` is
    :func:`pessimistic_coefficient` for ``n_c = len(costs)`` and the planned ``safety_test_size``.
    Candidate selection constrains this to be ``<= τ``.
    """
    array = _as_array(costs)
    coefficient = pessimistic_coefficient(
        array.size,
        safety_test_size,
        delta,
        candidate_coef=candidate_coef,
        safety_coef=safety_coef,
    )
    return float(array.mean()) + coefficient * float(array.std(ddof=1))


def augmented_costs(costs: Tensor, *, mean: float, std: float, coefficient: float) -> Tensor:
    """Per-sample costs whose policy gradient is that of the pessimistic bound ``μ + κ σ``.

    ``[N] -> [N]``: ``c + κ (c² - 2 μ c) / (2 σ)``. With ``c ~ π_θ``, the score-function gradient of
    ``μ = E[c]`` is ``E[c ∇log π]`` and that of ``σ = sqrt(E[c²] - μ²)`` is
    ``E[(c² - 2 μ c) / (2σ) · ∇log π]``; so a REINFORCE/RLOO update that uses these costs in place
    of ``c`` (e.g. reward ``r - λ c̃``) descends the bound candidate selection constrains, as in
    HC-RLHF's public code. ``mean`` and ``std`` are the current estimates ``μ``, ``σ`` (held fixed:
    no gradient flows through them); ``coefficient`` is :func:`pessimistic_coefficient`.
    """
    if not std > 0:
        raise PoiseError(f"std must be > 0 for the augmented cost, got {std}")
    return costs + coefficient * (costs * costs - 2.0 * mean * costs) / (2.0 * std)
