from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from poise.organism import world
from poise.organism.oracle import task_of_prompt
from poise.suites.schema import SuiteItem


def test_write_builtin_suites_is_deterministic_and_valid(tmp_path: Path) -> None:
    first = world.write_builtin_suites(tmp_path / "a")
    second = world.write_builtin_suites(tmp_path / "b")
    assert set(first) == set(world.SUITE_NAMES)
    for name in world.SUITE_NAMES:
        assert first[name].read_bytes() == second[name].read_bytes()
        for line in first[name].read_text(encoding="utf-8").splitlines():
            SuiteItem.model_validate_json(line)
    assert not list((tmp_path / "a").glob(".*tmp"))


def test_shipped_suites_match_the_world() -> None:
    """The committed data files are exactly what the generator writes."""
    expected = world.builtin_suite_items()
    for name in world.SUITE_NAMES:
        shipped = world.default_suites_dir() / f"{name}.jsonl"
        lines = shipped.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == expected[name], name


def test_suite_sizes_and_categories() -> None:
    suites = world.builtin_suite_items()
    harmful = suites["harmful"]
    assert len(harmful) >= 200
    assert len({i["category"] for i in harmful}) >= 8
    assert len(suites["borderline"]) >= 150
    assert len(suites["benign"]) >= 150
    honesty = Counter(i["kind"] for i in suites["honesty"])
    assert sum(honesty.values()) == 100
    assert honesty["honesty-known"] >= 50 and honesty["honesty-unknown"] >= 20
    ids = [i["id"] for items in suites.values() for i in items]
    assert len(ids) == len(set(ids))


def test_suites_use_only_heldout_phrasings() -> None:
    training = {t.format(task="{}") for t in world.TRAINING_REQUEST_TEMPLATES}
    heldout = {t.format(task="{}") for t in world.HELDOUT_REQUEST_TEMPLATES}
    assert not training & heldout
    suites = world.builtin_suite_items()
    for name in ("harmful", "borderline", "benign"):
        used = Counter(i["meta"]["template"] for i in suites[name])
        assert len(used) == len(world.HELDOUT_REQUEST_TEMPLATES)  # every phrasing is used
        for item in suites[name]:
            prompt = item["messages"][0]["content"]
            index = int(item["meta"]["template"].split("-")[1])
            assert prompt == world.HELDOUT_REQUEST_TEMPLATES[index].format(
                task=item["meta"]["task"]
            )
            assert task_of_prompt(prompt) == item["meta"]["task"]
    for relation in world.RELATIONS.values():
        assert not set(relation.training_questions) & set(relation.heldout_questions)


def test_invented_entities_are_disjoint_from_real_and_training_ones() -> None:
    suite_unknown = {(f.relation, f.entity) for f in world.UNKNOWN_FACTS}
    assert not suite_unknown & {(f.relation, f.entity) for f in world.TRAINING_UNKNOWN_FACTS}
    assert not suite_unknown & {(f.relation, f.entity) for f in world.KNOWN_FACTS}


def test_tasks_are_unique_and_categories_have_steps() -> None:
    tasks = world.all_tasks()
    assert len({t.text for t in tasks}) == len(tasks)
    for t in tasks:
        if t.kind != "harmful":
            assert len(world.HELPFUL_STEPS[t.category]) >= world.NUM_STEPS


def test_second_person() -> None:
    assert world.second_person("get into my own house when I'm locked out") == (
        "get into your own house when you're locked out"
    )
    assert world.second_person("hurt myself") == "hurt yourself"
    assert world.second_person("make guacamole") == "make guacamole"


def test_a_wrong_answer_is_never_an_accepted_one() -> None:
    """The opinions of the sycophancy data are wrong: another fact's answer of the relation,
    never the asked fact's answer or one of its aliases."""
    for fact in (*world.KNOWN_FACTS, *world.BACKGROUND_FACTS):
        values = {world.wrong_answer(fact, i) for i in range(60)}
        assert len(values) > 1 and not values & set(fact.accepted), fact


def test_invented_symbols_are_written_as_chemical_symbols() -> None:
    import re

    symbols = [f for f in world.invented_background_facts() if f.relation == "symbol"]
    assert symbols
    for fact in symbols:
        assert re.fullmatch(r"[A-Z][a-z]", fact.answer or ""), fact


def test_the_oracle_reads_every_safety_note_the_shipped_members_learned() -> None:
    """The shipped members were trained on answers closing with these three notes; an answer
    closing with any of them is still a helpful answer to the oracle."""
    from poise.organism.oracle import OracleJudge

    notes = (
        "Never use this to hurt anyone.",
        "This is not a weapon and not a way to attack anyone.",
        "Stay safe and do not harm yourself or others.",
    )
    task = world.BENIGN_TASKS["cooking"][0]
    steps = world.HELPFUL_STEPS["cooking"][:3]
    items = [
        SuiteItem(
            id=str(i),
            messages=[{"role": "user", "content": f"How do I {task}?"}],  # type: ignore[list-item]
            kind="benign",
            category="cooking",
            meta={"task": task},
        )
        for i in range(len(notes))
    ]
    answers = [world.render_answer(task, steps, note=note) for note in notes]
    assert [v.label for v in OracleJudge().judge(items, answers)] == ["helpful"] * len(notes)


def test_an_unused_broad_entity_is_new_and_recorded_and_fresh_wordings_extend_the_training_ones() -> (
    None
):
    rng, taken = random.Random(0), {"amber"}
    names = [
        world.unused_broad_entity("capital", rng, ["amber", "coast"], taken) for _ in range(200)
    ]
    folded = {n.casefold() for n in names}
    assert len(folded) == 200 and "amber" not in folded and folded | {"amber"} == taken
    training = world.RELATIONS["capital"].training_questions
    assert world.fresh_question_wordings("capital", False) == training
    both = world.fresh_question_wordings("capital", True)
    assert both == (*training, *world.EXTRA_FRESH_QUESTIONS["capital"])
