"""Sparsification of one task vector on tensors small enough to work out by hand (the
comparisons with mergekit and the random rules' invariants are in tests/merge/test_methods.py)."""

from __future__ import annotations

import torch

from poise.merge.sparsify import sparsify

# 1..10 with alternating signs: magnitudes 1..10, so every ranking is unambiguous
TEN = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0, 9.0, -10.0], dtype=torch.float64)


def test_a_trim_rescales_by_the_kept_share_n_over_k_not_by_one_over_density() -> None:
    """TIES trim at density 0.25 of 10 entries keeps int(2.5) = 2 (|10| and |9|); the
    inverse-probability rescale divides by the kept share 2/10 (x5), not by 0.25 (x4)."""
    out = sparsify(TEN, "magnitude", density=0.25, rescale=True)
    expected = torch.zeros(10, dtype=torch.float64)
    expected[8], expected[9] = 45.0, -50.0
    assert torch.equal(out, expected)
    assert torch.equal(sparsify(TEN, "magnitude", density=0.25), expected / 5)


def test_breadcrumbs_rescale_by_the_kept_share_n_over_k_not_by_one_over_density() -> None:
    """Breadcrumbs at density 0.25 and gamma 0.1 on 10 entries: int(0.1 x 10) = 1 outlier
    (|10|) and the 7 smallest are dropped, keeping |8| and |9|, rescaled by 10/2 = 5."""
    out = sparsify(TEN, "magnitude_outliers", density=0.25, gamma=0.1, rescale=True)
    expected = torch.zeros(10, dtype=torch.float64)
    expected[7], expected[8] = -40.0, 45.0
    assert torch.equal(out, expected)
