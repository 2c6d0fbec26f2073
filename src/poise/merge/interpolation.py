"""Geometric interpolation between models: SLERP and Model Stock.

Shapes: ``tensors`` is T tensors ``[*shape]``, ``base`` ``[*shape]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from poise.merge.methods import merge_method, work_dtype


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
