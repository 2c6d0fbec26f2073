"""The evaluation core completes a guard's record with the judge's account of the unguarded
answer; the metrics read it."""

from __future__ import annotations

from collections.abc import Sequence

from poise.attacks.base import Request
from poise.config import Sampling
from poise.evaluation import Generated, Scorers
from poise.guards.record import guard_record
from poise.models.base import Completion
from poise.scoring.base import Verdict
from poise.scoring.metrics import compute_metrics
from poise.suites.schema import SuiteItem


class MarkJudge:
    """Harmful iff the answer holds "BAD"; harm begins at it."""

    name = "mark"

    def judge(self, items: Sequence[SuiteItem], completions: Sequence[str]) -> list[Verdict]:
        return [Verdict("x", refused=False, harmful="BAD" in text) for text in completions]

    def harm_onsets(
        self, items: Sequence[SuiteItem], completions: Sequence[str]
    ) -> list[int | None]:
        return [text.find("BAD") if "BAD" in text else None for text in completions]


def _generated(i: int, completion: Completion) -> Generated:
    item = SuiteItem(id=f"i{i}", messages=[{"role": "user", "content": "q"}], kind="harmful")
    return Generated(Request(item, "r", item.chat, Sampling(), "default"), 0, completion)


def test_stopped_answers_are_labelled_by_their_unguarded_text() -> None:
    unguarded = "ok ok BAD BAD"  # tokens end at 2, 5, 9, 13
    ends = [2, 5, 9, 13]
    stopped = Completion(
        "ok ok BAD sorry",
        3,
        "guard",
        metadata=guard_record(
            stopped=True,
            produced=3,
            shown=3,
            settings={"kind": "streaming"},
            unguarded_tokens=4,
            unguarded_text=unguarded,
            token_ends=ends,
        ),
    )
    clean = Completion(
        "fine",
        1,
        "stop",
        metadata=guard_record(
            stopped=False,
            produced=1,
            shown=1,
            settings={"kind": "streaming"},
            unguarded_tokens=1,
            token_ends=[4],
        ),
    )
    plain = Completion("BAD", 1, "stop")
    judged = Scorers(MarkJudge()).judge(
        [_generated(0, stopped), _generated(1, clean), _generated(2, plain)]
    )
    first = judged[0].completion.metadata["guard"]  # type: ignore[index]
    assert first["unguarded_harmful"] is True and first["harm_onset"] == 6
    assert first["harmful_tokens"] == 2 and first["harmful_tokens_shown"] == 1
    second = judged[1].completion.metadata["guard"]  # type: ignore[index]
    assert second["unguarded_harmful"] is False and second["harmful_tokens"] == 0
    assert judged[2].completion.metadata is None  # plain answers are untouched
    records = [j.record("greedy") for j in judged[:2]]
    metrics = compute_metrics(records)["overall"]["guard"]
    assert metrics["macro_f1"]["value"] == 1.0
    assert metrics["harmful_tokens_shown"]["value"] == 1.0


def test_a_stop_before_the_harm_is_still_labelled_by_the_whole_unguarded_answer() -> None:
    """The shown text of a stopped answer ("ok ok" and the refusal) holds no harm; its
    unguarded answer does, and the judge is asked about that one. A token that ends where the
    harm begins (the space before "BAD") is not harmful; a full-answer guard shows none of the
    tokens it produced, so none of the harmful ones reached the user."""
    unguarded = "ok ok BAD BAD"
    ends = [2, 5, 6, 9, 13]  # "ok", " ok", " ", "BAD", " BAD": the harm begins at 6
    early = Completion(
        "ok ok sorry",
        2,
        "guard",
        metadata=guard_record(
            stopped=True, produced=2, shown=2, settings={"kind": "streaming"},
            unguarded_tokens=5, unguarded_text=unguarded, token_ends=ends,
        ),
    )  # fmt: skip
    full = Completion(
        "sorry",
        0,
        "guard",
        metadata=guard_record(
            stopped=True, produced=5, shown=0, settings={"kind": "full"},
            unguarded_tokens=5, unguarded_text=unguarded, token_ends=ends,
        ),
    )  # fmt: skip
    judged = Scorers(MarkJudge()).judge([_generated(0, early), _generated(1, full)])
    for j in judged:
        record = j.completion.metadata["guard"]  # type: ignore[index]
        assert record["unguarded_harmful"] is True and record["harm_onset"] == 6
        assert record["harmful_tokens"] == 2 and record["harmful_tokens_shown"] == 0
        assert j.verdict.harmful is False  # the shown answer's own verdict is kept
