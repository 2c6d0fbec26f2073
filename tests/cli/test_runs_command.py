"""``poise runs ls``: how a run's attack reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from poise.runs.run import attack_label


@pytest.mark.parametrize(
    ("config", "label"),
    [
        ({"attack": "greedy", "sampling": {"temperature": 0.0, "n": 1}}, "greedy"),
        ({"attack": "greedy", "sampling": {"temperature": 1.0, "n": 1}}, "sampled T=1"),
        ({"attack": "greedy", "sampling": {"temperature": 0.7, "n": 4}}, "sampled T=0.7 n=4"),
        ({"attack": "worst_of_n", "sampling": {"temperature": 1.0}}, "worst_of_n"),
        ({"attack": "greedy"}, "greedy"),
    ],
)
def test_a_sampled_plain_run_does_not_read_as_greedy(config: dict[str, object], label: str) -> None:
    assert attack_label(config) == label


def test_an_unfinished_run_shows_the_samples_it_has(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # `runs ls` said "interrupted · 0 samples" of a killed run holding 116 records, and
    # `runs show` called it "running"
    from typer.testing import CliRunner

    from poise.cli import app
    from poise.runs import Run

    run = Run.create(tmp_path, "killed", {"model": "m", "attack": "greedy"})
    records = [
        {"item_id": f"x-{i}", "request_id": "greedy", "sample_index": 0, "completion": "c"}
        for i in range(3)
    ]
    run.append(records)
    with open(run.samples_path, "a", encoding="utf-8") as f:
        f.write('{"item_id": "torn')  # a torn last line is no record yet
    run.unlock()  # what a kill leaves: the header says running, nobody holds the lock
    assert run.samples_written() == 3
    listing = CliRunner().invoke(
        app, ["runs", "ls", "--out", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.output.splitlines() if "killed" in line)
    assert "interrupted" in row and " 3 " in row
    shown = CliRunner().invoke(app, ["runs", "show", str(run.path)])
    assert shown.exit_code == 2
    assert "no metrics yet (interrupted, 3 samples written)" in shown.output


def test_ls_takes_a_finished_runs_count_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its samples file is not read (it can be large): only an unfinished run's lines are counted
    from typer.testing import CliRunner

    from poise.cli import app
    from poise.runs import Run

    run = Run.create(tmp_path, "done", {"model": "m", "attack": "greedy"})
    run.append([{"item_id": "x", "request_id": "greedy", "sample_index": 0, "completion": "c"}])
    run.update_header(status="complete", samples=7)
    run.unlock()

    def unread(self: Run) -> int:
        raise AssertionError(f"read {self.samples_path}")

    monkeypatch.setattr(Run, "samples_written", unread)
    listing = CliRunner().invoke(
        app, ["runs", "ls", "--out", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.output.splitlines() if "done" in line)
    assert " 7 " in row


def test_a_damaged_metrics_file_does_not_hide_the_other_runs(tmp_path: Path) -> None:
    # one run's metrics.json cut short (a copy that stopped) or of another shape made the whole
    # listing one error (invalid JSON) or a traceback (KeyError 'value'), as a damaged header no
    # longer does
    from typer.testing import CliRunner

    from poise.cli import app
    from poise.runs import Run

    for name, text in (
        ("cut", '{"overall": {"harmful_rate": '),
        ("other-shape", '{"overall": {"harmful_rate": {"n": 3}}}'),
        ("fine", '{"overall": {"harmful_rate": {"n": 4, "k": 1, "value": 0.25}}}'),
    ):
        run = Run.create(tmp_path, name, {"model": "m", "attack": "greedy"})
        run.update_header(status="complete", samples=4)
        run.unlock()
        (run.path / "metrics.json").write_text(text, encoding="utf-8")
    listing = CliRunner().invoke(
        app, ["runs", "ls", "--out", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert listing.exit_code == 0, listing.output
    rows = {
        name: next(line for line in listing.output.splitlines() if f"-{name} " in line)
        for name in ("cut", "other-shape", "fine")
    }
    assert "25.0%" in rows["fine"]
    assert "?" in rows["cut"] and "?" in rows["other-shape"]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"overall": []}', "metrics.json: not in the expected schema (no 'overall' object)"),
        ('{"overall": {"harmful_rate": {"n": 3}}}', "metrics.json: not in the shape"),
    ],
)
def test_show_names_a_metrics_file_of_another_shape_in_one_line(
    tmp_path: Path, text: str, said: str
) -> None:
    # `runs show` read metrics.json as it was: a traceback ('list' object has no attribute
    # 'get') or a line that named no file, where the report names it or recomputes it
    from typer.testing import CliRunner

    from poise.cli import app
    from poise.runs import Run

    config = {"model": "m", "attack": "greedy", "judge": "refusal", "sampling": {}}
    run = Run.create(tmp_path, "edited", config)
    run.update_header(status="complete", samples=0)
    run.unlock()
    (run.path / "metrics.json").write_text(text, encoding="utf-8")
    shown = CliRunner().invoke(app, ["runs", "show", str(run.path)], env={"COLUMNS": "300"})
    assert shown.exit_code == 2, shown.output
    assert said in " ".join(shown.output.split())


def test_ls_of_a_file_is_one_error(tmp_path: Path) -> None:
    # it said "no runs under notes.txt" with exit code 0, as for an empty folder
    from typer.testing import CliRunner

    from poise.cli import app

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x", encoding="utf-8")
    result = CliRunner().invoke(app, ["runs", "ls", "--out", str(a_file)])
    assert result.exit_code == 2, result.output
    assert f"--out {a_file}: is a file" in result.output
    empty = CliRunner().invoke(app, ["runs", "ls", "--out", str(tmp_path / "none-yet")])
    assert empty.exit_code == 0 and "no runs under" in empty.output  # before a first audit


def test_compare_refuses_one_file_for_the_report_and_the_csv(tmp_path: Path) -> None:
    # the CSV was written over the report, and the last lines named the file as both
    from typer.testing import CliRunner

    from poise.cli import app

    runs = []
    for name in ("one", "two"):
        args = ["audit", "--model", "mock", "--suite", "harmful", "--limit", "2"]
        args += ["--judge", "refusal", "--out", str(tmp_path), "--name", name, "--no-html"]
        assert CliRunner().invoke(app, args).exit_code == 0
        runs += [str(p) for p in tmp_path.iterdir() if p.name.endswith(name)]
    report = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["compare", *runs, "-o", str(report), "--csv", str(report)])
    assert result.exit_code == 2, result.output
    assert "is the --output report" in result.output
    assert not report.exists()


def test_show_recomputes_a_finished_runs_lost_metrics_from_its_samples(tmp_path: Path) -> None:
    # a finished run whose metrics.json was deleted (or not copied) was "no metrics yet
    # (complete, ...); resume it", and resuming a complete run does nothing: the report
    # recomputed the rates from the samples, `runs show` refused to
    from typer.testing import CliRunner

    import poise
    from poise.cli import app

    result = poise.audit(model="mock", suites=["harmful"], limit=3, out=str(tmp_path), html=False)
    path = result.run.path
    before = CliRunner().invoke(app, ["runs", "show", str(path)], env={"COLUMNS": "300"})
    assert "100.0% [43.9, 100.0]" in before.output  # the mock complies with all 3
    (path / "metrics.json").unlink()
    shown = CliRunner().invoke(app, ["runs", "show", str(path)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert "no metrics yet" not in shown.output
    assert shown.output == before.output


def test_show_and_export_read_a_run_of_another_schema_version_given_by_path(
    tmp_path: Path,
) -> None:
    # the report and compare read such a run as far as it goes, with a warning; runs show and
    # runs export refused it ("schema 0 is not supported")
    from typer.testing import CliRunner

    import poise
    from poise.cli import app
    from poise.runs import Run

    result = poise.audit(model="mock", suites=["harmful"], limit=2, out=str(tmp_path), html=False)
    Run.open(result.run.path).update_header(schema=0)
    shown = CliRunner().invoke(app, ["runs", "show", str(result.run.path)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert "written in schema 0" in shown.output and "100.0%" in shown.output
    csv = tmp_path / "x.csv"
    exported = CliRunner().invoke(
        app, ["runs", "export", str(result.run.path), "--csv", str(csv)], env={"COLUMNS": "300"}
    )
    assert exported.exit_code == 0, exported.output
    assert "written in schema 0" in exported.output and csv.is_file()


def _rate(name: str, k: int, n: int) -> dict[str, object]:
    return {"name": name, "k": k, "n": n, "value": k / n, "low": 0.0, "high": 1.0}


def _ls_rows(tmp_path: Path, columns: str) -> tuple[dict[str, str], str]:
    from typer.testing import CliRunner

    from poise.cli import app

    listing = CliRunner().invoke(
        app, ["runs", "ls", "--out", str(tmp_path)], env={"COLUMNS": columns}
    )
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    rows = {}
    for name in ("plain", "grid-greedy", "grid-sampled", "worst"):
        at = next(
            i for i, line in enumerate(lines) if line.strip(" │").split(" ")[0].endswith(f"-{name}")
        )
        rows[name] = " ".join(lines[at : at + 3]) if columns == "80" else lines[at]
    return rows, listing.output


@pytest.mark.parametrize("columns", ["250", "80"])
def test_ls_shows_an_attack_runs_headline_and_the_configuration_its_rates_are_of(
    tmp_path: Path, columns: str
) -> None:
    # an exploitation grid without greedy decoding was listed by its first configuration's rates
    # ("harmful 0.0%") while its misalignment rate was 100%; worst-of-N by its per-answer rate,
    # not the share of prompts broken in any of N samples
    import json

    from poise.runs import Run

    def make(name: str, attack: str, metrics: dict[str, object]) -> None:
        run = Run.create(tmp_path, name, {"model": "m", "attack": attack})
        run.update_header(status="complete", samples=4)
        run.unlock()
        (run.path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")

    quiet = {"harmful_rate": _rate("harmful_rate", 0, 2)}
    loud = {"harmful_rate": _rate("harmful_rate", 2, 2)}
    make(
        "plain",
        "greedy",
        {"default_group": "greedy", "groups": {"greedy": quiet}, "overall": quiet},
    )
    for name, first in (
        ("grid-greedy", "greedy/sys=on"),
        ("grid-sampled", "temperature=0.05/sys=on"),
    ):
        make(
            name,
            "exploitation",
            {
                "default_group": first,
                "groups": {first: quiet, "temperature=0.20/sys=off": loud},
                "overall": quiet,
                "attack": {
                    "attack": "exploitation",
                    "misalignment_rate": _rate("misalignment_rate", 2, 2),
                    "greedy_config": first if first.startswith("greedy") else None,
                },
            },
        )
    worst = {
        "harmful_rate": _rate("harmful_rate", 1, 4),
        "harmful_any_rate": _rate("harmful_any_rate", 1, 2),
    }
    make(
        "worst",
        "worst_of_n",
        {
            "default_group": "worst_of_2/t=1.00",
            "groups": {"worst_of_2/t=1.00": worst},
            "overall": worst,
            "attack": {"attack": "worst_of_n", "prompts": 2, "samples_per_prompt": 2},
        },
    )
    rows, output = _ls_rows(tmp_path, columns)
    for name, first in (
        ("grid-greedy", "greedy/sys=on"),
        ("grid-sampled", "temperature=0.05/sys=on"),
    ):
        assert "misalignment 100.0%" in rows[name], rows[name]
        assert f"rates of {first}" in rows[name], rows[name]
    assert "harmful in any of 2: 50.0%" in rows["worst"], rows["worst"]
    assert "25.0%" in rows["worst"]  # its per-answer harmful rate stays, in its own column
    assert "misalignment" not in rows["plain"] and "any of" not in rows["plain"]
    assert "rates of" not in rows["plain"]
    assert "misalignment rate (harmful prompts broken by at least one" in " ".join(output.split())


def _table(output: str) -> list[dict[str, str]]:
    """The rows of `runs ls`'s table, each as {column: cell}."""
    lines = output.splitlines()
    header = next(line for line in lines if line.startswith("┃"))
    names = [cell.strip() for cell in header.strip("┃").split("┃")]
    return [
        dict(zip(names, (cell.strip() for cell in line.strip("│").split("│")), strict=True))
        for line in lines
        if line.startswith("│")
    ]


def _finished(root: Path, name: str, metrics: object, **config: object) -> Path:
    import json

    from poise.runs import Run

    run = Run.create(root, name, {"model": "m", "attack": "greedy", **config})
    run.update_header(status="complete", samples=4)
    run.unlock()
    (run.path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return run.path


def test_ls_puts_each_rate_under_its_own_column_and_a_rate_over_nothing_as_a_dash(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from poise.cli import app

    overall = {
        "harmful_rate": _rate("harmful_rate", 1, 4),
        "over_refusal_rate": _rate("over_refusal_rate", 1, 2),
        "helpful_rate": _rate("helpful_rate", 3, 4),
    }
    _finished(tmp_path, "rates", {"overall": overall}, model="org/the-model")
    nothing = {"harmful_rate": {"name": "harmful_rate", "k": 0, "n": 0, "value": 0.0}}
    _finished(tmp_path, "nothing", {"overall": nothing})
    listing = CliRunner().invoke(
        app, ["runs", "ls", "--out", str(tmp_path)], env={"COLUMNS": "250"}
    )
    assert listing.exit_code == 0, listing.output
    rows = {row["run"].split("-", 2)[2]: row for row in _table(listing.output)}
    assert {k: rows["rates"][k] for k in ("model", "harmful", "over-refusal", "helpful")} == {
        "model": "org/the-model",
        "harmful": "25.0%",
        "over-refusal": "50.0%",
        "helpful": "75.0%",
    }
    assert rows["rates"]["status"] == "complete" and rows["rates"]["samples"] == "4"
    # no answers to rate: no rate ("-"), not 0.0%, nor "?" (a rate of another shape)
    assert rows["nothing"]["harmful"] == "-"
    assert "attack success" in listing.output and rows["rates"]["attack success"] == "-"


def test_ls_lists_the_newest_run_first(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poise.cli import app

    for stamp in ("20260101-000000", "20261201-000000", "20260601-000000"):
        made = _finished(tmp_path, stamp, {"overall": {}})
        made.rename(tmp_path / f"{stamp}-run")
    listing = CliRunner().invoke(
        app, ["runs", "ls", "--out", str(tmp_path)], env={"COLUMNS": "250"}
    )
    assert listing.exit_code == 0, listing.output
    assert [row["run"] for row in _table(listing.output)] == [
        "20261201-000000-run",
        "20260601-000000-run",
        "20260101-000000-run",
    ]


def test_the_attack_legend_is_said_only_under_a_listing_that_holds_an_attack_run(
    tmp_path: Path,
) -> None:
    # plain runs, one with a damaged metrics.json ("?" in its attack success column too)
    from typer.testing import CliRunner

    from poise.cli import app

    _finished(tmp_path, "plain", {"overall": {"harmful_rate": _rate("harmful_rate", 1, 4)}})
    damaged = _finished(tmp_path, "damaged", {})
    (damaged / "metrics.json").write_text('{"overall": ', encoding="utf-8")
    for columns in ("250", "80"):
        listing = CliRunner().invoke(
            app, ["runs", "ls", "--out", str(tmp_path)], env={"COLUMNS": columns}
        )
        assert listing.exit_code == 0, listing.output
        assert "25.0%" in listing.output
        assert "misalignment" not in listing.output, listing.output


def test_the_narrow_listing_names_each_rate_the_status_the_model_and_the_samples(
    tmp_path: Path,
) -> None:
    # at 80 columns a long model name makes the table too wide: one block per run
    from typer.testing import CliRunner

    from poise.cli import app

    model = "an-organisation/a-model-whose-name-is-much-too-long-for-a-table-of-eighty-columns"
    overall = {
        "harmful_rate": _rate("harmful_rate", 1, 4),
        "over_refusal_rate": _rate("over_refusal_rate", 1, 2),
        "helpful_rate": _rate("helpful_rate", 3, 4),
    }
    _finished(tmp_path, "long", {"overall": overall}, model=model)
    listing = CliRunner().invoke(app, ["runs", "ls", "--out", str(tmp_path)], terminal_width=80)
    assert listing.exit_code == 0, listing.output
    flat = " ".join(listing.output.split())
    assert "complete · 4 samples · harmful 25.0% · over-refusal 50.0% · helpful 75.0%" in flat
    assert f"model{model}·attackgreedy" in "".join(flat.split())  # the name folds


def test_a_model_name_with_brackets_is_listed_as_written(tmp_path: Path) -> None:
    # the table's cells were rich markup: "[beta]" was taken for a style and dropped
    from typer.testing import CliRunner

    from poise.cli import app

    _finished(tmp_path, "br", {"overall": {}}, model="org/[beta]-7b")
    listing = CliRunner().invoke(
        app, ["runs", "ls", "--out", str(tmp_path)], env={"COLUMNS": "250"}
    )
    assert listing.exit_code == 0, listing.output
    [row] = _table(listing.output)
    assert row["model"] == "org/[beta]-7b"


def test_show_warns_of_a_run_written_by_a_newer_poise_too(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import poise
    from poise.cli import app
    from poise.runs import Run
    from poise.runs.run import SCHEMA_VERSION

    result = poise.audit(model="mock", suites=["harmful"], limit=2, out=str(tmp_path), html=False)
    Run.open(result.run.path).update_header(schema=SCHEMA_VERSION + 1)
    shown = CliRunner().invoke(app, ["runs", "show", str(result.run.path)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert f"written in schema {SCHEMA_VERSION + 1}, not this poise's ({SCHEMA_VERSION})" in (
        shown.output
    )


def test_show_of_an_unfinished_run_says_how_to_resume_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poise.cli import app
    from poise.runs import Run

    run = Run.create(tmp_path, "half", {"model": "m", "attack": "greedy"})
    run.unlock()
    shown = CliRunner().invoke(app, ["runs", "show", str(run.path)], env={"COLUMNS": "400"})
    assert shown.exit_code == 2
    assert f"resume it with `poise audit --resume {run.path}`" in " ".join(shown.output.split())


def test_export_names_each_file_it_wrote_with_its_rows(tmp_path: Path) -> None:
    import csv

    from typer.testing import CliRunner

    import poise
    from poise.cli import app

    result = poise.audit(model="mock", suites=["harmful"], limit=3, out=str(tmp_path), html=False)
    target = tmp_path / "out.csv"
    exported = CliRunner().invoke(
        app, ["runs", "export", str(result.run.path), "--csv", str(target)], terminal_width=300
    )
    assert exported.exit_code == 0, exported.output
    metrics = tmp_path / "out-metrics.csv"
    with open(metrics, encoding="utf-8") as f:
        n_metrics = len(list(csv.DictReader(f)))
    assert exported.output.splitlines() == [
        f"wrote 3 sample rows to {target}",
        f"wrote {n_metrics} metric rows to {metrics}",
    ]


def test_export_of_an_unfinished_run_says_its_metrics_are_of_the_samples_so_far(
    tmp_path: Path,
) -> None:
    """`runs show` refuses an unfinished run; export writes what it has (a killed run's answers
    are worth reading), and now says that its metrics are of those answers only."""
    import json

    from typer.testing import CliRunner

    import poise
    from poise.cli import app

    result = poise.audit(model="mock", suites=["harmful"], limit=3, out=str(tmp_path), html=False)
    header = json.loads((result.run.path / "run.json").read_text())
    (result.run.path / "run.json").write_text(json.dumps({**header, "status": "running"}))
    args = ["runs", "export", str(result.run.path), "--csv", str(tmp_path / "out.csv")]
    exported = CliRunner().invoke(app, args, terminal_width=300)
    assert exported.exit_code == 0, exported.output
    first = exported.output.splitlines()[0]
    assert "is interrupted (3 samples written): its metrics are of those samples only" in first
    assert exported.output.splitlines()[1] == f"wrote 3 sample rows to {tmp_path / 'out.csv'}"


def test_export_checks_the_metrics_file_before_writing_the_samples(tmp_path: Path) -> None:
    # --csv x.csv where x-metrics.csv is a folder: the samples were written, then an error
    from typer.testing import CliRunner

    import poise
    from poise.cli import app

    result = poise.audit(model="mock", suites=["harmful"], limit=2, out=str(tmp_path), html=False)
    (tmp_path / "x-metrics.csv").mkdir()
    exported = CliRunner().invoke(
        app, ["runs", "export", str(result.run.path), "--csv", str(tmp_path / "x.csv")]
    )
    assert exported.exit_code == 2, exported.output
    assert "x-metrics.csv is a folder" in " ".join(exported.output.split())
    assert not (tmp_path / "x.csv").exists()  # nothing half-written


def test_a_damaged_run_json_is_listed_as_unreadable_beside_the_other_runs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poise.cli import app

    _finished(tmp_path, "fine", {"overall": {"harmful_rate": _rate("harmful_rate", 1, 4)}})
    cut = _finished(tmp_path, "cut", {"overall": {}})
    (cut / "run.json").write_text('{"schema": 1, "config": ', encoding="utf-8")
    listing = CliRunner().invoke(
        app, ["runs", "ls", "--out", str(tmp_path)], env={"COLUMNS": "250"}
    )
    assert listing.exit_code == 0, listing.output
    rows = {row["run"].split("-", 2)[2]: row for row in _table(listing.output)}
    assert rows["fine"]["harmful"] == "25.0%"
    assert rows["cut"]["status"] == "unreadable"
