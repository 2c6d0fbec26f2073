"""`poise compare` and `poise runs export --csv` (issue 10, item 14)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app
from poise.errors import PoiseError
from poise.report.compare import (
    PairedDifference,
    _paired_section,
    _prompts_differ,
    compare_runs,
    p_text,
    paired_differences,
)
from poise.report.html import RunData
from poise.scoring.metrics import compute_metrics
from poise.scoring.stats import newcombe_paired_interval, paired_clustered

REFUSE = "I'm sorry, but I can't help with that."
COMPLY = "Sure, here is exactly how you do it, step by step."


def audit(
    out: Path, answer: str, name: str, *, limit: int = 4, suites: tuple[str, ...] = ()
) -> Path:
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "--model",
            "mock",
            "--model-option",
            f"default={answer}",
            "--suite",
            "harmful",
            "--suite",
            "benign",
            *[arg for suite in suites for arg in ("--suite", suite)],
            "--limit",
            str(limit),
            "--judge",
            "refusal",
            "--out",
            str(out),
            "--name",
            name,
            "--no-html",
        ],
    )
    assert result.exit_code == 0, result.output
    (run,) = [p for p in out.iterdir() if p.name.endswith(name)]
    return run


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def record(item: str, harmful: bool) -> dict[str, object]:
    return {
        "item_id": item,
        "kind": "harmful",
        "request_id": "greedy",
        "verdict": {"harmful": harmful, "refused": not harmful},
    }


def test_paired_difference_is_the_mean_of_per_prompt_differences() -> None:
    base = RunData(
        Path("a"),
        {},
        [record(i, h) for i, h in zip("wxyz", [True, False, True, False], strict=True)],
        {},
        "a",
    )
    other = RunData(
        Path("b"),
        {},
        [record(i, h) for i, h in zip("wxyz", [True, True, True, False], strict=True)],
        {},
        "b",
    )
    (diff,) = [d for d in paired_differences([base, other]) if d.metric == "harmful_rate"]
    # one answer per prompt: b - a = 3/4 - 2/4 with Newcombe's paired interval (2 harmful in both,
    # 1 in b only, 1 in neither) and the exact McNemar p of 1 discordant pair
    assert diff.items == 4 and diff.method == "newcombe"
    assert diff.value == pytest.approx(0.25)
    assert (diff.low, diff.high) == newcombe_paired_interval(2, 1, 0, 1)
    assert diff.p_value == 1.0
    # an item only one run answered is not paired
    extra = RunData(Path("c"), {}, [*other.records, record("v", True)], {}, "c")
    (diff,) = [d for d in paired_differences([base, extra]) if d.metric == "harmful_rate"]
    assert diff.items == 4


def test_paired_difference_over_several_samples_is_cluster_robust() -> None:
    def sampled(item: str, harmful: list[int]) -> list[dict[str, object]]:
        return [
            {**record(item, bool(h)), "request_id": "t=1.00", "sample_index": i}
            for i, h in enumerate(harmful)
        ]

    a = [
        r
        for i, h in zip("wxyz", [[1, 0], [0, 0], [1, 1], [0, 0]], strict=True)
        for r in sampled(i, h)
    ]
    b = [
        r
        for i, h in zip("wxyz", [[1, 1], [1, 0], [1, 1], [0, 0]], strict=True)
        for r in sampled(i, h)
    ]
    base = RunData(Path("a"), {}, a, {"default_group": "t=1.00"}, "a")
    other = RunData(Path("b"), {}, b, {"default_group": "t=1.00"}, "b")
    (diff,) = [d for d in paired_differences([base, other]) if d.metric == "harmful_rate"]
    expected = paired_clustered(
        "harmful_rate", [(2, 2), (1, 2), (2, 2), (0, 2)], [(1, 2), (0, 2), (2, 2), (0, 2)]
    )
    assert diff.method == "cluster" and diff.items == 4
    assert (diff.value, diff.low, diff.high, diff.p_value) == (
        expected.value,
        expected.low,
        expected.high,
        expected.p_value,
    )
    assert diff.value == pytest.approx(5 / 8 - 3 / 8)


def test_compare_writes_the_report_paired_differences_and_a_long_csv(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    safe = audit(out, REFUSE, "safe")
    unsafe = audit(out, COMPLY, "unsafe")
    html, table = tmp_path / "cmp.html", tmp_path / "cmp.csv"
    result = CliRunner().invoke(
        app,
        [
            "compare",
            safe.name,
            unsafe.name,
            "--out",
            str(out),
            "-o",
            str(html),
            "--csv",
            str(table),
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "harmful_rate" in result.output and "+100.0 pts" in result.output
    page = html.read_text()
    assert "2 runs compared" in page
    assert 'id="paired-differences"' in page and "<svg" in page
    rows = read_csv(table)
    rates = [r for r in rows if r["statistic"] == "rate" and r["category"] == "overall"]
    assert {r["group"] for r in rates} == {"greedy"}
    by_run = {(r["run"], r["metric"]): float(r["value"]) for r in rates}
    labels = {r["run"] for r in rates}
    assert len(labels) == 2
    paired = [r for r in rows if r["statistic"] == "paired_difference"]
    harmful = next(r for r in paired if r["metric"] == "harmful_rate")
    assert float(harmful["value"]) == pytest.approx(1.0)
    assert harmful["n"] == "4" and harmful["baseline_run"] != harmful["run"]
    assert by_run[(harmful["run"], "harmful_rate")] == 1.0
    assert by_run[(harmful["baseline_run"], "harmful_rate")] == 0.0


def test_compare_needs_two_runs(tmp_path: Path) -> None:
    safe = audit(tmp_path, REFUSE, "safe")
    result = CliRunner().invoke(app, ["compare", str(safe), "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "at least two runs" in result.output


def test_runs_export_writes_a_row_per_sample_and_per_metric(tmp_path: Path) -> None:
    run = audit(tmp_path, REFUSE, "safe")
    target = tmp_path / "export" / "safe.csv"
    result = CliRunner().invoke(app, ["runs", "export", str(run), "--csv", str(target)])
    assert result.exit_code == 0, result.output
    samples = read_csv(target)
    records = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == len(records) == 8
    first = samples[0]
    assert first["run"] == run.name and first["model"] == "mock"
    assert first["item_id"] == records[0]["item_id"]
    assert first["verdict_refused"] == "True"
    metrics = read_csv(tmp_path / "export" / "safe-metrics.csv")
    names = {r["metric"] for r in metrics if r["category"] == "overall"}
    assert {"harmful_rate", "helpful_rate"} <= names


def test_an_output_that_is_a_folder_is_one_error_before_any_work(tmp_path: Path) -> None:
    safe, other = audit(tmp_path, REFUSE, "safe"), audit(tmp_path, REFUSE, "other")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    for args in (
        ["compare", str(safe), str(other), "-o", str(folder)],
        ["compare", str(safe), str(other), "-o", str(tmp_path / "c.html"), "--csv", str(folder)],
        ["runs", "export", str(safe), "--csv", str(folder)],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"{folder} is a folder; give a file path" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "c.html").exists()  # nothing half-written


def test_an_output_under_a_file_is_one_error_and_a_new_folder_is_made(tmp_path: Path) -> None:
    # a file on the output's path was a FileExistsError traceback, raised after the work
    safe, other = audit(tmp_path, REFUSE, "safe"), audit(tmp_path, REFUSE, "other")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for args in (
        ["compare", str(safe), str(other), "-o", str(a_file / "c.html")],
        ["compare", str(safe), str(other), "--csv", str(a_file / "sub" / "c.csv")],
        ["runs", "export", str(safe), "--csv", str(a_file / "s.csv")],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"{a_file} is a file" in result.output and "Traceback" not in result.output
    made = tmp_path / "new" / "deeper" / "c.csv"
    html = str(tmp_path / "c.html")  # not compare.html in the working folder
    result = CliRunner().invoke(
        app, ["compare", str(safe), str(other), "-o", html, "--csv", str(made)]
    )
    assert result.exit_code == 0, result.output
    assert made.is_file()


def test_a_home_relative_output_is_written_where_its_folder_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # '~' (from a --config file: no shell expands it) was expanded to make the folder, not to
    # write the file: "cannot write (No such file or directory)" after the work
    safe, other = audit(tmp_path, REFUSE, "safe"), audit(tmp_path, REFUSE, "other")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for args in (
        ["compare", str(safe), str(other), "-o", "~/r/c.html", "--csv", "~/r/c.csv"],
        ["runs", "export", str(safe), "--csv", "~/e/s.csv"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    home = tmp_path / "home"
    for made in ("r/c.html", "r/c.csv", "e/s.csv", "e/s-metrics.csv"):
        assert (home / made).is_file(), made


def test_the_same_run_twice_is_said(tmp_path: Path) -> None:
    safe = audit(tmp_path, REFUSE, "safe")
    result = CliRunner().invoke(
        app, ["compare", str(safe), str(safe), "-o", str(tmp_path / "x.html")]
    )
    assert result.exit_code == 0, result.output
    assert "the same run is given twice" in result.output


def test_compare_gives_each_runs_rate_on_the_shared_prompts(tmp_path: Path) -> None:
    # the baseline answered 4 prompts per suite, the other run 2 of them: the difference is over
    # the 2 shared, and the rates it is between are those on the 2, which the line now says
    out = tmp_path / "runs"
    safe = audit(out, REFUSE, "safe", limit=4)
    unsafe = audit(out, COMPLY, "unsafe", limit=2)
    table = tmp_path / "cmp.csv"
    result = CliRunner().invoke(
        app,
        ["compare", str(safe), str(unsafe), "-o", str(tmp_path / "c.html"), "--csv", str(table)],
        terminal_width=250,
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    line = text[text.index("harmful_rate:") :]
    assert "on 2 shared prompts (100.0% against 0.0% there)" in line[:300]
    harmful = next(
        r
        for r in read_csv(table)
        if r["statistic"] == "paired_difference" and r["metric"] == "harmful_rate"
    )
    assert (float(harmful["run_value"]), float(harmful["baseline_value"])) == (1.0, 0.0)
    assert "rates on the shared prompts" in (tmp_path / "c.html").read_text()


def test_the_metrics_csv_holds_the_honesty_scores_and_the_mean_length(tmp_path: Path) -> None:
    run = audit(tmp_path, REFUSE, "safe", suites=("honesty",))
    metrics_json = json.loads((run / "metrics.json").read_text())["overall"]
    target = tmp_path / "e" / "s.csv"
    result = CliRunner().invoke(app, ["runs", "export", str(run), "--csv", str(target)])
    assert result.exit_code == 0, result.output
    rows = {r["metric"]: r for r in read_csv(tmp_path / "e" / "s-metrics.csv")}
    prudence = metrics_json["honesty"]["prudence_score"]
    assert float(rows["prudence_score"]["value"]) == prudence["value"]
    assert rows["prudence_score"]["n"] == str(prudence["n"])
    assert rows["honesty_score"]["statistic"] == "honesty_score"
    assert rows["honesty_score"]["method"] == "band"
    length = metrics_json["response_tokens"]["harmful"]
    tokens = rows["response_tokens:harmful"]
    assert tokens["statistic"] == "mean_tokens"
    assert float(tokens["value"]) == length["mean"] and float(tokens["high"]) == length["high"]
    assert tokens["method"] == "t"  # one answer per prompt: a Student-t interval over answers


def test_runs_that_give_an_item_another_kind_are_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run from before the sycophancy kind recorded those items as honesty-known: its known
    accuracy counts them and the new run's does not, so the two are warned about."""
    from poise.report.compare import compare_runs

    out = tmp_path / "runs"
    old = audit(out, COMPLY, "old", suites=("sycophancy",))
    new = audit(out, COMPLY, "new", suites=("sycophancy",))
    samples = old / "samples.jsonl"
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    for r in records:
        if r["kind"] == "sycophancy":
            r["kind"] = "honesty-known"
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    import logging

    monkeypatch.setattr(logging.getLogger("poise"), "propagate", True)  # the CLI turned it off
    with caplog.at_level("WARNING", logger="poise"):
        compare_runs([new, old])
    assert "4 items have another kind in one run than in another" in caplog.text
    assert "sycophancy in" in caplog.text and "honesty-known in" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="poise"):
        compare_runs([new, new])
    assert "another kind" not in caplog.text


def test_runs_labelled_by_different_judges_are_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs judged by different judges were compared without a word: a paired difference
    then moves with the judge as well as the model. The terminal and the report say so."""
    from poise.report.compare import compare_runs

    out = tmp_path / "runs"
    a = audit(out, COMPLY, "a")
    b = audit(out, COMPLY, "b")
    header = json.loads((b / "run.json").read_text())
    header["judge_resolved"] = "oracle"
    (b / "run.json").write_text(json.dumps(header))
    import logging

    monkeypatch.setattr(logging.getLogger("poise"), "propagate", True)  # the CLI turned it off
    with caplog.at_level("WARNING", logger="poise"):
        compare_runs([a, b], html=tmp_path / "c.html")
    said = (
        f"the runs were labelled by different judges (refusal in mock ({a.name}); oracle in "
        f"mock ({b.name}))"
    )
    assert said in caplog.text
    assert said in (tmp_path / "c.html").read_text()
    caplog.clear()
    with caplog.at_level("WARNING", logger="poise"):
        compare_runs([a, a], html=tmp_path / "d.html")
    assert "different judges" not in caplog.text
    assert "different judges" not in (tmp_path / "d.html").read_text()


def test_a_run_and_its_answers_judged_again_compare_the_judges_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run judged again (`poise runs rejudge`) against the run it took its answers from: the
    warning said the differences measure "the judges as well as the models" and asked to audit
    with one judge to compare the models, though the answers are the same."""
    import logging

    from poise.auditing import rejudge
    from poise.report.compare import compare_runs

    out = tmp_path / "runs"
    a = audit(out, COMPLY, "a")
    b = rejudge(a, judge="oracle", html=False).path
    monkeypatch.setattr(logging.getLogger("poise"), "propagate", True)  # the CLI turned it off
    with caplog.at_level("WARNING", logger="poise"):
        compare_runs([a, b], html=tmp_path / "c.html")
    assert "the runs hold the same answers labelled by different judges (refusal in " in caplog.text
    assert "their differences measure the judges alone" in caplog.text
    assert "to compare the models" not in caplog.text


def test_records_without_a_request_id_are_paired_in_their_default_group() -> None:
    # metrics put a record without request_id in group "default"; the paired differences looked
    # for request_id == "default" and silently paired nothing
    def bare(item: str, harmful: bool) -> dict[str, object]:
        return {k: v for k, v in record(item, harmful).items() if k != "request_id"}

    runs = [
        RunData(
            Path(label), {}, [bare(i, h) for i, h in zip("wxyz", flags, strict=True)], {}, label
        )
        for label, flags in (("a", [True, False, True, False]), ("b", [True, True, True, False]))
    ]
    for run in runs:
        run.metrics = compute_metrics(run.records)
        assert run.metrics["default_group"] == "default"
    (diff,) = [d for d in paired_differences(runs) if d.metric == "harmful_rate"]
    assert diff.items == 4 and diff.value == pytest.approx(0.25)


def test_runs_that_ask_a_paired_item_another_prompt_are_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two suite files of one name give their rows the same ids (prompts-1, prompts-2, ...):
    the paired differences paired different prompts without a word. The terminal and the
    report say so; runs of the same files say nothing."""
    import logging

    from poise.report.compare import compare_runs

    for folder, rows in (("a", ("bake bread", "boil an egg")), ("b", ("tie a knot", "fold a map"))):
        (tmp_path / folder).mkdir()
        lines = "".join(f"How do I {row}?,benign\n" for row in rows)
        (tmp_path / folder / "prompts.csv").write_text("prompt,kind\n" + lines)
    out = tmp_path / "runs"
    a = audit(out, COMPLY, "a", suites=(str(tmp_path / "a" / "prompts.csv"),))
    b = audit(out, COMPLY, "b", suites=(str(tmp_path / "b" / "prompts.csv"),))
    again = audit(out, REFUSE, "again", suites=(str(tmp_path / "a" / "prompts.csv"),))
    monkeypatch.setattr(logging.getLogger("poise"), "propagate", True)  # the CLI turned it off
    with caplog.at_level("WARNING", logger="poise"):
        _, diffs = compare_runs([a, b], html=tmp_path / "c.html")
    assert diffs
    said = f"2 of the 10 items mock ({b.name}) shares with mock ({a.name}) were asked as another prompt in each (e.g. prompts-1)"
    assert said in caplog.text
    assert said in (tmp_path / "c.html").read_text()
    caplog.clear()
    with caplog.at_level("WARNING", logger="poise"):
        compare_runs([a, again], html=tmp_path / "d.html")
    assert "another prompt" not in caplog.text
    assert "another prompt" not in (tmp_path / "d.html").read_text()


def test_a_run_without_sample_records_is_said_not_taken_for_disjoint_prompts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder whose samples.jsonl was not copied (metrics.json kept) has its rates in the
    report but no answers to pair: the terminal said the runs "share no prompt", which they do.
    The terminal and the page now say which run holds no sample records."""
    import logging

    from poise.report.compare import compare_runs

    out = tmp_path / "runs"
    safe = audit(out, REFUSE, "safe")
    unsafe = audit(out, COMPLY, "unsafe")
    (unsafe / "samples.jsonl").unlink()
    monkeypatch.setattr(logging.getLogger("poise"), "propagate", True)  # the CLI turned it off
    with caplog.at_level("WARNING", logger="poise"):
        _, diffs = compare_runs([safe, unsafe], html=tmp_path / "c.html")
    assert diffs == []
    said = f"mock ({unsafe.name}): no sample records (samples.jsonl missing or empty)"
    assert said in caplog.text
    page = (tmp_path / "c.html").read_text()
    assert said in page and 'id="paired-differences"' in page
    result = CliRunner().invoke(
        app, ["compare", str(safe), str(unsafe), "-o", str(tmp_path / "d.html")]
    )
    assert result.exit_code == 0, result.output
    assert "a run holds no sample records" in result.output
    assert "share no prompt" not in result.output


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"item_id": None}, "field 'item_id' must be a non-empty string, got None"),
        ({"item_id": ""}, "field 'item_id' must be a non-empty string, got ''"),
        ({"kind": 3}, "field 'kind' must be a non-empty string, got 3"),
        ({"verdict": "refusal"}, "field 'verdict' must be an object, got 'refusal'"),
    ],
)
def test_a_record_that_cannot_be_paired_is_one_error_naming_its_line(
    tmp_path: Path, change: dict[str, object], said: str
) -> None:
    """A hand-edited samples file (metrics.json kept) with a record without an item id, or a
    verdict that is not an object, stopped `poise compare` with a KeyError / AttributeError
    traceback. Now one line names the file and line, and nothing is written."""
    out = tmp_path / "runs"
    safe = audit(out, REFUSE, "safe")
    unsafe = audit(out, COMPLY, "unsafe")
    samples = unsafe / "samples.jsonl"
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    records[1].update(change)
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    html = tmp_path / "c.html"
    result = CliRunner().invoke(
        app, ["compare", str(safe), str(unsafe), "-o", str(html)], terminal_width=300
    )
    assert result.exit_code == 2, result.output
    assert f"{samples}:2: {said}" in " ".join(result.output.split())
    assert not html.exists()


def test_a_run_of_another_schema_version_is_compared_and_said(tmp_path: Path) -> None:
    """The report reads a run of another schema version as far as it goes (`read_run`), but
    `poise compare` refused one given by its path ("schema 2 is not supported"). It is read
    now, and the terminal and the page say it is of another version."""
    out = tmp_path / "runs"
    safe = audit(out, REFUSE, "safe")
    unsafe = audit(out, COMPLY, "unsafe")
    header = json.loads((unsafe / "run.json").read_text())
    header["schema"] = 2
    (unsafe / "run.json").write_text(json.dumps(header))
    html = tmp_path / "c.html"
    result = CliRunner().invoke(
        app, ["compare", str(safe), str(unsafe), "-o", str(html)], terminal_width=300
    )
    assert result.exit_code == 0, result.output
    said = f"mock ({unsafe.name}) (schema 2): written in another schema version"
    assert said in " ".join(result.output.split())
    assert said in html.read_text() and "+100.0 pts" in html.read_text()


def test_a_run_of_another_schema_version_given_by_name_is_compared(tmp_path: Path) -> None:
    """A run of another schema version given by its folder was compared, but the same run
    given by its name under --out was refused ("schema 2 is not supported"): the name went
    through `find_run`, which opens the run. Both are read alike now."""
    out = tmp_path / "runs"
    audit(out, REFUSE, "safe")
    unsafe = audit(out, COMPLY, "unsafe")
    header = json.loads((unsafe / "run.json").read_text())
    header["schema"] = 2
    (unsafe / "run.json").write_text(json.dumps(header))
    result = CliRunner().invoke(
        app,
        ["compare", "safe", "unsafe", "--out", str(out), "-o", str(tmp_path / "c.html")],
        terminal_width=300,
    )
    assert result.exit_code == 0, result.output
    assert "written in another schema version" in " ".join(result.output.split())
    assert "+100.0 pts" in result.output


def test_a_grid_run_is_paired_on_its_default_group_which_is_named(tmp_path: Path) -> None:
    """A run of several request groups (the exploitation grid) is paired on its default group:
    the CSV's paired rows left `group` empty and nothing named the baseline's group, and the
    terminal and the page said "run − baseline" as if the whole runs were compared. The CSV now
    gives each run's group and the terminal and page name them."""
    out = tmp_path / "runs"
    plain = audit(out, COMPLY, "plain")
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "--model",
            "mock",
            "--model-option",
            f"default={REFUSE}",
            "--suite",
            "harmful",
            "--limit",
            "4",
            "--judge",
            "refusal",
            "--attack",
            "exploitation",
            "--attack-option",
            "families=temperature",
            "--attack-option",
            "temperatures=0.5,1.0",
            "--out",
            str(out),
            "--name",
            "grid",
            "--no-html",
        ],
    )
    assert result.exit_code == 0, result.output
    table, html = tmp_path / "c.csv", tmp_path / "c.html"
    result = CliRunner().invoke(
        app,
        ["compare", "plain", "grid", "--out", str(out), "-o", str(html), "--csv", str(table)],
        terminal_width=300,
    )
    assert result.exit_code == 0, result.output
    harmful = next(
        r
        for r in read_csv(table)
        if r["statistic"] == "paired_difference" and r["metric"] == "harmful_rate"
    )
    assert (harmful["group"], harmful["baseline_group"]) == ("temperature=0.50/sys=off", "greedy")
    assert float(harmful["value"]) == -1.0 and harmful["n"] == "4"
    said = f"[temperature=0.50/sys=off] − mock ({plain.name}) [greedy] = -100.0 pts"
    assert said in " ".join(result.output.split())
    assert "[temperature=0.50/sys=off]</td>" in html.read_text()


def test_runs_of_one_group_each_are_not_named_by_group(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    audit(out, REFUSE, "safe")
    audit(out, COMPLY, "unsafe")
    result = CliRunner().invoke(
        app,
        ["compare", "safe", "unsafe", "--out", str(out), "-o", str(tmp_path / "c.html")],
        terminal_width=300,
    )
    assert result.exit_code == 0, result.output
    assert "[greedy]" not in result.output and "+100.0 pts" in result.output


def test_a_metrics_file_without_a_default_group_is_not_pooled_over_groups() -> None:
    """A run whose metrics.json names no default group (another version's, or edited) had every
    request group pooled: its greedy answer and four sampled ones made five samples of each
    prompt, and the greedy run's -100 pts read as -20 pts. Its default group is now chosen from
    the samples as compute_metrics chooses it ("greedy"), and paired one answer with one."""
    base = RunData(Path("a"), {}, [record(i, True) for i in "wxyz"], {}, "a")
    sampled = [
        {**record(i, True), "request_id": "t=1.00", "sample_index": s}
        for i in "wxyz"
        for s in range(4)
    ]
    other = RunData(Path("b"), {}, [*[record(i, False) for i in "wxyz"], *sampled], {}, "b")
    (diff,) = [d for d in paired_differences([base, other]) if d.metric == "harmful_rate"]
    assert (diff.method, diff.items, diff.value) == ("newcombe", 4, -1.0)
    assert (diff.group, diff.baseline_group, diff.grouped) == ("greedy", "greedy", True)


def test_runs_that_share_one_prompt_are_not_said_to_share_none(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    safe = audit(out, REFUSE, "safe", limit=1)
    unsafe = audit(out, COMPLY, "unsafe", limit=1)
    result = CliRunner().invoke(
        app, ["compare", str(safe), str(unsafe), "-o", str(tmp_path / "c.html")]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "shares 2 prompts with" in text and "at most 1 of them judged on the same rate" in text
    assert "needs at least 2 shared prompts judged on the same rate" in text


def test_a_p_value_below_a_double_is_not_printed_as_zero(tmp_path: Path) -> None:
    """The exact McNemar p of 1,100 discordant pairs all one way (2 / 2^1100) underflows a
    double to 0.0, which the terminal and the page printed as "p = 0", a certainty no test of
    a finite sample gives. It is printed "< 1e-300" now (the CSV keeps the number)."""
    from poise.report.compare import _paired_section

    pairs = [(True, False)] * 1100
    base = RunData(Path("a"), {}, [record(f"i{i}", y) for i, (_, y) in enumerate(pairs)], {}, "a")
    other = RunData(Path("b"), {}, [record(f"i{i}", x) for i, (x, _) in enumerate(pairs)], {}, "b")
    (diff,) = [d for d in paired_differences([base, other]) if d.metric == "harmful_rate"]
    assert diff.p_value == 0.0 and diff.method == "newcombe"
    page = _paired_section([diff])
    assert "<td>&lt; 1e-300 (McNemar exact)</td>" in page
    assert "<td>0 (" not in page


def test_the_paired_differences_stand_above_the_page_footer(tmp_path: Path) -> None:
    from poise.report.compare import compare_runs

    out = tmp_path / "runs"
    safe, unsafe = audit(out, REFUSE, "safe"), audit(out, COMPLY, "unsafe")
    compare_runs([safe, unsafe], html=tmp_path / "cmp.html")
    page = (tmp_path / "cmp.html").read_text()
    assert page.count('id="paired-differences"') == 1 and page.count("<footer>") == 1
    assert page.index('id="paired-differences"') < page.index("<footer>")
    assert page.rstrip().endswith("</html>")


def test_a_run_that_shares_too_few_prompts_with_the_first_is_named_with_its_counts(
    tmp_path: Path,
) -> None:
    """`poise compare A B C` printed B's paired differences and nothing of C, which shares one
    prompt with A (a difference needs two): C is named now, with the prompts it shares, in the
    terminal and on the page; B, which is paired, is not."""
    from poise.report.compare import too_few_shared

    base = RunData(Path("a"), {}, [record(i, True) for i in "wxyz"], {}, "a")
    paired = RunData(Path("b"), {}, [record(i, False) for i in "wxyz"], {}, "b")
    lone = RunData(Path("c"), {}, [record("w", False), record("v", True)], {}, "c")
    diffs = paired_differences([base, paired, lone])
    assert {d.run for d in diffs} == {"b"}
    note = too_few_shared([base, paired, lone], diffs)
    assert note is not None and note.startswith("c shares 1 prompt with a: ")
    assert "needs at least 2 shared prompts" in note and "b shares" not in note
    assert too_few_shared([base, paired], paired_differences([base, paired])) is None

    out = tmp_path / "runs"
    a = audit(out, REFUSE, "first")
    b = audit(out, COMPLY, "second")
    c = audit(out, COMPLY, "third", limit=1)
    page = tmp_path / "c.html"
    result = CliRunner().invoke(
        app, ["compare", str(a), str(b), str(c), "-o", str(page)], terminal_width=300
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"mock ({c.name}) shares 2 prompts with mock ({a.name})" in text
    assert "+100.0 pts" in text  # the second run's differences are still printed
    assert f"mock ({c.name}) shares 2 prompts" in " ".join(page.read_text().split())


def sampled_run(label: str, harmful: dict[str, list[int]], group: str = "greedy") -> RunData:
    """A run whose prompts got several answers each (``harmful[item]``: 1 harmful, 0 not)."""
    records = [
        {**record(item, bool(h)), "request_id": group, "sample_index": s}
        for item, flags in harmful.items()
        for s, h in enumerate(flags)
    ]
    return RunData(Path(label), {}, records, {}, label)


def test_the_paired_test_follows_the_answers_of_both_runs() -> None:
    """Newcombe's interval and McNemar's test only with one answer per prompt in both runs; a
    sampled baseline against a greedy run is paired with prompts as clusters; with every prompt
    moved alike (no spread between prompts) the sign test over prompts, whose p is the exact
    binomial test's (scipy)."""
    from scipy.stats import binomtest

    greedy = sampled_run("g", {i: [1] for i in "wxyz"})
    base = sampled_run("s", {"w": [1, 0], "x": [1, 0], "y": [0, 0], "z": [1, 1]})
    (diff,) = [d for d in paired_differences([base, greedy]) if d.metric == "harmful_rate"]
    expected = paired_clustered("harmful_rate", [(1, 1)] * 4, [(1, 2), (1, 2), (0, 2), (2, 2)])
    assert (diff.method, diff.items) == ("cluster", 4)
    assert (diff.value, diff.low, diff.high, diff.p_value) == (
        expected.value,
        expected.low,
        expected.high,
        expected.p_value,
    )
    assert diff.value == pytest.approx(1 - 4 / 8)
    # every prompt from none of two answers harmful to both: the sign test over 4 prompts
    safe = sampled_run("safe", {i: [0, 0] for i in "wxyz"})
    unsafe = sampled_run("unsafe", {i: [1, 1] for i in "wxyz"})
    (diff,) = [d for d in paired_differences([safe, unsafe]) if d.metric == "harmful_rate"]
    assert (diff.method, diff.items, diff.value) == ("cluster-sign", 4, 1.0)
    assert diff.p_value == pytest.approx(binomtest(4, 4, 0.5).pvalue)
    # and the other way round: a greedy baseline against a sampled run
    (diff,) = [d for d in paired_differences([greedy, base]) if d.metric == "harmful_rate"]
    assert (diff.method, diff.value) == ("cluster", pytest.approx(4 / 8 - 1))
    # only sample-counted rates are paired (harmful_any_rate counts prompts, not answers)
    names = {d.metric for d in paired_differences([base, greedy])}
    assert names == {"harmful_rate", "refusal_rate"}


def test_unjudged_answers_are_left_out_of_the_pairs() -> None:
    judged = sampled_run("a", {i: [1] for i in "wxyz"})
    other = sampled_run("b", {i: [0] for i in "wxyz"})
    other.records[3]["verdict"] = {"harmful": None, "refused": None}  # z: no verdict
    (diff,) = [d for d in paired_differences([judged, other]) if d.metric == "harmful_rate"]
    assert (diff.items, diff.value, diff.run_value) == (3, -1.0, 0.0)


def test_the_paired_group_is_the_metrics_default_else_greedy_else_the_first() -> None:
    base = sampled_run("a", {i: [0] for i in "wxyz"})
    # metrics.json names t=1.00 the default group, though a greedy group is there too
    named = sampled_run("b", {i: [0] for i in "wxyz"})  # greedy: none harmful
    named.records += sampled_run("b", {i: [1] for i in "wxyz"}, group="t=1.00").records
    named.metrics = {"default_group": "t=1.00"}
    (diff,) = [d for d in paired_differences([base, named]) if d.metric == "harmful_rate"]
    assert (diff.group, diff.value) == ("t=1.00", 1.0)
    # without one, and without a greedy group: the first group, as compute_metrics chooses
    first = sampled_run("c", {i: [1] for i in "wxyz"}, group="t=0.70")
    first.records += sampled_run("y", {i: [0] for i in "wxyz"}, group="t=1.00").records
    (diff,) = [d for d in paired_differences([base, first]) if d.metric == "harmful_rate"]
    assert (diff.group, diff.value, diff.grouped) == ("t=0.70", 1.0, True)
    # two runs of one group each, named differently: the groups are named
    one = sampled_run("d", {i: [1] for i in "wxyz"}, group="t=1.00")
    (diff,) = [d for d in paired_differences([base, one]) if d.metric == "harmful_rate"]
    assert (diff.group, diff.baseline_group, diff.grouped) == ("t=1.00", "greedy", True)
    assert diff.run_shown() == "d [t=1.00]" and diff.baseline_shown() == "a [greedy]"


def test_an_item_asked_with_another_chat_but_the_same_prompt_is_said() -> None:
    from poise.report.compare import _prompts_differ

    def asked(label: str, system: str) -> RunData:
        run = sampled_run(label, {i: [0] for i in "wx"})
        for r in run.records:
            prompt = f"prompt {r['item_id']}"
            r["prompt"] = prompt
            r["messages"] = [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ]
        return run

    assert _prompts_differ([asked("a", "Be safe."), asked("b", "Be safe.")]) is None
    said = _prompts_differ([asked("a", "Be safe."), asked("b", "Be brief.")])
    assert said is not None and said.startswith("2 of the 2 items b shares with a")


def test_a_p_value_keeps_two_significant_digits() -> None:
    assert p_text(0.0031) == "= 0.0031"
    assert p_text(0.5) == "= 0.5"
    assert p_text(1.0) == "= 1"


def test_the_paired_table_gives_each_run_its_rate_and_the_interval_in_order() -> None:
    diff = PairedDifference(
        "harmful_rate", "<b>new</b>", "base", 8, 0.25, -0.1, 0.6,
        p_value=0.25, method="newcombe", run_value=0.75, baseline_value=0.5,
    )  # fmt: skip
    page = _paired_section([diff])
    assert "<td>&lt;b&gt;new&lt;/b&gt;</td><td>base</td>" in page and "<b>" not in page
    assert "<td>75.0% − 50.0%</td><td>+25.0 pts [-10.0, +60.0]</td>" in page
    assert "<td>0.25 (McNemar exact)</td><td>8</td>" in page


def test_the_metrics_csv_gives_each_category_its_row_and_each_interval_its_method(
    tmp_path: Path,
) -> None:
    from tests.report.test_html import make_run

    from poise.report.compare import export_run_csv

    run = make_run(tmp_path, "m")  # harmful: every 3rd of 12, all in "weapons"
    _, metrics_csv, _, _ = export_run_csv(run, tmp_path / "x.csv")
    rows = [r for r in read_csv(metrics_csv) if r["metric"] == "harmful_rate"]
    by_category = {r["category"]: (r["k"], r["n"], r["method"]) for r in rows}
    assert by_category == {
        "overall": ("4", "12", "wilson"),
        "weapons": ("4", "4", "wilson"),
        "cyber": ("0", "4", "wilson"),
        "drugs": ("0", "4", "wilson"),
    }
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    twice = records + [{**r, "sample_index": 1} for r in records]
    for number, r in enumerate(twice):  # lengths that differ within a prompt
        r["num_tokens"] = 5 + number % 7
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in twice))
    _, metrics_csv, _, _ = export_run_csv(run, tmp_path / "y.csv")
    rows = read_csv(metrics_csv)
    overall = next(r for r in rows if r["metric"] == "harmful_rate" and r["category"] == "overall")
    assert (overall["k"], overall["n"], overall["method"]) == ("8", "24", "cluster")
    # two answers per prompt: the mean length's interval has prompts as clusters too
    tokens = next(r for r in rows if r["metric"] == "response_tokens:harmful")
    assert (tokens["n"], tokens["method"]) == ("24", "cluster")


def test_a_paired_row_of_the_csv_names_the_runs_model(tmp_path: Path) -> None:
    from tests.report.test_html import make_run

    from poise.report.compare import compare_runs

    base = make_run(tmp_path, "base-model", harmful_every=2)
    safe = make_run(tmp_path, "safe-model", harmful_every=6)
    compare_runs([base, safe], csv_path=tmp_path / "c.csv")
    paired = [r for r in read_csv(tmp_path / "c.csv") if r["statistic"] == "paired_difference"]
    assert paired and {r["model"] for r in paired} == {"safe-model"}
    assert {r["baseline_run"] for r in paired} == {"base-model"}


def test_a_run_that_recorded_no_prompt_is_not_said_to_ask_another() -> None:
    asked = sampled_run("a", {i: [0] for i in "wx"})
    for r in asked.records:
        r["prompt"] = f"prompt {r['item_id']}"
    bare = sampled_run("b", {i: [0] for i in "wx"})  # an older run: no prompt recorded
    assert _prompts_differ([asked, bare]) is None
    assert _prompts_differ([bare, asked]) is None


def test_without_a_default_group_greedy_is_paired_though_another_group_comes_first() -> None:
    base = sampled_run("a", {i: [0] for i in "wxyz"})
    other = sampled_run("b", {i: [1] for i in "wxyz"}, group="t=1.00")  # sampled first
    other.records += sampled_run("b", {i: [0] for i in "wxyz"}).records  # then greedy
    (diff,) = [d for d in paired_differences([base, other]) if d.metric == "harmful_rate"]
    assert (diff.group, diff.value) == ("greedy", 0.0)


def test_the_samples_csv_has_a_column_for_every_field_any_record_holds(tmp_path: Path) -> None:
    # a field or verdict only later records hold (a multi-turn item's messages; a borderline
    # item's helpful, an honesty item's honesty) has its column, and lists and mappings are JSON
    from tests.report.test_html import make_run

    from poise.report.compare import export_run_csv

    run = make_run(tmp_path, "org/model", request_ids=("greedy", "t=1.00"))
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    chat = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Café?"}]
    records[-1]["messages"] = chat
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    samples_csv, metrics_csv, n_samples, _ = export_run_csv(run, tmp_path / "x.csv")
    rows = read_csv(samples_csv)
    assert n_samples == len(rows) == len(records)
    assert {r["model"] for r in rows} == {"org/model"}  # the config's model: no model_name
    assert json.loads(rows[-1]["messages"]) == chat and rows[0]["messages"] == ""
    assert json.loads(rows[0]["config"]) == {"temperature": 0.0}
    by_id = {(r["item_id"], r["request_id"]): r for r in rows}
    assert by_id[("borderline-001", "greedy")]["verdict_helpful"] == "True"
    assert by_id[("known-001", "greedy")]["verdict_honesty"] == "correct"
    assert by_id[("harmful-000", "greedy")]["verdict_helpful"] == ""
    # a run of several request groups: each group's rates
    groups = {r["group"] for r in read_csv(metrics_csv) if r["metric"] == "harmful_rate"}
    assert groups == {"greedy", "t=1.00"}


def test_compare_runs_takes_run_names_as_poise_compare_does(tmp_path: Path) -> None:
    """The Python API finds runs by name under a root, as the command does under --out (it
    took folders only, so a script had to repeat the command's look-up)."""
    out = tmp_path / "runs"
    audit(out, REFUSE, "safe")
    audit(out, COMPLY, "unsafe")
    runs, diffs = compare_runs(["safe", "unsafe"], root=out)
    assert [r.path.name.split("-", 2)[2] for r in runs] == ["safe", "unsafe"]
    harmful = next(d for d in diffs if d.metric == "harmful_rate")
    assert harmful.value == pytest.approx(1.0)  # unsafe - safe, the first run the baseline
    with pytest.raises(PoiseError, match=r"no run 'nothing' found"):
        compare_runs(["safe", "nothing"], root=out)
