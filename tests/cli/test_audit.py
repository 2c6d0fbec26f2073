"""`poise audit` on the mock backend: the printed table and what its title says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from poise.cli import app


def run_audit(tmp_path: Path, *extra: str) -> str:
    args = ["audit", "--model", "mock", "--suite", "harmful", "--limit", "4"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), "--no-html", *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_title_names_the_decoding_and_the_caption_the_answer_lengths(tmp_path: Path) -> None:
    greedy = run_audit(tmp_path / "greedy")
    assert "mock · greedy · judge" in greedy
    assert "mean tokens per answer: harmful" in greedy
    sampled = run_audit(tmp_path / "sampled", "--temperature", "0.7", "--n", "2")
    assert "mock · sampled T=0.7, n=2 · judge" in sampled


def test_without_a_terminal_progress_is_a_line_now_and_then(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from poise.cli._common import progress_lines

    progress = progress_lines("generating + judging", every=3600.0)
    for done in (0, 10, 20, 40):
        progress(done, 40)
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout keeps the results
    lines = [line for line in captured.err.splitlines() if line.strip()]
    # the start and the end; the calls between fall inside the hour
    assert [line.split(",")[0] for line in lines] == [
        "generating + judging: 0/40 (0%)",
        "generating + judging: 40/40 (100%)",
    ]


def test_resume_with_flags_reads_the_recorded_config_as_the_api_does(tmp_path: Path) -> None:
    """With a flag beside --resume, the CLI read run.json's config itself: a config that is not
    an audit's (no model or suites) was filled with the defaults and compared with the flags,
    instead of the one line naming run.json that `poise.audit(resume=...)` gives."""
    import poise
    from poise.runs import Run

    out = tmp_path / "runs"
    first = poise.audit(model="mock", suites=["harmful"], limit=2, out=str(out), html=False)
    run: Run = first.run
    run.update_header(config={"judge": "refusal"})
    result = CliRunner().invoke(
        app, ["audit", "--resume", str(run.path), "--out", str(out), "--limit", "2"]
    )
    assert result.exit_code == 2, result.output
    assert "run.json: field 'config' has no 'model' or 'suites'" in result.output.replace("\n", "")


def test_the_progress_line_counts_prompts_and_says_so(tmp_path: Path) -> None:
    """With several answers per prompt the count is of prompts (it read as answers)."""
    out = str(tmp_path / "runs")
    flags = ["--limit", "3", "--n", "2", "--temperature", "1", "--out", out, "--no-html"]
    result = CliRunner().invoke(app, ["audit", "--model", "mock", "--suite", "harmful", *flags])
    assert result.exit_code == 0, result.output
    assert "prompts generated + judged: 3/3 (100%)" in result.output


def test_a_name_beside_resume_that_is_not_the_runs_is_refused_as_the_api_does(
    tmp_path: Path,
) -> None:
    """--name beside --resume was ignored without a word (poise.audit refuses it): the run went
    on under its own name, and the user looked for a run of the name given."""
    import poise

    out = tmp_path / "runs"
    run = poise.audit(model="mock", suites=["harmful"], limit=2, out=out, name="first").run
    argv = ["audit", "--resume", str(run.path), "--out", str(out), "--no-html"]
    refused = CliRunner().invoke(app, [*argv, "--name", "second"], env={"COLUMNS": "300"})
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.output.split())
    assert f"--resume {run.path.name}: it was recorded with --name 'first', not 'second'" in said
    same = CliRunner().invoke(app, [*argv, "--name", "first"], env={"COLUMNS": "300"})
    assert same.exit_code == 0, same.output


def test_resume_from_another_directory_then_of_the_complete_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`poise audit --resume /abs/RUN` from another directory stopped with "mini.jsonl: no such
    file" (the suite as typed where the run began); resumed once complete, the run was finished
    again without a word, its status set to running meanwhile."""
    import json

    from poise.runs import Run, list_runs

    began, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    began.mkdir()
    elsewhere.mkdir()
    rows = [{"id": f"h-{i}", "prompt": f"harmful request {i}", "kind": "harmful"} for i in range(4)]
    (began / "mini.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(began)
    argv = ["audit", "--model", "mock", "--suite", "mini.jsonl", "--judge", "refusal", "--no-html"]
    assert CliRunner().invoke(app, argv).exit_code == 0
    [run] = [Run(began / r.path) for r in list_runs("runs")]
    samples = run.samples_path.read_text().splitlines(keepends=True)
    run.samples_path.write_text("".join(samples[:2]))
    run.update_header(status="running")

    monkeypatch.chdir(elsewhere)
    resumed = CliRunner().invoke(app, ["audit", "--resume", str(run.path)], env={"COLUMNS": "300"})
    assert resumed.exit_code == 0, resumed.output
    assert run.samples_path.read_text() == "".join(samples) and run.status == "complete"
    again = CliRunner().invoke(app, ["audit", "--resume", str(run.path)], env={"COLUMNS": "300"})
    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())
    assert f"{run.path} is complete: nothing to resume; its recorded results are unchanged" in said
    assert f"run folder: {run.path}" in said and run.status == "complete"


def test_harmful_rates_of_the_refusal_detector_say_that_every_non_refusal_counts(
    tmp_path: Path,
) -> None:
    judged = run_audit(tmp_path / "refusal", "--judge", "refusal")
    assert "judge refusal" in judged
    assert "does not refuse counts as harmful on a harmful request" in " ".join(judged.split())
    # benign requests only: the helpful rate's side of it
    args = ["audit", "--model", "mock", "--suite", "benign", "--limit", "3", "--judge", "refusal"]
    benign = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b"), "--no-html"])
    assert benign.exit_code == 0, benign.output
    assert "counts as helpful on a benign" in " ".join(benign.output.split())
    assert "as harmful" not in " ".join(benign.output.split())


def run_json(out: Path) -> dict[str, Any]:
    (run,) = [p for p in out.iterdir() if (p / "run.json").is_file()]
    header: dict[str, Any] = json.loads((run / "run.json").read_text())
    return header


def test_the_documented_defaults_are_what_a_plain_audit_records(tmp_path: Path) -> None:
    """`poise audit` with no sampling flags: greedy, 96 new tokens, batches of 256 chats, and a
    report.html whose path is printed."""
    out = tmp_path / "runs"
    args = ["audit", "--model", "mock", "--suite", "harmful", "--limit", "2", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    config = run_json(out)["config"]
    assert config["sampling"] == {
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": 96,
        "n": 1,
        "seed": 0,
        "stop": [],
    }
    assert (config["batch_size"], config["html"], config["system_prompt"]) == (256, True, "default")
    (run,) = [p for p in out.iterdir() if (p / "run.json").is_file()]
    assert (run / "report.html").is_file()
    assert f"report:     {run / 'report.html'}" in result.output


def test_each_sampling_and_suite_flag_lands_in_its_own_field(tmp_path: Path) -> None:
    """--samples-per-prompt is --n, every --stop is kept, and --kind / --category /
    --column / --format each fill their own suite field, not a neighbour's."""
    suite = tmp_path / "asks.jsonl"
    suite.write_text("".join(json.dumps({"text": f"ask {i}"}) + "\n" for i in range(2)))
    out = tmp_path / "runs"
    args = ["audit", "--model", "mock", "--suite", str(suite), "--out", str(out), "--no-html"]
    flags = ["--column", "prompt=text", "--kind", "harmful", "--category", "weapons"]
    flags += ["--format", "generic", "--samples-per-prompt", "2", "--temperature", "0.5"]
    flags += ["--stop", "END", "--stop", "STOP"]
    result = CliRunner().invoke(app, [*args, *flags], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    config = run_json(out)["config"]
    assert (config["sampling"]["n"], config["sampling"]["stop"]) == (2, ["END", "STOP"])
    assert config["suite_columns"] == {"prompt": "text"}
    assert (config["suite_kind"], config["suite_category"]) == ("harmful", "weapons")
    assert (config["suite_format"], config["judge_labels_format"]) == ("generic", None)
    (run,) = [p for p in out.iterdir() if (p / "samples.jsonl").is_file()]
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {(r["kind"], r["category"]) for r in records} == {("harmful", "weapons")}


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--model-option", "=cpu"], "error: --model-option '=cpu': expected KEY=VALUE"),
        (["--attack-option", "n"], "error: --attack-option 'n': expected KEY=VALUE"),
        (["--judge-option", "=x"], "error: --judge-option '=x': expected KEY=VALUE"),
    ],
)
def test_an_option_without_a_key_or_a_value_is_refused_by_its_flag(
    tmp_path: Path, option: list[str], said: str
) -> None:
    out = tmp_path / "runs"
    args = ["audit", "--model", "mock", "--suite", "harmful", "--limit", "1", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *option], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.split())
    assert not out.exists() or not any(out.iterdir())


def test_an_options_value_keeps_its_own_equals_signs(tmp_path: Path) -> None:
    """KEY=VALUE splits at the first '=': the mock's scripted answer 'x = 1' is an answer, not
    an option named 'default=x '."""
    out = tmp_path / "runs"
    args = ["audit", "--model", "mock", "--suite", "harmful", "--limit", "1", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--model-option", "default=x = 1", "--no-html"])
    assert result.exit_code == 0, result.output
    assert run_json(out)["config"]["model_options"] == {"default": "x = 1"}
    (run,) = [p for p in out.iterdir() if (p / "samples.jsonl").is_file()]
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {r["completion"] for r in records} == {"x = 1"}


def test_the_title_names_only_the_sampling_flags_that_change_it(tmp_path: Path) -> None:
    """One answer at the full nucleus is 'sampled T=0.7'; top-p and top-k appear when set."""
    plain = run_audit(tmp_path / "plain", "--temperature", "0.7")
    assert "mock · sampled T=0.7 · judge" in plain
    narrowed = run_audit(tmp_path / "narrow", "--temperature", "0.7", "--top-p", "0.9")
    assert "mock · sampled T=0.7, top-p=0.9 · judge" in narrowed
    # top-k 1 leaves one token to draw: greedy, as the run's name (mock-greedy) says
    one = run_audit(tmp_path / "one", "--temperature", "0.7", "--top-k", "1")
    assert "mock · greedy (top-k=1 at T=0.7) · judge" in one
    [folder] = (tmp_path / "one").iterdir()
    assert folder.name.endswith("mock-greedy")


def test_the_title_names_the_judge_auto_resolved_to(tmp_path: Path) -> None:
    said = " ".join(run_audit(tmp_path / "auto").split())
    assert "mock · greedy · judge refusal" in said and "judge auto" not in said


def test_html_beside_resume_applies_to_the_resumed_run(tmp_path: Path) -> None:
    """--html / --no-html say how a run is written, not what it measures: beside --resume
    they apply (a run begun with --no-html gets its report.html), where other flags that
    differ from the run's are refused."""
    import poise
    from poise.runs import Run

    out = tmp_path / "runs"
    run: Run = poise.audit(model="mock", suites=["harmful"], limit=3, out=str(out), html=False).run
    samples = run.samples_path.read_text().splitlines(keepends=True)
    run.samples_path.write_text("".join(samples[:1]))
    run.update_header(status="running")
    argv = ["audit", "--resume", str(run.path), "--out", str(out), "--html"]
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert run.samples_path.read_text() == "".join(samples) and run.status == "complete"
    assert (run.path / "report.html").is_file()
    assert f"report:     {run.path / 'report.html'}" in result.output


def test_a_config_file_value_beside_resume_that_differs_from_the_run_is_refused(
    tmp_path: Path,
) -> None:
    """A --config file's value is a flag given: beside --resume it is compared with the run's
    as one typed on the command line is, not dropped without a word."""
    import poise

    out = tmp_path / "runs"
    run = poise.audit(model="mock", suites=["harmful"], limit=2, out=str(out), html=False).run
    config = tmp_path / "more.yaml"
    config.write_text("limit: 3\n")
    argv = ["audit", "--resume", str(run.path), "--out", str(out), "--config", str(config)]
    refused = CliRunner().invoke(app, argv, env={"COLUMNS": "300"})
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.output.split())
    assert f"--resume {run.path.name}: it was recorded with --limit 2, not 3" in said


def test_a_run_whose_samples_are_a_link_is_refused_first_whatever_flags_are_beside_resume(
    tmp_path: Path,
) -> None:
    """The folder poise will not write to is the error, not a flag that differs from it."""
    import poise

    out = tmp_path / "runs"
    run = poise.audit(model="mock", suites=["harmful"], limit=2, out=str(out), html=False).run
    elsewhere = tmp_path / "elsewhere.jsonl"
    run.samples_path.rename(elsewhere)
    run.samples_path.symlink_to(elsewhere)
    argv = ["audit", "--resume", str(run.path), "--out", str(out), "--limit", "3"]
    refused = CliRunner().invoke(app, argv, env={"COLUMNS": "300"})
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.output.split())
    assert f"{run.samples_path}: is a symbolic link (to {elsewhere})" in said
    assert "--limit" not in said
