"""``poise train``'s recipe commands, built from each recipe's config: what a flag sets, what a
run prints, and ``train organism-data`` / ``train monitor-data``'s files and lines."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from poise.cli import app


class FakeTraining:
    """A recipe's training that keeps the fields it is called with, reports two steps and
    returns ``result`` (a plain finished run unless a test sets another)."""

    def __init__(self) -> None:
        from poise.train.recipes.common import TrainResult

        self.calls: list[dict[str, Any]] = []
        self.result = TrainResult(output=Path("out"), recipe="dpo", steps=2, metrics={})

    def __call__(self, progress: Any, **fields: Any) -> Any:
        self.calls.append(fields)
        progress(types.SimpleNamespace(step=1, total_steps=2, metrics={"loss": 0.5}))
        metrics = {"loss": 0.25, "rewards/accuracy": 0.75}
        progress(types.SimpleNamespace(step=2, total_steps=2, metrics=metrics))
        return self.result


@pytest.fixture
def training(monkeypatch: pytest.MonkeyPatch) -> FakeTraining:
    """``poise train RECIPE`` runs a :class:`FakeTraining` instead of the recipe's own."""
    import poise.train.recipes as recipes

    fake = FakeTraining()
    real_get = recipes.RECIPES.get
    monkeypatch.setattr(
        recipes.RECIPES, "get", lambda name: dataclasses.replace(real_get(name), train=fake)
    )
    return fake


def _dpo(*flags: str) -> Any:
    args = ["train", "dpo", "-m", "organism-small", "--data", "d.jsonl", "-o", "out", *flags]
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def test_a_recipe_s_flags_set_its_fields_and_leave_the_others_at_their_defaults(
    training: FakeTraining,
) -> None:
    result = _dpo("--lora-targets", "q_proj,,v_proj", "--no-merge")
    assert result.exit_code == 0, result.output
    fields = training.calls[0]
    assert fields["lora_targets"] == ("q_proj", "v_proj")  # an empty item is no module
    assert fields["merge"] is False  # a flag whose default is on can be turned off
    result = _dpo()
    assert result.exit_code == 0, result.output
    fields = training.calls[1]
    assert fields["lora_targets"] == ("q_proj", "k_proj", "v_proj", "o_proj")  # the default
    assert "merge" not in fields or fields["merge"] is True


def test_a_malformed_loss_option_is_one_line_naming_the_flag_as_typed(
    training: FakeTraining,
) -> None:
    result = _dpo("--loss-option", "beta")
    assert result.exit_code == 2, result.output
    assert "--loss-option" in result.stderr and "--loss-options" not in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert training.calls == []  # nothing trained


def test_a_finished_run_prints_its_metrics_where_it_resumed_and_its_folder(
    training: FakeTraining,
) -> None:
    from poise.train.recipes.common import TrainResult

    training.result = TrainResult(
        output=Path("out"), recipe="dpo", steps=7, metrics={"loss": 0.123456}, resumed_from=3
    )
    result = _dpo()
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())  # the table's title wraps to its width
    assert "poise train dpo · 7 steps" in said
    assert "0.1235" in result.stdout and "0.123456" not in result.stdout
    assert "resumed from step 3" in result.stdout
    assert "model folder: out" in result.stdout
    assert "already holds" not in result.stdout
    # no terminal: the progress is lines on stderr, the last one at the end
    assert "train dpo: 2/2 (100%), loss 0.25  accuracy 0.75" in result.stderr
    training.result = TrainResult(
        output=Path("out"), recipe="dpo", steps=7, metrics={}, skipped=True
    )
    result = _dpo()
    assert result.exit_code == 0, result.output
    assert "out already holds this finished run; nothing to do." in result.stdout
    assert "resumed from" not in result.stdout
    training.result = TrainResult(output=Path("out"), recipe="dpo", steps=1, metrics={})
    result = _dpo()
    assert "poise train dpo · 1 step" in " ".join(result.stdout.split())
    assert "1 steps" not in result.stdout


def test_train_losses_shows_only_the_parameters_that_have_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plugin's loss may take a keyword it has no default for: listed without one, not as
    ``scale=<class 'inspect._empty'>``."""
    import inspect

    import poise.train.losses as losses

    parameters = {"beta": 0.1, "scale": inspect.Parameter.empty}
    monkeypatch.setattr(losses, "loss_parameters", lambda name: parameters)
    result = CliRunner().invoke(app, ["train", "losses"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "beta=0.1" in result.output
    assert "scale" not in result.output and "_empty" not in result.output


def test_organism_data_writes_what_its_flags_ask_and_says_how_much(tmp_path: Path) -> None:
    """Each flag reaches the writer: the files are those write_organism_data writes for the
    same settings, and the lines give the pairs' and prompts' counts."""
    from poise.organism.data import write_organism_data

    pairs, prompts = tmp_path / "pairs.jsonl", tmp_path / "prompts.jsonl"
    result = CliRunner().invoke(
        app,
        [
            *("train", "organism-data", "-o", str(pairs), "--prompts-output", str(prompts)),
            *("--seed", "3", "--phrasings", "3", "--system-share", "0.25", "--kind", "harmful"),
        ],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 0, result.output
    counts = write_organism_data(
        tmp_path / "p2.jsonl",
        prompts_output=tmp_path / "q2.jsonl",
        seed=3,
        phrasings=3,
        system_share=0.25,
        kinds=("harmful",),
    )
    assert pairs.read_text() == (tmp_path / "p2.jsonl").read_text()
    assert prompts.read_text() == (tmp_path / "q2.jsonl").read_text()
    assert counts["pairs"] != counts["prompts"]  # prompts take at most 2 phrasings
    assert result.stdout.splitlines() == [
        f"wrote {counts['pairs']} pairs to {pairs}",
        f"wrote {counts['prompts']} prompts to {prompts}",
    ]


def test_organism_data_s_defaults_are_the_writer_s(tmp_path: Path) -> None:
    from poise.organism.data import write_organism_data

    pairs = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(app, ["train", "organism-data", "-o", str(pairs)])
    assert result.exit_code == 0, result.output
    write_organism_data(tmp_path / "p2.jsonl")
    assert pairs.read_text() == (tmp_path / "p2.jsonl").read_text()
    assert not (tmp_path / "prompts.jsonl").exists()


def test_a_setting_with_fixed_choices_lists_them_in_its_help() -> None:
    result = CliRunner().invoke(app, ["train", "dpo", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "(one of: constant, linear, cosine)" in said
    assert "(one of: no, fp16, bf16)" in said


def test_a_recipe_without_the_train_extra_names_the_command_as_typed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "accelerate", None)  # the train extra is not installed
    args = ["train", "safe-rl", "-m", "organism-small", "-o", "out", "-s", "prompts.jsonl"]
    args += ["--reward-model", "organism-reward", "--cost-model", "organism-cost"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "error: poise train safe-rl needs the package 'accelerate': pip install 'poise[train]'"
    )
