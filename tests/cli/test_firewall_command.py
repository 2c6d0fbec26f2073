"""``poise firewall fit|check`` on the command line (the firewall itself: tests/probes)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from poise.cli import app


def test_an_output_folder_that_cannot_be_made_is_one_error_before_any_work(
    tmp_path: Path,
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(
        "".join(json.dumps({"role": "r", "query": f"q{i}"}) + "\n" for i in range(3)),
        encoding="utf-8",
    )
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    result = CliRunner().invoke(
        app, ["firewall", "fit", "--anchors", str(anchors), "--out", str(a_file / "fw")]
    )
    assert result.exit_code == 2, result.output
    assert "cannot make the firewall folder" in result.output
    assert "Traceback" not in result.output
