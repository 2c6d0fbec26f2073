"""Building ``organism-monitor`` (``poise.organism.monitor.build_monitor_member``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poise.organism.build import build
from poise.organism.tokenizer import CHAT_TEMPLATE, render_prompt

pytestmark = pytest.mark.slow


def test_a_built_monitor_keeps_the_organism_tokenizer_files(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from poise.guards.monitor import load_monitor

    build(tmp_path, ["organism-monitor"], quick=True, threads=1)
    folder = tmp_path / "organism-monitor"
    names = {p.name for p in folder.iterdir()}
    # the files every member shares, as save_tokenizer writes them: transformers 5's own save
    # ("TokenizersBackend", chat_template.jinja) does not load with transformers 4
    assert "special_tokens_map.json" in names and "chat_template.jinja" not in names
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == CHAT_TEMPLATE
    chat = [{"role": "user", "content": "Hi"}]
    tok = AutoTokenizer.from_pretrained(folder)
    rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert rendered == render_prompt(chat)
    meta = json.loads((folder / "poise.json").read_text(encoding="utf-8"))
    assert meta["kind"] == "monitor" and meta["system_prompt_in_template"] is True
    assert load_monitor(str(folder)).header.threshold is not None


def test_the_monitor_is_trained_on_train_and_its_rule_chosen_on_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_monitor_member draws its splits from the recipe's corpus, and the streaming rule
    is chosen on the validation split, never on the held-out one the card reports."""
    import shutil
    from dataclasses import replace

    import poise.train.monitor
    from poise.organism import WEIGHTS_DIR
    from poise.organism.corpus import BASE_SPEC
    from poise.organism.monitor import build_monitor_member, monitor_examples

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fit(backbone: object, tokenizer: object, train: object, **kwargs: object) -> None:
        seen.update(train=train, validation=kwargs["validation"], settings=kwargs["settings"])
        raise Stop

    def write_files(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(WEIGHTS_DIR / "organism-monitor" / name, folder / name)
        (folder / "poise.json").write_text("{}", encoding="utf-8")

    monkeypatch.setattr(poise.train.monitor, "fit_monitor", fit)
    spec = replace(BASE_SPEC, harmful_per_task=4)

    def start(folder: str, **options: object) -> None:
        with pytest.raises(Stop):
            build_monitor_member(
                None,
                tmp_path / folder,
                seed=0,
                subsample=9,
                write_files=write_files,
                spec=spec,
                **options,  # type: ignore[arg-type]
            )

    start("m")
    assert seen["train"] == monitor_examples("train", 0, 9, spec=spec)
    assert seen["validation"] == monitor_examples("validation", 0, 9, spec=spec)
    # balanced: the train split alone is drawn from balanced_spec
    from poise.organism.monitor import balanced_spec

    start("b", balanced=True)
    assert seen["train"] == monitor_examples("train", 0, 9, spec=balanced_spec(spec))
    assert seen["train"] != monitor_examples("train", 0, 9, spec=spec)
    assert seen["validation"] == monitor_examples("validation", 0, 9, spec=spec)
    assert seen["settings"].lr_decay == 0.99  # type: ignore[attr-defined]
    # organism-monitor-long: its own learning-rate decay, and balanced whatever the recipe says
    start("l", balanced=True, member="organism-monitor-long")
    assert seen["settings"].lr_decay == 0.999  # type: ignore[attr-defined]
    start("l2", member="organism-monitor-long")
    assert seen["train"] == monitor_examples("train", 0, 9, spec=balanced_spec(spec))
    assert seen["settings"].lr_decay == 0.999  # type: ignore[attr-defined]


def test_rechoosing_the_rule_of_a_changed_recipes_monitor_is_refused(tmp_path: Path) -> None:
    from poise.errors import PoiseError
    from poise.organism.monitor import rechoose_monitor_rule

    folder = tmp_path / "organism-monitor"
    folder.mkdir()
    changes = {"member": "organism-monitor", "recipe_changes": {"large.steps": 4000}}
    (folder / "poise.json").write_text(json.dumps(changes), encoding="utf-8")
    with pytest.raises(PoiseError, match="built from a recipe other than the shipped one"):
        rechoose_monitor_rule(folder, command="test")


def test_rechoosing_the_rule_rewrites_the_card_with_its_training_line_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped monitor's rule chosen again on a thinned validation split: the card keeps
    its count of training answers and training line, says which command chose the rule, gives
    each held-out figure inside its interval and the rates of the streaming rule."""
    import re
    import shutil

    import poise.train.monitor
    from poise.organism import WEIGHTS_DIR
    from poise.organism.monitor import monitor_examples, rechoose_monitor_rule

    shipped = WEIGHTS_DIR / "organism-monitor"
    folder = tmp_path / "organism-monitor"
    shutil.copytree(shipped, folder)
    old = (shipped / "README.md").read_text(encoding="utf-8")
    trained = re.search(r"^Trained in .*$", old, flags=re.MULTILINE)
    answers = re.search(r"token labels \(\d+ answers", old)
    assert trained and answers
    chosen_on: list[object] = []
    choose = poise.train.monitor.choose_rule

    def recording(monitor: object, examples: object, **kwargs: object) -> object:
        chosen_on.append(examples)
        return choose(monitor, examples, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(poise.train.monitor, "choose_rule", recording)
    rates = rechoose_monitor_rule(folder, subsample=30, command="rechoose it")
    assert chosen_on == [monitor_examples("validation", 0, 30)]
    heldout = monitor_examples("heldout", 0, 30)
    stopped, alarms = rates["heldout_harmful_stopped"], rates["heldout_false_alarm"]
    assert stopped.n == sum(e.label for e in heldout) and stopped.value >= 0.9
    assert alarms.n == sum(not e.label for e in heldout) and alarms.value <= 0.1
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert f"{trained.group(0)} Streaming rule chosen again by `rechoose it`" in card
    assert answers.group(0) in card
    assert "organism-small's\nfirst decoder layer with a token head" in card
    assert "the earliest stop within 0.02 of the best validation macro-F1" in card
    assert "Built by" not in card and "Quick build" not in card
    figures = re.findall(r"\| ([\d.]+) \[([\d.]+), ([\d.]+)\] \|", card)
    assert len(figures) == 3
    assert all(float(low) <= float(value) <= float(high) for value, low, high in figures)
    assert f"| held-out harmful answers the streaming rule stops | {stopped.format()} |" in card
