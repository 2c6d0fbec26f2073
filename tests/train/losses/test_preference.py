"""The DPO family against TRL 1.16's DPOTrainer, and the rest against closed forms.

TRL computes its losses inside ``DPOTrainer._compute_loss(model, inputs)``, which runs the
policy and the reference model. The tests call that method unbound on a minimal stand-in for
the trainer and two stand-in models that return chosen per-token log-probs, so TRL and poise
see exactly the same numbers. Every loss type TRL 1.16 has is compared, per pair and on the
batch mean, in float32 to 1e-5; the f-divergence rewards and LD-DPO's ``ld_alpha`` as well.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from poise.errors import PoiseError, UnknownNameError
from poise.train.logprobs import masked_sum
from poise.train.losses import (
    LOSSES,
    ipo_loss,
    ld_dpo_loss,
    ld_logprobs,
    loss_parameters,
    modpo_loss,
    preference_loss,
    sigmoid_loss,
)

# ---------------------------------------------------------------------------------------------
# a batch of pairs as token log-probs, in both layouts


class Batch:
    """``pairs`` preference pairs with random per-token log-probs for policy and reference.

    TRL's layout: rows ``[chosen..., rejected...]``, ``completion_mask`` over the input ids and
    per-token log-probs ``[2B, T-1]`` aligned with ``completion_mask[:, 1:]``. poise's layout:
    per-token log-probs ``[B, T]`` aligned with the ids (as ``sequence_logprobs`` returns them).
    """

    def __init__(self, pairs: int, *, seed: int, prompt_len: int = 3, max_len: int = 9) -> None:
        gen = torch.Generator().manual_seed(seed)
        seq_len = prompt_len + max_len + 1
        lengths = torch.randint(1, max_len + 1, (2 * pairs,), generator=gen)
        positions = torch.arange(seq_len)
        mask = (positions >= prompt_len) & (positions < prompt_len + lengths[:, None])
        self.completion_mask = mask.long()  # [2B, T]
        shifted = self.completion_mask[:, 1:].float()  # [2B, T-1]
        reference = -3.0 * torch.rand(2 * pairs, seq_len - 1, generator=gen)
        # the policy stays near the reference, as it does in training, so log-ratios are O(1)
        policy = reference + 0.4 * torch.randn(2 * pairs, seq_len - 1, generator=gen)
        self.policy_tokens_trl = policy * shifted
        self.reference_tokens_trl = reference * shifted
        self.pairs = pairs
        self.seq_len = seq_len

    def _aligned(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.pad(tokens, (1, 0))  # [2B, T]: position 0 has no prediction

    def poise_tokens(self) -> dict[str, torch.Tensor]:
        policy = self._aligned(self.policy_tokens_trl)
        reference = self._aligned(self.reference_tokens_trl)
        b = self.pairs
        return {
            "policy_chosen": policy[:b],
            "policy_rejected": policy[b:],
            "reference_chosen": reference[:b],
            "reference_rejected": reference[b:],
            "chosen_mask": self.completion_mask[:b],
            "rejected_mask": self.completion_mask[b:],
        }

    def summed(self) -> tuple[torch.Tensor, ...]:
        t = self.poise_tokens()
        return (
            masked_sum(t["policy_chosen"], t["chosen_mask"]),
            masked_sum(t["policy_rejected"], t["rejected_mask"]),
            masked_sum(t["reference_chosen"], t["chosen_mask"]),
            masked_sum(t["reference_rejected"], t["rejected_mask"]),
        )

    def lengths(self) -> dict[str, torch.Tensor]:
        t = self.poise_tokens()
        return {
            "chosen_lengths": t["chosen_mask"].sum(-1),
            "rejected_lengths": t["rejected_mask"].sum(-1),
        }

    def pair(self, i: int) -> Batch:
        """The i-th pair alone, as a batch of one."""
        one = object.__new__(Batch)
        rows = torch.tensor([i, self.pairs + i])
        one.completion_mask = self.completion_mask[rows]
        one.policy_tokens_trl = self.policy_tokens_trl[rows]
        one.reference_tokens_trl = self.reference_tokens_trl[rows]
        one.pairs = 1
        one.seq_len = self.seq_len
        return one


# ---------------------------------------------------------------------------------------------
# TRL 1.16 as the reference


class _StandInLM(torch.nn.Module):
    """Returns fixed per-token log-probs where DPOTrainer expects its fused LM head's output."""

    is_gradient_checkpointing = False

    def __init__(self, per_token_logps: torch.Tensor) -> None:
        super().__init__()
        self.per_token_logps = per_token_logps

    def forward(self, **kwargs: Any) -> SimpleNamespace:
        shape = self.per_token_logps.shape
        return SimpleNamespace(
            log_probs=self.per_token_logps,
            entropy=torch.zeros(shape),
            mean_logits=torch.zeros(shape),
            is_top1=torch.zeros(shape, dtype=torch.bool),
            aux_loss=torch.tensor(0.0),
        )


def trl_dpo(batch: Batch, loss_type: str, **options: Any) -> tuple[float, dict[str, list[float]]]:
    """TRL's batch loss (mean over pairs) and logged metrics for ``batch`` (the options of
    :func:`trl_dpo_tensor`)."""
    loss, metrics = trl_dpo_tensor(batch, loss_type, **options)
    return float(loss), metrics


def trl_dpo_tensor(
    batch: Batch,
    loss_type: str,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    ld_alpha: float | None = None,
    discopop_tau: float = 0.05,
) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """:func:`trl_dpo` with the loss as TRL returns it (a tensor that backward goes through)."""
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    policy = _StandInLM(batch.policy_tokens_trl)
    stub = SimpleNamespace(
        model=policy,
        ref_model=_StandInLM(batch.reference_tokens_trl),
        accelerator=SimpleNamespace(
            device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x
        ),
        args=SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
        aux_loss_enabled=False,
        precompute_ref_logps=False,
        ld_alpha=ld_alpha,
        f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef,
        beta=beta,
        label_smoothing=label_smoothing,
        loss_types=[loss_type],
        loss_weights=[1.0],
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    ids = torch.zeros_like(batch.completion_mask)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": batch.completion_mask,
    }
    loss = dpo_trainer.DPOTrainer._compute_loss(stub, policy, inputs, return_outputs=False)
    return loss, stub._metrics["train"]


def _poise(batch: Batch, loss_type: str, **params: Any) -> Any:
    return preference_loss(loss_type, *batch.summed(), **params)


def _close(a: float, b: float) -> None:
    assert a == pytest.approx(b, rel=1e-5, abs=1e-5)


# every loss type of TRL 1.16's DPOTrainer that poise implements (TRL's "sft" is plain NLL)
_TRL_LOSSES: dict[str, dict[str, Any]] = {
    "sigmoid": {},
    "hinge": {},
    "ipo": {"lengths": True},
    "exo_pair": {"label_smoothing": 1e-3},
    "nca_pair": {},
    "robust": {"label_smoothing": 0.2},
    "bco_pair": {},
    "sppo_hard": {},
    "aot": {"label_smoothing": 0.1, "sorted": True},
    "aot_unpaired": {"label_smoothing": 0.1, "sorted": True},
    "apo_zero": {},
    "apo_down": {},
    "discopop": {"discopop_tau": 0.05},
    "sigmoid_norm": {"lengths": True},
}
_F_DIVERGENCE_LOSSES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop")


def _params(loss_type: str, batch: Batch, beta: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(poise params, TRL params) for one loss type."""
    spec = _TRL_LOSSES[loss_type]
    ours: dict[str, Any] = {"beta": beta}
    theirs: dict[str, Any] = {"beta": beta}
    if "label_smoothing" in spec:
        ours["label_smoothing"] = theirs["label_smoothing"] = spec["label_smoothing"]
    if "discopop_tau" in spec:
        ours["discopop_tau"] = theirs["discopop_tau"] = spec["discopop_tau"]
    if spec.get("lengths"):
        ours.update(batch.lengths())
    return ours, theirs


def test_every_trl_loss_type_is_covered() -> None:
    pytest.importorskip("trl")
    import inspect

    from trl.trainer import dpo_trainer

    source = inspect.getsource(dpo_trainer.DPOTrainer._compute_loss)
    trl_types = set()
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith(("if loss_type ==", "elif loss_type ==")):
            trl_types.add(stripped.split("==")[1].strip().strip(":").strip("\"'"))
    assert trl_types - {"sft"} == set(_TRL_LOSSES)
    assert set(_TRL_LOSSES) <= set(LOSSES.names())


@pytest.mark.parametrize("loss_type", sorted(_TRL_LOSSES))
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_loss_matches_trl(loss_type: str, beta: float) -> None:
    batch = Batch(8, seed=sum(map(ord, loss_type)) + int(beta * 10))
    ours_params, trl_params = _params(loss_type, batch, beta)
    out = _poise(batch, loss_type, **ours_params)
    trl_loss, metrics = trl_dpo(batch, loss_type, **trl_params)
    _close(float(out.losses.mean()), trl_loss)
    _close(float(out.chosen_rewards.mean()), metrics["rewards/chosen"][0])
    _close(float(out.rejected_rewards.mean()), metrics["rewards/rejected"][0])
    if not _TRL_LOSSES[loss_type].get("sorted"):
        # per pair, not only on average: run TRL on each pair alone
        for i in range(batch.pairs):
            one = batch.pair(i)
            ours_i, trl_i = _params(loss_type, one, beta)
            _close(
                float(_poise(one, loss_type, **ours_i).losses[0]),
                trl_dpo(one, loss_type, **trl_i)[0],
            )


def _gradients(
    loss_type: str, beta: float, seed: int, **extra: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """d(batch loss)/d(policy token log-probs) from poise and from TRL, both ``[2B, T-1]``.

    The per-token log-probs are the leaves, so the comparison covers the loss and the
    reduction to sequence log-probs (summing, LD-DPO's weighting, IPO's lengths) together."""
    grads = []
    for side in ("poise", "trl"):
        batch = Batch(8, seed=seed)
        leaf = batch.policy_tokens_trl.clone().requires_grad_(True)
        batch.policy_tokens_trl = leaf
        ours, theirs = _params(loss_type, batch, beta)
        ld_alpha = extra.get("ld_alpha")
        f_div = extra.get("f_divergence", "reverse_kl")
        f_alpha = extra.get("f_alpha", 0.5)
        if f_div != "reverse_kl":
            ours.update(f_divergence=f_div, f_alpha=f_alpha)
        if side == "poise":
            if ld_alpha is None:
                loss = _poise(batch, loss_type, **ours).losses.mean()
            else:
                t = batch.poise_tokens()
                loss = ld_dpo_loss(
                    t["policy_chosen"],
                    t["policy_rejected"],
                    t["reference_chosen"],
                    t["reference_rejected"],
                    t["chosen_mask"],
                    t["rejected_mask"],
                    ld_alpha=ld_alpha,
                    loss_type=loss_type,
                    **ours,
                ).losses.mean()
        else:
            loss, _ = trl_dpo_tensor(
                batch,
                loss_type,
                ld_alpha=ld_alpha,
                f_divergence_type=f_div,
                f_alpha_divergence_coef=1.0 - f_alpha,
                **theirs,
            )
        loss.backward()
        assert leaf.grad is not None
        # on the response tokens only: TRL's LM head gives 0 elsewhere (labels -100), where the
        # stand-in's sum over every position would show a gradient no real token gets
        grads.append(leaf.grad * batch.completion_mask[:, 1:])
    # a masking bug that zeroed both sides' gradients would compare equal
    assert grads[1].abs().sum() > 0
    return grads[0], grads[1]


@pytest.mark.parametrize("loss_type", sorted(_TRL_LOSSES))
def test_gradient_matches_trl(loss_type: str) -> None:
    """Not only the loss value: the gradient the policy receives, token by token."""
    ours, theirs = _gradients(loss_type, 0.3, seed=7 + len(loss_type))
    assert theirs.abs().sum() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "robust", "discopop"])
@pytest.mark.parametrize(
    "extra",
    [
        {"ld_alpha": 0.3},
        {"f_divergence": "js_divergence"},
        {"f_divergence": "alpha_divergence", "f_alpha": 0.3},
        {"f_divergence": "forward_kl"},
    ],
    ids=["ld", "js", "alpha", "forward_kl"],
)
def test_gradient_matches_trl_with_ld_alpha_and_f_divergences(
    loss_type: str, extra: dict[str, Any]
) -> None:
    ours, theirs = _gradients(loss_type, 0.2, seed=11, **extra)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_type", _F_DIVERGENCE_LOSSES)
@pytest.mark.parametrize(
    ("f_divergence", "f_alpha"),
    [
        ("forward_kl", 0.5),
        ("js_divergence", 0.5),
        ("alpha_divergence", 0.3),
        ("alpha_divergence", 0.8),
    ],
)
def test_f_divergence_matches_trl(loss_type: str, f_divergence: str, f_alpha: float) -> None:
    batch = Batch(6, seed=7)
    ours, theirs = _params(loss_type, batch, 0.2)
    out = _poise(batch, loss_type, f_divergence=f_divergence, f_alpha=f_alpha, **ours)
    # TRL 1.16 parameterises f'(u) = (u^(c-1) - 1)/(c - 1); the paper's α is 1 - c
    trl_loss, _ = trl_dpo(
        batch,
        loss_type,
        f_divergence_type=f_divergence,
        f_alpha_divergence_coef=1.0 - f_alpha,
        **theirs,
    )
    _close(float(out.losses.mean()), trl_loss)


@pytest.mark.parametrize("ld_alpha", [0.0, 0.35, 1.0])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "robust"])
def test_ld_dpo_matches_trl(ld_alpha: float, loss_type: str) -> None:
    """TRL desensitises policy and reference alike: poise's default (the paper's choice)."""
    batch = Batch(8, seed=11)
    t = batch.poise_tokens()
    ours, theirs = _params(loss_type, batch, 0.3)
    out = ld_dpo_loss(
        t["policy_chosen"],
        t["policy_rejected"],
        t["reference_chosen"],
        t["reference_rejected"],
        t["chosen_mask"],
        t["rejected_mask"],
        ld_alpha=ld_alpha,
        loss_type=loss_type,
        **ours,
    )
    trl_loss, metrics = trl_dpo(batch, loss_type, ld_alpha=ld_alpha, **theirs)
    _close(float(out.losses.mean()), trl_loss)
    _close(float(out.chosen_rewards.mean()), metrics["rewards/chosen"][0])


# ---------------------------------------------------------------------------------------------
# closed forms for what TRL 1.16 does not have


def _random_logps(
    pairs: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(-20 * torch.rand(pairs, generator=gen, dtype=dtype) for _ in range(4))


def test_conservative_dpo_label_smoothing_closed_form() -> None:
    """cDPO: TRL 1.16's sigmoid has no label smoothing, so the closed form is written here."""
    pc, pr, rc, rr = _random_logps(16, seed=3)
    beta, eps = 0.25, 0.1
    out = sigmoid_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    for i in range(16):
        z = beta * ((float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i])))
        expected = (1 - eps) * math.log1p(math.exp(-z)) + eps * math.log1p(math.exp(z))
        assert float(out.losses[i]) == pytest.approx(expected, rel=1e-10)


def test_ipo_without_lengths_is_eq17_on_sequence_logprobs() -> None:
    pc, pr, rc, rr = _random_logps(8, seed=4)
    beta = 0.5
    out = ipo_loss(pc, pr, rc, rr, beta=beta)
    for i in range(8):
        h = (float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i]))
        assert float(out.losses[i]) == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-10)
    with pytest.raises(PoiseError, match="both chosen_lengths and rejected_lengths"):
        ipo_loss(pc, pr, rc, rr, chosen_lengths=torch.ones(8))


def test_bco_pair_reward_shift_closed_form() -> None:
    pc, pr, rc, rr = _random_logps(5, seed=5)
    beta, shift = 0.3, 0.7
    out = preference_loss("bco_pair", pc, pr, rc, rr, beta=beta, reward_shift=shift)
    for i in range(5):
        rw = beta * (float(pc[i]) - float(rc[i]))
        rl = beta * (float(pr[i]) - float(rr[i]))
        expected = math.log1p(math.exp(-(rw - shift))) + math.log1p(math.exp(rl - shift))
        assert float(out.losses[i]) == pytest.approx(expected, rel=1e-10)


def test_ld_logprobs_hand_example() -> None:
    # chosen has 4 response tokens, rejected 2: public length 2
    chosen_logps = torch.tensor([[0.0, -1.0, -2.0, -3.0, -4.0, 0.0]], dtype=torch.float64)
    chosen_mask = torch.tensor([[0, 1, 1, 1, 1, 0]])
    rejected_logps = torch.tensor([[0.0, 0.0, -5.0, -6.0]], dtype=torch.float64)
    rejected_mask = torch.tensor([[0, 0, 1, 1]])
    chosen, rejected = ld_logprobs(chosen_logps, chosen_mask, rejected_logps, rejected_mask, 0.25)
    assert float(chosen[0]) == pytest.approx(-1 - 2 + 0.25 * (-3 - 4))
    assert float(rejected[0]) == pytest.approx(-11.0)
    with pytest.raises(PoiseError, match="ld_alpha"):
        ld_logprobs(chosen_logps, chosen_mask, rejected_logps, rejected_mask, 1.5)


def test_ld_dpo_policy_only_option_closed_form() -> None:
    """``ld_apply_to_reference=False``: the reference keeps its plain sums."""
    batch = Batch(5, seed=12)
    t = batch.poise_tokens()
    alpha, beta = 0.5, 0.2
    out = ld_dpo_loss(
        t["policy_chosen"],
        t["policy_rejected"],
        t["reference_chosen"],
        t["reference_rejected"],
        t["chosen_mask"],
        t["rejected_mask"],
        ld_alpha=alpha,
        ld_apply_to_reference=False,
        beta=beta,
    )

    def response(tokens: torch.Tensor, mask: torch.Tensor) -> list[float]:
        return [float(v) for v, m in zip(tokens, mask, strict=True) if m]

    def desensitised(values: list[float], public: int) -> float:
        return sum(values[:public]) + alpha * sum(values[public:])

    for i in range(5):
        public = min(int(t["chosen_mask"][i].sum()), int(t["rejected_mask"][i].sum()))
        chosen = desensitised(response(t["policy_chosen"][i], t["chosen_mask"][i]), public) - sum(
            response(t["reference_chosen"][i], t["chosen_mask"][i])
        )
        rejected = desensitised(
            response(t["policy_rejected"][i], t["rejected_mask"][i]), public
        ) - sum(response(t["reference_rejected"][i], t["rejected_mask"][i]))
        z = beta * (chosen - rejected)
        assert float(out.losses[i]) == pytest.approx(math.log1p(math.exp(-z)), rel=1e-4)


def test_modpo_closed_form() -> None:
    pc, pr, rc, rr = _random_logps(4, seed=6)
    gen = torch.Generator().manual_seed(9)
    margins_c = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    margins_r = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    w = [0.5, 0.3, 0.2]
    beta = 0.1
    out = modpo_loss(pc, pr, rc, rr, margins_c, margins_r, w, beta=beta)
    for i in range(4):
        ratio = (float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i]))
        margin = sum(w[k + 1] * (float(margins_c[i, k]) - float(margins_r[i, k])) for k in range(2))
        z = beta / w[0] * ratio - margin / w[0]
        assert float(out.losses[i]) == pytest.approx(math.log1p(math.exp(-z)), rel=1e-10)
        assert float(out.chosen_rewards[i] - out.rejected_rewards[i]) == pytest.approx(z, rel=1e-10)
    # one other objective: [B] margins are accepted
    single = modpo_loss(pc, pr, rc, rr, margins_c[:, 0], margins_r[:, 0], [0.6, 0.4], beta=beta)
    assert single.losses.shape == (4,)
    with pytest.raises(PoiseError, match="sum to 1"):
        modpo_loss(pc, pr, rc, rr, margins_c, margins_r, [0.5, 0.5, 0.5])
    with pytest.raises(PoiseError, match="weights\\[0\\] > 0"):
        modpo_loss(pc, pr, rc, rr, margins_c, margins_r, [0.0, 0.5, 0.5])
    # the simplex is checked to 1e-4, not loosely: weights summing to 1.05 scale the objective
    with pytest.raises(PoiseError, match="sum to 1"):
        modpo_loss(pc, pr, rc, rr, margins_c, margins_r, [0.5, 0.3, 0.25])


def test_modpo_with_zero_margin_weights_is_dpo_scaled() -> None:
    """With w = (1, 0): the margin term vanishes and MODPO is DPO."""
    pc, pr, rc, rr = _random_logps(6, seed=8)
    zeros = torch.zeros(6, 1, dtype=torch.float64)
    torch.testing.assert_close(
        modpo_loss(pc, pr, rc, rr, zeros + 3.0, zeros - 1.0, [1.0, 0.0], beta=0.2).losses,
        sigmoid_loss(pc, pr, rc, rr, beta=0.2).losses,
    )


# ---------------------------------------------------------------------------------------------
# dispatch and validation


def test_registry_and_parameter_errors() -> None:
    pc, pr, rc, rr = _random_logps(3, seed=1)
    with pytest.raises(UnknownNameError, match="did you mean 'sigmoid'"):
        preference_loss("sigmod", pc, pr, rc, rr)
    with pytest.raises(PoiseError, match="does not take 'f_divergence'"):
        preference_loss("nca_pair", pc, pr, rc, rr, f_divergence="forward_kl")
    with pytest.raises(PoiseError, match="unknown f_divergence"):
        preference_loss("sigmoid", pc, pr, rc, rr, f_divergence="hellinger")
    with pytest.raises(PoiseError, match="beta must be > 0"):
        preference_loss("hinge", pc, pr, rc, rr, beta=0.0)
    with pytest.raises(PoiseError, match="label_smoothing"):
        preference_loss("robust", pc, pr, rc, rr, label_smoothing=0.5)
    with pytest.raises(PoiseError, match="exo_pair needs label_smoothing"):
        preference_loss("exo_pair", pc, pr, rc, rr, label_smoothing=0.0)
    with pytest.raises(PoiseError, match="needs chosen_lengths"):
        preference_loss("sigmoid_norm", pc, pr, rc, rr)
    # f-DPO's alpha-divergence (arXiv 2309.16240) needs alpha in the open interval (0, 1): at 0
    # the score (1 - u^-alpha) / alpha is 0/0, at 1 it is forward KL (its own name)
    for f_alpha in (0.0, 1.0):
        with pytest.raises(PoiseError, match="f_alpha must be in \\(0, 1\\)"):
            preference_loss(
                "sigmoid", pc, pr, rc, rr, f_divergence="alpha_divergence", f_alpha=f_alpha
            )
    with pytest.raises(ValueError, match="four \\[batch\\] tensors"):
        sigmoid_loss(pc, pr[:2], rc, rr)
    assert loss_parameters("robust") == {
        "beta": 0.1,
        "label_smoothing": 0.0,
        "f_divergence": "reverse_kl",
        "f_alpha": 0.5,
    }


def test_losses_give_gradients_to_the_policy_only_inputs() -> None:
    pc, pr, rc, rr = (t.clone().requires_grad_(i < 2) for i, t in enumerate(_random_logps(4, 2)))
    for name in LOSSES.names():
        params = {"chosen_lengths": torch.full((4,), 3), "rejected_lengths": torch.full((4,), 5)}
        accepted = loss_parameters(name)
        out = preference_loss(
            name, pc, pr, rc, rr, **{k: v for k, v in params.items() if k in accepted}
        )
        out.losses.mean().backward()
        assert pc.grad is not None and torch.isfinite(pc.grad).all(), name
        assert pc.grad.abs().sum() > 0, name
        pc.grad = None
        pr.grad = None


def test_f_divergence_scores_stay_finite_far_off_policy() -> None:
    far = torch.tensor([-500.0, 500.0])
    for f in ("forward_kl", "alpha_divergence"):
        out = sigmoid_loss(far, far.flip(0), torch.zeros(2), torch.zeros(2), f_divergence=f)
        assert torch.isfinite(out.losses).all(), f


def test_every_loss_stays_finite_far_off_policy() -> None:
    """Margins of ±1000 nats (β·Δ = ±100): every loss and its gradient are finite numbers.
    DiscoPOP's ``σ(z/τ)·exp(-z)`` was ``0·inf = NaN`` far below zero."""
    far = torch.tensor([-1000.0, 1000.0, -30.0, 0.0])
    zero = torch.zeros(4)
    lengths = {"chosen_lengths": torch.full((4,), 3), "rejected_lengths": torch.full((4,), 5)}
    for name in LOSSES.names():
        policy = far.clone().requires_grad_(True)
        accepted = loss_parameters(name)
        params = {k: v for k, v in lengths.items() if k in accepted}
        out = preference_loss(name, policy, zero, zero, zero, beta=0.1, **params)
        out.losses.sum().backward()
        assert torch.isfinite(out.losses).all(), (name, out.losses)
        assert policy.grad is not None and torch.isfinite(policy.grad).all(), (name, policy.grad)


def test_discopop_closed_form() -> None:
    """Eq. 5 of arXiv 2406.08414 with ``math``, where its plain form is representable."""
    pc, pr, rc, rr = _random_logps(8, seed=13)
    beta, tau = 0.3, 0.05
    out = preference_loss("discopop", pc, pr, rc, rr, beta=beta, discopop_tau=tau)
    for i in range(8):
        z = beta * ((float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i])))
        mix = 1 / (1 + math.exp(-z / tau))
        expected = (1 - mix) * math.log1p(math.exp(-z)) + mix * math.exp(-z)
        assert float(out.losses[i]) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# properties

_logp = st.floats(min_value=-200.0, max_value=0.0, allow_nan=False)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(pc=_logp, rc=_logp, rr=_logp, beta=st.floats(0.01, 5.0))
def test_zero_margin_gives_log_two(pc: float, rc: float, rr: float, beta: float) -> None:
    pr = rr + (pc - rc)  # the rejected response has the same log-ratio as the chosen one
    out = sigmoid_loss(_t(pc), _t(pr), _t(rc), _t(rr), beta=beta)
    assert float(out.losses[0]) == pytest.approx(math.log(2.0), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(pc=_logp, pr=_logp, rc=_logp, rr=_logp, beta=st.floats(0.01, 5.0))
def test_swapping_chosen_and_rejected_flips_the_logit(
    pc: float, pr: float, rc: float, rr: float, beta: float
) -> None:
    fwd = sigmoid_loss(_t(pc), _t(pr), _t(rc), _t(rr), beta=beta)
    back = sigmoid_loss(_t(pr), _t(pc), _t(rr), _t(rc), beta=beta)
    logit = float(fwd.chosen_rewards[0] - fwd.rejected_rewards[0])
    swapped = float(back.chosen_rewards[0] - back.rejected_rewards[0])
    assert swapped == pytest.approx(-logit, abs=1e-9)
    # softplus(-z) - softplus(z) = -z: the two losses differ by exactly the logit
    assert float(fwd.losses[0] - back.losses[0]) == pytest.approx(-logit, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    m1=st.floats(-30.0, 30.0),
    gap=st.floats(1e-3, 30.0),
    beta=st.floats(0.05, 2.0),
)
def test_sigmoid_loss_decreases_with_the_margin(m1: float, gap: float, beta: float) -> None:
    zero = _t(0.0)
    low = sigmoid_loss(_t(m1), zero, zero, zero, beta=beta).losses[0]
    high = sigmoid_loss(_t(m1 + gap), zero, zero, zero, beta=beta).losses[0]
    assert float(high) < float(low)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), beta=st.floats(0.01, 2.0))
def test_ld_dpo_with_alpha_one_is_dpo(seed: int, beta: float) -> None:
    batch = Batch(3, seed=seed)
    t = batch.poise_tokens()
    ld = ld_dpo_loss(
        t["policy_chosen"],
        t["policy_rejected"],
        t["reference_chosen"],
        t["reference_rejected"],
        t["chosen_mask"],
        t["rejected_mask"],
        ld_alpha=1.0,
        beta=beta,
    )
    torch.testing.assert_close(ld.losses, sigmoid_loss(*batch.summed(), beta=beta).losses)


def test_a_loss_that_cannot_be_called_as_the_trainer_calls_it_is_refused() -> None:
    # a plugin's fn(a, b) registered and then failed as "loss 'x' does not take beta (it takes:
    # )"; an option with a default but no '*' before it was invisible to loss_parameters
    from poise.train.losses import LOSSES
    from poise.train.losses.preference import register_loss

    def two(a: torch.Tensor, b: torch.Tensor) -> Any:
        return a

    def positional(
        pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float = 0.1
    ) -> Any:
        return pc

    def fine(
        pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, *, beta: float = 0.1
    ) -> Any:
        return pc

    try:
        with pytest.raises(ValueError, match=r"loss 'review_two' .*two.* must take the four "
                           r"\[B\] log-prob tensors positionally"):  # fmt: skip
            register_loss("review_two")(two)
        with pytest.raises(ValueError, match="option 'beta' must be keyword-only"):
            register_loss("review_positional")(positional)
        assert not {"review_two", "review_positional"} & set(LOSSES.names())
        register_loss("review_fine")(fine)
        assert loss_parameters("review_fine") == {"beta": 0.1}
    finally:
        LOSSES._entries.pop("review_fine", None)


@pytest.mark.parametrize("loss_type", ["ipo", "sigmoid_norm"])
def test_an_empty_response_counts_as_one_token_in_the_per_token_average(loss_type: str) -> None:
    """An empty response (summed log-probs 0 over 0 tokens) is averaged over 1 token, as TRL's
    ``chosen_mask.sum(dim=1).clamp(min=1.0)`` does: its score is 0, not 0/0 = NaN."""
    beta = 0.2
    pc, pr = torch.tensor([0.0, -4.0]), torch.tensor([-6.0, -2.0])
    rc, rr = torch.tensor([0.0, -3.0]), torch.tensor([-5.0, -4.0])
    lengths_c, lengths_r = torch.tensor([0, 2]), torch.tensor([3, 4])
    out = preference_loss(
        loss_type, pc, pr, rc, rr, beta=beta, chosen_lengths=lengths_c, rejected_lengths=lengths_r
    )
    delta = [(0.0 - 0.0) / 1 - (-6.0 + 5.0) / 3, (-4.0 + 3.0) / 2 - (-2.0 + 4.0) / 4]
    if loss_type == "ipo":  # arXiv 2310.12036 Eq. 17 on per-token averages
        expected = [(d - 1 / (2 * beta)) ** 2 for d in delta]
    else:
        expected = [-math.log(1 / (1 + math.exp(-beta * d))) for d in delta]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
