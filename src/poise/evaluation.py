"""The evaluation core: generate -> judge -> record, once, for every caller.

    requests --model.generate (blocks)--> completions --scorers--> Judged --record()--> a record

The audit (:mod:`poise.auditing`) appends each judged block to its run folder; the release gate
(:mod:`poise.gate`) turns verdicts (or a cost model's scores) into per-prompt costs; the organism's
card measurements (:mod:`poise.organism.evaluate`) count verdicts into rates. All three generate
and judge here, so a change to how completions are produced or labelled reaches all of them.

Which scorer labels an answer follows the item's task (:mod:`poise.tasks`): a task that declares
its own scorer gets it; the built-in kinds get the caller's judge. Requests are generated in
blocks of at most ``batch_size`` that share one ``Sampling``, in request order; within a block the
scorers see the answers in request order, ``sample_index`` order inside a request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from typing import Any

from poise.attacks.base import Request
from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import Completion, GenerationError, LanguageModel
from poise.models.context import fit_context
from poise.scoring.base import Judge, LocatesHarm, Verdict
from poise.suites.schema import SuiteItem

# Verdict's fixed fields: ``label_of`` reads these before any open label of the same name.
_FIXED_FIELDS = frozenset(f.name for f in dataclass_fields(Verdict)) - {"labels"}

log = logging.getLogger(__name__)

#: (item id, request id, sample index): one record of a run.
RecordKey = tuple[str, str, int]
# progress(done_requests, total_requests), after each block
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Generated:
    """One completion of one request."""

    request: Request
    sample_index: int
    completion: Completion

    @property
    def key(self) -> RecordKey:
        return (self.request.item.id, self.request.request_id, self.sample_index)


@dataclass(frozen=True)
class Judged:
    """One completion with its verdict and the name of the scorer that gave it."""

    request: Request
    sample_index: int
    completion: Completion
    verdict: Verdict
    judge: str

    def record(self, attack: str) -> dict[str, Any]:
        """The ``samples.jsonl`` record of this answer (see :mod:`poise.runs.run`). A completion
        with ``metadata`` (a wrapped model's account of how it answered) adds a ``metadata``
        field at the end; plain answers' records are unchanged. An item that is more than one
        user turn (several turns, or its own system message) adds ``messages``, its whole chat
        (``prompt`` is its last user turn), so what the model was asked can be rebuilt from the
        record (:func:`poise.probes.data.record_chat`, preference exports)."""
        item = self.request.item
        record = {
            "item_id": item.id,
            "suite": item.suite,
            "kind": item.kind,
            "category": item.category,
            "request_id": self.request.request_id,
            "attack": attack,
            "config": {
                **self.request.sampling.model_dump(mode="json"),
                "system_prompt": self.request.system_prompt,
            },
            "sample_index": self.sample_index,
            "prompt": item.prompt,
            **({"messages": item.chat} if len(item.messages) > 1 else {}),
            "completion": self.completion.text,
            "num_tokens": self.completion.num_tokens,
            "finish_reason": self.completion.finish_reason,
            "reference": item.reference,
            "verdict": self.verdict.to_dict(),
            "judge": self.judge,
        }
        if self.completion.metadata is not None:
            record["metadata"] = dict(self.completion.metadata)
        return record


class Scorers:
    """Which judge labels which kind: a task's own scorer where it declares one, else ``default``
    (``by_kind`` from :func:`task_scorers`, built before the model loads)."""

    def __init__(self, default: Judge, by_kind: Mapping[str, Judge] | None = None) -> None:
        self.default = default
        self.by_kind = dict(by_kind or {})

    @classmethod
    def for_items(cls, default: Judge, items: Iterable[SuiteItem]) -> Scorers:
        """``default`` plus the scorers the tasks of ``items`` declare (:func:`task_scorers`)."""
        return cls(default, task_scorers(items))

    def for_kind(self, kind: str) -> Judge:
        return self.by_kind.get(kind, self.default)

    def judge(self, generated: Sequence[Generated]) -> list[Judged]:
        """Verdicts for a block of answers, in order; each scorer sees its answers in one call."""
        groups: dict[int, tuple[Judge, list[int]]] = {}
        for index, g in enumerate(generated):
            scorer = self.for_kind(g.request.item.kind)
            groups.setdefault(id(scorer), (scorer, []))[1].append(index)
        verdicts: list[tuple[Verdict, str] | None] = [None] * len(generated)
        for scorer, indices in groups.values():
            labelled = _checked(
                scorer,
                [generated[i].request.item for i in indices],
                scorer.judge(
                    [generated[i].request.item for i in indices],
                    [generated[i].completion.text for i in indices],
                ),
            )
            for i, verdict in zip(indices, labelled, strict=True):
                verdicts[i] = (verdict, scorer.name)
        out = []
        for g, labelled_pair in zip(generated, verdicts, strict=True):
            assert labelled_pair is not None
            verdict, name = labelled_pair
            out.append(Judged(g.request, g.sample_index, g.completion, verdict, name))
        return self._guarded(out)

    def _guarded(self, judged: list[Judged]) -> list[Judged]:
        """Complete what a guard recorded (``metadata["guard"]``, :mod:`poise.guards.record`)
        with the judge's account of the unguarded answer: ``unguarded_harmful`` (its verdict's
        ``harmful``) and, from a judge that locates harm (``LocatesHarm``), ``harm_onset`` (a
        character offset) and ``harmful_tokens`` / ``harmful_tokens_shown`` (tokens ending
        past the onset, of the whole unguarded answer and of what was shown). Answers without
        a guard's record are returned as they are."""
        todo = [
            i
            for i, j in enumerate(judged)
            if j.completion.metadata is not None
            and isinstance(j.completion.metadata.get("guard"), dict)
            and "unguarded_tokens" in j.completion.metadata["guard"]
        ]
        if not todo:
            return judged
        texts: dict[int, str] = {}
        for i in todo:
            record = judged[i].completion.metadata["guard"]  # type: ignore[index]
            texts[i] = str(record.get("unguarded_text", judged[i].completion.text))
        harmful: dict[int, bool | None] = {}
        onsets: dict[int, int | None] = {}
        groups: dict[int, tuple[Judge, list[int]]] = {}
        for i in todo:
            scorer = self.for_kind(judged[i].request.item.kind)
            groups.setdefault(id(scorer), (scorer, []))[1].append(i)
        for scorer, indices in groups.values():
            stopped = [i for i in indices if judged[i].completion.finish_reason == "guard"]
            for i in indices:
                harmful[i] = judged[i].verdict.harmful
            if stopped:  # the shown answer's verdict is not the unguarded answer's
                asked = [judged[i].request.item for i in stopped]
                again = _checked(scorer, asked, scorer.judge(asked, [texts[i] for i in stopped]))
                for i, verdict in zip(stopped, again, strict=True):
                    harmful[i] = verdict.harmful
            if isinstance(scorer, LocatesHarm):
                found = scorer.harm_onsets(
                    [judged[i].request.item for i in indices], [texts[i] for i in indices]
                )
                onsets.update(zip(indices, found, strict=True))
        out = list(judged)
        for i in todo:
            j = judged[i]
            record = dict(j.completion.metadata["guard"])  # type: ignore[index]
            record["unguarded_harmful"] = harmful[i]
            if i in onsets:
                onset = onsets[i]
                record["harm_onset"] = onset
                ends = [int(e) for e in record.get("token_ends") or []]
                shown = int(record.get("shown_tokens", 0))
                past = [e > onset for e in ends] if onset is not None else [False] * len(ends)
                record["harmful_tokens"] = sum(past)
                record["harmful_tokens_shown"] = sum(past[:shown])
            metadata = {**(j.completion.metadata or {}), "guard": record}
            out[i] = Judged(
                j.request,
                j.sample_index,
                replace(j.completion, metadata=metadata),
                j.verdict,
                j.judge,
            )
        return out


def _checked(scorer: Judge, items: Sequence[SuiteItem], labelled: Any) -> list[Verdict]:
    """``labelled``, what ``scorer`` returned for the answers to ``items``, if it is one
    :class:`Verdict` per answer, each of which a record can hold (JSON); else one PoiseError
    naming the scorer and the kinds it labelled, before any record of the block is written (a
    task's own scorer returning a dict, None or a numpy bool failed deep inside the record)."""
    where = (
        f"judge {scorer.name!r} (labelling kind {', '.join(dict.fromkeys(i.kind for i in items))})"
    )
    if not isinstance(labelled, Sequence) or isinstance(labelled, (str, bytes)):
        raise PoiseError(
            f"{where} returned {type(labelled).__name__}, not a list of verdicts: judge(items, "
            "completions) returns one Verdict per answer, in order"
        )
    if len(labelled) != len(items):
        raise PoiseError(
            f"{where} returned {len(labelled)} verdicts for {len(items)} answers: judge(items, "
            "completions) returns one Verdict per answer, in order"
        )
    for verdict, item in zip(labelled, items, strict=True):
        if not isinstance(verdict, Verdict):
            raise PoiseError(
                f"{where} returned {type(verdict).__name__} {verdict!r} for item {item.id!r}, "
                "not a poise.scoring.base.Verdict"
            )
        shadowed = sorted(set(verdict.labels) & _FIXED_FIELDS)
        if shadowed:
            raise PoiseError(
                f"{where}: the verdict of item {item.id!r} has an open label named like a fixed "
                f"field ({', '.join(map(repr, shadowed))}): a metric reading that name reads the "
                "fixed field, never the label; set the field itself or name the label otherwise"
            )
        try:
            json.dumps(verdict.to_dict())
        except (TypeError, ValueError) as exc:
            raise PoiseError(
                f"{where}: the verdict of item {item.id!r} cannot be recorded ({exc}): its fields "
                "and labels must be JSON values (bool, int, float, str, None, lists and dicts "
                "of them; a numpy value's .item())"
            ) from None
    return list(labelled)


def task_scorers(items: Iterable[SuiteItem]) -> dict[str, Judge]:
    """The scorers the kinds of ``items`` declare, each built once: a judge spec through
    ``poise.scoring.judges.get_judge``, or the task's own factory (checked to be a judge). Kinds
    whose task declares none are left out (the caller's judge labels them). Call it before
    loading a model, so a broken scorer fails first."""
    from poise.scoring.judges import get_judge
    from poise.tasks import get_task

    by_kind: dict[str, Judge] = {}
    for kind in dict.fromkeys(item.kind for item in items):
        scorer = get_task(kind).scorer
        if scorer is None:
            continue
        try:
            judge = get_judge(scorer) if isinstance(scorer, str) else scorer()
        except PoiseError as exc:  # said of the task: the audit's --judge is another
            raise PoiseError(f"task {kind!r}: its scorer {scorer!r}: {exc}") from None
        except Exception as exc:  # a plugin's own error: its traceback, and whose it is
            exc.add_note(f"(building the scorer of task {kind!r}: {scorer!r})")
            raise
        if not isinstance(judge, Judge):
            raise PoiseError(
                f"task {kind!r}: its scorer built {type(judge).__name__}, not a judge "
                "(needs a name and judge(items, completions) -> list[Verdict])"
            )
        by_kind[kind] = judge
    return by_kind


def blocks(
    requests: Sequence[Request], size: int, *, among: Sequence[Request] = ()
) -> Iterator[tuple[Sampling, list[Request]]]:
    """Consecutive blocks of at most ``size`` requests sharing one Sampling, in request order.
    The Samplings come in the order they first appear in ``among`` (all of an audit's requests,
    of which ``requests`` are those left to do), then in ``requests``: a resumed audit writes
    its records in the order an uninterrupted one does."""
    groups: dict[Sampling, list[Request]] = {}
    for r in among:
        groups.setdefault(r.sampling, [])
    for r in requests:
        groups.setdefault(r.sampling, []).append(r)
    for sampling, group in groups.items():
        for start in range(0, len(group), size):
            yield sampling, group[start : start + size]


class RequestsFailed(PoiseError):
    """Requests whose generation failed for good (the backend gave up on them), named by item;
    every other request of the call was generated and yielded. ``not_tried``: requests left
    out because a whole block failed (the endpoint looked down)."""

    def __init__(self, failed: Sequence[tuple[Request, str]], not_tried: int = 0) -> None:
        self.failed = list(failed)
        self.not_tried = not_tried
        shown = "; ".join(
            f"item {r.item.id} ({r.request_id}): {reason}" for r, reason in self.failed[:3]
        )
        more = f"; and {len(self.failed) - 3} more" if len(self.failed) > 3 else ""
        rest = f"; {not_tried} requests not tried" if not_tried else ""
        count = f"{len(self.failed)} request{'s' if len(self.failed) != 1 else ''}"
        super().__init__(f"{count} failed: {shown}{more}{rest}")


def check_context(model: LanguageModel, requests: Sequence[Request]) -> None:
    """Refuse, before anything is generated, a request longer than the model's context
    (prompt tokens with the model's chat template plus ``max_new_tokens``; see
    :mod:`poise.models.context`): one line naming the item. Nothing is checked for a model that
    does not know its context (a remote server checks for itself)."""
    if model.context_length is None:
        return
    checked: set[tuple[str, int]] = set()
    for request in requests:
        key = (json.dumps(request.chat, ensure_ascii=False), request.sampling.max_new_tokens)
        if key in checked:
            continue
        checked.add(key)
        try:
            fit_context(model, request.chat, request.sampling)
        except PoiseError as exc:
            item = request.item
            raise PoiseError(
                f"item {item.id!r} of suite {item.suite!r} (request {request.request_id!r}, "
                f"max_new_tokens {request.sampling.max_new_tokens}): {exc}"
            ) from None


def check_sampling(model: LanguageModel, requests: Sequence[Request]) -> None:
    """Refuse, before anything is generated, decoding settings a wrapped model cannot answer
    under (:meth:`poise.models.wrapped.WrappedModel.check_sampling`; best-of-N under greedy
    decoding draws N identical answers). When only some requests' settings are refused (an
    attack's grid, whose greedy configurations sit beside sampled ones) it is a warning."""
    from poise.models.wrapped import WrappedModel

    if not isinstance(model, WrappedModel):
        return
    refused: dict[str, str] = {}  # request id -> why
    for request in requests:
        try:
            model.check_sampling(request.sampling)
        except PoiseError as exc:
            refused.setdefault(request.request_id, str(exc))
    if not refused:
        return
    why = next(iter(refused.values()))
    if len(refused) == len({r.request_id for r in requests}):
        raise PoiseError(why)
    log.warning("%s (requests %s)", why, ", ".join(sorted(refused)))


def generate(
    model: LanguageModel,
    requests: Sequence[Request],
    *,
    batch_size: int,
    done: Collection[RecordKey] = (),
    progress: ProgressFn | None = None,
) -> Iterator[list[Generated]]:
    """Completions of ``requests``, block by block (see :func:`blocks`).

    Requests whose every sample is in ``done`` are skipped; of a partly done request only the
    missing samples are yielded (the model still generates the request whole, so a resumed run
    sees the same completions). ``progress(done_requests, total)`` is called once at the start,
    as the model finishes requests within a block (its own ``progress``), and after each block.

    When the backend gives up on some requests of a block (``GenerationError``), the block's
    other answers are still yielded and the next blocks go on; at the end :class:`RequestsFailed`
    names the failed requests by item. A block of which nothing came back stops at once.
    """
    todo = [
        r
        for r in requests
        if not all((r.item.id, r.request_id, k) in done for k in range(r.sampling.n))
    ]
    finished = len(requests) - len(todo)
    reported = finished  # the last count given to progress
    if progress:
        progress(finished, len(requests))
    failed: list[tuple[Request, str]] = []
    for sampling, block in blocks(todo, batch_size, among=requests):
        outputs: list[list[Completion] | None]
        within = 0  # requests of this block the model says it finished

        def advance(k: int, start: int = finished, size: int = len(block)) -> None:
            nonlocal within, reported
            within += k
            if progress and start + min(within, size) > reported:
                reported = start + min(within, size)
                progress(reported, len(requests))

        try:
            outputs = list(
                model.generate(
                    [r.chat for r in block], sampling, progress=advance if progress else None
                )
            )
        except GenerationError as exc:
            if exc.model is not model or len(exc.results) != len(block):
                raise
            failed += [(block[i], reason) for i, reason in sorted(exc.failures.items())]
            outputs = exc.results
            if all(o is None for o in outputs):  # nothing came back: the endpoint is down
                raise RequestsFailed(failed, len(todo) - len(block)) from None
        yield [
            g
            for request, completions in zip(block, outputs, strict=True)
            if completions is not None
            for k, completion in enumerate(completions)
            if (g := Generated(request, k, completion)).key not in done
        ]
        finished += len(block)
        if progress and finished > reported:
            reported = finished
            progress(finished, len(requests))
    if failed:
        raise RequestsFailed(failed, 0)


def evaluate(
    model: LanguageModel,
    requests: Sequence[Request],
    scorers: Scorers,
    *,
    batch_size: int,
    done: Collection[RecordKey] = (),
    progress: ProgressFn | None = None,
) -> Iterator[list[Judged]]:
    """Generate and judge ``requests`` block by block (see :func:`generate`); each yielded list
    is one block's judged answers in request order."""
    for generated in generate(model, requests, batch_size=batch_size, done=done, progress=progress):
        yield scorers.judge(generated)


def verdicts_per_request(
    judged: Iterable[Judged], requests: Sequence[Request]
) -> list[list[Verdict]]:
    """The verdicts of each request, in request order and ``sample_index`` order."""
    per: dict[tuple[str, str], list[Judged]] = {}
    for j in judged:
        per.setdefault((j.request.item.id, j.request.request_id), []).append(j)
    return [
        [
            j.verdict
            for j in sorted(per.get((r.item.id, r.request_id), []), key=lambda j: j.sample_index)
        ]
        for r in requests
    ]
