"""``poise compare RUN RUN ...``: runs side by side (HTML report, paired differences, CSV)."""

from __future__ import annotations

import typer

from poise.cli._common import console, expand_paths, shown, user_errors

_TEST_NAMES = {
    "newcombe": "McNemar",
    "cluster": "cluster t",
    "cluster-sign": "sign test, prompts",
}


def compare_command(
    runs: list[str] = typer.Argument(
        ...,
        help="Run folders, or their names under --out (as `poise runs show` takes them); two "
        "or more.",
        callback=expand_paths,
    ),
    output: str = typer.Option(
        "compare.html",
        "--output",
        "-o",
        help="HTML file to write the side-by-side report to.",
        callback=expand_paths,
    ),
    csv: str | None = typer.Option(
        None,
        "--csv",
        help="Also write a long-format CSV (one row per run, group, metric and category; one "
        "per paired difference, naming the group of each run it paired).",
        callback=expand_paths,
    ),
    out: str = typer.Option("runs", help="Folder that holds run folders.", callback=expand_paths),
) -> None:
    """Compare runs: paired differences here, rates side by side and a chart in the report.

    The terminal prints the paired differences, measured on the prompts two runs share (the
    first run is the baseline); the HTML report (and --csv) holds every run's rates side by side
    and the helpful-vs-harmless chart.
    """
    with user_errors():
        from pathlib import Path

        from poise.errors import PoiseError
        from poise.report.compare import compare_runs, p_text, run_folder

        if csv is not None and Path(csv).resolve() == Path(output).resolve():
            # the CSV was written over the report, which the last line still named
            raise PoiseError(f"--csv {csv} is the --output report; give each its own file")

        folders = [run_folder(run, out) for run in runs]
        if len({f.resolve() for f in folders}) < len(folders):
            console.print("[yellow]the same run is given twice[/]", highlight=False)
        read, diffs = compare_runs(folders, html=output, csv_path=csv)
        if not diffs and any(not r.records for r in read):
            # a run without sample records: said above (poise.report.compare._unpaired); runs
            # that share too few prompts are named above with their counts (too_few_shared)
            console.print(
                "no paired differences: a run holds no sample records (said above; the report "
                "still holds each run's rates)",
                highlight=False,
            )
        for d in diffs:
            console.print(
                f"{shown(d.metric)}: {shown(d.run_shown())} − {shown(d.baseline_shown())} = "
                f"{100 * d.value:+.1f} pts [{100 * d.low:+.1f}, {100 * d.high:+.1f}], "
                f"p {p_text(d.p_value)} ({_TEST_NAMES.get(d.method, d.method)}) "
                f"on {d.items} shared prompts ({100 * d.run_value:.1f}% against "
                f"{100 * d.baseline_value:.1f}% there)",
                highlight=False,
            )
        console.print(f"report: [bold]{shown(output)}[/]", highlight=False, soft_wrap=True)
        if csv:
            console.print(f"csv: [bold]{shown(csv)}[/]", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
