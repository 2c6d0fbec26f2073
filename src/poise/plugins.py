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

A plugin that fails to load stops every command with one line naming it (a PoiseError), whatever
it raised (a :class:`~poise.errors.PoiseError` of its own too); every later read of a registry
raises that same error again, not whatever a second, partial import of the plugin would raise.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading

log = logging.getLogger(__name__)

# modules imported for their registrations (strings: the core does not depend on them)
PLUGINS: tuple[str, ...] = ("poise.organism",)
ENTRY_POINT_GROUP = "poise.plugins"

_lock = threading.RLock()  # a plugin may read a registry while it registers
_loaded = False
_loading = False  # in this call's thread (the lock is held): a read while registering
_failure: str | None = None  # the message of the plugin that failed to load, said again


def load_plugins() -> None:
    """Import every plugin once (a missing bundled plugin is skipped; a broken one raises)."""
    global _loading
    if _loaded:
        return
    with _lock:
        if _loaded or _loading:
            return  # a plugin reading a registry while it registers sees what is there so far
        if _failure is not None:
            # loading again would import the failed plugin a second time: what it registered
            # before it failed would then clash with itself, hiding the first error
            from poise.errors import PoiseError

            raise PoiseError(_failure)
        _loading = True
        try:
            _load_all()
        finally:
            _loading = False


def _load_all() -> None:
    """Import the listed plugins and the entry points (load_plugins holds the lock)."""
    global _loaded, _failure
    for module in PLUGINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            log.debug("plugin %s is not installed", module)
    from importlib.metadata import entry_points

    from poise.errors import PoiseError

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        where = f"plugin {entry.name!r} ({entry.value}"
        if entry.dist is not None:
            where += f", from {entry.dist.name}"
        where += ")"
        try:
            loaded = entry.load()  # imports the module (its decorators register)
            if _is_register_function(loaded):  # "pkg.module:register": call it to register
                loaded()
        except Exception as exc:  # every command would fail on it: say which, in a line
            # a PoiseError of its own ("unknown attack 'greedi'") names the plugin too
            what = str(exc) if isinstance(exc, PoiseError) else f"{type(exc).__name__}: {exc}"
            _failure = f"{where} failed to load: {what} (uninstall it, or fix it, to use poise)"
            raise PoiseError(_failure) from exc
    _loaded = True


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
