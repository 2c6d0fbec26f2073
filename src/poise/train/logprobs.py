"""Per-token log-probabilities of labels under a causal LM, and masked reductions over them.

Every training loss in poise starts from the same numbers: the log-probability the model gives
each response token. This module computes them once, with one documented shift convention, so
recipes never re-derive the off-by-one.

Convention (the same as Hugging Face's ``labels`` argument): ``logits``, ``labels`` and ``mask``
are all aligned with ``input_ids``. ``logits[:, t]`` is the model's prediction for the token at
position ``t + 1``, so the log-prob of ``labels[:, t]`` is read from ``logits[:, t - 1]``. The
output is aligned with ``labels`` too: ``out[:, t] = log p(labels[:, t] | tokens before t)``.
Position 0 has no prediction (nothing precedes it), so ``out[:, 0]`` is always 0 and never
counts, whatever ``mask[:, 0]`` says. Positions where ``mask`` is 0 (prompt, padding) are 0.

Keeping the output aligned with the input means one mask serves both the tokenizer's view
("which tokens are the response?") and the loss's view, with no second shifted mask to carry.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "masked_mean",
    "masked_sum",
    "sequence_lengths",
    "sequence_logprobs",
    "shared_lengths",
    "token_positions",
]


def sequence_logprobs(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Per-token log-probs of ``labels`` under ``logits``, aligned with ``labels``.

    Args:
        logits: ``[B, T, V]`` raw scores; ``logits[:, t]`` predicts position ``t + 1``.
        labels: ``[B, T]`` token ids aligned with the input (usually ``input_ids`` itself).
            Values outside the vocabulary (such as ``-100``) are allowed where ``mask`` is 0.
        mask: ``[B, T]`` 1 (or True) for the tokens whose log-probs count, 0 elsewhere.

    Returns:
        ``[B, T]`` float tensor in ``logits``' dtype: ``log p(labels[:, t] | labels[:, :t])`` where
        ``mask[:, t]`` is set and ``t >= 1``; 0 everywhere else.

    Assumptions: left or right padding both work, because only ``mask`` says which positions count.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, seq, vocab], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2] or mask.shape != labels.shape:
        raise ValueError(
            "logits [B, T, V], labels [B, T] and mask [B, T] must agree: got "
            f"{tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)}"
        )
    batch, seq_len, _ = logits.shape
    out = logits.new_zeros(batch, seq_len)  # [B, T]
    if seq_len < 2:
        return out
    predicting = logits[:, :-1, :]  # [B, T-1, V]: predictions for positions 1..T-1
    targets = labels[:, 1:]  # [B, T-1]
    counted = mask[:, 1:].bool()  # [B, T-1]
    # Ignored labels (e.g. -100) must still be valid indices for gather; they are zeroed below.
    safe_targets = torch.where(counted, targets, torch.zeros_like(targets)).long()
    # log_softmax(x)[y] = x[y] - logsumexp(x): autograd keeps only the logits (alive anyway) and
    # a [B, T-1] result, where log_softmax would keep a second [B, T-1, V] tensor for backward.
    picked = predicting.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    token_logps = picked - torch.logsumexp(predicting, dim=-1)  # [B, T-1]
    out[:, 1:] = torch.where(counted, token_logps, torch.zeros_like(token_logps))
    return out


def masked_sum(values: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Sum of ``values`` where ``mask`` is set. ``[B, T], [B, T] -> [B]`` for ``dim=-1``."""
    return (values * mask.to(values.dtype)).sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Mean of ``values`` where ``mask`` is set; 0 for a row with no set position.

    ``[B, T], [B, T] -> [B]`` for ``dim=-1``. An empty row divides by 1 instead of 0, so a
    fully padded sequence contributes 0 rather than NaN.
    """
    weights = mask.to(values.dtype)
    return (values * weights).sum(dim=dim) / weights.sum(dim=dim).clamp(min=1.0)


def sequence_lengths(mask: Tensor) -> Tensor:
    """Number of set positions per row: ``[B, T] -> [B]`` (int64)."""
    return mask.bool().sum(dim=-1)


def token_positions(mask: Tensor) -> Tensor:
    """1-based rank of each set position within its row, 0 where ``mask`` is not set.

    ``[B, T] -> [B, T]`` (int64). ``token_positions([[0, 1, 1, 0, 1]]) == [[0, 1, 2, 0, 3]]``:
    the k-th response token has position k wherever padding or the prompt put it.
    """
    bool_mask = mask.bool()
    return torch.cumsum(bool_mask.long(), dim=-1) * bool_mask.long()


def shared_lengths(mask_a: Tensor, mask_b: Tensor) -> Tensor:
    """Row-wise ``min(len_a, len_b)``: ``[B, Ta], [B, Tb] -> [B]`` (int64).

    The two masks may have different widths (chosen and rejected responses padded separately).
    """
    return torch.minimum(sequence_lengths(mask_a), sequence_lengths(mask_b))
