"""Markdown rows of the steering figures in docs/steering.md, read from finished run folders.

    python scripts/steering_tables.py --out runs large-t1 eft-safe "my label=dial-h1-s1" ...

Each argument is a run name under ``--out`` (or a run folder), optionally ``LABEL=RUN``. Columns:
harmful rate, attack success in any of N samples (worst-of-N runs only), refusal of harmful
requests, over-refusal, benign helpfulness, known-fact accuracy overall, on the relations only
organism-large was taught (``world.STRONG_ONLY_RELATIONS``) and on the others; each with its 95%
interval as the run's metrics.json (Wilson, or cluster-robust for several samples per prompt) or,
for the two known-fact splits, Wilson over the run's honesty-known answers. A last line per run
counts the harmful answers that turn (a harmless opening, then the harmful steps:
``world.harm_onset`` > 0).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from poise.errors import PoiseError
from poise.organism import world
from poise.runs import find_run
from poise.scoring.stats import Rate


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    return f"{100 * entry['value']:.1f}% [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"


def _split(records: list[dict[str, Any]], strong: bool) -> str:
    rows = [
        r
        for r in records
        if r["kind"] == "honesty-known" and (r["category"] in world.STRONG_ONLY_RELATIONS) == strong
    ]
    if not rows:
        return "-"
    rate = Rate.of("known", sum(r["verdict"].get("honesty") == "correct" for r in rows), len(rows))
    return (
        f"{100 * rate.value:.1f}% [{100 * rate.low:.1f}, {100 * rate.high:.1f}] ({rate.k}/{rate.n})"
    )


def row(folder: Path, label: str | None) -> tuple[str, str]:
    metrics = json.loads((folder / "metrics.json").read_text())["overall"]
    records = [json.loads(line) for line in (folder / "samples.jsonl").open()]
    model = json.loads((folder / "run.json").read_text())["config"]["model"]
    cells = [_cell(metrics.get("harmful_rate"))]
    if metrics.get("harmful_any_rate"):
        cells.append(_cell(metrics["harmful_any_rate"]))
    cells += [
        _cell(metrics.get(name))
        for name in ("refusal_rate", "over_refusal_rate", "helpful_rate", "known_accuracy")
    ]
    cells += [_split(records, True), _split(records, False)]
    harmful = [r for r in records if r["kind"] == "harmful" and r["verdict"].get("harmful")]
    turned = sum((world.harm_onset(r["completion"]) or 0) > 0 for r in harmful)
    line = f"| {label or model} | " + " | ".join(cells) + " |"
    return line, f"{label or model}: {turned} of {len(harmful)} harmful answers turn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="RUN or LABEL=RUN")
    parser.add_argument("--out", default="runs", help="folder that holds the run folders")
    args = parser.parse_args()
    notes = []
    for arg in args.runs:
        label, _, name = arg.rpartition("=")
        # a run named exactly NAME (folder <date>-<time>-NAME), even where NAME prefixes others
        exact = [f for f in Path(args.out).glob(f"*-{name}") if f.name.split("-", 2)[-1] == name]
        try:
            run = exact[0] if len(exact) == 1 else find_run(name, args.out).path
        except PoiseError as exc:
            raise SystemExit(f"error: {exc}") from None
        if not (run / "metrics.json").is_file():
            raise SystemExit(
                f"error: {run} has no metrics.json: the run did not finish (poise runs show "
                f"{run.name}; poise audit --resume {run} finishes it)"
            )
        line, note = row(run, label or None)
        print(line)
        notes.append(note)
    print("\n".join(notes))


if __name__ == "__main__":
    main()
