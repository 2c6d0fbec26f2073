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


def test_the_handler_that_was_there_before_is_put_back() -> None:
    # an outer handler (a batch tool's, a server's) was replaced by the default for good
    def outer(signum: int, frame: object) -> None:
        pass

    before = signal.signal(signal.SIGTERM, outer)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is not outer
        assert signal.getsignal(signal.SIGTERM) is outer
    finally:
        signal.signal(signal.SIGTERM, before)


def test_an_os_error_is_one_line_naming_its_paths_and_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from poise.cli._common import user_errors

    for error, said in (
        (PermissionError(13, "Permission denied", "/ro/x.jsonl"), "/ro/x.jsonl: Permission denied"),
        (  # a rename names both ends
            OSError(18, "Invalid cross-device link", "/a/run.tmp", None, "/b/run"),
            "/a/run.tmp -> /b/run: Invalid cross-device link",
        ),
    ):
        with pytest.raises(typer.Exit) as stopped, user_errors():
            raise error
        assert stopped.value.exit_code == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.strip() == f"error: {said}"


def test_a_progress_line_carries_its_detail(capsys: pytest.CaptureFixture[str]) -> None:
    from poise.cli._common import progress_lines

    progress_lines("judging", every=3600.0)(5, 10, "2 retried")
    progress_lines("judging", every=3600.0)(7, None)
    line, unknown = capsys.readouterr().err.splitlines()
    assert line.startswith("judging: 5/10 (50%), 2 retried, 0m0")
    assert unknown.startswith("judging: 7, 0m")  # no total known: no "/None"


def test_an_error_naming_an_extra_prints_its_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    from poise.cli._common import user_errors
    from poise.errors import PoiseError

    with pytest.raises(typer.Exit) as stopped, user_errors():
        raise PoiseError("openai: needs pip install 'poise[serve]' [/x]")
    assert stopped.value.exit_code == 2
    assert capsys.readouterr().err.strip() == "error: openai: needs pip install 'poise[serve]' [/x]"
