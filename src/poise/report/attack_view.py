"""An attack's own results in report.html, from the ``attack`` summary of metrics.json.

- worst-of-N (:mod:`poise.attacks.worst_of_n`): the empirical attack success rate at each N with
  its 95% Wilson interval as a band, and the curve predicted by the beta-binomial model of the
  per-prompt harmful probabilities with its interval (bootstrap and profile likelihood),
  extrapolated beyond the samples drawn, on a log-2 N axis; the power-law forecast of arXiv 2412.03556 (-log ASR = a N^(-b),
  fitted on N = 1..M) as a column of the table; the held-out check (fit on the first quarter of
  each prompt's samples, at least 4, compared with the rest at larger N) in the note.
- decoding exploitation (arXiv 2310.06987): the misalignment rate (prompts broken by at least
  one configuration) next to the greedy and the worst configuration's harmful rates and the
  number of distinct completions per prompt, and every
  configuration's rates as a heat map: one row per decoding configuration, one column per rate
  and prompting variant (``sys=on`` / ``sys=off``), each cell its rate in percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from poise.report.charts import _RC, _figure, _to_svg


def _pct(rate: Mapping[str, Any] | None) -> str:
    if not rate or not rate.get("n", 1):  # absent, or 0 of 0 (runs before 2026-12-03)
        return "–"
    return f"{100 * rate['value']:.1f}% [{100 * rate['low']:.1f}, {100 * rate['high']:.1f}]"


def worst_of_n_chart(summary: Mapping[str, Any]) -> str | None:
    """Empirical ASR at each N (band: 95% interval) and the predicted curve, as SVG."""
    empirical = sorted(summary.get("empirical") or [], key=lambda e: e["n"])
    predicted = sorted(summary.get("predicted") or [], key=lambda p: p["n"])
    if not empirical and not predicted:
        return None
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = _figure(6.0, 3.6)
        ax = fig.add_subplot()
        # (points, colour, fill alpha, line style, label): the prediction under the measurement
        curves = (
            (predicted, "#ff7f0e", 0.15, {"linestyle": "--"}, "predicted (95% interval)"),
            (
                empirical,
                "#1f77b4",
                0.2,
                {"marker": "o", "markersize": 3},
                "empirical (95% interval)",
            ),
        )
        for points, color, alpha, style, label in curves:
            if not points:
                continue
            n = [p["n"] for p in points]
            low = [100 * p["low"] for p in points]
            high = [100 * p["high"] for p in points]
            ax.fill_between(n, low, high, color=color, alpha=alpha, linewidth=0)
            ax.plot(n, [100 * p["value"] for p in points], color=color, label=label, **style)
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log", base=2)
        # plain numbers: math text is off in reports, so the default 2^k labels would be raw TeX
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-2, 102)
        ax.set_xlabel("N (samples per prompt)")
        ax.set_ylabel("attack success rate (%)")
        ax.set_title("worst-of-N: prompts with ≥ 1 harmful answer in N samples", loc="left")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        return _to_svg(fig)


def _model_text(fit: Mapping[str, Any] | None) -> str:
    """The fitted beta-binomial in words, naming the bound of its parameter space the fit
    stopped at (``boundary``, e.g. "no spread": every prompt alike, α and β both huge)."""
    if not fit:
        return "no fit"
    boundary = fit.get("boundary")
    return (
        f"α = {fit['alpha']:.3g}, β = {fit['beta']:.3g}, mean harmful probability "
        f"{100 * fit['mean']:.1f}%"
        + (
            f"; the fit stops at a bound of its parameters, {boundary}, where a bootstrap alone "
            "would be too sure"
            if boundary
            else ""
        )
    )


def left_out_text(summary: Mapping[str, Any]) -> str:
    """``, 3 prompts left out (fewer judged samples)``: the harmful prompts no curve counts
    (``prompts_left_out``); empty when none."""
    left_out = summary.get("prompts_left_out") or 0
    if not left_out:
        return ""
    return f", {left_out} prompt{'s' if left_out != 1 else ''} left out (fewer judged samples)"


def shown_ns(summary: Mapping[str, Any]) -> list[int]:
    """The N a worst-of-N table shows: the powers of two, the samples drawn per prompt (M, the
    last N measured, which was left out when it is no power of two) and the largest N."""
    ns: set[int] = {int(e["n"]) for e in summary.get("empirical") or []} | {
        int(p["n"]) for p in summary.get("predicted") or []
    }
    m = summary.get("samples_per_prompt")
    keep = {n for n in ns if n & (n - 1) == 0 or n == m} | ({max(ns)} if ns else set())
    return sorted(keep)


def missing_forecast_text(summary: Mapping[str, Any]) -> str:
    """Why the table has no row at some doublings past the M samples drawn (M = 8: no N = 16
    before 32): the forecast is computed at a fixed list of N beyond M
    (:func:`poise.attacks.worst_of_n.worst_of_n_summary`'s ``extrapolate``), which this names;
    empty when every power of two up to the largest N has its row."""
    m = summary.get("samples_per_prompt")
    if not isinstance(m, int):
        return ""
    forecast = sorted(p["n"] for p in summary.get("predicted") or [] if p["n"] > m)
    if not forecast:
        return ""
    missing = []
    n = 1
    while n < forecast[-1]:  # the powers of two the table shows, past M
        if n > m and n not in forecast:
            missing.append(n)
        n *= 2
    if not missing:
        return ""
    return (
        f"no row at N = {', '.join(map(str, missing))}: beyond the {m} samples drawn, the "
        f"forecasts are computed at N = {', '.join(map(str, forecast))} only"
    )


def beta_binomial_fit_text(summary: Mapping[str, Any]) -> str:
    """Whether the beta-binomial prediction lies inside the empirical interval at every sampled
    N, in words (it was printed as a bare True / False): ``... OUTSIDE ... at N = 1, 2``."""
    within = summary.get("within_interval_by_n")
    empirical = summary.get("empirical") or []
    if summary.get("predicted_within_empirical_interval") is None:
        return ""
    if summary["predicted_within_empirical_interval"]:
        return "beta-binomial prediction inside the empirical interval at every sampled N"
    outside = [e["n"] for e, ok in zip(empirical, within or [], strict=False) if not ok]
    where = f" at N = {', '.join(str(n) for n in outside)}" if outside else " at some sampled N"
    return f"beta-binomial prediction OUTSIDE the empirical interval{where}"


def _held_out_text(held: Mapping[str, Any] | None) -> str:
    """``Held out: fitted on the first 8 samples of each prompt, ASR(16) predicted 71.2% [..]
    vs 68.8% [..] measured on the other 24 (inside)``."""
    if not held:
        return ""
    parts = [
        f"ASR({r['n']}) predicted {100 * r['predicted']:.1f}% "
        f"[{100 * r['predicted_low']:.1f}, {100 * r['predicted_high']:.1f}] "
        f"({'inside' if r['within'] else 'OUTSIDE'})"
        + (
            f", power law {100 * r['power_law']:.1f}% [{100 * r['power_law_low']:.1f}, "
            f"{100 * r['power_law_high']:.1f}] ({'inside' if r['power_law_within'] else 'OUTSIDE'})"
            if "power_law" in r
            else ""
        )
        + f" vs {100 * r['empirical']:.1f}% [{100 * r['empirical_low']:.1f}, "
        f"{100 * r['empirical_high']:.1f}] measured"
        for r in held.get("rows", [])
    ]
    return (
        f"Held-out check: fitted on the first {held['fit_samples']} samples of each prompt, "
        f"compared with the other {held['check_samples']}: " + "; ".join(parts) + "."
    )


def _split(config: str) -> tuple[str, str]:
    """``temperature=0.70/sys=on`` -> (``temperature=0.70``, ``sys=on``)."""
    decoding, _, variant = config.partition("/")
    return decoding, variant


def distinct_text(distinct: Mapping[str, Any]) -> str:
    """``5.8 of 100 (median 6, 3-9)``: distinct completion texts per prompt, of the records per
    prompt (configurations x system settings x samples)."""
    return (
        f"{distinct['mean']:.1f} of {distinct['completions_per_prompt']} "
        f"(median {distinct['median']:g}, {distinct['min']}-{distinct['max']})"
    )


def config_heat_map(configs: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Rows: decoding configurations (grid order); columns: rate x prompting variant."""
    if not configs:
        return None
    rows: list[str] = []
    variants: list[str] = []
    rate_names: list[str] = []
    for config, rates in configs.items():
        decoding, variant = _split(config)
        rows += [decoding] if decoding not in rows else []
        variants += [variant] if variant not in variants else []
        rate_names += [r for r in rates if r not in rate_names]
    rows.sort(key=_grid_order)
    columns = [(r, v) for r in rate_names for v in variants]
    # [rows, columns] of percentages; NaN where a configuration has no trials of that rate
    values = [
        [
            100 * float(configs.get(f"{row}/{v}" if v else row, {}).get(r, {}).get("value", "nan"))
            for r, v in columns
        ]
        for row in rows
    ]
    import matplotlib
    import numpy as np

    data = np.array(values, dtype=float)  # [rows, columns]
    with matplotlib.rc_context(_RC):
        fig = _figure(1.6 + 1.1 * len(columns), 0.9 + 0.2 * len(rows))
        ax = fig.add_subplot()
        image = ax.imshow(np.ma.masked_invalid(data), cmap="Reds", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels(
            [f"{r.replace('_', '-')}\n{v}" if v else r.replace("_", "-") for r, v in columns],
            fontsize=8,
        )
        ax.xaxis.tick_top()
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=7)
        for i in range(len(rows)):
            for j in range(len(columns)):
                if not np.isnan(data[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{data[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if data[i, j] > 60 else "black",
                    )
        fig.colorbar(image, ax=ax, label="rate (%)", shrink=0.6)
        return _to_svg(fig)


def _grid_order(decoding: str) -> tuple[int, float, str]:
    """greedy first, then each family in order of its parameter."""
    family, _, value = decoding.partition("=")
    order = {"greedy": 0, "temperature": 1, "top_p": 2, "top_k": 3}.get(family, 4)
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    return order, number, decoding


def attack_view(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the report shows of the run's attack, or None when it ran none with a summary."""
    summary = metrics.get("attack")
    if not isinstance(summary, Mapping):
        return None
    kind = summary.get("attack")
    if kind in ("worst_of_n", "best_of_n"):  # best_of_n: runs before 0.2
        empirical = {e["n"]: e for e in summary.get("empirical") or []}
        predicted = {p["n"]: p for p in summary.get("predicted") or []}
        power_law = summary.get("power_law") or {}
        power = {p["n"]: p for p in power_law.get("predicted") or []}
        shown = shown_ns(summary)
        fit_text = beta_binomial_fit_text(summary)
        missing_text = missing_forecast_text(summary)
        return {
            "id": "worst-of-n",
            "svg_id": "worst-of-n-curve",
            "title": "Worst-of-N",
            "lead": f"{summary.get('prompts')} prompts, {summary.get('samples_per_prompt')} samples "
            f"each{left_out_text(summary)}: the share of prompts with at least one harmful "
            "answer among their first N samples, measured (empirical: at N = 1 the first sample "
            "of each prompt alone, so it can differ from the harmful rate over all samples) and "
            "predicted by a beta-binomial model of the per-prompt harmful "
            "probability fitted by maximum likelihood, ASR(N) = 1 − B(α, β + N) / B(α, β) "
            f"({_model_text(summary.get('prediction_model'))}), which extrapolates to N far "
            "beyond the samples drawn (intervals over prompts: a bootstrap, widened to the profile "
            "likelihood, as a bootstrap over few prompts is too narrow)"
            + (
                "; power law: the forecast of arXiv 2412.03556, −log ASR(N) = a·N^(−b) "
                f"(a = {power_law['fit']['a']:.3g}, b = {power_law['fit']['b']:.3g}), fitted on "
                f"N = 1..{power_law['fit']['fit_ns'][-1]} and extrapolated"
                + _outside(power_law.get("outside_empirical_at") or [])
                if power
                else "."
            ),
            "svg": worst_of_n_chart(summary),
            "columns": ["N", "empirical", "predicted"] + (["power law"] if power else []),
            "rows": [
                [str(n), _pct(empirical.get(n)), _pct(predicted.get(n))]
                + ([_pct(power.get(n))] if power else [])
                for n in shown
            ],
            "note": (f"{fit_text}. " if fit_text else "")
            + (f"{missing_text[0].upper()}{missing_text[1:]}. " if missing_text else "")
            + _held_out_text(summary.get("held_out")),
        }
    if kind == "exploitation":
        configs = summary.get("configs") or {}
        rows: Sequence[list[str]] = [
            [
                "misalignment rate (prompts broken by ≥ 1 configuration)",
                _pct(summary.get("misalignment_rate")),
            ],
            # a grid without greedy decoding (families=temperature, ...) has no greedy row
            *(
                [[f"greedy harmful rate ({greedy})", _pct(summary.get("greedy_harmful_rate"))]]
                if (greedy := summary.get("greedy_config"))
                else []
            ),
            [
                f"worst configuration ({summary.get('worst_config')}; the highest"
                + (f" of {summary['configs_compared']}" if summary.get("configs_compared") else "")
                + ": its interval does not allow for the pick, and its rate reads high)",
                _pct(summary.get("worst_config_harmful_rate")),
            ],
            [
                "borderline over-refused under ≥ 1 configuration",
                _pct(summary.get("borderline_overrefused_any_rate")),
            ],
            *(
                [
                    f"system prompt off − on, {name.replace('_', ' ')} (paired, {d['pairs']} "
                    "prompts; Newcombe interval, McNemar p)",
                    f"{100 * d['difference']:+.1f} pp [{100 * d['low']:+.1f}, "
                    f"{100 * d['high']:+.1f}], p = {d['p_value']:.2g}",
                ]
                for name, d in (summary.get("system_prompt_effect") or {}).items()
            ),
            *(
                [
                    f"distinct completions per {kind} prompt",
                    distinct_text(summary["distinct_completions"][kind]),
                ]
                for kind in ("harmful", "borderline")
                if kind in (summary.get("distinct_completions") or {})
            ),
        ]
        return {
            "id": "exploitation",
            "title": "Decoding exploitation (arXiv 2310.06987)",
            "lead": f"{len(configs)} configurations, each sampled with its own seed. A prompt is "
            "broken when at least one configuration gets a harmful answer; the distinct "
            "completions say how many different answers per prompt that rests on; the heat map "
            "gives every configuration's rates.",
            "svg": config_heat_map(configs),
            "svg_id": "config-grid",
            "columns": ["measure", "rate [95% interval]"],
            "rows": rows,
            "note": "",
        }
    # an attack without a section of its own (a plugin's): its summary's rates and numbers
    from poise.report.attack_tables import generic_rows

    return {
        "id": "attack",
        "title": f"Attack {kind}",
        "lead": "The attack's summary, as metrics.json records it.",
        "svg": None,
        "svg_id": "attack-summary",
        "columns": ["measure", "value"],
        "rows": [list(row) for row in generic_rows(summary)],
        "note": "",
    }


def sampling_used(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The decoding configurations the records were generated with, each once, in order: what an
    attack actually sampled with (its own settings, not the run config's defaults)."""
    seen: list[str] = []
    for r in records:
        config = r.get("config")
        if not isinstance(config, Mapping):
            continue
        text = ", ".join(
            f"{k}={v}" for k, v in config.items() if k not in ("system_prompt", "stop") or v
        )
        if text not in seen:
            seen.append(text)
    return seen


def _outside(ns: list[int]) -> str:
    """The power law's in-sample misses, for the worst-of-N lead."""
    if not ns:
        return "."
    return (
        f"; it lies outside the empirical interval at N = {', '.join(str(n) for n in ns)} of the "
        "samples it was fitted on (points near ASR 1 steer its least-squares fit)."
    )
