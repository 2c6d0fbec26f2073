"""Charts: inline-safe SVG, labels kept as escaped text, nothing drawn from nothing."""

from __future__ import annotations

import re

import pytest

from poise.report.charts import (
    PALETTE,
    Point,
    Series,
    category_chart,
    clean_svg,
    flipped,
    tradeoff_chart,
)
from poise.scoring.metrics import Rate


def texts(svg: str) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg)


def test_clean_svg_drops_prolog_doctype_metadata_and_namespaces() -> None:
    raw = (
        '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n'
        '<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
        '<svg xmlns:xlink="http://www.w3.org/1999/xlink" width="1pt" xmlns="http://www.w3.org/2000/svg">'
        "<metadata><rdf:RDF>http://purl.org/dc</rdf:RDF></metadata><g/></svg>"
    )
    assert clean_svg(raw) == '<svg width="1pt"><g/></svg>'


def test_category_chart_keeps_odd_labels_as_escaped_text() -> None:
    series = [
        Series(
            "base",
            {
                "cost $5 <b>": Rate.of("harmful_rate", 3, 10),
                "cyber": Rate.of("harmful_rate", 0, 10),
            },
        ),
        Series("safe", {"cyber": Rate.of("harmful_rate", 1, 10)}),
    ]
    svg = category_chart(
        series, title="Harmful rate by harm category", xlabel="harmful answers (%)"
    )
    assert svg is not None and svg.startswith("<svg")
    assert "http" not in svg
    labels = texts(svg)
    assert "cost $5 &lt;b&gt;" in labels and "cyber" in labels
    assert "base" in labels and "safe" in labels  # a legend when several series


def test_empty_inputs_draw_nothing() -> None:
    assert category_chart([], title="t", xlabel="x") is None
    assert category_chart([Series("a", {})], title="t", xlabel="x") is None
    assert tradeoff_chart([], xlabel="x") is None


def test_tradeoff_chart_labels_each_point() -> None:
    harmless = flipped(Rate.of("harmful_rate", 2, 50), "harmless_rate")
    assert (harmless.value, harmless.low, harmless.high) == (
        1 - 2 / 50,
        1 - Rate.of("harmful_rate", 2, 50).high,
        1 - Rate.of("harmful_rate", 2, 50).low,
    )
    points = [
        Point("greedy", Rate.of("helpful_rate", 40, 50), harmless),
        Point("t=0.70", Rate.of("helpful_rate", 45, 50), harmless, marker=1),
    ]
    svg = tradeoff_chart(points, xlabel="helpful")
    assert svg is not None
    assert {"greedy", "t=0.70"} <= set(texts(svg))


def test_a_bound_one_ulp_inside_the_value_draws_a_whisker_of_zero() -> None:
    # metrics.json of older poise held high = 0.9999999999999999 for 66/66 (the closed form's
    # rounding); matplotlib refused the negative error bar and the report failed with a traceback
    rate = Rate("harmful_rate", 66, 66, 1.0, 0.945, 0.9999999999999999)
    zero = Rate("harmful_rate", 0, 66, 0.0, 1e-17, 0.055)
    svg = category_chart([Series("m", {"x": rate, "y": zero})], title="t", xlabel="x")
    assert svg is not None and svg.startswith("<svg")
    svg = tradeoff_chart([Point("m", x=rate, y=zero)], xlabel="x")
    assert svg is not None and "m" in texts(svg)


def test_a_series_whose_name_starts_with_an_underscore_is_in_the_legend() -> None:
    # matplotlib leaves an artist labelled "_..." out of the legend: the run of a model folder
    # "_ckpt" had bars of a colour the legend did not name
    rate = Rate.of("harmful_rate", 1, 3)
    svg = category_chart(
        [Series("_ckpt", {"cyber": rate}), Series("base", {"cyber": rate})],
        title="t",
        xlabel="x",
    )
    assert svg is not None
    assert [label.lstrip("\u200b") for label in texts(svg)].count("_ckpt") == 1
    assert "base" in texts(svg)


def _ticks(svg: str, anchor: str, axis: str) -> dict[str, float]:
    """Tick labels of one axis (x: centred under the axis, y: right-aligned beside it) and their
    position in the drawing."""
    found = re.findall(
        rf'<text style="[^"]*text-anchor: {anchor}" x="([-\d.]+)" y="([-\d.]+)"[^>]*>([^<]*)</text>',
        svg,
    )
    return {label: float(x if axis == "x" else y) for x, y, label in found}


def _scale(svg: str) -> tuple[float, float]:
    """(origin, points per unit) of the value axis, read from its 0 and 100 tick labels."""
    ticks = _ticks(svg, "middle", "x")
    return ticks["0"], (ticks["100"] - ticks["0"]) / 100


def test_each_category_bar_is_its_rate_in_percent_beside_its_label_with_its_interval() -> None:
    cyber, weapons = Rate.of("harmful_rate", 3, 10), Rate.of("harmful_rate", 9, 10)
    svg = category_chart([Series("m", {"cyber": cyber, "weapons": weapons})], title="t", xlabel="x")
    assert svg is not None
    origin, unit = _scale(svg)
    bars = [
        (float(x0), float(x1), (float(y0) + float(y1)) / 2)
        for x0, y0, x1, y1 in re.findall(
            r'<path d="M ([\d.]+) ([\d.]+)\s+L ([\d.]+) [\d.]+\s+L [\d.]+ ([\d.]+)\s+L [\d.]+ [\d.]+\s+z\s*"'
            rf'[^>]*style="fill: {PALETTE[0]}"',
            svg,
        )
    ]
    labels = {k: v for k, v in _ticks(svg, "end", "y").items() if k in ("cyber", "weapons")}
    whiskers = [
        (float(a), float(b), float(y))
        for a, y, b in re.findall(
            r'<path d="M ([\d.]+) ([\d.]+)\s+L ([\d.]+) [\d.]+\s+"[^>]*stroke: #333333', svg
        )
    ]
    assert len(bars) == 2 and len(labels) == 2 and len(whiskers) == 2
    for name, rate in (("cyber", cyber), ("weapons", weapons)):
        # the bar nearest the category's label
        x0, x1, _ = min(bars, key=lambda b: abs(b[2] - labels[name]))
        assert (x0 - origin) / unit == pytest.approx(0, abs=0.5)
        assert (x1 - origin) / unit == pytest.approx(100 * rate.value, abs=0.5), name
        low, high, _ = min(whiskers, key=lambda w: abs(w[2] - labels[name]))
        assert (low - origin) / unit == pytest.approx(100 * rate.low, abs=0.5), name
        assert (high - origin) / unit == pytest.approx(100 * rate.high, abs=0.5), name


def test_a_tradeoff_point_stands_at_its_helpfulness_and_harmlessness_with_their_intervals() -> None:
    helpful = Rate.of("helpful_rate", 20, 50)  # 40%
    harmless = flipped(Rate.of("harmful_rate", 2, 50), "harmless_rate")  # 96%
    svg = tradeoff_chart([Point("m", helpful, harmless)], xlabel="x")
    assert svg is not None
    x_ticks, y_ticks = _ticks(svg, "middle", "x"), _ticks(svg, "end", "y")
    x_unit = (x_ticks["100"] - x_ticks["0"]) / 100
    y_unit = (y_ticks["100"] - y_ticks["0"]) / 100  # negative: up is a smaller y

    def x_of(value: float) -> float:
        return (value - x_ticks["0"]) / x_unit

    def y_of(value: float) -> float:  # the labels stand ~4 points below their tick: ±2 units
        return (value - y_ticks["0"]) / y_unit

    # the point's whiskers: one across (its helpfulness interval, at its harmlessness), one up
    lines = [
        tuple(float(v) for v in line)
        for line in re.findall(
            rf'<path d="M ([\d.]+) ([\d.]+)\s+L ([\d.]+) ([\d.]+)\s+"[^>]*stroke: {PALETTE[0]}"',
            svg,
        )
    ]
    ((x0, y, x1, _),) = [line for line in lines if line[1] == line[3]]
    ((x, y0, _, y1),) = [line for line in lines if line[0] == line[2]]
    assert x_of(x) == pytest.approx(100 * helpful.value, abs=0.5)
    assert (x_of(x0), x_of(x1)) == pytest.approx((100 * helpful.low, 100 * helpful.high), abs=0.5)
    assert y_of(y) == pytest.approx(100 * harmless.value, abs=2)
    assert sorted((y_of(y0), y_of(y1))) == pytest.approx(
        [100 * harmless.low, 100 * harmless.high], abs=2
    )
