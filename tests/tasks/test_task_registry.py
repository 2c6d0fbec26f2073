"""The task registry and the built-in declarations."""

from __future__ import annotations

import pytest

from poise.errors import PoiseError, UnknownNameError
from poise.tasks import (
    Metric,
    Task,
    all_metrics,
    always,
    equals,
    get_metric,
    get_task,
    kinds,
    label_of,
    register_task,
    unregister_task,
)


def test_the_builtin_kinds_and_metrics_in_display_order() -> None:
    assert kinds()[:5] == ("harmful", "borderline", "benign", "honesty-known", "honesty-unknown")
    assert list(all_metrics())[:12] == [
        "harmful_rate",
        "refusal_rate",
        "harmful_any_rate",
        "over_refusal_rate",
        "borderline_helpful_rate",
        "helpful_rate",
        "benign_refusal_rate",
        "known_accuracy",
        "unknown_idk_rate",
        "unknown_fabrication_rate",
        "prudence_score",
        "over_conservativeness_score",
    ]
    for metric in all_metrics().values():
        assert metric.kinds and set(metric.kinds) <= set(kinds())
        assert metric.better in ("lower", "higher") and metric.label and metric.meaning


def test_every_builtin_metric_reads_its_declared_kind() -> None:
    harmful = get_metric("harmful_rate")
    assert harmful is not None and harmful.kind == "harmful"
    assert harmful.success({"refused": False, "harmful": True})
    assert not harmful.success({"refused": True, "harmful": False})
    assert not harmful.judged({"refused": True, "harmful": None})  # unjudged: left out


def test_open_labels_are_read_beside_the_fixed_fields() -> None:
    verdict = {"refused": False, "labels": {"agrees": True}}
    assert label_of(verdict, "agrees") is True
    assert label_of(verdict, "refused") is False
    assert label_of(verdict, "missing") is None
    assert equals("agrees", True)(verdict) and not equals("agrees", False)(verdict)


@pytest.mark.parametrize(
    ("written", "true", "false"),
    [
        (True, True, False),
        (False, False, True),
        (1, True, False),  # JSON's 1 for true (a scorer writing ints read 0% before)
        (0, False, True),
        (1.0, False, False),  # not a truth value: neither
        ("true", False, False),
        (2, False, False),
        (None, False, False),
    ],
)
def test_a_truth_value_test_reads_true_false_and_their_integers(
    written: object, true: bool, false: bool
) -> None:
    verdict = {"refused": False, "labels": {"accurate": written}}
    assert equals("accurate", True)(verdict) is true
    assert equals("accurate", False)(verdict) is false
    assert equals("accurate", None)(verdict) is (written is None)


def test_duplicates_are_refused_and_unregistering_removes() -> None:
    with pytest.raises(PoiseError, match="task 'harmful' is already registered"):
        register_task(Task(kind="harmful", meaning="again"))
    clash = Metric("harmful_rate", ("x-kind",), "lower", "l", "m")
    with pytest.raises(PoiseError, match="metric 'harmful_rate' is already declared by task"):
        register_task(Task(kind="x-kind", meaning="m", metrics=(clash,)))
    assert "x-kind" not in kinds()
    register_task(Task(kind="x-kind", meaning="m"))
    assert "x-kind" in kinds()
    unregister_task("x-kind")
    with pytest.raises(UnknownNameError, match="unknown kind 'x-kind'"):
        get_task("x-kind")


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        # a string of kinds read one kind per letter: the metric counted nothing
        (Metric("y_rate", "y-kind", "lower", "l", "m"), "kinds must be a tuple of kind names"),  # type: ignore[arg-type]
        # "down" was read as higher-is-better; the HTML report failed on it (a KeyError)
        (Metric("y_rate", ("y-kind",), "down", "l", "m"), "better must be one of lower, higher"),  # type: ignore[arg-type]
        # an unknown way of counting: the metric was silently never computed
        (Metric("y_rate", ("y-kind",), "lower", "l", "m", count="items"), "count must be one of"),  # type: ignore[arg-type]
        # a misspelt placeholder failed when the report was written, after the audit
        (Metric("y_rate", ("y-kind",), "lower", "l", "{valu} of answers"), "does not format"),
        # an attribute or an index of a placeholder: an AttributeError / TypeError traceback
        (Metric("y_rate", ("y-kind",), "lower", "l", "{value.real} of answers"), "does not format"),
        (Metric("y_rate", ("y-kind",), "lower", "l", "{k[0]} of {n}"), "does not format"),
    ],
)
def test_a_metric_declaration_a_report_cannot_use_is_refused_when_registered(
    metric: Metric, message: str
) -> None:
    with pytest.raises(PoiseError, match=rf"task 'y-kind': metric 'y_rate'.*{message}"):
        register_task(Task(kind="y-kind", meaning="m", metrics=(metric,)))
    assert "y-kind" not in kinds()


def test_a_task_of_the_wrong_type_or_a_metric_twice_in_one_task_is_refused() -> None:
    with pytest.raises(PoiseError, match="register_task takes a Task, got str"):
        register_task("y-kind")  # type: ignore[arg-type]
    with pytest.raises(PoiseError, match="metrics holds 'y_rate', not a Metric"):
        register_task(Task(kind="y-kind", meaning="m", metrics=("y_rate",)))  # type: ignore[arg-type]
    with pytest.raises(PoiseError, match="scorer must be a judge spec"):
        register_task(Task(kind="y-kind", meaning="m", scorer=3))  # type: ignore[arg-type]
    twice = Metric("y_rate", ("y-kind",), "lower", "l", "m")  # the second hid the first
    with pytest.raises(PoiseError, match="metric 'y_rate' is already declared by task 'y-kind'"):
        register_task(Task(kind="y-kind", meaning="m", metrics=(twice, twice)))
    assert "y-kind" not in kinds()


@pytest.mark.parametrize("name", ["honesty", "counts", "by_category", "config"])
def test_a_metric_named_as_a_field_of_a_metrics_group_is_refused(name: str) -> None:
    # "honesty" was replaced by the honesty analysis (the rate vanished), "counts" replaced the
    # group's counts, "by_category" made metrics.json unreadable once the audit had run
    metric = Metric(name, ("y-kind",), "lower", "l", "{value}")
    with pytest.raises(PoiseError, match=rf"metric '{name}': the name is a field of every"):
        register_task(Task(kind="y-kind", meaning="m", metrics=(metric,)))
    assert "y-kind" not in kinds()


def test_the_group_fields_are_those_compute_metrics_writes() -> None:
    from poise.scoring.metrics import compute_metrics
    from poise.tasks import GROUP_FIELDS

    def record(item: str, kind: str, sample: int, **verdict: object) -> dict[str, object]:
        return {
            "item_id": item,
            "suite": kind,
            "kind": kind,
            "category": "c",
            "request_id": "greedy",
            "attack": "greedy",
            "config": {"temperature": 1.0, "n": 2},
            "sample_index": sample,
            "prompt": "p",
            "completion": "a",
            "num_tokens": 3,
            "finish_reason": "stop",
            "reference": None,
            "verdict": {"label": "x", "refused": False, **verdict},
            "judge": "oracle",
        }

    records = [
        record(f"{kind}-{i}", kind, s, harmful=bool(i), helpful=True, honesty="correct")
        for kind in ("harmful", "benign", "honesty-known", "honesty-unknown")
        for i in range(2)
        for s in range(2)
    ]
    group = compute_metrics(records)["overall"]
    rates = {name for name in group if name in all_metrics()}
    assert rates and set(group) - rates <= GROUP_FIELDS


def test_a_metric_that_reads_an_unregistered_kind_is_refused() -> None:
    # a misspelt kind: the metric counted nothing and was missing from metrics.json unsaid
    metric = Metric("y_rate", ("y-knid",), "lower", "l", "{value}")
    with pytest.raises(PoiseError, match="metric 'y_rate' reads kind 'y-knid', which is neither"):
        register_task(Task(kind="y-kind", meaning="m", metrics=(metric,)))
    assert "y-kind" not in kinds()
    # its own kind and the kinds registered before it are read
    both = Metric("y_rate", ("y-kind", "harmful"), "lower", "l", "{value}")
    register_task(Task(kind="y-kind", meaning="m", metrics=(both,)))
    unregister_task("y-kind")


def _medical_records(labels: list[bool | None]) -> list[dict[str, object]]:
    """Answers to a plugin kind: the audit's judge decided ``refused`` of each, and the open
    label ``accurate`` where ``labels`` says (None: the judge did not write it)."""
    return [
        {
            "item_id": f"med-{i}",
            "kind": "y-kind",
            "category": "c",
            "verdict": {
                "label": "x",
                "refused": False,
                **({"labels": {"accurate": label}} if label is not None else {}),
            },
        }
        for i, label in enumerate(labels)
    ]


def test_a_metric_counts_as_trials_only_answers_that_decide_the_label_it_reads() -> None:
    from poise.scoring.metrics import compute_metrics

    # success reads the open label 'accurate'; judged not given. A judge that never writes the
    # label (the audit's refusal detector) made it 0 of 20, 0.0% [0.0, 16.1], as if measured
    metric = Metric(
        "y_accuracy", ("y-kind",), "higher", "l", "{value}", success=equals("accurate", True)
    )
    register_task(Task(kind="y-kind", meaning="m", metrics=(metric,)))
    try:
        group = compute_metrics(_medical_records([None] * 20))["overall"]
        assert "y_accuracy" not in group  # no answer decided it: absent, not 0%
        assert group["counts"]["unjudged"] == {"y-kind": 20}  # and said so in the counts
        group = compute_metrics(_medical_records([True, False, None, None, True]))["overall"]
        assert (group["y_accuracy"]["k"], group["y_accuracy"]["n"]) == (2, 3)
        assert group["counts"]["unjudged"] == {"y-kind": 2}
    finally:
        unregister_task("y-kind")
    # a test on a field every verdict holds, or an explicit judged, counts as declared
    refused = Metric(
        "y_refusal", ("y-kind",), "lower", "l", "{value}", success=equals("refused", True)
    )
    assert refused.judged({"refused": False})
    everyone = Metric(
        "y_b", ("y-kind",), "lower", "l", "{value}", success=equals("accurate", True), judged=always
    )
    assert everyone.judged({"refused": False})


def test_a_metric_counted_by_an_analysis_that_does_not_compute_it_is_refused() -> None:
    # count="analysis" on a task without that analysis: computed by nothing, never shown
    score = Metric("y_score", ("y-kind",), "higher", "l", "{value}", count="analysis")
    with pytest.raises(
        PoiseError, match="metric 'y_score' is counted by an analysis, but the task has no analysis"
    ):
        register_task(Task(kind="y-kind", meaning="m", metrics=(score,)))
    with pytest.raises(
        PoiseError,
        match="its analysis 'honesty' computes over_conservativeness_score, prudence_score",
    ):
        register_task(Task(kind="y-kind", meaning="m", metrics=(score,), analysis="honesty"))
    with pytest.raises(PoiseError, match="analysis 'fairness' is none that poise runs"):
        register_task(Task(kind="y-kind", meaning="m", analysis="fairness"))
    assert "y-kind" not in kinds()


def test_the_analyses_declare_the_scores_the_metrics_module_computes() -> None:
    from poise.scoring.metrics import honesty_scores
    from poise.tasks import ANALYSES

    computed = honesty_scores({"correct": 1, "idk": 1}, {"wrong": 1, "idk": 1})
    assert ANALYSES["honesty"] == set(computed) - {"honesty_score"}
    declared = {m.name for m in all_metrics().values() if m.count == "analysis"}
    assert declared == ANALYSES["honesty"]


def test_a_per_category_chart_id_taken_in_the_report_is_refused() -> None:
    from poise.tasks import CategoryView

    def view(chart_id: str) -> CategoryView:
        return CategoryView(chart_id, "t", "t", "a", "d")

    # two elements id="chart-harmful" in report.html, the second chart unreachable by its id
    clash = Metric("y_rate", ("y-kind",), "lower", "l", "{value}", by_category=view("harmful"))
    with pytest.raises(PoiseError, match="chart_id 'harmful' is taken by metric 'harmful_rate'"):
        register_task(Task(kind="y-kind", meaning="m", metrics=(clash,)))
    own = Metric("y_rate", ("y-kind",), "lower", "l", "{value}", by_category=view("tradeoff"))
    with pytest.raises(PoiseError, match="chart_id 'tradeoff' is taken by the report's own"):
        register_task(Task(kind="y-kind", meaning="m", metrics=(own,)))
    twice = (
        Metric("y_a", ("y-kind",), "lower", "l", "{value}", by_category=view("y")),
        Metric("y_b", ("y-kind",), "lower", "l", "{value}", by_category=view("y")),
    )
    with pytest.raises(PoiseError, match="chart_id 'y' is taken by metric 'y_a'"):
        register_task(Task(kind="y-kind", meaning="m", metrics=twice))
    assert "y-kind" not in kinds()
    register_task(Task(kind="y-kind", meaning="m", metrics=twice[:1]))
    unregister_task("y-kind")
