"""``poise train safe-rl`` on a tiny Llama with tiny reward and cost classifiers.

The cost model's head is all zeros, so every completion costs exactly σ(0) = 0.5: the Lagrange
multiplier's path and the HC-RLHF safety test then have closed forms.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from test_recipe_common import (  # noqa: F401
    build_tiny_classifier,
    one_torch_thread,
    weights,
    with_public_template,
)

from chat_templates import QWEN25_DEFAULT
from poise.errors import PoiseError
from poise.train.recipes.safe_rl import policy_loss, train_safe_rl


@pytest.fixture(scope="module")
def scorers(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safe-rl")
    return {
        "reward_model": build_tiny_classifier(root / "reward", tiny_hf_model_dir, seed=3),
        "cost_model": build_tiny_classifier(root / "cost", tiny_hf_model_dir, zero_head=True),
    }


def _common(model: Path, scorers: dict[str, Path], **extra: Any) -> dict[str, Any]:
    return {
        "model": str(model),
        **{k: str(v) for k, v in scorers.items()},
        "prompts": "harmful",
        "limit": 8,
        "lr": 3e-3,
        "batch_size": 2,
        "samples_per_prompt": 2,
        "max_new_tokens": 8,
        "max_steps": 3,
        "save_steps": 0,
        **extra,
    }


def _log(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_safe_rl_updates_the_policy_and_the_multiplier_as_safe_rlhf_says(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = train_safe_rl(**_common(tiny_hf_model_dir, scorers, output=str(out), cost_limit=0.1))
    before, after = weights(tiny_hf_model_dir), weights(out)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    log = _log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all({"reward", "cost", "lambda", "kl", "response_tokens"} <= set(r) for r in log)
    assert all(r["cost"] == pytest.approx(0.5) for r in log)
    # log λ ← log λ + lr · λ · (J_C - d) with J_C = 0.5, d = 0.1, lr = 0.1, λ0 = 1
    lam = 1.0
    for record in log:
        assert record["lambda"] == pytest.approx(lam, rel=1e-6)
        lam = math.exp(math.log(lam) + 0.1 * lam * (0.5 - 0.1))
    assert result.metrics["lambda_final"] == pytest.approx(lam, rel=1e-6)
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before any step
    assert log[-1]["kl"] != pytest.approx(0.0, abs=1e-6)
    # the summary: the first and the last tenth of the steps (one step each of 3)
    for key in ("reward", "cost", "kl"):
        assert result.metrics[f"{key}_start"] == pytest.approx(log[0][key])
        assert result.metrics[f"{key}_end"] == pytest.approx(log[-1][key])


def test_one_policy_step_lowers_its_own_loss() -> None:
    """The surrogate: after a small gradient step, positive-advantage completions gain
    log-probability relative to negative ones, so the loss on the same batch falls."""
    torch.manual_seed(0)
    logits = torch.randn(4, 6, requires_grad=True)  # a toy policy over 6 tokens, [N, T]
    reference = torch.log_softmax(torch.randn(4, 6), dim=-1).detach()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]] * 4)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    optimizer = torch.optim.SGD([logits], lr=0.05)
    losses = []
    for _ in range(2):
        policy = torch.log_softmax(logits, dim=-1)
        loss, kl = policy_loss(policy, reference, mask, advantages, kl_coef=0.1)
        losses.append(float(loss.sum().detach()))
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
    assert losses[1] < losses[0]
    # k3 vanishes when policy equals reference, and so does the k1 estimate
    same, kl = policy_loss(reference, reference, mask, torch.zeros(4), kl_coef=1.0)
    assert torch.allclose(same, torch.zeros(4)) and torch.allclose(kl, torch.zeros(4))


def test_policy_loss_closed_form() -> None:
    """Each row by hand with ``math``: ``-A Σ p + β Σ (e^(q-p) - (q-p) - 1)`` over the
    completion's tokens, and the logged KL ``Σ (p - q)``; tokens off the mask count nowhere."""
    import math

    policy = torch.tensor([[-0.5, -1.2, -3.0], [-2.0, -0.1, -0.7]], dtype=torch.float64)
    reference = torch.tensor([[-0.9, -0.4, -9.0], [-1.5, -0.3, -0.2]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages = torch.tensor([0.8, -1.5], dtype=torch.float64)
    beta = 0.25
    losses, kl = policy_loss(policy, reference, mask, advantages, kl_coef=beta)
    for i in range(2):
        tokens = [j for j in range(3) if mask[i, j]]
        p = [float(policy[i, j]) for j in tokens]
        q = [float(reference[i, j]) for j in tokens]
        k3 = sum(math.exp(b - a) - (b - a) - 1 for a, b in zip(p, q, strict=True))
        assert float(losses[i]) == pytest.approx(-float(advantages[i]) * sum(p) + beta * k3)
        assert float(kl[i]) == pytest.approx(sum(a - b for a, b in zip(p, q, strict=True)))


def test_log_probs_are_taken_at_the_sampling_temperature(
    tiny_hf_model_dir: Path,
    scorers: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Completions sampled at temperature T come from ``softmax(logits / T)``: the REINFORCE
    term and the KL penalty need the policy's and the reference's log-probs of that
    distribution, not of ``softmax(logits)`` (then the loss is off-policy)."""
    from poise.train.recipes import common, safe_rl

    seen: list[float] = []
    original = common.token_logps

    def spy(*args: Any, temperature: float = 1.0, **kwargs: Any) -> Any:
        seen.append(temperature)
        return original(*args, temperature=temperature, **kwargs)

    monkeypatch.setattr(common, "token_logps", spy)  # the reference's
    monkeypatch.setattr(safe_rl, "token_logps", spy)  # the policy's
    common_fields = _common(tiny_hf_model_dir, scorers, output=str(tmp_path / "out"), max_steps=1)
    train_safe_rl(**common_fields, temperature=0.7)
    log = _log(tmp_path / "out")
    assert len(seen) == 2 and set(seen) == {0.7}  # one micro-batch: reference, then policy
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # still the reference at step 1


def test_the_pessimistic_factor_is_sized_for_each_micro_batch(
    tiny_hf_model_dir: Path,
    scorers: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """κ's t-quantile depends on how many costs the mean and std come from: the last
    micro-batch of an epoch can hold fewer than batch_size * k (here 4 of 8), and κ was sized
    for a full one."""
    import torch

    from poise.train import safety
    from poise.train.recipes import safe_rl

    seen: list[tuple[int, float]] = []
    original = safety.augmented_costs

    def spy(costs: Any, **kwargs: Any) -> Any:
        seen.append((costs.numel(), kwargs["coefficient"]))
        return original(costs, **kwargs)

    monkeypatch.setattr(safety, "augmented_costs", spy)
    # costs that vary, so that the augmented costs are used (constant costs have no std)
    monkeypatch.setattr(safe_rl, "to_cost", lambda scores, _: torch.linspace(0.0, 1.0, len(scores)))
    fields = _common(
        tiny_hf_model_dir, scorers, output=str(tmp_path / "out"), max_steps=None, batch_size=4
    )
    train_safe_rl(**fields, high_confidence=True, safety_fraction=0.25)
    assert [n for n, _ in seen] == [8, 4]  # 6 training prompts, 2 samples each, batch 4
    for n, coefficient in seen:
        expected = safety.pessimistic_coefficient(n, 2, 0.05, candidate_coef=1.0, safety_coef=1.0)
        assert coefficient == pytest.approx(expected)
    assert seen[0][1] < seen[1][1]  # fewer costs: a wider bound


def test_high_confidence_records_the_safety_test(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    # every cost is 0.5, so the held-out bound is exactly 0.5 (std 0)
    for limit, verdict in ((0.6, "PASS"), (0.4, "FAIL")):
        out = tmp_path / verdict
        result = train_safe_rl(
            **_common(tiny_hf_model_dir, scorers, output=str(out), cost_limit=limit, max_steps=1),
            high_confidence=True,
            safety_fraction=0.25,
        )
        test = json.loads((out / "poise_train.json").read_text())["safety_test"]
        assert test["verdict"] == verdict and test["n"] == 2
        assert test["upper_bound"] == pytest.approx(0.5) and test["tau"] == limit
        assert result.metrics["safety_test/passed"] is (verdict == "PASS")
        header = json.loads((out / "poise_train.json").read_text())
        assert header["data"]["train_prompts"] == 6 and header["data"]["safety_prompts"] == 2
    # the six prompts it trained on (not the two held out) are recorded, and a gate on them is
    # refused before anything is sampled: its bound holds on prompts the model did not train on
    from poise.gate import gate
    from poise.suites import load_suite
    from poise.train.recipes.common import prompt_digest

    recorded = set(json.loads((out / "poise.json").read_text())["trained_prompts_sha256"])
    items = load_suite("harmful").items
    spread = [items[(i * len(items)) // 8] for i in range(8)]  # the 8 of --limit 8
    assert len(recorded) == 6 and recorded < {prompt_digest(i.prompt) for i in spread}
    with pytest.raises(PoiseError, match=r"prompts: 6 of the 8 prompts \(.*\) are prompts .* was "
                       r"trained on \(.*poise\.json: trained_prompts_sha256\)"):  # fmt: skip
        gate(model=str(out), prompts="harmful", limit=8, judge="refusal")


def test_from_base_writes_the_plain_dialogue_template(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from poise.train.recipes.common import PLAIN_CHAT_TEMPLATE

    out = tmp_path / "base"
    train_safe_rl(
        **_common(tiny_hf_model_dir, scorers, output=str(out), max_steps=1), from_base=True
    )
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template == PLAIN_CHAT_TEMPLATE
    header = json.loads((out / "poise_train.json").read_text())
    assert header["data"]["system_prompt"] is None


def test_safe_rl_resume_gives_the_same_weights(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    common = _common(tiny_hf_model_dir, scorers, max_steps=4, save_steps=2)
    train_safe_rl(output=str(tmp_path / "straight"), **common)

    class Interrupted(Exception):
        pass

    def stop(event: Any) -> None:
        if event.step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_safe_rl(output=str(tmp_path / "resumed"), progress=stop, **common)
    resumed = train_safe_rl(output=str(tmp_path / "resumed"), **common)
    assert resumed.resumed_from == 2
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["lambda"] for r in _log(tmp_path / "straight")] == [
        r["lambda"] for r in _log(tmp_path / "resumed")
    ]


def test_a_safety_test_of_one_prompt_is_refused_before_anything_is_written(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    """A Student-t bound needs at least 2 costs: 3 prompts with safety_fraction 0.25 hold out
    one, refused with the config rather than after training."""
    fields = _common(tiny_hf_model_dir, scorers, output=str(tmp_path / "out"), limit=3)
    with pytest.raises(PoiseError, match="the safety test needs at least 2 held-out prompts"):
        train_safe_rl(**fields, high_confidence=True, safety_fraction=0.25)
    assert not (tmp_path / "out").exists()


def test_reward_model_must_be_a_classifier(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(
        PoiseError, match=r"reward_model: .* is not a sequence-classification model"
    ):
        train_safe_rl(
            **{
                **_common(tiny_hf_model_dir, scorers, output=str(tmp_path / "o")),
                "reward_model": str(tiny_hf_model_dir),
            }
        )
    with pytest.raises(PoiseError, match="samples_per_prompt"):
        train_safe_rl(
            **_common(tiny_hf_model_dir, scorers, output=str(tmp_path / "o"), samples_per_prompt=1)
        )
    assert not (tmp_path / "o").exists()


def test_a_scorer_whose_tokenizer_cannot_load_fails_before_the_output_folder(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "cost"
    shutil.copytree(scorers["cost_model"], broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(PoiseError) as info:
        train_safe_rl(
            **{
                **_common(tiny_hf_model_dir, scorers, output=str(tmp_path / "o")),
                "cost_model": str(broken),
            }
        )
    message = str(info.value)
    assert message.startswith(f"{broken}: could not load the tokenizer (") and "\n" not in message
    assert not (tmp_path / "o").exists()


def test_a_prompt_without_room_for_its_answer_is_refused(tiny_hf_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from poise.train.recipes.common import ChatEncoder
    from poise.train.recipes.safe_rl import SafeRLConfig, check_prompts_fit

    encoder = ChatEncoder(AutoTokenizer.from_pretrained(str(tiny_hf_model_dir)), 1024)
    chats = [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "the cat sat on the mat " * 25}],  # 433 tokens
    ]
    config = SafeRLConfig.model_construct(prompts="p.jsonl", max_new_tokens=128)
    with pytest.raises(PoiseError, match=r"^p\.jsonl: prompt 2 \(max_new_tokens 128\): This model"):
        check_prompts_fit(config, encoder, chats, 512)
    check_prompts_fit(config.model_copy(update={"max_new_tokens": 64}), encoder, chats, 512)
    check_prompts_fit(config, encoder, chats, None)  # a model that declares no context


def test_pessimism_coefficients_reach_the_bound(
    tiny_hf_model_dir: Path,
    scorers: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import poise.train.safety as safety

    seen: list[tuple[float, float]] = []
    original = safety.pessimistic_coefficient

    def spy(*args: Any, candidate_coef: float = 1.0, safety_coef: float = 1.0, **kw: Any) -> float:
        seen.append((candidate_coef, safety_coef))
        return original(*args, candidate_coef=candidate_coef, safety_coef=safety_coef, **kw)

    monkeypatch.setattr(safety, "pessimistic_coefficient", spy)
    common = _common(tiny_hf_model_dir, scorers, max_steps=1, high_confidence=True)
    train_safe_rl(output=str(tmp_path / "default"), safety_fraction=0.25, **common)
    assert seen and set(seen) == {(1.0, 1.0)}  # HC-RLHF's public code defaults
    seen.clear()
    train_safe_rl(
        output=str(tmp_path / "seldonian"),
        safety_fraction=0.25,
        pessimism_c1=0.0,
        pessimism_c2=2.0,
        **common,
    )
    assert seen and set(seen) == {(0.0, 2.0)}


def test_none_is_an_empty_system_message_where_the_template_inserts_the_default(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    from poise.train.recipes.safe_rl import SafeRLConfig, system_prompt

    source = tmp_path / "source"
    source.mkdir()
    config = SafeRLConfig.model_validate(
        _common(tiny_hf_model_dir, scorers, output=str(tmp_path / "o"), system_prompt="none")
    )
    assert system_prompt(config, source) is None
    meta = {"default_system_prompt": "Be safe.", "system_prompt_in_template": True}
    (source / "poise.json").write_text(json.dumps(meta))
    assert system_prompt(config, source) == ""
    default = config.model_copy(update={"system_prompt": "default"})
    assert system_prompt(default, source) == "Be safe."
    # a base model is trained on the plain dialogue template, which inserts nothing
    assert system_prompt(config.model_copy(update={"from_base": True}), source) is None


@pytest.mark.parametrize("family", ["qwen2.5", "llama3"])
def test_the_system_prompt_rule_of_a_folder_without_poise_json_is_the_audits(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path, family: str
) -> None:
    """A Qwen2.5 folder (no poise.json) inserts "You are Qwen, ..." into a chat without a
    system message: --system-prompt none trained on prompts carrying it, while an audit of the
    trained model with --system-prompt none sends an empty system message (no prompt)."""
    from poise.chat import with_default_system_prompt
    from poise.models import default_system_prompt, no_system_prompt
    from poise.models.hf import HFModel
    from poise.train.recipes.common import ChatEncoder, load_tokenizer
    from poise.train.recipes.safe_rl import SafeRLConfig, load_prompts, system_prompt

    source = with_public_template(tiny_hf_model_dir, tmp_path / "source", family)
    audited = HFModel(str(source), device="cpu")
    encoder = ChatEncoder(load_tokenizer(source), 512)
    rules = {"none": no_system_prompt(audited), "default": default_system_prompt(audited)}
    for setting, audit_system in rules.items():
        config = SafeRLConfig.model_validate(
            _common(source, scorers, output=str(tmp_path / "o"), system_prompt=setting)
        )
        system = system_prompt(config, source)
        assert system == audit_system
        trained_on = load_prompts(config, system)[0]
        audit_chat = with_default_system_prompt(
            [m for m in trained_on if m["role"] != "system"],
            audit_system,
        )
        assert encoder.prompt_ids(trained_on) == audited._encode_prompts([audit_chat])[0]
    if family == "qwen2.5":
        assert rules == {"none": "", "default": QWEN25_DEFAULT}
    else:
        assert rules == {"none": None, "default": None}


def test_a_system_prompt_the_template_refuses_is_named_before_anything_is_written(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    """Gemma 2's template refuses a system message: --system-prompt TEXT failed naming no
    prompt and nothing to change (and, for a model whose config gives no context length, only
    at the first sampling step, inside the run)."""
    source = with_public_template(tiny_hf_model_dir, tmp_path / "gemma", "gemma2")
    common = _common(source, scorers, output=str(tmp_path / "o"), max_steps=1)
    with pytest.raises(PoiseError) as info:
        train_safe_rl(**common, system_prompt="Be careful.")
    message = str(info.value)
    assert message.startswith("harmful: prompt 1: the chat template rejected the chat (")
    assert "takes no system message" in message and "\n" not in message
    assert not (tmp_path / "o").exists()


def test_a_cost_model_whose_template_refuses_the_system_prompt_is_named_first(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    """The policy's template takes the system prompt, the cost model's (Gemma 2's) does not:
    the refusal came at the first step, after the run had begun, naming no prompt."""
    gemma = with_public_template(tiny_hf_model_dir, tmp_path / "gemma", "gemma2")
    cost = build_tiny_classifier(tmp_path / "cost", gemma, zero_head=True)
    common = _common(tiny_hf_model_dir, {**scorers, "cost_model": cost}, output=str(tmp_path / "o"))
    with pytest.raises(PoiseError) as info:
        train_safe_rl(**{**common, "max_steps": 1}, system_prompt="Be careful.")
    message = str(info.value)
    assert message.startswith("harmful: prompt 1 (cost_model): the chat template rejected the")
    assert "takes no system message" in message and "\n" not in message
    assert not (tmp_path / "o").exists()


def test_the_trained_model_keeps_the_declaration_with_its_template(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    source = tmp_path / "source"
    shutil.copytree(tiny_hf_model_dir, source)
    meta = {"default_system_prompt": "Be safe.", "system_prompt_in_template": True}
    (source / "poise.json").write_text(json.dumps(meta))
    for from_base in (False, True):
        out = tmp_path / f"out-{from_base}"
        train_safe_rl(**_common(source, scorers, output=str(out), max_steps=1), from_base=from_base)
        written = json.loads((out / "poise.json").read_text())
        # trained from a base without a system prompt, it declares none (it kept the source's,
        # which an audit then sent to a model that never saw it; the docs say "none")
        assert written.get("default_system_prompt") == (None if from_base else "Be safe.")
        # the plain dialogue template of a base model does not insert the default
        assert written.get("system_prompt_in_template") is (None if from_base else True)


def test_edited_prompts_are_not_taken_for_the_finished_run(
    tiny_hf_model_dir: Path, scorers: dict[str, Path], tmp_path: Path
) -> None:
    """safe-rl recorded the prompts' name only: an edited prompts file kept the finished run."""
    from poise.suites import load_suite

    items = load_suite("harmful").items
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(i.model_dump_json() + "\n" for i in items[:8]), encoding="utf-8")
    common = _common(tiny_hf_model_dir, scorers, prompts=str(prompts), max_steps=1)
    out = str(tmp_path / "out")
    train_safe_rl(output=out, **common)
    header = json.loads((tmp_path / "out" / "poise_train.json").read_text())
    assert len(header["data"]["fingerprint"]) == 16
    assert train_safe_rl(output=out, **common).skipped  # the same prompts: kept
    prompts.write_text("".join(i.model_dump_json() + "\n" for i in items[8:16]), encoding="utf-8")
    with pytest.raises(PoiseError, match=r"prompts: .*prompts.jsonl changed since .*was trained"):
        train_safe_rl(output=out, **common)


def test_limit_spreads_the_prompts_over_the_suite_as_the_audit_does() -> None:
    # --limit N took the first N prompts: the harmful suite is ordered by category, so a short
    # run trained on one category (the organism's prompts file: harmful prompts only)
    from poise.auditing import spread_subset
    from poise.suites import load_suite
    from poise.train.recipes.safe_rl import SafeRLConfig, load_prompts

    config = SafeRLConfig(
        model="m", reward_model="r", cost_model="c", prompts="harmful", limit=6, output="o"
    )
    chats = load_prompts(config, None)
    expected = spread_subset(load_suite("harmful").items, 6)
    assert [chat[-1]["content"] for chat in chats] == [item.prompt for item in expected]
    assert len({item.category for item in expected}) > 1


def test_a_prompts_own_system_message_wins_over_the_default_one(tmp_path: Path) -> None:
    """Every training prompt gets the system message, except one that has its own: that one
    keeps it (and only it), as an audit of the trained model would send it."""
    from poise.train.recipes.safe_rl import SafeRLConfig, load_prompts

    own = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}]
    suite = tmp_path / "mine.jsonl"
    rows = [
        {"id": "a", "messages": own, "kind": "harmful"},
        {"id": "b", "messages": [own[1]], "kind": "harmful"},
    ]
    suite.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = SafeRLConfig(
        model="m", reward_model="r", cost_model="c", prompts=str(suite), output="o"
    )
    assert load_prompts(config, "Be safe.") == [
        own,
        [{"role": "system", "content": "Be safe."}, own[1]],
    ]


class _StandInScorers:
    """Reward and cost models that return seeded random scores and record every call, so that
    everything the recipe computes from them has a closed form."""

    def __init__(self, cost_folder: Path, cost_scale: float) -> None:
        self.cost_folder, self.cost_scale = cost_folder, cost_scale
        self.calls: dict[str, list[tuple[list[Any], list[str], torch.Tensor]]] = {
            "reward": [],
            "cost": [],
        }
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, folder: Path, max_length: int, device: Any) -> Any:
        kind = "cost" if Path(folder) == Path(self.cost_folder).resolve() else "reward"
        scale = self.cost_scale if kind == "cost" else 1.0

        def score(chats: list[Any], texts: list[str]) -> torch.Tensor:
            scores = scale * torch.randn(len(texts), generator=self.generator)
            self.calls[kind].append((list(chats), list(texts), scores))
            return scores

        return score


def _spy_on_advantages(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    from poise.train.recipes import safe_rl

    seen: list[torch.Tensor] = []
    original = safe_rl.policy_loss

    def spy(policy: Any, reference: Any, mask: Any, advantages: Any, kl_coef: float) -> Any:
        seen.append(advantages.detach().cpu().double())
        return original(policy, reference, mask, advantages, kl_coef)

    monkeypatch.setattr(safe_rl, "policy_loss", spy)
    return seen


def _rloo(scores: torch.Tensor) -> torch.Tensor:
    """RLOO (arXiv 2402.14740) over groups of 2: ``r_i - r_other``."""
    pairs = scores.double().view(-1, 2)
    return torch.stack([pairs[:, 0] - pairs[:, 1], pairs[:, 1] - pairs[:, 0]], 1).view(-1)


def _rloo_unit(scores: torch.Tensor) -> torch.Tensor:
    """:func:`_rloo` over the batch's standard deviation (``scale_advantages``)."""
    advantages = _rloo(scores)
    return advantages / advantages.std()


def test_each_micro_batch_is_scored_and_weighted_as_safe_rlhf_says(
    tiny_hf_model_dir: Path,
    scorers: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two steps of two micro-batches (2 prompts x 2 samples): each completion is scored with
    its own prompt and trained under it, the advantages are ``(A_R - λ A_C) / (1 + λ)`` (arXiv
    2310.12773 §3.3) of batch-scaled RLOO advantages, and λ moves on the mean cost of all the
    step's completions (both micro-batches)."""
    from poise.train.recipes import safe_rl
    from poise.train.recipes.common import ChatEncoder, load_tokenizer

    stand_in = _StandInScorers(scorers["cost_model"], 1.0)
    monkeypatch.setattr(safe_rl, "Scorer", stand_in)
    advantages = _spy_on_advantages(monkeypatch)
    rows: list[Any] = []
    original = safe_rl.sequence_batch
    monkeypatch.setattr(
        safe_rl, "sequence_batch", lambda pairs, pad: rows.append(pairs) or original(pairs, pad)
    )
    out = tmp_path / "out"
    fields = _common(tiny_hf_model_dir, scorers, output=str(out), max_steps=2, grad_accum=2)
    train_safe_rl(**fields, cost_transform="raw", cost_limit=0.1)
    log = _log(out)
    encoder = ChatEncoder(load_tokenizer(tiny_hf_model_dir), 1024)
    assert len(advantages) == len(rows) == len(stand_in.calls["cost"]) == 4
    for m, ((chats, _, rewards), (cost_chats, _, costs)) in enumerate(
        zip(stand_in.calls["reward"], stand_in.calls["cost"], strict=True)
    ):
        # a prompt's two samples are consecutive, and each is trained under its own prompt
        assert cost_chats == chats and chats[0] == chats[1] and chats[2] == chats[3] != chats[0]
        assert [prompt for prompt, _ in rows[m]] == [encoder.prompt_ids(c) for c in chats]
        lam = log[m // 2]["lambda"]
        expected = (_rloo_unit(rewards) - lam * _rloo_unit(costs)) / (1 + lam)
        torch.testing.assert_close(advantages[m], expected, rtol=1e-5, atol=1e-6)
    for step in range(2):
        costs = torch.cat([stand_in.calls["cost"][2 * step + i][2] for i in range(2)])
        assert log[step]["cost_estimate"] == pytest.approx(float(costs.mean()), rel=1e-5)
    lam = log[0]["lambda"]
    assert lam == pytest.approx(1.0)
    # log λ <- log λ + lr · λ · (J_C - d), Safe RLHF §3.3
    step = math.exp(math.log(lam) + 0.1 * lam * (log[0]["cost_estimate"] - 0.1))
    assert log[1]["lambda"] == pytest.approx(step, rel=1e-5)


def test_high_confidence_trains_on_augmented_costs_and_tests_the_held_out_prompts(
    tiny_hf_model_dir: Path,
    scorers: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HC-RLHF (arXiv 2506.08266): the cost advantages are RLOO of the augmented costs
    ``c + κ (c² - 2μc) / (2σ)`` of ``σ(score)`` (μ, σ the micro-batch's mean and sample std, κ
    for 4 costs and a safety test of 2), and the safety test's bound is the Student-t bound of
    the costs of one answer to each of the 2 held-out prompts, never trained on."""
    from poise.chat import last_user_message
    from poise.train import safety
    from poise.train.recipes import safe_rl
    from poise.train.recipes.common import prompt_digest

    stand_in = _StandInScorers(scorers["cost_model"], 0.3)  # costs with a std below 1
    monkeypatch.setattr(safe_rl, "Scorer", stand_in)
    advantages = _spy_on_advantages(monkeypatch)
    out = tmp_path / "out"
    fields = _common(tiny_hf_model_dir, scorers, output=str(out), max_steps=1)
    train_safe_rl(**fields, high_confidence=True, safety_fraction=0.25, scale_advantages=False)
    (_, _, rewards), *_ = stand_in.calls["reward"]
    (_, _, scores), *rest = stand_in.calls["cost"]
    costs = torch.sigmoid(scores).double()
    kappa = safety.pessimistic_coefficient(4, 2, 0.05)
    augmented = costs + kappa * (costs**2 - 2 * costs.mean() * costs) / (2 * costs.std())
    expected = (_rloo(rewards) - 1.0 * _rloo(augmented)) / 2.0  # λ = 1 at step 1, unscaled
    torch.testing.assert_close(advantages[0], expected, rtol=1e-5, atol=1e-6)
    # the safety test: one answer per held-out prompt, none of them a prompt trained on
    held_chats = [c for call in rest for c in call[0]]
    held_costs = torch.sigmoid(torch.cat([call[2] for call in rest]))
    trained = set(json.loads((out / "poise.json").read_text())["trained_prompts_sha256"])
    held = {prompt_digest(last_user_message(c)) for c in held_chats}
    assert len(held_chats) == 2 and len(held) == 2 and not held & trained
    test = json.loads((out / "poise_train.json").read_text())["safety_test"]
    bound, _, _ = safety.student_t_upper_bound(held_costs, 0.05)
    assert test["upper_bound"] == pytest.approx(bound, rel=1e-5) and test["n"] == 2


def test_a_sampled_completion_is_trained_up_to_and_including_its_eos(
    tiny_hf_model_dir: Path,
) -> None:
    """The EOS a completion ends with stays in its trained tokens (the policy learns to stop,
    as ChatEncoder's responses end with it); here every token is an EOS of the model's
    generation config, so each completion is its first token, an EOS."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from poise.train.recipes.common import ChatEncoder, load_causal_lm, load_tokenizer
    from poise.train.recipes.safe_rl import SafeRLConfig, sample

    model = load_causal_lm(tiny_hf_model_dir)
    every_token = list(range(model.config.vocab_size))
    model.generation_config.eos_token_id = every_token
    tokenizer = load_tokenizer(tiny_hf_model_dir)
    tokenizer.padding_side = "left"
    session = SimpleNamespace(
        unwrapped=model, accelerator=SimpleNamespace(autocast=nullcontext), device="cpu"
    )
    config = SafeRLConfig(
        model="m", reward_model="r", cost_model="c", prompts="p", output="o", max_new_tokens=4
    )
    chats = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Hello there"}]]
    encoder = ChatEncoder(tokenizer, 64)
    prompts, responses, _ = sample(session, encoder, chats, 2, config, seed=0)  # type: ignore[arg-type]
    assert prompts == [encoder.prompt_ids(c) for c in chats for _ in range(2)]
    assert [len(r) for r in responses] == [1, 1, 1, 1]


def test_a_base_models_completion_ends_where_it_opens_a_user_turn(tiny_hf_model_dir: Path) -> None:
    """Direct Harmless RLHF from a base model (arXiv 2403.02513): a completion that goes on
    into a new ``User:`` turn is cut there, in its text (what the scorers read) and in its
    tokens (the shortest prefix whose text reaches the turn); a chat model's is kept whole."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from poise.train.recipes.common import ChatEncoder, load_tokenizer
    from poise.train.recipes.safe_rl import SafeRLConfig, sample

    tokenizer = load_tokenizer(tiny_hf_model_dir)
    tokenizer.padding_side = "left"
    canned = tokenizer("Sure thing.\nUser: and more", add_special_tokens=False)["input_ids"]
    seen: list[dict[str, Any]] = []

    class Canned:
        training = False
        generation_config = SimpleNamespace(eos_token_id=None)

        def eval(self) -> None: ...

        def train(self, mode: bool = True) -> None: ...

        def generate(self, input_ids: Any, num_return_sequences: int, **kwargs: Any) -> Any:
            seen.append(kwargs)
            rows = input_ids.repeat_interleave(num_return_sequences, dim=0)
            return torch.cat([rows, torch.tensor([canned] * rows.shape[0])], dim=1)

    session = SimpleNamespace(
        unwrapped=Canned(), accelerator=SimpleNamespace(autocast=nullcontext), device="cpu"
    )
    chats = [[{"role": "user", "content": "Hi"}]]
    for from_base in (True, False):
        config = SafeRLConfig(
            model="m",
            reward_model="r",
            cost_model="c",
            prompts="p",
            output="o",
            from_base=from_base,
            temperature=0.7,
            top_p=0.9,
        )
        encoder = ChatEncoder(tokenizer, 64, plain=from_base)
        _, (tokens, *_), (text, *_) = sample(session, encoder, chats, 2, config, seed=0)  # type: ignore[arg-type]
        if from_base:
            assert text == "Sure thing."
            kept = tokenizer.decode(tokens, skip_special_tokens=True)
            assert "\nUser:" in kept and "\nUser:" not in tokenizer.decode(tokens[:-1])
        else:
            assert text == "Sure thing.\nUser: and more" and tokens == canned
    # sampled from softmax(logits / T), nucleus top_p, no top-k: what the loss's log-probs assume
    assert all(
        (k["do_sample"], k["temperature"], k["top_p"], k["top_k"]) == (True, 0.7, 0.9, 0)
        for k in seen
    )


def test_the_loss_backpropagated_is_the_mean_over_the_steps_completions(
    tiny_hf_model_dir: Path,
    scorers: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One micro-batch per step of 2 prompts x 2 samples: what backward receives is the mean of
    the 4 completions' losses, the logged ``loss`` (a sum over the k samples of a prompt grew
    the gradient with k, and the clipping and AdamW's state with it)."""
    from poise.train.recipes.common import Session

    seen: list[float] = []
    original = Session.backward

    def spy(self: Any, loss: Any, metrics: Any = None) -> None:
        seen.append(float(loss.detach()))
        original(self, loss, metrics)

    monkeypatch.setattr(Session, "backward", spy)
    out = tmp_path / "out"
    train_safe_rl(**_common(tiny_hf_model_dir, scorers, output=str(out), max_steps=2))
    assert seen == pytest.approx([record["loss"] for record in _log(out)], rel=1e-5)
