"""Sparsification of one task vector: which entries of ``delta = theta_t - theta_base`` to keep.

Every function takes ``delta`` ``[*shape]`` (float32 or float64) and returns a tensor of the same
shape: the kept entries, optionally rescaled, the rest zero.

Ranking by magnitude (``magnitude``, ``magnitude_outliers``, ``della_magprune``) follows mergekit
0.1.5 (``mergekit/sparsify.py``), which subtracts in the checkpoints' dtype and ranks those
differences. With ``rank_dtype`` (bfloat16 or float16: the inputs' dtype) the entries are ranked
by the magnitudes of ``delta`` rounded to it, as mergekit's ``entry.tensor - base`` is; the kept
entries keep their exact float32 values. Rounding to bfloat16's 8 significant bits makes many
magnitudes equal, and which of the entries tied at the threshold are kept is then decided by the
order of ``torch.argsort`` on the float32 magnitudes (``descending=True``, the default unstable
sort), the call mergekit makes on CPU, where poise merges: ``torch.topk`` keeps other tied entries.
Ranked in float32 or float64 (no ``rank_dtype``), poise keeps ``topk``'s tied entries: ties are
rare there, and the full sort costs more than all of mergekit's merge (``_magnitude_mask``).
A float64 ``delta`` is ranked in float64 (mergekit rounds it to float32 for the sort).

- ``magnitude`` (TIES "trim", arXiv 2306.01708 sec. 3): keep the ``k = max(1, int(density*N))``
  entries of largest ``|delta|``, per tensor, as mergekit 0.1.5 does. The TIES authors' code
  (github.com/prateeky2806/ties-merging, ``src/utils/merge_utils.py``, ``topk_values_mask``)
  trims each model's whole flattened task vector at once and keeps ``|delta| >=`` its
  ``(d - int(d*K))``-th smallest magnitude: ``int(d*K) + 1`` entries, and every entry tied at
  the threshold. poise keeps mergekit's per-tensor count (tests/merge/test_methods.py checks
  the rest of the authors' TIES on one tensor with the counts made equal).
- ``random`` (DARE, arXiv 2311.03099 eq. 2): keep each entry independently with probability
  ``density``; the authors' ``mask_input_with_mask_rate`` (github.com/yule-BUAA/MergeLM) drops
  with probability ``mask_rate = 1 - density`` and divides by ``1 - mask_rate``: the same rule.
- ``magnitude_outliers`` (Model Breadcrumbs, arXiv 2312.06795 sec. 3): drop the top ``gamma``
  share by magnitude (the outliers) and then the smallest entries, keeping ``int(density*N)``.
- ``della_magprune`` (DELLA MagPrune, arXiv 2406.11617 sec. 3.1): within each row, keep entry i with
  probability ``p_i = density - epsilon + 2*epsilon*rank_i/(n-1)``, ``rank_i`` the entry's
  ascending-magnitude rank (0..n-1), so larger entries are kept more often and the mean keep
  probability is ``density``. This is the range the authors' released code draws from
  (declare-lab/della, ``rank_magnitude`` in its mergekit fork: ranks normalised to [0, 1],
  ``(density - epsilon) + 2 * epsilon * rank``) and mergekit 0.1.5's ``della``, which
  tests/merge/test_methods.py matches mask for mask; ``epsilon`` is the half-width of the
  range of keep probabilities.

Rescaling of the kept entries (``rescale=True``):

- ``"inverse_probability"`` (the papers; poise's default): divide each kept entry by its keep
  probability: ``1/density`` for DARE (arXiv 2311.03099 eq. 2), ``1/p_i`` for DELLA
  (arXiv 2406.11617 eq. 3), ``N/k`` (the kept share) for the deterministic rules. The sparsified
  vector is then unbiased for the random rules: ``E[out] = delta``.
- ``"l1"`` (mergekit 0.1.5's rule): scale the kept entries by ``||delta||_1 / ||kept||_1`` so the
  L1 norm is preserved exactly.
"""

from __future__ import annotations

from typing import Literal

import torch

Sparsification = Literal["magnitude", "random", "magnitude_outliers", "della_magprune"]
RescaleNorm = Literal["inverse_probability", "l1"]

_EPS = 1e-7
#: the dtypes whose rounded differences set the magnitude ranking (``rank_dtype``)
HALF_DTYPES = (torch.bfloat16, torch.float16)


def sparsify(
    delta: torch.Tensor,
    method: Sparsification,
    *,
    density: float,
    rescale: bool = False,
    rescale_norm: RescaleNorm = "inverse_probability",
    gamma: float = 0.01,
    epsilon: float = 0.15,
    generator: torch.Generator | None = None,
    rank_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Sparsify ``delta`` ``[*shape]`` by ``method`` (see the module docstring).

    ``rank_dtype``: rank magnitudes as ``delta`` rounded to this dtype (``None``: as given).
    """
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    if method == "magnitude":
        mask = _magnitude_mask(delta, density, rank_dtype)
        keep_prob: torch.Tensor | float = mask.sum().item() / delta.numel()
    elif method == "random":
        mask = torch.bernoulli(torch.full_like(delta, density), generator=generator)
        keep_prob = density
    elif method == "magnitude_outliers":
        mask = _outlier_mask(delta, density, gamma, rank_dtype)
        keep_prob = max(mask.sum().item(), 1.0) / delta.numel()
    elif method == "della_magprune":
        probs = della_keep_probabilities(delta, density, epsilon, rank_dtype=rank_dtype)
        mask = torch.bernoulli(probs, generator=generator)
        keep_prob = probs
    else:  # pragma: no cover - the Literal names every case
        raise ValueError(f"unknown sparsification {method!r}")
    kept = delta * mask
    if not rescale:
        return kept
    if rescale_norm == "l1":
        before = delta.abs().sum()
        after = kept.abs().sum()
        if before < _EPS or after < _EPS:  # mergekit leaves near-empty tensors unscaled
            return kept
        return kept * (before / after)
    return kept / keep_prob


def _magnitudes(delta: torch.Tensor, rank_dtype: torch.dtype | None) -> torch.Tensor:
    """``|delta|`` ``[*shape]`` as ranked: rounded to ``rank_dtype`` first (a half type), then
    float32 for the sort, as mergekit sorts on CPU; float32 and float64 as given."""
    if rank_dtype in HALF_DTYPES and delta.dtype not in HALF_DTYPES:
        return delta.to(rank_dtype).abs().float()
    return delta.abs()


def _magnitude_mask(
    delta: torch.Tensor, density: float, rank_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """1 at the ``k = max(1, int(density*N))`` entries of largest ranked magnitude, ``[*shape]``.

    Ranked in half precision (``rank_dtype`` bfloat16 / float16), ties at the threshold go by
    ``torch.argsort``'s order, mergekit's ``magnitude``: rounding makes thousands of entries of a
    matrix tie there. Ranked in float32 / float64, ``torch.topk`` picks among tied entries: the
    full sort that mergekit's choice needs costs more time and memory than all of mergekit's
    TIES merge on a 134M model (`benchmarks/merge_throughput.py`: 1.10x its time, 1.09x its
    peak memory, against 0.4x and 0.8x with ``topk``), for a choice among equal magnitudes."""
    n = delta.numel()
    k = max(1, int(density * n))
    flat = _magnitudes(delta, rank_dtype).reshape(-1)  # [N]
    if rank_dtype not in HALF_DTYPES:
        mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
        mask[torch.topk(flat, k, sorted=False).indices] = 1
        return mask.reshape(delta.shape)
    # the k-th largest magnitude; where exactly k entries reach it the kept set is unique and a
    # selection (O(N)) finds it, else the full sort decides which tied entries are kept
    threshold = torch.kthvalue(flat, n - k + 1).values
    above = flat >= threshold  # [N] bool
    if int(above.sum()) == k:
        return above.to(delta.dtype).reshape(delta.shape)
    top = torch.argsort(flat, descending=True)[:k]  # [k]
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[top] = 1
    return mask.reshape(delta.shape)


def _outlier_mask(
    delta: torch.Tensor, density: float, gamma: float, rank_dtype: torch.dtype | None = None
) -> torch.Tensor:
    n = delta.numel()
    keep = int(density * n)
    n_top = int(gamma * n)
    # Fewer outliers are dropped when the density asks for more entries than remain.
    n_bottom = max(0, n - keep - n_top)
    order = torch.argsort(_magnitudes(delta, rank_dtype).reshape(-1))  # ascending magnitude, [N]
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[n_bottom : n_bottom + keep]] = 1
    return mask.reshape(delta.shape)


def della_keep_probabilities(
    delta: torch.Tensor,
    density: float,
    epsilon: float,
    *,
    rank_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Per-entry keep probabilities of DELLA's MagPrune, ``[*shape]``, rows ranked separately
    (a 1-D tensor is one row); ``rank_dtype`` as for :func:`sparsify`."""
    if not (density - epsilon > 0 and density + epsilon < 1):
        raise ValueError(
            f"DELLA needs 0 < density - epsilon and density + epsilon < 1 "
            f"(density={density}, epsilon={epsilon})"
        )
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    n = rows.shape[1]
    magnitudes = _magnitudes(rows, rank_dtype)  # [rows, n]
    ranks = torch.argsort(torch.argsort(magnitudes, dim=1), dim=1).to(delta.dtype)  # 0..n-1
    rank_norm = ranks / (n - 1) if n > 1 else torch.full_like(ranks, 0.5)
    probs = (density - epsilon) + 2 * epsilon * rank_norm
    return probs.reshape(delta.shape)
