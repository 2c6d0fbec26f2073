"""``poise audit``: run a model on suites, judge, and report rates with 95% intervals."""

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
from poise.config import DEFAULT_SUITES
from poise.errors import DuplicateKeyError, PoiseError, invalid_json, parse_json


def parse_options(pairs: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs; values are parsed as JSON when they parse (numbers, lists), else strings;
    a JSON object that gives a key twice is an error, not a string."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PoiseError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            out[key] = parse_json(value)
        except DuplicateKeyError as exc:
            raise PoiseError(f"{flag} {pair!r}: {invalid_json(exc)}") from None
        except json.JSONDecodeError:
            out[key] = value
    return out


def audit_command(
    ctx: typer.Context,
    model: str = typer.Option(
        "organism",
        "--model",
        "-m",
        help="Model spec: organism member, HF folder or hub id, hf:/openai:/mock:, or a strategy "
        "call such as 'logit_temperature(organism-small, t=0.8)'.",
    ),
    suite: list[str] = typer.Option(
        list(DEFAULT_SUITES),
        "--suite",
        "-s",
        help="Built-in suite name or file path; repeatable.",
        callback=expand_paths,
    ),
    judge: str = typer.Option(
        "auto",
        "--judge",
        "-j",
        help="auto (the model's recommended judge) | oracle | refusal | classifier:PATH | "
        "guard:MODEL | llm:MODEL | preset:NAME (`poise judges ls`).",
    ),
    judge_option: list[str] = typer.Option(
        [],
        "--judge-option",
        help="KEY=VALUE option of the judge (e.g. model=FOLDER: a preset's local copy); "
        "repeatable.",
    ),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (1 = off)."),
    top_k: int = typer.Option(0, help="Top-k sampling (0 = off)."),
    max_new_tokens: int = typer.Option(96, help="Tokens to generate at most."),
    n: int = typer.Option(1, "--n", "--samples-per-prompt", help="Completions per prompt."),
    seed: int = typer.Option(0, help="Sampling seed."),
    stop: list[str] = typer.Option([], help="Stop string; repeatable."),
    system_prompt: str = typer.Option(
        "default", help="'default' (the model's own), 'none', or a literal prompt."
    ),
    attack: str = typer.Option("greedy", help="How items become requests (`poise attacks ls`)."),
    attack_option: list[str] = typer.Option(
        [], "--attack-option", help="KEY=VALUE option of the attack; repeatable."
    ),
    model_option: list[str] = typer.Option(
        [], "--model-option", help="KEY=VALUE backend option (device, dtype, ...); repeatable."
    ),
    limit: int | None = typer.Option(
        None,
        help="Use N items of each suite, spread evenly over it in file order (over its categories where, as in the built-in suites, they are grouped).",
    ),
    batch_size: int = typer.Option(
        256, help="Chats per generate call (the backend splits them into its own batches)."
    ),
    reference_run: str | None = typer.Option(
        None, help="Run of the unaligned model for the honesty metrics.", callback=expand_paths
    ),
    format: str | None = typer.Option(
        None, "--format", "-f", help="Row format of the suite files (see `poise suites ls`)."
    ),
    column: list[str] = typer.Option(
        [],
        "--column",
        help="ROLE=COLUMN for generic suite files (prompt, id, kind, category, reference, "
        "system); repeatable.",
    ),
    kind: str | None = typer.Option(
        None, help="Kind of suite rows that carry none (harmful, borderline, benign, ...)."
    ),
    category: str | None = typer.Option(None, help="Category of suite rows that carry none."),
    judge_labels: str | None = typer.Option(
        None,
        help="Human-labelled answers (`poise judges validate` formats): measure the judge on "
        "them and report rates corrected for its error.",
        callback=expand_paths,
    ),
    judge_labels_format: str | None = typer.Option(
        None, help="Format of --judge-labels instead of detecting it."
    ),
    judge_labels_column: list[str] = typer.Option(
        [],
        "--judge-labels-column",
        help="ROLE=COLUMN for a generic --judge-labels file (response, prompt, id, model, "
        "refused, harmful, kind); repeatable.",
    ),
    out: str = typer.Option("runs", help="Folder that holds run folders.", callback=expand_paths),
    name: str | None = typer.Option(
        None,
        help="Run name (default: the model and the attack, or for a sampled plain run its "
        "temperature and n: organism-small-t1-n4).",
    ),
    html: bool = typer.Option(True, "--html/--no-html", help="Write report.html."),
    resume: str | None = typer.Option(
        None,
        help="Resume a killed or stopped run (folder or name); its config wins.",
        callback=expand_paths,
    ),
    answers_from: str | None = typer.Option(
        None,
        "--answers-from",
        help="Start from this run's answers (folder or name): those this audit asks again (same "
        "model, chat and sampling) are taken from its cache, not generated, and judged anew. "
        "Extends a run to a larger --limit or more suites.",
        callback=expand_paths,
    ),
) -> None:
    """Audit a model: harmful, borderline, benign and honesty rates with 95% intervals."""
    # SIGTERM as Ctrl-C: the answers so far stay recorded and the message says how to resume
    with sigterm_as_interrupt(), user_errors():
        from poise.auditing import audit, make_config
        from poise.cli.suites import parse_columns

        fields: dict[str, Any] = dict(
            model=model,
            model_options=parse_options(model_option, "--model-option"),
            suites=tuple(suite),
            judge=judge,
            judge_options=parse_options(judge_option, "--judge-option"),
            sampling=dict(
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                max_new_tokens=max_new_tokens,
                n=n,
                seed=seed,
                stop=tuple(stop),
            ),
            system_prompt=system_prompt,
            attack=attack,
            attack_options=parse_options(attack_option, "--attack-option"),
            limit=limit,
            batch_size=batch_size,
            reference_run=reference_run,
            suite_format=format,
            suite_columns=parse_columns(column),
            suite_kind=kind,
            suite_category=category,
            judge_labels=judge_labels,
            judge_labels_format=judge_labels_format,
            judge_labels_columns=parse_columns(judge_labels_column),
            out=out,
            name=name,
            html=html,
        )
        config = make_config(None, **fields)
        how: dict[str, Any] = {}
        if resume is not None and answers_from is not None:
            raise PoiseError(
                "--answers-from starts a new run with another run's answers; a resumed run has "
                "its own: give --resume or --answers-from, not both"
            )
        if resume is not None:
            how = _check_resume_flags(ctx, config, resume)
        result = _run_with_progress(audit, config, resume, how, answers_from)
        print_result(result.run.path, result.metrics)


def _check_resume_flags(ctx: typer.Context, config: Any, resume: str) -> dict[str, Any]:
    """A flag given beside ``--resume`` (on the command line or in --config) whose value is not
    the run's recorded one is refused: the recorded config wins, and the flag was ignored
    without a word. Running the same command again with ``--resume`` passes. Returns the given
    flags that say how the run is written (``--no-html``, ``--batch-size``), which apply."""
    from poise.auditing import RESUME_HOW, canonical_attack, recorded_config, same_field
    from poise.cli._config import FIELD_FLAGS
    from poise.config import Sampling
    from poise.runs import find_run

    flag_fields = {flag: field for field, flag in FIELD_FLAGS.items()}  # suite -> suites ...

    run = find_run(resume, config.out)
    run.check_samples_file()  # as poise.audit: a folder poise will not write to stops first
    recorded = canonical_attack(recorded_config(run)).model_dump()
    asked = canonical_attack(config).model_dump()  # a deprecated attack name as recorded
    how: dict[str, Any] = {}
    for param in ctx.command.params:
        name = param.name
        # --out finds the run; --name is compared, as poise.audit(resume=..., name=...) does
        # (ignored, it left a user looking for a run of that name that was never made)
        if name in (None, "resume", "out", "config"):
            continue
        source = ctx.get_parameter_source(name)  # typer's own click: compare by name
        if getattr(source, "name", None) not in ("COMMANDLINE", "DEFAULT_MAP"):
            continue
        if name in RESUME_HOW:
            how[name] = asked[name]
            continue
        field = flag_fields.get(name, name)
        if name in Sampling.model_fields:  # --temperature ... live in the config's sampling
            mine, theirs = asked["sampling"][name], recorded["sampling"][name]
        else:
            mine, theirs = asked.get(field), recorded.get(field)
        if not same_field(field, mine, theirs, run):
            flag = next((o for o in param.opts if o.startswith("--")), name)
            raise PoiseError(
                f"--resume {run.path.name}: it was recorded with {flag} {theirs!r}, not "
                f"{mine!r}; a resumed run keeps its config: leave {flag} out, or start a new "
                "run without --resume"
            )
    return how


def _run_with_progress(
    audit: Any,
    config: Any,
    resume: str | None,
    how: dict[str, Any] | None = None,
    answers_from: str | None = None,
) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with progress_callback("prompts generated + judged", *columns) as progress:
        if resume is not None:
            return audit(resume=resume, out=config.out, **(how or {}), progress=progress)
        return audit(config, progress=progress, answers_from=answers_from)


def _decoding(config: dict[str, Any]) -> str:
    """What the title says about decoding: the attack, or for the plain one its sampling."""
    if config.get("attack") != "greedy":
        return str(config.get("attack"))
    sampling = config.get("sampling") or {}
    temperature = sampling.get("temperature", 0.0)
    if not temperature:
        return "greedy"
    if sampling.get("top_k") == 1:
        # one candidate token: the argmax whatever the temperature, as the run's name says
        return f"greedy (top-k=1 at T={temperature:g})"
    parts = [f"T={temperature:g}"]
    if sampling.get("top_p", 1.0) < 1.0:
        parts.append(f"top-p={sampling['top_p']:g}")
    if sampling.get("top_k", 0):
        parts.append(f"top-k={sampling['top_k']}")
    if sampling.get("n", 1) > 1:
        parts.append(f"n={sampling['n']}")
    return "sampled " + ", ".join(parts)


def print_result(run_path: Path, metrics: dict[str, Any]) -> None:
    from poise.report.terminal import render_metrics_table
    from poise.runs import Run

    header = Run.open(run_path, any_schema=True).header  # checked by the caller
    config = header["config"]
    judge = header.get("judge_resolved", config["judge"])
    title = f"{config['model']} · {_decoding(config)} · judge {judge}"
    rendered = render_metrics_table(metrics, title=title)
    for part in rendered if isinstance(rendered, (list, tuple)) else [rendered]:
        console.print(part)
    from poise.scoring.judges import judge_note

    note = judge_note(str(judge), metrics)
    if note is not None:
        console.print(note, style="dim", highlight=False)
    if metrics.get("judge_validation"):
        from poise.report.terminal import render_judge_validation

        console.print(render_judge_validation(metrics["judge_validation"], metrics["overall"]))
    if metrics.get("attack"):
        from poise.report.attack_tables import render_attack_summary

        console.print(render_attack_summary(metrics["attack"]))
    from poise.runs.run import rejudged_label

    rejudged = rejudged_label(header)
    if rejudged:
        console.print(f"judged again: {rejudged}", highlight=False, soft_wrap=True)
    taken = header.get("answers_from")
    if isinstance(taken, dict):
        count = taken.get("answers")
        console.print(
            f"answers from: {taken.get('run')} (those to {count} "
            f"request{'' if count == 1 else 's'} taken from its cache, the rest generated)",
            highlight=False,
            soft_wrap=True,
        )
    # soft_wrap: a long path is one line to copy (or parse), not cut where the width ends
    console.print(f"run folder: [bold]{shown(run_path)}[/]", soft_wrap=True)
    if (run_path / "report.html").exists():
        console.print(f"report:     [bold]{shown(run_path / 'report.html')}[/]", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
