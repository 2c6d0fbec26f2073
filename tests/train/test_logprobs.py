"""Per-token log-probs and masked reductions, against loops written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from poise.train.logprobs import (
    masked_mean,
    masked_sum,
    sequence_lengths,
    sequence_logprobs,
    shared_lengths,
    token_positions,
)


def _reference_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> list:
    """log p(labels[t] | ...) from logits[t-1], by an explicit softmax per position."""
    batch, seq_len, _ = logits.shape
    rows = []
    for b in range(batch):
        row = []
        for t in range(seq_len):
            if t == 0 or not mask[b, t]:
                row.append(0.0)
                continue
            scores = [float(x) for x in logits[b, t - 1]]
            top = max(scores)
            log_norm = top + math.log(sum(math.exp(s - top) for s in scores))
            row.append(scores[int(labels[b, t])] - log_norm)
        rows.append(row)
    return rows


def test_sequence_logprobs_matches_explicit_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11, dtype=torch.float64) * 3
    labels = torch.randint(0, 11, (3, 6))
    mask = torch.tensor(
        [[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.long
    )
    out = sequence_logprobs(logits, labels, mask)
    assert out.shape == (3, 6)
    expected = torch.tensor(_reference_logprobs(logits, labels, mask), dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # nothing predicts position 0, whatever the mask says
    assert out[2, 0] == 0.0


def test_ignored_labels_are_allowed_under_the_mask() -> None:
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[-100, -100, 3, 1]])
    mask = torch.tensor([[0, 0, 1, 1]])
    out = sequence_logprobs(logits, labels, mask)
    assert torch.isfinite(out).all()
    assert out[0, :2].tolist() == [0.0, 0.0]
    assert float(out[0, 2]) == pytest.approx(float(torch.log_softmax(logits[0, 1], -1)[3]))


def test_padding_side_does_not_change_the_sum() -> None:
    """The same response, left- or right-padded, gets the same summed log-prob."""
    torch.manual_seed(1)
    vocab = 7
    # a causal "model" whose prediction depends only on the previous token, so shifting the
    # sequence inside the row leaves every conditional unchanged
    table = torch.randn(vocab, vocab)
    tokens = torch.tensor([2, 5, 1, 6])
    pad = 0

    def logits_for(ids: torch.Tensor) -> torch.Tensor:
        return table[ids].unsqueeze(0)  # [1, T, V]

    right = torch.cat([tokens, torch.tensor([pad, pad])])
    left = torch.cat([torch.tensor([pad, pad]), tokens])
    right_mask = torch.tensor([[0, 1, 1, 1, 0, 0]])
    left_mask = torch.tensor([[0, 0, 0, 1, 1, 1]])
    right_sum = masked_sum(
        sequence_logprobs(logits_for(right), right[None], right_mask), right_mask
    )
    left_sum = masked_sum(sequence_logprobs(logits_for(left), left[None], left_mask), left_mask)
    torch.testing.assert_close(right_sum, left_sum)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="batch, seq, vocab"):
        sequence_logprobs(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match="must agree"):
        sequence_logprobs(
            torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2)
        )


def test_masked_reductions_and_lengths() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert masked_sum(values, mask).tolist() == [4.0, 26.0, 0.0]
    assert masked_mean(values, mask).tolist() == [2.0, 6.5, 0.0]  # empty row: 0, not NaN
    assert sequence_lengths(mask).tolist() == [2, 4, 0]
    assert token_positions(mask).tolist() == [[1, 0, 2, 0], [1, 2, 3, 4], [0, 0, 0, 0]]
    other = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    assert shared_lengths(mask, other).tolist() == [2, 1, 0]
