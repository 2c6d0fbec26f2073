"""Text from a run shown as it was: control characters and bidirectional overrides visible."""

from __future__ import annotations

from poise.report.text import visible


def test_control_characters_and_overrides_are_written_as_escapes() -> None:
    assert visible("a\x00b\x1b[31mc\x7f\x85") == "a\\x00b\\x1b[31mc\\x7f\\x85"
    assert visible("\u202eevil\u202c \u2066x\u2069") == "\\u202eevil\\u202c \\u2066x\\u2069"


def test_text_tabs_line_breaks_and_other_scripts_stay_as_they_are() -> None:
    text = "line one\n\tline two\r\nשלום, مرحبا \u200e👩\u200d💻 [bold] \\"
    assert visible(text) == text


def test_vertical_tab_and_form_feed_are_written_as_escapes() -> None:
    # C0 controls a terminal acts on (a form feed can clear the screen); only tab, line feed
    # and carriage return stay as they are
    assert visible("a\x0bb\x0cc") == "a\\x0bb\\x0cc"
