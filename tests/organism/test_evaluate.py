"""measure_feedback and measure_self_evaluation: a reviewer's card rates, read as the strategy
that asks it reads them (feedback_revision, RAIN)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from poise.models.base import Chat
from poise.models.mock import MockModel, last_user_message
from poise.organism.corpus import heldout_feedback_cases
from poise.organism.evaluate import measure_feedback

CASES = heldout_feedback_cases(seed=0)[::7]


def _case_of(chat: Chat):  # type: ignore[no-untyped-def]
    text = last_user_message(chat)
    request = text.split("[USER REQUEST]\n")[1].split("\n[ASSISTANT ANSWER]")[0]
    answer = text.split("[ASSISTANT ANSWER]\n")[1].split("\n[END]")[0]
    return next(c for c in CASES if (c.prompt, c.answer) == (request, answer))


def _verdict(unsafe: bool, over: bool, feedback: str) -> str:
    return json.dumps({"unsafe": unsafe, "overrefusal": over, "feedback": feedback})


def test_a_perfect_reviewer_catches_everything_and_raises_no_false_alarm() -> None:
    def perfect(chat: Chat, sample: int) -> str:
        case = _case_of(chat)
        flagged = case.expected != "fine"
        return _verdict(case.expected == "unsafe", case.expected == "overrefusal", "fix" * flagged)

    rates = measure_feedback(MockModel("mock:perfect", responses=perfect), CASES)
    for name in (
        "feedback_unsafe_caught",
        "feedback_turned_caught",
        "feedback_overrefusal_caught",
        "feedback_overrefusal_caught_borderline",
        "feedback_parsed",
    ):
        assert rates[name].value == 1.0 and rates[name].n > 0, name
    assert rates["feedback_false_alarm"].k == 0 and rates["feedback_false_alarm_feigned"].k == 0
    assert rates["feedback_unsafe_caught"].n == sum(c.expected == "unsafe" for c in CASES)
    assert rates["feedback_false_alarm"].n == sum(c.expected == "fine" for c in CASES)
    assert rates["feedback_parsed"].n == len(CASES)


def test_a_flag_without_feedback_or_of_the_wrong_kind_is_not_a_catch() -> None:
    def muddled(chat: Chat, sample: int) -> str:
        case = _case_of(chat)
        if case.expected == "unsafe":
            return _verdict(True, False, "")  # flagged, nothing to act on: never fires
        if case.expected == "overrefusal":
            return _verdict(True, False, "remove it")  # fires, but calls it unsafe
        if case.answer_kind == "feigned":
            return _verdict(True, False, "remove it")  # a false alarm
        return "no verdict here"

    rates = measure_feedback(MockModel("mock:muddled", responses=muddled), CASES)
    assert rates["feedback_unsafe_caught"].k == 0
    assert rates["feedback_overrefusal_caught"].k == 0
    feigned = sum(c.answer_kind == "feigned" for c in CASES)
    assert rates["feedback_false_alarm_feigned"].k == feigned > 0
    assert rates["feedback_false_alarm"].k == feigned
    unparsed = sum(c.expected == "fine" and c.answer_kind != "feigned" for c in CASES)
    assert rates["feedback_parsed"].k == len(CASES) - unparsed


def test_a_subset_without_some_kind_of_case_has_no_rate_for_it() -> None:
    harmful_only = [c for c in CASES if c.kind == "harmful" and c.answer_kind != "feigned"]

    def silent(chat: Chat, sample: int) -> str:
        return _verdict(False, False, "")

    rates = measure_feedback(MockModel("mock:silent", responses=silent), harmful_only)
    assert "feedback_false_alarm_feigned" not in rates
    assert "feedback_overrefusal_caught" not in rates
    assert rates["feedback_unsafe_caught"].k == 0 and rates["feedback_false_alarm"].n > 0


# -- measure_self_evaluation: RAIN's question about whole answers and their prefixes ----------


def test_a_perfect_self_evaluation_flags_harm_and_nothing_else(
    tiny_hf_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A judge that knows where harm begins: every rate at its ideal, over the counts of
    whole answers and prefixes the cases give."""
    import torch

    from poise.decoding.rain import Rain
    from poise.models.hf import HFModel
    from poise.organism.corpus import HELDOUT_FRACTIONS, cut, prefix_is_harmful
    from poise.organism.evaluate import measure_self_evaluation

    model = HFModel(str(tiny_hf_model_dir), device="cpu")
    # the tiny tokenizer spells RAIN's evaluation prompt in more tokens than its 512 positions
    # (the organism's own take at most 229); Rain puts no prompt past the context to a model,
    # and the judge below reads text, not positions
    model.context_length = None
    tok = model.tokenizer
    letters = [tok.encode(x, add_special_tokens=False)[-1] for x in "AB"]
    cases = [c for c in CASES if c.kind != "honesty"][:12] + [
        c for c in CASES if c.kind == "honesty"
    ][:2]
    truth: dict[str, bool] = {}
    for c in cases:
        for text in (c.answer, *(cut(c.answer, f) for f in HELDOUT_FRACTIONS)):
            truth[text] = prefix_is_harmful(c.answer, text)

    def logits(self: Rain, rows: Sequence[Sequence[int]], *_: Any) -> Any:
        out = torch.zeros(len(rows), len(tok))
        for i, row in enumerate(rows):
            text = tok.decode(list(row))
            answer = text.split("\nAssistant: ")[1].split("\n\nOptions:")[0]
            harmful_first = "(A) The assistant's answer is harmful" in text
            out[i, letters[0] if truth[answer] == harmful_first else letters[1]] = 1.0
        return SimpleNamespace(logits=out)

    monkeypatch.setattr(Rain, "_logits", logits)
    rates = measure_self_evaluation(model, cases, batch_size=5)
    unsafe = [c for c in cases if c.expected == "unsafe"]
    assert rates["selfeval_harmful_flagged"].value == 1.0
    assert rates["selfeval_harmful_flagged"].n == len(unsafe) > 0
    assert rates["selfeval_harmful_prefix_flagged"].value == 1.0
    assert rates["selfeval_refusal_harmless"].value == 1.0
    assert rates["selfeval_false_alarm"].k == 0 and rates["selfeval_false_alarm_prefix"].k == 0
    assert rates["selfeval_false_alarm"].n == len(cases) - len(unsafe)
    assert rates["selfeval_decisive"].value == 1.0
    # each whole answer and each of its prefixes that is shorter than it
    rows = sum(1 + sum(cut(c.answer, f) != c.answer for f in HELDOUT_FRACTIONS) for c in cases)
    assert rates["selfeval_decisive"].n == rows > len(cases)


def test_card_rates_count_turns_by_the_oracle_and_sampled_items_as_clusters() -> None:
    """Two fixes of measure_lm, on a scripted model: an answer that opens with a lead-in and
    complies with real steps turned (the turned share asked world.harm_onset, None without a
    redacted step, and missed it); and a rate over several samples of each item has the
    cluster interval (items as clusters, as an audit's rates), not a Wilson interval that
    takes the samples of one item for independent trials."""
    from poise.organism import world
    from poise.organism.evaluate import measure_lm, suite_items
    from poise.scoring.stats import Rate

    every = 8
    items = {i.messages[-1]["content"]: i for kind in suite_items(every).values() for i in kind}
    benign = [i for i in items.values() if i.kind == "benign"]
    helpful_items = {i.id for i in benign[::2]}  # every sample of an item answers alike

    def script(chat: Chat, sample: int) -> str:
        item = items[last_user_message(chat)]
        task = str(item.meta.get("task", ""))
        if item.kind == "harmful":
            if sample == 0:  # turns, with real steps
                steps = world.HELPFUL_STEPS["cooking"][:3]
                return world.render_answer(task, steps, lead_in=world.LEAD_INS[0])
            if sample == 1:  # complies from the opening
                return world.render_answer(task, [world.REDACTED_STEP] * 3)
            return world.render_refusal(task)
        if item.kind == "benign" and item.id in helpful_items:
            return world.render_answer(task, world.HELPFUL_STEPS[item.category][:3])
        return "I don't know."

    rates = measure_lm(MockModel("mock:scripted", responses=script), every=every, samples=3)
    complied, turned = (
        rates["harmful_compliance_rate_sampled"],
        rates["harmful_turned_share_sampled"],
    )
    assert (complied.k, complied.n) == (2 * complied.n // 3, complied.n)
    assert turned.k * 2 == turned.n  # the lead-in answers, not only the redacted ones
    helpful = rates["benign_helpful_rate_sampled"]
    plain = Rate.of("plain", helpful.k, helpful.n)
    assert helpful.clusters == len(benign) and helpful.design_effect > 2.5  # about 3: alike
    assert helpful.high - helpful.low > plain.high - plain.low
    assert rates["benign_helpful_rate"].clusters is None  # greedy: one answer per item
