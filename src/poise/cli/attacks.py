"""``poise attacks ls|export``: the attacks an audit can run, and preference pairs from a run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from poise.cli._common import console, expand_paths, shown, user_errors
from poise.errors import PoiseError

if TYPE_CHECKING:
    from poise.runs import Run

attacks_app = typer.Typer(
    help="Attacks (use with `poise audit --attack NAME`) and their outputs.", no_args_is_help=True
)


@attacks_app.command("ls")
def ls() -> None:
    """List the attacks."""
    from rich.table import Table

    from poise.attacks import attacks

    table = Table(title="attacks")
    table.add_column("name")
    table.add_column("what it does")
    for name in attacks:
        # text, not markup: a plugin's help with brackets lost them or raised MarkupError
        table.add_row(name, shown(attacks.help(name)))
    console.print(table)


@attacks_app.command("export")
def export(
    run: str = typer.Argument(
        ...,
        help="Attack audit's run folder, or its name under --out (its --name, or a unique part "
        "of its folder's name).",
        callback=expand_paths,
    ),
    output: str = typer.Option(
        ...,
        "--output",
        "-o",
        help="jsonl file to write the preference pairs to.",
        callback=expand_paths,
    ),
    per_prompt: int = typer.Option(1, help="Pairs per harmful prompt at most."),
    out: str = typer.Option("runs", help="Folder that holds run folders.", callback=expand_paths),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Model whose default system prompt the run sent (default: the system prompts "
        "run.json records, else the run's own model, loaded to read it; give its folder where "
        "the run's spec no longer loads).",
    ),
) -> None:
    """Export (prompt, safe completion, harmful completion) pairs for preference training, in
    TRL's conversational format (prompt, chosen, rejected: message lists). Each prompt is the
    chat as the audit sent it, with its system message (the exploitation grid's sys=on and
    sys=off are paired apart)."""
    with user_errors():
        from poise.attacks.export import preference_pairs, write_pairs
        from poise.errors import check_int
        from poise.runs import find_run

        check_int("attacks export", "--per-prompt", per_prompt, 1)
        found = find_run(run, out)
        pairs = preference_pairs(found.records(), per_prompt=per_prompt)
        if any(p["meta"]["system_prompt"] in ("default", "none") for p in pairs):
            # what "default" and "none" sent is the model's: its declared default, and an empty
            # system message where its template inserts that default (Qwen2.5-style)
            system_prompts = _system_prompts(found, model)
            pairs = preference_pairs(
                found.records(), per_prompt=per_prompt, system_prompts=system_prompts
            )
        if not pairs:
            attack = found.config.get("attack")
            if attack in ("exploitation", "worst_of_n"):  # it asked several ways already
                how = (
                    "every harmful item was refused each time or complied with each time; "
                    "more samples (--attack-option n=...) or more decoding configurations "
                    "give a model that is rarely unsafe a chance to be both"
                )
            else:
                how = (
                    "audit with --attack exploitation or worst_of_n, whose requests answer "
                    "an item several ways"
                )
            raise PoiseError(
                f"{found.path.name}: no harmful item has both a safe and a harmful answer "
                f"(attack {attack!r}), so there is no pair to write; {how}"
            )
        count = write_pairs(pairs, output)
        console.print(f"wrote {count} preference pairs to [bold]{shown(output)}[/]")


def _system_prompts(found: Run, spec: str | None) -> dict[str, str | None]:
    """The system messages the run sent for "default" and "none": those its run.json records
    (``system_prompts``, the texts the audit sent), else those of its model (``spec``, else the
    run's own, with its model options, loaded), as the audit resolved them. ``spec`` given wins
    over the record."""
    from poise.models import default_system_prompt, load_model, no_system_prompt

    recorded = found.header.get("system_prompts")
    if (
        spec is None
        and isinstance(recorded, dict)
        and all(key in recorded for key in ("default", "none"))
        and all(v is None or isinstance(v, str) for v in recorded.values())
    ):
        return {"default": recorded["default"], "none": recorded["none"]}
    config = found.config
    # the model the audit built (folders by absolute path: export from any directory)
    name = spec or found.model_to_build
    options = {} if spec else dict(config.get("model_options") or {})
    if not isinstance(name, str) or not name:
        raise PoiseError(
            f"{found.path.name}: the run names no model, whose default system prompt its "
            "prompts were sent with: give --model"
        )
    try:
        loaded = load_model(name, **options)
    except PoiseError as exc:
        raise PoiseError(
            f"{found.path.name}: cannot load the run's model {name!r} to read the system prompt "
            f"its prompts were sent with ({exc}); give --model FOLDER"
        ) from None
    return {"default": default_system_prompt(loaded), "none": no_system_prompt(loaded)}


def register(app: typer.Typer) -> None:
    app.add_typer(attacks_app, name="attacks")
