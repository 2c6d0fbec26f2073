"""Read a probe's layer during the model's own generation, at no extra forward pass.

``hidden_states`` runs the prompt through the model again; a probe that must not slow
generation (a compliance probe in front of a server) reads the residual stream while the model
prefills the prompt for generation instead. :class:`PromptReader` hooks, for the duration of a
``with reader.reading():`` block, the model's top-level forward (to see each prefill's input ids
and attention mask) and the probe's layer (to see the residual stream), and keeps the last prompt
token's state of every prefilled row, keyed by the prompt's token ids. Prompts are left-padded,
so the last position of a prefill is each row's last prompt token; decoding steps (one new token
per row) are ignored. Keys are token ids rather than batch rows, so the reading does not depend on
how the batcher groups, orders or merges rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from poise.chat import Chat
from poise.errors import PoiseError
from poise.models.base import LanguageModel
from poise.probes.sweep import require_activations

__all__ = ["PromptReader"]


class PromptReader:
    """The residual stream at layer ``layer`` (``hidden_states`` indexing) of the last prompt
    token of every prompt the model prefills inside :meth:`reading`."""

    def __init__(self, model: LanguageModel, layer: int) -> None:
        self.backend: Any = require_activations("a prompt reader", model)
        self.blocks = self.backend.decoder_layers()
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise PoiseError(f"prompt reader: layer must be an integer, got {layer!r}")
        if not 0 <= layer <= len(self.blocks):
            raise PoiseError(f"prompt reader: layer {layer} not in 0..{len(self.blocks)}")
        self.head: Any = None
        if layer == len(self.blocks):
            self.head = self.backend.model.get_output_embeddings()
            if self.head is None:
                raise PoiseError(
                    f"prompt reader: layer {layer} (after the final norm) is read at the LM head, "
                    f"and {model.name!r} has none; read an earlier layer"
                )
        self.layer = layer
        self.states: dict[tuple[int, ...], torch.Tensor] = {}  # prompt ids -> [hidden]

    @contextmanager
    def reading(self) -> Iterator[PromptReader]:
        prefill: dict[str, torch.Tensor | None] = {"ids": None, "mask": None}

        def see_inputs(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
            ids = kwargs.get("input_ids")
            mask = kwargs.get("attention_mask")
            is_prefill = ids is not None and ids.dim() == 2 and ids.shape[1] > 1
            prefill["ids"] = ids if is_prefill else None
            prefill["mask"] = mask if is_prefill else None

        def keep(hidden: torch.Tensor) -> None:
            ids, mask = prefill["ids"], prefill["mask"]
            if ids is None:
                return
            last = hidden[:, -1, :].detach().float().cpu()  # [rows, hidden]
            rows = ids.tolist()  # one transfer for the batch
            if mask is not None and mask.dim() == 2:
                # left padding: a row's prompt is its last sum(mask) ids
                lengths = mask.sum(dim=-1).tolist()
                rows = [row[len(row) - n :] for row, n in zip(rows, lengths, strict=True)]
            for row, state in zip(rows, last, strict=True):
                self.states[tuple(row)] = state

        def after(module: torch.nn.Module, args: Any, output: Any) -> None:
            keep(output[0] if isinstance(output, tuple) else output)

        def before(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
            keep(args[0] if args else kwargs["hidden_states"])

        handles = [self.backend.model.register_forward_pre_hook(see_inputs, with_kwargs=True)]
        if self.layer == 0:
            handles.append(self.blocks[0].register_forward_pre_hook(before, with_kwargs=True))
        elif self.layer == len(self.blocks):
            # hidden_states' last entry is after the final norm: the LM head's input (at least
            # the last position of each row, which is all that is kept)
            handles.append(self.head.register_forward_pre_hook(before, with_kwargs=True))
        else:
            handles.append(self.blocks[self.layer - 1].register_forward_hook(after))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def states_for(self, chats: Sequence[Chat]) -> torch.Tensor:
        """[rows, hidden] float32: the read states of ``chats`` (each must have been prefilled
        inside :meth:`reading`)."""
        prompts = self.backend._encode_prompts(chats)  # the ids generation prefilled
        missing = [i for i, ids in enumerate(prompts) if tuple(ids) not in self.states]
        if missing:
            raise PoiseError(
                f"prompt reader: {len(missing)} chats were not prefilled while reading "
                f"(first: chat {missing[0]})"
            )
        return torch.stack([self.states[tuple(ids)] for ids in prompts])
