"""One small registry for every pluggable kind (backends, strategies, judges, attacks, losses ...).

Usage::

    strategies = Registry("decoding strategy")

    @strategies.register("logit_temperature", help="scale next-token logits by 1/t",
                         reference="arXiv 1503.02531")
    class LogitTemperature(WrappedModel): ...

    strategies.get("logit_temperature")         # the registered object
    strategies.build("logit_temperature", base, t=0.7)   # options checked, then called

One naming style for every registry: snake_case (``best_of_n``, ``safe_rl``, ``hh_rlhf``), the
style of Python identifiers and of the keyword options that follow the name in a model spec.
Names users may have typed in an older style stay as deprecated aliases (``alias``): they resolve,
with a ``FutureWarning`` that names the new name (shown by default, so a CLI user sees it too).

An unknown name, or an unknown option of :meth:`Registry.build`, is an
:class:`~poise.errors.UnknownNameError` that lists the nearest valid names.
"""

from __future__ import annotations

import inspect
import re
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from poise.errors import PoiseError, UnknownNameError

T = TypeVar("T")

NAME_STYLE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with its one line of help and its reference (arXiv id or URL)."""

    name: str
    obj: T
    help: str
    reference: str | None


def _first_doc_line(obj: object) -> str:
    lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return lines[0].strip() if lines else ""


# every registry made, for is_registered (weak: a registry made in a test goes away with it)
_REGISTRIES: weakref.WeakSet[Registry[Any]] = weakref.WeakSet()


def is_registered(obj: object) -> bool:
    """Whether ``obj`` is registered in any registry (as looked up so far, plugins not loaded):
    itself, or as the function or class a registered record holds (a merge method's function)."""
    for registry in list(_REGISTRIES):
        for entry in registry._entries.values():
            if entry.obj is obj:
                return True
            if any(value is obj for value in getattr(entry.obj, "__dict__", {}).values()):
                return True
    return False


class Registry(Generic[T]):
    """Objects of one kind by name (see the module docstring)."""

    def __init__(
        self,
        kind: str,
        *,
        loader: Callable[[], None] | None = None,
        check: Callable[[str, T], None] | None = None,
    ) -> None:
        """``loader``: called before every lookup (``poise.plugins.load_plugins`` for the
        registries plugins fill: installed plugins register on first read, whichever registry
        is read first). ``check(name, obj)``: refuses (ValueError) an entry this kind cannot
        hold."""
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}  # deprecated name -> current name
        self._loader = loader
        self._check = check
        _REGISTRIES.add(self)

    def _load(self) -> None:
        if self._loader is not None:
            self._loader()

    # -- registering

    def register(
        self, name: str, *, help: str = "", reference: str | None = None
    ) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def add(obj: T) -> T:
            self.add(name, obj, help=help, reference=reference)
            return obj

        return add

    def add(self, name: str, obj: T, *, help: str = "", reference: str | None = None) -> None:
        """Register ``obj`` as ``name`` (snake_case). ``help`` defaults to the first line of the
        object's docstring."""
        if not NAME_STYLE.match(name):
            raise ValueError(f"{self.kind} name {name!r} is not snake_case (e.g. 'best_of_n')")
        current = self._entries.get(name)
        if current is not None and current.obj is not obj:
            raise ValueError(
                f"{self.kind} {name!r} is already registered (by {_origin(current.obj)})"
            )
        if name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is already a deprecated alias")
        if self._check is not None:
            self._check(name, obj)
        self._entries[name] = Entry(name, obj, help or _first_doc_line(obj), reference)

    def alias(self, old: str, new: str) -> None:
        """Keep ``old`` (any style) working as a deprecated name of the registered ``new``."""
        if new not in self._entries:
            raise ValueError(f"{self.kind} {new!r} is not registered")
        if old in self._entries:
            raise ValueError(f"{self.kind} {old!r} is registered; it cannot be an alias")
        if self._aliases.get(old, new) != new:  # a second alias silently took the name over
            raise ValueError(
                f"{self.kind} {old!r} is already a deprecated alias of {self._aliases[old]!r}"
            )
        self._aliases[old] = new

    # -- looking up

    def canonical(self, name: str, *, load: bool = True) -> str:
        """The registered name of ``name``: itself, or the current name of a deprecated alias
        (with a ``FutureWarning``); an unknown name is an ``UnknownNameError``. ``load=False``:
        see :meth:`names`."""
        if load:
            self._load()
        if name in self._entries:
            return name
        new = self._aliases.get(name)
        if new is not None:
            warnings.warn(
                f"{self.kind} {name!r} is deprecated; use {new!r}", FutureWarning, stacklevel=3
            )
            return new
        raise UnknownNameError(self.kind, name, self.names(load=load))

    def entry(self, name: str, *, load: bool = True) -> Entry[T]:
        return self._entries[self.canonical(name, load=load)]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def help(self, name: str) -> str:
        return self.entry(name).help

    def reference(self, name: str) -> str | None:
        return self.entry(name).reference

    def names(self, *, load: bool = True) -> list[str]:
        """Registered names, sorted (deprecated aliases are not listed); ``load=False`` leaves
        the plugins unloaded (what is registered so far, for code that runs at import)."""
        if load:
            self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    # -- building

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword options the entry ``name`` takes (its signature's keyword parameters,
        leading positional-only / positional parameters without defaults excluded)."""
        return keyword_options(self.get(name))

    def check_options(self, name: str, options: Mapping[str, object]) -> None:
        """Refuse option names the entry does not take, naming the nearest valid ones."""
        name = self.canonical(name)
        obj = self._entries[name].obj
        numbered = numbered_options(obj)
        if _takes_any_keyword(obj) and not numbered:
            return
        valid = option_names(obj)
        for option in options:
            if option_parameter(obj, option) is None and not valid:
                # "(known: (none registered))" left the user guessing: say it takes none, and
                # which entries take that option (--attack-option n=8 meant for worst_of_n)
                others = [
                    other
                    for other, entry in sorted(self._entries.items())
                    if other != name and option_parameter(entry.obj, option) is not None
                ]
                where = f" ({option!r} is an option of {', '.join(others)})" if others else ""
                raise PoiseError(f"{self.kind} {name!r} takes no options, got {option!r}{where}")
            if option_parameter(obj, option) is None:
                raise UnknownNameError(f"option of {self.kind} {name!r}:", option, valid)

    def build(self, name: str, /, *args: Any, **options: Any) -> Any:
        """Call the entry ``name`` with ``args`` and ``options`` after checking the option names
        once against its signature (a typo names the nearest valid options)."""
        name = self.canonical(name)
        self.check_options(name, options)
        obj: Any = self._entries[name].obj
        try:
            inspect.signature(obj).bind(*args, **options)
        except TypeError as exc:
            raise PoiseError(f"{self.kind} {name!r}: {exc}") from None
        except ValueError:  # no signature (a builtin): let the call itself check
            pass
        return obj(*args, **options)


def _origin(obj: object) -> str:
    """Where a registered object comes from, for a clash's message: the function or class, or
    for a record that holds one (a merge method, a recipe) the first it holds."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        held = [
            v
            for v in getattr(obj, "__dict__", {}).values()
            if inspect.isfunction(v) or inspect.isclass(v)
        ]
        obj = held[0] if held else obj
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"


def keyword_options(obj: object) -> dict[str, inspect.Parameter]:
    """The parameters of ``obj`` that can be given by keyword and have a default, or are
    keyword-only: the options of a registered factory."""
    try:
        params = inspect.signature(obj).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p
        for p in params.values()
        if p.kind is p.KEYWORD_ONLY
        or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)
    }


# a numbered copy of an option: NAME_N with N >= 2
_NUMBERED = re.compile(r"(?P<base>\w+?)_(?P<n>[2-9]|[1-9]\d+)")


def numbered_options(obj: object) -> tuple[str, ...]:
    """The options of ``obj`` that may be repeated any number of times as ``NAME_2``,
    ``NAME_3``, ...: its ``numbered_options`` attribute (e.g. EFT's ``tuned`` / ``beta``, one
    pair per tuned model), each also a keyword option of its own."""
    names = getattr(obj, "numbered_options", ())
    return tuple(n for n in names if n in keyword_options(obj))


def numbered_values(
    owner: str, names: tuple[str, ...], given: Mapping[str, Any]
) -> dict[int, dict[str, Any]]:
    """``given`` numbered options (``NAME_N``, N >= 2, NAME one of ``names``) grouped by N, in
    increasing N: ``{N: {NAME: value}}``. Any other key is one clear error naming ``owner``."""
    groups: dict[int, dict[str, Any]] = {}
    for key, value in given.items():
        match = _NUMBERED.fullmatch(key)
        if match is None or match["base"] not in names:
            raise PoiseError(
                f"{owner}: unknown option {key!r} (numbered options: "
                + ", ".join(f"{n}_N" for n in names)
                + " for N >= 2)"
            )
        groups.setdefault(int(match["n"]), {})[match["base"]] = value
    return dict(sorted(groups.items()))


def option_names(obj: object) -> list[str]:
    """The options ``obj`` takes, as an error lists them: its keyword options, and the first
    numbered copy (``NAME_2``) of each of its :func:`numbered_options`."""
    return [*keyword_options(obj), *(f"{n}_2" for n in numbered_options(obj))]


def option_parameter(obj: object, key: str) -> inspect.Parameter | None:
    """The parameter behind the option ``key`` of ``obj``: one of its keyword options, or a
    numbered copy ``NAME_N`` (N >= 2) of one of its :func:`numbered_options`, which takes the
    same kind of value; None for an option it does not take."""
    valid = keyword_options(obj)
    if key in valid:
        return valid[key]
    match = _NUMBERED.fullmatch(key)
    if match is not None and match["base"] in numbered_options(obj):
        return valid[match["base"]]
    return None


def _takes_any_keyword(obj: object) -> bool:
    try:
        params = inspect.signature(obj).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD for p in params.values())


def spec_form(name: str, factory: object) -> str:
    """How a spec names the wrapper ``name``, with every option it takes: ``name(MODEL, n=4,
    reward=…, ...)``. An option with a fixed default shows it (booleans as a spec writes them);
    ``name=…`` has none: it is required, or follows from the other options or the model (the
    wrapper's error says which); ``name=MODEL`` takes a model spec; ``name_N=…``: numbered
    copies (``tuned_2``, ...)."""
    parts = ["MODEL"]
    for option, parameter in keyword_options(factory).items():
        default = parameter.default
        if default is inspect.Parameter.empty or default is None or default == "":
            model = "LanguageModel" in str(parameter.annotation)
            parts.append(f"{option}={'MODEL' if model else '…'}")
        elif isinstance(default, bool):
            parts.append(f"{option}={str(default).lower()}")
        elif isinstance(default, str) and not default.isidentifier():
            parts.append(f"{option}={default!r}")
        else:
            parts.append(f"{option}={default}")
    parts += [f"{option}_N=…" for option in numbered_options(factory)]
    return f"{name}({', '.join(parts)})"
