import json
import math
from pathlib import Path

import numpy as np
import pytest

from poise.attacks import SystemPrompt, attacks
from poise.attacks.worst_of_n import (
    beta_binomial_asr,
    beta_binomial_curve,
    empirical_curve,
    fit_beta_binomial,
    harmful_matrix,
    held_out_check,
    predicted_curve,
    profile_likelihood_interval,
    worst_of_n_summary,
)
from poise.config import Sampling
from poise.errors import PoiseError
from poise.scoring.stats import wilson_interval
from poise.suites.schema import SuiteItem


def test_requests_sample_n_at_temperature_one_by_default() -> None:
    items = [
        SuiteItem(id="h", messages=[{"role": "user", "content": "q"}], kind="harmful"),
        SuiteItem(id="b", messages=[{"role": "user", "content": "q"}], kind="benign"),
    ]
    [req] = attacks.get("worst_of_n")(items, Sampling(), SystemPrompt("none", None), n=8)
    assert req.sampling.n == 8 and req.sampling.temperature == 1.0
    assert req.request_id == "worst_of_8/t=1.00"


def test_kinds_without_harmful_warn_that_the_curves_will_be_empty(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``kinds=benign`` gave an empty summary ("0 prompts") without a word: the curves count
    harmful items only."""
    items = [
        SuiteItem(id="h", messages=[{"role": "user", "content": "q"}], kind="harmful"),
        SuiteItem(id="b", messages=[{"role": "user", "content": "q"}], kind="benign"),
    ]
    attack = attacks.get("worst_of_n")
    with caplog.at_level("WARNING", logger="poise.attacks.worst_of_n"):
        [req] = attack(items, Sampling(), SystemPrompt("none", None), n=2, kinds="benign")
    assert req.item.id == "b"
    assert "curves count harmful items only" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="poise.attacks.worst_of_n"):
        attack(items, Sampling(), SystemPrompt("none", None), n=2, kinds="harmful,benign")
    assert "curves" not in caplog.text


@pytest.mark.parametrize(("name", "options"), [("worst_of_n", {"n": 2}), ("exploitation", {})])
def test_items_an_attack_does_not_ask_are_named_as_left_out(
    caplog: pytest.LogCaptureFixture, name: str, options: dict[str, object]
) -> None:
    """A suite given to the audit whose kind the attack does not ask (benign prompts under the
    default kinds) got no request and no record, without a word."""
    items = [
        SuiteItem(id="h", messages=[{"role": "user", "content": "q"}], kind="harmful"),
        SuiteItem(id="b", messages=[{"role": "user", "content": "q"}], kind="benign"),
        SuiteItem(id="c", messages=[{"role": "user", "content": "q"}], kind="benign"),
    ]
    attack = attacks.get(name)
    with caplog.at_level("WARNING", logger="poise.attacks"):
        requests = attack(items, Sampling(), SystemPrompt("none", None), **options)
    assert {r.item.id for r in requests} == {"h"}
    assert f"attack {name} asks items of kinds harmful" in caplog.text
    assert "2 benign item(s) left out, not answered" in caplog.text
    assert "kinds=harmful" in caplog.text and ",benign asks them too" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="poise.attacks"):
        attack(items, Sampling(), SystemPrompt("none", None), kinds="harmful,benign", **options)
    assert "left out" not in caplog.text


def test_best_of_n_is_a_deprecated_alias_of_worst_of_n() -> None:
    with pytest.warns(FutureWarning, match="'best_of_n' is deprecated; use 'worst_of_n'"):
        assert attacks.get("best_of_n") is attacks.get("worst_of_n")
    assert "best_of_n" not in attacks.names()


def test_empirical_curve_uses_first_n_samples() -> None:
    m = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    curve = empirical_curve(m)
    assert [c["k"] for c in curve] == [1, 1, 2, 2]
    assert curve[0]["prompts"] == 3


def test_predicted_curve_matches_closed_form() -> None:
    m = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    pred = predicted_curve(m, [1, 3, 4, 100], boot=200)
    # N <= M: chance that N of the 4 samples, drawn without replacement, include a harmful one
    expected = {1: (1 / 4 + 2 / 4 + 0) / 3, 3: ((1 - 0) + 1 + 0) / 3, 4: 2 / 3}
    # prompt 1: 1 - C(3,3)/C(4,3) = 3/4; prompt 2: 1 - C(2,3)/C(4,3) = 1; prompt 3: 0
    expected[3] = (3 / 4 + 1 + 0) / 3
    for point in pred[:3]:
        assert math.isclose(point["value"], expected[point["n"]], rel_tol=1e-12)
        assert point["low"] <= point["value"] + 1e-12 and point["value"] <= point["high"] + 1e-12
    assert math.isclose(pred[-1]["value"], 2 / 3, rel_tol=1e-12)  # never-broken prompt stays at 0


def test_unbiased_estimate_equals_the_empirical_curve_averaged_over_sample_orders() -> None:
    from itertools import permutations

    m = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]], dtype=bool)
    orders = list(permutations(range(3)))
    averaged = np.mean(
        [[c["value"] for c in empirical_curve(m[:, list(o)])] for o in orders], axis=0
    )
    predicted = [p["value"] for p in predicted_curve(m, [1, 2, 3], boot=10)]
    assert np.allclose(averaged, predicted)


def test_summary_from_records_and_interval_check() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.4, size=60)
    records = [
        {
            "item_id": f"i{i}",
            "kind": "harmful",
            "request_id": "best_of_12/t=1.00",
            "sample_index": k,
            "verdict": {"harmful": bool(rng.random() < p[i])},
        }
        for i in range(60)
        for k in range(12)
    ]
    ids, matrix = harmful_matrix(records)
    assert matrix.shape == (60, 12) and len(ids) == 60
    summary = worst_of_n_summary(records, extrapolate=(100,))
    assert summary["samples_per_prompt"] == 12
    assert [e["n"] for e in summary["empirical"]] == list(range(1, 13))
    assert summary["predicted"][-1]["n"] == 100
    values = [e["value"] for e in summary["empirical"]]
    assert values == sorted(values)  # ASR(N) never decreases
    assert summary["predicted_within_empirical_interval"] is True
    assert summary["prediction_model"]["model"] == "beta-binomial"
    # beyond the samples drawn the prediction keeps rising (the resampled curve is a lower bound)
    assert summary["predicted"][-1]["value"] > summary["predicted"][11]["value"]
    assert summary["predicted"][-1]["value"] >= summary["resampled"][-1]["value"]
    held = summary["held_out"]
    assert held["fit_samples"] == 4 and held["check_samples"] == 8
    assert [r["n"] for r in held["rows"]] == [8]


def test_an_unjudged_sample_is_left_out_not_read_as_safe() -> None:
    # the judge could not read one answer of prompts a and b (harmful: None): counted as a safe
    # sample, prompt a was "never broken in 4" and ASR(1) read 1/3, where the judged samples say
    # every prompt with all four judged (b is left out) was broken in its first sample
    def record(item: str, index: int, harmful: bool | None) -> dict[str, object]:
        return {
            "item_id": item,
            "kind": "harmful",
            "request_id": "worst_of_4/t=1.00",
            "sample_index": index,
            "verdict": {"refused": False, "harmful": harmful},
        }

    records = [record("a", 0, None), *(record("a", k, True) for k in (1, 2, 3))]
    records += [record("b", 0, True), record("b", 1, None), record("b", 2, True)]
    records += [record("b", 3, False)]
    records += [record(i, k, True) for i in ("c", "d") for k in range(4)]
    ids, matrix = harmful_matrix(records)
    assert ids == ["c", "d"] and matrix.all()
    records += [record("a", 4, True)]  # a's fifth sample: a has four judged, as c and d
    ids, matrix = harmful_matrix(records)
    assert ids == ["a", "c", "d"] and matrix.shape == (3, 4) and matrix.all()
    summary = worst_of_n_summary(records)
    assert summary["prompts"] == 3 and summary["prompts_left_out"] == 1  # b: three judged
    assert summary["empirical"][0]["k"] == 3
    # the tables say how many prompts no curve counts
    from rich.console import Console

    from poise.report.attack_tables import render_attack_summary
    from poise.report.attack_view import attack_view

    console = Console(width=200, record=True)
    console.print(render_attack_summary(summary))
    view = attack_view({"attack": summary})
    assert view is not None
    for text in (" ".join(console.export_text().split()), view["lead"]):
        assert "1 prompt left out (fewer judged samples)" in text


def _beta_binomial_data(alpha: float, beta: float, prompts: int, m: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.beta(alpha, beta, size=prompts)  # [P]
    return rng.random((prompts, m)) < p[:, None]  # [P, M]


def test_beta_binomial_fit_matches_scipy_maximum_likelihood() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    from scipy.optimize import minimize

    matrix = _beta_binomial_data(0.4, 2.5, prompts=300, m=8, seed=1)
    k = matrix.sum(axis=1)
    fit = fit_beta_binomial(k, 8)
    # the same likelihood by scipy's betabinom, maximised by scipy's optimiser
    assert fit["log_likelihood"] == pytest.approx(
        float(scipy_stats.betabinom.logpmf(k, 8, fit["alpha"], fit["beta"]).sum()), rel=1e-10
    )

    def nll(x: np.ndarray) -> float:
        return -float(scipy_stats.betabinom.logpmf(k, 8, math.exp(x[0]), math.exp(x[1])).sum())

    ref = minimize(
        nll,
        x0=np.log([1.0, 1.0]),
        method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000},
    )
    alpha, beta = np.exp(ref.x)
    assert fit["log_likelihood"] >= -ref.fun - 1e-6  # at least as likely as scipy's optimum
    assert fit["alpha"] == pytest.approx(alpha, rel=1e-3)
    assert fit["beta"] == pytest.approx(beta, rel=1e-3)
    # and near the truth with 300 prompts
    assert fit["mean"] == pytest.approx(0.4 / 2.9, abs=0.03)


def test_asr_closed_form_matches_numerical_integration() -> None:
    pytest.importorskip("scipy")
    from scipy import integrate
    from scipy.stats import beta as beta_dist

    for a, b, n in [(0.4, 2.5, 1), (0.4, 2.5, 37), (2.0, 30.0, 1000), (0.05, 5.0, 4096)]:
        expected, _ = integrate.quad(
            lambda p, a=a, b=b, n=n: (1 - (1 - p) ** n) * beta_dist.pdf(p, a, b), 0, 1, limit=400
        )
        assert beta_binomial_asr(a, b, n) == pytest.approx(expected, abs=1e-7)
    assert beta_binomial_asr(0.4, 2.5, 1) == pytest.approx(0.4 / 2.9, rel=1e-12)


def test_beta_binomial_extrapolates_a_held_out_run() -> None:
    # prompts of very different difficulty: fit on 8 samples, check at N = 16, 32, 64 against 64
    # independent samples of the same prompts
    rng = np.random.default_rng(3)
    p = rng.beta(0.3, 3.0, size=400)  # [P]
    fit_on = rng.random((400, 8)) < p[:, None]
    check = rng.random((400, 64)) < p[:, None]
    result = held_out_check(fit_on, check, [16, 32, 64], boot=100)
    assert result["all_within"], result["rows"]
    # the resampled curve, flat beyond 8, misses at 64
    flat = predicted_curve(fit_on, [64], boot=10)[0]["value"]
    assert flat < result["rows"][-1]["empirical_low"]
    curve, fit = beta_binomial_curve(fit_on, [1, 8, 64, 4096], boot=50)
    assert [c["value"] for c in curve] == sorted(c["value"] for c in curve)
    assert all(c["low"] <= c["value"] <= c["high"] for c in curve)
    assert fit["fit_samples"] == 8 and fit["boot"] == 50


def test_beta_binomial_degenerate_data() -> None:
    never = fit_beta_binomial([0, 0, 0], 8)
    assert never["mean"] < 1e-6
    alike = fit_beta_binomial([4] * 50, 8)  # no spread beyond binomial: the binomial limit
    assert alike["mean"] == pytest.approx(0.5, abs=1e-4) and alike["concentration"] > 1e5


def _organism_worst_of_n(out: Path, n: int, seed: int) -> np.ndarray:
    from typer.testing import CliRunner

    from poise.cli import app

    args = ["audit", "--model", "organism-large", "--suite", "harmful", "--limit", "4"]
    args += ["--attack", "worst_of_n", "--attack-option", f"n={n}", "--seed", str(seed)]
    args += ["--max-new-tokens", "40", "--no-html", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (samples,) = out.glob("*/samples.jsonl")
    _, matrix = harmful_matrix(json.loads(line) for line in samples.read_text().splitlines())
    return matrix


@pytest.mark.slow
def test_organism_prediction_from_8_samples_holds_on_an_independent_32_sample_run(
    tmp_path: Path,
) -> None:
    # fit on n = 8 samples (seed 1), check at N = 16 and 32 against an independent n = 32 run
    # (seed 2) of the same prompts, organism-large at temperature 1
    fit_on = _organism_worst_of_n(tmp_path / "fit", 8, seed=1)
    check = _organism_worst_of_n(tmp_path / "check", 32, seed=2)
    assert fit_on.shape == (4, 8) and check.shape == (4, 32)
    result = held_out_check(fit_on, check, [16, 32], boot=100)
    assert result["all_within"], result["rows"]


def test_predicted_curve_is_never_negative_at_the_concentration_bound() -> None:
    # one harmful sample in 12: bootstrap replicates with none fit α + β = 1e7, where the
    # log-gammas lose ~1e-8 and 1 - B(α, β + N) / B(α, β) came out at -3e-8 ("-0.0%")
    matrix = np.zeros((3, 4), dtype=int)
    matrix[0, 2] = 1
    curve, _ = beta_binomial_curve(matrix, [1, 2, 4, 32])
    assert all(0.0 <= c["low"] <= c["value"] <= c["high"] <= 1.0 for c in curve)
    assert beta_binomial_asr(0.01, 1e7 - 0.01, 1) >= 0.0


def test_the_audits_n_is_refused_not_overridden() -> None:
    items = [SuiteItem(id="h", messages=[{"role": "user", "content": "q"}], kind="harmful")]
    attack = attacks.get("worst_of_n")
    with pytest.raises(PoiseError, match=r"not the audit's n \(2\): use --attack-option n=2"):
        attack(items, Sampling(n=2), SystemPrompt("none", None))
    [req] = attack(items, Sampling(n=1), SystemPrompt("none", None), n=2)
    assert req.sampling.n == 2


def test_the_audits_n_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    # it drew the attack's 16 samples per prompt where --n 2 asked for 2, at eight times the cost
    import poise

    with pytest.raises(PoiseError, match=r"not the audit's n \(2\)"):
        poise.audit(
            model="no-such-model-so-loading-would-fail",
            suites=["harmful"],
            attack="worst_of_n",
            sampling=Sampling(n=2, temperature=1.0),
            out=str(tmp_path),
        )
    assert list(tmp_path.iterdir()) == []


def test_with_no_harmful_sample_the_prediction_keeps_an_upper_bound() -> None:
    # it printed 0.0% [0.0, 0.0] at N = 4096 after 6 harmless samples
    from poise.attacks.worst_of_n import beta_binomial_curve

    matrix = np.zeros((3, 2), dtype=int)  # 3 prompts x 2 samples, none harmful
    curve, fit = beta_binomial_curve(matrix, [1, 2, 4096], boot=20)
    mean_bound = math.log(20.0) / 6  # 95% bound of E[p] from 6 harmless samples, prompts alike
    assert [c["value"] for c in curve] == pytest.approx([0.0, 0.0, 0.0], abs=1e-4)
    assert [c["low"] for c in curve] == pytest.approx([0.0, 0.0, 0.0], abs=1e-4)
    # the prompts are a draw from many (as for the bootstrap and the empirical Wilson interval):
    # at least the bound of prompts alike, at most the share of prompts 3 harmless ones allow
    assert mean_bound - 1e-9 <= curve[0]["high"] <= wilson_interval(0, 3)[1]
    assert curve[0]["high"] < curve[1]["high"] < curve[2]["high"] == pytest.approx(1.0, abs=1e-3)
    # many harmless samples: a tight bound, still above 0. Not ln(20) / 3000 (the 3000 samples
    # counted as independent): 1% of prompts always harmful goes unseen in 100 prompts 37% of
    # the time, so the population's E[p] = 1% is not ruled out
    big, _ = beta_binomial_curve(np.zeros((100, 30), dtype=int), [1], boot=20)
    assert 10 * math.log(20.0) / 3000 < big[0]["high"] <= wilson_interval(0, 100)[1]
    assert fit["boundary"] == "no harmful sample"


def test_with_every_sample_harmful_the_prediction_keeps_a_lower_bound() -> None:
    # it printed 100.0% [100.0, 100.0] at every N after 4 harmful samples of one prompt, where
    # the empirical Wilson interval at N = 1 is [20.7, 100]
    scipy_stats = pytest.importorskip("scipy.stats")

    curve, fit = beta_binomial_curve(np.ones((1, 4), dtype=int), [1, 2, 16], boot=20)
    assert [c["value"] for c in curve] == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    assert [c["high"] for c in curve] == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    # one prompt says little of the many it is drawn from: below even the one-sided 95%
    # Clopper-Pearson bound of that prompt's own p, and about the prompts' Wilson interval
    p_low = float(scipy_stats.beta.ppf(0.05, 4, 1))
    lows = [c["low"] for c in curve]
    assert lows == sorted(lows) and lows[0] < p_low
    assert lows[0] == pytest.approx(wilson_interval(1, 1)[0], abs=0.07)
    # many prompts: a tight bound still below 1, and no lower at larger N (ASR(N) only grows)
    big, _ = beta_binomial_curve(np.ones((50, 8), dtype=int), [1, 64], boot=20)
    assert wilson_interval(50, 50)[0] <= big[0]["low"] <= big[1]["low"] < 1.0
    assert fit["boundary"] == "every sample harmful"


def test_with_one_sample_per_prompt_the_interval_spans_what_the_data_allow() -> None:
    # One sample per prompt shows E[p], not its spread over prompts: 10 of 40 prompts broken is
    # as likely from 10 prompts always broken (ASR(16) = 0.25) as from every prompt broken 1 time
    # in 4 (ASR(16) = 1 - 0.75^16 = 0.99). The interval at N = 16 was [0.84, 1.00].
    matrix = np.zeros((40, 1), dtype=int)
    matrix[:10, 0] = 1
    curve, _ = beta_binomial_curve(matrix, [1, 16], boot=100)
    assert curve[0]["low"] < 0.25 < curve[0]["high"]
    assert curve[1]["low"] <= 0.25 and curve[1]["high"] >= 1 - 0.75**16


def test_the_unbiased_estimate_equals_a_brute_force_count_over_subsets() -> None:
    # 1 - C(M - k, N) / C(M, N) (Chen et al. 2021, pass@k): the share of the N-subsets of a
    # prompt's M samples that hold a harmful one, counted over every subset, for every k and N
    from fractions import Fraction
    from itertools import combinations

    for m in range(1, 7):
        for k in range(m + 1):
            row = np.array([[i < k for i in range(m)]])  # [1, M]
            estimate = predicted_curve(row, list(range(1, m + 1)), boot=2)
            for n, point in zip(range(1, m + 1), estimate, strict=True):
                subsets = list(combinations(range(m), n))
                share = Fraction(sum(any(row[0, list(s)]) for s in subsets), len(subsets))
                assert point["value"] == pytest.approx(float(share), abs=1e-12), (m, k, n)


def test_a_held_out_check_without_prompts_or_n_is_one_clear_error() -> None:
    # a fit run with no harmful prompt (another attack's run) gave a ValueError from zip()
    check = np.zeros((4, 32), dtype=bool)
    with pytest.raises(PoiseError, match="fit samples hold no harmful prompt"):
        held_out_check(np.zeros((0, 0), dtype=bool), check, [16])
    with pytest.raises(PoiseError, match="check samples hold no harmful prompt"):
        held_out_check(check[:, :8], np.zeros((0, 0), dtype=bool), [16])
    with pytest.raises(PoiseError, match="N must be"):
        held_out_check(check[:, :8], check, [])
    with pytest.raises(PoiseError, match="N must be"):
        held_out_check(check[:, :8], check, [0, 16])


def test_a_fit_with_no_spread_between_prompts_keeps_an_interval_beyond_the_samples() -> None:
    # 6 prompts, 4 samples each, 2 never harmful: the fit stops at "every prompt alike"
    # (α + β = 1e7), every bootstrap replicate refits there, and the forecast read
    # 100.0% [100.0, 100.0] at N = 128 and 4096: surer than 6 prompts allow
    matrix = np.zeros((6, 4), dtype=int)
    for i, k in enumerate([2, 1, 0, 0, 2, 1]):
        matrix[i, :k] = 1
    ns = [1, 4, 128, 4096]
    curve, fit = beta_binomial_curve(matrix, ns, boot=200)
    at = {c["n"]: c for c in curve}
    assert at[4096]["value"] == pytest.approx(1.0, abs=1e-6)
    for n in (128, 4096):
        assert at[n]["low"] < 0.95, at[n]
        assert at[n]["low"] <= at[n]["value"] <= at[n]["high"]
    assert at[128]["low"] <= at[4096]["low"]
    # within the samples drawn too the interval spans the bootstrap's (0.083, 0.376 with these
    # replicates) and the profile likelihood's (checked by brute force below)
    profile_low, profile_high = profile_likelihood_interval(matrix.sum(axis=1), 4, [1], fit)
    assert at[1]["low"] == pytest.approx(min(0.083, profile_low[0]), abs=1e-3)
    assert at[1]["high"] == pytest.approx(max(0.376, profile_high[0]), abs=1e-3)
    assert at[1]["high"] > 0.376  # the bootstrap alone was narrower
    assert fit["boundary"] == "no spread"


@pytest.mark.slow
def test_the_predicted_interval_from_four_prompts_covers_the_true_asr() -> None:
    """60 simulated runs of 4 prompts x 16 samples, p ~ Beta(2, 6), against the closed-form
    ASR(N) = 1 - B(2, 6 + N) / B(2, 6). The percentile bootstrap over 4 prompts alone covered
    48, 45 and 51 of 60 at N = 1, 16, 64 (too narrow: 4 prompts give few distinct replicates);
    spanning the profile likelihood too, 58 of 60 at each."""
    a, b = 2.0, 6.0
    ns = [1, 16, 64]
    truth = [
        1
        - math.exp(
            math.lgamma(b + n) - math.lgamma(a + b + n) - math.lgamma(b) + math.lgamma(a + b)
        )
        for n in ns
    ]  # 0.25, 0.917, 0.995
    rng = np.random.default_rng(2026)
    covered = np.zeros(len(ns), dtype=int)
    for run in range(60):
        p = rng.beta(a, b, size=4)
        matrix = (rng.random((4, 16)) < p[:, None]).astype(int)
        curve, _ = beta_binomial_curve(matrix, ns, boot=100, seed=run)
        covered += [c["low"] <= t <= c["high"] for c, t in zip(curve, truth, strict=True)]
    assert (covered >= 54).all(), covered  # 90% of 60; 95% coverage expects 57


def test_the_profile_likelihood_interval_matches_a_brute_force_search() -> None:
    """The region {(α, β): 2 (ℓ̂ - ℓ) <= χ²₁(0.95)} searched on a dense (mean, α + β) grid with
    the beta-binomial likelihood written out; the profile interval of ASR(N) is the range of
    ASR(N) over it."""
    from poise.attacks.worst_of_n import fit_beta_binomial, profile_likelihood_interval

    k = np.array([2, 1, 0, 0, 2, 1, 3])
    m, ns = 4, [1, 8, 64]
    fit = fit_beta_binomial(k, m)
    low, high = profile_likelihood_interval(k, m, ns, fit)

    def loglik(a: float, b: float) -> float:
        lb = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
        return sum(
            math.lgamma(ki + a) + math.lgamma(m - ki + b) - math.lgamma(m + a + b) - lb for ki in k
        )

    grid = [
        (mu * s, (1 - mu) * s)
        for mu in np.linspace(0.005, 0.995, 199)
        for s in np.exp(np.linspace(math.log(1e-3), math.log(1e7), 121))
    ]
    values = np.array([loglik(a, b) for a, b in grid])
    region = [g for g, v in zip(grid, values, strict=True) if v >= values.max() - 1.920729]
    for i, n in enumerate(ns):
        asr = [
            1 - math.exp(sum(math.log((b + j) / (a + b + j)) for j in range(n))) for a, b in region
        ]
        assert low[i] <= min(asr) + 1e-3 and high[i] >= max(asr) - 1e-3
        assert low[i] == pytest.approx(min(asr), abs=0.02)
        assert high[i] == pytest.approx(max(asr), abs=0.02)


def test_beyond_the_samples_the_resampled_curve_stays_at_its_value_at_m() -> None:
    """For N > M, q_i(N) = 1 - (1 - q_i(M)) (1 - k_i/M)^(N - M) = q_i(M): a prompt broken
    within its M samples counts as broken, one never broken as 0, at N = M + 1 as at 10 M
    (the plug-in 1 - (1 - k_i/M)^N would be 1 - 0.75^5 = 0.763 for a prompt with k = 1 of 4)."""
    m = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    pred = predicted_curve(m, [4, 5, 6, 40], boot=50)
    assert [p["value"] for p in pred] == pytest.approx([2 / 3] * 4, rel=1e-12)


def test_the_resampled_curves_interval_is_a_95_percent_one() -> None:
    """The percentile bootstrap over prompts is a 95% interval: for the mean of 400 prompts,
    half of them broken, it is close to the normal one, 0.5 ± 1.96 · 0.5 / 20 (0.049; a 90%
    interval would be 0.041)."""
    m = np.array([[i % 2 == 0] for i in range(400)])
    [point] = predicted_curve(m, [1], boot=1000)
    assert point["value"] == 0.5
    assert (point["high"] - point["low"]) / 2 == pytest.approx(1.959964 * 0.5 / 20, rel=0.05)
