"""HC-RLHF statistics against hand-computed examples and scipy (the reference for the t and beta
quantiles poise computes itself)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from poise.errors import PoiseError
from poise.train.safety import (
    augmented_costs,
    clopper_pearson_upper_bound,
    pessimistic_coefficient,
    pessimistic_upper_bound,
    safety_test,
    student_t_quantile,
    student_t_upper_bound,
    upper_bound,
)

scipy_stats = pytest.importorskip("scipy.stats")

# ten held-out costs, computed by hand: mean = -0.5, Σ(c-μ)² = 6.5, sample variance = 6.5/9
COSTS = [-2.0, -1.5, -1.0, -1.0, -0.5, 0.0, 0.0, 0.5, 0.5, 0.0]


def test_hand_computed_bound() -> None:
    assert sum(COSTS) / 10 == pytest.approx(-0.5)
    assert sum((c + 0.5) ** 2 for c in COSTS) == pytest.approx(6.5)
    delta = 0.05
    t = scipy_stats.t.ppf(0.95, 9)
    assert t == pytest.approx(1.8331, abs=1e-4)  # the table value
    expected = -0.5 + t * math.sqrt(6.5 / 9) / math.sqrt(10)
    bound, mean, std = student_t_upper_bound(COSTS, delta)
    assert (bound, mean, std) == pytest.approx((expected, -0.5, math.sqrt(6.5 / 9)))
    assert expected == pytest.approx(-0.00737, abs=1e-5)  # 1.8331 · 0.84984 / 3.16228 = 0.49264


def test_safety_test_pass_and_fail() -> None:
    # U = -0.00737 <= 0: the mean cost is certified below 0 at 95% confidence, just
    passed = safety_test(COSTS, tau=0.0, delta=0.05)
    assert passed.passed
    assert passed.n == 10
    assert passed.mean == pytest.approx(-0.5)
    assert passed.upper_bound == pytest.approx(-0.00737, abs=1e-5)
    assert (passed.tau, passed.delta) == (0.0, 0.05)
    # the same data cannot certify a threshold of -0.05: the bound is above it
    failed = safety_test(COSTS, tau=-0.05, delta=0.05)
    assert not failed.passed
    assert failed.to_dict()["passed"] is False
    # demanding more confidence widens the bound: δ = 0.001 gives U = 0.6548 > 0.2
    strict = safety_test(torch.tensor(COSTS), tau=0.2, delta=0.001)
    assert strict.upper_bound == pytest.approx(
        -0.5 + scipy_stats.t.ppf(0.999, 9) * math.sqrt(6.5 / 9 / 10)
    )
    assert strict.upper_bound == pytest.approx(0.6548, abs=1e-3)
    assert not strict.passed


def test_safety_test_input_errors() -> None:
    with pytest.raises(PoiseError, match="at least 2"):
        safety_test([1.0], tau=0.0, delta=0.05)
    with pytest.raises(PoiseError, match="delta"):
        safety_test(COSTS, tau=0.0, delta=1.0)
    with pytest.raises(PoiseError, match="NaN"):
        safety_test([0.0, float("nan")], tau=0.0, delta=0.1)


def test_pessimistic_bound_inflates_for_the_safety_test() -> None:
    delta, n_safety = 0.1, 100
    seldonian = pessimistic_coefficient(
        len(COSTS), n_safety, delta, candidate_coef=0.0, safety_coef=2.0
    )
    assert seldonian == pytest.approx(2 * scipy_stats.t.ppf(0.9, 99) / math.sqrt(100))
    with_candidate = pessimistic_coefficient(
        len(COSTS), n_safety, delta, candidate_coef=4.0, safety_coef=2.0
    )
    assert with_candidate == pytest.approx(
        seldonian + 4 * scipy_stats.t.ppf(0.9, 9) / math.sqrt(10)
    )
    kappa = pessimistic_coefficient(len(COSTS), n_safety, delta)
    bound = pessimistic_upper_bound(COSTS, n_safety, delta)
    assert bound == pytest.approx(-0.5 + kappa * math.sqrt(6.5 / 9))
    with pytest.raises(PoiseError, match="safety_test_size"):
        pessimistic_coefficient(10, 1, delta)


def test_pessimistic_coefficient_defaults_to_hc_rlhf_public_code() -> None:
    # HC-RLHF's public code (UMass-SCALAR-Lab/HC-RLHF, reinforce_lag/trainer.py): students_coeff
    # = C1 * t.ppf(1 - fail_prob, n_batch - 1) / sqrt(n_batch) + C2 * t.ppf(1 - fail_prob,
    # n_safety - 1) / sqrt(n_safety), with --students_c1 = --students_c2 = 1 by default.
    n_batch, n_safety, fail_prob = 32, 1000, 0.1
    public = scipy_stats.t.ppf(1 - fail_prob, n_batch - 1) / math.sqrt(n_batch) + scipy_stats.t.ppf(
        1 - fail_prob, n_safety - 1
    ) / math.sqrt(n_safety)
    assert pessimistic_coefficient(n_batch, n_safety, fail_prob) == pytest.approx(public, rel=1e-12)


def test_augmented_cost_closed_form_and_gradient_identity() -> None:
    costs = torch.tensor(COSTS, dtype=torch.float64)
    mean, std, kappa = -0.5, math.sqrt(6.5 / 9), 0.7
    out = augmented_costs(costs, mean=mean, std=std, coefficient=kappa)
    expected = [c + kappa * (c * c - 2 * mean * c) / (2 * std) for c in COSTS]
    assert out.tolist() == pytest.approx(expected, rel=1e-12)
    # Score-function check on a categorical "policy" over the ten outcomes: the expected
    # augmented cost's gradient equals the gradient of mean + κ·std at the current estimates.
    logits = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    probs = torch.softmax(logits, 0)
    mu = (probs * costs).sum()
    sigma = torch.sqrt((probs * costs**2).sum() - mu**2)
    (mu + kappa * sigma).backward()
    direct = logits.grad.clone()  # type: ignore[union-attr]
    logits.grad = None
    with torch.no_grad():
        p0 = torch.softmax(logits, 0)
        mu0 = float((p0 * costs).sum())
        sigma0 = float(torch.sqrt((p0 * costs**2).sum() - mu0**2))
        surrogate = augmented_costs(costs, mean=mu0, std=sigma0, coefficient=kappa)
    (torch.softmax(logits, 0) * surrogate).sum().backward()
    np.testing.assert_allclose(logits.grad.numpy(), direct.numpy(), rtol=1e-10, atol=1e-12)  # type: ignore[union-attr]
    with pytest.raises(PoiseError, match="std"):
        augmented_costs(costs, mean=0.0, std=0.0, coefficient=1.0)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (0, 226), (3, 30), (12, 100), (29, 30), (30, 30)])
def test_clopper_pearson_bound_is_scipy_s_exact_one_sided_binomial_bound(k: int, n: int) -> None:
    from poise.train.safety import clopper_pearson_upper_bound

    costs = [1.0] * k + [0.0] * (n - k)
    reference = scipy_stats.binomtest(k, n, alternative="less").proportion_ci(0.95, "exact")
    assert clopper_pearson_upper_bound(costs, 0.05) == pytest.approx(reference.high, rel=1e-9)
    if k == 0:  # the closed form: P(no harmful answer in n) = (1 - U)^n = δ
        assert clopper_pearson_upper_bound(costs, 0.05) == pytest.approx(1 - 0.05 ** (1 / n))


def test_hoeffding_bound_closed_form() -> None:
    from poise.train.safety import hoeffding_upper_bound

    costs = [0.1, 0.3, 0.0, 0.9, 0.2]
    assert hoeffding_upper_bound(costs, 0.05) == pytest.approx(
        0.3 + math.sqrt(math.log(20) / 10), rel=1e-12
    )


def test_the_distribution_free_bounds_refuse_costs_they_do_not_hold_for() -> None:
    from poise.train.safety import upper_bound

    with pytest.raises(PoiseError, match=r"clopper-pearson bound needs 0/1 costs.*0\.5 at index 1"):
        upper_bound([0.0, 0.5, 1.0], 0.05, "clopper-pearson")
    with pytest.raises(PoiseError, match=r"hoeffding bound needs costs in \[0, 1\].*-2\.0"):
        upper_bound(COSTS, 0.05, "hoeffding")
    with pytest.raises(PoiseError, match="bound must be one of"):
        upper_bound(COSTS, 0.05, "wilson")  # type: ignore[arg-type]
    # Hoeffding's range is [0, 1] at both ends: a cost above 1 is refused too, naming it
    with pytest.raises(
        PoiseError, match=r"hoeffding bound needs costs in \[0, 1\].*1\.5 at index 2"
    ):
        upper_bound([0.0, 0.5, 1.5], 0.05, "hoeffding")


def test_a_bound_equal_to_tau_passes() -> None:
    # HC-RLHF (arXiv 2506.08266) and the Seldonian test accept iff U <= tau. Constant costs have
    # std 0, so the t bound is the mean itself, exactly tau here.
    result = safety_test([0.25, 0.25, 0.25, 0.25], tau=0.25, delta=0.05)
    assert result.upper_bound == 0.25 and result.std == 0.0
    assert result.passed
    assert not safety_test([0.25, 0.25, 0.25, 0.25], tau=0.2499, delta=0.05).passed


@pytest.mark.parametrize("n", [10, 30, 100, 226])
@pytest.mark.parametrize("bound", ["clopper-pearson", "hoeffding"])
def test_the_distribution_free_bounds_pass_a_model_just_above_tau_at_most_delta(
    n: int, bound: str
) -> None:
    # On 0/1 costs the t bound passes a model harmful just above τ = 0.1 with probability up to
    # 0.35 (n = 10) and 0.08 (n = 226), not δ = 0.05; these bounds keep it <= δ at every n.
    # Summed exactly over the count k of harmful answers, each k through the safety test.
    from scipy.stats import binom

    passes = [
        k
        for k in range(n + 1)
        if safety_test([1.0] * k + [0.0] * (n - k), 0.1, 0.05, bound=bound).passed  # type: ignore[arg-type]
    ]
    worst = max(float(binom.pmf(passes, n, p).sum()) for p in (0.1 + 1e-9, 0.1 + 1e-3))
    assert worst <= 0.05
    result = safety_test([0.0] * n, 0.1, 0.05, bound=bound)  # type: ignore[arg-type]
    assert result.bound == bound and result.to_dict()["bound"] == bound
    assert result.passed is (result.upper_bound <= 0.1)


DELTAS = (0.01, 0.025, 0.05, 0.1, 0.2)


def test_student_t_quantile_is_scipy_s_one_sided_quantile_for_n_2_to_500() -> None:
    # the t bound's t_{1-δ, n-1} (and its lower tail, by symmetry) for every n the gate meets
    dfs = np.arange(1, 500)
    for delta in DELTAS:
        for p in (1.0 - delta, delta):
            ours = np.array([student_t_quantile(p, int(df)) for df in dfs])
            np.testing.assert_allclose(ours, scipy_stats.t.ppf(p, dfs), rtol=1e-9, atol=0)
    assert student_t_quantile(0.5, 7) == 0.0
    assert student_t_quantile(0.95, 9) == pytest.approx(1.8331, abs=1e-4)  # the table value
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(PoiseError, match="0 < probability < 1"):
            student_t_quantile(bad, 9)
    with pytest.raises(PoiseError, match="degrees of freedom"):
        student_t_quantile(0.95, 0)


def test_clopper_pearson_bound_is_scipy_s_beta_quantile_for_n_2_to_500() -> None:
    # U = B^-1(1 - δ; k + 1, n - k) against scipy.stats.beta.ppf, to 1e-9 relative, so the
    # exact binomial bound passes and fails what it did with scipy except at exact ties
    for delta in (0.01, 0.05, 0.1, 0.2):
        for n in range(2, 501):
            for k in sorted({0, n // 2, n - 1}):
                costs = np.zeros(n)
                costs[:k] = 1.0
                reference = float(scipy_stats.beta.ppf(1.0 - delta, k + 1, n - k))
                ours = clopper_pearson_upper_bound(costs, delta)
                assert ours == pytest.approx(reference, rel=1e-9, abs=0), (n, k, delta)


def test_clopper_pearson_bound_keeps_a_tiny_delta_as_given() -> None:
    # with no harmful answer U = 1 - δ^{1/n} exactly; δ = 1e-12 was rounded in 1 - δ first, and
    # the bound computed at δ = 9.99978e-13 (0.24142259 for 0.24142260 at n = 100)
    for n, delta in [(100, 1e-12), (10, 1e-15), (3, 1e-9)]:
        exact = -math.expm1(math.log(delta) / n)  # 1 - δ^{1/n}
        assert clopper_pearson_upper_bound(np.zeros(n), delta) == pytest.approx(exact, rel=1e-13)
    # its upper tail, for the other half too: P(X > x) = 0.7 for Beta(2, 3)
    from poise.scoring.stats import beta_upper_quantile

    assert beta_upper_quantile(0.7, 2.0, 3.0) == pytest.approx(
        float(scipy_stats.beta.isf(0.7, 2.0, 3.0)), rel=1e-12
    )
    assert beta_upper_quantile(0.0, 2.0, 3.0) == 1.0 and beta_upper_quantile(1.0, 2, 3) == 0.0


def test_beta_quantile_is_scipy_s_and_refuses_what_is_not_a_distribution() -> None:
    from poise.scoring.stats import beta_quantile

    for p, a, b in [(0.3, 0.5, 0.5), (0.99, 2.5, 40.0), (1e-6, 1.0, 1.0), (0.5, 300.0, 0.7)]:
        reference = float(scipy_stats.beta.ppf(p, a, b))
        assert beta_quantile(p, a, b) == pytest.approx(reference, rel=1e-9, abs=0)
    # the lower Clopper-Pearson bound: 3 of 30, one-sided 95%
    lower = scipy_stats.binomtest(3, 30, alternative="greater").proportion_ci(0.95, "exact").low
    assert beta_quantile(0.05, 3, 28) == pytest.approx(lower, rel=1e-9)
    assert (beta_quantile(0.0, 2.0, 3.0), beta_quantile(1.0, 2.0, 3.0)) == (0.0, 1.0)
    for bad in [(1.5, 1.0, 1.0), (float("nan"), 1.0, 1.0)]:
        with pytest.raises(ValueError, match="probability"):
            beta_quantile(*bad)
    for bad in [(0.5, 0.0, 1.0), (0.5, 1.0, -1.0), (0.5, float("inf"), 1.0)]:
        with pytest.raises(ValueError, match="a > 0 and b > 0"):
            beta_quantile(*bad)


def test_the_safety_test_and_candidate_selection_need_no_scipy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the t and beta quantiles come from poise.scoring.stats: scipy is not a dependency of
    # `poise gate` or `poise train safe-rl` (it needed the train extra's scipy)
    expected = {
        "student-t": safety_test(COSTS, 0.0, 0.05).upper_bound,
        "clopper-pearson": upper_bound([0.0] * 9 + [1.0], 0.05, "clopper-pearson"),
        "kappa": pessimistic_coefficient(10, 100, 0.1),
    }
    for name in ("scipy", "scipy.stats"):
        monkeypatch.setitem(sys.modules, name, None)  # as if scipy were not installed
    assert safety_test(COSTS, 0.0, 0.05).upper_bound == expected["student-t"]
    cp = safety_test([0.0] * 9 + [1.0], 0.5, 0.05, bound="clopper-pearson")
    assert cp.upper_bound == expected["clopper-pearson"] and cp.passed
    assert pessimistic_coefficient(10, 100, 0.1) == expected["kappa"]
