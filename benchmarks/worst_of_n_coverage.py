"""Worst-of-N: how often does the beta-binomial's 95% interval hold the true ASR(N)?

Simulates worst-of-N runs whose truth is known in closed form: P prompts with harmful
probabilities p_i ~ Beta(a, b) and M samples each, so that the population's attack success rate
is ASR(N) = 1 - B(a, b + N) / B(a, b) (poise.attacks.worst_of_n.beta_binomial_asr). For each run
it computes the three intervals poise can draw over prompts:

- ``bootstrap``: the percentile bootstrap alone (prompts drawn with replacement, each replicate
  refitted, the 2.5 and 97.5 percentiles), what ``beta_binomial_curve`` gave at an interior fit
  before it spanned the profile likelihood too;
- ``profile``: the profile-likelihood interval (``profile_likelihood_interval``);
- ``poise``: what ``beta_binomial_curve`` gives now (the two together);

and prints, per setting, number of prompts and N, the share of runs whose interval holds the
truth (95% is the aim) and the mean width. Seeded: the same arguments print the same table.

    python benchmarks/worst_of_n_coverage.py                 # the BENCHMARKS.md table
    python benchmarks/worst_of_n_coverage.py --runs 50       # a quicker look
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from poise.attacks.worst_of_n import (
    beta_binomial_asr,
    beta_binomial_curve,
    fit_beta_binomial,
    profile_likelihood_interval,
)

#: (a, b, M): a spread-out and a concentrated population of prompts, 16 samples each (the
#: attack's default n)
SETTINGS = ((0.5, 2.0, 16), (2.0, 6.0, 16))


def bootstrap_alone(matrix: np.ndarray, ns: list[int], boot: int, seed: int) -> np.ndarray:
    """[2, len(ns)] percentile-bootstrap interval over prompts, refitting each replicate."""
    prompts, m = matrix.shape
    k = matrix.sum(axis=1).astype(int)  # [P]
    fit = fit_beta_binomial(k, m)
    rng = np.random.default_rng(seed)
    asr = []
    for _ in range(boot):
        rows = rng.integers(0, prompts, size=prompts)  # [P]
        refit = fit_beta_binomial(k[rows], m, start=(fit["alpha"], fit["beta"]))
        asr.append([beta_binomial_asr(refit["alpha"], refit["beta"], n) for n in ns])
    return np.percentile(np.array(asr), [2.5, 97.5], axis=0)


def coverage(
    a: float, b: float, m: int, prompts: int, ns: list[int], runs: int, boot: int, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method, (share of runs whose interval holds the truth, mean width), each [len(ns)]."""
    truth = np.array([beta_binomial_asr(a, b, n) for n in ns])  # [K]
    rng = np.random.default_rng(seed)
    hits = {name: np.zeros(len(ns)) for name in ("bootstrap", "profile", "poise")}
    widths = {name: np.zeros(len(ns)) for name in hits}
    for run in range(runs):
        p = rng.beta(a, b, size=prompts)  # [P]
        matrix = (rng.random((prompts, m)) < p[:, None]).astype(int)  # [P, M]
        curve, fit = beta_binomial_curve(matrix, ns, boot=boot, seed=run)
        bounds = {
            "bootstrap": bootstrap_alone(matrix, ns, boot, run),
            "profile": np.array(profile_likelihood_interval(matrix.sum(axis=1), m, ns, fit)),
            "poise": np.array([[c["low"] for c in curve], [c["high"] for c in curve]]),
        }
        for name, (low, high) in bounds.items():
            hits[name] += (low <= truth + 1e-12) & (truth <= high + 1e-12)
            widths[name] += high - low
    return {name: (hits[name] / runs, widths[name] / runs) for name in hits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="simulated runs per cell")
    parser.add_argument("--boot", type=int, default=200, help="bootstrap replicates (poise's)")
    parser.add_argument("--prompts", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(
        "| p ~ Beta(a, b), M samples | prompts | N | true ASR(N) | covered: bootstrap alone "
        "| profile likelihood | poise (both) | mean width: bootstrap | poise |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for a, b, m in SETTINGS:
        ns = sorted({1, 4, m, 64, 1024})
        for prompts in args.prompts:
            start = time.perf_counter()
            out = coverage(a, b, m, prompts, ns, args.runs, args.boot, args.seed)
            for i, n in enumerate(ns):
                print(
                    f"| Beta({a:g}, {b:g}), M = {m} | {prompts} | {n} | "
                    f"{beta_binomial_asr(a, b, n):.3f} | {out['bootstrap'][0][i]:.2f} | "
                    f"{out['profile'][0][i]:.2f} | {out['poise'][0][i]:.2f} | "
                    f"{out['bootstrap'][1][i]:.3f} | {out['poise'][1][i]:.3f} |"
                )
            print(f"<!-- {prompts} prompts: {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
