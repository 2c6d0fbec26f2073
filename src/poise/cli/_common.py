"""Shared CLI plumbing: consoles, the one-line error convention (exit code 2), SIGTERM as
Ctrl-C for long commands, and ``~`` in the paths a user gives."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console

from poise.config import user_path
from poise.errors import PoiseError

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")


def expand_paths(value: T) -> T:
    """The ``callback=`` of every option and argument that names a file or a folder: a leading
    ``~`` expanded (:func:`poise.config.user_path`) in its value, in each value of a repeatable
    one, and in a value from ``--config`` too; None stays None. Only the shell expands a bare
    ``~``: a quoted one (``--out "~/runs"``) made a folder named ``~`` in the working
    directory.

    An empty value (``--out "$OUT"`` with OUT unset) is refused: it stood for the working
    directory, where an audit then wrote its run folder and ``runs ls`` said "no runs under "
    with exit code 0. Raised from the callback, click names the option ("Invalid value for
    '--out'")."""
    if isinstance(value, str):
        if not value.strip():
            raise typer.BadParameter("empty; give a value (a shell variable left unset gives none)")
        return user_path(value)  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        return type(value)(expand_paths(v) for v in value)
    return value


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a batch scheduler ending a job) while a long command
    runs, raised in the main thread as Ctrl-C's KeyboardInterrupt is: the same clean-up runs and
    the same message is said (an audit's: where its answers are and how to resume)."""


SIGTERM_EXIT = 128 + signal.SIGTERM  # 143, as a shell reports a process that SIGTERM ended


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Around a long command: SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the
    main thread, and the command ends with exit code 143 once it has unwound (Ctrl-C keeps
    typer's 130). The handler that was there before is put back afterwards. Without it SIGTERM
    ended the process at once: no word of the answers written so far, no clean-up."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set a signal handler (and Python runs it there)
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except Terminated:
        raise typer.Exit(SIGTERM_EXIT) from None
    finally:
        # None: a handler set outside Python, which cannot be put back; the default then
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def shown(value: object) -> str:
    """``value`` as text for a rich string: a path, name or query with brackets (``runs/[exp]``,
    ``[INST]``) is printed as written, not read as markup (which dropped it, or raised
    MarkupError after the work was done); a control character in it (an escape sequence in a
    model's name or a run's folder) is shown as its escape, not sent to the terminal."""
    from rich.markup import escape

    from poise.report.text import visible

    return escape(visible(str(value)))


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a PoiseError into one red line on stderr and exit code 2; likewise an OSError
    about a path (a file name too long, a read-only or vanished folder, a full disk), which was
    a traceback wherever no check named it first (``train organism-data -o``, ``probe train
    -o``). An OSError about no path (a closed pipe, a refused connection) is left as it is."""
    try:
        yield
    except PoiseError as exc:
        _error_line(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        if exc.filename is None:
            raise
        where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        _error_line(f"{where}: {exc.strerror or exc}")
        raise typer.Exit(PoiseError.exit_code) from None


def _error_line(message: str) -> None:
    from rich.markup import escape

    # escaped: a message naming an extra ('poise[serve]') is not rich markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def progress_bar(*columns: Any, disable: bool = False, **options: Any) -> Any:
    """A transient rich progress bar on stdout's console, drawn on an interactive terminal only.
    Elsewhere (a pipe, a file, a CI log) rich draws no transient bar, but ended it with an empty
    line on stdout: the first line a script parsing the output read, even before an error."""
    from rich.progress import Progress

    return Progress(
        *columns,
        console=console,
        transient=True,
        disable=disable or not console.is_interactive,
        **options,
    )


@contextmanager
def progress_callback(label: str, *columns: Any) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback for long work: a bar of ``columns`` on a terminal
    (its description ``label``), else :func:`progress_lines`' line now and then."""
    if not console.is_terminal:  # a pipe or a CI log: a line now and then instead of a bar
        lines = progress_lines(label)
        yield lambda done, total: lines(done, total)
        return
    with progress_bar(*columns) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    # poise's own loggers go through one rich handler; third-party libraries keep their own
    # handlers (a second root handler would print each of their warnings twice)
    logger = logging.getLogger("poise")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=err_console, show_path=False))
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False


PROGRESS_EVERY_S = 30.0


def progress_lines(label: str, every: float = PROGRESS_EVERY_S) -> Callable[..., None]:
    """For long work without a terminal (a pipe, a CI log), where no bar is drawn: a callback
    ``(done, total, detail="")`` that prints ``LABEL: 120/642 (19%), DETAIL, 1m10s`` on stderr
    (stdout keeps the results a script may parse) at the start, at most every ``every``
    seconds after, and at the end."""
    import time

    start = time.monotonic()
    last: list[float | None] = [None]

    def progress(done: int, total: int | None, detail: str = "") -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if last[0] is not None and now - last[0] < every and not finished:
            return
        last[0] = now
        elapsed = int(now - start)
        share = f" ({100 * done / total:.0f}%)" if total else ""
        count = f"{done}/{total}{share}" if total is not None else f"{done}"
        extra = f", {detail}" if detail else ""
        err_console.print(
            f"{label}: {count}{extra}, {elapsed // 60}m{elapsed % 60:02d}s", highlight=False
        )

    return progress
