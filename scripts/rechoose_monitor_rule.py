"""Choose organism-monitor's streaming rule again on its validation split, weights unchanged.

For when the calibration grid changes after the weights were built
(``poise.guards.calibrate.THRESHOLDS``): the same split, heads and tolerance as
``poise organism build`` (``poise.organism.monitor.rechoose_monitor_rule``); rewrites
``monitor.json`` and the card's rule and held-out figures.

    python scripts/rechoose_monitor_rule.py FOLDER     # organism-monitor built elsewhere
    python scripts/rechoose_monitor_rule.py --shipped  # the organism-monitor inside the package

It calibrates on the organism's corpus: for organism-monitor only (a copy, or the output folder
of ``poise organism build``). A monitor of one's own data is calibrated by ``poise train
monitor --validation``, never by this script, which would rewrite its rule from the wrong data.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="monitor.json and README.md of the folder are rewritten in place",
    )
    # the folder is rewritten, so there is no default: the shipped one is asked for by name
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "folder",
        nargs="?",
        type=Path,
        help="an organism-monitor folder (one with monitor.json), e.g. poise organism build's",
    )
    where.add_argument(
        "--shipped",
        action="store_true",
        help="the organism-monitor shipped inside the poise package (poise/organism/weights)",
    )
    args = parser.parse_args()

    import torch

    from poise.errors import PoiseError
    from poise.guards.monitor import MONITOR_JSON, is_monitor_folder
    from poise.organism.build import WEIGHTS_DIR, default_recipe
    from poise.organism.monitor import MONITOR_MEMBER, rechoose_monitor_rule

    # resolved, so a folder named like a plugin's model (organism-monitor) is that folder
    folder = (WEIGHTS_DIR / MONITOR_MEMBER if args.shipped else args.folder.expanduser()).resolve()
    if not folder.is_dir():
        parser.exit(1, f"error: {folder}: no such folder (give a monitor folder, or --shipped)\n")
    if not is_monitor_folder(folder):
        parser.exit(
            1,
            f"error: {folder}: not a monitor folder (no {MONITOR_JSON}); give an organism-monitor "
            "folder (poise organism build's output, or a copy), or --shipped\n",
        )
    torch.set_num_threads(2)
    recipe = default_recipe()
    try:
        rates = rechoose_monitor_rule(
            folder,
            seed=recipe.corpus_seed,
            subsample=recipe.base_corpus.subsample,
            command="python scripts/rechoose_monitor_rule.py",
        )
    except PoiseError as exc:  # a damaged monitor folder: one line, no traceback
        parser.exit(1, f"error: {exc}\n")
    for rate in rates.values():
        print(f"{rate.description}: {rate.format()}")
    print((folder / "README.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
