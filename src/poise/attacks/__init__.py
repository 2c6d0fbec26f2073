"""Attacks: how suite items become requests (greedy, decoding-grid exploitation, best-of-N),
and how an attack's records are summarised."""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from poise.attacks.base import Request, SystemPrompt, attacks, build_chat
from poise.attacks.best_of_n import best_of_n_summary
from poise.attacks.exploitation import exploitation_summary

# attack name -> summary of its records (added to metrics.json under "attack")
SUMMARIES: dict[str, Callable[[Iterable[Mapping[str, Any]]], dict[str, Any]]] = {
    "exploitation": exploitation_summary,
    "best_of_n": best_of_n_summary,
}

__all__ = ["SUMMARIES", "Request", "SystemPrompt", "attacks", "build_chat"]
