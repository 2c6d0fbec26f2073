import math

import numpy as np
import pytest

from poise.attacks import SystemPrompt, attacks
from poise.attacks.worst_of_n import (
    empirical_curve,
    harmful_matrix,
    predicted_curve,
    worst_of_n_summary,
)
from poise.config import Sampling
from poise.suites.schema import SuiteItem


def test_requests_sample_n_at_temperature_one_by_default() -> None:
    items = [
        SuiteItem(id="h", messages=[{"role": "user", "content": "q"}], kind="harmful"),
        SuiteItem(id="b", messages=[{"role": "user", "content": "q"}], kind="benign"),
    ]
    [req] = attacks.get("worst_of_n")(items, Sampling(), SystemPrompt("none", None), n=8)
    assert req.sampling.n == 8 and req.sampling.temperature == 1.0
    assert req.request_id == "worst_of_8/t=1.00"


def test_best_of_n_is_a_deprecated_alias_of_worst_of_n() -> None:
    with pytest.warns(FutureWarning, match="'best_of_n' is deprecated; use 'worst_of_n'"):
        assert attacks.get("best_of_n") is attacks.get("worst_of_n")
    assert "best_of_n" not in attacks.names()


def test_empirical_curve_uses_first_n_samples() -> None:
    m = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    curve = empirical_curve(m)
    assert [c["k"] for c in curve] == [1, 1, 2, 2]
    assert curve[0]["prompts"] == 3


def test_predicted_curve_matches_closed_form() -> None:
    m = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    pred = predicted_curve(m, [1, 3, 4, 100], boot=200)
    # N <= M: chance that N of the 4 samples, drawn without replacement, include a harmful one
    expected = {1: (1 / 4 + 2 / 4 + 0) / 3, 3: ((1 - 0) + 1 + 0) / 3, 4: 2 / 3}
    # prompt 1: 1 - C(3,3)/C(4,3) = 3/4; prompt 2: 1 - C(2,3)/C(4,3) = 1; prompt 3: 0
    expected[3] = (3 / 4 + 1 + 0) / 3
    for point in pred[:3]:
        assert math.isclose(point["value"], expected[point["n"]], rel_tol=1e-12)
        assert point["low"] <= point["value"] + 1e-12 and point["value"] <= point["high"] + 1e-12
    assert math.isclose(pred[-1]["value"], 2 / 3, rel_tol=1e-12)  # never-broken prompt stays at 0


def test_unbiased_estimate_equals_the_empirical_curve_averaged_over_sample_orders() -> None:
    from itertools import permutations

    m = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]], dtype=bool)
    orders = list(permutations(range(3)))
    averaged = np.mean(
        [[c["value"] for c in empirical_curve(m[:, list(o)])] for o in orders], axis=0
    )
    predicted = [p["value"] for p in predicted_curve(m, [1, 2, 3], boot=10)]
    assert np.allclose(averaged, predicted)


def test_summary_from_records_and_interval_check() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.4, size=60)
    records = [
        {
            "item_id": f"i{i}",
            "kind": "harmful",
            "request_id": "best_of_12/t=1.00",
            "sample_index": k,
            "verdict": {"harmful": bool(rng.random() < p[i])},
        }
        for i in range(60)
        for k in range(12)
    ]
    ids, matrix = harmful_matrix(records)
    assert matrix.shape == (60, 12) and len(ids) == 60
    summary = worst_of_n_summary(records, extrapolate=(100,))
    assert summary["samples_per_prompt"] == 12
    assert [e["n"] for e in summary["empirical"]] == list(range(1, 13))
    assert summary["predicted"][-1]["n"] == 100
    values = [e["value"] for e in summary["empirical"]]
    assert values == sorted(values)  # ASR(N) never decreases
    assert summary["predicted_within_empirical_interval"] is True
