"""``poise judges ls|validate``: the judges, and how far one agrees with human labels."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from poise.cli._common import (
    console,
    expand_paths,
    progress_bar,
    sigterm_as_interrupt,
    user_errors,
)

if TYPE_CHECKING:
    from poise.scoring.validation import Agreement, Validation

judges_app = typer.Typer(
    help="List the judges; measure a judge against human-labelled answers.", no_args_is_help=True
)

_SHOWN = 20


@judges_app.command("ls")
def ls() -> None:
    """List the judges and the guard presets."""
    with user_errors():
        from rich.markup import escape
        from rich.table import Table

        from poise.plugins import load_plugins
        from poise.scoring.judges import judges

        load_plugins()
        table = Table(title="judges (--judge SPEC)")
        table.add_column("judge")
        table.add_column("what", overflow="fold")
        for name in judges.names():
            table.add_row(name, escape(judges.help(name)))
        console.print(table)
        try:
            from poise.scoring.presets import PRESETS
        except ModuleNotFoundError:  # pragma: no cover - presets not built
            return
        presets = Table(title="guard presets (--judge preset:NAME)")
        for col in ("preset", "model", "source of the prompt format"):
            presets.add_column(col, overflow="fold")
        for preset in PRESETS.values():
            presets.add_row(preset.name, preset.model_id, escape(preset.source))
        console.print(presets)


def _cell(agreement: Agreement | None, what: str) -> str:
    if agreement is None:
        return "-"
    if what == "kappa":
        from poise.report.terminal import fixed  # a bound of -3e-16 prints 0.00, not -0.00

        low, high = fixed(agreement.kappa_low, 2), fixed(agreement.kappa_high, 2)
        return f"{fixed(agreement.kappa, 3)} [{low}, {high}]"
    rate = getattr(agreement, what)
    return rate.format() if rate.n else "-"


def _table(validation: Validation, target: str) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{target}: judge {escape(validation.judge)} vs human label")
    for col in ("source model", "n", "accuracy", "kappa", "precision", "recall", "human rate"):
        table.add_column(col, justify="right" if col != "source model" else "left")
    rows = [("all", validation.overall.get(target))]
    rows += [(source, per.get(target)) for source, per in validation.by_source.items()]
    for source, agreement in rows:
        if agreement is None:
            continue
        table.add_row(
            escape(source),
            str(agreement.n),
            _cell(agreement, "accuracy"),
            _cell(agreement, "kappa"),
            _cell(agreement, "precision"),
            _cell(agreement, "recall"),
            _cell(agreement, "human_rate"),
            end_section=source == "all",
        )
    return table


def _one_line(text: str, width: int = 90) -> str:
    flat = " ⏎ ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def print_validation(validation: Validation, limit: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(
        f"[bold]{escape(validation.path)}[/] ({validation.format}): {validation.n} labelled "
        f"answers, judge {escape(validation.judge)}; 95% intervals (Wilson; kappa: Dirichlet posterior)",
        highlight=False,
    )
    if validation.unparsed:
        console.print(
            f"[yellow]{validation.unparsed} of {validation.n} judge outputs held no verdict "
            "(unparsed): left out of every figure below[/]",
            highlight=False,
        )
    for target in validation.overall:
        console.print(_table(validation, target))
    if not validation.disagreements:
        console.print("no disagreements")
        return
    shown = validation.disagreements[:limit]
    if not shown:  # --limit 0: it said "no disagreements" of a file with some
        console.print(
            f"disagreements ({len(validation.disagreements)}): --limit N lists them, --json "
            "lists all",
            highlight=False,
        )
        return
    table = Table(title=f"disagreements ({len(validation.disagreements)})")
    for col in ("id", "source", "label", "judge", "human", "response"):
        table.add_column(col, overflow="fold")
    for d in shown:
        table.add_row(
            escape(d.answer.id),
            escape(d.answer.source),
            d.target,
            str(d.judge).lower(),
            str(d.human).lower(),
            escape(_one_line(d.answer.response)),
        )
    console.print(table)
    if len(validation.disagreements) > limit:
        more = len(validation.disagreements) - limit
        console.print(f"… {more} more (--limit N shows more, --json lists all)", highlight=False)


@judges_app.command("validate")
def validate_command(
    file: str = typer.Argument(
        ..., help="Labelled answers (see the formats in the docs).", callback=expand_paths
    ),
    judge: str = typer.Option("refusal", "--judge", "-j", help="Judge spec to measure."),
    format: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="xstest | jailbreakbench | harmbench | donotanswer | generic (default: detected).",
    ),
    column: list[str] = typer.Option(
        [],
        "--column",
        help="ROLE=COLUMN for generic files (response, prompt, id, model, refused, harmful, "
        "kind); repeatable.",
    ),
    judge_option: list[str] = typer.Option(
        [], "--judge-option", help="KEY=VALUE option of the judge; repeatable."
    ),
    limit: int = typer.Option(
        _SHOWN,
        "--limit",
        "-n",
        min=0,
        help="Disagreements to list (every row is judged all the same; --json lists all).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the validation as JSON."),
) -> None:
    """Measure a judge against human labels: accuracy, kappa, precision and recall of "refused"
    and "harmful" with 95% intervals, overall and per source model, and the disagreements."""
    with sigterm_as_interrupt(), user_errors():  # a model judge takes a while
        from poise.cli.audit import parse_options
        from poise.cli.suites import parse_columns
        from poise.scoring.judges import get_judge
        from poise.scoring.validation import read_labels, validate

        labels = read_labels(file, format=format, columns=parse_columns(column) or None)
        scorer = get_judge(judge, **parse_options(judge_option, "--judge-option"))
        if as_json:
            result = validate(labels, scorer)
            typer.echo(json.dumps(result.to_dict(), indent=2))
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

        with progress_bar(TextColumn("[bold]judging"), BarColumn(), MofNCompleteColumn()) as bar:
            task = bar.add_task("judging", total=len(labels.answers))
            result = validate(
                labels, scorer, progress=lambda done, total: bar.update(task, completed=done)
            )
        print_validation(result, limit)


def register(app: typer.Typer) -> None:
    app.add_typer(judges_app, name="judges")
