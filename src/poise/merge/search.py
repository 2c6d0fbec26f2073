"""``poise merge search``: merge candidates, audit each, report the helpful / harmless / honest
Pareto front with intervals, write the chosen merge.

A search file names a template merge (mergekit format), the candidates, the audit and the
objectives::

    merge:                                  # the template: base_model, models, ...
      base_model: organism-small
      models: [{model: organism-small-safe}]
    methods: [task_arithmetic, ties]        # tried in turn
    weights: [[0.5], [1.0]]                 # per-model weights, one list per candidate
    parameters: {density: [0.5, 0.9]}      # grid; an option a method lacks is left out for it
    audit: {suites: [harmful, borderline, benign, honesty], judge: oracle, limit: 40}
    objectives: {helpful: helpful_rate, harmless: -harmful_rate, honest: known_accuracy}

Candidates are the product methods x weights x parameter grid. Each lives in
``OUT/candidates/<key>/`` (``key``: a hash of its resolved merge config): ``model/`` (the merge,
written atomically), ``runs/`` (its audit run folder) and ``result.json`` (written last). A
killed search run again skips finished candidates, reuses written merges and resumes the audit
run where it stopped (the audit's own resume).

Objectives read a metric of the audit's default group (``-name`` means lower is better, reported
as ``1 - rate``), with its 95% interval. The front holds candidates no other candidate beats on
every objective's point estimate; a candidate off the front whose intervals overlap a front
member's on every objective is marked *within noise* of it. The chosen merge (copied to
``OUT/chosen``) is the front member with the best worst objective (maximin): poise's choice,
since the three rates share a 0..1 scale.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from poise.config import format_validation_error, read_yaml
from poise.errors import PoiseError, UnknownNameError
from poise.merge.config import MergeConfig, check_config, merged_entries, run_merge
from poise.merge.executor import check_folder_path
from poise.merge.methods import KEYWORD_OPTIONS, METHODS
from poise.runs.run import write_text_atomic

log = logging.getLogger(__name__)

DEFAULT_OBJECTIVES = {
    "helpful": "helpful_rate",
    "harmless": "-harmful_rate",
    "honest": "known_accuracy",
}


class SearchConfig(BaseModel):
    """A merge search (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    merge: dict[str, Any] = Field(description="template merge config (mergekit format)")
    methods: list[str] = Field(default_factory=list, description="methods tried; default: merge's")
    weights: list[list[float]] = Field(default_factory=list, description="per-model weights")
    parameters: dict[str, list[Any]] = Field(default_factory=dict, description="option grid")
    audit: dict[str, Any] = Field(default_factory=dict, description="AuditConfig fields")
    objectives: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))


@dataclass
class Score:
    value: float
    low: float
    high: float


@dataclass
class Candidate:
    key: str
    config: dict[str, Any]
    scores: dict[str, Score] = field(default_factory=dict)
    on_front: bool = False
    within_noise_of: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        method = self.config["merge_method"]
        models = [e.get("parameters") or {} for e in self.config.get("models", [])]
        weights = [p["weight"] for p in models if "weight" in p]
        options = {k: v for p in models for k, v in p.items() if k != "weight"}
        options.update(self.config.get("parameters") or {})
        text = ", ".join(f"{k}={v}" for k, v in options.items())
        return f"{method} w={weights}" + (f" {text}" if text else "")


def load_search(path: Path) -> SearchConfig:
    raw = read_yaml(path)  # a key given twice is an error, not the last one silently
    try:
        return SearchConfig.model_validate(raw)
    except ValidationError as exc:
        raise PoiseError(f"{path}: {format_validation_error(exc)}") from None


def candidates(search: SearchConfig) -> list[Candidate]:
    """Every candidate's resolved merge config, checked (one-line errors) before any work."""
    template = dict(search.merge)
    methods = search.methods or [template.get("merge_method", "")]
    if not methods[0]:
        raise PoiseError(
            "merge.merge_method: the template names no method, and no methods are given"
        )
    try:  # the template's shape (models, parameters, ...): one line, not a pydantic report
        MergeConfig.model_validate({"merge_method": methods[0], **template})
    except ValidationError as exc:
        raise PoiseError(f"merge.{format_validation_error(exc)}") from None
    # a grid option no method takes was dropped without a word (a misspelt lambda ran the
    # default): refused, as poise merge refuses it
    taken = {p for name in methods for p in METHODS.get(name).parameters()}
    for key in search.parameters:
        if KEYWORD_OPTIONS.get(key, key) not in taken:
            spelt = {inner: outer for outer, inner in KEYWORD_OPTIONS.items()}  # lambda_: lambda
            names = sorted(spelt.get(p, p) for p in taken)
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PoiseError(
                f"parameters: {key!r} is an option of none of {', '.join(methods)}{hint}"
            )
    out = []
    seen = set()
    for method_name in methods:
        method = METHODS.get(method_name)
        params = method.parameters()
        grid = {k: v for k, v in search.parameters.items() if KEYWORD_OPTIONS.get(k, k) in params}
        weight_options: list[list[float] | None] = [*search.weights] or [None]
        for weights in weight_options:
            for values in itertools.product(*grid.values()):
                config = json.loads(json.dumps(template))  # a deep copy of plain data
                config["merge_method"] = method_name
                shared = dict(config.get("parameters") or {})
                per_model = {k: v for k, v in zip(grid, values, strict=True)}
                for key in list(per_model):
                    if KEYWORD_OPTIONS.get(key, key) not in method.per_model:
                        shared[key] = per_model.pop(key)
                if shared:
                    config["parameters"] = shared
                entries = merged_entries(MergeConfig.model_validate(config), method)
                if weights is not None and len(weights) != len(entries):
                    raise PoiseError(
                        f"weights {weights}: {len(entries)} merged model(s), {len(weights)} weights"
                    )
                for i, entry in enumerate(config.get("models", [])):
                    index = next(
                        (j for j, e in enumerate(entries) if e.model == entry["model"]), None
                    )
                    if index is None:
                        continue  # the base listed among the models
                    entry_params = dict(entry.get("parameters") or {})
                    entry_params.update(per_model)
                    if weights is not None and "weight" in method.per_model:
                        entry_params["weight"] = weights[index]
                    elif "weight" in method.per_model:
                        entry_params.setdefault("weight", 1.0)
                    config["models"][i] = {**entry, "parameters": entry_params}
                try:
                    check_config(MergeConfig.model_validate(config))
                except PoiseError as exc:
                    raise PoiseError(f"candidate {method_name} {values}: {exc}") from None
                except ValidationError as exc:
                    message = format_validation_error(exc)
                    raise PoiseError(f"candidate {method_name} {values}: {message}") from None
                key = _key(config)
                if key not in seen:
                    seen.add(key)
                    out.append(Candidate(key, config))
    return out


def _key(config: Mapping[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_objectives(objectives: Mapping[str, str], audit_config: Any) -> None:
    """Each objective names a rate the audit reports on its suites (checked before the first
    candidate is merged and audited, where it failed after them)."""
    from poise.suites import load_suite
    from poise.tasks import all_metrics

    # the rates of a group (harmful_any_rate too, with a worst-of-N audit), not the analyses'
    rates = {name: m for name, m in all_metrics().items() if m.count != "analysis"}
    kinds = {
        item.kind
        for spec in audit_config.suites
        for item in load_suite(spec, **audit_config.suite_options()).items
    }
    for objective, metric in objectives.items():
        name = metric.lstrip("-")
        if name not in rates:
            raise UnknownNameError(f"objective {objective}: metric", name, rates)
        if not set(rates[name].kinds) & kinds:
            raise PoiseError(
                f"objective {objective}: {name} reads {', '.join(rates[name].kinds)} items, and "
                f"the audit's suites ({', '.join(audit_config.suites)}) have none"
            )


def read_scores(metrics: Mapping[str, Any], objectives: Mapping[str, str]) -> dict[str, Score]:
    """Objective scores (higher is better) with 95% intervals from an audit's metrics.json."""
    group = metrics["groups"][metrics["default_group"]]
    scores = {}
    for objective, metric in objectives.items():
        lower_is_better = metric.startswith("-")
        name = metric.lstrip("-")
        if name not in group or not isinstance(group[name], Mapping):
            raise PoiseError(f"objective {objective}: the audit has no metric {name!r}")
        rate = group[name]
        if lower_is_better:
            scores[objective] = Score(1 - rate["value"], 1 - rate["high"], 1 - rate["low"])
        else:
            scores[objective] = Score(rate["value"], rate["low"], rate["high"])
    return scores


def pareto(found: Sequence[Candidate]) -> None:
    """Mark the front (no other candidate at least as good everywhere and better somewhere, on
    the point estimates) and, off the front, the members each one is within noise of (95%
    intervals overlapping on every objective)."""
    for c in found:
        c.on_front = not any(_dominates(o, c) for o in found if o is not c)
    front = [c for c in found if c.on_front]
    for c in found:
        if not c.on_front:
            c.within_noise_of = [f.key for f in front if _overlap(c, f)]


def _dominates(a: Candidate, b: Candidate) -> bool:
    pairs = [(a.scores[k].value, b.scores[k].value) for k in a.scores]
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def _overlap(a: Candidate, b: Candidate) -> bool:
    return all(
        a.scores[k].low <= b.scores[k].high and b.scores[k].low <= a.scores[k].high
        for k in a.scores
    )


def choose(found: Sequence[Candidate]) -> Candidate:
    """The front member with the best worst objective (maximin; ties: the best mean)."""
    front = [c for c in found if c.on_front]
    return max(
        front,
        key=lambda c: (min(s.value for s in c.scores.values()),
                       sum(s.value for s in c.scores.values())),
    )  # fmt: skip


@dataclass
class SearchResult:
    out: Path
    candidates: list[Candidate]
    chosen: Candidate


def run_search(
    search: SearchConfig | Path | str,
    out: Path | str,
    *,
    on_candidate: Callable[[int, int, Candidate, bool], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Merge and audit every candidate (cached in ``out``), then the front and the choice.
    ``on_candidate(i, n, candidate, cached)`` is called as each candidate starts."""
    from poise.auditing import audit, make_config

    if not isinstance(search, SearchConfig):
        search = load_search(Path(search))
    out = Path(out)
    check_folder_path(out)
    found = candidates(search)
    audit_fields = dict(search.audit)
    # checked up front; its fields are the search file's audit keys, not poise audit's flags
    audit_config = make_config(None, _flags=False, **{"model": "mock", **audit_fields})
    check_objectives(search.objectives, audit_config)
    for i, cand in enumerate(found):
        folder = out / "candidates" / cand.key
        result_path = folder / "result.json"
        cached = result_path.is_file()
        if on_candidate is not None:
            on_candidate(i, len(found), cand, cached)
        if cached:
            metrics = json.loads(result_path.read_text())["metrics"]
        else:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "merge.yml").write_text(yaml.safe_dump(cand.config, sort_keys=False))
            if not (folder / "model").is_dir():  # written atomically: present means complete
                run_merge(MergeConfig.model_validate(cand.config), folder / "model")
            result = audit(
                model=str(folder / "model"),
                out=str(folder / "runs"),
                name="audit",
                html=False,
                progress=progress,
                **audit_fields,
            )
            metrics = result.metrics
            tmp = result_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"config": cand.config, "metrics": metrics}, default=str))
            tmp.replace(result_path)
        cand.scores = read_scores(metrics, search.objectives)
    pareto(found)
    chosen = choose(found)
    publish_folder(out / "candidates" / chosen.key / "model", out / "chosen")
    summary = {
        "objectives": search.objectives,
        "chosen": chosen.key,
        "candidates": [
            {
                "key": c.key,
                "label": c.label,
                "on_front": c.on_front,
                "within_noise_of": c.within_noise_of,
                "scores": {k: vars(s) for k, s in c.scores.items()},
                "config": c.config,
            }
            for c in found
        ],
    }
    write_text_atomic(out / "search.json", json.dumps(summary, indent=2, default=str) + "\n")
    return SearchResult(out, found, chosen)


def publish_folder(source: Path, target: Path) -> None:
    """A copy of ``source`` at ``target``, whole or not at all: copied beside it under a hidden
    name, then swapped in by renames, so a search killed while copying leaves the previous
    ``target`` (or none), never a half-copied folder that looks like a model."""
    staged = target.with_name(f".{target.name}.partial")
    old = target.with_name(f".{target.name}.old")
    for leftover in (staged, old):  # from a run killed before
        if leftover.exists():
            shutil.rmtree(leftover)
    try:
        shutil.copytree(source, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)
