"""``guarded(MODEL, monitor=..., threshold=..., k=...)``: stop an answer as it turns harmful.

The streaming content monitor of SCM (arXiv 2506.09996, :mod:`poise.guards.monitor`) reads
every token the inner model generates, as it is generated: one incremental forward of the
monitor per decoding step for the whole batch, with the monitor's own KV cache (a
:class:`~poise.models.decode.DecodeState` whose "logits" are the monitor's scores), through the
inner model's token-level step (``logits_hook``). A token whose harmful probability is at or
above ``threshold`` is flagged; once ``k`` tokens of a row are flagged (the paper's delay-k
rule, counted over the answer so far as the released ``utils/metrics.py`` counts them) the
row stops: the text shown so far ends with ``refusal`` and the completion's ``finish_reason``
is ``"guard"`` (``content_filter`` over ``poise serve``'s OpenAI API).

- ``stream`` and ``engine`` (``poise serve``) really stop: the stopped row's next token is
  forced to EOS, so nothing more is generated.
- ``generate`` (audits) lets every row decode to its end while the monitor watches, and cuts
  the text at the stop afterwards: the tokens before the stop are the same either way (a
  row's tokens never depend on what comes after), and the audit learns what the unguarded
  answer would have been, which the guard metrics compare against (``metadata["guard"]``,
  :mod:`poise.guards.record`).

``window`` scores only the first ``window`` tokens of an answer (``window=1, k=1``: a guard that
reads the first token only). ``threshold`` and ``k`` default to the monitor's header (chosen on
a validation split by :func:`poise.guards.calibrate.calibrate`).

Assumptions: the monitor shares the inner model's vocabulary (checked: the tokenizers' maps are
equal), and reads the prompt token ids the inner model generates after; a monitor of a shorter
context than the model's is the guard's ``context_length`` (a request whose prompt and
``max_new_tokens`` run past it is refused beforehand). The token that ends an
answer (EOS) is not scored, nor is the last token of an answer that ran out of length (the
hook sees a token at the step after it was chosen; an answer that ended has no such step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import torch

from poise.config import Sampling
from poise.errors import PoiseError, check_int, check_number
from poise.guards import guards
from poise.guards.monitor import Monitor, load_monitor, monitor_folder, read_header
from poise.guards.record import guard_record, refusal_tail, shown_completion
from poise.models.base import (
    Capabilities,
    Chat,
    Completion,
    LanguageModel,
    ProgressFn,
    RowTokens,
    StepView,
    StreamEvent,
)
from poise.models.context import ContextLengthError, config_context_length
from poise.models.decode import DecodeState, KVCache
from poise.models.wrapped import WrappedModel

__all__ = ["DEFAULT_REFUSAL", "Guarded", "MonitorWatch"]

DEFAULT_REFUSAL = "I'm sorry, I can't continue with this answer."
# The monitor's cache is compacted (copied) once more than 1/DEAD_SHARE of its rows have been
# gone for DEAD_STEPS steps or more: a row that has just left is usually replaced in place by the
# next newcomer (the inner batch admits one as a row finishes, seen a step later); one that stays
# gone (a stopped answer that the inner model decodes on in an audit) costs a row of every step.
DEAD_SHARE = 8
DEAD_STEPS = 2


class MonitorWatch:
    """A logits hook that scores each row's newest token with a monitor and applies delay-k.

    ``prompt_of(row_id)`` gives a row's prompt token ids. ``stops[row_id]`` is the number of
    the row's tokens shown before it stopped (the flagged k-th token included) once it stops;
    ``force``: a stopped row's next token is forced to EOS (``eos_id``). One watch serves one
    ``generate`` / ``stream`` call or one engine."""

    def __init__(
        self,
        monitor: Monitor,
        prompt_of: Callable[[int], Sequence[int]],
        *,
        threshold: float,
        k: int,
        window: int = 0,
        force: bool = False,
        eos_id: int | None = None,
        keep_scores: bool = False,
    ) -> None:
        self.monitor = monitor
        # every scored token's score per row, when asked (tests, analyses)
        self.scores: dict[int, list[float]] | None = {} if keep_scores else None
        self.prompt_of = prompt_of
        self.threshold = threshold
        self.k = k
        self.window = window
        self.force = force
        self.eos_id = eos_id
        self.state: DecodeState | None = None
        # row ids, aligned with self.state's rows; None: a row that left, not yet dropped
        self.order: list[int | None] = []
        self.calls = 0  # calls of the hook so far
        self.left_at: dict[int, int] = {}  # index in order of a row that left -> the call it left
        self.flagged: dict[int, int] = {}
        self.stops: dict[int, int] = {}
        self.max_score: dict[int, float] = {}

    # the monitor's forward for DecodeState: scores of the last new position, [rows]
    def _forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        hidden = self.monitor.hidden(input_ids, mask, positions, cache)  # [rows, new, hidden]
        return self.monitor.scores(hidden[:, -1])

    @torch.inference_mode()
    def _prefill(
        self, rows: list[int], tokens: list[list[int]]
    ) -> tuple[DecodeState, list[list[float]]]:
        """A state of ``rows`` fed prompt + the tokens generated so far; every generated
        token's score per row."""
        seqs = [[*self.prompt_of(r), *t] for r, t in zip(rows, tokens, strict=True)]
        width = max(len(s) for s in seqs)
        device = self.monitor.device
        ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs], device=device)
        mask = torch.tensor(
            [[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long, device=device
        )  # [rows, width]
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = KVCache(self.monitor.config, 64)
        hidden = self.monitor.hidden(ids, mask, positions, cache.cache)  # [rows, width, hidden]
        scores = self.monitor.scores(hidden)  # [rows, width]
        per_row = [scores[i, width - len(t) :].tolist() for i, t in enumerate(tokens)]
        state = DecodeState(self._forward, cache, mask, positions[:, -1] + 1, scores[:, -1])
        return state, per_row

    def _count(self, row: int, scores: Sequence[float], first: int) -> None:
        """Apply delay-k to a row's newly scored tokens (``first``: the index of the first)."""
        if self.scores is not None:
            self.scores.setdefault(row, []).extend(scores)
        for offset, score in enumerate(scores):
            position = first + offset
            if row in self.stops or (self.window and position >= self.window):
                return
            self.max_score[row] = max(self.max_score.get(row, 0.0), score)
            if score >= self.threshold:
                self.flagged[row] = self.flagged.get(row, 0) + 1
                if self.flagged[row] >= self.k:
                    self.stops[row] = position + 1

    def forget(self, row: int) -> None:
        """Drop what the watch keeps about ``row``, which has left for good (finished or
        cancelled): an engine serves rows without end, and would otherwise keep every row's
        count, stop and highest score it ever served. The monitor's cache drops the row at the
        next step (the row is no longer among the decoding rows)."""
        for kept in (self.flagged, self.stops, self.max_score, self.scores or {}):
            kept.pop(row, None)

    def _by_length(self, slots: list[int]) -> list[int]:
        """``slots`` (rows of the monitor's cache), longest first: kept in this order by a copy
        of the cache, rows of alike lengths sit together, and each chunk of decode-step
        attention skips its padding (:func:`~poise.models.decode.attention_spans`)."""
        if self.state is None or len(slots) < 2:
            return slots
        leading = self.state.mask.int().argmax(dim=1).tolist()
        return sorted(slots, key=lambda j: leading[j])

    def _follow(self, order: Sequence[int | None]) -> None:
        """The monitor's cache now holds ``order``'s rows (none that left)."""
        self.order = list(order)
        self.left_at = {}

    def _watching(self, row: int, generated: int) -> bool:
        return row not in self.stops and not (self.window and generated > self.window)

    @torch.inference_mode()
    def __call__(self, view: StepView) -> torch.Tensor | None:
        rows = view.rows.tolist()
        generated = view.generated.tolist()
        at = {r: i for i, r in enumerate(rows)}
        # rows the monitor follows on: decoding, not stopped, inside the window, seen before.
        # A row that leaves stays in the monitor's cache (fed a pad token, its scores ignored)
        # until a newcomer takes its place (in place, DecodeState.place), the cache is copied
        # anyway to merge newcomers wider than it or more than the places free, or too many
        # rows have been gone too long (DEAD_SHARE, DEAD_STEPS): copying the cache each time
        # one row finishes or joins costs more than the dead rows.
        left_now = []
        for j, r in enumerate(self.order):
            if r is not None and not (r in at and self._watching(r, generated[at[r]])):
                self.order[j] = None
                self.left_at[j] = self.calls
                left_now.append(j)
        if left_now and self.state is not None and self.state.mergeable:
            # its columns stop counting as live, so they can be trimmed once no row needs them
            self.state.retire(left_now)
            self.state.trim_padding()
        alive = [j for j, r in enumerate(self.order) if r is not None]
        if self.state is not None and not alive:
            self.state, alive = None, []
            self._follow([])
        if self.state is not None:
            last = [_ids(view, at[r])[-1] if r is not None else 0 for r in self.order]
            scores = self.state.step(torch.tensor(last, device=self.monitor.device)).tolist()
            left = [j for j, r in enumerate(self.order) if r is None]
            if left:
                # a row that left is fed at its last position, not one further each step: a
                # monitor of learned positions (GPT-2) would index past its table while the
                # others decode on (IndexError), as the inner batcher's hold avoids
                self.state.hold(left)
            for r, s in zip(self.order, scores, strict=True):
                if r is not None:
                    self._count(r, [s], generated[at[r]] - 1)
        known = {r for r in self.order if r is not None}
        new = [
            r
            for r, g in zip(rows, generated, strict=True)
            if g >= 1
            and r not in known
            and r not in self.stops
            and r not in self.max_score
            and self._watching(r, g)
        ]
        if new:
            tokens = [list(_ids(view, at[r])) for r in new]
            state, per_row = self._prefill(new, tokens)
            for r, scores_of_row in zip(new, per_row, strict=True):
                self._count(r, scores_of_row, 0)
            if self.state is None:
                self.state = state
                self._follow(new)
            elif self.state.mergeable:
                dead = [j for j, r in enumerate(self.order) if r is None]
                if len(new) <= len(dead) and self.state.fits(state):
                    # newcomers take the places of rows that left, in place: the rows that
                    # decode on are not copied (as a merge would copy them)
                    self.state.place(state, dead[: len(new)])
                    for j, r in zip(dead, new, strict=False):
                        self.order[j] = r
                        self.left_at.pop(j, None)
                else:  # newcomers join and the dead leave in one copy
                    alive = self._by_length(alive)
                    self.state.extend(state, reserve=64, keep=alive)
                    self._follow([*(self.order[j] for j in alive), *new])
            else:  # a cache that cannot merge: follow every row again from one prefill
                again = [r for r in (*(self.order[j] for j in alive), *new) if r is not None]
                self.state, _ = self._prefill(again, [list(_ids(view, at[r])) for r in again])
                self._follow(again)
        gone = sum(1 for at_call in self.left_at.values() if self.calls - at_call >= DEAD_STEPS)
        if self.state is not None and DEAD_SHARE * gone > len(self.order):
            alive = self._by_length([j for j, r in enumerate(self.order) if r is not None])
            self.state.keep(alive)
            self._follow([self.order[j] for j in alive])
        self.calls += 1
        if not self.force or self.eos_id is None:
            return None
        stopped = [i for i, r in enumerate(rows) if r in self.stops]
        if not stopped:
            return None
        logits = view.logits.clone()
        index = torch.tensor(stopped, device=logits.device)
        logits[index] = float("-inf")
        logits[index, self.eos_id] = 0.0
        return logits


def _ids(view: StepView, index: int) -> Sequence[int]:
    """Row ``index``'s generated token ids, without building a tensor when the batcher's
    :class:`~poise.models.base.RowTokens` has the list."""
    tokens = view.tokens
    if isinstance(tokens, RowTokens):
        return tokens.ids(index)
    return tokens[index].tolist()


def _check_vocabulary(model: LanguageModel, monitor: Monitor) -> None:
    if model.tokenizer is None or monitor.tokenizer.get_vocab() != model.tokenizer.get_vocab():
        raise PoiseError(
            f"guarded: the monitor {monitor.name!r} does not share {model.name!r}'s vocabulary; "
            "a streaming monitor reads the model's tokens (train one from a model of the same "
            "tokenizer with `poise train monitor`)"
        )


@guards.register(
    "guarded",
    help="stop an answer once a streaming monitor flags k of its tokens (SCM delay-k)",
    reference="arXiv 2506.09996",
)
class Guarded(WrappedModel):
    """The inner model with a streaming content monitor that stops harmful answers early."""

    kind = "guarded"

    def __init__(
        self,
        model: LanguageModel,
        *,
        monitor: str = "",
        threshold: float | None = None,
        k: int | None = None,
        window: int = 0,
        refusal: str = DEFAULT_REFUSAL,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise PoiseError(
                f"guarded: needs monitor=NAME_OR_FOLDER (e.g. organism-monitor), got {monitor!r}"
            )
        header = read_header(monitor_folder(monitor))
        threshold = header.threshold if threshold is None else threshold
        k = header.k if k is None else k
        check_number("guarded", "threshold", threshold, low=0, high=1)
        check_int("guarded", "k", k, 1)
        check_int("guarded", "window", window, 0)
        if not isinstance(refusal, str):
            raise PoiseError(f"guarded: refusal must be a string, got {refusal!r}")
        if not model.capabilities.step or not model.capabilities.tokens:
            raise PoiseError(
                f"guarded needs a model with a token-level step and token ids (capabilities "
                f"step, tokens), and {model.name!r} lacks them: use a local Hugging Face model"
            )
        options: dict[str, Any] = {"monitor": monitor, "threshold": float(threshold), "k": k}
        if window:
            options["window"] = window
        if refusal != DEFAULT_REFUSAL:
            options["refusal"] = refusal
        super().__init__(model, **options)
        self.monitor_name = monitor
        self.threshold = float(threshold)
        self.k = k
        self.window = window
        self.refusal = refusal
        inner: Any = model
        self.monitor = load_monitor(monitor, device=str(getattr(inner, "device", "cpu")))
        _check_vocabulary(model, self.monitor)
        # the monitor reads the prompt and every token of the answer: past its context one of
        # learned positions (GPT-2) fails inside torch in the middle of decoding, one of rotary
        # positions scores garbage without a word. The guard's context is the shorter one, which
        # the audit and `poise serve` fit requests to; the calls below refuse what exceeds it.
        self.monitor_context = config_context_length(self.monitor.config)
        if self.monitor_context is not None and (
            self.context_length is None or self.monitor_context < self.context_length
        ):
            self.context_length = self.monitor_context
        else:
            self.monitor_context = None  # no shorter than the model's: the model's own rules
        eos = getattr(inner, "eos_token_ids", None) or [model.tokenizer.eos_token_id]
        self.eos_id = int(eos[0])
        self.capabilities = Capabilities(
            stream=True, engine=model.capabilities.engine, step=False, tokens=False
        )

    def _watch(self, prompt_of: Callable[[int], Sequence[int]], *, force: bool) -> MonitorWatch:
        return MonitorWatch(
            self.monitor,
            prompt_of,
            threshold=self.threshold,
            k=self.k,
            window=self.window,
            force=force,
            eos_id=self.eos_id,
        )

    def _check_context(self, prompts: Sequence[Sequence[int]], sampling: Sampling) -> None:
        """A :class:`ContextLengthError` for the first prompt whose answer could run past the
        monitor's context (only when it is shorter than the model's, ``monitor_context``)."""
        context = self.monitor_context
        if context is None:
            return
        for c, prompt in enumerate(prompts):
            if len(prompt) + sampling.max_new_tokens > context:
                raise ContextLengthError(
                    context,
                    len(prompt),
                    sampling.max_new_tokens,
                    at_least=False,
                    where=f"{self.name}: chat {c} (the monitor {self.monitor_name!r} reads "
                    f"at most {context} tokens)",
                )

    def _settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "streaming", "threshold": self.threshold, "k": self.k}
        if self.window:
            out["window"] = self.window
        return out

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        inner: Any = self.inner
        prompts = [inner.prompt_ids(chat) for chat in chats]
        self._check_context(prompts, sampling)
        n = sampling.n
        watch = self._watch(lambda row: prompts[row // n], force=False)
        results = inner.generate(chats, sampling, progress=progress, logits_hook=watch)
        out = []
        for c, completions in enumerate(results):
            row = []
            for s, completion in enumerate(completions):
                stop = watch.stops.get(c * n + s)
                extra = {**self._settings(), "max_score": watch.max_score.get(c * n + s)}
                row.append(
                    shown_completion(
                        completion,
                        self.tokenizer,
                        shown=stop,
                        produced=stop,
                        refusal=self.refusal,
                        settings=extra,
                    )
                )
            out.append(row)
        return out

    def stream(self, chats: Sequence[Chat], sampling: Sampling) -> Iterator[StreamEvent]:
        inner: Any = self.inner
        prompts = [inner.prompt_ids(chat) for chat in chats]
        self._check_context(prompts, sampling)
        n = sampling.n
        watch = self._watch(lambda row: prompts[row // n], force=True)
        for event in inner.stream(chats, sampling, logits_hook=watch):
            yield self._final(event, watch.stops.get(int(event.key) * n + event.sample_index))

    def _final(self, event: StreamEvent, stop: int | None) -> StreamEvent:
        """A stream event with a stopped row's last text and completion rewritten."""
        if event.completion is None:
            return event
        completion = event.completion
        settings = self._settings()
        if stop is None:
            meta = guard_record(
                stopped=False,
                produced=completion.num_tokens,
                shown=completion.num_tokens,
                settings=settings,
            )
            return StreamEvent(
                event.key,
                event.sample_index,
                event.text,
                dataclasses.replace(completion, metadata=meta),
            )
        tail = refusal_tail(completion.text, self.refusal)
        meta = guard_record(
            stopped=True,
            produced=completion.num_tokens,
            shown=completion.num_tokens,
            settings=settings,
        )
        guarded = Completion(
            text=completion.text + tail,
            num_tokens=completion.num_tokens,
            finish_reason="guard",
            token_logprobs=completion.token_logprobs,
            token_ids=completion.token_ids[: completion.num_tokens]
            if completion.token_ids
            else None,
            metadata=meta,
        )
        return StreamEvent(event.key, event.sample_index, event.text + tail, guarded)

    def engine(self, *, capacity: int | None = None) -> GuardedEngine:
        return GuardedEngine(self, capacity=capacity)


class GuardedEngine:
    """The inner model's engine with the guard's watch as its logits hook (``poise serve``).

    The inner engine numbers rows from 0 in the order they are added (``HFEngine``); this
    engine mirrors that numbering to tell the watch each row's prompt."""

    def __init__(self, model: Guarded, *, capacity: int | None = None) -> None:
        self.model = model
        inner: Any = model.inner
        self._prompts: dict[int, list[int]] = {}
        self._rows: dict[tuple[Hashable, int], int] = {}
        self._next_row = 0
        self.watch = model._watch(lambda row: self._prompts[row], force=True)
        self._engine = inner.engine(logits_hook=self.watch, capacity=capacity)

    def add(self, key: Hashable, chat: Chat, sampling: Sampling, *, stream: bool = True) -> None:
        inner: Any = self.model.inner
        prompt = inner.prompt_ids(chat)
        self.model._check_context([prompt], sampling)
        self._engine.add(key, chat, sampling, stream=stream)  # refuses first, numbers after
        for sample in range(sampling.n):
            self._prompts[self._next_row] = prompt
            self._rows[(key, sample)] = self._next_row
            self._next_row += 1

    def cancel(self, key: Hashable) -> None:
        self._engine.cancel(key)
        for (k, sample), row in list(self._rows.items()):
            if k == key:
                del self._rows[(k, sample)]
                self._prompts.pop(row, None)
                self.watch.forget(row)

    def step(self) -> list[StreamEvent]:
        out = []
        for event in self._engine.step():
            row = self._rows.get((event.key, event.sample_index))
            stop = None if row is None else self.watch.stops.get(row)
            out.append(self.model._final(event, stop))
            if event.completion is not None and row is not None:
                del self._rows[(event.key, event.sample_index)]
                self._prompts.pop(row, None)
                self.watch.forget(row)
        return out

    @property
    def idle(self) -> bool:
        return bool(self._engine.idle)
