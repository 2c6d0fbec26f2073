"""Choose organism-monitor's streaming rule again on its validation split, weights unchanged.

For when the calibration grid changes after the weights were built
(``poise.guards.calibrate.THRESHOLDS``): the same split, heads and tolerance as
``poise organism build`` (``poise.organism.monitor.rechoose_monitor_rule``); rewrites
``monitor.json`` and the card's rule and held-out figures.

    python scripts/rechoose_monitor_rule.py [FOLDER]   # default: the shipped organism-monitor
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main() -> None:
    from poise.organism.build import WEIGHTS_DIR, default_recipe
    from poise.organism.monitor import MONITOR_MEMBER, rechoose_monitor_rule

    torch.set_num_threads(2)
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else WEIGHTS_DIR / MONITOR_MEMBER
    recipe = default_recipe()
    rates = rechoose_monitor_rule(
        folder,
        seed=recipe.corpus_seed,
        subsample=recipe.base_corpus.subsample,
        command="python scripts/rechoose_monitor_rule.py",
    )
    for rate in rates.values():
        print(f"{rate.description}: {rate.format()}")
    print((folder / "README.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
