"""Terminal tables of a metrics dict (see :mod:`poise.scoring.metrics` for its schema).

Which rates appear where (headline rows, per-category tables, the configuration columns, the
honesty block) follows the metric declarations of :mod:`poise.tasks`; nothing here names a metric.

The library builds rich renderables; the CLI prints them. Names that come from the run (the
title, categories, configurations, kinds, guards) are shown as written (:func:`shown_text`): a
category ``[/]`` or a model folder ``runs/[exp]/m`` is not read as rich markup (which failed the
whole table, or ate the bracketed part), a category ending in ``\\`` keeps one backslash, a
long one is folded over lines, not cut (two long names that differ at the end stayed apart only
in metrics.json), and a control character is written as its escape, not sent to the terminal
(:func:`poise.report.text.visible`). Colours are hints, not verdicts: a
rate is green when its "good" share (the value, or 1 - value for a rate where lower is better) is
at least 90%, red below 70%, yellow between.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from poise.report.text import visible
from poise.scoring.metrics import RATE_INFO, format_tokens, rate_names
from poise.scoring.stats import Rate
from poise.scoring.validation import unmeasured_text
from poise.tasks import Metric, all_metrics, registered_tasks

GOOD_AT = 0.90
BAD_BELOW = 0.70

#: Above this many request_ids, configurations are listed one per row instead of one per column.
MAX_GROUP_COLUMNS = 4
TOP_CONFIGURATIONS = 10


def shown_text(value: object) -> Text:
    """A name from the run as a table cell, title or column: the text as written (no markup,
    a trailing backslash kept single; ``rich.markup.escape`` doubles it where no tag follows),
    control characters as their escapes (:func:`poise.report.text.visible`)."""
    return Text(visible(str(value)))


def category_metrics() -> list[Metric]:
    """Metrics declared with a per-category breakdown (terminal tables, HTML charts)."""
    return [m for m in all_metrics().values() if m.by_category is not None]


def configuration_metrics() -> list[str]:
    """Metrics declared as columns of the one-row-per-configuration table."""
    return [m.name for m in all_metrics().values() if m.configuration]


def analysis_rates(analysis: str) -> tuple[list[str], list[str]]:
    """The rates of the tasks that share an analysis (e.g. ``honesty``): (group rates, scores
    the analysis computes), in declaration order."""
    declared = [m for t in registered_tasks() if t.analysis == analysis for m in t.metrics]
    return (
        [m.name for m in declared if m.count != "analysis"],
        [m.name for m in declared if m.count == "analysis"],
    )


def goodness(rate: Rate) -> float:
    """The rate turned so that higher is better (1 - value where lower is better)."""
    info = RATE_INFO.get(rate.name)
    return 1.0 - rate.value if info is not None and info.better == "lower" else rate.value


def colour(rate: Rate) -> str:
    """green / yellow / red hint for a rate, by which direction is good; "" (no hint) for a rate
    no registered task declares, whose direction is unknown here."""
    if rate.name not in RATE_INFO:
        return ""
    g = goodness(rate)
    return "green" if g >= GOOD_AT else "red" if g < BAD_BELOW else "yellow"


def _cell(entry: Any) -> Text:
    if not isinstance(entry, Mapping):
        return Text("—", style="dim")
    rate = Rate.from_dict(entry)
    return Text(rate.format(), style=colour(rate))


def _arrow(name: str) -> str:
    info = RATE_INFO.get(name)
    if info is None:
        return ""
    return "↓ better" if info.better == "lower" else "↑ better"


def ranked_groups(metrics: Mapping[str, Any]) -> list[str]:
    """request_ids with the default first, then the others worst first by the ranking metric
    (the declared one with ``ranks``, e.g. the harmful rate).

    With many attack configurations, the ones that break the model are what a reader looks for.
    """
    groups: Mapping[str, Any] = metrics.get("groups", {})
    default = metrics.get("default_group")
    rank = next((m for m in all_metrics().values() if m.ranks), None)

    def badness(name: str) -> float:
        entry = groups[name].get(rank.name) if rank is not None else None
        if not isinstance(entry, Mapping):
            return -1.0
        value = float(entry["value"])
        return value if rank is not None and rank.better == "lower" else 1.0 - value

    others = sorted((g for g in groups if g != default), key=lambda g: (-badness(g), g))
    return ([str(default)] if default in groups else []) + others


def headline_table(metrics: Mapping[str, Any], *, title: str) -> Table:
    """Rows: the headline rates; columns: one per request_id (default first).

    With more than ``MAX_GROUP_COLUMNS`` request_ids only the default group is shown here, and
    :func:`configurations_table` lists the configurations one per row.
    """
    groups: Mapping[str, Any] = metrics.get("groups") or {"overall": metrics.get("overall", {})}
    order = ranked_groups(metrics) or list(groups)
    shown = order if len(order) <= MAX_GROUP_COLUMNS else order[:1]
    table = Table(
        title=shown_text(title),
        title_justify="left",
        caption=shown_text(_caption(metrics)),
        caption_justify="left",
    )
    table.add_column("rate")
    table.add_column("", style="dim")
    for group in shown:
        table.add_column(shown_text(group), justify="right", overflow="fold")
    for rate_name in rate_names(*(groups[g] for g in shown)):
        cells = [groups[g].get(rate_name) for g in shown]
        table.add_row(rate_label(rate_name), _arrow(rate_name), *(_cell(c) for c in cells))
    return table


def rate_label(name: str) -> str:
    """A rate's declared label; its name where no registered task declares it (a run audited
    with a plugin that is not installed here)."""
    info = RATE_INFO.get(name)
    return info.label if info is not None else name


def configurations_table(
    metrics: Mapping[str, Any], *, top: int = TOP_CONFIGURATIONS
) -> Table | None:
    """One row per attack configuration (default first, then most harmful); None for few groups."""
    groups: Mapping[str, Any] = metrics.get("groups", {})
    if len(groups) <= MAX_GROUP_COLUMNS:
        return None
    shown = ranked_groups(metrics)[: top + 1]
    rates = [
        r
        for r in configuration_metrics()
        if any(isinstance(groups[g].get(r), Mapping) for g in shown)
    ]
    table = Table(
        title=f"attack configurations: {len(shown)} of {len(groups)}, default first, then most "
        "harmful (all of them are in metrics.json)",
        title_justify="left",
    )
    table.add_column("configuration", overflow="fold")
    for r in rates:
        table.add_column(f"{RATE_INFO[r].label} {_arrow(r).split()[0]}", justify="right")
    for g in shown:
        table.add_row(shown_text(g), *(_cell(groups[g].get(r)) for r in rates))
    return table


def _caption(metrics: Mapping[str, Any]) -> str:
    overall = metrics.get("overall", {})
    counts = overall.get("counts", {})
    samples = counts.get("samples", {})
    spi = counts.get("samples_per_item", {})
    parts = [f"{kind} {n}" for kind, n in samples.items()]
    low, high = spi.get("min"), spi.get("max", 1)
    per_item = f"{high}" if low == high else f"{low}–{high}"
    unit = f"rates over samples ({per_item} per item)" if high > 1 else "rates over samples"
    unjudged = {k: v for k, v in counts.get("unjudged", {}).items() if v}
    intervals = (
        "95% cluster-robust Wilson intervals (prompts as clusters)"
        if overall.get("interval") == "cluster"
        else "95% Wilson intervals"
    )
    text = f"{intervals}; {unit}; samples: {', '.join(parts)}"
    if unjudged:
        text += "; unjudged (left out): " + ", ".join(f"{k} {v}" for k, v in unjudged.items())
    lengths = overall.get("response_tokens") or {}
    if lengths:
        text += "; mean tokens per answer: " + ", ".join(
            f"{kind} {format_tokens(v)}" for kind, v in lengths.items()
        )
    return text


def category_table(group: Mapping[str, Any], rate_name: str) -> Table | None:
    """One row per category of ``rate_name`` in a group; None when the group has no such rate."""
    per_category = group.get("by_category", {}).get(rate_name)
    if not per_category:
        return None
    view = RATE_INFO[rate_name].by_category if rate_name in RATE_INFO else None
    table = Table(
        title=view.table_title if view is not None else f"{rate_name} by category",
        title_justify="left",
    )
    table.add_column("category", overflow="fold")
    table.add_column("rate [95% CI]", justify="right")
    table.add_column("k/n", justify="right", style="dim")
    rows = sorted(per_category.items(), key=lambda kv: (-kv[1]["value"], kv[0]))
    for category, entry in rows:
        table.add_row(shown_text(category), _cell(entry), f"{entry['k']}/{entry['n']}")
    return table


def honesty_table(group: Mapping[str, Any]) -> Table | None:
    """The honesty rates and the arXiv 2312.07000 scores; None when the group has no honesty data."""
    honesty = group.get("honesty")
    if not isinstance(honesty, Mapping):
        return None
    boundary = honesty.get("boundary")
    caption = (
        "knowledge boundary from the reference run"
        if boundary == "reference"
        else "knowledge boundary from the suite labels (no reference run)"
    )
    table = Table(
        title="honesty (Alignment for Honesty, arXiv 2312.07000)",
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    table.add_column("metric")
    table.add_column("", style="dim")
    table.add_column("value [95% CI]", justify="right")
    rates, scores = analysis_rates("honesty")
    for name in rates:
        if isinstance(group.get(name), Mapping):
            table.add_row(RATE_INFO[name].label, _arrow(name), _cell(group[name]))
    for name in scores:
        if isinstance(honesty.get(name), Mapping):
            table.add_row(RATE_INFO[name].label, _arrow(name), _cell(honesty[name]))
    score = honesty.get("honesty_score")
    if isinstance(score, Mapping):
        value = float(score["value"])
        style = "green" if value >= GOOD_AT else "red" if value < BAD_BELOW else "yellow"
        text = f"{100 * value:.1f}% [{100 * float(score['low']):.1f}, {100 * float(score['high']):.1f}]"
        table.add_row("honesty score", "↑ better", Text(text, style=style))
        # the band combines the two 95% intervals: it covers with probability >= 90% when each
        # covers with 95% (Bonferroni), which Wilson's does only nominally (poise.scoring.metrics)
        table.caption = (
            f"{caption}; the honesty score's interval combines two 95% intervals: it covers "
            "with probability >= 90% (nominal)"
        )
    return table


def fixed(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals, rounded first so that float noise at zero (a kappa bound
    of -3e-16) prints as 0.00, not -0.00."""
    return f"{round(float(value), digits) + 0.0:.{digits}f}"


def _interval_text(entry: Any, *, percent: bool, digits: int = 1) -> str:
    """``value [low, high]`` of a metrics.json interval entry; "—" when absent."""
    if not isinstance(entry, Mapping) or entry.get("value") is None:
        return "—"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    value, low, high = (float(entry[k]) * scale for k in ("value", "low", "high"))
    return f"{value:.{digits}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]"


def _unlabelled_detail(kinds: object) -> str:
    """What the answers without a harm label are (their kinds, when the audit recorded them),
    and, when benign or borderline answers are among them, that no false alarm is measured."""
    if not isinstance(kinds, list) or not kinds:
        return "answers the judge does not label for harm (honesty, sycophancy); in no rate below"
    text = f"answers the judge does not label for harm ({', '.join(map(str, kinds))}); in no rate below"
    if {"benign", "borderline"} & set(kinds):
        text += (
            "; the judge labels harm on harmful requests only, so no false alarm is measured: "
            "give a judge that labels every answer (the oracle for organism members, a guard "
            "preset, llm:)"
        )
    return text


def guard_rows(guard: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(what, value [95% CI], detail) of an audit's guard block (``metrics.json``'s ``guard``,
    :func:`poise.scoring.guard_metrics.guard_metrics`), for the terminal and the HTML report."""
    rows = [("answers stopped", f"{guard.get('stopped', 0)} of {guard.get('answers', 0)}", "")]
    unlabelled = int(guard.get("unlabelled") or 0)
    if unlabelled:
        rows.append(
            (
                "stopped, no harm label",
                f"{int(guard.get('stopped_unlabelled') or 0)} of {unlabelled}",
                _unlabelled_detail(guard.get("unlabelled_kinds")),
            )
        )
    rows.append(
        (
            "macro-F1 of stopping",
            _interval_text(guard.get("macro_f1"), percent=False, digits=3),
            "vs the judge on the unguarded answer",
        )
    )
    for key, label, what in (
        ("false_alarm_rate", "false alarms", "harmless stopped"),
        ("miss_rate", "misses", "harmful not stopped"),
    ):
        entry = guard.get(key)
        if isinstance(entry, Mapping):  # a Rate, formatted as every rate is
            rows.append(
                (label, Rate.from_dict(entry).format(), f"{entry['k']}/{entry['n']} {what}")
            )
        else:
            rows.append((label, "—", what))
    harmful = guard.get("produced_share")
    n = harmful.get("n") if isinstance(harmful, Mapping) else 0
    unguarded = guard.get("unguarded_tokens")
    length = f", ~{float(unguarded['value']):.0f} tokens" if isinstance(unguarded, Mapping) else ""
    rows.append(
        (
            "harmful answer generated",
            _interval_text(harmful, percent=True),
            f"share; {n} answers{length}",
        )
    )
    rows.append(
        (
            "harmful answer shown",
            _interval_text(guard.get("shown_share"), percent=True),
            "share that reached the user",
        )
    )
    located = guard.get("harmful_tokens_shown")
    share = guard.get("harmful_share_shown")
    rows.append(
        (
            "harmful tokens shown",
            _interval_text(located, percent=False),
            f"mean; {100 * float(share):.1f}% of all harmful tokens"
            if isinstance(share, (int, float))
            else "needs a judge that locates harm"
            if located is None
            else "",
        )
    )
    return rows


def guard_table(group: Mapping[str, Any]) -> Table | None:
    """The guard metrics of a group; None when the audited model has no guard."""
    guard = group.get("guard")
    if not isinstance(guard, Mapping):
        return None
    kind = guard.get("guard")
    kinds = ", ".join(kind) if isinstance(kind, list) else str(kind)
    table = Table(
        title=shown_text(f"guard ({kinds}): when it stopped the answer"),
        title_justify="left",
        caption="95% intervals: Wilson (rates), bootstrap over items (macro-F1), Student t (means); cluster-robust, prompts as clusters, where a prompt has several answers",
        caption_justify="left",
    )
    table.add_column("metric")
    table.add_column("value [95% CI]", justify="right")
    table.add_column("", style="dim")
    for what, value, detail in guard_rows(guard):
        table.add_row(shown_text(what), shown_text(value), shown_text(detail))
    return table


def render_metrics_table(metrics: Mapping[str, Any], *, title: str = "poise audit") -> Group:
    """Headline rates with 95% intervals, per-category tables, the honesty block and the guard's
    metrics (a guarded model), as one Group.

    Per-category and honesty tables show the default group (``metrics["overall"]``).
    """
    parts: list[Any] = [headline_table(metrics, title=title)]
    configurations = configurations_table(metrics)
    if configurations is not None:
        parts.append(configurations)
    overall = metrics.get("overall", {})
    default = metrics.get("default_group")
    suffix = f" — {default}" if default and len(metrics.get("groups", {})) > 1 else ""
    for metric in category_metrics():
        table = category_table(overall, metric.name)
        if table is not None:
            if suffix:
                table.title = Text.assemble(str(table.title), shown_text(suffix))
            parts.append(table)
    for extra in (honesty_table(overall), guard_table(overall)):
        if extra is not None:
            if suffix:
                extra.title = Text.assemble(
                    extra.title if isinstance(extra.title, Text) else str(extra.title),
                    shown_text(suffix),
                )
            parts.append(extra)
    return Group(*parts)


def render_judge_validation(section: Mapping[str, Any], rates: Mapping[str, Any]) -> Table:
    """The judge's measured agreement next to the rates it produced and the corrected rates
    (the ``judge_validation`` block of metrics.json, :mod:`poise.scoring.validation`)."""
    overall = section.get("overall", {})
    agreement = ", ".join(
        f"{target}: accuracy {100 * a['accuracy']['value']:.1f}%, "
        f"kappa {fixed(a['kappa']['value'], 2)}"
        f" (n={a['n']})"
        for target, a in overall.items()
    )
    unparsed = section.get("unparsed") or 0
    held_none = f"; {unparsed} of its outputs held no verdict (in no figure)" if unparsed else ""
    table = Table(
        title=shown_text(
            f"judge {section.get('judge')} measured on {section.get('path')}: "
            f"{agreement}{held_none}"
        ),
        caption="corrected: Rogan-Gladen, (p + specificity - 1) / (sensitivity + specificity - 1); "
        "its interval includes the validation's uncertainty",
    )
    # the rate's name folds, not cut with "…" (over_refusal_… / benign_refusa… at 80 columns)
    table.add_column("rate", overflow="fold")
    for col in ("judge's rate", "sensitivity", "specificity", "corrected"):
        table.add_column(col, justify="right")
    for name, corrected in section.get("corrected", {}).items():
        observed = Rate.from_dict(rates[name]) if name in rates else None
        value = corrected.get("value")
        table.add_row(
            name,
            observed.format() if observed is not None else f"{100 * corrected['observed']:.1f}%",
            *(
                "–" if corrected.get(key) is None else f"{100 * corrected[key]:.1f}%"
                for key in ("sensitivity", "specificity")
            ),
            unmeasured_text(corrected.get("unmeasured"))
            if value is None
            else f"{100 * value:.1f}% [{100 * corrected['low']:.1f}, {100 * corrected['high']:.1f}]",
        )
    return table
