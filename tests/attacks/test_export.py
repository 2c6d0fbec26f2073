import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from poise.attacks.export import preference_pairs, write_pairs
from poise.errors import PoiseError


def rec(
    item: str, config: str, text: str, harmful: bool, refused: bool, kind: str = "harmful"
) -> dict:
    return {
        "item_id": item,
        "kind": kind,
        "category": "fraud",
        "request_id": config,
        "prompt": f"prompt {item}",
        "completion": text,
        "verdict": {"harmful": harmful, "refused": refused},
    }


def test_pairs_need_both_a_refusal_and_a_harmful_completion(tmp_path: Path) -> None:
    records = [
        rec("a", "greedy", "No.", False, True),
        rec("a", "t=1", "Sure: step 1", True, False),
        rec("a", "t=0.5", "Sure: step 1", True, False),
        rec("b", "greedy", "No.", False, True),  # never broken: no pair
        rec("c", "t=1", "Sure", True, False),  # never refused: no pair
        rec("d", "greedy", "No.", False, True, kind="borderline"),
    ]
    pairs = preference_pairs(records)
    assert len(pairs) == 1
    [pair] = pairs
    assert pair["prompt"] == [{"role": "user", "content": "prompt a"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "No."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Sure: step 1"}]
    assert pair["meta"]["chosen_request"] == "greedy" and pair["meta"]["rejected_request"] == "t=1"
    path = tmp_path / "sub" / "pairs.jsonl"
    assert write_pairs(pairs, path) == 1
    assert json.loads(path.read_text()) == pair
    assert not list(path.parent.glob(".*tmp*"))


def test_write_pairs_refuses_a_folder_or_a_file_on_the_way_and_writes_nothing(
    tmp_path: Path,
) -> None:
    import pytest

    from poise.errors import PoiseError

    pair = {"prompt": [], "chosen": [], "rejected": []}
    with pytest.raises(PoiseError, match="is a folder; give a file path"):
        write_pairs([pair], tmp_path)
    (tmp_path / "notes").write_text("x")
    with pytest.raises(PoiseError, match="is a file"):  # was a FileExistsError traceback
        write_pairs([pair], tmp_path / "notes" / "pairs.jsonl")
    assert write_pairs([pair, pair], tmp_path / "new" / "pairs.jsonl") == 2
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["pairs.jsonl"]


def test_write_pairs_writes_a_home_relative_path_where_its_folder_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the folder was made under the expanded '~', the file written under a literal '~'
    monkeypatch.setenv("HOME", str(tmp_path))
    pair = {"prompt": [], "chosen": [], "rejected": []}
    assert write_pairs([pair], "~/out/pairs.jsonl") == 1
    assert (tmp_path / "out" / "pairs.jsonl").is_file()


@pytest.mark.parametrize("per_prompt", [0, -1])
def test_pairs_per_prompt_below_one_is_one_clear_error(per_prompt: int) -> None:
    # 0 gave no pair ("no harmful item has both a safe and a harmful answer" in the CLI), and -1
    # dropped the last pair of every prompt without a word
    records = [
        rec("a", "greedy", "No.", False, True),
        rec("a", "t=1", "Sure: step 1", True, False),
        rec("a", "t=0.5", "I won't.", False, True),
        rec("a", "t=0.7", "Sure: step 2", True, False),
    ]
    assert len(preference_pairs(records, per_prompt=2)) == 2
    with pytest.raises(PoiseError, match=r"per_prompt must be an integer >= 1, got -?\d"):
        preference_pairs(records, per_prompt=per_prompt)


def test_the_cli_refuses_per_prompt_below_one_before_reading_the_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poise.cli import app

    output = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "attacks",
            "export",
            "no-such-run",
            "--out",
            str(tmp_path),
            "-o",
            str(output),
            "--per-prompt",
            "0",
        ],
    )
    assert result.exit_code == 2
    assert "--per-prompt must be an integer >= 1, got 0" in result.output
    assert not output.exists()


def test_write_pairs_interrupted_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Ctrl-C while the pairs were written left the temporary file beside the output."""

    def pairs() -> Iterator[dict[str, str]]:
        yield {"prompt": "p", "chosen": "a", "rejected": "b"}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_pairs(pairs(), tmp_path / "pairs.jsonl")
    assert list(tmp_path.iterdir()) == []
