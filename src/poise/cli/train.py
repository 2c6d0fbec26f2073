"""``poise train dpo|modpo|reward|cost|safe-rl``, ``poise train losses``,
``poise train organism-data``, ``poise train monitor`` and ``poise train monitor-data``.

Each recipe's flags are generated from its pydantic config, one flag per field with the field's
description as help, so the CLI and the Python API (``poise.train.recipes``) cannot drift apart.
Multi-GPU: ``accelerate launch -m poise.cli train dpo ...``.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

import typer

from poise.cli._common import (
    console,
    expand_paths,
    progress_bar,
    progress_lines,
    shown,
    sigterm_as_interrupt,
    user_errors,
)
from poise.train.flags import AUDIT_SPELLINGS, FIELD_FLAGS

train_app = typer.Typer(
    name="train",
    help="Train models for harmlessness: DPO family, MODPO, reward/cost models, safe RL.",
    no_args_is_help=True,
)

# metrics shown next to the progress bar, per recipe
_SHOWN: dict[str, tuple[str, ...]] = {
    "dpo": ("loss", "rewards/accuracy", "rewards/margin"),
    "modpo": ("loss", "rewards/accuracy", "rewards/margin"),
    "reward": ("loss", "accuracy"),
    "cost": ("loss", "accuracy"),
    "safe_rl": ("reward", "cost", "lambda", "kl"),
}
# flags spelled other than the field: short aliases, and singular names for repeatable fields
_ALIASES = {
    "model": ("--model", "-m"),
    "output": ("--output", "-o"),
    **{field: (flag,) for field, flag in FIELD_FLAGS.items()},
}
# the spellings `poise audit` (and `judges validate`) give the same things, taken too: a flag
# learnt on one command works on the next (`poise gate -s FILE -f xstest -j refusal --n 4`)
_AS_AUDIT = AUDIT_SPELLINGS
_ALIASES.update(
    {
        field: (*_ALIASES.get(field, ("--" + field.replace("_", "-"),)), *extra)
        for field, extra in _AS_AUDIT.items()
    }
)


# --------------------------------------------------------------------------------------------
# flags from a config


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return annotation, False


def _cli_parameter(
    name: str, field: Any, taken: frozenset[str] = frozenset()
) -> tuple[inspect.Parameter, Callable[[Any], Any]]:
    """One typer option for a pydantic field, and how to turn its CLI value into the field's.
    ``taken``: the flags of the config's other fields; an audit spelling among them is left out
    (a plugin config with both ``prompts`` and ``suite`` keeps ``--suite`` for ``suite``)."""
    annotation, _ = _unwrap_optional(field.annotation)
    origin = typing.get_origin(annotation)
    flag = "--" + name.replace("_", "-")
    decls = _ALIASES.get(name, (flag,))
    extra = _AS_AUDIT.get(name, ())
    decls = tuple(d for d in decls if d not in extra or d not in taken)
    required = field.is_required()
    default: Any = ... if required else field.get_default(call_default_factory=True)
    help_text = field.description or ""
    convert: Callable[[Any], Any] = lambda value: value  # noqa: E731
    cli_type: Any = annotation
    if annotation is bool:
        decls = (f"{flag}/--no-{flag[2:]}",)
    elif origin is typing.Literal:
        cli_type = str
        help_text += f" (one of: {', '.join(str(a) for a in typing.get_args(annotation))})"
    elif origin is tuple:
        # repeatable, and each value may hold several comma-separated items
        cli_type = list[str]
        default = [",".join(str(v) for v in default)] if default not in (..., None) else default
        # the field's description may say "comma-separated" already
        help_text += (
            " (repeatable)" if "comma-separated" in help_text else " (comma-separated or repeated)"
        )

        def convert(value: Any) -> Any:
            if value is None:
                return None
            return tuple(part.strip() for v in value for part in str(v).split(",") if part.strip())

    elif origin is dict:
        cli_type = list[str]
        default = []
        # the field's description may name the form already ("... (KEY=VALUE)")
        help_text += " (repeatable)" if "KEY=VALUE" in help_text else " (KEY=VALUE, repeatable)"

        def convert(value: Any) -> Any:
            from poise.cli.audit import parse_options

            return parse_options(list(value or []), decls[0])

    if default is None or (default is ... and cli_type is not bool):
        cli_type = typing.Optional[cli_type]  # noqa: UP045 - typer reads typing.Optional
    option = typer.Option(default, *decls, help=help_text, show_default=default not in (..., None))
    parameter = inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=cli_type
    )
    return parameter, convert


def command_from_config(
    config_cls: type[Any], run: Callable[[dict[str, Any]], None], doc: str
) -> Callable[..., None]:
    """A typer command whose options are the fields of ``config_cls``; calls ``run(fields)``."""
    parameters, converters = [], {}
    fields = config_cls.model_fields
    for name, field in fields.items():
        taken = frozenset(
            decl
            for other in fields
            if other != name
            for decl in _ALIASES.get(other, ("--" + other.replace("_", "-"),))
            if decl not in _AS_AUDIT.get(other, ())
        )
        parameter, convert = _cli_parameter(name, field, taken)
        parameters.append(parameter)
        converters[name] = convert

    def command(**values: Any) -> None:
        with user_errors():  # a malformed KEY=VALUE flag: one line and exit 2, not a traceback
            fields = {name: converters[name](value) for name, value in values.items()}
        run({k: v for k, v in fields.items() if v is not None})

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = doc
    return command


# --------------------------------------------------------------------------------------------
# running a recipe with a progress bar


def _run_recipe(recipe: str, fields: dict[str, Any]) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from poise.errors import require_extra
    from poise.train.recipes import RECIPES

    require_extra("accelerate", "train", f"poise train {recipe.replace('_', '-')}")
    _quiet_libraries()
    train = RECIPES.get(recipe).train
    shown = _SHOWN.get(recipe, ("loss",))
    from poise.train.recipes.common import is_main_process

    main = is_main_process()  # under accelerate launch only rank 0 prints
    columns = (
        TextColumn(f"[bold]train {recipe}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    lines = progress_lines(f"train {recipe}") if main and not console.is_terminal else None
    with progress_bar(*columns, disable=not main) as bar:
        task = bar.add_task("steps", total=None, metrics="loading")

        def progress(event: Any) -> None:
            text = "  ".join(
                f"{key.split('/')[-1]} {event.metrics[key]:.3g}"
                for key in shown
                if key in event.metrics
            )
            bar.update(task, completed=event.step, total=event.total_steps, metrics=text)
            if lines is not None:  # no terminal, no bar: a line now and then
                lines(event.step, event.total_steps, text)

        result = train(progress=progress, **fields)
    if main:
        _print_result(result)


def _quiet_libraries() -> None:
    """transformers' own progress bars and load reports would interleave with ours."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _print_result(result: Any) -> None:
    from rich.table import Table

    if result.skipped:
        console.print(
            f"[bold]{shown(result.output)}[/] already holds this finished run; nothing to do."
        )
    steps = f"{result.steps} step" + ("" if result.steps == 1 else "s")
    table = Table(title=f"poise train {result.recipe} · {steps}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if result.resumed_from is not None:
        console.print(f"resumed from step {result.resumed_from}")
    console.print(f"model folder: [bold]{shown(result.output)}[/]", soft_wrap=True)


def _register_recipes() -> None:
    from poise.train.recipes import RECIPES

    # a plugin's recipes become commands too (a plugin that fails to load is a warning, and
    # the built-in recipes still register)
    for name in RECIPES.names():
        recipe = RECIPES.entry(name).obj

        def run(fields: dict[str, Any], name: str = name) -> None:
            # the paths among the fields (--output, --data, ...) are the config's PathStr: "~"
            # is expanded there
            with sigterm_as_interrupt(), user_errors():
                _run_recipe(name, fields)

        # registry names are snake_case; command names are kebab-case (``poise train safe-rl``)
        train_app.command(name.replace("_", "-"), help=recipe.help)(
            command_from_config(recipe.config, run, recipe.help)
        )


# --------------------------------------------------------------------------------------------
# helpers


@train_app.command("losses")
def losses_command() -> None:
    """List the preference losses `poise train dpo --loss` accepts, with their parameters."""
    with user_errors():
        from rich.table import Table

        from poise.train.losses import LOSSES, loss_parameters

        table = Table(title="preference losses", title_justify="left")
        table.add_column("loss")
        table.add_column("parameters (defaults)")
        table.add_column("about")
        for name in LOSSES.names():
            params = ", ".join(
                f"{k}={v!r}"
                for k, v in loss_parameters(name).items()
                if v is not inspect.Parameter.empty
            )
            # text, not markup: a plugin's help with brackets lost them or raised MarkupError
            table.add_row(name, shown(params), shown(LOSSES.help(name)))
        console.print(table)


@train_app.command("organism-data")
def organism_data_command(
    output: str = typer.Option(
        ...,
        "--output",
        "-o",
        help="preference pairs file to write (.jsonl)",
        callback=expand_paths,
    ),
    prompts_output: str | None = typer.Option(
        None,
        help="also write the requests as a suite file, the prompts of `train safe-rl`",
        callback=expand_paths,
    ),
    seed: int = typer.Option(0, help="seed of phrasings, responses and system prompts"),
    phrasings: int = typer.Option(4, help="training phrasings per task"),
    system_share: float = typer.Option(0.5, help="share of prompts with the default system prompt"),
    kind: list[str] = typer.Option(
        ["harmful", "borderline", "benign"], "--kind", help="request kinds to include; repeatable"
    ),
) -> None:
    """Write preference pairs (and safe-RL prompts) from the organism's world."""
    with user_errors():
        from poise.organism.data import write_organism_data

        counts = write_organism_data(
            output,
            prompts_output=prompts_output,
            seed=seed,
            phrasings=phrasings,
            system_share=system_share,
            kinds=tuple(kind),
            names=("--output", "--prompts-output"),
        )
        console.print(f"wrote {counts['pairs']} pairs to [bold]{shown(output)}[/]")
        if prompts_output is not None:
            console.print(f"wrote {counts['prompts']} prompts to [bold]{shown(prompts_output)}[/]")


@train_app.command("monitor")
def monitor_command(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="causal model to start from: a name (organism-small) or folder",
        callback=expand_paths,
    ),
    data: str = typer.Option(
        ...,
        "--data",
        help="token-labelled answers (.jsonl; see docs/guards.md)",
        callback=expand_paths,
    ),
    output: str = typer.Option(
        ..., "--output", "-o", help="monitor folder to write", callback=expand_paths
    ),
    validation: str | None = typer.Option(
        None,
        help="labelled answers to choose the guard's threshold and k on (never the test)",
        callback=expand_paths,
    ),
    alpha: float = typer.Option(0.6, help="weight of the token loss (response loss: 1 - alpha)"),
    gamma: float = typer.Option(1.0, help="weight of the logic-consistency loss"),
    logic_reduce: str = typer.Option("max", help="pooling of token probabilities: max|min|avg"),
    head: str = typer.Option("response", help="head that scores tokens while streaming"),
    choose_head: bool = typer.Option(
        False, help="let the validation data choose the streaming head (response or token)"
    ),
    tolerance: float = typer.Option(
        0.0, help="validation macro-F1 to give up for an earlier stop when choosing k"
    ),
    lr: float = typer.Option(1e-4, help="learning rate (AdamW)"),
    lr_decay: float = typer.Option(
        0.99,
        help="exponential decay of the learning rate per optimiser step, in (0, 1] (at least "
        "0.999 below a batch size of 4, as the released SCM script)",
    ),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay"),
    epochs: int = typer.Option(3, help="passes over the data"),
    batch_size: int = typer.Option(8, help="answers per batch"),
    accumulation: int = typer.Option(
        2, help="batches whose gradients add up to one optimiser step"
    ),
    max_length: int = typer.Option(
        512, help="tokens per training answer, prompt included (longer ones are cut at the end)"
    ),
    seed: int = typer.Option(0, help="seed of the heads' initialisation and the shuffling"),
    layers: int = typer.Option(
        0, help="keep the model's first N decoder layers: a smaller, faster monitor (0: all)"
    ),
) -> None:
    """Train a streaming content monitor (SCM, arXiv 2506.09996) on token-labelled answers."""
    with sigterm_as_interrupt(), user_errors():
        from rich.progress import Progress

        from poise.train.monitor import MonitorSettings, train_monitor_files

        settings = MonitorSettings(
            alpha=alpha,
            gamma=gamma,
            logic_reduce=logic_reduce,
            head=head,
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            epochs=epochs,
            batch_size=batch_size,
            accumulation=accumulation,
            max_length=max_length,
            seed=seed,
            calibrate_heads=("response", "token") if choose_head else (),
            tolerance=tolerance,
            layers=layers,
        )
        settings.check()
        with progress_bar(*Progress.get_default_columns()) as bar:
            task = bar.add_task("training the monitor", total=None)

            def on_step(step: int, total: int, loss: float) -> None:
                bar.update(task, completed=step, total=total, description=f"loss {loss:.4f}")

            # monitor.json's `base` is --model as typed (a relative folder, an alias): it named
            # another model, or none, from another working directory. The folder it resolved
            # to (`base_model`) and the member an alias stands for are in the metadata, written
            # with the monitor in one save (a monitor.json without them reads as before)
            trained = train_monitor_files(
                model,
                data,
                output,
                settings=settings,
                validation=validation,
                on_step=on_step,
                metadata=_model_record(model),
            )
        header = trained.monitor.header
        console.print(
            f"wrote [bold]{shown(output)}[/] (head {header.head}, threshold {header.threshold}, "
            f"k {header.k}; {trained.seconds:.0f} s)"
        )


def _model_record(model: str) -> dict[str, str]:
    """``base_name``, the canonical organism member ``model`` names (``organism`` ->
    ``organism-large``), for a monitor's metadata; nothing for a folder. The folder ``model``
    resolved to (``base_model``) is recorded by the training, which looks it up."""
    from poise.organism import canonical_member, is_member

    return {"base_name": canonical_member(model)} if is_member(model) else {}


@train_app.command("monitor-data")
def monitor_data_command(
    output: str = typer.Option(
        ..., "--output", "-o", help="labelled answers to write (.jsonl)", callback=expand_paths
    ),
    split: str = typer.Option("train", help="train | validation | heldout (suite phrasings)"),
    seed: int = typer.Option(0, help="corpus seed"),
) -> None:
    """Write token-labelled answers from the organism's corpus (for `train monitor`)."""
    with user_errors():
        from poise.errors import PoiseError, prepare_output_file
        from poise.organism.monitor import write_organism_monitor_data

        if split not in ("train", "validation", "heldout"):
            raise PoiseError(f"--split {split!r}: expected train, validation or heldout")
        prepare_output_file(output, "--output")  # the flag named ("output: ..." said the writer)
        count = write_organism_monitor_data(output, split, seed=seed)  # type: ignore[arg-type]
        console.print(f"wrote {count} answers to [bold]{shown(output)}[/]")


_register_recipes()


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
