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
