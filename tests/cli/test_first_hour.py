"""A new user's first commands (issue 10, items 11-17): version, run names, `runs show` with
a name several runs match, `runs ls` at 80 columns, extras named intact."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from poise import __version__
from poise.cli import app


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def audit(out: Path, *extra: str) -> Path:
    code, output = invoke(
        "audit",
        "--model",
        "mock",
        "--suite",
        "harmful",
        "--limit",
        "2",
        "--out",
        str(out),
        "--no-html",
        *extra,
    )
    assert code == 0, output
    return out


def run_names(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if (p / "run.json").is_file())


def test_version_prints_the_version() -> None:
    code, output = invoke("--version")
    assert code == 0, output
    assert output.strip() == f"poise {__version__}"


def test_run_name_says_the_sampling_of_a_sampled_run(tmp_path: Path) -> None:
    audit(tmp_path / "greedy")
    (greedy,) = run_names(tmp_path / "greedy")
    assert greedy.endswith("-mock-greedy")
    audit(tmp_path / "sampled", "--temperature", "1", "--n", "4")
    (sampled,) = run_names(tmp_path / "sampled")
    assert sampled.endswith("-mock-t1-n4"), sampled
    audit(tmp_path / "warm", "--temperature", "0.7")
    (warm,) = run_names(tmp_path / "warm")
    assert warm.endswith("-mock-t0.7"), warm


def test_runs_show_refuses_a_name_several_runs_match_as_export_and_compare_do(
    tmp_path: Path,
) -> None:
    """`runs show NAME` with a name two runs match showed the newest (exit 0), while `runs
    export` and `compare` refuse such a name and list the candidates: the same name showed one
    run and exported none. Now all three give the same one-line error."""
    audit(tmp_path)
    audit(tmp_path)
    names = run_names(tmp_path)
    assert len(names) == 2
    errors = []
    for command in (
        ["runs", "show", "mock"],
        ["runs", "export", "mock", "--csv", str(tmp_path / "x.csv")],
    ):
        code, output = invoke(*command, "--out", str(tmp_path))
        assert code == 2, output
        flat = " ".join(output.split())
        assert "matches 2 runs" in flat and all(name in flat for name in names), flat
        assert "Traceback" not in output
        errors.append(flat)
    assert errors[0] == errors[1]  # the same message, from the same helper
    # a name only one run matches, and a folder given as a path, still show that run
    for spec in (names[0], str(tmp_path / names[1])):
        code, output = invoke("runs", "show", spec, "--out", str(tmp_path))
        assert code == 0, output
        assert "harmful" in output


def test_runs_ls_fits_80_columns(tmp_path: Path) -> None:
    audit(tmp_path, "--temperature", "1", "--n", "4")
    result = CliRunner().invoke(app, ["runs", "ls", "--out", str(tmp_path)], terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    (name,) = run_names(tmp_path)
    assert any(name in line for line in lines), "the run name is never cut"
    header = json.loads((tmp_path / name / "run.json").read_text())
    assert header["status"] in result.output
    # every headline number stays readable: no column squeezed to an ellipsis
    assert "…" not in result.output
    assert re.search(r"\d+\.\d%", result.output)


def test_a_terminal_that_is_not_utf8_gets_question_marks_not_a_traceback(tmp_path: Path) -> None:
    """Under LANG=C (or a Windows code page) the tables' '—', '·' and '…' raised
    UnicodeEncodeError: `poise judges ls` failed, and an audit failed after writing its run."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [sys.executable, "-m", "poise.cli", "judges", "ls"],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode("ascii", "replace")[-600:]
    assert b"?" in done.stdout and b"Traceback" not in done.stderr


def test_a_run_folder_with_brackets_is_printed_as_written(tmp_path: Path) -> None:
    """`--out 'runs/[exp]'`: the audit's last lines read the folder as rich markup and
    printed 'runs/' ('[exp]' taken for a style); `runs ls` did the same in its table."""
    out = tmp_path / "[exp]"
    code, output = invoke(
        "audit", "--model", "mock", "--suite", "harmful", "--limit", "1", "--out", str(out)
    )
    assert code == 0, output
    assert "[exp]" in output.replace("\n", "")
    code, output = invoke("runs", "ls", "--out", str(out))
    assert code == 0 and "[exp]" in output, output


def test_a_long_run_folder_is_printed_on_one_line_at_80_columns(tmp_path: Path) -> None:
    """In a pipe or a CI log (80 columns) `run folder:` and `report:` were cut where the width
    ended, so the path copied from the log (or read by a script) was not the folder."""
    out = tmp_path / ("a-rather-long-folder-name-for-experiments-" * 2) / "runs"
    result = CliRunner().invoke(
        app,
        ["audit", "--model", "mock", "--suite", "harmful", "--limit", "1", "--out", str(out)],
        terminal_width=80,
    )
    assert result.exit_code == 0, result.output
    (name,) = run_names(out)
    lines = result.output.splitlines()
    assert f"run folder: {out / name}" in lines, result.output
    assert f"report:     {out / name / 'report.html'}" in lines, result.output
    csv = tmp_path / ("another-long-folder-name-" * 3) / "run.csv"
    result = CliRunner().invoke(
        app, ["runs", "export", str(out / name), "--csv", str(csv)], terminal_width=80
    )
    assert result.exit_code == 0, result.output
    assert f"wrote 1 sample rows to {csv}" in result.output.splitlines(), result.output


def test_a_value_out_of_range_names_the_flag_and_the_value_given(tmp_path: Path) -> None:
    """It said "audit config: limit: Input should be greater than or equal to 1": the field,
    not the flag typed, nor the value; `poise train` already named both."""
    for flag, value, expected in (
        ("--limit", "0", "limit (--limit): Input should be greater than or equal to 1, got 0"),
        ("--temperature", "-1", "temperature (--temperature): Input should be greater than or "
         "equal to 0, got -1.0"),
        ("--n", "0", "n (--n): Input should be greater than or equal to 1, got 0"),
    ):  # fmt: skip
        code, output = invoke("audit", "-m", "mock", "--out", str(tmp_path), flag, value)
        assert code == 2 and f"error: audit config: {expected}" in " ".join(output.split())
    assert not any(tmp_path.iterdir())  # refused before a run folder was made
