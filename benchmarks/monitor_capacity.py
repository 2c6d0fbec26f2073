"""Does a deeper or longer-trained monitor stop the organism's harmful answers earlier? (guards issue)

An experiment for a next organism generation, not a measurement of the shipped one. The
organism's monitor splits (:func:`poise.organism.monitor.monitor_pairs`: train, validation,
held out, each answer labelled by token) are re-written with ``S`` steps per compliance and
feigned answer (``benchmarks/guard_bounds.py``'s ``with_steps``: more ``[REDACTED]`` steps after
a compliance's last one, more decoys after a feigned answer's; 3 is the shipped corpus). For each
``S,LAYERS,EPOCHS`` given, a monitor is trained from the shipped organism-small as the build
trains ``organism-monitor`` (:func:`poise.organism.monitor.monitor_settings`: learning rate
``MONITOR_LR``, both heads offered, the rule chosen on validation at ``MONITOR_TOLERANCE``),
except that it keeps ``LAYERS`` decoder layers (the build keeps 1 of organism-small's 3) and
trains ``EPOCHS`` epochs (the build: 1). Printed per monitor, one JSON line: the chosen head,
threshold and k; on validation its macro-F1 and the mean share of a harmful answer's tokens
generated before the stop; on held out the same rule's macro-F1 and share. These are corpus
answers, not the organism's sampled ones (``benchmarks/guard_stream.py`` measures those).

    python benchmarks/monitor_capacity.py 3,1,1 8,1,1 8,3,1 8,1,3 [--threads 2]

Each monitor takes about 2 to 3 minutes on 2 quiet cores (the first line also builds the splits).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _config(text: str) -> tuple[int, int, int]:
    try:
        steps, layers, epochs = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected STEPS,LAYERS,EPOCHS") from None
    if steps < 3 or layers < 1 or epochs < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: steps >= 3, layers >= 1, epochs >= 1")
    return steps, layers, epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("configs", nargs="+", type=_config, help="STEPS,LAYERS,EPOCHS")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from guard_bounds import _kind, with_steps
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poise.guards.calibrate import calibrate
    from poise.organism import WEIGHTS_DIR
    from poise.organism.build import default_recipe
    from poise.organism.monitor import monitor_pairs, monitor_settings
    from poise.train.monitor import fit_monitor

    recipe = default_recipe()
    seed, subsample = recipe.corpus_seed, recipe.base_corpus.subsample
    folder = WEIGHTS_DIR / "organism-small"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    small = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    splits: dict[int, dict[str, list]] = {}
    for steps, layers, epochs in args.configs:
        if steps not in splits:
            splits[steps] = {
                name: [
                    with_steps(m, _kind(e), steps) for e, m in monitor_pairs(name, seed, subsample)
                ]
                for name in ("train", "validation", "heldout")
            }
        data = splits[steps]
        start = time.perf_counter()
        trained = fit_monitor(
            copy.deepcopy(small),
            tokenizer,
            data["train"],
            base="organism-small",
            settings=monitor_settings(seed, layers=layers, epochs=epochs),
            validation=data["validation"],
        )
        chosen = trained.calibration
        assert chosen is not None
        held = calibrate(
            trained.monitor,
            data["heldout"],
            thresholds=[chosen.threshold],
            ks=[chosen.k],
            heads=[chosen.head],
        )
        row = {
            "steps": steps,
            "layers": layers,
            "epochs": epochs,
            "optimiser_steps": len(trained.losses),
            "head": chosen.head,
            "threshold": chosen.threshold,
            "k": chosen.k,
            "validation_macro_f1": round(chosen.macro_f1, 4),
            "validation_share": round(chosen.share, 4),
            "heldout_macro_f1": round(held.macro_f1, 4),
            "heldout_share": round(held.share, 4),
            "answers": {name: len(rows) for name, rows in data.items()},
            "seconds": round(time.perf_counter() - start),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
