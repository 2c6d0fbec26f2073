"""Shared CLI plumbing: consoles and the one-line error convention (exit code 2)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from poise.errors import PoiseError

console = Console()
err_console = Console(stderr=True)


def shown(value: object) -> str:
    """``value`` as text for a rich string: a path, name or query with brackets (``runs/[exp]``,
    ``[INST]``) is printed as written, not read as markup (which dropped it, or raised
    MarkupError after the work was done)."""
    from rich.markup import escape

    return escape(str(value))


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a PoiseError into one red line on stderr and exit code 2."""
    try:
        yield
    except PoiseError as exc:
        from rich.markup import escape

        # escaped: a message naming an extra ('poise[serve]') is not rich markup
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(exc.exit_code) from None


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
