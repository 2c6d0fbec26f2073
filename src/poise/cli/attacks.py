"""``poise attacks ls|export``: the attacks an audit can run, and preference pairs from a run."""

from __future__ import annotations

import typer

from poise.cli._common import console, expand_paths, shown, user_errors

attacks_app = typer.Typer(
    help="Attacks (use with `poise audit --attack NAME`) and their outputs.", no_args_is_help=True
)


@attacks_app.command("ls")
def ls() -> None:
    """List the attacks."""
    from rich.table import Table

    from poise.attacks import attacks

    table = Table(title="attacks")
    table.add_column("name")
    table.add_column("what it does")
    for name in attacks:
        # text, not markup: a plugin's help with brackets lost them or raised MarkupError
        table.add_row(name, shown(attacks.help(name)))
    console.print(table)


@attacks_app.command("export")
def export(
    run: str = typer.Argument(
        ...,
        help="Attack audit's run folder, or its name under --out (its --name, or a unique part "
        "of its folder's name).",
        callback=expand_paths,
    ),
    output: str = typer.Option(
        ...,
        "--output",
        "-o",
        help="jsonl file to write the preference pairs to.",
        callback=expand_paths,
    ),
    per_prompt: int = typer.Option(1, help="Pairs per harmful prompt at most."),
    out: str = typer.Option("runs", help="Folder that holds run folders.", callback=expand_paths),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Model whose default system prompt the run sent (default: the system prompts "
        "run.json records, else the run's own model, loaded to read it; give its folder where "
        "the run's spec no longer loads).",
    ),
) -> None:
    """Export (prompt, safe completion, harmful completion) pairs for preference training, in
    TRL's conversational format (prompt, chosen, rejected: message lists). Each prompt is the
    chat as the audit sent it, with its system message (the exploitation grid's sys=on and
    sys=off are paired apart)."""
    with user_errors():
        from poise.attacks.export import export_pairs
        from poise.errors import check_int
        from poise.runs import find_run

        check_int("attacks export", "--per-prompt", per_prompt, 1)
        count = export_pairs(find_run(run, out), output, per_prompt=per_prompt, model=model)
        console.print(f"wrote {count} preference pairs to [bold]{shown(output)}[/]")


def register(app: typer.Typer) -> None:
    app.add_typer(attacks_app, name="attacks")
