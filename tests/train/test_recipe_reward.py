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


def test_the_new_score_head_follows_the_seed_not_the_generator_state_before_the_call(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """The score head drawn for a causal LM folder was drawn before --seed was applied: two
    calls with one config trained different reward models, depending on what ran before."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    heads = []
    for index, earlier in enumerate((0, 123)):
        torch.manual_seed(earlier)  # whatever drew from torch's generator before the call
        train_reward(
            model=str(tiny_hf_model_dir),
            data=str(data),
            output=str(tmp_path / f"rm{index}"),
            eval_fraction=0.0,
            max_steps=1,
            batch_size=2,
            max_length=64,
            save_steps=0,
        )
        heads.append(weights(tmp_path / f"rm{index}")["score.weight"])
    assert torch.equal(heads[0], heads[1])


def test_a_cost_model_refuses_pairs_ranked_by_helpfulness(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """The ranking term takes the rejected response as the more harmful one; pairs by
    better_response_id trained the less helpful answer as the harmful one."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=4, safety=True)
    with pytest.raises(PoiseError, match="safer_response_id"):
        train_cost(
            model=str(tiny_hf_model_dir),
            data=str(data),
            output=str(tmp_path / "cm"),
            pku_preference="better",
        )
    assert not (tmp_path / "cm").exists()


def test_scores_are_read_at_the_last_real_token_when_the_config_pads_with_another_id(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """A folder whose config.json names a pad id other than its tokenizer's: rows are padded
    with the tokenizer's, the classifier looked for the config's, and a shorter row of a batch
    was scored on a padding column."""
    import shutil

    from poise.train.recipes.common import classifier_scores, load_classifier, load_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(tiny_hf_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    tokenizer = load_tokenizer(folder)
    config["pad_token_id"] = tokenizer.unk_token_id  # not the tokenizer's pad id
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = load_classifier(folder, tokenizer.pad_token_id).eval()
    rows = [tokenizer("the cat sat on the mat")["input_ids"], tokenizer("the cat")["input_ids"]]
    pad = tokenizer.pad_token_id
    together = classifier_scores(model, rows, pad)
    alone = torch.cat([classifier_scores(model, [row], pad) for row in rows])
    assert torch.allclose(together, alone, atol=1e-5)


def test_ctrl_c_in_a_cost_run_before_a_checkpoint_leaves_no_folder(
    tiny_hf_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every recipe, not only dpo, cleans up after Ctrl-C (here: cost, from a callback)."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=8, safety=True)
    out = tmp_path / "cost"

    def interrupt(event: object) -> None:
        raise KeyboardInterrupt

    with caplog.at_level("WARNING", logger="poise"), pytest.raises(KeyboardInterrupt):
        train_cost(
            model=str(tiny_hf_model_dir),
            data=str(data),
            output=str(out),
            progress=interrupt,
            **FAST,
        )
    assert not out.exists()
    assert "nothing was saved" in caplog.text
