"""``poise gate``: pass or fail a model on the HC-RLHF safety test. Exit codes: 0 PASS, 1 FAIL,
2 bad input, 3 crashed (no verdict); 130 on Ctrl-C, 143 on SIGTERM."""

from __future__ import annotations

from typing import Any

import typer

from poise.cli._common import (
    console,
    err_console,
    progress_bar,
    shown,
    sigterm_as_interrupt,
    user_errors,
)

#: the exit code of a gate that crashed: 0 is PASS, 1 FAIL and 2 bad input
CRASH_EXIT = 3

#: how each --bound computes U, as the result table's footer says it
BOUND_FORMULAS = {
    "student-t": "U = mean + t(1-δ, n-1) · std / √n",
    "hoeffding": "U = mean + √(ln(1/δ) / 2n) (Hoeffding, costs in [0, 1])",
    "clopper-pearson": "U = Beta quantile(1-δ; k+1, n-k), k harmful of n (exact binomial)",
}


def _run_gate(fields: dict[str, Any]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from poise.cli.train import _quiet_libraries
    from poise.gate import gate

    _quiet_libraries()
    columns = (TextColumn("[bold]sampling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with progress_bar(*columns) as bar:
        task = bar.add_task("prompts", total=None)
        result = gate(
            progress=lambda done, total: bar.update(task, completed=done, total=total), **fields
        )

    # paths and names are text, not markup: a folder "[/x]" was a MarkupError once the gate ran
    table = Table(
        title=f"poise gate · {shown(result.config.model)} on {shown(result.config.prompts)}",
        title_justify="left",
    )
    for column in ("n", "mean", "std", "U", "τ", "δ", "verdict"):
        table.add_column(column, justify="right")
    colour = "green" if result.passed else "red"
    table.add_row(
        str(result.n),
        f"{result.mean:.4f}",
        f"{result.std:.4f}",
        *_bound_and_tau(result.upper_bound, result.tau),
        f"{result.delta:.3g}",
        f"[bold {colour}]{result.verdict}[/]",
    )
    console.print(table)
    console.print(f"costs: {shown(result.cost_source)} ({result.to_dict()['cost_units']})")
    console.print(f"{BOUND_FORMULAS[result.config.bound]}; PASS when U <= τ", highlight=False)
    if result.comparison is not None:
        c = result.comparison
        test = {"newcombe": "Newcombe, McNemar exact", "paired-t": "paired t"}[c["method"]]
        console.print(
            f"vs baseline {shown(c['b'])}: mean cost {c['rate_a']:.4f} − {c['rate_b']:.4f} = "
            f"{c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}], p = {c['p_value']:.2g} "
            f"({test}; {c['pairs']} paired prompts)",
            highlight=False,
        )
    if result.config.output:
        console.print(f"result: [bold]{shown(result.config.output)}[/]", soft_wrap=True)
    raise typer.Exit(0 if result.passed else 1)


def _bound_and_tau(upper: float, tau: float) -> tuple[str, str]:
    """U and τ to 4 decimals, or to as many more as tell them apart: a U just above τ read
    "U 0.1000, τ 0.1000, FAIL" (and one just below, PASS), a verdict the table did not show."""
    for digits in range(4, 18):
        shown_u, shown_tau = f"{upper:.{digits}f}", f"{tau:.{digits}f}"
        if upper == tau or shown_u != shown_tau:
            break
    return shown_u, shown_tau


def register(app: typer.Typer) -> None:
    from poise.cli.train import command_from_config
    from poise.gate import GateConfig

    def run(fields: dict[str, Any]) -> None:
        # the paths among the fields (--output, --baseline, ...) are GateConfig's PathStr: "~"
        # is expanded there; a malformed KEY=VALUE flag is said before this (exit 2, by
        # command_from_config)
        with sigterm_as_interrupt():
            try:
                with user_errors():
                    _run_gate(fields)
            except typer.Exit:
                raise
            except Exception:  # a crash is no verdict: exit 1 would read as FAIL in a CI
                import traceback

                traceback.print_exc()
                err_console.print(
                    f"[bold red]error:[/] the gate crashed (exit {CRASH_EXIT}: no verdict)",
                    highlight=False,
                )
                raise typer.Exit(CRASH_EXIT) from None

    doc = (
        "Safety test (HC-RLHF): PASS if the upper confidence bound on the cost is <= tau. "
        "Exit 0 PASS, 1 FAIL, 2 bad input, 3 crashed (no verdict)."
    )
    app.command("gate", help=doc)(command_from_config(GateConfig, run, doc))
