"""Judging a run again (``poise.auditing.rejudge``, ``poise runs rejudge``): the new run is the
run the audit would have written with that judge, from the same answers, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import poise
from poise.auditing import rejudge
from poise.cli import app
from poise.errors import PoiseError
from poise.models.mock import MockModel
from poise.runs import Run
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


def test_a_guarded_answers_account_of_harm_is_recomputed_by_the_new_judge(
    tmp_path: Path,
) -> None:
    def run(judge: str, out: str) -> Run:
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

    by_refusal, by_oracle = run("refusal", "a"), run("oracle", "b")
    result = rejudge(by_refusal.path, judge="oracle", html=False)
    _same_run(result.run, by_oracle)
    # the oracle locates harm, the refusal detector does not
    onsets = [r["metadata"]["guard"].get("harm_onset") for r in _records(result.run)]
    assert any(o is not None for o in onsets)
    assert all("harm_onset" not in r["metadata"]["guard"] for r in _records(by_refusal))


def test_the_same_judge_gives_the_same_run(tmp_path: Path) -> None:
    """Without a judge, the run's own: here the one auto chose when it ran."""
    suite = write_suite(tmp_path / "mini.jsonl")
    audited = poise.audit(
        model=MockModel("scripted", scripted),
        suites=[str(suite)],
        judge="auto",
        out=str(tmp_path / "runs"),
        html=False,
    ).run
    again = rejudge(audited.path, out=tmp_path / "again", name="again", html=False)
    assert again.run.header["judge_resolved"] == audited.header["judge_resolved"] == "refusal"
    assert _records(again.run) == _records(audited)
    assert again.metrics == json.loads((audited.path / "metrics.json").read_text())
    assert again.run.path.parent == tmp_path / "again"


def test_only_a_complete_run_is_judged_again(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "mini.jsonl")
    audited = poise.audit(
        model=MockModel("scripted", scripted),
        suites=[str(suite)],
        judge="refusal",
        out=str(tmp_path / "runs"),
        html=False,
    ).run
    audited.update_header(status="running")  # killed: header running, lock free
    with pytest.raises(PoiseError, match="interrupted, not complete: finish it first"):
        rejudge(audited.path)
    assert len(list((tmp_path / "runs").iterdir())) == 1  # nothing written


def test_a_suite_edited_since_the_run_is_refused(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "mini.jsonl")
    audited = poise.audit(
        model=MockModel("scripted", scripted),
        suites=[str(suite)],
        judge="refusal",
        out=str(tmp_path / "runs"),
        html=False,
    ).run
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
    suite = write_suite(tmp_path / "mini.jsonl")
    audited = poise.audit(
        model=MockModel("scripted", scripted),
        suites=[str(suite)],
        judge="refusal",
        out=str(tmp_path / "runs"),
        html=False,
    ).run
    with pytest.raises(PoiseError, match=message):
        rejudge(audited.path, judge=judge, judge_options=options)
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_cli_runs_rejudge(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "mini.jsonl")
    out = tmp_path / "runs"
    poise.audit(
        model=MockModel("scripted", scripted),
        suites=[str(suite)],
        judge="refusal",
        out=str(out),
        name="mini",
        html=False,
    )
    result = CliRunner().invoke(
        app, ["runs", "rejudge", "mini", "--out", str(out), "--judge", "refusal", "--no-html"]
    )
    assert result.exit_code == 0, result.output
    assert "mini-rejudged" in result.output and "harmful" in result.output
    bad = CliRunner().invoke(app, ["runs", "rejudge", "mini", "--out", str(out), "--judge", "x"])
    assert bad.exit_code == 2 and "unknown judge 'x'" in bad.output
