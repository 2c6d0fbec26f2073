"""``poise suites ls|show``: the built-in suites, the file formats, and what a suite holds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from poise.cli._common import console, expand_paths, shown, user_errors
from poise.errors import PoiseError

if TYPE_CHECKING:
    from poise.suites import Suite, SuiteItem

suites_app = typer.Typer(
    help="List built-in suites and formats; show what a suite holds.", no_args_is_help=True
)

_PROMPT_WIDTH = 100


def parse_columns(pairs: list[str]) -> dict[str, str]:
    """``ROLE=COLUMN`` pairs of ``--column`` into the ``columns=`` mapping of load_suite."""
    columns: dict[str, str] = {}
    for pair in pairs:
        role, sep, column = pair.partition("=")
        if not sep or not role.strip() or not column.strip():
            raise PoiseError(f"--column {pair!r}: expected ROLE=COLUMN, e.g. prompt=question")
        if role.strip() in columns:  # the second silently replaced the first
            raise PoiseError(
                f"--column {pair!r}: the role {role.strip()!r} is already mapped to "
                f"{columns[role.strip()]!r}; give each role once"
            )
        columns[role.strip()] = column.strip()
    return columns


def _short_path(path: Path) -> str:
    """A path inside the installed package, from the package folder on (``poise/suites/...``)."""
    import poise

    package_parent = Path(poise.__file__).resolve().parent.parent
    return (
        str(path.relative_to(package_parent)) if path.is_relative_to(package_parent) else str(path)
    )


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _kinds(suite: Suite) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in suite.kind_counts().items())


def _categories(suite: Suite, shown: int = 4) -> str:
    names = list(suite.category_counts())
    more = f", … (+{len(names) - shown})" if len(names) > shown else ""
    return f"{len(names)}: {', '.join(names[:shown])}{more}"


def _one_line(text: str, width: int = _PROMPT_WIDTH) -> str:
    flat = " ⏎ ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _prompt(item: SuiteItem) -> str:
    # the turns before the last user message; an item's own system message is no turn
    earlier = sum(m.get("role") != "system" for m in item.messages) - 1
    prefix = f"[dim](+{earlier} earlier turn{'s' if earlier > 1 else ''})[/] " if earlier else ""
    from rich.markup import escape

    return prefix + escape(_one_line(item.prompt))


@suites_app.command("ls")
def ls() -> None:
    """List the built-in suites (items, kinds, categories) and the formats files may use."""
    with user_errors():
        from rich.markup import escape
        from rich.table import Table

        from poise.plugins import load_plugins
        from poise.suites import builtin_path, builtin_suites, format_registry, load_suite

        # a broken plugin's warning is one line before the table (its error, repeated in every
        # row's source column, was the table)
        load_plugins()
        table = Table(title="built-in suites")
        for col in ("name", "items", "kinds", "categories", "source"):
            table.add_column(col, overflow="fold")
        for name in builtin_suites():
            try:
                suite = load_suite(name)
            except PoiseError as exc:  # one broken or missing file must not hide the others
                table.add_row(name, "-", "-", "-", f"[red]{escape(str(exc))}[/]")
                continue
            table.add_row(
                name,
                str(len(suite)),
                _kinds(suite),
                escape(_categories(suite)),
                escape(_short_path(builtin_path(name))),
            )
        console.print(table)

        fmt_table = Table(title="formats (files and hub datasets; detected from the columns)")
        for col in ("format", "detected by columns", "what"):
            fmt_table.add_column(col, overflow="fold")
        for name in format_registry:
            fmt = format_registry.get(name)
            detected_by = (
                ", ".join(fmt.required) if fmt.detect else "(fallback; --column ROLE=NAME)"
            )
            fmt_table.add_row(name, escape(detected_by), escape(fmt.help))
        console.print(fmt_table)


@suites_app.command("show")
def show(
    spec: str = typer.Argument(
        ...,
        help="Built-in suite name, file path, or hub id owner/name[:split].",
        callback=expand_paths,
    ),
    limit: int = typer.Option(10, "--limit", "-n", min=1, help="Items to show."),
    format: str | None = typer.Option(
        None, "--format", "-f", help="Row format instead of detecting it (see `poise suites ls`)."
    ),
    column: list[str] = typer.Option(
        [],
        "--column",
        help="ROLE=COLUMN for generic files (prompt, id, kind, category, reference, system); repeatable.",
    ),
    kind: str | None = typer.Option(
        None,
        help="Kind of rows that carry none (harmful, borderline, benign, honesty-known, honesty-unknown, sycophancy).",
    ),
    category: str | None = typer.Option(None, help="Category of rows that carry none."),
) -> None:
    """Load a suite and show its counts and first items."""
    with user_errors():
        from rich.markup import escape
        from rich.table import Table

        from poise.suites import load_suite

        columns = parse_columns(column)
        # a path with brackets is text, not markup ("[/x]" raised MarkupError on a terminal)
        with console.status(f"loading {shown(spec)} …"):
            suite = load_suite(
                spec, format=format, columns=columns or None, kind=kind, category=category
            )
        categories = _plural(len(suite.category_counts()), "category", "categories")
        console.print(
            f"[bold]{escape(suite.name)}[/]: {len(suite)} items ({escape(_kinds(suite))}) in "
            f"{categories}, format {suite.format}, from {escape(suite.source)}",
            highlight=False,
        )
        table = Table(show_lines=False)
        for col in ("id", "kind", "category", "prompt"):
            table.add_column(col, overflow="fold")
        for item in suite.items[:limit]:
            # a file's ids and categories are text, not markup ("[/x]" raised MarkupError)
            table.add_row(escape(item.id), escape(item.kind), escape(item.category), _prompt(item))
        console.print(table)
        if len(suite) > limit:
            console.print(f"… {len(suite) - limit} more (--limit N shows more)", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(suites_app, name="suites")
