"""Text from a run (answers, prompts, categories, model names) made safe to show as it was.

A suite file, a dataset or a model answer can hold characters that a terminal or a browser does
not show as text: a terminal acts on an escape sequence (``ESC [31m`` recolours the rest of the
table, other sequences set the window title or the clipboard), a browser drops a NUL (the answer
on the page is then not the one judged) and the bidirectional overrides (U+202E) reorder what
follows them. :func:`visible` writes each such character as its escape (``\\x1b``, ``\\x00``,
``\\u202e``), so the reader sees that it is there; tabs and line breaks stay as they are.
"""

from __future__ import annotations

import re

# C0 controls but tab, line feed and carriage return; DEL and the C1 controls; the Unicode
# bidirectional embeddings, overrides and isolates (LRE RLE PDF LRO RLO, LRI RLI FSI PDI)
_HIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every control character (but tab and line breaks) and every bidirectional
    override written as its escape: ``"a\\x1b[31m"`` is shown as ``a\\x1b[31m``, not as red."""
    return _HIDDEN.sub(_escape, text)
