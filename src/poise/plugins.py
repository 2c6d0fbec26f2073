"""Plugins: modules that register things (model names, judges, strategies) when imported.

The core never imports a plugin by name in code; it imports the modules listed here, and those
that installed packages declare under the ``poise.plugins`` entry-point group, once, the first
time any registry that plugins fill is read (models, strategies, guards, judges, attacks, suite
formats, tasks and their metrics, merge methods, training recipes and losses). The bundled
organism is such a plugin: importing ``poise.organism`` registers its members with the model
resolver and its oracle with the judges.

An installed package declares its plugin in its ``pyproject.toml``::

    [project.entry-points."poise.plugins"]
    mine = "my_package.poise_plugin"            # a module whose import registers
    other = "my_package.plugin:register"        # or a function without arguments, then called

An entry point naming a function that takes arguments is not called: it is a factory its module
registered (an attack, a judge); one that no registry holds is one warning naming it.

A plugin that fails to load, whatever it raises (a :class:`~poise.errors.PoiseError` of its own
too, or ``SystemExit`` from a ``sys.exit()`` as it is imported; only Ctrl-C stops the command),
does not stop poise: it is logged once as a warning, one line naming the plugin, its entry point
and the error, and the other plugins and every command work without it. It is not imported
again (what it registered before it failed would clash with itself). A name it would have
registered is then unknown, and the :class:`~poise.errors.UnknownNameError` says which plugin
failed to load.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading

from poise.errors import PoiseError, explain_unknown_names

log = logging.getLogger(__name__)

# modules imported for their registrations (strings: the core does not depend on them)
PLUGINS: tuple[str, ...] = ("poise.organism",)
ENTRY_POINT_GROUP = "poise.plugins"

_lock = threading.RLock()  # a plugin may read a registry while it registers
_loaded = False
_loading = False  # in this call's thread (the lock is held): a read while registering
# the plugins that failed to load, as "plugin 'NAME' (VALUE, from DIST)" -> "TYPE: message"
_failures: dict[str, str] = {}


def load_plugins() -> None:
    """Import every plugin once (a missing bundled plugin is skipped; a broken one is logged as
    a warning and left out)."""
    global _loading
    if _loaded:
        return
    with _lock:
        if _loaded or _loading:
            return  # a plugin reading a registry while it registers sees what is there so far
        _loading = True
        try:
            _load_all()
        finally:
            _loading = False


def failed_plugins() -> dict[str, str]:
    """The plugins that failed to load: ``{"plugin 'NAME' (VALUE, from DIST)": "TYPE: message"}``
    (empty when every plugin loaded, or none was loaded yet)."""
    return dict(_failures)


def _load_all() -> None:
    """Import the listed plugins and the entry points (load_plugins holds the lock)."""
    global _loaded
    for module in PLUGINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                _failed(f"plugin {module!r}", exc)
            else:
                log.debug("plugin %s is not installed", module)
        except (Exception, SystemExit) as exc:  # sys.exit() at import too (not Ctrl-C)
            _failed(f"plugin {module!r}", exc)
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        where = f"plugin {entry.name!r} ({entry.value}"
        if entry.dist is not None:
            where += f", from {entry.dist.name}"
        where += ")"
        try:
            loaded = entry.load()  # imports the module (its decorators register)
            if _is_register_function(loaded):  # "pkg.module:register": call it to register
                loaded()
            elif inspect.isfunction(loaded) and not _is_registered(loaded):
                _not_called(where, loaded)
        # one broken plugin must not stop every command: nor one that calls sys.exit() as it
        # is imported (an argparse at module level), which ended any command at its first
        # registry read, silently, with the plugin's exit status
        except (Exception, SystemExit) as exc:
            _failed(where, exc)
    _loaded = True  # a failed plugin is not imported again: its partial registrations would clash


def _failed(where: str, exc: BaseException) -> None:
    # a PoiseError of its own ("unknown attack 'greedi'") is its message; anything else its type
    what = str(exc) if isinstance(exc, PoiseError) else f"{type(exc).__name__}: {exc}"
    _failures[where] = what
    log.warning(
        "%s failed to load: %s; poise goes on without it (what it registers is unknown)",
        where,
        what,
    )


def _is_registered(obj: object) -> bool:
    """:func:`poise.registry.is_registered`, found by name: the registry and the plugins sit
    side by side in the lowest layer, and neither imports the other (the registry, which calls
    the plugins' loader, is imported whenever a registry exists)."""
    import sys

    registry = sys.modules.get("poise.registry")
    check = getattr(registry, "is_registered", None)
    return bool(check(obj)) if callable(check) else False


def _not_called(where: str, fn: object) -> None:
    """A function an entry point names that takes arguments and that no registry holds: it is
    neither a ``register`` to call (a ``register(registry)`` did nothing, without a word) nor a
    registered factory. One warning; what its module registered as it was imported stays."""
    required = [
        p.name
        for p in inspect.signature(fn).parameters.values()  # type: ignore[arg-type]
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    log.warning(
        "%s names %s, which takes arguments (%s) and is registered nowhere: it was not called "
        "(an entry point's function is called with no arguments)",
        where,
        getattr(fn, "__qualname__", fn),
        ", ".join(required),
    )


def _unknown_name_note() -> str:
    """What an unknown name's error adds while plugins failed to load: which ones."""
    if not _failures:
        return ""
    failed = "; ".join(f"{where} failed to load ({what})" for where, what in _failures.items())
    they = "it registers" if len(_failures) == 1 else "they register"
    return f"{failed}, so nothing {they} is known"


explain_unknown_names(_unknown_name_note)


def _is_register_function(obj: object) -> bool:
    """A function that takes no arguments: an entry point's ``register``, to be called. An entry
    point may also name a registered factory (an attack, a judge), which takes arguments and
    registered itself when its module was imported: it is not called."""
    if not inspect.isfunction(obj):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in inspect.signature(obj).parameters.values()
    )
