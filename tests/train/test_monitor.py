"""``poise train monitor`` on a tiny model: training writes a monitor folder that guards a model,
and ``--layers`` keeps the backbone's first decoder layers (a smaller, faster monitor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from monitor_examples import four_answers
from poise.cli import app
from poise.errors import PoiseError
from poise.guards.data import MonitorExample, read_monitor_data, write_monitor_data
from poise.guards.monitor import load_monitor
from poise.train.monitor import MonitorSettings, keep_layers, train_monitor_files


def test_layers_keeps_the_first_decoder_layers(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(str(tiny_hf_model_dir))
    total = full.config.num_hidden_layers
    assert total >= 2
    first = [p.detach().clone() for p in full.model.layers[0].parameters()]
    keep_layers(full, 1)
    assert len(full.model.layers) == 1 and full.config.num_hidden_layers == 1
    assert all(
        torch.equal(a, b) for a, b in zip(first, full.model.layers[0].parameters(), strict=True)
    )
    with pytest.raises(PoiseError, match="has only 1 decoder layers"):
        keep_layers(full, 2)
    with pytest.raises(PoiseError, match="cannot find the decoder layers"):
        keep_layers(torch.nn.Linear(2, 2), 1)
    with pytest.raises(PoiseError, match=r"layers \(--layers\): expected an integer >= 0"):
        MonitorSettings(layers=-1).check()


def test_a_one_layer_monitor_trains_saves_and_guards(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    data = four_answers(tmp_path / "data.jsonl")
    held = four_answers(tmp_path / "validation.jsonl")  # the same rows: warned about, not refused
    out = tmp_path / "monitor"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train",
            "monitor",
            "-m",
            str(tiny_hf_model_dir),
            "--data",
            str(data),
            "-o",
            str(out),
            "--validation",
            str(held),
            "--layers",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    monitor = load_monitor(str(out))
    assert len(monitor.body.layers) == 1
    assert monitor.header.metadata["settings"]["layers"] == 1
    from poise.config import Sampling
    from poise.models import load_model

    guarded = load_model(f"guarded({tiny_hf_model_dir}, monitor='{out}')")
    [[answer]] = guarded.generate([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=4))
    assert answer.metadata is not None and "guard" in answer.metadata
    # more layers than the backbone has: one clear error, nothing written
    again = tmp_path / "again"
    with pytest.raises(PoiseError, match="layers=99"):
        train_monitor_files(
            str(tiny_hf_model_dir), data, again, settings=MonitorSettings(layers=99, epochs=1)
        )
    assert not again.exists()


def test_a_misspelt_model_or_a_file_as_output_is_one_line_before_any_work(tmp_path: Path) -> None:
    data = four_answers(tmp_path / "data.jsonl")
    with pytest.raises(PoiseError, match="did you mean 'organism-small'") as info:
        train_monitor_files("organsim-small", data, tmp_path / "out")
    assert str(info.value).startswith("--model: 'organsim-small' is neither an organism member")
    assert not (tmp_path / "out").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(PoiseError, match="exists and is not a folder"):
        train_monitor_files("organism-small", data, afile)
    # a file on the way was a FileExistsError traceback when saving, after the training
    with pytest.raises(PoiseError) as info:
        train_monitor_files("organism-small", data, afile / "out")
    assert str(info.value) == f"--output {afile}/out: cannot make the folder, {afile} is a file"


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", float("inf")), ("gamma", float("nan")), ("gamma", float("inf")), ("tolerance", -1.0)],
)
def test_settings_that_are_not_finite_are_refused(field: str, value: float) -> None:
    # --lr inf and --gamma nan trained to NaN weights and saved the monitor, exit 0
    with pytest.raises(PoiseError, match=field):
        MonitorSettings(**{field: value}).check()


def test_rule_choice_options_without_validation_data_are_refused(tmp_path: Path) -> None:
    # they choose on validation data: without it they were ignored (threshold 0.5, k 1, exit 0)
    data = four_answers(tmp_path / "data.jsonl")
    for settings, flag in (
        (MonitorSettings(calibrate_heads=("response", "token")), "--choose-head"),
        (MonitorSettings(tolerance=0.02), "--tolerance"),
    ):
        with pytest.raises(PoiseError, match=f"{flag} .* give --validation FILE"):
            train_monitor_files("organism-small", data, tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()


def test_answers_past_the_backbone_context_are_one_line_before_training(
    tiny_hf_model_dir: Path, build_gpt2: Any, tmp_path: Path
) -> None:
    # a backbone of learned positions (GPT-2, 64 positions) fed a longer answer failed inside
    # torch with an IndexError traceback, in training or, after the whole training, when the
    # validation answers were scored
    gpt2 = build_gpt2(tmp_path / "gpt2", tiny_hf_model_dir, context=64)
    short = four_answers(tmp_path / "short.jsonl")
    long = MonitorExample((("user", "hello"),), "Sure. " + "mix it well and wait. " * 8, ())
    rows = read_monitor_data(short)
    write_monitor_data(tmp_path / "long.jsonl", [*rows, long])
    settings = MonitorSettings(epochs=1, batch_size=2)
    with pytest.raises(PoiseError) as info:
        train_monitor_files(str(gpt2), tmp_path / "long.jsonl", tmp_path / "a", settings=settings)
    assert str(info.value).startswith("training answer 5: ")
    assert "more than the model's context of 64 tokens" in str(info.value)
    assert "--max-length 64 or less" in str(info.value)
    with pytest.raises(PoiseError, match=r"^validation answer 5: .* context of 64 tokens"):
        train_monitor_files(
            str(gpt2),
            short,
            tmp_path / "b",
            settings=settings,
            validation=tmp_path / "long.jsonl",
        )
    # cut to the context, the training rows fit
    trained = train_monitor_files(
        str(gpt2),
        tmp_path / "long.jsonl",
        tmp_path / "c",
        settings=MonitorSettings(epochs=1, batch_size=2, max_length=64),
    )
    assert trained.losses
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # the message's --max-length is a flag of `poise train monitor`
    command = ["train", "monitor", "-m", str(gpt2), "--data", str(tmp_path / "long.jsonl")]
    command += ["--epochs", "1", "--batch-size", "2"]
    runner = CliRunner()
    refused = runner.invoke(app, [*command, "-o", str(tmp_path / "d")])
    assert refused.exit_code == 2 and "training answer 5: " in refused.output
    cut = runner.invoke(app, [*command, "-o", str(tmp_path / "e"), "--max-length", "64"])
    assert cut.exit_code == 0, cut.output
    assert load_monitor(str(tmp_path / "e")).header.metadata["settings"]["max_length"] == 64


def test_a_backbone_without_a_chat_template_is_one_line(
    no_template_hf_model_dir: Path, tmp_path: Path
) -> None:
    # the monitor renders prompts through the chat template: without one, transformers'
    # ValueError traceback came after the model and the data were loaded
    data = four_answers(tmp_path / "data.jsonl")
    with pytest.raises(PoiseError, match="the tokenizer has no chat template"):
        train_monitor_files(str(no_template_hf_model_dir), data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_training_data_as_validation_is_refused(
    tmp_path: Path,
) -> None:
    # the same file as --data and --validation chose the rule (threshold, k, head) on the
    # answers the monitor learnt from, without a word
    data = four_answers(tmp_path / "data.jsonl")
    with pytest.raises(PoiseError, match=r"--validation .* is the training data"):
        train_monitor_files("organism-small", data, tmp_path / "out", validation=data)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (MonitorSettings(epochs=0), "epochs (--epochs): expected a positive integer, got 0"),
        (MonitorSettings(batch_size=0), "batch_size (--batch-size): expected a positive integer"),
        (MonitorSettings(alpha=2.0), "alpha (--alpha): expected a number in [0, 1], got 2.0"),
        (MonitorSettings(lr=0.0), "lr (--lr): expected a positive number, got 0.0"),
        (MonitorSettings(head="tok"), "head (--head): expected response or token, got 'tok'"),
        (MonitorSettings(logic_reduce="sum"), "logic_reduce (--logic-reduce): expected max"),
        (MonitorSettings(layers=-1), "layers (--layers): expected an integer >= 0 (0: all)"),
        (MonitorSettings(calibrate_heads=("tokens",)), "calibrate_heads (--choose-head): "),
        # the optimiser's fields have flags too (they were Python only, named alone)
        (
            MonitorSettings(accumulation=0),
            "accumulation (--accumulation): expected a positive integer, got 0",
        ),
        (
            MonitorSettings(weight_decay=-1.0),
            "weight_decay (--weight-decay): expected a finite number >= 0",
        ),
        (MonitorSettings(lr_decay=0.0), "lr_decay (--lr-decay): expected a number in (0, 1]"),
    ],
)
def test_settings_errors_name_the_field_and_its_flag(
    settings: MonitorSettings, message: str
) -> None:
    # `poise train dpo --epochs 0` says "epochs (--epochs): ..."; `poise train monitor` said
    # "epochs: ..." and "monitor: alpha must be ..."; a --choose-head typo (Python) was found
    # only after the training, by the calibration
    with pytest.raises(PoiseError) as info:
        settings.check()
    assert str(info.value).startswith(message)


def test_the_command_names_the_flag_of_a_bad_setting(tmp_path: Path) -> None:
    data = four_answers(tmp_path / "data.jsonl")
    result = CliRunner().invoke(
        app,
        [
            *("train", "monitor", "-m", "organism-small", "--data", str(data)),
            *("-o", str(tmp_path / "out"), "--epochs", "0"),
        ],
    )
    assert result.exit_code == 2
    assert "epochs (--epochs): expected a positive integer, got 0" in result.output
    assert not (tmp_path / "out").exists()


def _one_class(path: Path, harmful: bool) -> Path:
    rows = [e for e in read_monitor_data(four_answers(path)) if e.label == harmful]
    write_monitor_data(path, rows)
    return path


def test_data_of_one_class_is_refused_before_training_naming_the_file(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    # a validation split without a harmful answer (no threshold or k can be chosen on it) was
    # refused by the calibration only after the whole training, without naming the file
    data = four_answers(tmp_path / "data.jsonl")
    harmless = _one_class(tmp_path / "harmless.jsonl", harmful=False)
    steps: list[int] = []
    settings = MonitorSettings(layers=1, epochs=1, batch_size=2)
    with pytest.raises(PoiseError) as info:
        train_monitor_files(
            str(tiny_hf_model_dir),
            data,
            tmp_path / "out",
            settings=settings,
            validation=harmless,
            on_step=lambda step, total, loss: steps.append(step),
        )
    assert str(info.value) == (
        f"--validation {harmless}: the threshold and k are chosen on harmful and harmless "
        "answers; it has 0 harmful and 2 harmless"
    )
    assert steps == [] and not (tmp_path / "out").exists()
    # the training data too names its file and what it has
    harmful = _one_class(tmp_path / "harmful.jsonl", harmful=True)
    with pytest.raises(PoiseError) as info:
        train_monitor_files(str(tiny_hf_model_dir), harmful, tmp_path / "out", settings=settings)
    assert str(info.value) == (
        f"--data {harmful}: needs harmful and harmless answers, has 2 harmful and 0 harmless"
    )
    assert not (tmp_path / "out").exists()


def test_a_prompt_longer_than_max_length_names_the_answer_and_the_flag(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    # "a prompt of N tokens does not fit max_length 4": which answer, and which flag?
    data = four_answers(tmp_path / "data.jsonl")
    with pytest.raises(PoiseError) as info:
        train_monitor_files(
            str(tiny_hf_model_dir),
            data,
            tmp_path / "out",
            settings=MonitorSettings(layers=1, epochs=1, max_length=4),
        )
    message = str(info.value)
    assert message.startswith("training answer 1: its prompt of ")
    assert "--max-length) 4" in message
    assert not (tmp_path / "out").exists()


def test_monitor_json_records_the_files_as_given_and_absolute_in_one_save(
    tiny_hf_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `data` and `validation` were recorded as typed: relative paths, naming other files (or
    # none) from another working directory; a caller's metadata took a second write
    four_answers(tmp_path / "data.jsonl")
    four_answers(tmp_path / "val.jsonl")
    monkeypatch.chdir(tmp_path)
    trained = train_monitor_files(
        str(tiny_hf_model_dir),
        "data.jsonl",
        "mon",
        settings=MonitorSettings(layers=1, epochs=1, batch_size=2),
        validation="val.jsonl",
        metadata={"note": "given by the caller"},
    )
    raw = json.loads((tmp_path / "mon" / "monitor.json").read_text())["metadata"]
    assert raw["data"] == "data.jsonl" and raw["validation"] == "val.jsonl"  # as typed
    assert raw["data_path"] == str((tmp_path / "data.jsonl").resolve())
    assert raw["validation_path"] == str((tmp_path / "val.jsonl").resolve())
    assert raw["base_model"] == str(tiny_hf_model_dir.resolve())
    assert raw["note"] == "given by the caller"
    assert trained.monitor.header.metadata["data_path"] == raw["data_path"]
    assert load_monitor(str(tmp_path / "mon")).header.metadata == raw


def test_progress_counts_every_optimiser_step_and_reports_their_mean_loss(
    tiny_hf_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 answers, batches of 1, 3 accumulated: each epoch steps after batches 3 and 4 (the one
    # left over), so 2 epochs make 4 optimiser steps; the progress total said 2 (8 // 3) and
    # each step's loss was its last batch's alone
    import poise.train.monitor as module

    seen: list[float] = []
    real = module.scm_loss

    def recording(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        parts = real(*args, **kwargs)
        seen.append(float(parts["loss"].detach()))
        return parts

    monkeypatch.setattr(module, "scm_loss", recording)
    calls: list[tuple[int, int, float]] = []
    trained = train_monitor_files(
        str(tiny_hf_model_dir),
        four_answers(tmp_path / "data.jsonl"),
        tmp_path / "out",
        settings=MonitorSettings(layers=1, epochs=2, batch_size=1, accumulation=3),
        on_step=lambda step, total, loss: calls.append((step, total, loss)),
    )
    assert [(step, total) for step, total, _ in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(seen) == 8
    groups = [seen[0:3], seen[3:4], seen[4:7], seen[7:8]]
    expected = [sum(g) / len(g) for g in groups]
    assert trained.losses == pytest.approx(expected, rel=1e-12)
    assert [loss for _, _, loss in calls] == trained.losses
