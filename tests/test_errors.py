"""The ground layer's option checks: one message shape for every strategy, guard and wrapper."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from poise.errors import PoiseError, check_int, check_number, prepare_output_file


def test_check_int_returns_an_integer_at_or_above_the_bound() -> None:
    assert check_int("deal", "k", 3, 1) == 3
    assert check_int("guarded", "window", 0, 0) == 0


@pytest.mark.parametrize("value", [0, -2, 1.0, "2", True, None])
def test_check_int_refuses_what_is_not_an_integer_at_or_above_the_bound(value: object) -> None:
    with pytest.raises(PoiseError) as caught:
        check_int("deal", "k", value, 1)
    assert str(caught.value) == f"deal: k must be an integer >= 1, got {value!r}"


def test_check_number_returns_a_float() -> None:
    assert check_number("steer", "strength", -3) == -3.0
    assert isinstance(check_number("steer", "strength", 2), float)
    assert check_number("rain", "threshold", 1, low=-1, high=1) == 1.0
    assert check_number("best_of_n", "t", 0.5, positive=True) == 0.5


@pytest.mark.parametrize(
    ("value", "options", "message"),
    [
        (math.nan, {}, "steer: strength must be a finite number, got nan"),
        (math.inf, {}, "steer: strength must be a finite number, got inf"),
        (True, {}, "steer: strength must be a finite number, got True"),
        ("1", {}, "steer: strength must be a finite number, got '1'"),
        (1.5, {"low": -1, "high": 1}, "steer: strength must be a number in [-1, 1], got 1.5"),
        (-0.5, {"low": 0}, "steer: strength must be a finite number >= 0, got -0.5"),
        (2, {"high": 1}, "steer: strength must be a finite number <= 1, got 2"),
        (0, {"positive": True}, "steer: strength must be a positive number, got 0"),
        (math.nan, {"positive": True}, "steer: strength must be a positive number, got nan"),
    ],
)
def test_check_number_names_the_owner_the_option_and_the_value(
    value: object, options: dict[str, object], message: str
) -> None:
    with pytest.raises(PoiseError) as caught:
        check_number("steer", "strength", value, **options)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_invalid_json_says_what_and_at_which_column() -> None:
    import json

    from poise.errors import invalid_json

    for text, message in (
        (
            '{"a": 1,, "b": 2}',
            "invalid JSON (Expecting property name enclosed in double quotes at column 9)",
        ),
        ('{"bad json\n', "invalid JSON (Invalid control character at column 11)"),
        # a line cut short: json puts it at line 2, column 1 (past the newline)
        (
            '{"prompt": "hi", "chosen": "a",\n',
            "invalid JSON (Expecting property name enclosed in double quotes where the text ends)",
        ),
        ("[1, 2", "invalid JSON (Expecting ',' delimiter where the text ends)"),
    ):
        with pytest.raises(json.JSONDecodeError) as caught:
            json.loads(text)
        assert invalid_json(caught.value) == message


def test_prepare_output_file_makes_the_folder_or_says_why_it_cannot(tmp_path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    assert prepare_output_file(target, "output") == target
    assert (tmp_path / "a" / "b").is_dir() and not (tmp_path / "a" / "b" / "out.json").exists()
    with pytest.raises(PoiseError, match=r"^output: .* is a folder; give a file path$"):
        prepare_output_file(tmp_path / "a", "output")
    (tmp_path / "f").write_text("x")
    with pytest.raises(
        PoiseError, match=rf"^csv: cannot make folder .*: {tmp_path / 'f'} is a file$"
    ):
        prepare_output_file(tmp_path / "f" / "g" / "x.csv", "csv")


def test_prepare_output_file_returns_the_path_it_made_the_folder_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the caller writes at the returned path: '~' expanded, as the folder was made
    monkeypatch.setenv("HOME", str(tmp_path))
    assert prepare_output_file("~/x/out.json", "output") == tmp_path / "x" / "out.json"
    assert (tmp_path / "x").is_dir()


def test_an_unknown_name_of_another_type_is_named_not_a_type_error() -> None:
    # poise.train(None, ...) reached difflib with None: a bare TypeError
    from poise.errors import UnknownNameError

    error = UnknownNameError("recipe", None, ["dpo", "reward"])  # type: ignore[arg-type]
    assert str(error) == "unknown recipe None (known: dpo, reward)"


def test_a_json_text_cut_short_is_located_on_its_last_line(tmp_path: Path) -> None:
    import json

    from poise.errors import json_error_line
    from poise.suites.loaders import load_suite

    for text, line in (
        ('[{"prompt": "hi", "kind": "harmful"}\n', 1),  # json says line 2, past the newline
        ('[\n  {"prompt": "hi"},\n\n', 2),
        ('{"a": 1,, "b": 2}\n', 1),  # an error inside the text keeps json's line
        ('{\n"a": 1,\n"b" 2}', 3),
    ):
        with pytest.raises(json.JSONDecodeError) as caught:
            json.loads(text)
        assert json_error_line(caught.value) == line, text
    path = tmp_path / "s.json"
    path.write_text('[{"prompt": "hi", "kind": "harmful"}\n')
    with pytest.raises(PoiseError, match=r"s\.json:1: invalid JSON \(.* where the text ends\)"):
        load_suite(str(path))


def test_a_json_object_file_is_read_or_named_in_one_line(tmp_path: Path) -> None:
    """The one reader of a model folder's config.json / poise.json, a scorer folder's files, a
    run's metrics.json and a merge source's poise.json: a poise.json or metrics.json that was
    not UTF-8 was a UnicodeDecodeError traceback."""
    from poise.errors import read_json_object

    path = tmp_path / "poise.json"
    path.write_text('{"a": 1}')
    assert read_json_object(path) == {"a": 1}
    for content, message in (
        (b"\xff\xfe{}", "not a UTF-8 text file"),
        (b'{\n"a": 1,\n}', "invalid JSON"),
        (b"[1, 2]", "expected a JSON object"),
    ):
        path.write_bytes(content)
        with pytest.raises(PoiseError, match=rf"^{re.escape(str(path))}(:\d+)?: {message}"):
            read_json_object(path)
    with pytest.raises(PoiseError, match=r"cannot read"):
        read_json_object(tmp_path)  # a folder


@pytest.mark.parametrize("inner", ['{"a": 1}', '{"a": 1, "a": 2}'])
def test_json_nested_past_the_recursion_limit_is_one_error(tmp_path: Path, inner: str) -> None:
    # json's parser recurses per level: this was a RecursionError traceback
    import json

    from poise.errors import parse_json, read_json_object

    text = '{"x": ' + "[" * 100_000 + inner + "]" * 100_000 + "}"
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        parse_json(text)
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(PoiseError, match=rf"^{re.escape(str(path))}:1: invalid JSON .*nested"):
        read_json_object(path)


def test_a_model_folder_and_a_run_with_a_poise_json_not_in_utf8_are_one_error(
    tmp_path: Path,
) -> None:
    from poise.models.hf import read_poise_json
    from poise.runs.run import Run

    (tmp_path / "poise.json").write_bytes(b'{"default_system_prompt": "\xe9"}')
    with pytest.raises(PoiseError, match=r"poise\.json: not a UTF-8 text file$"):
        read_poise_json(tmp_path)
    (tmp_path / "metrics.json").write_bytes(b'{"overall": "\xe9"}')
    with pytest.raises(PoiseError, match=r"metrics\.json: not a UTF-8 text file$"):
        Run(tmp_path).metrics()


def test_jsonl_rows_may_hold_unicode_line_separators(tmp_path: Path) -> None:
    """json.dumps(..., ensure_ascii=False) writes U+2028, U+0085 and U+001C-U+001E as they are;
    str.splitlines cut such a row in two ('Unterminated string') in the monitor-data, anchor and
    refusal-label readers."""
    import json

    from poise.errors import json_lines
    from poise.guards.data import read_monitor_data
    from poise.probes.firewall import read_anchors

    text = "first\u2028second\x85third\x1cfourth"
    assert json_lines('{"a": 1}\r\n{"b": 2}\n\n{"c": 3}\n') == [
        '{"a": 1}',
        '{"b": 2}',
        "",
        '{"c": 3}',
    ]
    assert json_lines(json.dumps(text, ensure_ascii=False)) == [
        json.dumps(text, ensure_ascii=False)
    ]
    data = tmp_path / "monitor.jsonl"
    row = {"messages": [{"role": "user", "content": "hi"}], "response": text, "harmful": False}
    data.write_text(json.dumps(row, ensure_ascii=False) + "\n" + json.dumps(row) + "\n")
    assert [e.response for e in read_monitor_data(data)] == [text, text]
    anchors = tmp_path / "anchors.jsonl"
    row = json.dumps({"role": "cook", "query": text}, ensure_ascii=False) + "\n"
    anchors.write_text(row * 3)  # a role needs three anchors
    assert read_anchors(anchors) == {"cook": [text] * 3}


def test_a_run_header_and_a_monitor_header_not_in_utf8_are_one_error(tmp_path: Path) -> None:
    from poise.guards.monitor import MONITOR_JSON, read_header
    from poise.runs.run import RUN_FILE, Run

    (tmp_path / RUN_FILE).write_bytes(b'{"config": {"model": "\xe9"}}')
    with pytest.raises(PoiseError, match=r"run\.json: not a UTF-8 text file$"):
        Run(tmp_path).header  # noqa: B018
    (tmp_path / MONITOR_JSON).write_bytes(b'{"format": "\xe9"}')
    with pytest.raises(PoiseError, match=rf"{MONITOR_JSON}: not a UTF-8 text file$"):
        read_header(tmp_path)


@pytest.mark.parametrize(
    ("text", "key", "line", "column"),
    [
        ('{"prompt": "a", "prompt": "b"}', "prompt", 1, 17),
        ('{"a": {"b": 1, "b": 2}}', "b", 1, 16),  # inside a nested object
        ('[{"x": 1},\n {"y": [1, {"z": 0}], "y": 2}]', "y", 2, 23),
        ('{"\\u0061": 1, "a": 2}', "a", 1, 15),  # the same key, spelt with an escape
        # the object json closes first is named: the inner one, as the fast parse found it
        ('{"a": {"b": 1}, "a": {"b": 2, "b": 3}}', "b", 1, 31),
    ],
)
def test_a_key_given_twice_is_refused_at_the_second_one(
    text: str, key: str, line: int, column: int
) -> None:
    """json keeps a repeated key's last value without a word; every reader of the user's JSON
    parses with parse_json, which refuses it where the second one starts."""
    import json

    from poise.errors import DuplicateKeyError, invalid_json, json_error_line, parse_json

    assert isinstance(json.loads(text), (dict, list))  # json itself takes it
    with pytest.raises(DuplicateKeyError) as caught:
        parse_json(text)
    error = caught.value
    assert isinstance(error, json.JSONDecodeError)  # located by every JSON reader as it is
    assert (error.key, json_error_line(error), error.colno) == (key, line, column)
    assert invalid_json(error) == f"key {key!r} given twice (again at column {column})"


def test_parse_json_reads_what_json_reads() -> None:
    import json

    from poise.errors import parse_json

    for text in ('{"a": [1, 2.5, null, {"b": true}], "c": {"a": 1}}', "[]", '"x"', "NaN"):
        expected = json.loads(text)
        assert repr(parse_json(text)) == repr(expected)
        assert repr(parse_json(text.encode("utf-16"))) == repr(expected)  # bytes, as json.loads
    for bad in ("\ufeff{}", "{", '{"a": 1} x'):
        with pytest.raises(json.JSONDecodeError):
            parse_json(bad)


def test_a_json_object_file_with_a_key_given_twice_names_the_line_and_key(
    tmp_path: Path,
) -> None:
    from poise.errors import read_json_object

    path = tmp_path / "config.json"
    path.write_text('{\n  "hidden_size": 8,\n  "hidden_size": 16\n}\n', encoding="utf-8")
    with pytest.raises(PoiseError) as caught:
        read_json_object(path)
    assert str(caught.value) == f"{path}:3: key 'hidden_size' given twice (again at column 3)"


def test_an_unknown_name_suggests_up_to_three_near_names_whatever_their_case() -> None:
    from poise.errors import UnknownNameError

    known = ["best_of_n", "greedy", "greedy2", "greedy3", "greedy4"]
    assert str(UnknownNameError("strategy", "GREEDY", known)) == (
        "unknown strategy 'GREEDY'; did you mean 'greedy', 'greedy4', 'greedy3'? "
        "(known: best_of_n, greedy, greedy2, greedy3, greedy4)"
    )
    assert str(UnknownNameError("judge", "x", [])) == "unknown judge 'x' (known: (none registered))"


def test_a_note_on_unknown_names_is_added_to_names_not_to_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import poise.errors
    from poise.errors import UnknownNameError, explain_unknown_names

    monkeypatch.setattr(poise.errors, "_unknown_name_notes", [])
    explain_unknown_names(lambda: "plugin 'p' failed to load")
    explain_unknown_names(lambda: "")  # nothing to say: no "; " of its own
    assert str(UnknownNameError("attack", "x", ["a"])) == (
        "unknown attack 'x' (known: a); plugin 'p' failed to load"
    )
    option = UnknownNameError("option of attack 'a':", "n", ["k"])
    assert str(option) == "unknown option of attack 'a': 'n' (known: k)"


def test_a_missing_or_broken_extra_is_named_with_its_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from poise.errors import MissingExtraError, require_extra

    def broken(name: str) -> None:
        raise ValueError(f"{name}.__spec__ is None")  # a module half-imported, as find_spec says

    monkeypatch.setattr(importlib.util, "find_spec", broken)
    with pytest.raises(MissingExtraError) as caught:
        require_extra("fastapi", "serve", "poise serve")
    assert (
        str(caught.value) == "poise serve needs the package 'fastapi': pip install 'poise[serve]'"
    )
    assert caught.value.exit_code == 2


def test_a_line_not_in_utf8_names_its_file_line_and_byte() -> None:
    from poise.errors import decode_line

    assert decode_line("é".encode(), "rows.jsonl", 3) == "é"
    with pytest.raises(PoiseError) as caught:
        decode_line(b'{"a": "\xe9"}', "rows.jsonl", 3)
    assert str(caught.value) == "rows.jsonl:3: not UTF-8 text (byte 8 of the line)"


def test_check_int_and_check_number_keep_both_ends_as_they_say() -> None:
    assert check_int("deal", "k", 5, 1, 5) == 5
    with pytest.raises(PoiseError) as caught:
        check_int("deal", "k", 6, 1, 5)
    assert str(caught.value) == "deal: k must be an integer in [1, 5], got 6"
    assert check_number("rain", "p", 1, low=0, high=1, low_open=True) == 1.0
    with pytest.raises(PoiseError) as caught:
        check_number("rain", "p", 0, low=0, high=1, low_open=True)
    assert str(caught.value) == "rain: p must be a number in (0, 1], got 0"
    with pytest.raises(PoiseError) as caught:
        check_number("train", "lr", 0.0, positive=True, where="lr (--lr)")
    assert str(caught.value) == "lr (--lr): expected a positive number, got 0.0"


def test_json_lines_end_at_lf_crlf_and_cr_and_the_last_newline_starts_none() -> None:
    from poise.errors import json_lines

    assert json_lines('{"a": 1}\r{"b": 2}\r\n{"c": 3}\n') == ['{"a": 1}', '{"b": 2}', '{"c": 3}']
    assert json_lines("x\n\n") == ["x", ""]


def test_a_folder_given_with_a_tilde_is_refused_as_an_output_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "runs").mkdir()
    with pytest.raises(PoiseError) as caught:
        prepare_output_file("~/runs", "--output")
    assert str(caught.value) == f"--output: {tmp_path / 'runs'} is a folder; give a file path"


def test_a_json_file_that_starts_with_a_bom_says_so(tmp_path: Path) -> None:
    # json.loads refuses a BOM with this message; parse_json's own decoder alone would say
    # "Expecting value", which leaves one looking for a typo in the first character
    from poise.errors import read_json_object

    path = tmp_path / "config.json"
    path.write_text('\ufeff{"a": 1}', encoding="utf-8")
    with pytest.raises(PoiseError) as caught:
        read_json_object(path)
    assert str(caught.value) == (
        f"{path}:1: invalid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig) at column 1)"
    )
