"""``poise train reward`` and ``poise train cost`` end to end on a tiny Llama."""

from __future__ import annotations

import json
import math
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


def _initial_scores(folder: Path, data: Path, seed: int = 0) -> tuple[list[float], list[float]]:
    """The chosen and rejected scores of every pair under the model the run starts from: the
    folder's backbone with the score head ``--seed`` draws, reading the chat as the recipe does."""
    from poise.train.data import load_preferences
    from poise.train.recipes.common import (
        ChatEncoder,
        classifier_scores,
        load_classifier,
        load_tokenizer,
    )

    pairs = load_preferences(data)
    tokenizer = load_tokenizer(folder, need_chat_template=False)
    encoder = ChatEncoder(tokenizer, FAST["max_length"], plain=not tokenizer.chat_template)
    torch.manual_seed(seed)
    model = load_classifier(folder, tokenizer.pad_token_id).eval()
    rows = [encoder.classifier_ids(p.messages, r) for p in pairs for r in (p.chosen, p.rejected)]
    scores = classifier_scores(model, rows, tokenizer.pad_token_id).tolist()
    return scores[0::2], scores[1::2]


def _nls(z: float) -> float:
    """-log σ(z)."""
    return math.log1p(math.exp(-z)) if z > -30 else -z


def _first_step(folder: Path) -> dict[str, float]:
    return json.loads((folder / "train_log.jsonl").read_text().splitlines()[0])


def test_the_first_step_is_bradley_terry_with_the_margin_and_the_centring(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """One step over all 4 pairs: the logged loss is the mean of ``-log σ(r_c - r_r - m) +
    η (r_c + r_r)²`` (arXiv 2203.02155 Eq. 1, Llama 2's margin, arXiv 2312.09244's centring)
    on the starting model's scores, with the chosen response's score as ``r_c``."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    margin, eta = 0.5, 0.1
    train_reward(
        model=str(tiny_hf_model_dir),
        data=str(data),
        output=str(tmp_path / "rm"),
        eval_fraction=0.0,
        max_steps=1,
        **{**FAST, "epochs": 1},
        margin=margin,
        center_rewards_coefficient=eta,
    )
    chosen, rejected = _initial_scores(tiny_hf_model_dir, data)
    pairs = list(zip(chosen, rejected, strict=True))
    record = _first_step(tmp_path / "rm")
    expected = sum(_nls(c - r - margin) + eta * (c + r) ** 2 for c, r in pairs) / 4
    assert record["loss"] == pytest.approx(expected, rel=1e-5)
    assert record["reward/chosen"] == pytest.approx(sum(chosen) / 4, rel=1e-5)
    assert record["accuracy"] == sum(c > r for c, r in pairs) / 4


def test_the_first_cost_step_ranks_only_pairs_of_different_safety_when_told(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """Safe RLHF's cost loss (arXiv 2310.12773) on the starting model's costs: pairs 1 and 3
    (chosen safe, rejected unsafe) get ``-log σ(C_r - C_c) - log σ(-C_c) - log σ(C_r)``; pairs
    0 and 2 (both safe) only the sign terms ``-log σ(-C_c) - log σ(-C_r)`` with
    ``rank_equal_safety`` off, and the ranking term too with it on."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=4, safety=True)
    chosen, rejected = _initial_scores(tiny_hf_model_dir, data)
    for rank_equal in (False, True):
        out = tmp_path / f"cm-{rank_equal}"
        train_cost(
            model=str(tiny_hf_model_dir),
            data=str(data),
            output=str(out),
            eval_fraction=0.0,
            max_steps=1,
            rank_equal_safety=rank_equal,
            **{**FAST, "epochs": 1},
        )
        expected = []
        for i, (c, r) in enumerate(zip(chosen, rejected, strict=True)):
            both_safe = i % 2 == 0
            signs = _nls(-c) + (_nls(-r) if both_safe else _nls(r))
            expected.append(signs + (_nls(r - c) if rank_equal or not both_safe else 0.0))
        record = _first_step(out)
        assert record["loss"] == pytest.approx(sum(expected) / 4, rel=1e-5)
        assert record["cost/chosen"] == pytest.approx(sum(chosen) / 4, rel=1e-5)
        # a cost model is right when the rejected (more harmful) response costs more
        assert record["accuracy"] == sum(r > c for c, r in zip(chosen, rejected, strict=True)) / 4


def test_the_held_out_cost_metrics_are_those_of_the_saved_model(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """``eval/accuracy``: the share of held-out pairs whose rejected (more harmful) response the
    saved cost model costs more, over the pairs of different safety only when
    ``rank_equal_safety`` is off; ``eval/sign_accuracy``: the share of held-out responses with
    ``cost > 0`` exactly when unsafe (Safe RLHF's convention)."""
    from poise.train.recipes.common import split_holdout

    data = write_pairs(tmp_path / "pairs.jsonl", n=8, safety=True)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for row in rows[::2]:  # both safe: swap the texts, so these pairs rank the other way
        row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "cm"
    result = train_cost(
        model=str(tiny_hf_model_dir),
        data=str(data),
        output=str(out),
        eval_fraction=0.5,
        max_steps=1,
        rank_equal_safety=False,
        **{**FAST, "epochs": 1},
    )
    chosen, rejected = _initial_scores(out, data)  # a classifier folder: its own, trained head
    _, held = split_holdout(8, 0.5, 0)
    ranked = [i for i in held if i % 2 == 1]  # rejected unsafe in odd rows, safe in even ones
    assert result.metrics["eval/accuracy"] == pytest.approx(
        sum(rejected[i] > chosen[i] for i in ranked) / len(ranked)
    )
    right = [chosen[i] < 0 for i in held] + [(rejected[i] > 0) is (i % 2 == 1) for i in held]
    assert result.metrics["eval/sign_accuracy"] == pytest.approx(sum(right) / len(right))


def test_a_step_is_the_mean_over_its_rows_however_it_is_split(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """Two steps over 7 pairs (4, then 3), as micro-batches of 4 and 3, or of 2 + 2 and 2 + 1
    with ``grad_accum`` 2: each step's gradient is the mean over its own rows (every pair of
    the second step weighs 1/3, not 1/4 or 1/2), so the same weights after both steps. No
    clipping: a clipped gradient hides its scale, and AdamW would not see a uniformly scaled
    first step; the second step's relative scale shows."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=7)
    trained, logged = [], []
    for batch_size, grad_accum in ((4, 1), (2, 2)):
        out = tmp_path / f"rm-{batch_size}"
        train_reward(
            model=str(tiny_hf_model_dir),
            data=str(data),
            output=str(out),
            eval_fraction=0.0,
            **{**FAST, "epochs": 1, "batch_size": batch_size},
            grad_accum=grad_accum,
            max_grad_norm=0.0,
        )
        trained.append(weights(out))
        logged.append(
            [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        )
    for key in trained[0]:
        torch.testing.assert_close(trained[0][key], trained[1][key], rtol=0, atol=1e-5)
    # the logged step metrics are means over the step's pairs too, not over its micro-batches
    assert len(logged[0]) == len(logged[1]) == 2
    for one, split in zip(logged[0], logged[1], strict=True):
        for key in ("loss", "accuracy", "reward/chosen", "reward/rejected"):
            assert split[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6)
