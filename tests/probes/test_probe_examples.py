"""Probe training examples built from an audit's records, with the system prompt each record's
request was sent with."""

from __future__ import annotations

from typing import Any

from poise.probes.data import compliance_from_records


def record(item_id: str, kind: str, refused: bool, system_prompt: str) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "kind": kind,
        "prompt": f"question {item_id}",
        "config": {"temperature": 0.0, "system_prompt": system_prompt},
        "verdict": {"refused": refused},
    }


RECORDS = [
    record("a", "harmful", True, "default"),
    record("b", "benign", False, "default"),
    record("c", "harmful", True, "none"),
    record("d", "benign", False, "none"),
]


def test_records_without_system_prompt_get_the_models_none_prompt() -> None:
    plain = {e.group: e.chat for e in compliance_from_records(RECORDS, "Be safe.")}
    assert plain["a"][0] == {"role": "system", "content": "Be safe."}
    assert plain["c"] == [{"role": "user", "content": "question c"}]
    # a model whose template inserts its default gets an explicit empty system message
    in_template = {
        e.group: e.chat for e in compliance_from_records(RECORDS, "Be safe.", none_prompt="")
    }
    assert in_template["a"] == plain["a"]
    assert in_template["c"] == [
        {"role": "system", "content": ""},
        {"role": "user", "content": "question c"},
    ]
