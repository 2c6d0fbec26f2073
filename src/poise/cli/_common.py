"""Shared CLI plumbing: consoles and the one-line error convention (exit code 2)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from poise.errors import PoiseError

console = Console()
err_console = Console(stderr=True)


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
