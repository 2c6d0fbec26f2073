"""Train a probe end to end (activations -> layer sweep -> fit -> folder) and score answers.

``train_probe`` is what ``poise probe train`` calls; ``score_answers`` what ``poise probe score``
calls once the command has read the run's records.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from poise._version import __version__
from poise.errors import PoiseError, check_number
from poise.models.base import LanguageModel, no_system_prompt
from poise.probes.data import Example, record_chat, record_completion, record_where
from poise.probes.linear import LinearProbe, check_new_folder
from poise.probes.metrics import auroc_interval, threshold_at_fpr
from poise.probes.sweep import (
    LayerResult,
    collect,
    layer_sweep,
    not_finite,
    require_activations,
    split_by_group,
)
from poise.tasks import read

__all__ = [
    "ProbeScores",
    "TrainResult",
    "check_benign_for_fpr",
    "score_answers",
    "train_probe",
    "write_scores",
]


@dataclass
class TrainResult:
    """The sweep, the layer kept and where the probe was written."""

    probe: LinearProbe
    sweep: list[LayerResult]
    layer: int
    out: Path
    seconds: float


def train_probe(
    model: LanguageModel,
    examples: Sequence[Example],
    out: str | Path,
    *,
    task: str,
    layer: int | None = None,
    test_fraction: float = 0.3,
    l2: float = 10.0,
    fpr: float = 0.01,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> TrainResult:
    """Read ``examples``' activations, sweep every layer (fit on the train items, measure on the
    held-out items), keep ``layer`` (default: the best held-out AUROC, ties to the earlier
    layer), fit it on the train items, set its threshold at ``fpr`` on the held-out negatives
    and save the probe folder to ``out``."""
    require_activations("poise probe train", model)
    if not 0.0 < test_fraction < 1.0:
        raise PoiseError(f"probe: test_fraction must be in (0, 1), got {test_fraction}")
    # checked before the activations are read (minutes on a large model), not after
    check_number("probe", "l2", l2, positive=True)
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 <= fpr < 1.0:
        raise PoiseError(f"probe: fpr must be a false-positive rate in [0, 1), got {fpr!r}")
    if not examples:
        raise PoiseError("probe: no labelled examples to train on")
    wrong = next((e for e in examples if e.label not in (0, 1)), None)
    if wrong is not None:
        raise PoiseError(
            f"probe: labels must be 0 or 1, got {wrong.label!r} (item {wrong.group!r})"
        )
    target = Path(out)
    check_new_folder(target, "probe")
    if layer is not None:  # the model's blocks tell the layers, before a forward pass
        blocks = len(require_activations("poise probe train", model).decoder_layers())
        if not 0 <= layer <= blocks:
            raise PoiseError(
                f"probe: layer {layer} out of range (0 .. {blocks}): {model.name} has {blocks} "
                f"decoder layers, so hidden states 0 (the embeddings) to {blocks}"
            )
    started = time.perf_counter()
    features = collect(model, examples, progress=progress)  # [rows, layers + 1, hidden]
    rows, layers = not_finite(features)
    if rows:  # else a traceback from the sweep's AUROC of NaN scores
        raise PoiseError(
            f"probe: the model's activations of {len(rows)} of {len(examples)} rows are not "
            f"finite (NaN or inf at layers {', '.join(map(str, layers))}; a float16 "
            f"overflow?), first: item {examples[rows[0]].group!r}"
        )
    labels = torch.tensor([e.label for e in examples])
    groups = [e.group for e in examples]
    train, test = split_by_group(groups, test_fraction=test_fraction, seed=seed)
    sweep = layer_sweep(features, labels, train, test, l2=l2, groups=groups)
    chosen = max(sweep, key=lambda r: (r.auroc, -r.layer)).layer if layer is None else layer
    reduce = "mean" if examples[0].continuation is not None else "last"
    kept = next(r for r in sweep if r.layer == chosen)
    fitted_items = sorted({examples[i].group for i in train})
    held_out_negatives = [i for i in test if int(labels[i]) == 0]
    metadata: dict[str, Any] = {
        "task": task,
        "poise_version": __version__,
        "l2": l2,
        "seed": seed,
        "test_fraction": test_fraction,
        "rows": len(examples),
        "positives": int(labels.sum()),
        "train_items": len(fitted_items),
        # which items it was fitted on: probe score sets its threshold on benign answers to others
        "fitted_items": fitted_items,
        "test_items": len({examples[i].group for i in test}),
        "held_out": kept.to_dict(),
        "sweep": [r.to_dict() for r in sweep],
        "recipe": "standardise + L2 logistic regression (arXiv 2502.03407 / 2509.18058)",
        "threshold_on": f"{len(held_out_negatives)} held-out negatives",
    }
    probe = LinearProbe.fit(
        features[train, chosen],
        labels[train],
        layer=chosen,
        model=model.spec or model.name,
        reduce=reduce,
        l2=l2,
        fpr=fpr,
        metadata=metadata,
        # on the negatives it is fitted on, scores are pushed down: a 1% threshold set there
        # flags more new negatives (docs/probes.md, `scripts/probe_figures.py threshold`)
        calibration=features[held_out_negatives, chosen],
    )
    probe.save(target)
    return TrainResult(probe, sweep, chosen, target, time.perf_counter() - started)


@dataclass
class ProbeScores:
    """A probe's score of each record, its threshold and how the threshold was chosen."""

    scores: list[float]
    flagged: list[bool]
    threshold: float
    threshold_source: str
    benign_answers: int
    agreement: dict[str, Any] = field(default_factory=dict)


def check_benign_for_fpr(records: Sequence[Mapping[str, Any]], fpr: float | None) -> None:
    """A false-positive rate given for the threshold needs benign answers to set it on; without
    any it would be dropped in silence for the probe's own threshold."""
    if fpr is not None and not any(r.get("kind") == "benign" for r in records):
        raise PoiseError(
            f"fpr (--fpr) {fpr:g}: the run has no benign answers to set the threshold on; "
            "audit with --suite benign too, or leave fpr out for the probe's own threshold (set "
            "on its held-out negatives)"
        )


def score_answers(
    model: LanguageModel,
    probe: LinearProbe,
    records: Sequence[Mapping[str, Any]],
    system_prompt: str | None,
    *,
    fpr: float | None = None,
    progress: Callable[[int], None] | None = None,
    source: object | None = None,
) -> ProbeScores:
    """The probe's logit for each record's answer (read where the probe was trained: the last
    prompt token, or the mean over the answer's tokens). The threshold is set at ``fpr``
    (default: the probe's) on the records' benign answers when there are any (those to items
    the probe was not fitted on, its metadata's ``fitted_items``, when some are), else the
    probe's own (set on its held-out negatives). ``agreement`` crosses the flags with the judge's
    ``harmful`` / ``refused`` verdicts."""
    check_benign_for_fpr(records, fpr)
    rate = probe.fpr if fpr is None else fpr
    examples: list[Example] = []
    none = no_system_prompt(model)
    for number, record in enumerate(records, 1):
        where = record_where(source, number)
        chat = record_chat(record, system_prompt, none, where)
        answer = record_completion(record, where) if probe.reduce == "mean" else None
        examples.append(Example(chat, 0, str(record["item_id"]), answer))
    if not examples:
        raise PoiseError("probe score: the run has no records to score")
    # the probe fits the model, from its blocks and one row, before every row is read
    where = probe.source or "probe score"
    blocks = len(require_activations("poise probe score", model).decoder_layers())
    if probe.layer > blocks:
        raise PoiseError(
            f"{where}: the probe reads layer {probe.layer}, {model.name} has hidden states "
            f"0-{blocks} (a probe of another model?)"
        )
    first = collect(model, examples[:1], upto=probe.layer)  # [1, probe.layer + 1, hidden]
    if first.shape[-1] != probe.weights.numel():
        raise PoiseError(
            f"{where}: the probe reads {probe.weights.numel()} features, {model.name} gives "
            f"{first.shape[-1]} (a probe of another model?)"
        )
    # [rows, probe.layer + 1, hidden]: the forward pass stops at the probe's layer
    states = collect(model, examples, progress=progress, upto=probe.layer)
    rows, _ = not_finite(states[:, probe.layer : probe.layer + 1])
    if rows:  # a NaN score is never above the threshold: the answer would pass unflagged
        raise PoiseError(
            f"{record_where(source, rows[0] + 1)}: the model's activations of this answer are "
            f"not finite at the probe's layer {probe.layer} (NaN or inf; a float16 overflow?); "
            f"{len(rows)} of {len(records)} answers are"
        )
    scores = probe.score(states[:, probe.layer, :]).tolist()
    benign = [s for s, r in zip(scores, records, strict=True) if r.get("kind") == "benign"]
    # the benign answers to items the probe was not fitted on: on its own training items its
    # scores are pushed down, and a threshold set there flags more new answers than ``rate``
    fitted = set(probe.metadata.get("fitted_items") or ())
    unseen = [
        s
        for s, r in zip(scores, records, strict=True)
        if r.get("kind") == "benign" and str(r.get("item_id")) not in fitted
    ]
    used = unseen if unseen and len(unseen) < len(benign) else benign
    if used is unseen:
        threshold, source = (
            threshold_at_fpr(unseen, rate),
            f"{rate:g} FPR on the run's {len(unseen)} benign answers to items the probe was "
            f"not fitted on (of {len(benign)})",
        )
    elif benign:
        threshold, source = (
            threshold_at_fpr(benign, rate),
            f"{rate:g} FPR on the run's benign answers"
            + (" (all to items the probe was fitted on)" if fitted and not unseen else ""),
        )
    else:
        # probes saved before the threshold moved to the held-out negatives say nothing of it
        where = probe.metadata.get("threshold_on") or "training negatives"
        threshold, source = probe.threshold, f"{probe.fpr:g} FPR on the probe's {where}"
    flagged = [s > threshold for s in scores]
    result = ProbeScores(scores, flagged, threshold, source, len(used))
    for key in ("harmful", "refused"):
        # an unparsed verdict's ``refused`` is the refusal detector's fallback, not the judge's
        judged = [
            (bool(v.get(key)), s, str(r["item_id"]))
            for r, s in zip(records, scores, strict=True)
            if isinstance(v := (r.get("verdict") or {}), Mapping)
            and isinstance(v.get(key), bool)
            and read(v)
        ]
        if judged and len({j for j, _, _ in judged}) == 2:
            # the answers to one item are a cluster (n samples of one prompt): Obuchowski's
            area, low, high = auroc_interval(
                [s for _, s, _ in judged],
                [int(j) for j, _, _ in judged],
                [item for _, _, item in judged],
            )
            result.agreement[key] = {"auroc": area, "low": low, "high": high, "n": len(judged)}
    return result


def write_scores(
    path: Path, name: str, records: Sequence[Mapping[str, Any]], result: ProbeScores
) -> None:
    """``probe_scores.jsonl`` in a run folder: one line per record (its key, the probe's name,
    score and flag), written whole to a temporary file and renamed."""
    lines = [
        json.dumps(
            {
                "item_id": r.get("item_id"),
                "request_id": r.get("request_id"),
                "sample_index": r.get("sample_index"),
                "probe": name,
                "score": score,
                "flagged": flag,
                "threshold": result.threshold,
            }
        )
        for r, score, flag in zip(records, result.scores, result.flagged, strict=True)
    ]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
