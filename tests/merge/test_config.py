"""Config validation: every option's value is checked against its natural range before any
model is opened (the models named here do not exist, so nothing could be read)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from poise.errors import PoiseError
from poise.merge.config import load_config

TIES = "merge_method: ties\nbase_model: base\n"
DELLA = "merge_method: della\nbase_model: base\n"


def _refusal(tmp_path: Path, text: str) -> str:
    """What loading the config ``text`` is refused with, after the file's path and a colon."""
    path = tmp_path / "merge.yml"
    path.write_text(text)
    with pytest.raises(PoiseError) as caught:
        load_config(path)
    prefix = f"{path}: "
    assert str(caught.value).startswith(prefix)
    return str(caught.value).removeprefix(prefix)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (TIES + "models: [{model: a, parameters: {weight: 1, density: 1.5}}]\n",
         "models[0] ('a').parameters.density: 1.5 is outside (0, 1]"),
        (TIES + "models: [{model: a, parameters: {weight: 1, density: -0.5}}]\n",
         "models[0] ('a').parameters.density: -0.5 is outside (0, 1]"),
        ("merge_method: dare_linear\nbase_model: base\n"
         "models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\n"
         "parameters: {density: 0}\n",
         "parameters.density: 0 is outside (0, 1]"),
        (TIES + "models: [{model: a, parameters: {weight: 1, density: [1.0, 0.5, 1.2]}}]\n",
         "models[0] ('a').parameters.density[2]: 1.2 is outside (0, 1]"),
        (TIES + "models: [{model: a, parameters: {density: 0.5, "
         "weight: [{filter: self_attn, value: .nan}, {value: 1}]}}]\n",
         "models[0] ('a').parameters.weight[0] (filter 'self_attn'): nan is not a finite number"),
        (TIES + "models: [{model: a, parameters: {weight: 1, density: 0.5}}]\n"
         "parameters: {lambda: .inf}\n",
         "parameters.lambda: inf is not a finite number"),
        ("merge_method: breadcrumbs\nbase_model: base\n"
         "models: [{model: a, parameters: {weight: 1, density: 0.9, gamma: 1.0}}]\n",
         "models[0] ('a').parameters.gamma: 1.0 is outside [0, 1)"),
        ("merge_method: slerp\nbase_model: base\nmodels: [{model: a}]\nparameters: {t: 1.2}\n",
         "parameters.t: 1.2 is outside [0, 1]"),
        ("merge_method: slerp\nbase_model: base\nmodels: [{model: a}]\n"
         "parameters: {t: [0, {filter: mlp, value: -0.1}]}\n",
         "parameters.t[1] (filter 'mlp'): -0.1 is outside [0, 1]"),
        (DELLA + "models: [{model: a, parameters: {weight: 1, density: 0.5, epsilon: -0.1}}]\n",
         "models[0] ('a').parameters.epsilon: -0.1 is outside [0, 1)"),
        (DELLA + "models: [{model: a, parameters: {weight: 1, density: 0.9, epsilon: 0.15}}]\n",
         "model 'a': della needs 0 < density - epsilon and density + epsilon < 1, "
         "got density 0.9 and epsilon 0.15"),
        (DELLA + "models: [{model: a, parameters: {weight: 1, density: 0.1}}]\n",
         "model 'a': della needs 0 < density - epsilon and density + epsilon < 1, "
         "got density 0.1 and epsilon 0.15"),  # the default epsilon
        ("merge_method: resm\nbase_model: base\nmodels: [{model: a}]\nparameters: {energy: 0}\n",
         "parameters.energy: 0 is outside (0, 1]"),
    ],
)  # fmt: skip
def test_out_of_range_values_are_refused(tmp_path: Path, text: str, message: str) -> None:
    assert _refusal(tmp_path, text) == message


@pytest.mark.parametrize(
    "text",
    [
        TIES + "models: [{model: a, parameters: {weight: -0.5, density: 1}}]\n",  # negation
        TIES + "models: [{model: a, parameters: {weight: 1, density: [1.0, 0.01]}}]\n",
        "merge_method: breadcrumbs\nbase_model: base\n"
        "models: [{model: a, parameters: {weight: 1, density: 0.9, gamma: 0}}]\n",
        "merge_method: slerp\nbase_model: base\nmodels: [{model: a}]\nparameters: {t: [0, 1]}\n",
        DELLA + "models: [{model: a, parameters: {weight: 1, density: 1, epsilon: 0.5}}]\n",
        DELLA + "models: [{model: a, parameters: {weight: 1, density: 0.7, epsilon: 0.1}}]\n",
        # 0 and 1 as false and true, as hand-written mergekit configs have them
        "merge_method: task_arithmetic\nbase_model: base\n"
        "models: [{model: a, parameters: {weight: 1}}]\nparameters: {normalize: 1}\n",
        "merge_method: task_arithmetic\nbase_model: base\n"
        "models: [{model: a, parameters: {weight: 1}}]\nparameters: {normalize: 0}\n",
    ],
)
def test_values_at_the_edges_of_their_ranges_are_accepted(tmp_path: Path, text: str) -> None:
    path = tmp_path / "merge.yml"
    path.write_text(text)
    load_config(path)


TASK = "merge_method: task_arithmetic\nbase_model: base\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (TASK + "models: [{model: a, parameters: {weight: [{filter: 3, value: 1}]}}]\n",
         "models[0] ('a').parameters.weight[0]: filter 3 is not text (a part of tensor names)"),
        (TASK + "models: [{model: a, parameters: {weight: [{filter: [mlp], value: 1}]}}]\n",
         "models[0] ('a').parameters.weight[0]: filter ['mlp'] is not text "
         "(a part of tensor names)"),
        (TASK + "models: [{model: a, parameters: {weight: []}}]\n",
         "models[0] ('a').parameters.weight: an empty list has no value"),
        (TASK + "models: [{model: a, parameters: {weight: [{filter: mlp, value: []}, {value: 1}]}}]\n",
         "models[0] ('a').parameters.weight[0] (filter 'mlp'): an empty list has no value"),
        (TASK + "models: [{model: a, parameters: {weight: [{filter: mlp}]}}]\n",
         "models[0] ('a').parameters.weight[0]: {'filter': 'mlp'} is not a {filter, value} entry"),
        (TASK + "models: [{model: a, parameters: {weight: 1}}]\nparameters: {normalize: maybe}\n",
         "parameters.normalize: 'maybe' is not true or false"),
        (TASK + "models: [{model: a, parameters: {weight: 1}}]\nparameters: {normalize: 0.5}\n",
         "parameters.normalize: 0.5 is not true or false"),
        (TIES + "models: [{model: a, parameters: {weight: 1, density: true}}]\n",
         "models[0] ('a').parameters.density: True is not a number"),
    ],
)  # fmt: skip
def test_values_of_the_wrong_shape_or_type_are_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    """A filter that is not text and an empty list were a TypeError at the first tensor; a
    flag given text was taken as true, a number given true as 1."""
    assert _refusal(tmp_path, text) == message


def test_bad_yaml_and_bytes_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "merge.yml"
    path.write_text("merge_method: ties\nmodels: [{model: a\n")
    with pytest.raises(PoiseError) as caught:
        load_config(path)
    assert (
        str(caught.value)
        == f"{path}:3: invalid YAML (expected ',' or '}}', but got '<stream end>')"
    )
    path.write_bytes(b"merge_method: \xff\xfe\n")
    with pytest.raises(PoiseError, match=r"merge\.yml: not UTF-8 text$"):
        load_config(path)


def test_a_key_given_twice_is_an_error_not_the_last_one(tmp_path: Path) -> None:
    """A plain YAML load kept the second ``models:`` and merged other models than the first
    list names, in silence."""
    path = tmp_path / "merge.yml"
    path.write_text("merge_method: linear\nmodels:\n  - model: a\nmodels:\n  - model: b\n")
    with pytest.raises(PoiseError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}:4: invalid YAML (key 'models' is given twice)"


def test_a_misspelt_model_name_suggests_the_nearest(tmp_path: Path) -> None:
    from poise.merge.config import resolve_model_path

    with pytest.raises(PoiseError, match=r"no such folder; did you mean 'organism-small-safe'"):
        resolve_model_path("organism-small-saf", tmp_path)
    with pytest.raises(PoiseError) as info:  # a path: its folder is simply missing
        resolve_model_path("./nowhere", tmp_path)
    assert str(info.value) == "model './nowhere': no such folder"


SLERP = "merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # model cards' gradient SLERP: layer ranges that a models: list can say
        (SLERP.replace("models: [{model: a}, {model: b}]", "slices: [{sources: [{model: a, "
         "layer_range: [0, 32]}, {model: b, layer_range: [0, 32]}]}]") + "parameters: {t: 0.5}\n",
         "slices (layer-range merges) are not supported by poise merge; where every source's "
         "layer_range covers all the layers, list the models under models: instead"),
        # mergekit's examples/gradient-slerp.yml
        (SLERP + "parameters: {t: [{pattern: self_attn, value: [0, 1]}, {value: 0.5}]}\n",
         "parameters.t[0]: {pattern: 'self_attn'} is the old spelling of a filter; "
         "write filter: 'self_attn'"),
        # mergekit's tokenizer block
        (SLERP + "parameters: {t: 0.5}\ntokenizer: {source: union}\n",
         "tokenizer: (mergekit's tokenizer block) is not supported by poise merge; use "
         "tokenizer_source: base or a model's name instead"),
        # a named template, and inline Jinja: mergekit writes them, poise would drop them
        (SLERP + "parameters: {t: 0.5}\nchat_template: chatml\n",
         "chat_template: 'chatml' is not applied by poise merge, which keeps the tokenizer "
         "source's chat template; remove the key (or write 'auto'), or set tokenizer_source to "
         "a model that has the template you want"),
        (SLERP + "parameters: {t: 0.5}\nchat_template: \"{% for m in messages %}{{ m['content'] }}"
         "{% endfor %}\"\n",
         "chat_template: 'a Jinja template' is not applied by poise merge, which keeps the "
         "tokenizer source's chat template; remove the key (or write 'auto'), or set "
         "tokenizer_source to a model that has the template you want"),
    ],
)  # fmt: skip
def test_mergekit_keys_poise_does_not_apply_are_one_line_saying_what_to_do(
    tmp_path: Path, text: str, message: str
) -> None:
    """A named chat template was accepted and silently not written (the merge kept the
    source's); the tokenizer block was pydantic's "Extra inputs are not permitted"; a
    ``pattern:`` entry and slices said what was wrong but not what to write."""
    assert _refusal(tmp_path, text) == message


def test_chat_template_auto_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "merge.yml"
    path.write_text(SLERP + "parameters: {t: 0.5}\nchat_template: auto\n")
    assert load_config(path).chat_template == "auto"


def test_an_empty_parameters_key_is_no_parameters(tmp_path: Path) -> None:
    """mergekit's examples/ties.yml leaves ``parameters:`` empty (YAML null), and model cards
    leave a model's ``parameters:`` empty after commenting its values out; both were
    "Input should be a valid dictionary"."""
    path = tmp_path / "merge.yml"
    path.write_text(
        TIES + "models:\n  - model: a\n    parameters: {weight: 1, density: 0.5}\n"
        "  - model: base\n    parameters:\nparameters:\ndtype: bfloat16\n"
    )
    config = load_config(path)
    assert config.parameters == {}
    assert config.models[1].parameters == {}


NUSLERP = "merge_method: nuslerp\n"
TWO = "models: [{model: a, parameters: {weight: 0.6}}, {model: b, parameters: {weight: 0.4}}]\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (NUSLERP + "models: [{model: a, parameters: {weight: 1}}]\n",
         "merge method 'nuslerp' needs at least 2 model(s) besides the base, got 1"),
        (NUSLERP + "models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: "
         "{weight: 1}}, {model: c, parameters: {weight: 1}}]\n",
         "merge method 'nuslerp' takes at most 2 model(s) besides the base, got 3"),
        (NUSLERP + "base_model: z\nmodels: [{model: a, parameters: {weight: 1}}, {model: b, "
         "parameters: {weight: 1}}, {model: c, parameters: {weight: 1}}]\n",
         "merge method 'nuslerp' takes at most 2 model(s) besides the base, got 3"),
        (NUSLERP + "models: [{model: a, parameters: {weight: 1}}, {model: b}]\n",
         "model 'b' has no 'weight' parameter"),
        (NUSLERP + TWO + "parameters: {nuslerp_flatten: 'no'}\n",
         "parameters.nuslerp_flatten: 'no' is not true or false"),
        (NUSLERP + TWO + "parameters: {nuslerp_row_wise: 2}\n",
         "parameters.nuslerp_row_wise: 2 is not true or false"),
        (NUSLERP + "models: [{model: a, parameters: {weight: .inf}}, {model: b, parameters: "
         "{weight: 1}}]\n",
         "models[0] ('a').parameters.weight: inf is not a finite number"),
        (NUSLERP + "models: [{model: a, parameters: {weight: 1, nuslerp_flatten: false}}, "
         "{model: b, parameters: {weight: 1}}]\n",
         "models[0] ('a').parameters.nuslerp_flatten: 'nuslerp_flatten' is shared by all models "
         "of 'nuslerp'; set it under the top-level parameters"),
        (NUSLERP + TWO + "parameters: {t: 0.5}\n",
         "unknown parameters key (option of 'nuslerp'): 't' "
         "(known: nuslerp_flatten, nuslerp_row_wise, weight)"),
    ],
)  # fmt: skip
def test_nuslerp_configs_with_other_than_two_models_or_bad_options_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    """NuSLERP merges exactly two models (besides an optional base), each with a weight."""
    assert _refusal(tmp_path, text) == message


def test_a_nuslerp_base_listed_among_the_models_is_the_base(tmp_path: Path) -> None:
    """As in mergekit (and model cards that list the base with a weight): the two others are
    merged, the base's weight is not used."""
    from poise.merge import get_method
    from poise.merge.config import merged_entries

    path = tmp_path / "merge.yml"
    path.write_text(
        NUSLERP + "base_model: z\nmodels: [{model: a, parameters: {weight: 0.6}}, {model: b, "
        "parameters: {weight: 0.2}}, {model: z, parameters: {weight: 1.0}}]\n"
        "parameters: {nuslerp_flatten: false, nuslerp_row_wise: true}\n"
    )
    config = load_config(path)
    assert [e.model for e in merged_entries(config, get_method("nuslerp"))] == ["a", "b"]
    # without a base the two models are merged directly
    path.write_text(NUSLERP + TWO)
    config = load_config(path)
    assert [e.model for e in merged_entries(config, get_method("nuslerp"))] == ["a", "b"]


@pytest.mark.parametrize(
    ("parameters", "warned"),
    [
        ("{nuslerp_row_wise: true}", True),
        ("{nuslerp_row_wise: true, nuslerp_flatten: true}", True),
        ("{nuslerp_row_wise: true, nuslerp_flatten: false}", False),
        ("{nuslerp_row_wise: false}", False),
    ],
)
def test_nuslerp_row_wise_with_flattening_warns_that_it_does_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, parameters: str, warned: bool
) -> None:
    """mergekit ignores ``nuslerp_row_wise`` while ``nuslerp_flatten`` is true (its default); the
    merge says so instead of silently treating each tensor as one vector. The warning comes
    before anything is read (the models here do not exist)."""
    from poise.merge.config import run_merge

    path = tmp_path / "merge.yml"
    path.write_text(NUSLERP + TWO + f"parameters: {parameters}\n")
    with caplog.at_level("WARNING", logger="poise.merge.config"), pytest.raises(PoiseError):
        run_merge(path, tmp_path / "out")
    assert ("nuslerp_row_wise has no effect" in caplog.text) is warned


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (TIES + "models: [{model: a, weigth: 1}]\n",
         "models.0.weigth: Extra inputs are not permitted"),
        ("merge_method: linear\nmodules: {}\n",
         "modules (multi-module merges) are not supported by poise merge"),
        # DELLA's bounds from the top-level density and epsilon, as from a model's own
        (DELLA + "models: [{model: a, parameters: {weight: 1}}]\n"
         "parameters: {density: 0.9, epsilon: 0.15}\n",
         "model 'a': della needs 0 < density - epsilon and density + epsilon < 1, "
         "got density 0.9 and epsilon 0.15"),
        (TIES + "models: [{model: a, parameters: {weight: 1, density: 0.5}}]\nout_dtype: fp8\n",
         "unknown out_dtype 'fp8' (known: bfloat16, float16, float32, float64)"),
        (TIES + "models: [{model: a, parameters: {weight: 1, density: 0.5}}]\n"
         "tokenizer_source: union\n",
         "tokenizer_source: 'union' is not supported; use 'base' or a model"),
        (TASK + "models: [{model: a, parameters: {weight: [{fliter: mlp, value: 1}]}}]\n",
         "models[0] ('a').parameters.weight[0]: {'fliter': 'mlp', 'value': 1} is not a "
         "{filter, value} entry"),
        (TASK + "models: [{model: a, parameters: {weight: null}}]\n",
         "models[0] ('a').parameters.weight: None is not a number"),
        # DELLA's keep probabilities reach 1 at density + epsilon = 1
        (DELLA + "models: [{model: a, parameters: {weight: 1, density: 0.75, epsilon: 0.25}}]\n",
         "model 'a': della needs 0 < density - epsilon and density + epsilon < 1, "
         "got density 0.75 and epsilon 0.25"),
        # '*' is no filter: the place is shown without it
        ("merge_method: slerp\nbase_model: base\nmodels: [{model: a}]\n"
         "parameters: {t: [{filter: '*', value: 2}]}\n",
         "parameters.t[0]: 2 is outside [0, 1]"),
    ],
)  # fmt: skip
def test_other_mistakes_are_one_line_naming_the_file_and_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    assert _refusal(tmp_path, text) == message


@pytest.mark.parametrize(
    "text",
    [
        DELLA + "models: [{model: a, parameters: {weight: 1, density: 0.5, epsilon: 0}}]\n",
        "merge_method: slerp\nbase_model: base\nmodels: [{model: a}]\nparameters: {t: 1}\n",
    ],
)
def test_the_closed_ends_of_epsilon_and_t_are_accepted(tmp_path: Path, text: str) -> None:
    path = tmp_path / "merge.yml"
    path.write_text(text)
    load_config(path)


# -- run_merge's output folder, against closed forms on the tiny specialists


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def test_a_linear_merge_averages_a_listed_base_and_records_the_config(
    specialists: list[Path], tmp_path: Path
) -> None:
    """linear's base is optional: a base_model also listed under models is merged with its own
    weight, as mergekit 0.1.5 does. merge.json has the absolute folders and the config's
    options over the defaults; merge_config.yml reads back as the same config."""
    from poise.merge.config import run_merge

    base, a, _ = specialists
    config = {
        "merge_method": "linear", "base_model": str(base), "name": "soup",
        "models": [{"model": str(base), "parameters": {"weight": 0.25}},
                   {"model": str(a), "parameters": {"weight": 0.5}}],
        "parameters": {"normalize": False}, "dtype": "float32",
    }  # fmt: skip
    out = tmp_path / "out"
    result = run_merge(config, out)
    got, b, m = _tensors(out), _tensors(base), _tensors(a)
    assert result.n_tensors == len(got) == len(b)
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, 0.25 * b[name] + 0.5 * m[name], msg=name)
    record = json.loads((out / "merge.json").read_text())
    assert record["base_model"] == str(base.resolve())
    assert record["models"] == [str(base.resolve()), str(a.resolve())]
    assert record["options"] == {"normalize": False}
    assert load_config(out / "merge_config.yml") == load_config(config)
    assert (out / "README.md").read_text().splitlines()[3] == "# soup"


def test_gradients_filters_and_lambda_reach_each_tensor_and_out_dtype_wins(
    specialists: list[Path], tmp_path: Path
) -> None:
    """task_arithmetic over the 2-layer specialists, the base listed among the models:
    ``base + lambda(t) * (0.5 (a - base) + w_b (b - base))`` with ``t = i / (L - 1)`` in layer i
    and 0 outside the layers, ``lambda = [0.5, 1]`` a top-level gradient, and b's weight 0 on
    self_attn tensors (a filter) and the gradient ``[1, 0]`` elsewhere (``*``). ``out_dtype``
    wins over ``dtype``; the card lists the base once, as the base."""
    from poise.merge.config import run_merge

    base, a, b = specialists
    config = {
        "merge_method": "task_arithmetic", "base_model": str(base), "name": "ta",
        "models": [
            {"model": str(base)},
            {"model": str(a), "parameters": {"weight": 0.5}},
            {"model": str(b), "parameters": {"weight": [
                {"filter": "self_attn", "value": 0.0}, {"filter": "*", "value": [1.0, 0.0]}]}},
        ],
        "parameters": {"lambda": [0.5, 1.0]}, "dtype": "float32", "out_dtype": "bfloat16",
    }  # fmt: skip
    out = tmp_path / "out"
    run_merge(config, out)
    got, t0, ta, tb = _tensors(out), _tensors(base), _tensors(a), _tensors(b)
    assert {n: t.dtype for n, t in got.items()} == {n: torch.bfloat16 for n in t0}
    for name, tensor in got.items():
        layer = {"layers.0.": 0.0, "layers.1.": 1.0}
        t = next((v for k, v in layer.items() if k in name), 0.0)
        w_b = 0.0 if "self_attn" in name else 1.0 - t
        delta = 0.5 * (ta[name] - t0[name]) + w_b * (tb[name] - t0[name])
        expected = t0[name] + (0.5 + 0.5 * t) * delta
        torch.testing.assert_close(tensor, expected.to(torch.bfloat16), msg=name)
    card = (out / "README.md").read_text().splitlines()
    assert card[3] == "# ta"
    assert [line for line in card if line.startswith(("- base model", "- merged"))] == [
        f"- base model: `{base}`",
        f"- merged: `{a}`",
        f"- merged: `{b}`",
    ]


def test_a_gradient_over_a_single_layer_takes_its_last_point(
    tiny_hf_model_dir: Path, specialist_builder: Callable[..., Path], tmp_path: Path
) -> None:
    """mergekit's ``t`` of the one layer of a 1-layer model is 1 (its plan.py), not 0; tensors
    outside the layers take the gradient's first point."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from poise.merge.config import run_merge

    config = AutoConfig.from_pretrained(tiny_hf_model_dir)
    config.num_hidden_layers = 1
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base")
    base = tmp_path / "base"
    tuned = specialist_builder(base, tmp_path / "tuned", seed=1)
    out = tmp_path / "out"
    run_merge({
        "merge_method": "task_arithmetic", "base_model": str(base),
        "models": [{"model": str(tuned), "parameters": {"weight": [0.0, 1.0]}}],
    }, out)  # fmt: skip
    got, t0, t1 = _tensors(out), _tensors(base), _tensors(tuned)
    assert any(".layers.0." in name for name in got)
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, t1[name] if ".layers.0." in name else t0[name])


def test_a_linear_merge_whose_weights_sum_below_zero_is_divided_by_their_sum(
    specialists: list[Path], tmp_path: Path
) -> None:
    """Only a sum of 0 is refused: weights 0.5 and -1 give ``(0.5 a - b) / -0.5 = 2 b - a``."""
    from poise.merge.config import run_merge

    _, a, b = specialists
    out = tmp_path / "out"
    run_merge({
        "merge_method": "linear", "dtype": "float32",
        "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                   {"model": str(b), "parameters": {"weight": -1.0}}],
    }, out)  # fmt: skip
    got, ta, tb = _tensors(out), _tensors(a), _tensors(b)
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, 2 * tb[name] - ta[name], msg=name)


def test_della_bounds_per_tensor_take_each_models_own_epsilon(
    specialists: list[Path], tmp_path: Path
) -> None:
    """b's density gradient ends at 0.9 with b's epsilon 0.15 (a's is 0.05): refused at the
    last layer, naming b, before anything is written."""
    from poise.merge.config import run_merge

    base, a, b = specialists
    config = {
        "merge_method": "della", "base_model": str(base),
        "models": [
            {"model": str(a), "parameters": {"weight": 1, "density": [0.5, 0.9], "epsilon": 0.05}},
            {"model": str(b), "parameters": {"weight": 1, "density": [0.5, 0.9], "epsilon": 0.15}},
        ],
    }  # fmt: skip
    with pytest.raises(PoiseError) as caught:
        run_merge(config, tmp_path / "out")
    assert str(caught.value).startswith(f"model {str(b)!r}, tensor 'model.layers.1.")
    assert str(caught.value).endswith("got density 0.9 and epsilon 0.15")
    assert not (tmp_path / "out").exists()


def test_a_list_of_flags_picks_the_point_at_or_below_each_layer(
    specialists: list[Path], tmp_path: Path
) -> None:
    """As mergekit's evaluate_setting: a list that is not all numbers is not interpolated but
    read at ``int(t * (n - 1))``: ``normalize: [true, false]`` normalises layer 0 and the
    tensors outside the layers (t = 0), not layer 1 (t = 1)."""
    from poise.merge.config import run_merge

    _, a, b = specialists
    out = tmp_path / "out"
    run_merge({
        "merge_method": "linear", "dtype": "float32",
        "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                   {"model": str(b), "parameters": {"weight": 0.25}}],
        "parameters": {"normalize": [True, False]},
    }, out)  # fmt: skip
    got, ta, tb = _tensors(out), _tensors(a), _tensors(b)
    for name, tensor in got.items():
        total = 0.5 * ta[name] + 0.25 * tb[name]
        expected = total if ".layers.1." in name else total / 0.75
        torch.testing.assert_close(tensor, expected, msg=name)


@pytest.mark.parametrize("key", ["lambda", "lambda_"])
def test_lambda_is_read_in_either_spelling(
    specialists: list[Path], tmp_path: Path, key: str
) -> None:
    """``lambda_`` (the Python name, as poise's own options spell it) is accepted by the
    check and so must reach the tensors as ``lambda`` does: ``base + 0.5 (a - base)``."""
    from poise.merge.config import run_merge

    base, a, _ = specialists
    out = tmp_path / "out"
    run_merge({
        "merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
        "models": [{"model": str(a), "parameters": {"weight": 1.0}}],
        "parameters": {key: 0.5},
    }, out)  # fmt: skip
    got, t0, ta = _tensors(out), _tensors(base), _tensors(a)
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, t0[name] + 0.5 * (ta[name] - t0[name]), msg=name)


def test_model_paths_are_found_beside_the_config_file(
    specialists: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``models/a`` in ``cfg/merge.yml`` is ``cfg/models/a``, whatever the working folder;
    merge.json records the folders read, absolute."""
    from poise.merge.config import run_merge

    base, a, _ = specialists
    folder = tmp_path / "cfg"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "base").symlink_to(base)
    (folder / "models" / "a").symlink_to(a)
    path = folder / "merge.yml"
    path.write_text(
        "merge_method: task_arithmetic\nbase_model: models/base\ndtype: float32\n"
        "models: [{model: models/a, parameters: {weight: 1.0}}]\n"
    )
    monkeypatch.chdir(tmp_path)
    run_merge(path, tmp_path / "out")
    got, ta = _tensors(tmp_path / "out"), _tensors(a)
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, ta[name], msg=name)
    record = json.loads((tmp_path / "out" / "merge.json").read_text())
    assert (record["base_model"], record["models"]) == (str(base.resolve()), [str(a.resolve())])


def test_a_merge_config_object_is_checked_like_a_file(
    specialists: list[Path], tmp_path: Path
) -> None:
    from poise.merge.config import MergeConfig, ModelEntry, run_merge

    base, a, _ = specialists
    config = MergeConfig(
        merge_method="ties",
        base_model=str(base),
        models=[ModelEntry(model=str(a), parameters={"weight": 1, "density": 1.5})],
    )
    with pytest.raises(PoiseError) as caught:
        run_merge(config, tmp_path / "out")
    assert str(caught.value) == f"models[0] ({str(a)!r}).parameters.density: 1.5 is outside (0, 1]"
    assert not (tmp_path / "out").exists()
