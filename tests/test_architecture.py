"""Layers only point down: the core (models/, decoding/, guards/, scoring/) never imports the
organism, which is a plugin that registers itself with the core."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "poise"
CORE = ("models", "decoding", "guards", "scoring")
PLUGIN = "poise.organism"


def imported_modules(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in a file, wherever it is
    (module level, inside functions, under TYPE_CHECKING); ``package`` is the file's package
    (for relative imports), by default from its place under src/."""
    if package is None:
        package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def test_the_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "probe.py"
    sample.write_text(
        "import poise.organism\nfrom poise import organism\nfrom ..organism import oracle\n"
        "def f():\n    from poise.organism.world import x\n",
        encoding="utf-8",
    )
    found = imported_modules(sample, package="poise.models")
    hits = [(line, n) for line, n in found if n == PLUGIN or n.startswith(PLUGIN + ".")]
    assert {line for line, _ in hits} == {1, 2, 3, 5}


@pytest.mark.parametrize("layer", CORE)
def test_core_layers_never_import_the_organism(layer: str) -> None:
    offenders = [
        f"{path.relative_to(SRC.parent)}:{line}: {name}"
        for path in sorted((SRC / layer).rglob("*.py"))
        for line, name in imported_modules(path)
        if name == PLUGIN or name.startswith(PLUGIN + ".")
    ]
    assert not offenders, "the core imports the organism plugin:\n" + "\n".join(offenders)


def test_the_core_loads_without_the_organism() -> None:
    code = (
        "import sys, poise.models.resolve, poise.models.wrapped, poise.decoding, "
        "poise.scoring.judges, poise.models.cache\n"
        "assert 'poise.organism' not in sys.modules, 'imported at load time'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_layers_of_the_design_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """The import-linter contract in pyproject.toml (the layers of docs/design.md) is kept."""
    import logging

    from importlinter.cli import lint_imports

    root = SRC.parents[1]
    monkeypatch.chdir(root)
    # import-linter configures logging with dictConfig, which disables every logger that exists
    # already (poise's included): later tests' caplog would see nothing from them
    loggers = [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    disabled = [logger.disabled for logger in loggers]
    try:
        assert lint_imports(config_filename=str(root / "pyproject.toml"), no_cache=True) == 0
    finally:
        for logger, was in zip(loggers, disabled, strict=True):
            logger.disabled = was
