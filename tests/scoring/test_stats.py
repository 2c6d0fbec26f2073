import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poise.scoring.stats import wilson_interval


def closed_form(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (2 * n * p + z * z) / (2 * (n + z * z))
    half = z * math.sqrt(z * z + 4 * n * p * (1 - p)) / (2 * (n + z * z))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(1, 10), (5, 10), (37, 200), (199, 200)])
def test_matches_the_closed_form(k: int, n: int) -> None:
    low, high = wilson_interval(k, n)
    exp_low, exp_high = closed_form(k, n)
    assert math.isclose(low, exp_low, abs_tol=1e-12) and math.isclose(high, exp_high, abs_tol=1e-12)


def test_known_value() -> None:
    # 50/100 at 95%: 0.5 -/+ 0.0962 (tabulated)
    low, high = wilson_interval(50, 100)
    assert round(low, 4) == 0.4038 and round(high, 4) == 0.5962


@given(st.integers(1, 3000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_interval_contains_the_estimate_and_stays_in_range(kn: tuple[int, int]) -> None:
    k, n = kn
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    if k == 0:
        assert low == 0.0
    if k == n:
        assert high == 1.0


def test_empty_and_invalid() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_mean_interval_closed_form() -> None:
    from poise.scoring.stats import mean_interval

    # sample sd of 10, 20, 30 is 10; t_{0.975, 2} = 4.302652729911275 (scipy.stats.t.ppf): the
    # normal 1.96 gave an interval 2.2x too narrow at three values
    half = 4.302652729911275 * 10 / math.sqrt(3)
    assert mean_interval([10, 20, 30]) == pytest.approx((20.0, 20 - half, 20 + half))
    scipy_stats = pytest.importorskip("scipy.stats")
    values = [3.0, 9.5, 4.25, 7.0, 1.0, 6.5]
    expected = scipy_stats.t.interval(
        0.95, len(values) - 1, loc=sum(values) / 6, scale=scipy_stats.sem(values)
    )
    assert mean_interval(values)[1:] == pytest.approx(expected, rel=1e-10)
    assert mean_interval([7]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])


def test_rate_description_is_written_only_when_set() -> None:
    from poise.scoring.stats import Rate

    plain = Rate.of("r", 3, 4)
    assert "description" not in plain.to_dict()
    described = Rate.of("r", 3, 4, description="what was counted")
    assert described.to_dict()["description"] == "what was counted"
    assert Rate.from_dict(described.to_dict()) == described
    assert str(plain) == "r = 75.0% [30.1%, 95.4%] (3/4)"
    empty = Rate.empty("e")
    assert (empty.k, empty.n, empty.value, empty.low, empty.high) == (0, 0, 0.0, 0.0, 1.0)


def test_wilson_equals_statsmodels() -> None:
    """Against statsmodels' ``proportion_confint(method="wilson")`` at every k of a few n."""
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    for n in (1, 7, 30, 226):
        for k in range(n + 1):
            expected = proportion.proportion_confint(k, n, alpha=0.05, method="wilson")
            assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-12)


def test_cluster_mean_interval_matches_statsmodels_cluster_covariance() -> None:
    import numpy as np
    import statsmodels.api as sm

    from poise.scoring.stats import cluster_mean_interval, mean_interval

    clusters = [[10.0, 12.0, 30.0], [5.0], [40.0, 41.0], [7.0, 9.0, 8.0, 20.0]]
    y = np.array([v for c in clusters for v in c])
    groups = np.repeat(np.arange(len(clusters)), [len(c) for c in clusters])
    # statsmodels' t reference for clusters: t with G - 1 degrees of freedom (Stata's too)
    fit = sm.OLS(y, np.ones_like(y)).fit(
        cov_type="cluster", cov_kwds={"groups": groups}, use_t=True
    )
    low, high = fit.conf_int(alpha=0.05)[0]
    mean, ours_low, ours_high = cluster_mean_interval(clusters)
    assert mean == pytest.approx(fit.params[0])
    assert (ours_low, ours_high) == (pytest.approx(low), pytest.approx(high))
    # one value per cluster: the sandwich with m / (m - 1) is exactly s^2 / n, the iid interval
    singles = [[v] for v in (3.0, 8.0, 1.0, 9.0)]
    assert cluster_mean_interval(singles) == pytest.approx(mean_interval([3.0, 8.0, 1.0, 9.0]))


def test_cluster_mean_interval_ignores_empty_clusters() -> None:
    """A cluster with no values is no cluster: m counts the others, so ``m / (m - 1)`` and the
    interval are those of the clusters with values (statsmodels' groups are the observed ones)."""
    from poise.scoring.stats import cluster_mean_interval

    clusters = [[10.0, 12.0, 30.0], [5.0], [40.0, 41.0]]
    assert cluster_mean_interval([*clusters, [], []]) == pytest.approx(
        cluster_mean_interval(clusters)
    )


def test_clopper_pearson_bounds_equal_statsmodels_and_scipy() -> None:
    """The exact binomial bounds from :func:`beta_quantile` / :func:`beta_upper_quantile` (as
    their docstring and ``poise.train.safety`` use them) are statsmodels' Clopper-Pearson
    interval ``proportion_confint(method="beta")``; the edges are scipy's ``beta.ppf`` / ``isf``."""
    from scipy.stats import beta
    from statsmodels.stats.proportion import proportion_confint

    from poise.scoring.stats import beta_quantile, beta_upper_quantile

    for k, n in [(1, 10), (7, 30), (45, 50), (0, 12), (12, 12)]:
        low, high = proportion_confint(k, n, alpha=0.05, method="beta")
        ours_low = beta_quantile(0.025, k, n - k + 1) if k > 0 else 0.0
        ours_high = beta_upper_quantile(0.025, k + 1, n - k) if k < n else 1.0
        assert (ours_low, ours_high) == pytest.approx((low, high), rel=1e-10, abs=1e-14)
    # one-sided upper bound at a small δ: P(p > U) = δ, scipy's inverse survival function
    assert beta_upper_quantile(1e-6, 4, 97) == pytest.approx(beta.isf(1e-6, 4, 97), rel=1e-10)
    # the whole distribution: the 1-quantile is 1, the 0-quantile 0 (scipy's ppf and isf too)
    assert beta_quantile(1.0, 2.0, 5.0) == beta.ppf(1.0, 2.0, 5.0) == 1.0
    assert beta_upper_quantile(0.0, 2.0, 5.0) == beta.isf(0.0, 2.0, 5.0) == 1.0
    assert beta_quantile(0.0, 2.0, 5.0) == beta_upper_quantile(1.0, 2.0, 5.0) == 0.0


def test_student_t_p_value_of_an_infinite_statistic_is_0_as_scipys() -> None:
    from scipy.stats import t as student_t

    from poise.scoring.stats import student_t_two_sided_p

    for df in (1, 4, 30):
        for t in (math.inf, -math.inf):
            assert student_t_two_sided_p(t, df) == 2 * student_t.sf(abs(t), df) == 0.0


@pytest.mark.parametrize("table", [(2, 9, 6, 3), (0, 7, 5, 1), (10, 30, 25, 5)])
def test_newcombe_paired_interval_with_negative_correlation_is_the_published_formula(
    table: tuple[int, int, int, int],
) -> None:
    """Newcombe (1998, method 10) corrects only a positive ``ad - bc`` (by n/2, to 0 at most); a
    negative one enters phi as it is, which widens the interval beyond the independent one. The
    reference: the square-and-add formula as Fagerland, Lydersen & Laake's contingencytables
    (``Newcombe_square_and_add_CI_paired_2x2``) writes it, on statsmodels' Wilson limits."""
    from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

    from poise.scoring.stats import newcombe_paired_interval

    a, b, c, d = table
    n = a + b + c + d
    assert a * d - b * c < 0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = proportion_confint(a + b, n, alpha=0.05, method="wilson")
    l2, u2 = proportion_confint(a + c, n, alpha=0.05, method="wilson")
    psi = (a * d - b * c) / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    low = p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2))
    high = p1 - p2 + math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1))
    ours = newcombe_paired_interval(a, b, c, d)
    assert ours == pytest.approx((max(-1.0, low), min(1.0, high)), abs=1e-12)
    independent = confint_proportions_2indep(a + b, n, a + c, n, method="newcomb")
    assert ours[0] < independent[0] and ours[1] > independent[1]


def test_paired_binary_reports_both_rates_and_formats_the_published_example() -> None:
    """Cavo et al. (2012) in Fagerland, Lydersen & Laake (2017) ch. 8: complete response 65/161
    before and 75/161 after; Newcombe's interval -0.1186 to -0.0046 and the exact McNemar p of
    statsmodels, 0.0525, which ``format`` writes to two significant figures."""
    from statsmodels.stats.contingency_tables import mcnemar

    from poise.scoring.stats import paired_binary

    pairs = [(True, True)] * 59 + [(True, False)] * 6 + [(False, True)] * 16 + [(False, False)] * 80
    diff = paired_binary("response", pairs, a="before", b="after")
    assert diff.rate_a == pytest.approx(65 / 161) and diff.rate_b == pytest.approx(75 / 161)
    assert diff.to_dict()["rate_b"] == pytest.approx(0.4658, abs=5e-5)
    assert diff.p_value == pytest.approx(mcnemar([[59, 6], [16, 80]], exact=True).pvalue)
    assert diff.format() == "-6.2 pp [-11.9, -0.5], p = 0.052"


def test_a_clustered_difference_of_exactly_0_has_p_value_1() -> None:
    """Rates of 1/2 under both conditions (0/1 and 2/3 under a, 1/3 and 1/1 under b) with no
    spread between prompts: the observed difference is 0, and a two-sided test of an observed
    0 has p = 1 (``2 * t.sf(0, df)``), though each prompt's own rate went down (weighted by its
    trials the two moves cancel); the sign test over the prompts would have said 0.5."""
    from scipy.stats import t as student_t

    from poise.scoring.stats import paired_clustered

    diff = paired_clustered("r", [(0, 1), (2, 3)], [(1, 3), (1, 1)])
    assert diff.value == 0.0 and diff.test == "sign-prompts"
    assert diff.p_value == 2 * student_t.sf(0.0, 1) == 1.0
    assert diff.low < 0.0 < diff.high
