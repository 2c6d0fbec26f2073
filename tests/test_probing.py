"""``poise.probing``: a probe trained and a run scored in one call each, as the CLI does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import poise
from poise.errors import PoiseError
from poise.probing import probe_examples, score_probe, train_probe


def _suite(path: Path) -> Path:
    path.write_text(
        "".join(
            json.dumps({"id": f"{kind}{i}", "prompt": f"{kind} request {i}", "kind": kind}) + "\n"
            for kind in ("harmful", "benign")
            for i in range(6)
        ),
        encoding="utf-8",
    )
    return path


def test_a_probe_is_trained_and_a_run_scored_in_one_call_each(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    suite = _suite(tmp_path / "suite.jsonl")
    calls: list[tuple[int, int]] = []
    trained = train_probe(
        tmp_path / "probe", model=tiny_hf_model_dir, suites=[str(suite)], test_fraction=0.5,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    header = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert header["metadata"]["task"] == "harmful" and header["metadata"]["rows"] == 12
    assert trained.layer == header["layer"]
    # progress counts the rows whose activations are read, from 0 to all 12
    assert calls[0] == (0, 12) and calls[-1] == (12, 12)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    done = poise.audit(
        model=str(tiny_hf_model_dir), suites=[str(suite)], limit=4, out=str(tmp_path / "runs"),
        sampling={"max_new_tokens": 4}, html=False,
    )  # fmt: skip
    seen: list[tuple[int, int]] = []
    scored = score_probe(
        done.run.path.name, tmp_path / "probe", runs_dir=tmp_path / "runs",
        progress=lambda d, t: seen.append((d, t)),
    )  # fmt: skip
    lines = scored.path.read_text(encoding="utf-8").splitlines()
    assert scored.path == done.run.path / "probe_scores.jsonl"
    assert scored.answers == len(lines) == 4 and seen[-1] == (4, 4)
    assert [json.loads(x)["score"] for x in lines] == scored.scores.scores


def test_every_option_is_checked_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import poise.models

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(poise.models, "load_model", no_load)
    run = tmp_path / "a-run"
    run.mkdir()
    out = tmp_path / "p"
    for options, message in [
        ({"task": "nonsense"}, "expected one of harmful, comply, honesty, deception"),
        ({"task": "comply"}, "pass run (--run RUN)"),
        ({"task": "comply", "run": run, "suites": ["harmful"]}, "--suite is not read"),
        ({"task": "honesty", "run": run}, "--run is not read"),
        ({"fpr": 1.0}, "--fpr: a false-positive rate in [0, 1), got 1.0"),
        ({"test_fraction": 0.0}, "--test-fraction: a share in (0, 1), got 0"),
        ({"test_fraction": "half"}, "--test-fraction: a share in (0, 1), got 'half'"),
        ({"layer": -2}, "--layer: an index >= 0"),
        ({"l2": -1.0}, "l2"),
    ]:
        with pytest.raises(PoiseError, match=None) as raised:
            train_probe(out, **options)  # type: ignore[arg-type]
        assert message in str(raised.value), options
    assert not out.exists()
    with pytest.raises(PoiseError, match=r"--fpr: a false-positive rate in \[0, 1\), got 2"):
        score_probe(run, tmp_path / "no-probe", fpr=2)


def test_the_rows_of_a_suite_task_follow_the_models_system_prompt(tiny_hf_model_dir: Path) -> None:
    """Harmful vs benign rows are the built-in suites' items as the audit sends them: with the
    model's default system prompt (the organism's), none for a folder without one."""
    from poise.models import load_model

    organism = probe_examples("harmful", load_model("organism-small"))
    assert {e.label for e in organism} == {0, 1}
    assert organism[0].chat[0]["role"] == "system"
    plain = probe_examples("harmful", load_model(str(tiny_hf_model_dir)))
    assert len(plain) == len(organism) and plain[0].chat[0]["role"] == "user"
