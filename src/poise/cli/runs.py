"""``poise runs ls|show``: the run folders an audit leaves behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from poise.cli._common import (
    console,
    expand_paths,
    progress_callback,
    shown,
    sigterm_as_interrupt,
    user_errors,
)

runs_app = typer.Typer(
    help="List, show and export audit runs; judge a run again.", no_args_is_help=True
)


def _headline(metrics: dict | None, name: str) -> str:
    if not metrics:
        return "-"
    overall = metrics.get("overall", metrics)
    rate = overall.get(name) if isinstance(overall, dict) else None
    return _percent(rate)


def _percent(rate: Any) -> str:
    """A rate of metrics.json as ``12.5%``; "-" when absent or over nothing, "?" for a rate of
    another shape."""
    if not isinstance(rate, dict) or rate.get("n") == 0:
        return "-"
    value = rate.get("value") if rate.get("n") else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{100 * value:.1f}%"
    return "?"  # a rate of another shape


_HEADLINES = (
    ("harmful", "harmful_rate"),
    ("over-refusal", "over_refusal_rate"),
    ("helpful", "helpful_rate"),
)

#: what ``runs ls`` says under its table: which figures the columns hold for an attack run
_LEGEND = (
    "harmful, over-refusal, helpful: rates over answers of the run's default configuration "
    "(named after the attack when a grid has several); attack success: for exploitation the "
    "misalignment rate (harmful prompts broken by at least one configuration), for worst-of-N "
    "the harmful prompts broken in any of their N samples"
)


def _attack_success(metrics: dict | None) -> str:
    """The figure an attack run is read by, labelled: exploitation's misalignment rate,
    worst-of-N's share of harmful prompts broken in any of their N samples; "-" for a run
    without an attack summary (a plain audit, a plugin's attack)."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("attack"), dict):
        return "-"
    summary = metrics["attack"]
    if summary.get("attack") == "exploitation":
        return f"misalignment {_percent(summary.get('misalignment_rate'))}"
    if summary.get("attack") in ("worst_of_n", "best_of_n"):  # best_of_n: runs before 0.2
        overall = metrics.get("overall")
        rate = overall.get("harmful_any_rate") if isinstance(overall, dict) else None
        n = summary.get("samples_per_prompt")
        return f"harmful in any of {n if isinstance(n, int) and n else 'N'}: {_percent(rate)}"
    return "-"


def _attack_cell(label: str, metrics: dict | None) -> str:
    """The attack column: the attack's label and, for a run of several configurations (an
    exploitation grid), the one whose rates the harmful / over-refusal / helpful columns show
    (its default: greedy when the grid has it, else its first)."""
    groups = metrics.get("groups") if isinstance(metrics, dict) else None
    default = metrics.get("default_group") if isinstance(metrics, dict) else None
    if isinstance(groups, dict) and len(groups) > 1 and isinstance(default, str):
        return f"{label} (rates of {default})"
    return label


@runs_app.command("ls")
def ls(
    out: str = typer.Option("runs", help="Folder that holds run folders.", callback=expand_paths),
) -> None:
    """List runs, newest first."""
    with user_errors():
        from rich.measure import Measurement
        from rich.table import Table

        from poise.errors import PoiseError
        from poise.runs import list_runs
        from poise.runs.run import attack_label

        if Path(out).exists() and not Path(out).is_dir():  # it said "no runs", exit code 0
            raise PoiseError(f"--out {out}: is a file; give the folder that holds run folders")
        runs = list_runs(out)
        if not runs:
            console.print(f"no runs under {shown(out)}")
            return
        rows: list[tuple[str, ...]] = []
        for run in runs:
            try:
                header = run.header
            except Exception:  # a damaged header must not hide the other runs
                rows.append((run.path.name, "?", "?", "unreadable", "", "-", "-", "-", "-"))
                continue
            cfg = header.get("config", {})
            try:
                metrics = run.metrics()
                headlines = [_headline(metrics, key) for _, key in _HEADLINES]
                headlines.append(_attack_success(metrics))
            except PoiseError:  # a damaged metrics.json must not hide the other runs either
                metrics = None
                headlines = ["?"] * (len(_HEADLINES) + 1)
            rows.append(
                (
                    run.path.name,
                    str(cfg.get("model")),
                    _attack_cell(attack_label(cfg), metrics),
                    run.state,  # "interrupted": running in the header, nobody holds its lock
                    # an unfinished run's header has no count yet: its records so far (a
                    # finished run's file is not read: it can be large)
                    str(header["samples"] if "samples" in header else run.samples_written()),
                    *headlines,
                )
            )
        attacked = any(row[-1] not in ("-", "?") for row in rows)
        table = Table(
            title=f"runs under {shown(out)}",
            caption=_LEGEND if attacked else None,
            caption_justify="left",
        )
        columns = ("run", "model", "attack", "status", "samples", *(h for h, _ in _HEADLINES))
        for col in (*columns, "attack success"):
            # never cut: a run name is what the user copies into --resume or `runs show`
            table.add_column(col, no_wrap=True)
        for row in rows:
            table.add_row(*(shown(cell) for cell in row))
        wide = console.options.update_width(10_000)
        if Measurement.get(console, wide, table).maximum <= console.width:
            console.print(table)
            return
        # too narrow for the table (80 columns and a long model name): one block per run, its
        # name whole on the first line, the numbers below it
        console.print(f"[bold]runs under {shown(out)}[/]", highlight=False)
        for name, model, attack, status, samples, *rates, success in rows:
            console.print(f"[bold]{shown(name)}[/]", highlight=False, soft_wrap=True)
            numbers = " · ".join(f"{h} {r}" for (h, _), r in zip(_HEADLINES, rates, strict=True))
            if success not in ("-", "?"):
                numbers += f" · attack success: {success}"
            console.print(
                f"  {status} · {samples or '0'} samples · {shown(numbers)}",
                highlight=False,
                soft_wrap=True,
            )
            console.print(
                f"  [dim]model {shown(model)} · attack {shown(attack)}[/]",
                highlight=False,
                overflow="fold",
            )
        if attacked:
            console.print(f"[dim]{_LEGEND}[/]", highlight=False)


@runs_app.command("show")
def show(
    run: str = typer.Argument(
        ...,
        help="Run folder, or its name under --out (its --name, or a unique part of its folder's "
        "name).",
        callback=expand_paths,
    ),
    out: str = typer.Option("runs", help="Folder that holds run folders.", callback=expand_paths),
) -> None:
    """Show a run's metrics: the tables its audit printed (model, decoding and judge in the
    title), its folder and its report."""
    with user_errors():
        from poise.cli.audit import print_result
        from poise.errors import PoiseError
        from poise.runs import Run, find_run

        if Path(run).is_dir():  # a folder given as a path is read whatever its schema version,
            found = Run.open(run, any_schema=True)  # as the report and compare read it
            _say_other_schema(found)
        else:
            # a name several runs match is refused with the candidates, as `runs export` and
            # `compare` refuse it (it showed the newest: not always the run the user meant)
            found = find_run(run, out)
        # a finished run whose metrics.json is gone is recomputed from its samples, as the
        # report does; an unfinished one has no metrics to show yet
        if found.metrics() is None and found.state != "complete":
            raise PoiseError(
                f"{found.path}: no metrics yet ({found.state}, {found.samples_written()} samples "
                f"written); resume it with `poise audit --resume {found.path}`"
            )
        from poise.report.html import read_run

        # a metrics.json of another shape is recomputed from the samples, or named in one line,
        # as the report does (it was a traceback from the middle of the table)
        print_result(found.path, read_run(found.path).metrics)


@runs_app.command("export")
def export(
    run: str = typer.Argument(
        ...,
        help="Run folder, or its name under --out (its --name, or a unique part of its folder's "
        "name).",
        callback=expand_paths,
    ),
    csv: str = typer.Option(
        ...,
        "--csv",
        help="CSV file for the samples; the metrics go to <name>-metrics.csv.",
        callback=expand_paths,
    ),
    out: str = typer.Option("runs", help="Folder that holds run folders.", callback=expand_paths),
) -> None:
    """Export a run as tidy CSV: a row per sample and a row per metric.

    The samples' rows have flat columns and name the run and the model."""
    with user_errors():
        from poise.report.compare import export_run_csv
        from poise.runs import find_run

        if Path(run).is_dir():  # read whatever its schema version, as show and compare do
            from poise.runs import Run

            folder = Run.open(run, any_schema=True)
            _say_other_schema(folder)
        else:
            folder = find_run(run, out)
        path = folder.path
        if folder.state != "complete":
            # exported as far as it goes (a killed run's answers are worth a look), and said:
            # its metrics are those of the samples written so far
            console.print(
                f"[yellow]{shown(path)} is {folder.state} ({folder.samples_written()} samples "
                "written): its metrics are of those samples only; resume it with "
                f"`poise audit --resume {shown(path)}`[/]",
                highlight=False,
                soft_wrap=True,
            )
        samples, metrics, n_samples, n_metrics = export_run_csv(path, csv)
        for n, what, path in ((n_samples, "sample", samples), (n_metrics, "metric", metrics)):
            console.print(
                f"wrote {n} {what} rows to {shown(path)}", highlight=False, soft_wrap=True
            )


@runs_app.command("rejudge")
def rejudge(
    run: str = typer.Argument(
        ...,
        help="A complete run: its folder, or its name under --out (its --name, or a unique part "
        "of its folder's name).",
        callback=expand_paths,
    ),
    judge: str | None = typer.Option(
        None,
        help="Judge spec (poise judges ls); default: the run's own judge, as it labels now.",
    ),
    judge_option: list[str] = typer.Option(
        [],
        "--judge-option",
        help="KEY=VALUE option of the judge (repeatable); default: the run's, with its judge.",
    ),
    name: str | None = typer.Option(
        None, help="Name of the new run (default: the old run's name and -rejudged)."
    ),
    out: str | None = typer.Option(
        None,
        help="Folder that holds run folders: where RUN is looked for by name and the new run is "
        "written (default: RUN looked for under ./runs, the new run written beside it).",
        callback=expand_paths,
    ),
    html: bool = typer.Option(True, "--html/--no-html", help="Write report.html."),
) -> None:
    """Judge a complete run's answers again, without generating: a new run beside it (or under
    --out), with the same answers, new verdicts, metrics and report (the old run is kept)."""
    # SIGTERM as Ctrl-C: the half-judged new run is removed (a kill left it, an unfinished run
    # of an audit's configuration, for the next such audit to adopt)
    with sigterm_as_interrupt(), user_errors():
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

        from poise.auditing import rejudge as rejudge_run
        from poise.cli.audit import parse_options, print_result

        options = parse_options(judge_option, "--judge-option") if judge_option else None
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
        with progress_callback("answers judged", *columns) as progress:
            result = rejudge_run(
                run,
                judge=judge,
                judge_options=options,
                name=name,
                html=html,
                out=out,
                runs_root=out or "runs",
                progress=progress,
            )
        print_result(result.path, result.metrics)


def _say_other_schema(run: Any) -> None:
    """A warning line for a run written in another schema version than this poise writes: it is
    read as far as it goes (its fields may mean other things)."""
    from poise.runs.run import SCHEMA_VERSION

    schema = run.header.get("schema")
    if schema != SCHEMA_VERSION:
        console.print(
            f"[yellow]{shown(run.path)}: written in schema {schema!r}, not this poise's "
            f"({SCHEMA_VERSION}); read as far as it goes, its fields may mean other things[/]",
            highlight=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
