"""``poise train dpo`` end to end on a tiny random Llama: learning, output folder, LoRA, resume."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_recipe_common import (  # noqa: F401
    one_torch_thread,
    weights,
    with_public_template,
    write_pairs,
)

from poise.errors import PoiseError, UnknownNameError
from poise.train.recipes.dpo import train_dpo

FAST = {"lr": 5e-3, "batch_size": 4, "max_length": 64, "save_steps": 0}


def test_dpo_lowers_the_loss_changes_every_parameter_and_writes_an_hf_folder(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    result = train_dpo(
        model=str(tiny_hf_model_dir), data=str(data), output=str(tmp_path / "out"), epochs=3, **FAST
    )
    out = tmp_path / "out"
    assert result.steps == 6
    assert result.metrics["loss_end"] < result.metrics["loss_start"] - 0.2
    assert result.metrics["loss_start"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference
    before, after = weights(tiny_hf_model_dir), weights(out)
    assert sorted(before) == sorted(after)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    # an ordinary HF folder with the recorded run
    AutoModelForCausalLM.from_pretrained(str(out))
    header = json.loads((out / "poise_train.json").read_text())
    assert header["status"] == "complete" and header["recipe"] == "dpo"
    assert header["config"]["lr"] == 5e-3 and header["config"]["loss"] == "sigmoid"
    assert {"poise", "torch", "transformers"} <= set(header["versions"])
    assert header["data"]["pairs"] == 8 and len(header["data"]["fingerprint"]) == 16
    assert header["metrics"]["steps"] == 6 and "rewards/accuracy" in header["metrics"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "rewards/margin", "rewards/accuracy", "lr"} <= set(log[0])
    # each step's rate is the one it was taken at (torch's LinearLR-style decay over 6 steps,
    # no warm-up): 5e-3 at step 1 and 5e-3/6 at the last; the log showed the next step's, 0 last
    assert [r["lr"] for r in log] == pytest.approx([5e-3 * (6 - i) / 6 for i in range(6)])


def test_ld_dpo_and_another_registered_loss_train(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    for name, extra in (
        ("ld", {"ld_alpha": 0.3}),
        ("ipo", {"loss": "ipo", "beta": 0.5, "lr": 1e-3}),
    ):
        result = train_dpo(
            model=str(tiny_hf_model_dir),
            data=str(data),
            output=str(tmp_path / name),
            epochs=2,
            **{**FAST, **extra},
        )
        assert result.metrics["loss_end"] < result.metrics["loss_start"], name


def test_accumulation_equals_one_big_batch(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    """batch 4 == batch 2 x 2 accumulation == batch 1 x 4 (one optimizer step, same rows)."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    common: dict[str, Any] = {
        "model": str(tiny_hf_model_dir),
        "data": str(data),
        "lr": 1e-2,
        "save_steps": 0,
    }
    runs = {
        "b4": train_dpo(output=str(tmp_path / "b4"), batch_size=4, **common),
        "b2x2": train_dpo(output=str(tmp_path / "b2x2"), batch_size=2, grad_accum=2, **common),
        "b1x4": train_dpo(output=str(tmp_path / "b1x4"), batch_size=1, grad_accum=4, **common),
    }
    assert all(r.steps == 1 for r in runs.values())
    reference = weights(tmp_path / "b4")
    for name in ("b2x2", "b1x4"):
        other = weights(tmp_path / name)
        for key, value in reference.items():
            torch.testing.assert_close(other[key], value, rtol=1e-4, atol=1e-6, msg=f"{name} {key}")


def _tied_copy(source: Path, target: Path) -> Path:
    """The tiny model with tied input and output embeddings (as the organism and many real
    models have): checkpoints store the shared tensor once, and resuming must restore it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(source))
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(target)
    return target


def test_resume_after_interruption_ends_with_the_same_weights(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    tied = _tied_copy(tiny_hf_model_dir, tmp_path / "tied")
    common: dict[str, Any] = {
        "model": str(tied),
        "data": str(data),
        "lr": 5e-3,
        "batch_size": 2,
        "grad_accum": 2,
        "epochs": 2,
        "save_steps": 2,
        "max_length": 64,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.25,
    }
    straight = train_dpo(output=str(tmp_path / "straight"), **common)

    class Interrupted(Exception):
        pass

    def stop_at_step_3(event: Any) -> None:
        if event.step == 3:  # after the step-2 checkpoint, before the step-4 one
            raise Interrupted

    with pytest.raises(Interrupted):
        train_dpo(output=str(tmp_path / "resumed"), progress=stop_at_step_3, **common)
    header = json.loads((tmp_path / "resumed" / "poise_train.json").read_text())
    assert header["status"] == "running"
    resumed = train_dpo(output=str(tmp_path / "resumed"), **common)  # the same command again
    assert resumed.resumed_from == 2 and resumed.steps == straight.steps == 4
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [
        json.loads(line)["step"]
        for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()
    ]
    assert log == [1, 2, 3, 4]  # the step logged before the interruption is not duplicated
    again = train_dpo(output=str(tmp_path / "resumed"), **common)
    assert again.skipped
    # the same command on an edited data file: the finished run is not kept as if made from it
    write_pairs(data, n=6)
    with pytest.raises(PoiseError, match=r"data: .*pairs.jsonl changed since .*resumed was "):
        train_dpo(output=str(tmp_path / "resumed"), **common)


def test_an_overwrite_that_fails_keeps_the_run_it_replaced(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """``--overwrite`` deleted the finished run before the new one trained: a new run that
    failed (or was killed) left neither. The old run now waits in ``.replaced`` until the new
    one is complete."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    out = tmp_path / "out"
    common: dict[str, Any] = {"model": str(tiny_hf_model_dir), "data": str(data), **FAST}
    train_dpo(output=str(out), **common)
    before = weights(out)

    class Interrupted(Exception):
        pass

    def stop(event: Any) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        train_dpo(output=str(out), overwrite=True, beta=0.5, progress=stop, **common)
    kept = out / ".replaced"
    assert json.loads((kept / "poise_train.json").read_text())["status"] == "complete"
    assert all(torch.equal(before[k], v) for k, v in weights(kept).items())
    # a second overwrite that fails too: the replaced run is still the finished one
    with pytest.raises(Interrupted):
        train_dpo(output=str(out), overwrite=True, beta=0.3, progress=stop, **common)
    assert json.loads((kept / "poise_train.json").read_text())["config"]["beta"] == 0.1
    # the overwrite that completes deletes it
    train_dpo(output=str(out), overwrite=True, beta=0.3, **common)
    assert not kept.exists()
    assert json.loads((out / "poise_train.json").read_text())["config"]["beta"] == 0.3


def test_lora_trains_only_adapters(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    common: dict[str, Any] = {
        "model": str(tiny_hf_model_dir),
        "data": str(data),
        "lora_r": 4,
        "lora_targets": "q_proj,v_proj",
        **FAST,
        "lr": 2e-2,
        "epochs": 3,
    }
    merged = train_dpo(output=str(tmp_path / "merged"), **common)
    assert merged.metrics["loss_end"] < merged.metrics["loss_start"]
    before, after = weights(tiny_hf_model_dir), weights(tmp_path / "merged")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in "qv"}

    train_dpo(output=str(tmp_path / "adapter"), merge=False, **common)
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    adapter = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(
        ("lora_B" in k) and bool(v.abs().sum() > 0) for k, v in adapter.items()
    )  # B starts at 0


def test_bad_data_row_is_one_line_with_file_and_line_and_writes_nothing(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=3)
    with data.open("a") as handle:
        handle.write(json.dumps({"prompt": "q", "chosen": "a", "rejected": 5}) + "\n")
    with pytest.raises(PoiseError) as info:
        train_dpo(model=str(tiny_hf_model_dir), data=str(data), output=str(tmp_path / "out"))
    message = str(info.value)
    assert f"{data}:4" in message and "rejected" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_a_template_without_system_messages_names_the_row_that_has_one(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """Gemma 2's template raises "System role not supported": the error said only that, with
    no row, and nothing about what to change."""
    from poise.train.recipes.reward import train_reward

    source = with_public_template(tiny_hf_model_dir, tmp_path / "gemma", "gemma2")
    data = write_pairs(tmp_path / "pairs.jsonl", n=3)
    rows = data.read_text().splitlines()
    row = json.loads(rows[1])
    row["prompt"] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": row["prompt"]},
    ]
    rows[1] = json.dumps(row)
    data.write_text("\n".join(rows) + "\n")
    for train in (train_dpo, train_reward):
        with pytest.raises(PoiseError) as info:
            train(model=str(source), data=str(data), output=str(tmp_path / "out"))
        message = str(info.value)
        assert message.startswith(f"{data}:2: the chat template rejected the chat (")
        assert "System role not supported" in message
        assert "takes no system message" in message and "\n" not in message
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("declared", [None, {"system_prompt_in_template": False}])
def test_the_trained_model_follows_the_system_prompt_rule_of_its_source(
    tiny_hf_model_dir: Path, tmp_path: Path, declared: dict[str, Any] | None
) -> None:
    """A Qwen2.5 folder whose poise.json declares that its template inserts no default (the
    declaration wins over the template) gave a trained model whose poise.json dropped it, so
    audits of the trained model sent "none" as an empty system message, the source's as none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poise.models.hf import HFModel

    source = with_public_template(tiny_hf_model_dir, tmp_path / "qwen", "qwen2.5")
    if declared is not None:
        (source / "poise.json").write_text(json.dumps(declared))
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    out = tmp_path / "out"
    train_dpo(model=str(source), data=str(data), output=str(out), max_steps=1, **FAST)
    before, after = HFModel(str(source), device="cpu"), HFModel(str(out), device="cpu")
    rule = ("default_system_prompt", "system_prompt_in_template")
    assert [getattr(after, k) for k in rule] == [getattr(before, k) for k in rule]
    # the folder keeps the template and loads with plain transformers
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(str(source)).chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    AutoModelForCausalLM.from_pretrained(str(out))


def test_unknown_loss_and_foreign_parameters_fail_before_training(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=2)
    common = {"model": str(tiny_hf_model_dir), "data": str(data), "output": str(tmp_path / "out")}
    with pytest.raises(UnknownNameError, match="sigmoid"):
        train_dpo(loss="sigmod", **common)
    with pytest.raises(PoiseError, match="does not take label_smoothing"):
        train_dpo(loss="ipo", label_smoothing=0.1, **common)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"loss_options": {"label_smoothing": "abc"}},
            "loss 'sigmoid': label_smoothing must be a number, got 'abc'",
        ),
        (
            {"loss_options": {"label_smoothing": 0.6}},
            "loss 'sigmoid': label_smoothing must be in [0.0, 0.5), got 0.6",
        ),
        (
            {"loss_options": {"f_divergence": "nope"}},
            "loss 'sigmoid': unknown f_divergence 'nope' (known: reverse_kl, forward_kl, "
            "js_divergence, alpha_divergence)",
        ),
        ({"loss_options": {"beta": -1}}, "loss 'sigmoid': beta must be > 0, got -1"),
        (
            {"loss_options": {"f_divergence": "alpha_divergence", "f_alpha": 2}},
            "loss 'sigmoid': f_alpha must be in (0, 1) for alpha_divergence, got 2",
        ),
        (
            {"loss": "exo_pair", "loss_options": {"label_smoothing": 0}},
            "loss 'exo_pair': exo_pair needs label_smoothing in (0, 0.5), got 0",
        ),
        (
            {"loss": "ipo", "loss_options": {"chosen_lengths": 3}},
            "loss 'ipo': chosen_lengths is set by the recipe, not given as an option",
        ),
        (
            {"ld_alpha": 0.5, "loss_options": {"beta": "x"}},
            "loss 'sigmoid': beta must be a number, got 'x'",
        ),
    ],
)
def test_bad_loss_option_values_fail_before_the_output_folder_is_written(
    tiny_hf_model_dir: Path, tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=2)
    out = tmp_path / "out"
    common = {"model": str(tiny_hf_model_dir), "data": str(data), "output": str(out)}
    with pytest.raises(PoiseError) as info:
        train_dpo(**common, **fields)
    assert str(info.value) == message
    assert not out.exists()  # a retry with the value fixed is not refused as another run


def test_a_bad_loss_option_on_the_cli_writes_nothing_and_the_fixed_retry_trains(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from poise.cli import app

    data = write_pairs(tmp_path / "pairs.jsonl", n=2)
    out = tmp_path / "out"
    args = ["train", "dpo", "-m", str(tiny_hf_model_dir), "--data", str(data), "-o", str(out)]
    args += ["--max-steps", "1", "--batch-size", "2", "--save-steps", "0"]
    bad = CliRunner().invoke(app, [*args, "--loss-option", "label_smoothing=abc"])
    assert bad.exit_code == 2, bad.output
    assert (
        bad.stderr.strip() == "error: loss 'sigmoid': label_smoothing must be a number, got 'abc'"
    )
    assert not out.exists()
    fixed = CliRunner().invoke(app, [*args, "--loss-option", "label_smoothing=0.1"])
    assert fixed.exit_code == 0, fixed.output
    # no terminal here, so no bar: progress comes as lines on stderr (start and end at least)
    assert "train dpo: 1/1 (100%), loss" in fixed.stderr


def test_cli_trains_and_reports_bad_input_with_exit_code_2(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from poise.cli import app

    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    args = [
        "train",
        "dpo",
        "-m",
        str(tiny_hf_model_dir),
        "--data",
        str(data),
        "-o",
        str(tmp_path / "out"),
    ]
    result = CliRunner().invoke(
        app, [*args, "--lr", "1e-3", "--batch-size", "4", "--save-steps", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "model folder" in result.output and (tmp_path / "out" / "model.safetensors").exists()
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "other"), "--beta", "0"])
    assert bad.exit_code == 2 and "beta" in bad.output


def test_gradient_checkpointing_changes_memory_not_the_result(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    common: dict[str, Any] = {"model": str(tiny_hf_model_dir), "data": str(data), **FAST}
    train_dpo(output=str(tmp_path / "plain"), **common)
    train_dpo(output=str(tmp_path / "ckpt"), gradient_checkpointing=True, **common)
    train_dpo(output=str(tmp_path / "lora"), gradient_checkpointing=True, lora_r=2, **common)
    plain, ckpt = weights(tmp_path / "plain"), weights(tmp_path / "ckpt")
    for key, value in plain.items():
        torch.testing.assert_close(ckpt[key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(
        weights(tmp_path / "lora")["model.layers.0.self_attn.q_proj.weight"],
        weights(tiny_hf_model_dir)["model.layers.0.self_attn.q_proj.weight"],
    )


def test_dropout_is_off_while_training_unless_asked(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """With the model's dropout on in training mode, the policy's log-probs were not those of
    its frozen copy, the reference: DPO's first loss was not log 2 (TRL turns dropout off)."""
    import shutil

    model = tmp_path / "dropout"
    shutil.copytree(tiny_hf_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    common: dict[str, Any] = {"model": str(model), "data": str(data), **FAST, "max_steps": 1}
    off = train_dpo(output=str(tmp_path / "off"), **common)
    assert off.metrics["loss_start"] == pytest.approx(math.log(2), abs=1e-5)
    on = train_dpo(output=str(tmp_path / "on"), disable_dropout=False, **common)
    assert on.metrics["loss_start"] != pytest.approx(math.log(2), abs=1e-3)


def test_ref_model_and_precision_options(
    tiny_hf_model_dir: Path, tmp_path: Path, build_tiny_model: Callable[..., Path]
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    common: dict[str, Any] = {"model": str(tiny_hf_model_dir), "data": str(data), **FAST}
    # another reference: the policy starts away from it, so the first loss is not log 2
    other = build_tiny_model(tmp_path / "other-ref", seed=5)
    with_ref = train_dpo(output=str(tmp_path / "ref"), ref_model=str(other), **common)
    assert with_ref.metrics["loss_start"] != pytest.approx(0.6931, abs=1e-3)
    bf16 = train_dpo(output=str(tmp_path / "bf16"), mixed_precision="bf16", epochs=2, **common)
    assert bf16.metrics["loss_end"] < bf16.metrics["loss_start"]
    if not torch.cuda.is_available():
        with pytest.raises(PoiseError, match="fp16 needs CUDA"):
            train_dpo(output=str(tmp_path / "fp16"), mixed_precision="fp16", **common)


@pytest.mark.slow
def test_every_registered_loss_trains_with_its_own_defaults(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    import math

    from poise.train.losses import LOSSES

    data = write_pairs(tmp_path / "pairs.jsonl", n=2)
    for name in LOSSES.names():
        result = train_dpo(
            model=str(tiny_hf_model_dir),
            data=str(data),
            output=str(tmp_path / name),
            loss=name,
            lr=1e-3,
            batch_size=2,
            max_length=64,
            save_steps=0,
        )
        assert result.steps == 1 and math.isfinite(result.metrics["loss"]), name


def test_a_pair_longer_than_the_context_is_refused_before_training(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """max_length over the tiny model's context (512): a row that stays longer than the
    context is named by file and line before any weights load."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    rows = data.read_text(encoding="utf-8").splitlines()
    rows[2] = json.dumps(
        {"prompt": "the cat sat on the mat " * 40, "chosen": "Sure.", "rejected": "No."}
    )
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(PoiseError) as info:
        train_dpo(
            model=str(tiny_hf_model_dir),
            data=str(data),
            output=str(tmp_path / "out"),
            **{**FAST, "max_length": 2048},
        )
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{data}:3: ")
    assert "more than the model's context of 512 tokens" in message
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_pairs_that_are_the_same_tokens_once_cut_are_left_out(
    tiny_hf_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two responses that differ only past max_length were trained as a pair with no
    preference: gradient 0, yet counted in the step's mean and as a miss in the accuracy."""
    from poise.train.recipes.dpo import DPOConfig, encode_and_split, read_pairs

    shared = "step " * 60
    rows = [
        {"prompt": "p0", "chosen": "Sure, here it is.", "rejected": "No."},
        {"prompt": "p1", "chosen": shared + "the end.", "rejected": shared + "no end."},
        {"prompt": "p2", "chosen": "Yes, gladly.", "rejected": "Never."},
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = DPOConfig(
        model=str(tiny_hf_model_dir), data=str(data), output=str(tmp_path / "o"), max_length=48
    )
    with caplog.at_level("WARNING", logger="poise.train.recipes.dpo"):
        _, encoded, train_idx, eval_idx = encode_and_split(
            config, tiny_hf_model_dir, read_pairs(config)
        )
    assert encoded[1][1] == encoded[1][2]  # the cut left the same tokens on both sides
    assert sorted(train_idx + eval_idx) == [0, 2]
    assert f"{data}:2" in caplog.text and "max_length 48" in caplog.text
    # no pair left at all: one line, before any weights load
    data.write_text(json.dumps(rows[1]) + "\n", encoding="utf-8")
    with pytest.raises(PoiseError, match="no pair is left to train on"):
        train_dpo(
            model=str(tiny_hf_model_dir), data=str(data), output=str(tmp_path / "o"), max_length=48
        )
    assert not (tmp_path / "o").exists()


def test_data_smaller_than_one_optimiser_step_say_each_epoch_is_one_step(
    tiny_hf_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two pairs trained one DPO step, whose loss is log 2 whatever the data, with no word."""
    small = write_pairs(tmp_path / "small.jsonl", n=2)
    with caplog.at_level("WARNING", logger="poise.train"):
        result = train_dpo(
            model=str(tiny_hf_model_dir), data=str(small), output=str(tmp_path / "a"), **FAST
        )
    assert result.steps == 1
    assert "the data hold 2 rows, fewer than one optimiser step takes (4 per micro-step" in (
        caplog.text
    )
    assert "each epoch is one step" in caplog.text
    caplog.clear()
    enough = write_pairs(tmp_path / "enough.jsonl", n=4)  # one full batch of 4: no warning
    with caplog.at_level("WARNING", logger="poise.train"):
        train_dpo(
            model=str(tiny_hf_model_dir), data=str(enough), output=str(tmp_path / "b"), **FAST
        )
    assert "fewer than one optimiser step" not in caplog.text


# ------------------------------------------------------------------------- Ctrl-C and SIGTERM


def _interrupt_at(step: int) -> Callable[[Any], None]:
    """A progress callback that presses Ctrl-C after optimizer step ``step``."""

    def progress(event: Any) -> None:
        if event.step == step:
            raise KeyboardInterrupt

    return progress


def test_ctrl_c_before_the_first_checkpoint_leaves_no_folder_and_says_so(
    tiny_hf_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An interrupted run with nothing to resume from left a folder whose header said
    "running", a log and no model: a half-written folder, and not a word of it."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    out = tmp_path / "new" / "out"
    common: dict[str, Any] = {
        "model": str(tiny_hf_model_dir),
        "data": str(data),
        **FAST,
        "batch_size": 2,
    }
    with caplog.at_level("WARNING", logger="poise"), pytest.raises(KeyboardInterrupt):
        train_dpo(output=str(out), progress=_interrupt_at(1), **common)
    assert not out.exists()
    assert "nothing was saved" in caplog.text and "was removed" in caplog.text
    # an empty folder the user made stays, emptied of what the run wrote
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(KeyboardInterrupt):
        train_dpo(output=str(mine), progress=_interrupt_at(1), **common)
    assert mine.is_dir() and not any(mine.iterdir())
    train_dpo(output=str(mine), **common)  # the same command then just runs
    assert json.loads((mine / "poise_train.json").read_text())["status"] == "complete"


def test_ctrl_c_after_a_checkpoint_keeps_it_and_says_how_to_resume(
    tiny_hf_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    out = tmp_path / "out"
    common: dict[str, Any] = {
        "model": str(tiny_hf_model_dir),
        "data": str(data),
        **FAST,
        "batch_size": 2,
        "save_steps": 2,
    }
    with caplog.at_level("WARNING", logger="poise"), pytest.raises(KeyboardInterrupt):
        train_dpo(output=str(out), progress=_interrupt_at(3), **common)
    assert (out / "checkpoints" / "step-2").is_dir()
    assert "keeps the checkpoint of step 2" in caplog.text
    assert "run the same command again to resume from step 2" in caplog.text
    assert train_dpo(output=str(out), **common).resumed_from == 2


def test_a_checkpoint_whose_optimizer_groups_differ_is_one_error_naming_it(
    tiny_hf_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint written with one AdamW group over every parameter (poise's layout before
    biases and norm gains were spared weight decay) resumed by a run that has two: torch's
    "loaded state dict has a different number of parameter groups" traceback, naming no
    folder. Now one error naming the checkpoint and the way out."""
    from poise.train.recipes import common as recipe_common

    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    out = tmp_path / "out"
    settings: dict[str, Any] = {
        "model": str(tiny_hf_model_dir),
        "data": str(data),
        "output": str(out),
        **FAST,
        "batch_size": 2,
        "save_steps": 1,
        "weight_decay": 0.1,
    }

    def one_group(model: Any, weight_decay: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    with monkeypatch.context() as patch:
        patch.setattr(recipe_common, "decay_groups", one_group, raising=False)
        with pytest.raises(KeyboardInterrupt):
            train_dpo(progress=_interrupt_at(1), **settings)
    assert (out / "checkpoints" / "step-1").is_dir()
    with pytest.raises(PoiseError) as info:
        train_dpo(**settings)
    message = str(info.value)
    assert str(out / "checkpoints" / "step-1") in message
    assert "--overwrite" in message and "\n" not in message
    assert train_dpo(overwrite=True, **settings).steps == 4


def test_ctrl_c_in_an_overwrite_before_a_checkpoint_puts_the_replaced_run_back(
    tiny_hf_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    out = tmp_path / "out"
    common: dict[str, Any] = {"model": str(tiny_hf_model_dir), "data": str(data), **FAST}
    train_dpo(output=str(out), **common)
    before = weights(out)
    with caplog.at_level("WARNING", logger="poise"), pytest.raises(KeyboardInterrupt):
        train_dpo(output=str(out), overwrite=True, beta=0.5, progress=_interrupt_at(1), **common)
    assert "holds the run it was to replace again" in caplog.text
    assert not (out / ".replaced").exists()
    header = json.loads((out / "poise_train.json").read_text())
    assert header["status"] == "complete" and header["config"]["beta"] == 0.1
    assert all(torch.equal(before[k], v) for k, v in weights(out).items())
    assert train_dpo(output=str(out), **common).skipped  # still the finished run


def test_ctrl_c_while_the_final_model_is_written_leaves_no_half_written_folder(
    tiny_hf_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted inside the final save (some model files moved into place, the header still
    "running", no checkpoint): the folder held a model that no header vouched for."""
    from poise.train.recipes.common import Session

    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    out = tmp_path / "out"
    real_save = Session.save_model

    def save_then_interrupt(self: Session, folder: Path, source: Path) -> None:
        real_save(self, folder, source)
        (folder / "model.safetensors").replace(out / "model.safetensors")  # one file in place
        raise KeyboardInterrupt

    monkeypatch.setattr(Session, "save_model", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(output=str(out), model=str(tiny_hf_model_dir), data=str(data), **FAST)
    assert not out.exists()


def test_a_model_without_a_chat_template_names_the_fix_dpo_has(
    no_template_hf_model_dir: Path, tmp_path: Path
) -> None:
    # the message told a dpo user to "use --from-base", a flag of `train safe-rl` only, which
    # `poise train dpo` refuses as an unknown option
    folder = no_template_hf_model_dir
    data = write_pairs(tmp_path / "pairs.jsonl", n=2)
    with pytest.raises(PoiseError) as info:
        train_dpo(model=str(folder), data=str(data), output=str(tmp_path / "out"))
    message = str(info.value)
    assert "has no chat template" in message and "chat_template.jinja" in message
    assert "--from-base" not in message
    assert not (tmp_path / "out").exists()


def test_the_prompts_it_trained_on_are_recorded_and_a_gate_on_them_is_refused(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """A gate's bound holds only on prompts the model did not train on: DPO recorded none, so a
    gate on the pairs' own prompts passed as if they were held out."""
    from poise.gate import _check_held_out
    from poise.suites.schema import SuiteItem
    from poise.train.recipes.common import prompt_digest

    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    out = tmp_path / "out"
    train_dpo(
        model=str(tiny_hf_model_dir), data=str(data), output=str(out), eval_fraction=0.25, **FAST
    )
    header = json.loads((out / "poise_train.json").read_text())
    recorded = set(json.loads((out / "poise.json").read_text())["trained_prompts_sha256"])
    prompts = [f"How do I bake bread number {i}?" for i in range(8)]
    trained = [p for p in prompts if prompt_digest(p) in recorded]
    # the training split's prompts, not the eval split's
    assert len(recorded) == len(trained) == header["data"]["train_pairs"] < 8
    items = [
        SuiteItem(id=f"p{i}", kind="harmful", messages=[{"role": "user", "content": p}])
        for i, p in enumerate(prompts)
    ]
    with pytest.raises(PoiseError, match=rf"prompts: {len(trained)} of the 8 prompts .* trained"):
        _check_held_out(str(out), items)
    _check_held_out(str(out), [i for i in items if i.prompt not in trained])  # held out: passes


def test_a_last_partial_step_is_trained_and_weighed_by_its_own_rows(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """5 rows: batch 4, batch 2 x 2 and batch 1 x 4 all take 2 optimizer steps (4 rows, then
    the last row alone, as transformers' Trainer counts the remainder of an epoch), and the
    last step's loss is divided by the 1 row it holds, so the three end with the same weights."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=5)
    common: dict[str, Any] = {
        "model": str(tiny_hf_model_dir),
        "data": str(data),
        "lr": 1e-2,
        "save_steps": 0,
    }
    runs = {
        "b4": train_dpo(output=str(tmp_path / "b4"), batch_size=4, **common),
        "b2x2": train_dpo(output=str(tmp_path / "b2x2"), batch_size=2, grad_accum=2, **common),
        "b1x4": train_dpo(output=str(tmp_path / "b1x4"), batch_size=1, grad_accum=4, **common),
    }
    assert {name: r.steps for name, r in runs.items()} == {"b4": 2, "b2x2": 2, "b1x4": 2}
    reference = weights(tmp_path / "b1x4")
    for name in ("b2x2", "b4"):
        other = weights(tmp_path / name)
        for key, value in reference.items():
            torch.testing.assert_close(other[key], value, rtol=1e-4, atol=1e-6, msg=f"{name} {key}")


def test_a_run_resumed_inside_an_epoch_continues_with_that_epochs_next_rows(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """Interrupted after the checkpoint of step 3 of a 4-step epoch, the resumed run trains on
    the epoch's fourth batch, not its first again: the same weights as without interruption."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    common: dict[str, Any] = {
        "model": str(tiny_hf_model_dir),
        "data": str(data),
        "lr": 5e-3,
        "batch_size": 2,
        "save_steps": 1,
        "max_length": 64,
    }
    straight = train_dpo(output=str(tmp_path / "straight"), **common)

    class Interrupted(Exception):
        pass

    def stop_at_step_3(event: Any) -> None:
        if event.step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_dpo(output=str(tmp_path / "resumed"), progress=stop_at_step_3, **common)
    resumed = train_dpo(output=str(tmp_path / "resumed"), **common)
    assert resumed.resumed_from == 3 and resumed.steps == straight.steps == 4
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
