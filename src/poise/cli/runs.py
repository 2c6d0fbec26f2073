"""``poise runs ls|show``: the run folders an audit leaves behind."""

from __future__ import annotations

import typer

from poise.cli._common import console, user_errors

runs_app = typer.Typer(help="List and show audit runs.", no_args_is_help=True)


def _headline(metrics: dict | None, name: str) -> str:
    if not metrics:
        return "-"
    overall = metrics.get("overall", metrics)
    rate = overall.get(name) if isinstance(overall, dict) else None
    if isinstance(rate, dict) and rate.get("n"):
        return f"{100 * rate['value']:.1f}%"
    return "-"


@runs_app.command("ls")
def ls(out: str = typer.Option("runs", help="Folder that holds run folders.")) -> None:
    """List runs, newest first."""
    with user_errors():
        from rich.table import Table

        from poise.runs import list_runs

        runs = list_runs(out)
        if not runs:
            console.print(f"no runs under {out}")
            return
        table = Table(title=f"runs under {out}")
        for col in (
            "run",
            "model",
            "attack",
            "status",
            "samples",
            "harmful",
            "over-refusal",
            "helpful",
        ):
            if col == "run":
                # never cut: a run name is what the user copies into --resume or `runs show`
                longest = max(len(r.path.name) for r in runs)
                table.add_column(col, no_wrap=True, min_width=longest)
            else:
                table.add_column(col)
        for run in runs:
            try:
                header = run.header
            except Exception:  # a damaged header must not hide the other runs
                table.add_row(run.path.name, "?", "?", "unreadable", "", "", "", "")
                continue
            cfg = header.get("config", {})
            metrics = run.metrics()
            table.add_row(
                run.path.name,
                str(cfg.get("model")),
                str(cfg.get("attack")),
                run.state,  # "interrupted": running in the header, nobody holds its lock
                str(header.get("samples", "")),
                _headline(metrics, "harmful_rate"),
                _headline(metrics, "over_refusal_rate"),
                _headline(metrics, "helpful_rate"),
            )
        console.print(table)


@runs_app.command("show")
def show(
    run: str = typer.Argument(..., help="Run folder, or its name under --out."),
    out: str = typer.Option("runs", help="Folder that holds run folders."),
) -> None:
    """Show a run's configuration and metrics."""
    with user_errors():
        from poise.cli.audit import print_result
        from poise.errors import PoiseError
        from poise.runs import find_run

        found = find_run(run, out)
        metrics = found.metrics()
        if metrics is None:
            raise PoiseError(
                f"{found.path}: no metrics yet (status {found.status}); resume it with `poise audit --resume {found.path}`"
            )
        print_result(found.path, metrics)


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
