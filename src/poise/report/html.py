"""The self-contained HTML report of one run, or of several runs side by side.

``write_html_report(run_dir, path)`` or ``write_html_report([run_a, run_b], path)`` reads each run
folder through :class:`poise.runs.Run` (header, records, ``metrics.json`` when present, else the
metrics are computed from the records) and writes one HTML file with everything inline: CSS,
charts as inline SVG, no script, no external URL. Completions and prompts are HTML-escaped by the
template, and every text from the run has its control characters and bidirectional overrides
written as their escapes (:func:`poise.report.text.visible`: a browser drops a NUL, so the answer
shown was not the one judged, and an override reorders what follows it). A report can be drawn
from a copied folder, a folder of another schema version, or one still being written (a torn
last record is not read).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from poise.errors import PoiseError, json_lines
from poise.report.attack_view import attack_view, sampling_used
from poise.report.charts import Point, Series, category_chart, flipped, tradeoff_chart
from poise.report.text import visible
from poise.runs import Run
from poise.runs.run import attack_label, rejudged_label, write_error
from poise.scoring.judges import judge_note
from poise.scoring.metrics import (
    RATE_INFO,
    Rate,
    compute_metrics,
    explain,
    format_tokens,
    group_rates,
    rate_names,
)
from poise.scoring.validation import unmeasured_text
from poise.tasks import all_metrics, registered_tasks

log = logging.getLogger(__name__)

TEMPLATE = "report.html.j2"
EXAMPLES_PER_BUCKET = 3
MAX_LABELLED_POINTS = 10
LABELLED_WORST = 1
MAX_EXAMPLE_CHARS = 800

# ---- reading a run folder -------------------------------------------------------------------


@dataclass
class RunData:
    """What the report needs from one run folder."""

    path: Path
    header: dict[str, Any]
    records: list[dict[str, Any]]
    metrics: dict[str, Any]
    label: str = ""
    metrics_file: bool = False  # metrics read from metrics.json, not computed from the records


def read_run(run_dir: str | Path) -> RunData:
    """Read a run folder; PoiseError (naming the file and line) when it is not a readable run."""
    run = Run.open(run_dir, any_schema=True)
    header = run.header
    records = list(run.records())
    metrics: Any = run.metrics()
    missing = f"{run.path}: no metrics.json and no sample records to draw a report from"
    if metrics is not None and not isinstance(metrics.get("overall"), dict):
        missing = (
            f"{run.path / 'metrics.json'}: not in the expected schema (no 'overall' object), "
            "and no sample records to recompute it from"
        )
        if records:
            log.warning("%s: not in the expected schema; recomputing from the samples", run.path)
        metrics = None
    from_file = metrics is not None
    if metrics is None:
        if not records:
            raise PoiseError(missing)
        metrics = compute_metrics(records)
    data = RunData(
        path=run.path, header=header, records=records, metrics=metrics, metrics_file=from_file
    )
    _checked_view(data)  # a metrics.json of another shape: recomputed or named, for every reader
    return data


def _kind_meaning(kind: str) -> str:
    return next((t.meaning for t in registered_tasks() if t.kind == kind), "")


# ---- view model -----------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _tone(rate: Rate) -> str:
    from poise.report.terminal import colour

    return {"green": "good", "yellow": "mid", "red": "bad"}.get(colour(rate), "")


def _card(rate: Rate) -> dict[str, Any]:
    # a rate no registered task declares (its plugin is not installed here): its name, no
    # direction
    info = RATE_INFO.get(rate.name)
    better = "" if info is None else f"{info.better} is better"
    return {
        "name": rate.name,
        "label": rate.name if info is None else info.label,
        "value": _pct(rate.value),
        "interval": f"95% CI {_pct(rate.low)} – {_pct(rate.high)}"
        + (
            f" (cluster-robust over {rate.clusters} prompts, design effect {rate.design_effect:.2f})"
            if rate.clusters is not None and rate.design_effect is not None
            else ""
        ),
        "sentence": explain(rate),
        "better": better,
        "tone": _tone(rate),
    }


def _cell(entry: Any) -> dict[str, Any] | None:
    if not isinstance(entry, Mapping):
        return None
    return _rate_cell(Rate.from_dict(entry))


def _rate_cell(rate: Rate) -> dict[str, Any]:
    # the count beside the rate: a table of runs or configurations of unlike sizes showed
    # rates without their n; a cluster-robust interval names its prompts too
    kn = f"{rate.k}/{rate.n}"
    if rate.clusters is not None:
        kn += f", {rate.clusters} prompt{'s' if rate.clusters != 1 else ''}"
    return {"text": rate.format(), "tone": _tone(rate), "kn": kn}


def _audited(run: RunData) -> list[tuple[str, str]]:
    cfg = run.header.get("config", {})
    sampling = cfg.get("sampling")
    sampling_text = (
        ", ".join(f"{k}={v}" for k, v in sampling.items())
        if isinstance(sampling, Mapping)
        else str(sampling or "")
    )
    used = sampling_used(run.records)
    if used and cfg.get("attack") not in (None, "greedy"):
        # an attack samples with its own settings: say those, not the config's defaults
        sampling_text = (
            used[0]
            if len(used) == 1
            else f"{len(used)} configurations: "
            + "; ".join(used[:3])
            + (" …" if len(used) > 3 else "")
        )
    suites = cfg.get("suites")
    judge = str(run.header.get("judge_resolved") or cfg.get("judge", "?"))
    rows = [
        ("model", str(cfg.get("model", "?"))),
        ("suites", ", ".join(map(str, suites)) if isinstance(suites, list) else str(suites or "")),
        ("judge", judge),
        ("about the judge", judge_note(judge, run.metrics) or ""),
        ("judged again", rejudged_label(run.header)),
        ("attack", attack_label(cfg) if cfg.get("attack") else ""),
        ("sampling", sampling_text),
        ("system prompt", str(cfg.get("system_prompt", ""))),
        ("date", str(run.header.get("created", ""))),
        (
            "versions",
            f"poise {run.header.get('poise_version', '?')}, torch {run.header.get('torch_version', '?')}, "
            f"transformers {run.header.get('transformers_version', '?')}",
        ),
        ("run folder", str(run.path)),
    ]
    return [(k, v) for k, v in rows if v]


def _honesty_view(group: Mapping[str, Any]) -> dict[str, Any] | None:
    honesty = group.get("honesty")
    if not isinstance(honesty, Mapping):
        return None
    from poise.report.terminal import analysis_rates

    rates, scores = analysis_rates("honesty")
    cards = [_card(Rate.from_dict(group[n])) for n in rates if isinstance(group.get(n), Mapping)]
    cards += [
        _card(Rate.from_dict(honesty[n])) for n in scores if isinstance(honesty.get(n), Mapping)
    ]
    score = honesty.get("honesty_score")
    score_view = None
    if isinstance(score, Mapping):
        score_view = {
            "value": _pct(float(score["value"])),
            # two 95% intervals combined (prudence's and over-conservativeness's): >= 90% coverage
            "interval": f"≥90% band {_pct(float(score['low']))} – {_pct(float(score['high']))}",
            "sentence": "The honesty score averages prudence and (1 − over-conservativeness): 100% means the "
            "model answers everything it knows and declines everything it does not; a model that never "
            "declines scores about 50%.",
        }
    rows = list(honesty.get("rows", []))
    table = honesty.get("table", {})
    return {
        "boundary": honesty.get("boundary"),
        "note": honesty.get("note", ""),
        "cards": cards,
        "score": score_view,
        "rows": rows,
        "columns": ["correct", "wrong", "idk"],
        "table": [
            (row, [table.get(row, {}).get(col, 0) for col in ("correct", "wrong", "idk")])
            for row in rows
        ],
        "unmatched": honesty.get("unmatched", 0),
    }


def _examples(run: RunData, request_id: str, per_bucket: int) -> list[dict[str, Any]]:
    records = [r for r in run.records if str(r.get("request_id") or "default") == request_id]
    records.sort(key=lambda r: (str(r.get("item_id")), int(r.get("sample_index") or 0)))

    def verdict(r: Mapping[str, Any]) -> Mapping[str, Any]:
        v = r.get("verdict")
        return v if isinstance(v, Mapping) else {}

    # the example buckets each task declares, in task order
    buckets = [
        (example.title, task.kind, lambda r, t=example.test: t(verdict(r)))
        for task in registered_tasks()
        for example in task.examples
    ]
    probe = _probe_scores(run.path)
    out = []
    for title, kind, test in buckets:
        matching = [r for r in records if r.get("kind") == kind and test(r)]
        if not matching:
            continue
        rows = []
        for r in matching[:per_bucket]:
            text = str(r.get("completion", ""))
            if len(text) > MAX_EXAMPLE_CHARS:
                text = text[:MAX_EXAMPLE_CHARS] + " […]"
            rows.append(
                {
                    "item_id": str(r.get("item_id", "")),
                    "category": str(r.get("category", "")),
                    "prompt": str(r.get("prompt", "")),
                    "completion": text,
                    "label": str(verdict(r).get("label", "")),
                    "probe": probe.get(_sample_key(r), ""),
                }
            )
        out.append({"title": title, "kind": kind, "total": len(matching), "rows": rows})
    return out


def _sample_key(r: Mapping[str, Any]) -> tuple[str, str, int]:
    return (str(r.get("item_id")), str(r.get("request_id")), int(r.get("sample_index") or 0))


def _probe_scores(path: Path) -> dict[tuple[str, str, int], str]:
    """``poise probe score``'s probe_scores.jsonl, as "score (flagged)" per sample; {} if none."""
    import json

    scores: dict[tuple[str, str, int], str] = {}
    try:
        lines = json_lines((path / "probe_scores.jsonl").read_text(encoding="utf-8"))
    except OSError:
        return scores
    for line in lines:
        try:
            r = json.loads(line)
            flag = " flagged" if r.get("flagged") else ""
            scores[_sample_key(r)] = f"{float(r['score']):.2f}{flag}"
        except (ValueError, KeyError, TypeError):
            continue  # a torn line: the report still draws
    return scores


def _probe_name(path: Path) -> str:
    try:
        with (path / "probe_scores.jsonl").open(encoding="utf-8") as handle:
            import json

            return str(json.loads(handle.readline()).get("probe", "score"))
    except (OSError, ValueError, AttributeError):
        return ""


def _groups_table(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """Rates per attack configuration: one column per configuration when there are few, else one
    row per configuration (default first, then most harmful)."""
    from poise.report.terminal import (
        MAX_GROUP_COLUMNS,
        configuration_metrics,
        ranked_groups,
        rate_label,
    )

    groups = metrics.get("groups", {})
    if len(groups) < 2:
        return None
    names = ranked_groups(metrics)
    if len(names) <= MAX_GROUP_COLUMNS:
        rows = []
        for rate_name in rate_names(*(groups[g] for g in names)):
            cells = [_cell(groups[g].get(rate_name)) for g in names]
            info = RATE_INFO.get(rate_name)
            better = info.better if info is not None else None
            rows.append({"label": rate_label(rate_name), "better": better, "cells": cells})
        return {"columns": names, "rows": rows}
    rates = [
        r
        for r in configuration_metrics()
        if any(isinstance(groups[g].get(r), Mapping) for g in names)
    ]
    arrows = {"lower": "↓", "higher": "↑"}
    return {
        "columns": [f"{RATE_INFO[r].label} {arrows[RATE_INFO[r].better]}" for r in rates],
        "rows": [
            {"label": g, "better": None, "cells": [_cell(groups[g].get(r)) for r in rates]}
            for g in names
        ],
    }


def _judge_validation_view(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The judge's measured agreement with human labels and the rates corrected for its error
    (``metrics["judge_validation"]``, :mod:`poise.scoring.validation`)."""
    from poise.report.terminal import fixed

    section = metrics.get("judge_validation")
    if not section:
        return None
    rates = metrics["overall"]
    agreement = [
        {
            "target": target,
            "n": a["n"],
            "accuracy": Rate.from_dict(a["accuracy"]).format(),
            "kappa": f"{fixed(a['kappa']['value'], 2)} "
            f"[{fixed(a['kappa']['low'], 2)}, {fixed(a['kappa']['high'], 2)}]",
            "precision": Rate.from_dict(a["precision"]).format() if a["precision"]["n"] else "–",
            "recall": Rate.from_dict(a["recall"]).format() if a["recall"]["n"] else "–",
        }
        for target, a in section.get("overall", {}).items()
    ]
    corrected = []
    for name, c in section.get("corrected", {}).items():
        value = c.get("value")
        corrected.append(
            {
                "rate": name,
                "observed": Rate.from_dict(rates[name]).format()
                if name in rates
                else _pct(c["observed"]),
                "sensitivity": "–" if c.get("sensitivity") is None else _pct(c["sensitivity"]),
                "specificity": "–" if c.get("specificity") is None else _pct(c["specificity"]),
                "corrected": unmeasured_text(c.get("unmeasured"))
                if value is None
                else f"{_pct(value)} [{100 * c['low']:.1f}, {100 * c['high']:.1f}]",
            }
        )
    return {
        "judge": section.get("judge"),
        "path": section.get("path"),
        "format": section.get("format"),
        "n": section.get("n"),
        "unparsed": section.get("unparsed") or 0,
        "disagreements": section.get("disagreements"),
        "agreement": agreement,
        "corrected": corrected,
    }


def _guard_view(group: Mapping[str, Any]) -> dict[str, Any] | None:
    """The guard metrics of a guarded model's audit (the terminal's rows); None without one."""
    from poise.report.terminal import guard_rows

    guard = group.get("guard")
    if not isinstance(guard, Mapping):
        return None
    kind = guard.get("guard")
    return {
        "kind": ", ".join(kind) if isinstance(kind, list) else str(kind),
        "rows": guard_rows(guard),
    }


def _rates_table(group: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every rate of a group, as the terminal's rate table lists it (:func:`rate_names`: the
    declared ones in display order, then the undeclared), with its interval and k/n: the cards
    show the headline rates only, and a report should hold every figure the terminal printed
    ("borderline answered helpfully", "benign refused" were in none of its sections)."""
    from poise.report.terminal import rate_label

    rows = []
    for name in rate_names(group):
        info = RATE_INFO.get(name)
        rows.append(
            {
                "label": rate_label(name),
                "better": info.better if info is not None else None,
                "cell": _cell(group.get(name)),
            }
        )
    return rows


def _category_table(series: Sequence[Series]) -> dict[str, Any]:
    """The figures of a per-category chart: one row per category, in the chart's order (top to
    bottom), one cell per run (rate, interval, k/n), so the bars can be read as numbers and
    checked against the terminal's per-category tables."""
    categories = sorted({c for s in series for c in s.rates})
    return {
        "columns": [s.label for s in series],
        "rows": [
            (
                category,
                [_rate_cell(s.rates[category]) if category in s.rates else None for s in series],
            )
            for category in categories
        ],
    }


def _run_view(run: RunData) -> dict[str, Any]:
    metrics = run.metrics
    overall = metrics["overall"]
    rates = group_rates(overall)
    counts = overall.get("counts", {})
    lengths = overall.get("response_tokens", {})
    return {
        "label": run.label,
        "audited": _audited(run),
        "default_group": metrics.get("default_group", ""),
        "n_groups": len(metrics.get("groups", {})),
        "cards": [
            _card(rates[m.name]) for m in all_metrics().values() if m.headline and m.name in rates
        ]
        + [_card(rate) for name, rate in rates.items() if name not in RATE_INFO],
        "rates": _rates_table(overall),
        "counts": [
            {
                "kind": kind,
                "prompts": n,
                "samples": counts.get("samples", {}).get(kind, 0),
                "meaning": _kind_meaning(kind),
                "tokens": format_tokens(lengths[kind]) if kind in lengths else "–",
            }
            for kind, n in counts.get("items", {}).items()
        ],
        "unjudged": {k: v for k, v in counts.get("unjudged", {}).items() if v},
        "samples_per_item": counts.get("samples_per_item", {}),
        "groups_table": _groups_table(metrics),
        "attack": attack_view(metrics),
        "judge_validation": _judge_validation_view(metrics),
        "honesty": _honesty_view(overall),
        "guard": _guard_view(overall),
        "examples": _examples(run, str(metrics.get("default_group", "")), EXAMPLES_PER_BUCKET),
        "probe": _probe_name(run.path),
    }


def _category_series(runs: Sequence[RunData], rate_name: str) -> list[Series]:
    """One series per run, in the runs' order, a run without the rate too (no bars; "—" in the
    figures table): each run keeps its colour on every chart of the page. A run left out gave
    its colour to the next, whose bars then read as the first run's (the over-refusal chart
    of a harmful-only run beside a full one: blue, no legend, where blue was the first run)."""
    series = []
    for run in runs:
        per_category = run.metrics["overall"].get("by_category", {}).get(rate_name) or {}
        series.append(Series(run.label, {c: Rate.from_dict(e) for c, e in per_category.items()}))
    return series


#: the rate a worst-of-N group is charted by: harmful in any of the N samples of a prompt
WORST_OF_N_RATE = "harmful_any_rate"


def _tradeoff_points(runs: Sequence[RunData]) -> tuple[list[Point], str]:
    """One point per (run, request_id): colour = run, marker = configuration (default first).

    The axes are the metrics declared with a ``tradeoff`` axis: y = the ``harmless`` one (flipped
    when lower is better); x = the ``helpful`` one of lowest preference that every point has
    (attack grids often skip benign prompts), else the last one, where a point has it. A
    worst-of-N group is placed at what the attack achieves: y is its ``harmful_any_rate`` (a
    prompt counts as broken when any of its N samples is harmful), labelled "any of N".
    """
    from poise.report.terminal import ranked_groups

    declared = [m for m in all_metrics().values() if m.tradeoff is not None]
    harmless = next((m for m in declared if m.tradeoff and m.tradeoff.axis == "harmless"), None)
    helpful = sorted(
        (m for m in declared if m.tradeoff and m.tradeoff.axis == "helpful"),
        key=lambda m: m.tradeoff.preference if m.tradeoff else 0,
    )
    if harmless is None or not helpful:
        return [], ""
    entries = []
    for i, run in enumerate(runs):
        groups = run.metrics.get("groups") or {"": run.metrics["overall"]}
        names = ranked_groups(run.metrics) or list(groups)
        for marker, name in enumerate(names):
            rates = group_rates(groups[name])
            if harmless.name in rates:
                entries.append((i, marker, run, name, rates, groups[name]))
    x_metric = next(
        (m for m in helpful if entries and all(m.name in e[4] for e in entries)), helpful[-1]
    )
    xlabel = x_metric.tradeoff.label if x_metric.tradeoff else x_metric.label

    def axis(rate: Rate, better: str) -> Rate:
        return flipped(rate, f"not_{rate.name}") if better == "lower" else rate

    points = []
    for i, marker, run, name, rates, group in entries:
        if x_metric.name not in rates:
            continue
        x = axis(rates[x_metric.name], x_metric.better)
        several = len(run.metrics.get("groups", {})) > 1
        label = run.label if not several else f"{run.label} · {name}" if len(runs) > 1 else name
        y_rate = rates[harmless.name]
        if group.get("attack") == "worst_of_n" and WORST_OF_N_RATE in rates:
            y_rate = rates[WORST_OF_N_RATE]
            label = f"{label} (any of {(group.get('config') or {}).get('n')})"
        y = axis(y_rate, harmless.better)
        points.append(Point(label=label, x=x, y=y, colour=i, marker=marker))
    if len(points) > MAX_LABELLED_POINTS:
        # Too many labels overlap: name each run's default and its most harmful configurations.
        keep: set[str] = set()
        for i in range(len(runs)):
            own = [p for p in points if p.colour == i]
            keep |= {p.label for p in own if p.marker == 0}
            keep |= {p.label for p in sorted(own, key=lambda p: p.y.value)[:LABELLED_WORST]}
        points = [replace(p, annotate=p.label in keep) for p in points]
    return points, xlabel


def _comparison(runs: Sequence[RunData]) -> dict[str, Any] | None:
    if len(runs) < 2:
        return None
    from poise.report.terminal import rate_label

    rows = []
    for rate_name in rate_names(*(run.metrics["overall"] for run in runs)):
        cells = [_cell(run.metrics["overall"].get(rate_name)) for run in runs]
        info = RATE_INFO.get(rate_name)
        better = info.better if info is not None else None
        rows.append({"label": rate_label(rate_name), "better": better, "cells": cells})
    scores = []
    for run in runs:
        h = run.metrics["overall"].get("honesty")
        s = h.get("honesty_score") if isinstance(h, Mapping) else None
        scores.append(_pct(float(s["value"])) if isinstance(s, Mapping) else None)
    if any(scores):
        rows.append(
            {
                "label": "honesty score",
                "better": "higher",
                "cells": [{"text": s, "tone": "", "kn": ""} if s else None for s in scores],
            }
        )
    return {"columns": [run.label for run in runs], "rows": rows}


def _label_runs(runs: list[RunData]) -> None:
    """Each run's label: its model, with its folder's name where two runs share a model, its
    parent's too where they share that, and a number where even those agree (the same folder
    given twice). Labels are unique: the CSV and the paired differences look runs up by them."""
    models = [
        str(run.header.get("config", {}).get("model") or run.header.get("name") or run.path.name)
        for run in runs
    ]

    # the candidate labels, one list per level: model; model (folder); model (parent/folder)
    levels = [
        [f"{model}{where(run.path)}" for model, run in zip(models, runs, strict=True)]
        for where in (
            lambda path: "",
            lambda path: f" ({path.name})",
            lambda path: f" ({path.parent.name}/{path.name})",
        )
    ]
    labels = [
        next((level[i] for level in levels[:2] if level.count(level[i]) == 1), levels[2][i])
        for i in range(len(runs))
    ]
    for i, run in enumerate(runs):
        same = [j for j, text in enumerate(labels) if text == labels[i]]
        run.label = labels[i] if len(same) == 1 else f"{labels[i]} #{same.index(i) + 1}"


# what reading a metrics.json of another shape raises (a rate without "low", a list for a dict)
_SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, PoiseError)


def _checked_view(run: RunData) -> dict[str, Any]:
    """``run``'s view, once what the page reads of its metrics alone has been read: a
    metrics.json of another shape (edited by hand, another version's) is recomputed from the
    samples, as one without ``overall`` is (:func:`read_run`), or, without samples, fails in one
    line naming the file, not with a traceback from the middle of the page."""
    from poise.report.terminal import category_metrics

    try:
        view = _run_view(run)
        for metric in category_metrics():
            _category_series([run], metric.name)
        _tradeoff_points([run])
        _comparison([run, run])
        return view
    except _SHAPE_ERRORS as exc:
        if not run.metrics_file:
            raise
        file = run.path / "metrics.json"
        detail = str(exc) if isinstance(exc, PoiseError) else f"{type(exc).__name__}: {exc}"
        if not run.records:
            raise PoiseError(
                f"{file}: not in the shape this poise writes ({detail}), and no sample records "
                "to recompute it from"
            ) from None
        log.warning(
            "%s: not in the expected shape (%s); recomputing from the samples", file, detail
        )
        run.metrics = compute_metrics(run.records)
        run.metrics_file = False
        return _checked_view(run)


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` of the page, before it is HTML-escaped: text with its control
    characters and bidirectional overrides visible; markup the page made (``|safe``: the
    charts, whose texts were made visible before they were drawn) as it is."""
    import markupsafe

    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return visible(value)
    return value


def render_html_report(runs: Sequence[RunData]) -> str:
    """The report page for runs already read with :func:`read_run`."""
    import jinja2

    from poise._version import __version__

    runs = list(runs)
    _label_runs(runs)
    from poise.report.terminal import category_metrics

    views = [_checked_view(run) for run in runs]
    points, xlabel = _tradeoff_points(runs)
    categories = []
    for metric in category_metrics():
        view = metric.by_category
        assert view is not None
        series = _category_series(runs, metric.name)
        svg = category_chart(series, title=view.chart_title, xlabel=view.axis)
        if svg:
            categories.append(
                {
                    "id": view.chart_id,
                    "title": view.chart_title,
                    "description": view.description,
                    "svg": svg,
                    "table": _category_table(series),
                }
            )
    charts = {
        "categories": categories,
        "tradeoff": tradeoff_chart(points, xlabel=xlabel) if points else None,
        # a run with no rate for one of the axes (no harmful items, or none for x): said, not
        # left out of the chart without a word while the table beside it shows the run
        "tradeoff_missing": [
            run.label for i, run in enumerate(runs) if not any(p.colour == i for p in points)
        ]
        if points
        else [],
        "tradeoff_xlabel": xlabel,
    }
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True,
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(
        title="poise audit report"
        + (": " + runs[0].label if len(runs) == 1 else f" — {len(runs)} runs compared"),
        runs=views,
        comparison=_comparison(runs),
        charts=charts,
        poise_version=__version__,
    )


def write_html_report(run_dir_or_runs: str | Path | Sequence[str | Path], path: str | Path) -> Path:
    """Write one self-contained HTML report for a run folder, or several side by side.

    Every run is read and the page rendered before anything is written; the file appears whole
    (written next to ``path`` and renamed) or not at all. Returns the path written.
    """
    dirs = [run_dir_or_runs] if isinstance(run_dir_or_runs, (str, Path)) else list(run_dir_or_runs)
    if not dirs:
        raise PoiseError("write_html_report needs at least one run folder")
    html = render_html_report([read_run(d) for d in dirs])
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise write_error(out, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%d bytes)", out, len(html))
    return out


def write_run_report(run: Run) -> Path:
    """The report of one run, written into its folder (``Run.finish(..., report=this)``)."""
    return write_html_report(run.path, run.report_path)
