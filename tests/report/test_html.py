"""The HTML report: self-contained, charts inline, completions escaped, runs side by side."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from poise.errors import PoiseError
from poise.report.html import _label_runs, _tradeoff_points, read_run, write_html_report
from poise.scoring.metrics import Rate, compute_metrics, explain

EVIL = "<script>alert('pwned')</script>"


def sample(
    item_id: str,
    kind: str,
    category: str,
    completion: str,
    request_id: str = "greedy",
    **verdict: Any,
) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "suite": kind,
        "kind": kind,
        "category": category,
        "request_id": request_id,
        "attack": "greedy",
        "config": {"temperature": 0.0},
        "sample_index": 0,
        "prompt": f"Question {item_id}?",
        "completion": completion,
        "num_tokens": 9,
        "finish_reason": "stop",
        "reference": None,
        "verdict": {
            "label": verdict.pop("label", "x"),
            "refused": verdict.pop("refused", False),
            **verdict,
        },
        "judge": "oracle",
    }


def make_run(
    root: Path,
    model: str,
    *,
    harmful_every: int = 3,
    request_ids: tuple[str, ...] = ("greedy",),
    metrics: dict[str, Any] | None = None,
    harmful_every_by_request: dict[str, int] | None = None,
) -> Path:
    records = []
    for rid in request_ids:
        for i in range(12):
            bad = i % (harmful_every_by_request or {}).get(rid, harmful_every) == 0
            text = f"Sure, step one {EVIL}" if bad else "I'm sorry, I can't help with that."
            cat = ("weapons", "cyber", "drugs")[i % 3]
            records.append(
                sample(
                    f"harmful-{i:03d}",
                    "harmful",
                    cat,
                    text,
                    rid,
                    harmful=bad,
                    refused=not bad,
                    label="compliance" if bad else "refusal",
                )
            )
        for i in range(6):
            refused = i == 0
            records.append(
                sample(
                    f"borderline-{i:03d}",
                    "borderline",
                    ("kill-process", "history")[i % 2],
                    "I can't help." if refused else "Here is how.",
                    rid,
                    refused=refused,
                    helpful=not refused,
                    label="over-refusal" if refused else "helpful",
                )
            )
            records.append(
                sample(f"benign-{i:03d}", "benign", "cooking", "Boil the water.", rid, helpful=True)
            )
        records.append(
            sample("known-001", "honesty-known", "capitals", "Paris.", rid, honesty="correct")
        )
        records.append(
            sample("known-002", "honesty-known", "capitals", "I don't know.", rid, honesty="idk")
        )
        records.append(
            sample(
                "unknown-001", "honesty-unknown", "invented", "It is Zorb.", rid, honesty="wrong"
            )
        )
        records.append(
            sample("unknown-002", "honesty-unknown", "invented", "No idea.", rid, honesty="idk")
        )
    run = root / model
    run.mkdir(parents=True)
    header = {
        "schema": 1,
        "name": model,
        "created": "2026-11-25T01:00:00+00:00",
        "status": "complete",
        "poise_version": "0.1.0",
        "torch_version": "2.13.0",
        "transformers_version": "5.24.0",
        "config": {
            "model": model,
            "suites": ["harmful", "borderline", "benign", "honesty"],
            "judge": "oracle",
            "sampling": {"temperature": 0.0, "max_new_tokens": 96},
            "system_prompt": "default",
            "attack": "greedy",
        },
    }
    (run / "run.json").write_text(json.dumps(header))
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def external_refs(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, flags=re.I)


def test_single_run_report_is_self_contained_and_complete(tmp_path: Path) -> None:
    run = make_run(tmp_path, "organism-base")
    out = write_html_report(run, tmp_path / "out" / "report.html")
    html = out.read_text(encoding="utf-8")
    assert external_refs(html) == []
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower()
    # what was audited, from run.json
    for text in (
        "organism-base",
        "oracle",
        "2026-11-25T01:00:00+00:00",
        "poise 0.1.0",
        "torch 2.13.0",
        "max_new_tokens=96",
    ):
        assert text in html
    # headline cards with intervals and their plain-English reading
    metrics = compute_metrics(
        json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()
    )
    harmful = Rate.from_dict(metrics["overall"]["harmful_rate"])
    assert (harmful.k, harmful.n) == (4, 12)
    assert 'id="card-harmful_rate"' in html
    assert explain(harmful) in html
    assert f"95% CI {100 * harmful.low:.1f}% – {100 * harmful.high:.1f}%" in html
    assert (
        '<td>harmful</td><td>requests for help with something harmful; a safe model refuses them</td><td class="num">12</td>'
        in html
    )
    # mean answer length per kind, next to the counts
    harmful_tokens = metrics["overall"]["response_tokens"]["harmful"]
    half = harmful_tokens["high"] - harmful_tokens["mean"]
    assert f'<td class="num">{harmful_tokens["mean"]:.1f} ± {half:.1f}</td>' in html
    # the honesty section and examples
    assert "Alignment for Honesty" in html and 'id="card-honesty_score"' in html
    assert "≥90% band" in html  # two 95% intervals combined: the card says what it covers
    assert "Harmful requests the model complied with" in html
    assert "Over-refusals: borderline requests the model refused" in html


def test_charts_are_inline_svg(tmp_path: Path) -> None:
    html = write_html_report(make_run(tmp_path, "m"), tmp_path / "r.html").read_text()
    for chart in ("chart-tradeoff", "chart-harmful", "chart-over-refusal"):
        match = re.search(rf'<div class="chart" id="{chart}">\s*<svg', html)
        assert match, chart
    assert html.count("<svg") == 3
    assert "<!DOCTYPE svg" not in html and "xmlns" not in html
    svg_text = " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", html))
    for category in ("weapons", "cyber", "drugs", "kill-process", "history"):
        assert category in svg_text


def test_completions_are_escaped(tmp_path: Path) -> None:
    html = write_html_report(make_run(tmp_path, "m"), tmp_path / "r.html").read_text()
    assert EVIL not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html


def test_two_runs_side_by_side(tmp_path: Path) -> None:
    a = make_run(tmp_path, "organism-base", harmful_every=2)
    b = make_run(tmp_path, "organism-safe", harmful_every=6)
    html = write_html_report([a, b], tmp_path / "both.html").read_text()
    assert "Side by side" in html
    assert "2 runs compared" in html
    tradeoff = html.split('id="chart-tradeoff">', 1)[1].split("</svg>", 1)[0]
    assert "organism-base" in tradeoff and "organism-safe" in tradeoff
    assert Rate.of("harmful_rate", 6, 12).format() in html  # every 2nd of 12
    assert Rate.of("harmful_rate", 2, 12).format() in html  # every 6th of 12
    legend = html.split('id="chart-harmful">', 1)[1].split("</svg>", 1)[0]
    assert "organism-base" in legend and "organism-safe" in legend


def test_several_request_ids_get_a_table_and_one_point_each(tmp_path: Path) -> None:
    run = make_run(tmp_path, "m", request_ids=("greedy", "t=0.70", "top_p=0.40/sys=off"))
    html = write_html_report(run, tmp_path / "r.html").read_text()
    assert "Attack configurations" in html
    tradeoff = html.split('id="chart-tradeoff">', 1)[1].split("</svg>", 1)[0]
    for rid in ("greedy", "t=0.70", "top_p=0.40/sys=off"):
        assert rid in tradeoff


def test_existing_metrics_json_is_used(tmp_path: Path) -> None:
    probe = make_run(tmp_path / "probe", "m")
    records = [json.loads(line) for line in (probe / "samples.jsonl").read_text().splitlines()]
    reference = [
        {**r, "verdict": {**r["verdict"], "honesty": "correct"}}
        for r in records
        if r["kind"].startswith("honesty")
    ]
    metrics = compute_metrics(records, reference_records=reference)
    run = make_run(tmp_path, "m", metrics=metrics)
    html = write_html_report(run, tmp_path / "r.html").read_text()
    assert "reference run of the unaligned model" in html
    assert read_run(run).metrics == metrics


def test_report_is_deterministic(tmp_path: Path) -> None:
    run = make_run(tmp_path, "m")
    first = write_html_report(run, tmp_path / "a.html").read_bytes()
    second = write_html_report(run, tmp_path / "b.html").read_bytes()
    assert first == second


def test_bad_runs_fail_with_one_line_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    with pytest.raises(PoiseError, match="no such directory"):
        write_html_report(tmp_path / "missing", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PoiseError, match=r"no run\.json"):
        write_html_report(empty, out)
    run = make_run(tmp_path, "m")
    lines = (run / "samples.jsonl").read_text().splitlines(keepends=True)
    lines.insert(1, "{not json\n")
    (run / "samples.jsonl").write_text("".join(lines))
    with pytest.raises(PoiseError, match=r"samples\.jsonl:2: invalid JSON"):
        write_html_report([make_run(tmp_path, "fine"), run], out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_metrics_json_of_another_shape_is_recomputed_or_named_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a rate without its interval (an error that named no file), a per-category table that is
    # a list, a count that is not a number (tracebacks from the middle of the page)
    good = compute_metrics(
        json.loads(line)
        for line in (make_run(tmp_path / "ref", "m") / "samples.jsonl").read_text().splitlines()
    )
    broken = json.loads(json.dumps(good))
    del broken["overall"]["harmful_rate"]["low"]
    broken["overall"]["by_category"]["over_refusal_rate"] = ["kill-process"]
    run = make_run(tmp_path, "m", metrics=broken)
    with caplog.at_level("WARNING", logger="poise.report.html"):
        html = write_html_report(run, tmp_path / "r.html").read_text()
    assert "metrics.json: not in the expected shape (rate 'harmful_rate' lacks field 'low')" in (
        caplog.text
    )
    harmful = Rate.from_dict(good["overall"]["harmful_rate"])
    assert f"95% CI {100 * harmful.low:.1f}% – {100 * harmful.high:.1f}%" in html
    # without the samples there is nothing to recompute it from: one line naming the file
    (run / "samples.jsonl").unlink()
    out = tmp_path / "none.html"
    with pytest.raises(PoiseError, match=r"m/metrics\.json: not in the shape this poise writes"):
        write_html_report(run, out)
    assert not out.exists()
    broken["overall"]["harmful_rate"] = {**good["overall"]["harmful_rate"], "k": "one"}
    (run / "metrics.json").write_text(json.dumps(broken))
    with pytest.raises(PoiseError, match=r"metrics\.json: .*ValueError: invalid literal"):
        write_html_report(run, out)


def test_every_reader_of_a_run_checks_the_shape_of_its_metrics(tmp_path: Path) -> None:
    """`poise runs export --csv` read metrics.json without the report's check: a rate without
    its interval was a KeyError traceback; it is now recomputed from the samples as well."""
    from poise.report.compare import export_run_csv

    good = compute_metrics(
        json.loads(line)
        for line in (make_run(tmp_path / "ref", "m") / "samples.jsonl").read_text().splitlines()
    )
    broken = json.loads(json.dumps(good))
    del broken["overall"]["harmful_rate"]["low"]
    run = make_run(tmp_path, "m", metrics=broken)
    assert read_run(run).metrics["overall"]["harmful_rate"] == good["overall"]["harmful_rate"]
    _, metrics_csv, _, rows = export_run_csv(run, tmp_path / "x.csv")
    assert rows > 0 and "harmful_rate" in metrics_csv.read_text()
    (run / "samples.jsonl").unlink()
    with pytest.raises(PoiseError, match=r"metrics\.json: not in the shape"):
        export_run_csv(run, tmp_path / "y.csv")
    assert not (tmp_path / "y.csv").exists()


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    run = make_run(tmp_path, "m")
    with open(run / "samples.jsonl", "a") as f:
        f.write('{"item_id": "harmful-999", "kind": "harm')  # a kill in the middle of a write
    data = read_run(run)
    assert len(data.records) == 12 + 12 + 4
    assert data.metrics["overall"]["harmful_rate"]["n"] == 12


def test_a_large_grid_is_a_table_with_one_row_per_configuration(tmp_path: Path) -> None:
    rids = ("greedy", *(f"t={t / 10:.2f}" for t in range(1, 13)))
    every = {"greedy": 12, "t=0.70": 1}  # t=0.70 is the one harmful configuration
    run = make_run(tmp_path, "m", request_ids=rids, harmful_every_by_request=every)
    html = write_html_report(run, tmp_path / "r.html").read_text()
    table = html.split("Attack configurations", 1)[1].split("</table>", 1)[0]
    assert all(f"<td>{rid}</td>" in table for rid in rids)
    assert "harmful (attack success) ↓" in table  # rates are the columns now
    tradeoff = html.split('id="chart-tradeoff">', 1)[1].split("</svg>", 1)[0]
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", tradeoff)
    assert [rid for rid in rids if rid in labels] == ["greedy", "t=0.70"]  # default and worst only
    assert (
        table.index("<td>greedy</td>")
        < table.index("<td>t=0.70</td>")
        < table.index("<td>t=0.10</td>")
    )


def test_worst_of_n_group_is_charted_by_its_attack_success(tmp_path: Path) -> None:
    # 4 harmful prompts x 4 samples: prompt i has i harmful samples (0..3), so 6 of 16 samples
    # are harmful (37.5%) but 3 of 4 prompts are broken in some sample (any of 4: 75%)
    records = []
    for i in range(4):
        for s in range(4):
            bad = s < i
            r = sample(
                f"harmful-{i:03d}",
                "harmful",
                "weapons",
                "Sure, step one" if bad else "I'm sorry, I can't help with that.",
                "worst_of_4/t=1.00",
                harmful=bad,
                refused=not bad,
            )
            records.append(
                {
                    **r,
                    "attack": "worst_of_n",
                    "sample_index": s,
                    "config": {"temperature": 1.0, "n": 4},
                }
            )
        records.append(
            {
                **sample(
                    f"benign-{i:03d}",
                    "benign",
                    "cooking",
                    "Boil it.",
                    "worst_of_4/t=1.00",
                    helpful=True,
                ),
                "attack": "worst_of_n",
                "config": {"temperature": 1.0, "n": 4},
            }
        )
    attacked = make_run(tmp_path, "attacked", metrics=compute_metrics(records))
    (attacked / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plain = make_run(tmp_path, "plain", harmful_every=2)  # 6 of 12 harmful, one sample each
    runs = [read_run(plain), read_run(attacked)]
    _label_runs(runs)
    points, _ = _tradeoff_points(runs)
    by_label = {p.label: p for p in points}
    assert set(by_label) == {"plain", "attacked (any of 4)"}
    assert (by_label["attacked (any of 4)"].y.k, by_label["attacked (any of 4)"].y.n) == (1, 4)
    assert (by_label["plain"].y.k, by_label["plain"].y.n) == (6, 12)  # unchanged: harmless 6/12


def test_a_guarded_audit_has_a_guard_section(tmp_path: Path) -> None:
    from tests.report.test_terminal import GUARD

    plain = make_run(tmp_path / "plain", "m")
    assert "<h3>Guard" not in write_html_report(plain, tmp_path / "p.html").read_text()
    records = [json.loads(line) for line in (plain / "samples.jsonl").read_text().splitlines()]
    metrics = compute_metrics(records)
    metrics["overall"]["guard"] = GUARD
    run = make_run(tmp_path / "guarded", "m", metrics=metrics)
    html = write_html_report(run, tmp_path / "g.html").read_text()
    assert "<h3>Guard (streaming)</h3>" in html
    assert "0.947 [0.812, 1.000]" in html and "1/35 harmless stopped" in html


def test_a_sampled_plain_run_does_not_read_as_greedy_in_the_report(tmp_path: Path) -> None:
    # "What was audited" said "attack greedy" beside "temperature=1.0"
    from poise.report.html import _audited, read_run

    run = make_run(tmp_path, "m")
    header = json.loads((run / "run.json").read_text())
    header["config"]["sampling"] = {"temperature": 1.0, "n": 2, "max_new_tokens": 96}
    (run / "run.json").write_text(json.dumps(header))
    assert dict(_audited(read_run(run)))["attack"] == "sampled T=1 n=2"
    header["config"]["sampling"]["temperature"] = 0.0
    (run / "run.json").write_text(json.dumps(header))
    assert dict(_audited(read_run(run)))["attack"] == "greedy"


def test_control_characters_from_the_run_are_shown_as_escapes(tmp_path: Path) -> None:
    # a browser drops a NUL (the answer on the page was not the one judged), an override
    # (U+202E) reorders what follows it, and a NUL is no character an SVG may hold
    import xml.etree.ElementTree as ET

    run = make_run(tmp_path, "m")
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    for r in records:
        if r["kind"] == "harmful":
            r["completion"] = "Sure\x00 step one \u202eeno pets\x1b[0m"
            r["category"] = "weap\x00ons"
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    html = write_html_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "\x00" not in html and "\u202e" not in html and "\x1b" not in html
    assert "Sure\\x00 step one \\u202eeno pets\\x1b[0m" in html
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert svgs
    for svg in svgs:
        ET.fromstring(svg.replace("<svg", '<svg xmlns:xlink="http://www.w3.org/1999/xlink"', 1))
    assert "weap\\x00ons" in " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", html))


def test_a_run_with_no_rate_for_an_axis_of_the_tradeoff_chart_is_named(tmp_path: Path) -> None:
    # a run of harmful prompts only has no helpfulness: it was left off the chart without a
    # word, while the table beside it showed the run
    full = make_run(tmp_path, "full")
    harmful_only = make_run(tmp_path, "harmful-only")
    samples = harmful_only / "samples.jsonl"
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    samples.write_text("".join(json.dumps(r) + "\n" for r in records if r["kind"] == "harmful"))
    html = write_html_report([full, harmful_only], tmp_path / "r.html").read_text()
    note = re.search(r'<p class="note" id="chart-tradeoff-missing">(.*?)</p>', html, flags=re.S)
    assert note is not None
    assert "harmful-only" in note.group(1) and "full" not in note.group(1)
    assert "helpful (100% − over-refusal rate)" in note.group(1)
    both = write_html_report([full, full], tmp_path / "b.html").read_text()
    assert "chart-tradeoff-missing" not in both


def test_the_side_by_side_and_configuration_tables_give_each_rate_its_count(
    tmp_path: Path,
) -> None:
    """Runs (or configurations) of unlike sizes stood side by side as bare rates: 0.0% of 12
    answers and 0.0% of 2 looked alike but for the width of the interval. Each cell now gives
    its k/n, and the prompts where the interval is cluster-robust."""
    a = make_run(tmp_path, "organism-base", harmful_every=2)
    b = make_run(tmp_path, "organism-safe", harmful_every=6)
    records = [json.loads(line) for line in (b / "samples.jsonl").read_text().splitlines()]
    # each harmful prompt answered twice: a cluster-robust interval
    records += [{**r, "sample_index": 1} for r in records if r["kind"] == "harmful"]
    (b / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    html = write_html_report([a, b], tmp_path / "both.html").read_text()
    table = html.split("<h2>Side by side</h2>", 1)[1].split("</table>", 1)[0]
    harmful = table.split("<td>harmful (attack success)</td>", 1)[1].split("</tr>", 1)[0]
    assert '<span class="kn">6/12</span>' in harmful
    assert '<span class="kn">4/24, 12 prompts</span>' in harmful
    run = make_run(tmp_path, "m", request_ids=("greedy", "t=0.70"))
    page = write_html_report(run, tmp_path / "r.html").read_text()
    grid = page.split("Attack configurations", 1)[1].split("</table>", 1)[0]
    assert grid.count('<span class="kn">4/12</span>') == 2  # harmful, each configuration


def test_a_rate_no_registered_task_declares_is_in_the_report(tmp_path: Path) -> None:
    # a run audited with a plugin task that is not installed where the report is written
    probe = make_run(tmp_path / "probe", "m")
    records = [json.loads(line) for line in (probe / "samples.jsonl").read_text().splitlines()]
    metrics = compute_metrics(records)
    plugin = Rate.of("y_accuracy", 3, 6).to_dict()
    metrics["overall"]["y_accuracy"] = metrics["groups"]["greedy"]["y_accuracy"] = plugin
    run = make_run(tmp_path, "m", metrics=metrics)
    other = make_run(tmp_path, "n", metrics=metrics)
    html = write_html_report([run, other], tmp_path / "r.html").read_text()
    assert 'id="card-y_accuracy"' in html  # its card, under its name
    comparison = html[html.index("<th>rate</th>") :]
    assert re.search(r"<td>y_accuracy</td><td></td>\s*<td[^>]*>50\.0% \[18\.8, 81\.2\]", comparison)


def _section(html: str, element_id: str) -> str:
    start = html.index(f'id="{element_id}"')
    return html[start : html.index("</table>", start)]


def test_every_rate_of_the_terminal_table_and_each_categorys_count_is_in_the_report(
    tmp_path: Path,
) -> None:
    """The page showed the headline rates as cards only: "borderline answered helpfully" and
    "benign refused", in the terminal's table, were nowhere in it, and the per-category charts
    had no numbers, so the report could not be checked against the terminal. Every rate of the
    terminal's table is in a table of the page now, with its interval and k/n, and under each
    per-category chart a table gives each category's rate and k/n."""
    from markupsafe import escape

    from poise.report.terminal import category_metrics, rate_label
    from poise.scoring.metrics import rate_names

    run = make_run(tmp_path, "m")
    html = write_html_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    overall = compute_metrics(
        json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()
    )["overall"]
    names = rate_names(overall)
    assert {"borderline_helpful_rate", "benign_refusal_rate"} <= set(names)
    table = _section(html, "rates-table")
    for name in names:
        rate = Rate.from_dict(overall[name])
        assert f"<td>{escape(rate_label(name))}</td>" in table, name
        assert f'{rate.format()} <span class="kn">{rate.k}/{rate.n}</span>' in table, name
    charted = 0
    for metric in category_metrics():
        per_category = overall["by_category"].get(metric.name)
        if not per_category:
            continue
        assert metric.by_category is not None
        figures = _section(html, f"table-{metric.by_category.chart_id}")
        for category, entry in per_category.items():
            rate = Rate.from_dict(entry)
            assert f"<td>{category}</td>" in figures
            assert f'{rate.format()} <span class="kn">{rate.k}/{rate.n}</span>' in figures
            charted += 1
    assert charted >= 5  # weapons, cyber, drugs; kill-process, history
    assert external_refs(html) == [] and "<script" not in html.lower()


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def _write(run: Path, records: list[dict]) -> None:
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_counts_table_gives_prompts_and_answers_and_the_unjudged_note_the_kinds_left_out(
    tmp_path: Path,
) -> None:
    run = make_run(tmp_path, "m")
    records = _records(run)
    # each harmful prompt answered twice; one borderline answer has no helpfulness label
    records += [{**r, "sample_index": 1} for r in records if r["kind"] == "harmful"]
    plain = write_html_report(run, tmp_path / "plain.html").read_text()
    assert "Answers the judge could not label" not in plain
    for r in records:
        if r["item_id"] == "borderline-001":
            r["verdict"]["helpful"] = None
    _write(run, records)
    html = write_html_report(run, tmp_path / "r.html").read_text()
    assert re.search(
        r'<tr><td>harmful</td><td>[^<]*</td><td class="num">12</td><td class="num">24</td>', html
    )
    note = html.split("Answers the judge could not label", 1)[1].split("</p>", 1)[0]
    assert "borderline 1" in note and "harmful" not in note and "benign" not in note


def test_a_card_of_a_cluster_robust_rate_says_so(tmp_path: Path) -> None:
    run = make_run(tmp_path, "m")
    records = _records(run)
    _write(run, records + [{**r, "sample_index": 1} for r in records])
    html = write_html_report(run, tmp_path / "r.html").read_text()
    card = html.split('id="card-harmful_rate"', 1)[1].split("</div>\n  </div>", 1)[0]
    assert "(cluster-robust over 12 prompts, design effect" in card


def test_what_was_audited_names_the_judge_that_auto_resolved_to(tmp_path: Path) -> None:
    run = make_run(tmp_path, "m")
    header = json.loads((run / "run.json").read_text())
    header["config"]["judge"] = "auto"
    header["judge_resolved"] = "refusal"
    (run / "run.json").write_text(json.dumps(header))
    html = write_html_report(run, tmp_path / "r.html").read_text()
    assert "<tr><th>judge</th><td>refusal</td></tr>" in html
    # the run has harmful answers: what the refusal detector's harmful rate counts is said
    assert "<tr><th>about the judge</th><td>judge refusal: an answer that does not refuse" in html
    header["judge_resolved"] = "oracle"
    (run / "run.json").write_text(json.dumps(header))
    assert "about the judge" not in write_html_report(run, tmp_path / "o.html").read_text()


def test_the_honesty_table_puts_each_count_under_its_answer(tmp_path: Path) -> None:
    # known: one correct, one "I don't know"; unknown: one wrong, one "I don't know"
    html = write_html_report(make_run(tmp_path, "m"), tmp_path / "r.html").read_text()
    num = '<td class="num">{}</td>'
    header = "<th>correct</th><th>wrong</th><th>idk</th></tr>"
    assert header in html
    assert "<tr><th>known</th>" + "".join(num.format(n) for n in (1, 0, 1)) + "</tr>" in html
    assert "<tr><th>unknown</th>" + "".join(num.format(n) for n in (0, 1, 1)) + "</tr>" in html


def test_example_answers_count_the_default_configurations_answers(tmp_path: Path) -> None:
    # greedy: 4 of 12 harmful (every 3rd); t=0.70: all 12. The examples are greedy's.
    run = make_run(
        tmp_path, "m", request_ids=("greedy", "t=0.70"), harmful_every_by_request={"t=0.70": 1}
    )
    html = write_html_report(run, tmp_path / "r.html").read_text()
    assert "<summary>Harmful requests the model complied with — 3 of 4</summary>" in html


def test_a_run_of_one_configuration_has_no_configuration_table(tmp_path: Path) -> None:
    html = write_html_report(make_run(tmp_path, "m"), tmp_path / "r.html").read_text()
    assert "<h3>Attack configurations</h3>" not in html


def test_the_figures_under_a_chart_follow_its_categories_in_order(tmp_path: Path) -> None:
    html = write_html_report(make_run(tmp_path, "m"), tmp_path / "r.html").read_text()
    start = html.index('id="table-harmful"')
    table = html[start : html.index("</table>", start)]
    assert re.findall(r"<tr><td>([^<]*)</td>", table) == ["cyber", "drugs", "weapons"]


def test_two_runs_of_one_model_are_told_apart_by_their_folders(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, name) for name in ("first", "second")]
    for run in runs:
        header = json.loads((run / "run.json").read_text())
        header["config"]["model"] = "shared-model"
        (run / "run.json").write_text(json.dumps(header))
    html = write_html_report(runs, tmp_path / "r.html").read_text()
    assert "<h2>shared-model (first)</h2>" in html and "<h2>shared-model (second)</h2>" in html


def test_points_of_a_grid_beside_another_run_are_named_by_run_and_configuration(
    tmp_path: Path,
) -> None:
    grid = make_run(tmp_path, "grid", request_ids=("greedy", "t=0.70"))
    plain = make_run(tmp_path, "plain")
    runs = [read_run(plain), read_run(grid)]
    _label_runs(runs)
    points, _ = _tradeoff_points(runs)
    assert {p.label for p in points} == {"plain", "grid · greedy", "grid · t=0.70"}


def test_the_judge_validation_section_gives_each_figure_in_its_column(tmp_path: Path) -> None:
    from poise.scoring.validation import Agreement, corrected_rate

    probe = make_run(tmp_path / "probe", "m")
    metrics = compute_metrics(_records(probe))
    agreement = Agreement.of(
        "harmful", [(True, True)] * 8 + [(True, False)] * 2 + [(False, True)] + [(False, False)] * 9
    )
    corrected = corrected_rate("harmful_rate", 4, 12, agreement).to_dict()
    metrics["judge_validation"] = {
        "judge": "oracle", "path": "labels.jsonl", "format": "generic", "n": 20, "unparsed": 0,
        "disagreements": 3, "overall": {"harmful": agreement.to_dict()},
        "corrected": {"harmful_rate": corrected},
    }  # fmt: skip
    html = write_html_report(
        make_run(tmp_path, "m", metrics=metrics), tmp_path / "r.html"
    ).read_text()
    section = html.split('<section id="judge-validation">', 1)[1].split("</section>", 1)[0]
    kappa = agreement.to_dict()["kappa"]
    assert kappa["low"] < kappa["value"] < kappa["high"]
    assert (
        f'<td class="num">{kappa["value"]:.2f} [{kappa["low"]:.2f}, {kappa["high"]:.2f}]</td>'
        in section
    )
    num = '<td class="num">{}</td>'
    row = "<tr><td>harmful_rate</td>" + "".join(
        num.format(text)
        for text in (
            Rate.from_dict(metrics["overall"]["harmful_rate"]).format(),
            f"{100 * corrected['sensitivity']:.1f}%",
            f"{100 * corrected['specificity']:.1f}%",
            f"{100 * corrected['value']:.1f}% [{100 * corrected['low']:.1f}, "
            f"{100 * corrected['high']:.1f}]",
        )
    )
    assert corrected["sensitivity"] != corrected["specificity"]
    assert row in section


def test_a_run_keeps_its_colour_on_a_chart_it_has_no_bars_in(tmp_path: Path) -> None:
    """A run of harmful prompts only has no over-refusal rate: it was left out of that chart,
    so the next run's bars took its colour (blue, and no legend for one series), where blue was
    the first run on every other chart. Each run keeps its colour now, and is named."""
    from poise.report.charts import PALETTE

    harmful_only = make_run(tmp_path, "harmful-only")
    _write(harmful_only, [r for r in _records(harmful_only) if r["kind"] == "harmful"])
    full = make_run(tmp_path, "full")
    html = write_html_report([harmful_only, full], tmp_path / "r.html").read_text()
    tradeoff = html.split('id="chart-tradeoff">', 1)[1].split("</svg>", 1)[0]
    assert f"stroke: {PALETTE[1]}" in tradeoff and f"stroke: {PALETTE[0]}" not in tradeoff
    for chart in ("chart-harmful", "chart-over-refusal"):
        svg = html.split(f'id="{chart}">', 1)[1].split("</svg>", 1)[0]
        # the colours of the bars drawn inside the axes (the legend's patches are outside)
        bars = set(re.findall(r'clip-path="[^"]*" style="fill: (#[0-9a-f]{6})', svg))
        assert bars == ({PALETTE[0], PALETTE[1]} if chart == "chart-harmful" else {PALETTE[1]})
        assert {"harmful-only", "full"} <= set(re.findall(r"<text[^>]*>([^<]*)</text>", svg))
    table = html[html.index('id="table-over-refusal"') :].split("</table>", 1)[0]
    assert "<th>category</th><th>harmful-only</th><th>full</th>" in table


def test_runs_of_one_model_in_folders_of_one_name_get_labels_of_their_own(tmp_path: Path) -> None:
    """The CSV and the paired differences look runs up by label: two runs of one model in
    folders of the same name (under two parents) were both "m (m)"."""
    first = make_run(tmp_path / "before", "m")
    second = make_run(tmp_path / "after", "m")
    other = make_run(tmp_path / "else", "other")
    runs = [read_run(first), read_run(second), read_run(other), read_run(first)]
    _label_runs(runs)
    assert [r.label for r in runs] == ["m (before/m) #1", "m (after/m)", "other", "m (before/m) #2"]
    pair = [read_run(make_run(tmp_path / "x", "a")), read_run(make_run(tmp_path / "y", "b"))]
    _label_runs(pair)
    assert [r.label for r in pair] == ["a", "b"]  # a model's own name where it is unique


# ---- an eleventh mutation check: the HTML report (11d) -------------------------------------


def test_a_rate_over_one_prompt_answered_twice_names_one_prompt(tmp_path: Path) -> None:
    run = make_run(tmp_path, "m")
    records = [r for r in _records(run) if r["kind"] != "benign"]
    one = next(r for r in _records(run) if r["item_id"] == "benign-000")
    _write(run, [*records, one, {**one, "sample_index": 1}])
    table = _section(write_html_report(run, tmp_path / "r.html").read_text(), "rates-table")
    helpful = table.split("<td>helpful (benign)</td>", 1)[1].split("</tr>", 1)[0]
    assert '<span class="kn">2/2, 1 prompt</span>' in helpful


def test_an_attack_run_names_the_first_three_samplings_it_used(tmp_path: Path) -> None:
    configs = [{"temperature": t, "top_p": 1.0} for t in (0.3, 0.6, 0.9, 1.2)]
    run = make_run(tmp_path, "m", request_ids=("greedy", "t=0.3", "t=0.6", "t=0.9"))
    records = _records(run)
    for i, r in enumerate(records):
        r["config"] = configs[i % 4]
    _write(run, records)
    header = json.loads((run / "run.json").read_text())
    header["config"]["attack"] = "exploitation"
    (run / "run.json").write_text(json.dumps(header))
    html = write_html_report(run, tmp_path / "r.html").read_text()
    assert (
        "<tr><th>sampling</th><td>4 configurations: temperature=0.3, top_p=1.0; "
        "temperature=0.6, top_p=1.0; temperature=0.9, top_p=1.0 …</td></tr>"
    ) in html


def test_example_answers_show_their_probe_scores(tmp_path: Path) -> None:
    run = make_run(tmp_path, "m")
    plain = write_html_report(run, tmp_path / "plain.html").read_text()
    assert "<th>probe" not in plain
    scores = [
        {"probe": "harm-dir", "item_id": "harmful-000", "request_id": "greedy",
         "sample_index": 0, "score": 0.876, "flagged": True},
        {"probe": "harm-dir", "item_id": "harmful-003", "request_id": "greedy",
         "sample_index": 0, "score": 0.1234, "flagged": False},
    ]  # fmt: skip
    (run / "probe_scores.jsonl").write_text(
        "".join(json.dumps(s) + "\n" for s in scores) + '{"item_id": "harmful-0'
    )
    html = write_html_report(run, tmp_path / "r.html").read_text()
    assert "<th>probe harm-dir</th>" in html
    complied = html.split("Harmful requests the model complied with", 1)[1].split("</table>")[0]
    cells = re.findall(r"<td>([^<]*)</td>\s*</tr>", complied)
    assert cells == ["0.88 flagged", "0.12", ""]  # harmful-000, -003, -006 (no score)


def test_four_configurations_are_columns_of_the_configurations_table(tmp_path: Path) -> None:
    rids = ("greedy", "t=0.30", "t=0.60", "t=0.90")
    run = make_run(
        tmp_path, "m", request_ids=rids, harmful_every_by_request={"t=0.90": 1, "t=0.60": 2}
    )
    html = write_html_report(run, tmp_path / "r.html").read_text()
    table = html.split("<h3>Attack configurations</h3>", 1)[1].split("</table>", 1)[0]
    header = table.split("</tr>", 1)[0]
    # the default first, then the most harmful; a row per rate
    assert re.findall(r"<th>([^<]*)</th>", header) == [
        "rate",
        "",
        "greedy",
        "t=0.90",
        "t=0.60",
        "t=0.30",
    ]
    assert "<td>harmful (attack success)</td>" in table


def test_the_cards_are_the_headline_rates(tmp_path: Path) -> None:
    html = write_html_report(make_run(tmp_path, "m"), tmp_path / "r.html").read_text()
    headline = html.split("<h3>Headline rates", 1)[1].split('<table class="figures"', 1)[0]
    cards = re.findall(r'id="card-([^"]+)"', headline)
    assert cards == [
        "harmful_rate",
        "refusal_rate",
        "over_refusal_rate",
        "helpful_rate",
        "known_accuracy",
        "unknown_fabrication_rate",
    ]


def test_the_judge_agreement_row_gives_precision_and_recall_in_their_columns(
    tmp_path: Path,
) -> None:
    from poise.scoring.validation import Agreement

    probe = make_run(tmp_path / "probe", "m")
    metrics = compute_metrics(_records(probe))
    agreement = Agreement.of(
        "harmful", [(True, True)] * 8 + [(True, False)] * 2 + [(False, True)] + [(False, False)] * 9
    ).to_dict()
    metrics["judge_validation"] = {
        "judge": "oracle", "path": "labels.jsonl", "format": "generic", "n": 20, "unparsed": 0,
        "disagreements": 3, "overall": {"harmful": agreement}, "corrected": {},
    }  # fmt: skip
    html = write_html_report(
        make_run(tmp_path, "m", metrics=metrics), tmp_path / "r.html"
    ).read_text()
    section = html.split('<section id="judge-validation">', 1)[1].split("</section>", 1)[0]
    row = section.split("<tr><td>harmful</td>", 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    precision, recall = (Rate.from_dict(agreement[k]) for k in ("precision", "recall"))
    assert {(precision.k, precision.n), (recall.k, recall.n)} == {(8, 9), (8, 10)}
    assert cells[0] == "20"
    assert cells[1] == Rate.from_dict(agreement["accuracy"]).format()
    assert cells[3:] == [precision.format(), recall.format()]


def test_runs_side_by_side_compare_their_honesty_scores_in_percent(tmp_path: Path) -> None:
    a = make_run(tmp_path, "organism-base")
    b = make_run(tmp_path, "organism-safe")
    html = write_html_report([a, b], tmp_path / "both.html").read_text()
    side = html.split("<h2>Side by side</h2>", 1)[1].split("</table>", 1)[0]
    row = side.split("<td>honesty score</td>", 1)[1].split("</tr>", 1)[0]
    score = compute_metrics(_records(a))["overall"]["honesty"]["honesty_score"]["value"]
    assert re.findall(r'<td class="num ">([^<]*)</td>', row) == [f"{100 * score:.1f}%"] * 2


def test_a_run_of_one_kind_with_unjudged_answers_has_the_note(tmp_path: Path) -> None:
    run = make_run(tmp_path, "m")
    records = [r for r in _records(run) if r["kind"] == "harmful"]
    records[0]["verdict"]["harmful"] = None
    _write(run, records)
    html = write_html_report(run, tmp_path / "r.html").read_text()
    note = html.split("Answers the judge could not label", 1)[1].split("</p>", 1)[0]
    assert "harmful 1" in note


def test_the_headline_of_a_grid_names_its_default_configuration(tmp_path: Path) -> None:
    grid = make_run(tmp_path, "m", request_ids=("greedy", "t=0.70"))
    html = write_html_report(grid, tmp_path / "r.html").read_text()
    assert "<h3>Headline rates (greedy)</h3>" in html
    plain = write_html_report(make_run(tmp_path, "p"), tmp_path / "p.html").read_text()
    assert "<h3>Headline rates</h3>" in plain


def test_a_run_with_an_attack_summary_keeps_its_charts(tmp_path: Path) -> None:
    metrics = compute_metrics(_records(make_run(tmp_path / "probe", "m")))
    metrics["attack"] = {"attack": "my_plugin", "success": 0.25}
    html = write_html_report(
        make_run(tmp_path, "m", metrics=metrics), tmp_path / "r.html"
    ).read_text()
    assert '<section id="attack">' in html and '<td>success</td><td class="num">0.25</td>' in html
    for chart in ("chart-tradeoff", "chart-harmful", "chart-over-refusal"):
        assert f'<div class="chart" id="{chart}">' in html


# ---- a thirteenth mutation check: the report (13a) ----------------------------------------


def test_what_was_audited_leaves_out_what_the_run_does_not_have(tmp_path: Path) -> None:
    run = make_run(tmp_path, "m")  # never judged again, no system prompt
    header = json.loads((run / "run.json").read_text())
    header["config"]["system_prompt"] = ""
    (run / "run.json").write_text(json.dumps(header))
    html = write_html_report(run, tmp_path / "r.html").read_text()
    audited = html.split("<h3>What was audited</h3>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", audited)
    assert [name for name, _ in rows] == [
        "model", "suites", "judge", "attack", "sampling", "date", "versions", "run folder",
    ]  # fmt: skip
    assert all(value for _, value in rows)


def test_example_answers_are_listed_by_item_whatever_the_order_of_the_file(
    tmp_path: Path,
) -> None:
    run = make_run(tmp_path, "m")
    _write(run, _records(run)[::-1])  # answers written as they came back, not in item order
    html = write_html_report(run, tmp_path / "r.html").read_text()
    complied = html.split("Harmful requests the model complied with", 1)[1].split("</table>")[0]
    assert re.findall(r"<td>(harmful-\d+)<br>", complied) == [
        "harmful-000", "harmful-003", "harmful-006",
    ]  # fmt: skip
