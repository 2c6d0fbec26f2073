"""The CLI's shared plumbing: SIGTERM as Ctrl-C around a long command."""

from __future__ import annotations

import signal

import pytest
import typer

from poise.cli._common import SIGTERM_EXIT, Terminated, sigterm_as_interrupt


def test_sigterm_raises_as_ctrl_c_then_exits_143_and_the_handler_is_put_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    unwound: list[str] = []
    with pytest.raises(typer.Exit) as stopped, sigterm_as_interrupt():
        try:
            signal.raise_signal(signal.SIGTERM)  # handled before the next line
            pytest.fail("SIGTERM raised nothing")
        except KeyboardInterrupt as exc:  # what Ctrl-C's clean-up catches sees it too
            unwound.append(type(exc).__name__)
            raise
    assert unwound == [Terminated.__name__]
    assert stopped.value.exit_code == SIGTERM_EXIT == 143
    assert signal.getsignal(signal.SIGTERM) == before


def test_ctrl_c_keeps_its_own_exit() -> None:
    # a plain KeyboardInterrupt passes through: typer turns it into exit code 130 as before
    with pytest.raises(KeyboardInterrupt) as caught, sigterm_as_interrupt():
        raise KeyboardInterrupt
    assert type(caught.value) is KeyboardInterrupt


def test_shown_names_print_control_characters_as_escapes_and_brackets_as_written() -> None:
    """A model name or run folder holding an escape sequence reached the terminal (recolouring
    what followed); brackets must still print as written, not as markup."""
    from rich.console import Console

    from poise.cli._common import shown

    console = Console(record=True, width=200, force_terminal=True)
    name = "evil\x1b[31mred [INST] \u202edone"
    console.print(f"run {shown(name)} ok", highlight=False)
    text = console.export_text(styles=False)
    assert "\\x1b[31mred [INST] \\u202edone ok" in text
    assert "\x1b" not in text and "\u202e" not in text
