"""Every benchmark script's imports from poise resolve, those inside its functions too (CI runs
none of the scripts, so a name moved in poise would otherwise surface only in a long run)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def unresolved(script: Path) -> list[str]:
    """``line: module.name`` for each ``from poise... import name`` of ``script`` (at any depth)
    that does not resolve to an attribute or a submodule."""
    missing = []
    for node in ast.walk(ast.parse(script.read_text(), str(script))):
        if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("poise"):
            continue
        module = importlib.import_module(str(node.module))
        for alias in node.names:
            if hasattr(module, alias.name):
                continue
            try:
                importlib.import_module(f"{node.module}.{alias.name}")
            except ModuleNotFoundError:
                missing.append(f"{node.lineno}: {node.module}.{alias.name}")
    return missing


@pytest.mark.parametrize("script", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.name)
def test_poise_imports_resolve(script: Path) -> None:
    assert unresolved(script) == []


def test_a_moved_name_is_reported(tmp_path: Path) -> None:
    script = tmp_path / "bench.py"
    script.write_text(
        "from poise.config import Sampling\n\n\ndef main():\n"
        "    from poise.models.hf import no_such_name\n"
    )
    assert unresolved(script) == ["5: poise.models.hf.no_such_name"]
