"""Every kind of bad input to `poise audit` ends in one line on stderr, exit code 2, and no run
folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app


def good_suite(tmp_path: Path) -> Path:
    path = tmp_path / "ok.jsonl"
    row = {"id": "a", "messages": [{"role": "user", "content": "hi"}], "kind": "benign"}
    path.write_text(json.dumps(row) + "\n")
    return path


def bad_json(tmp_path: Path) -> list[str]:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine", "kind": "harmful"}\n{"prompt": "broken\n')
    return ["--suite", str(path)]


def missing_column(tmp_path: Path) -> list[str]:
    path = tmp_path / "advbench.csv"
    path.write_text("target\nSure\n")
    return ["--suite", str(path), "--model", "mock"]


def empty_file(tmp_path: Path) -> list[str]:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    return ["--suite", str(path)]


def wrong_encoding(tmp_path: Path) -> list[str]:
    path = tmp_path / "latin1.csv"
    path.write_bytes("goal,target\nCaf\xe9 request,Sure\n".encode("latin-1"))
    return ["--suite", str(path)]


def unknown_suite(tmp_path: Path) -> list[str]:
    return ["--suite", "harmfull"]


def unknown_model(tmp_path: Path) -> list[str]:
    return ["--model", "organism-tiny", "--suite", str(good_suite(tmp_path))]


def unknown_judge(tmp_path: Path) -> list[str]:
    return ["--judge", "orakle", "--suite", str(good_suite(tmp_path))]


def folder_without_safetensors(tmp_path: Path) -> list[str]:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02")
    return ["--model", str(folder), "--suite", str(good_suite(tmp_path)), "--judge", "refusal"]


def key_twice_in_a_row(tmp_path: Path) -> list[str]:
    path = tmp_path / "twice.jsonl"
    path.write_text('{"prompt": "fine", "kind": "benign"}\n{"prompt": "a", "prompt": "b"}\n')
    return ["--suite", str(path), "--kind", "benign"]


def key_twice_in_an_option(tmp_path: Path) -> list[str]:
    # json kept the last value: the script answered "hi" with "b" without a word
    option = 'responses={"hi": "a", "hi": "b"}'
    return ["--model-option", option, "--suite", str(good_suite(tmp_path))]


CASES = {
    "key given twice in a row": (
        key_twice_in_a_row,
        ["twice.jsonl:2", "key 'prompt' given twice"],
    ),
    "key given twice in an option": (
        key_twice_in_an_option,
        ["--model-option", "key 'hi' given twice"],
    ),
    "bad JSON": (bad_json, ["bad.jsonl:2"]),
    "missing column": (missing_column, ["advbench.csv", "missing required column", "target"]),
    "empty file": (empty_file, ["empty.jsonl", "empty"]),
    "wrong encoding": (wrong_encoding, ["latin1.csv", "UTF-8"]),
    "unknown suite": (unknown_suite, ["harmfull", "harmful"]),
    "unknown model": (unknown_model, ["organism-tiny", "organism-small"]),
    "unknown judge": (unknown_judge, ["orakle", "oracle"]),
    "no safetensors": (folder_without_safetensors, ["pickled", "safetensors"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path: Path, case: str) -> None:
    make_args, must_mention = CASES[case]
    out = tmp_path / "runs"
    args = ["audit", "--model", "mock", *make_args(tmp_path), "--out", str(out)]
    # the last --model wins in typer; cases that set a model put it after the default
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    for needle in must_mention:
        assert needle in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())
