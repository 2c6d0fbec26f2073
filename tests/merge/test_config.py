"""Config validation: every option's value is checked against its natural range before any
model is opened (the models named here do not exist, so nothing could be read)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
