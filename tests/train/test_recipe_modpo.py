"""``poise train modpo`` end to end with a tiny classifier as the margin reward model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_recipe_common import (  # noqa: F401
    build_tiny_classifier,
    one_torch_thread,
    weights,
    with_public_template,
    write_pairs,
)

from poise.errors import PoiseError
from poise.train.recipes.modpo import margin_rewards, train_modpo


@pytest.fixture(scope="module")
def margin_model(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_classifier(tmp_path_factory.mktemp("modpo") / "margin", tiny_hf_model_dir)


def test_modpo_trains_with_a_negated_margin_model(
    tiny_hf_model_dir: Path, margin_model: Path, tmp_path: Path
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    result = train_modpo(
        model=str(tiny_hf_model_dir),
        data=str(data),
        output=str(tmp_path / "out"),
        margin_reward_models=[f"neg:{margin_model}"],
        weights=[0.7, 0.3],
        lr=5e-3,
        batch_size=4,
        epochs=3,
        max_length=64,
        save_steps=0,
    )
    assert result.metrics["loss_end"] < result.metrics["loss_start"]
    before, after = weights(tiny_hf_model_dir), weights(tmp_path / "out")
    assert all(not torch.equal(before[k], after[k]) for k in before)
    header = json.loads((tmp_path / "out" / "poise_train.json").read_text())
    assert header["recipe"] == "modpo" and header["config"]["weights"] == [0.7, 0.3]


def test_margin_rewards_are_the_classifier_scores_and_neg_flips_them(
    tiny_hf_model_dir: Path, margin_model: Path, tmp_path: Path
) -> None:
    from poise.train.data import load_preferences
    from poise.train.recipes.modpo import MODPOConfig

    data = write_pairs(tmp_path / "pairs.jsonl", n=3)
    pairs = load_preferences(data)
    plain = MODPOConfig(
        model="m",
        data=str(data),
        output="o",
        margin_reward_models=[str(margin_model)],
        weights=[0.5, 0.5],
    )
    negated = plain.model_copy(update={"margin_reward_models": (f"neg:{margin_model}",)})
    chosen, rejected = margin_rewards(plain, pairs, "cpu")
    assert chosen.shape == rejected.shape == (3, 1)
    assert not torch.equal(chosen, rejected)  # different responses, different scores
    neg_chosen, _ = margin_rewards(negated, pairs, "cpu")
    torch.testing.assert_close(neg_chosen, -chosen)


def test_weights_must_match_the_margin_models(
    tiny_hf_model_dir: Path, margin_model: Path, tmp_path: Path
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=2)
    common = {"model": str(tiny_hf_model_dir), "data": str(data), "output": str(tmp_path / "out")}
    with pytest.raises(PoiseError, match="weights needs 2 numbers"):
        train_modpo(margin_reward_models=[str(margin_model)], weights=[0.2, 0.3, 0.5], **common)
    with pytest.raises(PoiseError, match="sum to 1"):
        train_modpo(margin_reward_models=[str(margin_model)], weights=[0.2, 0.3], **common)
    # w_k divides MODPO's logit (arXiv 2310.03708): a zero weight of the pairs' own objective is
    # refused with the config, before any folder or model is touched
    with pytest.raises(PoiseError, match="with the first > 0"):
        train_modpo(margin_reward_models=[str(margin_model)], weights=[0.0, 1.0], **common)
    with pytest.raises(PoiseError, match="not a sequence-classification model"):
        train_modpo(margin_reward_models=[str(tiny_hf_model_dir)], weights=[0.5, 0.5], **common)
    assert not (tmp_path / "out").exists()


def test_a_margin_model_whose_tokenizer_cannot_load_fails_before_the_output_folder(
    tiny_hf_model_dir: Path, margin_model: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "margin"
    shutil.copytree(margin_model, broken)
    (broken / "tokenizer.json").unlink()
    data = write_pairs(tmp_path / "pairs.jsonl", n=2)
    with pytest.raises(PoiseError, match="could not load the tokenizer"):
        train_modpo(
            model=str(tiny_hf_model_dir),
            data=str(data),
            output=str(tmp_path / "out"),
            margin_reward_models=[str(broken)],
            weights=[0.5, 0.5],
        )
    assert not (tmp_path / "out").exists()


def test_a_margin_model_whose_template_refuses_a_row_is_named_before_anything_is_written(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """The policy's template takes a system message, the margin model's (Gemma 2's) does not:
    the refusal came once the run had begun (a "running" folder without a model left behind)
    and named no row."""
    gemma = with_public_template(tiny_hf_model_dir, tmp_path / "gemma", "gemma2")
    margin = build_tiny_classifier(tmp_path / "margin", gemma)
    data = write_pairs(tmp_path / "pairs.jsonl", n=3)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[2]["prompt"] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": rows[2]["prompt"]},
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(PoiseError) as info:
        train_modpo(
            model=str(tiny_hf_model_dir),
            data=str(data),
            output=str(tmp_path / "out"),
            margin_reward_models=[str(margin)],
            weights=[0.5, 0.5],
        )
    message = str(info.value)
    assert message.startswith(f"{data}:3 ({margin}): the chat template rejected the chat (")
    assert "takes no system message" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_the_first_step_and_the_held_out_loss_are_modpos_on_the_margin_rewards(
    tiny_hf_model_dir: Path, margin_model: Path, tmp_path: Path
) -> None:
    """While the policy is its reference (step 1, and after a step of lr 1e-12) every log-ratio
    is 0, so MODPO's loss (arXiv 2310.03708) of pair i is ``-log σ(-(w_1/w_0)(m_c - m_r))``
    with ``m`` the margin model's rewards of its chosen and rejected responses. The first step
    is the first micro-batch of the epoch order over the training pairs; the held-out loss is
    the mean over every held-out pair (chunks of 2 and 1 weighted by their size); the
    prompts recorded as trained on are the training split's only."""
    from poise.train.data import load_preferences
    from poise.train.recipes.common import epoch_order, prompt_digest, split_holdout
    from poise.train.recipes.modpo import MODPOConfig

    data = write_pairs(tmp_path / "pairs.jsonl", n=6)
    out = tmp_path / "out"
    fields = {"margin_reward_models": [str(margin_model)], "weights": [0.6, 0.4], "max_length": 64}
    result = train_modpo(
        model=str(tiny_hf_model_dir),
        data=str(data),
        output=str(out),
        eval_fraction=0.5,
        lr=1e-12,
        batch_size=2,
        max_steps=1,
        save_steps=0,
        **fields,
    )
    config = MODPOConfig(model="m", data=str(data), output="o", **fields)
    chosen, rejected = margin_rewards(config, load_preferences(data), "cpu")  # [6, 1]
    margin = (chosen - rejected)[:, 0].double()
    losses = -torch.nn.functional.logsigmoid(-(0.4 / 0.6) * margin)  # [6]
    train, held = split_holdout(6, 0.5, 0)
    first = [train[j] for j in epoch_order(len(train), 0, 0)[:2]]
    log = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert log["loss"] == pytest.approx(float(losses[first].mean()), rel=1e-5)
    assert result.metrics["eval/loss"] == pytest.approx(float(losses[held].mean()), rel=1e-5)
    recorded = json.loads((out / "poise.json").read_text())["trained_prompts_sha256"]
    prompts = [f"How do I bake bread number {i}?" for i in train]
    assert sorted(recorded) == sorted(prompt_digest(p) for p in prompts)
