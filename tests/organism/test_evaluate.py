"""measure_feedback: a feedback agent's card rates, read as feedback_revision reads verdicts."""

from __future__ import annotations

import json

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
