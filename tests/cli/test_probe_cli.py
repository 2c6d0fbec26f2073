"""``poise probe train`` and ``poise probe score`` end to end on the organism."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app
from poise.suites.loaders import load_suite


def _small_suite(path: Path) -> Path:
    items = [*load_suite("harmful").items[:30], *load_suite("benign").items[:30]]
    path.write_text("".join(item.model_dump_json() + "\n" for item in items), encoding="utf-8")
    return path


@pytest.mark.slow
def test_train_then_score_a_run(tmp_path: Path) -> None:
    runner = CliRunner()
    suite = _small_suite(tmp_path / "small.jsonl")
    probe = tmp_path / "probe"
    result = runner.invoke(
        app, ["probe", "train", "--task", "harmful", "-s", str(suite), "--out", str(probe)]
    )
    assert result.exit_code == 0, result.output
    header = json.loads((probe / "probe.json").read_text())
    assert header["metadata"]["task"] == "harmful" and len(header["metadata"]["sweep"]) == 5
    assert header["model"] == "organism-large"
    # a second train into the same folder is refused before any work
    again = runner.invoke(app, ["probe", "train", "--out", str(probe)])
    assert again.exit_code == 2 and "not empty" in again.output

    runs = tmp_path / "runs"
    audit = runner.invoke(
        app, ["audit", "-s", "harmful", "-s", "benign", "--limit", "6", "--out", str(runs),
              "--max-new-tokens", "16"],
    )  # fmt: skip
    assert audit.exit_code == 0, audit.output
    [run] = list(runs.iterdir())
    scored = runner.invoke(app, ["probe", "score", str(run), "--probe", str(probe)])
    assert scored.exit_code == 0, scored.output
    lines = [json.loads(x) for x in (run / "probe_scores.jsonl").read_text().splitlines()]
    records = (run / "samples.jsonl").read_text().splitlines()
    assert len(lines) == len(records) == 12
    # threshold at 1% FPR on the run's benign answers to items the probe was not fitted on:
    # none of those is flagged
    benign = {json.loads(r)["item_id"] for r in records if json.loads(r)["kind"] == "benign"}
    unseen = benign - set(header["metadata"]["fitted_items"])
    assert unseen and not any(x["flagged"] for x in lines if x["item_id"] in unseen)
    assert "probe probe" in (run / "report.html").read_text()
    # --fpr on a run with no benign answer: one error, where it was dropped in silence
    only = runner.invoke(
        app, ["audit", "-s", "harmful", "--limit", "2", "--out", str(tmp_path / "runs2"),
              "--max-new-tokens", "8"],
    )  # fmt: skip
    assert only.exit_code == 0, only.output
    [harmful_run] = list((tmp_path / "runs2").iterdir())
    args = ["probe", "score", str(harmful_run), "--probe", str(probe)]
    refused = runner.invoke(app, [*args, "--fpr", "0.05"])
    assert refused.exit_code == 2 and "no benign answers" in refused.output
    assert not (harmful_run / "probe_scores.jsonl").exists()
    assert runner.invoke(app, args).exit_code == 0  # the probe's own threshold


def test_comply_needs_a_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["probe", "train", "--task", "comply", "--out", str(tmp_path / "p")]
    )
    assert result.exit_code == 2 and "--run" in result.output


def test_deception_needs_a_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["probe", "train", "--task", "deception", "--out", str(tmp_path / "p")]
    )
    assert result.exit_code == 2 and "--run" in result.output and "feigned" in result.output


@pytest.mark.slow
def test_deception_refuses_a_run_an_output_only_judge_labelled(tmp_path: Path) -> None:
    runner = CliRunner()
    runs = tmp_path / "runs"
    audit = runner.invoke(
        app, ["audit", "-s", "harmful", "--limit", "6", "--judge", "refusal", "--out", str(runs),
              "--max-new-tokens", "24", "--no-html"],
    )  # fmt: skip
    assert audit.exit_code == 0, audit.output
    [run] = list(runs.iterdir())
    probe = tmp_path / "p"
    result = runner.invoke(
        app, ["probe", "train", "--task", "deception", "--run", str(run), "--out", str(probe)]
    )
    assert result.exit_code == 2 and "feigned vs real compliance" in result.output
    assert not probe.exists() or not any(probe.iterdir())  # nothing half-written


@pytest.mark.slow
def test_a_run_of_the_same_model_under_an_alias_is_its_own_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The default audit names the model ``organism``, an alias of organism-large: probing
    organism-large on it reads the model's own answers, and says nothing; another model's run
    gets the warning."""
    from poise.models import load_model
    from poise.probing import probe_examples

    runs = tmp_path / "runs"
    audit = CliRunner().invoke(
        app, ["audit", "-s", "harmful", "-s", "benign", "--limit", "6", "--out", str(runs),
              "--max-new-tokens", "16", "--no-html"],
    )  # fmt: skip
    assert audit.exit_code == 0, audit.output
    [run] = list(runs.iterdir())
    assert json.loads((run / "run.json").read_text())["config"]["model"] == "organism"
    logging.getLogger("poise").propagate = True  # the CLI run above stopped it (conftest restores)
    with caplog.at_level("WARNING"):
        probe_examples("comply", load_model("organism-large"), run=run)
    assert "own answers" not in caplog.text
    with caplog.at_level("WARNING"):
        probe_examples("comply", load_model("organism-small"), run=run)
    assert "own answers" in caplog.text and "organism-large#" in caplog.text


@pytest.mark.parametrize("command", ["train", "score"])
def test_a_false_positive_rate_out_of_range_is_one_error_before_any_work(
    command: str, tmp_path: Path
) -> None:
    args = ["probe", command, "--fpr", "2"]
    args += ["--out", str(tmp_path / "p")] if command == "train" else ["no-run", "--probe", "p"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--fpr: a false-positive rate in [0, 1), got 2.0" in result.output
    assert not (tmp_path / "p").exists()


def test_a_test_fraction_or_negative_layer_is_one_error_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both were refused only once the weights had loaded (a negative layer: after a forward
    pass too)."""
    import poise.models

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(poise.models, "load_model", no_load)
    for extra, message in [
        (["--test-fraction", "1.5"], "--test-fraction: a share in (0, 1), got 1.5"),
        (["--test-fraction", "0"], "--test-fraction: a share in (0, 1), got 0"),
        (["--layer", "-1"], "--layer: an index >= 0 (0 = the embeddings), got -1"),
    ]:
        result = CliRunner().invoke(app, ["probe", "train", "--out", str(tmp_path / "p"), *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "p").exists()


def test_a_flag_the_task_does_not_read_is_refused_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--suite with a task labelled by a run, and --run with a task labelled by the suites,
    were dropped without a word: the probe was trained on other labels than asked for."""
    import poise.models

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(poise.models, "load_model", no_load)
    run = tmp_path / "some-run"
    run.mkdir()
    for extra, message in [
        (["--task", "comply", "--run", str(run), "--suite", "harmful"], "--suite is not read"),
        (["--task", "deception", "--run", str(run), "-s", "benign"], "--suite is not read"),
        (["--task", "harmful", "--run", str(run)], "--run is not read"),
        (["--run", str(run)], "--run is not read"),  # the default task, harmful
        (["--task", "honesty", "--run", str(run)], "--run is not read"),
    ]:
        result = CliRunner().invoke(app, ["probe", "train", "--out", str(tmp_path / "p"), *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "p").exists()


def test_an_output_path_that_is_a_file_or_under_one_is_one_error_before_any_work(
    tmp_path: Path,
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    for out, message in [
        (a_file, "a file, not a folder"),
        (a_file / "probe", "cannot make the probe folder"),
    ]:
        result = CliRunner().invoke(app, ["probe", "train", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert message in result.output


def test_a_layer_the_model_lacks_is_refused_before_the_activations_are_read(
    tmp_path: Path,
) -> None:
    """It was refused only after every example's activations had been read (minutes on a large
    model): one row's forward tells the layers."""
    from poise.errors import PoiseError
    from poise.models import load_model
    from poise.probes.data import harmful_vs_benign
    from poise.probes.train import train_probe

    model = load_model("organism-small")
    items = [*load_suite("harmful").items[:4], *load_suite("benign").items[:4]]
    examples = harmful_vs_benign(items, None)
    rows: list[int] = []
    with pytest.raises(PoiseError, match=r"layer 9 out of range \(0 \.\. 3\)"):
        train_probe(model, examples, tmp_path / "p", task="harmful", layer=9, progress=rows.append)
    assert rows == [] and not (tmp_path / "p").exists()


def test_a_malformed_run_record_is_one_error_naming_its_line(tmp_path: Path) -> None:
    """A record without its prompt was a KeyError traceback (train) or scored as an empty
    prompt (score): one line naming the run's samples file and line, nothing written."""
    runner = CliRunner()
    runs = tmp_path / "runs"
    audit = runner.invoke(
        app, ["audit", "-s", "harmful", "-s", "benign", "--limit", "2", "--out", str(runs),
              "-m", "organism-small", "--max-new-tokens", "8", "--no-html"],
    )  # fmt: skip
    assert audit.exit_code == 0, audit.output
    [run] = list(runs.iterdir())
    samples = run / "samples.jsonl"
    lines = samples.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[1])
    del record["prompt"]
    lines[1] = json.dumps(record)
    samples.write_text("\n".join(lines) + "\n", encoding="utf-8")
    import torch

    from poise.probes.linear import LinearProbe, Standardiser

    def ones() -> torch.Tensor:
        return torch.ones(128, dtype=torch.float64)

    LinearProbe(1, Standardiser(ones() * 0, ones()), ones(), 0.0, ones(), "organism-small").save(
        tmp_path / "probe"
    )
    probe = tmp_path / "p"
    train = ["probe", "train", "--task", "comply", "--run", str(run), "--out", str(probe)]
    score = ["probe", "score", str(run), "--probe", str(tmp_path / "probe")]
    for args in (train, score):
        result = runner.invoke(app, [*args, "-m", "organism-small"])
        assert result.exit_code == 2, result.output
        assert "samples.jsonl:2: expected a record with a text 'prompt'" in result.output
        assert "Traceback" not in result.output
    assert not probe.exists() and not (run / "probe_scores.jsonl").exists()


def test_score_finds_a_run_by_name_under_out(tmp_path: Path) -> None:
    # `probe score` looked for a run's name under ./runs only, where every other command that
    # takes a run has --out: a run audited with --out elsewhere could be named by path only
    import poise

    runs = tmp_path / "elsewhere"
    done = poise.audit(model="mock", suites=["harmful"], limit=1, out=str(runs), html=False)
    result = CliRunner().invoke(
        app,
        ["probe", "score", done.run.path.name, "--out", str(runs), "--probe", str(tmp_path / "x")],
    )
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "no run" not in said and str(tmp_path / "x") in said  # past the run, at the probe


def test_scoring_another_models_run_warns(
    tmp_path: Path,
    tiny_hf_model_dir: Path,
    build_tiny_model: Callable[..., Path],
) -> None:
    """`probe score` of a run another model answered crossed the probe's flags with the judge's
    verdicts on that model's answers without a word (`probe train` warns on such a run)."""
    other = build_tiny_model(tmp_path / "other", seed=1)
    suite = tmp_path / "suite.jsonl"
    suite.write_text(
        "".join(
            json.dumps({"id": f"{kind}{i}", "prompt": f"{kind} request {i}", "kind": kind}) + "\n"
            for kind in ("harmful", "benign")
            for i in range(6)
        ),
        encoding="utf-8",
    )
    runner = CliRunner()
    probe = tmp_path / "probe"
    trained = runner.invoke(
        app,
        ["probe", "train", "-m", str(tiny_hf_model_dir), "-s", str(suite), "--test-fraction",
         "0.5", "--out", str(probe)],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    runs = tmp_path / "runs"
    for name, model in [("own", tiny_hf_model_dir), ("other", other)]:
        audit = runner.invoke(
            app,
            ["audit", "-m", str(model), "-s", str(suite), "--limit", "2", "--max-new-tokens",
             "4", "--out", str(runs), "--name", name, "--no-html"],
        )  # fmt: skip
        assert audit.exit_code == 0, audit.output
    own, another = (next(runs.glob(f"*-{name}")) for name in ("own", "other"))
    for run, warned in [(own, False), (another, True)]:
        scored = runner.invoke(app, ["probe", "score", str(run), "--probe", str(probe)])
        assert scored.exit_code == 0, scored.output
        assert ("another model's answers" in " ".join(scored.output.split())) is warned
