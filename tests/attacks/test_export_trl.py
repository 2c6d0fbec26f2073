"""`poise attacks export` writes TRL's conversational preference format: prompt, chosen and
rejected all message lists (issue 10, item 16). Checked with TRL itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from poise.train.data import load_preferences

trl_data_utils = pytest.importorskip("trl.data_utils")


def _records() -> list[dict[str, object]]:
    def rec(item: str, config: str, text: str, harmful: bool) -> dict[str, object]:
        return {
            "item_id": item,
            "kind": "harmful",
            "category": "fraud",
            "request_id": config,
            "prompt": f"prompt {item}",
            "completion": text,
            "verdict": {"harmful": harmful, "refused": not harmful},
        }

    return [
        rec("a", "greedy", "No, I can't help with that.", False),
        rec("a", "t=1", "Sure: step 1", True),
        rec("b", "greedy", "I won't.", False),
        rec("b", "t=1.5", "Here is how", True),
    ]


def test_every_exported_row_is_conversational_for_trl(tmp_path: Path) -> None:
    from datasets import load_dataset

    from poise.attacks.export import preference_pairs, write_pairs

    path = tmp_path / "pairs.jsonl"
    assert write_pairs(preference_pairs(_records()), path) == 2
    rows = load_dataset("json", data_files=str(path), split="train")
    assert len(rows) == 2
    for row in rows:
        # every column on its own: TRL decides from whichever key it looks at first
        for key in ("prompt", "chosen", "rejected"):
            assert trl_data_utils.is_conversational({key: row[key]}), (key, row[key])
        assert trl_data_utils.is_conversational(row)
        assert [m["role"] for m in row["chosen"]] == ["assistant"]
        assert [m["role"] for m in row["rejected"]] == ["assistant"]
    # and poise's own trainer reads it back
    pairs = load_preferences(path)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("No, I can't help with that.", "Sure: step 1"),
        ("I won't.", "Here is how"),
    ]


def test_trl_applies_the_chat_template_to_an_exported_row(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    from poise.attacks.export import preference_pairs

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    row = preference_pairs(_records())[0]
    example = {k: row[k] for k in ("prompt", "chosen", "rejected")}
    applied = trl_data_utils.maybe_apply_chat_template(example, tokenizer)
    assert applied["prompt"].endswith("<|assistant|>\n")
    assert "No, I can't help with that." in applied["chosen"]
    assert "Sure: step 1" in applied["rejected"]
