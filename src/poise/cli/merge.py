"""``poise merge CONFIG.yml OUT`` (a mergekit-style config) and ``poise merge methods``."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from poise.cli._common import (
    console,
    expand_paths,
    progress_bar,
    sigterm_as_interrupt,
    user_errors,
)


class _DefaultRunGroup(TyperGroup):
    """``poise merge CONFIG OUT`` runs the hidden ``run`` command; a subcommand name
    (``poise merge methods``) runs that subcommand. ``poise merge --help`` shows the ``run``
    command's arguments and options beside the subcommands."""

    _showing_help = False

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # the group's own on/off flags (--verbose/-v) come before the command: `poise merge -v
        # methods` ran `run` with the argument "methods"
        own = {o for p in self.params if getattr(p, "is_flag", False) for o in p.opts}
        first = next((i for i, arg in enumerate(args) if arg not in own), len(args))
        named = args[first] if first < len(args) else None
        if named is not None and named not in self.commands and named not in ("--help", "-h"):
            args = [*args[:first], "run", *args[first:]]
        return super().parse_args(ctx, args)

    def _run(self) -> Any:
        return self.commands.get("run")

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        run = self._run()
        if run is None:  # pragma: no cover - the run command is registered below
            return list(super().collect_usage_pieces(ctx))
        return [*run.collect_usage_pieces(ctx), "|", "COMMAND", "[ARGS]..."]

    def get_params(self, ctx: Any) -> list[Any]:
        params = list(super().get_params(ctx))
        run = self._run()
        if not self._showing_help or run is None:
            return params  # parsing: the group itself takes no arguments
        shown = [p for p in run.get_params(ctx) if p.name != "help"]
        return shown + [p for p in params if p.name not in {q.name for q in shown}]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._showing_help = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._showing_help = False


merge_app = typer.Typer(
    name="merge",
    cls=_DefaultRunGroup,
    help=(
        "Merge models from a mergekit-style YAML config into the new folder OUT: "
        "poise merge CONFIG.yml OUT [--shard-size 5GB]. Methods: poise merge methods."
    ),
    no_args_is_help=True,
)


def _size(text: str) -> int:
    """``--shard-size``: bytes, or a number with KB / MB / GB; a ValueError unless positive (0
    or a negative size wrote one shard per tensor without a word) and finite (``infGB`` was an
    OverflowError traceback)."""
    units = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "b": 1}
    lowered = text.strip().lower()
    suffix = next((s for s in units if lowered.endswith(s)), None)
    try:
        size = int(float(lowered[: -len(suffix)]) * units[suffix]) if suffix else int(lowered)
    except OverflowError:
        raise ValueError(f"shard size {text}") from None
    if size <= 0:
        raise ValueError(f"shard size {size}")
    return size


@merge_app.command("run", hidden=True)
def run_command(
    merge_config: str = typer.Argument(
        ...,
        metavar="CONFIG.yml",
        help="mergekit-style YAML: merge_method, models, ...",
        callback=expand_paths,
    ),
    out: str = typer.Argument(
        ...,
        metavar="OUT",
        help="New (or empty) folder for the merged model.",
        callback=expand_paths,
    ),
    shard_size: str = typer.Option("5GB", help="Largest output shard (e.g. 2GB, 500MB)."),
) -> None:
    """Merge the models CONFIG names into OUT, tensor by tensor."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    with sigterm_as_interrupt(), user_errors():
        from poise.errors import PoiseError
        from poise.merge.config import load_config, run_merge

        try:
            size = _size(shard_size)
        except ValueError:
            raise PoiseError(
                f"--shard-size {shard_size!r} is not a positive size (e.g. 2GB, 500MB)"
            ) from None
        from pathlib import Path

        load_config(Path(merge_config))  # every config mistake before any weight is read
        columns = (
            TextColumn("[bold]merging"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with progress_bar(*columns) as bar:
            task = bar.add_task("tensors", total=None)
            result = run_merge(
                Path(merge_config),
                Path(out),
                shard_size=size,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        console.print(
            f"{result.method}: {result.n_tensors} tensors -> [bold]{escape(str(result.out))}[/] "
            f"({len(result.files)} file(s))",
            highlight=False,
            soft_wrap=True,
        )


@merge_app.command("search")
def search_command(
    search_config: str = typer.Argument(
        ...,
        metavar="SEARCH.yml",
        help="merge template, methods, weights, parameter grid, audit",
        callback=expand_paths,
    ),
    out: str = typer.Argument(
        ...,
        metavar="OUT",
        help="Folder for the candidates, search.json and chosen/.",
        callback=expand_paths,
    ),
) -> None:
    """Merge and audit every candidate; print the helpful / harmless / honest Pareto front.

    Candidates are cached under OUT: the same command after a kill resumes where it stopped.
    """
    from pathlib import Path

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    with sigterm_as_interrupt(), user_errors():
        from poise.merge.search import load_search, run_search

        search = load_search(Path(search_config))
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with progress_bar(*columns) as bar:
            task = bar.add_task("candidates", total=None)

            def started(i: int, n: int, candidate: Any, cached: bool) -> None:
                state = "cached" if cached else "merge + audit"
                bar.update(task, description=f"{i + 1}/{n} {state}", completed=0, total=None)

            result = run_search(
                search,
                Path(out),
                on_candidate=started,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        table = Table(title="poise merge search", title_justify="left")
        table.add_column("candidate")
        for objective in search.objectives:
            table.add_column(objective, justify="right")
        table.add_column("front")
        for cand in sorted(result.candidates, key=lambda c: (not c.on_front, c.label)):
            cells = [
                f"{100 * s.value:.1f} [{100 * s.low:.1f}, {100 * s.high:.1f}]"
                for s in cand.scores.values()
            ]
            mark = (
                "yes"
                if cand.on_front
                else (
                    f"within noise of {', '.join(cand.within_noise_of)}"
                    if cand.within_noise_of
                    else ""
                )
            )
            chosen = " (chosen)" if cand is result.chosen else ""
            table.add_row(f"{cand.key} {escape(cand.label)}{chosen}", *cells, mark)
        console.print(table)
        console.print(
            f"rates in %, 95% intervals; chosen: maximin over the objectives -> "
            f"[bold]{escape(str(result.out / 'chosen'))}[/]",
            highlight=False,
        )


@merge_app.command("methods")
def methods_command() -> None:
    """List the merge methods with their reference and options."""
    from rich.table import Table
    from rich.text import Text

    from poise.merge import METHODS
    from poise.merge.methods import KEYWORD_OPTIONS

    spelled = {v: k for k, v in KEYWORD_OPTIONS.items()}
    # two columns, the details one wrapping at spaces: five columns cut the options at 80
    table = Table(title="poise merge methods", title_justify="left", show_lines=True)
    table.add_column("method", no_wrap=True)
    table.add_column("what, reference, options", overflow="fold")
    for name in METHODS.names():
        method = METHODS.get(name)
        params = method.parameters()
        shared = [
            f"{spelled.get(p, p)}={params[p].default!r}"
            for p in params
            if p not in method.per_model and params[p].default is not params[p].empty
        ]
        required = [spelled.get(p, p) for p in method.required() if p not in method.per_model]
        details = Text(METHODS.help(name))
        for label, value in (
            ("reference", METHODS.reference(name) or ""),
            ("per model", ", ".join(spelled.get(p, p) for p in method.per_model)),
            ("required", ", ".join(required)),
            ("options", ", ".join(shared)),
        ):
            if value:
                details.append(f"\n{label}: ", style="dim")
                details.append(value)
        table.add_row(name, details)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(merge_app)
