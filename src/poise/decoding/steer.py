"""``steer(MODEL, direction=PROBE, layer=, strength=, mode=add|ablate)``: move the residual
stream along a direction while the model generates.

Two interventions of Arditi et al., "Refusal in Language Models Is Mediated by a Single
Direction" (arXiv 2406.11717), on a direction ``r`` [hidden] read from a probe folder (``poise
probe train``): by default its difference of means, mean(positives) - mean(negatives) of the
layer's activations (their Eq. 1), else (``use=probe``) the probe's normal ``w / std`` rescaled
to the same norm.

- ``mode=add`` (activation addition, their Eq. 3): ``h <- h + strength * r`` at one layer, every
  position (prompt and generated tokens). ``layer`` indexes the residual stream as
  ``hidden_states`` does: 0 the embeddings, ``i + 1`` the output of decoder block ``i``;
  ``layer=-1`` takes the probe's layer.
- ``mode=ablate`` (directional ablation, their Eq. 2): ``h <- h - strength * (h . r_hat) r_hat``
  with ``r_hat = r / |r|``, on every write to the residual stream, at every position, as the
  authors' code hooks it (``hook_utils.py`` of their repository: every block's input and its
  attention and MLP outputs): the embeddings (block 0's input), each block's attention output
  (so its MLP reads no component along ``r``) and each block's output (the next one's input;
  with the attention output ablated, the same as ablating the MLP's). ``strength=1`` removes
  the component entirely (the paper's ablation; applying it again changes nothing). Another
  strength is poise's extension, applied at every one of those writes: the component that
  reaches a block is scaled by ``1 - strength`` at each, so it compounds over the layers
  (``(1 - s)^k`` after ``k`` writes), not one scaling of the whole stream. ``layer`` is not used by ablation (one given with ``mode=ablate`` is refused). A block whose attention module
  poise does not find (``self_attn``, ``attn``, ``attention``, ``self_attention``) is ablated
  at its input and output only, with a warning.

Both act row by row and position by position, so a chat's answer does not depend on its batch.
The hooks are PyTorch forward hooks on the inner model's decoder blocks, registered only while
the steered model runs (a ``generate`` call, each step of a ``stream``, each ``Engine.step``), so
the same loaded model can serve steered and unsteered requests in one process (one thread at a
time). The direction is named by its folder's path: a probe retrained in place keeps the name,
so give a retrained probe a new folder (or clear the response cache).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from poise.config import Sampling
from poise.decoding import strategies
from poise.errors import PoiseError, check_number
from poise.models.base import (
    Capabilities,
    Chat,
    Completion,
    Engine,
    LanguageModel,
    ProgressFn,
    StreamEvent,
    TokenLogprobs,
)
from poise.models.wrapped import WrappedModel
from poise.probes.linear import load_probe

logger = logging.getLogger(__name__)

MODES = ("add", "ablate")
USES = ("means", "probe")


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@strategies.register(
    "steer",
    help="add (mode=add) or ablate (mode=ablate) a probe's direction in the residual stream",
    reference="arXiv 2406.11717",
)
class Steer(WrappedModel):
    """The inner model with a direction added at one layer or ablated at every layer."""

    kind = "steer"

    def __init__(
        self,
        model: LanguageModel,
        *,
        direction: str,
        layer: int = -1,
        strength: float = 1.0,
        mode: str = "add",
        use: str = "means",
    ) -> None:
        if mode not in MODES:
            raise PoiseError(f"steer: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if use not in USES:
            raise PoiseError(f"steer: use must be one of {', '.join(USES)}, got {use!r}")
        check_number("steer", "strength", strength)
        if not isinstance(direction, str) or not direction:
            raise PoiseError(f"steer: direction must be a probe folder, got {direction!r}")
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < -1:
            raise PoiseError(
                f"steer: layer must be -1 (the probe's) or an index >= 0, got {layer!r}"
            )
        if mode == "ablate" and layer != -1:
            # ablation edits every write to the residual stream (every layer), so a layer would
            # be written into the spec and change nothing: refused, as options that change
            # nothing are elsewhere (it was ignored unsaid)
            raise PoiseError(
                f"steer: mode=ablate removes the direction at every layer, so layer={layer} "
                "would change nothing: leave layer out (it is mode=add's)"
            )
        if not model.capabilities.activations:
            raise PoiseError(
                f"steer needs a model that exposes its decoder blocks (capabilities.activations), "
                f"and {model.name!r} does not: use a local Hugging Face model (hf backend)"
            )
        probe = load_probe(direction)
        if not Path(direction).is_absolute():
            # as a base model's folder in its spec: the spec rebuilds the same direction from any
            # working directory, and two probe folders never share a model name (a cache key)
            direction = str(Path(direction).expanduser().resolve())
        base: Any = model
        while getattr(base, "inner", None) is not None:  # the model whose activations it reads
            base = base.inner
        reads = base.spec or base.name
        if probe.model and reads != probe.model:
            logger.warning(
                "steer: the direction in %s was read from %r's activations and is applied to "
                "%r's: a direction is its model's",
                direction,
                probe.model,
                reads,
            )
        super().__init__(
            model, direction=direction, layer=layer, strength=float(strength), mode=mode, use=use
        )
        backend: Any = model
        self.blocks: list[torch.nn.Module] = backend.decoder_layers()
        self.layer = probe.layer if layer == -1 else layer
        if self.layer > len(self.blocks):
            raise PoiseError(
                f"steer: layer {self.layer} is past the model's {len(self.blocks)} decoder blocks "
                f"(0 = embeddings .. {len(self.blocks)})"
            )
        # layer L (= len(blocks)) is the stream after the final norm, as ``hidden_states`` and
        # the probes read it: an addition there edits the norm's output
        self.norm: torch.nn.Module | None = None
        if mode == "add" and self.layer == len(self.blocks):
            finder = getattr(backend, "final_norm", None)
            self.norm = finder() if finder is not None else None
            if self.norm is None:
                raise PoiseError(
                    f"steer: layer {self.layer} is after the final norm, and poise finds no final "
                    f"norm in {model.name!r}; steer an earlier layer"
                )
        vector = probe.difference_of_means.double()  # [hidden]
        if use == "probe":
            normal = probe.weights.double() / probe.standardiser.std  # [hidden], raw space
            vector = normal / normal.norm() * vector.norm()
        parameter = next(iter(self.blocks[0].parameters()))
        size = _hidden_size(backend)
        if size is not None and vector.numel() != size:
            raise PoiseError(
                f"steer: the direction in {direction} has {vector.numel()} features, the model's "
                f"hidden size is {size}"
            )
        # ablation also edits what each block's attention writes, before its MLP reads it
        self.attentions: list[torch.nn.Module] = []
        if mode == "ablate":
            found = [_attention_of(block) for block in self.blocks]
            self.attentions = [a for a in found if a is not None]
            if len(self.attentions) < len(found):
                logger.warning(
                    "steer: %d of %s's decoder blocks have no attention module poise knows; "
                    "their attention output is not ablated (only their input and output)",
                    len(found) - len(self.attentions),
                    model.name,
                )
        self.vector = vector.to(device=parameter.device, dtype=parameter.dtype)  # [hidden]
        self.unit = self.vector / self.vector.norm().clamp_min(1e-12)  # [hidden]
        self.strength = float(strength)
        self.mode = mode
        inner = model.capabilities
        self.capabilities = Capabilities(
            score=inner.score, stream=inner.stream, engine=inner.engine, activations=True
        )

    # -- the intervention

    def _edit(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden``: [rows, seq, hidden] residual stream -> the steered stream."""
        if self.mode == "add":
            return hidden + self.strength * self.vector
        along = hidden @ self.unit  # [rows, seq]
        return hidden - self.strength * along.unsqueeze(-1) * self.unit

    @contextmanager
    def steering(self) -> Iterator[None]:
        """The hooks on the inner model's blocks, for the duration of the block."""
        handles: list[Any] = []

        def after(module: torch.nn.Module, args: Any, output: Any) -> Any:
            return _replace(output, self._edit(_hidden(output)))

        def before(module: torch.nn.Module, args: Any, kwargs: Any) -> Any:
            if args:
                return (self._edit(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": self._edit(kwargs["hidden_states"])}

        # prepended: the steered stream is what every other hook on a block sees, transformers'
        # own (which records ``output_hidden_states``) included, as the next block does
        if self.mode == "ablate" or self.layer == 0:
            handles.append(
                self.blocks[0].register_forward_pre_hook(before, with_kwargs=True, prepend=True)
            )
        if self.mode == "ablate":
            handles.extend(
                block.register_forward_hook(after, prepend=True) for block in self.blocks
            )
            handles.extend(
                attention.register_forward_hook(after, prepend=True)
                for attention in self.attentions
            )
        elif self.norm is not None:
            handles.append(self.norm.register_forward_hook(after, prepend=True))
        elif self.layer > 0:
            handles.append(self.blocks[self.layer - 1].register_forward_hook(after, prepend=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- the protocol, each call under the hooks

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        with self.steering():
            return self.inner.generate(chats, sampling, progress=progress)

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[TokenLogprobs]:
        if not self.capabilities.score:
            return super().score(chats, continuations)
        with self.steering():
            return self.inner.score(chats, continuations)

    def stream(self, chats: Sequence[Chat], sampling: Sampling) -> Iterator[StreamEvent]:
        events = self.inner.stream(chats, sampling)
        while True:
            with self.steering():  # the inner generator decodes inside next()
                event = next(events, None)
            if event is None:
                return
            yield event

    def engine(self) -> Engine:
        if not self.capabilities.engine:
            raise PoiseError(f"{self.name}: {self.inner.name!r} has no engine")
        inner: Any = self.inner
        return _SteeredEngine(self, inner.engine())

    def decoder_layers(self) -> list[torch.nn.Module]:
        return list(self.blocks)

    def final_norm(self) -> torch.nn.Module | None:
        finder = getattr(self.inner, "final_norm", None)
        return finder() if finder is not None else None

    def hidden_states(
        self,
        chats: Sequence[Chat],
        continuations: Sequence[str] | None = None,
        *,
        reduce: str = "last",
        upto: int | None = None,
    ) -> torch.Tensor:
        inner: Any = self.inner
        with self.steering():
            states: torch.Tensor = inner.hidden_states(
                chats, continuations, reduce=reduce, upto=upto
            )
        return states


# where a decoder block keeps its attention (Llama, Qwen, Mistral, Gemma, OPT: self_attn;
# GPT-2: attn; GPT-NeoX: attention; Falcon, Bloom: self_attention)
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")


def _attention_of(block: torch.nn.Module) -> torch.nn.Module | None:
    """A decoder block's attention module, whose output is what the block adds to the stream."""
    for name in _ATTENTION_NAMES:
        module = getattr(block, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _hidden_size(backend: Any) -> int | None:
    if not hasattr(backend, "model"):
        return None  # a wrapper (a steer of a steer): its inner model checked the size
    config = backend.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


class _SteeredEngine:
    """The inner model's engine with the steering hooks on during each step (prefills run in
    ``step``)."""

    def __init__(self, steer: Steer, engine: Engine) -> None:
        self._steer = steer
        self._engine = engine

    def add(self, key: Hashable, chat: Chat, sampling: Sampling, *, stream: bool = True) -> None:
        self._engine.add(key, chat, sampling, stream=stream)

    def cancel(self, key: Hashable) -> None:
        self._engine.cancel(key)

    def step(self) -> list[StreamEvent]:
        with self._steer.steering():
            return self._engine.step()

    @property
    def idle(self) -> bool:
        return self._engine.idle

    def __getattr__(self, name: str) -> Any:  # what else the server reads (capacity, ...)
        return getattr(self._engine, name)
