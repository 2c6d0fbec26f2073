"""Attacks: how suite items become requests (greedy, decoding-grid exploitation, best-of-N)."""

from poise.attacks.base import Request, SystemPrompt, attacks, build_chat

__all__ = ["Request", "SystemPrompt", "attacks", "build_chat"]
