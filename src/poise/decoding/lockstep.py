"""Several models decoding the same rows in lockstep, their next-token logits combined.

A strategy that mixes models token by token (emulated fine-tuning) drives one
:class:`~poise.models.decode.DecodeState` per model (each with its own KV cache) over the same
rows: every model is prefilled with the same prompt token ids, every step feeds every model the
same chosen token, and the distribution sampled from is ``combine([logits of each model])``.

:class:`LockstepState` is such a group of states, shaped like one ``DecodeState`` (``logits``,
``step``, ``keep``, ``extend``, ``mergeable``), so the HF backend's one decoding loop (the
continuous :class:`~poise.models.decode.Batcher`: sampling with each row's own seed, stop
strings, EOS, streaming, the engine) runs on it unchanged: :class:`LockstepModel` is the HF
backend's generation front (``generate`` / ``stream`` / ``engine``) over a lockstep prefill.

Assumptions: the models share one vocabulary (checked: the tokenizers' token-to-id maps are
equal, and the logits have one width); the prompt is rendered by the first model's chat
template and its token ids are fed to every model; the first model's EOS ids end a row; the
shortest of the models' contexts is the mixture's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from poise.errors import PoiseError
from poise.models.base import Capabilities, Chat, LanguageModel
from poise.models.hf import HFModel

__all__ = ["Combine", "LockstepModel", "LockstepState", "check_shared_vocabulary"]

# combine([logits of model i: [rows, vocab] float32]) -> [rows, vocab] float32
Combine = Callable[[list[torch.Tensor]], torch.Tensor]


def _logit_width(model: Any) -> int | None:
    """The width of a local model's logits (its output layer's rows), through wrappers; None
    where it is not known before a forward pass."""
    while getattr(model, "inner", None) is not None:
        model = model.inner
    output = getattr(getattr(model, "model", None), "get_output_embeddings", None)
    layer = output() if callable(output) else None
    weight = getattr(layer, "weight", None)
    return int(weight.shape[0]) if weight is not None else None


def check_shared_vocabulary(kind: str, models: Sequence[LanguageModel]) -> None:
    """Refuse models whose tokenizers map tokens to different ids, or whose logits have
    different widths (a padded output layer), in one clear line, before any generation."""
    first = models[0]
    if first.tokenizer is None:
        raise PoiseError(f"{kind}: {first.name!r} has no tokenizer to compare vocabularies with")
    vocab = first.tokenizer.get_vocab()
    for other in models[1:]:
        if other.tokenizer is None:
            raise PoiseError(f"{kind}: {other.name!r} has no tokenizer to compare vocabularies")
        theirs = other.tokenizer.get_vocab()
        if theirs != vocab:
            differ = sum(theirs.get(token) != index for token, index in vocab.items())
            raise PoiseError(
                f"{kind}: {other.name!r} does not share {first.name!r}'s vocabulary "
                f"({len(theirs)} vs {len(vocab)} tokens, {differ} of {first.name!r}'s tokens "
                "with another id or missing); token-level mixing needs one vocabulary"
            )
    widths = {m.name: w for m in models if (w := _logit_width(m)) is not None}
    if len(set(widths.values())) > 1:
        # the same tokenizer over output layers of different sizes: found only at the first
        # prefill (LockstepState) before, after every model's weights were loaded
        shown = ", ".join(f"{name}: {width}" for name, width in widths.items())
        raise PoiseError(
            f"{kind}: the models' logits have different vocabulary sizes ({shown}); "
            "token-level mixing needs one width"
        )


class LockstepState:
    """One :class:`~poise.models.decode.DecodeState` per model over the same rows.

    ``logits``: [rows, vocab] float32, ``combine`` of the models' logits (on the first model's
    device). ``step(tokens)`` feeds every model the same [rows] tokens."""

    def __init__(self, states: Sequence[Any], combine: Combine, names: Sequence[str]) -> None:
        self.states = list(states)
        self.combine = combine
        widths = {int(s.logits.size(-1)) for s in self.states}
        if len(widths) > 1:
            shown = ", ".join(
                f"{n}: {int(s.logits.size(-1))}" for n, s in zip(names, self.states, strict=True)
            )
            raise PoiseError(f"the models' logits have different vocabulary sizes ({shown})")
        self.device = self.states[0].logits.device
        self.logits = self._combined()

    def _combined(self) -> torch.Tensor:
        return self.combine([s.logits.to(self.device).float() for s in self.states])

    def __len__(self) -> int:
        return int(self.logits.size(0))

    @property
    def rows(self) -> int:
        return len(self)

    @property
    def mergeable(self) -> bool:
        return all(s.mergeable for s in self.states)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        for state in self.states:
            state.step(tokens.to(state.logits.device))
        self.logits = self._combined()
        return self.logits

    def hold(self, rows: Sequence[int]) -> None:
        """As :meth:`DecodeState.hold`, in every model's state."""
        for state in self.states:
            state.hold(rows)

    def keep(self, rows: torch.Tensor | Sequence[int]) -> None:
        index = torch.as_tensor(rows, dtype=torch.long)
        for state in self.states:
            state.keep(index.to(state.logits.device))
        self.logits = self.logits[index.to(self.device)]

    def extend(
        self,
        *others: LockstepState,
        reserve: int = 0,
        keep: torch.Tensor | Sequence[int] | None = None,
    ) -> None:
        """As :meth:`DecodeState.extend`: ``keep`` drops this batch's other rows in the same
        copy of each model's cache."""
        if not others:
            if keep is not None:
                self.keep(keep)
            return
        index = None if keep is None else torch.as_tensor(keep, dtype=torch.long)
        for i, state in enumerate(self.states):
            kept = None if index is None else index.to(state.logits.device)
            state.extend(*(o.states[i] for o in others), reserve=reserve, keep=kept)
        logits = self.logits if index is None else self.logits[index.to(self.device)]
        self.logits = torch.cat([logits, *(o.logits for o in others)])


class LockstepModel(HFModel):
    """The HF backend's generation front (``generate``, ``stream``, ``engine``: one continuous
    batcher) over a :class:`LockstepState` of ``models`` (each needs ``capabilities.step``).

    Internal to the strategies that mix models: it is not loaded from a spec and has no
    weights of its own (``HFModel.__init__`` is not run); ``score`` is not offered."""

    capabilities = Capabilities(stream=True, step=True, engine=True)

    def __init__(
        self, name: str, models: Sequence[LanguageModel], combine: Combine, *, batch_size: int
    ) -> None:
        first: Any = models[0]
        self.name = name
        self.models = list(models)
        self.combine = combine
        self.tokenizer = first.tokenizer
        self.batch_size = batch_size
        self.eos_token_ids = list(first.eos_token_ids)
        self.device = first.device
        self.prefill_merges = all(getattr(m, "prefill_merges", False) for m in models)
        # every model reads the same positions: the shortest context holds the rows (a row
        # stops at it, as one model's own decoding does; None where no model knows its own)
        known = [m.context_length for m in models if m.context_length is not None]
        self.context_length = min(known) if known else None

    def __repr__(self) -> str:
        return f"LockstepModel({self.name!r}, {len(self.models)} models)"

    def prefill(  # type: ignore[override]
        self, prompts: Sequence[Chat] | Sequence[Sequence[int]], *, reserve: int = 0
    ) -> LockstepState:
        """Prefill every model with the same prompt token ids (rendered by the first model)."""
        if not prompts:
            raise PoiseError(f"{self.name}: prefill needs at least one prompt")
        ids: list[list[int]]
        if all(isinstance(p, Sequence) and p and isinstance(p[0], int) for p in prompts):
            ids = [list(p) for p in prompts]  # type: ignore[arg-type]
        else:
            ids = self._encode_prompts(prompts)  # type: ignore[arg-type]
        states = [m.prefill(ids, reserve=reserve) for m in self.models]  # type: ignore[attr-defined]
        return LockstepState(states, self.combine, [m.name for m in self.models])

    def score(self, chats: Any, continuations: Any) -> Any:
        raise NotImplementedError(f"{self.name}: lockstep decoding does not score")
