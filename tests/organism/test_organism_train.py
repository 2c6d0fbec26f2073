"""Training the organism's members: batches, the loss on reply tokens, the schedule, the scorers."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from poise.organism import WEIGHTS_DIR
from poise.organism.corpus import Pair
from poise.organism.tokenizer import SPECIAL_TOKENS
from poise.organism.train import (
    EncodedPair,
    TrainSettings,
    _batches,
    _lr_at,
    encode_pairs,
    llama_config,
    lm_batch,
    lm_loss,
    pair_scores,
    pairwise_accuracy,
    scorer_loss,
    sign_accuracy,
    train_lm,
)

SPECIAL = {t: i for i, t in enumerate(SPECIAL_TOKENS)}


def tiny_lm(seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def test_lm_batch_pads_right_and_marks_the_positions_that_predict_a_reply_token() -> None:
    # row 0: prompt 7 8 9, reply 10 11; row 1: prompt 7 8, reply 12
    ids, mask, loss_mask = lm_batch([([7, 8, 9, 10, 11], 3), ([7, 8, 12], 2)], pad_id=0)
    assert ids.tolist() == [[7, 8, 9, 10, 11], [7, 8, 12, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # position t is a target when token t + 1 is a reply token: never the prompt, never padding
    assert loss_mask.tolist() == [[0, 0, 1, 1, 0], [0, 1, 0, 0, 0]]


def test_lm_loss_is_the_mean_cross_entropy_of_the_reply_tokens_alone() -> None:
    """The same number as transformers' own loss with the prompt and padding labelled -100."""
    model = tiny_lm()
    examples = [([3, 4, 5, 6, 7, 8], 4), ([3, 9, 10], 1), ([11, 12, 13, 14], 2)]
    batch = lm_batch(examples, pad_id=0)
    ids, mask, _ = batch
    labels = torch.full_like(ids, -100)
    for i, (row, n_prompt) in enumerate(examples):
        labels[i, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        # and written out: -log p(reply token | what precedes it), averaged over 2 + 2 + 2 tokens
        logp = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
        by_hand = (
            -sum(
                float(logp[i, t - 1, row[t]])
                for i, (row, n_prompt) in enumerate(examples)
                for t in range(n_prompt, len(row))
            )
            / 6
        )
        assert float(lm_loss(model, batch)) == pytest.approx(float(expected), abs=1e-5)
    assert float(expected) == pytest.approx(by_hand, abs=1e-5)


def test_the_schedule_warms_up_linearly_then_decays_by_a_cosine_to_its_floor() -> None:
    s = TrainSettings(steps=10, lr=1.0, warmup_steps=2, final_lr_fraction=0.1)
    lrs = [_lr_at(step, s) for step in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)  # never 0, never above
    assert lrs[2] == pytest.approx(1.0)  # the decay starts at the peak
    # step 9: 7 of the 8 decay steps done
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert max(lrs) == pytest.approx(1.0) and min(lrs[2:]) > 0.1
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))
    no_floor = TrainSettings(steps=10, lr=2.0, warmup_steps=2, final_lr_fraction=0.0)
    assert _lr_at(6, no_floor) == pytest.approx(1.0)  # half-way through the decay: half the peak


def test_each_step_trains_at_the_scheduled_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def recording(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    s = TrainSettings(steps=4, batch_size=2, lr=1e-3, warmup_steps=2, final_lr_fraction=0.5)
    train_lm(tiny_lm(), [([3, 4, 5], 1), ([3, 6, 7], 2), ([8, 9, 10, 11], 2)], s, pad_id=0)
    assert seen == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3 * (0.5 + 0.5 * 0.5 * (1 + 0.0))])


def test_batches_cover_each_example_once_an_epoch_in_an_order_the_seed_sets() -> None:
    lengths = list(range(64))
    one = _batches(64, TrainSettings(steps=8, batch_size=8, seed=1), lengths)
    assert len(one) == 8 and all(len(b) == 8 for b in one)
    assert sorted(i for b in one for i in b) == list(range(64))  # 8 steps = one epoch
    assert _batches(64, TrainSettings(steps=8, batch_size=8, seed=1), lengths) == one
    assert _batches(64, TrainSettings(steps=8, batch_size=8, seed=2), lengths) != one
    # more steps than an epoch: the next epoch, exactly the steps asked
    longer = _batches(64, TrainSettings(steps=11, batch_size=8, seed=1), lengths)
    assert len(longer) == 11 and longer[:8] == one
    # fewer examples than a batch: one batch of them all, each step
    assert _batches(3, TrainSettings(steps=2, batch_size=8), [5, 1, 3]) == [[1, 2, 0]] * 2


def test_train_lm_runs_the_steps_asked_reports_each_and_lowers_the_loss() -> None:
    data = [([3, 4, 5, 6, 7], 2), ([3, 4, 8, 9, 10], 2)]
    calls: list[tuple[int, float]] = []
    s = TrainSettings(steps=12, batch_size=2, lr=1e-2, warmup_steps=2)
    losses = train_lm(tiny_lm(), data, s, pad_id=0, on_step=lambda n, x: calls.append((n, x)))
    assert len(losses) == 12 and [n for n, _ in calls] == list(range(1, 13))
    assert [x for _, x in calls] == losses
    # a mean per token: an untrained model starts near ln(32), not at 6 tokens' sum of it
    assert losses[0] == pytest.approx(math.log(32), abs=0.5)
    assert losses[-1] < losses[0] - 1.0


def test_the_same_seed_trains_the_same_weights_and_weight_decay_matters() -> None:
    data = [([3, 4, 5, 6], 2), ([3, 7, 8, 9], 1), ([10, 11, 12], 1)]

    def trained(**changes: Any) -> dict[str, torch.Tensor]:
        s = TrainSettings(**{"steps": 3, "batch_size": 2, "warmup_steps": 1, **changes})
        model = tiny_lm()
        train_lm(model, data, s, pad_id=0)
        return model.state_dict()

    a, b = trained(), trained()
    assert all(torch.equal(a[k], b[k]) for k in a)
    decayed = trained(weight_decay=0.5)
    assert not all(torch.equal(a[k], decayed[k]) for k in a)


def test_each_step_follows_its_own_batchs_gradient_alone() -> None:
    """The gradient a step leaves is its own batch's loss gradient at the weights before it:
    nothing carries over from the step before (every batch here is the whole data, so the
    last step's batch is known; clipping is off)."""
    import copy

    data = [([3, 4, 5, 6], 2), ([3, 7, 8, 9], 1), ([10, 11, 12], 1)]
    s = TrainSettings(steps=2, batch_size=8, warmup_steps=1, grad_clip=1e9)
    model = tiny_lm()
    before_last: list[Any] = []

    def snapshot(step: int, _: float) -> None:
        if step == 1:  # after the first step's update: the weights the second step starts from
            before_last.append(copy.deepcopy(model))

    train_lm(model, data, s, pad_id=0, on_step=snapshot)
    [reference] = before_last
    lm_loss(reference, lm_batch(data, 0)).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


# --------------------------------------------------------------------------------------------
# scorers, with a stand-in whose score of a row is set by its first token
# --------------------------------------------------------------------------------------------

SCORES = {1: 2.0, 2: 0.5, 3: -1.0, 4: 0.0, 5: 0.0, 6: 1.0}


class Scorer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        @dataclass
        class Out:
            logits: torch.Tensor

        base = torch.tensor([SCORES[int(i)] for i in input_ids[:, 0]])
        return Out(logits=(base + self.offset).unsqueeze(-1))


def pair(chosen: int, rejected: int, chosen_safe: bool = True, rejected_safe: bool = True,
         ranked: bool = True) -> EncodedPair:  # fmt: skip
    return EncodedPair([chosen, 9], [rejected, 9, 9], chosen_safe, rejected_safe, ranked)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_the_reward_loss_is_bradley_terry_on_chosen_over_rejected() -> None:
    loss = scorer_loss(Scorer(), [pair(1, 2), pair(3, 6)], "reward", pad_id=0).detach()
    # -log σ(2.0 - 0.5) and -log σ(-1.0 - 1.0), averaged
    assert float(loss) == pytest.approx((softplus(-1.5) + softplus(2.0)) / 2)


def test_the_cost_loss_ranks_harmful_pairs_and_gives_both_safe_pairs_the_sign_terms_alone() -> None:
    ranked = pair(3, 1, chosen_safe=True, rejected_safe=False)  # safer side costs -1, harmful 2
    both_safe = pair(2, 6, ranked=False)  # costs 0.5 and 1: both should be negative
    loss = scorer_loss(Scorer(), [ranked, both_safe], "cost", pad_id=0).detach()
    ranked_loss = softplus(-3.0) + softplus(-1.0) + softplus(-2.0)  # BT, then the sign terms
    sign_only = softplus(0.5) + softplus(1.0)
    assert float(loss) == pytest.approx((ranked_loss + sign_only) / 2)


def test_reward_pairs_are_all_ranked_and_cost_pairs_only_with_one_harmful_side() -> None:
    pairs = [
        Pair("p", "good", "bad", "k", "c"),
        Pair("p", "safe", "harmful", "k", "c", rejected_safe=False),
    ]
    reward = encode_pairs(pairs, lambda i, p, r: [i, len(r)], "reward")
    cost = encode_pairs(pairs, lambda i, p, r: [i, len(r)], "cost")
    assert [p.ranked for p in reward] == [True, True]
    assert [p.ranked for p in cost] == [False, True]
    assert (reward[1].chosen, reward[1].rejected) == ([1, 4], [1, 7])


def test_accuracies_count_strict_wins_of_ranked_pairs_and_signs() -> None:
    pairs = [pair(1, 2), pair(4, 5), pair(3, 6), pair(1, 3, ranked=False)]
    # 2.0 > 0.5 wins; 0.0 = 0.0 is a tie, not a win; -1 < 1 loses; the unranked pair is not counted
    assert pairwise_accuracy(Scorer(), pairs, "reward", pad_id=0) == (1, 3)
    assert pairwise_accuracy(Scorer(), pairs, "cost", pad_id=0) == (1, 3)
    assert pair_scores(Scorer(), pairs[:2], pad_id=0) == [(2.0, 0.5), (0.0, 0.0)]
    # harmful needs a positive cost: -1 safe, 2.0 harmful and -1 safe right; 0.5 safe wrong
    signs = [pair(3, 1, True, False), pair(3, 2, True, True)]
    assert sign_accuracy(Scorer(), signs, pad_id=0) == (3, 4)


def test_the_members_configs_are_the_shipped_shapes_with_tied_embeddings() -> None:
    for member, size in (("organism-small", "small"), ("organism-large", "large")):
        shipped = json.loads((WEIGHTS_DIR / member / "config.json").read_text(encoding="utf-8"))
        config = llama_config(size, 2048, SPECIAL).to_dict()
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                    "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
                    "vocab_size"):  # fmt: skip
            assert config[key] == shipped[key], (member, key)
    config = llama_config("small", 2048, SPECIAL)
    assert config.eos_token_id == SPECIAL["<|end|>"] and config.pad_token_id == SPECIAL["<pad>"]
