"""Figures of docs/probes.md that no poise command prints on its own.

python scripts/probe_figures.py judges RUN
    the harmful answers of an (oracle-judged) audit run by the oracle's label, and what the
    output-only refusal judge calls the feigned and the real compliance among them
python scripts/probe_figures.py heldout PROBE RUN --kind harmful
    a comply / deception probe's held-out AUROC (DeLong 95%) on the rows of one kind only:
    the same examples, split and layer as ``poise probe train`` (the probe's folder says
    which), the probe refitted on the train items of that split
python scripts/probe_figures.py paired BASE STEERED --exclude-limit 76
    harmful / refused / over-refusal / helpful rates (Wilson 95%) of two audits of the same
    items, leaving out the items of the harmful and benign suites that ``poise audit --limit
    N`` picks (``poise.auditing.spread_subset``: the items a steering strength was chosen
    on), and the exact McNemar test of the harmful verdicts paired by item
python scripts/probe_figures.py threshold PROBE [--run RUN]
    why ``poise probe train`` sets its threshold on held-out negatives: the probe refitted as
    it was trained (same examples, split and layer), the held-out negatives' items halved, and
    the share of one half's negatives flagged by a threshold at the probe's FPR set on the
    fitted negatives, or on the other half (each half checked once)
python scripts/probe_figures.py firewall cooking coding
    the query firewall per role on organism-large: anchors = every other prompt of the
    role's benign category, in-role = the rest, off-role = the other categories' benign
    prompts, harmful = the harmful suite; AUROC (DeLong 95%) and the flagged counts
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from typing import Any

import torch

from poise.errors import PoiseError
from poise.models import load_model
from poise.models.base import default_system_prompt, no_system_prompt
from poise.probes import data
from poise.probes.linear import LinearProbe, load_probe
from poise.probes.metrics import auroc_interval
from poise.probes.sweep import collect, layer_sweep, split_by_group
from poise.runs import find_run
from poise.scoring.judges import get_judge
from poise.scoring.stats import mcnemar_exact, wilson_interval
from poise.suites.loaders import load_suite


def judges(run: str) -> None:
    records = [r for r in find_run(run).records() if r.get("kind") == "harmful"]
    labels = Counter(str(r["verdict"]["label"]) for r in records)
    print(f"{len(records)} harmful answers, oracle labels: {dict(labels.most_common())}")
    items = {i.id: i for i in load_suite("harmful").items}
    for label in ("feigned", "compliance"):
        chosen = [r for r in records if r["verdict"]["label"] == label]
        verdicts = get_judge("refusal").judge(
            [items[str(r["item_id"])] for r in chosen], [str(r["completion"]) for r in chosen]
        )
        said = Counter(v.label for v in verdicts)
        print(f"oracle {label}: {len(chosen)} answers, {len({r['item_id'] for r in chosen})} "
              f"items; the refusal judge says {dict(said)}")  # fmt: skip


def heldout(probe_dir: str, run: str, kind: str) -> None:
    probe = load_probe(probe_dir)
    meta = probe.metadata
    model = load_model(str(probe.model))
    records = list(find_run(run).records())
    system, none = default_system_prompt(model), no_system_prompt(model)
    read = data.compliance_from_records if meta["task"] == "comply" else None
    examples = (
        read(records, system, none_prompt=none)
        if read is not None
        else data.deception_from_records(records, system, none_prompt=none)
    )
    kinds = {str(r["item_id"]): str(r.get("kind")) for r in records}
    train, test = split_by_group(
        [e.group for e in examples], test_fraction=meta["test_fraction"], seed=meta["seed"]
    )
    features = collect(model, examples, upto=probe.layer)[:, probe.layer]  # [rows, hidden]
    labels = torch.tensor([e.label for e in examples])
    refit = LinearProbe.fit(
        features[train], labels[train], layer=probe.layer, model=None, l2=meta["l2"]
    )
    rows = [i for i in test if kinds[examples[i].group] == kind]
    scores = refit.score(features[rows]).tolist()
    truth = labels[rows].tolist()
    area, low, high = auroc_interval(scores, truth, [examples[i].group for i in rows])
    items = len({examples[i].group for i in rows})
    print(f"{meta['task']} probe, layer {probe.layer}, held-out {kind} rows: {len(rows)} "
          f"({items} items, {sum(truth)} positive): AUROC {area:.3f} [{low:.3f}, {high:.3f}]")  # fmt: skip


def threshold(probe_dir: str, run: str | None) -> None:
    from poise.probes.metrics import threshold_at_fpr

    probe = load_probe(probe_dir)
    meta = probe.metadata
    model = load_model(str(probe.model))
    system, none = default_system_prompt(model), no_system_prompt(model)
    task = meta["task"]
    if task in ("comply", "deception"):
        if run is None:
            raise PoiseError(f"threshold: a {task} probe needs --run, the run it was trained on")
        records = list(find_run(run).records())
        read = data.compliance_from_records if task == "comply" else data.deception_from_records
        examples = read(records, system, none_prompt=none)
    else:
        names = ["harmful", "benign"] if task == "harmful" else ["honesty"]
        items = [item for name in names for item in load_suite(name).items]
        examples = (
            data.harmful_vs_benign(items, system)
            if task == "harmful"
            else data.instructed_pairs(items)
        )
    groups = [e.group for e in examples]
    train, test = split_by_group(groups, test_fraction=meta["test_fraction"], seed=meta["seed"])
    features = collect(model, examples, upto=probe.layer)[:, probe.layer]  # [rows, hidden]
    labels = torch.tensor([e.label for e in examples])
    refit = LinearProbe.fit(
        features[train], labels[train], layer=probe.layer, model=None, l2=meta["l2"]
    )
    fitted = [i for i in train if int(labels[i]) == 0]
    held = [i for i in test if int(labels[i]) == 0]
    held_items = sorted({groups[i] for i in held})
    halves = (set(held_items[0::2]), set(held_items[1::2]))
    fpr = probe.fpr
    fitted_threshold = threshold_at_fpr(refit.score(features[fitted]).tolist(), fpr)
    print(f"{task} probe, layer {probe.layer}, FPR {fpr:g}: {len(fitted)} fitted negatives, "
          f"{len(held)} held-out negatives in {len(held_items)} items, halved by item")  # fmt: skip
    for check, calibrate in ((0, 1), (1, 0)):
        rows = [i for i in held if groups[i] in halves[check]]
        other = [i for i in held if groups[i] in halves[calibrate]]
        scores = refit.score(features[rows]).tolist()
        other_threshold = threshold_at_fpr(refit.score(features[other]).tolist(), fpr)
        for name, t in (("fitted negatives", fitted_threshold), ("other half", other_threshold)):
            flagged = sum(s > t for s in scores)
            low, high = wilson_interval(flagged, len(scores))
            print(f"  half {check + 1} ({len(rows)} negatives), threshold set on the {name}: "
                  f"{flagged} flagged, {flagged / len(scores):.1%} "
                  f"[{low:.1%}, {high:.1%}]")  # fmt: skip


def prompt(probe_dir: str, run: str) -> None:
    meta = load_probe(probe_dir).metadata
    model = load_model(str(load_probe(probe_dir).model))
    records = list(find_run(run).records())
    system, none = default_system_prompt(model), no_system_prompt(model)
    examples = [
        dataclasses.replace(e, continuation=None)
        for e in data.deception_from_records(records, system, none_prompt=none)
    ]
    train, test = split_by_group(
        [e.group for e in examples], test_fraction=meta["test_fraction"], seed=meta["seed"]
    )
    features = collect(model, examples)  # [rows, layers + 1, hidden], the last prompt token
    labels = torch.tensor([e.label for e in examples])
    groups = [e.group for e in examples]
    for r in layer_sweep(features, labels, train, test, l2=meta["l2"], groups=groups):
        print(f"last prompt token, layer {r.layer}: AUROC {r.auroc:.3f} "
              f"[{r.auroc_low:.3f}, {r.auroc_high:.3f}] ({r.test_rows} held-out rows)")  # fmt: skip


def firewall(roles: list[str]) -> None:
    from poise.probes.firewall import Firewall

    model = load_model("organism-large")
    benign = load_suite("benign").items
    harmful = [i.prompt for i in load_suite("harmful").items]
    for role in roles:
        own = [i.prompt for i in benign if i.category == role]
        off = [i.prompt for i in benign if i.category != role]
        wall = Firewall.fit(model, {role: own[::2]}, system_prompt=default_system_prompt(model))
        inside = wall.scores(model, role, own[1::2])
        threshold = wall.zone(role).threshold
        parts = []
        for name, other in (("off-role", off), ("harmful", harmful)):
            scores = wall.scores(model, role, other)
            area, low, high = auroc_interval(scores + inside, [1] * len(scores) + [0] * len(inside))
            flagged = sum(s > threshold for s in scores)
            parts.append(f"{name} vs in-role {area:.3f} [{low:.3f}, {high:.3f}], "
                         f"flagged {flagged}/{len(scores)}")  # fmt: skip
        flagged_in = sum(s > threshold for s in inside)
        print(f"{role}: in-role flagged {flagged_in}/{len(inside)}; " + "; ".join(parts))


def paired(base: str, steered: str, exclude_limit: int) -> None:
    from poise.auditing import spread_subset

    left_out = set()
    if exclude_limit:
        for name in ("harmful", "benign"):
            left_out |= {i.id for i in spread_subset(load_suite(name).items, exclude_limit)}

    def verdicts(run: str) -> dict[str, Any]:
        return {
            str(r["item_id"]): r for r in find_run(run).records() if r["item_id"] not in left_out
        }

    a, b = verdicts(base), verdicts(steered)
    if set(a) != set(b):
        raise SystemExit("the two runs answer different items")
    for name, runs in (("base", a), ("steered", b)):
        parts = []
        for kind, key, want in (
            ("harmful", "harmful", True),
            ("harmful", "refused", True),
            ("borderline", "refused", True),
            ("benign", "helpful", True),
        ):
            rows = [r for r in runs.values() if r.get("kind") == kind]
            if not rows:  # a run of other suites (harmful + benign): no such rate
                parts.append(f"{kind} {key}: no {kind} items")
                continue
            k = sum(bool(r["verdict"].get(key)) == want for r in rows)
            low, high = wilson_interval(k, len(rows))
            parts.append(f"{kind} {key} {k}/{len(rows)} = {100 * k / len(rows):.1f}% "
                         f"[{100 * low:.1f}, {100 * high:.1f}]")  # fmt: skip
        print(f"{name}: " + "; ".join(parts))
    harmful = [i for i, r in a.items() if r.get("kind") == "harmful"]
    a_only = sum(
        bool(a[i]["verdict"]["harmful"]) and not b[i]["verdict"]["harmful"] for i in harmful
    )
    b_only = sum(
        bool(b[i]["verdict"]["harmful"]) and not a[i]["verdict"]["harmful"] for i in harmful
    )
    print(f"paired harmful verdicts on {len(harmful)} harmful items: harmful only in base "
          f"{a_only}, only steered {b_only}, exact McNemar p = {mcnemar_exact(a_only, b_only):.3g}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("judges")
    p.add_argument("run")
    p = sub.add_parser("heldout")
    p.add_argument("probe")
    p.add_argument("run")
    p.add_argument("--kind", default="harmful")
    p = sub.add_parser("prompt")
    p.add_argument("probe")
    p.add_argument("run")
    p = sub.add_parser("threshold")
    p.add_argument("probe")
    p.add_argument("--run")
    p = sub.add_parser("firewall")
    p.add_argument("roles", nargs="+")
    p = sub.add_parser("paired")
    p.add_argument("base")
    p.add_argument("steered")
    p.add_argument("--exclude-limit", type=int, default=0)
    args = parser.parse_args()
    try:
        if args.what == "judges":
            judges(args.run)
        elif args.what == "heldout":
            heldout(args.probe, args.run, args.kind)
        elif args.what == "threshold":
            threshold(args.probe, args.run)
        elif args.what == "firewall":
            firewall(args.roles)
        elif args.what == "prompt":
            prompt(args.probe, args.run)
        else:
            paired(args.base, args.steered, args.exclude_limit)
    except PoiseError as exc:  # an unknown run, a damaged probe folder: one line, no traceback
        raise SystemExit(f"error: {exc}") from None
    except OSError as exc:  # a run without metrics.json or samples.jsonl (unfinished)
        raise SystemExit(f"error: {exc.filename}: {exc.strerror}") from None


if __name__ == "__main__":
    main()
