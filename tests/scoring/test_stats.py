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
