"""``poise train dpo`` against TRL's own ``DPOTrainer``, step by step, on a tiny random Llama.

Both sides train the same model on the same 8 conversational pairs (TRL's layout: prompt,
chosen and rejected as message lists) with the same hyper-parameters: sigmoid loss (DPO,
arXiv 2305.18290, Eq. 7), β = 0.1, a frozen copy of the initial weights as the reference, one
optimizer step per pass over the whole data set (so the data order only changes the order of
a sum), AdamW with weight decay and gradient clipping (the gradient norm is more
than twice the clip of 1), a cosine schedule with a warm-up, gradient accumulation, fp32 on CPU.

The model carries Llama 3's chat template, which writes nothing after a turn's
``<|eot_id|>``: poise ends a response at the end-of-turn token, TRL also keeps what the
template writes after it (a newline for most templates), so on this template the two token
sequences are the same and every number must agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_recipe_common import one_torch_thread, weights, with_public_template  # noqa: F401

from poise.train.data import load_preferences
from poise.train.recipes.common import ChatEncoder, load_tokenizer
from poise.train.recipes.dpo import encode_pairs, train_dpo

STEPS = 4
# lr per step: 0 (the warm-up step), then cosine over the 3 others: 1e-3, 7.5e-4, 2.5e-4
SETTINGS: dict[str, Any] = {
    "beta": 0.1,
    "lr": 1e-3,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.25,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
    "batch_size": 4,
    "grad_accum": 2,
    "max_length": 256,
    "seed": 0,
}
LOSS_ATOL = 1e-5  # per-step loss and implicit rewards
WEIGHT_ATOL = 1e-5  # final weights; each has moved by about 2e-3


def _conversational_pairs(path: Path) -> Path:
    topics = ["the cat sat", "the answer", "a story", "hello there"]
    topics += ["how are you", "the morning", "a thin line", "the other thing"]
    rows = []
    for i, topic in enumerate(topics):
        prompt = [{"role": "user", "content": f"tell me about {topic}"}]
        if i % 2 == 0:
            prompt = [{"role": "system", "content": "Be brief."}, *prompt]
        if i % 3 == 0:  # multi-turn: an earlier assistant turn inside the prompt
            prompt += [
                {"role": "assistant", "content": "Which part?"},
                {"role": "user", "content": "all of it"},
            ]
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": f"Sure, here is {topic}."}],
                "rejected": [{"role": "assistant", "content": "no" * (1 + i % 3)}],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _trl_run(model_dir: Path, data: Path, output: Path) -> Any:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    args = DPOConfig(
        output_dir=str(output),
        per_device_train_batch_size=SETTINGS["batch_size"],
        gradient_accumulation_steps=SETTINGS["grad_accum"],
        learning_rate=SETTINGS["lr"],
        lr_scheduler_type=SETTINGS["lr_scheduler"],
        warmup_steps=SETTINGS["warmup_ratio"],  # a float below 1 is a ratio of the steps
        weight_decay=SETTINGS["weight_decay"],
        max_grad_norm=SETTINGS["max_grad_norm"],
        max_steps=STEPS,
        beta=SETTINGS["beta"],
        loss_type=["sigmoid"],
        max_length=SETTINGS["max_length"],
        seed=SETTINGS["seed"],
        optim="adamw_torch",
        gradient_checkpointing=False,  # TRL's default is on; poise's off (same numbers)
        bf16=False,  # TRL's default is bf16 autocast; poise's fp32
        use_cpu=True,
        disable_dropout=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32),
        ref_model=AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(str(model_dir)),
    )
    return trainer


def test_dpo_steps_match_trls_dpo_trainer(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    model_dir = with_public_template(tiny_hf_model_dir, tmp_path / "model", "llama3")
    data = _conversational_pairs(tmp_path / "pairs.jsonl")

    # tokenisation: prompt, chosen and rejected ids of every row are TRL's
    trainer = _trl_run(model_dir, data, tmp_path / "trl")
    encoder = ChatEncoder(load_tokenizer(model_dir), SETTINGS["max_length"])
    ours = encode_pairs(encoder, load_preferences(str(data)), str(data))
    theirs = [
        (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) for row in trainer.train_dataset
    ]
    assert [tuple(map(list, t)) for t in theirs] == ours

    trainer.train()
    trl_log = [h for h in trainer.state.log_history if "loss" in h]
    result = train_dpo(
        model=str(model_dir),
        data=str(data),
        output=str(tmp_path / "poise"),
        max_steps=STEPS,
        cpu=True,
        save_steps=0,
        **SETTINGS,
    )
    assert result.steps == STEPS
    poise_log = [
        json.loads(line)
        for line in (tmp_path / "poise" / "train_log.jsonl").read_text().splitlines()
    ]
    assert len(poise_log) == len(trl_log) == STEPS
    assert trl_log[1]["grad_norm"] > 2 * SETTINGS["max_grad_norm"]  # the clipping acts
    for step, (ours_step, theirs_step) in enumerate(zip(poise_log, trl_log, strict=True), 1):
        assert ours_step["lr"] == pytest.approx(theirs_step["learning_rate"], rel=1e-6), step
        for mine, trl_key in (
            ("loss", "loss"),
            ("rewards/chosen", "rewards/chosen"),
            ("rewards/rejected", "rewards/rejected"),
            ("rewards/margin", "rewards/margins"),
            ("rewards/accuracy", "rewards/accuracies"),
        ):
            assert ours_step[mine] == pytest.approx(theirs_step[trl_key], abs=LOSS_ATOL), (
                step,
                mine,
            )
    assert poise_log[-1]["loss"] < 0.5  # it learned (0.693 at the start)

    initial = weights(model_dir)
    trained = weights(tmp_path / "poise")
    reference = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    assert set(reference) == set(trained)
    for name, value in reference.items():
        assert (value - initial[name]).abs().max() > 1e-4, f"{name} did not move"
        torch.testing.assert_close(trained[name], value, rtol=0, atol=WEIGHT_ATOL, msg=name)
