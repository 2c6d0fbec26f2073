"""Plugins: modules that register things (model names, judges, strategies) when imported.

The core never imports a plugin by name in code; it imports the modules listed here, and those
that installed packages declare under the ``poise.plugins`` entry-point group, once, the first
time a registry that plugins fill is read (the model resolver, the judges). The bundled organism
is such a plugin: importing ``poise.organism`` registers its members with the model resolver and
its oracle with the judges.
"""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger(__name__)

# modules imported for their registrations (strings: the core does not depend on them)
PLUGINS: tuple[str, ...] = ("poise.organism",)
ENTRY_POINT_GROUP = "poise.plugins"

_lock = threading.RLock()  # a plugin may read a registry while it registers
_loaded = False


def load_plugins() -> None:
    """Import every plugin once (a missing bundled plugin is skipped; a broken one raises)."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        for module in PLUGINS:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
                log.debug("plugin %s is not installed", module)
        from importlib.metadata import entry_points

        for entry in entry_points(group=ENTRY_POINT_GROUP):
            entry.load()
        _loaded = True
