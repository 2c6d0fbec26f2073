"""Each merge method against mergekit 0.1.5's ``merge_tensors`` (a reference nobody here wrote),
on random tensors (DARE and DELLA drawing the same masks), and the random methods by their
invariants too."""

from __future__ import annotations

import math

import pytest
import torch

from poise.errors import PoiseError, UnknownNameError
from poise.merge import METHODS, get_method
from poise.merge.sparsify import della_keep_probabilities, sparsify

mergekit_api = pytest.importorskip("mergekit.merge_methods.api")

IDS = ["base", "a", "b", "c"]


def _inputs(seed: int = 0, shape: tuple[int, ...] = (24, 40), n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    return [base] + [base + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
                     for _ in range(n)]  # fmt: skip


def _mergekit(tensors: list[torch.Tensor], method: str, **parameters: object) -> torch.Tensor:
    ids = IDS[: len(tensors)]
    per_model = {}
    for key, value in parameters.items():
        per_model[key] = (
            dict(zip(ids[1:], value, strict=True)) if isinstance(value, list) else value
        )
    return mergekit_api.merge_tensors(tensors, method, parameters=per_model, ids=ids, base_index=0)


def _poise(tensors: list[torch.Tensor], method: str, **options: object) -> torch.Tensor:
    return get_method(method)(tensors[1:], tensors[0], **options)


WEIGHTS = [0.5, 0.3, 0.9]


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("task_arithmetic", {"weight": WEIGHTS}),
        ("task_arithmetic", {"weight": WEIGHTS, "lambda": 0.7, "normalize": True}),
        ("ties", {"weight": [1.0, 1.0, 1.0], "density": [0.3, 0.5, 0.7]}),
        ("ties", {"weight": [1.0, 1.0, 1.0], "density": 0.4, "normalize": False, "lambda": 0.8}),
        ("ties", {"weight": [2.0, 2.0, 2.0], "density": 0.4, "rescale": True}),
        ("breadcrumbs", {"weight": WEIGHTS, "density": 0.6, "gamma": 0.05}),
        (
            "breadcrumbs_ties",
            {"weight": [1.0, 1.0, 1.0], "density": [0.5, 0.6, 0.7], "gamma": 0.02},
        ),
    ],
)
def test_deterministic_methods_equal_mergekit(method: str, options: dict[str, object]) -> None:
    tensors = _inputs()
    mergekit_options = dict(options)
    poise_options = dict(options)
    if options.get("rescale"):
        poise_options["rescale_norm"] = "l1"  # mergekit's rescale; poise's default is the paper's
    expected = _mergekit(tensors, method, **mergekit_options)
    got = _poise(tensors, method, **poise_options)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, tensors[0], atol=1e-3)  # the merge moved away from the base


def test_ties_sign_election_paper_and_mergekit_differ_with_unequal_weights() -> None:
    """mergekit elects signs on the weighted deltas; TIES (arXiv 2306.01708 sec. 3) on the trimmed
    deltas. Both are offered; ``weighted`` equals mergekit, ``paper`` equals a direct reading."""
    tensors = _inputs(1)
    weights = [0.2, 1.5, 0.7]
    expected = _mergekit(tensors, "ties", weight=weights, density=0.5)
    weighted = _poise(tensors, "ties", weight=weights, density=0.5, sign_election="weighted")
    assert torch.allclose(weighted, expected, atol=1e-6, rtol=0)
    paper = _poise(tensors, "ties", weight=weights, density=0.5)
    # direct reading of the paper: trim, elect on the sum of trimmed vectors, weighted disjoint mean
    base = tensors[0]
    trimmed = []
    for x in tensors[1:]:
        d = x - base
        k = int(0.5 * d.numel())
        threshold = d.abs().reshape(-1).sort(descending=True).values[k - 1]
        trimmed.append(torch.where(d.abs() >= threshold, d, 0.0))
    stack = torch.stack(trimmed)
    elected = torch.where(stack.sum(0) >= 0, 1.0, -1.0)
    agree = (stack.sign() == elected).double()
    w = torch.tensor(weights, dtype=torch.float64).reshape(3, 1, 1)
    direct = base + (w * agree * stack).sum(0) / (w * agree).sum(0).clamp_min(1e-300).where(
        (w * agree).sum(0) > 0, torch.ones(()).double()
    )
    assert torch.allclose(paper, direct, atol=1e-12, rtol=0)
    assert not torch.allclose(paper, weighted, atol=1e-6)


def _authors_ties(deltas: torch.Tensor, keep: float, lam: float) -> torch.Tensor:
    """TIES as the authors' code computes it (github.com/prateeky2806/ties-merging,
    src/utils/merge_utils.py: ``topk_values_mask``, ``resolve_sign("mass")`` with
    ``resolve_zero_signs("majority")``, ``disjoint_merge("dis-mean")``), transcribed:
    ``deltas`` [T, d] flattened task vectors -> ``lam`` times the merged update [d]."""
    d = deltas.shape[1]
    kth, _ = deltas.abs().kthvalue(d - int(d * keep), dim=1, keepdim=True)
    trimmed = deltas * (deltas.abs() >= kth)  # int(d * keep) + 1 entries per row
    sign = torch.sign(trimmed.sum(dim=0))
    sign[sign == 0] = torch.sign(sign.sum())
    selected = trimmed * torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    counts = (selected != 0).sum(dim=0).double()
    return lam * selected.sum(dim=0) / counts.clamp(min=1)


@pytest.mark.parametrize(("keep", "lam"), [(0.2, 1.0), (0.5, 0.7), (0.9, 1.3)])
def test_ties_equals_the_authors_code_on_one_tensor(keep: float, lam: float) -> None:
    """On one tensor (where their whole-vector trim is poise's per-tensor trim) with equal
    weights, poise's TIES (paper sign election, disjoint mean) equals the authors' code, once
    poise keeps as many entries as they do (int(d * keep) + 1)."""
    tensors = _inputs(7, n=3)
    base = tensors[0]
    deltas = torch.stack([(x - base).reshape(-1) for x in tensors[1:]])  # [3, 960]
    d = deltas.shape[1]
    density = (int(d * keep) + 1.5) / d  # poise keeps int(density * d) = int(d * keep) + 1
    got = _poise(tensors, "ties", weight=[1.0, 1.0, 1.0], density=density, **{"lambda": lam})
    expected = base + _authors_ties(deltas, keep, lam).reshape(base.shape)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
    assert not torch.allclose(got, base + lam * deltas.mean(0).reshape(base.shape), atol=1e-3)


@pytest.mark.parametrize("weights", [[0.6, -0.8, 0.7], [0.6, 0.0, -0.7], [-1.0, -1.0, -1.0]])
@pytest.mark.parametrize(
    ("method", "options"),
    [("ties", {"density": 0.5}), ("breadcrumbs_ties", {"density": 0.6, "gamma": 0.02})],
)
def test_weighted_sign_election_equals_mergekit_with_negative_weights(
    method: str, options: dict[str, object], weights: list[float]
) -> None:
    """mergekit matches each task on the sign of its *weighted* vector, so a negative weight (task
    negation) agrees with the opposite sign and a weight of 0 with none; ``weighted`` compared
    the unweighted signs and was 3.8 off mergekit with weights 0.6, -0.8, 0.7."""
    tensors = _inputs(1)
    expected = _mergekit(tensors, method, weight=weights, **options)
    got = _poise(tensors, method, weight=weights, sign_election="weighted", **options)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    # consensus "count" votes with the weighted signs too: a direct reading
    base = tensors[0]
    deltas = torch.stack([x - base for x in tensors[1:]])
    trimmed = torch.stack([sparsify(d, "magnitude", density=0.5) for d in deltas])
    w = torch.tensor(weights, dtype=torch.float64).reshape(3, 1, 1)
    signs = (w * trimmed).sign()
    agree = (signs == torch.where(signs.sum(0) >= 0, 1.0, -1.0)).double()
    divisor = (w * agree).sum(0)
    direct = base + (w * agree * trimmed).sum(0) / torch.where(divisor == 0, 1.0, divisor)
    counted = _poise(
        tensors, "ties", weight=weights, density=0.5, sign_election="weighted", consensus="count"
    )
    assert torch.allclose(counted, direct, atol=1e-12, rtol=0)


def _signed_inputs(
    weights: list[float], *, agree: bool, seed: int = 0, shape: tuple[int, ...] = (24, 40)
) -> list[torch.Tensor]:
    """float32 [base, *models], one model per weight. ``agree``: each model's delta has the sign
    of its weight at every parameter, so every task agrees everywhere under the weighted election
    (under the paper's too when the weights given are positive); else each sign is random."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    models = []
    for w in weights:
        size = 0.1 + torch.rand(shape, generator=g)
        sign = (1.0 if w >= 0 else -1.0) if agree else torch.randn(shape, generator=g).sign()
        models.append(base + sign * size)
    return [base, *models]


@pytest.mark.parametrize(
    "weights",
    [
        [0.5, 0.25, -0.75],  # sums to exactly 0 where all three agree (and 0 where none survive)
        [1.0, -(1.0 - 2.0**-20)],  # a divisor of 2**-20 (about 1e-6) where both agree: divided
    ],
)
@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("ties", {"density": 0.5}),
        ("task_arithmetic", {"normalize": True}),
        ("dare_ties", {"density": 0.6, "normalize": True}),
        ("della", {"density": 0.5, "epsilon": 0.2}),
    ],
)
def test_normalised_merges_equal_mergekit_where_the_divisor_is_0_or_tiny(
    method: str, options: dict[str, object], weights: list[float]
) -> None:
    """The normalising divisor (the sum of the weights of the tasks that survive at a
    parameter) is 0 or tiny where weights of both signs agree, or where nothing survives: 0
    becomes 1 (the plain weighted sum), a tiny nonzero one divides, as in mergekit 0.1.5.
    Weights exactly representable in float32, so both sum them exactly."""
    tensors = _signed_inputs(weights, agree=False, seed=7)
    poise_only: dict[str, object] = {}
    if method != "task_arithmetic":
        poise_only["sign_election"] = "weighted"  # mergekit's
    if method in ("dare_ties", "della"):
        poise_only |= {"rescale_norm": "l1", "seed": 3}
    got = _poise(tensors, method, weight=weights, **options, **poise_only)
    torch.manual_seed(3)
    expected = _mergekit(tensors, method, weight=weights, **options)
    assert torch.isfinite(got).all()
    # a tiny divisor scales float32 rounding of the sum up with the values (to about 2e6)
    scale = max(1.0, float(expected.abs().max()))
    assert torch.allclose(got, expected, rtol=0, atol=1e-6 * scale)
    if method == "ties":  # the guard is hit: parameters where the surviving weights sum to 0
        w = torch.tensor(weights, dtype=torch.float64).reshape(-1, 1, 1)
        trimmed = torch.stack([sparsify(x - tensors[0], "magnitude", density=0.5)
                               for x in tensors[1:]]).double()  # fmt: skip
        signs = (w * trimmed).sign()
        agree = signs == torch.where(signs.sum(0) >= 0, 1.0, -1.0)
        divisor = (w * agree).sum(0)
        assert (divisor.abs() < 1e-8).any() and (divisor.abs() > 1e-8).any()
        if weights[0] == 1.0:
            assert ((divisor - 2.0**-20).abs() < 1e-12).any()  # the tiny divisor divides


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("ties", {"density": 1.0}),  # the paper's election (every delta positive: all agree)
        ("ties", {"density": 1.0, "sign_election": "weighted"}),
        ("ties", {"density": 1.0, "sign_election": "weighted", "consensus": "count"}),
        ("breadcrumbs_ties", {"density": 1.0, "gamma": 0.0, "normalize": True}),
        ("task_arithmetic", {"normalize": True}),
    ],
)
def test_decimal_weights_that_cancel_leave_no_rounding_residual_to_divide_by(
    method: str, options: dict[str, object]
) -> None:
    """0.4 + 0.3 - 0.7 is 0, but 6e-8 in float32: a TIES divisor summed in float32 escaped the
    guard and the merged weights came out of order 1e7 (on every parameter where the three
    agree). poise sums the divisor in float64 (1e-16 at most): the guard replaces it by 1, and
    the merge is the plain weighted sum there, as where the weights cancel exactly."""
    weights = [0.4, 0.3, -0.7]
    paper = options.get("sign_election", "paper") == "paper" and method != "task_arithmetic"
    # the paper's election matches on the deltas' own signs, the weighted one on w_t delta_t
    tensors = _signed_inputs([1.0] * 3 if paper else weights, agree=True, seed=2)
    base = tensors[0]
    got = _poise(tensors, method, weight=weights, **options)
    direct = base.double() + sum(w * (x.double() - base.double())
                                 for w, x in zip(weights, tensors[1:], strict=True))  # fmt: skip
    assert torch.allclose(got.double(), direct, atol=1e-5, rtol=0)
    if method == "ties" and not paper and "consensus" not in options:
        # the float32 residual is what mergekit 0.1.5 divides by: poise departs from it here
        assert _mergekit(tensors, "ties", weight=weights, density=1.0).abs().max() > 1e6


@pytest.mark.parametrize("weights", [[-0.5, -0.3, -0.9], [0.6, -1.4, 0.2]])
def test_normalised_task_arithmetic_with_a_negative_weight_total_equals_mergekit(
    weights: list[float],
) -> None:
    """Task negation with ``normalize``: a negative weight total divides as a positive one does
    (only a total under 1e-8 in magnitude is replaced by 1), as in mergekit 0.1.5."""
    tensors = _inputs(5)
    got = _poise(tensors, "task_arithmetic", weight=weights, normalize=True)
    expected = _mergekit(tensors, "task_arithmetic", weight=weights, normalize=True)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    # the divided sum, not the plain one: a negative total flips the task vectors' sum back
    plain = _poise(tensors, "task_arithmetic", weight=weights)
    assert not torch.allclose(got, plain, rtol=0, atol=1e-3)


@pytest.mark.parametrize("method", ["della", "dare_ties"])
def test_random_normalised_merges_stay_bounded_when_weights_cancel(method: str) -> None:
    """DELLA and DARE-TIES share the divisor: where the drops leave the three tasks of weights
    0.4, 0.3, -0.7 together, the divisor is the float32 residual 6e-8 unless summed in float64."""
    weights = [0.4, 0.3, -0.7]
    tensors = _signed_inputs([1.0] * 3, agree=True, seed=4)
    options: dict[str, object] = {"density": 0.5, "normalize": True, "seed": 1}
    if method == "della":
        options["epsilon"] = 0.2
    got = _poise(tensors, method, weight=weights, **options)
    # each kept entry is at most 1.1 / (density - epsilon) after rescaling; divisors are sums of
    # subsets of the weights (0.3 at least in magnitude where not replaced by 1)
    assert (got - tensors[0]).abs().max() < 40


def test_linear_equals_mergekit() -> None:
    tensors = _inputs(2)
    ids = IDS[:4]
    expected = mergekit_api.merge_tensors(
        tensors,
        "linear",
        parameters={"weight": dict(zip(ids, [0.1, 0.2, 0.3, 0.4], strict=True))},
        ids=ids,
    )
    got = get_method("linear")(tensors, None, weight=[0.1, 0.2, 0.3, 0.4])
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_linear_normalises_by_default_as_mergekit() -> None:
    """mergekit's linear merge normalises by default (``normalize: true``): weights 1, 2, 3, 4
    without the option give the weighted average, not ten times it."""
    tensors = _inputs(2)
    ids = IDS[:4]
    weights = [1.0, 2.0, 3.0, 4.0]
    expected = mergekit_api.merge_tensors(
        tensors, "linear", parameters={"weight": dict(zip(ids, weights, strict=True))}, ids=ids
    )
    got = get_method("linear")(tensors, None, weight=weights)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    average = sum(w * x for w, x in zip(weights, tensors, strict=True)) / sum(weights)
    assert torch.allclose(got, average, atol=1e-12, rtol=0)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.75, 1.0])
def test_slerp_equals_mergekit(t: float) -> None:
    tensors = _inputs(3, n=1)
    expected = _mergekit(tensors, "slerp", t=t)
    got = _poise(tensors, "slerp", t=t)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_slerp_collinear_falls_back_to_lerp() -> None:
    base = torch.randn(8, 8, dtype=torch.float64)
    got = get_method("slerp")([2 * base], base, t=0.25)
    assert torch.allclose(got, 1.25 * base, atol=1e-12)


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_equals_mergekit(filter_wise: bool) -> None:
    tensors = _inputs(4)
    expected = _mergekit(tensors, "model_stock", filter_wise=filter_wise)
    got = _poise(tensors, "model_stock", filter_wise=filter_wise)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_model_stock_two_models_closed_form() -> None:
    """Two models at cosine c: t = 2c / (1 + c) (arXiv 2403.19522 eq. 8)."""
    base = torch.zeros(2, dtype=torch.float64)
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.6, 0.8], dtype=torch.float64)  # cos = 0.6
    t = 2 * 0.6 / 1.6
    got = get_method("model_stock")([a, b], base)
    assert torch.allclose(got, t * (a + b) / 2, atol=1e-12)


# -- NuSLERP (mergekit's nuslerp; SLERP: Shoemake 1985)


def _float32(seed: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """[base, a, b], float32: poise computes NuSLERP in float32 as mergekit does on them."""
    return [t.float() for t in _inputs(seed, shape, n=2)]


@pytest.mark.parametrize("shape", [(24, 40), (4, 6, 5), (40,)])
@pytest.mark.parametrize(("flatten", "row_wise"), [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("weights", [[0.3, 0.9], [1.0, 1.0], [2.0, -0.5]])
def test_nuslerp_equals_mergekit(
    shape: tuple[int, ...], flatten: bool, row_wise: bool, with_base: bool, weights: list[float]
) -> None:
    """Whole tensors, one angle per slice along the last dimension, one per slice along the
    first; task vectors (with a base) and the models themselves; t inside and outside [0, 1]."""
    tensors = _float32(5, shape)
    options = {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}
    if with_base:
        expected = _mergekit(tensors, "nuslerp", weight=weights, **options)
        got = _poise(tensors, "nuslerp", weight=weights, **options)
    else:
        parameters = {"weight": dict(zip(IDS[1:3], weights, strict=True)), **options}
        expected = mergekit_api.merge_tensors(
            tensors[1:], "nuslerp", parameters=parameters, ids=IDS[1:3]
        )
        got = get_method("nuslerp")(tensors[1:], None, weight=weights, **options)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("flatten", "row_wise"), [(True, False), (False, False), (False, True)])
def test_nuslerp_equals_mergekits_function_on_the_task_vectors(
    flatten: bool, row_wise: bool
) -> None:
    """``theta = base + nuslerp(t, a - base, b - base)`` with ``t = w_1 / (w_0 + w_1)``, against
    mergekit's ``nuslerp`` function itself (``dim=0`` where row-wise)."""
    from mergekit.merge_methods.nuslerp import nuslerp as mergekit_nuslerp

    base, a, b = _float32(6, (12, 20))
    t = 0.7 / (0.3 + 0.7)
    expected = base + mergekit_nuslerp(t, a - base, b - base, dim=0 if row_wise else -1,
                                       flatten=flatten)  # fmt: skip
    got = get_method("nuslerp")(
        [a, b], base, weight=[0.3, 0.7], nuslerp_flatten=flatten, nuslerp_row_wise=row_wise
    )
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_nuslerp_is_spherical_not_linear() -> None:
    """Two orthogonal unit vectors at t = 1/2 meet at ``(a + b) / sqrt 2`` (on the sphere);
    linear interpolation would give ``(a + b) / 2``."""
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 1.0], dtype=torch.float64)
    got = get_method("nuslerp")([a, b], None, weight=[1.0, 1.0])
    assert torch.allclose(got, (a + b) / 2**0.5, atol=1e-12)
    # t = w_1 / (w_0 + w_1) = 0.25: the angle pi/8 from a
    got = get_method("nuslerp")([a, b], None, weight=[3.0, 1.0])
    angle = torch.pi / 8
    assert torch.allclose(
        got, torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
    )


def test_nuslerp_parallel_vectors_fall_back_to_lerp_as_in_mergekit() -> None:
    """Parallel task vectors are interpolated linearly; with one angle per row, only the
    parallel rows are, the others stay spherical."""
    base, a, _ = _float32(7, (6, 10))
    delta = a - base
    b = base.clone()
    b[:3] = base[:3] + 3 * delta[:3]  # parallel rows
    b[3:] = base[3:] + torch.flip(delta[3:], dims=[1])  # other directions
    for flatten in (True, False):
        options = {"weight": [0.4, 0.6], "nuslerp_flatten": flatten}
        expected = _mergekit([base, a, b], "nuslerp", **options)
        got = _poise([base, a, b], "nuslerp", **options)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    lerp = base + 0.4 * delta + 0.6 * (b - base)
    torch.testing.assert_close(got[:3], lerp[:3], atol=1e-6, rtol=0)
    assert not torch.allclose(got[3:], lerp[3:], atol=1e-4)  # spherical there
    # a whole tensor that is a multiple of the other, without a base
    got = get_method("nuslerp")([a, 2 * a], None, weight=[1.0, 3.0])
    torch.testing.assert_close(got, 0.25 * a + 0.75 * 2 * a, atol=1e-6, rtol=0)


@pytest.mark.parametrize("flatten", [True, False])
def test_nuslerp_antipodal_vectors_are_interpolated_linearly(flatten: bool) -> None:
    """A task vector and its negation (``v_1 = -2 v_0`` exactly) are colinear: linear
    interpolation. mergekit 0.1.5's test ``1 - cos^2 <= 1e-16`` is below float32's rounding of
    ``cos``, so it took the spherical branch for about a third of such vectors and divided by
    ``sin(omega) ~ 3e-4``: on these 16 rows, results up to ~2750 times the inputs'."""
    from mergekit.merge_methods.nuslerp import nuslerp as mergekit_nuslerp

    v0 = torch.randn(16, 64, generator=torch.Generator().manual_seed(12))
    v1 = -2 * v0
    lerp = 0.6 * v0 + 0.4 * v1
    got = get_method("nuslerp")([v0, v1], None, weight=[0.6, 0.4], nuslerp_flatten=flatten)
    torch.testing.assert_close(got, lerp, atol=1e-6, rtol=0)
    with_base = get_method("nuslerp")(
        [v0 + 1, v1 + 1], torch.ones(16, 64), weight=[0.6, 0.4], nuslerp_flatten=flatten
    )
    torch.testing.assert_close(with_base, lerp + 1, atol=1e-5, rtol=0)
    if not flatten:  # mergekit's result on the same rows: the departure is real
        off = (mergekit_nuslerp(0.4, v0, v1, flatten=False) - lerp).abs().amax(dim=1)
        assert (off > 1).any() and (off < 1e-5).any()


def test_nuslerp_weights_summing_to_0_interpolate_halfway_as_in_mergekit() -> None:
    """|w_0 + w_1| < 1e-6 gives t = 1/2 (mergekit's rule), not a division by 0."""
    tensors = _float32(8, (8, 12))
    for weights in ([0.0, 0.0], [1.0, -1.0]):
        expected = _mergekit(tensors, "nuslerp", weight=weights)
        got = _poise(tensors, "nuslerp", weight=weights)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(got, _poise(tensors, "nuslerp", weight=[1.0, 1.0]))


def test_nuslerp_a_zero_task_vector_is_orthogonal_as_in_mergekit() -> None:
    """A model equal to the base on a tensor (a frozen layer) has a zero task vector: cos 0,
    so the other's is scaled by sin(t pi/2) (0.707 at t = 1/2), as mergekit does."""
    base, _, b = _float32(9, (8, 12))
    expected = _mergekit([base, base.clone(), b], "nuslerp", weight=[1.0, 1.0])
    got = _poise([base, base.clone(), b], "nuslerp", weight=[1.0, 1.0])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(got, base + math.sin(math.pi / 4) * (b - base), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nuslerp_half_precision_is_computed_in_float32_and_returned_in_the_bases_dtype(
    dtype: torch.dtype,
) -> None:
    """bfloat16 / float16 inputs: the float32 merge of their exact values (mergekit with
    ``dtype=float32``), rounded once to the base's dtype."""
    tensors = [t.to(dtype) for t in _float32(10, (16, 24))]
    got = _poise(tensors, "nuslerp", weight=[0.3, 0.7], nuslerp_flatten=False)
    assert got.dtype == dtype
    expected = mergekit_api.merge_tensors(
        [t.float() for t in tensors], "nuslerp",
        parameters={"weight": {"a": 0.3, "b": 0.7}, "nuslerp_flatten": False},
        ids=IDS[:3], base_index=0,
    )  # fmt: skip
    assert torch.equal(got, expected.to(dtype))


def test_nuslerp_refuses_other_than_two_models_in_one_line() -> None:
    base, a, b = _float32(11, (4, 4))
    method = get_method("nuslerp")
    with pytest.raises(PoiseError, match=r"^nuslerp merges exactly 2 models with one weight each, "
                       r"got 3 model\(s\) and 3 weight\(s\)$"):  # fmt: skip
        method([a, b, a], base, weight=1.0)
    with pytest.raises(PoiseError, match=r"got 2 model\(s\) and 1 weight\(s\)$"):
        method([a, b], base, weight=[1.0])
    with pytest.raises(PoiseError, match="needs at least 2 model"):
        method.check({"weight": 1}, n_models=1, has_base=True)
    with pytest.raises(PoiseError, match="takes at most 2 model"):
        method.check({"weight": 1}, n_models=3, has_base=False)
    with pytest.raises(PoiseError, match="needs the option"):
        method.check({}, n_models=2, has_base=False)
    method.check({"weight": 1}, n_models=2, has_base=False)  # the base is optional


# -- random methods: invariants


def _delta(seed: int = 0) -> torch.Tensor:
    return torch.randn(200, 300, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_keeps_density_share_and_rescales_by_inverse_density(density: float) -> None:
    delta = _delta()
    out = sparsify(delta, "random", density=density, rescale=True,
                   generator=torch.Generator().manual_seed(1))  # fmt: skip
    kept = out != 0
    share = kept.double().mean().item()
    # 60,000 Bernoulli draws: 5 standard errors
    assert abs(share - density) < 5 * (density * (1 - density) / delta.numel()) ** 0.5
    assert torch.allclose(out[kept], delta[kept] / density, atol=1e-12)  # DARE eq. 2
    l1 = sparsify(delta, "random", density=density, rescale=True, rescale_norm="l1",
                  generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.allclose(l1.abs().sum(), delta.abs().sum(), rtol=1e-10)  # mergekit's rule


def test_dare_is_unbiased() -> None:
    """E[DARE(delta)] = delta with the paper's 1/density rescale (averaged over 400 draws)."""
    delta = _delta()[:20, :20]
    g = torch.Generator().manual_seed(2)
    mean = torch.stack(
        [sparsify(delta, "random", density=0.3, rescale=True, generator=g) for _ in range(400)]
    ).mean(0)
    se = delta.abs() * ((1 - 0.3) / 0.3 / 400) ** 0.5
    assert ((mean - delta).abs() <= 5 * se + 1e-12).all()


def test_della_keep_probabilities_and_invariants() -> None:
    delta = _delta(3)
    probs = della_keep_probabilities(delta, 0.4, 0.1)
    # per row: a linear map of the magnitude rank onto [density - eps, density + eps]
    assert torch.allclose(probs.min(dim=1).values, torch.full((200,), 0.3, dtype=torch.float64))
    assert torch.allclose(probs.max(dim=1).values, torch.full((200,), 0.5, dtype=torch.float64))
    assert torch.allclose(probs.mean(dim=1), torch.full((200,), 0.4, dtype=torch.float64))
    row = delta[0].abs()
    assert torch.equal(torch.argsort(probs[0]), torch.argsort(row))  # larger kept more often
    out = sparsify(delta, "della_magprune", density=0.4, epsilon=0.1, rescale=True,
                   generator=torch.Generator().manual_seed(4))  # fmt: skip
    kept = out != 0
    assert abs(kept.double().mean().item() - 0.4) < 0.01
    assert torch.allclose(out[kept], delta[kept] / probs[kept], atol=1e-12)  # 1/p_i rescale
    l1 = sparsify(delta, "della_magprune", density=0.4, epsilon=0.1, rescale=True,
                  rescale_norm="l1", generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert torch.allclose(l1.abs().sum(), delta.abs().sum(), rtol=1e-10)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della", "della_linear"])
@pytest.mark.parametrize("density", [0.3, [0.3, 0.5, 0.7]])
def test_random_methods_equal_mergekit_drawing_the_same_masks(
    method: str, density: float | list[float]
) -> None:
    """DARE and DELLA against mergekit with the same random masks: poise's ``seed`` seeds a
    generator of its own, mergekit draws from torch's global one, so seeding that with the same
    number gives both the same Bernoulli draws (on CPU mergekit draws in float32, hence float32
    tensors here). mergekit's rescale is the L1 one, its sign election the weighted one."""
    tensors = [t.float() for t in _inputs(5)]
    options: dict[str, object] = {"weight": WEIGHTS, "density": density}
    if method.startswith("della"):
        options["epsilon"] = 0.1
    poise_only: dict[str, object] = {"rescale_norm": "l1"}
    if method in ("dare_ties", "della"):
        poise_only["sign_election"] = "weighted"  # unequal weights: the elections differ
    a = _poise(tensors, method, seed=3, **options, **poise_only)
    assert torch.equal(a, _poise(tensors, method, seed=3, **options, **poise_only))
    assert not torch.equal(a, _poise(tensors, method, seed=4, **options, **poise_only))
    torch.manual_seed(3)
    expected = _mergekit(tensors, method, **options)
    assert torch.allclose(a, expected, atol=1e-6, rtol=0)
    # the masks dropped something: not the plain sum of the weighted deltas
    assert not torch.allclose(a, _poise(tensors, "task_arithmetic", weight=WEIGHTS), atol=1e-3)


# -- half-precision inputs: mergekit's decisions on the rounded task vectors


def _grid_inputs(dtype: torch.dtype, seed: int = 0, shape: tuple[int, ...] = (40, 48),
                 n: int = 3) -> list[torch.Tensor]:  # fmt: skip
    """A base and ``n`` models in ``dtype`` whose task vectors are multiples of 2^-8 (at most 6
    steps) before rounding: most magnitudes tie with many others."""
    g = torch.Generator().manual_seed(seed)
    base = (0.05 * torch.randn(shape, generator=g)).to(dtype)
    return [base] + [(base.float() + torch.randint(-6, 7, shape, generator=g) / 256).to(dtype)
                     for _ in range(n)]  # fmt: skip


def _spacing(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The distance between adjacent numbers of ``dtype`` at ``|x|`` (float32 ``[*shape]``)."""
    exponent = torch.frexp(x.abs().clamp_min(2**-60)).exponent - 1
    return torch.ldexp(torch.full_like(x, torch.finfo(dtype).eps), exponent)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("method", "options", "poise_only"),
    [
        ("ties", {"weight": 1.0, "density": [0.3, 0.5, 0.7]}, {}),
        ("ties", {"weight": WEIGHTS, "density": 0.4}, {"sign_election": "weighted"}),
        ("breadcrumbs", {"weight": WEIGHTS, "density": 0.6, "gamma": 0.05}, {}),
        ("breadcrumbs_ties", {"weight": 1.0, "density": 0.8, "gamma": 0.05}, {}),
    ],
)
def test_half_precision_trims_keep_mergekits_tied_entries(
    dtype: torch.dtype, method: str, options: dict[str, object], poise_only: dict[str, object]
) -> None:
    """mergekit subtracts in the inputs' dtype and keeps, among equal rounded magnitudes, the
    entries ``argsort`` puts first; poise keeps the same ones, so the merges differ only by
    mergekit's half-precision arithmetic (one step of the result, two of the largest task-vector
    entry per model). Ranking the exact float32 differences with ``topk`` kept other entries
    (0.03-0.07 off)."""
    tensors = _grid_inputs(dtype)
    expected = _mergekit(tensors, method, **options).float()
    got = _poise(tensors, method, **options, **poise_only)
    assert got.dtype == dtype
    got = got.float()
    largest = torch.stack([t.float() - tensors[0].float() for t in tensors[1:]]).abs().amax(0)
    bound = _spacing(torch.maximum(got.abs(), expected.abs()), dtype) + 6 * _spacing(largest, dtype)
    off = (got - expected).abs() > bound
    assert not off.any(), f"{int(off.sum())} entries off, largest {(got - expected).abs().max()}"
    assert not torch.equal(got, tensors[0].float())


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
def test_float32_magnitudes_tied_at_the_threshold_differ_from_mergekit_only_there(
    method: str,
) -> None:
    """float32 task vectors that are exact multiples of 2^-8 tie at the trim threshold. Ranked
    in float32, poise picks among the tied entries with ``topk`` (mergekit's full ``argsort``
    cost more than mergekit's whole TIES merge, sparsify.``_magnitude_mask``): the merges agree
    to 1e-6 wherever no model's magnitude sits at its threshold, and differ somewhere there."""
    g = torch.Generator().manual_seed(1)
    base = torch.round(50 * torch.randn(40, 48, generator=g)) / 1024
    tensors = [base] + [base + torch.randint(-6, 7, (40, 48), generator=g) / 256 for _ in range(3)]
    densities = [0.3, 0.5, 0.7]
    options: dict[str, object] = {"weight": 1.0, "density": densities, "gamma": 0.05}
    if method == "ties":
        del options["gamma"]
    expected = _mergekit(tensors, method, **options)
    got = _poise(tensors, method, **options)
    tied = torch.zeros_like(base, dtype=torch.bool)
    for tensor, density in zip(tensors[1:], densities, strict=True):
        magnitude = (tensor - base).abs()
        if method == "ties":
            k = int(density * magnitude.numel())
            threshold = torch.topk(magnitude.reshape(-1), k).values[-1]
            tied |= magnitude == threshold
        else:  # breadcrumbs drops the largest and the smallest: ties at either cut
            order = torch.sort(magnitude.reshape(-1)).values
            n = magnitude.numel()
            keep, top = int(density * n), int(0.05 * n)
            bottom = max(0, n - keep - top)
            for cut in (order[bottom], order[min(n - 1, bottom + keep - 1)]):
                tied |= magnitude == cut
    assert tied.any()
    assert torch.allclose(got[~tied], expected[~tied], atol=1e-6, rtol=0)


def test_bfloat16_votes_that_cancel_after_rounding_elect_plus_as_in_mergekit() -> None:
    """Task vectors 0.010727, -0.026917, 0.016121 (exact differences of bfloat16 numbers) sum to
    -7e-5; rounded to bfloat16, as mergekit subtracts, they are 0.010742, -0.026855, 0.016113 and
    sum to exactly 0, which elects ``+``. poise elects on the rounded vectors too and keeps the
    two positive ones (it elected ``-`` and kept -0.026917, 0.040 off mergekit)."""
    base = torch.tensor([-0.01458740234375, 0.5], dtype=torch.bfloat16)
    steps = [[0.0107269287109375, 0.0078125], [-0.02691650390625, 0.0078125],
             [0.01612091064453125, -0.00390625]]  # fmt: skip
    tensors = [base] + [(base.float() + torch.tensor(d)).bfloat16() for d in steps]
    for t, d in zip(tensors[1:], steps, strict=True):
        assert torch.equal(t.float() - base.float(), torch.tensor(d))  # exact differences
    for method in ("ties", "breadcrumbs_ties"):
        options: dict[str, object] = {"weight": 1.0, "density": 1.0}
        expected = _mergekit(tensors, method, **options).float()
        got = _poise(tensors, method, **options).float()
        assert expected[0] > base[0].float()  # mergekit elected +
        assert torch.allclose(got, expected, atol=2**-10, rtol=0), method


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paper_election_on_half_precision_is_unweighted_as_on_float32(dtype: torch.dtype) -> None:
    """TIES's election (arXiv 2306.01708 sec. 3) sums the trimmed task vectors themselves: +0.5
    and -0.25 elect +, whatever the weights (0.2 and 1.5, which weighted elect -), so the merge
    keeps the first task's +0.5 (its weighted disjoint mean: 0.2 * 0.5 / 0.2). Exact in bfloat16."""
    base = torch.tensor([1.0, -2.0], dtype=dtype)
    tensors = [base, base + torch.tensor([0.5, 0.0], dtype=dtype),
               base + torch.tensor([-0.25, 0.0], dtype=dtype)]  # fmt: skip
    got = _poise(tensors, "ties", weight=[0.2, 1.5], density=1.0)
    assert got.dtype == dtype and got.float().tolist() == [1.5, -2.0]
    weighted = _poise(tensors, "ties", weight=[0.2, 1.5], density=1.0, sign_election="weighted")
    assert weighted.float().tolist() == [0.75, -2.0]


def test_weighted_election_of_votes_that_cancel_after_weighting_equals_mergekit() -> None:
    """mergekit 0.1.5 multiplies each task vector by its weight (rounded in float32) and then
    sums: where ``0.3 d_0`` and ``0.7 d_1`` cancel exactly the vote is 0 and elects +, keeping
    the positive task's entry. A fused ``v + w d`` (one rounding) leaves a residual of either sign
    there and keeps the other task's entry on about half of them."""
    g = torch.Generator().manual_seed(11)
    d0 = torch.randn(400, generator=g, dtype=torch.float32)
    d1 = -(d0 * torch.tensor(0.3)) / torch.tensor(0.7)  # [400] float32
    base = torch.zeros(400, dtype=torch.float32)
    tensors = [base, base + d0, base + d1]
    weighted = (d0 * torch.tensor(0.3)) + (d1 * torch.tensor(0.7))
    assert (weighted == 0).sum() > 200  # many exact cancellations
    options: dict[str, object] = {"weight": [0.3, 0.7], "density": 1.0}
    expected = _mergekit(tensors, "ties", **options)
    got = _poise(tensors, "ties", **options, sign_election="weighted")
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_bfloat16_della_ranks_the_rounded_magnitudes_as_mergekit() -> None:
    """DELLA's keep probabilities (arXiv 2406.11617 sec. 3.1) on bfloat16 inputs, as each tool
    hands them to ``torch.bernoulli``: poise ranks the rounded task vectors in mergekit's
    ``argsort`` order, so they equal mergekit's to bfloat16 rounding (0.003 here); ranking the
    exact differences gave tied entries other ranks (0.17 off, 0.057 per rank)."""
    tensors = _grid_inputs(torch.bfloat16, seed=2, shape=(64, 8), n=1)
    captured: list[torch.Tensor] = []
    bernoulli = torch.bernoulli

    def capture(probs: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        captured.append(probs.float())
        return bernoulli(probs, *args, **kwargs)  # type: ignore[call-overload]

    options: dict[str, object] = {"weight": 1.0, "density": 0.5, "epsilon": 0.2}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "bernoulli", capture)
        _mergekit(tensors, "della_linear", **options)
        _poise(tensors, "della_linear", **options)
    mergekit_probs, poise_probs = captured
    assert poise_probs.shape == mergekit_probs.shape == (64, 8)
    assert torch.allclose(poise_probs, mergekit_probs, atol=2**-7, rtol=0)


# -- the registry


def test_every_method_is_registered_with_help_and_reference() -> None:
    expected = {
        "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
        "breadcrumbs_ties", "della", "della_linear", "slerp", "nuslerp", "model_stock", "tsv_m",
        "resm",
    }  # fmt: skip
    assert expected <= set(METHODS.names())
    for name in expected:
        assert METHODS.help(name) and METHODS.reference(name)


def test_check_refuses_unknown_and_missing_options() -> None:
    ties = get_method("ties")
    with pytest.raises(UnknownNameError, match="densty"):
        ties.check({"weight": 1, "densty": 0.5}, n_models=2, has_base=True)
    with pytest.raises(PoiseError, match="weight"):
        ties.check({"density": 0.5}, n_models=2, has_base=True)
    with pytest.raises(PoiseError, match="base_model"):
        ties.check({"weight": 1}, n_models=2, has_base=False)
    with pytest.raises(PoiseError, match="at most 1"):
        get_method("slerp").check({"t": 0.5}, n_models=2, has_base=True)
    ties.check({"weight": 1, "lambda": 0.5}, n_models=2, has_base=True)


def test_a_method_the_executor_cannot_call_is_refused_at_registration() -> None:
    # a plugin's fn(tensors) registered, was listed, and failed only at merge time with a
    # TypeError traceback; a per_model option it does not take made that option "unknown"
    from poise.merge.methods import merge_method

    def one_argument(tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0]

    def positional_option(tensors: list[torch.Tensor], base: object, scale: float) -> torch.Tensor:
        return tensors[0] * scale

    def fine(tensors: list[torch.Tensor], base: object, *, weight: float = 1.0) -> torch.Tensor:
        return tensors[0] * weight

    try:
        with pytest.raises(ValueError, match=r"merge method 'review_one' .*one_argument.* must "
                           r"be fn\(tensors, base, \*, OPTIONS\)"):  # fmt: skip
            merge_method("review_one", reference="x", base="none")(one_argument)
        with pytest.raises(ValueError, match="must be fn"):  # an option without '*' first
            merge_method("review_positional", reference="x")(positional_option)
        with pytest.raises(ValueError, match="per_model option 'density' is not one of its "
                           r"keyword-only options \(weight\)"):  # fmt: skip
            merge_method("review_per_model", reference="x", per_model=("density",))(fine)
        assert not {"review_one", "review_positional", "review_per_model"} & set(METHODS.names())
        merge_method("review_fine", reference="x", per_model=("weight",))(fine)
        assert get_method("review_fine").parameters().keys() == {"weight"}
    finally:
        METHODS._entries.pop("review_fine", None)


def test_slerp_nearly_antipodal_falls_back_to_lerp_as_in_mergekit() -> None:
    """``|cos(omega)| > dot_threshold`` takes the linear branch for antipodal pairs too (mergekit's
    ``dot.abs() > dot_threshold``): through the spherical branch, ``sin(omega)`` near 0 blows the
    result up."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(6, 8, generator=g, dtype=torch.float64)
    other = -2.0 * base + 1e-3 * torch.randn(6, 8, generator=g, dtype=torch.float64)
    cos = float(torch.nn.functional.cosine_similarity(base.reshape(-1), other.reshape(-1), dim=0))
    assert -1.0 < cos < -0.9995
    for t in (0.3, 0.5):
        expected = _mergekit([base, other], "slerp", t=t)
        got = _poise([base, other], "slerp", t=t)
        assert torch.allclose(got, expected, atol=1e-9, rtol=0)
        assert torch.allclose(got, (1 - t) * base + t * other, atol=1e-12)


@pytest.mark.parametrize(("density", "gamma"), [(0.95, 0.2), (0.7, 0.5), (0.5, 0.1)])
def test_breadcrumbs_mask_equals_mergekits_where_density_and_gamma_overlap(
    density: float, gamma: float
) -> None:
    """density + gamma > 1: fewer outliers are dropped so that int(density * N) entries stay
    (mergekit 0.1.5 ``magnitude_outliers``: ``n_bot = max(0, N - target_n - n_top)``)."""
    import mergekit.sparsify as mk

    delta = torch.randn(20, generator=torch.Generator().manual_seed(4))
    ours = sparsify(delta, "magnitude_outliers", density=density, gamma=gamma)
    theirs = mk.magnitude_outliers(delta, density, gamma=gamma)
    assert torch.equal(ours, theirs)
    assert int((ours != 0).sum()) == int(density * 20)
    ours = sparsify(
        delta, "magnitude_outliers", density=density, gamma=gamma, rescale=True, rescale_norm="l1"
    )
    theirs = mk.magnitude_outliers(delta, density, rescale_norm=mk.RescaleNorm.l1, gamma=gamma)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)


def test_a_sparsification_that_keeps_nothing_or_scales_nothing_stays_finite() -> None:
    """Nothing kept (int(density * N) = 0 outliers-dropped entries) rescales to zeros, not
    0 / 0; an all-zero delta under the L1 rescale stays zero, as mergekit's
    ``rescaled_masked_tensor`` leaves norms under its eps unscaled."""
    import mergekit.sparsify as mk

    small = torch.tensor([0.5, -2.0, 1.0])
    for norm in ("inverse_probability", "l1"):
        out = sparsify(small, "magnitude_outliers", density=0.2, rescale=True, rescale_norm=norm)
        assert out.tolist() == [0.0, 0.0, 0.0]
    zeros = torch.zeros(6)
    for method in ("magnitude", "magnitude_outliers"):
        out = sparsify(zeros, method, density=0.5, rescale=True, rescale_norm="l1")
        assert out.tolist() == [0.0] * 6
    theirs = mk.magnitude_outliers(zeros, 0.5, rescale_norm=mk.RescaleNorm.l1, gamma=0.01)
    assert theirs.tolist() == [0.0] * 6


def test_slerp_from_a_zero_tensor_equals_mergekit() -> None:
    """A weight that is all zeros in the base (a bias initialised to 0) has no direction: it is
    orthogonal to the other model's, so SLERP gives sin(t pi/2) b, as mergekit's normalise
    (which leaves a vector of norm <= eps as it is) makes it, not (1 - t) 0 + t b."""
    other = torch.randn(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    tensors = [torch.zeros(6, 5, dtype=torch.float64), other]
    got = _poise(tensors, "slerp", t=0.5)
    assert torch.allclose(got, _mergekit(tensors, "slerp", t=0.5), atol=1e-12, rtol=0)
    assert torch.allclose(got, math.sin(math.pi / 4) * other, atol=1e-12, rtol=0)


def test_nuslerp_weights_of_one_sign_give_the_same_t() -> None:
    """t = w_1 / (w_0 + w_1): negative weights (-1, -3) are the positive (1, 3), t = 3/4."""
    a, b, c = _inputs(5, n=2)
    merge = get_method("nuslerp")
    negative = merge([b, c], a, weight=[-1.0, -3.0])
    assert torch.allclose(negative, merge([b, c], a, weight=[1.0, 3.0]), atol=1e-12, rtol=0)
    assert not torch.allclose(negative, merge([b, c], a, weight=[1.0, 1.0]))


def test_model_stock_keeps_the_base_where_the_updates_oppose() -> None:
    """Eq. 8's ratio T cos / (1 + (T - 1) cos) has no value where 1 + (T - 1) cos is 0: two
    updates in opposite directions (cos = -1) of different sizes keep the base, not their
    average (which is base - delta / 2 here)."""
    base = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    delta = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = get_method("model_stock")([base + delta, base - 2 * delta], base)
    assert torch.allclose(got, base, atol=1e-12, rtol=0)
