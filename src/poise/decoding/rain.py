"""``rain(BASE, max_searches=50, min_visits=6, threshold=0.8, similarity=overlap)``: RAIN.

Rewindable auto-regressive inference (Li et al., arXiv 2309.07124, Algorithm 1), following the
authors' public code (SafeAILab/RAIN, ``HH/main.py`` and ``HH/nodes.py``; each rule and constant
below names the function it follows). The model needs no training: it searches a tree of token
sets, evaluates its own partial answers, and commits one token set at a time.

One search (``main.py: search``), from the root (the answer so far):

- **forward**: descend by the child maximising ``qh + u`` (``nodes.py: node.getqu``): ``qh`` the
  child's value ``q`` min-max scaled by the values seen in the tree (root bounds start at [-1, 1]),
  0 for an unvisited child, and ``u = c_puct * p * sqrt(N_parent) / (1 + N)`` with ``c_puct = 2``;
- **self-evaluation** at the leaf (``main.py: simg`` then ``getv``): the partial answer is first
  continued by sampling until it ends a clause (its text ends in ``, . ? : ;`` or a newline, or
  at EOS), then the model is asked (:data:`EVALUATION_PROMPT`) whether that answer is harmless,
  once with option (A) harmless and once with (A) harmful; each order scores 1 when the next-token
  probability of the harmless letter beats the other letter's, and ``v = ((s1 + s2) / 2 - 0.5) * 2``
  in {-1, 0, 1}. Scores are cached per answer text;
- **expand** the leaf (unless the answer ended): children are token sets of length 1, 2, 4, then
  10 by depth (``main.py: getmaxnew``): for length 1 the top 10 tokens with their top-10
  renormalised probabilities, else the greedy set plus up to 9 sets sampled from the top 15
  tokens (``main.py: group_getp``, whose clamping of the greedy set's probability poise keeps);
  priors are normalised and, at the root, mixed ``0.75 p + 0.25 / K`` (``main.py: search``);
- **backward** (``nodes.py: node.backup``): from the leaf to the root each node gets
  ``n += 1`` and ``q += (g - q) / n`` with ``g = gamma * v`` (``gamma = 1``, no per-node reward),
  and the tree's value bounds widen to include it. Before passing ``g`` up, each node updates the
  running mean of its embedding (of its path's text: its tokens, its descendants' on this path,
  and the simulated continuation), and every sibling whose embedding has cosine similarity
  ``s >= 0.95`` with it gets a fractional visit: ``s' = 0.2 s``, ``q = (q n + s' g) / (n + s')``,
  ``n += s'``.

The outer loop (``main.py: gmeval``) runs searches from the root until the root has been
searched ``max(max_searches, fn_root + extra_searches)`` times in all (``fn_root`` its visits when
it became the root), stopping early once its most-visited child (ties by value) has ``fn >
min_visits`` real visits and ``q > threshold``; then it commits that child: its tokens are appended, it becomes the root with its subtree
kept (rewind: the rest is discarded), and its children's priors are mixed ``0.75 / 0.25`` again.
The reference constants are the defaults: ``max_searches = 50`` (``maxT``), ``min_visits = 6``
(``minT``), ``threshold = 0.8`` (``Vt``), ``extra_searches = 15``.

**poise's substitution for the similarity.** The reference embeds path texts with a sentence
encoder (all-MiniLM-L6-v2). poise downloads nothing, so ``similarity=`` chooses: ``overlap``
(default) the bag of token ids of the path (counts, normalised), whose cosine is a token-overlap
similarity; ``hidden`` the evaluated model's own last-layer hidden state averaged over the path's
tokens; ``none`` no sibling updates. Neither substitute is the paper's encoder, so the 0.95
threshold means something different under each.

**Widening** (``nodes.py: node.checkadd`` / ``node.add``, ``main.py: search``): on the way down,
a node with fewer than 20 children, all with embeddings, whose embeddings' variance has norm
below ``0.03`` times the set length and whose best child has ``q < 0`` gets more children: the
top ``children + 1`` tokens for single-token sets, else two more candidate sets (the greedy one
and one sampled) put before the stored ones (with the probabilities they were drawn with, not
the children's priors), of which the first ``children + 1`` are normalised and the new ones
added. The threshold was set for the reference's encoder; under poise's
substitutes it means something else.

**Where poise departs from the reference.** The value bounds are one tracker per answer (the
reference copies them to the new root at each commit and keeps updating the old one from nodes
created before it). A sampled token set stops at EOS. Whether a continuation already ends a
clause is read from the answer's text only (the reference reads the whole decoded state, whose
prompt ends in "Assistant:", so at the root it never simulates; under a chat template the
prompt's end says nothing about the answer). The
evaluation prompt is poise's wording, without the reference's few-shot examples, put to the
model through its chat template (the reference prompts a base model with raw text). A
single-token expansion lists its 10 children by probability, most likely first (``topk``); the
reference lists them by token id (``group_getp``: ``np.where(acp > 0)``), and keeps every token
tied with the 10th (``TopKLogitsWarper``). Only single tokens are affected (the root's first
expansion, depth 0, and its widening); multi-token sets come in the reference's order (the
greedy set, then the sampled ones as drawn). The order decides the ties that ``node.select``
and ``node.get_max_n_action`` break by "first wins", and which child a draw at ``temperature >
0`` maps a random number to, so changing it would change sampled answers (on organism-large,
the first 3 tokens of 3-4 of 16 seeded answers at T = 1, none of the 16 greedy ones).

Each (chat, sample) is searched on its own tree, seeded per row as every poise model seeds a
row. The reference searches one prompt at a time; poise runs ``batch_size`` searches (default 32)
in lockstep, each written as a generator of the model calls it needs (expand a node, simulate a
continuation, evaluate an answer): every round, the pending calls of all running searches are
answered together (:meth:`Rain._serve`: one prefill of the evaluation prompts, one of the
contexts, then one decode of the expansions and simulations side by side), each search drawing
from its own generator in its own order. On a plain ``hf`` base model the round's work is cut
three ways, none of which changes what is computed: each search's contexts and evaluation
prompts continue its previous ones' KV caches from their common prefix
(:class:`poise.models.decode.PrefixCache`); an evaluation's two option orders run their common
part once; and an expansion's ``k`` sets decode as one row per distinct prefix (rows split when
their members draw different tokens; each member still draws from its own row's distribution in
the reference's ``[k - 1, 15]`` draw). A row's answer is therefore the one the per-prompt search
gives, up to the rounding of a batched forward (left padding and cached prefixes change the
order of some sums: logits agree to about 1e-5); the tests and the organism benchmark find the
same answers either way.
With ``temperature == 0`` the committed child is the most-visited one, as in the reference; with
``temperature > 0`` it is drawn with probability proportional to ``n ** (1 / T)`` (the visit
distribution ``gmeval`` computes before it takes the maximum: poise's rule, so ``n`` samples of a
chat differ). Top-k / top-p are not applied (the search's own sets draw as the reference does,
at temperature 1 from the top 15); ``max_new_tokens`` caps the answer, stop strings cut its
text (and ``num_tokens`` / ``token_ids``, as plain decoding counts them; ``token_ids`` end with
the EOS token that ended the answer, if one did). ``Completion.metadata`` records
``{"rain_searches": int, "rain_evaluations": int, "rain_unevaluated": int}`` (evaluations: the
distinct answers the model evaluated; unevaluated: those whose prompt did not fit its context).

**The model's context.** Nothing is fed to the model past its context (``context_length``; a
model of learned positions, GPT-2's, fails there, one of rotary positions decodes garbage), as in
plain decoding. The reference bounds the whole sequence by ``maxlen`` (2048, LLaMA's context;
``main.py``): ``gmeval`` stops past it, ``search`` evaluates a longer leaf without expanding it,
``simg`` simulates no further; its token sets may overrun it and its evaluation prompt is not
bounded (its prompts are filtered to under 512 tokens). poise holds every row inside the
context: the answer ends there (finish reason ``"length"``, as plain decoding ends a row that
fills the context), a leaf whose state fills it is evaluated but not expanded, a simulation stops
there, a token set is cut to the tokens the context still holds, and decode rows that have
finished while others go on are fed at their last position (:meth:`DecodeState.hold`). A
self-evaluation prompt is the evaluation question, the request and the answer, so it is longer
than the search's own context; one that does not fit is not put to the model, and the answer
scores 0, the value of an undecided evaluation (the two option orders disagreeing). Cutting the
prompt instead would judge another text: a shortened answer loses the tokens that tell siblings
apart, a shortened request may no longer be the harmful one. A chat whose prompt fills the
context alone is a :class:`~poise.models.context.ContextLengthError`, as in ``generate``.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from poise.config import Sampling
from poise.decoding import strategies
from poise.decoding.deal import stop_length
from poise.errors import PoiseError, check_int, check_number
from poise.models.base import Capabilities, Chat, Completion, LanguageModel, ProgressFn
from poise.models.context import ContextLengthError
from poise.models.decode import (
    COMPACT_SHARE,
    DecodeState,
    PrefixCache,
    common_prefix,
    cut_at_stop,
)
from poise.models.hf import row_seed
from poise.models.wrapped import WrappedModel

__all__ = ["EVALUATION_PROMPT", "Bounds", "Node", "Rain", "set_length", "similarity"]

# nodes.py: node.getqu
C_PUCT = 2.0
# nodes.py: module constant ``gamma``
GAMMA = 1.0
# nodes.py: node.backup (``sim_gamma``, ``sim_the``)
SIM_GAMMA = 0.2
SIM_THRESHOLD = 0.95
# main.py: search / gmeval: the prior mixing at the root
ROOT_MIX = 0.75
# main.py: search calls group_getp(topk=10); group_getp draws sets from the top 15
EXPAND_K = 10
SET_TOP_K = 15
# main.py: simg: a simulated continuation ends where its text ends a clause
CLAUSE_ENDS = (",", ".", "?", ":", ";", "\n")
SIMILARITIES = ("overlap", "hidden", "none")
# nodes.py: node.checkadd (``nc < 20``, ``the_norm = 0.03 * len(tokens)``, ``the_q = 0.0``);
# main.py: search widens multi-token nodes with group_getp(topk=2)
WIDEN_MAX_CHILDREN = 20
WIDEN_NORM = 0.03
WIDEN_Q = 0.0
WIDEN_K = 2

EVALUATION_PROMPT = """\
Decide whether the assistant's answer below is harmful. Judge only what the answer says. An \
answer that declines a harmful request is harmless.

User: {request}
Assistant: {answer}

Options:
(A) The assistant's answer is {first}.
(B) The assistant's answer is {second}.
Reply with the letter of the right option."""
ANSWER_PREFIX = "The answer is: ("

Embedding = dict[int, float] | torch.Tensor


# The model calls a search makes, each answered in a batch with other searches' (Rain._serve).
@dataclass
class _Sets:
    """Expand a node: ``k`` child token sets of ``set_length(depth)`` tokens after ``state``
    (fewer where the model's context ends first: :meth:`Rain._set_tokens`)."""

    state: list[int]
    depth: int
    k: int
    generator: torch.Generator
    key: Hashable = None


@dataclass
class _Rollout:
    """Continue ``state`` by sampling until its answer (from ``answer_from``) ends a clause."""

    state: list[int]
    answer_from: int
    budget: int
    generator: torch.Generator
    key: Hashable = None


@dataclass
class _Evaluate:
    """The model's self-evaluation of ``answer`` to ``request``."""

    request: str
    answer: str
    key: Hashable = None


_Request = _Sets | _Rollout | _Evaluate


def _cache_keys(search: Hashable) -> tuple[Hashable, Hashable]:
    """The prefix-cache keys of one search's rows: its contexts', its evaluation prompts'."""
    return (search, "context"), (search, "evaluate")


# a row's search: yields requests, is sent their answers, returns (tokens, finish, counts)
_Search = Generator[_Request, Any, tuple[list[int], str, dict[str, int]]]


def set_length(depth: int) -> int:
    """Tokens per child set at a node of this depth (``main.py: getmaxnew``)."""
    return {0: 1, 1: 2, 2: 4}.get(depth, 10)


def similarity(a: Embedding, b: Embedding) -> float:
    """Cosine similarity of two embeddings (sparse token counts or dense vectors)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))
    assert isinstance(a, dict) and isinstance(b, dict)
    dot = sum(v * b.get(k, 0.0) for k, v in a.items())
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm > 0 else 0.0


def _running_mean(mean: Embedding | None, new: Embedding, count: int) -> Embedding:
    """``mean + (new - mean) / count`` (``nodes.py: node.backup``, the embedding update)."""
    if mean is None:
        return new
    if isinstance(mean, torch.Tensor) and isinstance(new, torch.Tensor):
        return mean + (new - mean) / count
    assert isinstance(mean, dict) and isinstance(new, dict)
    keys = set(mean) | set(new)
    return {k: mean.get(k, 0.0) + (new.get(k, 0.0) - mean.get(k, 0.0)) / count for k in keys}


@dataclass
class Bounds:
    """The value range seen in the tree, for scaling ``q`` (the root's ``minqn`` / ``maxqn``)."""

    low: float = -1.0
    high: float = 1.0


class Node:
    """A node of the search tree: the token set that leads to it (``nodes.py: node``)."""

    def __init__(
        self,
        parent: Node | None,
        prior: float,
        tokens: tuple[int, ...] = (),
        depth: int = 0,
        bounds: Bounds | None = None,
    ) -> None:
        self.parent = parent
        self.p = prior
        self.tokens = tokens
        self.depth = depth
        self.bounds: Bounds = bounds or (parent.bounds if parent is not None else Bounds())
        self.children: dict[tuple[int, ...], Node] = {}
        self.n = 0.0  # visits, including the similarity updates' fractional ones
        self.fn = 0  # real visits
        self.q = 0.0
        self.reward = 0.0
        self.embedding: Embedding | None = None
        # the candidate sets with their unnormalised probabilities (main.py: search's ``egp``),
        # for node.add's widening
        self.sets: list[tuple[tuple[int, ...], float]] = []

    def expand(
        self,
        sets: Sequence[tuple[tuple[int, ...], float]],
        priors: Sequence[float] | None = None,
    ) -> None:
        """Children for token sets (``nodes.py: node.expand``): each set with its probability,
        kept for :meth:`add`'s widening, and its child's prior (default: that probability).
        The search derives the priors from the probabilities (normalised, mixed at the root),
        but widening mixes the stored probabilities as ``group_getp`` gave them (``main.py``:
        search keeps ``egp``)."""
        self.sets = list(sets)
        chosen = [p for _, p in sets] if priors is None else list(priors)
        for (tokens, _), prior in zip(sets, chosen, strict=True):
            self.children[tokens] = Node(self, prior, tokens, self.depth + 1)

    def needs_widening(self) -> bool:
        """Whether the children look alike and all score below 0 (``nodes.py: node.checkadd``):
        fewer than 20 children, all with embeddings, the norm of their embeddings' (unbiased)
        variance below ``0.03`` times the set length, and the best child's ``q`` below 0."""
        children = list(self.children.values())
        if not children or len(children) >= WIDEN_MAX_CHILDREN:
            return False
        embeddings = [c.embedding for c in children]
        if any(e is None for e in embeddings) or len(children) < 2:
            return False
        if all(isinstance(e, torch.Tensor) for e in embeddings):
            stacked = torch.stack([e for e in embeddings if isinstance(e, torch.Tensor)]).float()
        else:
            keys = sorted({k for e in embeddings if isinstance(e, dict) for k in e})
            stacked = torch.tensor(
                [[e.get(k, 0.0) for k in keys] for e in embeddings if isinstance(e, dict)]
            )
        spread = float(torch.norm(torch.var(stacked, dim=0)))
        best_q = max(c.q for c in children)
        return spread < WIDEN_NORM * len(children[0].tokens) and best_q < WIDEN_Q

    def widen(self, sets: Sequence[tuple[tuple[int, ...], float]]) -> None:
        """Add children (``nodes.py: node.add``, and ``node.checkadd`` for single tokens): the new
        candidate sets go before the stored ones, the first ``children + 1`` of them are
        normalised (mixed at the root) and those not yet children become children."""
        self.sets = [*sets, *self.sets]
        head = self.sets[: len(self.children) + 1]
        total = sum(p for _, p in head) or 1.0
        priors = [p / total for _, p in head]
        if self.parent is None:
            priors = mix_priors(priors)
        for (tokens, _), prior in zip(head, priors, strict=True):
            if tokens not in self.children:
                self.children[tokens] = Node(self, prior, tokens, self.depth + 1)

    def score(self) -> float:
        """``qh + u``, the selection rule (``nodes.py: node.getqu``)."""
        assert self.parent is not None
        span = self.bounds.high - self.bounds.low + 1e-5
        qh = 0.0 if self.n == 0 else (self.q - self.bounds.low) / span
        u = C_PUCT * self.p * math.sqrt(self.parent.n) / (1 + self.n)
        return qh + u

    def select(self) -> tuple[tuple[int, ...], Node]:
        """The child of the highest ``qh + u`` (the first on ties, ``nodes.py: node.select``)."""
        return max(self.children.items(), key=lambda item: item[1].score())

    def best(self) -> tuple[tuple[int, ...], Node] | None:
        """The most-visited child, ties by value (``nodes.py: node.get_max_n_action``)."""
        if not self.children:
            return None
        most = max(child.n for child in self.children.values())
        tied = [(k, c) for k, c in self.children.items() if c.n == most]
        return max(tied, key=lambda item: item[1].q)

    def backup(
        self,
        value: float,
        path: Sequence[int],
        embed: Callable[[Sequence[int]], Embedding] | None,
        path_n: int = 0,
    ) -> None:
        """Propagate a leaf's value to the root (``nodes.py: node.backup``). ``path``: the token
        ids of the evaluated sequence; its last ``path_n`` belong below this node (the simulated
        continuation at the leaf); ``embed`` maps a node's path tokens to its embedding (None:
        no similarity updates)."""
        g = GAMMA * value + self.reward
        self.n += 1
        self.fn += 1
        if self.parent is not None:
            path_n += len(self.tokens)
            if embed is not None:
                self.embedding = _running_mean(self.embedding, embed(path[-path_n:]), self.fn)
                for sibling in self.parent.children.values():
                    if sibling is self or sibling.embedding is None:
                        continue
                    s = similarity(self.embedding, sibling.embedding)
                    if s < SIM_THRESHOLD:
                        continue
                    s *= SIM_GAMMA
                    before = sibling.n
                    sibling.n += s
                    sibling.q = (sibling.q * before + s * g) / sibling.n
            self.parent.backup(g, path, embed, path_n)
        self.q += (g - self.q) / self.n
        if self.parent is not None:
            self.bounds.low = min(self.bounds.low, self.q)
            self.bounds.high = max(self.bounds.high, self.q)


def mix_priors(priors: Sequence[float]) -> list[float]:
    """``0.75 p + 0.25 / K``, renormalised: the root's exploration prior (``main.py: search``)."""
    k = len(priors)
    mixed = [ROOT_MIX * p + (1 - ROOT_MIX) / k for p in priors]
    total = sum(mixed)
    return [m / total for m in mixed]


def _check_pair(index: int, pair: object) -> None:
    """A (request, answer) pair of strings, or one error naming it: a missing field (None, as a
    samples.jsonl record read with .get gives) was evaluated as the text "None"."""
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(text, str) for text in pair)
    ):
        raise PoiseError(
            f"rain: evaluate takes a request and an answer, both strings; pair {index} is {pair!r}"
        )


@strategies.register(
    "rain",
    help="rewindable auto-regressive inference: tree search scored by the model's self-evaluation",
    reference="arXiv 2309.07124",
)
class Rain(WrappedModel):
    """The base model decoded by RAIN's search under its own harmlessness evaluation."""

    kind = "rain"

    def __init__(
        self,
        base: LanguageModel,
        *,
        max_searches: int = 50,
        min_visits: int = 6,
        threshold: float = 0.8,
        extra_searches: int = 15,
        similarity: str = "overlap",
        batch_size: int = 32,
    ) -> None:
        from poise.decoding.temperature import require_step

        check_int("rain", "max_searches", max_searches, 1)
        check_int("rain", "min_visits", min_visits, 0)
        check_int("rain", "extra_searches", extra_searches, 1)
        check_int("rain", "batch_size", batch_size, 1)
        check_number("rain", "threshold", threshold, low=-1, high=1)
        if similarity not in SIMILARITIES:
            raise PoiseError(
                f"rain: similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}"
            )
        require_step(self.kind, base)
        from poise.models.hf import HFModel

        if not isinstance(base, HFModel):
            # the search tokenizes its evaluation prompts with the base's tokenizer and chat
            # template, and cuts simulations at the base's EOS tokens
            raise PoiseError(
                f"rain: the base must be a Hugging Face model (hf backend), whose tokenizer and "
                f"chat template the search uses; {base.name!r} is not one ({type(base).__name__})"
            )
        if similarity == "hidden" and not hasattr(base, "hidden_states"):
            raise PoiseError(f"rain: similarity=hidden needs hidden states, {base.name!r} has none")
        options: dict[str, Any] = {
            "max_searches": max_searches,
            "min_visits": min_visits,
            "threshold": float(threshold),
        }
        if extra_searches != 15:
            options["extra_searches"] = extra_searches
        if similarity != "overlap":
            options["similarity"] = similarity
        if batch_size != 32:
            options["batch_size"] = batch_size
        super().__init__(base, **options)
        # the self-evaluation compares the letters' next-token scores: without two distinct
        # letter tokens (both unknown to the vocabulary, say) every answer would score -1
        # (harmful) in silence, and the search would run on that
        a, b = self._letters
        unknown = getattr(base.tokenizer, "unk_token_id", None)
        if a == b or unknown in (a, b):
            raise PoiseError(
                f"rain: the self-evaluation reads the next-token scores of the option letters "
                f"'A' and 'B', and {base.name!r}'s tokenizer has no token of its own for each "
                f"(ids {a} and {b}{', the unknown token' if unknown in (a, b) else ''})"
            )
        self.max_searches, self.min_visits = max_searches, min_visits
        self.threshold, self.extra_searches = float(threshold), extra_searches
        self.similarity = similarity
        self.batch_size = batch_size
        self.capabilities = Capabilities()

    # -- the model's forward passes, each batched over the requests of many searches

    def _logits(
        self,
        rows: Sequence[Sequence[int]],
        keys: Sequence[Hashable] | None = None,
        cache: PrefixCache | None = None,
    ) -> DecodeState:
        """The prefilled rows; with a ``cache``, each row starts from its key's last row."""
        if cache is not None and keys is not None:
            return cache.prefill(rows, keys)
        inner: Any = self.inner
        return inner.prefill([list(r) for r in rows])

    def _prefix_cache(self) -> PrefixCache | None:
        """A prefix cache for one ``generate`` call, where the base model's ``prefill`` is the
        plain ``hf`` one (whose states it copies; a search's calls share its context: see
        :class:`PrefixCache`). Models that prefill several models in lockstep get none."""
        from poise.models.hf import HFModel

        inner = self.inner
        if isinstance(inner, HFModel) and type(inner).prefill is HFModel.prefill:
            return PrefixCache(inner)
        return None

    # -- one round: every pending call of every running search, in one prefill and one decode

    def _evaluation_rows(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        """The self-evaluation prompts of each (request, answer) in both option orders
        (``main.py: getv``), as token ids, two rows per pair: harmless first, then harmful
        first (tokenized in one call)."""
        inner: Any = self.inner
        prompts = [
            inner.prompt_text(
                [
                    {
                        "role": "user",
                        "content": EVALUATION_PROMPT.format(
                            request=request, answer=answer, first=first, second=second
                        ),
                    }
                ]
            )
            + ANSWER_PREFIX
            for request, answer in pairs
            for first, second in (("harmless", "harmful"), ("harmful", "harmless"))
        ]
        return [list(row) for row in inner._encode(prompts)]

    @functools.cached_property
    def _letters(self) -> tuple[int, int]:
        """The token ids of the option letters "A" and "B" as the model writes them right after
        the prompt's "(": the vocabulary's own tokens "A" and "B" (the reference reads Llama's
        29909 / 29933, the letters without a word boundary). Encoding a letter alone gives a
        SentencePiece tokenizer's word-initial "▁A", which does not follow "(". A tokenizer
        without such tokens: the last token of "(A" / "(B"."""
        inner: Any = self.inner
        tokenizer = inner.tokenizer
        vocab = tokenizer.get_vocab()
        ids = [vocab.get(letter) for letter in ("A", "B")]
        if None in ids or ids[0] == ids[1]:
            ids = [tokenizer.encode(f"({x}", add_special_tokens=False)[-1] for x in ("A", "B")]
        a, b = (int(i) for i in ids)
        return a, b

    def _judge(self, harmless_first: torch.Tensor, harmful_first: torch.Tensor) -> float:
        """``v`` in {-1, 0, 1} from the next-token logits [vocab] after each order's prompt
        (``main.py: getv``): each order scores 1 when its harmless option's letter beats the
        other letter, and ``v = ((s1 + s2) / 2 - 0.5) * 2``."""
        a, b = self._letters
        s1 = 1.0 if float(harmless_first[a]) > float(harmless_first[b]) else 0.0
        s2 = 1.0 if float(harmful_first[b]) > float(harmful_first[a]) else 0.0
        return ((s1 + s2) / 2 - 0.5) * 2

    def _judgements(
        self,
        prompts: Sequence[Sequence[int]],
        keys: Sequence[Hashable],
        cache: PrefixCache | None,
    ) -> torch.Tensor:
        """The next-token logits [rows, vocab] after each evaluation prompt (rows in pairs:
        the two option orders of one evaluation). With a ``cache``, a pair's common part (all
        but the options' tails) runs once, from its key's last one, and is copied to the two
        rows that then read their own tails."""
        if cache is None:
            return self._logits(prompts, keys).logits
        shared, tails = [], []
        for first, second in zip(prompts[::2], prompts[1::2], strict=True):
            common = min(common_prefix(first, second), len(first) - 1, len(second) - 1)
            shared.append(list(first[:common]))
            tails += [list(first[common:]), list(second[common:])]
        state = self._logits(shared, keys[::2], cache)
        state.keep([j for j in range(len(shared)) for _ in range(2)])
        return state.append(tails)

    def _rollout_ended(self, request: _Rollout, state: Sequence[int]) -> bool:
        """Whether a simulated continuation is done (``main.py: simg``): its answer ends a
        clause, reached EOS, used the budget, or the state fills the model's context."""
        inner: Any = self.inner
        answer = state[request.answer_from :]
        if len(answer) >= request.budget or (answer and state[-1] in inner.eos_token_ids):
            return True
        if self._fills_context(state):
            return True
        text = inner.tokenizer.decode(list(answer), skip_special_tokens=True)
        return bool(text) and text[-1] in CLAUSE_ENDS

    def _fills_context(self, state: Sequence[int]) -> bool:
        """Whether ``state`` fills the model's context: no token may follow it."""
        context = self.inner.context_length
        return context is not None and len(state) >= context

    def _set_tokens(self, depth: int, state: Sequence[int]) -> int:
        """Tokens per child set after ``state`` at a node of this depth: ``set_length(depth)``,
        or the tokens the model's context still holds if fewer (a set's tokens are fed when its
        node is searched)."""
        context = self.inner.context_length
        length = set_length(depth)
        return length if context is None else max(1, min(length, context - len(state)))

    def _serve(self, requests: Sequence[_Request], cache: PrefixCache | None = None) -> list[Any]:
        """The answers to the pending calls of many searches, of every kind at once.

        One prefill runs the self-evaluations' prompts (:class:`_Evaluate`: each reads its two
        prompts' next-token logits, :meth:`_judgements`), one the other calls' contexts (with a
        ``cache``, each from its search's last one): an expansion into single tokens reads its
        context's top ``k`` (``main.py: group_getp``). Then one decode runs what is left side by
        side: each multi-token expansion's ``k`` sets (the greedy set and ``k - 1`` sampled
        from the top 15 tokens), one row per distinct prefix, and each simulation
        (:class:`_Rollout`) until its answer ends a clause (``main.py: simg``); a row leaves
        the batch when its set or its clause is done. Each call draws from its own search's
        generator in the order the reference draws, so its answer does not depend on the other
        calls in the round."""
        calls: Any = requests  # each index is read as the kind the lists below give it
        answers: list[Any] = [None] * len(requests)
        # the evaluation prompts, in a prefill of their own (longer than the contexts: in one
        # batch they would pad the decode's rows); the contexts of the expansions and rollouts
        pairs: list[tuple[str, str]] = []
        prompt_keys: list[Hashable] = []
        rows: list[list[int]] = []
        keys: list[Hashable] = []
        # (request index, its first prefilled row)
        judged: list[tuple[int, int]] = []
        singles: list[tuple[int, int]] = []
        multi: list[tuple[int, int]] = []
        rollouts: list[tuple[int, int]] = []
        for i, request in enumerate(requests):
            if isinstance(request, _Evaluate):
                judged.append((i, 2 * len(pairs)))
                pairs.append((request.request, request.answer))
                prompt_keys.extend([request.key] * 2)
            elif isinstance(request, _Sets):
                length = self._set_tokens(request.depth, request.state)
                (singles if length == 1 else multi).append((i, len(rows)))
                rows.append(list(request.state))
                keys.append(request.key)
            elif self._rollout_ended(request, request.state):
                answers[i] = list(request.state)
            else:
                rollouts.append((i, len(rows)))
                rows.append(list(request.state))
                keys.append(request.key)
        if pairs:
            prompts = self._evaluation_rows(pairs)
            # a prompt past the context is not put to the model: None, which scores 0
            context = self.inner.context_length
            fit = [
                (i, row)
                for i, row in judged
                if context is None or max(len(prompts[row]), len(prompts[row + 1])) <= context
            ]
            if fit:
                rows_fit = [prompts[row + j] for _, row in fit for j in (0, 1)]
                keys_fit = [prompt_keys[row + j] for _, row in fit for j in (0, 1)]
                logits = self._judgements(rows_fit, keys_fit, cache)  # [2 x fitting, vocab]
                for j, (i, _) in enumerate(fit):
                    answers[i] = self._judge(logits[2 * j], logits[2 * j + 1])
        if not rows:
            return answers
        decode = self._logits(rows, keys, cache)
        logits = decode.logits  # [rows, vocab]
        for i, row in singles:
            top = logits[row].float().topk(calls[i].k)
            probs = top.values.softmax(-1)
            answers[i] = [((int(t),), float(p)) for t, p in zip(top.indices, probs, strict=True)]
        if multi or rollouts:
            for i, answer in self._decode(decode, calls, multi, rollouts).items():
                answers[i] = answer
        return answers

    def _decode(
        self,
        decode: DecodeState,
        calls: Any,
        multi: Sequence[tuple[int, int]],
        rollouts: Sequence[tuple[int, int]],
    ) -> dict[int, Any]:
        """The decode of a round (:meth:`_serve`) from its prefilled contexts ``decode``: the
        sets of each multi-token expansion and the continuation of each simulation, each given
        as (index into ``calls``, its prefilled row); the answers by call index."""
        inner: Any = self.inner
        eos = set(inner.eos_token_ids)
        answers: dict[int, Any] = {}
        # The decode. An expansion's k sets (member 0 the greedy set, 1..k-1 sampled) are
        # drawn as k rows, but members whose tokens so far are the same share one decode row
        # (their contexts are the same): a row holds a group of members and splits when they
        # draw different tokens. Each member still draws from its row's distribution as the
        # k separate rows would (one [k - 1, 15] multinomial per expansion and step), so the
        # sets are those of k rows; the organism's sets share most of their tokens.
        # ``live[r]``: (request index, members) of decode row r; no members for a rollout.
        live: list[tuple[int, list[int]]] = [(i, list(range(calls[i].k))) for i, _ in multi]
        live += [(i, []) for i, _ in rollouts]
        decode.keep([row for _, row in multi] + [row for _, row in rollouts])
        tokens: dict[tuple[int, int], list[int]] = {
            (i, c): [] for i, members in live for c in members
        }
        logp = dict.fromkeys(tokens, 0.0)
        done = dict.fromkeys(tokens, False)
        states = {i: list(calls[i].state) for i, _ in rollouts}
        # a row whose set or clause is done is fed its last token (and draws nothing) until a
        # quarter of the rows are done or a group splits: dropping rows copies the cache
        going = [True] * len(live)
        step = 0
        while True:
            logits = decode.logits.float()  # [live, vocab]
            # the next rows: (source row, token, members), in order
            follow: list[tuple[int, int, list[int]]] = []
            chosen = [0] * len(live)
            set_rows = [r for r, (_, members) in enumerate(live) if members and going[r]]
            if set_rows:
                top = logits[set_rows].topk(SET_TOP_K, dim=-1)  # [set rows, 15]
                probs = top.values.softmax(-1)
                where: dict[tuple[int, int], int] = {}  # (request, member): row in set_rows
                for j, r in enumerate(set_rows):
                    i, members = live[r]
                    where.update({(i, c): j for c in members})
                requests_now = list(dict.fromkeys(live[r][0] for r in set_rows))
                top_tokens, top_probs = top.indices.tolist(), probs.tolist()
                picks: dict[tuple[int, int], tuple[int, float]] = {}
                for i in requests_now:
                    k = calls[i].k
                    rows_of = [where[(i, c)] for c in range(k)]
                    part = probs[rows_of[1:]].cpu()  # [k - 1, 15]
                    generator = calls[i].generator
                    pick = [0, *torch.multinomial(part, 1, generator=generator)[:, 0].tolist()]
                    for c in range(k):  # the greedy set (member 0) takes the top token
                        at, row = pick[c], rows_of[c]
                        picks[(i, c)] = (top_tokens[row][at], top_probs[row][at])
                for r in set_rows:
                    i, members = live[r]
                    split: dict[int, list[int]] = {}
                    for c in members:
                        token, p = picks[(i, c)]
                        split.setdefault(token, []).append(c)
                        if not done[(i, c)]:
                            tokens[(i, c)].append(token)
                            logp[(i, c)] += math.log(p)
                            done[(i, c)] = token in eos
                    follow.extend((r, token, group) for token, group in split.items())
            roll_rows = [r for r, (_, members) in enumerate(live) if not members and going[r]]
            if roll_rows:
                probs = logits[roll_rows].softmax(-1).cpu()  # [rollouts, vocab]
                for j, r in enumerate(roll_rows):
                    i = live[r][0]
                    token = int(torch.multinomial(probs[j], 1, generator=calls[i].generator))
                    states[i].append(token)
                    follow.append((r, token, []))
            step += 1
            follow = [
                (r, token, members)
                for r, token, members in follow
                if (
                    step < self._set_tokens(calls[live[r][0]].depth, calls[live[r][0]].state)
                    if members
                    else not self._rollout_ended(calls[live[r][0]], states[live[r][0]])
                )
            ]
            if not follow:
                break
            split_now = len({r for r, _, _ in follow}) < len(follow)  # a row feeds two
            if split_now or len(live) - len(follow) >= COMPACT_SHARE * len(live):
                decode.keep([r for r, _, _ in follow])
                live = [(live[r][0], members) for r, _, members in follow]
                going = [True] * len(live)
                chosen = [token for _, token, _ in follow]
            else:  # the same rows, the same groups: the finished ones stay, fed their last token
                going = [False] * len(live)
                for r, token, _ in follow:
                    going[r] = True
                    chosen[r] = token
            decode.step(torch.tensor(chosen, device=decode.logits.device))
            # a finished row is fed again at the position it was just fed at, not further: one
            # that reached the context would be fed past it (IndexError with learned positions)
            held = [r for r, on in enumerate(going) if not on]
            if held:
                with torch.inference_mode():  # the positions are inference tensors
                    decode.hold(held)
        for i, _ in rollouts:
            answers[i] = states[i]
        for i, _ in multi:
            k = calls[i].k
            greedy = tuple(tokens[(i, 0)])
            seen = {greedy}
            others: list[tuple[tuple[int, ...], float]] = []
            for c in range(1, k):
                if tuple(tokens[(i, c)]) not in seen:
                    seen.add(tuple(tokens[(i, c)]))
                    others.append((tuple(tokens[(i, c)]), math.exp(logp[(i, c)])))
            greedy_p = math.exp(logp[(i, 0)])
            if others:  # group_getp's clamp of the greedy set's probability
                ps = [p for _, p in others]
                greedy_p = max(min(greedy_p, sum(ps)), max(ps) + min(ps))
            answers[i] = [(greedy, greedy_p), *others]
        return answers

    def evaluate(self, request: str, answer: str) -> float:
        """The model's self-evaluation of one answer, in {-1, 0, 1} (``main.py: getv``); 0 when
        its evaluation prompt does not fit the model's context."""
        _check_pair(0, (request, answer))
        return float(self._serve([_Evaluate(request, answer)])[0] or 0.0)

    def evaluate_many(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """:meth:`evaluate` of many (request, answer) pairs, ``batch_size`` at a time."""
        for index, pair in enumerate(pairs):
            _check_pair(index, pair)
        values: list[float] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = [_Evaluate(r, a) for r, a in pairs[start : start + self.batch_size]]
            values += [float(v or 0.0) for v in self._serve(chunk)]
        return values

    def _embedder(self, chat: Chat) -> Callable[[Sequence[int]], Embedding] | None:
        if self.similarity == "none":
            return None
        if self.similarity == "overlap":

            def overlap(tokens: Sequence[int]) -> Embedding:
                counts = Counter(tokens)
                total = sum(counts.values()) or 1
                return {k: v / total for k, v in counts.items()}

            return overlap
        inner: Any = self.inner
        context = inner.context_length
        room = None if context is None else context - len(inner._encode_prompts([chat])[0])

        def hidden(tokens: Sequence[int]) -> Embedding:
            path = list(tokens)
            text = inner.tokenizer.decode(path, skip_special_tokens=True)
            # the path's text after the chat's prompt, re-encoded, must fit the context: a
            # text may take more tokens than the path it decodes from (its last ones are kept)
            while room is not None and path and len(inner._encode([text])[0]) > room:
                path = path[-room:] if len(path) > room else path[1:]
                text = inner.tokenizer.decode(path, skip_special_tokens=True)
            states = inner.hidden_states([chat], [text], reduce="mean")  # [1, layers + 1, hidden]
            return states[0, -1].float()

        return hidden

    # -- the search: one generator per (chat, sample), its model calls batched across them

    def _answer(
        self, chat: Chat, sampling: Sampling, gen: torch.Generator, key: Hashable = None
    ) -> _Search:
        """One row's search (``main.py: gmeval``), as a generator: it yields each model call it
        needs (:class:`_Sets`, :class:`_Rollout`, :class:`_Evaluate`), is sent the answer, and
        returns ``(answer token ids, finish reason, counts)``; the ids end with the EOS token
        that ended the answer, if one did."""
        inner: Any = self.inner
        eos = set(inner.eos_token_ids)
        request = next((str(m["content"]) for m in reversed(chat) if m["role"] == "user"), "")
        prompt = inner._encode_prompts([chat])[0]
        start = len(prompt)
        budget = sampling.max_new_tokens
        embed = self._embedder(chat)
        cache: dict[str, float | None] = {}  # None: its evaluation prompt did not fit
        counts = {"rain_searches": 0, "rain_evaluations": 0, "rain_unevaluated": 0}
        state = list(prompt)
        root = Node(None, 0.0)
        first = 0
        while True:
            for _ in range(first, max(self.max_searches, first + self.extra_searches)):
                yield from self._search(
                    root, state, start, budget, request, cache, embed, gen, eos, key
                )
                counts["rain_searches"] += 1
                best = root.best()
                if best and best[1].fn > self.min_visits and best[1].q > self.threshold:
                    break
            best = root.best() if sampling.greedy else self._draw(root, sampling, gen)
            if best is None:
                break
            move, child = best
            state.extend(move)
            child.parent = None
            child.tokens = ()
            for node, p in zip(
                child.children.values(),
                mix_priors([c.p for c in child.children.values()]),
                strict=True,
            ):
                node.p = p
            root, first = child, child.fn
            if any(t in eos for t in move) or len(state) - start >= budget:
                break
            if self._fills_context(state):
                break  # "length": the answer ends at the context, as in plain decoding
        counts["rain_evaluations"] = sum(v is not None for v in cache.values())
        counts["rain_unevaluated"] = len(cache) - counts["rain_evaluations"]
        answer = state[start:][:budget]
        cut = next((i for i, t in enumerate(answer) if t in eos), None)
        finish = "stop" if cut is not None else "length"
        return (answer[: cut + 1] if cut is not None else answer), finish, counts

    @staticmethod
    def _draw(
        root: Node, sampling: Sampling, gen: torch.Generator
    ) -> tuple[tuple[int, ...], Node] | None:
        """A child drawn with probability proportional to ``n ** (1 / T)``: the visit
        distribution ``main.py: gmeval`` computes (``act_probs``), tempered (poise's rule for
        sampled decoding; the reference always commits the most-visited child)."""
        if not root.children:
            return None
        items = list(root.children.items())
        visits = torch.tensor([c.n for _, c in items], dtype=torch.float64)
        # scaled by the most visits first: n ** (1 / T) overflows float64 for a tiny T (inf
        # weights); (n / max) ** (1 / T) is proportional and tends to the most visited child
        peak = visits.max().clamp(min=1.0)
        weights = (visits.clamp(min=0) / peak) ** (1.0 / sampling.temperature)
        if float(weights.sum()) <= 0:
            return root.best()
        return items[int(torch.multinomial(weights, 1, generator=gen))]

    def _search(
        self,
        root: Node,
        prefix: list[int],
        start: int,
        budget: int,
        request: str,
        cache: dict[str, float | None],
        embed: Callable[[Sequence[int]], Embedding] | None,
        gen: torch.Generator,
        eos: set[int],
        key: Hashable = None,
    ) -> Generator[_Request, Any, None]:
        """One forward / evaluate / expand / backward pass (``main.py: search``). ``key``
        names the search's rows in a prefix cache: its contexts under ``(key, "context")``,
        its evaluation prompts under ``(key, "evaluate")``."""
        context, judged = _cache_keys(key) if key is not None else (None, None)
        inner: Any = self.inner
        state = list(prefix)
        node = root
        action: tuple[int, ...] = ()
        while node.children:
            if node.needs_widening():
                # checkadd: the top (children + 1) tokens; search: add(group_getp(topk=2))
                single = self._set_tokens(node.depth, state) == 1
                k = len(node.children) + 1 if single else WIDEN_K
                node.widen((yield _Sets(list(state), node.depth, k, gen, context)))
            action, node = node.select()
            state.extend(action)
        ended = (
            len(state) - start >= budget
            or any(t in eos for t in action)
            or self._fills_context(state)  # evaluated, not expanded (the reference's maxlen)
        )
        full = (yield _Rollout(list(state), start, budget, gen, context)) if not ended else state
        text = inner.tokenizer.decode(full[start:], skip_special_tokens=True)
        if text not in cache:
            cache[text] = yield _Evaluate(request, text, judged)
        value = cache[text]
        value = 0.0 if value is None else value  # not evaluated (did not fit): undecided
        if not ended:
            sets = yield _Sets(list(state), node.depth, EXPAND_K, gen, context)
            total = sum(p for _, p in sets) or 1.0
            priors = [p / total for _, p in sets]
            if node.parent is None:
                priors = mix_priors(priors)
            node.expand(sets, priors)
        node.backup(value, full, embed, path_n=len(full) - len(state))

    @torch.inference_mode()
    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        """Every (chat, sample) searched on its own tree, ``batch_size`` searches at a time in
        lockstep: each round, every running search's next model call (expanding a node,
        simulating a continuation, or evaluating an answer) is answered in one batched call per
        kind, and a search that ends makes room for the next row. An answer ends ("length")
        where prompt and answer fill the model's context; a chat whose prompt fills it alone is
        a :class:`~poise.models.context.ContextLengthError` naming it, before any search."""
        inner: Any = self.inner
        context = inner.context_length
        if context is not None:
            for c, prompt in enumerate(inner._encode_prompts(chats)):
                if len(prompt) >= context:
                    raise ContextLengthError(
                        context, len(prompt), None, at_least=False, where=f"{self.name}: chat {c}"
                    )
        rows = [(c, s) for c in range(len(chats)) for s in range(sampling.n)]
        results: list[list[Completion | None]] = [[None] * sampling.n for _ in chats]
        left = [sampling.n] * len(chats)
        running: list[tuple[int, int, _Search, _Request]] = []
        queue = iter(rows)
        prefixes = self._prefix_cache()

        def finish(c: int, s: int, value: tuple[list[int], str, dict[str, int]]) -> None:
            ids, reason, counts = value  # ids: the answer's, and the EOS that ended it if any
            tokens = ids[:-1] if reason == "stop" else ids
            text = inner.tokenizer.decode(tokens, skip_special_tokens=True)
            text, stopped = cut_at_stop(text, sampling.stop)
            if stopped:  # the tokens up to the stop string, as the base model's decoding counts
                tokens = ids = tokens[: stop_length(inner.tokenizer, tokens, sampling.stop)]
            results[c][s] = Completion(
                text=text,
                num_tokens=len(tokens),
                finish_reason="stop" if stopped else reason,  # type: ignore[arg-type]
                token_ids=tuple(ids),
                metadata=dict(counts),
            )
            left[c] -= 1
            if prefixes is not None:
                for key in _cache_keys((c, s)):
                    prefixes.forget(key)
            if progress is not None and left[c] == 0:
                progress(1)

        def advance(c: int, s: int, search: _Search, answer: Any) -> None:
            try:
                request = search.send(answer)
            except StopIteration as done:
                finish(c, s, done.value)
                return
            running.append((c, s, search, request))

        while True:
            while len(running) < self.batch_size:
                row = next(queue, None)
                if row is None:
                    break
                c, s = row
                gen = torch.Generator().manual_seed(row_seed(sampling.seed, chats[c], s))
                advance(c, s, self._answer(chats[c], sampling, gen, (c, s)), None)
            if not running:
                break
            answers = self._serve([request for *_, request in running], prefixes)
            waiting, running[:] = list(running), []
            for (c, s, search, _), answer in zip(waiting, answers, strict=True):
                advance(c, s, search, answer)
        return [[c for c in row if c is not None] for row in results]
