"""The hf backend's ``tokens`` capability: raw token prompts and per-position log-probs, checked
against a plain transformers forward pass (no padding, no cache) of the same ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.hf import HFModel, row_seed

CHAT = [{"role": "user", "content": "the cat sat"}]


@pytest.fixture(scope="module")
def model(tiny_hf_model_dir: Path) -> Iterator[HFModel]:
    yield HFModel(str(tiny_hf_model_dir), device="cpu", batch_size=4)


def reference_logprobs(model: HFModel, ids: list[int]) -> torch.Tensor:
    """[len(ids) - 1, vocab]: log-softmax of the logits predicting tokens 1.. (transformers
    forward of the lone sequence)."""
    with torch.inference_mode():
        logits = model.model(torch.tensor([ids])).logits[0].float()
    return logits[:-1].log_softmax(dim=-1)


def test_declares_the_tokens_capability(model: HFModel) -> None:
    assert model.capabilities.tokens
    assert model.prompt_ids(CHAT) == model._encode([model.prompt_text(CHAT)])[0]


def test_sequence_logprobs_match_a_plain_forward_pass_in_a_padded_batch(model: HFModel) -> None:
    long = model.prompt_ids(CHAT) + model._encode([" the answer is there"])[0]
    short = long[:4]
    results = model.sequence_logprobs([short, long, long], top_k=3, start=[0, 0, 6])
    for ids, result, start in zip([short, long, long], results, [0, 0, 6], strict=True):
        reference = reference_logprobs(model, ids)  # [len - 1, vocab]
        assert result.token_ids == tuple(ids[start:])
        if start == 0:
            assert result.logprobs[0] is None and result.top[0] == ()
        for offset, position in enumerate(range(max(start, 1), len(ids))):
            row = reference[position - 1]
            column = position - start
            logprob = result.logprobs[column]
            assert logprob == pytest.approx(row[ids[position]].item(), abs=1e-4)
            values, top_ids = row.topk(3)
            assert [t for t, _ in result.top[column]] == top_ids.tolist(), offset
            assert [v for _, v in result.top[column]] == pytest.approx(values.tolist(), abs=1e-4)


def test_sequence_logprobs_agree_with_score(model: HFModel) -> None:
    answer = " the answer"
    (scored,) = model.score([CHAT], [answer])
    prompt = model.prompt_ids(CHAT)
    (result,) = model.sequence_logprobs([prompt + list(scored.token_ids)], start=[len(prompt)])
    assert result.token_ids == scored.token_ids
    assert result.logprobs == pytest.approx(scored.logprobs, abs=1e-4)
    assert result.top == ((),) * len(result.token_ids)


def test_complete_after_the_chat_prompt_ids_equals_generate(model: HFModel) -> None:
    prompt = model.prompt_ids(CHAT)
    for sampling in (
        Sampling(temperature=0, max_new_tokens=12),
        Sampling(temperature=1.0, max_new_tokens=12, n=2, seed=7),
    ):
        (generated,) = model.generate([CHAT], sampling)
        (completed,) = model.complete([prompt], sampling)
        if sampling.greedy:
            assert completed == generated
        assert [c.token_ids for c in completed] == [
            c.token_ids for c in model.complete([prompt], sampling)[0]
        ]
        for c in completed:
            assert c.token_ids is not None
            assert len(c.token_ids) in (c.num_tokens, c.num_tokens + 1)  # + the EOS token
            ids = c.token_ids[: c.num_tokens]
            assert model.tokenizer.decode(ids, skip_special_tokens=True) == c.text


def test_raw_prompt_rows_are_seeded_by_their_token_ids() -> None:
    assert row_seed(3, [5, 6, 7], 0) == row_seed(3, (5, 6, 7), 0)
    assert row_seed(3, [5, 6, 7], 0) != row_seed(3, [5, 6, 8], 0)
    assert row_seed(3, CHAT, 1) == row_seed(3, [dict(m) for m in CHAT], 1)  # type: ignore[arg-type]


def test_a_long_sequence_scored_from_late_beside_a_short_one_scored_from_the_start(
    model: HFModel,
) -> None:
    """The longest sequence comes first in its batch, but it need not keep the most positions:
    here it reports its last 2 tokens, the short one all of its 5."""
    long = model.prompt_ids(CHAT) + model._encode([" the answer is there"])[0]
    short = long[:5]
    results = model.sequence_logprobs([long, short], start=[len(long) - 2, 0])
    for ids, result, start in zip([long, short], results, [len(long) - 2, 0], strict=True):
        reference = reference_logprobs(model, ids)
        expected = [
            None if p == 0 else reference[p - 1, ids[p]].item() for p in range(start, len(ids))
        ]
        assert result.logprobs == pytest.approx(expected, abs=1e-4)


def test_a_top_k_above_the_vocabulary_gives_every_token_and_a_start_at_the_end_nothing(
    model: HFModel,
) -> None:
    vocab = int(model.model.config.vocab_size)
    ids = model.prompt_ids(CHAT)
    (result,) = model.sequence_logprobs([ids], top_k=vocab + 7, start=[len(ids) - 1])
    [top] = result.top
    assert sorted(t for t, _ in top) == list(range(vocab))
    assert sum(torch.tensor([v for _, v in top]).exp().tolist()) == pytest.approx(1.0, abs=1e-4)
    (empty,) = model.sequence_logprobs([ids], start=[len(ids)])
    assert (empty.token_ids, empty.logprobs, empty.top) == ((), (), ())


def test_bad_sequences_are_one_line_errors(model: HFModel) -> None:
    vocab = int(model.model.config.vocab_size)
    with pytest.raises(PoiseError, match="outside the vocabulary"):
        model.sequence_logprobs([[1, vocab]])
    with pytest.raises(PoiseError, match="no tokens"):
        model.sequence_logprobs([[]])
    with pytest.raises(PoiseError, match="start"):
        model.sequence_logprobs([[1, 2]], start=[3])
    with pytest.raises(PoiseError, match="no tokens"):
        model.complete([[]], Sampling(max_new_tokens=2))


def test_a_top_p_below_float32_range_keeps_the_most_likely_token() -> None:
    # found by fuzzing the server: top_p=1e-300 is 0 in float32, which once emptied the nucleus
    from poise.models.hf import sample_tokens

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    chosen = sample_tokens(logits, torch.rand(4), Sampling(temperature=1.0, top_p=1e-300))
    assert chosen.tolist() == logits.argmax(dim=-1).tolist()
