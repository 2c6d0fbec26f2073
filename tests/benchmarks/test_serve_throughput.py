"""benchmarks/serve_throughput.py --mode against: a folder the other server cannot import poise
from is refused before any server starts (the child would otherwise import the installed poise,
this tree, and measure this tree against itself)."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "benchmarks" / "serve_throughput.py"


@pytest.fixture(scope="module")
def bench() -> dict[str, Any]:
    return runpy.run_path(str(SCRIPT))


@pytest.mark.parametrize("given", ["missing", "root"])
def test_a_folder_without_poise_is_refused(
    bench: dict[str, Any], tmp_path: Path, given: str
) -> None:
    # "root": a tree's root holds src/poise, not poise: the usual slip for OLD/src
    (tmp_path / "src" / "poise").mkdir(parents=True)
    (tmp_path / "src" / "poise" / "__init__.py").write_text("")
    folder = tmp_path / "nowhere" if given == "missing" else tmp_path
    with pytest.raises(SystemExit, match="no poise package there"):
        bench["against_tree"](str(folder), 1)


def test_this_trees_own_src_is_refused(bench: dict[str, Any]) -> None:
    with pytest.raises(SystemExit, match="this tree's own src"):
        bench["against_tree"](str(ROOT / "src"), 1)


def test_another_tree_is_accepted(bench: dict[str, Any], tmp_path: Path) -> None:
    # a poise package is all the check reads (a copy of this tree's was 44 MB of weights)
    src = tmp_path / "src"
    (src / "poise").mkdir(parents=True)
    (src / "poise" / "__init__.py").write_text("")
    assert bench["against_tree"](str(src), 1) == src.resolve()
