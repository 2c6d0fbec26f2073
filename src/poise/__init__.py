"""poise: measure and steer the helpful / harmless / honest balance of language models.

The API at the top level (the command line, ``poise --help``, does the same things):

- ``poise.audit(model=..., suites=[...], sampling={...}, judge=...)``: audit a model on the
  harmful, borderline, benign and honesty suites; returns the run (``.metrics``, ``.path``).
- ``poise.load_model(spec)``: a model from a spec: an organism member (``organism-small``), a
  folder, a hub id, ``openai:MODEL@URL``, or a strategy or guard wrapping one
  (``best_of_n(organism-large, n=4, cost=organism-cost)``).
- ``poise.Sampling``: how answers are drawn (temperature, top_p, top_k, max_new_tokens, n, seed).

Training, merging, probes, guards and serving live in ``poise.train``, ``poise.merge``,
``poise.probes`` (with ``poise.probing``: a probe trained, a run scored, one call each),
``poise.guards`` and ``poise.serve``. Importing poise is cheap: torch and
transformers load only when a model is used.
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


def __dir__() -> list[str]:
    return sorted(set(__all__) | {n for n in globals() if n.startswith("__")})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'poise' has no attribute {name!r}")
