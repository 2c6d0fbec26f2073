"""``deal(BASE, k=4, lookahead=4, beam=2, lam=1.0, reward=..., cost=...)``: reward-guided search.

DeAL (Huang et al., arXiv 2402.06147) decodes as a search over partial answers (the paper's search
procedure): at every step each beam proposes its ``k`` most likely next tokens; each
candidate is extended greedily by ``lookahead`` tokens; the candidate is scored by

    score(y_<=t) = log p_base(y_<=t | x) + lam * h(x, y_<=t+lookahead)

(the log-likelihood of the prefix with the candidate token, plus ``lam`` times the heuristic of
its greedy lookahead), and the ``beam`` best candidates of the prompt are kept. A prompt is done
when its best candidate ends (EOS) or reaches ``max_new_tokens``, or where the prompt, the answer
and the lookahead fill the model's context (finish reason ``"length"``, as plain decoding ends a
row there; a prompt that leaves no room is a
:class:`~poise.models.context.ContextLengthError`). The heuristic ``h`` is a
weighted sum of the scorers given (:mod:`poise.decoding.scorers`: a reward or cost model,
``keywords:...`` coverage, ``length:N``), the kinds of alignment objective the paper searches by:

    h = sum_i reward_weight_i * reward_i - sum_j cost_weight_j * cost_j

with ``reward`` / ``reward_weight`` and ``cost`` / ``cost_weight`` (weights 1 by default) and any
number more as numbered options (``reward_2``, ``reward_weight_2``, ``cost_2``, ...;
:func:`poise.registry.numbered_options`).

With ``sampling.temperature == 0`` the candidates are the exact top ``k``; with ``temperature >
0`` they are ``k`` tokens drawn without replacement from the tempered distribution (Gumbel-top-k,
Kool et al., arXiv 1903.06059), seeded per (chat, sample) as every poise model seeds a row, so
``n`` samples of a chat are ``n`` independent searches; ``top_k`` / ``top_p`` of the sampling
are not applied (the ``k`` candidates are the search's own truncation). With ``lam = 0``,
``beam = 1`` and ``temperature = 0`` the search is greedy decoding of the base model. Stop
strings cut the final text (the search itself runs to EOS or ``max_new_tokens``), and its
``num_tokens`` / ``token_logprobs`` to the tokens up to the one that completes the stop string,
as plain decoding counts them.

Batched: the searches of all chats and samples share one decode batch of the base model
(beams x k rows while looking ahead); after the lookahead the cache is rewound to the candidate
token instead of re-running the prefix. ``Completion.token_logprobs`` are the base model's
log-probs of the chosen tokens; ``Completion.token_ids`` the chosen tokens and the EOS token that
ended the answer, if one did, as the base model's own decoding gives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from poise.config import Sampling
from poise.decoding import strategies
from poise.decoding.scorers import Scorer, canonical_scorer, check_scorer, load_scorer
from poise.errors import PoiseError, check_int, check_number
from poise.models.base import Capabilities, Chat, Completion, LanguageModel, ProgressFn
from poise.models.context import ContextLengthError
from poise.models.decode import cut_at_stop
from poise.models.hf import row_seed, tempered
from poise.models.wrapped import WrappedModel
from poise.registry import numbered_values

__all__ = ["DeAL", "rewind", "stop_length"]


def rewind(state: Any, columns: int, logits: torch.Tensor) -> None:
    """Forget the last ``columns`` tokens fed to a decode state (all rows), restoring the
    ``logits`` [rows, vocab] it had before them. Needs the HF backend's buffer cache
    (``state.mergeable``): its layers keep live columns ``[start, end)``."""
    if columns <= 0:
        return
    for layer in state.cache.cache.layers:
        if layer.is_initialized:
            layer.end -= columns
            layer._views()
    state.mask = state.mask[:, :-columns]
    state.positions = state.positions - columns
    state.logits = logits


def stop_length(tokenizer: Any, tokens: Sequence[int], stops: Sequence[str]) -> int:
    """How many of ``tokens`` an answer cut at its first stop string keeps, counted as the HF
    backend counts them (its decoding stops with the token whose text completes a stop
    string): the fewest leading tokens whose text holds a stop string; all of them when none
    does. For a search that runs past its stop strings (DeAL, RAIN), so that ``num_tokens``
    and ``token_logprobs`` describe the text returned, not the tokens cut off."""

    def stopped(m: int) -> bool:
        return cut_at_stop(tokenizer.decode(list(tokens[:m]), skip_special_tokens=True), stops)[1]

    if not any(stops) or not stopped(len(tokens)):
        return len(tokens)
    low, high = 0, len(tokens)  # stopped(high); the text of more tokens extends the text of fewer
    while low < high:
        mid = (low + high) // 2
        if stopped(mid):
            high = mid
        else:
            low = mid + 1
    return high


@dataclass(eq=False)
class _Search:
    """The search of one (chat, sample): its beams and, once done, its answer."""

    chat: Chat
    prompt: list[int]  # the chat's prompt token ids
    sampling: Sampling
    generator: torch.Generator | None
    beams: list[list[int]] = field(default_factory=lambda: [[]])  # tokens of each beam
    logprobs: list[list[float]] = field(default_factory=lambda: [[]])  # per token, base model
    scores: list[float] = field(default_factory=lambda: [0.0])  # log p of each beam's prefix
    answer: tuple[list[int], list[float], str] | None = None  # tokens, log-probs, finish
    end_token: int | None = None  # the EOS token that ended the answer, if one did
    limit: int = 0  # the answer's tokens at most: max_new_tokens, or fewer where the context ends


@strategies.register(
    "deal",
    help="reward-guided lookahead search: top-k candidates, greedy lookahead, beam",
    reference="arXiv 2402.06147",
)
class DeAL(WrappedModel):
    """The base model decoded by DeAL's search under a reward / cost heuristic."""

    kind = "deal"
    # more heuristics, each with its weight: reward_2 / reward_weight_2, cost_2 / ..., ...
    numbered_options = ("reward", "reward_weight", "cost", "cost_weight")

    def __init__(
        self,
        base: LanguageModel,
        *,
        k: int = 4,
        lookahead: int = 4,
        beam: int = 2,
        lam: float = 1.0,
        reward: str = "",
        cost: str = "",
        reward_weight: float | None = None,
        cost_weight: float | None = None,
        batch_size: int = 64,
        **numbered: Any,
    ) -> None:
        """``numbered``: ``reward_N`` / ``reward_weight_N`` and ``cost_N`` / ``cost_weight_N``
        for N >= 2, more heuristics of the weighted sum."""
        from poise.decoding.temperature import require_step

        for name, value, low in (("k", k, 1), ("lookahead", lookahead, 0), ("beam", beam, 1)):
            check_int("deal", name, value, low)
        if beam > k:
            raise PoiseError(f"deal: beam ({beam}) cannot exceed the k candidates ({k})")
        check_number("deal", "lam", lam)
        # N -> {"reward": scorer, "reward_weight": w, "cost": ..., "cost_weight": ...}; the
        # unnumbered options are N = 1
        groups: dict[int, dict[str, Any]] = {
            1: {
                "reward": reward,
                "reward_weight": reward_weight,
                "cost": cost,
                "cost_weight": cost_weight,
            }
        }
        groups |= numbered_values("deal", self.numbered_options, numbered)
        # each term of h: (scorer, signed weight), rewards first, then costs, by number
        self._terms: list[tuple[str, float]] = []
        options: dict[str, Any] = {"k": k, "lookahead": lookahead, "beam": beam, "lam": float(lam)}
        for what in ("reward", "cost"):
            for n, group in groups.items():
                slot = f"_{n}" if n > 1 else ""
                name, given = group.get(what, ""), group.get(f"{what}_weight")
                label = f"{what}_weight{slot}"
                # a weight given without its scorer, or a weight of 0, would change nothing: it
                # is refused (as lam=0 beside a scorer is), not dropped from the spec unsaid
                if not name:
                    if given is not None:
                        raise PoiseError(f"deal: {label} is set but {what}{slot} is not")
                    continue
                weight = 1.0 if given is None else check_number("deal", label, given)
                if weight == 0:
                    raise PoiseError(
                        f"deal: {label}=0 weighs {what}{slot} by nothing, so it would be loaded "
                        f"and never read: leave {what}{slot} out, or give it a weight"
                    )
                check_scorer(f"deal: {what}{slot}", name)
                name = canonical_scorer(name)
                options[f"{what}{slot}"] = name
                if weight != 1.0:
                    options[label] = float(weight)
                self._terms.append((name, (1.0 if what == "reward" else -1.0) * float(weight)))
        if lam != 0 and not self._terms:
            raise PoiseError("deal: lam != 0 needs a heuristic: reward=SCORER and/or cost=SCORER")
        if lam == 0 and self._terms:
            raise PoiseError(
                "deal: lam=0 weighs the heuristic by nothing, so reward= / cost= would be loaded "
                "and never used: leave them out (lam=0 is plain beam search) or set lam"
            )
        check_int("deal", "batch_size", batch_size, 1)
        require_step(self.kind, base)
        tokenizer: Any = base.tokenizer
        vocab = len(tokenizer) if tokenizer is not None else None
        if vocab is not None and k > vocab:
            raise PoiseError(f"deal: k={k} exceeds {base.name!r}'s vocabulary of {vocab} tokens")
        # the tokens a lookahead puts in the KV cache past the answer: none with lam=0, where
        # no heuristic reads them and none is computed
        self._ahead = lookahead if lam != 0 else 0
        if base.context_length is not None and self._ahead >= base.context_length:
            raise PoiseError(
                f"deal: lookahead={lookahead} does not fit {base.name!r}'s context of "
                f"{base.context_length} tokens"
            )
        if batch_size != 64:
            options["batch_size"] = batch_size
        super().__init__(base, **options)
        if base.context_length is not None:
            # the lookahead's tokens sit in the KV cache past the answer: the context left for
            # the prompt and the answer is that much shorter (the audit's context check reads it)
            self.context_length = base.context_length - self._ahead
        self.k, self.lookahead, self.beam, self.lam = k, lookahead, beam, float(lam)
        self.batch_size = batch_size
        self._scorers: dict[str, Scorer] = {}
        self.capabilities = Capabilities()

    def _scorer(self, name: str) -> Scorer:
        if name not in self._scorers:
            self._scorers[name] = load_scorer(name)
        return self._scorers[name]

    def heuristic(self, chats: Sequence[Chat], texts: Sequence[str]) -> list[float]:
        """``h`` of each (chat, partial answer): the rewards minus the costs, each weighted."""
        total = [0.0] * len(texts)
        for name, weight in self._terms:
            values = self._scorer(name)(chats, texts)
            total = [t + weight * v for t, v in zip(total, values, strict=True)]
        return total

    # -- generate

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        if not chats:
            return []
        inner: Any = self.inner
        context = self.context_length  # the base's, less the lookahead's tokens
        prompts = inner._encode_prompts(chats)  # once: each sample's search reads its chat's
        if context is not None:
            # past the context a model of learned positions fails (IndexError) and one of rotary
            # positions decodes garbage: a prompt that leaves no room is refused, before any
            # search, as the base model's generate refuses one
            for c, prompt in enumerate(prompts):
                if len(prompt) >= context:
                    raise ContextLengthError(
                        context, len(prompt), None, at_least=False, where=f"{self.name}: chat {c}"
                    )
        searches = []
        for chat, prompt in zip(chats, prompts, strict=True):
            # the candidate and its lookahead must fit after the answer: an answer ends where
            # they would not ("length"), as the base model ends a row at its context
            room = None if context is None else context - len(prompt)
            limit = sampling.max_new_tokens if room is None else min(room, sampling.max_new_tokens)
            for sample in range(sampling.n):
                generator = None
                if not sampling.greedy:
                    seed = row_seed(sampling.seed, chat, sample)
                    generator = torch.Generator().manual_seed(seed)
                searches.append(_Search(chat, prompt, sampling, generator, limit=limit))
        # searches per batch: beams x k rows each while looking ahead
        per_batch = max(1, self.batch_size // (self.beam * self.k))
        reported = 0
        for start in range(0, len(searches), per_batch):
            end = min(start + per_batch, len(searches))
            self._search(searches[start:end])
            if progress is not None and end // sampling.n > reported:
                progress(end // sampling.n - reported)  # chats whose samples are all done
                reported = end // sampling.n
        return self._completions(chats, sampling, searches)

    def _completions(
        self, chats: Sequence[Chat], sampling: Sampling, searches: list[_Search]
    ) -> list[list[Completion]]:
        inner: Any = self.inner
        answers = [s.answer for s in searches]
        assert all(a is not None for a in answers)
        texts = inner.tokenizer.batch_decode(
            [a[0] for a in answers if a is not None], skip_special_tokens=True
        )
        results: list[list[Completion]] = []
        for i in range(len(chats)):
            row = []
            for j in range(sampling.n):
                index = i * sampling.n + j
                tokens, logprobs, finish = answers[index]  # type: ignore[misc]
                text, stopped = cut_at_stop(texts[index], sampling.stop)
                # the tokens up to the stop string, as the base model's own decoding counts them
                kept = stop_length(inner.tokenizer, tokens, sampling.stop) if stopped else None
                # token ids as the base model's decoding gives them: the EOS that ended the
                # answer too, unless a stop string cut the answer before it
                end = searches[index].end_token
                ids = tokens[:kept] if stopped or end is None else [*tokens, end]
                row.append(
                    Completion(
                        text=text,
                        num_tokens=len(tokens[:kept]),
                        finish_reason="stop" if stopped else finish,  # type: ignore[arg-type]
                        token_logprobs=tuple(logprobs[:kept]),
                        token_ids=tuple(ids),
                    )
                )
            results.append(row)
        return results

    def _candidates(self, logprobs: torch.Tensor, searches: list[_Search]) -> torch.Tensor:
        """[rows, k] candidate tokens of each beam row: the top k (greedy) or k drawn without
        replacement from the tempered distribution (Gumbel-top-k), each search its own noise."""
        sampling = searches[0].sampling
        if sampling.greedy:
            return logprobs.topk(self.k, dim=-1).indices
        keys = []
        row = 0
        for search in searches:
            rows = len(search.beams)
            uniform = torch.rand(
                (rows, logprobs.size(-1)), generator=search.generator, dtype=torch.float64
            ).clamp_(min=1e-12)
            gumbel = -torch.log(-torch.log(uniform)).to(logprobs.device, logprobs.dtype)
            # tempered: shifted by the row's best before dividing, so a tiny T is greedy, not NaN
            keys.append(tempered(logprobs[row : row + rows], sampling.temperature) + gumbel)
            row += rows
        drawn = torch.cat(keys).topk(self.k, dim=-1)
        # a vanishing temperature overflows the keys of all but the best tokens to -inf, whose
        # order topk leaves arbitrary; such a row takes greedy's limit, the top k in order
        overflowed = drawn.values[:, -1] == float("-inf")  # [rows]
        if bool(overflowed.any()):
            greedy = logprobs.topk(self.k, dim=-1).indices
            return torch.where(overflowed.unsqueeze(-1), greedy, drawn.indices)
        return drawn.indices

    @torch.inference_mode()
    def _search(self, searches: list[_Search]) -> None:
        """Run the searches of one batch to their ends (their ``answer`` set)."""
        inner: Any = self.inner
        eos = set(inner.eos_token_ids)
        pad = inner.pad_token_id
        sampling = searches[0].sampling
        prompts = [s.prompt for s in searches]
        state = inner.prefill(prompts, reserve=sampling.max_new_tokens + self._ahead + 1)
        if self._ahead and not state.mergeable:
            raise PoiseError(f"deal: {inner.name!r}'s KV cache cannot rewind (not plain attention)")
        live = list(searches)
        while live:
            logprobs = state.logits.float().log_softmax(dim=-1)  # [beam rows, vocab]
            candidates = self._candidates(logprobs, live)  # [beam rows, k]
            picked = logprobs.gather(-1, candidates)  # [beam rows, k]
            rows = candidates.size(0)
            # branch every beam row into its k candidates, feed them, then look ahead greedily
            state.keep(torch.arange(rows, device=candidates.device).repeat_interleave(self.k))
            flat = candidates.reshape(-1)  # [rows * k]
            after = state.step(flat).clone()  # logits after the candidate token
            ahead: list[torch.Tensor] = []
            if self._ahead:
                ended = torch.isin(flat, torch.tensor(sorted(eos), device=flat.device))
                for _ in range(self.lookahead):
                    if bool(ended.all()):
                        break  # every branch has ended: more steps would only add padding
                    token = state.logits.argmax(dim=-1)
                    token = torch.where(ended, torch.full_like(token, pad), token)
                    ahead.append(token)
                    ended = ended | torch.isin(token, torch.tensor(sorted(eos), device=flat.device))
                    state.step(token)
                rewind(state, len(ahead), after)
            heuristic = self._heuristics(live, candidates, ahead, eos, inner)  # [rows * k]
            # choose each search's beams among its beams x k candidates
            keep_rows: list[int] = []
            next_live: list[_Search] = []
            cand_tokens = candidates.tolist()
            cand_logprobs = picked.tolist()
            first = 0  # the search's first beam row
            for search in live:
                options = []
                for b in range(len(search.beams)):
                    for j in range(self.k):
                        loglik = search.scores[b] + cand_logprobs[first + b][j]
                        flat_index = (first + b) * self.k + j
                        value = loglik + self.lam * heuristic[flat_index] if self.lam else loglik
                        options.append((value, loglik, b, j, flat_index))
                options.sort(key=lambda o: -o[0])  # stable: ties keep candidate order
                beams, logps, scores, rows_kept = [], [], [], []
                for rank, (_, loglik, b, j, flat_index) in enumerate(options[: self.beam]):
                    token = cand_tokens[first + b][j]
                    tokens = [*search.beams[b], token]
                    token_logps = [*search.logprobs[b], cand_logprobs[first + b][j]]
                    finished = token in eos
                    full = len(tokens) >= search.limit
                    if rank == 0 and (finished or full):
                        search.answer = (
                            tokens[:-1] if finished else tokens,
                            token_logps[:-1] if finished else token_logps,
                            "stop" if finished else "length",
                        )
                        search.end_token = token if finished else None
                        break
                    if finished or full:
                        continue  # an ended candidate that is not the best: dropped
                    beams.append(tokens)
                    logps.append(token_logps)
                    scores.append(loglik)
                    rows_kept.append(flat_index)
                first += len(search.beams)
                if search.answer is None:
                    search.beams, search.logprobs, search.scores = beams, logps, scores
                    keep_rows.extend(rows_kept)
                    next_live.append(search)
            live = next_live
            if live:
                state.keep(torch.tensor(keep_rows, dtype=torch.long, device=flat.device))

    def _heuristics(
        self,
        live: list[_Search],
        candidates: torch.Tensor,
        ahead: list[torch.Tensor],
        eos: set[int],
        inner: Any,
    ) -> list[float]:
        """h of each candidate's beam + candidate + lookahead text, [rows * k] in row order."""
        if self.lam == 0:
            return [0.0] * candidates.numel()
        lookahead = torch.stack(ahead, dim=-1).tolist() if ahead else [[]] * candidates.numel()
        cand = candidates.tolist()
        sequences: list[list[int]] = []
        chats: list[Chat] = []
        row = 0
        for search in live:
            for b, beam in enumerate(search.beams):
                for j in range(self.k):
                    tokens = [*beam, cand[row + b][j], *lookahead[(row + b) * self.k + j]]
                    cut = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
                    sequences.append(tokens[:cut])
                    chats.append(search.chat)
            row += len(search.beams)
        texts = inner.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return self.heuristic(chats, texts)
