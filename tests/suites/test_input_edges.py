"""Suite input at the edges: names the file system refuses, long CSV fields, files of formats
poise does not read, lists of rows with a stray entry, bad messages, and ``poise suites show``
printing a file's text as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app
from poise.errors import PoiseError
from poise.suites import load_suite


def _error(spec: str) -> str:
    with pytest.raises(PoiseError) as info:
        load_suite(spec)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_a_name_too_long_for_the_file_system_is_no_such_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Path.exists raised OSError (File name too long): a traceback for a mistyped argument
    assert _error("x" * 300).endswith(": no such file (File name too long)")
    assert "no such file" in _error("x" * 300 + ".csv")
    # as a hub id (owner/name) with no network, the cache look-up raised the same OSError
    pytest.importorskip("datasets")
    import poise.hub

    monkeypatch.setattr(poise.hub, "hub_reachable", lambda timeout=3.0: False)
    assert "cannot be reached" in _error("someone/" + "x" * 300)


@pytest.mark.parametrize("name", ["long.csv", "long.tsv"])
def test_a_csv_prompt_over_128_kib_loads_as_it_does_from_jsonl(tmp_path: Path, name: str) -> None:
    # the csv module's default field limit (131072) refused it: "bad CSV (field larger than ...)"
    prompt = "many shots; " * 20_000
    sep = "\t" if name.endswith(".tsv") else ","
    path = tmp_path / name
    path.write_text(f"prompt{sep}kind\n{prompt}{sep}harmful\nshort{sep}benign\n", encoding="utf-8")
    suite = load_suite(str(path))
    assert [item.prompt for item in suite] == [prompt.strip(), "short"]


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("rows.yaml", b"- prompt: hi\n  kind: benign\n", "YAML"),
        ("rows.yml", b"- prompt: hi\n", "YAML"),
        ("rows.xlsx", b"PK\x03\x04\x14\x00\x06\x00", "Excel"),
    ],
)
def test_a_file_of_a_format_poise_does_not_read_is_named_as_such(
    tmp_path: Path, name: str, content: bytes, what: str
) -> None:
    # it was read as CSV: "not UTF-8 text ... save the file as UTF-8", or "missing required
    # column 'prompt' (columns found: '- prompt: hi')"
    path = tmp_path / name
    path.write_bytes(content)
    message = _error(str(path))
    assert message.startswith(f"{path}: {what} files are not read as suites; convert it to JSONL")
    assert ".jsonl" in message
    # a missing one is no such file, not an unknown built-in suite name
    assert _error(str(tmp_path / f"missing-{name}")).endswith(": no such file")


def test_a_list_of_rows_with_a_stray_entry_or_no_rows_is_named(tmp_path: Path) -> None:
    # "one JSON object with no list of objects inside (keys: 'rows')": there is one
    path = tmp_path / "artifact.json"
    row = {"prompt": "hi", "kind": "benign"}
    path.write_text(json.dumps({"parameters": {"n": 1}, "jailbreaks": [row, None]}))
    assert _error(str(path)) == f"{path}:1: jailbreaks[1]: expected an object, got null"
    path.write_text(json.dumps({"parameters": {"n": 1}, "jailbreaks": [row, 5]}))
    assert _error(str(path)) == f"{path}:1: jailbreaks[1]: expected an object, got int"
    path.write_text(json.dumps({"parameters": {"n": 1}, "jailbreaks": []}))
    assert _error(str(path)) == f"{path}: the file is empty (the list under 'jailbreaks' is empty)"
    path.write_text(json.dumps({"parameters": {"n": 1}, "jailbreaks": [row]}))
    assert [item.prompt for item in load_suite(str(path))] == ["hi"]
    path.write_text(json.dumps({"prompt": "hi", "tags": []}))  # one row, not an empty file
    assert "the file is empty" not in _error(str(path))


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"role": "user", "content": 5}], "message 0 'content': Input should be a valid string"),
        (
            [{"role": "system", "content": "s"}, {"role": None, "content": "hi"}],
            "message 1 'role': Input should be a valid string",
        ),
        (["hi"], "message 0: Input should be a valid dictionary"),
    ],
)
def test_a_bad_message_of_a_poise_row_is_named_by_its_index_and_key(
    tmp_path: Path, messages: list[object], expected: str
) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"messages": messages, "kind": "benign"}) + "\n")
    assert _error(str(path)) == f"{path}:1: field 'messages': {expected}"


def test_show_prints_ids_and_categories_as_text_not_markup(tmp_path: Path) -> None:
    # "[/x]" raised MarkupError (a traceback, exit code 1); "[bold]" was dropped from the id
    path = tmp_path / "marked.csv"
    path.write_text("prompt,kind,category,id\nhi,benign,[/weapons],[bold]q1\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["suites", "show", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "[bold]q1" in result.stdout and "[/weapons]" in result.stdout


def test_a_column_role_given_twice_is_refused(tmp_path: Path) -> None:
    # the second mapping silently replaced the first
    path = tmp_path / "mine.csv"
    path.write_text("question,text,kind\nhi,there,benign\n", encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["suites", "show", str(path), "--column", "prompt=question", "--column", "prompt=text"],
    )
    assert result.exit_code == 2
    assert "the role 'prompt' is already mapped to 'question'" in result.output
    assert "Traceback" not in result.output


def test_detection_picks_the_format_with_the_most_identifying_columns() -> None:
    # the rule the formats module states; no test told it from "the last match wins"
    from poise.suites import detect_format

    chosen = detect_format(["goal", "target", "chosen"])  # advbench (2 columns), hh_rlhf (1)
    assert chosen is not None and chosen.name == "advbench"
    chosen = detect_format(["Goal", "Target", "Behavior", "Category", "chosen"])
    assert chosen is not None and chosen.name == "jailbreakbench"


def test_columns_matching_two_formats_equally_ask_which(tmp_path: Path) -> None:
    # StrongREJECT's and Do-Not-Answer's three columns side by side: the format first in sorted
    # order (donotanswer) was taken without a word
    path = tmp_path / "merged.csv"
    path.write_text(
        "category,source,forbidden_prompt,risk_area,types_of_harm,question\n"
        "Weapons,custom,Strongreject prompt,Malicious Uses,Weapons,Do-not-answer question\n",
        encoding="utf-8",
    )
    assert _error(str(path)) == (
        f"{path}: the columns match several formats equally ('donotanswer' by 'risk_area', "
        "'types_of_harm', 'question'; 'strongreject' by 'category', 'source', "
        "'forbidden_prompt'); pick one with --format NAME (Python: suite_format='NAME' of "
        "poise.audit, format='NAME' of load_suite)"
    )
    suite = load_suite(str(path), format="strongreject")
    assert suite.items[0].prompt == "Strongreject prompt"


def test_a_json_line_may_hold_unicode_line_separators(tmp_path: Path) -> None:
    # str.splitlines cut the row at U+2028 / U+0085 / U+001C: "invalid JSON (Unterminated string)"
    prompts = ["para one\u2028para two", "a\x85b\x1cc\x1dd\x1ee", "plain"]
    rows = [json.dumps({"prompt": p, "kind": "benign"}, ensure_ascii=False) for p in prompts]
    path = tmp_path / "unicode.jsonl"
    path.write_text("\r\n".join(rows) + "\n", encoding="utf-8")
    assert [item.prompt for item in load_suite(str(path))] == prompts
    path.write_text(rows[0] + "\n\n" + '{"prompt": "x", "kind": 5', encoding="utf-8")
    assert _error(str(path)).startswith(f"{path}:3: invalid JSON")  # line numbers unchanged
