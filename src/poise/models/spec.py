"""Model specs: the one string that names a model, wrapped or not.

A spec is a plain name, a path, a hub id, ``openai:NAME@URL``, ``mock:...`` or ``hf:...``, or a
registered strategy or guard written as a function call, nested freely::

    organism-small
    logit_temperature(organism-small, t=0.8)
    eft(organism-large, tuned=organism-small-safe, reference=organism-small, beta=1.0)
    guarded(best_of_n(organism-large, n=8, reward=organism-reward), monitor=organism-monitor)

Grammar (whitespace between tokens is ignored)::

    spec     := call | NAME                      a top-level NAME is the whole text, verbatim
    call     := KIND "(" [arg ("," arg)* [","]] ")"
    arg      := spec-in-call | KEY "=" value     positional models first, then options
    value    := NUMBER | true | false | STRING | call | WORD
    spec-in-call := call | STRING | WORD

``KIND`` and ``KEY`` are identifiers; ``KIND(`` is a call (``KIND`` must be a registered strategy
or guard); anything else is a name, so paths (``./a/b``, ``~/m``), hub ids (``org/model``) and
``openai:m@http://host:8000/v1`` stay valid specs. Inside a call a ``WORD`` runs to the next ``,``
or ``)``; a name with a comma or a parenthesis is quoted (``"./runs/a,b"``, JSON escapes), and so
is one with ``KEY=`` after a space (else ``m t=0.8`` is read as a missing comma).
Positional arguments are models; an option is a model when the strategy's parameter is typed as a
``LanguageModel``, else a number, boolean or string.

:func:`format_spec` writes the canonical form (options sorted, numbers and strings in one
spelling), which is what a built model's ``spec`` is and what run.json records. Errors point at
the column with a caret line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

from poise.errors import PoiseError

__all__ = [
    "Call",
    "Name",
    "SpecError",
    "SpecText",
    "Str",
    "Value",
    "format_call",
    "format_spec",
    "format_value",
    "is_call",
    "parse_spec",
    "short_name",
]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALL_START = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_KEYWORD_START = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_INT = re.compile(r"[+-]?\d+$")
# a word that needs no quotes inside a call: no separators, quotes, spaces or leading "KEY="
_BARE = re.compile(r"[^\s,()\"']+$")
# JSON's one-letter escapes (any other escaped character stands for itself: \" \\ \/ \')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


@dataclass(frozen=True)
class Name:
    """A model named without a call (organism member, path, hub id, backend prefix), or a bare
    word as an option value. ``column`` is 1-based, for error messages only."""

    text: str
    column: int = field(default=1, compare=False)


@dataclass(frozen=True)
class Str:
    """A quoted string."""

    text: str
    column: int = field(default=1, compare=False)


@dataclass(frozen=True)
class Call:
    """``kind(args..., key=value, ...)``: a registered strategy or guard around models."""

    kind: str
    args: tuple[Node, ...] = ()
    options: tuple[tuple[str, Value], ...] = ()
    column: int = field(default=1, compare=False)
    # the column of each option's key, for error messages
    option_columns: tuple[int, ...] = field(default=(), compare=False)

    def option_column(self, index: int) -> int:
        return self.option_columns[index] if index < len(self.option_columns) else self.column


Node = Union[Name, Str, Call]  # noqa: UP007 - a runtime alias
Value = Union[Name, Str, Call, bool, int, float]  # noqa: UP007


class SpecText(str):
    """A model's name or spec inside a composed spec: a call is written as is, anything else as a
    name (bare, or quoted where it must be)."""


class SpecError(PoiseError):
    """A spec that does not parse or names something unknown; the message points at the column."""

    def __init__(self, text: str, column: int, message: str) -> None:
        self.text = text
        self.column = column
        self.reason = message
        caret = " " * (column - 1) + "^"
        super().__init__(f"model spec, column {column}: {message}\n  {text}\n  {caret}")


def is_call(text: str) -> bool:
    """Whether ``text`` is written as a call (``KIND(...``); anything else is a plain name."""
    return _CALL_START.match(text) is not None


def parse_spec(text: str) -> Node:
    """Parse ``text`` (see the module docstring). A top-level non-call is one :class:`Name`
    holding the stripped text, whatever characters it contains."""
    stripped = text.strip()
    if not stripped:
        raise PoiseError("model: empty model name")
    if not is_call(stripped):
        return Name(stripped, 1 + len(text) - len(text.lstrip()))
    parser = _Parser(text)
    node = parser.call()
    parser.skip()
    if parser.pos < len(text):
        parser.fail("unexpected text after the closing ')'")
    return node


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, pos: int | None = None) -> None:
        raise SpecError(self.text, (self.pos if pos is None else pos) + 1, message)

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def call(self) -> Call:
        match = _CALL_START.match(self.text, self.pos)
        assert match is not None
        kind, start = match.group(1), match.start(1)
        self.pos = match.end()
        args: list[Node] = []
        options: dict[str, Value] = {}
        columns: list[int] = []
        while True:
            self.skip()
            if self.peek() == ")":
                self.pos += 1
                return Call(kind, tuple(args), tuple(options.items()), start + 1, tuple(columns))
            keyword = _KEYWORD_START.match(self.text, self.pos)
            if keyword is not None:
                key = keyword.group(1)
                if key in options:
                    self.fail(f"option {key!r} given twice", keyword.start(1))
                self.pos = keyword.end()
                columns.append(keyword.start(1) + 1)
                options[key] = self.value()
            else:
                element_start = self.pos
                node = self.element()
                if options:
                    self.fail(
                        "a model after an option: positional models come first", element_start
                    )
                args.append(node)
            self.skip()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != ")":
                if not self.peek():
                    self.fail(f"'(' of {kind!r} is never closed", start + len(kind))
                self.fail("expected ',' or ')'")

    def element(self) -> Node:
        """A model inside a call: a nested call, a quoted name or a bare word."""
        self.skip()
        if _CALL_START.match(self.text, self.pos):
            return self.call()
        if self.peek() in ("'", '"'):
            return self.string()
        start = self.pos
        if self.peek() == "=":
            self.fail("expected an option name before '='")
        word = self.word()
        if not word:
            self.fail("expected a model")
        return Name(word, start + 1)

    def value(self) -> Value:
        self.skip()
        start = self.pos
        node = self.element() if self.peek() not in (",", ")", "") else None
        if node is None:
            self.fail("expected a value after '='", start)
        if isinstance(node, Name):
            lowered = node.text.lower()
            if lowered in ("true", "false"):
                return lowered == "true"
            if _NUMBER.match(node.text):
                number = int(node.text) if _INT.match(node.text) else float(node.text)
                if isinstance(number, float) and not math.isfinite(number):
                    self.fail("numbers must be finite", start)
                return number
        assert node is not None
        return node

    def word(self) -> str:
        start = self.pos
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in ",)":
                break
            if char in "\"'":
                self.fail("a quote inside a name: quote the whole name")
            if char == "(":
                self.fail("'(' inside a name: quote the name, or is the strategy misspelt?")
            if char.isspace():
                # "m t=0.8": an option after a bare word with no comma between them
                keyword = _KEYWORD_START.match(self.text, self.pos)
                if keyword is not None:
                    self.fail(f"expected ',' before option {keyword.group(1)!r}", keyword.start(1))
            self.pos += 1
        return self.text[start : self.pos].strip()

    def string(self) -> Str:
        quote, start = self.peek(), self.pos
        self.pos += 1
        chars: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                escaped = self.text[self.pos + 1]
                if escaped == "u":
                    digits = self.text[self.pos + 2 : self.pos + 6]
                    if not re.fullmatch(r"[0-9A-Fa-f]{4}", digits):
                        self.fail("bad \\u escape")
                    code = int(digits, 16)
                    low = self.text[self.pos + 6 : self.pos + 12]
                    if 0xD800 <= code < 0xDC00 and re.fullmatch(
                        r"\\u[dD][c-fC-F][0-9A-Fa-f]{2}", low
                    ):
                        # a surrogate pair, as JSON writes a character outside the BMP
                        code = 0x10000 + ((code - 0xD800) << 10) + (int(low[2:], 16) - 0xDC00)
                        self.pos += 6
                    elif 0xD800 <= code < 0xE000:
                        self.fail("a \\u escape of half a surrogate pair")
                    chars.append(chr(code))
                    self.pos += 6
                    continue
                chars.append(_ESCAPES.get(escaped, escaped))
                self.pos += 2
                continue
            if char == quote:
                self.pos += 1
                return Str("".join(chars), start + 1)
            chars.append(char)
            self.pos += 1
        self.fail("string is never closed", start)
        raise AssertionError  # unreachable: fail raises


# ---- canonical form --------------------------------------------------------------------------


def format_value(value: object) -> str:
    """One spelling per value: ``true``/``false``, ints as digits, floats by ``repr`` (shortest
    round trip, always with a ``.`` or exponent), strings bare when they parse back as the same
    bare word, else double-quoted (JSON escapes); a :class:`Call` or :class:`Name` as a spec."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PoiseError(f"model spec: cannot write the number {value!r}")
        return repr(value)
    if isinstance(value, SpecText) and is_call(value):
        return str(value)
    if isinstance(value, Call):
        return format_call(value.kind, [*value.args], dict(value.options))
    if isinstance(value, (Name, Str)):
        value = value.text
    if isinstance(value, str):
        bare = (
            _BARE.match(value) is not None
            and not _KEYWORD_START.match(value)
            and not is_call(value)
            and not _NUMBER.match(value)
            and value.lower() not in ("true", "false")
        )
        return value if bare else json.dumps(value, ensure_ascii=False)
    raise PoiseError(f"model spec: cannot write a value of type {type(value).__name__}")


def format_call(kind: str, args: Sequence[object], options: Mapping[str, object]) -> str:
    """``kind(arg, ..., key=value, ...)`` with the options sorted by key."""
    parts = [format_value(a) for a in args]
    parts += [f"{key}={format_value(options[key])}" for key in sorted(options)]
    return f"{kind}({', '.join(parts)})"


def format_spec(node: Node) -> str:
    """The canonical text of a parsed spec; a top-level :class:`Name` is written verbatim."""
    if isinstance(node, Name):
        return node.text
    return format_value(node)


def canonical_spec(text: str) -> str:
    """``text`` in its canonical spelling (options sorted, values spelt one way), so that two
    spellings of one spec compare equal; text that does not parse is returned stripped."""
    try:
        return format_spec(parse_spec(text))
    except PoiseError:
        return text.strip()


def short_name(text: str) -> str:
    """A short readable name for folders: ``logit_temperature(organism-small, t=0.8)`` ->
    ``logit_temperature-organism-small``; a path -> its last part."""
    try:
        node = parse_spec(text)
    except PoiseError:
        node = Name(text.strip())
    parts: list[str] = []
    while isinstance(node, Call) and node.args:
        parts.append(node.kind)
        node = node.args[0]
    if isinstance(node, Call):
        parts.append(node.kind)
    else:
        leaf = node.text.rstrip("/")
        # a remote model is named by its model, not by the last part of its URL ("v1")
        model, at, urls = leaf.partition("@")
        if at and "://" in urls:
            leaf = model.rstrip("/")
        parts.append(leaf.rsplit("/", 1)[-1] or leaf)
    return "-".join(parts)
