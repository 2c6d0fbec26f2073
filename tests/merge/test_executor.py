"""The streaming executor end to end: tiny HF models built in code, merged from a mergekit-style
config, written as sharded safetensors, loaded back with plain transformers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from poise.errors import PoiseError
from poise.merge import get_method
from poise.merge.config import OptionResolver, count_layers, load_config, run_merge

pytestmark = pytest.mark.slow


def _state(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def _write(path: Path, config: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_merge_written_and_loaded_equals_in_memory_merge(
    specialists: list[Path], tmp_path: Path
) -> None:
    base, a, b = specialists
    config = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [
            {"model": str(base)},  # mergekit configs often list the base: it stays the base
            {"model": str(a), "parameters": {"weight": [1.0, 0.5], "density": 0.6}},
            {"model": str(b), "parameters": {
                "weight": [{"filter": "self_attn", "value": 0.3}, {"value": 0.8}],
                "density": [0.4, 0.9]}},
        ],
        "parameters": {"lambda": 0.9},
        "dtype": "float32",
    }  # fmt: skip
    path = _write(tmp_path / "ties.yml", config)
    out = tmp_path / "merged"
    result = run_merge(path, out, shard_size=40_000)  # small shards: the index path is exercised
    assert len(result.files) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(result.files)
    for name in ("config.json", "tokenizer.json", "merge_config.yml", "merge.json", "README.md"):
        assert (out / name).is_file(), name
    record = json.loads((out / "merge.json").read_text())
    assert record["merge_method"] == "ties" and record["versions"]["torch_version"]
    assert record["options"]["sign_election"] == "paper"

    # the in-memory merge, from the three models as transformers loads them
    states = [_state(p) for p in (base, a, b)]
    merged = _state(out)
    cfg = load_config(path)
    resolver = OptionResolver(
        get_method("ties"), dict(cfg.parameters),
        [cfg.models[1].parameters, cfg.models[2].parameters], count_layers(list(states[0])),
    )  # fmt: skip
    for name, tensor in merged.items():
        expected = get_method("ties")([states[1][name], states[2][name]], states[0][name],
                                      **resolver(name))  # fmt: skip
        assert torch.equal(tensor, expected), name
    # the gradient and the filter reached the tensors: layer 0 and layer 1 differ in weights
    assert resolver("model.layers.0.mlp.up_proj.weight")["weight"] == [1.0, 0.8]
    assert resolver("model.layers.1.mlp.up_proj.weight")["weight"] == [0.5, 0.8]
    assert resolver("model.layers.1.self_attn.q_proj.weight")["weight"] == [0.5, 0.3]
    assert resolver("model.layers.1.self_attn.q_proj.weight")["density"] == [0.6, 0.9]


def test_merge_output_generates(specialists: list[Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, a, b = specialists
    out = tmp_path / "m"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "tsv_m", "base_model": str(base),
        "models": [{"model": str(a)}, {"model": str(b)}], "dtype": "bfloat16",
    }), out)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("the cat", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_merged_folder_is_readable_like_any_new_folder(
    specialists: list[Path], tmp_path: Path
) -> None:
    """The staging folder is private (mkdtemp); the finished merge has the permissions a plain
    mkdir and open give, so another user can read it."""
    import os
    import stat

    base, a, b = specialists
    out = tmp_path / "m"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "tsv_m", "base_model": str(base),
        "models": [{"model": str(a)}, {"model": str(b)}],
    }), out)  # fmt: skip
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    files = [p for p in out.iterdir() if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~umask}


def test_lora_folder_is_a_task_vector(specialists: list[Path], tmp_path: Path) -> None:
    """task_arithmetic(base, [base+LoRA], weight 1) equals peft's own merge_and_unload."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = specialists[0]
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "lora")
    expected = peft_model.merge_and_unload().state_dict()
    out = tmp_path / "out"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "task_arithmetic", "base_model": str(base),
        "models": [{"model": str(tmp_path / "lora"), "parameters": {"weight": 1.0}}],
    }), out)  # fmt: skip
    merged = _state(out)
    changed = 0
    for name, tensor in merged.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
        changed += not torch.equal(tensor, _state(base)[name]) if "q_proj" in name else 0
    assert changed == 2  # both layers' q_proj moved
    # the BASE+LORA spelling means the same
    out2 = tmp_path / "out2"
    run_merge(_write(tmp_path / "c2.yml", {
        "merge_method": "linear",
        "models": [{"model": f"{base}+{tmp_path / 'lora'}", "parameters": {"weight": 1.0}}],
    }), out2)  # fmt: skip
    assert all(torch.allclose(t, expected[n], atol=1e-6) for n, t in _state(out2).items())
    # merge.json names the LoRA with the base it was applied to, both absolute (it recorded the
    # adapter's path alone, relative when the config gave it so)
    lora = (tmp_path / "lora").resolve()
    for folder, given_base in ((out, base), (out2, base)):
        record = json.loads((folder / "merge.json").read_text())
        assert record["models"] == [f"{Path(given_base).resolve()}+{lora}"]


def test_vocabulary_mismatch_takes_the_tokenizer_sources_rows(
    specialists: list[Path], specialist_builder: Callable[..., Path], tmp_path: Path
) -> None:
    base, a, _ = specialists
    wide = specialist_builder(base, tmp_path / "wide", seed=5, extra_tokens=4)
    out = tmp_path / "out"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "task_arithmetic", "base_model": str(base),
        "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                   {"model": str(wide), "parameters": {"weight": 0.5}}],
    }), out)  # fmt: skip
    merged, sa, sw, sb = (_state(p) for p in (out, a, wide, base))
    vocab = sb["model.embed_tokens.weight"].shape[0]
    assert merged["model.embed_tokens.weight"].shape[0] == vocab
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        expected = sb[name] + 0.5 * (sa[name] - sb[name]) + 0.5 * (sw[name][:vocab] - sb[name])
        assert torch.allclose(merged[name], expected, atol=1e-6)


def test_rows_only_the_tokenizer_source_has_keep_their_trained_values(
    specialists: list[Path], specialist_builder: Callable[..., Path], tmp_path: Path
) -> None:
    """With a wider tokenizer source than the base, the tokens only it has keep its rows: the
    base's missing rows come from it, so no task vector scales them (they were filled with 0,
    and a weight of 0.5 halved the new tokens' embeddings)."""
    base, a, _ = specialists
    wide = specialist_builder(base, tmp_path / "wide", seed=5, extra_tokens=4)
    out = tmp_path / "out"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "task_arithmetic", "base_model": str(base), "tokenizer_source": str(wide),
        "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                   {"model": str(wide), "parameters": {"weight": 0.5}}],
    }), out)  # fmt: skip
    merged, sa, sw, sb = (_state(p) for p in (out, a, wide, base))
    vocab = sb["model.embed_tokens.weight"].shape[0]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[name].shape[0] == vocab + 4
        assert merged[name].dtype == sb[name].dtype
        shared = sb[name] + 0.5 * (sa[name] - sb[name]) + 0.5 * (sw[name][:vocab] - sb[name])
        assert torch.allclose(merged[name][:vocab], shared, atol=1e-6)
        assert torch.equal(merged[name][vocab:], sw[name][vocab:])


def _merge_with_tensor(
    sources: list[Path], tmp_path: Path, name: str, tensor: torch.Tensor, *, bf16: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Task arithmetic of ``sources`` (base first, weight 1) copied with one more tensor
    ``name`` (the copies in bfloat16 when ``bf16``): the merged weights and config.json."""
    import shutil

    from safetensors.torch import load_file, save_file

    copies = []
    for source in sources:
        folder = tmp_path / source.name
        if bf16:
            _bfloat16_copy(source, folder)
        else:
            shutil.copytree(source, folder)
        weights = load_file(folder / "model.safetensors")
        weights[name] = tensor
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        copies.append(folder)
    out = tmp_path / "out"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "task_arithmetic", "base_model": str(copies[0]),
        "models": [{"model": str(c), "parameters": {"weight": 1.0}} for c in copies[1:]],
    }), out)  # fmt: skip
    return load_file(out / "model.safetensors"), json.loads((out / "config.json").read_text())


def _bfloat16_copy(folder: Path, out: Path) -> Path:
    """``folder``'s model saved in bfloat16, with its tokenizer."""
    import shutil

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder).to(torch.bfloat16).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
    return out


def test_the_config_says_the_dtype_written_when_it_comes_from_a_tokenizer_source(
    specialists: list[Path], tmp_path: Path
) -> None:
    """Without ``dtype``, the weights take the base's dtype; ``config.json`` comes from the
    tokenizer source, and said its own dtype (bfloat16 over float32 weights)."""
    import json

    from transformers import AutoModelForCausalLM

    base, a, _ = specialists
    half = _bfloat16_copy(a, tmp_path / "half")
    out = tmp_path / "out"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "task_arithmetic", "base_model": str(base), "tokenizer_source": str(half),
        "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                   {"model": str(half), "parameters": {"weight": 0.5}}],
    }), out)  # fmt: skip
    assert all(t.dtype == torch.float32 for t in _state(out).values())
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.float32


@pytest.mark.parametrize("key", ["dtype", "out_dtype"])
def test_float32_merge_of_a_bfloat16_base_is_not_rounded_to_bfloat16(
    specialists: list[Path], tmp_path: Path, key: str
) -> None:
    """``dtype: float32`` (or ``out_dtype: float32``, which leaves the compute dtype unset) on a
    bfloat16 base writes the float32 merge; the method's result was rounded to the base's
    bfloat16 before being cast to float32."""
    from safetensors.torch import load_file

    base, a, b = specialists
    base16 = _bfloat16_copy(base, tmp_path / "base16")
    out = tmp_path / "out"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "task_arithmetic", "base_model": str(base16), key: "float32",
        "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                   {"model": str(b), "parameters": {"weight": 0.5}}],
    }), out)  # fmt: skip
    merged = load_file(out / "model.safetensors")
    sb, sa, s2 = (load_file(p / "model.safetensors") for p in (base16, a, b))
    for name, tensor in merged.items():
        assert tensor.dtype == torch.float32, name
        w = sb[name].float()
        expected = w + 0.5 * (sa[name] - w) + 0.5 * (s2[name] - w)
        assert torch.allclose(tensor, expected, atol=1e-6, rtol=0), name


def test_lora_on_a_bfloat16_base_is_its_exact_task_vector(
    specialists: list[Path], tmp_path: Path
) -> None:
    """A LoRA's task vector on a bfloat16 base is ``scaling * B @ A``, not ``round(W + scaling B
    A) - W``: rounding to bfloat16 before the merge added an error of about 2^-9 |W| to it (and
    made it full-rank). The output still takes the base's dtype unless the config gives one."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = specialists[0]
    base16 = _bfloat16_copy(base, tmp_path / "base16")
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.002)
    peft_model.save_pretrained(tmp_path / "lora")
    adapter = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    base_state = load_file(base16 / "model.safetensors")
    out = tmp_path / "out"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "task_arithmetic", "base_model": str(base16), "dtype": "float32",
        "models": [{"model": str(tmp_path / "lora"), "parameters": {"weight": 0.5}}],
    }), out)  # fmt: skip
    merged = load_file(out / "model.safetensors")
    adapted = 0
    for key, lora_a in adapter.items():
        if ".lora_A." not in key:
            continue
        lora_b = adapter[key.replace(".lora_A.", ".lora_B.")]
        name = key.removeprefix("base_model.model.").split(".lora_A.")[0] + ".weight"
        expected = base_state[name].float() + 0.5 * (8 / 4) * (lora_b.float() @ lora_a.float())
        assert torch.allclose(merged[name], expected, atol=1e-6, rtol=0), name
        adapted += 1
    assert adapted == 4  # q_proj and v_proj of both layers
    # without a dtype the output is the base's bfloat16, adapted tensors included
    out2 = tmp_path / "out2"
    run_merge(_write(tmp_path / "c2.yml", {
        "merge_method": "linear",
        "models": [{"model": f"{base16}+{tmp_path / 'lora'}", "parameters": {"weight": 1.0}}],
    }), out2)  # fmt: skip
    assert {t.dtype for t in load_file(out2 / "model.safetensors").values()} == {torch.bfloat16}


def test_shape_mismatch_outside_the_vocabulary_is_refused(
    specialists: list[Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    base, a, _ = specialists
    broken = tmp_path / "broken"
    broken.mkdir()
    weights = load_file(a / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(weights, broken / "model.safetensors")
    out = tmp_path / "out"
    with pytest.raises(PoiseError, match=r"model.layers.0.mlp.up_proj.weight.*\[3, 3\]"):
        run_merge(_write(tmp_path / "c.yml", {
            "merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(broken), "parameters": {"weight": 1.0}}],
        }), out)  # fmt: skip
    assert not out.exists()  # nothing half-written
    assert not list(tmp_path.glob(".out*"))


def test_inputs_are_read_one_tensor_at_a_time(specialists: list[Path], tmp_path: Path) -> None:
    """Streaming: each input tensor is read once, and no more than one tensor per input is alive
    at any time (the merged outputs wait in the shard; the inputs do not; tensors are freed by
    reference counting, so no garbage collection is needed to see it)."""
    import weakref

    from poise.merge.executor import MergeJob, write_merge
    from poise.merge.sources import SafetensorsFolder

    live: list[weakref.ref[torch.Tensor]] = []
    reads: list[str] = []
    peak = 0

    class Spy(SafetensorsFolder):
        def get(self, name: str) -> torch.Tensor:
            nonlocal peak
            alive = sum(ref() is not None for ref in live)
            peak = max(peak, alive)
            tensor = super().get(name)
            live.append(weakref.ref(tensor))
            reads.append(f"{self.label}:{name}")
            return tensor

    base, a, b = (Spy(p, label=p.name) for p in specialists)
    job = MergeJob(get_method("task_arithmetic"), [a, b], base, lambda name: {"weight": [0.5, 0.5]})
    files = write_merge(job, tmp_path / "out", shard_size=10**9)
    assert files == ["model.safetensors"]
    assert len(reads) == len(set(reads)) == 3 * len(base.keys())  # each tensor read once
    assert peak <= 2  # while reading a model's tensor, at most the base's and one other are alive


def test_merge_keeps_the_tokenizer_sources_chat_settings(
    specialists: list[Path], tmp_path: Path
) -> None:
    import shutil

    base, a, b = specialists
    source = tmp_path / "base"
    shutil.copytree(base, source)
    meta = {
        "member": "source-name",
        "default_system_prompt": "Be brief.",
        "system_prompt_in_template": True,
        "corpus": "base",
    }
    (source / "poise.json").write_text(json.dumps(meta))
    out = tmp_path / "m"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "task_arithmetic", "base_model": str(source),
        "models": [{"model": str(a)}, {"model": str(b)}], "parameters": {"weight": 0.5},
    }), out)  # fmt: skip
    kept = json.loads((out / "poise.json").read_text())
    assert kept == {
        "default_system_prompt": "Be brief.",
        "system_prompt_in_template": True,
        "merged_by": "poise merge",
    }
    # a source without poise.json gives a merge without one
    run_merge(_write(tmp_path / "d.yml", {
        "merge_method": "task_arithmetic", "base_model": str(base),
        "models": [{"model": str(a)}, {"model": str(b)}], "parameters": {"weight": 0.5},
    }), tmp_path / "n")  # fmt: skip
    assert not (tmp_path / "n" / "poise.json").exists()


def test_a_config_built_in_python_takes_paths(specialists: list[Path], tmp_path: Path) -> None:
    from poise.merge.config import MergeConfig

    base, a, b = specialists
    config = MergeConfig(
        merge_method="task_arithmetic",
        base_model=base,
        models=[{"model": m, "parameters": {"weight": 0.5}} for m in (a, b)],
        tokenizer_source=base,
    )
    assert config.base_model == str(base) and config.tokenizer_source == str(base)
    assert [m.model for m in config.models] == [str(a), str(b)]
    run_merge(config, tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file()
    # the YAML's content as a dict (a TypeError before), and anything else one line
    as_dict = {"merge_method": "linear", "models": [
        {"model": str(m), "parameters": {"weight": 0.5}} for m in (a, b)]}  # fmt: skip
    run_merge(as_dict, tmp_path / "d")
    assert (tmp_path / "d" / "config.json").is_file()
    with pytest.raises(PoiseError, match="expected a MergeConfig, a dict or a YAML path, got int"):
        run_merge(123, tmp_path / "e")  # type: ignore[arg-type]


def _nothing_written(tmp_path: Path, out: Path) -> bool:
    return not out.exists() and not list(tmp_path.glob(f".{out.name}*"))


def test_models_of_another_depth_are_refused_before_anything_is_written(
    specialists: list[Path], deeper_model: Path, tmp_path: Path
) -> None:
    """A deeper model merged on a shallower base used to lose its extra layers silently (the
    names came from the base); the other way round it failed halfway through the tensors."""
    base, a, _ = specialists
    out = tmp_path / "out"
    with pytest.raises(PoiseError) as caught:
        run_merge(_write(tmp_path / "c.yml", {
            "merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(deeper_model), "parameters": {"weight": 1.0}}],
        }), out)  # fmt: skip
    message = str(caught.value)
    assert "\n" not in message
    assert f"model {str(deeper_model)!r} has 9 tensor(s) the base {str(base)!r} lacks" in message
    assert "(model.layers.2." in message and "3 layers against 2" in message
    assert _nothing_written(tmp_path, out)
    # without a base, in either order: the first model is the reference
    for first, second, verb in ((a, deeper_model, "has"), (deeper_model, a, "lacks")):
        with pytest.raises(PoiseError, match=rf"model '{second}' {verb} 9 tensor\(s\) the first"):
            run_merge(_write(tmp_path / "l.yml", {
                "merge_method": "linear",
                "models": [{"model": str(m), "parameters": {"weight": 1.0}}
                           for m in (first, second)],
            }), out)  # fmt: skip
        assert _nothing_written(tmp_path, out)


def test_another_architecture_is_refused(specialists: list[Path], tmp_path: Path) -> None:
    import shutil

    base, a, _ = specialists
    other = tmp_path / "other"
    shutil.copytree(a, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    with pytest.raises(PoiseError, match=r"different architectures \(MistralForCausalLM against"):
        run_merge(_write(tmp_path / "c.yml", {
            "merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(other), "parameters": {"weight": 1.0}}],
        }), out)  # fmt: skip
    assert _nothing_written(tmp_path, out)


def test_a_tied_head_or_a_rotary_buffer_one_model_stores_is_left_out(
    specialists: list[Path], tmp_path: Path
) -> None:
    """A model that ties its LM head to the embeddings may store ``lm_head.weight`` or not
    (a fine-tune of a tied model saved with its head), and old checkpoints stored a
    ``rotary_emb.inv_freq`` buffer: where the inputs disagree, those tensors are left out of
    the output (its config, the reference's, ties the head), in any order and with any
    tokenizer source. With an untied reference a missing head is still refused."""
    import shutil

    from safetensors.torch import load_file, save_file

    base, a, b = specialists

    def variant(source: Path, name: str, *, tie: bool, head: bool, inv_freq: bool) -> Path:
        folder = tmp_path / name
        shutil.copytree(source, folder)
        config = json.loads((folder / "config.json").read_text())
        config["tie_word_embeddings"] = tie
        (folder / "config.json").write_text(json.dumps(config))
        weights = load_file(folder / "model.safetensors")
        if head:
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
        else:
            weights.pop("lm_head.weight", None)
        if inv_freq:
            weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder

    bare = variant(base, "bare-base", tie=True, head=False, inv_freq=False)
    stored = variant(base, "stored-base", tie=True, head=True, inv_freq=True)
    with_head = variant(a, "with-head", tie=True, head=True, inv_freq=True)
    without = variant(b, "without", tie=True, head=False, inv_freq=False)
    configs: list[dict[str, object]] = [
        {"base_model": str(bare), "models": [str(with_head)]},
        {"base_model": str(stored), "models": [str(without)]},
        {"base_model": str(bare), "models": [str(with_head)], "tokenizer_source": str(with_head)},
        {"models": [str(with_head), str(without)]},
        {"models": [str(without), str(with_head)]},
    ]
    for k, config in enumerate(configs):
        out = tmp_path / f"out{k}"
        models = config.pop("models")
        assert isinstance(models, list)
        run_merge(_write(tmp_path / f"c{k}.yml", {
            "merge_method": "task_arithmetic" if "base_model" in config else "linear",
            **config,
            "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models],
        }), out)  # fmt: skip
        merged = load_file(out / "model.safetensors")
        assert "lm_head.weight" not in merged and not any("inv_freq" in n for n in merged), k
        assert "model.embed_tokens.weight" in merged
    # all of them store the head: it is merged like any tensor
    out = tmp_path / "both"
    run_merge(_write(tmp_path / "both.yml", {
        "merge_method": "task_arithmetic", "base_model": str(stored),
        "models": [{"model": str(with_head), "parameters": {"weight": 1.0}}],
    }), out)  # fmt: skip
    assert "lm_head.weight" in load_file(out / "model.safetensors")
    untied = variant(base, "untied-base", tie=False, head=True, inv_freq=False)
    lacking = variant(a, "lacking", tie=False, head=False, inv_freq=False)
    with pytest.raises(PoiseError, match=r"lacks 1 tensor\(s\) the base .* has \(lm_head.weight\)"):
        run_merge(_write(tmp_path / "u.yml", {
            "merge_method": "task_arithmetic", "base_model": str(untied),
            "models": [{"model": str(lacking), "parameters": {"weight": 1.0}}],
        }), tmp_path / "out-untied")  # fmt: skip


def test_della_bounds_are_checked_on_every_tensor_before_writing(
    specialists: list[Path], tmp_path: Path
) -> None:
    """A density gradient ending at 0.9 with epsilon 0.15 passes at layer 0 and breaks DELLA's
    ``density + epsilon < 1`` at the last layer: refused before anything is written."""
    base, a, b = specialists
    out = tmp_path / "out"
    path = _write(tmp_path / "c.yml", {
        "merge_method": "della", "base_model": str(base),
        "models": [{"model": str(a), "parameters": {"weight": 1.0, "density": [0.5, 0.9]}},
                   {"model": str(b), "parameters": {"weight": 1.0, "density": 0.5}}],
        "parameters": {"epsilon": 0.15},
    })  # fmt: skip
    load_config(path)  # the values outside the layers are fine
    with pytest.raises(PoiseError, match=r"'model.layers.1.*density 0.9 and epsilon 0.15"):
        run_merge(path, out)
    assert _nothing_written(tmp_path, out)


def test_a_model_without_density_keeps_every_entry_as_in_mergekit(
    specialists: list[Path], tmp_path: Path
) -> None:
    """The docs' first example gives one model a density and not the other: it was refused
    ("some models have no 'density' value"); mergekit reads the missing one as 1.0."""
    from safetensors.torch import load_file

    base, a, b = specialists

    def merged(second: dict[str, object], name: str) -> dict[str, object]:
        path = _write(tmp_path / f"{name}.yml", {
            "merge_method": "ties", "base_model": str(base), "dtype": "float32",
            "models": [{"model": str(a), "parameters": {"weight": 0.6, "density": 0.5}},
                       {"model": str(b), "parameters": second}],
        })  # fmt: skip
        run_merge(path, tmp_path / name)
        return dict(load_file(tmp_path / name / "model.safetensors"))

    implicit = merged({"weight": 0.5}, "implicit")
    explicit = merged({"weight": 0.5, "density": 1.0}, "explicit")
    assert implicit.keys() == explicit.keys()
    assert all(bool((implicit[k] == explicit[k]).all()) for k in implicit)  # type: ignore[union-attr]
    with pytest.raises(PoiseError, match="has no 'weight' parameter"):
        merged({"density": 0.5}, "no-weight")  # weight has no default


def test_a_linear_merge_whose_weights_cancel_is_refused_before_writing(
    specialists: list[Path], tmp_path: Path
) -> None:
    """Weights 1 and -1 (or 0 and 0) normalised divide by 0: an all-NaN model written with exit
    0; refused before anything is written. Without normalize they are a plain difference."""
    _, a, b = specialists
    out = tmp_path / "out"
    for weights in ((1.0, -1.0), (0.0, 0.0)):
        path = _write(tmp_path / "c.yml", {
            "merge_method": "linear",
            "models": [{"model": str(a), "parameters": {"weight": weights[0]}},
                       {"model": str(b), "parameters": {"weight": weights[1]}}],
        })  # fmt: skip
        with pytest.raises(PoiseError, match="linear divides by the sum of the weights"):
            run_merge(path, out)
        assert _nothing_written(tmp_path, out)
    path = _write(tmp_path / "c.yml", {
        "merge_method": "linear", "parameters": {"normalize": False},
        "models": [{"model": str(a), "parameters": {"weight": 1.0}},
                   {"model": str(b), "parameters": {"weight": -1.0}}],
    })  # fmt: skip
    run_merge(path, out)
    assert (out / "config.json").is_file()


def test_an_existing_file_as_the_output_is_named_a_file(
    specialists: list[Path], tmp_path: Path
) -> None:
    base, a, _ = specialists
    out = tmp_path / "good.jsonl"
    out.write_text("{}\n")
    with pytest.raises(PoiseError, match=r"^output .*good.jsonl is an existing file, not a folder"):
        run_merge(_write(tmp_path / "c.yml", {
            "merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(a), "parameters": {"weight": 1.0}}],
        }), out)  # fmt: skip
    assert out.read_text() == "{}\n"


def test_an_output_under_a_file_is_refused_before_any_work(
    specialists: list[Path], tmp_path: Path
) -> None:
    """A file on the way to the output was a FileExistsError traceback from the final mkdir."""
    base, a, _ = specialists
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(
        PoiseError, match=r"^output .*a-file/out: cannot make the folder, .*a-file is a file$"
    ):
        run_merge(_write(tmp_path / "c.yml", {
            "merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(a), "parameters": {"weight": 1.0}}],
        }), blocker / "out")  # fmt: skip
    assert blocker.read_text() == "x"
    assert not list(tmp_path.glob(".out*"))


def test_a_model_filter_that_misses_falls_back_to_the_top_level_value(
    specialists: list[Path], tmp_path: Path
) -> None:
    """mergekit resolves a model's option per tensor, falling back to the top-level value where
    the model's own filters match nothing; poise refused the merge halfway through the tensors
    ("some models have no 'weight' value")."""
    from safetensors.torch import load_file

    base, a, b = specialists
    config = {
        "merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
        "models": [{"model": str(a),
                    "parameters": {"weight": [{"filter": "self_attn", "value": 0.8}]}},
                   {"model": str(b)}],
        "parameters": {"weight": 0.5},
    }  # fmt: skip
    cfg = load_config(_write(tmp_path / "c.yml", config))
    resolver = OptionResolver(get_method("task_arithmetic"), dict(cfg.parameters),
                              [m.parameters for m in cfg.models], 2)  # fmt: skip
    assert resolver("model.layers.0.self_attn.q_proj.weight")["weight"] == [0.8, 0.5]
    assert resolver("model.layers.0.mlp.up_proj.weight")["weight"] == [0.5, 0.5]
    run_merge(tmp_path / "c.yml", tmp_path / "out")
    got = load_file(tmp_path / "out" / "model.safetensors")
    states = [load_file(p / "model.safetensors") for p in (base, a, b)]
    name = "model.layers.0.mlp.up_proj.weight"
    expected = states[0][name] + 0.5 * (states[1][name] - states[0][name]) + 0.5 * (
        states[2][name] - states[0][name])  # fmt: skip
    assert torch.allclose(got[name], expected, atol=1e-6)


def test_a_required_option_no_filter_gives_is_refused_before_any_weight_is_read(
    specialists: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SLERP's ``t`` given only for attention tensors, or every model's weight only through
    filters: the other tensors have no value. This was a TypeError from the method (or a
    PoiseError) after the first tensors had been read; now a one-line refusal up front."""
    from poise.merge.sources import SafetensorsFolder

    def no_reads(self: SafetensorsFolder, name: str) -> torch.Tensor:
        raise AssertionError(f"read {name} before the options were checked")

    monkeypatch.setattr(SafetensorsFolder, "get", no_reads)
    base, a, b = specialists
    out = tmp_path / "out"
    only_attention = [{"filter": "self_attn", "value": 0.5}]
    with pytest.raises(PoiseError, match=r"^tensor '.*': no value of 't' applies to it"):
        run_merge(_write(tmp_path / "s.yml", {
            "merge_method": "slerp", "base_model": str(base), "models": [{"model": str(a)}],
            "parameters": {"t": only_attention},
        }), out)  # fmt: skip
    assert _nothing_written(tmp_path, out)
    with pytest.raises(PoiseError, match=r"^tensor '.*': no value of 'weight' applies to it"):
        run_merge(_write(tmp_path / "t.yml", {
            "merge_method": "ties", "base_model": str(base),
            "models": [{"model": str(a), "parameters": {"weight": only_attention}},
                       {"model": str(b), "parameters": {"weight": only_attention}}],
        }), out)  # fmt: skip
    assert _nothing_written(tmp_path, out)
    with pytest.raises(PoiseError, match=r"^tensor '.*': some models have no 'weight' value"):
        run_merge(_write(tmp_path / "u.yml", {
            "merge_method": "ties", "base_model": str(base),
            "models": [{"model": str(a), "parameters": {"weight": only_attention}},
                       {"model": str(b), "parameters": {"weight": 1.0}}],
        }), out)  # fmt: skip
    assert _nothing_written(tmp_path, out)


def test_a_rank_fraction_above_one_over_the_tasks_is_refused_before_any_weight_is_read(
    specialists: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TSV-M with rank_fraction 0.9 for two tasks was refused at the first matrix, once it had
    been read, although the docs promise the checks before any weight is read."""
    from poise.merge.sources import SafetensorsFolder

    def no_reads(self: SafetensorsFolder, name: str) -> torch.Tensor:
        raise AssertionError(f"read {name} before the options were checked")

    monkeypatch.setattr(SafetensorsFolder, "get", no_reads)
    base, a, b = specialists
    out = tmp_path / "out"
    for method in ("tsv_m", "resm"):
        with pytest.raises(PoiseError, match=r"rank_fraction 0.9 keeps more .* <= 1/2$"):
            run_merge(_write(tmp_path / f"{method}.yml", {
                "merge_method": method, "base_model": str(base),
                "models": [{"model": str(a)}, {"model": str(b)}],
                "parameters": {"rank_fraction": 0.9},
            }), out)  # fmt: skip
        assert _nothing_written(tmp_path, out)


def test_unreadable_weights_and_configs_are_one_line(
    specialists: list[Path], tmp_path: Path
) -> None:
    """A weights file that is not safetensors (here a Git LFS pointer), an index whose weight_map
    is not a mapping, a LoRA config without its rank: tracebacks (SafetensorError, AttributeError,
    KeyError), now one line naming the file; nothing is written."""
    import shutil

    base, a, _ = specialists
    out = tmp_path / "out"

    def merge(model: Path) -> None:
        run_merge(_write(tmp_path / "c.yml", {
            "merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(model), "parameters": {"weight": 1.0}}],
        }), out)  # fmt: skip

    pointer = shutil.copytree(a, tmp_path / "pointer")
    (pointer / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n"
    )
    with pytest.raises(PoiseError, match=r"^model .*: .*model.safetensors is not a readable "):
        merge(pointer)
    assert _nothing_written(tmp_path, out)
    index = shutil.copytree(a, tmp_path / "index")
    (index / "model.safetensors.index.json").write_text('{"weight_map": ["model.safetensors"]}')
    with pytest.raises(PoiseError, match=r"index.json: not a safetensors index"):
        merge(index)
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(PoiseError, match=r"adapter_config.json: not a peft LoRA config"):
        merge(lora)
    assert _nothing_written(tmp_path, out)


def test_a_randomized_svd_draws_from_the_configs_top_level_seed(
    specialists: list[Path], tmp_path: Path
) -> None:
    # TSV-M with svd: randomized drew its sketch from seed 0 whatever the config's `seed` said
    # (read by DARE and DELLA only); a seed the method is given itself still wins
    base, a, b = specialists

    def merged(name: str, seed: int | None, method_seed: int | None = None) -> dict:
        parameters: dict[str, object] = {"svd": "randomized", "rank_fraction": 0.25}
        if method_seed is not None:
            parameters["seed"] = method_seed
        config: dict[str, object] = {
            "merge_method": "tsv_m", "base_model": str(base), "parameters": parameters,
            "models": [{"model": str(a)}, {"model": str(b)}],
        }  # fmt: skip
        if seed is not None:
            config["seed"] = seed
        run_merge(_write(tmp_path / f"{name}.yml", config), tmp_path / name)
        return _state(tmp_path / name)

    zero, default, one, own = (
        merged("zero", 0),
        merged("default", None),
        merged("one", 1),
        merged("own", 0, method_seed=1),
    )
    matrix = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(zero[matrix], default[matrix])
    assert not torch.equal(zero[matrix], one[matrix])
    assert torch.equal(one[matrix], own[matrix])


def _float32_copy(folder: Path, out: Path) -> Path:
    """``folder``'s model (e.g. a bfloat16 copy) saved in float32: the same values, widened."""
    import shutil

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
    return out


def test_dtype_float32_trims_bfloat16_checkpoints_as_their_float32_copies(
    specialists: list[Path], tmp_path: Path
) -> None:
    """mergekit computes in its config's ``dtype``: with ``dtype: float32`` the task vectors of
    bfloat16 checkpoints are exact float32 differences, ranked as such, so the merge equals the
    merge of float32 copies of the same checkpoints (the half-precision ranking of
    poise.merge.task_arithmetic applies only without it), also when the output is bfloat16."""
    from safetensors.torch import load_file

    halves = [_bfloat16_copy(p, tmp_path / f"h{i}") for i, p in enumerate(specialists)]
    wides = [_float32_copy(p, tmp_path / f"w{i}") for i, p in enumerate(halves)]
    merged = {}
    for label, (base, a, b) in (("half", halves), ("wide", wides)):
        run_merge(_write(tmp_path / f"{label}.yml", {
            "merge_method": "ties", "base_model": str(base), "dtype": "float32",
            "out_dtype": "bfloat16",
            "models": [{"model": str(a), "parameters": {"weight": 0.6, "density": 0.3}},
                       {"model": str(b), "parameters": {"weight": 0.4, "density": 0.3}}],
        }), tmp_path / label)  # fmt: skip
        merged[label] = load_file(tmp_path / label / "model.safetensors")
    for name, tensor in merged["wide"].items():
        assert torch.equal(merged["half"][name], tensor), name


def test_the_shard_index_holds_the_total_size_and_no_shard_passes_the_shard_size(
    specialists: list[Path], tmp_path: Path
) -> None:
    """``metadata.total_size`` of the index is the bytes of every tensor, as transformers'
    ``save_pretrained`` writes it. ``shard_size`` is a limit, as transformers'
    ``max_shard_size``: a shard's tensors add up to at most that many bytes, and only a single
    tensor larger than it stands alone above it."""
    from safetensors.torch import load_file

    base, a, b = specialists
    out = tmp_path / "out"
    result = run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "task_arithmetic", "base_model": str(base),
        "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                   {"model": str(b), "parameters": {"weight": 0.5}}],
    }), out, shard_size=40_000)  # fmt: skip
    assert len(result.files) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    tensors = [t for f in result.files for t in load_file(out / f).values()]
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors)
    assert len(result.files) > 2
    for file_name in result.files:
        tensors = list(load_file(out / file_name).values())
        size = sum(t.numel() * t.element_size() for t in tensors)
        assert size <= 40_000 or len(tensors) == 1, (file_name, size, len(tensors))


def test_an_integer_buffer_that_differs_between_models_is_the_bases_not_merged(
    specialists: list[Path], tmp_path: Path
) -> None:
    """Integer buffers (a step counter) are copied from the base, whatever the models store:
    averaged they were 8 and 9 (or refused), not the base's 7 and 8."""
    import shutil

    from safetensors.torch import load_file, save_file

    base, a, _ = specialists
    copies = []
    for source, step in ((base, [7, 8]), (a, [9, 10])):
        folder = tmp_path / source.name
        shutil.copytree(source, folder)
        weights = load_file(folder / "model.safetensors")
        weights["a_step"] = torch.tensor(step, dtype=torch.int64)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        copies.append(folder)
    out = tmp_path / "out"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "linear", "base_model": str(copies[0]),
        "models": [{"model": str(copies[0]), "parameters": {"weight": 0.5}},
                   {"model": str(copies[1]), "parameters": {"weight": 0.5}}],
    }), out)  # fmt: skip
    merged = load_file(out / "model.safetensors")
    assert merged["a_step"].dtype == torch.int64 and merged["a_step"].tolist() == [7, 8]


def test_rows_a_model_lacks_take_the_bases_so_its_task_vector_is_0_there(
    specialists: list[Path], specialist_builder: Callable[..., Path], tmp_path: Path
) -> None:
    """Base and tokenizer source both have 4 tokens more than model a: on those rows a's task
    vector is 0 (its missing rows come from the base, not from the tokenizer source), so the
    output is base + 0.5 (source - base) there, not base + 1.0 (source - base)."""
    base, a, _ = specialists
    wide_base = specialist_builder(base, tmp_path / "wide_base", seed=5, extra_tokens=4)
    source = specialist_builder(base, tmp_path / "source", seed=6, extra_tokens=4)
    out = tmp_path / "out"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "task_arithmetic", "base_model": str(wide_base),
        "tokenizer_source": str(source),
        "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                   {"model": str(source), "parameters": {"weight": 0.5}}],
    }), out)  # fmt: skip
    merged, sa, ss, sb = (_state(p) for p in (out, a, source, wide_base))
    vocab = sa["model.embed_tokens.weight"].shape[0]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        new_b, new_s = sb[name][vocab:], ss[name][vocab:]
        assert not torch.allclose(new_b, new_s)
        assert torch.allclose(merged[name][vocab:], new_b + 0.5 * (new_s - new_b), atol=1e-6)
        shared = sb[name][:vocab] + 0.5 * (sa[name] - sb[name][:vocab])
        shared = shared + 0.5 * (ss[name][:vocab] - sb[name][:vocab])
        assert torch.allclose(merged[name][:vocab], shared, atol=1e-6)


def test_the_config_dtype_is_the_weights_not_a_float32_tensor_stored_last(
    specialists: list[Path], tmp_path: Path
) -> None:
    """A bfloat16 model that keeps one small tensor in float32 (stored last, as a float32
    router or scale can be): the config says bfloat16, the dtype of its weights, and that tensor
    is written in float32, as the base stores it."""
    scale = torch.tensor([0.5, 2.0], dtype=torch.float32)
    merged, config = _merge_with_tensor(specialists[:2], tmp_path, "zz_scale", scale, bf16=True)
    assert merged["zz_scale"].dtype == torch.float32
    assert merged["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert config["dtype"] == "bfloat16"


def test_an_embedding_of_another_hidden_size_is_refused(
    specialists: list[Path], tmp_path: Path
) -> None:
    """Only the vocabulary (first) axis of an embedding may differ between models."""
    from safetensors.torch import load_file, save_file

    base, a, _ = specialists
    broken = tmp_path / "broken"
    broken.mkdir()
    weights = load_file(a / "model.safetensors")
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"][:, :16].clone()
    save_file(weights, broken / "model.safetensors")
    out = tmp_path / "out"
    with pytest.raises(PoiseError, match=r"model.embed_tokens.weight.*\[110, 16\]"):
        run_merge(_write(tmp_path / "c.yml", {
            "merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(broken), "parameters": {"weight": 1.0}}],
        }), out)  # fmt: skip
    assert not out.exists()


def test_a_config_that_names_torch_dtype_gets_the_dtype_written_under_that_key(
    specialists: list[Path], tmp_path: Path
) -> None:
    """A config of transformers 4.x says ``torch_dtype``: the output's config says the dtype
    written there, not a second, contradicting ``dtype`` key."""
    import shutil

    base, a, _ = specialists
    old = tmp_path / "old"
    shutil.copytree(base, old)
    config = json.loads((old / "config.json").read_text())
    config["torch_dtype"] = config.pop("dtype")
    (old / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "task_arithmetic", "base_model": str(old), "out_dtype": "bfloat16",
        "models": [{"model": str(a), "parameters": {"weight": 1.0}}],
    }), out)  # fmt: skip
    written = json.loads((out / "config.json").read_text())
    assert written["torch_dtype"] == "bfloat16"
    assert "dtype" not in written


def test_each_tensor_of_a_random_merge_draws_its_own_mask(
    specialists: list[Path], tmp_path: Path
) -> None:
    """DARE drops entries independently (arXiv 2311.03099 eq. 2): two tensors of one shape
    get different masks (each tensor's seed is drawn from the config's seed and its name)."""
    from safetensors.torch import load_file

    base, a, _ = specialists
    out = tmp_path / "out"
    run_merge(_write(tmp_path / "c.yml", {
        "merge_method": "dare_linear", "base_model": str(base), "seed": 3,
        "models": [{"model": str(a), "parameters": {"weight": 1.0, "density": 0.5}}],
    }), out)  # fmt: skip
    merged, original = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    names = [f"model.layers.{i}.self_attn.{p}.weight" for i in (0, 1) for p in ("q_proj", "o_proj")]
    kept = [merged[n] != original[n] for n in names]  # [32, 32] bool each
    assert all(0.3 < float(k.float().mean()) < 0.7 for k in kept)
    assert len({tuple(k.flatten().tolist()) for k in kept}) == len(names)


def test_the_config_dtype_is_the_weights_not_an_integer_buffers(
    specialists: list[Path], tmp_path: Path
) -> None:
    """An integer buffer stored first (a step counter, BERT's position ids) is copied as it is;
    the config's dtype is that of the floating-point weights."""
    step = torch.tensor([7, 8], dtype=torch.int64)
    merged, config = _merge_with_tensor(specialists[:2], tmp_path, "a_step", step, bf16=False)
    assert merged["a_step"].tolist() == [7, 8]
    assert config["dtype"] == "float32"
