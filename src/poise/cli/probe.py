"""``poise probe train|score``: linear probes on a model's activations (``poise.probes``)."""

from __future__ import annotations

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

probe_app = typer.Typer(
    help="Linear probes on a model's hidden states: train one (with a layer sweep), score a run.",
    no_args_is_help=True,
)


def _progress(label: str) -> Any:
    """A ``progress(done, total)`` callback: a bar on a terminal, else a line now and then."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return progress_callback(
        label, TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(),
    )  # fmt: skip


@probe_app.command("train")
def train_command(
    out: str = typer.Option(
        ...,
        "--out",
        "--output",  # as train, gate, compare and attacks export name what they write
        "-o",
        help="Folder to write the probe to (new or empty).",
        callback=expand_paths,
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Model spec (hf backend); default: the --run's model for comply / deception, else organism-large.",
    ),
    task: str = typer.Option(
        "harmful",
        help="harmful (harmful vs benign prompts), comply (will-refuse vs will-comply at the last "
        "prompt token, labels from --run), honesty (honest vs deceptive instructions), deception "
        "(feigned vs real compliance to harmful requests, mean over the answer's tokens, labels "
        "from --run).",
    ),
    suite: list[str] = typer.Option(
        [],
        "--suite",
        "-s",
        help="Suite(s) for harmful / honesty (default: harmful+benign / honesty).",
        callback=expand_paths,
    ),
    run: str | None = typer.Option(
        None,
        help="Audit run whose judged answers label comply / deception: its folder, or its name "
        "under ./runs (a run audited with another --out: give its folder).",
        callback=expand_paths,
    ),
    layer: int | None = typer.Option(
        None, help="Layer to keep (0 = embeddings); default: the best held-out AUROC."
    ),
    test_fraction: float = typer.Option(0.3, help="Share of items held out (split by item)."),
    l2: float = typer.Option(10.0, help="L2 penalty of the logistic regression."),
    fpr: float = typer.Option(0.01, help="False-positive rate of the threshold on negatives."),
    seed: int = typer.Option(0, help="Seed of the split."),
) -> None:
    """Fit a probe: activations of every layer, a sweep (held-out accuracy and AUROC), a folder."""
    with sigterm_as_interrupt(), user_errors():
        from rich.table import Table

        from poise.probing import train_probe

        with _progress("rows read") as progress:
            result = train_probe(
                out, task=task, model=model, suites=suite, run=run, layer=layer,
                test_fraction=test_fraction, l2=l2, fpr=fpr, seed=seed, progress=progress,
            )  # fmt: skip
        meta = result.probe.metadata
        table = Table(
            title=f"{task} probe, held-out items: {meta['test_items']} of "
            f"{meta['train_items'] + meta['test_items']}"
        )
        for column in ("layer", "accuracy", "AUROC", "95% interval"):
            table.add_column(column, justify="right")
        for r in result.sweep:
            mark = " *" if r.layer == result.layer else ""
            table.add_row(
                f"{r.layer}{mark}", f"{r.accuracy:.3f}", f"{r.auroc:.3f}",
                f"{r.auroc_low:.3f}-{r.auroc_high:.3f}",
            )  # fmt: skip
        console.print(table)
        console.print(
            f"probe (layer {result.layer}) -> {shown(result.out)}  [{result.seconds:.0f} s]",
            soft_wrap=True,
        )


@probe_app.command("score")
def score_command(
    run: str = typer.Argument(
        ...,
        help="Audit run folder, or its name under --out (its --name, or a unique part of its "
        "folder's name).",
        callback=expand_paths,
    ),
    probe: str = typer.Option(
        ..., "--probe", "-p", help="Probe folder (poise probe train).", callback=expand_paths
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model spec (default: the probe's)."
    ),
    fpr: float | None = typer.Option(
        None, help="False-positive rate on the run's benign answers (default: the probe's, 1%)."
    ),
    out: str = typer.Option("runs", help="Folder that holds run folders.", callback=expand_paths),
) -> None:
    """Score a run's answers with a probe: probe_scores.jsonl, and the report shows them."""
    with sigterm_as_interrupt(), user_errors():
        from poise.probing import score_probe

        with _progress("answers read") as progress:
            scored = score_probe(run, probe, model=model, fpr=fpr, runs_dir=out, progress=progress)
        result = scored.scores
        console.print(
            f"{sum(result.flagged)} of {scored.answers} answers flagged (threshold "
            f"{result.threshold:.3f}: {result.threshold_source}) -> {shown(scored.path)}",
            soft_wrap=True,
        )
        for key, value in result.agreement.items():
            console.print(
                f"  AUROC of the probe against the judge's '{key}': {value['auroc']:.3f} "
                f"({value['low']:.3f}-{value['high']:.3f}, n={value['n']})"
            )


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")
