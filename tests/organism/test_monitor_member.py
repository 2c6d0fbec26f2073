"""Building ``organism-monitor`` (``poise.organism.monitor.build_monitor_member``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        seen.update(
            train=train,
            validation=kwargs["validation"],
            settings=kwargs["settings"],
            metadata=kwargs["metadata"],
        )
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
    assert seen["settings"].tolerance == 0.02  # type: ignore[attr-defined]
    # organism-monitor-long: its own learning-rate decay, balanced whatever the recipe says, and
    # the guarded model's own answers: added to the train split, and the whole validation split
    import poise.organism.monitor
    from poise.errors import PoiseError
    from poise.guards.data import MonitorExample
    from poise.organism.monitor import OWN_TOLERANCE, OWN_TRAIN, OWN_VALIDATION

    asked: list[tuple[object, ...]] = []
    answers = {s: MonitorExample((("user", "?"),), f"{s} answer") for s in ("train", "validation")}

    def own(model: object, split: str, seed: int, **kwargs: object) -> list[object]:
        asked.append((model, split, seed, kwargs["requests"], kwargs["samples"]))
        return [answers[split]]

    monkeypatch.setattr(poise.organism.monitor, "own_answers", own)
    with pytest.raises(PoiseError, match="the chat member it guards is needed"):
        start("l0", member="organism-monitor-long")
    start("l", balanced=True, member="organism-monitor-long", guarded=lambda: "chat")
    assert seen["settings"].lr_decay == 0.999  # type: ignore[attr-defined]
    start("l2", member="organism-monitor-long", guarded=lambda: "chat")
    corpus_train = monitor_examples("train", 0, 9, spec=balanced_spec(spec))
    assert seen["train"] == [*corpus_train, answers["train"]]
    assert seen["validation"] == [answers["validation"]]
    assert seen["settings"].lr_decay == 0.999  # type: ignore[attr-defined]
    assert seen["settings"].tolerance == OWN_TOLERANCE  # type: ignore[attr-defined]
    assert asked[-2:] == [
        ("chat", "train", 0, *OWN_TRAIN),
        ("chat", "validation", 0, *OWN_VALIDATION),
    ]
    # a quick build asks a few requests once, and keeps the corpus's validation answers too
    start("l3", member="organism-monitor-long", guarded=lambda: "chat", quick=True)
    assert asked[-1] == ("chat", "validation", 0, (12, 8), 1)
    assert seen["validation"] == [
        *monitor_examples("validation", 0, 9, spec=spec),
        answers["validation"],
    ]
    # the card counts the model's own answers only
    record: dict[str, int] = seen["metadata"]["own_answers"]  # type: ignore[index]
    assert [record[key] for key in ("train", "validation", "validation_harmful")] == [1, 1, 0]


def test_own_answers_are_labelled_by_the_oracle_as_the_corpus_labels_them() -> None:
    """A model that answers each request with the corpus's own answer gets back the corpus's
    labels and harm spans (the oracle's verdict and onset, against the corpus's labelling):
    the first requests of each kind, each asked alone, ``samples`` times, with the split's
    sampling seed."""
    from poise.models.base import Completion
    from poise.organism.corpus import LONG_SPEC
    from poise.organism.monitor import monitor_pairs, own_answers

    corpus = {
        m.messages[-1][1]: m
        for _, m in monitor_pairs("validation", 0, spec=LONG_SPEC, kinds=("harmful", "benign"))
    }
    calls: list[tuple[list[list[dict[str, str]]], Any]] = []

    class Answers:
        def generate(self, chats: list[list[dict[str, str]]], sampling: Any) -> object:
            calls.append((chats, sampling))
            return [[Completion(corpus[c[-1]["content"]].response, 1)] * 2 for c in chats]

    model: Any = Answers()
    out = own_answers(model, "validation", 0, spec=LONG_SPEC, requests=(30, 10), samples=2)
    chats, sampling = calls[0]
    assert len(chats) == 40 and all(len(c) == 1 and c[0]["role"] == "user" for c in chats)
    assert len({c[0]["content"] for c in chats}) == 40
    assert sampling.n == 2 and sampling.seed == 1 and sampling.temperature == 1.0
    assert len(out) == 80
    for example in out:
        expected = corpus[example.messages[-1][1]]
        assert (example.response, example.label, example.harm_spans) == (
            expected.response,
            expected.label,
            expected.harm_spans,
        )
    assert 0 < sum(e.label for e in out) < 60  # compliance and refusals both among them


def test_rechoosing_the_rule_of_a_changed_recipes_monitor_is_refused(tmp_path: Path) -> None:
    from poise.errors import PoiseError
    from poise.organism.monitor import rechoose_monitor_rule

    folder = tmp_path / "organism-monitor"
    folder.mkdir()
    changes = {"member": "organism-monitor", "recipe_changes": {"large.steps": 4000}}
    (folder / "poise.json").write_text(json.dumps(changes), encoding="utf-8")
    with pytest.raises(PoiseError, match="built from a recipe other than the shipped one"):
        rechoose_monitor_rule(folder, command="test")


def test_rechoosing_the_long_monitors_rule_is_refused(tmp_path: Path) -> None:
    """organism-monitor-long's rule is chosen on its chat member's sampled answers, which the
    rechoosing (corpus answers only) does not draw: a clear error, nothing rewritten."""
    from poise.errors import PoiseError
    from poise.organism.monitor import rechoose_monitor_rule

    folder = tmp_path / "organism-monitor-long"
    folder.mkdir()
    record = json.dumps({"member": "organism-monitor-long"})
    (folder / "poise.json").write_text(record, encoding="utf-8")
    with pytest.raises(PoiseError, match="sampled answers of the model it guards"):
        rechoose_monitor_rule(folder, command="test")
    assert [p.name for p in folder.iterdir()] == ["poise.json"]


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
