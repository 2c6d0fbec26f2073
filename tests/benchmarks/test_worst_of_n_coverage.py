"""benchmarks/worst_of_n_coverage.py: its truth is the closed form, and poise's interval is never
narrower than either interval it spans."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "worst_of_n_coverage.py"


def test_three_runs_cover_with_shares_and_poise_spans_both_intervals() -> None:
    module = runpy.run_path(str(SCRIPT))
    ns = [1, 16]
    out = module["coverage"](2.0, 6.0, 16, 4, ns, runs=3, boot=30, seed=0)
    assert set(out) == {"bootstrap", "profile", "poise"}
    for share, width in out.values():
        assert share.shape == width.shape == (2,)
        assert np.all((share >= 0) & (share <= 1)) and np.all(share * 3 == np.round(share * 3))
    # a union is at least as wide as each part, run by run, so on average too
    assert np.all(out["poise"][1] >= out["bootstrap"][1] - 1e-12)
    assert np.all(out["poise"][1] >= out["profile"][1] - 1e-12)
    assert np.all(out["poise"][0] >= out["profile"][0])


def test_the_bootstrap_alone_is_percentiles_of_refits() -> None:
    module = runpy.run_path(str(SCRIPT))
    matrix = np.zeros((4, 8), dtype=int)
    for i, k in enumerate([1, 2, 4, 6]):
        matrix[i, :k] = 1
    low, high = module["bootstrap_alone"](matrix, [1], 50, 0)
    # every replicate's E[p] lies between the least and the most harmful prompt's share
    assert 1 / 8 - 1e-6 <= low[0] <= high[0] <= 6 / 8 + 1e-6
    assert math.isclose(module["beta_binomial_asr"](2.0, 6.0, 1), 0.25, rel_tol=1e-12)
    assert module["beta_binomial_asr"](2.0, 6.0, 16) == pytest.approx(
        1 - math.exp(math.lgamma(22) + math.lgamma(8) - math.lgamma(24) - math.lgamma(6))
    )
