"""Read the activations of labelled examples, split by item, sweep the layers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from poise.errors import PoiseError
from poise.models.base import LanguageModel
from poise.probes.data import Example
from poise.probes.linear import LinearProbe
from poise.probes.metrics import auroc_interval

__all__ = [
    "LayerResult",
    "collect",
    "layer_sweep",
    "not_finite",
    "require_activations",
    "split_by_group",
]


def require_activations(what: str, model: LanguageModel) -> Any:
    """The model, typed for ``hidden_states``, after checking its declared capability."""
    if not model.capabilities.activations:
        raise PoiseError(
            f"{what} needs a model that exposes its activations (capabilities.activations), and "
            f"{model.name!r} does not: use a local Hugging Face model (hf backend)"
        )
    return model


def collect(
    model: LanguageModel,
    examples: Sequence[Example],
    *,
    chunk: int = 64,
    progress: Callable[[int], None] | None = None,
    upto: int | None = None,
) -> torch.Tensor:
    """[rows, layers + 1, hidden] float32: each example's states, at the last prompt token
    (no continuation) or averaged over its continuation's tokens; layers ``0..upto`` only when
    ``upto`` is given (the forward pass stops there)."""
    backend = require_activations("a probe", model)
    # checked over every row, not per chunk: chunks of each kind would be read at different
    # positions (the last prompt token, the answer's mean) and stacked as one feature set
    with_answer = {e.continuation is not None for e in examples}
    if len(with_answer) > 1:
        raise PoiseError("probe data mixes rows with and without continuations")
    parts: list[torch.Tensor] = []
    for start in range(0, len(examples), chunk):
        batch = examples[start : start + chunk]
        if with_answer == {True}:
            states = backend.hidden_states(
                [e.chat for e in batch],
                [str(e.continuation) for e in batch],
                reduce="mean",
                upto=upto,
            )
        else:
            states = backend.hidden_states([e.chat for e in batch], upto=upto)
        parts.append(states)
        if progress is not None:
            progress(len(batch))
    return torch.cat(parts, dim=0)


def not_finite(states: torch.Tensor) -> tuple[list[int], list[int]]:
    """(rows, layers) of ``states`` [rows, layers, hidden] holding a NaN or an infinity (a
    float16 overflow): a probe fitted on them is NaN, and a NaN score is never above a
    threshold, so such rows are refused rather than scored."""
    bad = ~torch.isfinite(states)  # [rows, layers, hidden]
    rows = torch.nonzero(bad.any(dim=2).any(dim=1)).flatten().tolist()
    layers = torch.nonzero(bad.any(dim=2).any(dim=0)).flatten().tolist()
    return rows, layers


def split_by_group(
    groups: Sequence[str], *, test_fraction: float = 0.3, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Row indices (train, test): a group goes to test when a stable hash of (seed, group)
    falls under ``test_fraction``, so every row of an item lands on the same side and the split
    does not depend on the order or the other items."""
    train: list[int] = []
    test: list[int] = []
    for index, group in enumerate(groups):
        digest = hashlib.sha256(f"{seed}\0{group}".encode()).digest()
        (test if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else train).append(index)
    return train, test


@dataclass(frozen=True)
class LayerResult:
    """A probe of one layer, fitted on the train rows and measured on the test rows."""

    layer: int
    accuracy: float  # at logit 0
    auroc: float
    auroc_low: float
    auroc_high: float
    train_rows: int
    test_rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_sweep(
    features: torch.Tensor,
    labels: torch.Tensor,
    train: Sequence[int],
    test: Sequence[int],
    *,
    l2: float = 10.0,
    groups: Sequence[Hashable] | None = None,
) -> list[LayerResult]:
    """One probe per layer of ``features`` [rows, layers + 1, hidden]; test accuracy and AUROC
    (DeLong 95% interval) of each. ``groups`` (one per row, the item each row belongs to):
    several rows of one item are not independent, and the interval is Obuchowski's for
    clustered data (:func:`poise.probes.metrics.auroc_interval`)."""
    y = labels.long()
    if not train or not test:
        raise PoiseError(f"probe: the split left {len(train)} train and {len(test)} test rows")
    for name, rows in (("train", train), ("test", test)):
        if len(set(y[list(rows)].tolist())) < 2:
            raise PoiseError(f"probe: the {name} split has only one class; add more items")
    results: list[LayerResult] = []
    for layer in range(features.shape[1]):
        probe = LinearProbe.fit(features[train, layer], y[train], layer=layer, model=None, l2=l2)
        scores = probe.score(features[test, layer])  # [test]
        truth = y[test]
        accuracy = float(((scores > 0).long() == truth).double().mean())
        held_groups = None if groups is None else [groups[i] for i in test]
        area, low, high = auroc_interval(scores.tolist(), truth.tolist(), held_groups)
        results.append(LayerResult(layer, accuracy, area, low, high, len(train), len(test)))
    return results
