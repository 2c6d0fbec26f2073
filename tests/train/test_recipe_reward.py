"""``poise train reward`` and ``poise train cost`` end to end on a tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_recipe_common import one_torch_thread, weights, write_pairs  # noqa: F401

from poise.errors import PoiseError
from poise.train.recipes.reward import train_cost, train_reward

FAST = {"lr": 5e-3, "batch_size": 4, "max_length": 64, "save_steps": 0, "epochs": 3}


def test_reward_model_learns_the_preference_and_reports_held_out_accuracy(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    data = write_pairs(tmp_path / "pairs.jsonl", n=10)
    result = train_reward(
        model=str(tiny_hf_model_dir),
        data=str(data),
        output=str(tmp_path / "rm"),
        eval_fraction=0.2,
        **FAST,
    )
    assert result.metrics["loss_end"] < result.metrics["loss_start"]
    header = json.loads((tmp_path / "rm" / "poise_train.json").read_text())
    assert header["data"]["eval_pairs"] == 2 and header["data"]["train_pairs"] == 8
    assert header["metrics"]["eval/accuracy"] == 1.0  # the held-out pairs share the pattern
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm"))
    assert model.config.num_labels == 1
    # every parameter of the backbone moved, and the new head exists
    before, after = weights(tiny_hf_model_dir), weights(tmp_path / "rm")
    assert "score.weight" in after
    shared = [k for k in before if k in after]
    assert shared and all(not torch.equal(before[k], after[k]) for k in shared)


def test_cost_model_puts_unsafe_responses_above_zero(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    from poise.train.data import load_preferences
    from poise.train.recipes.common import (
        ChatEncoder,
        classifier_scores,
        load_classifier,
        load_tokenizer,
    )

    data = write_pairs(tmp_path / "pairs.jsonl", n=10, safety=True)
    result = train_cost(
        model=str(tiny_hf_model_dir),
        data=str(data),
        output=str(tmp_path / "cm"),
        eval_fraction=0.2,
        **FAST,
    )
    assert result.metrics["loss_end"] < result.metrics["loss_start"]
    assert {"eval/accuracy", "eval/sign_accuracy"} <= set(result.metrics)
    folder = tmp_path / "cm"
    before, after = weights(tiny_hf_model_dir), weights(folder)
    shared = [k for k in before if k in after]
    assert "score.weight" in after
    assert shared and all(not torch.equal(before[k], after[k]) for k in shared)
    tokenizer = load_tokenizer(folder)
    model = load_classifier(folder, tokenizer.pad_token_id)
    encoder = ChatEncoder(tokenizer, 64)
    pair = load_preferences(data)[1]  # rejected is unsafe in odd rows
    scores = classifier_scores(
        model,
        [encoder.classifier_ids(pair.messages, r) for r in (pair.chosen, pair.rejected)],
        tokenizer.pad_token_id,
    )
    assert scores[0] < 0 < scores[1]


def test_cost_without_safety_labels_names_the_file_and_line(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=3)
    with pytest.raises(PoiseError) as info:
        train_cost(model=str(tiny_hf_model_dir), data=str(data), output=str(tmp_path / "cm"))
    assert f"{data}:1" in str(info.value) and "chosen_is_safe" in str(info.value)
    assert not (tmp_path / "cm").exists()


def test_cost_sign_only_pairs_when_both_sides_share_a_label(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=8, safety=True)
    result = train_cost(
        model=str(tiny_hf_model_dir),
        data=str(data),
        output=str(tmp_path / "cm"),
        rank_equal_safety=False,
        eval_fraction=0.25,
        **FAST,
    )
    assert result.metrics["loss_end"] < result.metrics["loss_start"]
