"""Lazy tensor sources: a model folder's safetensors (single or sharded), or a peft LoRA folder
seen as the full weights it would give on its base.

A source reads nothing until :meth:`get` is called for one tensor name, so merging holds at most
one tensor per model at a time. Only safetensors are read (a pickle checkpoint is refused).
"""

from __future__ import annotations

import json
import math
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

import torch

from poise.errors import PoiseError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# safetensors header dtype codes of the float types (others are read to learn their dtype)
_HEADER_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


class TensorSource(Protocol):
    """What the executor reads from: names, shapes and one tensor at a time."""

    path: Path
    label: str

    def keys(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> torch.dtype: ...
    def get(self, name: str) -> torch.Tensor: ...
    def close(self) -> None: ...


class SafetensorsFolder:
    """A Hugging Face model folder's weights, read lazily (``model.safetensors`` or the shards
    listed in ``model.safetensors.index.json``)."""

    def __init__(self, path: Path, label: str | None = None) -> None:
        self.path = path
        self.label = label or str(path)
        if not path.is_dir():
            raise PoiseError(f"model {self.label!r}: {path} is not a folder")
        index = path / INDEX_NAME
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise PoiseError(f"{index}: not a safetensors index ({exc})") from None
            if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise PoiseError(
                    f"{index}: not a safetensors index (its weight_map is not a mapping of "
                    "tensor names to file names)"
                )
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in path.glob("*.safetensors"))
            if not files:
                pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
                hint = f" (found {pickles[0]}: pickle checkpoints are not read)" if pickles else ""
                raise PoiseError(f"model {self.label!r}: no safetensors weights in {path}{hint}")
            weight_map = {}
        self._stack = ExitStack()
        self._handles: dict[str, Any] = {}
        for name in files:
            file = path / name
            if not file.is_file():
                raise PoiseError(f"{index}: lists {name}, which is missing")
            self._handles[name] = _open_safetensors(
                self._stack, file, f"model {self.label!r}", device="cpu"
            )
        if not weight_map:
            for name, handle in self._handles.items():
                for key in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                    weight_map[key] = name
        self._where = weight_map
        self._order = list(weight_map)

    def keys(self) -> list[str]:
        return list(self._order)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of ``name`` (from the header for float types)."""
        code = self._handles[self._where[name]].get_slice(name).get_dtype()
        return _HEADER_DTYPES.get(code) or self.get(name).dtype

    def get(self, name: str) -> torch.Tensor:
        tensor: torch.Tensor = self._handles[self._where[name]].get_tensor(name)
        return tensor

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def close(self) -> None:
        self._stack.close()


_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$"
)


PEFT_DEFAULT_LORA_ALPHA = 8  # peft.LoraConfig's lora_alpha default (peft 0.21)


class LoraFolder:
    """A peft LoRA folder applied to its base: ``W' = W + scaling * B @ A`` for every adapted
    module, the base's tensor elsewhere (so ``W' - W`` is the LoRA's task vector).

    ``scaling = lora_alpha / r`` (``r`` read from the A matrix, so ``rank_pattern`` holds) (``lora_alpha / sqrt(r)`` with ``use_rslora``; Hu et al.,
    arXiv 2106.09685 sec. 4.1; rsLoRA arXiv 2312.03732); ``fan_in_fan_out`` adapters are
    transposed. Embedding LoRAs, DoRA and extra trained modules are refused with a clear error.
    """

    def __init__(self, path: Path, base: SafetensorsFolder, label: str | None = None) -> None:
        self.path = path
        self.label = label or str(path)
        self.base = base
        try:
            config = json.loads((path / ADAPTER_CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise PoiseError(f"{path / ADAPTER_CONFIG}: cannot read ({exc})") from None
        if not isinstance(config, dict) or not isinstance(config.get("r"), int):
            raise PoiseError(f"{path / ADAPTER_CONFIG}: not a peft LoRA config (no integer 'r')")
        if config.get("peft_type", "LORA") != "LORA":
            raise PoiseError(f"{path}: peft type {config.get('peft_type')!r} is not a LoRA")
        if config.get("use_dora"):
            raise PoiseError(f"{path}: DoRA adapters cannot be read as task vectors")
        rank = int(config["r"])
        # peft's LoraConfig default (8) where the key is missing, as peft would load the folder
        alpha = float(config.get("lora_alpha", PEFT_DEFAULT_LORA_ALPHA))
        self.fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
        self.alpha = alpha
        self.scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        self._alpha_pattern: dict[str, float] = config.get("alpha_pattern") or {}
        self._use_rslora = bool(config.get("use_rslora"))
        weights = path / "adapter_model.safetensors"
        if not weights.is_file():
            raise PoiseError(f"{path}: no adapter_model.safetensors (pickle adapters are not read)")
        self._stack = ExitStack()
        self._handle = _open_safetensors(self._stack, weights, f"LoRA {self.label!r}")
        self._pairs: dict[str, dict[str, str]] = {}
        for key in self._handle.keys():  # noqa: SIM118 - a safetensors handle
            match = _LORA_KEY.match(key)
            if match is None:
                raise PoiseError(
                    f"{weights}: tensor {key!r} is not a LoRA A/B matrix "
                    "(embedding LoRAs and modules_to_save are not supported)"
                )
            self._pairs.setdefault(f"{match['module']}.weight", {})[match["ab"]] = key
        for name, pair in self._pairs.items():
            if set(pair) != {"A", "B"}:
                raise PoiseError(f"{weights}: {name} has lora_{next(iter(pair))} only")
            if name not in base:
                raise PoiseError(f"{path}: adapts {name!r}, which the base {base.label} lacks")

    def keys(self) -> list[str]:
        return self.base.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        """The base's stored dtype (what a merged-and-saved model would store)."""
        return self.base.dtype(name)

    def _scaling(self, name: str, rank: int) -> float:
        """peft's per-module alpha (``alpha_pattern``, matched on the module name's tail as
        peft's ``get_pattern_key`` matches it, the pattern a group: ``a|b`` is either)."""
        module = name.removesuffix(".weight")
        alpha = self.alpha
        for pattern, value in self._alpha_pattern.items():
            if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
                alpha = float(value)
                break
        return alpha / (math.sqrt(rank) if self._use_rslora else rank)

    def delta(self, name: str) -> torch.Tensor | None:
        """The adapter's update of ``name`` (``[out, in]``), or None where it adapts nothing."""
        pair = self._pairs.get(name)
        if pair is None:
            return None
        a = self._handle.get_tensor(pair["A"]).to(torch.float32)  # [r, in]
        b = self._handle.get_tensor(pair["B"]).to(torch.float32)  # [out, r]
        delta = self._scaling(name, a.shape[0]) * (b @ a)
        return delta.T if self.fan_in_fan_out else delta

    def get(self, name: str) -> torch.Tensor:
        """``W + scaling * B @ A`` for an adapted module, in float32 (float64 for a float64
        base), not rounded back to the base's dtype: rounded to bfloat16 the task vector
        ``W' - W`` would carry the rounding error of ``W`` (about ``2^-9 |W|``, as large as a
        typical LoRA update) and would no longer be low-rank. Other tensors: the base's."""
        weight = self.base.get(name)
        delta = self.delta(name)
        if delta is None:
            return weight
        work = torch.float64 if weight.dtype == torch.float64 else torch.float32
        return weight.to(work) + delta.to(work)

    def close(self) -> None:
        self._stack.close()


def _open_safetensors(stack: ExitStack, file: Path, what: str, **kwargs: Any) -> Any:
    """A safetensors handle on ``file``, closed with ``stack``; a file that is not safetensors
    (truncated, a Git LFS pointer, another format) is one line naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        return stack.enter_context(safe_open(str(file), framework="pt", **kwargs))
    except (SafetensorError, OSError) as exc:
        stack.close()
        raise PoiseError(f"{what}: {file} is not a readable safetensors file ({exc})") from None


def is_lora_folder(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()
