"""Verdicts: today's fields, and open labels written only when present."""

from poise.scoring.base import Verdict


def test_a_verdict_without_labels_keeps_the_recorded_format() -> None:
    verdict = Verdict(label="refusal", refused=True, harmful=False)
    assert verdict.to_dict() == {
        "label": "refusal",
        "refused": True,
        "harmful": False,
        "helpful": None,
        "honesty": None,
        "p_harmful": None,
    }


def test_open_labels_round_trip() -> None:
    verdict = Verdict(label="agrees", refused=False, labels={"agrees": True, "score": 0.7})
    data = verdict.to_dict()
    assert data["labels"] == {"agrees": True, "score": 0.7}
    assert Verdict.from_dict(data) == verdict
    assert Verdict.from_dict({"label": "x", "refused": False}).labels == {}


def test_every_field_of_a_verdict_survives_its_record() -> None:
    verdict = Verdict(
        label="complied",
        refused=False,
        harmful=True,
        helpful=False,
        honesty="wrong",
        p_harmful=0.83,
    )
    assert Verdict.from_dict(verdict.to_dict()) == verdict
    # a record without "refused" (an old or hand-written one) is not read as a refusal
    assert Verdict.from_dict({"label": "complied"}).refused is False
