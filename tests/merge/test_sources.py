"""Tensor sources read from hand-written safetensors folders: shards and their index, dtypes
from the headers, and peft LoRA folders seen as ``W + scaling * B @ A`` (closed forms; peft's
own merge is compared in test_executor.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from poise.errors import PoiseError
from poise.merge.sources import INDEX_NAME, LoraFolder, SafetensorsFolder

Q = "model.layers.0.self_attn.q_proj.weight"
V = "model.layers.0.self_attn.v_proj.weight"
Q10 = "model.layers.10.self_attn.q_proj.weight"


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _sharded(path: Path, shards: dict[str, dict[str, torch.Tensor]]) -> Path:
    """A folder of ``shards`` (file name -> tensors) and the index mapping them."""
    path.mkdir()
    weight_map = {}
    for file, tensors in shards.items():
        save_file(tensors, str(path / file))
        weight_map |= dict.fromkeys(tensors, file)
    (path / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def test_a_sharded_folder_reads_what_its_index_lists_and_names_a_missing_shard(
    tmp_path: Path,
) -> None:
    q, v = _randn(4, 4), _randn(4, 4, seed=1)
    folder = _sharded(tmp_path / "m", {"a.safetensors": {Q: q}, "b.safetensors": {V: v}})
    (folder / "old.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")
    source = SafetensorsFolder(folder)  # a file the index does not list is not opened
    assert source.keys() == [Q, V]
    assert torch.equal(source.get(Q), q) and torch.equal(source.get(V), v)
    source.close()
    (folder / "b.safetensors").unlink()
    with pytest.raises(PoiseError) as caught:
        SafetensorsFolder(folder)
    assert str(caught.value) == f"{folder / INDEX_NAME}: lists b.safetensors, which is missing"


def test_an_index_without_a_weight_map_is_one_line(tmp_path: Path) -> None:
    folder = _sharded(tmp_path / "m", {"a.safetensors": {Q: _randn(2, 2)}})
    (folder / INDEX_NAME).write_text('{"metadata": {}}')
    with pytest.raises(PoiseError) as caught:
        SafetensorsFolder(folder)
    assert str(caught.value) == f"{folder / INDEX_NAME}: not a safetensors index ('weight_map')"


def test_without_an_index_every_safetensors_file_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({Q: _randn(2, 2)}, str(folder / "a.safetensors"))
    save_file({V: _randn(2, 2)}, str(folder / "b.safetensors"))
    source = SafetensorsFolder(folder)
    assert sorted(source.keys()) == [Q, V]
    source.close()


def test_a_folder_of_pickle_weights_only_says_they_are_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(PoiseError) as caught:
        SafetensorsFolder(folder, label="m")
    assert str(caught.value) == (
        f"model 'm': no safetensors weights in {folder} "
        "(found pytorch_model.bin: pickle checkpoints are not read)"
    )


def test_dtypes_are_the_stored_ones_integer_buffers_included(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    save_file(
        {Q: _randn(2, 2).to(torch.bfloat16), V: _randn(2, 2).half(),
         "model.position_ids": torch.arange(4)},
        str(folder / "model.safetensors"),
    )  # fmt: skip
    source = SafetensorsFolder(folder)
    assert source.dtype(Q) == torch.bfloat16
    assert source.dtype(V) == torch.float16
    assert source.dtype("model.position_ids") == torch.int64
    source.close()


def _lora(path: Path, base: Path, tensors: dict[str, torch.Tensor], **config: object) -> LoraFolder:
    path.mkdir()
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    return LoraFolder(path, SafetensorsFolder(base))


@pytest.fixture
def base16(tmp_path: Path) -> Path:
    """A bfloat16 base with q_proj and v_proj of layer 0 and q_proj of layer 10 (8 x 6)."""
    folder = tmp_path / "base"
    folder.mkdir()
    weights = {n: _randn(8, 6, seed=i).to(torch.bfloat16) for i, n in enumerate((Q, V, Q10))}
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def _ab(name: str, seed: int, rank: int = 2, prefix: str = "base_model.model.",
        adapter: str = "") -> dict[str, torch.Tensor]:  # fmt: skip
    module = prefix + name.removesuffix(".weight")
    return {
        f"{module}.lora_A{adapter}.weight": _randn(rank, 6, seed=seed),
        f"{module}.lora_B{adapter}.weight": _randn(8, rank, seed=seed + 100),
    }


def _update(lora: LoraFolder, name: str) -> torch.Tensor:
    return lora.get(name) - lora.base.get(name).float()


def test_lora_keys_with_or_without_the_peft_prefix_and_an_adapter_name_are_read(
    tmp_path: Path, base16: Path
) -> None:
    """``W' - W = (alpha / r) B @ A`` in float32 on a bfloat16 base, whose dtype the source
    keeps; keys as peft writes them, bare, or with the adapter's name."""
    tensors = _ab(Q, 1) | _ab(V, 2, prefix="") | _ab(Q10, 3, adapter=".default")
    lora = _lora(tmp_path / "lora", base16, tensors, r=2, lora_alpha=6)
    for name, seed in ((Q, 1), (V, 2), (Q10, 3)):
        a, b = _randn(2, 6, seed=seed), _randn(8, 2, seed=seed + 100)
        torch.testing.assert_close(_update(lora, name), 3.0 * (b @ a), msg=name)
        assert lora.dtype(name) == torch.bfloat16
    lora.close()


def test_a_fan_in_fan_out_update_is_transposed_to_the_weight(tmp_path: Path, base16: Path) -> None:
    """GPT-2's Conv1D weights are ``[in, out]``: peft's ``B @ A`` (``[out, in]``) is transposed."""
    a, b = _randn(2, 8, seed=1), _randn(6, 2, seed=2)
    module = "base_model.model." + Q.removesuffix(".weight")
    tensors = {f"{module}.lora_A.weight": a, f"{module}.lora_B.weight": b}
    lora = _lora(tmp_path / "lora", base16, tensors, r=2, lora_alpha=2, fan_in_fan_out=True)
    torch.testing.assert_close(_update(lora, Q), (b @ a).T)
    lora.close()


def test_rslora_scales_by_the_square_root_of_the_rank(tmp_path: Path, base16: Path) -> None:
    lora = _lora(tmp_path / "lora", base16, _ab(Q, 1, rank=4), r=4, lora_alpha=6, use_rslora=True)
    a, b = _randn(4, 6, seed=1), _randn(8, 4, seed=101)
    torch.testing.assert_close(_update(lora, Q), 6 / math.sqrt(4) * (b @ a))
    lora.close()


@pytest.mark.parametrize(
    ("pattern", "alphas"),
    [
        # a layer's own alpha (the pattern is matched on whole name parts: not layer 10)
        ({"0.self_attn.q_proj": 8}, {Q: 8, V: 2, Q10: 2}),
        # a regular expression with alternatives, as peft matches it: (.*\.)?(PATTERN)$
        ({"q_proj|v_proj": 8}, {Q: 8, V: 8, Q10: 8}),
        # the first pattern that matches wins, as in peft's get_pattern_key
        ({"v_proj": 4, "self_attn.v_proj": 8}, {Q: 2, V: 4, Q10: 2}),
    ],
)
def test_alpha_pattern_is_matched_as_peft_matches_it(
    tmp_path: Path, base16: Path, pattern: dict[str, float], alphas: dict[str, float]
) -> None:
    tensors = _ab(Q, 1) | _ab(V, 2) | _ab(Q10, 3)
    lora = _lora(tmp_path / "lora", base16, tensors, r=2, lora_alpha=2, alpha_pattern=pattern)
    for name, seed in ((Q, 1), (V, 2), (Q10, 3)):
        a, b = _randn(2, 6, seed=seed), _randn(8, 2, seed=seed + 100)
        torch.testing.assert_close(_update(lora, name), alphas[name] / 2 * (b @ a), msg=name)
    lora.close()


@pytest.mark.parametrize(
    ("tensors", "config", "message"),
    [
        ({"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": _randn(8, 2)},
         {"r": 2}, "adapter_model.safetensors: model.layers.0.self_attn.q_proj.weight has "
         "lora_B only"),
        ({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": _randn(2, 6)},
         {"r": 2}, "adapter_model.safetensors: model.layers.0.self_attn.q_proj.weight has "
         "lora_A only"),
        (_ab("model.layers.0.mlp.up_proj.weight", 1), {"r": 2},
         "adapts 'model.layers.0.mlp.up_proj.weight', which the base"),
        (_ab(Q, 1), {"r": 2, "use_dora": True}, "DoRA adapters cannot be read as task vectors"),
        (_ab(Q, 1), {"r": 2, "peft_type": "IA3"}, "peft type 'IA3' is not a LoRA"),
    ],
)  # fmt: skip
def test_adapters_that_are_not_plain_loras_of_the_base_are_one_line(
    tmp_path: Path, base16: Path, tensors: dict[str, torch.Tensor], config: dict[str, object],
    message: str,
) -> None:  # fmt: skip
    with pytest.raises(PoiseError, match=r"^\S*lora\S*: ") as caught:
        _lora(tmp_path / "lora", base16, tensors, **config)
    assert message in str(caught.value)


def test_a_config_without_lora_alpha_scales_as_peft_loads_it(tmp_path: Path, base16: Path) -> None:
    """peft's LoraConfig defaults lora_alpha to 8 (not to r): a hand-written adapter config
    without it is scaled 8 / r, as peft would load it."""
    lora = _lora(tmp_path / "lora", base16, _ab(Q, 1, rank=2), r=2)
    a, b = _randn(2, 6, seed=1), _randn(8, 2, seed=101)
    torch.testing.assert_close(_update(lora, Q), 4.0 * (b @ a))
    lora.close()
