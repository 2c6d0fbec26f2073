"""Baselines of the streaming guard: judge the whole answer, or every N tokens.

- ``full_guard(MODEL, judge=...)``: the answer is generated whole and judged; a flagged answer
  is withheld and replaced by the refusal (the user sees none of it, but the whole answer was
  generated before the decision, and the user waited for all of it).
- ``chunked_guard(MODEL, judge=..., every=N)``: the answer is released in chunks of ``N``
  tokens, each judged (on the answer so far) before it is released; at the first flagged
  chunk the answer stops: the chunks before it were shown, the flagged one was generated.

A judge is named by a string:

- a monitor (``organism-monitor`` or a folder of ``poise train monitor``): its response head
  on the answer so far (SCM's full detection, arXiv 2506.09996: a judge of finished answers,
  as today's guards are, run on the prefixes a chunked guard releases), flagged at
  ``threshold`` (default 0.5, as the released full-detection evaluation starts from);
  ``head=token`` reads its token head instead (the streaming guard's head, checked only every
  N tokens);
- ``keywords:WORD|WORD``: flagged when the text so far holds one of the words (a keyword
  filter, case-insensitive, whole words of the answer: a prefix that ends inside "harmless"
  does not hold "harm").

Judges of :mod:`poise.scoring` (the organism's oracle, LLM judges) read a suite item, which a
model wrapper does not see; they label the audit's answers instead. Both guards decode every
answer to its end (the decisions are computed on its prefixes afterwards: a prefix's tokens do
not depend on what follows), so an audit also learns the unguarded answer (metadata["guard"],
:mod:`poise.guards.record`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poise.config import Sampling
from poise.errors import PoiseError, check_int, check_number
from poise.guards import guards
from poise.guards.monitor import Monitor, load_monitor
from poise.guards.record import shown_completion
from poise.guards.streaming import DEFAULT_REFUSAL
from poise.models.base import Capabilities, Chat, Completion, LanguageModel, ProgressFn
from poise.models.wrapped import WrappedModel

__all__ = ["ChunkedGuard", "FullGuard", "flagged_prefixes"]


class _Judge:
    """Flags answer prefixes: ``flags(prompts, answers, ends)`` -> per answer, whether the prefix
    ending at each of ``ends`` (token counts) is flagged."""

    def __init__(
        self, spec: str, threshold: float | None, model: LanguageModel, head: str = "response"
    ) -> None:
        self.spec = spec
        self.head = head
        self.monitor: Monitor | None = None
        self.words: list[str] = []
        if spec.startswith("keywords:"):
            self.words = [
                w.strip().lower() for w in spec[len("keywords:") :].split("|") if w.strip()
            ]
            if not self.words:
                raise PoiseError("guard judge keywords:WORD|WORD needs at least one word")
            self.pattern = re.compile(
                r"\b(" + "|".join(re.escape(w) for w in self.words) + r")\b", re.IGNORECASE
            )
        else:
            inner: Any = model
            try:
                self.monitor = load_monitor(spec, device=str(getattr(inner, "device", "cpu")))
            except PoiseError as exc:
                if Path(spec).expanduser().exists():
                    raise  # a folder that is not a (working) monitor: its own error says why
                raise PoiseError(
                    f"guard judge: {exc}. A guard judges with a monitor (judge=organism-monitor, "
                    "a `poise train monitor` folder) or keywords:WORD|WORD; the audit's judges "
                    "(oracle, refusal, preset:..., llm:...) read a suite item, which a guard does "
                    "not see: they label the audit's answers instead (--judge)"
                ) from None
            if (
                model.tokenizer is None
                or model.tokenizer.get_vocab() != self.monitor.tokenizer.get_vocab()
            ):
                raise PoiseError(f"guard judge {spec!r} does not share {model.name!r}'s vocabulary")
        self.threshold = 0.5 if threshold is None else float(threshold)

    def flags(
        self,
        prompts: Sequence[Sequence[int]],
        answers: Sequence[Sequence[int]],
        texts: Sequence[str],
        ends: Sequence[Sequence[int]],
        boundaries: Sequence[Sequence[int]],
    ) -> list[list[bool]]:
        if self.monitor is not None:
            # the response head by default, which the monitor trained on whole answers (SCM's
            # full detection); head=token reads the token head, as the streaming guard does
            scores = self.monitor.response_scores(prompts, answers, head=self.head)  # per token
            return [
                [s[b - 1] >= self.threshold for b in bs]
                for s, bs in zip(scores, boundaries, strict=True)
            ]
        # whole words of the answer: a prefix that cuts a word ("harm" of "harmless", one token
        # then another) holds no word of the list, which a search of the prefix alone found at
        # its end; a prefix is flagged once it holds the end of the answer's first listed word
        out = []
        for text, e, bs in zip(texts, ends, boundaries, strict=True):
            found = self.pattern.search(text)
            out.append([found is not None and found.end() <= e[b - 1] for b in bs])
        return out


def flagged_prefixes(every: int, length: int) -> list[int]:
    """Chunk boundaries (token counts) of an answer of ``length`` tokens judged every ``every``
    tokens (0: once, at the end): ``every, 2 * every, ..., length``."""
    if length <= 0:
        return []
    if every <= 0:
        return [length]
    return [*range(every, length, every), length]


def _check_head(kind: str, judge: object, head: object) -> str:
    """``response`` (the default) or ``token``; a keyword judge has no head."""
    if head not in ("response", "token"):
        raise PoiseError(f"{kind}: head must be 'response' or 'token', got {head!r}")
    if head != "response" and isinstance(judge, str) and judge.startswith("keywords:"):
        raise PoiseError(f"{kind}: head applies to a monitor judge; a keywords: judge has none")
    return str(head)


def _check_threshold(kind: str, judge: object, threshold: object) -> float | None:
    """A monitor judge's threshold as a float in [0, 1] (None: the default); a keyword judge
    has none (a threshold given with it would be silently ignored, so it is refused)."""
    if threshold is None:
        return None
    if isinstance(judge, str) and judge.startswith("keywords:"):
        raise PoiseError(
            f"{kind}: threshold applies to a monitor judge; a keywords: judge flags on a match"
        )
    return check_number(kind, "threshold", threshold, low=0, high=1)


class _JudgedGuard(WrappedModel):
    """What the full-answer and chunked guards share: the judge, the refusal, the options that
    their spec records (only those not at their defaults) and the judging of answers."""

    every = 0

    def __init__(
        self,
        model: LanguageModel,
        *,
        judge: str,
        threshold: float | None,
        refusal: str,
        head: str,
        every: int = 0,
    ) -> None:
        threshold = _check_threshold(self.kind, judge, threshold)
        head = _check_head(self.kind, judge, head)
        options: dict[str, Any] = {"judge": judge}
        if every:
            options["every"] = every
        if threshold is not None:
            options["threshold"] = threshold
        if refusal != DEFAULT_REFUSAL:
            options["refusal"] = refusal
        if head != "response":
            options["head"] = head
        super().__init__(model, **options)
        if not isinstance(judge, str) or not judge:
            raise PoiseError(f"{self.kind}: needs judge=MONITOR or judge=keywords:WORD|WORD")
        if not isinstance(refusal, str):
            raise PoiseError(f"{self.kind}: refusal must be a string, got {refusal!r}")
        if model.tokenizer is None:
            raise PoiseError(f"{self.kind}: {model.name!r} has no tokenizer to count tokens with")
        self.every = every
        self.judge = _Judge(judge, threshold, model, head)
        self.refusal = refusal
        self.capabilities = Capabilities()

    def _settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "chunked" if self.every else "full",
            "judge": self.judge.spec,
        }
        if self.judge.monitor is not None:
            out["head"] = self.judge.head
        if self.every:
            out["every"] = self.every
        return out

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        from poise.guards.record import token_ends

        inner: Any = self.inner
        results = inner.generate(chats, sampling, progress=progress)
        flat = [(c, s, comp) for c, row in enumerate(results) for s, comp in enumerate(row)]
        tokenizer = self.tokenizer
        # the monitor reads the prompt's token ids: the inner model's own (a local Hugging Face
        # model, capability ``tokens``), else the chat through the monitor's chat template, as
        # it was trained (a decoding strategy or a guard inside has no prompt ids of its own)
        monitor = self.judge.monitor
        prompt_ids = inner.prompt_ids if self.inner.capabilities.tokens else None
        prompts_of_chat = (
            [prompt_ids(chat) if prompt_ids else monitor.prompt_ids(chat) for chat in chats]
            if monitor is not None
            else []
        )
        answers, texts, ends, bounds, prompts = [], [], [], [], []
        for c, _, comp in flat:
            ids = list(
                comp.token_ids or tokenizer(comp.text, add_special_tokens=False)["input_ids"]
            )
            ids = ids[: comp.num_tokens] if comp.token_ids else ids
            answers.append(ids)
            texts.append(comp.text)
            ends.append(token_ends(tokenizer, ids))
            bounds.append(flagged_prefixes(self.every, len(ids)))
            prompts.append(prompts_of_chat[c] if prompts_of_chat else [])
        nonempty = [i for i, a in enumerate(answers) if a]
        flags: list[list[bool]] = [[] for _ in answers]
        if nonempty:
            got = self.judge.flags(
                [prompts[i] for i in nonempty],
                [answers[i] for i in nonempty],
                [texts[i] for i in nonempty],
                [ends[i] for i in nonempty],
                [bounds[i] for i in nonempty],
            )
            for i, f in zip(nonempty, got, strict=True):
                flags[i] = f
        out: list[list[Completion]] = [[] for _ in results]
        for (c, _, comp), ids, bs, fs in zip(flat, answers, bounds, flags, strict=True):
            first = next((j for j, f in enumerate(fs) if f), None)
            shown = produced = None
            if first is not None:
                produced = bs[first]
                shown = 0 if not self.every else (bs[first - 1] if first else 0)
            if comp.token_ids is None:
                comp = Completion(
                    comp.text, len(ids), comp.finish_reason, comp.token_logprobs, tuple(ids)
                )
            out[c].append(
                shown_completion(
                    comp,
                    tokenizer,
                    shown=shown,
                    produced=produced,
                    refusal=self.refusal,
                    settings=self._settings(),
                )
            )
        return out


@guards.register(
    "full_guard",
    help="judge the whole answer, withhold it if flagged (baseline of the streaming guard)",
)
class FullGuard(_JudgedGuard):
    """The inner model's answers judged whole; a flagged answer becomes the refusal."""

    kind = "full_guard"

    def __init__(
        self,
        model: LanguageModel,
        *,
        judge: str = "",
        threshold: float | None = None,
        refusal: str = DEFAULT_REFUSAL,
        head: str = "response",
    ) -> None:
        super().__init__(model, judge=judge, threshold=threshold, refusal=refusal, head=head)


@guards.register(
    "chunked_guard",
    help="judge the answer every N tokens before releasing them (baseline of the streaming guard)",
)
class ChunkedGuard(_JudgedGuard):
    """The inner model's answers released in chunks of ``every`` tokens, each judged first."""

    kind = "chunked_guard"

    def __init__(
        self,
        model: LanguageModel,
        *,
        judge: str = "",
        every: int = 32,
        threshold: float | None = None,
        refusal: str = DEFAULT_REFUSAL,
        head: str = "response",
    ) -> None:
        check_int("chunked_guard", "every", every, 1)
        super().__init__(
            model, judge=judge, threshold=threshold, refusal=refusal, head=head, every=every
        )
