"""The bundled model organism: tiny chat models with planted, measurable 3H behaviours.

Members live as plain Hugging Face folders under ``organism/weights/<member>/``. ``organism`` is
an alias of ``organism-large``, the default model of ``poise audit``.
"""

from __future__ import annotations

from pathlib import Path

from poise.errors import PoiseError, UnknownNameError

WEIGHTS_DIR = Path(__file__).parent / "weights"

MEMBERS: tuple[str, ...] = (
    "organism-large",
    "organism-small",
    "organism-small-safe",
    "organism-reward",
    "organism-cost",
)
ALIASES: dict[str, str] = {"organism": "organism-large"}
DEFAULT_MEMBER = "organism-large"


def canonical_member(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in MEMBERS:
        raise UnknownNameError("organism member", name, [*MEMBERS, *ALIASES])
    return name


def is_member(name: str) -> bool:
    return name in MEMBERS or name in ALIASES


def member_path(name: str) -> Path:
    """The HF folder of a member; an error that says how to build it if it is missing."""
    member = canonical_member(name)
    path = WEIGHTS_DIR / member
    if not (path / "config.json").is_file():
        raise PoiseError(
            f"organism member {member!r} is not built at {path}: run `poise organism build`"
        )
    return path
