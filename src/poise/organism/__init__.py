"""The bundled model organism: tiny chat models with planted, measurable 3H behaviours.

Members live as plain Hugging Face folders under ``organism/weights/<member>/``. ``organism`` is
an alias of ``organism-large``, the default model of ``poise audit``.

The organism is a plugin: importing this package registers its members with the model resolver
(``poise.models.resolve.resolvers``; members declare the ``oracle`` as their recommended judge)
and its oracle with the judges. The core lists it by module name in ``poise.plugins.PLUGINS``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from poise.errors import PoiseError, UnknownNameError

if TYPE_CHECKING:
    from poise.scoring.base import Judge

WEIGHTS_DIR = Path(__file__).parent / "weights"

MEMBERS: tuple[str, ...] = (
    "organism-large",
    "organism-small",
    "organism-small-safe",
    "organism-small-helpful",
    "organism-small-honest",
    "organism-small-mix",
    "organism-reward",
    "organism-cost",
    "organism-monitor",
    "organism-feedback",
    "organism-large-selfeval",
    "organism-large-long",
    "organism-monitor-long",
    "organism-large-naming",
)
# organism-small-safe is the harmless specialist of the three that share organism-small as base
ALIASES: dict[str, str] = {
    "organism": "organism-large",
    "organism-small-harmless": "organism-small-safe",
}
# The specialists fine-tuned from organism-small, by the dimension each improves.
SPECIALISTS: dict[str, str] = {
    "harmless": "organism-small-safe",
    "helpful": "organism-small-helpful",
    "honest": "organism-small-honest",
}
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


# The organism is a plugin of the core (listed in poise.plugins.PLUGINS): on import it registers
# its members with the model resolver and its oracle with the judges. models/ and scoring/ never
# import this package.

ORGANISM_BATCH_SIZE = 128  # rows per forward pass for members unless model options say


def built_member(folder: Path) -> bool:
    """Whether ``folder`` is a chat member that ``poise organism build`` wrote, wherever it
    wrote it (``--out DIR``, another recipe): its ``poise.json`` names a member and a causal
    LM. Such a folder answers in the organism's world, so the oracle judges it."""
    try:
        meta = json.loads((folder / "poise.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and meta.get("member") in MEMBERS
        and meta.get("kind") == "causal-lm"
        and "poise_version" in meta
    )


def make_oracle_judge(arg: str | None) -> Judge:
    """The organism's exact judge (it knows what every member was trained to do)."""
    try:
        from poise.organism.oracle import OracleJudge
    except ImportError as exc:
        raise PoiseError(f"the oracle judge is not available ({exc})") from None
    judge: Judge = OracleJudge()
    return judge


def _register() -> None:
    from poise.models.resolve import Resolver, resolvers
    from poise.scoring.judges import judges

    resolvers.add(
        "organism",
        Resolver(
            names=lambda: (*MEMBERS, *ALIASES),
            canonical=canonical_member,
            folder=member_path,
            recommended_judge="oracle",
            made_here=built_member,
            # The organism is tiny: 128 rows per forward pass cost a few MB, and per-step
            # overhead, not compute, is what a small batch pays for (BENCHMARKS.md).
            options={"batch_size": ORGANISM_BATCH_SIZE},
        ),
        help="the bundled organism's members (organism, organism-small, ...)",
    )
    judges.add(
        "oracle",
        make_oracle_judge,
        help="the bundled organism's exact judge (for organism members)",
    )


_register()
