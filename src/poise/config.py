"""Shared configuration models.

Every config is a pydantic model with ``extra="forbid"``: a misspelt field is an error, not a
silent default. CLI flags map 1:1 onto these fields.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from poise.errors import PoiseError, invalid_json, json_error_line, located, parse_json


def user_path(path: str | os.PathLike[str]) -> str:
    """A path as a user gave it, with a leading ``~`` (or ``~user``) expanded to the home
    folder: a quoted ``"~/runs"``, or one in a config file, reaches poise unexpanded (only the
    shell expands a bare one), and was a folder named ``~`` in the working directory. Anything
    else is left as written (a name, a hub id, ``organism-small``)."""
    return os.path.expanduser(os.fspath(path))


def _fspath(value: Any) -> Any:
    """A path given as a string or an ``os.PathLike`` (a ``pathlib.Path``) becomes its string,
    ``~`` expanded (:func:`user_path`); anything else is left to the field's own validation."""
    return user_path(value) if isinstance(value, (str, os.PathLike)) else value


PathStr = Annotated[str, BeforeValidator(_fspath)]
"""A field that names a file, a folder or a model: a string, or a ``pathlib.Path`` stored as
its string (so configs, fingerprints and run.json stay plain JSON), with a leading ``~``
expanded."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The bounds of the sampling fields, one place for every config that takes them (Sampling, the
# gate's config): a value one config took and Sampling refused was a traceback from inside the
# command. allow_inf_nan=False: NaN was refused as "should be less than or equal to 100"; the
# seed is 64-bit, as servers (vLLM) and generators take it (a larger one failed at the server,
# request by request, in the middle of a run).
Temperature = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
MaxNewTokens = Annotated[int, Field(ge=1, le=32768)]
SampleCount = Annotated[int, Field(ge=1, le=4096)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
StopString = Annotated[str, Field(min_length=1)]


class Sampling(StrictModel):
    """How to decode. ``temperature == 0`` means greedy; every field is part of the cache key."""

    temperature: Temperature = Field(0.0, description="0 = greedy decoding")
    top_p: TopP = Field(1.0, description="nucleus sampling mass; 1 = off")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 = off")
    max_new_tokens: MaxNewTokens = Field(96, description="tokens to generate at most")
    n: SampleCount = Field(1, description="completions per chat")
    seed: Seed = Field(0, description="seed; sampling is reproducible for a given seed")
    # an empty stop string ends nothing (the hf backend ignored it; the server refuses it with
    # a 400): it was recorded in run.json and the cache key as if it were a setting
    stop: tuple[StopString, ...] = Field((), description="strings that end a completion")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def key(self) -> str:
        """A canonical JSON string of all fields, for cache keys."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (hex, 16 chars): stable across processes."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def read_yaml(path: str | Path) -> Any:
    """The document of a YAML file (None when empty), or of a JSON file (``.json``: read as
    JSON, whose tab indentation YAML refuses); every error is one line naming the file (and
    line): a key given twice in one mapping is one, not the last one silently. A UTF-8 byte
    order mark (Windows editors, PowerShell's ``Out-File``) is skipped, as YAML skips it; the
    JSON parser refused a file that began with one."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
        if _is_json(path):
            return parse_json(text) if text.strip() else None
        return yaml.load(text, Loader=_unique_key_loader())
    except json.JSONDecodeError as exc:
        raise located(path, json_error_line(exc), invalid_json(exc)) from None
    except FileNotFoundError:
        raise PoiseError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PoiseError(f"{path}: is a folder, expected a YAML file") from None
    except OSError as exc:
        raise PoiseError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise PoiseError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or exc  # the first line; the rest is context
        raise located(
            path, mark.line + 1 if mark is not None else None, f"invalid YAML ({problem})"
        ) from None
    except RecursionError:
        # YAML's parser recurses once per level of nesting, as json's does
        raise PoiseError(
            f"{path}: invalid YAML (nested too deeply to read: more levels than Python's "
            "recursion limit)"
        ) from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of a YAML file (an empty file is an empty mapping); errors name
    the file (and line), as :func:`read_yaml`'s do."""
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PoiseError(
            f"{path}: expected a mapping (KEY: VALUE lines) at the top level, got a "
            f"{_yaml_type(data)}"
        )
    return {str(k): v for k, v in data.items()}


def yaml_key_lines(path: str | Path) -> dict[str, int]:
    """The line (1-based) of each key of the mapping at the top of a YAML file, and of each key
    of a mapping nested one level down as ``OUTER.INNER``; empty when the file cannot be read
    (:func:`read_yaml_mapping` says why)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8-sig")
        # a JSON file's tabs stand between tokens (a string holds none raw): spaces to YAML
        node = yaml.compose(text.replace("\t", " ") if _is_json(path) else text, yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return {}
    lines: dict[str, int] = {}
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key, value in node.value:
        lines.setdefault(str(key.value), key.start_mark.line + 1)
        if isinstance(value, yaml.MappingNode):
            for inner, _ in value.value:
                lines.setdefault(f"{key.value}.{inner.value}", inner.start_mark.line + 1)
    return lines


def _is_json(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".json"


def _yaml_type(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


@functools.cache
def _unique_key_loader() -> type:
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """A SafeLoader that refuses a key given twice in one mapping."""

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue  # a merge key (<<) may repeat keys; others: the SafeLoader's error
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def format_validation_error(exc: ValidationError) -> str:
    """First error of a pydantic ValidationError, as 'field: message'; when the field's value
    came from a config file (:func:`value_sources`), the message says so: 'field: message
    (from FILE:LINE, key KEY)'."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    message += source_of(err["loc"], err.get("input", _NO_INPUT))
    return f"{loc}: {message}" if loc else message


def format_field_error(
    exc: ValidationError,
    flag: Callable[[str], str],
    *,
    unknown: str = "not an option here",
    spellings: Mapping[str, str] | None = None,
) -> str:
    """'FIELD (--FLAG): what is wrong, got VALUE': the first error of ``exc`` with the field as
    the API spells it, ``flag(field)`` as the command line spells it, and the value given (a
    model-level check names its own; a missing field has no value, an unknown one no flag); a
    value from a ``--config`` file says so, as in :func:`format_validation_error`.
    ``spellings`` (:func:`flag_keywords`): a flag's name given as a keyword, with the field it
    stands for, which an unknown key that is one of them is told to use."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    if not loc:
        return format_validation_error(exc)
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        field = (spellings or {}).get(loc[0]) if len(loc) == 1 else None
        if field is not None:
            # the flag's name (suite, n, format) is not the field's (prompts, ...)
            return f"{loc[0]}: {unknown}; use {field} (the field of {dashed_flag(loc[0])})"
        return f"{'.'.join(loc)}: {unknown}"
    # a sampling field's flag is its own (--temperature), not that of an item of its value
    where = f"{'.'.join(loc)} ({flag(loc[1] if loc[0] == 'sampling' and len(loc) > 1 else loc[0])})"
    if error["type"] == "missing":
        return f"{where}: {message}"
    given = repr(error.get("input"))
    given = given if len(given) <= 60 else given[:57] + "..."
    return f"{where}: {message}, got {given}{source_of(error['loc'], error.get('input'))}"


#: the flags of the fields every command spells alike that are not ``--FIELD``: the suite
#: options, spelled as ``poise suites show`` spells them, and the model options
COMMON_FIELD_FLAGS = {
    "suite_format": "--format",
    "suite_columns": "--column",
    "suite_kind": "--kind",
    "suite_category": "--category",
    "model_options": "--model-option",
}


def dashed_flag(field: str) -> str:
    """The flag a command line spells a field as by default: ``--max-new-tokens``."""
    return "--" + field.replace("_", "-")


def flag_keywords(
    fields: Iterable[str],
    flag: Callable[[str], str],
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """``{a long flag's name as a keyword: the field it stands for}`` for each of ``fields``
    whose flag (``flag(field)``, and its other spellings in ``aliases``) is not ``--FIELD``:
    ``{"suite_format": "--format"}`` gives ``{"format": "suite_format"}``. For
    :func:`format_field_error`'s ``spellings``; a name that is a field itself is left out."""
    names = set(fields)
    out: dict[str, str] = {}
    for field in sorted(names):
        for spelt in (flag(field), *(aliases or {}).get(field, ())):
            keyword = spelt[2:].replace("-", "_") if spelt.startswith("--") else None
            if keyword and keyword != field and keyword not in names:
                out.setdefault(keyword, field)
    return out


@dataclass(frozen=True)
class ValueSource:
    """Where a config field's value came from: a file's key (``--config FILE.yaml``)."""

    where: str  # FILE or FILE:LINE
    key: str  # the key as the file spells it (OUTER.INNER for a nested block's key)
    values: tuple[Any, ...]  # the value as the file gives it, and as its flag converted it


_NO_INPUT = object()
_VALUE_SOURCES: ContextVar[Mapping[str, ValueSource]] = ContextVar("poise_value_sources")


@contextmanager
def value_sources(sources: Mapping[str, ValueSource]) -> Iterator[None]:
    """While inside, a validation error (:func:`format_validation_error`) of a field in
    ``sources`` (by its dotted location, ``limit`` or ``sampling.temperature``) whose value is
    the one the source gave names the source: the CLI's ``--config`` file, whose values became
    the flags' defaults, so a refused value is blamed on the file's key, not on a flag the user
    never typed (nor on the file when the flag was typed: it is then not in ``sources``)."""
    token = _VALUE_SOURCES.set(sources)
    try:
        yield
    finally:
        _VALUE_SOURCES.reset(token)


def source_of(loc: tuple[int | str, ...] | list[int | str], value: Any = _NO_INPUT) -> str:
    """``" (from FILE:LINE, key KEY)"`` when the field at ``loc`` came from a source of
    :func:`value_sources` and holds ``value`` (or a part of it, at the rest of ``loc``); else
    ``""``."""
    sources = _VALUE_SOURCES.get(None)
    if not sources:
        return ""
    parts = [str(p) for p in loc]
    for end in range(len(parts), 0, -1):
        source = sources.get(".".join(parts[:end]))
        if source is None:
            continue
        if value is not _NO_INPUT and not any(
            _same(_dig(given, loc[end:]), value) for given in source.values
        ):
            return ""
        return f" (from {source.where}, key {source.key!r})"
    return ""


def _dig(value: Any, rest: tuple[int | str, ...] | list[int | str]) -> Any:
    for part in rest:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return _NO_INPUT
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal as plain data (a tuple and a list of the same items are; NaN is itself)."""

    def plain(v: Any) -> Any:
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        return v

    return a is not _NO_INPUT and bool(plain(a) == plain(b))


DEFAULT_SUITES: tuple[str, ...] = ("harmful", "borderline", "benign", "honesty")


class SuiteOptions(BaseModel):
    """How suite files are read (the options of ``poise suites show``), for every command that
    reads suites. They apply to files and hub datasets, not to built-in suite names."""

    suite_format: str | None = Field(
        None,
        description="row format of the suite files instead of detecting it (`poise suites ls`)",
    )
    suite_columns: dict[str, str] = Field(
        default_factory=dict,
        description="ROLE=COLUMN for generic suite files (prompt, id, kind, category, reference, "
        "system), e.g. prompt=question",
    )
    suite_kind: str | None = Field(
        None, description="kind of suite rows that carry none (harmful, borderline, benign, ...)"
    )
    suite_category: str | None = Field(None, description="category of suite rows that carry none")

    def suite_options(self) -> dict[str, Any]:
        """Keyword arguments of ``poise.suites.load_suite``."""
        return {
            "format": self.suite_format,
            "columns": dict(self.suite_columns) or None,
            "kind": self.suite_kind,
            "category": self.suite_category,
        }

    def suite_options_set(self) -> set[str]:
        """The suite option fields that differ from their defaults (part of a fingerprint)."""
        return {name for name in SuiteOptions.model_fields if getattr(self, name)}


class AuditConfig(StrictModel, SuiteOptions):
    """Everything that defines an audit. ``poise audit`` flags map 1:1 onto these fields."""

    model: PathStr = Field(
        "organism",
        description="model spec: organism member, folder, hub id, hf:/openai:/mock:, or a "
        "strategy call such as logit_temperature(organism-small, t=0.8)",
    )
    model_options: dict[str, Any] = Field(
        default_factory=dict, description="backend options (device, dtype, base_urls, ...)"
    )
    suites: tuple[PathStr, ...] = Field(
        DEFAULT_SUITES, min_length=1, description="built-in suite names or file paths"
    )
    judge: str = Field(
        "auto", description="judge spec; auto = the model's recommended judge, else refusal"
    )
    judge_options: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword options of the judge, e.g. model=FOLDER for a preset's local copy",
    )
    sampling: Sampling = Field(
        default_factory=lambda: Sampling(), description="decoding configuration"
    )
    system_prompt: str = Field(
        "default",
        description="'default' (the model's own, if it declares one), 'none', or a literal prompt",
    )
    attack: str = Field("greedy", description="how items become requests (see `poise.attacks`)")
    attack_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the attack"
    )
    limit: int | None = Field(
        None, ge=1, description="use N items of each suite, spread evenly over it"
    )
    batch_size: int = Field(
        256, ge=1, description="chats per generate call; also the resume granularity"
    )
    reference_run: PathStr | None = Field(
        None, description="run of the unaligned model, for the honesty metrics of arXiv 2312.07000"
    )
    judge_labels: PathStr | None = Field(
        None,
        description="file of human-labelled answers (`poise judges validate` formats) to measure "
        "the judge on; the report shows its agreement and rates corrected for its error",
    )
    judge_labels_format: str | None = Field(
        None, description="format of the judge_labels file instead of detecting it"
    )
    judge_labels_columns: dict[str, str] = Field(
        default_factory=dict,
        description="ROLE=COLUMN of a generic judge_labels file (response, prompt, id, model, "
        "refused, harmful, kind)",
    )
    out: PathStr = Field("runs", description="folder that holds run folders")
    name: str | None = Field(
        None,
        description="run name (default: the model and the attack, or for a sampled plain run "
        "its temperature and n: organism-small-t1-n4)",
    )
    html: bool = Field(True, description="write report.html")

    def fingerprint(self) -> str:
        """Identity of the audit's results: everything except where and how it is written."""
        # suite options left unset are left out, so runs from before they existed keep their
        # fingerprint (and resume)
        unset = set(SuiteOptions.model_fields) - self.suite_options_set()
        # likewise the judge validation, which adds to the metrics but changes no record
        unset |= {
            f
            for f in ("judge_labels", "judge_labels_format", "judge_labels_columns")
            if not getattr(self, f)
        }
        # judge options, added later: left out when none are given, as above
        if not self.judge_options:
            unset.add("judge_options")
        return stable_hash(
            self.model_dump(mode="json", exclude={"out", "name", "html", "batch_size", *unset})
        )
