"""Linear averaging and the task-arithmetic family, as one generalised function.

Shapes: ``tensors`` is T tensors ``[*shape]``, ``base`` is ``[*shape]``; the task vectors are
``delta_t = tensors[t] - base`` (stacked ``[T, *shape]``).

One function, :func:`generalized_task_arithmetic`, configured by a *sparsification* (which entries of
each ``delta_t`` survive, :mod:`poise.merge.sparsify`) and a *consensus* (which surviving entries
agree on a sign), covers task arithmetic, TIES, DARE, Model Breadcrumbs and DELLA:

    delta_hat_t = sparsify(delta_t)                                   # [*shape] each
    elected     = sign(sum_t s_t * delta_hat_t)                       # [*shape]   (consensus "sum")
    m_t         = [sign(o_t * delta_hat_t) == elected]                # [*shape]   (1 without consensus)
    merged      = sum_t w_t m_t delta_hat_t / (sum_t w_t m_t  if normalize else 1)
    theta       = base + lambda * merged                              # task arithmetic eq. 1,
                                                                      # arXiv 2212.04089

Sign election. TIES (arXiv 2306.01708, sec. 3, "elect") elects on the trimmed task vectors
themselves: ``s_t = 1``, ``o_t = 1``. mergekit 0.1.5 elects on the *weighted* vectors,
``s_t = w_t``, and matches each task on the sign of its weighted vector, ``o_t = sign(w_t)`` (a
negative weight, task negation, flips the sign it votes and agrees with; a weight of 0 agrees
with nothing). ``sign_election="paper"`` (the default) is the paper's rule, ``"weighted"`` is
mergekit's; the two agree when all weights are equal and positive. Consensus ``"count"`` elects
by the majority of signs, ``sign(sum_t sign(o_t delta_hat_t))``. A tie (a sum of exactly 0)
elects ``+``, as mergekit does; the TIES authors' code (``resolve_zero_signs(..., "majority")``
in github.com/prateeky2806/ties-merging) gives it the sign of the whole vector's sum of elected
signs instead. The two differ only where surviving entries cancel exactly; where none survive
the merged entry is 0 either way. The paper's disjoint mean (the authors' ``disjoint_merge``,
``dis-mean``: the agreeing entries' sum over their count, at least 1) is ``normalize=True``
with equal weights.

Half-precision inputs. mergekit 0.1.5 computes in its config's ``dtype``, else the checkpoints'
dtype (with ``dtype: float32`` poise's executor hands a method float32 inputs, and nothing below
applies): its task vectors are
``delta_t`` rounded to bfloat16 (or float16), whose 8 (11) significant bits make many magnitudes
equal and make votes cancel exactly. Where every input (``base`` and ``tensors``) is bfloat16 or
float16, poise takes its discrete decisions on those rounded vectors, so they are mergekit's:
the magnitude ranking of the trims (TIES, breadcrumbs, DELLA; ties at the threshold in
mergekit's ``argsort`` order, :mod:`poise.merge.sparsify`) and the ``sum`` election, from
``sum_t h(h(s_t) h(delta_hat_t))`` with ``h`` the rounding (an exact 0 elects ``+``). The values
merged stay the exact ``delta_hat_t`` in float32, so the result differs from mergekit's only by
mergekit's rounding in half precision. float32 and float64 inputs are unchanged by this.

Rescaling after random dropping: ``rescale_norm="inverse_probability"`` (the DARE and DELLA papers,
the default) or ``"l1"`` (mergekit 0.1.5); see :mod:`poise.merge.sparsify`.

The normalising divisor ``sum_t w_t m_t`` is 0 where no task survives (all masked or outvoted) and
may be 0 or nearly so where weights of both signs agree (task negation). Where
``|divisor| < NORMALIZE_EPS`` (1e-8) it is replaced by 1, so ``merged`` there is the plain
weighted sum (0 where nothing survives). This is the rule mergekit 0.1.5 applies to its merges
without consensus (its ``GeneralizedTaskArithmeticMerge``: a weight total whose magnitude is
below 1e-8 becomes 1); with consensus it replaces only divisors that are exactly 0. poise applies
the 1e-8 rule in both cases and sums the divisor in float64 from the weights as given: decimal
weights that cancel (0.4 + 0.3 - 0.7) sum to 6e-8 in float32, not 0, and dividing by that
residual would make merged weights of order 1e7. The two agree (to float32 rounding) wherever
the divisor is 0 or well above 1e-8.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Sequence
from typing import Literal

import torch

from poise.merge.methods import merge_method, work_dtype
from poise.merge.sparsify import HALF_DTYPES, RescaleNorm, Sparsification, sparsify

Consensus = Literal["sum", "count"]
SignElection = Literal["paper", "weighted"]


#: below this magnitude the normalising divisor (a sum of weights) counts as 0 and becomes 1
NORMALIZE_EPS = 1e-8
# DELLA's epsilon (the half-width of the keep probabilities) when a config gives none
DELLA_EPSILON = 0.15
#: breadcrumbs' share of the largest entries dropped, where a model gives no gamma (mergekit's)
BREADCRUMBS_GAMMA = 0.01
#: per-model options a model may leave out (mergekit's defaults): density 1 keeps every entry
PER_MODEL_DEFAULTS = {"density": 1.0, "gamma": BREADCRUMBS_GAMMA, "epsilon": DELLA_EPSILON}


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed: the run's ``seed`` mixed with the tensor's name, so a random merge is
    reproducible and independent of the order in which tensors are processed."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def generalized_task_arithmetic(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    sparsification: Sparsification | None = None,
    consensus: Consensus | None = None,
    normalize: bool = False,
    rescale: bool = False,
    rescale_norm: RescaleNorm = "inverse_probability",
    sign_election: SignElection = "paper",
    lambda_: float = 1.0,
    gamma: Sequence[float] | None = None,
    epsilon: Sequence[float] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Task arithmetic with optional sparsification and sign consensus (see the module docstring).

    ``weight``, ``density``, ``gamma``, ``epsilon``: one value per model (length T).
    Returns ``[*shape]`` in ``base``'s dtype.
    """
    n = len(tensors)
    if not n:
        return base
    dtype = work_dtype(base)
    base_w = base.to(dtype)
    generator = torch.Generator(device=base.device).manual_seed(seed) if sparsification else None
    deltas = torch.empty((n, *base.shape), dtype=dtype, device=base.device)  # [T, *shape]
    # half-precision inputs: masks and elected signs are decided, as mergekit does, on the task
    # vectors rounded to the inputs' dtype (see the module docstring); None: on the exact ones
    half = _half_dtype(base, tensors)
    for t, tensor in enumerate(tensors):
        delta = torch.sub(tensor.to(dtype), base_w, out=deltas[t])
        if sparsification is not None:
            delta = sparsify(
                delta,
                sparsification,
                density=1.0 if density is None else float(density[t]),
                rescale=rescale,
                rescale_norm=rescale_norm,
                gamma=BREADCRUMBS_GAMMA if gamma is None else float(gamma[t]),
                epsilon=DELLA_EPSILON if epsilon is None else float(epsilon[t]),
                generator=generator,
                rank_dtype=half,
            )
            deltas[t] = delta
    weights = [float(w) for w in weight]
    # Per-task loops keep the working set at deltas [T, *shape] plus a few [*shape] tensors.
    if consensus is not None:
        # the sign each task votes with and is matched on: its own (paper), or that of its
        # weighted vector w_t delta_t (mergekit), which a negative weight flips and 0 empties
        orient = [1.0] * n if sign_election != "weighted" else [_sign(w) for w in weights]
        votes = torch.zeros_like(base_w)  # [*shape]
        for t in range(n):
            if consensus == "count":
                votes.add_(deltas[t].sign(), alpha=orient[t])
            elif half is None and sign_election == "weighted":
                # w_t delta_t rounded to the working dtype, then summed task by task, as
                # mergekit's ``deltas.mul_(weights)`` and ``sum(dim=0)``: a fused a + w b
                # rounds once, and an exact cancellation then elects another sign
                votes.add_(deltas[t] * torch.tensor(weights[t], dtype=dtype))
            elif half is None:
                votes.add_(deltas[t])
            else:  # round_h(round_h(w_t) * round_h(delta_hat_t)), mergekit's weighted delta
                scale = weights[t] if sign_election == "weighted" else 1.0
                alpha = torch.tensor(scale, dtype=half, device=base.device)  # h(s_t)
                votes.add_(deltas[t].to(half) * alpha)  # the product rounded to ``half``
        positive = votes >= 0  # elected sign +1 (a tie elects +), else -1; [*shape] bool
        del votes
        merged = torch.zeros_like(base_w)
        # sum_t w_t m_t in float64: decimal weights that cancel leave a float32 residual (about
        # 6e-8) that escapes the 1e-8 guard, a float64 one (about 1e-16) does not
        divisor = torch.zeros_like(base_w, dtype=torch.float64) if normalize else None
        for t in range(n):
            if orient[t] == 0:
                continue  # sign(0 * delta_t) = 0 agrees with no elected sign
            oriented = deltas[t] if orient[t] > 0 else -deltas[t]
            # sign(o_t delta_t) == elected
            agree = torch.where(positive, oriented > 0, oriented < 0)
            merged.add_(deltas[t] * agree, alpha=weights[t])
            if divisor is not None:
                torch.add(divisor, agree, alpha=weights[t], out=divisor)
        if divisor is not None:
            # nothing survives (0) or weights of both signs cancel: the plain sum (module doc)
            divisor[divisor.abs() < NORMALIZE_EPS] = 1
            merged.div_(divisor)
    else:
        merged = torch.zeros_like(base_w)
        for t in range(n):
            merged.add_(deltas[t], alpha=weights[t])
        total = sum(weights)  # float64, in the same order as the consensus divisor
        if normalize and abs(total) >= NORMALIZE_EPS:
            merged.div_(total)
    return (base_w + lambda_ * merged).to(base.dtype)


def _half_dtype(base: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.dtype | None:
    """The inputs' common dtype where it is bfloat16 or float16, else None."""
    common = base.dtype
    for tensor in tensors:
        common = torch.promote_types(common, tensor.dtype)
    return common if common in HALF_DTYPES else None


def _sign(x: float) -> float:
    return 1.0 if x > 0 else -1.0 if x < 0 else 0.0


@merge_method(
    "linear",
    reference="arXiv 2203.05482 (model soups)",
    per_model=("weight",),
    base="optional",
)
def linear(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    *,
    weight: Sequence[float],
    normalize: bool = True,
) -> torch.Tensor:
    """Weighted average of the models: sum_t w_t theta_t / sum_t w_t (the base, if any, unused)."""
    first = tensors[0]
    dtype = work_dtype(first)
    out = torch.zeros_like(first, dtype=dtype)  # [*shape]
    for tensor, w in zip(tensors, weight, strict=True):
        out.add_(tensor.to(dtype), alpha=float(w))
    if normalize:
        out.div_(sum(float(w) for w in weight))
    return out.to(first.dtype)


def _register_variant(
    name: str,
    *,
    reference: str,
    help: str,
    sparsification: Sparsification | None,
    consensus: Consensus | None,
    normalize: bool,
    rescale: bool,
) -> None:
    """Register one configuration of :func:`generalized_task_arithmetic` under ``name``; the
    method's defaults (sparsification, consensus, normalize, rescale) are its only difference."""
    per_model: tuple[str, ...] = ("weight",)
    if sparsification is not None:
        per_model += ("density",)
    if sparsification == "magnitude_outliers":
        per_model += ("gamma",)
    if sparsification == "della_magprune":
        per_model += ("epsilon",)

    def variant(
        tensors: Sequence[torch.Tensor],
        base: torch.Tensor,
        *,
        weight: Sequence[float],
        density: Sequence[float] | None = None,
        gamma: Sequence[float] | None = None,
        epsilon: Sequence[float] | None = None,
        normalize: bool = normalize,
        rescale: bool = rescale,
        rescale_norm: RescaleNorm = "inverse_probability",
        sign_election: SignElection = "paper",
        consensus: Consensus | None = consensus,
        lambda_: float = 1.0,
        seed: int = 0,
        int8_mask: bool = False,  # accepted for mergekit configs; masks are exact either way
    ) -> torch.Tensor:
        return generalized_task_arithmetic(
            tensors,
            base,
            weight=weight,
            density=density,
            sparsification=sparsification,
            consensus=consensus,
            normalize=normalize,
            rescale=rescale,
            rescale_norm=rescale_norm,
            sign_election=sign_election,
            lambda_=lambda_,
            gamma=gamma,
            epsilon=epsilon,
            seed=seed,
        )

    variant.__name__ = variant.__qualname__ = name
    variant.__doc__ = help
    # Declare only the options this configuration uses (what a config may set).
    unused = set()
    if sparsification is None:
        unused |= {"density", "rescale", "rescale_norm"}
    if sparsification != "magnitude_outliers":
        unused.add("gamma")
    if sparsification != "della_magprune":
        unused.add("epsilon")
    if sparsification not in ("random", "della_magprune"):
        unused.add("seed")
    if consensus is None:
        unused |= {"consensus", "sign_election", "int8_mask"}
    signature = inspect.signature(variant)
    variant.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name not in unused]
    )
    merge_method(
        name,
        reference=reference,
        per_model=per_model,
        random=sparsification in ("random", "della_magprune"),
        help=help,
    )(variant)


# name, reference, sparsification, consensus, normalize and rescale defaults (mergekit 0.1.5's
# defaults for the same names, so its configs mean the same thing here).
_VARIANTS: list[tuple[str, str, str, Sparsification | None, Consensus | None, bool, bool]] = [
    ("task_arithmetic", "arXiv 2212.04089", "base + lambda * sum_t w_t (theta_t - base)",
     None, None, False, False),
    ("ties", "arXiv 2306.01708", "TIES: trim by magnitude, elect signs, disjoint mean",
     "magnitude", "sum", True, False),
    ("dare_linear", "arXiv 2311.03099", "DARE: drop at random, rescale, add",
     "random", None, False, True),
    ("dare_ties", "arXiv 2311.03099", "DARE dropping with TIES sign consensus",
     "random", "sum", False, True),
    ("breadcrumbs", "arXiv 2312.06795", "Model Breadcrumbs: drop outliers and small entries, add",
     "magnitude_outliers", None, False, False),
    ("breadcrumbs_ties", "arXiv 2312.06795", "Model Breadcrumbs with TIES sign consensus",
     "magnitude_outliers", "sum", False, False),
    ("della", "arXiv 2406.11617", "DELLA: magnitude-ranked random drop, rescale, TIES consensus",
     "della_magprune", "sum", True, True),
    ("della_linear", "arXiv 2406.11617", "DELLA dropping without sign consensus",
     "della_magprune", None, False, True),
]  # fmt: skip

for _name, _ref, _help, _sparse, _consensus, _normalize, _rescale in _VARIANTS:
    _register_variant(
        _name,
        reference=_ref,
        help=_help,
        sparsification=_sparse,
        consensus=_consensus,
        normalize=_normalize,
        rescale=_rescale,
    )
