"""Attacks: how suite items become requests (greedy, decoding-grid exploitation, worst-of-N),
and how an attack's records are summarised."""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from poise.attacks.base import Request, SystemPrompt, attacks, build_chat
from poise.attacks.exploitation import exploitation_summary
from poise.attacks.worst_of_n import worst_of_n_summary

# attack name -> summary of its records (added to metrics.json under "attack")
SUMMARIES: dict[str, Callable[[Iterable[Mapping[str, Any]]], dict[str, Any]]] = {
    "exploitation": exploitation_summary,
    "worst_of_n": worst_of_n_summary,
    "best_of_n": worst_of_n_summary,  # runs recorded under the deprecated name
}

__all__ = ["SUMMARIES", "Request", "SystemPrompt", "attacks", "build_chat"]
