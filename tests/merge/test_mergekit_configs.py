"""Configs as users write them for mergekit (its README and examples/, model cards), run end to
end by ``poise merge`` and by mergekit 0.1.5's own ``run_merge`` (CPU, no lazy unpickling) on the
same tiny float32 models, written to disk, read back and compared tensor by tensor.

This checks the YAML plumbing the per-tensor tests of test_methods.py do not: per-layer gradients
(``t = i / (L - 1)`` over 4 layers), ``{filter, value}`` entries, the base listed among the
models, ``BASE+LORA`` models and bases, a tied-embedding (Qwen2-like) model without an LM head.
Inputs are float32 with noise drawn in float32, except in the bfloat16 tests at the end: there
task vectors are quantised, many magnitudes tie at the trims' thresholds and many votes cancel
exactly, and poise takes mergekit's decisions on them (``poise.merge.task_arithmetic``). The
random methods (DARE, DELLA) are compared with mergekit's generator reseeded, as each tensor's
merge starts, with poise's per-tensor seed.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from poise.merge.config import run_merge

pytestmark = pytest.mark.slow

mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_config = pytest.importorskip("mergekit.config")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _save(model: Any, out: Path, tokenizer_from: Path) -> Path:
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copyfile(tokenizer_from / name, out / name)
    return out


def _family(config: Any, root: Path, tokenizer_from: Path, seed: int) -> dict[str, Path]:
    """A base of ``config`` and three copies with float32 Gaussian noise on every weight."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(config)
    folders = {"base": _save(base, root / "base", tokenizer_from)}
    for i, name in enumerate(("a", "b", "c")):
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(base.state_dict())
        g = torch.Generator().manual_seed(seed * 10 + i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        folders[name] = _save(model, root / name, tokenizer_from)
    return folders


@pytest.fixture(scope="module")
def zoo(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Llama (4 layers, untied) and Qwen2 (3 layers, tied embeddings, q/k/v biases) families
    sharing the tiny tokenizer and its chat template, and a peft LoRA on the Llama base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

    root = tmp_path_factory.mktemp("zoo")
    llama = AutoConfig.from_pretrained(tiny_hf_model_dir)
    llama.num_hidden_layers = 4
    qwen = Qwen2Config(
        vocab_size=llama.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, initializer_range=0.2,
        bos_token_id=llama.bos_token_id, eos_token_id=llama.eos_token_id,
    )  # fmt: skip
    zoo = {f"llama-{k}": v for k, v in _family(llama, root / "llama", tiny_hf_model_dir, 1).items()}
    zoo |= {f"qwen-{k}": v for k, v in _family(qwen, root / "qwen", tiny_hf_model_dir, 2).items()}
    model = AutoModelForCausalLM.from_pretrained(zoo["llama-base"])
    lora = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    lora.save_pretrained(root / "lora")
    zoo["lora"] = root / "lora"
    return zoo


# (id, config with {name} placeholders, options poise needs to take mergekit's rule)
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    (  # mergekit README: TIES with a density gradient, a weight gradient and a filter
        "readme-ties",
        """
models:
  - model: {llama-a}
    parameters: {{density: [1, 0.7, 0.1], weight: 1.0}}
  - model: {llama-b}
    parameters: {{density: 0.5, weight: [0, 0.3, 0.7, 1]}}
  - model: {llama-c}
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: {llama-base}
parameters: {{normalize: true, int8_mask: true}}
dtype: float32
""",
        {"sign_election": "weighted"},
    ),
    (  # mergekit examples/ties.yml (ranked_ties there): three-point gradients per model
        "examples-ties-gradients",
        """
models:
  - model: {llama-a}
    parameters: {{density: [0.8, 0.3, 0.1], weight: [1.0, 0.8, 0.5]}}
  - model: {llama-b}
    parameters: {{density: [0.1, 0.4, 0.1], weight: [0.2, 0.8, 0.1]}}
  - model: {llama-c}
    parameters: {{density: [0.1, 0.2, 0.6], weight: [0.5, 0.8, 1.0]}}
merge_method: ties
base_model: {llama-base}
dtype: float32
""",
        {"sign_election": "weighted"},
    ),
    (  # model cards' gradient SLERP (slices covering every layer, rewritten as models:)
        "card-slerp-filters",
        """
models:
  - model: {qwen-a}
  - model: {qwen-b}
merge_method: slerp
base_model: {qwen-a}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
""",
        {},
    ),
    (  # model card: V-shaped SLERP, the base listed among the models
        "card-slerp-v-shape",
        """
models:
  - model: {llama-a}
  - model: {llama-b}
base_model: {llama-b}
merge_method: slerp
parameters: {{t: [0, 0.5, 1, 0.5, 0]}}
dtype: float32
""",
        {},
    ),
    (  # model card: DARE-linear at density 1 without rescaling (deterministic)
        "card-dare-linear",
        """
models:
  - model: {llama-a}
    parameters: {{weight: 1.0, density: 1.0}}
  - model: {llama-b}
    parameters: {{weight: 0.8, density: 1.0}}
base_model: {llama-base}
merge_method: dare_linear
parameters: {{lambda: 1.0, rescale: false}}
dtype: float32
""",
        {},
    ),
    (  # breadcrumbs-TIES with name filters and a gradient inside a filter
        "breadcrumbs-ties-filters",
        """
models:
  - model: {llama-a}
    parameters:
      weight:
        - filter: self_attn
          value: [0.2, 0.6]
        - filter: mlp
          value: 0.7
        - value: 0.5
      density: 0.9
      gamma: 0.02
  - model: {llama-b}
    parameters: {{weight: 0.5, density: 0.8, gamma: 0.01}}
base_model: {llama-base}
merge_method: breadcrumbs_ties
parameters: {{normalize: true}}
dtype: float32
""",
        {"sign_election": "weighted"},
    ),
    (  # Model Stock on a tied-embedding model
        "model-stock-tied",
        """
models:
  - model: {qwen-a}
  - model: {qwen-b}
  - model: {qwen-c}
base_model: {qwen-base}
merge_method: model_stock
dtype: float32
""",
        {},
    ),
    (  # a LoRA named as MODEL+LORA
        "task-arithmetic-model-plus-lora",
        """
models:
  - model: {llama-base}+{lora}
    parameters: {{weight: 0.7}}
  - model: {llama-a}
    parameters: {{weight: 0.5}}
base_model: {llama-base}
merge_method: task_arithmetic
dtype: float32
""",
        {},
    ),
    (  # model card (Nemesia): NuSLERP of task vectors, one angle per column, the base listed
        # among the models with a weight (it is the base: its weight is not used)
        "card-nuslerp-base-listed",
        """
models:
  - model: {llama-a}
    parameters: {{weight: 0.6}}
  - model: {llama-b}
    parameters: {{weight: 0.2}}
  - model: {llama-base}
    parameters: {{weight: 1.0}}
merge_method: nuslerp
base_model: {llama-base}
parameters: {{nuslerp_flatten: false, nuslerp_row_wise: true}}
dtype: float32
""",
        {},
    ),
    (  # NuSLERP of the models themselves (no base), whole tensors, a weight gradient and filter
        "nuslerp-no-base-gradient",
        """
models:
  - model: {llama-a}
    parameters: {{weight: [1, 0.2, 0.5, 0.0]}}
  - model: {llama-c}
    parameters:
      weight:
        - filter: mlp
          value: 0.3
        - value: 1
merge_method: nuslerp
dtype: float32
""",
        {},
    ),
    (  # NuSLERP of task vectors one row at a time, on a tied-embedding model
        "nuslerp-tied-rows",
        """
models:
  - model: {qwen-a}
    parameters: {{weight: 0.7}}
  - model: {qwen-b}
    parameters: {{weight: 0.3}}
merge_method: nuslerp
base_model: {qwen-base}
parameters: {{nuslerp_flatten: false}}
dtype: float32
""",
        {},
    ),
    (  # the base itself given as BASE+LORA: task vectors from the adapted base
        "task-arithmetic-base-plus-lora",
        """
models:
  - model: {llama-a}
    parameters: {{weight: 0.7}}
  - model: {llama-c}
    parameters: {{weight: 0.5}}
base_model: {llama-base}+{lora}
merge_method: task_arithmetic
dtype: float32
""",
        {},
    ),
]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.mark.parametrize(
    ("text", "poise_options"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS]
)
def test_a_users_mergekit_config_gives_mergekits_tensors(
    zoo: dict[str, Path], tmp_path: Path, text: str, poise_options: dict[str, Any]
) -> None:
    config = yaml.safe_load(text.format(**{k: str(v) for k, v in zoo.items()}))
    options = mergekit_merge.MergeOptions(
        lora_merge_cache=str(tmp_path / "lora-cache"), lazy_unpickle=False, cuda=False
    )
    mergekit_merge.run_merge(
        mergekit_config.MergeConfiguration.model_validate(config), str(tmp_path / "mk"), options
    )
    ours = dict(config, parameters={**(config.get("parameters") or {}), **poise_options})
    run_merge(ours, tmp_path / "poise")
    expected, got = _weights(tmp_path / "mk"), _weights(tmp_path / "poise")
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def test_a_merge_of_a_tied_model_loads_and_keeps_the_tokenizer_and_template(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    """The merged folder is a plain transformers model: the tied head comes from the merged
    embeddings, the tokenizer and chat template are the base's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "m"
    run_merge({
        "merge_method": "ties", "base_model": str(zoo["qwen-base"]),
        "models": [{"model": str(zoo[k]), "parameters": {"weight": 1.0, "density": 0.5}}
                   for k in ("qwen-a", "qwen-b")],
        "tokenizer_source": "base", "chat_template": "auto", "dtype": "bfloat16",
    }, out)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    source, merged = (
        AutoTokenizer.from_pretrained(zoo["qwen-base"]),
        AutoTokenizer.from_pretrained(out),
    )
    assert merged.apply_chat_template(chat, tokenize=False) == source.apply_chat_template(
        chat, tokenize=False
    )
    assert merged.get_vocab() == source.get_vocab()


def test_a_lora_folder_alone_on_an_adapted_base_asks_for_model_plus_lora(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    """With ``base_model: BASE+LORA`` a bare LoRA folder has no single model to apply to."""
    from poise.errors import PoiseError

    config = {
        "merge_method": "task_arithmetic",
        "base_model": f"{zoo['llama-base']}+{zoo['lora']}",
        "models": [{"model": str(zoo["lora"]), "parameters": {"weight": 1.0}}],
    }
    with pytest.raises(PoiseError, match=r"is a LoRA adapter; .* or name it MODEL\+LORA$"):
        run_merge(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- bfloat16 checkpoints: magnitude ties and exactly cancelling votes


def _bf16_family(config: Any, root: Path, tokenizer_from: Path, seed: int) -> dict[str, Path]:
    """A bfloat16 base of ``config`` and three bfloat16 copies whose noise is a multiple of 2^-8
    (at most 6 steps): most task-vector magnitudes tie with many others."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    folders = {"base": _save(base, root / "base", tokenizer_from)}
    for i, name in enumerate(("a", "b", "c")):
        model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
        model.load_state_dict(base.state_dict())
        g = torch.Generator().manual_seed(seed * 10 + i)
        with torch.no_grad():
            for p in model.parameters():
                steps = torch.randint(-6, 7, p.shape, generator=g)
                p.copy_((p.float() + steps / 256).to(torch.bfloat16))
        folders[name] = _save(model, root / name, tokenizer_from)
    return folders


@pytest.fixture(scope="module")
def bf16_zoo(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_hf_model_dir)
    config.num_hidden_layers = 2
    return _bf16_family(config, tmp_path_factory.mktemp("bf16"), tiny_hf_model_dir, 7)


def _bf16_spacing(x: torch.Tensor) -> torch.Tensor:
    """The distance between adjacent bfloat16 numbers at ``|x|`` (float32 ``[*shape]``)."""
    return torch.ldexp(torch.ones_like(x), torch.frexp(x.abs().clamp_min(2**-100)).exponent - 8)


BF16_CONFIGS = [
    ("ties", {"weight": 1.0, "density": [0.3, 0.5, 0.7]}, {}, {"normalize": True}),
    ("ties", {"weight": [0.5, 0.3, 0.9], "density": 0.4}, {"sign_election": "weighted"}, {}),
    ("breadcrumbs", {"weight": [0.5, 0.3, 0.9], "density": 0.6, "gamma": 0.05}, {}, {}),
    ("breadcrumbs_ties", {"weight": 1.0, "density": 0.8, "gamma": 0.02}, {}, {}),
]


BF16_MODELS = ("a", "b", "c")


def _bf16_config(
    zoo: dict[str, Path], method: str, per_model: dict[str, Any], shared: dict[str, Any], **top: Any
) -> dict[str, Any]:
    """A merge of ``zoo``'s three models onto its base: ``per_model`` values are one for all,
    or a list of one per model; ``top`` the config's other keys (``dtype``, ``out_dtype``)."""
    return {
        "merge_method": method,
        "base_model": str(zoo["base"]),
        "models": [
            {
                "model": str(zoo[m]),
                "parameters": {k: v[i] if isinstance(v, list) else v for k, v in per_model.items()},
            }
            for i, m in enumerate(BF16_MODELS)
        ],
        "parameters": shared,
        **top,
    }


# every case of BF16_CONFIGS, as the tests' (method, per_model, poise_options, shared)
bf16_cases = pytest.mark.parametrize(
    ("method", "per_model", "poise_options", "shared"),
    BF16_CONFIGS,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(BF16_CONFIGS)],
)


@bf16_cases
def test_a_bfloat16_merge_keeps_mergekits_tied_entries(
    bf16_zoo: dict[str, Path],
    tmp_path: Path,
    method: str,
    per_model: dict[str, Any],
    poise_options: dict[str, Any],
    shared: dict[str, Any],
) -> None:
    """On bfloat16 checkpoints mergekit subtracts in bfloat16 and sorts the rounded magnitudes
    with ``argsort``; poise keeps the same tied entries and elects the same signs, so the merges
    differ only by mergekit's bfloat16 arithmetic: at most one bfloat16 step of the result plus
    two of the largest task-vector entry per model. Ranking the exact float32 differences with ``topk``
    kept other tied entries (a whole task-vector entry, 2^-8 and more, off)."""
    models = BF16_MODELS
    config = _bf16_config(bf16_zoo, method, per_model, shared, dtype="bfloat16")
    options = mergekit_merge.MergeOptions(lazy_unpickle=False, cuda=False)
    mergekit_merge.run_merge(
        mergekit_config.MergeConfiguration.model_validate(config), str(tmp_path / "mk"), options
    )
    run_merge(dict(config, parameters={**shared, **poise_options}), tmp_path / "poise")
    expected, got = _weights(tmp_path / "mk"), _weights(tmp_path / "poise")
    base = _weights(bf16_zoo["base"])
    vectors = {  # the exact task vectors, float32
        m: {k: v.float() - base[k].float() for k, v in _weights(bf16_zoo[m]).items()}
        for m in models
    }
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype == torch.bfloat16, name
        mk, ours = tensor.float(), got[name].float()
        # mergekit rounds each task vector, weight and product to bfloat16 (1.5 steps of the
        # largest term, at most) and the sum; poise and mergekit both round the result
        largest = torch.stack([vectors[m][name] for m in models]).abs().amax(dim=0)
        bound = _bf16_spacing(torch.maximum(mk.abs(), ours.abs())) + 2 * len(models) * (
            _bf16_spacing(largest)
        )
        off = (ours - mk).abs() > bound
        assert not off.any(), (
            f"{name}: {int(off.sum())} of {off.numel()} entries off mergekit's "
            f"(largest {(ours - mk).abs().max().item():.3g})"
        )
        assert not torch.equal(ours, base[name].float()), name  # the merge moved


@bf16_cases
def test_bfloat16_checkpoints_computed_in_float32_are_ranked_in_float32(
    bf16_zoo: dict[str, Path],
    tiny_hf_model_dir: Path,
    tmp_path: Path,
    method: str,
    per_model: dict[str, Any],
    poise_options: dict[str, Any],
    shared: dict[str, Any],
) -> None:
    """``dtype: float32`` is mergekit's compute dtype: it casts the bfloat16 checkpoints to
    float32 before it subtracts, so its task vectors are exact and ranked in float32. poise
    ranked them rounded to the checkpoints' bfloat16 whatever ``dtype`` said (0.04 off mergekit
    on `benchmarks/merge_throughput.py`'s TIES, written in bfloat16). Now the merge is that of
    float32 copies of the checkpoints, to the bit."""
    from transformers import AutoModelForCausalLM

    copies = {
        name: _save(
            AutoModelForCausalLM.from_pretrained(bf16_zoo[name]).to(torch.float32),
            tmp_path / f"f32-{name}",
            tiny_hf_model_dir,
        )
        for name in ("base", *BF16_MODELS)
    }

    options = {**shared, **poise_options}
    for zoo, out in ((bf16_zoo, "from-bf16"), (copies, "from-f32")):
        config = _bf16_config(
            zoo, method, per_model, options, dtype="float32", out_dtype="bfloat16"
        )
        run_merge(config, tmp_path / out)
    got, expected = _weights(tmp_path / "from-bf16"), _weights(tmp_path / "from-f32")
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype == torch.bfloat16, name
        assert torch.equal(got[name], tensor), name


# -- random methods end to end: mergekit reseeded per tensor as poise seeds


def _per_tensor_seed(seed: int, name: str) -> int:
    """poise's documented per-tensor seed, written out here so that a change to poise's seeding
    (``poise.merge.task_arithmetic.tensor_seed``) fails the test below."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


RANDOM_SEED = 11
RANDOM_CONFIGS = [  # (method, per-model options, options poise needs to take mergekit's rule)
    ("dare_linear", {"weight": [0.5, 0.3, 0.9], "density": [[0.3, 0.6], 0.5, 0.7]}, {}),
    (
        "dare_ties",
        {"weight": [0.5, 0.3, 0.9], "density": [[0.3, 0.6], 0.5, 0.7]},
        {"sign_election": "weighted"},
    ),
    (
        "della",
        {"weight": [0.5, 0.3, 0.9], "density": [[0.3, 0.6], 0.5, 0.7], "epsilon": 0.1},
        {"sign_election": "weighted"},
    ),
    (
        "della_linear",
        {"weight": [0.5, 0.3, 0.9], "density": [[0.3, 0.6], 0.5, 0.7], "epsilon": 0.1},
        {},
    ),
]


@pytest.mark.parametrize(
    ("method", "per_model", "poise_options"), RANDOM_CONFIGS, ids=[c[0] for c in RANDOM_CONFIGS]
)
def test_a_random_merge_equals_mergekit_reseeded_per_tensor(
    zoo: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    per_model: dict[str, Any],
    poise_options: dict[str, Any],
) -> None:
    """DARE and DELLA draw their masks from one generator per tensor, seeded with the config's
    ``seed`` mixed with the tensor's name; mergekit seeds torch's global generator once and draws
    in the order it processes tensors. Seeding mergekit's generator with poise's seed as each
    tensor's merge starts (the models then draw in config order from it, as poise's do) makes
    the two merges of a whole model equal, so poise's masks are mergekit's Bernoulli draws,
    tensor by tensor, for a density gradient too. ``rescale: true`` is mergekit's L1 rescale
    (poise's ``rescale_norm: l1``)."""
    from mergekit.merge_methods import generalized_task_arithmetic as mk_gta

    names: list[str] = []
    draws = 0
    original_merge_group = mk_gta.GeneralizedTaskArithmeticMerge.merge_group
    original_sparsify = mk_gta.sparsify

    def merge_group(self: Any, group: Any, /, **parameters: Any) -> torch.Tensor:
        names.append(group.metadata.name)
        torch.manual_seed(_per_tensor_seed(RANDOM_SEED, group.metadata.name))
        return original_merge_group(self, group, **parameters)

    def sparsify(*args: Any, **kwargs: Any) -> torch.Tensor:
        nonlocal draws
        draws += 1
        return original_sparsify(*args, **kwargs)

    monkeypatch.setattr(mk_gta.GeneralizedTaskArithmeticMerge, "merge_group", merge_group)
    monkeypatch.setattr(mk_gta, "sparsify", sparsify)

    models = ["llama-a", "llama-b", "llama-c"]
    config = {
        "merge_method": method,
        "base_model": str(zoo["llama-base"]),
        "models": [
            {
                "model": str(zoo[m]),
                "parameters": {k: v[i] if isinstance(v, list) else v for k, v in per_model.items()},
            }
            for i, m in enumerate(models)
        ],
        "parameters": {"rescale": True},
        "dtype": "float32",
    }
    with torch.random.fork_rng(devices=[]):
        mergekit_merge.run_merge(
            mergekit_config.MergeConfiguration.model_validate(config),
            str(tmp_path / "mk"),
            mergekit_merge.MergeOptions(lazy_unpickle=False, cuda=False),
        )
    ours = dict(
        config,
        parameters={"rescale": True, "rescale_norm": "l1", **poise_options},
        seed=RANDOM_SEED,
    )
    run_merge(ours, tmp_path / "poise")
    expected, got = _weights(tmp_path / "mk"), _weights(tmp_path / "poise")
    assert set(got) == set(expected)
    # the reseeding ran for every tensor, each model drawing once
    assert sorted(names) == sorted(expected) and draws == len(models) * len(expected)
    task_arithmetic = {  # the same weights, nothing dropped
        "merge_method": "task_arithmetic",
        "base_model": config["base_model"],
        "models": [
            {"model": m["model"], "parameters": {"weight": m["parameters"]["weight"]}}
            for m in config["models"]
        ],
        "dtype": "float32",
    }
    run_merge(task_arithmetic, tmp_path / "dense")
    dense = _weights(tmp_path / "dense")
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype == torch.float32, name
        torch.testing.assert_close(
            got[name], tensor, atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )
        assert not torch.allclose(got[name], dense[name], atol=1e-4), name  # the masks dropped
