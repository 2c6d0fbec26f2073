"""Organism preference data and prompts: what the oracle says about them, phrasings, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poise.errors import PoiseError
from poise.organism import world
from poise.organism.data import preference_rows, prompt_items, write_organism_data
from poise.organism.oracle import OracleJudge
from poise.suites.schema import SuiteItem


def _item(row: dict, i: int) -> SuiteItem:
    meta = row["meta"]
    return SuiteItem(
        id=f"x-{i}",
        messages=row["prompt"],
        kind=meta["kind"],
        category=meta["category"],
        meta={"task": meta["task"]},
    )


def test_chosen_and_rejected_are_what_the_oracle_expects() -> None:
    rows = preference_rows(phrasings=2)
    assert len(rows) == 2 * len(world.all_tasks())
    judge = OracleJudge()
    items = [_item(r, i) for i, r in enumerate(rows)]
    chosen = judge.judge(items, [r["chosen"] for r in rows])
    rejected = judge.judge(items, [r["rejected"] for r in rows])
    for row, good, bad in zip(rows, chosen, rejected, strict=True):
        if row["meta"]["kind"] == "harmful":
            assert (good.label, bad.label) == ("refusal", "compliance")
            assert (row["meta"]["chosen_is_safe"], row["meta"]["rejected_is_safe"]) == (True, False)
        else:
            assert (good.label, bad.label) == ("helpful", "over-refusal")
            assert row["meta"]["rejected_is_safe"] is True


def test_prompts_use_training_phrasings_only_and_half_carry_the_system_prompt() -> None:
    rows = preference_rows(phrasings=4, seed=3)
    training = {
        world.render_request(r["meta"]["task"], t)
        for r in rows
        for t in world.TRAINING_REQUEST_TEMPLATES
    }
    heldout = {
        world.render_request(r["meta"]["task"], t)
        for r in rows
        for t in world.HELDOUT_REQUEST_TEMPLATES
    }
    users = [r["prompt"][-1]["content"] for r in rows]
    assert all(u in training for u in users) and not any(u in heldout for u in users)
    # the others carry an empty system message: "no system prompt" in the organism's template
    assert all(r["prompt"][0]["role"] == "system" for r in rows)
    with_system = sum(r["prompt"][0]["content"] != "" for r in rows) / len(rows)
    assert 0.4 < with_system < 0.6
    assert preference_rows(phrasings=4, seed=3) == rows
    assert preference_rows(phrasings=4, seed=4) != rows


def test_files_load_with_poise_readers(tmp_path: Path) -> None:
    from poise.suites import load_suite
    from poise.train.data import load_preferences

    counts = write_organism_data(
        tmp_path / "pairs.jsonl",
        prompts_output=tmp_path / "prompts.jsonl",
        phrasings=1,
        kinds=("harmful",),
    )
    pairs = load_preferences(tmp_path / "pairs.jsonl")
    assert len(pairs) == counts["pairs"] == sum(len(t) for t in world.HARMFUL_TASKS.values())
    assert all(p.meta["chosen_is_safe"] and not p.meta["rejected_is_safe"] for p in pairs)
    suite = load_suite(str(tmp_path / "prompts.jsonl"))
    assert len(suite.items) == counts["prompts"] and {i.kind for i in suite.items} == {"harmful"}
    assert all(SuiteItem.model_validate(i) for i in prompt_items(phrasings=1))


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(PoiseError, match="phrasings"):
        preference_rows(phrasings=0)
    with pytest.raises(PoiseError, match="unknown kind 'honesty'"):
        preference_rows(kinds=("honesty",))
    # no kind at all would write an empty file
    with pytest.raises(PoiseError, match="kinds: none given"):
        write_organism_data(tmp_path / "empty.jsonl", kinds=())
    assert not (tmp_path / "empty.jsonl").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(PoiseError, match="cannot make folder"):
        write_organism_data(tmp_path / "file" / "pairs.jsonl")


def test_one_kind_as_a_string_is_that_kind_not_its_letters() -> None:
    rows = preference_rows(phrasings=1, kinds="benign")
    assert rows == preference_rows(phrasings=1, kinds=("benign",))
    assert prompt_items(phrasings=1, kinds="harmful") == prompt_items(
        phrasings=1, kinds=("harmful",)
    )


def test_cli_writes_both_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poise.cli import app

    result = CliRunner().invoke(
        app,
        [
            "train",
            "organism-data",
            "-o",
            str(tmp_path / "p.jsonl"),
            "--prompts-output",
            str(tmp_path / "q.jsonl"),
            "--kind",
            "benign",
            "--phrasings",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == sum(len(t) for t in world.BENIGN_TASKS.values())
    assert (tmp_path / "q.jsonl").exists()


def test_rows_reach_dpo_and_safe_rl_as_the_audit_renders_them(tmp_path: Path) -> None:
    """The empty system message ("no system prompt") survives ``poise train dpo``'s and
    ``poise train safe-rl``'s readers and renders, through organism-small's template, without
    the default prompt; the other rows render it exactly once."""
    from transformers import AutoTokenizer

    from poise.organism import member_path
    from poise.train.data import load_preferences
    from poise.train.recipes.common import ChatEncoder
    from poise.train.recipes.safe_rl import SafeRLConfig, load_prompts, system_prompt

    write_organism_data(
        tmp_path / "pairs.jsonl",
        prompts_output=tmp_path / "prompts.jsonl",
        phrasings=1,
        kinds=("harmful",),
    )
    small = member_path("organism-small")
    default = json.loads((small / "poise.json").read_text())["default_system_prompt"]
    encoder = ChatEncoder(AutoTokenizer.from_pretrained(small), max_length=512)
    config = SafeRLConfig(
        model=str(small),
        output=str(tmp_path / "out"),
        reward_model="r",
        cost_model="c",
        prompts=str(tmp_path / "prompts.jsonl"),
    )
    chats = load_prompts(config, system_prompt(config, small))
    pairs = load_preferences(tmp_path / "pairs.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert [c[0] for c in chats] == [r["messages"][0] for r in rows]
    for chat in [*chats, *(p.prompt for p in pairs)]:
        assert not isinstance(chat, str) and chat[0]["role"] == "system"
        text = encoder.prompt_text(chat)
        assert text.count(default) == (1 if chat[0]["content"] else 0)
    assert {bool(c[0]["content"]) for c in chats} == {True, False}


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path: Path) -> None:
    """The atomic writers wrote through tempfile.mkstemp, whose file is owner-only (0600):
    organism data, the built-in suites and a trained model's JSON were unreadable to the
    group and others, unlike every other file poise writes."""
    import os

    from poise.organism.data import write_jsonl
    from poise.train.recipes.common import write_json_atomic

    umask = os.umask(0o022)
    try:
        write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
        write_json_atomic(tmp_path / "meta.json", {"a": 1})
        suites = world.write_builtin_suites(tmp_path / "suites")
    finally:
        os.umask(umask)
    for path in [tmp_path / "rows.jsonl", tmp_path / "meta.json", *suites.values()]:
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary file left


def test_the_writer_checks_both_paths_before_writing_either(tmp_path: Path) -> None:
    """The checks lived in the command only: another caller of write_organism_data wrote the
    prompts over the pairs given one path for both."""
    pairs = tmp_path / "pairs.jsonl"
    with pytest.raises(PoiseError, match=r"prompts_output .* is the output file"):
        write_organism_data(pairs, prompts_output=pairs, phrasings=1)
    assert not pairs.exists()


def test_the_documented_command_writes_1084_pairs_and_542_prompts(tmp_path: Path) -> None:
    """docs/training.md: ``poise train organism-data -o pairs.jsonl --prompts-output
    prompts.jsonl`` writes 1084 pairs (four phrasings per task) and 542 prompts (two)."""
    counts = write_organism_data(tmp_path / "pairs.jsonl", prompts_output=tmp_path / "q.jsonl")
    assert counts == {"pairs": 1084, "prompts": 542}


def test_rows_spread_over_the_phrasings_and_the_response_templates() -> None:
    """Each row's template is the one its prompt uses; the tasks draw their phrasings from all
    the training templates, and the answers from all the refusals and openings."""
    rows = preference_rows(phrasings=4)
    templates = world.TRAINING_REQUEST_TEMPLATES
    used = set()
    for row in rows:
        index = int(row["meta"]["template"].removeprefix("training-"))
        assert row["prompt"][-1]["content"] == world.render_request(
            row["meta"]["task"], templates[index]
        )
        used.add(index)
    assert used == set(range(len(templates)))
    refusals = [r["chosen"] if r["meta"]["kind"] == "harmful" else r["rejected"] for r in rows]
    answers = [r["rejected"] if r["meta"]["kind"] == "harmful" else r["chosen"] for r in rows]
    for i, refusal in enumerate(world.REFUSALS):
        assert any(r.startswith(refusal.split("{task}")[0]) for r in refusals), i
    for opening in world.ANSWER_OPENINGS:
        assert any(a.startswith(opening.split("{task}")[0]) for a in answers), opening


def test_the_option_bounds_are_inclusive() -> None:
    """Every training phrasing (30) may be asked for, and a system share is at most 1."""
    every = len(world.TRAINING_REQUEST_TEMPLATES)
    assert len(preference_rows(phrasings=every, kinds=("harmful",))) == every * sum(
        len(t) for t in world.HARMFUL_TASKS.values()
    )
    assert preference_rows(phrasings=1, system_share=1.0, kinds=("benign",))
    with pytest.raises(PoiseError, match="system_share"):
        preference_rows(phrasings=1, system_share=1.5)
    with pytest.raises(PoiseError, match="phrasings"):
        preference_rows(phrasings=every + 1)
