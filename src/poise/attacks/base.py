"""Attacks turn suite items into requests: the chat to send and how to decode it.

The plain audit is the ``greedy`` attack (one request per item with the audit's own sampling).
Other attacks (a grid of decoding configurations, worst-of-N sampling) return several requests per
item, each with its own ``request_id``, so metrics can be computed per configuration.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from poise.chat import with_default_system_prompt
from poise.config import Sampling
from poise.errors import PoiseError, UnknownNameError
from poise.models.base import Chat
from poise.plugins import load_plugins
from poise.registry import Registry
from poise.suites.schema import SuiteItem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One (item, decoding configuration) pair of an audit."""

    item: SuiteItem
    request_id: str  # e.g. "greedy", "temperature=0.70/sys=off"; unique per item
    chat: Chat
    sampling: Sampling
    system_prompt: str  # "default" | "none" | a literal prompt: how the chat was built


AttackFn = Callable[[Sequence[SuiteItem], Sampling, "SystemPrompt"], list[Request]]

attacks: Registry[AttackFn] = Registry("attack", loader=load_plugins)

# attack function -> its option check: the options as given (from the CLI: numbers and JSON lists
# parsed, other values strings) -> the options parsed to their types, or one PoiseError line
_OPTION_CHECKS: dict[Callable[..., Any], Callable[..., dict[str, Any]]] = {}


def option_check(
    attack: Callable[..., Any],
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Register ``fn(**options) -> options`` as the check of ``attack``'s options, which
    :func:`check_attack_options` runs before an audit loads its model."""

    def add(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        _OPTION_CHECKS[attack] = fn
        return fn

    return add


# attack function -> a check of the audit's sampling it cannot honour (one PoiseError line)
_SAMPLING_CHECKS: dict[Callable[..., Any], Callable[[Sampling], None]] = {}


def sampling_check(
    attack: Callable[..., Any],
) -> Callable[[Callable[[Sampling], None]], Callable[[Sampling], None]]:
    """Register ``fn(sampling)`` as ``attack``'s check of the audit's sampling, which
    :func:`check_attack_sampling` runs before an audit loads its model."""

    def add(fn: Callable[[Sampling], None]) -> Callable[[Sampling], None]:
        _SAMPLING_CHECKS[attack] = fn
        return fn

    return add


def check_attack_sampling(attack: Callable[..., Any], sampling: Sampling) -> None:
    """Refuse, before any work, audit sampling that ``attack`` would not honour."""
    check = _SAMPLING_CHECKS.get(attack)
    if check is not None:
        check(sampling)


def check_attack_options(attack: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``attack`` parsed to their types and checked (one PoiseError line for a bad
    value); the options as given for an attack without a registered check."""
    check = _OPTION_CHECKS.get(attack)
    return check(**options) if check is not None else dict(options)


def _items(value: object) -> list[Any]:
    """A list option's items: a list or tuple, ``"a,b"`` (as the CLI passes it), or one value."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _bounds(low: float, high: float | None, low_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}]"


def _is_number(value: object, low: float, high: float | None, low_open: bool) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (high is None or value <= high)
    )


def numbers_option(
    attack: str,
    name: str,
    value: object,
    low: float,
    high: float | None,
    *,
    low_open: bool = False,
    integer: bool = False,
) -> tuple[Any, ...]:
    """A non-empty list of distinct numbers in ``[low, high]`` (no upper bound when None; integers
    when ``integer``; a repeated value kept once) from a list, a number, or ``"0.5,0.7"``; else
    one line naming the attack, the option and the value."""
    parsed: list[Any] = []
    for part in _items(value):
        if isinstance(value, str):  # the CLI's "0.5,0.7": each part is text
            try:
                part = int(part) if integer else float(part)
            except ValueError:
                parsed = []
                break
        ok = _is_number(part, low, high, low_open) and (not integer or isinstance(part, int))
        if not ok:
            parsed = []
            break
        parsed.append(part if integer else float(part))
    parsed = list(dict.fromkeys(parsed))  # a value given twice is one configuration
    if not parsed:
        what = "integers" if integer else "numbers"
        raise PoiseError(
            f"attack {attack}: {name} must be {what} {_bounds(low, high, low_open)} (a list, "
            f"or comma-separated such as {'1,5' if integer else '0.5,0.7'}), got {value!r}"
        )
    return tuple(parsed)


def names_option(
    attack: str, name: str, value: object, known: Sequence[str], what: str
) -> tuple[str, ...]:
    """A non-empty list of names out of ``known`` from a list, one name, or ``"a,b"``; an
    unknown one is one line with the nearest known names."""
    parsed = _items(value)
    if not parsed or not all(isinstance(v, str) and v for v in parsed):
        plural = what[:-1] + "ies" if what.endswith("y") else what + "s"  # family: families
        raise PoiseError(
            f"attack {attack}: {name} must be {plural} out of {', '.join(known)} (a list, or "
            f"comma-separated), got {value!r}"
        )
    for v in parsed:
        if v not in known:
            raise PoiseError(f"attack {attack}: {name}: {UnknownNameError(what, v, known)}")
    return tuple(dict.fromkeys(parsed))


def kinds_option(attack: str, value: object) -> tuple[str, ...]:
    """The ``kinds`` option of an attack: suite kinds (:func:`poise.tasks.kinds`)."""
    from poise.tasks import kinds

    return names_option(attack, "kinds", value, kinds(), "kind")


def warn_left_out(attack: str, items: Sequence[SuiteItem], kinds: Sequence[str]) -> None:
    """Say which items an attack that asks only ``kinds`` leaves out (a suite given to the audit
    whose items got no request and no record, without a word)."""
    left = Counter(item.kind for item in items if item.kind not in kinds)
    if left:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(left.items()))
        wanted = ",".join([*kinds, *sorted(left)])
        logger.warning(
            "attack %s asks items of kinds %s only: %s item(s) left out, not answered (attack "
            "option kinds=%s asks them too)",
            attack,
            ", ".join(kinds),
            counts,
            wanted,
        )


@dataclass(frozen=True)
class SystemPrompt:
    """The audit's system-prompt setting, resolved against the model.

    ``setting`` is what the user asked for ("default", "none" or a literal prompt);
    ``default_text`` is the model's own recommended prompt (None if it declares none);
    ``in_template`` is whether the model's chat template inserts that default into a chat
    without a system message (``poise.models.system_prompt_in_template``): then "none" is
    sent as an explicit empty system message, which such a template renders as nothing.
    """

    setting: str
    default_text: str | None
    in_template: bool = False

    def text(self, setting: str | None = None) -> str | None:
        """The system prompt to send (None: no system message)."""
        setting = self.setting if setting is None else setting
        if setting == "default":
            return self.default_text
        if setting == "none":
            return "" if self.in_template else None
        return setting


def warn_undeclared_system_prompt(model: object, requests: Sequence[Request]) -> None:
    """Warn when chats asked with no system prompt go to a model that cannot tell how its chat
    template treats a chat without a system message: a server's model (``openai:``) whose
    template inserts a default there (the organism's does, as Qwen2.5's) would answer under
    that default. ``poise serve`` lists the declaration; other servers need the model option."""
    if getattr(model, "system_prompt_declared", True) is not False:
        return
    if not any(r.system_prompt == "none" for r in requests):
        return
    logger.warning(
        "%s: chats asked with no system prompt are sent without a system message; a served "
        "model whose chat template inserts a default system prompt there (the organism's does) "
        "answers under that default: if this one does, add the model option "
        "system_prompt_in_template=true (an empty system message is sent instead)",
        getattr(model, "name", "the model"),
    )


def build_chat(item: SuiteItem, system_prompt: str | None) -> Chat:
    """The item's chat with the audit's system prompt, unless the item brings its own."""
    return with_default_system_prompt(item.chat, system_prompt)


@attacks.register(
    "greedy", help="one request per item with the audit's sampling (greedy by default)"
)
def greedy(items: Sequence[SuiteItem], sampling: Sampling, system: SystemPrompt) -> list[Request]:
    request_id = "greedy" if sampling.greedy else "sampled"
    text = system.text()
    return [
        Request(item, request_id, build_chat(item, text), sampling, system.setting)
        for item in items
    ]
