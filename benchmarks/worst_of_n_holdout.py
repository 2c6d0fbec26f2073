"""Worst-of-N held-out check: does the beta-binomial fitted to n = 8 samples per prompt predict
the attack success rate at N = 16 and 32 measured on an independent n = 32 run?

Runs (or reads) two worst-of-N audits of the same harmful prompts with different seeds, fits the
beta-binomial (poise.attacks.worst_of_n) to the n = 8 run, and prints, for each N, the prediction
with its interval (bootstrap and profile likelihood) beside the n = 32 run's empirical ASR and
Wilson interval, and the flat "resampled" curve of the n = 8 run for comparison.

    python benchmarks/worst_of_n_holdout.py --model organism-large --limit 16
    python benchmarks/worst_of_n_holdout.py --fit-run RUN8 --check-run RUN32   # existing runs
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from poise.attacks.worst_of_n import harmful_matrix, held_out_check, predicted_curve
from poise.errors import PoiseError
from poise.runs.run import Run


def _read(run_path: Path) -> tuple[np.ndarray, Any]:
    """The run's [prompts, samples] harmful matrix and the seed its header records."""
    run = Run.open(run_path)
    seed = run.config.get("sampling", {}).get("seed")
    return harmful_matrix(run.records())[1], seed


def _run(model: str, limit: int, n: int, seed: int, out: Path) -> Path:
    from poise import audit

    result = audit(
        model=model,
        suites=["harmful"],
        limit=limit,
        attack="worst_of_n",
        attack_options={"n": n},
        sampling={"seed": seed},
        out=str(out),
        html=False,
    )
    return result.run.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism-large")
    parser.add_argument("--limit", type=int, default=16, help="harmful prompts")
    parser.add_argument("--fit-run", type=Path, help="an existing n = 8 worst-of-N run")
    parser.add_argument("--check-run", type=Path, help="an existing n = 32 worst-of-N run")
    parser.add_argument("--boot", type=int, default=400)
    args = parser.parse_args()
    try:
        for given in (args.fit_run, args.check_run):  # before generating anything
            if given is not None:
                Run.open(given)
        with tempfile.TemporaryDirectory() as tmp:
            fit_run = args.fit_run or _run(args.model, args.limit, 8, 1, Path(tmp))
            check_run = args.check_run or _run(args.model, args.limit, 32, 2, Path(tmp))
            (fit_on, fit_seed), (check, check_seed) = _read(fit_run), _read(check_run)
        ns = [1, 2, 4, 8, 16, 32]
        result = held_out_check(fit_on, check, ns, boot=args.boot)
    except PoiseError as exc:
        raise SystemExit(f"error: {exc}") from None
    flat = {p["n"]: p["value"] for p in predicted_curve(fit_on, ns)}
    fit = result["fit"]
    print(
        f"{result['prompts']} prompts; fit on n = {result['fit_samples']} (seed {fit_seed}), "
        f"checked on an independent n = {result['check_samples']} run (seed {check_seed})"
    )
    print(
        f"beta-binomial: alpha = {fit['alpha']:.4g}, beta = {fit['beta']:.4g}, "
        f"mean p = {fit['mean']:.3f}"
    )
    print(f"{'N':>4}  {'predicted [95%]':>22}  {'empirical [95%]':>22}  inside  resampled(n=8)")
    for r in result["rows"]:
        pred = f"{r['predicted']:.3f} [{r['predicted_low']:.3f}, {r['predicted_high']:.3f}]"
        emp = f"{r['empirical']:.3f} [{r['empirical_low']:.3f}, {r['empirical_high']:.3f}]"
        print(f"{r['n']:>4}  {pred:>22}  {emp:>22}  {r['within']!s:>6}  {flat[r['n']]:.3f}")


if __name__ == "__main__":
    main()
