"""Refusal judges against human labels: poise's detector, the start-of-answer string match and
the refusal-keyword list, on a labelled file read from a path given on the command line.

    python benchmarks/judge_agreement.py FILE [--format F] [--column ROLE=NAME ...] [--errors N]

FILE is any format of ``poise judges validate`` (HarmBench's classifier validation JSON,
Do-Not-Answer's labelled responses, JailbreakBench's judge comparison, XSTest completions, or a
generic JSONL/CSV with a column mapping). Nothing is downloaded and nothing is written: the data
stays where it is, outside the repository.

For each label the file carries it prints, overall and per source model, n, accuracy and Cohen's
kappa of

1. ``poise``: :func:`poise.scoring.refusal.is_refusal`;
2. ``prefix``: the start-of-answer string match (:func:`~poise.scoring.refusal.is_refusal_prefix`,
   XSTest's baseline);
3. ``keyword``: the refusal-keyword list (:func:`~poise.scoring.refusal.is_refusal_keyword`);

and the exact McNemar p-value of poise against each baseline on the same answers. ``harmful`` is
judged the way the refusal judge does: a non-empty answer that is not a refusal. It also times
poise's detector per 100 answers (CPU time of this process).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from poise.errors import PoiseError


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join((__doc__ or "").split("\n\n")[0].split()))
    parser.add_argument("file", help="labelled answers (see poise judges validate)")
    parser.add_argument("--format", default=None, help="file format instead of detecting it")
    parser.add_argument("--column", action="append", default=[], help="ROLE=COLUMN (generic)")
    parser.add_argument("--errors", type=int, default=0, help="print N answers poise gets wrong")
    args = parser.parse_args()

    from poise.scoring.refusal import is_refusal, is_refusal_keyword, is_refusal_prefix
    from poise.scoring.validation import cohen_kappa, mcnemar_exact, read_labels

    columns = dict(pair.split("=", 1) for pair in args.column)
    labels = read_labels(args.file, format=args.format, columns=columns or None)
    answers = list(labels.answers)
    detectors: dict[str, Callable[[str], bool]] = {
        "poise": is_refusal,
        "prefix": is_refusal_prefix,
        "keyword": is_refusal_keyword,
    }
    started = time.process_time()  # CPU seconds: the machine is shared
    refused = {"poise": [is_refusal(a.response) for a in answers]}
    seconds = time.process_time() - started
    for name in ("prefix", "keyword"):
        refused[name] = [detectors[name](a.response) for a in answers]

    print(f"{labels.path} ({labels.format}): {len(answers)} answers")
    print(f"poise detector: {100 * seconds / max(len(answers), 1):.3f} CPU s per 100 answers")
    for target in labels.targets():
        keep = [i for i, a in enumerate(answers) if getattr(a, target) is not None]
        if target == "harmful":
            keep = [i for i in keep if answers[i].kind == "harmful"]
        gold = {i: bool(getattr(answers[i], target)) for i in keep}

        def predicted(name: str, i: int, target: str = target) -> bool:
            said_refused = refused[name][i]
            if target == "refused":
                return said_refused
            return not said_refused and bool(answers[i].response.strip())

        sources = ["all", *sorted({answers[i].source for i in keep})]
        print(
            f"\n{target} (n={len(keep)}; human positive rate {sum(gold.values()) / max(len(keep), 1):.3f})"
        )
        print(
            f"{'source':<28} {'n':>5} "
            + " ".join(f"{name + ' acc':>12} {name + ' kappa':>13}" for name in detectors)
            + f" {'p vs prefix':>12} {'p vs keyword':>13}"
        )
        for source in sources:
            rows = [i for i in keep if source in ("all", answers[i].source)]
            cells = []
            right: dict[str, list[bool]] = {}
            for name in detectors:
                right[name] = [predicted(name, i) == gold[i] for i in rows]
                accuracy = sum(right[name]) / len(rows)
                cells.append(
                    f"{accuracy:>12.3f} {_kappa(cohen_kappa, rows, gold, name, predicted):>13.3f}"
                )
            p_values = [
                mcnemar_exact(
                    sum(a and not b for a, b in zip(right["poise"], right[base], strict=True)),
                    sum(b and not a for a, b in zip(right["poise"], right[base], strict=True)),
                )
                for base in ("prefix", "keyword")
            ]
            print(
                f"{source[:28]:<28} {len(rows):>5} "
                + " ".join(cells)
                + f" {p_values[0]:>12.2g} {p_values[1]:>13.2g}"
            )
        if args.errors:
            wrong = [i for i in keep if predicted("poise", i) != gold[i]][: args.errors]
            for i in wrong:
                flat = " ".join(answers[i].response.split())[:160]
                print(f"  [{answers[i].source}] human {target}={gold[i]}: {flat}")


def _kappa(
    kappa: Callable[[int, int, int, int], float],
    rows: Sequence[int],
    gold: dict[int, bool],
    name: str,
    predicted: Callable[[str, int], bool],
) -> float:
    pairs = [(predicted(name, i), gold[i]) for i in rows]
    tp = sum(p and g for p, g in pairs)
    fp = sum(p and not g for p, g in pairs)
    fn = sum(g and not p for p, g in pairs)
    return kappa(tp, fp, fn, len(pairs) - tp - fp - fn)


if __name__ == "__main__":
    try:
        main()
    except PoiseError as exc:  # bad input (a file, a model, a monitor): one line, no traceback
        raise SystemExit(f"error: {exc}") from None
