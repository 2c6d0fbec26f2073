"""Terminal tables for attack summaries (decoding exploitation, worst-of-N).

Names from the summary (the attack's, its configurations', a plugin's keys and values) are
escaped: a configuration ``[/x]`` is shown as written, not read as rich markup."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from poise.report.attack_view import (
    beta_binomial_fit_text,
    distinct_text,
    left_out_text,
    missing_forecast_text,
    shown_ns,
)


def _pct(rate: dict[str, Any] | None) -> str:
    if not rate or not rate.get("n", 1):
        return "-"
    return f"{100 * rate['value']:.1f}% [{100 * rate['low']:.1f}, {100 * rate['high']:.1f}]"


def _prompts(rate: dict[str, Any] | None) -> str:
    # a rate over no prompts is absent (runs before 2026-12-03 recorded it as 0 of 0)
    return str(rate["n"]) if rate and rate.get("n") else "-"


def _worst_label(summary: dict[str, Any]) -> str:
    compared = summary.get("configs_compared")
    of = f"the highest of {compared}" if compared else "the highest"
    worst = escape(str(summary.get("worst_config")))
    return f"worst config ({worst}; {of}: its interval ignores the pick)"


def render_attack_summary(summary: dict[str, Any], *, top: int = 8) -> RenderableType:
    if summary.get("attack") == "exploitation":
        return _exploitation(summary, top)
    if summary.get("attack") in ("worst_of_n", "best_of_n"):  # best_of_n: runs before 0.2
        return _worst_of_n(summary)
    return _generic(summary)


def _generic(summary: dict[str, Any]) -> Table:
    """An attack without a table of its own (a plugin's): its summary's rates and numbers."""
    table = Table(title=f"attack {escape(str(summary.get('attack')))}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in generic_rows(summary):
        table.add_row(escape(str(key)), escape(value))
    return table


def generic_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(name, value)`` of a summary's rates (``value``, ``low``, ``high``) and plain values;
    nested tables are left out."""
    rows = []
    for key, value in summary.items():
        if key == "attack":
            continue
        if isinstance(value, Mapping) and {"value", "low", "high"} <= set(value):
            rows.append((key, _pct(dict(value))))
        elif isinstance(value, (str, int, float)):
            rows.append((key, f"{value:.4g}" if isinstance(value, float) else str(value)))
    return rows


def _exploitation(summary: dict[str, Any], top: int) -> RenderableType:
    head = Table(title="Decoding exploitation (arXiv 2310.06987)", show_header=True)
    head.add_column("measure")
    head.add_column("rate [95% CI]", justify="right")
    head.add_column("prompts", justify="right")
    mis = summary.get("misalignment_rate")
    if greedy := summary.get("greedy_config"):  # none when the grid has no greedy decoding
        head.add_row(
            f"greedy harmful rate ({escape(str(greedy))})",
            _pct(summary.get("greedy_harmful_rate")),
            str((summary.get("greedy_harmful_rate") or {}).get("n", "-")),
        )
    head.add_row(
        "[bold]misalignment rate[/] (broken by >= 1 config)",
        f"[bold red]{_pct(mis)}[/]",
        _prompts(mis),
    )
    head.add_row(
        _worst_label(summary),
        _pct(summary.get("worst_config_harmful_rate")),
        "",
    )
    overrefused = summary.get("borderline_overrefused_any_rate")
    head.add_row(
        "borderline over-refused under >= 1 config", _pct(overrefused), _prompts(overrefused)
    )
    for name, d in (summary.get("system_prompt_effect") or {}).items():
        head.add_row(
            f"system prompt off − on: {escape(str(name))} (paired; McNemar p = {d['p_value']:.2g})",
            f"{100 * d['difference']:+.1f} pp [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]",
            str(d["pairs"]),
        )
    for kind, distinct in (summary.get("distinct_completions") or {}).items():
        head.add_row(
            f"distinct completions per {escape(str(kind))} prompt",
            distinct_text(distinct),
            str(distinct["prompts"]),
        )
    configs = summary["configs"]
    ranked = sorted(configs, key=lambda c: -configs[c].get("harmful", {"value": -1})["value"])[:top]
    table = Table(title=f"top {len(ranked)} configurations by harmful rate")
    table.add_column("config")
    table.add_column("harmful rate", justify="right")
    table.add_column("over-refusal", justify="right")
    for c in ranked:
        table.add_row(
            escape(str(c)), _pct(configs[c].get("harmful")), _pct(configs[c].get("over_refusal"))
        )
    return Group(head, table)


def _worst_of_n(summary: dict[str, Any]) -> RenderableType:
    table = Table(
        title=f"Worst-of-N attack success ({summary['prompts']} prompts, {summary['samples_per_prompt']} samples each{left_out_text(summary)})"
    )
    table.add_column("N", justify="right")
    table.add_column("empirical ASR [95% CI]", justify="right")
    table.add_column("predicted ASR [95% CI]", justify="right")
    power = (summary.get("power_law") or {}).get("predicted") or []
    if power:  # runs before the power-law forecast have none
        table.add_column("power law [95% CI]", justify="right")
    predicted = {p["n"]: p for p in summary["predicted"]}
    power_at = {p["n"]: p for p in power}
    empirical = {e["n"]: e for e in summary["empirical"]}
    # powers of two, the samples drawn and the largest N, as the HTML report shows them
    for n in shown_ns(summary):
        cells = [str(n), _pct(empirical.get(n)), _pct(predicted.get(n))]
        table.add_row(*cells, *([_pct(power_at.get(n))] if power else []))
    table.caption = beta_binomial_fit_text(summary)
    if power:
        fit = summary["power_law"]["fit"]
        table.caption += (
            f"; power law (arXiv 2412.03556) -log ASR = {fit['a']:.3g} N^-{fit['b']:.3g}, "
            f"fitted on N = 1..{fit['fit_ns'][-1]}"
        )
        outside = summary["power_law"].get("outside_empirical_at") or []
        if outside:
            table.caption += (
                f", OUTSIDE the empirical interval at N = {', '.join(str(n) for n in outside)}"
            )
    held = summary.get("held_out")
    if held:
        inside = all(r["within"] for r in held["rows"])
        table.caption += (
            f"; held out (fit on {held['fit_samples']} samples, checked on {held['check_samples']}"
            f" at N = {', '.join(str(r['n']) for r in held['rows'])}): beta-binomial "
            f"{'inside' if inside else 'OUTSIDE'} the empirical interval"
        )
        power_inside = held.get("power_law_all_within")
        if power_inside is not None:
            table.caption += f", power law {'inside' if power_inside else 'OUTSIDE'}"
    # the empirical ASR(N) counts each prompt's first N samples: at N = 1 its first sample
    # alone, which can differ from the harmful rate over all samples printed above
    table.caption = "; ".join(
        part
        for part in (
            table.caption.removeprefix("; "),
            "empirical: prompts harmful within their first N samples",
            missing_forecast_text(summary),
        )
        if part
    )
    return table
