"""Runs compared: the side-by-side report, paired differences and tidy CSV files.

``compare_runs([a, b, ...], html=..., csv=...)`` writes the side-by-side HTML report that
:func:`poise.report.html.render_html_report` draws (every rate with its interval, the
helpful-vs-harmless chart of all runs) with a table of paired differences added, and a
long-format CSV (one row per run, group, metric and category; one per paired difference).

Paired differences. When two runs answered the same prompts (same item id and kind), the
difference of a rate is measured on the shared prompts, pairing each prompt's answers in the two
runs. Pairing removes the between-prompt variance that two independent intervals carry twice
(Miller, "Adding Error Bars to Evals", arXiv 2411.00640). The first run is the baseline of every
pair. A run of several request groups (an attack grid) is paired on its default group
("greedy" when present, else its first), which the terminal, the page and the CSV name. With one
judged answer per prompt in both runs (a greedy audit), the difference of the two rates gets Newcombe's paired hybrid score interval (Stat. Med. 17:2635, 1998, method 10) and the
exact McNemar test; with several answers per prompt, the difference of the two rates over answers
gets a cluster-robust interval and test, prompts as clusters, against Student's t with m - 1
degrees of freedom for m prompts (:func:`poise.scoring.stats.paired_clustered`); without spread between prompts (every prompt moved
alike), Newcombe's interval with a trial per prompt and the sign test over prompts (method
``cluster-sign``).

``export_run_csv(run, path)`` writes one row per sample record (flat columns: the run and model
named, verdict fields as ``verdict_<name>``) and, next to it, one row per metric.
"""

from __future__ import annotations

import csv
import html as html_lib
import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poise.errors import PoiseError, prepare_output_file
from poise.report.html import RunData, read_run, render_html_report
from poise.report.text import visible
from poise.runs.run import write_text_atomic
from poise.scoring.metrics import Rate, group_rates
from poise.scoring.stats import paired_binary, paired_clustered
from poise.tasks import all_metrics

log = logging.getLogger(__name__)

#: the fewest shared prompts, judged on one rate in both runs, that a paired difference is
#: measured on (:func:`paired_differences`; :func:`too_few_shared` names a run with fewer)
MIN_SHARED = 2

CSV_COLUMNS = (
    "statistic",  # rate | honesty_score | mean_tokens | paired_difference
    "run",
    "model",
    "group",
    "metric",
    "category",  # "overall" or a category
    "k",
    "n",  # trials of a rate; shared items of a paired difference
    "value",
    "low",
    "high",
    "baseline_run",  # paired differences: the run subtracted
    "p_value",  # paired differences: the test of no difference
    "method",  # rates: wilson or cluster; mean_tokens: t or cluster; honesty_score: band;
    # paired differences: newcombe (McNemar test), cluster (t test) or cluster-sign
    "run_value",  # paired differences: the run's rate on the shared prompts
    "baseline_value",  # paired differences: the baseline's rate on the shared prompts
    "baseline_group",  # paired differences: the baseline's request group (``group``: the run's)
)


@dataclass(frozen=True)
class PairedDifference:
    """``run`` minus ``baseline`` on the items both answered, for one metric."""

    metric: str
    run: str
    baseline: str
    items: int  # shared items with a judged sample in both runs
    value: float  # run's rate minus baseline's, on the shared items
    low: float
    high: float
    p_value: float = float("nan")  # exact McNemar (newcombe) or cluster-robust t (cluster)
    method: str = ""  # "newcombe" | "cluster" | "cluster-sign" (no spread between prompts)
    # each run's rate on the shared items: what the difference is between (each run's own rate,
    # in the report, counts all its items, so it can differ from these)
    run_value: float = float("nan")
    baseline_value: float = float("nan")
    # the request group of each run that was paired (its default group: "greedy" when present,
    # else its first); ``grouped``: either run holds several groups (an attack grid: the
    # difference is of these groups, not of the whole runs) or the two differ, and the terminal
    # and page name them
    group: str = ""
    baseline_group: str = ""
    grouped: bool = False

    def run_shown(self) -> str:
        """The run, with its paired group where ``grouped``."""
        return f"{self.run} [{self.group}]" if self.grouped else self.run

    def baseline_shown(self) -> str:
        """The baseline, with its paired group where ``grouped``."""
        return f"{self.baseline} [{self.baseline_group}]" if self.grouped else self.baseline


def p_text(p: float) -> str:
    """A p-value to two significant digits; one that underflowed a double (an exact McNemar
    test over some 1,100 discordant pairs all one way, a t statistic of some hundreds) is
    ``< 1e-300``, not ``0``: no test of a finite sample makes a difference certain."""
    return "< 1e-300" if p < 1e-300 else f"= {p:.2g}"


def _model(run: RunData) -> str:
    return str(run.header.get("config", {}).get("model") or run.header.get("model_name") or "")


def _request_id(record: Mapping[str, Any]) -> str:
    # a record without a request_id is in group "default", as poise.scoring.metrics groups it
    return str(record.get("request_id") or "default")


def _groups(run: RunData) -> list[str]:
    """The run's request groups, in order of first appearance in its samples."""
    return list(dict.fromkeys(_request_id(r) for r in run.records))


def _default_group(run: RunData) -> str:
    """The group a paired difference reads: metrics.json's ``default_group``; for a metrics.json
    without one (another version's, or edited), chosen from the samples as
    :func:`poise.scoring.metrics.compute_metrics` chooses it ("greedy" when present, else the
    first), not every group pooled (an attack grid's configurations as one prompt's samples)."""
    from poise.scoring.metrics import DEFAULT_GROUP

    group = run.metrics.get("default_group")
    if isinstance(group, str):
        return group
    names = _groups(run)
    return DEFAULT_GROUP if DEFAULT_GROUP in names or not names else names[0]


def _default_records(run: RunData, group: str) -> Sequence[Mapping[str, Any]]:
    """The run's records of request group ``group`` (its :func:`_default_group`)."""
    return [r for r in run.records if _request_id(r) == group]


def _check_pairable(run: RunData) -> None:
    """PoiseError naming the samples file and line of the first record that cannot be paired:
    one without an item id or kind (what a pair is keyed by), or whose verdict is not an object
    (what the rate reads). :func:`poise.scoring.metrics.compute_metrics` refuses such records
    alike; a run whose metrics.json was kept is read without them, so it is checked here, not
    left to a KeyError from the middle of the comparison."""
    for line, r in enumerate(run.records, 1):  # one record per line, in file order
        for field in ("item_id", "kind"):
            value = r.get(field)
            if not isinstance(value, str) or not value:
                problem = f"field {field!r} must be a non-empty string, got {value!r}"
                break
        else:
            verdict = r.get("verdict")
            if isinstance(verdict, Mapping):
                continue
            problem = f"field 'verdict' must be an object, got {verdict!r}"
        raise PoiseError(
            f"{run.path / 'samples.jsonl'}:{line}: {problem}; its answers cannot be paired"
        )


def _item_successes(records: Iterable[Mapping[str, Any]], metric: Any) -> dict[str, list[int]]:
    """Per item (``kind:item_id``): [successes, judged samples]."""
    counts: dict[str, list[int]] = {}
    for r in records:
        verdict = r["verdict"]  # an object (_check_pairable)
        if r.get("kind") not in metric.kinds or not metric.judged(verdict):
            continue
        key = f"{r['kind']}:{r['item_id']}"
        k_n = counts.setdefault(key, [0, 0])
        k_n[0] += bool(metric.success(verdict))
        k_n[1] += 1
    return counts


def paired_differences(runs: Sequence[RunData]) -> list[PairedDifference]:
    """Each later run minus the first, per sample-counted metric, over the items both share (the
    default group of each run); a metric with fewer than two shared items is left out."""
    if len(runs) < 2:
        return []
    for run in runs:
        _check_pairable(run)
    metrics = [m for m in all_metrics().values() if m.count == "samples"]
    base = runs[0]
    base_group, base_several = _default_group(base), len(_groups(base)) > 1
    base_records = _default_records(base, base_group)
    out = []
    for other in runs[1:]:
        group = _default_group(other)
        other_records = _default_records(other, group)
        # the groups are named where the runs alone do not say which were paired: a run of
        # several (an attack grid), or two of different names (greedy against t=1.00)
        grouped = base_several or len(_groups(other)) > 1 or base_group != group
        for metric in metrics:
            a = _item_successes(base_records, metric)
            b = _item_successes(other_records, metric)
            shared = sorted(a.keys() & b.keys())
            if len(shared) < MIN_SHARED:
                continue
            if all(a[key][1] == 1 and b[key][1] == 1 for key in shared):
                diff = paired_binary(
                    metric.name, [(b[key][0] == 1, a[key][0] == 1) for key in shared]
                )
            else:
                diff = paired_clustered(
                    metric.name,
                    [(b[key][0], b[key][1]) for key in shared],
                    [(a[key][0], a[key][1]) for key in shared],
                )
            out.append(
                PairedDifference(
                    metric.name,
                    other.label,
                    base.label,
                    len(shared),
                    diff.value,
                    diff.low,
                    diff.high,
                    p_value=diff.p_value,
                    # no spread between prompts: the sign test over prompts, not a t test
                    method="cluster-sign" if diff.test == "sign-prompts" else diff.method,
                    run_value=diff.rate_a,
                    baseline_value=diff.rate_b,
                    group=group,
                    baseline_group=base_group,
                    grouped=grouped,
                )
            )
    return out


def _rate_rows(run: RunData) -> list[dict[str, Any]]:
    rows = []
    default = run.metrics.get("default_group", "")
    groups = run.metrics.get("groups") or {default: run.metrics["overall"]}
    for name, group in groups.items():
        rates = [(rate, "overall") for rate in group_rates(group).values()]
        for metric_name, per_category in (group.get("by_category") or {}).items():
            for category, entry in per_category.items():
                rates.append((Rate.from_dict({"name": metric_name, **entry}), str(category)))
        honesty = group.get("honesty") or {}
        for score_name in ("over_conservativeness_score", "prudence_score"):
            if isinstance(honesty.get(score_name), Mapping):
                rates.append((Rate.from_dict(honesty[score_name]), "overall"))
        for rate, category in rates:
            rows.append(
                {
                    "statistic": "rate",
                    "run": run.label or run.path.name,
                    "model": _model(run),
                    "group": name,
                    "metric": rate.name,
                    "category": category,
                    "k": rate.k,
                    "n": rate.n,
                    "value": rate.value,
                    "low": rate.low,
                    "high": rate.high,
                    "baseline_run": "",
                    "p_value": "",
                    "method": "cluster" if rate.clusters is not None else "wilson",
                }
            )
        extra: list[tuple[str, str, Mapping[str, Any], str]] = []
        if isinstance(score := honesty.get("honesty_score"), Mapping):
            # the band combines the components' intervals (>= 90% coverage): no k / n of its own
            extra.append(("honesty_score", "honesty_score", score, "band"))
        for kind, length in (group.get("response_tokens") or {}).items():
            # Student's t over answers (stats.mean_interval), or cluster-robust over prompts
            method = "cluster" if length.get("clusters") is not None else "t"
            extra.append(("mean_tokens", f"response_tokens:{kind}", length, method))
        for statistic, metric, entry, method in extra:
            rows.append(
                {
                    "statistic": statistic,
                    "run": run.label or run.path.name,
                    "model": _model(run),
                    "group": name,
                    "metric": metric,
                    "category": "overall",
                    "k": "",
                    "n": entry.get("n", ""),
                    "value": entry.get("mean", entry.get("value")),
                    "low": entry["low"],
                    "high": entry["high"],
                    "baseline_run": "",
                    "p_value": "",
                    "method": method,
                }
            )
    return rows


def _write_atomic(path: Path, text: str) -> Path:
    """``text`` at ``path`` whole or not at all (its folder was made by prepare_output_file);
    a failed write (a full disk) is one line naming the file."""
    write_text_atomic(path, text)
    return path


def _csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


_TESTS = {
    "newcombe": "McNemar exact",
    "cluster": "cluster-robust, t(prompts - 1)",
    "cluster-sign": "sign test over prompts: no spread between them",
}


def _paired_section(diffs: Sequence[PairedDifference], *notes: str | None) -> str:
    """The paired differences as an HTML section (escaped; no script), with ``notes`` (what
    the terminal warned about them) above the table; without differences, the notes and a
    line saying none was measured (nothing when there is no note either)."""
    said = [note for note in notes if note]
    if not diffs and not said:
        return ""
    info = all_metrics()
    rows = "".join(
        f"<tr><td>{html_lib.escape(visible(d.run_shown()))}</td><td>{html_lib.escape(visible(d.baseline_shown()))}</td><td>{html_lib.escape(info[d.metric].label if d.metric in info else d.metric)}</td><td>{100 * d.run_value:.1f}% − {100 * d.baseline_value:.1f}%</td><td>{100 * d.value:+.1f} pts [{100 * d.low:+.1f}, {100 * d.high:+.1f}]</td>"
        f"<td>{html_lib.escape(p_text(d.p_value).removeprefix('= '))} ({_TESTS.get(d.method, d.method)})</td><td>{d.items}</td></tr>"
        for d in diffs
    )
    table = (
        "<table><thead><tr><th>run</th><th>minus</th><th>metric</th><th>rates on the shared prompts</th><th>difference [95%]</th>"
        "<th>p (test)</th><th>shared prompts</th></tr></thead><tbody>"
        f"{rows}</tbody></table>"
        if diffs
        else "<p>None measured: no run shares two or more prompts judged on the same rate with "
        "the first.</p>"
    )
    return (
        '<section id="paired-differences"><h2>Paired differences</h2>'
        "<p>Each run minus the first, on the prompts both answered, each prompt paired with "
        "itself: one answer per prompt gets Newcombe's paired interval and the exact McNemar "
        "test; several answers per prompt a cluster-robust interval and test, prompts as "
        "clusters (arXiv 2411.00640), against Student's t with one degree of freedom fewer than "
        "the prompts (Cameron &amp; Miller 2015).</p>"
        + "".join(f'<p class="note">{html_lib.escape(visible(note))}</p>' for note in said)
        + table
        + "</section>"
    )


def run_folder(spec: str | Path, root: str | Path = "runs") -> Path:
    """A run's folder from a path, or from its name under ``root`` (its ``--name``, or a unique
    part of its folder's name), as ``poise compare`` and ``poise runs show`` take them. A folder
    given as a path is read whatever its schema version (the report reads it as far as it goes
    and says so); a name that matches no run, or several, is one error naming them."""
    from poise.runs.run import find_run, matching_runs

    if Path(spec).is_dir():
        return Path(spec)
    candidates = matching_runs(spec, root)
    return candidates[0].path if len(candidates) == 1 else find_run(spec, root).path


def compare_runs(
    run_dirs: Sequence[str | Path],
    *,
    html: str | Path | None = None,
    csv_path: str | Path | None = None,
    root: str | Path = "runs",
) -> tuple[list[RunData], list[PairedDifference]]:
    """Read the runs (folders, or names under ``root``: :func:`run_folder`), write the
    side-by-side report and/or the long-format CSV. The first run is the baseline of the
    paired differences, as in ``poise compare``."""
    if len(run_dirs) < 2:
        raise PoiseError("compare needs at least two runs")
    folders = [run_folder(d, root) for d in run_dirs]
    html_target = prepare_output_file(html, "output") if html is not None else None
    csv_target = prepare_output_file(csv_path, "csv") if csv_path is not None else None
    runs = [read_run(d) for d in folders]
    _warn_kinds_differ(runs)
    page = render_html_report(runs)  # labels the runs
    schema_note = _schemas_differ(runs)
    if schema_note is not None:
        log.warning("%s", schema_note)
    judges_note = _judges_differ(runs)
    if judges_note is not None:
        log.warning("%s", judges_note)
    diffs = paired_differences(runs)
    unpaired_note = _unpaired(runs)
    if unpaired_note is not None:
        log.warning("%s", unpaired_note)
    few_note = too_few_shared(runs, diffs)
    if few_note is not None:
        log.warning("%s", few_note)
    prompts_note = _prompts_differ(runs) if diffs else None
    if prompts_note is not None:
        log.warning("%s", prompts_note)
    if html_target is not None:
        section = _paired_section(
            diffs, schema_note, judges_note, unpaired_note, few_note, prompts_note
        )
        # before the page's footer, which closes it ("Written by poise ...")
        marker = next((m for m in ("<footer>", "</body>") if m in page), None)
        page = page.replace(marker, section + marker, 1) if marker else page + section
        _write_atomic(html_target, page)
    if csv_target is not None:
        rows = [row for run in runs for row in _rate_rows(run)]
        rows += [
            {
                "statistic": "paired_difference",
                "run": d.run,
                "model": next(_model(r) for r in runs if r.label == d.run),
                "group": d.group,
                "metric": d.metric,
                "category": "overall",
                "k": "",
                "n": d.items,
                "value": d.value,
                "low": d.low,
                "high": d.high,
                "baseline_run": d.baseline,
                "p_value": d.p_value,
                "method": d.method,
                "run_value": d.run_value,
                "baseline_value": d.baseline_value,
                "baseline_group": d.baseline_group,
            }
            for d in diffs
        ]
        _write_atomic(csv_target, _csv_text(CSV_COLUMNS, rows))
    return runs, diffs


def _unpaired(runs: Sequence[RunData]) -> str | None:
    """What to say of runs whose folder holds no sample record (samples.jsonl deleted or
    not copied, metrics.json kept): their rates are in the report, read from metrics.json, but
    a paired difference needs each prompt's answers, so none with them is measured (the
    terminal said only that the runs share no prompt)."""
    bare = [run.label or run.path.name for run in runs if not run.records]
    if not bare:
        return None
    return (
        f"{'; '.join(bare)}: no sample records (samples.jsonl missing or empty); "
        f"{'its' if len(bare) == 1 else 'their'} rates are read from metrics.json, but no "
        f"paired difference with {'it' if len(bare) == 1 else 'them'} can be measured"
    )


def too_few_shared(runs: Sequence[RunData], diffs: Sequence[PairedDifference]) -> str | None:
    """What to say of each later run that holds sample records but got no paired difference
    with the first: it shares fewer than :data:`MIN_SHARED` prompts with it judged on any one
    rate (each run's default group). Named with its counts: the prompts it shares with the first
    run, and the most of them judged on one rate (with three runs, one such run was left out of
    the terminal without a word). None when every such run was paired."""
    if len(runs) < 2 or not runs[0].records:
        return None
    paired = {d.run for d in diffs}
    metrics = [m for m in all_metrics().values() if m.count == "samples"]
    base = runs[0]
    base_records = _default_records(base, _default_group(base))
    base_items = {f"{r.get('kind')}:{r.get('item_id')}" for r in base_records}
    said = []
    for other in runs[1:]:
        if other.label in paired or not other.records:  # no records: said by _unpaired
            continue
        records = _default_records(other, _default_group(other))
        shared = len(base_items & {f"{r.get('kind')}:{r.get('item_id')}" for r in records})
        judged = max(
            (
                len(_item_successes(base_records, m).keys() & _item_successes(records, m).keys())
                for m in metrics
            ),
            default=0,
        )
        text = (
            f"{other.label or other.path.name} shares {shared} prompt{'s' if shared != 1 else ''}"
            f" with {base.label or base.path.name}"
        )
        if judged < shared:  # e.g. one harmful and one benign prompt: one of each rate
            text += f", at most {judged} of them judged on the same rate"
        said.append(text)
    if not said:
        return None
    return (
        "; ".join(said)
        + f": a paired difference needs at least {MIN_SHARED} shared prompts judged on the "
        + f"same rate, so none is measured with {'it' if len(said) == 1 else 'them'} (the report "
        + "still holds every run's rates)"
    )


def _schemas_differ(runs: Sequence[RunData]) -> str | None:
    """What to say of runs written in another schema version than this poise writes: they
    are read as far as they go (a metrics.json of another shape is recomputed from the
    samples, :func:`poise.report.html.read_run`), and the reader should know it."""
    from poise.runs.run import SCHEMA_VERSION

    other = [
        f"{run.label or run.path.name} (schema {run.header.get('schema')!r})"
        for run in runs
        if run.header.get("schema") != SCHEMA_VERSION
    ]
    if not other:
        return None
    return (
        f"{'; '.join(other)}: written in another schema version than this poise writes "
        f"({SCHEMA_VERSION}); read as far as it goes, its fields may mean other things"
    )


def _judge(run: RunData) -> str | None:
    """The judge that labelled a run's answers (``auto`` resolved), with its options; None when
    the run does not say (``auto`` recorded without what it resolved to)."""
    config = run.header.get("config") or {}
    name = str(run.header.get("judge_resolved") or config.get("judge") or "auto")
    if name == "auto":
        return None
    options = config.get("judge_options") or {}
    if options:
        name += " (" + ", ".join(f"{k}={options[k]}" for k in sorted(options)) + ")"
    return name


def _judges_differ(runs: Sequence[RunData]) -> str | None:
    """What to say when the runs were labelled by different judges: a rate (and a paired
    difference) then moves with the judge as well as with the model, and nothing else in the
    comparison says so."""
    named = ((run.label or run.path.name, _judge(run)) for run in runs)
    judges = {label: judge for label, judge in named if judge is not None}
    if len(set(judges.values())) < 2:
        return None
    each = "; ".join(f"{judge} in {label}" for label, judge in judges.items())
    if len({_answers_of(run) for run in runs}) == 1:
        # `poise runs rejudge`: one run's answers under another judge
        return (
            f"the runs hold the same answers labelled by different judges ({each}): their "
            "differences measure the judges alone"
        )
    return (
        f"the runs were labelled by different judges ({each}): their rates and differences "
        "measure the judges as well as the models; audit them with one --judge to compare "
        "the models"
    )


def _answers_of(run: RunData) -> Path:
    """The run folder whose answers ``run`` holds: its own, or for a run judged again
    (``rejudged_from``) the run it took them from."""
    source = run.header.get("rejudged_from")
    if isinstance(source, Mapping) and isinstance(source.get("run"), str):
        return Path(source["run"]).resolve()
    return run.path.resolve()


def _asked_alike(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two records of one item were asked alike: the same prompt (the item's last user
    turn) and, where both recorded it, the same whole chat (older runs recorded only the
    prompt); a record without a prompt is taken as alike."""
    if a.get("prompt") is None or b.get("prompt") is None:
        return True
    if a.get("prompt") != b.get("prompt"):
        return False
    return not ("messages" in a and "messages" in b and a["messages"] != b["messages"])


def _prompts_differ(runs: Sequence[RunData]) -> str | None:
    """What to say when an item that a paired difference pairs (same kind and id in the first
    run and a later one) was asked as another prompt in each: two suite files of one name (ids
    ``prompts-1``, ``prompts-2``, ... from either), or a suite edited between the runs. Its
    pair then compares two prompts, not one prompt under two models. None when every shared
    item was asked alike (or a run recorded no prompt)."""

    def first_records(run: RunData) -> dict[str, Mapping[str, Any]]:
        out: dict[str, Mapping[str, Any]] = {}
        for r in _default_records(run, _default_group(run)):
            out.setdefault(f"{r.get('kind')}:{r.get('item_id')}", r)
        return out

    base = first_records(runs[0])
    said = []
    for other in runs[1:]:
        asked = first_records(other)
        differ = sorted(
            key for key, r in asked.items() if key in base and not _asked_alike(r, base[key])
        )
        if differ:
            shared = len(asked.keys() & base.keys())
            said.append(
                f"{len(differ)} of the {shared} items {other.label or other.path.name} shares "
                f"with {runs[0].label or runs[0].path.name} were asked as another prompt in "
                f"each (e.g. {differ[0].split(':', 1)[1]})"
            )
    if not said:
        return None
    return (
        "; ".join(said) + ": their pairs compare different prompts, so the paired differences "
        "are not of one prompt set under two models; compare runs of the same suite files"
    )


def _warn_kinds_differ(runs: Sequence[RunData]) -> None:
    """Warn when the runs give one item different kinds (the built-in sycophancy items were
    honesty-known in runs before they had their own kind): the rates of those kinds then count
    different items in each run."""
    kinds: dict[tuple[str, str], dict[Path, str]] = {}
    for run in runs:
        for r in run.records:
            key = (str(r.get("suite")), str(r.get("item_id")))
            kinds.setdefault(key, {}).setdefault(run.path, str(r.get("kind")))
    differ = {key: by_run for key, by_run in kinds.items() if len(set(by_run.values())) > 1}
    if not differ:
        return
    (suite, item), by_run = next(iter(differ.items()))
    example = ", ".join(f"{kind} in {path.name}" for path, kind in by_run.items())
    log.warning(
        "%d items have another kind in one run than in another (e.g. %s of suite %s: %s): "
        "the rates of those kinds count different items in each run",
        len(differ),
        item,
        suite,
        example,
    )


def _flat(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return "" if value is None else value


def export_run_csv(run_dir: str | Path, path: str | Path) -> tuple[Path, Path, int, int]:
    """One row per sample at ``path``, one row per metric at ``<stem>-metrics.csv`` beside it.
    Returns (samples path, metrics path, sample rows, metric rows)."""
    samples_path = prepare_output_file(path, "csv")
    metrics_path = samples_path.with_name(f"{samples_path.stem}-metrics.csv")
    prepare_output_file(metrics_path, "csv (its metrics file)")
    run = read_run(run_dir)
    run.label = run.path.name
    model = _model(run)
    records = run.records
    verdict_keys: list[str] = []
    other_keys: list[str] = []
    for r in records:
        verdict_keys += [k for k in (r.get("verdict") or {}) if k not in verdict_keys]
        other_keys += [k for k in r if k != "verdict" and k not in other_keys]
    columns = ["run", "model", *other_keys, *(f"verdict_{k}" for k in verdict_keys)]
    rows = []
    for r in records:
        row = {"run": run.path.name, "model": model}
        row.update({k: _flat(r.get(k)) for k in other_keys})
        verdict = r.get("verdict") or {}
        row.update({f"verdict_{k}": _flat(verdict.get(k)) for k in verdict_keys})
        rows.append(row)
    metric_rows = _rate_rows(run)
    _write_atomic(samples_path, _csv_text(columns, rows))
    _write_atomic(metrics_path, _csv_text(CSV_COLUMNS, metric_rows))
    return samples_path, metrics_path, len(rows), len(metric_rows)
