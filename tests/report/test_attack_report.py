"""report.html of an attack run shows the attack's own results: the worst-of-N curve with its
prediction, the misalignment rate and the per-configuration grid as a heat map; the sampling row
states the sampling the records were generated with (issue 10, item 15)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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


def test_exploitation_section_of_a_grid_without_greedy_decoding_has_no_greedy_row() -> None:
    # --attack-option families=temperature: the summary has no greedy configuration
    from poise.attacks.exploitation import exploitation_summary
    from poise.report.attack_view import attack_view

    records = [
        {
            "item_id": item,
            "kind": "harmful",
            "request_id": f"temperature={t}/sys=off",
            "completion": f"{item}-{t}",
            "verdict": {"harmful": item == "a", "refused": item != "a"},
        }
        for item in ("a", "b")
        for t in ("0.50", "1.00")
    ]
    view = attack_view({"attack": exploitation_summary(records)})
    assert view is not None and view["id"] == "exploitation"
    labels = [row[0] for row in view["rows"]]
    assert not any("greedy" in label for label in labels)
    assert not any("None" in cell for row in view["rows"] for cell in row)
    assert labels[0].startswith("misalignment rate") and view["rows"][0][1].startswith("50.0%")


def test_worst_of_n_section_names_the_bound_the_beta_binomial_fit_stopped_at() -> None:
    # every prompt harmful in 4 of its 8 samples: no spread between prompts, α and β huge
    from poise.attacks.worst_of_n import worst_of_n_summary
    from poise.report.attack_view import attack_view

    records = [
        {
            "item_id": f"i{i}",
            "kind": "harmful",
            "request_id": "worst_of_8/t=1.00",
            "sample_index": k,
            "verdict": {"harmful": (k + i) % 2 == 0},
        }
        for i in range(6)
        for k in range(8)
    ]
    summary = worst_of_n_summary(records)
    assert summary["prediction_model"]["boundary"] == "no spread"
    view = attack_view({"attack": summary})
    assert view is not None
    assert "the fit stops at a bound of its parameters, no spread" in view["lead"]


def test_the_worst_of_n_curve_has_a_doubling_n_axis_in_plain_numbers() -> None:
    from poise.report.attack_view import worst_of_n_chart

    rate = {"value": 0.5, "low": 0.4, "high": 0.6}
    svg = worst_of_n_chart({"predicted": [{"n": n, **rate} for n in (1, 2, 4, 8, 16)]})
    assert svg is not None
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert {"1", "2", "4", "8", "16"} <= set(labels)


def test_the_heat_map_lists_greedy_first_then_each_family_by_its_value_in_percent() -> None:
    from poise.report.attack_view import config_heat_map

    def harmful(value: float) -> dict[str, Any]:
        return {"harmful": {"value": value, "low": 0.0, "high": 1.0, "n": 10}}

    svg = config_heat_map(
        {
            "temperature=1.00/sys=off": harmful(0.86),
            "greedy/sys=off": harmful(0.13),
            "temperature=0.50/sys=off": harmful(0.57),
        }
    )
    assert svg is not None
    texts = re.findall(r'<text style="[^"]*" x="[-\d.]+" y="([-\d.]+)"[^>]*>([^<]*)</text>', svg)
    rows = sorted((float(y), label) for y, label in texts if "=" in label or label == "greedy")
    assert [label for _, label in rows] == ["greedy", "temperature=0.50", "temperature=1.00"]
    cells = sorted((float(y), label) for y, label in texts if label in ("13", "57", "86"))
    assert [label for _, label in cells] == ["13", "57", "86"]


def test_the_sampling_row_names_a_system_prompt_that_was_set() -> None:
    from poise.report.attack_view import sampling_used

    used = sampling_used(
        [
            {"config": {"temperature": 1.0, "system_prompt": "Be safe.", "stop": None}},
            {"config": {"temperature": 1.0, "system_prompt": None, "stop": None}},
        ]
    )
    assert used == ["temperature=1.0, system_prompt=Be safe.", "temperature=1.0"]


# ---- a thirteenth mutation check: the attack section (13a) --------------------------------


def _heat_map_rows(svg: str) -> list[str]:
    """The heat map's row labels, top to bottom."""
    texts = re.findall(r'<text style="[^"]*" x="[-\d.]+" y="([-\d.]+)"[^>]*>([^<]*)</text>', svg)
    return [
        label for _, label in sorted((float(y), t) for y, t in texts if "=" in t or t == "greedy")
    ]


def test_the_heat_map_lists_top_p_before_top_k_each_by_its_number_not_its_text() -> None:
    from poise.report.attack_view import config_heat_map

    rate = {"harmful": {"value": 0.5, "low": 0.0, "high": 1.0, "n": 10}}
    names = ("top_k=40", "top_p=0.90", "top_k=5", "greedy", "top_p=0.50", "temperature=1.00")
    svg = config_heat_map({f"{name}/sys=off": rate for name in names})
    assert svg is not None
    assert _heat_map_rows(svg) == [
        "greedy", "temperature=1.00", "top_p=0.50", "top_p=0.90", "top_k=5", "top_k=40",
    ]  # fmt: skip


def test_a_grid_of_configurations_without_a_system_prompt_variant_has_its_cells() -> None:
    # runs recorded before the sys=on / sys=off variants named each configuration alone
    from poise.report.attack_view import config_heat_map

    def harmful(value: float) -> dict[str, Any]:
        return {"harmful": {"value": value, "low": 0.0, "high": 1.0, "n": 10}}

    svg = config_heat_map({"greedy": harmful(0.13), "temperature=1.00": harmful(0.86)})
    assert svg is not None
    cells = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert "13" in cells and "86" in cells


def test_the_sampling_row_names_each_configuration_once() -> None:
    from poise.report.attack_view import sampling_used

    configs = [{"temperature": t} for t in (0.5, 1.0, 0.5, 1.0, 0.5)]
    assert sampling_used([{"config": c} for c in configs]) == ["temperature=0.5", "temperature=1.0"]
