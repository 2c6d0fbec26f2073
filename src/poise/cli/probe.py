"""``poise probe train|score``: linear probes on a model's activations (``poise.probes``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from poise.cli._common import (
    console,
    expand_paths,
    progress_bar,
    shown,
    sigterm_as_interrupt,
    user_errors,
)
from poise.errors import PoiseError, check_number

probe_app = typer.Typer(
    help="Linear probes on a model's hidden states: train one (with a layer sweep), score a run.",
    no_args_is_help=True,
)

TASKS = ("harmful", "comply", "honesty", "deception")


# tasks whose labels are an audit run's judged answers, and the error when --run is missing
RUN_TASKS = {
    "comply": "probe train --task comply: pass --run RUN, a greedy audit of the same model "
    "(its judged answers are the labels)",
    "deception": "probe train --task deception: pass --run RUN, an audit of the same model on "
    "harmful items judged by a judge that labels feigned answers (the organism's oracle)",
}


def _bar(total: int, description: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    bar = progress_bar(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    task = bar.add_task(description, total=total)
    return bar, lambda k: bar.advance(task, k)


def _warn_other_model(found: Any, model: Any, why: str) -> None:
    """Warn when the run ``found`` audited another model than ``model`` (``why``: what that
    spoils). The run's resolved name is compared (an alias such as ``organism`` resolves to its
    member, with the weights' fingerprint); runs written before it was recorded have the spec
    only; a run that says neither is not warned about."""
    audited = found.header.get("model_name")
    if not isinstance(audited, str):
        spec = found.config.get("model")
        audited = spec if isinstance(spec, str) and model.spec is not None else None
        same = audited is None or audited == model.spec
    else:
        same = audited == model.name
    if not same:
        logging.getLogger(__name__).warning(
            "the run %s audited %r and the probe reads %r: %s", found.path, audited, model.name, why
        )


def _examples(task: str, model: Any, suites: list[str], run: str | None) -> list[Any]:
    from poise.models.base import default_system_prompt, no_system_prompt
    from poise.probes import data
    from poise.suites.loaders import load_suite

    system = default_system_prompt(model)
    if task in RUN_TASKS:
        if run is None:
            raise PoiseError(RUN_TASKS[task])
        from poise.runs import find_run

        found = find_run(run)
        _warn_other_model(
            found, model, "the labels should come from the probed model's own answers"
        )
        records, none = list(found.records()), no_system_prompt(model)
        source = found.samples_path
        if task == "comply":
            return data.compliance_from_records(records, system, none_prompt=none, source=source)
        return data.deception_from_records(records, system, none_prompt=none, source=source)
    items = [item for name in suites for item in load_suite(name).items]
    if task == "harmful":
        return data.harmful_vs_benign(items, system)
    return data.instructed_pairs(items)


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
        _check_fpr(fpr)
        check_number("probe", "l2", l2, positive=True)
        # before the model loads (train_probe checks them again, before the activations)
        if not 0.0 < test_fraction < 1.0:
            raise PoiseError(f"--test-fraction: a share in (0, 1), got {test_fraction:g}")
        if layer is not None and layer < 0:
            raise PoiseError(f"--layer: an index >= 0 (0 = the embeddings), got {layer}")
        from rich.table import Table

        from poise.models import load_model
        from poise.probes.linear import check_new_folder
        from poise.probes.sweep import require_activations
        from poise.probes.train import train_probe

        if task not in TASKS:
            raise PoiseError(
                f"probe train --task: expected one of {', '.join(TASKS)}, got {task!r}"
            )
        # a flag the task does not read was dropped without a word (a probe trained on other
        # labels than the user asked for)
        if task in RUN_TASKS and suite:
            raise PoiseError(
                f"probe train --task {task}: --suite is not read (the labels are the --run's "
                "judged answers); leave it out"
            )
        if task not in RUN_TASKS and run is not None:
            raise PoiseError(
                f"probe train --task {task}: --run is not read (the labels come from the "
                "suites' items); leave it out, or use --task comply or deception"
            )
        check_new_folder(out, "probe")
        if task in RUN_TASKS and run is None:
            raise PoiseError(RUN_TASKS[task])
        default = {"harmful": ["harmful", "benign"], "honesty": ["honesty"]}.get(task, [])
        if model is None and task in RUN_TASKS and run is not None:
            from poise.runs import find_run

            # the model the audit built (folders by absolute path: read from any directory)
            model = find_run(run).model_to_build
        loaded = load_model(model or "organism-large")
        require_activations("poise probe train", loaded)
        examples = _examples(task, loaded, list(suite) or default, run)
        bar, advance = _bar(len(examples), f"activations of {len(examples)} rows")
        with bar:
            result = train_probe(
                loaded, examples, out, task=task, layer=layer, test_fraction=test_fraction,
                l2=l2, fpr=fpr, seed=seed, progress=advance,
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


def _check_fpr(fpr: float | None) -> None:
    """A false-positive rate in [0, 1), checked before any model loads."""
    if fpr is not None and not 0.0 <= fpr < 1.0:
        raise PoiseError(f"--fpr: a false-positive rate in [0, 1), got {fpr}")


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
        from poise.models import load_model
        from poise.models.base import default_system_prompt
        from poise.probes.linear import load_probe
        from poise.probes.sweep import require_activations
        from poise.probes.train import check_benign_for_fpr, score_answers, write_scores
        from poise.report.html import write_run_report
        from poise.runs import find_run

        _check_fpr(fpr)
        found = find_run(run, out)
        loaded_probe = load_probe(probe)
        spec = model or loaded_probe.model
        if spec is None:
            raise PoiseError(f"{probe}: the probe names no model; pass --model")
        if model is not None and loaded_probe.model and model != loaded_probe.model:
            logging.getLogger(__name__).warning(
                "the probe was trained on %r and reads %r's activations: its direction and "
                "threshold are %r's",
                loaded_probe.model,
                model,
                loaded_probe.model,
            )
        records = list(found.records())
        check_benign_for_fpr(records, fpr)  # before the model loads
        loaded = load_model(spec)
        require_activations("poise probe score", loaded)
        # the flags are crossed with the judge's verdicts on the run's answers: the AUROC
        # against the judge would mix two models
        _warn_other_model(
            found, loaded, "the judge's verdicts it is measured against are another model's answers"
        )
        bar, advance = _bar(len(records), f"probe on {len(records)} answers")
        with bar:
            result = score_answers(
                loaded, loaded_probe, records, default_system_prompt(loaded), fpr=fpr,
                progress=advance, source=found.samples_path,
            )  # fmt: skip
        write_scores(found.path / "probe_scores.jsonl", Path(probe).name, records, result)
        if found.status == "complete":
            write_run_report(found)
        flagged = sum(result.flagged)
        console.print(
            f"{flagged} of {len(records)} answers flagged (threshold {result.threshold:.3f}: "
            f"{result.threshold_source}) -> {shown(found.path / 'probe_scores.jsonl')}",
            soft_wrap=True,
        )
        for key, value in result.agreement.items():
            console.print(
                f"  AUROC of the probe against the judge's '{key}': {value['auroc']:.3f} "
                f"({value['low']:.3f}-{value['high']:.3f}, n={value['n']})"
            )


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")
