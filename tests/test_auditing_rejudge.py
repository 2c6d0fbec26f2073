"""Judging a run again (``poise.auditing.rejudge``, ``poise runs rejudge``): the new run is the
run the audit would have written with that judge, from the same answers, and nothing else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html import escape
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import poise
from poise.auditing import rejudge
from poise.cli import app
from poise.errors import PoiseError
from poise.models.mock import MockModel
from poise.runs import Run, list_runs
from test_auditing import scripted, write_suite

# what differs between two runs of the same answers by construction
_RUN_OWN = {"name", "created", "rejudged_from", "weights", "system_prompts"}


def _records(run: Run) -> list[dict[str, Any]]:
    return sorted(run.records(), key=lambda r: (r["item_id"], r["request_id"], r["sample_index"]))


def _same_run(rejudged: Run, audited: Run) -> None:
    """Records, metrics and config of two runs agree (not their names and times)."""
    assert _records(rejudged) == _records(audited)
    assert json.loads((rejudged.path / "metrics.json").read_text()) == json.loads(
        (audited.path / "metrics.json").read_text()
    )
    config = {k: v for k, v in rejudged.config.items() if k not in ("name", "out", "html")}
    assert config == {k: v for k, v in audited.config.items() if k not in ("name", "out", "html")}


def _organism_audit(tmp_path: Path, judge: str, out: str, n: int = 2, **fields: Any) -> Run:
    return poise.audit(
        model="organism-small",
        suites=["harmful", "benign", "honesty"],
        judge=judge,
        limit=8,
        sampling={"temperature": 1.0, "n": n, "seed": 0, "max_new_tokens": 48},
        out=str(tmp_path / out),
        name="t1",
        html=False,
        **fields,
    ).run


def test_another_judge_gives_the_run_an_audit_with_that_judge_writes(tmp_path: Path) -> None:
    by_refusal = _organism_audit(tmp_path, "refusal", "a")
    by_oracle = _organism_audit(tmp_path, "oracle", "b")
    before = (by_refusal.path / "samples.jsonl").read_bytes()

    result = rejudge(by_refusal.path, judge="oracle", html=False)

    assert result.path.parent == by_refusal.path.parent and result.path != by_refusal.path
    _same_run(result.run, by_oracle)
    # the verdicts did change: the refusal detector and the oracle disagree on some answers
    assert _records(result.run) != _records(by_refusal)
    assert (by_refusal.path / "samples.jsonl").read_bytes() == before  # the old run is kept
    header = result.run.header
    assert header["status"] == "complete"
    assert header["rejudged_from"] == {"run": str(by_refusal.path), "judge": "refusal"}
    assert header["judge_resolved"] == "oracle"
    assert header["model_spec"] == "organism-small"
    assert header["config"]["name"] == "t1-rejudged"


def test_an_attack_summary_is_computed_again_from_the_new_verdicts(tmp_path: Path) -> None:
    options = {"attack": "worst_of_n", "attack_options": {"n": 3}}
    by_refusal = _organism_audit(tmp_path, "refusal", "a", n=1, **options)
    by_oracle = _organism_audit(tmp_path, "oracle", "b", n=1, **options)
    result = rejudge(by_refusal.path, judge="oracle", html=False)
    assert "attack" in result.metrics
    _same_run(result.run, by_oracle)


def _guarded_audit(tmp_path: Path, judge: str, out: str) -> Run:
    return poise.audit(
        model="guarded(organism-large, monitor=organism-monitor)",
        suites=["harmful"],
        judge=judge,
        limit=6,
        sampling={"temperature": 1.0, "n": 2, "seed": 0, "max_new_tokens": 48},
        out=str(tmp_path / out),
        name="guarded",
        html=False,
    ).run


def test_a_guarded_answers_account_of_harm_is_recomputed_by_the_new_judge(
    tmp_path: Path,
) -> None:
    by_refusal = _guarded_audit(tmp_path, "refusal", "a")
    by_oracle = _guarded_audit(tmp_path, "oracle", "b")
    result = rejudge(by_refusal.path, judge="oracle", html=False)
    _same_run(result.run, by_oracle)
    # the oracle locates harm, the refusal detector does not
    onsets = [r["metadata"]["guard"].get("harm_onset") for r in _records(result.run)]
    assert any(o is not None for o in onsets)
    assert all("harm_onset" not in r["metadata"]["guard"] for r in _records(by_refusal))


def test_a_judge_that_locates_no_harm_keeps_no_harm_onset_of_the_old_judge(
    tmp_path: Path,
) -> None:
    """The oracle's harm onset and harmful token counts in a guard's record are the old judge's
    account: judged again by the refusal detector, which locates no harm, they went on beside
    its verdicts (and into the guard metrics), where an audit with it has none."""
    by_oracle = _guarded_audit(tmp_path, "oracle", "a")
    by_refusal = _guarded_audit(tmp_path, "refusal", "b")
    assert any("harm_onset" in r["metadata"]["guard"] for r in _records(by_oracle))
    result = rejudge(by_oracle.path, judge="refusal", html=False)
    _same_run(result.run, by_refusal)
    assert all("harm_onset" not in r["metadata"]["guard"] for r in _records(result.run))


def test_a_reference_run_is_read_beside_the_run_before_a_folder_is_written(
    tmp_path: Path,
) -> None:
    """The audit found its reference run by name under its --out; judged again into another
    folder, the name was looked up there, after every answer was judged."""
    base: dict[str, Any] = {
        "suites": ["harmful", "honesty"],
        "limit": 4,
        "sampling": {"max_new_tokens": 24},
        "out": str(tmp_path / "runs"),
        "html": False,
    }
    poise.audit(model="organism-small", judge="refusal", name="base", **base)
    audited = poise.audit(
        model="organism-large", judge="refusal", name="big", reference_run="base", **base
    ).run
    beside = rejudge(audited.path, judge="oracle", html=False)
    elsewhere = rejudge(audited.path, judge="oracle", out=tmp_path / "other", html=False)
    assert elsewhere.path.parent == tmp_path / "other"
    assert elsewhere.metrics == beside.metrics
    assert any("reference" in json.dumps(group) for group in beside.metrics["groups"].values())

    for run in (beside.run, elsewhere.run):
        shutil.rmtree(run.path)
    shutil.rmtree(next(r.path for r in list_runs(tmp_path / "runs") if r.path != audited.path))
    with pytest.raises(PoiseError, match="no run 'base' found"):
        rejudge(audited.path, judge="oracle", out=tmp_path / "other", html=False)
    assert [r.path for r in list_runs(tmp_path / "runs")] == [audited.path]
    assert list_runs(tmp_path / "other") == []


def _mini_run(tmp_path: Path, judge: str = "refusal", html: bool = False, **fields: Any) -> Run:
    """A complete run of the scripted mock on a small suite file (``tmp_path/mini.jsonl``)."""
    suite = write_suite(tmp_path / "mini.jsonl")
    return poise.audit(
        model=MockModel("scripted", scripted),
        suites=[str(suite)],
        judge=judge,
        out=str(tmp_path / "runs"),
        name="mini",
        html=html,
        **fields,
    ).run


def test_a_record_without_its_answer_is_one_error_naming_its_line(tmp_path: Path) -> None:
    audited = _mini_run(tmp_path)
    lines = audited.samples_path.read_text().splitlines()
    broken = json.loads(lines[2])
    del broken["completion"]
    lines[2] = json.dumps(broken)
    audited.samples_path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(PoiseError, match=r"samples.jsonl:3: cannot judge again: .*'completion'"):
        rejudge(audited.path, judge="oracle")
    assert list_runs(tmp_path / "runs") == [audited]


def test_a_records_sampling_is_kept_as_written_not_parsed(tmp_path: Path) -> None:
    """The judge reads the item and the answer, not how it was sampled: a record whose config
    holds a field this poise's Sampling does not know (written by another version) was a
    pydantic traceback; it is judged, its config kept as written."""
    audited = _mini_run(tmp_path)
    records = [json.loads(line) for line in audited.samples_path.read_text().splitlines()]
    for record in records:
        record["config"]["min_p"] = 0.05
    audited.samples_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = rejudge(audited.path, judge="refusal", html=False)
    assert [r["config"] for r in result.run.records()] == [r["config"] for r in records]


def test_sigterm_removes_the_half_judged_run_and_exits_143(tmp_path: Path) -> None:
    """SIGTERM (``kill``, ``timeout``, a batch scheduler) ended ``poise runs rejudge`` at once:
    a half-judged run stayed, unfinished, with the configuration of an audit with that judge,
    for the next such audit to adopt. Now it is Ctrl-C: the folder goes, exit code 143."""
    audited = _mini_run(tmp_path, batch_size=2)
    script = (
        "import signal, sys\n"
        "import poise.evaluation as ev\n"
        "from poise.cli import app\n"
        "judge, calls = ev.Scorers.judge, []\n"
        "def stopping(self, generated):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        signal.raise_signal(signal.SIGTERM)\n"
        "    return judge(self, generated)\n"
        "ev.Scorers.judge = stopping\n"
        "app(sys.argv[1:])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "runs", "rejudge", str(audited.path), "--no-html"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert done.returncode == 143, done.stderr
    assert "interrupted: no run was written" in " ".join(done.stderr.split())
    assert list_runs(tmp_path / "runs") == [audited]


def test_a_rejudge_killed_midway_is_not_continued_by_the_next_audit(tmp_path: Path) -> None:
    """Killed without clean-up (SIGKILL, the OOM killer), a half-judged run stayed unfinished
    with the fingerprint of an audit with that judge: the next such ``poise audit`` continued
    it ("continuing unfinished run"), generating the rest into a run that says
    ``rejudged_from``. It now carries the fingerprint only once every verdict is written."""
    audited = _mini_run(tmp_path, batch_size=2)
    script = (
        "import os, sys\n"
        "import poise.evaluation as ev\n"
        "from poise.auditing import rejudge\n"
        "judge, calls = ev.Scorers.judge, []\n"
        "def dying(self, generated):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        os._exit(9)\n"
        "    return judge(self, generated)\n"
        "ev.Scorers.judge = dying\n"
        "rejudge(sys.argv[1], html=False)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(audited.path)], capture_output=True, timeout=120
    )
    assert done.returncode == 9, done.stderr
    [killed] = [r for r in list_runs(tmp_path / "runs") if r.path != audited.path]
    assert killed.state == "interrupted" and killed.samples_written() > 0

    again = poise.audit(
        model=MockModel("scripted", scripted),
        suites=[str(tmp_path / "mini.jsonl")],
        judge="refusal",
        out=str(tmp_path / "runs"),
        html=False,
        batch_size=2,
    )
    assert again.path not in (killed.path, audited.path)
    assert "rejudged_from" not in again.run.header


def test_the_same_judge_gives_the_same_run(tmp_path: Path) -> None:
    """Without a judge, the run's own: here the one auto chose when it ran."""
    audited = _mini_run(tmp_path, judge="auto")
    again = rejudge(audited.path, out=tmp_path / "again", name="again", html=False)
    assert again.run.header["judge_resolved"] == audited.header["judge_resolved"] == "refusal"
    assert _records(again.run) == _records(audited)
    assert again.metrics == json.loads((audited.path / "metrics.json").read_text())
    assert again.run.path.parent == tmp_path / "again"


def test_only_a_complete_run_is_judged_again(tmp_path: Path) -> None:
    audited = _mini_run(tmp_path)
    audited.update_header(status="running")  # killed: header running, lock free
    with pytest.raises(PoiseError, match="interrupted, not complete: finish it first"):
        rejudge(audited.path)
    assert len(list((tmp_path / "runs").iterdir())) == 1  # nothing written


def test_a_suite_edited_since_the_run_is_refused(tmp_path: Path) -> None:
    audited = _mini_run(tmp_path)
    suite = tmp_path / "mini.jsonl"
    suite.write_text(suite.read_text().replace("harmful request 4", "another request"))
    with pytest.raises(PoiseError, match=r"cannot judge again: item h-04 .* another prompt"):
        rejudge(audited.path)
    assert len(list((tmp_path / "runs").iterdir())) == 1


@pytest.mark.parametrize(
    ("judge", "options", "message"),
    [
        ("oracel", None, "unknown judge 'oracel'"),
        ("refusal", {"modle": "x"}, "modle"),
    ],
)
def test_a_bad_judge_is_refused_before_a_folder_is_written(
    tmp_path: Path, judge: str, options: dict[str, Any] | None, message: str
) -> None:
    audited = _mini_run(tmp_path)
    with pytest.raises(PoiseError, match=message):
        rejudge(audited.path, judge=judge, judge_options=options)
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_cli_runs_rejudge(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    _mini_run(tmp_path)
    result = CliRunner().invoke(
        app, ["runs", "rejudge", "mini", "--out", str(out), "--judge", "refusal", "--no-html"]
    )
    assert result.exit_code == 0, result.output
    assert "mini-rejudged" in result.output and "harmful" in result.output
    bad = CliRunner().invoke(app, ["runs", "rejudge", "mini", "--out", str(out), "--judge", "x"])
    assert bad.exit_code == 2 and "unknown judge 'x'" in bad.output


def test_cli_runs_rejudge_writes_under_out_as_audit_does(tmp_path: Path) -> None:
    """--out is the folder that holds run folders, as poise audit's: the new run goes there,
    whether RUN is found by name under it or given as a folder elsewhere; without --out, beside
    RUN."""
    audited = _mini_run(tmp_path)
    other = tmp_path / "elsewhere"
    given = ["runs", "rejudge", str(audited.path), "--judge", "refusal", "--no-html"]
    result = CliRunner().invoke(app, [*given, "--out", str(other), "--name", "there"])
    assert result.exit_code == 0, result.output
    assert [r.path.name.endswith("-there") for r in list_runs(other)] == [True]
    result = CliRunner().invoke(app, [*given, "--name", "beside"])
    assert result.exit_code == 0, result.output
    assert any(r.path.name.endswith("-beside") for r in list_runs(audited.path.parent))


def test_a_rejudged_run_says_where_its_answers_come_from(tmp_path: Path) -> None:
    """The report's "What was audited" and the terminal table name the run the answers are
    from and the judge that labelled them there; a run that generated its own says nothing."""
    audited = _mini_run(tmp_path, html=True)
    again = rejudge(audited.path, judge="refusal", name="again")
    said = f"answers of {audited.path}, judged there by refusal"
    page = (again.path / "report.html").read_text(encoding="utf-8")
    assert "judged again" in page and escape(said) in page
    assert "judged again" not in (audited.path / "report.html").read_text(encoding="utf-8")
    shown = CliRunner().invoke(app, ["runs", "show", str(again.path)], terminal_width=400)
    assert shown.exit_code == 0 and f"judged again: {said}" in shown.output
    first = CliRunner().invoke(app, ["runs", "show", str(audited.path)], terminal_width=400)
    assert first.exit_code == 0 and "judged again" not in first.output


def test_a_judge_sees_the_blocks_it_saw_in_the_audit(tmp_path: Path) -> None:
    """A judge that scores a block at once (a batched classifier pads it) is given the audit's
    blocks, ``batch_size`` requests with all their answers, not ``batch_size`` answers."""
    from poise.scoring.judges import RefusalJudge, judges, register_judge

    seen: list[int] = []

    class Counting(RefusalJudge):
        name = "counting"

        def judge(self, items: Any, completions: Any) -> Any:
            seen.append(len(completions))
            return super().judge(items, completions)

    register_judge("counting")(lambda arg, **options: Counting())
    try:
        audited = _mini_run(
            tmp_path, judge="counting", batch_size=3, sampling={"temperature": 1.0, "n": 2}
        )
        in_audit, seen[:] = list(seen), []
        rejudge(audited.path)
        assert seen == in_audit == [6] * 6 + [4]  # 20 items, 3 per block, 2 answers each
    finally:
        judges._entries.pop("counting", None)


def test_auto_is_judged_again_by_the_spec_it_resolved_to(tmp_path: Path) -> None:
    """A model object without a spec recommending a judge that takes an argument: its name is
    not its spec, and rejudge resolved `auto` again from the model's name, which recommends
    nothing: the run was judged again by `refusal`, without a word."""
    from poise.scoring.judges import RefusalJudge, judges, register_judge

    made: list[str | None] = []

    class Worded(RefusalJudge):
        def __init__(self, word: str | None) -> None:
            super().__init__()
            self.name = f"worded({word})"  # a display name, not the spec "worded:WORD"

    def make(arg: str | None, **options: Any) -> Any:
        made.append(arg)
        return Worded(arg)

    register_judge("worded", argument="WORD")(make)
    try:
        model = MockModel("scripted", scripted)
        model.recommended_judge = "worded:bomb"
        suite = write_suite(tmp_path / "mini.jsonl")
        audited = poise.audit(
            model=model, suites=[str(suite)], judge="auto", out=str(tmp_path / "runs"), html=False
        ).run
        assert audited.header["judge_resolved"] == "worded(bomb)"
        again = rejudge(audited.path, html=False)
        assert again.run.header["judge_resolved"] == "worded(bomb)" and made == ["bomb", "bomb"]
        assert audited.header["judge_spec"] == again.run.header["judge_spec"] == "worded:bomb"
    finally:
        judges._entries.pop("worded", None)


def test_the_command_says_how_far_it_got(tmp_path: Path) -> None:
    _mini_run(tmp_path)
    result = CliRunner().invoke(app, ["runs", "rejudge", "mini", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "answers judged: 20/20 (100%)" in result.output


def test_a_run_judged_again_from_another_directory_reads_the_files_it_began_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's suite file, named relative to the directory the audit ran in, was read from
    the working directory: from another one, a file of that name with other items there (or
    none) stopped the judging. It is read where the run began (run.json's ``workdir``), and the
    new run records that directory, against which its config's paths are relative."""
    began, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    began.mkdir()
    elsewhere.mkdir()
    write_suite(began / "mini.jsonl")
    write_suite(elsewhere / "mini.jsonl", 2, 2)  # other items under the same name
    monkeypatch.chdir(began)
    fields: dict[str, Any] = dict(suites=["mini.jsonl"], html=False)
    audited = poise.audit(model=MockModel("scripted", scripted), judge="oracle", **fields).run
    by_refusal = poise.audit(model=MockModel("scripted", scripted), judge="refusal", out="b",
                             **fields).run  # fmt: skip
    expected = _records(by_refusal)
    monkeypatch.chdir(elsewhere)
    result = rejudge(began / audited.path, judge="refusal", html=False)
    assert _records(result.run) == expected
    assert result.run.header["workdir"] == str(began)


def test_a_run_judged_again_from_another_directory_builds_its_judge_where_it_began(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_hf_model_dir: Path
) -> None:
    """The run's own judge named by a relative folder (``preset:NAME`` with ``model=./cls``)
    was built from the working directory: from another one the folder was not there (or
    another's was). It is built from where the run began and keeps its name; a judge given
    now is read here, and the new run, which records the old run's directory, records its
    folder whole."""
    began, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(tiny_hf_model_dir, began / "cls")
    write_suite(began / "mini.jsonl")
    monkeypatch.chdir(began)
    audited = poise.audit(
        model=MockModel("scripted", scripted),
        suites=["mini.jsonl"],
        judge="preset:harmbench-cls",
        judge_options={"model": "cls"},
        html=False,
    ).run
    expected = _records(audited)
    monkeypatch.chdir(elsewhere)
    again = rejudge(began / audited.path, html=False)
    assert _records(again.run) == expected
    assert again.run.header["judge_resolved"] == "preset:harmbench-cls@cls"
    assert again.run.config["judge_options"] == {"model": "cls"}  # as typed
    # a judge given now, from here: its folder recorded whole
    shutil.copytree(tiny_hf_model_dir, elsewhere / "mine")
    mine = rejudge(
        began / audited.path,
        judge="preset:harmbench-cls",
        judge_options={"model": "mine"},
        name="mine",
        html=False,
    )
    assert mine.run.config["judge_options"] == {"model": str(elsewhere / "mine")}
    assert mine.run.header["workdir"] == str(began)


def test_cli_runs_rejudge_takes_its_judge_its_options_and_html_flags(tmp_path: Path) -> None:
    audited = _mini_run(tmp_path)
    out = tmp_path / "runs"
    base = ["runs", "rejudge", "mini", "--out", str(out)]
    result = CliRunner().invoke(
        app, [*base, "--judge-option", "min_words=40", "--name", "opts", "--no-html"]
    )
    assert result.exit_code == 0, result.output
    [opts] = [r for r in list_runs(out) if r.path.name.endswith("-opts")]
    assert opts.config["judge_options"] == {"min_words": 40}
    assert opts.config["judge"] == "refusal"  # the run's own, without --judge
    assert not (opts.path / "report.html").exists()
    result = CliRunner().invoke(app, [*base, "--judge", "oracle", "--name", "other"])
    assert result.exit_code == 0, result.output
    [other] = [r for r in list_runs(out) if r.path.name.endswith("-other")]
    assert other.header["judge_resolved"] == "oracle"
    assert other.header["rejudged_from"]["judge"] == audited.header["judge_resolved"]
    assert (other.path / "report.html").is_file()  # --html is the default


def test_a_limited_run_whose_items_are_no_longer_picked_is_not_judged_again(
    tmp_path: Path,
) -> None:
    """--limit spreads over the suite: once it grew, the run's items are not those the audit
    asks, as a resume finds (13a mutation check)."""
    audited = _mini_run(tmp_path, limit=5)
    write_suite(tmp_path / "mini.jsonl", 20, 10)
    with pytest.raises(PoiseError, match=r"cannot judge again: item h-04 of suite mini is "
                       r"recorded but is no longer among the audit's items"):  # fmt: skip
        rejudge(audited.path)
