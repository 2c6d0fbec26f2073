"""``poise firewall fit|check`` on the command line (the firewall itself: tests/probes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app


def test_an_output_folder_that_cannot_be_made_is_one_error_before_any_work(
    tmp_path: Path,
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(
        "".join(json.dumps({"role": "r", "query": f"q{i}"}) + "\n" for i in range(3)),
        encoding="utf-8",
    )
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    result = CliRunner().invoke(
        app, ["firewall", "fit", "--anchors", str(anchors), "--out", str(a_file / "fw")]
    )
    assert result.exit_code == 2, result.output
    assert "cannot make the firewall folder" in result.output
    assert "Traceback" not in result.output


def test_a_percentile_or_layer_out_of_range_is_one_error_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both were refused only once the weights had loaded (a negative layer: once the first
    role's activations had been read)."""
    import poise.models

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(poise.models, "load_model", no_load)
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(
        "".join(json.dumps({"role": "r", "query": f"q{i}"}) + "\n" for i in range(3)),
        encoding="utf-8",
    )
    base = ["firewall", "fit", "--anchors", str(anchors), "--out", str(tmp_path / "fw")]
    for extra, message in [
        (["--percentile", "0"], "percentile must be in (0, 100], got 0"),
        (["--percentile", "150"], "percentile must be in (0, 100], got 150"),
        (["--layer", "2", "--layer", "-1"], "layer -1 is not one of the model's hidden states"),
    ]:
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "fw").exists()


def test_checking_with_another_model_than_the_fitted_one_warns(
    tmp_path: Path, tiny_hf_model_dir: Path, build_tiny_model: Callable[..., Path]
) -> None:
    """A firewall fitted on one model and checked with another of the same shape passed every
    check and scored by distances that mean nothing for that model, without a word (`poise
    serve --firewall` warns; `probe score` and `steer` do for a probe)."""
    other = build_tiny_model(tmp_path / "other", seed=1)
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(
        "".join(
            json.dumps({"role": "chef", "query": f"How do I cook dish {i}?"}) + "\n"
            for i in range(4)
        ),
        encoding="utf-8",
    )
    folder = tmp_path / "fw"
    fit = CliRunner().invoke(
        app,
        ["firewall", "fit", "--anchors", str(anchors), "-o", str(folder),
         "-m", str(tiny_hf_model_dir)],
    )  # fmt: skip
    assert fit.exit_code == 0, fit.output
    base = ["firewall", "check", "-f", str(folder), "-r", "chef", "How do I cook rice?"]
    same = CliRunner().invoke(app, base)
    assert same.exit_code in (0, 1), same.output
    assert "fitted on" not in same.output
    again = CliRunner().invoke(app, [*base, "-m", str(tiny_hf_model_dir)])
    assert "fitted on" not in again.output
    moved = CliRunner().invoke(app, [*base, "-m", str(other)])
    assert moved.exit_code in (0, 1), moved.output
    assert "firewall: fitted on" in moved.output
    assert "fit it again on this model" in " ".join(moved.output.split())


def test_the_python_fit_reads_the_anchors_as_the_command_does(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    """``poise firewall fit`` reads the anchors under the model's default system prompt, as the
    served model answers them; ``Firewall.fit`` read them under none by default, so for a model
    whose template does not insert its default itself, a firewall fitted in Python had other
    zones than the command's."""
    import shutil

    import torch

    from poise.models import load_model
    from poise.probes.firewall import Firewall, load_firewall, read_anchors

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_hf_model_dir, model_dir)
    (model_dir / "poise.json").write_text(json.dumps({"default_system_prompt": "Be terse."}))
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(
        "".join(
            json.dumps({"role": "chef", "query": q}) + "\n"
            for q in ("How do I boil rice?", "How long do eggs take?", "How do I bake bread?")
        ),
        encoding="utf-8",
    )
    folder = tmp_path / "fw"
    fit = CliRunner().invoke(
        app, ["firewall", "fit", "--anchors", str(anchors), "-o", str(folder), "-m", str(model_dir)]
    )
    assert fit.exit_code == 0, fit.output
    by_command = load_firewall(folder)
    model = load_model(str(model_dir))
    by_call = Firewall.fit(model, read_anchors(anchors))
    assert by_command.system_prompt == by_call.system_prompt == "Be terse."
    torch.testing.assert_close(by_call.zone("chef").centroid, by_command.zone("chef").centroid)
    without = Firewall.fit(model, read_anchors(anchors), system_prompt=None)
    assert without.system_prompt is None
    assert not torch.allclose(without.zone("chef").centroid, by_command.zone("chef").centroid)
