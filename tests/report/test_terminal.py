"""Terminal tables: the rate strings, categories and honesty block appear; colours follow direction."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from poise.report.terminal import colour, render_metrics_table
from poise.scoring.metrics import Rate, compute_metrics


def rec(
    item_id: str, kind: str, category: str, request_id: str = "greedy", **verdict: Any
) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "kind": kind,
        "category": category,
        "request_id": request_id,
        "sample_index": 0,
        "verdict": {"label": "x", "refused": verdict.pop("refused", False), **verdict},
    }


def records() -> list[dict[str, Any]]:
    out = []
    for i in range(8):
        out.append(
            rec(f"h{i}", "harmful", "weapons" if i < 5 else "cyber", harmful=i < 2, refused=i >= 2)
        )
        out.append(
            rec(
                f"h{i}",
                "harmful",
                "weapons" if i < 5 else "cyber",
                "t=1.0",
                harmful=i < 6,
                refused=i >= 6,
            )
        )
    for i in range(5):
        out.append(rec(f"b{i}", "borderline", "chemistry", refused=i == 0, helpful=i != 0))
        out.append(rec(f"n{i}", "benign", "cooking", helpful=True))
    out += [
        rec(f"k{i}", "honesty-known", "capitals", honesty="correct" if i else "idk")
        for i in range(4)
    ]
    out += [
        rec(f"u{i}", "honesty-unknown", "invented", honesty="idk" if i else "wrong")
        for i in range(3)
    ]
    return out


def render(metrics: dict[str, Any], title: str = "organism-base · greedy") -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(render_metrics_table(metrics, title=title))
    return console.export_text()


def test_table_shows_every_rate_with_its_interval() -> None:
    metrics = compute_metrics(records())
    text = render(metrics)
    assert "organism-base · greedy" in text
    for group in metrics["groups"].values():
        for name in (
            "harmful_rate",
            "refusal_rate",
            "over_refusal_rate",
            "helpful_rate",
            "known_accuracy",
        ):
            if name in group:
                assert Rate.from_dict(group[name]).format() in text
    # the default group's harmful rate, 2/8 = 25%, appears in the headline and its column order
    assert Rate.of("harmful_rate", 2, 8).format() == "25.0% [7.1, 59.1]"
    assert "25.0% [7.1, 59.1]" in text
    assert text.index("greedy") < text.index("t=1.0")


def test_per_category_and_honesty_blocks() -> None:
    text = render(compute_metrics(records()))
    assert "harmful rate by harm category" in text
    assert "over-refusal by borderline category" in text
    assert "weapons" in text and "cyber" in text and "chemistry" in text
    assert "2/5" in text  # weapons: h0, h1 harmful of 5
    assert "honesty (Alignment for Honesty, arXiv 2312.07000)" in text
    assert "prudence" in text and "over-conservativeness" in text and "honesty score" in text
    assert "suite labels" in text
    # the score's band combines two 95% intervals: the table says so under its "95% CI" column,
    # and that the 90% holds only as far as Wilson's 95% does (near an honesty score of 1 the
    # band's exact coverage is ~84%: poise.scoring.metrics)
    assert "it covers with probability >= 90% (nominal)" in " ".join(text.split())
    assert Rate.of("over_conservativeness_score", 1, 4).format() in text
    assert Rate.of("prudence_score", 2, 3).format() in text


def test_without_honesty_or_borderline_the_blocks_are_left_out() -> None:
    only_harmful = [r for r in records() if r["kind"] == "harmful" and r["request_id"] == "greedy"]
    text = render(compute_metrics(only_harmful))
    assert "honesty" not in text and "over-refusal by" not in text
    assert "harmful rate by harm category" in text


def test_colour_follows_the_direction_of_good() -> None:
    assert colour(Rate.of("harmful_rate", 1, 100)) == "green"
    assert colour(Rate.of("harmful_rate", 50, 100)) == "red"
    assert colour(Rate.of("harmful_rate", 20, 100)) == "yellow"
    assert colour(Rate.of("helpful_rate", 95, 100)) == "green"
    assert colour(Rate.of("helpful_rate", 5, 100)) == "red"
    assert colour(Rate.of("refusal_rate", 99, 100)) == "green"


def grid_metrics(n_configs: int = 12) -> dict[str, Any]:
    """An attack grid: configuration c makes c of 20 harmful prompts succeed."""
    out = []
    for c in range(n_configs):
        rid = "greedy" if c == 0 else f"t={c / 10:.2f}"
        out += [
            rec(f"h{i}", "harmful", "weapons", rid, harmful=i < c, refused=i >= c)
            for i in range(20)
        ]
    return compute_metrics(out)


def test_many_configurations_are_listed_one_per_row_most_harmful_first() -> None:
    metrics = grid_metrics(12)
    text = render(metrics)
    header = next(line for line in text.splitlines() if line.startswith("┃ rate"))
    assert "greedy" in header and "t=0.10" not in header  # headline: default column only
    assert "attack configurations: 11 of 12" in text
    rows = [
        line for line in text.splitlines() if line.startswith("│ t=") or line.startswith("│ greedy")
    ]
    order = [row.split("│")[1].strip() for row in rows if "%" in row and "[" in row][-11:]
    assert order[0] == "greedy"
    assert order[1:] == [f"t={c / 10:.2f}" for c in range(11, 1, -1)]  # t=0.10 (1/20) is cut
    assert Rate.of("harmful_rate", 11, 20).format() in text


GUARD = {
    "guard": "streaming",
    "answers": 40,
    "stopped": 6,
    "decided": 40,
    "macro_f1": {"value": 0.9473, "low": 0.8122, "high": 1.0, "n": 40},
    "false_alarm_rate": Rate.of("false_alarm_rate", 1, 35).to_dict(),
    "miss_rate": Rate.of("miss_rate", 0, 5).to_dict(),
    "produced_share": {"value": 0.385, "low": 0.215, "high": 0.556, "n": 5},
    "shown_share": {"value": 0.3, "low": 0.2, "high": 0.4, "n": 5},
    "unguarded_tokens": {"value": 49.8, "low": 47.2, "high": 52.4, "n": 5},
    "produced_tokens": {"value": 19.2, "low": 10.6, "high": 27.8, "n": 5},
    "harmful_tokens_shown": {"value": 5.2, "low": 0.0, "high": 12.96, "n": 5},
    "harmful_share_shown": 0.145,
}


def test_a_guarded_audit_shows_its_guard_metrics() -> None:
    metrics = compute_metrics(records())
    assert "guard (" not in render(metrics)
    metrics["overall"]["guard"] = GUARD
    text = render(metrics)
    assert "guard (streaming)" in text
    assert "6 of 40" in text
    assert "0.947 [0.812, 1.000]" in text
    assert Rate.of("false_alarm_rate", 1, 35).format() in text and "1/35 harmless" in text
    assert "0/5 harmful not stopped" in text
    assert "38.5% [21.5, 55.6]" in text and "30.0% [20.0, 40.0]" in text
    assert "5.2 [0.0, 13.0]" in text and "14.5% of all harmful tokens" in text
    # a judge that does not locate harm: the harmful-token figures are null
    metrics["overall"]["guard"] = {
        **GUARD,
        "harmful_tokens_shown": None,
        "harmful_share_shown": None,
    }
    assert "needs a judge that locates harm" in render(metrics)
    assert "no harm label" not in text
    metrics["overall"]["guard"] = {**GUARD, "unlabelled": 80, "stopped_unlabelled": 25}
    text = render(metrics)
    assert "stopped, no harm label" in text and "25 of 80" in text
    # under a judge that labels harm on harmful requests only (the refusal judge), benign and
    # borderline answers have no harm label: the detail named honesty and sycophancy instead
    metrics["overall"]["guard"] = {
        **GUARD,
        "unlabelled": 80,
        "stopped_unlabelled": 25,
        "unlabelled_kinds": ["benign", "borderline"],
    }
    text = " ".join(render(metrics).split())
    assert "(benign, borderline)" in text and "honesty, sycophancy" not in text
    assert "no false alarm is measured" in text


def test_the_caption_names_cluster_robust_intervals_when_items_have_several_samples() -> None:
    one = [r for r in records() if r["request_id"] == "greedy"]
    assert "95% Wilson intervals; rates over samples;" in render(compute_metrics(one))
    several = one + [{**r, "sample_index": 1} for r in one]
    text = render(compute_metrics(several))
    assert "cluster-robust" in text and "(2 per item)" in text


def test_names_from_the_run_are_shown_as_written_not_read_as_markup() -> None:
    # a custom suite's category, an attack configuration and a model folder with brackets:
    # rich read them as markup ("[/]" closing nothing failed the whole table; "[exp]" vanished)
    out = [
        rec("h0", "harmful", "weapons [/]", harmful=True),
        rec("h1", "harmful", "[bold]cyber", harmful=False, refused=True),
        rec("h0", "harmful", "weapons [/]", "t=[/x]", harmful=True),
        rec("h1", "harmful", "[bold]cyber", "t=[/x]", harmful=True),
    ]
    metrics = compute_metrics(out)
    metrics["overall"]["guard"] = {**GUARD, "guard": "[/g]"}
    text = render(metrics, title="runs/[exp]/model · greedy")
    assert "runs/[exp]/model · greedy" in text
    assert "weapons [/]" in text and "[bold]cyber" in text
    assert "t=[/x]" in text
    assert "guard ([/g])" in text
    # with many configurations, each is a row (and the default names the category tables)
    grid = [
        rec(f"h{i}", "harmful", "[/c]", f"[/r{c}]", harmful=i < c, refused=i >= c)
        for c in range(6)
        for i in range(4)
    ]
    metrics = compute_metrics(grid)
    metrics["default_group"] = "[/r0]"
    text = render(metrics)
    assert all(f"[/r{c}]" in text for c in range(6)) and "[/c]" in text


def test_names_are_shown_whole_with_control_characters_as_escapes() -> None:
    # a suite's category holding a terminal escape sequence recoloured (or retitled) the
    # terminal; a trailing backslash was shown doubled; a long category was cut with an ellipsis
    long = "x" * 200 + "-END"
    out = [
        rec("h0", "harmful", "\x1b[31mred\x1b[0m", harmful=True),
        rec("h1", "harmful", "back\\", harmful=False, refused=True),
        rec("h2", "harmful", long, harmful=False, refused=True),
        rec("h3", "harmful", "nul\x00 \u202eevil", harmful=False, refused=True),
    ]
    text = render(compute_metrics(out), title="model\x1b]0;title\x07")
    assert "\x1b" not in text and "\x00" not in text and "\u202e" not in text
    assert "\\x1b[31mred\\x1b[0m" in text
    assert "nul\\x00 \\u202eevil" in text
    assert "model\\x1b]0;title\\x07" in text
    assert "back\\ " in text and "back\\\\" not in text
    assert "-END" in text and text.count("x") >= 200


def test_the_judge_validation_table_folds_rate_names_rather_than_cutting_them() -> None:
    """At 80 columns the corrected-rates table printed over_refusal_… and benign_refusa…: the
    name of the rate a row corrects was lost. It folds now, whole over two lines."""
    from poise.report.terminal import render_judge_validation

    def corrected(observed: float) -> dict[str, Any]:
        return {
            "observed": observed, "sensitivity": 0.75, "specificity": 0.8,
            "value": 0.242, "low": 0.023, "high": 0.934,
        }  # fmt: skip

    section = {
        "judge": "oracle", "path": "labels.jsonl", "overall": {},
        "corrected": {
            "over_refusal_rate": corrected(0.333), "benign_refusal_rate": corrected(0.0),
            "unknown_fabrication_rate": corrected(1.0),
        },
    }  # fmt: skip
    console = Console(width=80, record=True)
    console.print(render_judge_validation(section, {}))
    text = console.export_text()
    assert "…" not in text
    first = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    joined = "".join(first)
    for name in section["corrected"]:
        assert name in joined


def test_a_rate_no_registered_task_declares_is_a_row_under_its_name_without_direction() -> None:
    # metrics.json of a run audited with a plugin task that is not installed here: the rate
    # was left out of the table without a word (and coloured as if higher were better)
    metrics = compute_metrics(records())
    plugin = Rate.of("y_accuracy", 3, 6).to_dict()
    for group in metrics["groups"].values():
        group["y_accuracy"] = plugin
    metrics["overall"]["y_accuracy"] = plugin
    row = next(line for line in render(metrics).splitlines() if "y_accuracy" in line)
    assert "50.0% [18.8, 81.2]" in row and "better" not in row
    assert colour(Rate.from_dict(plugin)) == ""


def _row(text: str, start: str) -> str:
    """The first line of a rendered table whose first cell starts with ``start``."""
    return next(line for line in text.splitlines() if line.startswith(f"│ {start}"))


def test_the_colour_bands_hold_their_bounds() -> None:
    # green from a good share of 90% on, red below 70% (the module's docstring)
    assert colour(Rate.of("helpful_rate", 90, 100)) == "green"
    assert colour(Rate.of("helpful_rate", 89, 100)) == "yellow"
    assert colour(Rate.of("helpful_rate", 70, 100)) == "yellow"
    assert colour(Rate.of("helpful_rate", 69, 100)) == "red"


def test_up_to_four_configurations_are_columns_of_the_headline_table() -> None:
    out = [
        rec(f"h{i}", "harmful", "weapons", rid, harmful=i < c, refused=i >= c)
        for c, rid in enumerate(("greedy", "t=0.30", "t=0.60", "t=0.90"))
        for i in range(4)
    ]
    text = render(compute_metrics(out))
    header = next(line for line in text.splitlines() if line.startswith("┃ rate"))
    # the default first, then the most harmful: each configuration a column, none cut
    order = [header.index(rid) for rid in ("greedy", "t=0.90", "t=0.60", "t=0.30")]
    assert order == sorted(order)
    assert "attack configurations" not in text


def test_the_caption_gives_the_range_of_samples_per_item_and_only_the_unjudged_kinds() -> None:
    out = [
        rec("h0", "harmful", "a", harmful=True),
        rec("h1", "harmful", "a", harmful=None),  # the judge gave no harm label
        *({**rec("b0", "benign", "c", helpful=True), "sample_index": s} for s in range(3)),
    ]
    text = " ".join(render(compute_metrics(out)).split())
    assert "rates over samples (1–3 per item)" in text
    assert "unjudged (left out): harmful 1" in text and "benign 0" not in text
    judged = [r for r in out if r["item_id"] != "h1"]
    assert "unjudged" not in render(compute_metrics(judged))


def test_categories_are_listed_most_harmful_first_with_their_counts() -> None:
    out = [
        rec(f"{c}{i}", "harmful", c, harmful=i < k, refused=i >= k)
        for c, k in (("alpha", 1), ("beta", 3), ("gamma", 2))
        for i in range(4)
    ]
    text = render(compute_metrics(out))
    rows = [line for line in text.splitlines() if line.startswith(("│ alpha", "│ beta", "│ gamma"))]
    assert [row.split("│")[1].strip() for row in rows] == ["beta", "gamma", "alpha"]
    assert [row.split("│")[3].strip() for row in rows] == ["3/4", "2/4", "1/4"]


def test_the_honesty_score_is_shown_with_its_band_in_order() -> None:
    metrics = compute_metrics(records())
    score = metrics["overall"]["honesty"]["honesty_score"]
    row = _row(render(metrics), "honesty score")
    low, high = 100 * score["low"], 100 * score["high"]
    assert low < high
    assert f"{100 * score['value']:.1f}% [{low:.1f}, {high:.1f}]" in row


def test_each_guard_figure_is_on_its_own_row() -> None:
    metrics = compute_metrics(records())
    # 2 of the 40 answers undecided: "answers stopped" is of every answer
    metrics["overall"]["guard"] = {**GUARD, "decided": 38}
    text = render(metrics)
    assert "6 of 40" in _row(text, "answers stopped")
    alarms, misses = _row(text, "false alarms"), _row(text, "misses")
    assert Rate.of("false_alarm_rate", 1, 35).format() in alarms and "1/35 harmless" in alarms
    assert Rate.of("miss_rate", 0, 5).format() in misses and "0/5 harmful" in misses


def test_the_judge_validation_table_keeps_its_columns_apart() -> None:
    from poise.report.terminal import render_judge_validation

    section = {
        "judge": "oracle", "path": "labels.jsonl", "overall": {},
        "corrected": {"over_refusal_rate": {
            "observed": 0.333, "sensitivity": 0.75, "specificity": 0.8,
            "value": 0.242, "low": 0.023, "high": 0.934,
        }},
    }  # fmt: skip
    console = Console(width=200, record=True)
    console.print(render_judge_validation(section, {}))
    cells = [c.strip() for c in _row(console.export_text(), "over_refusal_rate").split("│")[2:-1]]
    assert cells == ["33.3%", "75.0%", "80.0%", "24.2% [2.3, 93.4]"]


def test_each_rate_says_which_way_is_better() -> None:
    text = render(compute_metrics(records()))
    assert "↓ better" in _row(text, "harmful (attack success)")
    assert "↑ better" in _row(text, "refused harmful")


def test_a_kappa_of_float_noise_at_zero_is_printed_as_zero() -> None:
    from poise.report.terminal import render_judge_validation

    agreement = {
        "n": 20, "accuracy": Rate.of("accuracy", 10, 20).to_dict(),
        "kappa": {"value": -3e-16, "low": -0.4, "high": 0.4},
    }  # fmt: skip
    section = {"judge": "oracle", "path": "labels.jsonl", "overall": {"harmful": agreement}}
    console = Console(width=300, record=True)
    console.print(render_judge_validation(section, {}))
    text = " ".join(console.export_text().split())  # the title wraps at the table's width
    assert "harmful: accuracy 50.0%, kappa 0.00 (n=20)" in text and "-0.00" not in text


# ---- an eleventh mutation check: the terminal tables (11d) ---------------------------------


def test_categories_of_one_rate_are_listed_by_name_whatever_the_files_order() -> None:
    # metrics.json of another writer (or edited by hand) need not hold its categories sorted:
    # equal rates are listed by name, as poise's own metrics list them
    out = [
        rec(f"{c}{i}", "harmful", c, harmful=i < k, refused=i >= k)
        for c, k in (("alpha", 1), ("beta", 3), ("gamma", 1))
        for i in range(4)
    ]
    metrics = compute_metrics(out)
    per_category = metrics["overall"]["by_category"]["harmful_rate"]
    metrics["overall"]["by_category"]["harmful_rate"] = dict(reversed(per_category.items()))
    text = render(metrics)
    rows = [line for line in text.splitlines() if line.startswith(("│ alpha", "│ beta", "│ gamma"))]
    assert [row.split("│")[1].strip() for row in rows] == ["beta", "alpha", "gamma"]


def test_an_unlabelled_borderline_answer_warns_that_no_false_alarm_is_measured() -> None:
    metrics = compute_metrics(records())
    metrics["overall"]["guard"] = {
        **GUARD,
        "unlabelled": 5,
        "stopped_unlabelled": 1,
        "unlabelled_kinds": ["borderline"],
    }
    text = " ".join(render(metrics).split())
    assert "(borderline); in no rate below" in text
    assert "no false alarm is measured" in text
    metrics["overall"]["guard"]["unlabelled_kinds"] = ["honesty-known"]
    assert "no false alarm is measured" not in " ".join(render(metrics).split())


def test_the_tables_of_a_run_of_one_configuration_do_not_name_it() -> None:
    one = [r for r in records() if r["request_id"] == "greedy"]
    metrics = compute_metrics(one)
    metrics["overall"]["guard"] = GUARD
    text = " ".join(render(metrics).split())
    assert "harmful rate by harm category (↓ better) ┏" in text
    assert "guard (streaming): when it stopped the answer ┏" in text
    assert "— greedy" not in text
    # beside another configuration, each table says it shows the default one
    both = compute_metrics(records())
    both["overall"]["guard"] = GUARD
    text = " ".join(render(both).split())
    assert "harmful rate by harm category (↓ better) — greedy ┏" in text
    assert "guard (streaming): when it stopped the answer — greedy ┏" in text


def test_an_honesty_score_of_ninety_percent_is_green() -> None:
    def score_row(value: float) -> str:
        metrics = compute_metrics(records())
        metrics["overall"]["honesty"]["honesty_score"] = {"value": value, "low": 0.5, "high": 1.0}
        console = Console(record=True, width=160, color_system="standard", force_terminal=True)
        console.print(render_metrics_table(metrics, title="m"))
        lines = console.export_text(styles=True).splitlines()
        return next(line for line in lines if "honesty score" in line)

    green, yellow, red = "\x1b[32m", "\x1b[33m", "\x1b[31m"
    assert green in score_row(0.9) and yellow not in score_row(0.9)
    assert yellow in score_row(0.899) and yellow in score_row(0.7)
    assert red in score_row(0.699)


def test_the_configurations_table_has_the_declared_columns_only() -> None:
    # honesty questions asked under every configuration: their rates are no columns of the
    # one-row-per-configuration table (the harmful, refusal, over-refusal and helpful rates are)
    out = []
    for c in range(6):
        rid = "greedy" if c == 0 else f"t={c / 10:.2f}"
        out += [rec(f"h{i}", "harmful", "w", rid, harmful=i < c, refused=i >= c) for i in range(6)]
        out += [rec(f"k{i}", "honesty-known", "capitals", rid, honesty="correct") for i in range(2)]
    text = render(compute_metrics(out))
    table = text[text.index("attack configurations") :]
    header = next(line for line in table.splitlines() if line.startswith("┃ configuration"))
    cells = [cell.strip() for cell in header.split("┃")[1:-1]]
    assert cells == ["configuration", "harmful (attack success) ↓", "refused harmful ↑"]
