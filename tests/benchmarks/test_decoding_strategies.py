"""benchmarks/decoding_strategies.py: the smallest inputs the script accepts run through."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "decoding_strategies.py"


def test_eft_runs_on_fewer_prompts_than_its_warm_up_rows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # --prompts 2 (one harmful, one benign) is below the 4 rows the untimed warm-up steps
    bench = runpy.run_path(str(SCRIPT))
    bench["bench_eft"](bench["_chats"](2), 1)
    out = capsys.readouterr().out
    assert "three forwards alone" in out
    assert "generate end to end" in out
