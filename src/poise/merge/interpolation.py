"""Geometric interpolation between models: SLERP, NuSLERP and Model Stock.

Shapes: ``tensors`` is T tensors ``[*shape]``, ``base`` ``[*shape]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from poise.errors import PoiseError
from poise.merge.methods import merge_method, work_dtype

#: NuSLERP treats two vectors as colinear (and interpolates linearly) where
#: ``1 - cos^2 <= NUSLERP_EPS^2`` (mergekit 0.1.5's ``nuslerp(eps=1e-8)``) ...
NUSLERP_EPS = 1e-8
#: ... or within this many machine epsilons of the compute dtype (float32: 7.6e-6), the rounding
#: of ``cos`` for exactly colinear vectors (at most 4 eps measured on up to 2^20 entries)
NUSLERP_ROUNDING = 64
#: the floor of the norms NuSLERP divides by (mergekit's ``_normalize(eps=1e-7)``)
NUSLERP_NORM_EPS = 1e-7
#: below this magnitude the sum of NuSLERP's two weights counts as 0 and ``t`` is 1/2
NUSLERP_WEIGHT_EPS = 1e-6


@merge_method(
    "slerp",
    reference="Shoemake 1985, doi:10.1145/325165.325242",
    base="required",
    min_models=1,
    max_models=1,
)
def slerp(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    t: float,
    dot_threshold: float = 0.9995,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Spherical interpolation from the base (t=0) to the other model (t=1).

    With ``a = base``, ``b = tensors[0]`` flattened and ``cos(omega) = <a/|a|, b/|b|>``::

        slerp(t) = sin((1-t) omega)/sin(omega) * a + sin(t omega)/sin(omega) * b

    on the raw (unnormalised) tensors, as mergekit does; nearly collinear or antipodal pairs
    (``|cos(omega)| > dot_threshold``) fall back to linear interpolation ``(1-t) a + t b``.
    """
    (other,) = tensors
    dtype = work_dtype(base)
    a = base.to(dtype).reshape(-1)  # [N]
    b = other.to(dtype).reshape(-1)  # [N]
    norm_a = float(torch.linalg.vector_norm(a))
    norm_b = float(torch.linalg.vector_norm(b))
    norm_a = norm_a if norm_a > eps else 1.0
    norm_b = norm_b if norm_b > eps else 1.0
    dot = max(-1.0, min(1.0, float(torch.dot(a / norm_a, b / norm_b))))
    if abs(dot) > dot_threshold:
        coef_a, coef_b = 1 - t, t
    else:
        omega = math.acos(dot)
        sin_omega = math.sin(omega)
        coef_a = math.sin((1 - t) * omega) / sin_omega
        coef_b = math.sin(t * omega) / sin_omega
    return (coef_a * a + coef_b * b).reshape(base.shape).to(base.dtype)


@merge_method(
    "nuslerp",
    reference="mergekit 0.1.5 nuslerp; SLERP: Shoemake 1985, doi:10.1145/325165.325242",
    per_model=("weight",),
    base="optional",
    min_models=2,
    max_models=2,
    drop_listed_base=True,
)
def nuslerp(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    *,
    weight: Sequence[float],
    nuslerp_flatten: bool = True,
    nuslerp_row_wise: bool = False,
) -> torch.Tensor:
    """NuSLERP: spherical interpolation between two models (or their task vectors) by weight.

    mergekit 0.1.5's ``nuslerp`` method (``mergekit/merge_methods/nuslerp.py``), with SLERP
    (Shoemake 1985, doi:10.1145/325165.325242) applied to vectors cut from the tensors.
    ``tensors`` is the two models' ``[*shape]``; ``weight`` ``(w_0, w_1)``; ``base`` ``[*shape]``
    or None. With ``t = w_1 / (w_0 + w_1)`` (1/2 where ``|w_0 + w_1| < 1e-6``)::

        v_i = tensors[i] - base             # [*shape]; v_i = tensors[i] without a base
        cos(omega) = <v_0/|v_0|, v_1/|v_1|> # per vector, norms floored at 1e-7
        s(t) = sin((1-t) omega)/sin(omega) v_0 + sin(t omega)/sin(omega) v_1
        theta = base + s(t)                 # theta = s(t) without a base

    The vectors: ``nuslerp_flatten`` (default) treats the whole tensor as one vector ``[N]``;
    otherwise each slice along the last dimension is one (``W[i, :]`` of a ``[rows, cols]``
    matrix: one angle per row) or, with ``nuslerp_row_wise``, each slice along the first
    dimension (``W[:, j]``: one angle per column; mergekit's documentation calls these row
    vectors). ``nuslerp_row_wise`` has no effect while ``nuslerp_flatten`` is true. Colinear
    vectors (parallel or antipodal) are interpolated linearly, ``(1-t) v_0 + t v_1``: mergekit's
    test is ``1 - cos^2 <= 1e-16``, poise's ``1 - cos^2 <= max(1e-16, 64 eps)`` with ``eps`` the
    compute dtype's machine epsilon. In float32 (and float64) ``1e-16`` is below the rounding of
    ``cos`` itself, so mergekit sends exactly antipodal vectors (``v_1 = -2 v_0``: a task vector
    and its negation) to the spherical branch about one time in three, dividing by
    ``sin(omega) ~ 3e-4`` (results up to ~2750 times too large); poise interpolates them
    linearly. The two differ only within 64 rounding steps of colinear, where SLERP and linear
    interpolation agree to ~1e-6 for parallel vectors. A zero vector is orthogonal to every
    other (its ``cos`` is 0). Weights of opposite signs give ``t`` outside [0, 1]: SLERP
    extrapolates along the great circle.

    Computed in float32 (float64 stays float64), in mergekit's order of operations, so float32
    inputs give mergekit's result (outside the colinear case above); returned in the dtype of
    ``base`` (of ``tensors[0]`` without a base).
    """
    if len(tensors) != 2 or len(weight) != 2:
        raise PoiseError(
            f"nuslerp merges exactly 2 models with one weight each, got {len(tensors)} model(s) "
            f"and {len(weight)} weight(s)"
        )
    w0, w1 = (float(w) for w in weight)
    total = w0 + w1
    t = 0.5 if abs(total) < NUSLERP_WEIGHT_EPS else w1 / total
    anchor = base if base is not None else tensors[0]
    dtype = work_dtype(anchor)
    v0, v1 = (x.to(dtype) for x in tensors)  # [*shape] each
    dim = 0 if nuslerp_row_wise else -1
    if base is None:
        merged = _nuslerp(t, v0, v1, dim=dim, flatten=bool(nuslerp_flatten))
    else:
        b = base.to(dtype)
        merged = b + _nuslerp(t, v0 - b, v1 - b, dim=dim, flatten=bool(nuslerp_flatten))
    return merged.to(anchor.dtype)


def _nuslerp(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, dim: int, flatten: bool
) -> torch.Tensor:
    """SLERP of ``v0`` and ``v1`` (``[*shape]`` each) by ``t``, one angle per vector: the whole
    tensor (``flatten``) or each slice along ``dim``; returns ``[*shape]``. mergekit 0.1.5's
    ``nuslerp`` function, operation for operation, but for the colinear tolerance (see
    :func:`nuslerp`)."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)  # [N]
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)  # the vectors along the last dim
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=NUSLERP_NORM_EPS)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=NUSLERP_NORM_EPS)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)  # [..., 1]
    tolerance = max(NUSLERP_EPS**2, NUSLERP_ROUNDING * torch.finfo(cos.dtype).eps)
    colinear = (1 - cos.square()) <= tolerance
    # colinear vectors take the linear branch; their angle is set to pi/2 so the spherical
    # branch stays finite there
    omega = torch.acos(torch.where(colinear, 0, cos))
    sin_omega = torch.sin(omega)
    spherical = (torch.sin((1 - t) * omega) * v0 + torch.sin(t * omega) * v1) / sin_omega
    result = torch.where(colinear, (1 - t) * v0 + t * v1, spherical)
    if dim != -1 and not flatten:
        result = result.transpose(dim, -1)
    return result.reshape(shape)


@merge_method(
    "model_stock",
    reference="arXiv 2403.19522",
    base="required",
    min_models=2,
)
def model_stock(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    filter_wise: bool = False,
) -> torch.Tensor:
    """Model Stock: move from the base toward the models' average by the ratio of eq. (8).

    With ``delta_t = theta_t - base`` (flattened, or per row when ``filter_wise``) and
    ``cos`` the mean pairwise cosine between the ``delta_t``::

        t = T cos / (1 + (T-1) cos)           # arXiv 2403.19522 eq. 8 for T models
        theta = t * mean_t theta_t + (1 - t) * base

    Where ``1 + (T-1) cos`` vanishes (opposed updates) the base is kept.
    """
    dtype = work_dtype(base)
    w0 = base.to(dtype)
    ws = [x.to(dtype) for x in tensors]
    if filter_wise:
        rows0 = w0.unsqueeze(0) if w0.dim() == 1 else w0  # [rows, ...]
        rows = [w.unsqueeze(0) if w.dim() == 1 else w for w in ws]
    else:
        rows0 = w0.reshape(-1)  # [N]
        rows = [w.reshape(-1) for w in ws]
    offsets = [r - rows0 for r in rows]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)  # [rows, 1] or [1]
    count = len(ws)
    denominator = 1 + (count - 1) * cos
    singular = denominator.abs() < 1e-6
    ratio = torch.where(
        singular,
        torch.zeros_like(cos),
        count * cos / torch.where(singular, torch.ones_like(denominator), denominator),
    )
    average = sum(rows) / count
    assert isinstance(average, torch.Tensor)
    return (ratio * average + (1 - ratio) * rows0).reshape(base.shape).to(base.dtype)
