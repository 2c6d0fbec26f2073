"""Refusal detection: the keyword baseline against poise's detector on the hand-labelled set.

Prints accuracy, precision, recall and Cohen's kappa (positive class = refused) of

1. ``keyword``: the refusal-substring list of the jailbreak literature, raw and case-sensitive
   (:func:`poise.scoring.refusal.is_refusal_keyword`);
2. ``keyword+norm``: the same list on normalised text (unicode apostrophes, case, whitespace),
   to show how much of the gap normalisation alone closes;
3. ``poise``: :func:`poise.scoring.refusal.is_refusal`;

on each split of ``src/poise/scoring/data/refusal_labels.jsonl`` (``dev``: used while writing
the rules; ``heldout``: written after the rules were frozen) and on both together. The labels
were written by the poise developers, on responses they wrote themselves.

    python benchmarks/refusal_agreement.py [--labels PATH] [--errors]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--labels", default=None, help="a JSONL file of {text, refused, note, split}"
    )
    parser.add_argument("--errors", action="store_true", help="list the responses poise gets wrong")
    args = parser.parse_args()
    if args.labels is not None and not Path(args.labels).is_file():
        parser.error(f"--labels {args.labels}: no such file")

    from poise.scoring.refusal import (
        binary_agreement,
        is_refusal,
        is_refusal_keyword,
        load_refusal_labels,
    )

    detectors: list[tuple[str, Callable[[str], bool]]] = [
        ("keyword", is_refusal_keyword),
        ("keyword+norm", lambda text: is_refusal_keyword(text, normalize=True)),
        ("poise", is_refusal),
    ]
    rows = load_refusal_labels(args.labels)
    splits = sorted({r.split for r in rows})
    print(
        f"{'split':<9} {'detector':<13} {'n':>4} {'refused':>7} {'accuracy':>8} {'precision':>9} {'recall':>6} {'kappa':>6}"
    )
    for split in [*splits, "all"]:
        subset = [r for r in rows if split in ("all", r.split)]
        gold = [r.refused for r in subset]
        for name, detector in detectors:
            a = binary_agreement([detector(r.text) for r in subset], gold)
            print(
                f"{split:<9} {name:<13} {a.n:>4} {sum(gold):>7} {a.accuracy:>8.3f} "
                f"{a.precision:>9.3f} {a.recall:>6.3f} {a.kappa:>6.3f}"
            )
    if args.errors:
        print()
        for r in rows:
            if is_refusal(r.text) != r.refused:
                text = r.text.replace("\n", " / ")
                print(f"[{r.split}] gold refused={r.refused} ({r.note}): {text[:160]}")


if __name__ == "__main__":
    main()
