"""Charts: inline-safe SVG, labels kept as escaped text, nothing drawn from nothing."""

from __future__ import annotations

import re

from poise.report.charts import Point, Series, category_chart, clean_svg, flipped, tradeoff_chart
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
