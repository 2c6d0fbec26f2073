"""The token-level seam of the ``hf`` backend: prefill, step, and the continuous batch.

Three layers, each usable on its own:

- :class:`KVCache` keeps every layer's keys and values in a preallocated buffer
  ``[rows, kv_heads, capacity, head_dim]``, so a decoding step writes one column instead of
  concatenating (copying) the whole cache, as transformers' ``DynamicCache`` does. Rows are
  left-padded; the live columns are ``[start, end)``, so dropping the leading columns that are
  padding in every row is free.
- :class:`DecodeState` is a batch of rows being decoded with one model: ``logits`` holds each
  row's next-token logits, ``step(tokens)`` feeds one token per row, ``keep(rows)`` drops rows,
  ``extend(other)`` merges a freshly prefilled batch into a running one at a step boundary;
  ``feed(tokens)`` feeds several tokens per row in one forward pass and ``rewind(drop)`` forgets
  each row's last tokens (a count per row), for speculative decoding. It never samples:
  strategies that drive several models in lockstep (emulated fine-tuning, reward-guided search)
  combine the states' logits and choose the tokens themselves.
- :class:`Batcher` schedules rows over a ``DecodeState``: admits waiting rows as others finish
  (continuous batching; rows with the same prompt, such as a chat's ``n`` samples, are
  prefilled once and the cache copied to each), samples each row with its own ``Sampling`` and generator, calls the
  logits hook once per step, detects EOS / stop strings / length, and streams each row's new
  text. ``HFModel.generate``, ``HFModel.stream`` and :class:`HFEngine` are all this one loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import (
    Chat,
    Completion,
    FinishReason,
    LogitsHook,
    RowTokens,
    StepView,
    StreamEvent,
)
from poise.models.context import ContextLengthError

if TYPE_CHECKING:
    from poise.models.hf import HFModel

__all__ = ["Batcher", "DecodeState", "HFEngine", "KVCache", "PrefixCache", "common_prefix"]

# Drop finished rows from the batch (and their KV cache) once at least this share is done.
# Compacting copies the cache, so not after every finished row; at 0.25 the audit benchmark on
# organism-large ran ~8% faster than at 0.5 (short refusals end early and stop costing compute).
COMPACT_SHARE = 0.25
# Largest share of padding in a prefill forward before the rows are split into groups.
PREFILL_WASTE = 1 / 32
# Padding positions a prefill group may hold whatever their share (short prompts: one forward
# pass per few rows would cost more than the padding).
PREFILL_FREE_PADDING = 64
# Columns a cache grows by at least when its buffer is full (or by half its width).
_GROW_COLUMNS = 64
# Free columns allocated ahead at most (a row asking for 32k new tokens grows as it goes).
MAX_RESERVE = 512


# Decode-step attention runs over chunks of this many rows, each from its own first live column.
ATTENTION_ROWS = 16
# Chunk start columns are multiples of this (of 512 in caches of 512+ columns), which keeps the
# CPU attention kernel's sums in the same order (the same bits) as over the whole width.
_ATTENTION_ALIGN = 16
_KV_BLOCK = 512
# Chunking pays only when it skips at least this share of the cache's columns.
_ATTENTION_MIN_SAVING = 0.08


# ----------------------------------------------------------------------------- span attention

_ATTENTION_NAME = "poise_span_sdpa"
# (first row, end row, first column) per chunk of rows, for the decode step now running
_SPANS: ContextVar[list[tuple[int, int, int]] | None] = ContextVar("poise_spans", default=None)


def attention_spans(mask: torch.Tensor) -> list[tuple[int, int, int]] | None:
    """Chunks of rows and the first cache column each chunk needs, from a left-padded mask
    ``[rows, width]`` (0s then 1s in every row); None when chunking would skip too little.

    At one new token per row, attention reads every row's whole cache: the left padding of a
    batch's shorter rows is read and masked out. Over chunks of rows of similar length (the
    batcher queues rows longest first), each chunk starts at its own first live column."""
    rows, width = mask.shape
    if rows < 2 * ATTENTION_ROWS:
        return None
    # padding columns before each row's first real token (the first 1: a row rewound by
    # speculative decoding has masked columns after its first token too, see DecodeState.rewind)
    leading = mask.int().argmax(dim=1).tolist()
    align = _KV_BLOCK if width >= _KV_BLOCK else _ATTENTION_ALIGN
    spans = []
    skipped = 0
    for first in range(0, rows, ATTENTION_ROWS):
        end = min(first + ATTENTION_ROWS, rows)
        start = min(leading[first:end]) // align * align
        spans.append((first, end, start))
        skipped += start * (end - first)
    return spans if skipped >= _ATTENTION_MIN_SAVING * rows * width else None


def _span_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *args: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, run per chunk of rows over the chunk's live columns.

    ``query`` [rows, heads, 1, dim]; ``key``, ``value`` [rows, kv_heads, width, dim];
    ``attention_mask`` [rows, 1, 1, width] (or None); returns [rows, 1, heads, dim]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    spans = _SPANS.get()
    rows = key.size(0)
    if (
        spans is None
        or query.size(2) != 1
        or spans[-1][1] != rows
        or (attention_mask is not None and attention_mask.size(0) != rows)
    ):
        out: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, *args, **kwargs
        )
        return out
    outputs = []
    for first, end, start in spans:
        mask = None if attention_mask is None else attention_mask[first:end, ..., start:]
        output, _ = sdpa_attention_forward(
            module,
            query[first:end],
            key[first:end, :, start:],
            value[first:end, :, start:],
            mask,
            *args,
            **kwargs,
        )
        outputs.append(output)
    return torch.cat(outputs), None


_REGISTERED = False


def _register_span_attention() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(_ATTENTION_NAME, _span_attention)
        AttentionMaskInterface.register(_ATTENTION_NAME, sdpa_mask)
        _REGISTERED = True


@contextmanager
def _spans_attention(config: Any, spans: list[tuple[int, int, int]] | None) -> Iterator[None]:
    """Within the block, ``config``'s model attends per span (when ``spans`` is not None)."""
    if spans is None:
        yield
        return
    _register_span_attention()
    token = _SPANS.set(spans)
    config._attn_implementation = _ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
        _SPANS.reset(token)


# ----------------------------------------------------------------------------- the KV cache


def _layer_base() -> type:
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


class _BufferLayer:
    """One attention layer's keys and values in a buffer ``[rows, kv_heads, capacity, dim]``.

    Mixed into transformers' ``DynamicLayer`` at run time (see :func:`_buffer_layer_class`), so
    the model's attention calls ``update`` exactly as on a ``DynamicLayer``. ``keys`` and
    ``values`` are views of the live columns ``[start, end)``.
    """

    keys: torch.Tensor | None
    values: torch.Tensor | None
    is_initialized: bool

    def __init__(self, reserve: int = 0) -> None:
        super().__init__()
        self.reserve = min(reserve, MAX_RESERVE)
        self.start = 0
        self.end = 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        rows, heads, _, dim = key_states.shape
        capacity = key_states.size(-2) + max(self.reserve, 1)
        self.device = key_states.device
        self.key_buffer = key_states.new_empty((rows, heads, capacity, dim))
        self.value_buffer = value_states.new_empty((rows, value_states.size(1), capacity, dim))
        self.is_initialized = True

    def _adopt(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Take ``keys`` / ``values`` [rows, kv_heads, live, dim] (not shared) as the buffers."""
        self.device = keys.device
        self.key_buffer, self.value_buffer = keys, values
        self.start, self.end = 0, keys.size(2)
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        assert self.key_buffer is not None and self.value_buffer is not None
        self.keys = self.key_buffer[:, :, self.start : self.end]
        self.values = self.value_buffer[:, :, self.start : self.end]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``[rows, kv_heads, new, dim]`` after the live columns; return all live ones."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.key_buffer is not None and self.value_buffer is not None
        new = key_states.size(-2)
        if self.end + new > self.key_buffer.size(2):
            width = self.end - self.start + new
            self.resize(width + max(self.reserve, _GROW_COLUMNS, width // 2))
            assert self.key_buffer is not None and self.value_buffer is not None
        self.key_buffer[:, :, self.end : self.end + new] = key_states
        self.value_buffer[:, :, self.end : self.end + new] = value_states
        self.end += new
        self._views()
        assert self.keys is not None and self.values is not None
        return self.keys, self.values

    def resize(self, capacity: int) -> None:
        """Move the live columns to the front of a new buffer of ``capacity`` columns."""
        assert self.key_buffer is not None and self.value_buffer is not None
        width = self.end - self.start
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            # columns past the live ones are written before they are read: no need to zero
            new = old.new_empty((old.size(0), old.size(1), capacity, old.size(3)))
            new[:, :, :width] = old[:, :, self.start : self.end]
            setattr(self, name, new)
        self.start, self.end = 0, width
        self._views()

    def get_seq_length(self) -> int:
        return self.end - self.start

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.end - self.start + query_length, 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            assert self.key_buffer is not None and self.value_buffer is not None
            # one gather of the live columns and some of the free ones after them (unread:
            # they are written before they are read); not the trimmed columns before them
            free = min(self.key_buffer.size(2) - self.end, max(self.reserve, _GROW_COLUMNS))
            columns = slice(self.start, self.end + free)
            self.key_buffer = self.key_buffer[:, :, columns].index_select(0, indices)
            self.value_buffer = self.value_buffer[:, :, columns].index_select(0, indices)
            self.start, self.end = 0, self.end - self.start
            self._views()

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.batch_select_indices(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        self.end = max(self.start, self.end + min(tokens_to_remove, 0))
        self._views()


_BUFFER_LAYER: type | None = None


def _buffer_layer_class() -> type:
    global _BUFFER_LAYER
    if _BUFFER_LAYER is None:
        _BUFFER_LAYER = type("BufferLayer", (_BufferLayer, _layer_base()), {})
    return _BUFFER_LAYER


class KVCache:
    """A transformers ``Cache`` whose layers are preallocated buffers (see the module docstring).

    ``cache`` is the object handed to the model's forward. Models whose cache is not one plain
    full-attention layer per decoder layer (sliding windows, linear attention, ...) keep their
    own ``DynamicCache``; such a cache can drop rows but not merge (``mergeable`` is False).
    """

    def __init__(self, config: Any, reserve: int) -> None:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        self.cache: Any = DynamicCache(config=config)
        self.config = config
        layers = self.cache.layers
        self.mergeable = bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
        # decode steps may attend per chunk of rows (see attention_spans)
        self.spans = self.mergeable and getattr(config, "_attn_implementation", None) == "sdpa"
        if self.mergeable:
            layer_class = _buffer_layer_class()
            self.cache.layers = [layer_class(reserve) for _ in layers]

    @property
    def width(self) -> int:
        """Live columns (padding included)."""
        return int(self.cache.get_seq_length())

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` ([kept] int64), in that order."""
        if self.mergeable:
            for layer in self.cache.layers:
                layer.batch_select_indices(rows)
        else:
            self.cache.batch_select_indices(rows)

    def trim(self, columns: int) -> None:
        """Forget the first ``columns`` live columns (padding in every row)."""
        if columns <= 0 or not self.mergeable:
            return
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.start += columns
                layer._views()

    def drop_last(self, columns: int) -> None:
        """Forget the last ``columns`` live columns of every row (the buffer layers only)."""
        if columns <= 0:
            return
        if not self.mergeable:
            raise PoiseError("this model's KV cache cannot be rewound (not plain attention)")
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.end = max(layer.start, layer.end - columns)
                layer._views()

    def _copied(self, take: Callable[[torch.Tensor], torch.Tensor]) -> KVCache:
        """A new cache whose every layer holds ``take(keys)`` / ``take(values)`` of this one's
        live columns ([rows, kv_heads, live, dim] in, a new tensor out)."""
        if not self.mergeable:
            raise PoiseError("this model's KV cache cannot be copied (not plain attention)")
        copy = KVCache(self.config, 0)
        for mine, theirs in zip(copy.cache.layers, self.cache.layers, strict=True):
            if theirs.is_initialized:
                mine._adopt(take(theirs.keys), take(theirs.values))
        return copy

    def copy_rows(self, rows: torch.Tensor) -> KVCache:
        """A new cache holding copies of ``rows`` ([rows] int64) over the live columns."""
        return self._copied(lambda t: t.index_select(0, rows))

    def gather_columns(self, rows: torch.Tensor, columns: torch.Tensor) -> KVCache:
        """A new cache whose row ``j`` holds row ``rows[j]``'s keys and values at the live
        columns ``columns[j]`` ([rows, width] int64), in that order."""

        def take(t: torch.Tensor) -> torch.Tensor:
            picked = t.index_select(0, rows)  # [rows, heads, live, dim]
            index = columns[:, None, :, None].expand(-1, picked.size(1), -1, picked.size(3))
            return picked.gather(2, index)

        return self._copied(take)

    def place(self, other: KVCache, rows: torch.Tensor) -> None:
        """Overwrite this cache's ``rows`` ([n] int64) with ``other``'s n rows, in place:
        ``other``'s live columns right-aligned (left padding) in this cache's live columns,
        which must be at least as many; the padding columns are zeroed (masked out, but must
        be finite: 0 x NaN is NaN). No other row is copied."""
        if not (self.mergeable and other.mergeable):
            raise PoiseError(
                "this model's KV cache cannot take rows in place (not plain attention)"
            )
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            if not (mine.is_initialized and theirs.is_initialized):
                raise PoiseError("place: both caches must hold keys and values")
            width, live = mine.keys.size(2), theirs.keys.size(2)
            if live > width:
                raise PoiseError(f"place: {live} live columns do not fit in {width}")
            pad = width - live
            # the views write through to the buffers: [n, kv_heads, width, dim]
            mine.keys[rows, :, :pad] = 0
            mine.values[rows, :, :pad] = 0
            mine.keys[rows, :, pad:] = theirs.keys
            mine.values[rows, :, pad:] = theirs.values

    def merge(
        self,
        others: Sequence[KVCache],
        reserve: int,
        keep: torch.Tensor | None = None,
        width: int | None = None,
    ) -> None:
        """Append the rows of ``others`` after this cache's rows, all right-aligned (left
        padding) to ``width`` (default: the widest); the buffers get ``reserve`` free columns.
        ``keep`` ([kept] int64): only these of this cache's own rows stay, in that order (the
        rows a batch drops travel in the same copy). ``width`` may be narrower than this
        cache when its first columns are padding in every kept row."""
        if not all(c.mergeable for c in (self, *others)):
            raise PoiseError("this model's KV cache cannot merge batches (not plain attention)")
        width = width if width is not None else max(c.width for c in (self, *others))
        for index, mine in enumerate(self.cache.layers):
            layers = [mine, *(c.cache.layers[index] for c in others)]
            k0, v0 = mine.keys, mine.values  # [rows, heads, live, dim]
            if keep is not None:
                k0, v0 = k0.index_select(0, keep), v0.index_select(0, keep)
            parts = [(k0, v0), *((layer.keys, layer.values) for layer in layers[1:])]
            rows = sum(k.size(0) for k, _ in parts)
            capacity = width + max(min(reserve, MAX_RESERVE), 1)
            key_buffer = k0.new_empty((rows, k0.size(1), capacity, k0.size(3)))
            value_buffer = v0.new_empty((rows, v0.size(1), capacity, v0.size(3)))
            row = 0
            for keys, values in parts:
                n, live = keys.size(0), min(keys.size(2), width)
                pad = width - live
                # padding is masked out, but must be finite (0 x NaN is NaN)
                key_buffer[row : row + n, :, :pad] = 0
                value_buffer[row : row + n, :, :pad] = 0
                key_buffer[row : row + n, :, pad:width] = keys[:, :, keys.size(2) - live :]
                value_buffer[row : row + n, :, pad:width] = values[:, :, values.size(2) - live :]
                row += n
            mine.key_buffer, mine.value_buffer = key_buffer, value_buffer
            mine.start, mine.end = 0, width
            mine.reserve = max(mine.reserve, min(reserve, MAX_RESERVE))
            mine._views()


# ----------------------------------------------------------------------------- decode state


Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


class DecodeState:
    """A batch of rows being decoded by one model, with its KV cache. No sampling inside.

    ``logits``: [rows, vocab] float32, each row's next-token logits. ``positions``: [rows] int64,
    the position of each row's next token (real tokens only, so padding never shifts a row).
    ``mask``: [rows, width] int64, 1 where the cache holds a real token. Built by
    ``HFModel.prefill``.

    ``feed_forward`` (the same call as ``forward``, returning the logits after every fed token,
    [rows, new, vocab]) enables :meth:`feed`; :meth:`rewind` forgets tokens per row. Together
    they are the verify-and-roll-back of speculative decoding
    (:mod:`poise.decoding.speculative`).
    """

    def __init__(
        self,
        forward: Forward,
        cache: KVCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        logits: torch.Tensor,
        *,
        feed_forward: Forward | None = None,
    ) -> None:
        self._forward = forward
        self._feed_forward = feed_forward
        self.cache = cache
        self.mask = mask  # [rows, width]
        self.positions = positions  # [rows]
        self.logits = logits  # [rows, vocab]

    def __len__(self) -> int:
        return int(self.logits.size(0))

    @property
    def rows(self) -> int:
        return len(self)

    @property
    def mergeable(self) -> bool:
        """Whether ``extend`` works for this model's cache."""
        return self.cache.mergeable

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``tokens``: [rows] int64); returns the new ``logits``."""
        if tokens.dim() != 1 or tokens.size(0) != len(self):
            raise PoiseError(f"step: expected {len(self)} tokens (one per row), got {tokens.shape}")
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.size(0), 1))], dim=-1)
        spans = attention_spans(self.mask) if self.cache.spans else None
        with _spans_attention(self.cache.config, spans):
            self.logits = self._forward(
                tokens.unsqueeze(-1), self.mask, self.positions.unsqueeze(-1), self.cache.cache
            )
        self.positions = self.positions + 1
        return self.logits

    @torch.inference_mode()
    def hold(self, rows: Sequence[int]) -> None:
        """``rows`` (finished, fed padding until the batch drops them) take their next token at
        the position of their last one, not one further: a row that filled the context would
        be fed past it, where a model of learned positions fails (IndexError)."""
        self.positions[list(rows)] -= 1

    @torch.inference_mode()
    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed several tokens per row in one forward pass (``tokens``: [rows, new] int64).

        Returns the logits after each fed token, [rows, new, vocab] float32 (position ``j``:
        the next-token logits after ``tokens[:, : j + 1]``); ``logits`` becomes the last."""
        if tokens.dim() != 2 or tokens.size(0) != len(self):
            raise PoiseError(f"feed: expected [{len(self)}, new] tokens, got {tuple(tokens.shape)}")
        if self._feed_forward is None:
            raise PoiseError("feed: this decode state feeds one token per step only")
        new = tokens.size(1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.size(0), new))], dim=-1)
        offsets = torch.arange(new, device=self.positions.device)
        positions = self.positions.unsqueeze(-1) + offsets  # [rows, new]
        logits = self._feed_forward(tokens, self.mask, positions, self.cache.cache)
        self.positions = self.positions + new
        self.logits = logits[:, -1]
        return logits

    @torch.inference_mode()
    def rewind(self, drop: torch.Tensor, logits: torch.Tensor) -> None:
        """Forget the last ``drop[r]`` tokens of row ``r`` ([rows] int64), each fed since the
        last rewind, and set ``logits`` [rows, vocab] (the next-token logits after the tokens
        each row keeps; the caller has them from :meth:`feed` or :meth:`step`).

        Rows forget different numbers of tokens while the cache keeps one width: the columns
        that every row forgets are cut from the cache, the others are masked out in the rows
        that forget them (``mask`` 0, like left padding) and each row's ``positions`` go back
        by its ``drop``, so a row's next token sees exactly the tokens it kept, at the same
        positions as if the forgotten ones had never been fed. Those masked columns stay in
        the cache (attended to as padding) until the row leaves the batch. Needs the buffer
        cache (``mergeable``): sliding-window or linear-attention caches cannot be rewound."""
        if drop.dim() != 1 or drop.size(0) != len(self):
            raise PoiseError(f"rewind: expected {len(self)} counts (one per row), got {drop.shape}")
        if not self.cache.mergeable:
            raise PoiseError(
                "rewind: this model's KV cache cannot be rewound (not plain attention)"
            )
        drop = drop.to(self.mask.device)
        common = int(drop.min()) if drop.numel() else 0
        if common:
            self.cache.drop_last(common)
            self.mask = self.mask[:, :-common]
        width = self.mask.size(1)
        columns = torch.arange(width, device=self.mask.device)  # [width]
        kept = columns.unsqueeze(0) < (width - (drop - common)).unsqueeze(-1)  # [rows, width]
        self.mask = self.mask * kept
        self.positions = self.positions - drop.to(self.positions.device)
        self.logits = logits

    @torch.inference_mode()
    def place(self, other: DecodeState, rows: Sequence[int]) -> None:
        """Put ``other``'s rows (a batch prefilled separately) into this state's ``rows`` (one
        each, in order; rows that left, whose content is dropped), in place: unlike
        :meth:`extend`, no other row's cache is copied. ``other`` must be no wider than this
        state (:meth:`fits`). Each placed row is right-aligned and left-padded to this state's
        width, as :meth:`extend` aligns the rows it appends, so it decodes on exactly as it
        would there. Needs the buffer cache (``mergeable``)."""
        if len(rows) != len(other):
            raise PoiseError(f"place: {len(other)} rows to place, {len(rows)} places given")
        if not self.fits(other):
            raise PoiseError(
                f"place: a state of {other.mask.size(1)} columns does not fit in "
                f"{self.mask.size(1)} (not plain attention, or wider)"
            )
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.mask.device)
        width, live = self.mask.size(1), other.mask.size(1)
        self.cache.place(other.cache, index)
        mask = other.mask.new_zeros((len(other), width))
        mask[:, width - live :] = other.mask
        self.mask[index] = mask
        self.positions[index] = other.positions
        self.logits[index] = other.logits

    def fits(self, other: DecodeState) -> bool:
        """Whether :meth:`place` can take ``other``'s rows: both caches mergeable and
        ``other`` no wider than this state."""
        return (
            self.cache.mergeable
            and other.cache.mergeable
            and other.mask.size(1) <= self.mask.size(1)
        )

    @torch.inference_mode()
    def retire(self, rows: Sequence[int]) -> None:
        """``rows`` have left (they are fed padding until dropped or replaced by :meth:`place`):
        their mask keeps only their last column, so the columns before it no longer count as
        live for :meth:`trim_padding`. Their outputs are meaningless from now on."""
        if rows:
            index = torch.as_tensor(list(rows), dtype=torch.long, device=self.mask.device)
            self.mask[index, :-1] = 0

    @torch.inference_mode()
    def trim_padding(self) -> None:
        """Forget the leading cache columns that are padding in every row (a view change, no
        copy). Needs the buffer cache (``mergeable``); does nothing otherwise."""
        if not self.cache.mergeable or not len(self):
            return
        live = self.mask.any(dim=0)  # [width]
        leading = int(live.int().argmax()) if bool(live.any()) else self.mask.size(1)
        if leading:
            self.cache.trim(leading)
            self.mask = self.mask[:, leading:]

    @torch.inference_mode()
    def keep(self, rows: torch.Tensor | Sequence[int]) -> None:
        """Keep only ``rows`` (indices into the current rows, in the order given) and forget the
        cache columns that are then padding in every kept row."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.logits.device)
        self.cache.select(index)
        self.mask, self.positions, self.logits = (
            self.mask[index],
            self.positions[index],
            self.logits[index],
        )
        self.trim_padding()

    @torch.inference_mode()
    def append(self, tokens: Sequence[Sequence[int]]) -> torch.Tensor:
        """Feed each row its own new tokens (one or more, ``tokens[r]`` for row ``r``) in one
        forward pass; returns the new ``logits`` [rows, vocab].

        A row given fewer tokens than the longest is padded before its tokens: those columns
        are masked (``mask`` 0, like left padding) and stay in the cache as such, and the
        row's positions skip them, so each row sees exactly its own tokens, at the positions
        it would have had without the others."""
        if len(tokens) != len(self) or not all(len(t) for t in tokens):
            raise PoiseError(f"append: expected {len(self)} non-empty token lists (one per row)")
        rows, new = len(self), max(len(t) for t in tokens)
        device = self.mask.device
        ids = torch.zeros((rows, new), dtype=torch.long, device=device)
        fresh = torch.zeros((rows, new), dtype=self.mask.dtype, device=device)
        for r, row in enumerate(tokens):
            ids[r, new - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
            fresh[r, new - len(row) :] = 1
        # padding columns take the row's next position; they are masked out everywhere
        positions = self.positions.unsqueeze(-1) + (fresh.cumsum(dim=-1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, fresh], dim=-1)
        self.logits = self._forward(ids, self.mask, positions, self.cache.cache)
        self.positions = self.positions + fresh.sum(dim=-1)
        return self.logits

    @torch.inference_mode()
    def compact(self, rows: Sequence[int]) -> DecodeState:
        """A new state holding copies of ``rows`` (indices, in that order), each with its real
        tokens only: a row's padding and masked columns are left out, its real columns kept in
        order and right-aligned (the shorter rows left-padded), with its positions and logits.
        This state is unchanged. Needs the buffer cache (``mergeable``)."""
        if not self.cache.mergeable:
            raise PoiseError(
                "compact: this model's KV cache cannot be copied (not plain attention)"
            )
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)  # [rows, width]
        counts = mask.sum(dim=-1)  # [rows]
        width = int(counts.max()) if index.numel() else 0
        # a stable sort of each row's 0/1 mask lists its masked columns, then its real ones, each
        # in column order: the last ``width`` hold the real ones right-aligned
        columns = torch.sort(mask, dim=-1, stable=True).indices[:, mask.size(1) - width :]
        kept = torch.arange(width, device=mask.device) >= (width - counts).unsqueeze(-1)
        return DecodeState(
            self._forward,
            self.cache.gather_columns(index, columns),
            kept.to(mask.dtype),
            self.positions.index_select(0, index),
            self.logits.index_select(0, index),
            feed_forward=self._feed_forward,
        )

    @classmethod
    def gather(cls, parts: Sequence[tuple[DecodeState, int]], *, reserve: int = 0) -> DecodeState:
        """A new state whose row ``j`` is a copy of row ``parts[j][1]`` of state
        ``parts[j][0]``, all left-padded to the widest (the states are unchanged)."""
        if not parts:
            raise PoiseError("gather: no rows to gather")
        sources: dict[int, tuple[DecodeState, list[int], list[int]]] = {}
        for j, (state, row) in enumerate(parts):
            _, picked, at = sources.setdefault(id(state), (state, [], []))
            picked.append(row)
            at.append(j)
        copies = []
        for state, picked, _ in sources.values():
            index = torch.as_tensor(picked, dtype=torch.long, device=state.logits.device)
            copies.append(
                DecodeState(
                    state._forward,
                    state.cache.copy_rows(index),
                    state.mask.index_select(0, index),
                    state.positions.index_select(0, index),
                    state.logits.index_select(0, index),
                    feed_forward=state._feed_forward,
                )
            )
        gathered = copies[0]
        gathered.extend(*copies[1:], reserve=reserve)
        gathered._reorder([j for _, _, at in sources.values() for j in at])
        return gathered

    def _reorder(self, order: Sequence[int]) -> None:
        """Put the rows back in order: row ``r`` now holds what belongs at ``order[r]``."""
        if list(order) != list(range(len(order))):
            where = {j: r for r, j in enumerate(order)}
            self.keep([where[j] for j in range(len(order))])

    @torch.inference_mode()
    def extend(
        self,
        *others: DecodeState,
        reserve: int = 0,
        keep: torch.Tensor | Sequence[int] | None = None,
    ) -> None:
        """Append the rows of ``others`` (batches prefilled separately) after this state's rows.

        All are left-padded to the widest one, in one copy of the caches. ``reserve`` free
        cache columns are allocated for the steps to come. ``keep``: only these of this state's
        rows stay (as :meth:`keep`, in the same copy). ``others`` are copied, not changed."""
        if not others:
            if keep is not None:
                self.keep(keep)
            return
        index = None
        mask, positions, logits = self.mask, self.positions, self.logits
        if keep is not None:
            index = torch.as_tensor(keep, dtype=torch.long, device=self.logits.device)
            mask, positions, logits = mask[index], positions[index], logits[index]
            live = mask.any(dim=0)  # [width]: drop columns that are padding in every kept row
            leading = int(live.int().argmax()) if bool(live.any()) else mask.size(1)
            mask = mask[:, leading:]
        width = max(m.size(1) for m in (mask, *(o.mask for o in others)))

        def padded(mask: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(mask, (width - mask.size(1), 0))

        self.cache.merge([o.cache for o in others], reserve, keep=index, width=width)
        self.mask = torch.cat([padded(m) for m in (mask, *(o.mask for o in others))])
        self.positions = torch.cat([positions, *(o.positions for o in others)])
        self.logits = torch.cat([logits, *(o.logits for o in others)])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return common


class PrefixCache:
    """Prefill that reuses each key's last prefilled row: prefix caching, one entry per key.

    A caller that prefills a stream of related rows (a search's contexts, each the last one plus
    or minus a few tokens) names each row with a key. ``prefill(rows, keys)`` keeps a copy of
    each key's row, its real tokens only (:meth:`DecodeState.compact`, one copy for all the
    call's keys); the next row under that key starts from the copy
    (:meth:`DecodeState.gather`), cut back to their longest common prefix (:meth:`DecodeState.rewind`) and
    feeds only the tokens after it (:meth:`DecodeState.append`), so a row costs the model its
    new tokens, not its whole context. Rows without a usable entry are prefilled whole, in one
    forward pass; the result is the same :class:`DecodeState` ``model.prefill(rows)`` returns,
    up to the rounding of a different summation order (left padding does as much).

    An entry holds its row's keys and values (and keeps alive the copy it shares with the other
    keys of its call, until they are all replaced): ``forget(key)`` when a key's rows are done.
    Models whose cache cannot be copied (not plain attention) prefill every row whole.
    """

    def __init__(self, model: HFModel) -> None:
        self.model = model
        # key -> (its row's tokens, the compacted copy holding it, its row there)
        self._entries: dict[Hashable, tuple[list[int], DecodeState, int]] = {}
        self.reused = 0  # tokens not run through the model thanks to an entry
        self.fed = 0  # tokens run through the model

    def __len__(self) -> int:
        return len(self._entries)

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    @torch.inference_mode()
    def prefill(
        self, rows: Sequence[Sequence[int]], keys: Sequence[Hashable | None]
    ) -> DecodeState:
        """The :class:`DecodeState` of ``rows`` (token ids, each non-empty), in order; the
        first row of each key (not None) becomes that key's entry."""
        if len(rows) != len(keys):
            raise PoiseError(f"prefill: {len(rows)} rows but {len(keys)} keys")
        if not rows or not all(len(r) for r in rows):
            raise PoiseError("prefill: every row needs at least one token")
        reused: list[int] = []  # indices of rows started from an entry
        # (the copy holding the entry, its row there, the entry's tokens, tokens kept)
        starts: list[tuple[DecodeState, int, int, int]] = []
        for i, (row, key) in enumerate(zip(rows, keys, strict=True)):
            entry = self._entries.get(key) if key is not None else None
            if entry is None:
                continue
            tokens, state, at = entry
            # at least one token to feed: fresh logits
            common = min(common_prefix(tokens, row), len(row) - 1)
            if common > 0:
                reused.append(i)
                starts.append((state, at, len(tokens), common))
        started = set(reused)
        whole = [i for i in range(len(rows)) if i not in started]
        parts: list[DecodeState] = []
        if reused:
            state = DecodeState.gather([(copy, at) for copy, at, _, _ in starts])
            drop = torch.tensor([n - kept for _, _, n, kept in starts], dtype=torch.long)
            state.rewind(drop, state.logits)
            kept = [k for *_, k in starts]
            state.append([rows[i][k:] for i, k in zip(reused, kept, strict=True)])
            self.reused += sum(kept)
            self.fed += sum(len(rows[i]) - k for i, k in zip(reused, kept, strict=True))
            parts.append(state)
        if whole:
            parts.append(self.model.prefill([list(rows[i]) for i in whole]))
            self.fed += sum(len(rows[i]) for i in whole)
        state = parts[0]
        if len(parts) > 1:
            state.extend(parts[1])
        state._reorder(reused + whole)
        if state.mergeable:
            first: dict[Hashable, int] = {}
            for i, key in enumerate(keys):
                if key is not None:
                    first.setdefault(key, i)
            if first:
                copy = state.compact(list(first.values()))
                for at, (key, i) in enumerate(first.items()):
                    self._entries[key] = (list(rows[i]), copy, at)
        return state


# ----------------------------------------------------------------------------- the batcher


def stop_window(stops: Sequence[str]) -> int:
    """How many trailing tokens to decode to see a stop string completed at this step: every
    token decodes to at least one character in practice, plus slack for byte-level pieces."""
    longest = max((len(s) for s in stops if s), default=0)
    return longest + 4 if longest else 0


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def prefill_groups(lengths: Sequence[int], waste: float = PREFILL_WASTE) -> list[list[int]]:
    """Split rows (their prompt lengths) into groups prefilled separately, so that padding
    stays under ``waste`` of each group's computed positions: a left-padded prefill computes
    every padding position of every layer, which on prompts of mixed lengths can cost as much
    as the real ones. Groups hold rows of similar lengths (longest first); a group may also
    hold up to ``PREFILL_FREE_PADDING`` padding positions in all. Returns indices."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups:
            group = groups[-1]
            width = lengths[group[0]]
            computed = width * (len(group) + 1)
            if computed * (1 - waste) <= real + lengths[i] or (
                computed - real - lengths[i] <= PREFILL_FREE_PADDING
            ):
                group.append(i)
                real += lengths[i]
                continue
        groups.append([i])
        real = lengths[i]
    return groups


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` may still change: an incomplete character,
    the start of a stop string, or trailing whitespace (which a tokenizer's clean-up may drop
    once the next token arrives)."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, end), hold, -1):
            if text.endswith(stop[:size], 0, end):
                hold = size
                break
    end -= hold
    while end and text[end - 1].isspace():
        end -= 1
    return len(text) - end


@dataclass(eq=False)
class _Row:
    """One row being decoded: a chat's prompt and one sample index."""

    key: Hashable
    sample_index: int
    row_id: int  # what StepView.rows shows for this row
    prompt: list[int]
    sampling: Sampling
    uniforms: list[float] | None  # [max_new_tokens], None when greedy
    seed: int | None = None  # the seed of the row's uniforms, None when greedy
    # tokens it may generate: max_new_tokens, or fewer where the model's context ends first
    limit: int = 0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: FinishReason | None = None
    length: int = 0  # tokens that count, once finished
    streamed: str = ""
    cancelled: bool = False
    stream: bool = True  # send text as decoded (else only the final event carries it)

    def __post_init__(self) -> None:
        if self.limit <= 0:
            self.limit = self.sampling.max_new_tokens

    @property
    def done(self) -> bool:
        return self.finish is not None or self.cancelled


@dataclass(frozen=True)
class _SamplingGroup:
    """The sampling fields that shape the distribution (rows sharing them sample together)."""

    temperature: float
    top_k: int
    top_p: float

    @classmethod
    def of(cls, sampling: Sampling) -> _SamplingGroup:
        return cls(sampling.temperature, sampling.top_k, sampling.top_p)


class Batcher:
    """Continuous batching over a :class:`DecodeState` (see the module docstring).

    ``capacity``: rows decoded together. ``eager``: drop finished rows (and admit waiting ones)
    as soon as any row finishes while rows wait, for an engine's latency; otherwise rows are
    dropped once ``COMPACT_SHARE`` of the batch is done, which copies the cache less often.
    ``stream``: compute each live row's new text every step.
    """

    def __init__(
        self,
        model: HFModel,
        *,
        capacity: int,
        logits_hook: LogitsHook | None = None,
        stream: bool = False,
        eager: bool = False,
    ) -> None:
        from poise.models.hf import NucleusSearch

        self.model = model
        self.capacity = capacity
        self.hook = logits_hook
        self.stream = stream
        self.eager = eager
        self.waiting: deque[_Row] = deque()
        self.live: list[_Row] = []  # aligned with self.state's rows
        self.state: DecodeState | None = None
        self._eos = torch.tensor(model.eos_token_ids or [-1], device=model.device)
        self._nucleus: dict[_SamplingGroup, Any] = {}
        self._nucleus_class = NucleusSearch

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.live

    def add(self, row: _Row) -> None:
        self.waiting.append(row)

    def cancel(self, key: Hashable) -> None:
        """Forget every row of ``key`` (waiting or decoding); it yields no more events."""
        self.waiting = deque(r for r in self.waiting if r.key != key)
        for row in self.live:
            if row.key == key:
                row.cancelled = True
        if self.live and all(r.done for r in self.live):
            self.live, self.state = [], None

    # -- one step

    @torch.inference_mode()
    def step(self) -> list[tuple[_Row, str]]:
        """Admit waiting rows, choose one token for every live row, and feed the tokens.

        Returns ``(row, new_text)`` for rows with news: streamed text (when streaming) and every
        row that finished at this step (``row.finish`` set; :meth:`completions` and
        :meth:`events` turn them into completions and stream events).
        """
        self._admit()
        if self.state is None:
            return []
        state, live = self.state, self.live
        decoding = [i for i, r in enumerate(live) if not r.done]
        index = (
            None
            if len(decoding) == len(live)
            else torch.tensor(decoding, device=state.logits.device)
        )
        logits = state.logits if index is None else state.logits[index]  # [decoding, vocab]
        rows = [live[i] for i in decoding]
        if self.hook is not None:
            changed = self.hook(self._view(logits, rows))
            if changed is not None:
                if changed.shape != logits.shape:
                    raise PoiseError(
                        f"logits hook returned shape {tuple(changed.shape)}, "
                        f"expected {tuple(logits.shape)}"
                    )
                logits = changed.float()
        chosen = self._sample(logits, rows)  # [decoding]
        # log-prob under the (hooked) distribution at temperature 1, no truncation, [decoding]
        chosen_logprob = logits.gather(-1, chosen.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(
            dim=-1
        )
        hit_eos = torch.isin(chosen, self._eos).tolist()
        news = self._record(rows, chosen.tolist(), chosen_logprob.tolist(), hit_eos)

        # feed the tokens: rows already done (awaiting compaction) are fed padding
        if index is None:
            feed = chosen
        else:
            feed = chosen.new_full((len(live),), self.model.pad_token_id)
            feed[index] = chosen
        done = sum(r.done for r in live)
        if done == len(live):
            self.state, self.live = None, []
        else:
            if done and (done >= COMPACT_SHARE * len(live) or (self.eager and bool(self.waiting))):
                kept = [i for i, r in enumerate(live) if not r.done]
                kept_index = torch.tensor(kept, dtype=torch.long, device=feed.device)
                state.keep(kept_index)
                feed = feed[kept_index]
                self.live = [live[i] for i in kept]
            state.step(feed)
            waiting = [i for i, r in enumerate(self.live) if r.done]
            if waiting:
                state.hold(waiting)
        return news

    def _admit(self) -> None:
        free = self.capacity - sum(not r.done for r in self.live)
        if not self.waiting or free <= 0:
            return
        if self.state is not None and not self.state.mergeable:
            return  # this model's cache cannot merge: the next rows start a new batch
        admitted = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        reserve = max(r.limit for r in (*admitted, *self.live))
        # rows with the same prompt (the n samples of a chat) are prefilled once and the cache
        # copied to each of them: a prompt's prefill is computed once, not n times
        sharing: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(admitted):
            sharing.setdefault(tuple(r.prompt), []).append(i)
        owners = list(sharing.values())  # [unique prompt] -> its rows in ``admitted``
        groups = prefill_groups([len(admitted[o[0]].prompt) for o in owners])
        if len(groups) > 1 and not self.model.prefill_merges:
            groups = [list(range(len(owners)))]
        states, rows = [], []
        for g in groups:
            state = self.model.prefill([admitted[owners[u][0]].prompt for u in g], reserve=reserve)
            copies = [k for k, u in enumerate(g) for _ in owners[u]]
            if len(copies) > len(g):
                state.keep(copies)
            states.append(state)
            rows += [admitted[i] for u in g for i in owners[u]]
        keep = None
        if self.state is None:
            self.state, self.live = states[0], rows
            states = states[1:]
        else:
            # rows already finished leave in the same copy of the cache as the new ones join
            kept = [i for i, r in enumerate(self.live) if not r.done]
            if len(kept) < len(self.live):
                keep = kept
            self.live = [*(self.live[i] for i in kept), *rows]
        if states:
            self.state.extend(*states, reserve=reserve, keep=keep)

    def _view(self, logits: torch.Tensor, rows: list[_Row]) -> StepView:
        device = logits.device
        return StepView(
            logits=logits,
            rows=torch.tensor([r.row_id for r in rows], dtype=torch.long, device=device),
            generated=torch.tensor([len(r.tokens) for r in rows], dtype=torch.long, device=device),
            tokens=RowTokens([r.tokens for r in rows], device),
        )

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """[rows] int64: each row's token, sampled with its own ``Sampling`` and uniforms."""
        from poise.models.hf import sample_tokens

        groups: dict[_SamplingGroup, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(_SamplingGroup.of(row.sampling), []).append(i)
        if len(groups) == 1:
            (group,) = groups
            return self._sample_group(logits, rows, group, sample_tokens)
        chosen = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        for group, members in groups.items():
            index = torch.tensor(members, dtype=torch.long, device=logits.device)
            chosen[index] = self._sample_group(
                logits[index], [rows[i] for i in members], group, sample_tokens
            )
        return chosen

    def _sample_group(
        self, logits: torch.Tensor, rows: list[_Row], group: _SamplingGroup, sample: Any
    ) -> torch.Tensor:
        sampling = rows[0].sampling
        if sampling.greedy:
            return logits.argmax(dim=-1)
        uniforms = torch.tensor(
            [r.uniforms[len(r.tokens)] for r in rows if r.uniforms is not None],
            dtype=torch.float32,
            device=logits.device,
        )
        nucleus = self._nucleus.setdefault(group, self._nucleus_class())
        return sample(logits, uniforms, sampling, nucleus)

    def _record(
        self, rows: list[_Row], chosen: list[int], logprobs: list[float], hit_eos: list[bool]
    ) -> list[tuple[_Row, str]]:
        checking: list[_Row] = []
        for row, token, logprob, eos in zip(rows, chosen, logprobs, hit_eos, strict=True):
            row.tokens.append(token)
            row.logprobs.append(logprob)
            if eos:
                row.finish, row.length = "stop", len(row.tokens) - 1
            elif row.sampling.stop:
                checking.append(row)
        if checking:
            tails = [r.tokens[-stop_window(r.sampling.stop) :] for r in checking]
            texts = self.model.tokenizer.batch_decode(tails, skip_special_tokens=True)
            for row, text in zip(checking, texts, strict=True):
                if any(s in text for s in row.sampling.stop if s):
                    row.finish, row.length = "stop", len(row.tokens)
        for row in rows:
            if row.finish is None and len(row.tokens) >= row.limit:
                row.finish, row.length = "length", len(row.tokens)
        news: list[tuple[_Row, str]] = [(r, "") for r in rows if r.finish is not None]
        if self.stream:
            streaming = [r for r in rows if r.finish is None and r.stream]
            if streaming:
                texts = self.model.tokenizer.batch_decode(
                    [r.tokens for r in streaming], skip_special_tokens=True
                )
                for row, text in zip(streaming, texts, strict=True):
                    text, _ = cut_at_stop(text, row.sampling.stop)
                    ready = text[: len(text) - _held_back(text, row.sampling.stop)]
                    if len(ready) > len(row.streamed) and ready.startswith(row.streamed):
                        news.append((row, ready[len(row.streamed) :]))
                        row.streamed = ready
        return news

    def completions(self, rows: Sequence[_Row]) -> list[Completion]:
        """The finished ``rows``' completions (text decoded in one batch)."""
        texts = self.model.tokenizer.batch_decode(
            [r.tokens[: r.length] for r in rows], skip_special_tokens=True
        )
        results = []
        for row, text in zip(rows, texts, strict=True):
            assert row.finish is not None
            text, stopped = cut_at_stop(text, row.sampling.stop)
            results.append(
                Completion(
                    text=text,
                    num_tokens=row.length,
                    finish_reason="stop" if stopped else row.finish,
                    token_logprobs=tuple(row.logprobs[: row.length]),
                    token_ids=tuple(row.tokens),
                )
            )
        return results

    def events(self, news: list[tuple[_Row, str]]) -> list[StreamEvent]:
        """Stream events for a step's news: finished rows carry their completion and the rest
        of their text."""
        finished = [r for r, _ in news if r.finish is not None and not r.cancelled]
        completions = dict(zip(map(id, finished), self.completions(finished), strict=True))
        events = []
        for row, text in news:
            if row.cancelled:
                continue
            completion = completions.get(id(row))
            if completion is None:
                events.append(StreamEvent(row.key, row.sample_index, text))
                continue
            rest = completion.text[len(row.streamed) :]
            if not completion.text.startswith(row.streamed):  # a tokenizer rewrote its past
                rest = ""
            events.append(StreamEvent(row.key, row.sample_index, rest, completion))
        return events


def make_rows(
    key: Hashable,
    chat: Chat | Sequence[int],
    prompt: list[int],
    sampling: Sampling,
    row_ids: Sequence[int],
    *,
    room: int | None = None,
) -> list[_Row]:
    """``sampling.n`` rows of one chat (or raw prompt of token ids), each seeded as ``generate``
    (or ``complete``) seeds it. ``room``: the tokens left in the model's context after the
    prompt (>= 1), where a row stops if ``max_new_tokens`` would run past it."""
    from poise.models.hf import row_seed

    limit = sampling.max_new_tokens if room is None else min(sampling.max_new_tokens, room)
    rows = []
    for sample, row_id in zip(range(sampling.n), row_ids, strict=True):
        uniforms = seed = None
        if not sampling.greedy:
            seed = row_seed(sampling.seed, chat, sample)
            generator = torch.Generator().manual_seed(seed)
            uniforms = torch.rand(sampling.max_new_tokens, generator=generator).tolist()
        rows.append(_Row(key, sample, row_id, prompt, sampling, uniforms, seed, limit=limit))
    return rows


# ----------------------------------------------------------------------------- the engine


class HFEngine:
    """A continuous batch on an ``HFModel`` (the :class:`poise.models.base.Engine` protocol).

    Driven from one thread: ``add`` / ``cancel`` between ``step`` calls. Each ``step`` prefills
    the requests added since the last one (as far as ``capacity`` rows allow; the rest wait),
    decodes one token for every live row in one forward pass, and returns that step's events.
    A request of ``sampling.n`` rows yields events with sample indices ``0..n-1``; its
    completions equal ``generate``'s for the same chat and sampling. ``StepView.rows`` shows
    engine row ids, numbered from 0 in the order rows were added.
    """

    def __init__(
        self,
        model: HFModel,
        *,
        logits_hook: LogitsHook | None = None,
        capacity: int | None = None,
    ) -> None:
        self.model = model
        self._batcher = model._batcher(
            logits_hook, stream=True, eager=True, capacity=capacity or model.batch_size
        )
        self._remaining: dict[Hashable, int] = {}  # request -> rows not finished
        self._next_row = 0

    def add(self, key: Hashable, chat: Chat, sampling: Sampling, *, stream: bool = True) -> None:
        """Queue a request; its rows join the batch at the next ``step``. With ``stream=False``
        its text is not decoded step by step: its final events carry the whole text."""
        if key in self._remaining:
            raise PoiseError(f"engine: request {key!r} is already running")
        (prompt,) = self.model._encode_prompts([chat])
        context = self.model.context_length
        if context is not None and len(prompt) + sampling.max_new_tokens > context:
            # refused here, alone: a prefill past the context would fail the whole batch's step
            raise ContextLengthError(context, len(prompt), sampling.max_new_tokens, at_least=False)
        ids = range(self._next_row, self._next_row + sampling.n)
        self._next_row += sampling.n
        for row in make_rows(key, chat, prompt, sampling, ids):
            row.stream = stream
            self._batcher.add(row)
        self._remaining[key] = sampling.n

    def cancel(self, key: Hashable) -> None:
        """Drop a request's rows (waiting or decoding); unknown keys are ignored."""
        if self._remaining.pop(key, None) is not None:
            self._batcher.cancel(key)

    def step(self) -> list[StreamEvent]:
        """Advance every live row by one token; the events of this step."""
        events = self._batcher.events(self._batcher.step())
        for event in events:
            if event.completion is not None:
                self._remaining[event.key] -= 1
                if not self._remaining[event.key]:
                    del self._remaining[event.key]
        return events

    @property
    def idle(self) -> bool:
        return self._batcher.idle
