"""The power-law forecast of Best-of-N jailbreaking (arXiv 2412.03556): -log ASR(N) = a N^(-b),
fitted on N = 1..M and extrapolated, and checked on held-out samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from poise.attacks.worst_of_n import (
    beta_binomial_curve,
    fit_power_law,
    held_out_check,
    power_law_asr,
    power_law_curve,
    predicted_curve,
    worst_of_n_summary,
)


def test_the_fit_recovers_a_power_law_in_minus_log_asr() -> None:
    ns = list(range(1, 17))
    asr = [math.exp(-2.5 * n**-0.4) for n in ns]
    fit = fit_power_law(ns, asr)
    assert fit is not None
    assert fit["a"] == pytest.approx(2.5) and fit["b"] == pytest.approx(0.4)
    assert power_law_asr(fit["a"], fit["b"], 1024) == pytest.approx(math.exp(-2.5 * 1024**-0.4))


def test_points_at_zero_or_one_are_left_out_and_two_are_needed() -> None:
    assert fit_power_law([1, 2, 3], [0.0, 0.0, 0.0]) is None
    assert fit_power_law([1, 2, 3], [0.5, 1.0, 1.0]) is None
    fit = fit_power_law([1, 2, 4, 8], [0.0, math.exp(-2.0 * 2**-0.5), math.exp(-2.0 * 0.5), 1.0])
    assert fit is not None and fit["points"] == 2 and fit["b"] == pytest.approx(0.5)


def test_the_forecast_extrapolates_from_the_samples_it_is_fitted_on() -> None:
    # fit on 8 samples per prompt, predict N = 16..64, check against 64 independent samples
    rng = np.random.default_rng(0)
    p = rng.beta(0.3, 3.0, size=400)  # [P]
    fit_on = rng.random((400, 8)) < p[:, None]
    check = rng.random((400, 64)) < p[:, None]
    curve, fit = power_law_curve(fit_on, [8, 16, 32, 64], boot=100)
    assert fit is not None and fit["fit_ns"] == [1, 8] and fit["boot_fitted"] == 100
    values = [c["value"] for c in curve]
    assert values == sorted(values) and values[-1] > values[0]
    # a forecast, not the resampled curve: beyond N = 8 that one stays a lower bound
    assert values[-1] > predicted_curve(fit_on, [64], boot=10)[0]["value"]
    assert all(c["low"] <= c["value"] <= c["high"] for c in curve)
    result = held_out_check(fit_on, check, [16, 32, 64], boot=100)
    assert result["power_law_fit"]["fit_ns"] == [1, 8]
    assert result["power_law_all_within"], result["rows"]


def _records(matrix: np.ndarray) -> list[dict[str, object]]:
    return [
        {
            "item_id": f"i{i}",
            "kind": "harmful",
            "request_id": f"worst_of_{matrix.shape[1]}/t=1.00",
            "sample_index": k,
            "verdict": {"harmful": bool(matrix[i, k])},
        }
        for i in range(matrix.shape[0])
        for k in range(matrix.shape[1])
    ]


def test_the_summary_carries_the_power_law_forecast() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.4, size=40)
    matrix = rng.random((40, 12)) < p[:, None]
    summary = worst_of_n_summary(_records(matrix), extrapolate=(64,))
    power = summary["power_law"]
    assert power["fit"]["model"] == "power law" and power["fit"]["fit_ns"] == [1, 12]
    assert [c["n"] for c in power["predicted"]] == [*range(1, 13), 64]
    assert "power_law" in summary["held_out"]["rows"][0]


def test_no_harmful_sample_gives_no_power_law() -> None:
    summary = worst_of_n_summary(_records(np.zeros((5, 12), dtype=bool)))
    assert summary["power_law"] is None
    assert summary["held_out"]["power_law_all_within"] is None


def test_the_terminal_table_and_the_report_show_the_power_law() -> None:
    from rich.console import Console

    from poise.report.attack_tables import render_attack_summary
    from poise.report.attack_view import attack_view

    rng = np.random.default_rng(1)
    matrix = rng.random((40, 12)) < rng.uniform(0, 0.4, size=40)[:, None]
    summary = worst_of_n_summary(_records(matrix), extrapolate=(64,))
    console = Console(width=200, record=True)
    console.print(render_attack_summary(summary))
    text = console.export_text()
    assert "power law [95% CI]" in text and "arXiv 2412.03556" in text
    view = attack_view({"attack": summary})
    assert view is not None and view["columns"][-1] == "power law"
    assert all(len(row) == 4 for row in view["rows"])
    # a run from before the power law: the table as it was
    old = {k: v for k, v in summary.items() if k not in ("power_law", "held_out")}
    console = Console(width=200, record=True)
    console.print(render_attack_summary(old))
    assert "power law" not in console.export_text()
    view = attack_view({"attack": old})
    assert view is not None and view["columns"] == ["N", "empirical", "predicted"]


def test_where_the_fit_misses_its_own_samples_is_said() -> None:
    # prompts broken often: the order-averaged curve nears 1 by N = 16, those points steer the
    # least-squares fit, and it misses N = 1 (about 15% against about 50% measured)
    from rich.console import Console

    from poise.report.attack_tables import render_attack_summary
    from poise.report.attack_view import attack_view

    rng = np.random.default_rng(0)
    p = rng.uniform(0.1, 0.8, size=15)
    matrix = rng.random((15, 16)) < p[:, None]
    summary = worst_of_n_summary(_records(matrix), extrapolate=(64,))
    outside = summary["power_law"]["outside_empirical_at"]
    assert 1 in outside
    empirical = {e["n"]: e for e in summary["empirical"]}
    for c in summary["power_law"]["predicted"][:16]:
        inside = empirical[c["n"]]["low"] <= c["value"] <= empirical[c["n"]]["high"]
        assert inside == (c["n"] not in outside)
    console = Console(width=300, record=True)
    console.print(render_attack_summary(summary))
    assert "OUTSIDE the empirical interval at N = 1" in " ".join(console.export_text().split())
    view = attack_view({"attack": summary})
    assert view is not None and "outside the empirical interval at N = 1" in view["lead"]


def test_a_replicate_without_a_fit_counts_with_what_its_data_show() -> None:
    # one prompt of 16 holds every harmful sample: a third of the bootstrap replicates draw no
    # copy of it, show ASR 0 at every N and allow no fit. Left out, they moved the interval's
    # lower end up to the point value, as if ASR(1) could not be below 2.7%; counted as 0, the
    # interval reaches 0, as the beta-binomial's does.
    matrix = np.zeros((16, 8), dtype=bool)
    matrix[0, [1, 4, 6]] = True
    curve, fit = power_law_curve(matrix, [1, 8, 64], boot=400)
    assert fit is not None and 0 < fit["boot_fitted"] < 400
    for point in curve:
        assert point["low"] == 0.0 < point["value"] < point["high"]
    # the other way round: every prompt harmful in all but at most one sample, so that replicates
    # reach ASR 1 at N = 2, and one prompt that shows the curve's rise
    saturated = np.ones((16, 8), dtype=bool)
    saturated[:, 0] = False
    saturated[0, :5] = False
    curve, fit = power_law_curve(saturated, [1, 2, 64], boot=400)
    assert fit is not None and fit["boot_fitted"] < 400
    assert curve[-1]["high"] == 1.0 and curve[1]["high"] == 1.0


def test_the_forecast_from_8_samples_meets_the_known_curve() -> None:
    # synthetic prompts with p ~ Beta(0.3, 3): the true ASR(N) of these prompts is
    # mean_i [1 - (1 - p_i)^N], known at any N. Both forecasts see 8 samples per prompt only.
    rng = np.random.default_rng(0)
    p = rng.beta(0.3, 3.0, size=400)  # [P]
    fit_on = rng.random((400, 8)) < p[:, None]  # [P, 8]
    ns = [16, 64, 256, 1024]
    truth = [float(np.mean(1.0 - (1.0 - p) ** n)) for n in ns]
    power, _ = power_law_curve(fit_on, ns, boot=100)
    beta_binomial, _ = beta_binomial_curve(fit_on, ns, boot=100)
    flat = predicted_curve(fit_on, ns, boot=10)
    for t, pw, bb, fl in zip(truth, power, beta_binomial, flat, strict=True):
        assert pw["low"] <= t <= pw["high"] and bb["low"] <= t <= bb["high"]
        assert abs(pw["value"] - t) < 0.05 and abs(bb["value"] - t) < 0.05
        assert fl["value"] < t  # the resampled curve beyond 8 samples is a lower bound
