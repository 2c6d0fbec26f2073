"""Singular-vector merging: TSV-M and RESM (R-TSVM).

Shapes: ``tensors`` is T tensors ``[m, n]`` (or any shape for non-matrix weights), ``base`` the
same; ``delta_t = w_t (tensors[t] - base)`` (``w_t = weight[t]``, default 1); ``k = min(m, n)``.

**TSV-M** (Task Singular Vectors: Merge; Gargiulo et al., CVPR 2025, arXiv 2412.00081, sec. 4 and
the authors' code github.com/AntoAndGar/task_singular_vectors, ``src/utils/TSVM_utils.py``,
``compute_and_sum_svd_mem_reduction``):

    delta_t = U_t S_t V_t^T                        # thin SVD, per task
    r       = int(k * (1 / T))                     # each task keeps its first r singular triplets
    U = [U_1[:, :r] | ... | U_T[:, :r]]            # [m, T r]
    S = diag(S_1[:r], ..., S_T[:r])                # [T r, T r]
    V = [V_1[:, :r] | ... | V_T[:, :r]]            # [n, T r]
    U_perp = polar(U), V_perp = polar(V)           # polar(A) = P Q^T for A = P Sigma Q^T
    merged = U_perp S V_perp^T                     # [m, n]
    theta  = base + alpha * merged

Weights that are not matrices (biases, norms) are averaged: ``merged = mean_t delta_t``.
``r`` is computed as the authors' code computes it (``int(s.shape[0] * (1 / T))``; the same as
``int(k / T)`` for every k < 5000 and T < 30). A matrix with ``k < T`` (a reward model's
``[1, hidden]`` score head merged from two models) keeps no direction and stays at the base, as
in the authors' code; poise logs a warning naming its shape. Sources and where they differ:

- The authors' code and FusionBench's port of it (github.com/tanganke/fusion_bench,
  ``fusion_bench/method/task_singular_vector/utils/TSVM_utils.py``) compute the same merge;
  tests/merge/test_singular.py transcribes it (zero-padded stacks, SVD-based polar factors) and
  poise equals it to 1e-10 in float64. The padding does not matter: the polar factor of the
  padded stack agrees with the unpadded one on the columns with non-zero singular values.
- ``weight``: the authors have no per-task weight; FusionBench's ``alpha`` given as a list
  scales each task vector before the SVD, which is what ``weight`` does (all ones is the
  authors' method).
- ``alpha``: FusionBench's default is 1 (no scaling), poise's too. The authors' ``main.py``
  picks alpha on validation data from 0.1, 0.2, ..., 3.0 (``np.linspace(0, 3, 31)[1:]`` in
  ``src/eval/eval.py``) unless ``specify_lambda`` is set: alpha is a tuned parameter, not
  fixed at 1.
- Rank below ``r``: poise leaves out a task vector's directions of (numerically) zero singular
  value (:func:`truncated_svd`); both codes stack them, although they are arbitrary and rotate
  the other tasks' directions through the polar factors. On full-rank task vectors (ordinary
  fine-tuning) the results agree; on a zero or low-rank update (a LoRA's) they differ.

``svd="randomized"`` replaces each per-task SVD by ``torch.svd_lowrank`` with ``r + oversample``
columns and ``niter`` power iterations (Halko et al., arXiv 0909.4061): only the first r triplets
are needed, so this is cheaper on wide layers, at an error the benchmark states.

**RESM** (Reweighting Enhanced task Singular Merging, called R-TSVM, "Reweighting-enhanced Task
Singular Vector Merging", in v1; Yang et al., arXiv 2502.06876) is TSV-M with two additions.
What its sources say of them is only this: "outlier weighting and sparsity-aware rank selection
strategies to address the challenges of preference noise accumulation and layer sparsity
adaptation" (v3 abstract), "outlier-aware parameter weighting and sparsity-adaptive rank
selection strategies adapted to the heavy-tailed parameter distribution and sparsity for LLMs"
(v1 abstract). The authors release merged models ("We release our models through
3H_Merging"); the paper's equations and any implementation of theirs were not available to
check against, so each formula below is **poise's choice**, behind a parameter, and turning
both off gives TSV-M exactly:

1. Outlier weighting (``outlier_weighting="huber"``): each task vector is reweighted entry-wise with
   Huber weights ``w_ij = min(1, c * sigma_t / |delta_t,ij|)``, ``sigma_t = 1.4826 * median|delta_t|``
   over the entries that changed (the MAD scale of a zero-centred vector; unchanged parameters
   say nothing about the update's scale; for an even count ``torch.median``'s lower median),
   ``c = outlier_threshold``; i.e. entries beyond ``c sigma_t`` are shrunk to ``+-c sigma_t``.
   ``"none"`` turns it off.
2. Rank selection (``rank_selection="energy"``): task t keeps the smallest rank whose singular values
   hold an ``energy`` share of ``||delta_t||_F^2``, capped at TSV-M's ``int(k/T)``, so a layer whose
   update is spectrally sparse (its energy in few directions) takes fewer directions. The
   abstracts' "sparsity" may instead mean the share of (near-)zero entries of a layer's update,
   which this rule does not measure: a dense update of low rank takes few directions here.
   ``"uniform"`` is TSV-M's ``int(k/T)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch

from poise.errors import PoiseError
from poise.merge.methods import merge_method

log = logging.getLogger(__name__)

SvdKind = Literal["exact", "randomized"]
MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD -> standard deviation for a normal distribution


def polar_factor(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor ``P Q^T`` of ``a = P Sigma Q^T``, ``[m, p]`` -> ``[m, p]``: the
    matrix with orthonormal columns nearest to ``a`` in Frobenius norm."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def truncated_svd(
    delta: torch.Tensor, rank: int, *, svd: SvdKind = "exact", oversample: int = 8, niter: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``rank`` singular triplets of ``delta`` ``[m, n]``: ``U [m, r]``,
    ``S [r]``, ``V [n, r]`` (exact, or randomised with ``rank + oversample`` columns), less those
    whose singular value is numerically 0 (``r <= rank``)."""
    if svd == "exact":
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        u, s, v = u[:, :rank], s[:rank], vh[:rank].mT
    else:
        q = min(rank + oversample, *delta.shape)
        u, s, v = torch.svd_lowrank(delta, q=q, niter=niter)
        u, s, v = u[:, :rank], s[:rank], v[:, :rank]
    # Directions of (numerically) zero singular values are arbitrary, whatever the SVD routine
    # returned: they carry none of delta, yet in the stack they would rotate the other tasks'
    # directions through the polar factors. A zero task vector (a module one model left
    # unchanged) then keeps nothing. Tolerance: numpy's matrix_rank default.
    if s.numel():
        tolerance = s[0] * max(delta.shape) * torch.finfo(s.dtype).eps
        kept = int((s > tolerance).sum())
        u, s, v = u[:, :kept], s[:kept], v[:, :kept]
    return u, s, v


def tsv_combine(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Stack per-task triplets ``(U_t [m, r_t], S_t [r_t], V_t [n, r_t])`` and orthogonalise:
    ``polar(U) diag(S) polar(V)^T``, ``[m, n]``."""
    u = torch.cat([f[0] for f in factors], dim=1)  # [m, R]
    s = torch.cat([f[1] for f in factors])  # [R]
    v = torch.cat([f[2] for f in factors], dim=1)  # [n, R]
    if s.numel() == 0:
        return torch.zeros(u.shape[0], v.shape[0], dtype=u.dtype, device=u.device)
    return (polar_factor(u) * s) @ polar_factor(v).mT


def huber_reweight(delta: torch.Tensor, threshold: float) -> torch.Tensor:
    """RESM's outlier weighting (poise's choice, see the module docstring): entries beyond
    ``threshold * 1.4826 * median|delta|`` are shrunk to that bound, sign kept. ``[*shape]``.
    The median is over the entries that changed (non-zero): unchanged parameters say nothing
    about the update's scale, and counted in, a sparse update's scale fell to 0 (at half
    unchanged), erasing it, and shrank steeply as the unchanged share grew toward half. A dense
    update (no exact zeros) has the plain median."""
    magnitude = delta.abs().reshape(-1)  # [N]
    changed = magnitude[magnitude > 0]  # [M <= N]
    if not changed.numel():
        return delta
    bound = threshold * (MAD_TO_SIGMA * changed.median())
    return delta.clamp(min=-bound, max=bound)


def energy_rank(singular_values: torch.Tensor, total_energy: float, energy: float) -> int:
    """The smallest r with ``sum_{i<r} s_i^2 >= energy * total_energy`` (``len(s)`` when the
    given values never reach it): RESM's rank selection (poise's choice)."""
    cumulative = torch.cumsum(singular_values.double() ** 2, dim=0)
    reached = torch.nonzero(cumulative >= energy * total_energy * (1 - 1e-12))
    return int(reached[0].item()) + 1 if reached.numel() else int(singular_values.numel())


def _rank_cap(shape: torch.Size, n_tasks: int, rank_fraction: float | None) -> int:
    k = min(shape)
    fraction = 1.0 / n_tasks if rank_fraction is None else rank_fraction
    rank = int(k * fraction)
    if rank * n_tasks > k:
        raise PoiseError(
            f"TSV rank_fraction {rank_fraction} keeps {rank} x {n_tasks} tasks > {k} directions "
            f"of a {tuple(shape)} matrix; use rank_fraction <= 1/{n_tasks}"
        )
    if rank == 0:
        # as in the authors' code, where int(k / T) is 0 for a matrix narrower than the number
        # of tasks: said, since the merge keeps such a matrix at the base whatever the tasks did
        log.warning(
            "TSV: a %s matrix keeps int(%d x %g) = 0 directions per task for %d tasks: the "
            "merge leaves it at the base",
            tuple(shape),
            k,
            fraction,
            n_tasks,
        )
    return rank


def _deltas(
    tensors: Sequence[torch.Tensor], base: torch.Tensor, weight: Sequence[float] | None
) -> list[torch.Tensor]:
    dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    base_w = base.to(dtype)
    weights = [1.0] * len(tensors) if weight is None else [float(w) for w in weight]
    return [w * (x.to(dtype) - base_w) for x, w in zip(tensors, weights, strict=True)]


def _finish(base: torch.Tensor, merged: torch.Tensor, alpha: float) -> torch.Tensor:
    return (base.to(merged.dtype) + alpha * merged).to(base.dtype)


@merge_method(
    "tsv_m",
    reference="arXiv 2412.00081; github.com/AntoAndGar/task_singular_vectors",
    per_model=("weight",),
)
def tsv_m(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float] | None = None,
    alpha: float = 1.0,
    rank_fraction: float | None = None,
    svd: SvdKind = "exact",
    oversample: int = 8,
    niter: int = 2,
    seed: int = 0,
) -> torch.Tensor:
    """TSV-M: per-task low-rank SVD, stacked and orthogonalised (see the module docstring).

    ``weight`` (one per model, default 1) scales each task vector before its SVD, as
    FusionBench's list-valued ``alpha`` does (all ones is the authors' method);
    ``rank_fraction`` defaults to ``1/T``; ``alpha`` scales the merged update (default 1).
    """
    deltas = _deltas(tensors, base, weight)
    if base.dim() != 2:
        return _finish(base, torch.stack(deltas).mean(dim=0), alpha)
    rank = _rank_cap(base.shape, len(deltas), rank_fraction)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        factors = [
            truncated_svd(d, rank, svd=svd, oversample=oversample, niter=niter) for d in deltas
        ]
    return _finish(base, tsv_combine(factors), alpha)


@merge_method(
    "resm",
    reference="arXiv 2502.06876 (RESM, formerly R-TSVM)",
    per_model=("weight",),
)
def resm(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float] | None = None,
    alpha: float = 1.0,
    outlier_weighting: Literal["huber", "none"] = "huber",
    outlier_threshold: float = 3.0,
    rank_selection: Literal["energy", "uniform"] = "energy",
    energy: float = 0.9,
    rank_fraction: float | None = None,
    svd: SvdKind = "exact",
    oversample: int = 8,
    niter: int = 2,
    seed: int = 0,
) -> torch.Tensor:
    """RESM: TSV-M on outlier-reweighted task vectors with per-task adaptive ranks.

    The reweighting and the rank rule are poise's choices for the two components arXiv
    2502.06876 names, not checked against its equations (module docstring).
    """
    deltas = _deltas(tensors, base, weight)
    if outlier_weighting == "huber":
        deltas = [huber_reweight(d, outlier_threshold) for d in deltas]
    if base.dim() != 2:
        return _finish(base, torch.stack(deltas).mean(dim=0), alpha)
    cap = _rank_cap(base.shape, len(deltas), rank_fraction)
    factors = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for d in deltas:
            u, s, v = truncated_svd(d, cap, svd=svd, oversample=oversample, niter=niter)
            if rank_selection == "energy":
                r = min(cap, energy_rank(s, float(d.double().pow(2).sum()), energy))
                u, s, v = u[:, :r], s[:r], v[:, :r]
            factors.append((u, s, v))
    return _finish(base, tsv_combine(factors), alpha)
