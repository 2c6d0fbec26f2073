"""`poise merge CONFIG.yml OUT` and `poise merge methods`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from poise.cli import app


@pytest.mark.slow
def test_merge_command_writes_a_loadable_folder(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "merge.yml"
    config.write_text(
        f"merge_method: linear\nmodels:\n"
        f"  - model: {tiny_hf_model_dir}\n    parameters: {{weight: 0.25}}\n"
        f"  - model: {tiny_hf_model_dir}\n    parameters: {{weight: 0.75}}\n"
        f"dtype: float32\n"
    )
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge", str(config), str(out), "--shard-size", "50KB"])
    assert result.exit_code == 0, result.output
    assert "linear:" in result.output
    weights = {}
    for shard in sorted(out.glob("*.safetensors")):
        weights.update(load_file(shard))
    original = load_file(tiny_hf_model_dir / "model.safetensors")
    assert weights.keys() == original.keys()
    assert all(torch.allclose(weights[k], original[k], atol=1e-6) for k in original)
    assert (out / "merge_config.yml").is_file() and (out / "README.md").is_file()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("merge_method: tise\nmodels: []\n", "unknown merge method 'tise'; did you mean 'ties'"),
        ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, densty: 0.5}}]\n",
         "'densty'; did you mean 'density'"),
        ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, normalize: true}}]\n",
         "shared by all models"),
        ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1}}]\n"
         "parameters: {sign_election: papr}\n", "'papr'; did you mean 'paper'"),
        ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: heavy}}]\n",
         "'heavy' is not a number"),
        ("merge_method: slerp\nbase_model: b\nmodels: [{model: a}]\n", "needs parameters.t"),
        ("merge_method: ties\nmodels: [{model: a, parameters: {weight: 1}}]\n", "needs a base_model"),
        ("merge_method: linear\nslices: []\n", "slices"),
        ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\ndtype: float8\n",
         "unknown dtype 'float8'"),
        ("merge_method: linear\nmodels: [{model: nowhere/at/all, parameters: {weight: 1}}]\n",
         "model 'nowhere/at/all': no such folder"),
        ("merge_method: [linear\n", "invalid YAML"),
    ],
)  # fmt: skip
def test_bad_configs_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yml"
    config.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["merge", str(config), str(out)])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())  # rich wraps long lines
    assert message in line, result.output
    assert str(config) in line or "model 'nowhere" in line
    assert not out.exists()


def test_methods_lists_every_method() -> None:
    result = CliRunner().invoke(app, ["merge", "methods"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in ("ties", "dare_linear", "della", "slerp", "model_stock", "tsv_m", "resm"):
        assert name in result.output


@pytest.mark.parametrize("size", ["0", "-1MB", "0GB", "five", "infGB", "1e400kb"])
def test_a_shard_size_that_is_not_positive_is_one_line(size: str, tmp_path: Path) -> None:
    # 0 and negative sizes wrote one shard per tensor with exit 0; an infinite one was an
    # OverflowError traceback
    config = tmp_path / "merge.yml"
    config.write_text("merge_method: linear\nmodels: []\n")
    result = CliRunner().invoke(
        app, ["merge", str(config), str(tmp_path / "o"), "--shard-size", size]
    )
    assert result.exit_code == 2
    assert f"--shard-size {size!r} is not a positive size" in result.output
    assert not (tmp_path / "o").exists()
