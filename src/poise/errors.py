"""Errors a user can cause.

A :class:`PoiseError` carries one line that says what went wrong and where (a file and line,
a field, or a name with the nearest valid names). The CLI prints that line and exits with code 2;
library callers catch it like any exception.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


class PoiseError(Exception):
    """A mistake in the user's input: bad file, unknown name, missing extra, bad value."""

    exit_code = 2


# What may explain an unknown name besides a typo, told after the known names: poise.plugins
# adds the plugins that failed to load (a name one of them registers is unknown too). Each
# returns "" when it has nothing to say.
_unknown_name_notes: list[Callable[[], str]] = []


def explain_unknown_names(note: Callable[[], str]) -> None:
    """Add ``note()`` to every :class:`UnknownNameError` of a name (not of an option, whose kind
    ends in ``:``) while it returns text."""
    _unknown_name_notes.append(note)


class UnknownNameError(PoiseError, KeyError):
    """A name that no registry knows."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        # a name of another type (None from Python) is named, not fed to difflib (a TypeError);
        # case is ignored ('GREEDY' had no suggestion: difflib compares characters exactly)
        lowered: dict[str, str] = {}
        for option in known:
            lowered.setdefault(option.lower(), option)
        close = (
            [lowered[c] for c in difflib.get_close_matches(name.lower(), lowered, n=3, cutoff=0.5)]
            if isinstance(name, str)
            else []
        )
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known) if known else "(none registered)"
        notes = [] if kind.endswith(":") else [n for n in (f() for f in _unknown_name_notes) if n]
        why = "".join(f"; {note}" for note in notes)
        super().__init__(f"unknown {kind} {name!r}{hint} (known: {listing}){why}")
        self.kind = kind
        self.name = name

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class MissingExtraError(PoiseError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(f"{feature} needs the package {package!r}: pip install 'poise[{extra}]'")


def require_extra(package: str, extra: str, feature: str) -> None:
    """A :class:`MissingExtraError` now, before any work, when ``package`` is not installed."""
    import importlib.util

    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install counts as missing
        found = False
    if not found:
        raise MissingExtraError(package, extra, feature)


def located(path: object, line: int | None, message: str) -> PoiseError:
    """An error that points at ``path:line``."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return PoiseError(f"{where}: {message}")


def decode_line(raw: bytes, path: object, line: int) -> str:
    """Line ``line`` of ``path``, read as bytes, decoded as UTF-8; one located error naming the
    byte when it is not (a text stream decodes ahead in blocks, so its error names no line)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise located(path, line, f"not UTF-8 text (byte {exc.start + 1} of the line)") from None


def check_int(owner: str, name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` when it is an integer (not a bool) ``>= low`` (and ``<= high`` when given);
    else ``"OWNER: NAME must be an integer >= LOW, got VALUE"`` (``in [LOW, HIGH]``). For the
    options of strategies, guards, wrappers and attacks, which come from a spec, the command
    line or Python."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        expected = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise PoiseError(f"{owner}: {name} must be an integer {expected}, got {value!r}")
    return value


def check_number(
    owner: str,
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
    low_open: bool = False,
    where: str | None = None,
) -> float:
    """``value`` as a float when it is a finite number (an int or a float, not a bool), inside
    ``[low, high]`` (either end optional; ``(low, high]`` when ``low_open``), or ``> 0`` when
    ``positive`` (instead of bounds); else one error that names the owner, the option and the
    value (``OWNER: NAME must be ..., got VALUE``), or, given ``where`` (an option as a command
    names it, ``lr (--lr)``), ``WHERE: expected ..., got VALUE``."""
    if positive and (low is not None or high is not None):
        raise ValueError("check_number: positive or bounds, not both")
    if positive:
        expected = "a positive number"
    elif low is not None and high is not None:
        expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif low is not None:
        expected = f"a finite number >= {low:g}"
    elif high is not None:
        expected = f"a finite number <= {high:g}"
    else:
        expected = "a finite number"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (low is not None and (value <= low if low_open else value < low))
        or (high is not None and value > high)
        or (positive and value <= 0)
    ):
        if where is not None:
            raise PoiseError(f"{where}: expected {expected}, got {value!r}")
        raise PoiseError(f"{owner}: {name} must be {expected}, got {value!r}")
    return float(value)


def invalid_json(exc: json.JSONDecodeError) -> str:
    """What is wrong with a JSON text, where on its line: ``invalid JSON (Expecting ','
    delimiter at column 21)``, or ``... where the text ends)`` for a text cut short (json's
    position is then past the line's newline: "line 2, column 1" of a one-line text), or
    ``key 'prompt' given twice (again at column 18)`` (:class:`DuplicateKeyError`); the caller
    says the file and line."""
    if isinstance(exc, DuplicateKeyError):
        return f"key {exc.key!r} given twice (again at column {exc.colno})"
    # some of json's messages end in " at" (they are written to be followed by a position)
    what = exc.msg.removesuffix(" at")
    if exc.pos >= len(exc.doc):
        return f"invalid JSON ({what} where the text ends)"
    return f"invalid JSON ({what} at column {exc.colno})"


def json_error_line(exc: json.JSONDecodeError) -> int:
    """The line a JSON error is on, for a located message: json's own, except for a text cut
    short, whose end json places past the last line's newline (a one-line file's "line 2"):
    then the last line that holds anything."""
    if exc.pos < len(exc.doc):
        return exc.lineno
    lines = exc.doc.rstrip().count("\n") + 1
    return max(1, min(exc.lineno, lines))


# The ends of JSON lines. Not str.splitlines: it also splits at U+2028, U+0085, U+001C..U+001E,
# which a JSON string may hold unescaped (json.dumps(..., ensure_ascii=False) writes them so),
# and cut such a row in two ("Unterminated string"); a raw CR or LF cannot be inside a JSON string.
_JSON_LINE_END = re.compile(r"\r\n?|\n")


def json_lines(text: str) -> list[str]:
    """The lines of a JSONL text, split where a JSON Lines file ends its lines (LF, CRLF; CR
    too), never inside a row: the i-th is line i + 1 of the file."""
    lines = _JSON_LINE_END.split(text)
    if lines and lines[-1] == "":
        lines.pop()  # the text's final newline ends the last line; it starts none
    return lines


class DuplicateKeyError(json.JSONDecodeError):
    """A JSON object that gives one key twice. json keeps the last value without a word (a row
    ``{"prompt": "a", "prompt": "b"}`` read as "b"); poise refuses it. A
    :class:`json.JSONDecodeError` whose position is the second key's opening quote, so every
    reader that locates invalid JSON (:func:`invalid_json`, :func:`json_error_line`) locates it."""

    def __init__(self, key: str, doc: str, pos: int) -> None:
        super().__init__(f"key {key!r} given twice", doc, pos)
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.key, self.doc, self.pos)


class _KeyTwice(ValueError):
    """Raised by :func:`unique_keys` inside json's C parser, which knows no positions; turned
    into a located :class:`DuplicateKeyError` by :func:`parse_json`."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The ``object_pairs_hook`` of every reader of the user's JSON: the object as a dict, and
    a key given twice refused instead of its last value kept. Readers call :func:`parse_json`,
    which parses with it and says where the second key is (the hook alone cannot: a
    ValueError that names the key)."""
    data = dict(pairs)
    if len(data) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _KeyTwice(key)
            seen.add(key)
    return data


# One decoder for all reads: as fast as json.loads (which builds a decoder per call when given
# a hook).
_UNIQUE_KEYS = json.JSONDecoder(object_pairs_hook=unique_keys)


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)``, with a key given twice in an object refused: a
    :class:`DuplicateKeyError` at the second one (a :class:`json.JSONDecodeError`, so callers
    locate it as any invalid JSON). Every reader of the user's JSON and JSONL parses with it."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode(json.detect_encoding(text), "surrogatepass")  # as json.loads does
    elif text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _UNIQUE_KEYS.decode(text)
    except _KeyTwice as twice:
        raise _key_twice(text, twice.key) from None
    except RecursionError:
        # json's parser recurses once per level: nested past Python's recursion limit (about a
        # thousand levels), a document was a RecursionError traceback, not a located error
        raise json.JSONDecodeError(
            "nested too deeply to read (more levels than Python's recursion limit)", text, 0
        ) from None


def _key_twice(text: str, key: str) -> DuplicateKeyError:
    """Where in ``text`` a key is given twice: the text walked again (only after the fast parse
    found one), object by object, in the order json's parser closes them, so the key found is
    the one the fast parse refused."""
    try:
        _walk(text, _space(text, 0))
    except DuplicateKeyError as exc:
        return exc
    except RecursionError:  # nested deeper than a Python walk goes
        pass
    # not found again: the key's second appearance as a key
    quoted = re.escape(json.dumps(key)) + r"\s*:"
    found = list(itertools.islice(re.finditer(quoted, text), 2))
    return DuplicateKeyError(key, text, found[-1].start() if found else 0)


_PLAIN = json.JSONDecoder()  # scalars and keys, for the walk
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _space(text: str, pos: int) -> int:
    """The first position at or after ``pos`` that is not JSON whitespace."""
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def _walk(text: str, pos: int) -> int:
    """Past the JSON value at ``pos`` of a text that parses (but for a key given twice); a
    :class:`DuplicateKeyError` at the second key of the first object to close with one."""
    if text[pos] == "[":
        pos = _space(text, pos + 1)
        while text[pos] != "]":
            pos = _space(text, _walk(text, pos))
            if text[pos] == ",":
                pos = _space(text, pos + 1)
        return pos + 1
    if text[pos] != "{":
        return _PLAIN.raw_decode(text, pos)[1]
    keys: list[tuple[str, int]] = []  # each key and where its opening quote is
    pos = _space(text, pos + 1)
    while text[pos] != "}":
        name, after = _PLAIN.raw_decode(text, pos)
        keys.append((name, pos))
        pos = _space(text, _space(text, after) + 1)  # past ":"
        pos = _space(text, _walk(text, pos))
        if text[pos] == ",":
            pos = _space(text, pos + 1)
    seen: set[str] = set()
    for name, start in keys:
        if name in seen:
            raise DuplicateKeyError(name, text, start)
        seen.add(name)
    return pos + 1


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file that holds one object; anything else (unreadable, not UTF-8, invalid JSON,
    a key given twice, another JSON type) is one error naming the file, and the line where json
    says."""
    from pathlib import Path

    file = Path(path)
    try:
        data = parse_json(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise located(file, json_error_line(exc), invalid_json(exc)) from None
    except UnicodeDecodeError:
        raise located(file, None, "not a UTF-8 text file") from None
    except OSError as exc:
        raise located(file, None, f"cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise located(file, None, "expected a JSON object")
    return data


def check_output_file(path: str | os.PathLike[str], what: str) -> None:
    """Refuse, before any work, an output file path that names an existing folder:
    ``"WHAT: PATH is a folder; give a file path"``."""
    from pathlib import Path

    target = Path(path).expanduser()
    if target.is_dir():
        raise PoiseError(f"{what}: {target} is a folder; give a file path")


def file_on_the_way(path: str | os.PathLike[str]) -> Path | None:
    """The file that stands where one of ``path``'s folders would have to be made (the nearest
    existing parent, when it is not a folder), or None: a path under a file cannot be made."""
    from pathlib import Path

    existing = next((p for p in Path(path).expanduser().parents if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def prepare_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """Before any work: refuse a path that names a folder (:func:`check_output_file`) and make
    the folder the file goes in, as ``mkdir -p`` would; a folder that cannot be made (a file on
    the way, no permission) is ``"WHAT: cannot make folder DIR (reason)"``. Returns the path
    with ``~`` expanded, as checked: the caller writes there."""
    from pathlib import Path

    check_output_file(path, what)
    target = Path(path).expanduser()
    folder = target.parent
    blocker = file_on_the_way(target)
    if blocker is not None:
        raise PoiseError(f"{what}: cannot make folder {folder}: {blocker} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PoiseError(f"{what}: cannot make folder {folder} ({exc.strerror or exc})") from None
    return target
