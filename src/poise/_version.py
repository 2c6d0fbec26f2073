"""The version of poise (the ground floor: every layer may read it)."""

__version__ = "0.1.0"
