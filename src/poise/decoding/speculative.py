"""Speculative sampling of a lockstep mixture: a draft model proposes, the mixture verifies.

Speculative sampling (Leviathan et al., arXiv 2211.17192, Algorithm 1; Chen et al., arXiv
2302.01318, Algorithm 2) draws from a target distribution ``p`` with the help of a cheaper
draft ``q``: the draft proposes ``K`` tokens ``x_1..x_K`` one at a time, the target is computed
at all ``K + 1`` positions in one forward pass per model, draft token ``x_i`` is accepted with
probability ``min(1, p(x_i) / q(x_i))``, the first rejected position is resampled from the
residual ``norm(max(0, p - q))``, and when all ``K`` are accepted one more token is drawn from
``p`` at position ``K + 1``. Every emitted token is distributed exactly as under ``p`` (proved
in both papers); the saving is that the target runs one forward per ``K + 1`` positions instead
of one per token.

Mitchell et al. (arXiv 2310.12962, Section 3.4, "Speculative decoding for efficient EFT
up-scaling") use it for EFT up-scaling: the small fine-tuned model drafts, the up-scaled EFT
distribution (large base + small tuned - small reference) verifies. Here the target is any
lockstep mixture (``combine`` of several models' logits, :mod:`poise.decoding.lockstep`), and
both ``p`` and ``q`` are taken after the request's sampling transform exactly as plain sampling
applies it (temperature, top-k, top-p: :func:`poise.models.hf.filtered_probs`), so speculative
decoding samples what plain decoding of the mixture samples. Under greedy sampling ``p`` and
``q`` are one-hots and the rule reduces to "keep the drafted tokens while they are the mixture's
argmax", so the tokens are plain greedy decoding's.

One round over a batch of rows (:func:`speculative_round`), each row with one *pending* token
(chosen, not yet fed to any model):

1. the draft model is fed the pending token, then draws ``x_1..x_K`` from ``q`` one step at a
   time (``K + 1`` single-token steps);
2. every other model is fed ``[pending, x_1..x_K]`` in one forward pass
   (:meth:`~poise.models.decode.DecodeState.feed`): the logits at all ``K + 1`` positions; when
   the draft model is one of the mixture's (EFT's tuned model, the default), its logits come from
   its draft steps;
3. :func:`speculative_accept` decides each row's accepted count ``n`` and its next token;
4. every model forgets the ``K - n`` rejected tokens of each row
   (:meth:`~poise.models.decode.DecodeState.rewind`: rows accept different counts, so the
   columns they forget are masked per row); the next token is the row's new pending token.

Rows accept different numbers of tokens: a row emits ``n + 1`` tokens per round (1 to ``K +
1``). Each row draws its ``2K + 1`` uniforms per round from its own generator (seeded from
(seed, chat, sample index) as every poise row), so a row's tokens do not depend on its batch;
they are other samples than plain decoding's (same distribution, other random numbers).

It runs on the HF backend's continuous batch (:class:`SpeculativeBatcher`, a round per step),
so ``generate``, ``stream`` and ``engine`` all decode this way, with stop strings, EOS,
streaming and rows joining as others leave; an engine's requests of different samplings share
a round (each row's ``p`` and ``q`` under its own sampling).

Limits: no ``logits_hook`` (a hook sees and changes one step's logits: a caller with a hook
decodes on the plain path); every model must be an ``hf`` model with plain attention layers (a
sliding-window or linear-attention cache cannot be rewound per row); the masked columns of
rejected tokens stay in a row's cache until the row leaves the batch (attention reads them as
padding, so caches grow faster than the text); the context left for the prompt and the answer
is ``K`` tokens shorter than the models' (the drafts of a row's last round sit past the answer);
a prompt needs at least two tokens (its last one is the first pending token); a round holds
``[rows, K + 1, vocab]`` float32 logits per model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from poise.decoding.lockstep import Combine, LockstepModel, LockstepState
from poise.errors import PoiseError
from poise.models.base import LogitsHook
from poise.models.decode import COMPACT_SHARE, Batcher, _Row, _SamplingGroup
from poise.models.hf import filtered_probs

__all__ = [
    "SpeculativeBatcher",
    "SpeculativeModel",
    "sample_dense",
    "speculative_accept",
    "speculative_round",
]


def sample_dense(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row by inverse-CDF sampling in vocabulary order: ``probs`` [rows, vocab]
    (non-negative, need not sum to 1: they are normalised by their sum), ``uniforms`` [rows] in
    [0, 1). Returns [rows] int64; a zero-probability token is never chosen."""
    cdf = probs.cumsum(dim=-1)  # [rows, vocab]
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]  # [rows, 1]
    pick = torch.searchsorted(cdf, target, right=True)  # [rows, 1]: first cdf above the target
    vocab = torch.arange(probs.size(-1), device=probs.device)
    last = torch.where(probs > 0, vocab, 0).amax(dim=-1, keepdim=True)  # last positive token
    return torch.minimum(pick, last).squeeze(-1)


def speculative_accept(
    p: torch.Tensor,
    q: torch.Tensor,
    drafted: torch.Tensor,
    accept_uniforms: torch.Tensor,
    final_uniforms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The acceptance rule of speculative sampling (arXiv 2211.17192, Algorithm 1).

    ``p``: [rows, K + 1, vocab] target probabilities at each position (position ``i`` predicts
    draft token ``i``; position ``K`` the token after all drafts). ``q``: [rows, K, vocab] the
    draft's probabilities that ``drafted`` [rows, K] int64 were drawn from. ``accept_uniforms``
    [rows, K] and ``final_uniforms`` [rows], in [0, 1).

    Draft token ``x_i`` is accepted when ``u_i * q(x_i) < p(x_i)`` (probability
    ``min(1, p(x_i) / q(x_i))``); ``n`` is the count accepted before the first rejection. The
    next token is drawn (with the final uniform) from the residual ``max(0, p_n - q_n)``
    normalised when ``n < K`` (from ``p_n`` should the residual hold no mass, which only
    rounding can make happen), from ``p_K`` when ``n = K``. Returns (``n`` [rows] int64 in
    ``0..K``, next token [rows] int64)."""
    rows, k = drafted.shape
    vocab = p.size(-1)
    p_x = p[:, :k].gather(-1, drafted.unsqueeze(-1)).squeeze(-1)  # [rows, K]
    q_x = q.gather(-1, drafted.unsqueeze(-1)).squeeze(-1)  # [rows, K]
    accepted = accept_uniforms.to(q_x.dtype) * q_x < p_x  # [rows, K]
    n = accepted.long().cumprod(dim=-1).sum(dim=-1)  # [rows]: leading accepted drafts
    p_n = p.gather(1, n.view(rows, 1, 1).expand(rows, 1, vocab)).squeeze(1)  # [rows, vocab]
    if k:
        at = n.clamp(max=k - 1).view(rows, 1, 1).expand(rows, 1, vocab)
        q_n = q.gather(1, at).squeeze(1)  # [rows, vocab]
        residual = (p_n - q_n).clamp(min=0.0)
        rejected = (n < k).unsqueeze(-1) & (residual.sum(dim=-1, keepdim=True) > 0)
        p_n = torch.where(rejected, residual, p_n)
    return n, sample_dense(p_n, final_uniforms)


def speculative_round(
    state: LockstepState,
    pending: torch.Tensor,
    k: int,
    draft: int,
    targets: int,
    mix: Combine,
    transform: Callable[[torch.Tensor], torch.Tensor],
    uniforms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round of speculative sampling over every row of ``state`` (see the module docstring).

    ``state.states[:targets]`` are the models that ``mix`` combines into the target's logits;
    ``state.states[draft]`` drafts (one of them, or the one after them). ``pending`` [rows]
    int64: each row's chosen token, fed to no model yet. ``transform``: logits [rows, ...,
    vocab] -> the probabilities each row samples from (its sampling's
    :func:`~poise.models.hf.filtered_probs`), applied to the draft's and the mixture's logits
    alike. ``uniforms`` [rows, 2K + 1]: the draft's ``K``, the acceptance test's ``K``, the next
    token's one (ignored when greedy: one-hot p and q need none).

    Returns (``n`` [rows] accepted drafts, ``tokens`` [rows, K + 1] whose first ``n + 1`` are
    the row's new tokens: the accepted drafts then the next token, ``logprobs`` [rows, K + 1]
    of those tokens under the mixture at temperature 1). Afterwards every model has been fed
    the pending token and the accepted drafts, and the next token is the new pending one."""
    states = state.states
    device = state.device
    rows = len(state)
    drafting = states[draft]
    # 1. draft: K tokens from q, the draft's distribution under the same sampling transform
    draft_logits = [drafting.step(pending.to(drafting.logits.device)).to(device).float()]
    proposals: list[torch.Tensor] = []  # [rows, vocab] each
    drafted: list[torch.Tensor] = []  # [rows] each
    for i in range(k):
        q_i = transform(draft_logits[-1])
        x_i = sample_dense(q_i, uniforms[:, i])
        proposals.append(q_i)
        drafted.append(x_i)
        draft_logits.append(drafting.step(x_i.to(drafting.logits.device)).to(device).float())
    x = torch.stack(drafted, dim=1) if drafted else pending.new_empty((rows, 0))  # [rows, K]
    q = torch.stack(proposals, dim=1) if proposals else torch.empty(rows, 0, 1, device=device)
    # 2. verify: every other model sees [pending, x_1..x_K] in one forward pass
    fed = torch.cat([pending.to(device).unsqueeze(-1), x], dim=1)  # [rows, K + 1]
    raw: list[torch.Tensor] = []  # per model: [rows, K + 1, vocab] logits at each position
    for index, model_state in enumerate(states):
        if index == draft:
            raw.append(torch.stack(draft_logits, dim=1))
        else:
            logits = model_state.feed(fed.to(model_state.logits.device))
            raw.append(logits.to(device).float())
    vocab = raw[0].size(-1)
    mixed = mix([r.reshape(rows * (k + 1), vocab) for r in raw[:targets]])
    mixed = mixed.reshape(rows, k + 1, vocab).log_softmax(dim=-1)  # [rows, K + 1, vocab]
    # 3. accept / resample
    p = transform(mixed)  # [rows, K + 1, vocab]
    n, following = speculative_accept(p, q, x, uniforms[:, k : 2 * k], uniforms[:, 2 * k])
    tokens = torch.cat([x, x.new_zeros((rows, 1))], dim=1)  # [rows, K + 1]
    tokens.scatter_(1, n.unsqueeze(-1), following.unsqueeze(-1))
    logprobs = mixed.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [rows, K + 1]
    # 4. roll back: each model keeps the pending token and the n accepted drafts of each row
    drop = k - n  # [rows]
    at = n.view(rows, 1, 1).expand(rows, 1, vocab)
    for model_state, logits in zip(states, raw, strict=True):
        kept = logits.gather(1, at).squeeze(1)  # [rows, vocab] after the last kept token
        model_state.rewind(drop.to(model_state.logits.device), kept.to(model_state.logits.device))
    state.logits = mixed.gather(1, at).squeeze(1)
    return n, tokens, logprobs


class SpeculativeBatcher(Batcher):
    """The continuous batch of :class:`~poise.models.decode.Batcher` with a speculative round
    per step instead of one token: rows are admitted, finish (EOS, stop strings, length), stream
    and leave as there, each emitting 1 to ``K + 1`` tokens per step; rows of different
    samplings (an engine's requests) each get their own transform of ``p`` and ``q``.
    ``proposed`` / ``accepted`` count the draft tokens of the rows still decoding."""

    model: SpeculativeModel

    def __init__(
        self, model: SpeculativeModel, *, capacity: int, stream: bool, eager: bool
    ) -> None:
        super().__init__(model, capacity=capacity, stream=stream, eager=eager)
        self.generators: dict[_Row, torch.Generator] = {}  # each sampled row's, while it runs
        self.proposed = 0
        self.accepted = 0

    def _uniforms(self, row: _Row, draws: int) -> torch.Tensor:
        """[draws] uniforms from the row's own generator (seeded as its plain uniforms are);
        zeros for a greedy row (unused: one-hot p and q accept and resample without them)."""
        if row.seed is None or row.done:
            return torch.zeros(draws)
        generator = self.generators.get(row)
        if generator is None:
            generator = self.generators[row] = torch.Generator().manual_seed(row.seed)
        return torch.rand(draws, generator=generator)

    def _transform(self, live: list[_Row]) -> Callable[[torch.Tensor], torch.Tensor]:
        """logits [rows, ..., vocab] -> each row's sampling distribution (filtered_probs)."""
        groups: dict[_SamplingGroup, list[int]] = {}
        for i, row in enumerate(live):
            groups.setdefault(_SamplingGroup.of(row.sampling), []).append(i)
        if len(groups) == 1:
            sampling = live[0].sampling
            return lambda logits: filtered_probs(logits, sampling)
        device = self.state.logits.device if self.state is not None else None
        parts = [
            (torch.tensor(members, device=device), live[members[0]].sampling)
            for members in groups.values()
        ]

        def transform(logits: torch.Tensor) -> torch.Tensor:
            probs = torch.empty_like(logits)
            for index, sampling in parts:
                probs[index] = filtered_probs(logits[index], sampling)
            return probs

        return transform

    @torch.inference_mode()
    def step(self) -> list[tuple[_Row, str]]:
        self._admit()
        if self.state is None:
            return []
        state, live = self.state, self.live
        assert isinstance(state, LockstepState)
        model, k = self.model, self.model.k
        pending = torch.tensor(
            [r.tokens[-1] if r.tokens else r.prompt[-1] for r in live],
            dtype=torch.long,
            device=state.device,
        )
        uniforms = torch.stack([self._uniforms(r, 2 * k + 1) for r in live])
        streamed = {r: r.streamed for r in live}
        n, tokens, logprobs = speculative_round(
            state,
            pending,
            k,
            model.draft,
            model.targets,
            model.mix,
            self._transform(live),
            uniforms.to(state.device),
        )
        counts, chosen, chosen_logprobs = n.tolist(), tokens.tolist(), logprobs.tolist()
        eos = torch.isin(tokens, self._eos).tolist()
        decoding = [i for i, r in enumerate(live) if not r.done]
        self.proposed += k * len(decoding)
        self.accepted += sum(counts[i] for i in decoding)
        news: list[tuple[_Row, str]] = []
        for j in range(k + 1):  # the rows' j-th new token, while a row has one and decodes
            now = [i for i in decoding if j <= counts[i] and not live[i].done]
            if not now:
                break
            news += self._record(
                [live[i] for i in now],
                [chosen[i][j] for i in now],
                [chosen_logprobs[i][j] for i in now],
                [eos[i][j] for i in now],
            )
        for row in live:
            if row.done:
                self.generators.pop(row, None)
        done = sum(r.done for r in live)
        if done == len(live):
            self.state, self.live = None, []
        elif done and (
            done >= COMPACT_SHARE * len(live)
            or (self.eager and bool(self.waiting))
            or self._at_the_edge(state, live)
        ):
            kept = [i for i, r in enumerate(live) if not r.done]
            state.keep(torch.tensor(kept, dtype=torch.long, device=state.device))
            self.live = [live[i] for i in kept]
        return _one_per_row(news, streamed)

    def _at_the_edge(self, state: LockstepState, live: list[_Row]) -> bool:
        """Whether a finished row, which still drafts until the batch drops it, would be fed
        past the models' context in the next round (its K drafts after its next position): a
        model of learned positions fails there (IndexError). The model's context is already
        K short of the models' (a decoding row's last round drafts into those K)."""
        context = self.model.context_length
        if context is None:
            return False
        positions = state.states[0].positions.tolist()  # [rows], alike in every model
        return any(r.done and positions[i] >= context for i, r in enumerate(live))


def _one_per_row(news: list[tuple[_Row, str]], streamed: dict[_Row, str]) -> list[tuple[_Row, str]]:
    """A step's news with one entry per row, as :meth:`Batcher.events` expects: a row's
    streamed pieces joined; a row that finished gets one entry and its text of this step back
    in the final event (its ``streamed`` reset to the step's start, the final event carries the
    rest of the completion's text)."""
    joined: dict[_Row, str] = {}
    for row, text in news:
        joined[row] = joined.get(row, "") + text
    result = []
    for row, text in joined.items():
        if row.finish is not None:
            row.streamed, text = streamed[row], ""
        result.append((row, text))
    return result


class SpeculativeModel(LockstepModel):
    """``generate``, ``stream`` and ``engine`` of a lockstep mixture by speculative sampling
    (see the module docstring).

    ``models``: the mixture's models (``mix`` combines the logits of ``models[:targets]``),
    followed by the draft model when it is not one of them; ``draft``: the draft's index;
    ``k``: tokens drafted per round."""

    def __init__(
        self,
        name: str,
        models: Sequence[Any],
        mix: Combine,
        *,
        targets: int,
        draft: int,
        k: int,
        batch_size: int,
    ) -> None:
        if not 0 <= draft <= targets or len(models) != targets + (draft == targets):
            raise PoiseError(f"{name}: the draft model must be a target or follow them")
        super().__init__(name, models, self._combine, batch_size=batch_size)
        if self.context_length is not None:
            # a row's last round drafts up to K - 1 tokens past its last token, at positions
            # past the answer's: they must fit the models' contexts too (a model with learned
            # positions fails past its own)
            self.context_length -= k
        self.mix = mix
        self.targets = targets
        self.draft = draft
        self.k = k
        self.last: SpeculativeBatcher | None = None  # the latest batch (its draft counts)

    def _combine(self, logits: list[torch.Tensor]) -> torch.Tensor:
        return self.mix(logits[: self.targets])

    def prefill(  # type: ignore[override]
        self, prompts: Sequence[Sequence[int]], *, reserve: int = 0
    ) -> LockstepState:
        """Prefill every model with each prompt (token ids, as the batch queues them) but its
        last token: the row's first pending token."""
        ids = [list(p) for p in prompts]
        if any(len(p) < 2 for p in ids):
            raise PoiseError(f"{self.name}: speculative decoding needs prompts of 2+ tokens")
        return super().prefill([p[:-1] for p in ids], reserve=reserve)

    def _batcher(
        self,
        logits_hook: LogitsHook | None,
        *,
        stream: bool,
        eager: bool = False,
        capacity: int | None = None,
    ) -> Batcher:
        if logits_hook is not None:
            raise PoiseError(f"{self.name}: speculative decoding takes no logits hook")
        self.last = SpeculativeBatcher(
            self, capacity=capacity or self.batch_size, stream=stream, eager=eager
        )
        return self.last
