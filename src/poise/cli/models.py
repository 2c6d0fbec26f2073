"""``poise models ls``: what a model spec can name (backends, decoding strategies, guards)."""

from __future__ import annotations

import typer

from poise.cli._common import console, shown, user_errors

models_app = typer.Typer(
    help="What a model spec (--model) can name: backends, decoding strategies and guards.",
    no_args_is_help=True,
)


@models_app.command("ls")
def ls() -> None:
    """List the backends (PREFIX:NAME), decoding strategies and guards (NAME(MODEL, ...)),
    plugins' included, with what each does and the paper it follows."""
    with user_errors():
        from rich.table import Table

        from poise.decoding import strategies
        from poise.guards import guards
        from poise.models.resolve import backends
        from poise.registry import spec_form

        sections = (
            ("backends", "prefix", backends, False),
            ("decoding strategies", "strategy", strategies, True),
            ("guards", "guard", guards, True),
        )
        for title, column, registry, wraps in sections:
            table = Table(title=title)
            table.add_column(column)
            table.add_column("spec")
            table.add_column("what it does")
            table.add_column("reference")
            for name in registry:
                # text, not markup: a plugin's help with brackets lost them or raised MarkupError
                table.add_row(
                    name,
                    shown(spec_form(name, registry.get(name)) if wraps else f"{name}:..."),
                    shown(registry.help(name)),
                    shown(registry.reference(name) or ""),
                )
            console.print(table)
        console.print(
            "A folder or hub id needs no prefix; organism members: `poise organism ls`. "
            "Specs compose: best_of_n(guarded(organism-large, monitor=organism-monitor), n=4, cost=organism-cost). "
            "An option shown as NAME=… has no fixed default: it is required or follows from the "
            "others (the wrapper's error says which; docs/steering.md and docs/guards.md say what "
            "each does); NAME_N=…: more of the same, numbered from 2.",
            highlight=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
