"""From a model spec to a ``LanguageModel``.

A spec is parsed first (:mod:`poise.models.spec`), and every name in it is checked before any
weights load: strategies and guards against their registries (with their options), and each
model name resolved, in this order:

1. a backend prefix: ``mock`` / ``mock:NAME``, ``hf:PATH_OR_ID``, ``openai:...`` (the prefixes
   live in the ``backends`` registry, so a new backend is one ``backends.add`` away);
2. a name a plugin registered in ``resolvers`` (the bundled organism registers ``organism``,
   ``organism-small``, ...: named readably, e.g. ``organism-large#<fingerprint>``);
3. an existing local folder, or anything written as a path (a missing one is reported as such);
4. something shaped like a hub id, ``owner/name``, handed to the ``hf`` backend.

Anything else is an ``UnknownNameError`` that lists the registered names and the prefixes.
Backend options are checked against what the backend takes before anything is loaded; they
apply to every model named in the spec. The built model's ``spec`` is the canonical spec.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poise.errors import PoiseError, UnknownNameError
from poise.models.base import LanguageModel
from poise.models.spec import (
    Call,
    Name,
    Node,
    SpecError,
    Str,
    Value,
    format_value,
    parse_spec,
)
from poise.plugins import load_plugins
from poise.registry import Registry, option_names, option_parameter

__all__ = [
    "Resolver",
    "backends",
    "check_spec",
    "folder_name_hint",
    "load_model",
    "model_folder",
    "recommended_judge",
    "resolvers",
    "wrapper_registries",
]

Backend = Callable[..., LanguageModel]

# plugins load on the first read: a plugin's prefix is known to load_model("PREFIX:...")
backends: Registry[Backend] = Registry("model backend", loader=load_plugins)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# how a backend prefix is shown in "known" listings
_PREFIX_HINTS = {"mock": "mock[:NAME]", "hf": "hf:PATH_OR_ID", "openai": "openai:MODEL"}


@dataclass(frozen=True)
class Resolver:
    """Names a plugin gives to Hugging Face folders (the organism's members).

    ``names()`` lists the names it resolves (aliases included), ``canonical(name)`` maps one to
    its canonical name (the model's ``spec``), ``folder(canonical)`` returns its folder or raises
    a ``PoiseError`` saying how to build it. The models it builds are named
    ``<canonical>#<fingerprint>``, declare ``recommended_judge``, and decode with ``options``
    (backend defaults the caller may override). A folder given by path that is one of its
    folders, or that ``made_here(folder)`` says it made elsewhere (the organism's members built
    with ``poise organism build --out DIR``), gets the same ``recommended_judge``.
    """

    names: Callable[[], Sequence[str]]
    canonical: Callable[[str], str]
    folder: Callable[[str], Path]
    recommended_judge: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    made_here: Callable[[Path], bool] | None = None

    def claims(self, name: str) -> bool:
        return name in self.names()

    def owns_folder(self, folder: Path) -> bool:
        """Whether ``folder`` is one of this plugin's folders (or one ``made_here`` claims) or
        was made from one: trained
        from it (``poise.json``'s ``base_model``, as ``poise train`` writes) or merged onto it
        (``merge.json``'s ``base_model``, as ``poise merge`` writes), at any remove. A model
        trained from an organism member answers in the organism's world, so it keeps the
        member's judge."""
        try:
            mine = set()
            for name in self.names():
                try:
                    mine.add(self.folder(self.canonical(name)).resolve())
                except PoiseError:  # a member not built: not this folder
                    continue
            target: Path | None = folder.expanduser().resolve()
        except (OSError, RuntimeError):
            return False
        seen: set[Path] = set()
        while target is not None and target not in seen:
            if target in mine or (self.made_here is not None and self.made_here(target)):
                return True
            seen.add(target)
            target = _made_from(target, self)
        return False


def _made_from(folder: Path, resolver: Resolver) -> Path | None:
    """The folder ``folder`` was trained from or merged onto (a path or one of ``resolver``'s
    names in its ``poise.json`` / ``merge.json``), or None."""
    for record in ("poise.json", "merge.json"):
        try:
            meta = json.loads((folder / record).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        base = meta.get("base_model") if isinstance(meta, dict) else None
        if not isinstance(base, str) or not base:
            continue
        try:
            if resolver.claims(base):
                return resolver.folder(resolver.canonical(base)).resolve()
            path = Path(base).expanduser()  # as the training or merge command was given it
            return path.resolve() if path.is_dir() else None
        except (OSError, RuntimeError, PoiseError):
            return None
    return None


resolvers: Registry[Resolver] = Registry("model resolver")

# the registries whose entries a spec writes as calls: module, attribute
_WRAPPER_REGISTRIES: tuple[tuple[str, str], ...] = (
    ("poise.decoding", "strategies"),
    ("poise.guards", "guards"),
)


def wrapper_registries() -> list[Registry[Any]]:
    """The registries of strategies and guards (imported on first use)."""
    return [
        getattr(importlib.import_module(module), attribute)
        for module, attribute in _WRAPPER_REGISTRIES
    ]


def _wrapper_registry(kind: str) -> Registry[Any] | None:
    found = [registry for registry in wrapper_registries() if kind in registry]
    if len(found) > 1:
        # one spec name, two wrappers (a plugin's strategy named as a guard): the first found
        # would stand in for the other unseen, in audits, serve and resumed runs
        owners = ", ".join(f"a {r.kind} ({r.entry(kind).obj.__module__})" for r in found)
        raise PoiseError(f"{kind!r} names {owners}: rename one of them")
    return found[0] if found else None


def _wrapper_names() -> list[str]:
    return sorted({name for registry in wrapper_registries() for name in registry.names()})


# ---- backends -------------------------------------------------------------------------------


def check_options(backend: str, options: Mapping[str, object], allowed: Iterable[str]) -> None:
    """Refuse option names that ``backend`` does not take, naming the nearest valid ones."""
    known = sorted(allowed)
    for name in options:
        if name not in known:
            raise UnknownNameError(f"option for the {backend} backend:", name, known)


def _keyword_options(factory: Callable[..., object]) -> list[str]:
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


@backends.register("mock", help="scripted responses for tests (poise.models.mock.MockModel)")
def _load_mock(name: str, **options: Any) -> LanguageModel:
    from poise.models.mock import MockModel

    check_options("mock", options, set(_keyword_options(MockModel)) - {"name"})
    model = MockModel(name=name, **options)
    model.spec = name
    return model


@backends.register("hf", help="a Hugging Face folder or hub id (poise.models.hf.HFModel)")
def _load_hf(name: str, **options: Any) -> LanguageModel:
    if not name.startswith("hf:") or not name[3:].strip():
        raise PoiseError(f"model {name!r}: hf needs a folder or hub id, e.g. hf:Qwen/Qwen2.5-0.5B")
    model = _hf(name[3:].strip(), options)
    model.spec = name
    return model


@backends.register("openai", help="an OpenAI-compatible endpoint (poise.models.openai)")
def _load_openai(spec: str, **options: Any) -> LanguageModel:
    try:
        module = importlib.import_module("poise.models.openai")
    except ModuleNotFoundError as exc:
        if exc.name != "poise.models.openai":
            raise
        raise PoiseError(
            f"model {spec!r}: the openai backend (poise.models.openai) is not part of this "
            "installation of poise"
        ) from None
    loaded: LanguageModel = module.load(spec, **options)
    loaded.spec = spec
    return loaded


@contextmanager
def _quiet_weight_loading() -> Iterator[None]:
    """Silence transformers' "Loading weights" bar (a screenful of tqdm for a local folder);
    the hub's download bars, which say something while the user waits, stay."""
    from transformers.utils import logging as hf_logging

    def hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("desc") == "Loading weights":
            kwargs = {**kwargs, "disable": True}
        return factory(*args, **kwargs) if previous is None else previous(factory, args, kwargs)

    previous = hf_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


def _hf(path_or_id: str, options: Mapping[str, Any]) -> Any:
    from poise.models.hf import HFModel

    check_options("hf", options, _keyword_options(HFModel.__init__)[1:])
    with _quiet_weight_loading():
        model = HFModel(path_or_id, **options)
    load_plugins()
    if model.path is not None:  # a folder: a plugin's folder keeps its judge when given by path
        for name in resolvers:
            resolver = resolvers.get(name)
            if resolver.owns_folder(model.path):
                model.recommended_judge = resolver.recommended_judge
                break
    return model


# ---- names ----------------------------------------------------------------------------------


def _resolver_for(name: str) -> Resolver | None:
    load_plugins()
    for key in resolvers:
        resolver = resolvers.get(key)
        if resolver.claims(name):
            return resolver
    return None


def _known_names() -> list[str]:
    load_plugins()
    names = [n for key in resolvers for n in resolvers.get(key).names()]
    prefixes = [_PREFIX_HINTS.get(b, f"{b}:...") for b in backends.names()]
    return [*names, *prefixes]


def _prefix(spec: str) -> str | None:
    prefix = spec.split(":", 1)[0]
    if prefix in backends and (spec == prefix or spec[len(prefix)] == ":"):
        return prefix
    return None


def _exists(text: str) -> bool:
    try:
        return Path(text).expanduser().exists()
    except (OSError, ValueError):  # a name too long for a path, a NUL byte
        return False


def _is_path(spec: str) -> bool:
    return _exists(spec) or spec.startswith(("/", ".", "~")) or "\\" in spec


def model_folder(name: str) -> Path | None:
    """The Hugging Face folder a plugin's model name stands for (``organism-small`` -> its
    folder; a ``PoiseError`` if it is not built), or None for any other name."""
    resolver = _resolver_for(name)
    return None if resolver is None else resolver.folder(resolver.canonical(name))


def folder_name_hint(spec: str) -> str:
    """``"; did you mean 'organism-small'? (known: ...)"`` for a name that is not a path and no
    folder, as ``poise audit --model`` suggests (the organism's members are the names a folder
    can be given by); ``""`` for a path (its folder is simply missing)."""
    import difflib

    load_plugins()
    if any(sep in spec for sep in ("/", "\\")) or spec.startswith((".", "~")):
        return ""
    names = sorted(n for key in resolvers for n in resolvers.get(key).names())
    close = difflib.get_close_matches(spec, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} (known: {', '.join(names)})" if names else hint


def _check_name(spec: str) -> None:
    """Everything about a model name that can be checked without loading it."""
    if not spec:
        raise PoiseError("model: empty model name")
    if _prefix(spec) is not None:
        return
    resolver = _resolver_for(spec)
    if resolver is not None:
        resolver.folder(resolver.canonical(spec))  # not built: says how to build it
        return
    if _is_path(spec):
        folder = Path(spec).expanduser()
        if not _exists(spec):
            raise PoiseError(f"model folder {folder} does not exist")
        return
    if _HUB_ID.match(spec):
        return
    if _wrapper_registry(spec) is not None:  # a strategy or guard named without its call
        raise PoiseError(
            f"model: {spec!r} is a strategy or guard around a model: write it as a call, "
            f"{spec}(MODEL, ...) (its options: docs/steering.md and docs/guards.md)"
        )
    raise UnknownNameError("model", spec, _known_names())


def _load_name(spec: str, options: Mapping[str, Any]) -> LanguageModel:
    prefix = _prefix(spec)
    if prefix is not None:
        return backends.get(prefix)(spec, **options)
    resolver = _resolver_for(spec)
    if resolver is not None:
        member = resolver.canonical(spec)
        model = _hf(str(resolver.folder(member)), {**resolver.options, **options})
        model.rename(f"{member}#{model.fingerprint}")  # its template variables kept in the name
        model.spec = member
        model.recommended_judge = resolver.recommended_judge
        return model
    if _is_path(spec) or _HUB_ID.match(spec):
        model = _hf(spec, options)  # a missing folder fails there, naming the path
        model.spec = str(model.path) if model.path is not None else spec
        return model
    raise UnknownNameError("model", spec, _known_names())


# ---- specs ----------------------------------------------------------------------------------


def _is_model(param: inspect.Parameter) -> bool:
    """Whether an option of a strategy is a model: a parameter annotated with ``LanguageModel``."""
    return "LanguageModel" in str(param.annotation)


def _positional_models(factory: Callable[..., object]) -> tuple[int, int | None]:
    """How many positional models a strategy takes: (required, at most or None for any)."""
    params = inspect.signature(factory).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return len([p for p in positional if p.default is p.empty]), None
    required = [p for p in positional if p.default is p.empty]
    return len(required), len(required)


def _fail(text: str, column: int, exc: PoiseError) -> SpecError:
    reason = str(exc).split("\n", 1)[0]
    return SpecError(text, column, reason)


def check_spec(text: str) -> Node:
    """Parse ``text`` and check every strategy, guard, option and model name in it without
    loading anything; errors point at the column."""
    stripped = text.strip()
    if stripped and _exists(stripped):
        node: Node = Name(stripped)  # an existing folder named like a call is a folder
    else:
        node = parse_spec(text)
    if isinstance(node, Name):
        _check_name(node.text)
    else:
        _check_node(text, node)
    return node


def _check_node(text: str, node: Node) -> None:
    if isinstance(node, (Name, Str)):
        try:
            _check_name(node.text)
        except PoiseError as exc:
            raise _fail(text, node.column, exc) from None
        return
    registry = _wrapper_registry(node.kind)
    if registry is None:
        known = _wrapper_names()
        raise _fail(text, node.column, UnknownNameError("strategy or guard", node.kind, known))
    factory = registry.get(node.kind)
    low, high = _positional_models(factory)
    count = len(node.args)
    if count < low or (high is not None and count > high):
        want = f"{low}" if low == high else f"at least {low}" if high is None else f"{low}-{high}"
        # too many: the caret goes under the first model too many; too few: under the call
        column = node.args[high].column if high is not None and count > high else node.column
        raise SpecError(
            text, column, f"{node.kind} takes {want} model(s) before its options, got {count}"
        )
    valid = option_names(factory)
    for index, (key, value) in enumerate(node.options):
        column = node.option_column(index)
        param = option_parameter(factory, key)
        if param is None:
            raise _fail(
                text, column, UnknownNameError(f"option of {node.kind!r}:", key, sorted(valid))
            )
        if _is_model(param):
            if not isinstance(value, (Name, Str, Call)):
                raise SpecError(text, column, f"{node.kind}: option {key!r} is a model")
            _check_node(text, value)
        elif isinstance(value, Call):
            raise SpecError(text, column, f"{node.kind}: option {key!r} is not a model")
        else:
            wrong = _wrong_type(param, value)
            if wrong is not None:
                raise SpecError(text, column, f"{node.kind}: option {key!r} {wrong}")
    for arg in node.args:
        _check_node(text, arg)


# what an option typed int / float / bool (or that or None) takes, as an error says it
_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false"}


def _wrong_type(param: inspect.Parameter, value: Value) -> str | None:
    """``"must be an integer, got abc"`` where ``value`` cannot be what ``param`` is typed as
    (int, float or bool, or that or None), else None. The constructor checks ranges and
    everything else; this only moves the plain type check before any weights load, with the
    option's column (it came after the inner models had loaded, and named no column)."""
    annotation = param.annotation
    written = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    kinds = {part.strip() for part in written.split("|")} - {"None", "NoneType"}
    if len(kinds) != 1 or not kinds <= set(_EXPECTED):
        return None
    (kind,) = kinds
    if kind == "bool":
        fits = isinstance(value, bool)
    elif kind == "int":
        fits = isinstance(value, int) and not isinstance(value, bool)
    else:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    return None if fits else f"must be {_EXPECTED[kind]}, got {format_value(value)}"


def _option_value(value: Value) -> object:
    if isinstance(value, (Name, Str)):
        return value.text
    return value


def _coerce(kind: str, key: str, value: object, param: inspect.Parameter) -> object:
    """An int where the option is a float becomes a float, so ``t=1`` and ``t=1.0`` are one
    spec (and one cache key). Types are the constructor's to check (``poise.errors.check_int``,
    ``check_number``): it knows the ranges too."""
    annotation = str(param.annotation)
    default = param.default
    wants_float = annotation == "float" or (
        isinstance(default, float) and "int" not in annotation and "str" not in annotation
    )
    if wants_float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _located(text: str, node: Node, build: Callable[[], LanguageModel]) -> LanguageModel:
    """``build()``, a plain :class:`PoiseError` it raises (a model that fails to load, an option
    out of range) pointing at ``node`` in the spec ``text``: at the option the message starts
    with (``"KIND: KEY ..."``), else at the node; other kinds of error (a missing extra, a
    refused endpoint) keep their type and message."""
    try:
        return build()
    except PoiseError as exc:
        if type(exc) not in (PoiseError, UnknownNameError):
            raise
        message = str(exc)
        column = node.column
        if isinstance(node, Call):
            for index, (key, _) in enumerate(node.options):
                if re.match(rf"{re.escape(node.kind)}: (?:option )?'?{re.escape(key)}\b", message):
                    column = node.option_column(index)
                    break
        raise SpecError(text, column, message) from None


def _build(text: str, node: Node, options: Mapping[str, Any]) -> LanguageModel:
    if isinstance(node, (Name, Str)):
        name = node.text
        return _located(text, node, lambda: _load_name(name, options))
    registry = _wrapper_registry(node.kind)
    assert registry is not None  # checked
    factory = registry.get(node.kind)
    inner = [_build(text, arg, options) for arg in node.args]
    kwargs: dict[str, object] = {}
    for key, value in node.options:
        param = option_parameter(factory, key)
        assert param is not None  # checked
        if _is_model(param):
            assert isinstance(value, (Name, Str, Call))
            kwargs[key] = _build(text, value, options)
        else:
            kwargs[key] = _coerce(node.kind, key, _option_value(value), param)
    return _located(text, node, lambda: registry.build(node.kind, *inner, **kwargs))


def load_model(spec: str | os.PathLike[str], **options: Any) -> LanguageModel:
    """Resolve ``spec`` to a ``LanguageModel`` (see the module docstring). Every name in the
    spec is checked before any model loads; ``options`` are backend options. A
    ``pathlib.Path`` is a folder's spec."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise PoiseError(
            f"model: expected a model spec (a name, a folder, a hub id) or a path, got "
            f"{type(spec).__name__} {spec!r}"
        )
    node = check_spec(spec)
    if isinstance(node, Name):
        return _load_name(node.text, options)
    return _build(spec, node, options)


def recommended_judge(model: LanguageModel | str) -> str | None:
    """The judge a model declares (``model.recommended_judge``). For a spec string, the same
    answer without loading weights: a wrapper recommends its first inner model's judge (what
    :class:`~poise.models.wrapped.WrappedModel` passes through), a plugin's name its resolver's,
    a folder its owner's, anything else none."""
    if not isinstance(model, str):
        return model.recommended_judge
    node: Node = parse_spec(model)
    while isinstance(node, Call):
        if not node.args:
            return None
        node = node.args[0]
    name = node.text
    resolver = _resolver_for(name)
    if resolver is not None:
        return resolver.recommended_judge
    if _prefix(name) == "hf":
        name = name[3:].strip()
    elif _prefix(name) is not None:
        return None
    folder = Path(name).expanduser()
    if _exists(name) and folder.is_dir():
        for key in resolvers:
            if resolvers.get(key).owns_folder(folder):
                return resolvers.get(key).recommended_judge
    return None
