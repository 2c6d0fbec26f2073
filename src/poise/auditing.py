"""The audit: run a model on suites, judge every completion, report rates with intervals.

    Suite items --attack--> requests --model (cached)--> completions --judge--> records
    records --metrics--> metrics.json --report--> terminal table, report.html

Everything is validated (suites read, names resolved, output folder writable) before the model
loads or a token is generated. Records are appended to the run folder block by block, so an audit
killed at any moment resumes where it stopped (``resume=RUN`` or the same call again) and ends
with exactly the records an uninterrupted audit has.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from poise.attacks import SUMMARIES, Request, SystemPrompt, attacks
from poise.attacks.base import check_attack_sampling, warn_undeclared_system_prompt
from poise.config import (
    COMMON_FIELD_FLAGS,
    AuditConfig,
    Sampling,
    dashed_flag,
    format_field_error,
    format_validation_error,
)
from poise.errors import PoiseError, UnknownNameError, located
from poise.evaluation import (
    ProgressFn,
    RequestsFailed,
    Scorers,
    check_context,
    check_sampling,
    evaluate,
    task_scorers,
)
from poise.models.base import EndpointError, GenerationError
from poise.models.spec import canonical_spec
from poise.runs.provenance import weights_changed, weights_components
from poise.runs.run import (
    Run,
    check_runs_root,
    find_run,
    key_problem,
    recorded_workdir,
    working_directory,
)

if TYPE_CHECKING:
    from poise.scoring.validation import LabelSet, Validation
    from poise.suites.schema import SuiteItem

log = logging.getLogger(__name__)

__all__ = [
    "AuditResult",
    "ProgressFn",
    "audit",
    "finalize",
    "make_config",
    "recorded_config",
    "rejudge",
    "spread_subset",
]


@dataclass
class AuditResult:
    run: Run
    config: AuditConfig
    metrics: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.run.path


# names a Python user may try for a field, from the command line's flags or from Sampling
_FIELD_FOR = {
    "kind": "suite_kind",
    "category": "suite_category",
    "column": "suite_columns",
    "columns": "suite_columns",
    "format": "suite_format",
    "suite": "suites",
    "model_option": "model_options",
    "attack_option": "attack_options",
    "judge_option": "judge_options",
    "judge_labels_column": "judge_labels_columns",
    # `poise audit --samples-per-prompt`, the long form of --n
    "samples_per_prompt": "sampling={'n': ...}",
    **{
        name: f"sampling={{'{name}': ...}}"
        for name in ("temperature", "top_p", "top_k", "max_new_tokens", "n", "seed", "stop")
    },
}


# the flag of a field that ``poise audit`` does not spell ``--FIELD``
_FLAG_OF = {
    **COMMON_FIELD_FLAGS,
    "suites": "--suite",
    "attack_options": "--attack-option",
    "judge_options": "--judge-option",
    "judge_labels_columns": "--judge-labels-column",
}


def _flag(field: str) -> str:
    """The ``poise audit`` flag of a config field (or of a sampling field)."""
    return _FLAG_OF.get(field) or dashed_flag(field)


def _check_field_names(fields: Mapping[str, Any]) -> None:
    """One error for a keyword that is no field of AuditConfig, with the field it stands for."""
    known = set(AuditConfig.model_fields)
    for name in fields:
        if name in known:
            continue
        if name in _FIELD_FOR:
            raise PoiseError(f"audit config: {name!r} is not a field; use {_FIELD_FOR[name]}")
        sampled = difflib.get_close_matches(name.lower(), Sampling.model_fields, n=1, cutoff=0.8)
        if sampled and not difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.8):
            # "temprature": a sampling field misspelt, not the nearest audit field
            raise PoiseError(
                f"audit config: unknown field {name!r}; did you mean "
                f"sampling={{'{sampled[0]}': ...}}?"
            )
        raise UnknownNameError("audit config field", name, known)


def _check_sampling_names(sampling: Mapping[str, Any]) -> None:
    """One error for a key of a ``sampling`` dict that is no sampling field, with the nearest
    (pydantic said "sampling.temprature: not an option here", naming no field)."""
    for name in sampling:
        if name not in Sampling.model_fields:
            raise UnknownNameError("sampling field", str(name), Sampling.model_fields)


def make_config(
    config: AuditConfig | None = None, *, _flags: bool = True, **fields: Any
) -> AuditConfig:
    """An AuditConfig from a base config and field overrides, with one-line errors (naming
    the field's flag, unless ``_flags`` is false: a recorded config has no command line)."""
    _check_field_names(fields)
    try:
        if "sampling" in fields and isinstance(fields["sampling"], dict):
            _check_sampling_names(fields["sampling"])
            fields["sampling"] = Sampling(**fields["sampling"])
        if "suites" in fields and isinstance(fields["suites"], (str, os.PathLike)):
            fields["suites"] = (fields["suites"],)
        if config is None:
            return AuditConfig(**fields)
        return AuditConfig.model_validate({**config.model_dump(), **fields})
    except ValidationError as exc:
        error = format_field_error(exc, _flag) if _flags else format_validation_error(exc)
        raise PoiseError(f"audit config: {error}") from None


def audit(
    config: AuditConfig | None = None,
    /,
    *,
    resume: str | Path | None = None,
    answers_from: str | Path | None = None,
    progress: ProgressFn | None = None,
    **fields: Any,
) -> AuditResult:
    """Audit a model. ``poise.audit(model="organism-small", suites=["harmful"], limit=20)``.

    Keyword fields are those of :class:`poise.config.AuditConfig`; ``model`` may also be a
    ``LanguageModel`` object (a decoding strategy or guard wrapping a backend), recorded by its
    ``spec``, so ``resume`` (and ``poise audit --resume``) rebuild the same model. An object
    without a spec is recorded by name and its run can be resumed only by passing the object
    again (``poise.audit(model=obj, resume=RUN)``). ``resume`` continues a killed run folder (its
    recorded config wins: a field given beside it, as a keyword or set in ``config``, that says
    otherwise is refused; ``html`` and ``batch_size`` apply). Without ``resume``, an unfinished run under ``out`` with the same
    configuration is resumed too, so re-running a killed command just continues.

    A resumed run reads the relative paths of its config (suite files, ``reference_run``,
    ``judge_labels``), and those inside its judge spec and option values, from the directory it
    began in (run.json's ``workdir``), wherever it is resumed from. A run whose model's chat
    template writes today's date into every prompt (``strftime_now``) is not continued on a day
    it renders them otherwise (run.json's ``dated_prompts``). ``resume`` of a complete run
    returns it as it is, with a warning: nothing is generated, judged or recomputed, and its
    status stays complete (``html=True`` draws a missing report).

    ``answers_from`` (a run folder or name) starts the audit with that run's answers: those of
    its requests this audit asks again (same model and weights, chat and sampling, seed
    included) are taken from its cache instead of generated, and judged anew. A run cannot be
    resumed under another config, so this is how one is extended (a larger ``limit``, another
    suite beside it) or judged under another config. For a local model every answer taken is
    what generating it again would give (up to the rounding of batches of another size, as on a
    resume), since each row's random numbers follow from (seed, chat, sample), not from the
    batch; a server's are the answers it gave then. The run's header names the source
    (``answers_from``).
    """
    from poise.models.base import LanguageModel

    if config is not None and not isinstance(config, AuditConfig):
        raise PoiseError(
            "poise.audit takes an AuditConfig or keyword fields, got "
            f"{type(config).__name__} {config!r}: write poise.audit(model=..., suites=[...])"
            + (", or poise.audit(**fields) for a dict" if isinstance(config, Mapping) else "")
        )
    if resume is not None and config is not None:
        # the fields the config sets count as given beside resume, as keywords do: one that
        # differs from the run is refused, html and batch_size apply (the config was ignored)
        given = {name: getattr(config, name) for name in config.model_fields_set}
        if "sampling" in given:  # its own fields only, as a partial sampling dict is
            given["sampling"] = config.sampling.model_dump(include=config.sampling.model_fields_set)
        fields = {**given, **fields}
    model_obj: Any = None
    if isinstance(fields.get("model"), os.PathLike):  # a folder, as a pathlib.Path
        fields["model"] = os.fspath(fields["model"])
    elif "model" in fields and not isinstance(fields["model"], str):
        if not isinstance(fields["model"], LanguageModel):
            raise PoiseError(
                "model: expected a model spec (a name, a folder, a hub id), a path or a "
                f"LanguageModel object, got {type(fields['model']).__name__} {fields['model']!r}"
            )
        # a LanguageModel object (e.g. a decoding strategy or guard wrapping a backend)
        model_obj = fields["model"]
        fields["model"] = model_obj.spec if model_obj.spec is not None else model_obj.name
    run: Run | None = None
    if resume is not None and answers_from is not None:
        raise PoiseError(
            "answers_from starts a new run with another run's answers; a resumed run has its "
            "own: give resume or answers_from, not both"
        )
    if resume is not None:
        run = find_run(resume, fields.get("out", "runs"))
        run.check_samples_file()  # a folder poise will not write to stops before anything else
        cfg = recorded_config(run)
        given = {k: v for k, v in fields.items() if k not in ("out", *RESUME_HOW)}
        _check_resume_fields(run, cfg, given, model_obj)
        # how the run is written, not what it measures (outside its fingerprint): applied
        how = {k: fields[k] for k in RESUME_HOW if k in fields}
        if how:
            cfg = make_config(None, **{**cfg.model_dump(), **how})
        _check_resumable(run, cfg, model_obj)
        if run.status == "complete":
            return _already_complete(run, cfg, report="html" in how)
        run.lock()  # one writer: a second process resuming it stops here, before any work
        log.info("resuming %s", run.path)
    else:
        cfg = canonical_attack(make_config(config, **fields))
        # a name given asks for that run: another name gets a run of its own
        run = Run.find_unfinished(cfg.out, cfg.fingerprint(), name=cfg.name)
        if run is not None:
            run.lock()  # one writer: a second process adopting it stops here, before any work
            # said, not only logged: a user who meant a fresh run sees where the answers go
            log.warning("continuing unfinished run %s (same configuration)", run.path)
    # a resumed run reads the relative paths of its config (suite files, --reference-run,
    # --judge-labels) where it began, wherever it is resumed from; a run adopted by the same
    # command reads them here, as typed here (another file holding other items is refused)
    workdir = recorded_workdir(run) if resume is not None and run is not None else None
    try:
        return _audit(
            cfg,
            run,
            model_obj,
            progress,
            adopted=resume is None,
            workdir=workdir,
            answers_from=answers_from,
        )
    finally:
        if run is not None:
            run.unlock()


def _audit(
    cfg: AuditConfig,
    run: Run | None,
    model_obj: Any,
    progress: ProgressFn | None,
    *,
    adopted: bool = False,
    workdir: Path | None = None,
    answers_from: str | Path | None = None,
) -> AuditResult:
    """The audit of ``cfg`` into ``run`` (None: a new run folder). ``workdir``: the directory
    the relative paths of ``cfg`` are read against (:func:`poise.runs.run.recorded_workdir`;
    None: the working directory). ``answers_from``: a run whose cached answers this audit
    starts from (see :func:`audit`)."""
    # ---- validate everything before loading weights -------------------------------------
    from poise.models.resolve import check_spec
    from poise.scoring.judges import get_judge, resolve_judge_name
    from poise.suites import load_suite

    if run is None:
        check_runs_root(cfg.out)  # a file as --out stops here, not once the model is loaded
    blank = next((s for s in cfg.suites if not str(s).strip()), None)
    if blank is not None:  # said so, not as ": is a folder" (the current folder)
        raise PoiseError(
            f"suite {blank!r} names nothing: give a built-in suite (poise suites ls) or a suite "
            "file to each --suite"
        )
    twice = next((s for i, s in enumerate(cfg.suites) if s in cfg.suites[:i]), None)
    if twice is not None:  # said so, not as an item id "in both 'harmful' and 'harmful'"
        raise PoiseError(f"suite {twice!r} is given twice: give each --suite once")
    suites = [load_suite(_suite_spec(spec, workdir), **cfg.suite_options()) for spec in cfg.suites]
    items = [item for suite in suites for item in spread_subset(suite.items, cfg.limit)]
    if not items:
        raise PoiseError("the audit has no items: every suite is empty")
    _check_unique_ids(items)
    own_scorers = task_scorers(items)  # kinds whose task brings its own scorer
    # what the judge, the model and the attack are built with: their relative paths read
    # where the run began (the config, and the names it gives the judge, stay as typed)
    built = _relocated(cfg, workdir)
    attack = attacks.get(cfg.attack)
    _check_attack_options(cfg.attack, attack, built.attack_options)
    check_attack_sampling(attack, cfg.sampling)  # e.g. worst_of_n's n is its own option
    _check_judge_options(built.judge, built.judge_options)
    if model_obj is None:
        check_spec(_spec_to_build(cfg, run))
    # a reference run named by name is looked for beside the run, as poise runs rejudge does
    reference_root = run.path.parent if run is not None and workdir is not None else None
    reference_records = _reference_records(cfg, root=reference_root, base=workdir)
    labels = _judge_labels(cfg, base=workdir)
    # a run to take answers from is found before the weights load (a mistyped name stops here)
    source_run = _find_answers_source(answers_from, cfg.out) if answers_from is not None else None

    # ---- load, then generate and judge block by block ------------------------------------
    from poise.models import default_system_prompt, load_model, system_prompt_in_template

    model = (
        model_obj
        if model_obj is not None
        else load_model(_spec_to_build(cfg, run), **built.model_options)
    )
    # the judge follows the model: `auto` is what the model (through its wrappers) recommends
    judge_spec = resolve_judge_name(cfg.judge, model)
    judge = get_judge(resolve_judge_name(built.judge, model), **built.judge_options)
    # named as the run named it (records and header carry the judge's name: its paths as typed,
    # in its spec or an option, preset:NAME@FOLDER)
    judge.name = _as_typed(judge.name, cfg, built)
    scorers = Scorers(judge, own_scorers)  # a task's own scorer, else the audit's judge
    system = SystemPrompt(
        cfg.system_prompt, default_system_prompt(model), system_prompt_in_template(model)
    )
    requests = attack(items, cfg.sampling, system, **built.attack_options)
    _check_unique_requests(requests)
    check_context(model, requests)  # an over-long item stops the audit before any work
    check_sampling(model, requests)  # e.g. best-of-N under greedy decoding
    warn_undeclared_system_prompt(model, requests)
    # what the answers and verdicts are made with beyond names: the contents of the weights of
    # the model, its scorers, monitors and probes, and the judge's (poise.runs.provenance)
    weights = weights_components(
        model.spec,
        built.judge if built.judge != cfg.judge else judge_spec,
        judge_options=built.judge_options,
        attack_options=built.attack_options,
        model_options=built.model_options,
    )
    # the system messages "default" and "none" sent (a literal setting is sent as itself), so
    # the chats can be rebuilt from the run without loading its model (poise attacks export)
    system_prompts = {"default": system.text("default"), "none": system.text("none")}
    # a chat template that writes today's date: what it renders now (a run goes on only from
    # the prompts its records were made from)
    dated = _dated_prompts(model)
    source = (
        _answers_source(source_run, model.name, weights, dated) if source_run is not None else None
    )
    if run is not None:
        # a torn last record (cut by start() too) must not stop the reading below; the run's
        # lock is held (audit() took it)
        run.repair()
        problem = (
            _recorded_makers_differ(run, model.name, judge.name, weights)
            or _prompts_dated_otherwise(run, dated)
            or _recorded_items_differ(run.records(), items, scorers)  # one pass over them
        )
        if problem is not None and not adopted:
            raise PoiseError(f"{run.path}: cannot resume: {problem}; start a new run")
        if problem is not None:
            # an unfinished run found by its configuration, not asked for: a new one instead
            log.warning(
                "not continuing unfinished run %s (%s); starting a new run", run.path, problem
            )
            run = None

    created = run is None
    if run is None:
        run = Run.create(
            cfg.out,
            cfg.name or _default_name(cfg),
            _header_config(cfg),
            lock=True,
            workdir=working_directory(),
        )
    try:
        # model_spec rebuilds the model on resume; None: an object only its owner can pass again
        done = run.start(
            judge_resolved=judge.name,
            # the spec that built the judge (what `auto` resolved to): a judge's name is not
            # always a spec (a plugin's "x(bomb)" for "x:bomb"), and rejudge rebuilds it from this
            judge_spec=judge_spec,
            model_name=model.name,
            model_spec=model.spec,
            weights=weights,
            system_prompts=system_prompts,
            **({"dated_prompts": dated} if dated is not None else {}),
        )
        if source is not None:
            _take_answers(run, *source, model.name, requests)
        started = time.perf_counter()
        blocks = evaluate(
            run.cached(model),
            requests,
            scorers,
            batch_size=cfg.batch_size,
            done=done,
            progress=progress,
        )
        try:
            for judged in blocks:
                run.append(j.record(cfg.attack) for j in judged)
        except (RequestsFailed, EndpointError, GenerationError) as exc:
            # only generation failing (an endpoint, also behind a wrapper, whose failures reach
            # here as the inner model's GenerationError): another error (a judge's, say) keeps
            # the run folder and its cache of answers, so the same command does not generate
            # them again
            if created and next(iter(run.records()), None) is None and not _cached_any(run):
                # nothing came back (an endpoint down or refusing every request): a run
                # folder with no answer would only be a 0-sample run to resume
                run.unlock()
                shutil.rmtree(run.path, ignore_errors=True)
                raise PoiseError(f"{exc}; no answer came back, so no run was written") from None
            if not isinstance(exc, RequestsFailed):
                raise PoiseError(
                    f"{run.path}: {exc}; the answers that came back are recorded: once the cause "
                    f"is fixed, run the same command again (or poise audit --resume {run.path})"
                ) from None
            # every answer that came back is recorded (and cached); the failed ones are not done
            # keys, so the same command (or --resume) asks for exactly those again
            raise PoiseError(
                f"{run.path}: {exc}; the answers that came back are recorded: run the same "
                f"command again (or poise audit --resume {run.path}) to retry the failed ones"
            ) from None
        except PoiseError as exc:
            # another error before any answer was recorded or cached (a best_of_n reward model
            # refusing the first answers as longer than its context, say): the folder held
            # nothing to resume, but stayed as a 0-sample "interrupted" run the message did not
            # name. A judge failing on generated answers keeps it: they are in its cache.
            if created and next(iter(run.records()), None) is None and not _cached_any(run):
                run.unlock()
                shutil.rmtree(run.path, ignore_errors=True)
                raise PoiseError(f"{exc}; no answer was recorded, so no run was written") from None
            raise
        log.info("generated and judged in %.1fs", time.perf_counter() - started)

        validation = None
        if labels is not None:
            from poise.scoring.validation import validate

            validation = validate(labels, judge)
        metrics = finalize(
            run, reference_records=reference_records, html=cfg.html, judge_validation=validation
        )
    except KeyboardInterrupt:
        # Ctrl-C (and SIGTERM, which the CLI raises as one): said, not only an exit code: the
        # records so far are kept and the run resumes
        log.warning(
            "interrupted: the answers judged so far are recorded in %s; run the same command "
            "again (or poise audit --resume %s) to continue",
            run.path,
            run.path,
        )
        raise
    finally:
        run.unlock()  # finish released it; an error must not keep it while the caller goes on
    return AuditResult(run=run, config=cfg, metrics=metrics)


def rejudge(
    run: str | Path,
    *,
    judge: str | None = None,
    judge_options: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    name: str | None = None,
    html: bool = True,
    runs_root: str | Path = "runs",
    progress: ProgressFn | None = None,
) -> AuditResult:
    """Judge a complete run's answers again, without generating: a new run folder (under
    ``out``, by default beside the old run) with the same answers, each with the verdict of
    ``judge`` (default: the run's own judge, as it labels now), and its metrics, report and
    attack summary computed again. What ``inspect score`` does for an inspect_ai log: a judge
    fixed or replaced since the run (a validated classifier, a corrected oracle) is applied to
    answers that took hours, or an endpoint's money, to generate.

    The old run is not touched. The new run's header records the model, sampling and answers of
    the old one, ``rejudged_from`` (the old run's folder and judge) and the new judge's
    fingerprint in ``weights``; its config is the old config with the new judge, so it reads as
    the audit that made those answers and judged them so. Refused: a run that is not complete
    (resume it first), suites whose items changed since the run (their answers would be judged
    against other items), a judge or judge option that does not exist.

    Answers are judged in the audit's blocks (``batch_size`` requests, each with all its
    answers), so a judge that scores a block at once sees what it saw in the audit;
    ``progress(done, total)`` counts answers judged. Items of a task with its own scorer keep
    that scorer, as in the audit. A guarded answer's
    account of the unguarded one (harm onset, harmful tokens shown) is recomputed by the new
    judge too; the old judge's is dropped first (a judge that locates no harm leaves none). A
    ``reference_run`` is read where the audit found it (beside the old run), before any folder
    is written. Stopped by an error, Ctrl-C or SIGTERM, the new folder is removed; killed
    outright, it is left unfinished and without the audit's fingerprint, so no later audit
    continues it as its own."""
    from poise.attacks.base import Request
    from poise.evaluation import Generated
    from poise.models.base import Completion
    from poise.scoring.judges import get_judge, judges, resolve_judge_name
    from poise.suites import load_suite

    source = find_run(run, runs_root)
    if source.state != "complete":
        raise PoiseError(
            f"{source.path}: the run is {source.state}, not complete: finish it first (poise "
            f"audit --resume {source.path}), then judge it again"
        )
    cfg = recorded_config(source)
    header = source.header
    model_spec = header.get("model_spec")
    own_judge = judge is None
    if judge is None:
        judge, options = (
            cfg.judge,
            dict(cfg.judge_options if judge_options is None else judge_options),
        )
    else:
        options = dict(judge_options or {})
    judge_name = _check_judge_options(judge, options)
    resolved = header.get("judge_resolved")
    built = header.get("judge_spec")
    if judge_name == "auto" and isinstance(built, str) and built:
        judge_spec = built  # the run's own judge: the spec auto resolved to when it ran
    elif judge_name == "auto" and isinstance(resolved, str) and resolved in judges:
        judge_spec = resolved  # a run from before judge_spec was recorded: its judge's name
    else:
        # auto: what the recorded model recommends (from its spec, no weights loaded)
        judge_spec = resolve_judge_name(judge, str(model_spec or cfg.model))
    root = source.path.parent if out is None else Path(out)
    run_name = name or f"{cfg.name or _default_name(cfg)}-rejudged"
    # the config's relative paths where the run began (a run from before poise recorded it:
    # here, as they were read before)
    base = recorded_workdir(source)
    typed = cfg.model_copy(  # the judge alone: no model or attack is built here
        update={
            "judge": judge_spec,
            "judge_options": options,
            "model_options": {},
            "attack_options": {},
        }
    )
    # the run's own judge is built from its paths as read where the run began, and keeps the
    # name its records carry; a judge given now is read here, and where the new run records
    # another directory than this one, its paths are recorded whole (they are not relative to it)
    built = _relocated(typed, base if own_judge else (Path.cwd() if base is not None else None))
    if not own_judge:
        judge_spec, options = built.judge, dict(built.judge_options)
    new_cfg = cfg.model_copy(
        update={
            "judge": judge_spec,
            "judge_options": options,
            "out": str(root),
            "name": run_name,
            "html": html,
        }
    )

    suites = [load_suite(_suite_spec(spec, base), **cfg.suite_options()) for spec in cfg.suites]
    items = [item for suite in suites for item in spread_subset(suite.items, cfg.limit)]
    new_judge = get_judge(built.judge, **built.judge_options)
    new_judge.name = _as_typed(new_judge.name, typed if own_judge else built, built)
    scorers = Scorers(new_judge, task_scorers(items))
    old = list(source.records())
    problem = _recorded_items_differ(old, items, None)
    if problem is not None:
        raise PoiseError(f"{source.path}: cannot judge again: {problem}")
    labels = _judge_labels(cfg, base=base)
    # the reference run by the name the audit found it under: beside the run (the audit's
    # --out), wherever the new run goes; read now, so a missing one stops before any folder
    reference_records = _reference_records(cfg, root=source.path.parent, base=base)

    current = {(item.suite, item.id): item for item in items}
    generated = []
    for lineno, record in enumerate(old, 1):
        problem = key_problem(record)
        if problem is None and not isinstance(record.get("completion"), str):
            problem = "the record has no 'completion' text"
        if problem is not None:  # a hand-edited samples file: one line, before any folder
            raise located(source.samples_path, lineno, f"cannot judge again: {problem}")
        item = current[(str(record.get("suite")), str(record.get("item_id")))]
        recorded = record.get("config")
        system_prompt = recorded.get("system_prompt") if isinstance(recorded, Mapping) else None
        request = Request(
            item,
            str(record["request_id"]),
            item.chat,  # what was sent is not needed to judge an answer: the item is
            # nor how it was sampled: the record keeps its own config as written
            cfg.sampling,
            str(system_prompt if system_prompt is not None else cfg.system_prompt),
        )
        metadata = _without_judges_account(record.get("metadata"))
        num_tokens = record.get("num_tokens")
        completion = Completion(
            record["completion"],
            num_tokens if isinstance(num_tokens, int) else 0,
            record.get("finish_reason") or "stop",
            metadata=metadata,
        )
        generated.append(Generated(request, int(record["sample_index"]), completion))

    weights = {
        role: fingerprint
        for role, fingerprint in dict(header.get("weights") or {}).items()
        if not str(role).startswith("judge")
    } | weights_components(None, built.judge, judge_options=built.judge_options)
    # the audit's fingerprint only once every verdict is written: a run killed mid-way (no
    # clean-up) is not an unfinished run of that audit's configuration, which the next such
    # `poise audit` would adopt and fill with answers of its own under `rejudged_from`
    header_config = _header_config(new_cfg)
    judging = {k: v for k, v in header_config.items() if k != "fingerprint"}
    # its config's relative paths are the old run's: relative to where they were read now
    target = Run.create(root, run_name, judging, lock=True, workdir=base or working_directory())
    try:
        target.start(
            judge_resolved=scorers.default.name,
            judge_spec=judge_spec,
            model_name=header.get("model_name"),
            model_spec=model_spec,
            weights=dict(sorted(weights.items())),
            system_prompts=header.get("system_prompts"),
            rejudged_from={
                "run": str(source.path.resolve()),
                "judge": header.get("judge_resolved", cfg.judge),
            },
        )
        if progress is not None:
            progress(0, len(generated))
        for start, stop in _request_blocks(generated, max(1, cfg.batch_size)):
            judged = scorers.judge(generated[start:stop])
            target.append(
                {
                    **record,
                    "verdict": j.verdict.to_dict(),
                    "judge": j.judge,
                    **(
                        {"metadata": dict(j.completion.metadata)}
                        if j.completion.metadata is not None
                        else {}
                    ),
                }
                for record, j in zip(old[start:stop], judged, strict=True)
            )
            if progress is not None:  # blocks are consecutive: all answers up to stop judged
                progress(stop, len(generated))
        validation = None
        if labels is not None:
            from poise.scoring.validation import validate

            validation = validate(labels, scorers.default)
        target.update_header(config=header_config)
        metrics = finalize(
            target,
            reference_records=reference_records,
            html=html,
            judge_validation=validation,
        )
    except BaseException as exc:
        # half a run of verdicts is no run: nothing is resumable here (the answers are in the
        # old run), so the folder goes
        target.unlock()
        shutil.rmtree(target.path, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM through the CLI
            log.warning("interrupted: no run was written; %s is as it was", source.path)
        raise
    return AuditResult(run=target, config=new_cfg, metrics=metrics)


def _request_blocks(generated: Sequence[Any], size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive runs of ``generated`` holding ``size`` requests each
    (a request's answers are consecutive, as the audit records them), as the audit judged
    them."""
    blocks: list[tuple[int, int]] = []
    start, requests, last = 0, 0, None
    for index, g in enumerate(generated):
        key = (g.request.item.id, g.request.request_id)
        if key != last:
            if requests == size:
                blocks.append((start, index))
                start, requests = index, 0
            requests, last = requests + 1, key
    if start < len(generated):
        blocks.append((start, len(generated)))
    return blocks


# what the evaluation core adds to a guard's record from the judge's account of the unguarded
# answer (poise.evaluation.Scorers._guarded); the guard's own fields are kept
_JUDGES_GUARD_FIELDS = ("unguarded_harmful", "harm_onset", "harmful_tokens", "harmful_tokens_shown")


def _without_judges_account(metadata: object) -> dict[str, Any] | None:
    """A record's ``metadata`` as the model wrote it, before any judge: a guard's record
    without the old judge's account of the unguarded answer (a judge that locates no harm adds
    no ``harm_onset``, so the old judge's would otherwise stay beside the new verdicts)."""
    if not isinstance(metadata, Mapping):
        return None
    out = dict(metadata)
    guard = out.get("guard")
    if isinstance(guard, Mapping):
        out["guard"] = {k: v for k, v in guard.items() if k not in _JUDGES_GUARD_FIELDS}
    return out


def _cached_any(run: Run) -> bool:
    """Whether the run's response cache holds an answer (a block cut short by its endpoint
    keeps the answers that came back in it, though no record was written)."""
    if not run.cache_path.is_file():
        return False
    from poise.models.cache import ResponseCache

    with ResponseCache(run.cache_path) as cache:
        return len(cache) > 0


def finalize(
    run: Run,
    *,
    reference_records: Sequence[dict[str, Any]] | None = None,
    html: bool = True,
    judge_validation: Validation | None = None,
) -> dict[str, Any]:
    """Compute metrics from the run's records; the run writes metrics.json, report.html and
    then its status. ``judge_validation`` (the run's judge measured on human labels) adds the
    ``judge_validation`` block: the judge's agreement and the rates corrected for its error."""
    from poise.report.html import write_run_report
    from poise.scoring.metrics import compute_metrics

    records = list(run.records())
    metrics = compute_metrics(records, reference_records=reference_records)
    summarize = SUMMARIES.get(str(run.config.get("attack")))
    if summarize is not None:
        metrics["attack"] = summarize(records)
    if judge_validation is not None:
        from poise.scoring.validation import judge_validation_section

        metrics["judge_validation"] = judge_validation_section(judge_validation, metrics["overall"])
    run.finish(metrics, samples=len(records), report=write_run_report if html else None)
    return metrics


# ---- helpers --------------------------------------------------------------------------------


def spread_subset(items: Sequence[Any], limit: int | None) -> list[Any]:
    """``limit`` items spread evenly over the suite (suites are ordered by category, so the
    first N items would cover only the first categories)."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[(i * len(items)) // limit] for i in range(limit)]


def _header_config(cfg: AuditConfig) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    data["fingerprint"] = cfg.fingerprint()
    return data


def _default_name(cfg: AuditConfig) -> str:
    from poise.models.spec import short_name

    # the plain attack says how it sampled, so a sampled run is not named "greedy"
    how = cfg.attack
    if cfg.attack == "greedy" and not cfg.sampling.greedy:
        how = f"t{cfg.sampling.temperature:g}" + (
            f"-n{cfg.sampling.n}" if cfg.sampling.n > 1 else ""
        )
    return f"{short_name(cfg.model)}-{how}"


def recorded_config(run: Run) -> AuditConfig:
    """The audit config ``run`` recorded in its run.json; a config that is not an audit's (a
    field missing that every audit records, an unknown field, a bad value) is one PoiseError
    naming the file, never a default audit in its place."""
    from poise.runs.run import RUN_FILE

    file = run.path / RUN_FILE
    recorded = {k: v for k, v in run.config.items() if k != "fingerprint"}
    missing = [name for name in ("model", "suites") if name not in recorded]
    if missing:
        raise PoiseError(
            f"{file}: field 'config' has no {' or '.join(repr(m) for m in missing)}: not the "
            "config of an audit, so the run cannot be resumed"
        )
    try:
        return make_config(None, _flags=False, **recorded)
    except PoiseError as exc:
        raise PoiseError(
            f"{file}: recorded config: {str(exc).removeprefix('audit config: ')}"
        ) from None


# fields a resume takes from the caller: how the run is written, outside its fingerprint (the
# run's name and folder are its own)
RESUME_HOW = ("html", "batch_size")


def canonical_attack(cfg: AuditConfig) -> AuditConfig:
    """``cfg`` with its attack under its registered name (a deprecated alias such as
    ``best_of_n`` becomes ``worst_of_n``), as a run records it."""
    if cfg.attack in attacks and attacks.canonical(cfg.attack) != cfg.attack:
        return cfg.model_copy(update={"attack": attacks.canonical(cfg.attack)})
    return cfg


def same_field(key: str, given: Any, recorded: Any, run: Run | None = None) -> bool:
    """Whether a config field given beside resume says what the run recorded: equal values, or
    one model spec spelt with its options in another order, or as the run's header records the
    model it built (``model_spec``: defaults written out, as ``lam=1.0``)."""
    if key == "model" and isinstance(given, str) and isinstance(recorded, str):
        built = run.header.get("model_spec") if run is not None else None
        known = {canonical_spec(recorded), *([canonical_spec(built)] if built else [])}
        return canonical_spec(given) in known
    return bool(given == recorded)


def _check_resume_fields(
    run: Run, recorded: AuditConfig, given: Mapping[str, Any], model_obj: Any
) -> None:
    """``resume`` continues the run as recorded: a field given beside it that says otherwise is
    refused (it was ignored without a word); the same value, as when the same command is run
    again with ``resume``, passes. A model object is checked by :func:`_check_resumable`."""
    if model_obj is not None:
        given = {k: v for k, v in given.items() if k != "model"}
    if not given:
        return
    merged = dict(given)
    if isinstance(given.get("sampling"), Mapping):  # a partial sampling dict: its keys only
        merged["sampling"] = {**recorded.sampling.model_dump(), **given["sampling"]}
    asked = canonical_attack(make_config(None, **{**recorded.model_dump(), **merged})).model_dump()
    held = canonical_attack(recorded).model_dump()
    for key in given:
        if key == "sampling" and asked[key] != held[key]:
            # the sampling field that differs, not the two whole dicts (the seed among seven)
            field = next(k for k in held[key] if asked[key].get(k) != held[key][k])
            raise PoiseError(
                f"resume: {run.path.name} was recorded with sampling {field}="
                f"{held[key][field]!r}, not {asked[key].get(field)!r}: a resumed run keeps its "
                f"config; leave {field} out of sampling, or start a new run without resume"
            )
        if not same_field(key, asked.get(key), held.get(key), run):
            raise PoiseError(
                f"resume: {run.path.name} was recorded with {key}={held.get(key)!r}, not "
                f"{asked.get(key)!r}: a resumed run keeps its config; leave {key} out, or start "
                "a new run without resume"
            )


def _spec_to_build(cfg: AuditConfig, run: Run | None) -> str:
    """The spec the audit builds its model from: a continued run's recorded ``model_spec`` (the
    model it built, folders by their absolute paths: the typed spec names a relative folder
    from the directory the run began in, another folder or none from elsewhere), else the
    config's."""
    built = run.model_to_build if run is not None else None
    return built or cfg.model


def _check_resumable(run: Run, cfg: AuditConfig, model_obj: Any) -> None:
    """A run of a model object without a spec resumes only with that object passed again; an
    object passed to resume must be the recorded model."""
    header = run.header
    if model_obj is not None:
        given = model_obj.spec if model_obj.spec is not None else model_obj.name
        recorded = {canonical_spec(cfg.model), canonical_spec(str(header.get("model_spec") or ""))}
        if canonical_spec(given) not in recorded:
            raise PoiseError(
                f"{run.path}: the run audited {cfg.model!r}, not the model given ({given!r})"
            )
    elif "model_spec" in header and header["model_spec"] is None:
        raise PoiseError(
            f"{run.path}: the run audited a model object without a spec "
            f"({header.get('model_name')!r}), which cannot be rebuilt from run.json; resume it "
            "in Python with poise.audit(model=<that model>, resume=RUN)"
        )


def _suite_spec(spec: str, base: Path | None) -> str:
    """``spec`` as :func:`poise.suites.load_suite` reads it from the directory ``base`` (None:
    the working directory, ``spec`` as it is): a relative path of a file or folder there, or
    of a data file no longer there (so the error names where it was looked for, and a file of
    that name here is not read in its place), becomes its absolute path; a built-in suite name,
    an absolute path, and a hub id such as ``owner/name`` (which load_suite tries once no file
    has the name) stay as they are."""
    from poise.suites import builtin_suites
    from poise.suites.loaders import names_a_data_file

    if base is None or spec in builtin_suites():
        return spec
    path = Path(spec).expanduser()
    if path.is_absolute():
        return spec
    there = base / path
    try:
        return str(there) if names_a_data_file(path) or there.exists() else spec
    except OSError:  # a name the file system refuses (too long): load_suite says so
        return spec


def _relocated_path(value: str, base: Path, what: str) -> str:
    """``value``, a string a run's config gives an option or a judge, read from ``base`` (the
    directory the run began in): a relative path of a file or folder there becomes its absolute
    path; anything else (a name, a hub id, a number written as text, an absolute path) stays as
    it is. A relative path that is not there but is in the working directory is refused: it
    was read from there, another folder than the one the run began with."""
    path = Path(value).expanduser()
    if not value.strip() or path.is_absolute():
        return value
    try:
        if (base / path).exists():
            return str(base / path)
        here = path.exists()
    except OSError:  # a name the file system refuses (too long): not a path
        return value
    if here:
        raise PoiseError(
            f"{what}{value}: no such file or folder in {base}, where the run began (the one "
            f"here is another); put it back there, or resume the run from {base}"
        )
    return value


def _as_typed(name: str, cfg: AuditConfig, built: AuditConfig) -> str:
    """``name`` (a judge's, built from ``built``: :func:`_relocated` of ``cfg``) with each path
    that was read where the run began written as ``cfg`` typed it, the longest first."""
    pairs = {built.judge.partition(":")[2]: cfg.judge.partition(":")[2]}
    for field in ("judge_options", "model_options", "attack_options"):
        typed = getattr(cfg, field)
        for key, value in getattr(built, field).items():
            if isinstance(value, str) and value != typed[key]:
                pairs[value] = typed[key]
    for read, as_typed in sorted(pairs.items(), key=lambda pair: -len(pair[0])):
        if read and read != as_typed:
            name = name.replace(read, as_typed)
    return name


def _relocated(cfg: AuditConfig, base: Path | None) -> AuditConfig:
    """``cfg`` with the relative paths inside its judge spec (``guard:./folder``) and the values
    of its judge, model and attack options (``--judge-option model=./folder``) read from
    ``base`` (:func:`_relocated_path`); ``cfg`` itself when ``base`` is None. The suites, a
    reference run and a labels file are read there by their own readers."""
    if base is None:
        return cfg
    update: dict[str, Any] = {}
    kind, sep, arg = cfg.judge.partition(":")
    if sep and arg.strip():
        update["judge"] = f"{kind}:{_relocated_path(arg.strip(), base, '--judge ' + kind + ':')}"
    for field in ("judge_options", "model_options", "attack_options"):
        options = getattr(cfg, field)
        update[field] = {
            key: _relocated_path(value, base, f"{_flag(field)} {key}=")
            if isinstance(value, str)
            else value
            for key, value in options.items()
        }
    return cfg.model_copy(update=update)


def _already_complete(run: Run, cfg: AuditConfig, *, report: bool) -> AuditResult:
    """``resume`` of a run that is complete: nothing is generated, judged or recomputed, and
    the run stays complete (its metrics as its audit wrote them; ``poise runs rejudge``
    judges it again). It was finished again, its status set to running meanwhile, so a kill
    then showed a complete run as interrupted. ``report``: ``html`` was given, so a run written
    without report.html gets one."""
    from poise.report.html import write_run_report

    metrics = run.metrics()
    if metrics is None:
        raise PoiseError(
            f"{run.path}: the run is complete but has no metrics.json; judge its answers again "
            f"into a new run with poise runs rejudge {run.path}"
        )
    drawn = report and cfg.html and not run.report_path.exists()
    log.warning(
        "%s is complete: nothing to resume; its recorded results are unchanged%s (poise runs "
        "show %s)",
        run.path,
        ", its report drawn" if drawn else "",
        run.path,
    )
    if drawn:
        run.lock()  # one writer, as for any write into a run folder
        try:
            write_run_report(run)
        finally:
            run.unlock()
    return AuditResult(run=run, config=cfg, metrics=metrics)


def _check_judge_options(judge: str, options: Mapping[str, Any]) -> str:
    """The name of the judge ``judge`` specs, its ``options`` checked against what it takes
    (one PoiseError naming the nearest valid ones); options beside ``auto`` are refused."""
    from poise.scoring.judges import judges, parse_judge_spec

    name, _ = parse_judge_spec(judge)
    if options:
        if name == "auto":
            raise PoiseError(
                "judge options need a named judge (--judge NAME), not auto: auto picks the "
                "judge from the model"
            )
        judges.check_options(name, options)
    return name


def _judge_labels(cfg: AuditConfig, *, base: Path | None = None) -> LabelSet | None:
    """The human-labelled answers ``--judge-labels`` names (read before the model loads), or
    None. ``base``: the directory a relative path is relative to (default: the working
    directory)."""
    if cfg.judge_labels is None:
        return None
    from poise.scoring.validation import read_labels

    path = Path(cfg.judge_labels).expanduser()
    return read_labels(
        base / path if base is not None else cfg.judge_labels,
        format=cfg.judge_labels_format,
        columns=dict(cfg.judge_labels_columns) or None,
        flag="--judge-labels-column",
    )


def _reference_records(
    cfg: AuditConfig, *, root: str | Path | None = None, base: Path | None = None
) -> list[dict[str, Any]] | None:
    """The records of ``reference_run``, checked as the metrics read them (judged honesty
    answers in its default group) before the model loads: a reference without them stopped the
    audit once every answer was generated, and left a run that no resume could finish. A
    name is looked for under ``root`` (default: ``cfg.out``), a relative path from ``base``
    (default: the working directory)."""
    if cfg.reference_run is None:
        return None
    from poise.scoring.metrics import reference_types

    ref = find_run(cfg.reference_run, cfg.out if root is None else root, base=base)
    records = list(ref.records())
    if not records:
        raise PoiseError(f"{ref.path}: the reference run has no records")
    try:
        reference_types(records)
    except PoiseError as exc:
        raise PoiseError(
            f"{ref.path}: {exc}; --reference-run takes a run of the unaligned model on the "
            "honesty suite"
        ) from None
    return records


def _check_attack_options(name: str, attack: Callable[..., Any], options: dict[str, Any]) -> None:
    import inspect

    attacks.check_options(name, options)  # a misspelt option names the nearest valid ones
    signature = inspect.signature(attack)
    try:
        signature.bind(None, None, None)
    except TypeError as exc:  # the attack itself, not the options: a plugin's wrong signature
        raise PoiseError(
            f"attack {name!r} cannot be called as attack(items, sampling, system, **options) "
            f"({exc}); its signature is {signature}"
        ) from None
    try:
        signature.bind(None, None, None, **options)
    except TypeError as exc:
        raise PoiseError(f"attack {name!r}: bad options {sorted(options)} ({exc})") from None
    from poise.attacks.base import check_attack_options

    check_attack_options(attack, options)  # each value parsed and checked before any work


def _check_unique_ids(items: Sequence[Any]) -> None:
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise PoiseError(
                f"item id {item.id!r} appears in both {seen[item.id]!r} and {item.suite!r}: "
                "ids must be unique across the suites of one audit"
            )
        seen[item.id] = item.suite


def _recorded_makers_differ(
    run: Run,
    model_name: str,
    judge_name: str,
    weights: Mapping[str, Mapping[str, str]] | None = None,
) -> str | None:
    """Why ``run`` cannot be continued by this model and judge: its header names another model
    that gave its answers (the same spec, other weights: a model folder trained again since the
    run began, whose name carries a hash of its files; or the bundled organism of another poise
    version), or another judge that labelled them (``auto`` resolved otherwise). The fingerprint
    holds the spec, not the weights, so the run would mix answers of two models, or verdicts of
    two judges, under one config. None when the header names neither or both agree, or the
    run has no record yet.

    ``weights``: the fingerprints of the components the audit is made with now
    (:func:`poise.runs.provenance.weights_components`): a scorer, monitor, probe or judge
    trained again in place keeps its name, so the header's ``weights`` are compared too, and the
    first component whose contents differ is named (a run recorded before poise fingerprinted
    weights has none: no check)."""
    if run.samples_written() == 0:
        return None
    header = run.header
    for what, field, now in (
        ("model", "model_name", model_name),
        ("judge", "judge_resolved", judge_name),
    ):
        recorded = header.get(field)
        if recorded is not None and str(recorded) != now:
            if what == "model" and _same_model_contents(header.get("weights"), weights or {}):
                # a model's name carries the sizes and times of its large files
                # (poise.models.hf.folder_fingerprint): a copy or a `touch` renames the same
                # weights, whose answers continue the run
                log.info("%s: model %r is %r now, with the same contents", run.path, recorded, now)
                continue
            return f"its records were made with {what} {recorded!r}, and this {what} is {now!r}"
    return weights_changed(header.get("weights"), weights or {})


def _find_answers_source(spec: str | Path, out: str | Path) -> Run:
    """The run ``answers_from`` names (a folder, or a name under ``out``); an error says which
    option named it. A run judged again (``poise runs rejudge``) keeps no cache of answers: the
    run it was judged from, which holds them, is taken instead."""
    try:
        source = find_run(spec, out)
    except PoiseError as exc:
        raise PoiseError(f"answers_from: {exc}") from None
    seen = {source.path.resolve()}
    while not source.cache_path.is_file():
        origin = source.header.get("rejudged_from")
        if not isinstance(origin, Mapping) or not isinstance(origin.get("run"), str):
            break
        path = Path(origin["run"])
        if not path.is_dir() or path.resolve() in seen:
            raise PoiseError(
                f"answers_from: {source.path} was judged again from {path}, which holds its "
                "answers and is gone; a run judged again keeps no cache of answers"
            )
        seen.add(path.resolve())
        log.info("%s was judged again from %s: its answers are taken from there", source.path, path)
        source = Run.open(path)
    return source


def _answers_source(
    source: Run,
    model_name: str,
    weights: Mapping[str, Mapping[str, str]],
    dated: Mapping[str, str] | None,
) -> tuple[Run, str]:
    """``source`` (:func:`_find_answers_source`), checked to hold answers of this model: model
    components of the same contents and a chat template that dates its prompts as it does now,
    under the same name or another one (a copied or touched folder: its name carries its files'
    sizes and times), as a resume takes them. Returns it with the model name its cache's keys
    hold. Its judge may differ (its answers are judged anew)."""
    header = source.header
    recorded, recorded_weights = header.get("model_name"), header.get("weights")
    problem: str | None = None
    if (
        recorded is not None
        and str(recorded) != model_name
        and not _same_model_contents(recorded_weights, weights)
    ):
        problem = f"its answers were made by model {recorded!r}, and this model is {model_name!r}"
    if problem is None and isinstance(recorded_weights, Mapping):
        # the model's components only: the judge's may differ (the answers are judged anew)
        model_weights = {r: f for r, f in recorded_weights.items() if str(r).startswith("model")}
        problem = weights_changed(model_weights, weights)
    if problem is None:
        problem = _prompts_dated_otherwise(source, dated)
    if problem is not None:
        raise PoiseError(f"answers from {source.path}: {problem}; they are not this model's")
    return source, model_name if recorded is None else str(recorded)


def _take_answers(
    run: Run, source: Run, source_model: str, model_name: str, requests: Sequence[Request]
) -> None:
    """Copy into ``run``'s cache the answers ``source``'s cache holds of ``requests``, looked up
    under the model name they were made under (``source_model``) and stored under this model's,
    and name the source and how many requests it answered in the header."""
    from poise.models.cache import ResponseCache, request_key

    if source.path.resolve() == run.path.resolve():
        return
    keys = {
        request_key(source_model, r.chat, r.sampling): request_key(model_name, r.chat, r.sampling)
        for r in requests
    }
    with ResponseCache(run.cache_path) as cache:
        taken = cache.copy_from(source.cache_path, model_name, keys)
    if taken:
        log.info("%s: answers to %d requests taken from %s", run.path, taken, source.path)
    elif not source.cache_path.is_file():
        log.warning("%s keeps no cache of answers: every answer is generated", source.path)
    else:
        log.warning(
            "%s holds no answer to this audit's requests (another sampling, system prompt or "
            "suite?): every answer is generated",
            source.path,
        )
    run.update_header(answers_from={"run": str(source.path.resolve()), "answers": taken})


# a chat any chat template renders, to see whether one that writes today's date into every
# prompt (``strftime_now``: Llama 3.1-3.3 templates) renders it as it did
_PROBE_CHAT = ({"role": "user", "content": "Hello"},)


def _dated_prompts(model: Any) -> dict[str, str] | None:
    """How the chat template of ``model``'s tokenizer renders a fixed chat now, when the
    template reads the clock (``strftime_now``, which transformers gives every chat template:
    the local date): ``{"sha256", "rendered_at"}``. None for a model without a tokenizer or
    whose template does not read it (its prompts follow from the files in ``weights``)."""
    tokenizer: Any = getattr(model, "tokenizer", None)
    if tokenizer is None or "strftime_now" not in str(getattr(tokenizer, "chat_template", "")):
        return None
    try:
        text = tokenizer.apply_chat_template(
            [dict(m) for m in _PROBE_CHAT], add_generation_prompt=True, tokenize=False
        )
    except Exception:  # a template that refuses this chat: the audit's own chats say so
        return None
    return {
        "sha256": hashlib.sha256(str(text).encode("utf-8")).hexdigest(),
        "rendered_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _prompts_dated_otherwise(run: Run, now: Mapping[str, str] | None) -> str | None:
    """Why ``run`` cannot be continued with prompts rendered as ``now`` says
    (:func:`_dated_prompts`): its chat template writes the date into every prompt and renders
    them otherwise than when its records were made (another day), so its answers would come
    from two sets of prompts under one config. None when the run has no record yet, or either
    side names no date."""
    then = run.header.get("dated_prompts")
    if now is None or not isinstance(then, Mapping) or run.samples_written() == 0:
        return None
    if then.get("sha256") == now["sha256"]:
        return None
    return (
        "the model's chat template writes today's date into every prompt (strftime_now), and "
        f"its records were made from prompts rendered at {then.get('rendered_at')}, which it "
        f"renders otherwise now ({now['rendered_at']})"
    )


def _same_model_contents(recorded: object, now: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether the model's components (the ``weights`` roles of the model and of what its spec
    names) are known, the same ones, and of the same contents (sha256 of a folder's files, or
    a hub commit) in a run's header and now."""
    if not isinstance(recorded, Mapping):
        return False
    then = {str(r): f for r, f in recorded.items() if str(r).startswith("model")}
    current = {r: f for r, f in now.items() if r.startswith("model")}
    if not then or set(then) != set(current):
        return False
    for role, old in then.items():
        if not isinstance(old, Mapping):
            return False
        same = [old.get(k) == current[role].get(k) for k in ("sha256", "commit") if old.get(k)]
        if not same or not all(same):
            return False
    return True


def _recorded_items_differ(
    records: Iterable[Mapping[str, Any]], items: Sequence[SuiteItem], scorers: Scorers | None
) -> str | None:
    """Why a run whose records are ``records`` cannot be continued with ``items``: one of its records gives an item another
    kind than the item's suite does now (the built-in sycophancy items were honesty-known before
    they had their own kind; the rest would be counted under the new kind and both kinds' rates
    would mix the two), or another prompt, chat, reference or category (a suite file edited since the run
    began: its fingerprint names the file, not what it holds, and the run would mix answers to
    the old and the new item under one id), or that item is no longer among the audit's items
    (removed from the file, or, under ``--limit``, no longer picked from a suite that grew or
    shrank: the run would end with answers to items an uninterrupted audit does not ask); or
    the record was judged by another scorer than this audit's scorer of its kind (a task's own
    scorer renamed or replaced since the run began, say by an updated plugin: the header names
    only the audit's judge, and the rate of that kind would count the verdicts of two scorers;
    records without a ``judge`` are not compared; nor any when ``scorers`` is None, as when a
    run is judged again). None when every record agrees."""
    current = {(item.suite, item.id): item for item in items}
    for record in records:
        key = (str(record.get("suite")), str(record.get("item_id")))
        item = current.get(key)
        where = f"item {key[1]} of suite {key[0]}"
        if item is None:
            # its answer would be counted beside the items the audit asks now (a --limit spread
            # over a suite that grew picks other items): more items than asked, not the same
            return (
                f"{where} is recorded but is no longer among the audit's items (the suite "
                "changed since the run began)"
            )
        if record.get("kind") != item.kind:
            return (
                f"{where} is recorded as kind {record.get('kind')!r} but "
                f"is {item.kind!r} now (the suite changed since the run began)"
            )
        changed = [
            name
            for name, recorded, now in (
                ("prompt", record.get("prompt"), item.prompt),
                ("reference", record.get("reference"), item.reference),
                # the category its rate is counted under: a run would count the item's
                # answers under the old and the new one (older records have it too)
                ("category", record.get("category", item.category), item.category),
                # records of several-turn items hold the whole chat (older ones only the prompt)
                ("chat", record.get("messages", item.chat), item.chat),
            )
            if "prompt" in record and recorded != now
        ]
        if changed:
            what = " and ".join(changed)
            return f"{where} has another {what} now (the suite changed since the run began)"
        if scorers is None:
            continue
        judged_by, now = record.get("judge"), scorers.for_kind(item.kind).name
        if judged_by is not None and str(judged_by) != now:
            return (
                f"its answers of kind {item.kind!r} were judged by {judged_by!r}, and this "
                f"audit's scorer of that kind is {now!r}"
            )
    return None


def _check_unique_requests(requests: Sequence[Request]) -> None:
    keys = [(r.item.id, r.request_id) for r in requests]
    if len(set(keys)) != len(keys):
        raise PoiseError("the attack produced two requests with the same (item, request_id)")
