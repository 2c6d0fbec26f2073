"""SLERP on tensors whose angle is set by hand, against mergekit 0.1.5's ``slerp`` (the other
interpolation tests, NuSLERP and Model Stock against mergekit, are in tests/merge/test_methods.py)."""

from __future__ import annotations

import math

import pytest
import torch

from poise.merge import get_method

mergekit_api = pytest.importorskip("mergekit.merge_methods.api")


@pytest.mark.parametrize("cos", [0.996, 0.999])
def test_slerp_between_the_two_thresholds_is_spherical_as_in_mergekit(cos: float) -> None:
    """mergekit falls back to linear interpolation only above ``|cos| > 0.9995``: at cos 0.996
    and 0.999 the midpoint of two unit vectors is on the sphere (norm 1), not the chord's
    midpoint (norm cos(omega / 2) ~ 0.9990 and 0.99975)."""
    a = torch.zeros(2, 3, dtype=torch.float64)
    b = torch.zeros(2, 3, dtype=torch.float64)
    a[0, 0] = 1.0
    b[0, 0], b[1, 2] = cos, math.sqrt(1 - cos * cos)
    got = get_method("slerp")([b], a, t=0.5)
    expected = mergekit_api.merge_tensors(
        [a, b], "slerp", parameters={"t": 0.5}, ids=["base", "b"], base_index=0
    )
    assert torch.allclose(got, expected, atol=1e-9, rtol=0)
    assert float(got.norm()) == pytest.approx(1.0, abs=1e-12)
