"""Charts for the HTML report, drawn with matplotlib (imported lazily) as inline SVG text.

The SVG is made safe to paste into an HTML page that must not reach the network: the XML prolog,
the DOCTYPE (which names a w3.org URL), the RDF metadata and the xmlns declarations are dropped;
an HTML5 parser puts inline ``<svg>`` in the SVG namespace without them. Text stays text
(``svg.fonttype = none``) so the labels are searchable, and matplotlib escapes it. Math-text
parsing is off so a ``$`` in a category name is shown, not interpreted. Names from the run
(categories, run and configuration labels) are drawn with their control characters written as
escapes (:func:`poise.report.text.visible`): a NUL was drawn as a missing glyph, and no SVG may
hold one.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from poise.report.text import visible
from poise.scoring.stats import Rate

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")

# Any: matplotlib types rc keys as a Literal union, which a plain dict of str keys does not match.
_RC: Any = {
    "svg.fonttype": "none",
    "svg.hashsalt": "poise-report",  # stable element ids: the same run gives the same file
    "text.parse_math": False,
    "font.size": 10,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # a short fallback list: it is repeated on every <text>
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _to_svg(fig: Any) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return clean_svg(buf.getvalue())


def clean_svg(svg: str) -> str:
    """Strip what an inline SVG does not need and what would name an external URL."""
    svg = re.sub(r"<\?xml[^>]*\?>", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>", "", svg)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    return svg.strip()


@dataclass(frozen=True)
class Series:
    """One run's (or group's) per-category rates for a bar chart."""

    label: str
    rates: dict[str, Rate]  # category -> rate


def category_chart(series: Sequence[Series], *, title: str, xlabel: str) -> str | None:
    """Horizontal bars per category (one colour per series) with 95% Wilson error bars, as SVG."""
    categories = sorted({c for s in series for c in s.rates})
    if not categories:
        return None
    import matplotlib

    with matplotlib.rc_context(_RC):
        n_series = len(series)
        fig = _figure(7.5, 0.8 + 0.28 * len(categories) * max(1, n_series) + 0.3)
        ax = fig.add_subplot()
        bar = 0.8 / n_series
        for i, s in enumerate(series):
            ys, values, lows, highs = [], [], [], []
            for j, category in enumerate(categories):
                rate = s.rates.get(category)
                if rate is None:
                    continue
                # categories top to bottom, series within a category in legend order
                ys.append(len(categories) - 1 - j + 0.4 - bar * (i + 0.5))
                values.append(100 * rate.value)
                # a bound one ulp inside the value (metrics.json of older poise: high
                # 0.9999999999999999 at 66/66) is a whisker of 0; matplotlib refuses < 0
                lows.append(_whisker(rate.value - rate.low))
                highs.append(_whisker(rate.high - rate.value))
            ax.barh(
                ys,
                values,
                height=bar * 0.9,
                xerr=[lows, highs],
                color=PALETTE[i % len(PALETTE)],
                error_kw={"ecolor": "#333333", "capsize": 2, "elinewidth": 1},
                label=_legend_label(s.label),
            )
        ax.set_yticks(range(len(categories)))
        ax.set_yticklabels([visible(c) for c in reversed(categories)])
        ax.set_xlim(0, 100)
        ax.set_xlabel(xlabel)
        ax.set_title(title, loc="left")
        ax.grid(axis="x", alpha=0.3)
        if n_series > 1:
            ax.legend(loc="lower right", fontsize=8, frameon=False)
        return _to_svg(fig)


@dataclass(frozen=True)
class Point:
    """One model/configuration on the helpful-vs-harmless plane."""

    label: str
    x: Rate  # helpfulness, already oriented so that higher is better
    y: Rate  # harmlessness (1 - harmful_rate), higher is better
    colour: int = 0  # one colour per run
    marker: int = 0  # one marker per attack configuration within a run
    annotate: bool = True  # write the label next to the point


def flipped(rate: Rate, name: str) -> Rate:
    """1 - rate, with the interval flipped (the Wilson interval is symmetric under k -> n - k)."""
    return Rate(
        name=name,
        k=rate.n - rate.k,
        n=rate.n,
        value=1 - rate.value,
        low=1 - rate.high,
        high=1 - rate.low,
    )


def _legend_label(label: str) -> str:
    """A series' name as its legend entry: matplotlib leaves out of the legend an artist whose
    label starts with ``_`` (a run of a model folder ``_ckpt`` had bars of a colour the legend
    did not name), so such a name is drawn after a zero-width space, which shows nothing."""
    label = visible(label)
    return "\u200b" + label if label.startswith("_") else label


def _whisker(length: float) -> float:
    """An error bar's length in percent, never below 0 (see :func:`category_chart`)."""
    return max(0.0, 100 * length)


def tradeoff_chart(points: Sequence[Point], *, xlabel: str) -> str | None:
    """Scatter of helpfulness (x) against harmlessness (y) with 95% whiskers; top right is best."""
    if not points:
        return None
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = _figure(6.0, 5.0)
        ax = fig.add_subplot()
        # Faint unlabelled points first, so the named ones are drawn on top of a crowded grid.
        for p in sorted(points, key=lambda p: p.annotate):
            ax.errorbar(
                [100 * p.x.value],
                [100 * p.y.value],
                xerr=[[_whisker(p.x.value - p.x.low)], [_whisker(p.x.high - p.x.value)]],
                yerr=[[_whisker(p.y.value - p.y.low)], [_whisker(p.y.high - p.y.value)]],
                fmt=MARKERS[p.marker % len(MARKERS)],
                color=PALETTE[p.colour % len(PALETTE)],
                capsize=3 if p.annotate else 0,
                alpha=1.0 if p.annotate else 0.3,
                elinewidth=1.0 if p.annotate else 0.5,
                label=visible(p.label),
            )
            if p.annotate:
                ax.annotate(
                    visible(p.label),
                    (100 * p.x.value, 100 * p.y.value),
                    textcoords="offset points",
                    xytext=(6, 6),
                    fontsize=8,
                )
        ax.set_xlim(-2, 102)
        ax.set_ylim(-2, 102)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("harmless (100% − harmful rate)")
        ax.set_title("helpful vs harmless (top right is best)", loc="left")
        ax.grid(alpha=0.3)
        return _to_svg(fig)
