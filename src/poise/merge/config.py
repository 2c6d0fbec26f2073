"""mergekit's YAML configuration format, for the methods poise and mergekit share, and
:func:`run_merge`, the one call behind ``poise merge CONFIG.yml OUT``.

    merge_method: ties
    base_model: path/or/hub-id
    models:
      - model: path/to/specialist-a
        parameters: {weight: 0.6, density: [1.0, 0.5]}      # a gradient over the layers
      - model: path/to/base+path/to/lora                    # a peft LoRA on a model
        parameters:
          weight: [{filter: self_attn, value: 0.8}, {value: 0.5}]   # name filters
    parameters: {normalize: true, lambda: 1.0}
    dtype: bfloat16
    tokenizer_source: base

Parameter values follow mergekit: a scalar; a list of numbers, interpolated linearly over the
layers (layer i of L sits at ``t = i / (L - 1)``; weights outside the layers at ``t = 0``); or a list
of ``{filter, value}`` entries, the first whose filter is a substring of the tensor name (or
absent, or ``*``) giving the value. Per-model options (``weight``, ``density`` ...) are looked up in
the model's ``parameters`` first, then in the top-level ``parameters``. Every value is checked
against its option's range when the config is read (:data:`_RANGES`; numbers finite); DELLA's
``density +- epsilon`` bounds are checked per tensor by :func:`check_tensor_options` before any
weight is read, and :func:`run_merge` refuses models of different architectures or depths
(:func:`poise.merge.executor.check_inputs`) before writing anything.

Differences from mergekit: tensors are merged in float32 (float64 stays float64) whatever
``dtype`` says; ``dtype`` / ``out_dtype`` set the output's dtype (on bfloat16 / float16 inputs
the trims' masks and the elected signs are still mergekit's, :mod:`poise.merge.task_arithmetic`). Methods whose defaults follow a
paper where mergekit differs (TIES sign election, DARE / DELLA rescaling) say so in
``docs/merging.md``; the options ``sign_election: weighted`` and ``rescale_norm: l1`` give
mergekit's behaviour. NuSLERP's colinear test allows for the rounding of the compute dtype
(:func:`poise.merge.interpolation.nuslerp`). ``slices``, ``modules``, ``tokenizer_source: union``,
the ``tokenizer:`` block and a named or inline ``chat_template`` (the output keeps the tokenizer source's
template; ``auto`` is accepted) are refused. ``base_model`` may be ``BASE+LORA``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from poise.config import PathStr, format_validation_error, read_yaml
from poise.errors import PoiseError, UnknownNameError
from poise.merge.executor import (
    LAYER_INDEX,
    MergeJob,
    ProgressFn,
    check_inputs,
    check_output,
    count_layers,
    write_merge,
)
from poise.merge.methods import KEYWORD_OPTIONS, METHODS, MergeMethod
from poise.merge.sources import LoraFolder, SafetensorsFolder, TensorSource, is_lora_folder
from poise.merge.task_arithmetic import DELLA_EPSILON, PER_MODEL_DEFAULTS

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_REFUSED = {
    "slices": "slices (layer-range merges) are not supported by poise merge; where every "
    "source's layer_range covers all the layers, list the models under models: instead",
    "modules": "modules (multi-module merges) are not supported by poise merge",
}
CONFIG_RECORD = "merge_config.yml"
MERGE_RECORD = "merge.json"

log = logging.getLogger(__name__)


class ModelEntry(BaseModel):
    """One input model and its own parameters."""

    model_config = ConfigDict(extra="forbid")

    model: PathStr = Field(description="path, hub id, or BASE+LORA (a peft LoRA folder on BASE)")
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("parameters", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return {} if value is None else value  # ``parameters:`` with nothing under it


class MergeConfig(BaseModel):
    """A merge, in mergekit's YAML format (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    merge_method: str = Field(
        description="a registered merge method (poise merge --help lists them)"
    )
    base_model: PathStr | None = None
    models: list[ModelEntry] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: str | None = Field(default=None, description="output dtype (mergekit: input dtype)")
    out_dtype: str | None = Field(default=None, description="output dtype; wins over dtype")
    tokenizer_source: PathStr | None = Field(
        default=None, description="'base' (default) or a model whose vocabulary the output keeps"
    )
    chat_template: str | None = Field(
        default=None,
        description="'auto' or unset: the output keeps the tokenizer source's chat template "
        "(a named or inline template is refused)",
    )
    name: str | None = None
    seed: int = Field(
        default=0,
        description="poise: seed of the random methods (DARE, DELLA) and of svd: randomized (TSV-M, RESM)",
    )

    @field_validator("parameters", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        # ``parameters:`` with nothing under it (YAML null), as in mergekit's examples/ties.yml
        return {} if value is None else value


def load_config(path: Path | Mapping[str, Any]) -> MergeConfig:
    """Read and validate a YAML config (or the same as a dict); every mistake is one line
    naming the file and the key."""
    if isinstance(path, Mapping):
        raw: Any = dict(path)
        path = Path("merge config")  # names the dict in messages
    else:
        raw = read_yaml(path)  # a key given twice is an error, not the last one silently
    if not isinstance(raw, dict):
        raise PoiseError(f"{path}: a merge config is a mapping (merge_method, models, ...)")
    for key, reason in _REFUSED.items():
        if key in raw:
            raise PoiseError(f"{path}: {reason}")
    if "tokenizer" in raw:  # mergekit's newer block (source, tokens, pad_to_multiple_of)
        raise PoiseError(
            f"{path}: tokenizer: (mergekit's tokenizer block) is not supported by poise merge; "
            "use tokenizer_source: base or a model's name instead"
        )
    try:
        config = MergeConfig.model_validate(raw)
    except ValidationError as exc:
        raise PoiseError(f"{path}: {format_validation_error(exc)}") from None
    try:
        check_config(config)
    except PoiseError as exc:
        raise PoiseError(f"{path}: {exc}") from None
    return config


def check_config(config: MergeConfig) -> None:
    """Method, options and their values, before any weight is read."""
    method = METHODS.get(config.merge_method)
    entries = merged_entries(config, method)
    params = method.parameters()
    hints = _type_hints(method)
    for key, value in config.parameters.items():
        name = _option(method, key, "parameters")
        _check_values(method, name, key, value, hints, "parameters")
    for i, entry in enumerate(config.models):
        where = f"models[{i}] ({entry.model!r}).parameters"
        for key, value in entry.parameters.items():
            name = _option(method, key, where)
            if name not in method.per_model:
                raise PoiseError(
                    f"{where}.{key}: {key!r} is shared by all models "
                    f"of {method.name!r}; set it under the top-level parameters"
                )
            _check_values(method, name, key, value, hints, where)
    for name in method.required():
        if name in method.per_model:
            for entry in entries:
                if (
                    name not in entry.parameters
                    and _key(name) not in entry.parameters
                    and (name not in config.parameters and _key(name) not in config.parameters)
                ):
                    raise PoiseError(f"model {entry.model!r} has no {_key(name)!r} parameter")
        elif name not in config.parameters and _key(name) not in config.parameters:
            raise PoiseError(f"merge method {method.name!r} needs parameters.{_key(name)}")
    method.check(
        {n: 0 for n in params if n in method.required()},
        n_models=len(entries),
        has_base=config.base_model is not None,
    )
    if "epsilon" in params and "density" in params:
        # the values outside the layers (scalars, a gradient's first point, unfiltered entries);
        # run_merge checks every tensor's once the tensor names are known
        for entry in entries:
            density, epsilon = (
                _first_value((entry.parameters, config.parameters), k, k, "", 0.0)
                for k in ("density", "epsilon")
            )
            if isinstance(density, (int, float)):
                _della_bounds(method, density, epsilon, f"model {entry.model!r}")
    for field_name in ("dtype", "out_dtype"):
        value = getattr(config, field_name)
        if value is not None and value not in DTYPES:
            raise UnknownNameError(f"{field_name}", value, DTYPES)
    if config.tokenizer_source == "union":
        raise PoiseError("tokenizer_source: 'union' is not supported; use 'base' or a model")
    if config.chat_template not in (None, "auto"):
        # mergekit writes a named template (chatml, llama3 ...) or the Jinja text given; poise
        # copies the tokenizer source's files, so anything else would be silently dropped
        shown = config.chat_template if len(config.chat_template) <= 40 else "a Jinja template"
        raise PoiseError(
            f"chat_template: {shown!r} is not applied by poise merge, which keeps the tokenizer "
            "source's chat template; remove the key (or write 'auto'), or set tokenizer_source "
            "to a model that has the template you want"
        )


def merged_entries(config: MergeConfig, method: MergeMethod) -> list[ModelEntry]:
    """The models merged besides the base: a base listed among ``models`` (as mergekit configs
    often do) is the base, not a merged model, for methods that need a base and for those
    that declare ``drop_listed_base`` (NuSLERP, whose base is optional)."""
    takes_base = method.base == "required" or method.drop_listed_base
    if takes_base and config.base_model is not None:
        return [e for e in config.models if e.model != config.base_model]
    return list(config.models)


def _key(name: str) -> str:
    return {v: k for k, v in KEYWORD_OPTIONS.items()}.get(name, name)


def _option(method: MergeMethod, key: str, where: str) -> str:
    name = KEYWORD_OPTIONS.get(key, key)
    if name not in method.parameters():
        valid = [_key(n) for n in method.parameters()]
        raise UnknownNameError(f"{where} key (option of {method.name!r}):", key, valid)
    return name


def _type_hints(method: MergeMethod) -> dict[str, Any]:
    try:
        return typing.get_type_hints(method.fn)
    except Exception:  # an unresolvable annotation: skip value checks, the call still checks
        return {}


def _leaves(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """The scalar values inside a parameter value, each with where it sits: ``""`` for a
    scalar, ``[1]`` for a gradient's second point, ``[0] (filter 'self_attn')`` for a filter
    entry."""
    if isinstance(value, list):
        if not value:
            raise PoiseError(f"{path}: an empty list has no value")
        return [leaf for i, item in enumerate(value) for leaf in _leaves(item, f"{path}[{i}]")]
    if isinstance(value, dict):
        if "pattern" in value and "filter" not in value:
            # mergekit's older examples (gradient-slerp.yml) spell it so; mergekit 0.1.5 drops
            # the unknown key and applies the entry to every tensor
            raise PoiseError(
                f"{path}: {{pattern: {value['pattern']!r}}} is the old spelling of a filter; "
                f"write filter: {value['pattern']!r}"
            )
        if set(value) - {"filter", "value"} or "value" not in value:
            raise PoiseError(f"{path}: {value!r} is not a {{filter, value}} entry")
        filt = value.get("filter")
        if filt is not None and not isinstance(filt, str):
            raise PoiseError(f"{path}: filter {filt!r} is not text (a part of tensor names)")
        label = f"{path} (filter {filt!r})" if filt not in (None, "*") else path
        return _leaves(value["value"], label)
    return [(path, value)]


# Natural ranges of the methods' numeric options: (low, high, low included, high included).
# Every numeric value must also be finite (YAML's .nan and .inf are refused).
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "density": (0.0, 1.0, False, True),  # the share of each task vector kept
    "gamma": (0.0, 1.0, True, False),  # breadcrumbs: the share of outliers dropped
    "epsilon": (0.0, 1.0, True, False),  # DELLA: the spread of the keep probabilities
    "t": (0.0, 1.0, True, True),  # SLERP: from the base (0) to the model (1)
    "energy": (0.0, 1.0, False, True),  # RESM: the spectral energy kept
    "rank_fraction": (0.0, 1.0, False, True),  # TSV-M / RESM: the share of directions per task
    "outlier_threshold": (0.0, math.inf, False, False),
    "dot_threshold": (0.0, 1.0, True, True),
    "eps": (0.0, math.inf, True, False),
    "oversample": (0.0, math.inf, True, False),
    "niter": (0.0, math.inf, True, False),
}


def _interval(low: float, high: float, low_in: bool, high_in: bool) -> str:
    return f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def _check_values(
    method: MergeMethod, name: str, key: str, value: Any, hints: dict[str, Any], where: str
) -> None:
    hint = hints.get(name)
    allowed = _literals(hint)
    try:
        leaves = _leaves(value)
    except PoiseError as exc:  # the message starts with the place inside the value
        raise PoiseError(f"{where}.{key}{exc}") from None
    for path, leaf in leaves:
        at = f"{where}.{key}{path}"
        if leaf is None and _optional(hint):
            continue
        if allowed is not None:
            if leaf not in allowed:
                known = [str(a) for a in allowed]
                raise UnknownNameError(f"value of {at}:", str(leaf), known)
        elif hint is not None and _numeric(hint):
            if isinstance(leaf, (str, bool)) or leaf is None:
                raise PoiseError(f"{at}: {leaf!r} is not a number")
            if isinstance(leaf, (int, float)):
                _check_range(name, leaf, at)
        elif hint is bool and not isinstance(leaf, bool) and leaf not in (0, 1):
            # 0 and 1 read as false and true, as pydantic (and so mergekit) reads them
            raise PoiseError(f"{at}: {leaf!r} is not true or false")


def _check_range(name: str, leaf: float, at: str) -> None:
    if not math.isfinite(leaf):
        raise PoiseError(f"{at}: {leaf!r} is not a finite number")
    if name not in _RANGES:
        return
    low, high, low_in, high_in = _RANGES[name]
    above = leaf > low or (low_in and leaf == low)
    below = leaf < high or (high_in and leaf == high)
    if not (above and below):
        raise PoiseError(f"{at}: {leaf!r} is outside {_interval(low, high, low_in, high_in)}")


def check_tensor_options(
    method: MergeMethod, resolver: OptionResolver, names: list[str], labels: list[str]
) -> None:
    """Checks that need the values per tensor (gradients and filters resolved), before any weight
    is read: every required option has a value for every tensor (filters without a catch-all
    entry may match none of a tensor's name), DELLA's ``0 < density - epsilon`` and
    ``density + epsilon < 1`` where it drops, and a normalised linear merge's weights not summing
    to 0 (it divides by their sum: an all-NaN model, written with exit 0)."""
    required = method.required()
    for name in names:
        options = resolver(name)  # a value some models lack is refused here
        missing = [_key(n) for n in required if n not in options]
        if missing:
            raise PoiseError(
                f"tensor {name!r}: no value of {', '.join(map(repr, missing))} applies to it "
                "(no filter matches its name); add an entry without a filter"
            )
    if "rank_fraction" in method.parameters():
        # TSV-M / RESM keep rank_fraction * min(m, n) directions of each of the T tasks, at
        # most min(m, n) in all; refused here, not at the first matrix once it has been read
        tasks = len(labels)
        for name in names:
            fraction = resolver(name).get("rank_fraction")
            if fraction is not None and float(fraction) * tasks > 1 + 1e-9:
                raise PoiseError(
                    f"tensor {name!r}: rank_fraction {float(fraction):g} keeps more than all the "
                    f"directions for {tasks} tasks; use rank_fraction <= 1/{tasks}"
                )
    if method.name == "linear":
        for name in names:
            options = resolver(name)
            weights = options.get("weight")
            normalized = options.get("normalize", True) is not False
            if normalized and weights is not None and abs(sum(map(float, weights))) < 1e-8:
                raise PoiseError(
                    f"tensor {name!r}: linear divides by the sum of the weights "
                    f"({', '.join(f'{float(w):g}' for w in weights)}), which is 0; give "
                    "weights that do not cancel, or normalize: false"
                )
        return
    if "epsilon" not in method.parameters() or "density" not in method.parameters():
        return
    for name in names:
        options = resolver(name)
        densities, epsilons = options.get("density"), options.get("epsilon")
        if densities is None:
            continue
        for i, density in enumerate(densities):
            epsilon = None if epsilons is None else epsilons[i]
            _della_bounds(method, density, epsilon, f"model {labels[i]!r}, tensor {name!r}")


def _della_bounds(method: MergeMethod, density: Any, epsilon: Any, at: str) -> None:
    if density is None or float(density) >= 1:
        return  # density 1 keeps everything: no keep probabilities are drawn
    density = float(density)
    epsilon = DELLA_EPSILON if epsilon is None else float(epsilon)
    if not (density - epsilon > 0 and density + epsilon < 1):
        raise PoiseError(
            f"{at}: {method.name} needs 0 < density - epsilon and density + epsilon < 1, "
            f"got density {density:g} and epsilon {epsilon:g}"
        )


def _literals(hint: Any) -> tuple[Any, ...] | None:
    for arg in (hint, *typing.get_args(hint)):
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    return None


def _numeric(hint: Any) -> bool:
    args = {hint, *typing.get_args(hint)}
    for arg in list(args):
        args.update(typing.get_args(arg))
    return bool(args & {float, int}) and str not in args


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


# -- resolving values per tensor


def evaluate(value: Any, tensor_name: str, t: float) -> Any:
    """A mergekit parameter value for one tensor: scalar, gradient over layers, or filters."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return value
    if not value:
        return None
    if all(not isinstance(v, (dict, list)) for v in value):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return value[int(t * (len(value) - 1))]
        scaled = t * (len(value) - 1)
        i0 = int(scaled)
        i1 = min(len(value) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * value[i0] + frac * value[i1]
    for entry in value:
        filt = entry.get("filter") if isinstance(entry, dict) else None
        if filt is None or filt == "*" or filt in tensor_name:
            return evaluate(entry["value"] if isinstance(entry, dict) else entry, tensor_name, t)
    return None


def layer_position(name: str, n_layers: int) -> float:
    """mergekit's ``t`` of a tensor: ``i / (L - 1)`` in layer i of L (1 for a single layer),
    0 outside the layers."""
    match = LAYER_INDEX.search(name)
    if match is None:
        return 0.0
    return int(match.group(1)) / (n_layers - 1) if n_layers > 1 else 1.0


@dataclass
class OptionResolver:
    """The method's options for each tensor, from a config."""

    method: MergeMethod
    shared: dict[str, Any]
    per_model: list[dict[str, Any]]
    n_layers: int

    def __call__(self, name: str) -> dict[str, Any]:
        t = layer_position(name, self.n_layers)
        out: dict[str, Any] = {}
        for option in self.method.parameters():
            key = _key(option)
            if option in self.method.per_model:
                # the model's own value, else the top-level one: per tensor, so a model whose
                # filters match none of a tensor's name falls through, as in mergekit
                values = [
                    _first_value((params, self.shared), key, option, name, t)
                    for params in self.per_model
                ]
                if all(v is None for v in values):
                    continue
                default = PER_MODEL_DEFAULTS.get(option)
                if default is not None:  # a model without it takes the default, as in mergekit
                    values = [default if v is None else v for v in values]
                if any(v is None for v in values):
                    at = f"tensor {name!r}: " if name else ""
                    raise PoiseError(
                        f"{at}some models have no {key!r} value; give one to every model "
                        "or set it under the top-level parameters"
                    )
                out[option] = values
            else:
                value = _first_value((self.shared,), key, option, name, t)
                if value is not None:
                    out[option] = value
        return out


def _first_value(
    scopes: tuple[Mapping[str, Any], ...], key: str, option: str, name: str, t: float
) -> Any:
    """The first scope's value of an option (spelt ``key`` or ``option``) that applies to the
    tensor ``name``, or None."""
    for scope in scopes:
        for spelling in dict.fromkeys((key, option)):
            if spelling in scope:
                value = evaluate(scope[spelling], name, t)
                if value is not None:
                    return value
    return None


# -- opening models


def resolve_model_path(reference: str, config_dir: Path | None = None) -> Path:
    """A local folder for ``reference``: a path (absolute, or relative to the working directory or
    the config file), a plugin's model name (``organism-small``), else a Hugging Face hub id
    fetched with ``huggingface_hub``."""
    candidates = [Path(reference).expanduser()]
    if config_dir is not None and not Path(reference).is_absolute():
        candidates.append(config_dir / reference)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    from poise.models.resolve import model_folder

    named = model_folder(reference)  # a plugin's model name (organism-small ...)
    if named is not None:
        return named
    if reference.count("/") == 1 and not reference.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            patterns = ["*.safetensors", "*.json", "*.model", "*.txt", "*.jinja"]
            return Path(snapshot_download(reference, allow_patterns=patterns))
        except Exception as exc:
            raise PoiseError(
                f"model {reference!r}: not a folder, and the hub said: {exc}"
            ) from None
    from poise.models.resolve import folder_name_hint

    raise PoiseError(f"model {reference!r}: no such folder{folder_name_hint(reference)}")


def open_model(
    reference: str, config_dir: Path | None, base: SafetensorsFolder | None
) -> TensorSource:
    """A source for ``reference``: a model folder, ``MODEL+LORA``, or a LoRA folder on ``base``."""
    if "+" in reference:
        model_ref, lora_ref = reference.split("+", 1)
        inner = SafetensorsFolder(resolve_model_path(model_ref, config_dir), label=model_ref)
        return LoraFolder(resolve_model_path(lora_ref, config_dir), inner, label=reference)
    path = resolve_model_path(reference, config_dir)
    if is_lora_folder(path):
        if base is None:
            raise PoiseError(
                f"model {reference!r} is a LoRA adapter; give a base_model that is a model "
                "folder, or name it MODEL+LORA"
            )
        return LoraFolder(path, base, label=reference)
    return SafetensorsFolder(path, label=reference)


# -- running


@dataclass
class MergeResult:
    out: Path
    files: list[str]
    method: str
    n_tensors: int


def run_merge(
    config: MergeConfig | Mapping[str, Any] | Path | str,
    out: Path | str,
    *,
    shard_size: int = 5 * 1024**3,
    progress: ProgressFn | None = None,
) -> MergeResult:
    """Merge as ``config`` says into ``out`` (a new folder with the weights, the config and
    tokenizer files, the resolved config, the versions and a model card)."""
    config_dir = None
    if isinstance(config, Mapping):  # the YAML's content as a dict (paths relative to here)
        config = load_config(config)
    elif not isinstance(config, MergeConfig):
        if not isinstance(config, (str, os.PathLike)):
            raise PoiseError(
                f"merge config: expected a MergeConfig, a dict or a YAML path, got "
                f"{type(config).__name__}"
            )
        config_dir = Path(config).parent
        config = load_config(Path(config))
    else:
        check_config(config)
    out = Path(out)
    check_output(out)
    method = METHODS.get(config.merge_method)
    entries = merged_entries(config, method)
    _warn_ignored_options(config, method)
    opened: list[TensorSource] = []
    try:
        base: TensorSource | None = None
        if config.base_model is not None:
            # a folder, or BASE+LORA (as in mergekit): the task vectors are then taken from
            # the adapted base; a bare LoRA folder is not a model
            base = open_model(config.base_model, config_dir, None)
            opened.append(base)
        # what a LoRA folder given alone applies to: a plain base (on BASE+LORA it would be
        # ambiguous, so open_model asks for MODEL+LORA there)
        lora_target = base if isinstance(base, SafetensorsFolder) else None
        models = []
        for entry in entries:
            source = open_model(entry.model, config_dir, lora_target)
            opened.append(source)
            models.append(source)
        tokenizer = _tokenizer_source(config, base, models, entries)
        reference = tokenizer or base or models[0]
        resolver = OptionResolver(
            method,
            shared=dict(config.parameters),
            per_model=[dict(e.parameters) for e in entries],
            n_layers=count_layers(reference.keys()),
        )
        dtype_name = config.out_dtype or config.dtype
        job = MergeJob(
            method=method,
            models=models,
            base=base,
            options_for=resolver,
            tokenizer_source=tokenizer,
            dtype=DTYPES[dtype_name] if dtype_name else None,
            seed=config.seed,
            compute_dtype=DTYPES[config.dtype] if config.dtype else None,
        )
        check_inputs(job)  # one architecture: names and shapes, from the headers only
        check_tensor_options(method, resolver, reference.keys(), [e.model for e in entries])
        records = _records(config, method, reference, models, base)
        files = write_merge(
            job,
            out,
            shard_size=shard_size,
            records=records,
            copy_from=_files_folder(reference),
            progress=progress,
        )
        return MergeResult(out, files, method.name, len(reference.keys()))
    finally:
        for source in opened:
            source.close()


def _warn_ignored_options(config: MergeConfig, method: MergeMethod) -> None:
    """Options a config sets that change nothing, accepted as mergekit accepts them."""
    shared = config.parameters
    if (
        "nuslerp_row_wise" in method.parameters()
        and shared.get("nuslerp_row_wise") in (True, 1)
        and shared.get("nuslerp_flatten", True) not in (False, 0)
    ):
        log.warning(
            "%s: nuslerp_row_wise has no effect while nuslerp_flatten is true (the default), "
            "which treats each tensor as one vector; set nuslerp_flatten: false for one angle "
            "per vector",
            method.name,
        )


def _files_folder(source: TensorSource) -> Path:
    # a LoRA's config and tokenizer are its base's
    return source.base.path if isinstance(source, LoraFolder) else source.path


def _tokenizer_source(
    config: MergeConfig,
    base: TensorSource | None,
    models: list[TensorSource],
    entries: list[ModelEntry],
) -> TensorSource | None:
    choice = config.tokenizer_source
    if choice is None or choice == "base":
        return None
    for entry, source in zip(entries, models, strict=True):
        if entry.model == choice:
            return source
    if config.base_model == choice:
        return None
    raise PoiseError(f"tokenizer_source {choice!r} is neither 'base' nor one of the models")


def _records(
    config: MergeConfig,
    method: MergeMethod,
    reference: TensorSource,
    models: list[TensorSource],
    base: TensorSource | None,
) -> dict[str, str]:
    from poise.runs.run import environment_versions

    versions = environment_versions()
    defaults = {
        _key(n): (None if p.default is p.empty else p.default)
        for n, p in method.parameters().items()
        if n not in method.per_model
    }
    resolved = {
        "merge_method": method.name,
        "reference": METHODS.reference(method.name),
        "base_model": _provenance(base) if base is not None else None,
        "models": [_provenance(m) for m in models],
        "options": {**defaults, **config.parameters},
        "versions": versions,
    }
    dumped = config.model_dump(exclude_none=True, exclude_defaults=False)
    card = _model_card(config, method, versions)
    return {
        CONFIG_RECORD: yaml.safe_dump(dumped, sort_keys=False),
        MERGE_RECORD: json.dumps(resolved, indent=2, default=str) + "\n",
        "README.md": card,
    }


def _provenance(source: TensorSource) -> str:
    """Where a merge input came from, for merge.json: its absolute folder, and for a LoRA the
    base it was applied to as well (``BASE+LORA``, both absolute), as a config spells it."""
    if isinstance(source, LoraFolder):
        return f"{source.base.path.resolve()}+{source.path.resolve()}"
    return str(source.path.resolve())


def _model_card(config: MergeConfig, method: MergeMethod, versions: Mapping[str, Any]) -> str:
    lines = [
        "---",
        "tags: [merge, poise]",
        "---",
        f"# {config.name or 'Merged model'}",
        "",
        f"Made with poise {versions.get('poise_version')} by `{method.name}` "
        f"({METHODS.help(method.name)}; {METHODS.reference(method.name)}).",
        "",
    ]
    if config.base_model is not None:
        lines.append(f"- base model: `{config.base_model}`")
    lines += [f"- merged: `{e.model}`" for e in merged_entries(config, method)]
    lines += [
        "",
        f"The configuration is in `{CONFIG_RECORD}`; the resolved options and library versions "
        f"in `{MERGE_RECORD}`.",
        "",
        "```yaml",
        yaml.safe_dump(config.model_dump(exclude_none=True), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
