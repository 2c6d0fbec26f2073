"""From a model name to a ``LanguageModel``.

Names resolve in this order:

1. a backend prefix: ``mock`` / ``mock:NAME``, ``hf:PATH_OR_ID``, ``openai:...`` (the prefixes
   live in the ``backends`` registry, so a new backend is one ``backends.add`` away);
2. a bundled organism member: ``organism``, ``organism-small``, ... (named readably, e.g.
   ``organism-large#<fingerprint>``);
3. an existing local folder, or anything written as a path (a missing one is reported as such);
4. something shaped like a hub id, ``owner/name``, handed to the ``hf`` backend.

Anything else is an ``UnknownNameError`` that lists the organism members and the prefixes.
Options are checked against what the backend takes before anything is loaded.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from poise.errors import PoiseError, UnknownNameError
from poise.models.base import LanguageModel
from poise.registry import Registry

Backend = Callable[..., LanguageModel]

backends: Registry[Backend] = Registry("model backend")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# how a backend prefix is shown in "known" listings
_PREFIX_HINTS = {"mock": "mock[:NAME]", "hf": "hf:PATH_OR_ID", "openai": "openai:MODEL"}
ORGANISM_BATCH_SIZE = 128  # rows per forward pass for organism members unless model options say


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
    return MockModel(name=name, **options)


@backends.register("hf", help="a Hugging Face folder or hub id (poise.models.hf.HFModel)")
def _load_hf(name: str, **options: Any) -> LanguageModel:
    if not name.startswith("hf:") or not name[3:].strip():
        raise PoiseError(f"model {name!r}: hf needs a folder or hub id, e.g. hf:Qwen/Qwen2.5-0.5B")
    return _hf(name[3:].strip(), options)


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
    return loaded


def _hf(path_or_id: str, options: Mapping[str, Any]) -> Any:
    from poise.models.hf import HFModel

    check_options("hf", options, _keyword_options(HFModel.__init__)[1:])
    return HFModel(path_or_id, **options)


def _organism(spec: str, options: Mapping[str, Any]) -> LanguageModel:
    from poise.organism import canonical_member, member_path

    member = canonical_member(spec)
    # The organism is tiny: 128 rows per forward pass cost a few MB, and per-step overhead,
    # not compute, is what a small batch pays for (BENCHMARKS.md, audit throughput).
    options = {"batch_size": ORGANISM_BATCH_SIZE, **options}
    model = _hf(str(member_path(member)), options)
    model.name = f"{member}#{model.fingerprint}"
    loaded: LanguageModel = model
    return loaded


def _known_names() -> list[str]:
    from poise.organism import ALIASES, MEMBERS

    return [*MEMBERS, *ALIASES, *(_PREFIX_HINTS.get(b, f"{b}:...") for b in backends.names())]


def load_model(spec: str, **options: Any) -> LanguageModel:
    """Resolve ``spec`` to a ``LanguageModel`` (see the module docstring for the order)."""
    from poise.organism import is_member

    spec = spec.strip()
    if not spec:
        raise PoiseError("model: empty model name")
    prefix = spec.split(":", 1)[0]
    if prefix in backends and (spec == prefix or spec[len(prefix)] == ":"):
        return backends.get(prefix)(spec, **options)
    if is_member(spec):
        return _organism(spec, options)
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith(("/", ".", "~")) or "\\" in spec:
        return _hf(spec, options)  # a missing folder fails there, naming the path
    if _HUB_ID.match(spec):
        return _hf(spec, options)
    raise UnknownNameError("model", spec, _known_names())
