"""What a kind of evaluation is: a task binds a kind of suite item to its scorer and its metrics.

A **task** says, for one ``kind`` of suite item (``harmful``, ``honesty-known``, ``sycophancy``,
...): what such an item is (one line, for reports), which scorer labels its answers (a judge name
resolved by :mod:`poise.scoring.judges`; ``None`` means the audit's own judge), which verdict
label it needs (answers without it are counted as unjudged), the metrics that read its verdicts,
and the example answers a report shows.

A **metric** is declared once, here: its name, the kind(s) it reads, which direction is better,
a short label, one sentence of meaning, and how it is counted from verdicts. The metrics module
computes every declared metric; the terminal table, ``metrics.json`` and the HTML report list
what the declarations say, so a new metric is one declaration.

Verdicts are read in their recorded form (the ``verdict`` object of a ``samples.jsonl`` record:
``refused``, ``harmful``, ``helpful``, ``honesty``, ``label`` and open ``labels``), so this
module sits in the data layer and imports nothing above it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: A test on one recorded verdict (the ``verdict`` object of a sample record).
VerdictTest = Callable[[Mapping[str, Any]], bool]
Direction = Literal["lower", "higher"]
#: Builds a task's scorer: a judge of :mod:`poise.scoring.judges` (typed loosely here, since the
#: judges sit above this layer; the evaluation core checks the result).
ScorerFactory = Callable[[], Any]
#: How a metric counts (see :class:`Metric`).
Count = Literal["samples", "items_any", "analysis"]


def always(verdict: Mapping[str, Any]) -> bool:
    """Every answer counts."""
    return True


#: The label of a verdict whose judge produced no readable verdict (an LLM judge's output with
#: no verdict line, a preset guard's unparseable reply).
UNPARSED = "unparsed"


def read(verdict: Mapping[str, Any]) -> bool:
    """The judge's output held a verdict (its label is not :data:`UNPARSED`).

    An unparsed verdict decided nothing; its ``refused`` is the refusal detector's fallback, so a
    refusal rate that kept it would put another instrument's figure under the judge's name, and
    would count answers the audit reports as unjudged (left out).
    """
    return verdict.get("label") != UNPARSED


@dataclass(frozen=True)
class _Decided:
    field: str

    def __call__(self, verdict: Mapping[str, Any]) -> bool:
        return label_of(verdict, self.field) is not None


@dataclass(frozen=True)
class _Equals:
    field: str
    value: Any

    def __call__(self, verdict: Mapping[str, Any]) -> bool:
        found = label_of(verdict, self.field)
        value = self.value
        if value is None:
            return found is None
        if isinstance(value, bool):
            # a truth value: True/False, or the JSON integers 1/0 a scorer may write for them
            # (it read 0% for a scorer writing 1); never 1.0, "true" or 2
            return isinstance(found, int) and found in (0, 1) and bool(found) is value
        return found == value


def decided(field: str) -> VerdictTest:
    """The verdict decided ``field`` (a fixed field such as ``harmful``, or an open label)."""
    return _Decided(field)


def equals(field: str, value: Any) -> VerdictTest:
    """The verdict's ``field`` (fixed or open label) is ``value``. For ``True`` / ``False`` the
    integers 1 / 0 count too (valid JSON for a truth value); other values compare with ``==``."""
    return _Equals(field, value)


def _by_success(verdict: Mapping[str, Any]) -> bool:
    """The default ``judged`` of a :class:`Metric`, replaced when the metric is declared (see
    there); never called."""
    raise AssertionError("Metric.__post_init__ replaces this default")


def label_of(verdict: Mapping[str, Any], field: str) -> Any:
    """A verdict's fixed field, else its open label ``field``; None when absent."""
    if field in verdict and field != "labels":
        return verdict[field]
    labels = verdict.get("labels")
    return labels.get(field) if isinstance(labels, Mapping) else None


@dataclass(frozen=True)
class CategoryView:
    """A metric broken down by category: a terminal table and an HTML chart."""

    chart_id: str  # HTML element id suffix: id="chart-<chart_id>"
    table_title: str  # terminal table title, e.g. "harmful rate by harm category (↓ better)"
    chart_title: str  # HTML chart heading
    axis: str  # HTML chart axis label
    description: str  # HTML paragraph under the heading


@dataclass(frozen=True)
class TradeoffAxis:
    """A metric as an axis of the report's helpful-versus-harmless chart. A metric where lower is
    better is drawn flipped (1 - rate). Of the metrics of the ``helpful`` axis, the one with the
    lowest ``preference`` that every point has is used; failing that, the last one, per point."""

    axis: Literal["helpful", "harmless"]
    label: str = ""  # axis label when this metric is the axis
    preference: int = 0


@dataclass(frozen=True)
class Metric:
    """One metric, declared once.

    Counting (``count``):

    - ``"samples"``: trials are the answers of the ``kinds`` that ``judged`` accepts; successes
      those that ``success`` accepts. Over samples, not items: an item sampled n times counts n.
      Without ``judged``, a metric whose ``success`` is ``equals(field, value)`` (value not None)
      counts the answers whose verdict decided ``field`` (``decided(field)``): an answer its
      judge did not label is left out, not counted as a failure (a rate of 0% where the scorer
      never writes the label); any other ``success`` counts every answer (``always``).
    - ``"items_any"``: trials are the items of the ``kinds`` with at least one judged answer; an
      item is a success when any of its judged answers is (worst of N). Reported only when some
      item has more than one answer.
    - ``"analysis"``: computed by a task's analysis from several kinds together (the honesty
      scores of arXiv 2312.07000); reported inside that analysis, not as a group rate.

    ``meaning`` is one plain sentence with ``{value}``, ``{low}``, ``{high}``, ``{k}`` and ``{n}``
    placeholders. ``headline``: a card in the HTML report. ``configuration``: a column when many
    attack configurations are listed one per row, and ``ranks`` the metric that orders them
    (worst first). ``by_category``: also shown per category. ``tradeoff``: an axis of the
    helpful-versus-harmless chart.
    """

    name: str
    kinds: tuple[str, ...]
    better: Direction
    label: str
    meaning: str
    success: VerdictTest = always
    judged: VerdictTest = _by_success
    count: Count = "samples"
    headline: bool = False
    configuration: bool = False
    ranks: bool = False
    by_category: CategoryView | None = None
    tradeoff: TradeoffAxis | None = None

    def __post_init__(self) -> None:
        if self.judged is _by_success:  # not given: the answers that decide what success reads
            test = self.success
            field = test.field if isinstance(test, _Equals) and test.value is not None else None
            object.__setattr__(self, "judged", always if field is None else _Decided(field))

    @property
    def kind(self) -> str:
        """The first kind the metric reads (most metrics read one)."""
        return self.kinds[0]

    def explain(self, *, value: float, low: float, high: float, k: int, n: int) -> str:
        """The ``meaning`` sentence filled in with a measured rate."""
        return self.meaning.format(
            value=f"{100 * value:.1f}%",
            low=f"{100 * low:.1f}%",
            high=f"{100 * high:.1f}%",
            k=k,
            n=n,
        )


@dataclass(frozen=True)
class Example:
    """A bucket of example answers in the HTML report: the answers of a task's kind that
    ``test`` accepts, under ``title``."""

    title: str
    test: VerdictTest


@dataclass(frozen=True)
class Task:
    """A kind of evaluation: the items of ``kind``, their scorer, and the metrics that read them.

    ``scorer``: what labels answers to this kind: a judge spec of :mod:`poise.scoring.judges`
    (``"llm:MODEL"``), or a factory that returns a judge (an object with ``name`` and
    ``judge(items, completions) -> list[Verdict]``, checked when an audit starts), so a new kind
    can bring its scorer in its own module; ``None`` means the audit's judge, which labels every
    built-in kind. ``needs``: the verdict
    label an answer must carry to count (answers without it are "unjudged" and left out of the
    rates that need it). ``analysis``: the name of a cross-kind analysis the metrics module runs
    (``"honesty"``), if any.
    """

    kind: str
    meaning: str
    metrics: tuple[Metric, ...] = ()
    needs: VerdictTest = always
    scorer: str | ScorerFactory | None = None
    examples: tuple[Example, ...] = ()
    analysis: str | None = None
