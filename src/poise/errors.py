"""Errors a user can cause.

A :class:`PoiseError` carries one line that says what went wrong and where (a file and line,
a field, or a name with the nearest valid names). The CLI prints that line and exits with code 2;
library callers catch it like any exception.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PoiseError(Exception):
    """A mistake in the user's input: bad file, unknown name, missing extra, bad value."""

    exit_code = 2


class UnknownNameError(PoiseError, KeyError):
    """A name that no registry knows."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known) if known else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}{hint} (known: {listing})")
        self.kind = kind
        self.name = name

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class MissingExtraError(PoiseError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(f"{feature} needs the package {package!r}: pip install 'poise[{extra}]'")


def require_extra(package: str, extra: str, feature: str) -> None:
    """A :class:`MissingExtraError` now, before any work, when ``package`` is not installed."""
    import importlib.util

    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install counts as missing
        found = False
    if not found:
        raise MissingExtraError(package, extra, feature)


def located(path: object, line: int | None, message: str) -> PoiseError:
    """An error that points at ``path:line``."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return PoiseError(f"{where}: {message}")
