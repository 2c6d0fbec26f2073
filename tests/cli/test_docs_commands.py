"""Every ``poise`` command line the README, BENCHMARKS.md and docs/ show names a command and
flags the CLI has: a renamed or removed flag fails here, not in a reader's first hour."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from poise.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
PREFIXES = ("python -m poise.cli ", "poise ")
# where a command line ends: a shell operator, a redirection
ENDS = {"|", "||", "&&", ";", "&"}


def command_lines(text: str) -> list[str]:
    """The ``poise ...`` lines of ``text``'s shell blocks (continuation lines joined) and of its
    inline code spans, each cut at a shell comment, operator or redirection."""
    blocks = re.findall(r"```(?:bash|sh|console|shell)?\n(.*?)```", text, re.S)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = re.findall(r"`((?:poise|python -m poise\.cli) [^`]+)`", prose)
    lines = [
        line.strip().removeprefix("$ ")
        for block in blocks
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines()
    ]
    lines += [" ".join(span.split()) for span in spans]
    return [line for line in lines if line.startswith(PREFIXES)]


def check_line(root: Any, line: str) -> str | None:
    """What is wrong with the command line ``line`` (None: nothing): a command the CLI lacks, or a
    flag its command does not take. Arguments are not checked (docs write placeholders)."""
    prefix = next(p for p in PREFIXES if line.startswith(p))
    tokens: list[str] = []
    for token in shlex.split(line[len(prefix) :], comments=True):
        if token in ENDS or token.startswith((">", "2>")):
            break
        tokens.append(token)
    node, path = root, []
    while tokens and not tokens[0].startswith("-") and isinstance(node, typer.core.TyperGroup):
        sub = node.get_command(None, tokens[0])  # type: ignore[arg-type]
        if sub is None:
            default = getattr(node, "_run", lambda: None)()
            if default is not None:  # `poise merge CONFIG OUT` runs the group's default command
                node = default
                break
            if re.fullmatch(r"[\w-]+", tokens[0]):
                return f"no command {' '.join([*path, tokens[0]])!r}"
            return None  # a usage line (`poise train reward|cost`), not a command
        node, path = sub, [*path, tokens[0]]
        tokens = tokens[1:]
    flags = {name for param in node.params for name in (*param.opts, *param.secondary_opts)}
    flags |= {"--help", "-h"}
    for token in tokens:
        if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", token):
            flag = token.split("=", 1)[0]
            if flag not in flags:
                return f"poise {' '.join(path)} has no {flag}"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_line_in_the_docs_names_real_flags(doc: Path) -> None:
    root = typer.main.get_command(app)
    wrong = [
        f"{doc.name}: {line}: {problem}"
        for line in command_lines(doc.read_text(encoding="utf-8"))
        if (problem := check_line(root, line)) is not None
    ]
    assert not wrong, "\n".join(wrong)


def test_the_check_finds_a_flag_or_command_the_cli_lacks() -> None:
    root = typer.main.get_command(app)
    text = (
        "```bash\npoise audit --model organism \\\n  --temprature 1  # typo\n```\n"
        "Run `poise runs lst` or `poise audit --suite harmful -n 2 | tee log`.\n"
    )
    lines = command_lines(text)
    assert lines == [
        "poise audit --model organism --temprature 1  # typo",
        "poise runs lst",
        "poise audit --suite harmful -n 2 | tee log",
    ]
    assert [check_line(root, line) for line in lines] == [
        "poise audit has no --temprature",
        "no command 'runs lst'",
        "poise audit has no -n",  # --n is the flag; the pipe and what follows are not read
    ]
    assert check_line(root, "poise merge CONFIG.yml OUT --shard-size 2GB") is None
    assert (
        check_line(root, "poise merge CONFIG.yml OUT --shards 2") == "poise merge has no --shards"
    )


PYTHON_PAGE = ROOT / "docs" / "python.md"


def _leaf_commands(node: Any, path: tuple[str, ...] = ()) -> list[str]:
    commands = getattr(node, "commands", None)
    if not commands:
        return [] if node.hidden else [" ".join(("poise", *path))]
    return [c for name, sub in commands.items() for c in _leaf_commands(sub, (*path, name))]


def _python_rows() -> list[tuple[list[str], str]]:
    """(the commands, the call) of each row of docs/python.md's table."""
    rows = []
    for line in PYTHON_PAGE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`poise"):
            continue
        named = re.findall(r"`([^`]+)`", cells[0])
        base = named[0].split()
        # `poise train dpo` (`modpo`, `reward`): the others replace the last word
        commands = [" ".join(base), *(" ".join([*base[:-1], other]) for other in named[1:])]
        rows.append((commands, cells[1]))
    return rows


def _resolve(dotted: str) -> Any:
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


def _keywords(text: str, start: int) -> list[str]:
    """The ``name=`` keywords at the top level of the parentheses opening at ``text[start]``."""
    depth, found, i = 0, [], start
    while i < len(text):
        char = text[i]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                break
        elif depth == 1 and (m := re.match(r"[,(]\s*(\w+)=", text[i - 1 if char != "(" else i :])):
            found.append(m.group(1))
        i += 1
    return found


def test_the_python_page_names_every_command_and_calls_that_exist() -> None:
    import inspect

    rows = _python_rows()
    documented = {command for commands, _ in rows for command in commands}
    # `poise merge CONFIG OUT` is the hidden `merge run`
    missing = set(_leaf_commands(typer.main.get_command(app))) - documented - {"poise merge"}
    assert not missing, f"docs/python.md: no row for {sorted(missing)}"
    wrong = []
    for _, call in rows:
        for match in re.finditer(r"poise(?:\.\w+)+", call):
            try:
                target = _resolve(match.group())
            except (ImportError, AttributeError) as exc:
                wrong.append(f"{match.group()}: {exc}")
                continue
            end = match.end()
            if end < len(call) and call[end] == "(" and callable(target):
                parameters = inspect.signature(target).parameters
                takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
                unknown = [k for k in _keywords(call, end) if k not in parameters]
                if unknown and not takes_any:
                    wrong.append(f"{match.group()} takes no {', '.join(unknown)}")
    assert not wrong, "\n".join(wrong)
