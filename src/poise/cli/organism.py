"""``poise organism build|remeasure|ls|card``: the bundled model organism."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from poise.cli._common import (
    console,
    err_console,
    expand_paths,
    shown,
    sigterm_as_interrupt,
    user_errors,
)
from poise.errors import PoiseError

organism_app = typer.Typer(
    help="The bundled model organism: build its members, list them, show their cards.",
    no_args_is_help=True,
)


def _weights_dir(out: str | None) -> Path:
    """The members' folder: ``--out``, or the package's. A file there is refused (``ls``
    listed every member as not built with exit code 0, where ``runs ls --out FILE`` refuses)."""
    from poise.organism import WEIGHTS_DIR

    if out is None:
        return WEIGHTS_DIR
    if Path(out).exists() and not Path(out).is_dir():
        raise PoiseError(f"--out {out}: is a file; give the folder of the organism's members")
    return Path(out)


@contextmanager
def _progress_bar(setup: str | None = None) -> Iterator[Callable[[str, int, int], None]]:
    """One bar per task of a build or a measurement, fed by ``progress(task, done, total)``
    (``setup``: a first task, done when the first real one starts); transformers' own bars
    are off, so there is one display. On stderr, as progress displays go: stdout holds the
    result alone, and a log of both (``2>&1``) keeps the bars' last state, what each task took
    (on a pipe rich prints it when they end)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console) as bar:
        first = bar.add_task(setup, total=1) if setup is not None else None
        tasks: dict[str, Any] = {}

        def progress(task: str, completed: int, total: int) -> None:
            if task not in tasks:
                if first is not None:
                    bar.update(first, completed=1)
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], completed=completed, total=total)

        yield progress


@organism_app.command("build")
def build_command(
    out: str | None = typer.Option(
        None,
        help="Folder for the members (default: the package's organism/weights).",
        callback=expand_paths,
    ),
    members: list[str] = typer.Option(
        [], "--members", "-m", help="Member to build; repeatable (default: all)."
    ),
    quick: bool = typer.Option(
        False, help="Cut-down corpus and a few steps: checks the build code, not for use."
    ),
    seed: int = typer.Option(0, help="Corpus and training seed."),
    threads: int = typer.Option(2, help="Torch threads; the shipped weights were built with 2."),
) -> None:
    """Regenerate organism members deterministically on CPU and write their model cards."""
    with sigterm_as_interrupt(), user_errors():
        from poise.errors import check_int
        from poise.organism.build import build, resolve_members

        names = resolve_members(members)  # validate names before any work
        _weights_dir(out)
        check_int("organism build", "--threads", threads, 1)  # before the bar starts
        with _progress_bar(setup="corpus + tokenizer") as progress:
            result = build(out, names, quick=quick, seed=seed, progress=progress, threads=threads)
        _print_result(result)


def _print_result(result: Any) -> None:
    from rich.table import Table

    table = Table(title=f"organism built in {result.seconds:.0f} s -> {shown(result.out)}")
    table.add_column("member")
    table.add_column("size", justify="right")
    table.add_column("rate")
    table.add_column("value [95% CI]", justify="right")
    for member, r in result.members.items():
        first = True
        for rate in r.rates.values():
            table.add_row(
                member if first else "",
                f"{r.size_bytes / 1e6:.2f} MB" if first else "",
                rate.name,
                f"{rate.value:.1%} [{rate.low:.1%}, {rate.high:.1%}]",
            )
            first = False
    console.print(table)


@organism_app.command("remeasure")
def remeasure_command(
    out: str | None = typer.Option(
        None, help="Folder of the members (default: the package's).", callback=expand_paths
    ),
    members: list[str] = typer.Option(
        [], "--members", "-m", help="Chat member whose card to rewrite; repeatable (default: all)."
    ),
    quick: bool = typer.Option(
        False, help="The members are a quick build (its cut-down measurement)."
    ),
    seed: int = typer.Option(0, help="Corpus seed the members were built with."),
    threads: int = typer.Option(2, help="Torch threads."),
) -> None:
    """Measure the chat members' card rates again on their weights (no training) and rewrite
    them in their cards: after a change to the oracle or to how a rate is counted."""
    with sigterm_as_interrupt(), user_errors():
        from poise.errors import check_int
        from poise.organism.build import remeasure_cards

        check_int("organism remeasure", "--threads", threads, 1)  # before the bar starts
        _weights_dir(out)
        with _progress_bar() as progress:
            measured = remeasure_cards(
                out, members or None, quick=quick, seed=seed, progress=progress, threads=threads
            )
        folder = _weights_dir(out)
        for member in measured:
            console.print(
                f"card rewritten: {shown(folder / member / 'README.md')} "
                f"({len(measured[member])} rates)",
                soft_wrap=True,
            )


@organism_app.command("ls")
def ls_command(
    out: str | None = typer.Option(
        None, help="Folder of the members (default: the package's).", callback=expand_paths
    ),
) -> None:
    """List the members with their size and whether they are built."""
    with user_errors():
        from rich.table import Table

        from poise.organism import ALIASES, MEMBERS

        folder = _weights_dir(out)
        aliases = {v: k for k, v in ALIASES.items()}
        table = Table(title=f"organism members in {shown(folder)}")  # "[exp]" is no markup
        # names are what a user types: never cut (the path in the title wraps instead)
        table.add_column("member", no_wrap=True, min_width=max(map(len, MEMBERS)))
        table.add_column("alias", overflow="fold")
        for col in ("built", "size", "kind"):
            table.add_column(col, no_wrap=True)
        for member in MEMBERS:
            path = folder / member
            built = (path / "config.json").is_file()
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) if built else 0
            kind = _kind(path) if built else ""
            table.add_row(
                member,
                aliases.get(member, ""),
                "yes" if built else "[red]no[/]",
                f"{size / 1e6:.2f} MB" if built else "",
                kind,
            )
        console.print(table)


def _kind(path: Path) -> str:
    import json

    try:
        meta = json.loads((path / "poise.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "?"
    return str(meta.get("kind", "?"))


@organism_app.command("card")
def card_command(
    member: str = typer.Argument(..., help="Member name or alias."),
    out: str | None = typer.Option(
        None, help="Folder of the members (default: the package's).", callback=expand_paths
    ),
) -> None:
    """Print a member's model card (measured rates, training settings, how to reproduce)."""
    with user_errors():
        from poise.organism import canonical_member

        name = canonical_member(member)
        path = _weights_dir(out) / name / "README.md"
        if not path.is_file():
            raise PoiseError(f"{path}: no model card; build the member with `poise organism build`")
        text = path.read_text(encoding="utf-8")
        if text.startswith("---"):
            end = text.find("\n---", 3)
            text = text[end + 4 :] if end != -1 else text
        for part in _card_parts(text):
            console.print(part)


def _card_parts(text: str) -> list[Any]:
    """A card's Markdown as renderables: prose as Markdown, each table as a rich Table whose
    first column (the rate or setting names a user looks up) is never cut; rich's Markdown
    tables cut it to fit 80 columns ("benign_helpful_rate_…")."""
    from rich.markdown import Markdown
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    prose: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        is_table = lines[i].lstrip().startswith("|") and i + 1 < len(lines)
        if not (is_table and set(lines[i + 1].strip()) <= set("|-: ")):
            prose.append(lines[i])
            i += 1
            continue
        if prose:
            parts.append(Markdown("\n".join(prose)))
            prose = []
        rows = []
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            rows.append(
                [c.strip().replace("`", "") for c in lines[i].strip().strip("|").split("|")]
            )
            i += 1
        header, body = rows[0], rows[2:]  # rows[1] is the |---| line
        body = [r[: len(header)] + [""] * (len(header) - len(r)) for r in body]
        longest = [max(len(c) for c in [h, *(r[k] for r in body)]) for k, h in enumerate(header)]
        # a long last column (what a rate was measured on) goes under its row, dim, so the
        # names and figures keep one line each
        below = len(header) > 2 and longest[-1] > 30
        shown = header[:-1] if below else header
        table = Table(show_edge=False, header_style="bold")
        for k, name in enumerate(shown):
            # the first column also holds the lines below: it wraps, but never inside a name
            table.add_column(name, min_width=longest[0] if k == 0 else None)
        for row in body:
            table.add_row(*row[: len(shown)])
            if below and row[-1]:
                table.add_row(f"[dim]  {header[-1]}: {row[-1]}[/]", *[""] * (len(shown) - 1))
        wide = console.options.update_width(10_000)  # measured uncapped, then compared
        if Measurement.get(console, wide, table).minimum <= console.width:
            parts.append(table)
            continue
        # too narrow for the columns: one block per row, its name whole on the first line
        for row in body:
            parts.append(Text(row[0], style="bold"))
            pairs = " · ".join(f"{h}: {v}" for h, v in zip(header[1:], row[1:], strict=True) if v)
            parts.append(Text(f"  {pairs}"))
    if prose:
        parts.append(Markdown("\n".join(prose)))
    return parts


def register(app: typer.Typer) -> None:
    app.add_typer(organism_app, name="organism")
