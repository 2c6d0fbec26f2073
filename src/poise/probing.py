"""Probes end to end, one call each, as ``poise probe train`` and ``poise probe score`` run them.

- :func:`train_probe`: the labelled rows of a task (harmful vs benign prompts and honest vs
  deceptive instructions from suites; will-comply vs will-refuse and feigned vs real
  compliance from an audit run's judged answers), their activations, a layer sweep and a
  probe folder.
- :func:`score_probe`: a probe's score of each of a run's answers beside its judge's verdicts,
  written to the run's ``probe_scores.jsonl`` (and its report, when the run is complete).

The probes package (:mod:`poise.probes`) reads models only and sits below runs; this module
is where a probe meets runs and suites, so a Python caller needs no more than the command
line does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poise.errors import PoiseError, check_number
from poise.evaluation import ProgressFn
from poise.models import LanguageModel
from poise.probes.data import Example
from poise.probes.train import ProbeScores, TrainResult

__all__ = ["TASKS", "ScoreResult", "probe_examples", "score_probe", "train_probe"]

logger = logging.getLogger(__name__)

TASKS = ("harmful", "comply", "honesty", "deception")

# tasks labelled by an audit run's judged answers, and what to pass when it is missing
RUN_TASKS = {
    "comply": "probe train, task comply: pass run (--run RUN), a greedy audit of the same model "
    "(its judged answers are the labels)",
    "deception": "probe train, task deception: pass run (--run RUN), an audit of the same "
    "model on harmful items judged by a judge that labels feigned answers (the organism's "
    "oracle)",
}

# the suites a task labelled by suites reads when none are given
DEFAULT_SUITES = {"harmful": ("harmful", "benign"), "honesty": ("honesty",)}


def check_train_options(
    task: str,
    *,
    suites: Sequence[str] = (),
    run: str | Path | None = None,
    layer: int | None = None,
    test_fraction: float = 0.3,
    l2: float = 10.0,
    fpr: float = 0.01,
) -> None:
    """Every option of :func:`train_probe` that needs no model, checked before one loads (a
    large model takes minutes): each problem is one :class:`PoiseError` naming the option."""
    if task not in TASKS:
        raise PoiseError(f"probe train --task: expected one of {', '.join(TASKS)}, got {task!r}")
    check_fpr(fpr)
    check_number("probe", "l2", l2, positive=True)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise PoiseError(f"--test-fraction: a share in (0, 1), got {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise PoiseError(f"--test-fraction: a share in (0, 1), got {test_fraction:g}")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise PoiseError(f"--layer: an index >= 0 (0 = the embeddings), got {layer}")
    # an option the task does not read was dropped without a word: a probe trained on other
    # labels than the caller asked for
    if task in RUN_TASKS and suites:
        raise PoiseError(
            f"probe train --task {task}: --suite is not read (the labels are the --run's "
            "judged answers); leave it out"
        )
    if task not in RUN_TASKS and run is not None:
        raise PoiseError(
            f"probe train --task {task}: --run is not read (the labels come from the "
            "suites' items); leave it out, or use --task comply or deception"
        )
    if task in RUN_TASKS and run is None:
        raise PoiseError(RUN_TASKS[task])


def check_fpr(fpr: float | None) -> None:
    """A false-positive rate in [0, 1) (``None``: the probe's own)."""
    if fpr is None:
        return
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 <= fpr < 1.0:
        raise PoiseError(f"--fpr: a false-positive rate in [0, 1), got {fpr}")


def warn_other_model(found: Any, model: LanguageModel, why: str) -> None:
    """Warn when the run ``found`` audited another model than ``model`` (``why``: what that
    spoils). The run's resolved name is compared (an alias such as ``organism`` resolves to its
    member, with the weights' fingerprint); runs written before it was recorded have the spec
    only; a run that says neither is not warned about."""
    audited = found.header.get("model_name")
    if not isinstance(audited, str):
        spec = found.config.get("model")
        audited = spec if isinstance(spec, str) and model.spec is not None else None
        same = audited is None or audited == model.spec
    else:
        same = audited == model.name
    if not same:
        logger.warning(
            "the run %s audited %r and the probe reads %r: %s", found.path, audited, model.name, why
        )


def probe_examples(
    task: str,
    model: LanguageModel,
    *,
    suites: Sequence[str] = (),
    run: str | Path | None = None,
    runs_dir: str | Path = "runs",
) -> list[Example]:
    """The labelled rows of ``task`` as ``model`` reads them (its default system prompt, its
    way of saying "none"): from ``suites`` (default: harmful + benign, or honesty) for the
    harmful and honesty tasks, from the run ``run`` (a folder, or a name under ``runs_dir``)
    for comply and deception, whose judged answers should be ``model``'s own (a warning says
    when the run audited another model)."""
    check_train_options(task, suites=suites, run=run)
    return _examples(task, model, suites, _found(run, runs_dir))


def _found(run: str | Path | None, runs_dir: str | Path) -> Any:
    """The run ``run`` names (a folder, or a name under ``runs_dir``), None for none."""
    if run is None:
        return None
    from poise.runs import find_run

    return find_run(str(run), runs_dir)


def _examples(task: str, model: LanguageModel, suites: Sequence[str], found: Any) -> list[Example]:
    """:func:`probe_examples` of options already checked, the run (``found``) already read."""
    from poise.models.base import default_system_prompt, no_system_prompt
    from poise.probes import data

    system = default_system_prompt(model)
    if task in RUN_TASKS:
        warn_other_model(found, model, "the labels should come from the probed model's own answers")
        records, none = list(found.records()), no_system_prompt(model)
        source = found.samples_path
        if task == "comply":
            return data.compliance_from_records(records, system, none_prompt=none, source=source)
        return data.deception_from_records(records, system, none_prompt=none, source=source)
    from poise.suites.loaders import load_suite

    names = list(suites) or list(DEFAULT_SUITES[task])
    items = [item for name in names for item in load_suite(name).items]
    if task == "harmful":
        return data.harmful_vs_benign(items, system)
    return data.instructed_pairs(items)


def _loaded(model: str | Path | LanguageModel) -> LanguageModel:
    """``model`` loaded from its spec or folder, or as given when it is loaded already."""
    from poise.models import load_model

    return load_model(model) if isinstance(model, (str, Path)) else model


def _counting(progress: ProgressFn | None, total: int) -> Any:
    """An ``advance(k)`` callback that reports ``progress(done, total)``."""
    if progress is None:
        return None
    done = 0
    progress(0, total)

    def advance(k: int) -> None:
        nonlocal done
        done += k
        progress(done, total)

    return advance


def train_probe(
    out: str | Path,
    *,
    task: str = "harmful",
    model: str | Path | LanguageModel | None = None,
    suites: Sequence[str] = (),
    run: str | Path | None = None,
    runs_dir: str | Path = "runs",
    layer: int | None = None,
    test_fraction: float = 0.3,
    l2: float = 10.0,
    fpr: float = 0.01,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Fit a probe of ``task`` (one of :data:`TASKS`) into the new or empty folder ``out``: the
    rows of :func:`probe_examples`, the activations of every layer, a sweep (held-out accuracy
    and AUROC per layer), ``layer`` (default: the best held-out AUROC) fitted on the train
    items with its threshold at ``fpr`` on the held-out negatives
    (:func:`poise.probes.train.train_probe`).

    ``model``: a spec or a loaded model with activations (the hf backend); default: the run's
    model for comply / deception, else organism-large. ``progress(done, total)`` counts rows
    whose activations are read. Every option is checked before the model loads."""
    from poise.probes.linear import check_new_folder
    from poise.probes.sweep import require_activations
    from poise.probes.train import train_probe as fit

    check_train_options(
        task, suites=suites, run=run, layer=layer, test_fraction=test_fraction, l2=l2, fpr=fpr
    )
    check_new_folder(out, "probe")
    found = _found(run, runs_dir)
    if model is None and found is not None:
        # the model the audit built (folders by absolute path: read from any directory)
        model = found.model_to_build
    loaded = _loaded(model or "organism-large")
    require_activations("poise probe train", loaded)
    examples = _examples(task, loaded, suites, found)
    return fit(
        loaded, examples, out, task=task, layer=layer, test_fraction=test_fraction, l2=l2,
        fpr=fpr, seed=seed, progress=_counting(progress, len(examples)),
    )  # fmt: skip


@dataclass
class ScoreResult:
    """:class:`~poise.probes.train.ProbeScores` of a run's answers and where they were written."""

    scores: ProbeScores
    path: Path  # the run's probe_scores.jsonl
    answers: int


def score_probe(
    run: str | Path,
    probe: str | Path,
    *,
    model: str | Path | LanguageModel | None = None,
    fpr: float | None = None,
    runs_dir: str | Path = "runs",
    progress: ProgressFn | None = None,
) -> ScoreResult:
    """Score the answers of ``run`` (a folder, or a name under ``runs_dir``) with the probe
    folder ``probe``: each answer read where the probe was trained, flagged above a threshold
    at ``fpr`` on the run's benign answers (default: the probe's own rate; without benign
    answers, the probe's own threshold), crossed with the judge's verdicts (AUROC with an
    interval). Writes the run's ``probe_scores.jsonl`` whole, and its report when the run is
    complete. ``model``: default the model the probe was trained on; it should be the run's
    (a warning says when it is not). ``progress(done, total)`` counts answers read."""
    from poise.models.base import default_system_prompt
    from poise.probes.linear import load_probe
    from poise.probes.sweep import require_activations
    from poise.probes.train import check_benign_for_fpr, score_answers, write_scores
    from poise.report.html import write_run_report
    from poise.runs import find_run

    check_fpr(fpr)
    found = find_run(str(run), runs_dir)
    loaded_probe = load_probe(probe)
    spec = model if model is not None else loaded_probe.model
    if spec is None:
        raise PoiseError(f"{probe}: the probe names no model; pass --model")
    named = str(spec) if isinstance(spec, (str, Path)) else (spec.spec or spec.name)
    if model is not None and loaded_probe.model and named != loaded_probe.model:
        logger.warning(
            "the probe was trained on %r and reads %r's activations: its direction and "
            "threshold are %r's",
            loaded_probe.model,
            named,
            loaded_probe.model,
        )
    records = list(found.records())
    check_benign_for_fpr(records, fpr)  # before the model loads
    loaded = _loaded(spec)
    require_activations("poise probe score", loaded)
    # the flags are crossed with the judge's verdicts on the run's answers: the AUROC against
    # the judge would mix two models
    warn_other_model(
        found, loaded, "the judge's verdicts it is measured against are another model's answers"
    )
    result = score_answers(
        loaded, loaded_probe, records, default_system_prompt(loaded), fpr=fpr,
        progress=_counting(progress, len(records)), source=found.samples_path,
    )  # fmt: skip
    path = found.path / "probe_scores.jsonl"
    write_scores(path, Path(probe).name, records, result)
    if found.status == "complete":
        write_run_report(found)
    return ScoreResult(result, path, len(records))
