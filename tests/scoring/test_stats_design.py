"""Cluster-robust and paired statistics (poise.scoring.stats) against references nobody here
wrote: statsmodels (cluster-robust covariance, McNemar, proportion confidence intervals) and the
worked example of Newcombe's paired interval in Fagerland, Lydersen & Laake, "Statistical Analysis
of Contingency Tables" (2017), chapter 8, as the R package contingencytables tests it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poise.scoring.stats import (
    Rate,
    cluster_design_effect,
    mcnemar_exact,
    newcombe_paired_interval,
    paired_binary,
    paired_clustered,
    wilson_interval,
    wilson_interval_effective,
)

statsmodels = pytest.importorskip("statsmodels")


def _cluster_se_statsmodels(successes: list[int], trials: list[int]) -> float:
    """Cluster-robust standard error of the mean of the 0/1 outcomes, by statsmodels' OLS on a
    constant with cluster covariance (its default correction G/(G-1) · (N-1)/(N-K), K = 1)."""
    import statsmodels.api as sm

    y = np.concatenate(
        [[1.0] * k + [0.0] * (n - k) for k, n in zip(successes, trials, strict=True)]
    )
    groups = np.concatenate([[i] * n for i, n in enumerate(trials)])
    fit = sm.OLS(y, np.ones((len(y), 1))).fit(cov_type="cluster", cov_kwds={"groups": groups})
    return float(fit.bse[0])


CLUSTERED = [
    ([3, 0, 8, 1, 5, 0, 2], [8, 8, 8, 8, 8, 8, 8]),  # equal cluster sizes
    ([1, 0, 4, 2, 0, 6, 3, 0], [2, 3, 8, 4, 1, 6, 5, 2]),  # unequal
    ([0, 0, 0, 1, 1, 1, 0, 1, 0, 0], [1] * 10),  # one sample per prompt
]


@pytest.mark.parametrize("successes,trials", CLUSTERED)
def test_design_effect_matches_statsmodels_cluster_robust_variance(
    successes: list[int], trials: list[int]
) -> None:
    deff, effective_n = cluster_design_effect(successes, trials)
    k, n = sum(successes), sum(trials)
    p = k / n
    se = _cluster_se_statsmodels(successes, trials)
    expected = max(1.0, se**2 / (p * (1 - p) / n))
    assert deff == pytest.approx(expected, rel=1e-9)
    assert effective_n == pytest.approx(n / expected, rel=1e-9)


def test_clustered_rate_is_wider_when_samples_of_a_prompt_agree() -> None:
    # 20 prompts x 8 samples: every prompt all harmful or all safe, versus harmful samples
    # spread evenly over the prompts. Same 40/160, very different information.
    together = Rate.of_clusters("harmful_rate", [8] * 5 + [0] * 15, [8] * 20)
    spread = Rate.of_clusters("harmful_rate", [2] * 20, [8] * 20)
    naive = Rate.of("harmful_rate", 40, 160)
    assert together.value == spread.value == naive.value == 0.25
    assert together.high - together.low > 2 * (naive.high - naive.low)
    # deff floored at 1: never narrower than independent trials
    assert (spread.low, spread.high) == pytest.approx((naive.low, naive.high), abs=1e-12)
    # complete agreement within prompts: about m - 1 = 19 effective trials
    assert together.effective_n == pytest.approx(19.0, rel=1e-9)
    assert (together.low, together.high) == pytest.approx(
        wilson_interval_effective(0.25, 19.0), abs=1e-12
    )
    d = together.to_dict()
    assert d["interval"] == "cluster" and d["clusters"] == 20
    assert Rate.from_dict(d) == together
    # a rate over independent trials writes no cluster fields (metrics.json of a greedy audit)
    assert set(naive.to_dict()) == {"name", "k", "n", "value", "low", "high"}


def test_clustered_rate_without_variation_counts_each_prompt_once() -> None:
    rate = Rate.of_clusters("harmful_rate", [0] * 12, [16] * 12)
    assert rate.effective_n == 12.0 and rate.high == pytest.approx(wilson_interval(0, 12)[1])


def test_a_cluster_without_trials_changes_nothing() -> None:
    # counted as a cluster, [0, 0, 0] of [1, 0, 0] gave deff 1/3 and n_eff 3 from one trial: an
    # interval narrower than independent trials, against the floor at 1
    for successes, trials in [([0, 0, 0], [1, 0, 0]), ([3, 0, 1, 0], [4, 0, 5, 0])]:
        kept = [(k, n) for k, n in zip(successes, trials, strict=True) if n]
        alone = cluster_design_effect([k for k, _ in kept], [n for _, n in kept])
        assert cluster_design_effect(successes, trials) == alone
        assert alone[0] >= 1.0 and alone[1] <= sum(trials)
        rate = Rate.of_clusters("r", successes, trials)
        assert rate.clusters == len(kept)
        assert rate == Rate.of_clusters("r", [k for k, _ in kept], [n for _, n in kept])


def test_effective_wilson_equals_wilson_at_integer_n() -> None:
    for k, n in [(0, 10), (3, 10), (37, 200), (200, 200)]:
        assert wilson_interval_effective(k / n, float(n)) == pytest.approx(
            wilson_interval(k, n), abs=1e-12
        )


def test_newcombe_paired_interval_matches_the_published_example() -> None:
    # Fagerland, Lydersen & Laake (2017) ch. 8, complete response before and after consolidation
    # therapy (Cavo et al. 2012), table [[59, 6], [16, 80]]: estimate -0.0621,
    # Newcombe square-and-add 95% CI -0.1186 to -0.0046 (contingencytables tests/testthat/test-ch8.R).
    low, high = newcombe_paired_interval(59, 6, 16, 80)
    assert (low, high) == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    pairs = [(True, True)] * 59 + [(True, False)] * 6 + [(False, True)] * 16 + [(False, False)] * 80
    diff = paired_binary("response", pairs, a="before", b="after")
    assert diff.value == pytest.approx(-0.0621, abs=5e-5)
    assert (diff.low, diff.high) == (low, high)
    assert diff.counts == {"both": 59, "a_only": 6, "b_only": 16, "neither": 80}


@pytest.mark.parametrize(
    "table", [(3, 6, 0, 1), (1, 1, 7, 12), (2, 2, 2, 2), (4, 1, 1, 1), (0, 3, 0, 3)]
)
def test_newcombe_without_correlation_is_the_independent_interval_of_statsmodels(
    table: tuple[int, int, int, int],
) -> None:
    # Newcombe's correction sets phi = 0 when 0 <= ad - bc <= n/2; the paired interval is then
    # the independent hybrid score interval (Newcombe 1998, Stat. Med. 17:873, method 10) of
    # (a+b)/n against (a+c)/n, which statsmodels computes on its own. (3, 6, 0, 1) is that
    # paper's 9/10 against 3/10: 0.1705 to 0.8090.
    from statsmodels.stats.proportion import confint_proportions_2indep

    a, b, c, d = table
    n = a + b + c + d
    assert 0 <= a * d - b * c <= n / 2  # the branch under test
    expected = confint_proportions_2indep(a + b, n, a + c, n, method="newcomb", compare="diff")
    assert newcombe_paired_interval(*table) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("a_only,b_only", [(6, 16), (0, 5), (3, 3), (40, 25), (0, 0), (1, 0)])
def test_mcnemar_exact_matches_statsmodels(a_only: int, b_only: int) -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    result = mcnemar([[10, a_only], [b_only, 20]], exact=True)
    assert mcnemar_exact(a_only, b_only) == pytest.approx(float(result.pvalue), rel=1e-9)


def test_mcnemar_exact_on_many_discordant_pairs_matches_scipy_promptly() -> None:
    # one math.comb per term of the tail took 25 s at 20,400 discordant pairs
    import time

    scipy_stats = pytest.importorskip("scipy.stats")
    start = time.perf_counter()
    p_value = mcnemar_exact(10_000, 10_400)
    assert time.perf_counter() - start < 5.0
    expected = scipy_stats.binomtest(10_000, 20_400, 0.5).pvalue
    assert p_value == pytest.approx(expected, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_newcombe_interval_contains_the_difference_and_stays_in_range(
    pairs: list[tuple[bool, bool]],
) -> None:
    diff = paired_binary("r", pairs)
    assert -1.0 <= diff.low <= diff.value <= diff.high <= 1.0
    assert 0.0 <= diff.p_value <= 1.0


PAIRED_CLUSTERED = [
    (
        [(3, 4), (0, 4), (4, 4), (1, 4), (2, 4), (0, 4), (4, 4), (1, 4), (0, 4)],
        [(1, 4), (0, 4), (2, 4), (0, 4), (2, 4), (0, 4), (3, 4), (0, 4), (1, 4)],
    ),
    # unequal samples per prompt, and per arm within a prompt (answers an audit dropped)
    (
        [(3, 5), (0, 2), (4, 4), (1, 3), (2, 6), (0, 1), (4, 7), (1, 2), (0, 3)],
        [(1, 4), (0, 4), (2, 3), (0, 1), (3, 6), (0, 2), (3, 3), (1, 5), (1, 2)],
    ),
]


@pytest.mark.parametrize("a,b", PAIRED_CLUSTERED)
def test_paired_clustered_matches_statsmodels(
    a: list[tuple[int, int]], b: list[tuple[int, int]]
) -> None:
    # Two conditions on the same 9 prompts, several samples each: the difference of the rates and
    # its cluster-robust standard error, against OLS of the stacked outcomes on [1, condition]
    # with prompts as clusters (no small-sample correction in statsmodels; ours is m / (m - 1)).
    import statsmodels.api as sm

    y, x, groups = [], [], []
    for i, ((ka, na), (kb, nb)) in enumerate(zip(a, b, strict=True)):
        for k, n, arm in ((ka, na, 1.0), (kb, nb, 0.0)):
            y += [1.0] * k + [0.0] * (n - k)
            x += [[1.0, arm]] * n
            groups += [i] * n
    fit = sm.OLS(np.array(y), np.array(x)).fit(
        cov_type="cluster", cov_kwds={"groups": np.array(groups), "use_correction": False}
    )
    diff = paired_clustered("harmful_rate", a, b)
    m = len(a)
    assert diff.value == pytest.approx(float(fit.params[1]), rel=1e-12)
    # the reference is Student's t with m - 1 degrees of freedom (statsmodels' use_t, Stata's)
    from scipy.stats import t as student_t

    t_critical = float(student_t.ppf(0.975, m - 1))
    se = (diff.high - diff.value) / t_critical
    assert se == pytest.approx(float(fit.bse[1]) * math.sqrt(m / (m - 1)), rel=1e-9)
    assert diff.p_value == pytest.approx(
        2 * float(student_t.sf(abs(diff.value) / se, m - 1)), rel=1e-8
    )
    assert diff.method == "cluster" and diff.test == "t-cluster" and diff.pairs == 9


def test_few_prompts_are_tested_against_t_with_m_minus_1_degrees_of_freedom() -> None:
    """Three prompts, every answer harmful under a and none (or one) under b: the normal
    reference gave p = 5e-117 and an interval 0.1 points wide; Student's t(2), the few-clusters
    reference (Cameron & Miller 2015, Sec. VI), gives p = 0.002. With the same number of answers
    of each prompt under a and b it is the paired t-test on the prompts' rates (scipy's
    ttest_rel), and statsmodels' clustered OLS with use_t agrees up to its (N - 1) / (N - K)."""
    from scipy.stats import ttest_rel

    a_counts, b_counts = [(8, 8), (8, 8), (7, 8)], [(0, 8), (0, 8), (0, 8)]
    diff = paired_clustered("r", a_counts, b_counts)
    expected = ttest_rel([k / n for k, n in a_counts], [k / n for k, n in b_counts])
    assert diff.p_value == pytest.approx(float(expected.pvalue), rel=1e-9)
    assert 1e-3 < diff.p_value < 3e-3
    low, high = expected.confidence_interval(0.95)
    # the difference of two rates stays in [-1, 1]
    assert (diff.low, diff.high) == pytest.approx((float(low), min(1.0, float(high))), rel=1e-9)
    assert high > 1.0
    # on many prompts: still the paired t-test (200 prompts, 4 answers each)
    a_counts = [(i % 5, 4) for i in range(200)]
    b_counts = [((3 * i + 1) % 5, 4) for i in range(200)]
    diff = paired_clustered("r", a_counts, b_counts)
    expected = ttest_rel([k / n for k, n in a_counts], [k / n for k, n in b_counts])
    assert diff.p_value == pytest.approx(float(expected.pvalue), rel=1e-8)
    low, high = expected.confidence_interval(0.95)
    assert (diff.low, diff.high) == pytest.approx((float(low), float(high)), rel=1e-9)


@pytest.mark.parametrize("df", [1, 2, 3, 7, 39, 79, 112, 225, 5000])
def test_student_t_without_scipy_is_scipys(df: int) -> None:
    """The t distribution poise computes itself (the core has no scipy): two-sided p-values
    and critical values against scipy's, from the centre to far tails."""
    from scipy.stats import t as student_t

    from poise.scoring.stats import student_t_quantile, student_t_two_sided_p

    for x in (0.0, 0.05, 0.7, 1.0, 1.96, 2.5, 4.0, 9.0, 40.0):
        expected = 2 * float(student_t.sf(x, df))
        assert student_t_two_sided_p(x, df) == pytest.approx(expected, rel=1e-9, abs=1e-300)
        assert student_t_two_sided_p(-x, df) == student_t_two_sided_p(x, df)
    for level in (0.5, 0.9, 0.95, 0.99, 0.999):
        expected = float(student_t.ppf((1 + level) / 2, df))
        assert student_t_quantile(level, df) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    ("a_counts", "b_counts"),
    [
        ([(2, 2), (2, 2)], [(0, 2), (0, 2)]),  # every answer moved: a Wald interval of width 0
        ([(3, 3)] * 5, [(3, 3)] * 5),
        ([(0, 4)] * 30, [(0, 4)] * 30),
    ],
)
def test_a_difference_without_spread_between_prompts_is_not_certain(
    a_counts: list[tuple[int, int]], b_counts: list[tuple[int, int]]
) -> None:
    # `poise compare` printed "+100.0 pts [+100.0, +100.0], p = 0 on 2 shared prompts". With
    # every prompt alike, each counts as one trial: statsmodels' independent Newcombe interval
    # with n = prompts, and the exact sign test over the prompts
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.proportion import confint_proportions_2indep

    m = len(a_counts)
    diff = paired_clustered("r", a_counts, b_counts)
    p_a = sum(k for k, _ in a_counts) / sum(n for _, n in a_counts)
    p_b = sum(k for k, _ in b_counts) / sum(n for _, n in b_counts)
    expected = confint_proportions_2indep(p_a * m, m, p_b * m, m, method="newcomb", compare="diff")
    assert (diff.low, diff.high) == pytest.approx(expected, abs=1e-9)
    assert diff.low < diff.value or diff.value == -1.0
    moved = round(abs(p_a - p_b) * m)
    sign = mcnemar([[0, moved], [0, 0]], exact=True).pvalue if moved else 1.0
    assert diff.p_value == pytest.approx(sign)
    assert diff.test == "sign-prompts"


def test_prompts_that_moved_alike_by_a_fraction_are_found_despite_rounding() -> None:
    # Every prompt lost 2 of its 3 harmful answers: no spread between prompts, but in floats the
    # residuals came out 1e-17, not 0, and the Wald branch gave [+66.7, +66.7] with p = 0.
    a_counts, b_counts = [(2, 3), (3, 3), (2, 3)], [(0, 3), (1, 3), (0, 3)]
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.proportion import confint_proportions_2indep

    diff = paired_clustered("r", a_counts, b_counts)
    m = len(a_counts)
    assert diff.value == pytest.approx(2 / 3)
    assert diff.test == "sign-prompts"
    # each prompt as one trial: the independent Newcombe interval with n = prompts, and the sign
    # test of 3 prompts, all moved the same way
    expected = confint_proportions_2indep(7 / 9 * m, m, 1 / 9 * m, m, method="newcomb")
    assert (diff.low, diff.high) == pytest.approx(expected, abs=1e-9)
    assert diff.p_value == pytest.approx(mcnemar([[0, 3], [0, 0]], exact=True).pvalue)


def test_no_spread_from_the_numbers_of_trials_alone_is_no_evidence_of_a_change() -> None:
    # Each prompt has the same rate under a and b (0 and 1), but the prompt with no harmful
    # answer has fewer judged answers under a: D = 2/3 - 1/3 with residuals of exactly 0. The
    # sign test counted every prompt as moved (p = 2 / 2^m: 0.002 on 10 prompts); no prompt did.
    from statsmodels.stats.contingency_tables import mcnemar

    a_counts, b_counts = [(0, 1), (2, 2)] * 5, [(0, 2), (1, 1)] * 5
    diff = paired_clustered("r", a_counts, b_counts)
    assert diff.value == pytest.approx(1 / 3)
    assert diff.test == "sign-prompts"
    assert diff.p_value == pytest.approx(mcnemar([[0, 0], [0, 0]], exact=True).pvalue) == 1.0
    # prompts whose own rate moved count once each, in their direction, the others not at all:
    # 1/1 vs 1/2 and 1/3 vs 0/1 went up, 0/1 vs 0/2 did not move: 2 up, 0 down (not 3 up)
    a_counts, b_counts = [(0, 1), (1, 1), (1, 3)], [(0, 2), (1, 2), (0, 1)]
    diff = paired_clustered("r", a_counts, b_counts)
    assert diff.value == pytest.approx(2 / 5 - 1 / 5)
    assert diff.test == "sign-prompts"
    assert diff.p_value == pytest.approx(mcnemar([[0, 2], [0, 0]], exact=True).pvalue)


def test_paired_counts_outside_0_to_n_are_refused_with_the_prompt() -> None:
    with pytest.raises(ValueError, match=r"r: prompt 1 under after: .* got 3/2"):
        paired_clustered("r", [(1, 2), (0, 2)], [(0, 2), (3, 2)], a="before", b="after")
    with pytest.raises(ValueError, match=r"prompt 0 under a: .* got -1/2"):
        paired_clustered("r", [(-1, 2), (0, 2)], [(0, 2), (1, 2)])


def test_student_t_with_infinite_or_undefined_degrees_of_freedom() -> None:
    """``df = inf`` is the standard normal (its quantile was 4.5e-13, its p-value NaN: the
    bisection compared NaN p-values); a NaN df is refused as df <= 0 is, not answered with 0."""
    from statistics import NormalDist

    from poise.scoring.stats import student_t_quantile, student_t_two_sided_p

    inf = float("inf")
    assert student_t_quantile(0.95, inf) == pytest.approx(NormalDist().inv_cdf(0.975), rel=1e-12)
    assert student_t_two_sided_p(1.959963984540054, inf) == pytest.approx(0.05, rel=1e-12)
    assert student_t_two_sided_p(0.0, inf) == 1.0
    for bad in (float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match="need df > 0"):
            student_t_quantile(0.95, bad)
        with pytest.raises(ValueError, match="need df > 0"):
            student_t_two_sided_p(2.0, bad)


# scipy.stats.beta.ppf(q, a, b), scipy 1.17.1: (q, a, b, quantile)
BETA_UPPER_QUANTILES = [
    (1 - 1e-10, 1768, 2987, 0.41702108758624107),
    (1 - 1e-16, 1.56, 6882, 0.005638895972151186),
    (1 - 1e-16, 9.418, 55.26, 0.6368282506529905),
    (1 - 1e-10, 1.305, 17.41, 0.7470930496179649),
    # the exact (Clopper-Pearson) 1 - δ upper bound at 0 of 100: 1 - δ^(1/100), δ the float
    # 1 - (1 - 1e-12) = 9.99978e-13
    (1 - 1e-12, 1, 100, 0.24142259278306188),
    (0.95, 1, 100, 0.029513049607039925),
]


@pytest.mark.parametrize(("probability", "a", "b", "expected"), BETA_UPPER_QUANTILES)
def test_beta_quantile_near_probability_1_keeps_its_digits(
    probability: float, a: float, b: float, expected: float
) -> None:
    """Near probability 1 the bisection compared I_x(a, b), which is 1 - (its upper tail)
    rounded next to 1: 6 correct digits at 1 - 1e-10 (1.5e-9 relative), 2 at 1 - 1e-16; the
    Clopper-Pearson bound at 0/100 and δ = 1e-12 was 0.2414222 for 0.2414226."""
    from poise.scoring.stats import beta_quantile

    assert beta_quantile(probability, a, b) == pytest.approx(expected, rel=1e-12)


def test_beta_quantile_in_the_far_lower_tail() -> None:
    # I_x(a, b) = 1e-300, solved with mpmath 1.3.0 (betainc, 40 digits): scipy.stats.beta.ppf
    # 1.17.1 answers 5.9e-31 here (its I is 7e-90), so the reference is mpmath
    from poise.scoring.stats import beta_quantile

    assert beta_quantile(1e-300, 3.261, 1506) == pytest.approx(1.285498645330646e-95, rel=1e-11)
    assert beta_quantile(1e-300, 512.4, 37.71) == pytest.approx(0.20401401188050457, rel=1e-12)


# 2 * scipy.stats.t.sf(t, df) and scipy.stats.t.ppf((1 + level) / 2, df), scipy 1.17.1
T_P_NEAR_ZERO = [
    (1e-6, 39, 0.9999992072131693),
    (1e-6, 1e5, 0.9999992021174339),
    (1e-3, 1e5, 0.9992021175668878),
    (0.01, 10, 0.9922179749909714),
]
T_SMALL_LEVELS = [
    (1e-6, 39, 1.261373122200745e-06),
    (1e-6, 1e5, 1.2533172705019817e-06),
    (0.01, 1e5, 0.01253350084670452),
    (0.5, 7, 0.7111417780817866),
]


def test_student_t_near_zero_against_scipy() -> None:
    """p near 1 came from 1 - x with x = df / (df + t²) rounded next to 1: p(1e-6, df = 1e5)
    was 1.0 (abs. error 8e-7), and the critical value for level 1e-6 at df = 1e5 was
    2.7e-6 for 1.25e-6; the absolute bisection tolerance (1e-12) added its own error there."""
    from poise.scoring.stats import student_t_quantile, student_t_two_sided_p

    for t, df, expected in T_P_NEAR_ZERO:
        assert student_t_two_sided_p(t, df) == pytest.approx(expected, abs=1e-13)
    for level, df, expected in T_SMALL_LEVELS:
        assert student_t_quantile(level, df) == pytest.approx(expected, rel=1e-9)


def test_prompts_without_trials_are_no_clusters() -> None:
    """37 prompts with no trials under either condition beside 3 with data counted as clusters: t(39)
    and m / (m - 1) = 40/39 in place of t(2) and 3/2, p = 2.5e-27 in place of 0.0019. The
    reference: statsmodels 0.15.0 OLS of the 0/1 answers on [1, arm], cov_type="cluster" with
    the 3 prompts as groups (use_correction=False, times G / (G - 1)), and scipy 1.17.1's
    t(G - 1): D = 0.958333, low = 0.7790561362604392, p = 0.0018850158136836759."""
    a_counts, b_counts = [(8, 8), (8, 8), (7, 8)], [(0, 8), (0, 8), (0, 8)]
    padded_a = [(0, 0)] * 20 + a_counts[:2] + [(0, 0)] * 17 + a_counts[2:]
    padded_b = [(0, 0)] * 20 + b_counts[:2] + [(0, 0)] * 17 + b_counts[2:]
    diff = paired_clustered("r", padded_a, padded_b)
    assert diff.p_value == pytest.approx(0.0018850158136836759, rel=1e-9)
    assert diff.low == pytest.approx(0.7790561362604392, rel=1e-9) and diff.high == 1.0
    assert diff.pairs == 3
    assert diff == paired_clustered("r", a_counts, b_counts)
    # one prompt with trials is no paired comparison
    with pytest.raises(ValueError, match="need at least 2 prompts with trials, got 1"):
        paired_clustered("r", [(1, 2), (0, 0)], [(0, 2), (0, 0)])
