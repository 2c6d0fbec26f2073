"""The ``poise`` command. One module per command group; heavy libraries load lazily."""

from __future__ import annotations

import importlib

import typer

from poise.cli._config import PoiseGroup

app = typer.Typer(
    cls=PoiseGroup,  # --config FILE.yaml on every command
    name="poise",
    help="Measure and steer the helpful / harmless / honest balance of language models.",
    no_args_is_help=True,
    # -h as well as --help, on every command below (click passes it down to the subcommands)
    context_settings={"help_option_names": ["--help", "-h"]},
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module exposes ``register(app)``; the list is the order of ``poise --help``.
_COMMAND_MODULES = [
    "audit",
    "models",
    "runs",
    "compare",
    "attacks",
    "suites",
    "judges",
    "organism",
    "serve",
    "train",
    "merge",
    "gate",
    "probe",
    "firewall",
]


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"poise.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"poise.cli.{name}":
                continue  # command group not built yet
            raise
        module.register(app)


def _print_version(value: bool) -> None:
    if value:
        from poise._version import __version__

        typer.echo(f"poise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log debug messages (after the command too: poise audit -v)."
    ),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    from poise.cli._common import setup_logging

    setup_logging(verbose)


_register_all()


def _tolerant_streams() -> None:
    """On a terminal whose encoding is not UTF-8 (``LANG=C``, a Windows code page), print what
    it cannot show as '?' instead of failing: the tables' '·', '—' and '…' raised
    UnicodeEncodeError and ended the command (after an audit, once its run was written)."""
    import codecs
    import sys

    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            utf = codecs.lookup(encoding).name.startswith("utf")
        except LookupError:
            utf = False
        reconfigure = getattr(stream, "reconfigure", None)
        if not utf and reconfigure is not None:
            reconfigure(errors="replace")


def main() -> None:
    _tolerant_streams()
    app()
