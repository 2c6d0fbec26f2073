"""The streaming executor: merge tensor by tensor, write sharded safetensors.

Memory: for each weight name the executor reads that tensor from every input (lazily, from the
safetensors files), merges it, and keeps the result in the current output shard; a shard is
written once it reaches ``shard_size`` bytes. Peak memory is therefore about the inputs' largest
tensor times (models + 1), its float32 working copies, plus one output shard: it does not grow
with the size of the model.

Vocabulary sizes. Embedding and LM-head matrices (``[vocab, hidden]``) may differ in their
first dimension between models when a specialist added tokens. The output takes the vocabulary
of the *tokenizer source* (the base by default). Each input is cut to that many rows, and rows
it lacks are filled from the base (so their task vector is zero there), or from the tokenizer
source when there is no base; rows the base itself lacks are filled from the tokenizer source,
so the output keeps the tokenizer source's rows for the tokens only it has. This assumes the
tokenizers share ids on their common prefix (tokens added at the end), as when every specialist
extends one base tokenizer; poise does not remap tokens by string. Any other shape mismatch is
refused, naming the tensor and the shapes.

Same architecture. Before anything is read or written, :func:`check_inputs` compares every input
with the base (or, without one, the first model): the ``architectures`` of their ``config.json``,
their tensor names and their shapes (the vocabulary axis aside). A model with more or fewer
layers, or a different width, is refused with one line naming both models and the first
differing tensors, rather than merged on the reference's names with the rest silently dropped.

The output folder appears complete or not at all: everything is written into a hidden sibling
folder that is renamed into place at the end.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from poise.errors import PoiseError, file_on_the_way, read_json_object
from poise.merge.methods import MergeMethod
from poise.merge.sources import INDEX_NAME, SINGLE_NAME, LoraFolder, TensorSource
from poise.merge.sparsify import HALF_DTYPES
from poise.merge.task_arithmetic import tensor_seed

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
OptionsFn = Callable[[str], Mapping[str, Any]]

# Files copied from the tokenizer source into the output folder.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
POISE_JSON = "poise.json"
# poise.json fields a merge keeps from its tokenizer source (they go with its chat template)
CHAT_META = ("default_system_prompt", "system_prompt_in_template")
VOCAB_HINTS = ("embed", "lm_head", "wte", "word_embeddings", "output.weight")
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


@dataclass
class MergeJob:
    """Everything the executor needs: the method, the inputs, and per-tensor options."""

    method: MergeMethod
    models: list[TensorSource]  # the T merged models (not the base)
    base: TensorSource | None
    options_for: OptionsFn  # tensor name -> the method's options for that tensor
    tokenizer_source: TensorSource | None = None  # whose vocabulary the output has
    dtype: torch.dtype | None = None  # output dtype; None keeps the base's (or first model's)
    seed: int = 0
    # the config's ``dtype``, mergekit's compute dtype: float32 / float64 there give a method
    # its inputs in that dtype, so half-precision checkpoints are not ranked as mergekit ranks
    # them in their own dtype (poise.merge.task_arithmetic, "Half-precision inputs")
    compute_dtype: torch.dtype | None = None

    @property
    def reference(self) -> TensorSource:
        return self.tokenizer_source or self.base or self.models[0]

    def names(self) -> list[str]:
        """The output's tensors: the reference's, less those the merge may leave out
        (:func:`ignorable`) that some input does not store."""
        stored = [set(source.keys()) for source in self.inputs()]
        reference = self.reference.keys()  # a TensorSource's tensor names, in file order
        return [
            name
            for name in reference
            if not (ignorable(name, self.reference) and any(name not in s for s in stored))
        ]

    def inputs(self) -> list[TensorSource]:
        return ([self.base] if self.base is not None else []) + list(self.models)


def count_layers(names: Sequence[str]) -> int:
    """The number of layers (``...layers.<i>.``) among tensor names."""
    indices = [int(m.group(1)) for n in names if (m := LAYER_INDEX.search(n))]
    return max(indices) + 1 if indices else 0


def vocab_resizable(name: str, have: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Whether ``have`` may be brought to ``want`` along the vocabulary (first) axis."""
    return (
        any(hint in name for hint in VOCAB_HINTS)
        and len(have) == len(want)
        and have[1:] == want[1:]
    )


def check_inputs(job: MergeJob) -> None:
    """Refuse inputs that are not one architecture (see the module docstring): every model must
    have the tensor names and shapes of the base (or of the first model without a base). Reads
    the ``config.json`` files and the safetensors headers only."""
    anchor = job.base if job.base is not None else job.models[0]
    role = "base" if job.base is not None else "first model"
    anchor_keys = anchor.keys()
    anchor_set = set(anchor_keys)
    anchor_arch = _architectures(anchor)
    for model in job.models:
        if model is anchor:
            continue
        where = f"model {model.label!r} and the {role} {anchor.label!r}"
        arch = _architectures(model)
        if arch and anchor_arch and arch != anchor_arch:
            raise PoiseError(
                f"{where} are different architectures ({', '.join(arch)} against "
                f"{', '.join(anchor_arch)}); merged models must share one"
            )
        keys = model.keys()
        key_set = set(keys)
        differ = [n for n in keys if n not in anchor_set] + [
            n for n in anchor_keys if n not in key_set
        ]
        ignored = [n for n in differ if ignorable(n, job.reference)]
        if ignored:
            log.info(
                "%s left out of the merge: %s and the %s %s do not both store it",
                _some(ignored),
                model.label,
                role,
                anchor.label,
            )
        extra = [n for n in keys if n not in anchor_set and n not in ignored]
        missing = [n for n in anchor_keys if n not in key_set and n not in ignored]
        if extra or missing:
            if extra:
                what = (
                    f"model {model.label!r} has {len(extra)} tensor(s) the {role} "
                    f"{anchor.label!r} lacks ({_some(extra)})"
                )
            else:
                what = (
                    f"model {model.label!r} lacks {len(missing)} tensor(s) the {role} "
                    f"{anchor.label!r} has ({_some(missing)})"
                )
            layers, anchor_layers = count_layers(keys), count_layers(anchor_keys)
            depth = f"; {layers} layers against {anchor_layers}" if layers != anchor_layers else ""
            raise PoiseError(f"{what}{depth}: merged models must have the same tensors")
        for name in anchor_keys:
            if name in ignored:
                continue
            have, want = model.shape(name), anchor.shape(name)
            if have != want and not vocab_resizable(name, have, want):
                raise PoiseError(
                    f"tensor {name!r}: model {model.label!r} has shape {list(have)}, "
                    f"the {role} {anchor.label!r} has {list(want)}: merged models must have "
                    "the same shapes (the vocabulary axis aside)"
                )


def ignorable(name: str, reference: TensorSource) -> bool:
    """A tensor some inputs may store and others not, which the merge then leaves out of the
    output: a rotary-embedding buffer (``inv_freq``, which older checkpoints saved; transformers
    computes it), or the LM head when the reference (whose ``config.json`` the output gets) ties
    it to the embeddings (a fine-tune of a tied model saved with its head, e.g. a Qwen2.5-0.5B
    fine-tune): the output then reads its head from the merged embeddings."""
    if name.endswith("rotary_emb.inv_freq"):
        return True
    return name.endswith(("lm_head.weight", "embed_out.weight")) and _ties_embeddings(reference)


def _ties_embeddings(source: TensorSource) -> bool:
    """Whether a source's ``config.json`` ties the LM head to the embeddings; a config that
    does not say is taken as untied (most architectures' default in transformers: Llama,
    Mistral, Qwen2), so an LM head one model lacks is refused rather than left out."""
    folder = source.base.path if isinstance(source, LoraFolder) else source.path
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    text = config.get("text_config")
    tie = config.get("tie_word_embeddings", False)
    if isinstance(text, dict) and "tie_word_embeddings" in text:
        tie = text["tie_word_embeddings"]
    return bool(tie)


def _some(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _architectures(source: TensorSource) -> list[str]:
    """The ``architectures`` of a source's ``config.json`` (a LoRA's are its base's), or []."""
    folder = source.base.path if isinstance(source, LoraFolder) else source.path
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # no readable config: the tensor names and shapes decide
    arch = config.get("architectures") if isinstance(config, dict) else None
    return [str(a) for a in arch] if isinstance(arch, list) else []


def merge_tensor(job: MergeJob, name: str) -> torch.Tensor:
    """The merged tensor ``name`` (``[*shape]`` of the reference model)."""
    reference = job.reference.get(name)
    if not reference.is_floating_point():
        return reference  # integer buffers are copied
    target_shape = tuple(reference.shape)
    base: torch.Tensor | None = None
    if job.base is job.reference:
        base = reference  # read once
    elif job.base is not None:
        # rows the base lacks (tokens the tokenizer source added) come from the tokenizer
        # source, so every task vector is 0 there and the output keeps its rows as trained
        base = _fit(job.base, name, target_shape, reference, job)
    filler = base if base is not None else reference
    tensors = [_fit(m, name, target_shape, filler, job) for m in job.models]
    options = dict(job.options_for(name))
    if job.method.random:
        options["seed"] = tensor_seed(int(options.get("seed", job.seed)), name)
    elif "seed" in job.method.parameters():  # a randomized SVD (TSV-M, RESM): the config's
        options.setdefault("seed", job.seed)  # top-level seed, unless the method names its own
    # the output's dtype: the config's, else the base's stored one (the first model's without a
    # base); a LoRA source gives float32 and a vocabulary fill may widen, neither changes it
    anchor = job.base if job.base is not None else job.models[0]
    out_dtype = job.dtype if job.dtype is not None else anchor.dtype(name)
    # a method returns its base's dtype (its first model's without one): widened where the
    # output is wider, so a float32 merge of a bfloat16 base is not rounded to bfloat16 first
    if base is not None:
        base = base.to(torch.promote_types(base.dtype, out_dtype))
    if tensors:
        tensors[0] = tensors[0].to(torch.promote_types(tensors[0].dtype, out_dtype))
    if job.compute_dtype is not None and job.compute_dtype not in HALF_DTYPES and base is not None:
        # mergekit casts every input to its ``dtype`` before it subtracts: with float32 its task
        # vectors are exact differences, not rounded to the checkpoints' bfloat16. A float32
        # base is enough to tell the method so (its inputs' common dtype is then float32), and
        # it makes that copy of the base anyway; the models stay as stored (a float32 copy of
        # each at once cost 0.3 GB more on a 134M model)
        base = base.to(torch.promote_types(base.dtype, job.compute_dtype))
    merged = job.method(tensors, base, **options)
    return merged.to(out_dtype)


def _fit(
    source: TensorSource,
    name: str,
    shape: tuple[int, ...],
    filler: torch.Tensor | None,
    job: MergeJob,
) -> torch.Tensor:
    """``source``'s tensor ``name`` brought to ``shape`` along the vocabulary (first) axis."""
    try:
        have = source.shape(name)
    except KeyError:
        raise PoiseError(f"model {source.label!r} has no tensor {name!r}") from None
    tensor = source.get(name)
    if have == shape:
        return tensor
    if not vocab_resizable(name, have, shape):
        raise PoiseError(
            f"tensor {name!r}: model {source.label!r} has shape {list(have)}, "
            f"the reference {job.reference.label!r} has {list(shape)}"
        )
    rows = shape[0]
    if have[0] >= rows:
        return tensor[:rows]
    fill = filler if filler is not None else torch.zeros(shape, dtype=tensor.dtype)
    # the wider of the two dtypes, so neither the rows kept nor the rows filled are rounded
    out = fill.to(torch.promote_types(fill.dtype, tensor.dtype), copy=True)
    out[: have[0]] = tensor
    return out


def write_merge(
    job: MergeJob,
    out: Path,
    *,
    shard_size: int = 5 * 1024**3,
    records: Mapping[str, str] | None = None,
    copy_from: Path | None = None,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Merge tensor by tensor into ``out`` (sharded safetensors + index), copy the config and
    tokenizer files from ``copy_from`` and write ``records`` (file name -> text). Returns the
    weight files written. ``out`` must not exist or be empty; it appears only when complete."""
    from safetensors.torch import save_file

    out = Path(out)
    check_output(out)
    check_inputs(job)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        names = job.names()
        shards: list[list[str]] = []
        shard: dict[str, torch.Tensor] = {}
        shard_bytes = 0
        total_bytes = 0

        def flush() -> None:
            nonlocal shard, shard_bytes
            if not shard:
                return
            shards.append(list(shard))
            save_file(shard, str(tmp / f"shard-{len(shards):05d}.tmp"), metadata={"format": "pt"})
            shard, shard_bytes = {}, 0

        written_dtype: torch.dtype | None = job.dtype  # what config.json says (below)
        for i, name in enumerate(names):
            tensor = merge_tensor(job, name).contiguous()
            if written_dtype is None and tensor.is_floating_point():
                written_dtype = tensor.dtype  # the base's: weights take its dtype
            size = tensor.numel() * tensor.element_size()
            if shard and shard_bytes + size > shard_size:
                flush()
            shard[name] = tensor
            shard_bytes += size
            total_bytes += size
            if progress is not None:
                progress(i + 1, len(names))
        flush()
        files = _name_shards(tmp, shards, total_bytes)
        if copy_from is not None:
            # the dtype written, also when the config comes from a tokenizer source whose own
            # dtype is another than the base's
            _copy_model_files(copy_from, tmp, written_dtype)
        for file_name, text in (records or {}).items():
            (tmp / file_name).write_text(text, encoding="utf-8")
        _as_if_created(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def check_output(out: Path) -> None:
    """``out`` must be a new folder or an empty one."""
    if out.is_dir():
        if any(out.iterdir()):
            raise PoiseError(f"output folder {out} exists and is not empty")
    else:
        check_folder_path(out)


def check_folder_path(out: Path) -> None:
    """``out`` must be a folder or a path where one can be made: no file at it or on the way."""
    if out.is_dir():
        return
    if out.exists() or out.is_symlink():
        kind = "file" if out.is_file() else "path"
        raise PoiseError(f"output {out} is an existing {kind}, not a folder; give a new folder")
    blocker = file_on_the_way(out)
    if blocker is not None:
        raise PoiseError(f"output {out}: cannot make the folder, {blocker} is a file")


def _as_if_created(folder: Path) -> None:
    """Give ``folder`` and its files the permissions a plain ``mkdir`` and ``open`` would have
    (0o777 / 0o666 less the umask): ``mkdtemp`` makes the staging folder private (0o700) and some
    writers make private files, which would leave a merged model unreadable to anyone else."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _copy_chat_meta(source: Path, dest: Path) -> None:
    """The tokenizer source's chat settings from its ``poise.json`` (the default system prompt,
    and whether its chat template inserts it), as a trained model keeps its source's: the
    merged model then asks exactly as the source does (the same chats, hence the same
    sampling seeds). Its other fields describe the source model, not the merge, and stay out."""
    path = source / POISE_JSON
    if not path.is_file():
        return
    meta = read_json_object(path)
    kept = {k: meta[k] for k in CHAT_META if k in meta}
    if kept:
        (dest / POISE_JSON).write_text(
            json.dumps({**kept, "merged_by": "poise merge"}, indent=2) + "\n", encoding="utf-8"
        )


def _name_shards(folder: Path, shards: list[list[str]], total_bytes: int) -> list[str]:
    if len(shards) <= 1:
        if shards:
            os.replace(folder / "shard-00001.tmp", folder / SINGLE_NAME)
        return [SINGLE_NAME] if shards else []
    files = []
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        file_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        os.replace(folder / f"shard-{i:05d}.tmp", folder / file_name)
        files.append(file_name)
        weight_map.update(dict.fromkeys(names, file_name))
    index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return files


def _copy_model_files(source: Path, dest: Path, dtype: torch.dtype | None) -> None:
    for file_name in MODEL_FILES:
        if (source / file_name).is_file():
            shutil.copyfile(source / file_name, dest / file_name)
    _copy_chat_meta(source, dest)
    config_path = dest / "config.json"
    if dtype is not None and config_path.is_file():
        config = json.loads(config_path.read_text())
        key = "torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"
        config[key] = str(dtype).removeprefix("torch.")
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
