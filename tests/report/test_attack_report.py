"""report.html of an attack run shows the attack's own results: the worst-of-N curve with its
prediction, the misalignment rate and the per-configuration grid as a heat map; the sampling row
states the sampling the records were generated with (issue 10, item 15)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from poise.cli import app


def attack_run(out: Path, *args: str) -> Path:
    result = CliRunner().invoke(
        app, ["audit", "--model", "mock", "--out", str(out), "--judge", "refusal", *args]
    )
    assert result.exit_code == 0, result.output
    (run,) = [p for p in out.iterdir() if (p / "report.html").is_file()]
    return run


def test_worst_of_n_report_draws_the_curve_and_its_prediction(tmp_path: Path) -> None:
    run = attack_run(
        tmp_path,
        "--attack",
        "worst_of_n",
        "--attack-option",
        "n=4",
        "--suite",
        "harmful",
        "--limit",
        "3",
    )
    page = (run / "report.html").read_text()
    assert 'id="worst-of-n"' in page
    section = page.split('id="worst-of-n"', 1)[1]
    assert "<svg" in section.split("</section>", 1)[0]
    assert "predicted" in section and "empirical" in section
    # the empirical ASR(N) is over each prompt's first N samples: at N = 1 the first sample
    # alone (33.3% of 6 prompts beside a 25.0% harmful rate over all 24 samples read as a
    # contradiction when the page said only "among N")
    assert "among their first N samples" in " ".join(section.split())
    summary = json.loads((run / "metrics.json").read_text())["attack"]
    assert f"{summary['prompts']} prompts" in section
    assert "beta-binomial" in section and summary["prediction_model"]["model"] == "beta-binomial"
    assert max(p["n"] for p in summary["predicted"]) == 4096  # extrapolated far beyond n = 4
    # the sampling row says what the records were generated with, not the config's greedy default
    records = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    used = records[0]["config"]
    assert used["temperature"] > 0 and used["n"] == 4
    sampling_row = page.split("<th>sampling</th>", 1)[1].split("</tr>", 1)[0]
    assert "n=4" in sampling_row and f"temperature={used['temperature']}" in sampling_row


def test_exploitation_report_shows_misalignment_and_the_config_heat_map(tmp_path: Path) -> None:
    run = attack_run(
        tmp_path,
        "--attack",
        "exploitation",
        "--suite",
        "harmful",
        "--suite",
        "borderline",
        "--limit",
        "2",
        "--system-prompt",  # a prompt to turn on: the mock model declares no default
        "Be safe.",
    )
    page = (run / "report.html").read_text()
    summary = json.loads((run / "metrics.json").read_text())["attack"]
    assert 'id="exploitation"' in page
    section = page.split('id="exploitation"', 1)[1].split("</section>", 1)[0]
    assert "misalignment rate" in section
    mis = summary["misalignment_rate"]
    assert f"{100 * mis['value']:.1f}%" in section
    assert 'id="config-grid"' in section and "<svg" in section
    for config in ("temperature=0.50", "greedy"):
        assert config in section
    assert "sys=on" in section and "sys=off" in section
    # the distinct completions per prompt stand beside the misalignment rate
    distinct = summary["distinct_completions"]["harmful"]
    assert distinct["prompts"] == mis["n"] and distinct["completions_per_prompt"] == 100
    row = (
        f'distinct completions per harmful prompt</td><td class="num">{distinct["mean"]:.1f} of 100'
    )
    assert row in section
    effect = summary["system_prompt_effect"]["greedy_harmful_rate"]
    assert effect["pairs"] == mis["n"] and "system prompt off − on, greedy harmful rate" in section
