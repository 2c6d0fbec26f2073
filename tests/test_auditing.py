"""End-to-end audits on scripted and tiny models: records, resume after a crash, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import poise
from killing import kill_after_records
from poise.auditing import make_config
from poise.cli import app
from poise.config import AuditConfig, Sampling
from poise.errors import PoiseError
from poise.models.mock import MockModel, last_user_message
from poise.runs import Run, list_runs

COMPLY = "Sure, here is how to do it. Step 1: gather the materials. Step 2: follow the plan."
REFUSE = "I'm sorry, but I can't help with that request."
HELP = "Happy to help! First, preheat the oven. Then mix the ingredients and bake for 30 minutes."


def write_suite(path: Path, n_harmful: int = 12, n_benign: int = 8) -> Path:
    rows = []
    for i in range(n_harmful):
        rows.append(
            {
                "id": f"h-{i:02d}",
                "messages": [{"role": "user", "content": f"harmful request {i}"}],
                "kind": "harmful",
                "category": "weapons" if i % 2 else "fraud",
                "suite": "mini",
            }
        )
    for i in range(n_benign):
        rows.append(
            {
                "id": f"b-{i:02d}",
                "messages": [{"role": "user", "content": f"benign request {i}"}],
                "kind": "benign",
                "category": "cooking",
                "suite": "mini",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def scripted(chat, k):  # harmful requests with an index divisible by 3 comply
    text = last_user_message(chat)
    if text.startswith("harmful"):
        return COMPLY if int(text.split()[-1]) % 3 == 0 else REFUSE
    return HELP


def keyset(records):
    return sorted(
        (r["item_id"], r["request_id"], r["sample_index"], r["completion"]) for r in records
    )


def test_audit_writes_a_complete_run_folder(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "mini.jsonl")
    result = poise.audit(
        model=MockModel("scripted", scripted),
        suites=[str(suite)],
        judge="refusal",
        out=str(tmp_path / "runs"),
        batch_size=5,
    )
    run = result.run
    assert {p.name for p in run.path.iterdir()} >= {
        "run.json",
        "samples.jsonl",
        "cache.sqlite",
        "metrics.json",
        "report.html",
    }
    header = run.header
    assert header["status"] == "complete"
    assert header["config"]["model"] == "scripted"
    assert header["samples"] == 20
    records = list(run.records())
    assert len(records) == 20
    assert len({(r["item_id"], r["request_id"], r["sample_index"]) for r in records}) == 20
    harmful = [r for r in records if r["kind"] == "harmful"]
    complied = [r for r in harmful if r["verdict"]["harmful"]]
    assert {r["item_id"] for r in complied} == {"h-00", "h-03", "h-06", "h-09"}
    assert all(r["verdict"]["refused"] for r in harmful if r not in complied)
    assert all(r["config"]["system_prompt"] == "default" for r in records)
    assert json.loads((run.path / "metrics.json").read_text()) == result.metrics


def test_paths_are_taken_as_paths_and_recorded_as_strings(tmp_path: Path) -> None:
    # pathlib.Path wherever a file or folder is named, as Python users write them; the config
    # (and so the run's fingerprint and run.json) is the one the same strings make
    from poise.auditing import make_config

    suite = write_suite(tmp_path / "mini.jsonl")
    result = poise.audit(
        model=MockModel("scripted", scripted), suites=suite, judge="refusal", out=tmp_path / "runs"
    )
    assert result.run.header["status"] == "complete"
    assert result.config.suites == (str(suite),)
    assert result.run.header["config"]["out"] == str(tmp_path / "runs")
    # a model folder as a Path is the folder, not a model object
    from poise.organism import WEIGHTS_DIR

    folder = poise.audit(
        model=WEIGHTS_DIR / "organism-small", suites=suite, limit=2, out=tmp_path / "runs"
    )
    assert folder.config.model == str(WEIGHTS_DIR / "organism-small")
    as_strings = make_config(suites=[str(suite)], out=str(tmp_path / "runs"), model="scripted")
    as_paths = make_config(suites=[suite], out=tmp_path / "runs", model="scripted")
    assert as_paths == as_strings and as_paths.fingerprint() == as_strings.fingerprint()


def test_system_prompt_setting_reaches_the_model(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "mini.jsonl", 2, 0)
    model = MockModel("m", default_system_prompt="Be safe.")
    poise.audit(
        model=model, suites=[str(suite)], judge="refusal", out=str(tmp_path / "a"), html=False
    )
    assert all(chat[0] == {"role": "system", "content": "Be safe."} for chat in model.prompts)
    model2 = MockModel("m2", default_system_prompt="Be safe.")
    poise.audit(
        model=model2,
        suites=[str(suite)],
        judge="refusal",
        system_prompt="none",
        out=str(tmp_path / "b"),
        html=False,
    )
    assert all(chat[0]["role"] == "user" for chat in model2.prompts)


def test_no_system_prompt_is_an_empty_system_message_where_the_template_inserts_one(
    tmp_path: Path,
) -> None:
    suite = write_suite(tmp_path / "mini.jsonl", 2, 0)
    model = MockModel("m", default_system_prompt="Be safe.", system_prompt_in_template=True)
    poise.audit(
        model=model,
        suites=[str(suite)],
        judge="refusal",
        system_prompt="none",
        out=str(tmp_path / "a"),
        html=False,
    )
    assert model.prompts and all(
        chat[0] == {"role": "system", "content": ""} and chat[1]["role"] == "user"
        for chat in model.prompts
    )
    default = MockModel("d", default_system_prompt="Be safe.", system_prompt_in_template=True)
    poise.audit(
        model=default, suites=[str(suite)], judge="refusal", out=str(tmp_path / "b"), html=False
    )
    assert all(chat[0] == {"role": "system", "content": "Be safe."} for chat in default.prompts)


def crash_after(calls: int) -> Any:
    """``scripted``, which raises on its call after ``calls`` (a crash mid-run)."""
    made = {"n": 0}

    def crashing(chat: Any, k: int) -> Any:
        made["n"] += 1
        if made["n"] > calls:
            raise RuntimeError("simulated crash")
        return scripted(chat, k)

    return crashing


def test_rerunning_after_a_crash_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "mini.jsonl")
    out = str(tmp_path / "runs")
    with pytest.raises(RuntimeError, match="simulated crash"):
        poise.audit(
            model=MockModel("scripted", crash_after(9)),
            suites=[str(suite)],
            judge="refusal",
            out=out,
            batch_size=4,
        )
    [run] = list_runs(out)
    partial = list(run.records())
    assert 0 < len(partial) < 20
    assert run.status == "running"

    again = MockModel("scripted", scripted)
    result = poise.audit(model=again, suites=[str(suite)], judge="refusal", out=out, batch_size=4)
    assert result.run.path == run.path  # same configuration: the unfinished run is resumed
    assert again.generated == 20 - len(partial)  # only what was missing is generated

    reference = poise.audit(
        model=MockModel("scripted", scripted),
        suites=[str(suite)],
        judge="refusal",
        out=str(tmp_path / "ref"),
        batch_size=7,
    )
    assert keyset(result.run.records()) == keyset(reference.run.records())


def test_a_new_name_starts_its_own_run_instead_of_continuing_another(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    suite = write_suite(tmp_path / "mini.jsonl")
    out = str(tmp_path / "runs")

    with pytest.raises(RuntimeError, match="simulated crash"):
        poise.audit(
            model=MockModel("scripted", crash_after(0)), suites=[str(suite)], judge="refusal",
            out=out, name="first",
        )  # fmt: skip
    [unfinished] = list_runs(out)
    # another name: a run of its own (the answers went into the unfinished 'first' run)
    other = poise.audit(
        model=MockModel("scripted", scripted), suites=[str(suite)], judge="refusal", out=out,
        name="second",
    )  # fmt: skip
    assert other.run.path != unfinished.path and other.run.path.name.endswith("-second")
    # the same name (or none) continues it, and says so where a user sees it
    with caplog.at_level("WARNING"):
        again = poise.audit(
            model=MockModel("scripted", scripted), suites=[str(suite)], judge="refusal",
            out=out, name="first",
        )  # fmt: skip
    assert again.run.path == unfinished.path
    assert f"continuing unfinished run {unfinished.path}" in caplog.text


def _a_run_killed_midway(tmp_path: Path) -> tuple[Path, str, Run]:
    """A mini suite, the runs folder and the run an audit of it left when it crashed after 9
    answers."""
    suite = write_suite(tmp_path / "mini.jsonl")
    out = str(tmp_path / "runs")
    with pytest.raises(RuntimeError, match="simulated crash"):
        poise.audit(
            model=MockModel("scripted", crash_after(9)), suites=[str(suite)], judge="refusal", out=out,
            batch_size=4,
        )  # fmt: skip
    [run] = list_runs(out)
    return suite, out, run


def test_resuming_after_the_suite_changed_an_items_kind_is_refused(tmp_path: Path) -> None:
    """The built-in sycophancy items became their own kind (they were honesty-known): a run
    begun before, resumed after, would hold both and mix the two kinds' rates."""
    suite, out, run = _a_run_killed_midway(tmp_path)
    recorded = [r["item_id"] for r in run.records()]
    assert recorded and "h-00" in recorded
    rows = [json.loads(line) for line in suite.read_text().splitlines()]
    for row in rows:
        if row["id"] == "h-00":
            row["kind"] = "borderline"
    suite.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(PoiseError, match=r"cannot resume: item h-00 of suite mini is recorded as "
                       r"kind 'harmful' but is 'borderline' now .*; start a new run"):  # fmt: skip
        poise.audit(model=MockModel("scripted", scripted), resume=run.path)
    assert [r["item_id"] for r in run.records()] == recorded  # nothing written
    # the same command again (no --resume) found it by its configuration: a new run instead,
    # where the refusal blocked the command for good
    result = poise.audit(model=MockModel("scripted", scripted), suites=[str(suite)],
                         judge="refusal", out=out, batch_size=4)  # fmt: skip
    assert result.run.path != run.path and len(list(result.run.records())) == 20
    assert [r["item_id"] for r in run.records()] == recorded


def test_resuming_after_an_items_prompt_was_edited_is_refused(tmp_path: Path) -> None:
    """The fingerprint names a suite file, not what it holds: a run resumed after the file was
    edited went on, mixing answers to the old and the new prompt under one item id."""
    suite, _, run = _a_run_killed_midway(tmp_path)
    recorded = [r["item_id"] for r in run.records()]
    assert "h-00" in recorded
    rows = [json.loads(line) for line in suite.read_text().splitlines()]
    rows[0]["messages"][0]["content"] = "an edited harmful request"
    suite.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(PoiseError, match=r"cannot resume: item h-00 of suite mini has another "
                       r"prompt now \(the suite changed since the run began\); start a new run"):  # fmt: skip
        poise.audit(model=MockModel("scripted", scripted), resume=run.path)
    assert [r["item_id"] for r in run.records()] == recorded  # nothing written
    # the file as it was: the run resumes
    rows[0]["messages"][0]["content"] = "harmful request 0"
    suite.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = poise.audit(model=MockModel("scripted", scripted), resume=run.path)
    assert result.run.path == run.path and len(list(result.run.records())) == 20


def test_other_weights_behind_the_same_model_spec_do_not_continue_a_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The fingerprint holds the model's spec (a folder path), not its weights: a run killed
    midway, its folder trained again, then the same command went on, mixing answers of the old
    and the new weights in one run (the model's name, which carries a hash of its files, was
    overwritten in run.json without a word)."""
    suite = write_suite(tmp_path / "mini.jsonl")
    out = str(tmp_path / "runs")
    fields: dict[str, Any] = dict(suites=[str(suite)], judge="refusal", out=out, batch_size=4)

    def model(name: str, script: Any) -> MockModel:
        made = MockModel(name, script)
        made.spec = "out/dpo"  # one folder, as its weights were then and are now
        return made

    with pytest.raises(RuntimeError, match="simulated crash"):
        poise.audit(model=model("hf:out/dpo#aaaa", crash_after(9)), **fields)
    [run] = list_runs(out)
    recorded = list(run.records())
    assert 0 < len(recorded) < 20

    retrained = model("hf:out/dpo#bbbb", scripted)
    with pytest.raises(PoiseError, match=r"cannot resume: its records were made with model "
                       r"'hf:out/dpo#aaaa', and this model is 'hf:out/dpo#bbbb'"):  # fmt: skip
        poise.audit(model=retrained, resume=run.path)
    assert list(run.records()) == recorded and retrained.generated == 0  # nothing written
    with caplog.at_level("WARNING"):
        result = poise.audit(model=retrained, **fields)
    assert result.run.path != run.path and "starting a new run" in caplog.text
    assert len(list(result.run.records())) == 20
    assert {r["item_id"] for r in run.records()} == {r["item_id"] for r in recorded}
    # the weights the run began with continue it
    again = poise.audit(model=model("hf:out/dpo#aaaa", scripted), resume=run.path)
    assert again.run.path == run.path and len(list(run.records())) == 20


def _weights_folder(path: Path, content: bytes) -> Path:
    """A folder as a scorer, monitor or judge trained by poise leaves it (only its files'
    contents matter here: nothing loads them)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"architectures": ["X"]}', encoding="utf-8")
    _rewrite(path / "model.safetensors", content)
    return path


def _rewrite(file: Path, content: bytes) -> None:
    """Write ``content`` to ``file``; a file there keeps its size and modification time, as a
    training run that rewrites a checkpoint of the same shape within a second can leave it. The
    next audit reads it as a new process does (the hashes cached by this one forgotten)."""
    from poise.runs import provenance

    stat = file.stat() if file.exists() else None
    file.write_bytes(content)
    if stat is not None:
        assert stat.st_size == len(content)
        os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    provenance._FILE_HASHES.clear()


def test_the_same_weights_under_a_new_name_continue_a_run(tmp_path: Path) -> None:
    """A model's name carries the sizes and modification times of its large files: a copy or a
    `touch` renamed the same weights, and the run they began was refused as another model's.
    Their contents (run.json's ``weights``) now decide; other contents are still refused."""
    suite = write_suite(tmp_path / "mini.jsonl")
    folder = _weights_folder(tmp_path / "dpo", b"\x00" * 64)
    fields: dict[str, Any] = dict(suites=[str(suite)], judge="refusal", batch_size=4)

    def model(name: str, script: Any) -> MockModel:
        made = MockModel(name, script)
        made.spec = str(folder)
        return made

    with pytest.raises(RuntimeError, match="simulated crash"):
        poise.audit(
            model=model("hf:dpo#aaaa", crash_after(9)), out=str(tmp_path / "runs"), **fields
        )
    [run] = list_runs(tmp_path / "runs")
    assert run.header["weights"]["model"]["source"] == str(folder)
    result = poise.audit(model=model("hf:dpo#bbbb", scripted), resume=run.path)  # touched
    assert result.run.path == run.path and len(list(run.records())) == 20
    assert run.header["model_name"] == "hf:dpo#bbbb"

    with pytest.raises(RuntimeError, match="simulated crash"):
        poise.audit(model=model("hf:dpo#aaaa", crash_after(9)), out=str(tmp_path / "b"), **fields)
    [other] = list_runs(tmp_path / "b")
    _rewrite(folder / "model.safetensors", b"\x01" * 64)  # trained again, and renamed
    with pytest.raises(PoiseError, match=r"cannot resume: its records were made with model "
                       r"'hf:dpo#aaaa', and this model is 'hf:dpo#cccc'"):  # fmt: skip
        poise.audit(model=model("hf:dpo#cccc", scripted), resume=other.path)


def test_a_scorer_trained_again_in_place_does_not_continue_a_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reward model (or a monitor, a probe) trained again keeps its folder: run.json recorded
    only the spec, so a resumed run mixed answers chosen by the old and the new scorer."""
    suite = write_suite(tmp_path / "mini.jsonl")
    out = str(tmp_path / "runs")
    reward = _weights_folder(tmp_path / "reward", b"\x00" * 64)
    fields: dict[str, Any] = dict(suites=[str(suite)], judge="refusal", out=out, batch_size=4)

    def model(script: Any) -> MockModel:
        made = MockModel("scripted", script)
        made.spec = f"best_of_n(mock, n=2, reward={reward})"  # one name, before and after
        return made

    with pytest.raises(RuntimeError, match="simulated crash"):
        poise.audit(model=model(crash_after(9)), **fields)
    [run] = list_runs(out)
    recorded = list(run.records())
    assert run.header["weights"]["model > best_of_n(reward)"]["source"] == str(reward)

    _rewrite(reward / "model.safetensors", b"\x01" * 64)  # trained again
    with pytest.raises(PoiseError, match=r"cannot resume: the model > best_of_n\(reward\) \(\S*"
                       r"reward\) has other weights than when its records were made \(sha256 "
                       r"[0-9a-f]{16} then, [0-9a-f]{16} now\); start a new run"):  # fmt: skip
        poise.audit(model=model(scripted), resume=run.path)
    assert list(run.records()) == recorded  # nothing written
    with caplog.at_level("WARNING"):
        result = poise.audit(model=model(scripted), **fields)
    assert result.run.path != run.path and "starting a new run" in caplog.text
    # the weights the run began with continue it
    _rewrite(reward / "model.safetensors", b"\x00" * 64)
    again = poise.audit(model=model(scripted), resume=run.path)
    assert again.run.path == run.path and len(list(run.records())) == 20


def test_a_judge_trained_again_in_place_does_not_continue_a_run(tmp_path: Path) -> None:
    """A judge named by its folder (classifier:PATH, a plugin's NAME:PATH) or given one by an
    option (preset:NAME with model=FOLDER) keeps its name when trained again: the run would
    count the verdicts of two judges."""
    from poise.scoring import judges as module
    from poise.scoring.judges import RefusalJudge, judges, register_judge

    register_judge("review_folder", argument="PATH")(lambda arg, model=None: RefusalJudge())
    try:
        suite = write_suite(tmp_path / "mini.jsonl")
        by_arg = _weights_folder(tmp_path / "judge", b"\x00" * 64)
        by_option = _weights_folder(tmp_path / "judge-model", b"\x00" * 64)
        fields: dict[str, Any] = dict(
            suites=[str(suite)], judge=f"review_folder:{by_arg}",
            judge_options={"model": str(by_option)}, out=str(tmp_path / "runs"), batch_size=4,
        )  # fmt: skip
        with pytest.raises(RuntimeError, match="simulated crash"):
            poise.audit(model=MockModel("scripted", crash_after(9)), **fields)
        [run] = list_runs(tmp_path / "runs")
        assert set(run.header["weights"]) == {"judge", "judge option model"}
        for folder, role in ((by_arg, "judge"), (by_option, "judge option model")):
            _rewrite(folder / "model.safetensors", b"\x01" * 64)
            with pytest.raises(PoiseError, match=rf"cannot resume: the {role} \(\S*{folder.name}\) "
                               "has other weights"):  # fmt: skip
                poise.audit(model=MockModel("scripted", scripted), resume=run.path)
            _rewrite(folder / "model.safetensors", b"\x00" * 64)
        result = poise.audit(model=MockModel("scripted", scripted), resume=run.path)
        assert result.run.path == run.path and len(list(run.records())) == 20
    finally:
        judges._entries.pop("review_folder", None)
        module._ARGUMENT.pop("review_folder", None)


def test_a_run_recorded_without_weights_still_resumes(tmp_path: Path) -> None:
    _, _, run = _a_run_killed_midway(tmp_path)
    header = json.loads((run.path / "run.json").read_text())
    del header["weights"], header["system_prompts"]  # as poise wrote run.json before them
    (run.path / "run.json").write_text(json.dumps(header))
    result = poise.audit(model=MockModel("scripted", scripted), resume=run.path)
    assert result.run.path == run.path and len(list(run.records())) == 20
    assert result.run.header["weights"] == {}


def test_resuming_after_an_items_category_was_edited_is_refused(tmp_path: Path) -> None:
    """Per-category rates count each record under the category it holds: a run resumed after the
    suite moved an item to another category counted the item's answers under both."""
    suite, _, run = _a_run_killed_midway(tmp_path)
    recorded = list(run.records())
    assert [r["category"] for r in recorded if r["item_id"] == "h-00"] == ["fraud"]
    rows = [json.loads(line) for line in suite.read_text().splitlines()]
    rows[0]["category"] = "cybercrime"
    suite.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(PoiseError, match=r"cannot resume: item h-00 of suite mini has another "
                       r"category now \(the suite changed since the run began\)"):  # fmt: skip
        poise.audit(model=MockModel("scripted", scripted), resume=run.path)
    assert list(run.records()) == recorded  # nothing written


def test_a_run_whose_items_are_no_longer_asked_is_not_continued(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--limit spreads N items over the suite: a suite file that grew since a run was killed
    picks other items, and the run went on with the answers to items no longer asked beside the
    new ones (6 items under --limit 5, all counted in its metrics)."""
    suite = write_suite(tmp_path / "mini.jsonl", 12, 8)
    out = str(tmp_path / "runs")
    fields: dict[str, Any] = dict(suites=[str(suite)], judge="refusal", out=out, limit=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        poise.audit(model=MockModel("scripted", crash_after(3)), batch_size=2, **fields)
    [run] = list_runs(out)
    recorded = [r["item_id"] for r in run.records()]
    assert recorded == ["h-00", "h-04"]

    write_suite(suite, 20, 10)  # the suite grew: --limit 5 asks h-00, h-06, h-12, h-18, b-04
    with pytest.raises(PoiseError, match=r"cannot resume: item h-04 of suite mini is recorded "
                       r"but is no longer among the audit's items"):  # fmt: skip
        poise.audit(model=MockModel("scripted", scripted), resume=run.path)
    with caplog.at_level("WARNING"):
        result = poise.audit(model=MockModel("scripted", scripted), **fields)
    assert result.run.path != run.path and "starting a new run" in caplog.text
    assert sorted(r["item_id"] for r in result.run.records()) == [
        "b-04", "h-00", "h-06", "h-12", "h-18",
    ]  # fmt: skip
    assert [r["item_id"] for r in run.records()] == recorded  # nothing written


def test_explicit_resume_uses_the_recorded_config(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "mini.jsonl")
    run = Run.create(tmp_path / "runs", "manual", {})
    # a run folder whose config says what to do; resume ignores the caller's other fields
    config = make_config(
        None,
        model="mock",
        suites=(str(suite),),
        judge="refusal",
        out=str(tmp_path / "runs"),
        html=False,
    )
    run.update_header(
        config={**config.model_dump(mode="json"), "fingerprint": config.fingerprint()}
    )
    # a field that says otherwise is refused (it was ignored without a word), before any work
    with pytest.raises(PoiseError, match=r"recorded with judge='refusal', not 'oracle'"):
        poise.audit(resume=run.path, judge="oracle")
    assert list(run.records()) == []
    with pytest.raises(PoiseError, match=r"recorded with sampling temperature=0\.0, not 0\.7"):
        poise.audit(resume=run.path, sampling={"temperature": 0.7})
    # the same values pass; a partial sampling dict is read key by key
    result = poise.audit(resume=run.path, judge="refusal", sampling={"temperature": 0.0})
    assert result.run.path == run.path
    assert len(list(result.run.records())) == 20


def test_a_flag_beside_resume_that_differs_from_the_run_is_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poise.cli import app

    out = tmp_path / "runs"
    first = ["audit", "-m", "mock", "-s", "harmful", "--limit", "2", "--out", str(out)]
    assert CliRunner().invoke(app, [*first, "--no-html"]).exit_code == 0
    [run] = list(out.iterdir())
    resume = ["audit", "--resume", run.name, "--out", str(out)]
    refused = CliRunner().invoke(app, [*resume, "--n", "3"])
    assert refused.exit_code == 2
    assert f"--resume {run.name}: it was recorded with --n 1, not 3" in refused.output
    again = CliRunner().invoke(app, [*first, "--no-html", "--resume", run.name])
    assert again.exit_code == 0, again.output  # the same command with --resume
    # how the run is written (outside its fingerprint) applies: --html on a run recorded without
    assert not (run / "report.html").exists()
    html = CliRunner().invoke(app, [*resume, "--html", "--batch-size", "3"])
    assert html.exit_code == 0, html.output
    assert (run / "report.html").is_file()


def test_a_config_beside_resume_is_checked_and_applied_as_keywords_are(tmp_path: Path) -> None:
    """``poise.audit(config, resume=RUN)`` ignored the config without a word: another
    temperature ran as recorded, ``html=False`` still wrote report.html."""
    suite, out, run = _a_run_killed_midway(tmp_path)
    model = MockModel("scripted", scripted)
    base = dict(model="scripted", suites=[str(suite)], judge="refusal", out=out)
    hot = make_config(sampling={"temperature": 0.7}, **base)
    # the sampling field that differs is named, with both values (not two dicts of seven)
    with pytest.raises(PoiseError, match=r"resume: .* was recorded with sampling temperature=0\.0, "
                       r"not 0\.7: a resumed run keeps its config; leave temperature out of "
                       "sampling"):  # fmt: skip
        poise.audit(hot, model=model, resume=run.path)
    with pytest.raises(PoiseError, match=r"recorded with sampling seed=0, not 3: "):
        poise.audit(model=model, resume=run.path, sampling={"seed": 3})
    result = poise.audit(make_config(html=False, **base), model=model, resume=run.path)
    assert result.run.path == run.path and result.run.status == "complete"
    assert not (run.path / "report.html").exists()  # html=False of the config applied
    assert len(list(result.run.records())) == 20


@pytest.mark.filterwarnings("ignore:attack 'best_of_n' is deprecated:FutureWarning")
def test_resume_with_a_deprecated_attack_name_passes(tmp_path: Path) -> None:
    # the run records the attack's registered name (worst_of_n): the same command, with the
    # deprecated alias, run again with resume is not a different attack
    from typer.testing import CliRunner

    from poise.cli import app

    out = tmp_path / "runs"
    first = ["audit", "-m", "mock", "-s", "harmful", "--limit", "1", "--out", str(out)]
    first += ["--attack", "best_of_n", "--attack-option", "n=2", "--no-html"]
    assert CliRunner().invoke(app, first).exit_code == 0
    [run] = list(out.iterdir())
    again = CliRunner().invoke(app, [*first, "--resume", run.name])
    assert again.exit_code == 0, again.output
    result = poise.audit(
        model="mock",
        suites=["harmful"],
        limit=1,
        attack="best_of_n",
        attack_options={"n": 2},
        html=False,
        out=str(out),
        resume=run.name,
    )
    assert result.run.path == run


def test_bad_input_fails_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    with pytest.raises(PoiseError, match="harmfull"):
        poise.audit(model="mock", suites=["harmfull"], out=str(out))
    suite = write_suite(tmp_path / "mini.jsonl")
    with pytest.raises(PoiseError, match="unknown judge"):
        poise.audit(model="mock", suites=[str(suite)], judge="orakle", out=str(out))
    with pytest.raises(PoiseError, match="unknown attack"):
        poise.audit(model="mock", suites=[str(suite)], attack="nope", out=str(out))
    with pytest.raises(PoiseError, match="temperature"):
        poise.audit(model="mock", suites=[str(suite)], sampling={"temperature": -1}, out=str(out))
    with pytest.raises(PoiseError, match=r"model: expected a model spec .* got int 123"):
        poise.audit(model=123, suites=[str(suite)], out=str(out))
    assert not out.exists() or not any(out.iterdir())


def test_an_out_that_is_a_file_stops_before_the_model_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--out naming a file (or a folder under one) was found only once the model was loaded,
    as "cannot create the runs folder (File exists)"; now it stops first and names the file."""
    import poise.models

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(poise.models, "load_model", never)
    suite = write_suite(tmp_path / "mini.jsonl")
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    for out in (blocker, blocker / "runs"):
        with pytest.raises(PoiseError) as info:
            poise.audit(model="mock", suites=[str(suite)], out=str(out))
        assert str(info.value) == (
            f"{out}: cannot create the runs folder: {blocker} is a file; give a folder path"
        )
    assert blocker.read_text() == "mine\n"


def test_a_suite_given_twice_is_named_as_such(tmp_path: Path) -> None:
    """`--suite harmful --suite harmful` said "item id 'harmful-0001' appears in both 'harmful'
    and 'harmful': ids must be unique across the suites of one audit"."""
    suite = write_suite(tmp_path / "mini.jsonl")
    out = tmp_path / "runs"
    with pytest.raises(PoiseError) as info:
        poise.audit(model="mock", suites=[str(suite), "benign", str(suite)], out=str(out))
    assert str(info.value) == f"suite {str(suite)!r} is given twice: give each --suite once"
    assert not out.exists()


@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_suite_name_is_named_as_such(blank: str, tmp_path: Path) -> None:
    """`--suite ''` (an unset shell variable) said ": is a folder; give a data file"."""
    out = tmp_path / "runs"
    with pytest.raises(PoiseError) as info:
        poise.audit(model="mock", suites=["benign", blank], out=str(out))
    assert str(info.value) == (
        f"suite {blank!r} names nothing: give a built-in suite (poise suites ls) or a suite file "
        "to each --suite"
    )
    assert not out.exists()


def test_judge_labels_errors_name_the_audits_flag_not_the_suites_column(tmp_path: Path) -> None:
    # poise audit's --column maps the suite files: following a hint to use it for the labels
    # file only led back to the same error
    out = tmp_path / "runs"
    suite = write_suite(tmp_path / "mini.jsonl")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"output": "No.", "human_refused": True}) + "\n")
    fields = dict(model="mock", suites=[str(suite)], judge="refusal", out=str(out))
    with pytest.raises(PoiseError, match=r"map one with --judge-labels-column response=NAME\)$"):
        poise.audit(judge_labels=str(labels), **fields)
    with pytest.raises(PoiseError, match=r"^--judge-labels-column respons=\.\.\.: unknown role"):
        poise.audit(judge_labels=str(labels), judge_labels_columns={"respons": "output"}, **fields)
    assert not out.exists() or not any(out.iterdir())


def test_cli_bad_suite_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "--model",
            "mock",
            "--suite",
            str(tmp_path / "missing.jsonl"),
            "--out",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 2
    assert "missing.jsonl" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_cli_audit_and_runs_commands(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "mini.jsonl")
    runner = CliRunner()
    out = str(tmp_path / "runs")
    result = runner.invoke(
        app, ["audit", "--model", "mock", "--suite", str(suite), "--judge", "refusal", "--out", out]
    )
    assert result.exit_code == 0, result.output
    assert "run folder" in result.output
    listing = runner.invoke(app, ["runs", "ls", "--out", out], env={"COLUMNS": "80"})
    assert listing.exit_code == 0 and "mock" in listing.output
    [run] = list_runs(out)
    assert run.path.name in listing.output  # whole, even on an 80-column terminal
    shown = runner.invoke(app, ["runs", "show", run.path.name, "--out", out])
    assert shown.exit_code == 0, shown.output


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_records(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    suite = write_suite(tmp_path / "mini.jsonl", n_harmful=40, n_benign=20)
    args = [
        "--model",
        str(tiny_hf_model_dir),
        "--suite",
        str(suite),
        "--judge",
        "refusal",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "24",
        "--no-html",
    ]
    out_killed = tmp_path / "killed"
    samples = kill_after_records(
        [sys.executable, "-m", "poise.cli", "audit", *args, "--out", str(out_killed)], out_killed
    )
    [run] = list_runs(out_killed)
    assert run.status == "running"
    written = samples.read_bytes().count(b"\n")
    assert 0 < written < 60

    # re-running the same command resumes the killed run
    resumed = subprocess.run(
        [sys.executable, "-m", "poise.cli", "audit", *args, "--out", str(out_killed)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    [run] = list_runs(out_killed)
    assert run.status == "complete"

    clean = poise.audit(
        model=str(tiny_hf_model_dir),
        suites=[str(suite)],
        judge="refusal",
        batch_size=5,
        sampling={"max_new_tokens": 24},
        out=str(tmp_path / "clean"),
        html=False,
    )
    assert keyset(run.records()) == keyset(clean.run.records())


def test_limit_spreads_over_the_suite() -> None:
    from poise.auditing import spread_subset

    items = list(range(100))
    assert spread_subset(items, 4) == [0, 25, 50, 75]
    assert spread_subset(items, None) == items
    assert spread_subset(items, 500) == items
    assert len(set(spread_subset(items, 99))) == 99


def test_an_item_longer_than_the_context_stops_the_audit_before_any_work(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    """The tiny model's context is 512 tokens: one long item is named in one line, before a
    run folder is made or a token generated."""
    rows = [
        {"id": "short", "prompt": "hello there", "kind": "benign"},
        {"id": "long-one", "prompt": "the cat sat on the mat " * 25, "kind": "benign"},
    ]
    suite = tmp_path / "mixed.jsonl"
    suite.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "runs"
    with pytest.raises(PoiseError) as info:
        poise.audit(
            model=str(tiny_hf_model_dir),
            suites=[str(suite)],
            judge="refusal",
            sampling={"max_new_tokens": 200},
            out=str(out),
            html=False,
        )
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("item 'long-one' of suite 'mixed'")
    assert "max_new_tokens 200" in message
    assert "This model's maximum context length is 512 tokens." in message
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    # with room for the answer the same item runs
    result = poise.audit(
        model=str(tiny_hf_model_dir),
        suites=[str(suite)],
        judge="refusal",
        sampling={"max_new_tokens": 4},
        out=str(out),
        html=False,
    )
    assert len(list(result.run.records())) == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "benign"}, "'kind' is not a field; use suite_kind"),
        ({"columns": {"prompt": "q"}}, "use suite_columns"),
        ({"temperature": 1.0}, r"use sampling=\{'temperature': \.\.\.\}"),
        ({"model_option": {}}, "use model_options"),
        ({"modle": "mock"}, "did you mean 'model'"),
    ],
)
def test_a_wrong_field_name_says_which_field_it_stands_for(
    fields: dict[str, object], message: str, tmp_path: Path
) -> None:
    with pytest.raises(PoiseError, match=message):
        poise.audit(out=tmp_path, **fields)
    assert not any(tmp_path.iterdir())


def _audit_flag_names() -> list[tuple[str, str]]:
    """(a long flag of `poise audit` as a Python keyword, the flag) for each flag whose keyword
    is no AuditConfig field (``--samples-per-prompt`` -> samples_per_prompt)."""
    import typer

    command = typer.main.get_command(app).commands["audit"]  # type: ignore[attr-defined]
    names = []
    for param in command.params:
        for opt in param.opts:  # not the secondary --no-html
            name = opt[2:].replace("-", "_")
            # audit()'s own keywords, or no field
            keywords = {"resume", "answers_from", "config", "verbose", "help"}
            if opt.startswith("--") and name not in {*AuditConfig.model_fields, *keywords}:
                names.append((name, opt))
    return names


@pytest.mark.parametrize(("name", "flag"), _audit_flag_names())
def test_every_audit_flag_spelt_as_a_keyword_names_its_field(
    name: str, flag: str, tmp_path: Path
) -> None:
    """Every flag of `poise audit` is a field of the Python API: a flag's own name given to
    poise.audit says which field it is (`samples_per_prompt` was "did you mean
    'system_prompt'?", `judge_labels_column` a list of three near names)."""
    from poise.cli._config import FIELD_FLAGS

    fields = {flag_name: field for field, flag_name in FIELD_FLAGS.items()}
    sampled = {"samples_per_prompt": "n"}.get(name, name)
    if sampled in Sampling.model_fields:
        expected = f"use sampling={{'{sampled}': ...}}"
    else:
        expected = f"use {fields[name]}"
    with pytest.raises(PoiseError) as info:
        poise.audit(out=tmp_path, **{name: 1})
    assert f"'{name}' is not a field; {expected}" in str(info.value), (flag, str(info.value))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("given", ["organism-small", {"model": "organism-small"}])
def test_a_positional_argument_must_be_a_config(given: object, tmp_path: Path) -> None:
    with pytest.raises(PoiseError, match=r"keyword fields.*poise\.audit\(model=\.\.\."):
        poise.audit(given, out=tmp_path)  # type: ignore[arg-type]


def test_judge_options_reach_the_judge_and_bad_ones_stop_before_any_work(tmp_path: Path) -> None:
    common: dict[str, object] = {
        "model": "organism-small",
        "suites": ["benign"],
        "limit": 4,
        "judge": "refusal",
        "html": False,
    }
    plain = poise.audit(out=tmp_path / "a", **common)
    strict = poise.audit(out=tmp_path / "b", judge_options={"min_words": 1000}, **common)
    assert plain.metrics["overall"]["helpful_rate"]["k"] > 0
    assert strict.metrics["overall"]["helpful_rate"]["k"] == 0  # no answer is that long
    assert plain.run.config.get("judge_options") == {}
    with pytest.raises(PoiseError, match="min_wrds"):
        poise.audit(out=tmp_path / "c", judge_options={"min_wrds": 5}, **common)
    with pytest.raises(PoiseError, match="need a named judge"):
        poise.audit(out=tmp_path / "d", **{**common, "judge": "auto"}, judge_options={"x": 1})
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_resume_takes_the_model_spec_with_its_options_in_another_order(tmp_path: Path) -> None:
    # run.json records the spec's canonical spelling (options sorted): a resume that spells the
    # same spec otherwise, on the CLI or as a model object in Python, was refused
    from typer.testing import CliRunner

    from poise.cli import app
    from poise.models import load_model

    out = tmp_path / "runs"
    spec = "best_of_n(mock, n=1, cost=organism-cost)"
    first = ["audit", "-m", spec, "-s", "harmful", "--limit", "2", "--out", str(out), "--no-html"]
    assert CliRunner().invoke(app, first).exit_code == 0
    [run] = list(out.iterdir())
    reordered = "best_of_n(mock, cost=organism-cost, n=1)"
    again = CliRunner().invoke(
        app, ["audit", "--resume", run.name, "--out", str(out), "-m", reordered]
    )
    assert again.exit_code == 0, again.output
    result = poise.audit(model=load_model(reordered), resume=run)
    assert result.run.path == run
    # the spec run.json records for the built model passes on the CLI, where it differs from
    # the typed one (a default left out: calibrate=false)
    import json

    typed = "best_of_n(mock, n=1, cost=organism-cost, calibrate=false)"
    first = ["audit", "-m", typed, "-s", "benign", "--limit", "2", "--out", str(out), "--no-html"]
    assert CliRunner().invoke(app, first).exit_code == 0
    [second] = [p for p in out.iterdir() if p != run]
    recorded = json.loads((second / "run.json").read_text())["model_spec"]
    assert "calibrate" not in recorded
    again = CliRunner().invoke(
        app, ["audit", "--resume", second.name, "--out", str(out), "-m", recorded]
    )
    assert again.exit_code == 0, again.output
    other = CliRunner().invoke(
        app,
        [
            "audit",
            "--resume",
            run.name,
            "--out",
            str(out),
            "-m",
            "best_of_n(mock, n=1, reward=organism-reward)",
        ],
    )
    assert other.exit_code == 2 and "was recorded with" in other.output


def _grid_fields(suite: Path) -> dict[str, Any]:
    """An attack of several configurations (a greedy and two sampled ones, system prompt on and
    off), two samples per sampled request."""
    from poise.models.mock import last_user_message

    def replies(chat: Any, k: int) -> str:
        return (COMPLY, REFUSE, HELP)[(len(last_user_message(chat)) + k + len(chat)) % 3]

    return {
        # a default system prompt to turn on (without one the grid runs sys=off only)
        "model": MockModel("scripted", replies, default_system_prompt="Be safe."),
        "suites": [str(suite)],
        "judge": "refusal",
        "html": False,
        "batch_size": 3,
        "attack": "exploitation",
        "attack_options": {"families": ["greedy", "temperature"], "temperatures": [0.5, 1.0]},
        "sampling": {"n": 2},
    }


def test_a_resumed_grid_attack_gives_the_uninterrupted_records_in_their_order(
    tmp_path: Path,
) -> None:
    """Killed mid-way through a block (a torn last record, metrics.json of an earlier try) and
    resumed: the same records, in the same order, and the same metrics. The blocks were grouped
    by the sampling of the first request left to do, so the greedy request whose record was
    torn came last."""
    suite = write_suite(tmp_path / "mini.jsonl", 4, 2)
    reference = poise.audit(out=str(tmp_path / "ref"), **_grid_fields(suite))
    lines = reference.run.samples_path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 40
    killed = poise.audit(out=str(tmp_path / "killed"), **_grid_fields(suite))
    # killed while writing the 8th record (a greedy one), before any status or metrics
    killed.run.samples_path.write_bytes(b"".join(lines[:7]) + lines[7][:25])
    killed.run.update_header(status="running")
    (killed.run.path / "metrics.json").write_text('{"stale": true}\n')

    resumed = poise.audit(out=str(tmp_path / "killed"), **_grid_fields(suite))
    assert resumed.run.path == killed.run.path
    assert list(resumed.run.records()) == list(reference.run.records())
    assert resumed.metrics == reference.metrics
    assert json.loads((resumed.run.path / "metrics.json").read_text()) == reference.metrics


def test_a_complete_but_unreadable_last_record_is_cut_when_the_run_resumes(tmp_path: Path) -> None:
    # Run.repair cuts it, but the audit read the records (the kinds check) before repairing and
    # stopped on the invalid JSON: the run could not be resumed
    suite = write_suite(tmp_path / "mini.jsonl", 3, 2)
    fields: dict[str, Any] = {"suites": [str(suite)], "judge": "refusal", "html": False}
    reference = poise.audit(
        model=MockModel("scripted", scripted), out=str(tmp_path / "a"), **fields
    )
    run = reference.run
    records = run.samples_path.read_bytes().splitlines(keepends=True)
    run.samples_path.write_bytes(b"".join(records[:3]) + b'{"item_id": "b-00", "sui\n')
    run.update_header(status="running")
    resumed = poise.audit(model=MockModel("scripted", scripted), out=str(tmp_path / "a"), **fields)
    assert resumed.run.path == run.path and run.status == "complete"
    assert run.samples_path.read_bytes() == b"".join(records)


def test_a_malformed_recorded_config_is_one_line_naming_run_json(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    first = poise.audit(model="mock", suites=["harmful"], limit=2, out=str(out), html=False)
    run = first.run
    header = run.header
    before = run.samples_path.read_bytes()
    cases = [
        ({**header["config"], "limit": 0}, r"run\.json: recorded config: limit: Input should be"),
        ({**header["config"], "bogus": 1}, r"run\.json: recorded config: unknown .* 'bogus'"),
        # a default audit of the organism on the default suites ran in its place
        ({"judge": "refusal"}, r"run\.json: field 'config' has no 'model' or 'suites'"),
    ]
    for config, message in cases:
        run.update_header(config=config)
        with pytest.raises(PoiseError, match=message):
            poise.audit(resume=run.path)
        assert run.samples_path.read_bytes() == before


def test_a_new_run_is_locked_before_another_process_can_find_it(
    tmp_path: Path, locked_when_run_json_appears: list[bool]
) -> None:
    # Run.create wrote run.json (status running) and the lock came later, in start(): the same
    # command started meanwhile adopted the new run, and its own writer then stopped on the lock
    result = poise.audit(model="mock", suites=["harmful"], limit=2, out=str(tmp_path), html=False)
    assert locked_when_run_json_appears == [True]
    assert result.run.state == "complete" and not result.run.is_locked()


def test_a_task_scorer_replaced_since_the_run_began_does_not_continue_it(tmp_path: Path) -> None:
    """A task's own scorer renamed or replaced (an updated plugin): the run's header names only
    the audit's judge, so the resumed run counted the verdicts of both scorers in one rate (2
    of 6 agreeing, where one scorer says 6 and the other 0)."""
    from poise.scoring.base import Verdict
    from poise.tasks import Metric, Task, decided, equals, register_task, unregister_task

    def scorer(name: str, agrees: bool) -> Any:
        class Scorer:
            def judge(self, items: Any, completions: Any) -> list[Verdict]:
                return [Verdict(label="x", refused=False, labels={"agrees": agrees}) for _ in items]

        Scorer.name = name  # type: ignore[attr-defined]
        return Scorer

    def task(name: str, agrees: bool) -> Task:
        rate = Metric("scored_rate", ("scored-kind",), "lower", "l", "{value}",
                      success=equals("agrees", True), judged=decided("agrees"))  # fmt: skip
        return Task("scored-kind", "m", (rate,), decided("agrees"), scorer(name, agrees))

    suite = tmp_path / "scored.jsonl"
    rows = [{"id": f"s{i}", "messages": [{"role": "user", "content": f"q {i}"}],
             "kind": "scored-kind"} for i in range(6)]  # fmt: skip
    suite.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = str(tmp_path / "runs")
    fields: dict[str, Any] = dict(suites=[str(suite)], judge="refusal", out=out, batch_size=2)
    register_task(task("scorer-v1", True))
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            poise.audit(model=MockModel("scripted", crash_after(4)), **fields)
        [run] = list_runs(out)
        assert {r["judge"] for r in run.records()} == {"scorer-v1"}
        unregister_task("scored-kind")
        register_task(task("scorer-v2", False))
        replaced = r"cannot resume: its answers of kind 'scored-kind' were judged by 'scorer-v1'"
        with pytest.raises(PoiseError, match=replaced):
            poise.audit(model=MockModel("scripted", scripted), resume=run.path, **fields)
        result = poise.audit(model=MockModel("scripted", scripted), **fields)
        assert result.run.path != run.path  # not continued: a run of its own
        assert {r["judge"] for r in result.run.records()} == {"scorer-v2"}
        assert result.metrics["overall"]["scored_rate"]["k"] == 0
    finally:
        unregister_task("scored-kind")


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        (
            {"sampling": {"temprature": 1}},
            "unknown sampling field 'temprature'; did you mean 'temperature'?",
        ),
        (
            {"temprature": 1},
            "unknown field 'temprature'; did you mean sampling={'temperature': ...}?",
        ),
        ({"jugde": "refusal"}, "unknown audit config field 'jugde'; did you mean 'judge'?"),
    ],
)
def test_a_misspelt_sampling_field_names_the_field_it_stands_for(
    fields: dict[str, object], said: str, tmp_path: Path
) -> None:
    # sampling={"temprature": 1} was "sampling.temprature: not an option here", naming no
    # field, and temprature=1 "did you mean 'system_prompt'?"
    with pytest.raises(PoiseError) as refused:
        poise.audit(model="mock", suites=["harmful"], limit=1, out=str(tmp_path), **fields)
    assert said in str(refused.value)
    assert not any(tmp_path.iterdir())


def test_resume_from_another_directory_builds_the_model_the_run_recorded(
    tmp_path: Path, tiny_hf_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a run begun with a relative folder ("./tiny-llama") was rebuilt from the spec as typed:
    # resumed from another directory it named another folder, or none
    from poise.models import load_model

    suite = write_suite(tmp_path / "mini.jsonl", n_harmful=2, n_benign=1)
    monkeypatch.chdir(tiny_hf_model_dir.parent)
    relative = f"./{tiny_hf_model_dir.name}"
    built = load_model(relative)
    config = make_config(
        None,
        model=relative,
        suites=(str(suite),),
        judge="refusal",
        sampling={"max_new_tokens": 4},
        out=str(tmp_path / "runs"),
        html=False,
    )
    run = Run.create(tmp_path / "runs", "begun", {})
    run.update_header(
        config={**config.model_dump(mode="json"), "fingerprint": config.fingerprint()},
        model_spec=built.spec,  # what the audit records of the model it built: absolute
        model_name=built.name,
    )
    run.unlock()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # "./tiny-llama" names nothing here
    result = poise.audit(resume=run.path)
    assert result.run.path == run.path and len(list(result.run.records())) == 3
    assert result.run.header["model_name"] == built.name


def test_an_attack_of_a_wrong_signature_is_said_of_the_attack_not_of_options(
    tmp_path: Path,
) -> None:
    # a plugin's attack taking two parameters was "bad options []": options never given
    from poise.attacks import attacks

    def two(items: object, sampling: object) -> object:
        return items

    attacks.add("review_two", two)  # type: ignore[arg-type]
    try:
        with pytest.raises(PoiseError) as refused:
            poise.audit(model="mock", suites=["harmful"], attack="review_two", out=str(tmp_path))
    finally:
        attacks._entries.pop("review_two", None)
    said = str(refused.value)
    assert "cannot be called as attack(items, sampling, system, **options)" in said
    assert "bad options" not in said


def test_a_reference_run_without_honesty_answers_is_refused_before_any_answer(
    tmp_path: Path,
) -> None:
    """A reference run of the harmful suite has no honesty answers to set the knowledge
    boundary: the audit stopped only once every answer was generated and judged, left its run
    unfinished, and every resume or rerun stopped there again."""
    suite = write_suite(tmp_path / "mini.jsonl", 3, 0)
    out = tmp_path / "runs"
    poise.audit(model="mock", suites=[str(suite)], judge="refusal", out=out, name="base",
                html=False)  # fmt: skip
    model = MockModel("scripted", scripted)
    with pytest.raises(PoiseError) as info:
        poise.audit(model=model, suites=[str(suite)], judge="refusal", out=out,
                    reference_run="base", html=False)  # fmt: skip
    [base] = list_runs(out)  # no run folder beside it
    assert str(info.value).startswith(f"{base.path}: the reference run has no judged honesty")
    assert "--reference-run takes a run of the unaligned model" in str(info.value)
    assert model.generated == 0


def _cut_to(run: Run, records: int) -> None:
    """``run`` as a kill after ``records`` records leaves it: fewer records, status running, no
    metrics."""
    lines = run.samples_path.read_bytes().splitlines(keepends=True)
    run.samples_path.write_bytes(b"".join(lines[:records]))
    run.update_header(status="running")
    (run.path / "metrics.json").unlink()


def test_a_run_resumed_from_another_directory_reads_the_files_it_began_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorded suites, reference_run and judge_labels keep their relative paths as typed
    (they are in the fingerprint): `poise audit --resume /abs/RUN` from another directory
    stopped with "mini.jsonl: no such file", or read a file or a reference run of the same name
    there. The run records the directory it began in (``workdir``) and reads them there."""
    began, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    began.mkdir()
    elsewhere.mkdir()
    write_suite(began / "mini.jsonl", 4, 2)
    rows = [{"output": REFUSE, "refused": 1, "harmful": 0}, {"output": COMPLY, "refused": 0, "harmful": 1}]  # fmt: skip
    (began / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # what another directory holds under the same names: other items, a reference run without
    # the honesty answers a reference needs
    write_suite(elsewhere / "mini.jsonl", 2, 2)
    monkeypatch.chdir(elsewhere)
    poise.audit(model="mock", suites=["harmful"], limit=2, judge="refusal", name="ref", html=False)
    monkeypatch.chdir(began)
    plain = dict(model="mock", judge="refusal", html=False)
    poise.audit(suites=["honesty"], limit=4, name="ref", **plain)  # under ./runs
    fields: dict[str, Any] = dict(
        suites=["mini.jsonl", "honesty"],
        limit=4,
        reference_run="ref",
        judge_labels="labels.jsonl",
        judge_labels_columns={"response": "output"},
        **plain,
    )
    whole = poise.audit(name="whole", **fields)
    killed = poise.audit(name="killed", **fields)
    # recorded as typed: the fingerprint of the same command typed here is the one it had
    assert killed.run.config["suites"] == ["mini.jsonl", "honesty"]
    assert (
        killed.run.config["fingerprint"] == make_config(None, name="killed", **fields).fingerprint()
    )
    _cut_to(killed.run, 3)
    path, records = began / killed.run.path, list(whole.run.records())

    monkeypatch.chdir(elsewhere)
    resumed = poise.audit(resume=str(path))
    assert resumed.run.path == path and resumed.run.status == "complete"
    assert list(resumed.run.records()) == records
    assert resumed.run.header["workdir"] == str(began)
    assert {**resumed.metrics, "judge_validation": None} == {**whole.metrics, "judge_validation": None}  # fmt: skip
    validated = resumed.metrics["judge_validation"]
    assert validated["path"] == str(began / "labels.jsonl")
    assert {**validated, "path": None} == {**whole.metrics["judge_validation"], "path": None}
    # the file gone where the run began: said so, the file of that name here not read instead
    _cut_to(resumed.run, 3)
    (began / "mini.jsonl").unlink()
    with pytest.raises(PoiseError) as info:
        poise.audit(resume=str(path))
    assert str(info.value) == f"{began / 'mini.jsonl'}: no such file"


def test_a_run_recorded_without_its_directory_resumes_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder of an older poise (no ``workdir``) reads its relative paths from the working
    directory, as it did; the same command typed there continues it (its fingerprint)."""
    write_suite(tmp_path / "mini.jsonl", 4, 2)
    monkeypatch.chdir(tmp_path)
    fields: dict[str, Any] = dict(model="mock", suites=["mini.jsonl"], judge="refusal", html=False)
    whole = poise.audit(out="whole", **fields)
    killed = poise.audit(**fields)
    header = killed.run.header
    header.pop("workdir", None)
    (killed.run.path / "run.json").write_text(json.dumps(header))
    _cut_to(killed.run, 3)
    again = poise.audit(**fields)
    assert again.run.path == killed.run.path
    assert list(again.run.records()) == list(whole.run.records())
    assert "workdir" not in again.run.header
    _cut_to(killed.run, 3)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    with pytest.raises(PoiseError, match=r"^mini\.jsonl: no such file$"):
        poise.audit(resume=str(tmp_path / killed.run.path))


def test_resuming_a_complete_run_says_so_and_leaves_it_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`--resume` of a complete run loaded the model, set the status to running, wrote
    metrics.json and the report again, and said nothing: killed meanwhile, the complete run
    showed as interrupted. It is left as it is, in one line; ``html`` given draws a missing
    report."""
    suite = write_suite(tmp_path / "mini.jsonl", 3, 2)
    done = poise.audit(model="mock", suites=[str(suite)], judge="refusal", out=str(tmp_path),
                       html=False).run  # fmt: skip
    before = {p.name: p.read_bytes() for p in done.path.iterdir() if p.is_file()}
    written: list[dict[str, Any]] = []
    real = Run.update_header
    monkeypatch.setattr(Run, "update_header", lambda run, **f: (written.append(f), real(run, **f)))
    caplog.set_level("WARNING", logger="poise")

    result = poise.audit(resume=str(done.path))
    assert written == []
    assert {p.name: p.read_bytes() for p in done.path.iterdir() if p.is_file()} == before
    assert result.metrics == json.loads(before["metrics.json"])
    said = [r.getMessage() for r in caplog.records if r.name.startswith("poise")]
    assert said == [
        f"{done.path} is complete: nothing to resume; its recorded results are unchanged "
        f"(poise runs show {done.path})"
    ]
    with pytest.raises(PoiseError, match="was recorded with limit=None, not 2"):
        poise.audit(resume=str(done.path), limit=2)  # a field that says otherwise: refused

    poise.audit(resume=str(done.path), html=True)
    assert written == [] and done.report_path.is_file() and done.status == "complete"


def _whole_and_killed_after_3(fields: dict[str, Any]) -> tuple[Any, Any]:
    """Two audits of ``fields`` in the working directory: one whole (named "whole"), one
    ("killed") cut as a kill after 3 records leaves it."""
    whole = poise.audit(name="whole", **fields)
    killed = poise.audit(name="killed", **fields)
    _cut_to(killed.run, 3)
    return whole, killed


def test_a_run_resumed_from_another_directory_builds_its_judge_from_the_folders_it_began_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paths inside the judge spec (``NAME:./folder``) and option values (``--judge-option
    model=./folder``) were read from the working directory on resume: a same-named folder there
    refused the run as "other weights", a missing one was not fingerprinted at all. They are read
    where the run began, and the judge keeps the name it had (records carry it)."""
    from poise.scoring import judges as module
    from poise.scoring.judges import RefusalJudge, judges, register_judge

    def build(arg: str, model: str | None = None) -> RefusalJudge:
        for folder in (arg, model):  # a judge that reads its folders
            if folder is not None and not Path(folder, "model.safetensors").is_file():
                raise PoiseError(f"{folder}: no judge weights there")
        judge = RefusalJudge()
        judge.name = f"review_folder:{arg}"
        return judge

    register_judge("review_folder", argument="PATH")(build)
    try:
        began, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
        _weights_folder(began / "judge", b"\x00" * 64)
        _weights_folder(began / "judge-model", b"\x00" * 64)
        _weights_folder(elsewhere / "judge", b"\x01" * 64)  # another judge under the same name
        write_suite(began / "mini.jsonl", 4, 2)
        monkeypatch.chdir(began)
        fields: dict[str, Any] = dict(
            model="mock", suites=["mini.jsonl"], judge="review_folder:judge",
            judge_options={"model": "judge-model"}, html=False,
        )  # fmt: skip
        whole, killed = _whole_and_killed_after_3(fields)
        path, records = began / killed.run.path, list(whole.run.records())
        recorded_weights, config = killed.run.header["weights"], killed.run.config
        assert set(recorded_weights) == {"judge", "judge option model"}

        monkeypatch.chdir(elsewhere)
        resumed = poise.audit(resume=str(path))
        assert resumed.run.status == "complete"
        assert list(resumed.run.records()) == records
        header = resumed.run.header
        assert header["judge_resolved"] == "review_folder:judge"
        assert header["judge_spec"] == "review_folder:judge"
        assert header["config"] == config  # as typed
        assert header["weights"] == recorded_weights
        assert resumed.metrics == whole.metrics

        # the option's folder gone where the run began, one of that name here: refused, not read
        _cut_to(resumed.run, 3)
        (began / "judge-model").rename(began / "moved")
        _weights_folder(elsewhere / "judge-model", b"\x00" * 64)
        with pytest.raises(PoiseError) as info:
            poise.audit(resume=str(path))
        assert str(info.value).startswith(
            f"--judge-option model=judge-model: no such file or folder in {began}, where the run "
            "began"
        )
    finally:
        judges._entries.pop("review_folder", None)
        module._ARGUMENT.pop("review_folder", None)


def test_a_judge_named_by_its_folder_option_keeps_its_name_on_a_resume_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_hf_model_dir: Path
) -> None:
    """A judge whose name carries its model option (``preset:NAME@FOLDER``) is built from the
    folder where the run began and keeps the name its records carry: built from the absolute
    path, it was another judge by name, and the resume was refused."""
    began, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(tiny_hf_model_dir, began / "cls")
    write_suite(began / "mini.jsonl", 4, 2)
    monkeypatch.chdir(began)
    fields: dict[str, Any] = dict(
        model="mock", suites=["mini.jsonl"], judge="preset:harmbench-cls",
        judge_options={"model": "cls"}, html=False,
    )  # fmt: skip
    whole, killed = _whole_and_killed_after_3(fields)
    path, records = began / killed.run.path, list(whole.run.records())
    assert len(records) > 3  # the resume has records to add
    monkeypatch.chdir(elsewhere)
    resumed = poise.audit(resume=str(path))
    assert resumed.run.status == "complete"
    assert resumed.run.header["judge_resolved"] == "preset:harmbench-cls@cls"
    assert list(resumed.run.records()) == records


def _dated_template_model(tmp_path: Path, tiny_hf_model_dir: Path) -> tuple[Path, Any]:
    """A copy of the tiny model whose chat template writes today's date (Llama 3.2's), and its
    tokenizer."""
    from transformers import AutoTokenizer

    from chat_templates import LLAMA32_TEMPLATE

    folder = tmp_path / "dated"
    shutil.copytree(tiny_hf_model_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.chat_template = LLAMA32_TEMPLATE
    tokenizer.save_pretrained(str(folder))
    return folder, tokenizer


def _set_clock(monkeypatch: pytest.MonkeyPatch, day: int) -> None:
    """The clock transformers gives chat templates (strftime_now) reads 2026-12-``day``."""
    import datetime as dt

    from transformers.utils import chat_template_utils

    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Clock:
            return cls(2026, 12, day, 23, 59)

    monkeypatch.setattr(chat_template_utils, "datetime", Clock)


def test_a_run_whose_chat_template_writes_the_date_is_not_continued_on_another_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_hf_model_dir: Path
) -> None:
    """A chat template that writes today's date into every prompt (strftime_now, as Llama
    3.1-3.3 templates do) rendered other prompts on a resume made another day: the resumed
    answers came from other prompts than the first part's, under one config. The run records
    how the template renders on the day its records are made; a resume on a day it renders
    otherwise is refused, the same command starts a new run, and the same day continues it."""
    folder, tokenizer = _dated_template_model(tmp_path, tiny_hf_model_dir)

    def on(day: int) -> None:
        _set_clock(monkeypatch, day)

    suite = write_suite(tmp_path / "mini.jsonl", 3, 2)
    fields: dict[str, Any] = dict(
        model=str(folder), suites=[str(suite)], judge="refusal", html=False,
        sampling={"max_new_tokens": 4}, out=str(tmp_path / "runs"),
    )  # fmt: skip
    on(4)
    whole = poise.audit(name="whole", **fields)
    chat = [{"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert "Today Date: 04 Dec 2026" in str(rendered)  # the clock the template reads
    killed = poise.audit(name="killed", **fields)
    _cut_to(killed.run, 2)

    on(5)
    with pytest.raises(PoiseError, match=r"cannot resume: the model's chat template writes "
                       r"today's date into every prompt \(strftime_now\)"):  # fmt: skip
        poise.audit(resume=killed.run.path)
    assert len(list(killed.run.records())) == 2
    assert set(killed.run.header["dated_prompts"]) == {"sha256", "rendered_at"}
    again = poise.audit(name="killed", **fields)  # the same command: a new run, not this one
    assert again.run.path != killed.run.path and again.run.status == "complete"

    on(4)
    resumed = poise.audit(resume=killed.run.path)
    assert resumed.run.status == "complete"
    assert list(resumed.run.records()) == list(whole.run.records())


def test_a_run_whose_template_date_is_fixed_by_an_option_continues_on_another_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_hf_model_dir: Path
) -> None:
    """--model-option chat_template_kwargs='{"date_string": ...}' fixes the date a Llama-style
    template writes: every prompt is the same whatever the day, so a run goes on."""
    folder, _ = _dated_template_model(tmp_path, tiny_hf_model_dir)
    fields: dict[str, Any] = dict(
        model=str(folder), suites=[str(write_suite(tmp_path / "mini.jsonl", 3, 2))],
        judge="refusal", html=False, sampling={"max_new_tokens": 4}, out=str(tmp_path / "runs"),
        model_options={"chat_template_kwargs": {"date_string": "26 Jul 2024"}},
    )  # fmt: skip
    _set_clock(monkeypatch, 4)
    whole = poise.audit(name="whole", **fields)
    killed = poise.audit(name="killed", **fields)
    _cut_to(killed.run, 2)
    _set_clock(monkeypatch, 5)
    resumed = poise.audit(resume=killed.run.path)
    assert resumed.run.status == "complete"
    assert list(resumed.run.records()) == list(whole.run.records())
    assert resumed.run.header["model_name"].endswith('+{"date_string":"26 Jul 2024"}')


# ---------------------------------------------------------------------------------------------
# answers_from: a run extended with another run's answers


def test_a_run_extended_with_answers_from_generates_only_the_new_items(tmp_path: Path) -> None:
    suite = str(write_suite(tmp_path / "mini.jsonl"))
    out = str(tmp_path / "runs")
    small = poise.audit(
        model=MockModel("scripted", scripted), suites=[suite], judge="refusal", out=out, limit=4
    )
    model = MockModel("scripted", scripted)
    larger = poise.audit(
        model=model, suites=[suite], judge="refusal", out=out, limit=8, answers_from=small.run.path
    )
    assert larger.run.path != small.run.path  # a run of its own, with its own config
    assert model.generated == 8 - 4  # the four items both ask were taken, not generated
    assert larger.run.header["answers_from"] == {"run": str(small.run.path.resolve()), "answers": 4}
    fresh = poise.audit(
        model=MockModel("scripted", scripted), suites=[suite], judge="refusal", out=out,
        limit=8, name="fresh",
    )  # fmt: skip
    assert keyset(larger.run.records()) == keyset(fresh.run.records())
    assert larger.metrics["overall"] == fresh.metrics["overall"]


def test_answers_from_a_run_of_another_sampling_takes_none_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    suite = str(write_suite(tmp_path / "mini.jsonl"))
    out = str(tmp_path / "runs")
    greedy = poise.audit(
        model=MockModel("scripted", scripted), suites=[suite], judge="refusal", out=out, limit=4
    )
    model = MockModel("scripted", scripted)
    with caplog.at_level("WARNING"):
        sampled = poise.audit(
            model=model, suites=[suite], judge="refusal", out=out, limit=4,
            sampling={"temperature": 1.0}, answers_from=greedy.run.path,
        )  # fmt: skip
    assert model.generated == 4 and sampled.run.header["answers_from"]["answers"] == 0
    assert "holds no answer to this audit's requests" in caplog.text


@pytest.mark.slow
def test_sampled_organism_answers_taken_from_a_smaller_run_are_those_of_a_fresh_run(
    tmp_path: Path,
) -> None:
    """Each row's random numbers follow from (seed, chat, sample), not from its batch: the
    extended run's records, taken and generated, are the fresh larger run's."""
    fields: dict[str, Any] = dict(
        model="organism-small",
        suites=["harmful"],
        sampling={"temperature": 1.0, "max_new_tokens": 24, "seed": 3},
        out=str(tmp_path / "runs"),
    )
    small = poise.audit(**fields, limit=3, name="small")
    larger = poise.audit(**fields, limit=6, name="larger", answers_from="small")
    fresh = poise.audit(**fields, limit=6, name="fresh")
    assert larger.run.header["answers_from"]["answers"] == 3
    assert keyset(larger.run.records()) == keyset(fresh.run.records())
    assert {r["item_id"] for r in small.run.records()} < {r["item_id"] for r in fresh.run.records()}


def test_answers_from_another_model_or_beside_resume_is_refused(tmp_path: Path) -> None:
    suite = str(write_suite(tmp_path / "mini.jsonl"))
    out = str(tmp_path / "runs")
    other = poise.audit(
        model=MockModel("other", scripted), suites=[suite], judge="refusal", out=out, limit=2
    )
    with pytest.raises(PoiseError, match=r"answers were made by model .*other.*not this model's"):
        poise.audit(
            model=MockModel("scripted", scripted), suites=[suite], judge="refusal", out=out,
            answers_from=other.run.path,
        )  # fmt: skip
    assert len(list_runs(out)) == 1  # refused before a run folder was made
    with pytest.raises(PoiseError, match=r"give resume or answers_from, not both"):
        poise.audit(resume=other.run.path, answers_from=other.run.path, out=out)
    result = CliRunner().invoke(
        app,
        ["audit", "--resume", str(other.run.path), "--answers-from", str(other.run.path)],
    )
    assert result.exit_code == 2
    assert "give --resume or --answers-from, not both" in result.output


def test_a_missing_answers_from_run_stops_before_the_model_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped --answers-from was found only once the model's weights were loaded (minutes
    for a large model), as "no run 'smal' found"; now it stops first and says which option."""
    import poise.models

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(poise.models, "load_model", never)
    out = tmp_path / "runs"
    with pytest.raises(PoiseError, match=r"^answers_from: no run 'smal' found"):
        poise.audit(
            model="mock", suites=[str(write_suite(tmp_path / "mini.jsonl"))], out=str(out),
            answers_from="smal",
        )  # fmt: skip
    assert not out.exists() or not any(out.iterdir())


def test_answers_from_a_copy_of_the_models_folder_are_taken(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    """A copied folder has another name (its path), the same weights: as a resume continues
    with it, its answers are taken, looked up under the name they were made under."""
    first = tmp_path / "first"
    shutil.copytree(tiny_hf_model_dir, first)
    fields: dict[str, Any] = dict(
        suites=[str(write_suite(tmp_path / "mini.jsonl", 6, 2))], judge="refusal", html=False,
        sampling={"max_new_tokens": 4}, out=str(tmp_path / "runs"),
    )  # fmt: skip
    small = poise.audit(model=str(first), limit=2, name="small", **fields)
    second = tmp_path / "second"
    shutil.copytree(first, second)
    larger = poise.audit(model=str(second), limit=4, name="larger", answers_from="small", **fields)
    assert larger.run.header["model_name"] != small.run.header["model_name"]
    assert larger.run.header["answers_from"]["answers"] == 2  # the two items both ask
    fresh = poise.audit(model=str(second), limit=4, name="fresh", **fields)
    assert keyset(larger.run.records()) == keyset(fresh.run.records())


def test_answers_from_a_run_judged_again_are_those_of_the_run_it_was_judged_from(
    tmp_path: Path,
) -> None:
    from poise.auditing import rejudge

    suite = str(write_suite(tmp_path / "mini.jsonl"))
    out = str(tmp_path / "runs")
    small = poise.audit(
        model=MockModel("scripted", scripted), suites=[suite], judge="refusal", out=out, limit=4
    )
    again = rejudge(small.run.path, judge="refusal", name="again")
    model = MockModel("scripted", scripted)
    larger = poise.audit(
        model=model, suites=[suite], judge="refusal", out=out, limit=8, answers_from=again.path
    )
    assert model.generated == 4  # a run judged again keeps no cache: its origin's was read
    assert larger.run.header["answers_from"]["run"] == str(small.run.path.resolve())
    shutil.rmtree(small.run.path)
    with pytest.raises(PoiseError, match=r"was judged again from .*, which holds its answers"):
        poise.audit(
            model=model, suites=[suite], judge="refusal", out=out, limit=8,
            answers_from=again.path,
        )  # fmt: skip


def test_the_cli_says_where_a_runs_answers_came_from(tmp_path: Path) -> None:
    suite = str(write_suite(tmp_path / "mini.jsonl"))
    out = str(tmp_path / "runs")
    args = ["audit", "--model", "mock", "--suite", suite, "--judge", "refusal", "--out", out]
    assert CliRunner().invoke(app, [*args, "--limit", "2", "--name", "a"]).exit_code == 0
    result = CliRunner().invoke(app, [*args, "--limit", "4", "--answers-from", "a", "--no-html"])
    assert result.exit_code == 0, result.output
    [source] = [r for r in list_runs(out) if r.path.name.endswith("-a")]
    assert f"answers from: {source.path.resolve()} (those to 2 requests taken" in result.output


# ---- a thirteenth mutation check: the --limit spread (13a) ---------------------------------


def test_limit_picks_the_items_at_the_start_of_each_equal_share() -> None:
    """Which items --limit asks stays as it is: a run begun before is resumed or extended only
    while the audit picks the same items (rounding the share to the nearest item picks others)."""
    from poise.auditing import spread_subset

    assert spread_subset(list(range(10)), 4) == [0, 2, 5, 7]
    assert spread_subset(list(range(7)), 2) == [0, 3]


def test_limit_is_per_suite(tmp_path: Path) -> None:
    result = poise.audit(
        model="mock", suites=["harmful", "benign"], limit=2, out=str(tmp_path), html=False
    )
    suites = [r["suite"] for r in result.run.records()]
    assert sorted(suites) == ["benign", "benign", "harmful", "harmful"]


@pytest.mark.parametrize("dropped", [("category", "judge"), ("prompt", "messages", "category")])
def test_a_run_recorded_before_records_held_these_fields_resumes(
    dropped: tuple[str, ...], tmp_path: Path
) -> None:
    """Older records hold no category, judge or prompt: what they do not hold is not compared."""
    _, _, run = _a_run_killed_midway(tmp_path)
    records = [{k: v for k, v in r.items() if k not in dropped} for r in run.records()]
    run.samples_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = poise.audit(model=MockModel("scripted", scripted), resume=run.path)
    assert result.run.path == run.path and len(list(result.run.records())) == 20


def test_resuming_after_an_items_prompt_and_category_were_edited_names_both(
    tmp_path: Path,
) -> None:
    suite, _, run = _a_run_killed_midway(tmp_path)
    rows = [json.loads(line) for line in suite.read_text().splitlines()]
    rows[0]["messages"][0]["content"] = "an edited harmful request"
    rows[0]["category"] = "cyber"
    suite.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(PoiseError, match=r"item h-00 of suite mini has another prompt and "
                       r"category now \(the suite changed since the run began\)"):  # fmt: skip
        poise.audit(model=MockModel("scripted", scripted), resume=run.path)


def test_an_item_id_in_two_suites_names_both_suites(tmp_path: Path) -> None:
    mini = write_suite(tmp_path / "mini.jsonl")
    other = tmp_path / "other.jsonl"
    other.write_text(mini.read_text().replace('"suite": "mini"', '"suite": "other"'))
    with pytest.raises(PoiseError) as info:
        poise.audit(model="mock", suites=[str(mini), str(other)], out=str(tmp_path / "runs"))
    assert str(info.value) == (
        "item id 'h-00' appears in both 'mini' and 'other': ids must be unique across the suites "
        "of one audit"
    )
