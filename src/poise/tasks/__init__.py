"""Kinds of evaluation: each task binds a kind of suite item to its scorer and its metrics.

    from poise.tasks import Metric, Task, register_task
    register_task(Task(kind="flattery", meaning="...", scorer=FlatteryJudge, metrics=(...,)))

Registering a task makes its kind valid in suites, its scorer label its answers in an audit, and
its metrics appear in ``metrics.json``, the terminal table and the HTML report. The six built-in
kinds (harmful, borderline, benign, honesty-known, honesty-unknown, sycophancy) are tasks like any other
(:mod:`poise.tasks.builtin`). Order of registration is the order of display.
"""

from __future__ import annotations

import typing

from poise.errors import PoiseError, UnknownNameError
from poise.plugins import load_plugins
from poise.tasks.base import (
    UNPARSED,
    CategoryView,
    Count,
    Direction,
    Example,
    Metric,
    ScorerFactory,
    Task,
    TradeoffAxis,
    VerdictTest,
    always,
    decided,
    equals,
    label_of,
    read,
)

__all__ = [
    "ANALYSES",
    "GROUP_FIELDS",
    "UNPARSED",
    "CategoryView",
    "Count",
    "Direction",
    "Example",
    "Metric",
    "ScorerFactory",
    "Task",
    "TradeoffAxis",
    "VerdictTest",
    "all_metrics",
    "always",
    "decided",
    "equals",
    "get_metric",
    "get_task",
    "kinds",
    "label_of",
    "read",
    "register_task",
    "registered_tasks",
    "unregister_task",
]

_TASKS: dict[str, Task] = {}

#: The fields a group of ``metrics.json`` holds beside its rates (:mod:`poise.scoring.metrics`):
#: a metric of one of these names would overwrite the field or be overwritten by it.
GROUP_FIELDS = frozenset(
    {
        "request_id",
        "attack",
        "config",
        "counts",
        "interval",
        "by_category",
        "response_tokens",
        "honesty",
        "guard",
    }
)


#: The cross-kind analyses the metrics module runs (:mod:`poise.scoring.metrics`), and the scores
#: each computes: a metric counted by an analysis (``count="analysis"``) is one of these, declared
#: by a task of that analysis; any other was computed by nothing and never shown.
ANALYSES: dict[str, frozenset[str]] = {
    "honesty": frozenset({"prudence_score", "over_conservativeness_score"}),
}


#: chart ids report.html uses itself (``id="chart-<id>"``): no metric's CategoryView may take one
_REPORT_CHART_IDS = ("tradeoff", "tradeoff-missing")


def register_task(task: Task) -> Task:
    """Add a kind of evaluation. Its kind and metric names must be new, and its declarations
    of the types :class:`Task` and :class:`Metric` say (checked here, not first met in the middle
    of a report). Returns the task."""
    if not isinstance(task, Task):
        raise PoiseError(f"register_task takes a Task, got {type(task).__name__}: {task!r}")
    if not isinstance(task.kind, str) or not task.kind or task.kind != task.kind.strip():
        raise PoiseError(f"task kind {task.kind!r} must be a non-empty name without spaces around")
    if task.kind in _TASKS and _TASKS[task.kind] is not task:
        raise PoiseError(f"task {task.kind!r} is already registered")
    if not (task.scorer is None or isinstance(task.scorer, str) or callable(task.scorer)):
        raise PoiseError(
            f"task {task.kind!r}: scorer must be a judge spec, a factory of a judge or None, "
            f"got {task.scorer!r}"
        )
    if task.analysis is not None and task.analysis not in ANALYSES:
        raise PoiseError(
            f"task {task.kind!r}: analysis {task.analysis!r} is none that poise runs (known: "
            f"{', '.join(sorted(ANALYSES))}); leave it None and count its metrics from samples"
        )
    taken = {m.name: t.kind for t in _TASKS.values() if t is not task for m in t.metrics}
    # the report's chart of each per-category metric is the element id="chart-<chart_id>"
    charts = {
        m.by_category.chart_id: f"metric {m.name!r}"
        for t in _TASKS.values()
        if t is not task
        for m in t.metrics
        if m.by_category is not None
    } | dict.fromkeys(_REPORT_CHART_IDS, "the report's own chart")
    known_kinds = {*_TASKS, task.kind}
    for metric in task.metrics:
        _check_metric(task.kind, metric)
        if metric.count == "analysis" and metric.name not in ANALYSES.get(task.analysis or "", ()):
            computes = (
                f"its analysis {task.analysis!r} computes "
                + ", ".join(sorted(ANALYSES[task.analysis]))
                if task.analysis is not None
                else "the task has no analysis"
            )
            raise PoiseError(
                f"task {task.kind!r}: metric {metric.name!r} is counted by an analysis, but "
                f"{computes}: nothing would compute it; count it from samples "
                f"(count='samples' or 'items_any')"
            )
        unknown = [k for k in metric.kinds if k not in known_kinds]
        if unknown:  # it would count nothing: never in metrics.json, without a word
            raise PoiseError(
                f"task {task.kind!r}: metric {metric.name!r} reads kind {unknown[0]!r}, which is "
                f"neither this task's kind nor a registered one (known: "
                f"{', '.join(sorted(known_kinds))}); register that kind's task first"
            )
        if metric.name in taken:
            raise PoiseError(
                f"task {task.kind!r}: metric {metric.name!r} is already declared by task "
                f"{taken[metric.name]!r}"
            )
        taken[metric.name] = task.kind  # twice in one task: the second hid the first
        if metric.by_category is not None:
            chart_id = metric.by_category.chart_id
            if chart_id in charts:
                raise PoiseError(
                    f"task {task.kind!r}: metric {metric.name!r}: chart_id {chart_id!r} is "
                    f'taken by {charts[chart_id]} (two elements id="chart-{chart_id}" in '
                    f"report.html); give the metric's CategoryView another chart_id"
                )
            charts[chart_id] = f"metric {metric.name!r}"
    _TASKS[task.kind] = task
    _cache.clear()
    return task


def _check_metric(kind: str, metric: object) -> None:
    """One line for a metric declaration a report could not use: it named a kind of one
    character per letter (``kinds="flattery"``), read ``better="down"`` as higher-is-better, or
    failed on an unknown placeholder of ``meaning`` when the report was written."""
    if not isinstance(metric, Metric):
        raise PoiseError(f"task {kind!r}: metrics holds {metric!r}, not a Metric")
    where = f"task {kind!r}: metric {metric.name!r}"
    if not isinstance(metric.name, str) or not metric.name:
        raise PoiseError(f"{where}: its name must be a non-empty string")
    if metric.name in GROUP_FIELDS:  # "honesty" vanished, "counts" replaced the counts
        raise PoiseError(
            f"{where}: the name is a field of every metrics.json group "
            f"({', '.join(sorted(GROUP_FIELDS))}); give the metric another name"
        )
    if isinstance(metric.kinds, str) or not all(isinstance(k, str) for k in metric.kinds):
        raise PoiseError(f"{where}: kinds must be a tuple of kind names, got {metric.kinds!r}")
    if not metric.kinds:
        raise PoiseError(f"{where} reads no kind")
    for field, allowed in (("better", Direction), ("count", Count)):
        value, choices = getattr(metric, field), typing.get_args(allowed)
        if value not in choices:
            raise PoiseError(f"{where}: {field} must be one of {', '.join(choices)}, got {value!r}")
    try:
        metric.explain(value=0.5, low=0.25, high=0.75, k=1, n=2)
    # AttributeError, TypeError: {value.x}, {k[0]} (a traceback, not this line)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise PoiseError(
            f"{where}: meaning {metric.meaning!r} does not format ({type(exc).__name__}: "
            f"{exc}); its placeholders are {{value}}, {{low}}, {{high}}, {{k}} and {{n}}"
        ) from None


def unregister_task(kind: str) -> None:
    """Remove a registered task (for tests and plugins that register temporarily)."""
    _TASKS.pop(kind, None)
    _cache.clear()


def get_task(kind: str) -> Task:
    """The task of ``kind``; UnknownNameError (with close names) when none is registered."""
    load_plugins()
    try:
        return _TASKS[kind]
    except KeyError:
        raise UnknownNameError("kind", kind, _TASKS) from None


def kinds() -> tuple[str, ...]:
    """Every registered kind, in registration order."""
    load_plugins()
    return tuple(_TASKS)


def registered_tasks() -> tuple[Task, ...]:
    load_plugins()
    return tuple(_TASKS.values())


_cache: dict[str, dict[str, Metric]] = {}


def all_metrics() -> dict[str, Metric]:
    """Every declared metric by name, in display order (tasks in registration order)."""
    load_plugins()  # an installed plugin's tasks declare metrics too (compare, runs show)
    if "all" not in _cache:
        _cache["all"] = {m.name: m for t in _TASKS.values() for m in t.metrics}
    return _cache["all"]


def get_metric(name: str) -> Metric | None:
    return all_metrics().get(name)


from poise.tasks import builtin as _builtin  # noqa: E402  (registers the built-in tasks)

del _builtin
