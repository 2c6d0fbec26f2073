"""The merge-method registry: one pure per-tensor function per method, with declared parameters.

A merge method is a plain function::

    def method(tensors: Sequence[Tensor], base: Tensor | None, *, <options>) -> Tensor

- ``tensors``: the T models' tensors for one weight name, each ``[*shape]`` (the base model is
  not among them; it comes as ``base``, also ``[*shape]``, or ``None`` for methods without one).
- options are keyword-only. Options named in ``per_model`` take one value per model (a sequence
  of length T, in the order of ``tensors``); the others are shared scalars.
- the result is ``[*shape]`` in the dtype of ``base`` (or of ``tensors[0]`` without a base).

:func:`merge_method` registers a function in :data:`METHODS` with its one line of help, its
reference and the declared per-model options; :meth:`MergeMethod.parameters` lists the options
with their defaults, so a config or a CLI can be checked before any weight is read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from poise.errors import PoiseError, UnknownNameError
from poise.plugins import load_plugins
from poise.registry import Registry

BasePolicy = Literal["required", "optional", "none"]
MethodFn = Callable[..., torch.Tensor]

# Config keys that are Python keywords: the YAML spelling -> the function's option name.
KEYWORD_OPTIONS = {"lambda": "lambda_"}


@dataclass(frozen=True)
class MergeMethod:
    """A registered per-tensor merge function and what it declares about its inputs."""

    name: str
    fn: MethodFn
    per_model: tuple[str, ...]  # options given once per model (weight, density, ...)
    base: BasePolicy  # whether the method needs a base model
    min_models: int = 1
    max_models: int | None = None
    random: bool = False  # draws random masks: takes a ``seed`` option
    # a base_model also listed under models is the base, not a merged model (so with a
    # required base; mergekit's rule for methods whose per-model options skip the base)
    drop_listed_base: bool = False

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The keyword options of the function (name -> parameter with its default)."""
        return {
            p.name: p
            for p in inspect.signature(self.fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY
        }

    def required(self) -> list[str]:
        """Options without a default: a config must give them."""
        return [n for n, p in self.parameters().items() if p.default is p.empty]

    def check(self, options: Mapping[str, object], *, n_models: int, has_base: bool) -> None:
        """Refuse unknown or missing options and a wrong number of models (one line each)."""
        params = self.parameters()
        for key in options:
            name = KEYWORD_OPTIONS.get(key, key)
            if name not in params:
                raise UnknownNameError(f"option of merge method {self.name!r}:", key, params)
        given = {KEYWORD_OPTIONS.get(k, k) for k in options}
        missing = [n for n in self.required() if n not in given]
        if missing:
            raise PoiseError(f"merge method {self.name!r} needs the option(s) {missing}")
        if self.base == "required" and not has_base:
            raise PoiseError(f"merge method {self.name!r} needs a base_model")
        if self.base == "none" and has_base:
            raise PoiseError(f"merge method {self.name!r} takes no base_model")
        if n_models < self.min_models:
            raise PoiseError(
                f"merge method {self.name!r} needs at least {self.min_models} model(s) "
                f"besides the base, got {n_models}"
            )
        if self.max_models is not None and n_models > self.max_models:
            raise PoiseError(
                f"merge method {self.name!r} takes at most {self.max_models} model(s) "
                f"besides the base, got {n_models}"
            )

    def __call__(
        self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, **options: Any
    ) -> torch.Tensor:
        """Merge one tensor; per-model options may be scalars (broadcast to every model)."""
        resolved: dict[str, Any] = {}
        for key, value in options.items():
            name = KEYWORD_OPTIONS.get(key, key)
            if name in self.per_model and not isinstance(value, (list, tuple)):
                value = [value] * len(tensors)
            resolved[name] = value
        return self.fn(tensors, base, **resolved)


METHODS: Registry[MergeMethod] = Registry("merge method", loader=load_plugins)


def merge_method(
    name: str,
    *,
    reference: str,
    per_model: tuple[str, ...] = (),
    base: BasePolicy = "required",
    min_models: int = 1,
    max_models: int | None = None,
    random: bool = False,
    drop_listed_base: bool = False,
    help: str = "",
) -> Callable[[MethodFn], MethodFn]:
    """Register a per-tensor merge function under ``name`` (see the module docstring)."""

    def register(fn: MethodFn) -> MethodFn:
        _check_signature(name, fn, per_model)
        METHODS.add(
            name,
            MergeMethod(
                name, fn, per_model, base, min_models, max_models, random, drop_listed_base
            ),
            help=help or _first_line(fn),
            reference=reference,
        )
        return fn

    return register


def _check_signature(name: str, fn: MethodFn, per_model: tuple[str, ...]) -> None:
    """Refuse (ValueError, as a name clash is) a function the executor cannot call as
    ``fn(tensors, base, **options)`` with its keyword-only options, or ``per_model`` options it
    does not take: a plugin's method failed only at merge time, with a traceback, or had its
    options refused as unknown."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature (a builtin): the call itself checks
        return
    options = [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]
    where = f"merge method {name!r} ({getattr(fn, '__qualname__', fn)!r})"
    try:
        signature.bind([], None, **dict.fromkeys(options))
    except TypeError as exc:
        raise ValueError(
            f"{where} must be fn(tensors, base, *, OPTIONS) -> Tensor, with its options "
            f"keyword-only: {exc}"
        ) from None
    for option in per_model:
        if option not in options:
            raise ValueError(
                f"{where}: per_model option {option!r} is not one of its keyword-only options "
                f"({', '.join(options) or 'none'})"
            )


def get_method(name: str) -> MergeMethod:
    """The registered method ``name`` (an unknown name lists the nearest ones)."""
    return METHODS.get(name)


def _first_line(fn: object) -> str:
    doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
    return doc[0].strip() if doc else ""


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other float type is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32
