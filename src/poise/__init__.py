"""poise: measure and steer the helpful / harmless / honest balance of language models.

Importing poise is cheap: torch and transformers load only when a model is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from poise._version import __version__

if TYPE_CHECKING:
    from poise.auditing import audit as audit
    from poise.config import Sampling as Sampling
    from poise.models import load_model as load_model

_LAZY = {
    "audit": ("poise.auditing", "audit"),
    "Sampling": ("poise.config", "Sampling"),
    "load_model": ("poise.models", "load_model"),
}

__all__ = ["Sampling", "__version__", "audit", "load_model"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'poise' has no attribute {name!r}")
