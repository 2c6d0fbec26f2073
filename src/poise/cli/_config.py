"""``--config FILE.yaml`` on every command.

The file is a mapping whose keys are the command's flags (``model``, ``suite``, ``model-option``
or ``model_option``) or the fields of the config the command builds (``suites``,
``model_options``, ``sampling: {temperature: 1.0}``, ``suite_columns``: the ``config`` block of a
run.json). Its values become the flags' defaults, so a flag on the command line wins over the
file, and the command then builds and records its config exactly as from flags: what run.json
records is the resolved config, file and flags together. A relative path among its values is
relative to the working directory, as a flag's is (a run.json's block names its paths so), not
to the file. A ``.json`` file is read as JSON.

A mapping given to a repeatable KEY=VALUE flag (``model_options: {device: cpu}``) becomes its
``KEY=VALUE`` values; an unknown key is one line naming the file, the key and the nearest keys.
A value the command then refuses (``limit: 0``) is blamed on the file's key and line when it came
from the file, and on nothing else when the flag was typed (:func:`poise.config.value_sources`).
"""

from __future__ import annotations

import difflib
import inspect
import json
import typing
from collections.abc import Mapping
from typing import Any

import typer
from typer.core import TyperGroup

CONFIG_FLAG = "--config"

# config fields spelled other than their flag (AuditConfig's field -> `poise audit`'s flag)
FIELD_FLAGS = {
    "suites": "suite",
    "model_options": "model_option",
    "attack_options": "attack_option",
    "suite_format": "format",
    "suite_columns": "column",
    "suite_kind": "kind",
    "suite_category": "category",
    "judge_labels_columns": "judge_labels_column",
    "judge_options": "judge_option",
}
# nested config blocks whose keys are flags of their own (AuditConfig.sampling)
_NESTED = ("sampling",)
# keys a run.json's config block holds that are not inputs
_RECORDED_ONLY = ("fingerprint",)


class PoiseGroup(TyperGroup):
    """The root group: gives every command below it the ``--config`` option, and every group
    and command below it the root's ``--verbose/-v``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        add_config_option(self)
        for sub in getattr(self, "commands", {}).values():
            add_verbose_option(sub)
        one_line_short_help(self)


def one_line_short_help(command: Any) -> None:
    """Give ``command`` and every command below it whose help's first paragraph spans several
    source lines that paragraph on one line as its ``short_help``: the commands panel of
    ``--help`` (rich markup keeps newlines) broke it where the docstring wrapped ("...
    /v1/completions," then "/v1/models)." on a line of its own)."""
    for sub in getattr(command, "commands", {}).values():
        one_line_short_help(sub)
    text = inspect.cleandoc(command.help or "")
    first = text.split("\n\n", 1)[0]
    if command.short_help is None and "\n" in first:
        command.short_help = " ".join(first.split())


VERBOSE_FLAGS = ("--verbose", "-v")


def add_verbose_option(command: Any) -> None:
    """Add ``--verbose/-v`` to ``command`` and, for a group, to every command below it, so that
    ``poise audit ... -v`` logs debug messages as ``poise -v audit ...`` does: the root's flag
    alone was "No such option: -v" after the command. A spelling the command already gives
    to an option of its own stays that option's."""
    for sub in getattr(command, "commands", {}).values():
        add_verbose_option(sub)
    taken = {
        opt
        for p in command.params
        for opt in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))
    }
    flags = [flag for flag in VERBOSE_FLAGS if flag not in taken]
    if VERBOSE_FLAGS[0] in flags:
        command.params.append(_verbose_option(flags))


def _verbose_option(flags: list[str]) -> Any:
    """The ``--verbose`` option of a command, built as :func:`_config_option` builds
    ``--config``. Given (or ``verbose: true`` in a ``--config`` file), it turns debug logging
    on; left out, it leaves the root's ``-v`` as it is."""
    probe = typer.Typer()

    @probe.command()
    def _probe(
        verbose: bool = typer.Option(
            False,
            *flags,
            is_eager=True,  # logging set before the other options' callbacks run
            callback=_set_verbose,
            help="Log debug messages (as `poise -v`).",
        ),
    ) -> None:  # pragma: no cover - never run
        pass

    (option,) = [p for p in typer.main.get_command(probe).params if p.name == "verbose"]
    option.expose_value = False  # the commands' functions never see it
    return option


def _set_verbose(value: bool) -> bool:
    if value:
        from poise.cli._common import setup_logging

        setup_logging(True)
    return value


def add_config_option(command: Any) -> None:
    """Add ``--config`` to ``command`` and, for a group, to every command below it."""
    subcommands = getattr(command, "commands", None)
    if subcommands is not None:  # a group
        for sub in subcommands.values():
            add_config_option(sub)
        return
    if any(CONFIG_FLAG in getattr(p, "opts", ()) for p in command.params):
        return
    command.params.append(_config_option())
    invoke = command.invoke

    def invoke_with_sources(ctx: Any) -> Any:
        from poise.config import value_sources

        with value_sources(_file_sources(ctx)):
            return invoke(ctx)

    command.invoke = invoke_with_sources


def _config_option() -> Any:
    """The ``--config`` option as typer builds options (the click typer ships), taken from a
    one-command app: typer's public way to make one."""
    probe = typer.Typer()

    @probe.command()
    def _probe(
        config: str | None = typer.Option(
            None,
            CONFIG_FLAG,
            is_eager=True,  # read before the other options look up their defaults
            callback=_read_config,
            help="YAML (or JSON) file of flag values (keys: the flags or the config's fields; "
            "relative paths are relative to the working directory); flags win.",
        ),
    ) -> None:  # pragma: no cover - never run
        pass

    (option,) = [p for p in typer.main.get_command(probe).params if p.name == "config"]
    option.expose_value = False  # the commands' functions never see it
    return option


def _read_config(ctx: typer.Context, value: str | None) -> str | None:
    if value is None:
        return value
    from poise.cli._common import err_console
    from poise.config import read_yaml_mapping, user_path
    from poise.errors import PoiseError

    sources: dict[str, tuple[str, Any]] = {}
    path = user_path(value)  # a quoted "~/audit.yaml" is the home folder's, as a bare one is
    try:
        if not value.strip():
            # `--config "$CONFIG"` with CONFIG unset ran the command on its defaults (a whole
            # default audit) without a word
            raise PoiseError(
                f"{CONFIG_FLAG} is empty; give a YAML or JSON file, or leave the flag out"
            )
        from poise.config import yaml_key_lines

        data = read_yaml_mapping(path)
        defaults = flag_defaults(
            ctx.command, data, value, ctx=ctx, sources=sources, lines=yaml_key_lines(path)
        )
    except PoiseError as exc:
        from rich.markup import escape

        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(exc.exit_code) from None
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[_SOURCES_META] = (path, sources)
    return value


_SOURCES_META = "poise.config_file"


def _file_sources(ctx: Any) -> dict[str, Any]:
    """Where each config field whose flag took its value from the ``--config`` file came from
    (for :func:`poise.config.value_sources`), by every spelling the field has in a config: the
    flag's parameter (``limit``, ``temperature``), the field it stands for (``suites``) and its
    place in a nested block (``sampling.temperature``). A flag typed on the command line is left
    out: its value is not the file's."""
    from poise.config import ValueSource, yaml_key_lines

    path, sources = ctx.meta.get(_SOURCES_META, (None, {}))
    if not sources:
        return {}
    lines = yaml_key_lines(path)
    fields = {flag: field for field, flag in FIELD_FLAGS.items()}
    out: dict[str, Any] = {}
    for name, (key, values) in sources.items():
        source = ctx.get_parameter_source(name)  # typer's own click: compare by name
        if getattr(source, "name", None) != "DEFAULT_MAP":
            continue
        line = lines.get(key)
        where = f"{path}:{line}" if line is not None else str(path)
        spelling = ValueSource(where, key, values)
        for place in (name, fields.get(name), *(f"{n}.{name}" for n in _NESTED)):
            if place is not None:
                out[place] = spelling
    return out


def flag_defaults(
    command: Any,
    data: Mapping[str, Any],
    source: str,
    *,
    ctx: Any = None,
    sources: dict[str, tuple[str, Any]] | None = None,
    lines: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The file's keys as ``{parameter name: value}`` for ``ctx.default_map``. Given ``ctx``,
    each value is also converted as its flag would be, so that a wrong type is blamed on the
    file's key, not on a flag the user never typed. ``sources``, when given, receives
    ``{parameter name: (the file's key, (its value, its converted value))}``. ``lines``: the
    line of each key (``OUTER.INNER`` for a nested one), named in the errors as ``FILE:LINE``."""
    from poise.errors import PoiseError

    def at(key: str) -> str:  # FILE:LINE of a key, or FILE
        return f"{source}:{lines[key]}" if lines and key in lines else source

    params = {p.name: p for p in command.params if p.name and CONFIG_FLAG not in p.opts}
    names: dict[str, str] = {}  # every spelling of a key -> the parameter's name
    for name, param in params.items():
        names[name] = name
        for opt in getattr(param, "opts", []):
            if opt.startswith("--"):
                names[opt[2:].replace("-", "_")] = name
    for field, flag in FIELD_FLAGS.items():
        if flag in params and field not in names:
            names[field] = flag

    flat: list[tuple[str, Any]] = []
    for key, value in data.items():
        normal = key.replace("-", "_")
        if normal in _NESTED and normal not in names:
            if not isinstance(value, Mapping):
                raise PoiseError(
                    f"{at(key)}: {key}: expected a mapping of its options (e.g. {key}: "
                    f"{{temperature: 1.0}}), got {'null' if value is None else repr(value)}"
                )
            fields = _nested_fields(normal)
            for inner in value:
                if str(inner).replace("-", "_") not in fields:
                    # a top-level flag inside the block (sampling: {limit: 3}) was taken as that
                    # flag; the block holds its own fields only
                    known = sorted(f for f in fields if f in names)
                    close = difflib.get_close_matches(str(inner), known, n=3, cutoff=0.6)
                    hint = f"; did you mean {', '.join(close)}?" if close else ""
                    raise PoiseError(
                        f"{at(f'{key}.{inner}')}: unknown key {f'{key}.{inner}'!r} for `{command.name}`{hint} "
                        f"(keys of {key}: {', '.join(known)})"
                    )
            flat.extend((f"{key}.{k}", v) for k, v in value.items())
        elif normal not in _RECORDED_ONLY:
            flat.append((key, value))

    defaults: dict[str, Any] = {}
    given: dict[str, str] = {}  # parameter name -> the file's key that gave it
    for key, value in flat:
        source_of_key = at(key)
        normal = key.rsplit(".", 1)[-1].replace("-", "_")
        if normal not in names:
            close = difflib.get_close_matches(normal, sorted(names), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise PoiseError(
                f"{source_of_key}: unknown key {key!r} for `{command.name}`{hint} "
                f"(keys: {', '.join(sorted(params))})"
            )
        param = params[names[normal]]
        if names[normal] in given:
            # two spellings of one flag (max_new_tokens and max-new-tokens, temperature and
            # sampling.temperature, suite and suites): the later one silently won
            flag = next((o for o in param.opts if o.startswith("--")), names[normal])
            raise PoiseError(
                f"{source_of_key}: keys {given[names[normal]]!r} and {key!r} both give {flag}; keep one"
            )
        given[names[normal]] = key
        _check_value(param, key, value, source_of_key)
        flag_value = _as_flag_value(param, value, f"{source_of_key}: {key}")
        converted = flag_value
        coercion = getattr(param, "get_runtime_param", None)  # typer's own conversion
        if ctx is not None and coercion is not None and flag_value is not None:
            try:
                converted = coercion().coerce(flag_value, param=param, ctx=ctx)
            except typer.BadParameter as exc:
                raise PoiseError(f"{source_of_key}: {key}: {exc.message}") from None
        defaults[param.name or normal] = flag_value
        if sources is not None:
            sources[param.name or normal] = (key, (value, converted))
    return defaults


def _nested_fields(block: str) -> set[str]:
    """The fields a nested block of a config holds (``sampling``: those of ``Sampling``)."""
    from poise.config import Sampling

    return set({"sampling": Sampling}[block].model_fields)


def _check_value(param: Any, key: str, value: Any, source: str) -> None:
    """Refuse a value no flag could take: null for a flag that has a value of its own (leaving
    the key out gives that), and true/false for a flag that is not an on/off switch (YAML reads
    ``yes``, ``no``, ``on`` and ``off`` as true/false too)."""
    from poise.errors import PoiseError

    if value is None:
        if param.default is None and not param.required:
            return  # the flag's own default: none
        default = "" if param.required else f" ({param.default!r})"
        raise PoiseError(
            f"{source}: {key}: null is not a value of this key; leave the key out for its "
            f"default{default}"
        )
    items = value if isinstance(value, list | tuple) else [value]
    if any(item is None for item in items):
        raise PoiseError(f"{source}: {key}: null is not a value of this key")
    flag = getattr(param, "is_flag", False)
    wrong = next((item for item in items if isinstance(item, bool) and not flag), None)
    if wrong is not None:
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        text = str in (annotation, *typing.get_args(annotation))
        hint = f" (YAML reads yes/no/on/off as true/false: quote text, e.g. {key}: 'yes')"
        raise PoiseError(
            f"{source}: {key}: {str(wrong).lower()} is not a value of this key"
            + (hint if text else "")
        )


def _as_flag_value(param: Any, value: Any, where: str) -> Any:
    """A YAML value as the flag's command-line value(s); ``where`` (FILE: KEY) names a value
    no flag of this kind takes."""
    from poise.errors import PoiseError

    repeatable = getattr(param, "multiple", False) or param.nargs == -1
    if isinstance(value, Mapping):
        if not repeatable:  # only a repeatable KEY=VALUE flag takes a mapping
            raise PoiseError(f"{where}: expected a single value, got a mapping {dict(value)!r}")
        # KEY=VALUE flags: strings as they are, anything else as the JSON they parse back from
        value = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in value.items()]
    if repeatable and not isinstance(value, list | tuple):
        return [value]
    if repeatable:
        nested = next((v for v in value if isinstance(v, list | tuple | Mapping)), None)
        if nested is not None:
            # str() of it reached the flag ("unknown suite \"['harmful']\""), blamed on no line
            kind = "a mapping" if isinstance(nested, Mapping) else "a list"
            raise PoiseError(
                f"{where}: expected a list of single values, got {kind} {nested!r} among them"
            )
        return value
    if isinstance(value, list | tuple) and param.nargs == 1:
        # a flag that takes one value: a list was joined with commas and run as one value
        # (name: [a, b] named the run "a,b"; temperature: [0.5] ran at 0.5)
        raise PoiseError(f"{where}: expected a single value, got a list {list(value)!r}")
    return value
