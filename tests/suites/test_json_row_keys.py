"""JSON rows need not all carry the same keys: a key that only later rows hold is read, not
ignored (the header of a JSON file was the first row's keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from poise.errors import PoiseError
from poise.suites import load_suite


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_later_rows_own_kind_wins_over_the_files_kind(tmp_path: Path) -> None:
    spec = _write(
        tmp_path / "a.jsonl",
        '{"prompt": "first"}\n{"prompt": "second", "kind": "benign"}\n',
    )
    suite = load_suite(spec, kind="harmful")
    assert [item.kind for item in suite] == ["harmful", "benign"]


def test_a_later_rows_id_and_category_are_read(tmp_path: Path) -> None:
    spec = _write(
        tmp_path / "a.jsonl",
        '{"prompt": "first", "kind": "benign"}\n'
        '{"prompt": "second", "kind": "benign", "id": "q7", "category": "cooking"}\n',
    )
    second = load_suite(spec).items[1]
    assert (second.id, second.category) == ("q7", "cooking")
    assert "id" not in second.meta and "category" not in second.meta


def test_json_array_rows_with_keys_the_first_lacks(tmp_path: Path) -> None:
    spec = _write(
        tmp_path / "a.json",
        '[{"prompt": "first", "kind": "benign"}, '
        '{"prompt": "second", "kind": "benign", "reference": "Paris"}]',
    )
    assert load_suite(spec).items[1].reference == "Paris"


def test_a_row_without_the_kind_that_later_rows_hold_names_its_line(tmp_path: Path) -> None:
    spec = _write(
        tmp_path / "a.jsonl",
        '{"prompt": "first"}\n{"prompt": "second", "kind": "benign"}\n',
    )
    with pytest.raises(PoiseError, match=r"a\.jsonl:1: field 'kind': the row has no kind"):
        load_suite(spec)


def test_limit_still_stops_before_a_bad_line_further_down(tmp_path: Path) -> None:
    spec = _write(tmp_path / "a.jsonl", '{"prompt": "hi", "kind": "benign"}\n{not json\n')
    assert len(load_suite(spec, limit=1)) == 1


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("a.jsonl", '{"prompt": "hi", "kind": "benign"}\n{"prompt": "a", "prompt": "b"}\n', "2"),
        (
            "a.json",
            '[\n{"prompt": "hi", "kind": "benign"},\n{"prompt": "a", "prompt": "b"}\n]\n',
            "3",
        ),
        ("rows.json", '{"rows": [\n{"prompt": "hi"},\n{"prompt": "a", "prompt": "b"}\n]}', "3"),
        ("lines.json", '{"prompt": "hi"}\n{"prompt": "a", "prompt": "b"}\n', "2"),
        ("row.json", '{"prompt": "a", "prompt": "b"}', "1"),
    ],
)
def test_a_key_given_twice_in_a_row_names_the_line_and_the_key(
    tmp_path: Path, name: str, text: str, where: str
) -> None:
    # json kept the last value: the row's prompt was "b" without a word
    spec = _write(tmp_path / name, text)
    with pytest.raises(PoiseError) as caught:
        load_suite(spec, kind="benign")
    assert str(caught.value) == f"{spec}:{where}: key 'prompt' given twice (again at column 17)"
