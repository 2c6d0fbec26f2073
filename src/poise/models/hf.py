"""The ``hf`` backend: a Hugging Face causal LM folder (or hub id) as a ``LanguageModel``.

poise runs its own decoding loop on top of the model's forward pass (KV cache, left padding;
the loop, its cache and the token-level step live in ``poise.models.decode``) instead of calling
``model.generate``, because an audit needs guarantees that ``generate`` does not give:

- **Per-row reproducible sampling.** Each row (a chat and a sample index) draws its random
  numbers from its own ``torch.Generator``, seeded from a stable hash of (seed, chat, sample
  index). A chat's completions therefore do not depend on what else is in the batch, on the
  batch size, or on the order of the chats.
- **One uniform per row and step.** A token is drawn by inverse-CDF sampling from the filtered
  distribution with that row's uniform, so the whole batch samples in one vectorised op.
- **Log-probs of the chosen tokens** under the model's unmodified distribution (temperature 1,
  no top-k / top-p truncation), ready for likelihood-based metrics.

- **A seam at every token.** ``prefill`` / ``DecodeState.step`` for strategies that drive
  several models in lockstep, a ``logits_hook`` on ``generate`` / ``stream`` / ``engine``, text
  streamed as it is decoded, and a continuous batch (rows join as others finish) under all.

Everything a user can get wrong (missing folder, pickle-only checkpoint, no chat template, bad
device or dtype) is checked before any weights are loaded.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from poise.config import Sampling
from poise.errors import PoiseError, located, read_json_object
from poise.models.base import (
    Capabilities,
    Chat,
    Completion,
    LogitsHook,
    ModelBase,
    NoChatTemplateError,
    SequenceLogprobs,
    StreamEvent,
    TokenLogprobs,
    chat_template_kwargs_label,
    check_chat_template_kwargs,
)
from poise.models.context import (
    ContextLengthError,
    config_context_length,
    template_refusal,
)
from poise.models.decode import Batcher, DecodeState, HFEngine, KVCache, make_rows

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.bin", "*.pt", "*.pth", "*.ckpt")
# What a tokenizer without a chat template (a base model's) is refused with.
_NO_CHAT_TEMPLATE = (
    "the tokenizer has no chat template (tokenizer_config.json 'chat_template' or "
    "chat_template.jinja)"
)
# Files besides the weights that change what a folder generates: part of the fingerprint.
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
POISE_JSON = "poise.json"

_MIB = 1 << 20
# Files up to this size are hashed whole; bigger ones by size, mtime and their first/last MiB.
_FULL_HASH_LIMIT = 16 * _MIB
# A hub id: "name" or "owner/name" with the characters the hub allows.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# Budget for a scoring forward pass's kept logits ([rows, kept positions, vocab] float32).
_SCORE_LOGIT_BUDGET = 1 << 27

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


# ----------------------------------------------------------------------------- validation


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` is shaped like a hub id ("owner/name" or "name") rather than a path."""
    return bool(_HUB_ID.match(spec)) and not Path(spec).expanduser().exists()


def hub_access(
    repo_id: str, revision: str | None = None, *, timeout: float = 3.0
) -> dict[str, Any]:
    """Extra ``from_pretrained`` options for a hub id, decided before any download is tried.

    ``{}`` when the hub is reachable (or when that cannot be probed: offline mode already set, or
    a proxy in between that answers); ``{"local_files_only": True}`` when the hub cannot be reached but the
    repository is in the local cache; otherwise a :class:`PoiseError` at once. Without this a
    machine with no network spends most of a minute in the hub client's retries before failing.
    The probe is :func:`poise.hub.hub_reachable`, shared with the hub dataset loader.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    from poise.hub import hub_reachable

    if hub_reachable(timeout) is not False:
        return {}
    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        logger.info("%s: %s cannot be reached; using the local cache", repo_id, constants.ENDPOINT)
        return {"local_files_only": True}
    raise PoiseError(
        f"{repo_id}: not in the local Hugging Face cache, and {constants.ENDPOINT} cannot be "
        "reached (no network?); download it where there is network "
        f"(hf download {repo_id}) or pass a local folder"
    )


def _looks_like_path(spec: str) -> bool:
    return (
        Path(spec).expanduser().exists()
        or spec.startswith(("/", ".", "~"))
        or "\\" in spec
        or not _HUB_ID.match(spec)
    )


def weight_files(folder: Path, *, allow_pickle: bool) -> list[Path]:
    """The weight files of a local HF folder, after checking it can be loaded safely.

    Raises ``PoiseError`` for a missing folder, a missing config.json, a pickle-only checkpoint
    (unless ``allow_pickle``), a shard index that names missing shards, or no weights at all.
    """
    if not folder.exists():
        raise PoiseError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise PoiseError(f"{folder}: not a folder (expected a Hugging Face model folder)")
    if not (folder / "config.json").is_file():
        raise PoiseError(f"{folder}: no config.json, so this is not a Hugging Face model folder")
    index = folder / SAFE_WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({str(v) for v in weight_map.values()})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise located(index, None, "not a valid safetensors index (no 'weight_map')") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise located(index, None, f"names shards that are missing: {', '.join(missing)}")
        return [index, *(folder / s for s in shards)]
    if (folder / SAFE_WEIGHTS).is_file():
        return [folder / SAFE_WEIGHTS]
    pickles = sorted({p for pattern in PICKLE_PATTERNS for p in folder.glob(pattern)})
    if pickles:
        if allow_pickle:
            logger.warning("loading pickle checkpoint(s) from %s (allow_pickle=True)", folder)
            return pickles
        names = ", ".join(p.name for p in pickles[:3])
        raise PoiseError(
            f"{folder}: only pickle checkpoints ({names}) and no safetensors weights; loading a "
            "pickle can run arbitrary code, so poise refuses it. Convert the weights to "
            "safetensors, or, if you trust the source, opt in with --model-option "
            "allow_pickle=true (Python: allow_pickle=True)"
        )
    raise PoiseError(
        f"{folder}: no weights found (expected {SAFE_WEIGHTS} or {SAFE_WEIGHTS_INDEX})"
    )


def folder_fingerprint(folder: Path, files: Sequence[Path]) -> str:
    """A short hash of a folder's config, tokenizer and weight files.

    Small files are hashed whole; big ones by size, mtime and their first and last MiB, which
    is cheap on multi-GB weights and still changes whenever a file is rewritten.
    """
    digest = hashlib.sha256()
    paths = sorted({*files, *(folder / n for n in CONFIG_FILES if (folder / n).is_file())})
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0".encode())
        with path.open("rb") as handle:
            if stat.st_size <= _FULL_HASH_LIMIT:
                digest.update(handle.read())
            else:
                digest.update(f"{stat.st_mtime_ns}\0".encode())
                digest.update(handle.read(_MIB))
                handle.seek(-_MIB, 2)
                digest.update(handle.read(_MIB))
    return digest.hexdigest()[:16]


# what a folder is for when it is not a chat model: the spec that uses it instead
_SCORER_USES = {
    "reward": "score answers with it: best_of_n(MODEL, reward={name}), deal(MODEL, reward={name})",
    "cost": "score answers with it: best_of_n(MODEL, cost={name}), deal(MODEL, cost={name})",
    "monitor": "guard a model with it: guarded(MODEL, monitor={name})",
}
_CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification")


def check_causal_lm(name: str, architectures: object, kind: object = None) -> None:
    """Refuse, with what to do instead, a folder that is not a chat model: a poise reward,
    cost or monitor folder (``poise.json``'s ``kind``), or any classifier (its config's
    ``architectures``), which ``AutoModelForCausalLM`` would load with a random LM head."""
    if isinstance(kind, str) and kind in _SCORER_USES:
        use = _SCORER_USES[kind].format(name=name)
        raise PoiseError(f"{name} is a {kind} model, not a chat model: {use}")
    if isinstance(architectures, list) and architectures:
        names = [str(a) for a in architectures]
        if all(a.endswith(_CLASSIFIER_SUFFIXES) for a in names):
            use = _SCORER_USES["reward"].format(name=name)
            raise PoiseError(
                f"{name} is a classifier ({', '.join(names)}), not a causal language model; "
                f"a one-output sequence classifier can {use}"
            )


def _folder_config(folder: Path) -> dict[str, Any]:
    """A folder's config.json, or one error that names it when it is not a JSON object."""
    return read_json_object(folder / "config.json")


def read_poise_json(folder: Path) -> dict[str, Any]:
    """The optional ``poise.json`` of a model folder ({} when absent)."""
    path = folder / POISE_JSON
    if not path.is_file():
        return {}
    data = read_json_object(path)
    prompt = data.get("default_system_prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise located(path, None, "default_system_prompt: expected a string")
    in_template = data.get("system_prompt_in_template")
    if in_template is not None and not isinstance(in_template, bool):
        raise located(path, None, "system_prompt_in_template: expected true or false")
    return data


def resolve_device(device: str) -> torch.device:
    """``auto`` is cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise PoiseError(
            f"device: unknown device {device!r} (use auto, cpu, cuda, cuda:N, mps)"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PoiseError(f"device: {device!r} was asked for but CUDA is not available")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise PoiseError(f"device: {device!r} was asked for but MPS is not available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on cuda and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        known = ", ".join(["auto", *_DTYPES])
        raise PoiseError(f"dtype: unknown dtype {dtype!r} (known: {known})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dtype_kwarg() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


# Stand-ins for a system prompt and a user message, to see what a chat template does with them.
_SYSTEM_PROBE = "poise-system-probe-7f3a"
_USER_PROBE = "poise-user-probe-2c9e"


class _FixedTemplateKwargs:
    """A tokenizer's ``apply_chat_template`` with template variables given in every call (a
    call's own keywords win). An object, not a closure, so the tokenizer still pickles (a
    ``datasets.map`` worker) and a deep copy renders with its own copy's template."""

    def __init__(self, tokenizer: Any, kwargs: Mapping[str, Any]) -> None:
        self.tokenizer = tokenizer
        self.kwargs = dict(kwargs)

    def __call__(self, conversation: Any, *args: Any, **call: Any) -> Any:
        render = type(self.tokenizer).apply_chat_template
        return render(self.tokenizer, conversation, *args, **{**self.kwargs, **call})


def fix_template_kwargs(tokenizer: Any, kwargs: Mapping[str, Any]) -> None:
    """Make every ``tokenizer.apply_chat_template`` call give the template ``kwargs`` (a call's
    own keywords win), so each place that renders a chat with this tokenizer renders it alike.
    The tokenizer is this model's own (loaded for it), so no other model sees the change."""
    tokenizer.apply_chat_template = _FixedTemplateKwargs(tokenizer, kwargs)


def template_default_system_prompt(tokenizer: Any) -> str | None:
    """The system prompt that ``tokenizer``'s chat template inserts into a chat without a system
    message, or None: Qwen2.5's "You are Qwen, created by Alibaba Cloud. ...", SmolLM2's "You
    are a helpful AI assistant named SmolLM, ...".

    The template renders [system S, user U] as ``head + S + tail``; it inserts a default D when
    [user U] renders as ``head + D + tail`` with D not blank, and it takes an empty system
    message as no system prompt when [system "", user U] renders as ``head + tail``. None when
    either does not hold (Llama 3's template writes an empty system header, which is
    ``head + tail``; Gemma's refuses a system message) or the template cannot render these chats.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    user = {"role": "user", "content": _USER_PROBE}

    def render(chat: list[dict[str, str]]) -> str:
        return str(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))

    try:
        with_system = render([{"role": "system", "content": _SYSTEM_PROBE}, user])
        without = render([user])
        empty = render([{"role": "system", "content": ""}, user])
    except Exception:  # a template that refuses a system message, or anything else: no default
        return None
    if with_system.count(_SYSTEM_PROBE) != 1:
        return None
    head, tail = with_system.split(_SYSTEM_PROBE)
    if empty != head + tail or len(without) <= len(head) + len(tail):
        return None
    if not (without.startswith(head) and without.endswith(tail)):
        return None
    inserted = without[len(head) : len(without) - len(tail)]
    return inserted if inserted.strip() else None


# ----------------------------------------------------------------------------- sampling


def row_seed(seed: int, chat: Chat | Sequence[int], sample_index: int) -> int:
    """The seed of one row's generator: a stable hash of (seed, chat, sample index); a raw
    prompt (``complete``) is hashed by its token ids."""
    ids = bool(chat) and all(isinstance(t, int) for t in chat)
    source = [int(t) for t in chat] if ids else chat  # type: ignore[arg-type]
    blob = json.dumps([seed, source, sample_index], sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(blob.encode("utf-8")).digest()[:8], "big") >> 1


def sample_tokens(
    logits: torch.Tensor,
    uniforms: torch.Tensor | None,
    sampling: Sampling,
    nucleus: NucleusSearch | None = None,
) -> torch.Tensor:
    """Choose one token per row.

    ``logits``: [batch, vocab] float32; ``uniforms``: [batch] in [0, 1), one per row (ignored when
    greedy). Filtering follows the usual order: temperature, then top-k, then top-p (nucleus
    sampling, Holtzman et al. 2019, arXiv:1904.09751, Sec. 3.1: the smallest set of most likely
    tokens whose probability mass reaches p; the most likely token is always kept). The token is
    the inverse CDF of the filtered distribution at the row's uniform. Returns [batch] int64.
    ``nucleus`` carries the top-p search state from one decoding step to the next (speed only).
    """
    if sampling.greedy or uniforms is None:
        return logits.argmax(dim=-1)
    scaled = tempered(logits, sampling.temperature)  # [batch, vocab]
    vocab = scaled.size(-1)
    order: torch.Tensor | None = None
    if 0 < sampling.top_k < vocab:
        scaled, order = scaled.topk(sampling.top_k, dim=-1)  # [batch, k], sorted descending
        probs = scaled.softmax(dim=-1)  # [batch, k], renormalised over the top k
    elif sampling.top_p < 1.0:
        search = nucleus if nucleus is not None else NucleusSearch()
        probs, order = search.candidates(scaled.softmax(dim=-1), sampling.top_p)
    else:
        probs = scaled.softmax(dim=-1)  # [batch, vocab], in vocabulary order
    kept = None
    if sampling.top_p < 1.0:
        # mass strictly before each token (probs are sorted); the first token always stays
        outside = probs.cumsum(dim=-1) - probs >= sampling.top_p  # [batch, k]
        # a top_p below float32's smallest value compares as 0 (>= 0 everywhere): the most
        # likely token must stay all the same
        outside[:, 0] = False
        probs = probs.masked_fill(outside, 0.0)
        kept = (~outside).sum(dim=-1, keepdim=True)  # [batch, 1]
    cdf = probs.cumsum(dim=-1)  # [batch, k]
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]  # [batch, 1]
    # first index whose cdf exceeds the target; zero-mass tokens can never be that index
    pick = torch.searchsorted(cdf, target, right=True)  # [batch, 1]
    limit = (kept - 1) if kept is not None else torch.full_like(pick, cdf.size(-1) - 1)
    pick = torch.minimum(pick, limit)
    chosen = order.gather(-1, pick) if order is not None else pick  # [batch, 1]
    return chosen.squeeze(-1)


def tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` after subtracting each row's largest logit ([..., vocab] ->
    [..., vocab]; the same softmax): a temperature so small that ``logits / T`` overflows
    float32 (T below about 1e-37) gave inf - inf = NaN probabilities and garbage tokens; shifted,
    the most likely token scores 0 and the rest -inf, the greedy limit of the distribution. A
    temperature that is 0 in the logits' dtype (below its smallest normal number) is that limit
    directly (0 / 0 would be NaN)."""
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    if temperature < torch.finfo(logits.dtype).tiny:
        return shifted.masked_fill(shifted < 0, float("-inf"))
    return shifted / temperature


def filtered_probs(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The distribution :func:`sample_tokens` draws a token from, as probabilities over the
    whole vocabulary: ``logits`` [..., vocab] -> [..., vocab] float32, each row summing to 1.

    The same transform in the same order: temperature, then top-k (softmax over the k most
    likely), then top-p over the probabilities sorted in decreasing order (a token stays while
    the mass strictly before it is below p; the most likely always stays), renormalised.
    Greedy sampling is the one-hot of the argmax (the first one on ties, as ``argmax``).
    Speculative decoding needs these dense probabilities of both its models
    (:mod:`poise.decoding.speculative`); ``sample_tokens`` itself avoids the full sort."""
    shape = logits.shape
    flat = logits.reshape(-1, shape[-1]).float()  # [rows, vocab]
    vocab = flat.size(-1)
    if sampling.greedy:
        onehot = torch.zeros_like(flat)
        onehot.scatter_(-1, flat.argmax(dim=-1, keepdim=True), 1.0)
        return onehot.reshape(shape)
    scaled = tempered(flat, sampling.temperature)
    order: torch.Tensor | None = None
    if 0 < sampling.top_k < vocab:
        scaled, order = scaled.topk(sampling.top_k, dim=-1)  # [rows, k], sorted descending
        probs = scaled.softmax(dim=-1)
    elif sampling.top_p < 1.0:
        probs, order = scaled.softmax(dim=-1).sort(dim=-1, descending=True)  # [rows, vocab]
    else:
        probs = scaled.softmax(dim=-1)
    if sampling.top_p < 1.0:
        outside = probs.cumsum(dim=-1) - probs >= sampling.top_p
        outside[:, 0] = False
        probs = probs.masked_fill(outside, 0.0)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    if order is not None:
        probs = torch.zeros_like(flat).scatter_(-1, order, probs)
    return probs.reshape(shape)


class NucleusSearch:
    """Finds, per decoding step, the most likely tokens of each row (sorted) that hold at least
    the top-p mass, without sorting the whole vocabulary when a top-k suffices.

    On CPU a full sort of a 32k vocabulary costs ~40x a top-64, and the nucleus of a trained
    model is usually small, so the search tries the top 64, then the top 1024, then sorts all.
    Near-flat distributions need the full sort step after step, so after a miss the next steps
    start at the size that worked and only retry the small sizes every ``retry_every`` steps.
    The nucleus always lies inside the candidates, so the chosen tokens are the same as with a
    full sort: this state only changes the cost, never the result.
    """

    SIZES = (64, 1024)

    def __init__(self, retry_every: int = 16) -> None:
        self.retry_every = retry_every
        self._start = 0
        self._calls = 0

    def candidates(self, probs: torch.Tensor, mass: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``probs``: [batch, vocab] -> (probabilities, token ids), each [batch, k]."""
        self._calls += 1
        if self._calls % self.retry_every == 0:
            self._start = 0
        vocab = probs.size(-1)
        for level in range(self._start, len(self.SIZES)):
            k = self.SIZES[level]
            if k >= vocab:
                break
            top, ids = probs.topk(k, dim=-1)  # [batch, k], sorted descending
            if bool((top.sum(dim=-1) >= mass).all()):
                self._start = level
                return top, ids
        self._start = len(self.SIZES)
        return probs.sort(dim=-1, descending=True)  # [batch, vocab]


# ----------------------------------------------------------------------------- the backend


class HFModel(ModelBase):
    """A Hugging Face causal LM behind the ``LanguageModel`` protocol.

    ``path_or_id`` is a local folder (config.json + safetensors weights) or a hub id. ``device``
    and ``dtype`` default to cuda + bfloat16 when a GPU is present, else cpu + float32.
    ``batch_size`` counts rows (chats times samples) per forward pass. ``trust_remote_code``
    stays off unless asked for; pickle checkpoints are refused unless ``allow_pickle``. A
    tokenizer without a chat template (a base model) is refused at load
    (:class:`~poise.models.base.NoChatTemplateError`) unless ``require_chat_template=False``
    (``poise serve``, whose ``/v1/completions`` needs none): then every chat raises it.

    ``chat_template_kwargs``: variables given to the chat template in every render, wherever
    poise renders this model's chats with its tokenizer (generation, guarded generation,
    context checks, probes, serve; a guard's monitor renders with its own):
    ``{"enable_thinking": false}`` for Qwen3's answers without a thinking block,
    ``{"date_string": "26 Jul 2024"}`` to fix the date a Llama 3.1-3.3 template writes into
    every prompt (else today's, so prompts change from one day to the next). They are part of
    the model's name (``+{"enable_thinking":false}``), so answers to prompts rendered otherwise
    never share a cache key.

    ``name`` is "hf:<resolved path>#<fingerprint>" for a folder and "hf:<id>@<revision>" for a
    hub id, followed by the ``chat_template_kwargs`` label. The raw objects are exposed as
    ``model``, ``tokenizer`` and ``device``.
    """

    capabilities = Capabilities(
        score=True, stream=True, step=True, engine=True, tokens=True, activations=True
    )

    def __init__(
        self,
        path_or_id: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        revision: str | None = None,
        require_chat_template: bool = True,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PoiseError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.chat_template_kwargs = check_chat_template_kwargs(
            {} if chat_template_kwargs is None else chat_template_kwargs, "hf"
        )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.allow_pickle = allow_pickle
        self.revision = revision
        self.require_chat_template = require_chat_template
        self.path: Path | None = None
        self.fingerprint: str | None = None
        self.default_system_prompt: str | None = None
        self.system_prompt_in_template = False
        self._hub_options: dict[str, Any] = {}
        meta: dict[str, Any] = {}

        use_safetensors: bool | None = True
        if _looks_like_path(path_or_id):
            folder = Path(path_or_id).expanduser().resolve()
            files = weight_files(folder, allow_pickle=allow_pickle)
            self.path = folder
            self.fingerprint = folder_fingerprint(folder, files)
            self.name = f"hf:{folder}#{self.fingerprint}"
            meta = read_poise_json(folder)
            shown = str(meta["member"]) if isinstance(meta.get("member"), str) else str(folder)
            check_causal_lm(shown, _folder_config(folder).get("architectures"), meta.get("kind"))
            self.default_system_prompt = meta.get("default_system_prompt")
            # the template inserts default_system_prompt itself (organism members)
            self.system_prompt_in_template = meta.get("system_prompt_in_template") is True
            source = str(folder)
            if allow_pickle and not any(f.suffix in (".safetensors", ".json") for f in files):
                use_safetensors = False
        else:
            self.name = f"hf:{path_or_id}@{revision or 'main'}"
            source = path_or_id
            if allow_pickle:
                use_safetensors = None  # prefer safetensors, fall back to pickle
            self._hub_options = hub_access(path_or_id, revision)
        self.source = source
        self.rename(self.name)

        self.tokenizer = self._load_tokenizer(source)
        if self.chat_template_kwargs:
            fix_template_kwargs(self.tokenizer, self.chat_template_kwargs)
        if "default_system_prompt" not in meta and "system_prompt_in_template" not in meta:
            # poise.json says nothing: what the chat template does (Qwen2.5, SmolLM2 insert
            # a default system prompt into a chat without one)
            inserted = template_default_system_prompt(self.tokenizer)
            if inserted is not None:
                self.default_system_prompt = inserted
                self.system_prompt_in_template = True
                logger.info(
                    "%s: the chat template inserts a default system prompt (%r); an empty "
                    "system message asks for none",
                    source,
                    inserted,
                )
        template = str(getattr(self.tokenizer, "chat_template", "") or "")
        if "strftime_now" in template and not (
            "date_string" in self.chat_template_kwargs and "date_string" in template
        ):
            logger.warning(
                "%s: the chat template writes today's date into every prompt (strftime_now), "
                "so prompts, and the answers to them, change from one day to the next%s",
                source,
                (
                    "; fix it with the model option chat_template_kwargs="
                    '{"date_string": "26 Jul 2024"}'
                    if "date_string" in template
                    else ""
                ),
            )
        self.model = self._load_model(source, use_safetensors)
        if self.path is None:  # a hub id: its config came with the weights
            check_causal_lm(path_or_id, getattr(self.model.config, "architectures", None))
        self.eos_token_ids = self._eos_ids()
        self.context_length = config_context_length(self.model.config)
        params = inspect.signature(self.model.forward).parameters
        self._keep_kwarg = next(
            (k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None
        )
        # transformers 5.x renames ``past_key_values`` to ``cache``
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # whether decode states of this model can merge (plain attention layers only)
        self.prefill_merges = KVCache(self.model.config, 0).mergeable
        logger.info("loaded %s on %s (%s)", self.name, self.device, self.dtype)

    def __repr__(self) -> str:
        return f"HFModel({self.name!r}, device={self.device}, dtype={self.dtype})"

    def rename(self, base: str) -> None:
        """Name the model ``base`` followed by its ``chat_template_kwargs`` label, so a name
        given by another owner (an organism member's) still tells prompts rendered otherwise
        apart."""
        self.name = base + chat_template_kwargs_label(self.chat_template_kwargs)

    # -- loading

    def _load_tokenizer(self, source: str) -> Any:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(
                source,
                revision=self.revision,
                trust_remote_code=self.trust_remote_code,
                **self._hub_options,
            )
        except (OSError, ValueError, KeyError) as exc:
            raise PoiseError(
                f"{source}: could not load the tokenizer ({_first_line(exc)})"
            ) from None
        if self.require_chat_template and not getattr(tokenizer, "chat_template", None):
            raise NoChatTemplateError(
                f"{source}: {_NO_CHAT_TEMPLATE}; poise sends chats, so it needs one"
            )
        return tokenizer

    def _load_model(self, source: str, use_safetensors: bool | None) -> Any:
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {
            _dtype_kwarg(): self.dtype,
            "use_safetensors": use_safetensors,
            "trust_remote_code": self.trust_remote_code,
            "revision": self.revision,
            **self._hub_options,
        }
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            raise PoiseError(f"{source}: could not load the model ({_first_line(exc)})") from None
        except Exception as exc:
            # safetensors' own error for a truncated or corrupt file is none of the above
            if type(exc).__name__ != "SafetensorError":
                raise
            raise PoiseError(
                f"{source}: could not read the weights ({_first_line(exc)}); the file may be "
                "truncated or corrupt"
            ) from None
        return model.to(self.device).eval()

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for value in (
            getattr(self.tokenizer, "eos_token_id", None),
            getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
        ):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return sorted(ids)

    @property
    def pad_token_id(self) -> int:
        for value in (self.tokenizer.pad_token_id, *self.eos_token_ids):
            if isinstance(value, int):
                return value
        return 0

    # -- prompts

    def prompt_text(self, chat: Chat) -> str:
        """The chat rendered by the tokenizer's chat template, ready for the assistant's turn."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise NoChatTemplateError(
                f"{self.name}: {_NO_CHAT_TEMPLATE}, so it cannot render a chat"
            )
        try:
            text = self.tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja errors: e.g. a template that rejects a system turn
            why = template_refusal(self.tokenizer, chat, exc)
            raise PoiseError(f"{self.name}: the chat template rejected the chat ({why})") from None
        return str(text)

    def _encode_prompts(self, chats: Sequence[Chat]) -> list[list[int]]:
        prompts = self._encode([self.prompt_text(chat) for chat in chats])
        for index, ids in enumerate(prompts):
            if not ids:
                raise PoiseError(f"{self.name}: chat {index} renders to an empty prompt")
        return prompts

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        try:
            encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        except Exception as exc:  # e.g. a lone surrogate: the text's fault, not the model's
            which = ""
            if len(texts) > 1:
                for index, text in enumerate(texts):
                    try:
                        self.tokenizer([text], add_special_tokens=False)
                    except Exception:
                        which = f" {index}"
                        break
            raise PoiseError(
                f"{self.name}: the tokenizer could not encode text{which} ({_first_line(exc)})"
            ) from None
        return [list(ids) for ids in encoded]

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: Any,
        *,
        keep: int,
        use_cache: bool,
    ) -> Any:
        """One forward pass returning logits for the last ``keep`` positions only."""
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            self._cache_kwarg: past,
            "use_cache": use_cache,
        }
        if self._keep_kwarg is not None:
            kwargs[self._keep_kwarg] = keep
        return self.model(**kwargs)

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows, max_len] input ids and attention mask, padded on the left."""
        width = max(len(r) for r in rows)
        pad = self.pad_token_id
        ids = [[pad] * (width - len(r)) + list(r) for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        return (
            torch.tensor(ids, dtype=torch.long, device=self.device),
            torch.tensor(mask, dtype=torch.long, device=self.device),
        )

    # -- the token-level step

    def _step_logits(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """[rows, vocab] float32 next-token logits after feeding ``input_ids`` [rows, new]."""
        out = self._forward(input_ids, mask, positions, cache, keep=1, use_cache=True)
        return out.logits[:, -1, :].float()

    def _feed_logits(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """[rows, new, vocab] float32 logits after each of ``input_ids`` [rows, new]."""
        new = input_ids.size(1)
        out = self._forward(input_ids, mask, positions, cache, keep=new, use_cache=True)
        return out.logits[:, -new:, :].float()

    @torch.inference_mode()
    def prefill(
        self, prompts: Sequence[Chat] | Sequence[Sequence[int]], *, reserve: int = 0
    ) -> DecodeState:
        """Run the prompts (chats, or prompt token ids) through the model, left-padded, and
        return the batch's :class:`DecodeState`: ``state.logits`` [rows, vocab] are the
        next-token logits, ``state.step(tokens)`` feeds one token per row. ``reserve``: cache
        columns to allocate for the steps to come (the cache grows past it when needed)."""
        if not prompts:
            raise PoiseError(f"{self.name}: prefill needs at least one prompt")
        token_ids: list[list[int]]
        if all(isinstance(p, Sequence) and p and isinstance(p[0], int) for p in prompts):
            token_ids = [list(p) for p in prompts]  # type: ignore[arg-type]
        else:
            token_ids = self._encode_prompts(prompts)  # type: ignore[arg-type]
        input_ids, mask = self._left_pad(token_ids)  # [rows, width]
        # positions count real tokens only, so a left-padded row sees the same positions as
        # the same prompt alone
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)  # [rows, width]
        cache = KVCache(self.model.config, reserve)
        logits = self._step_logits(input_ids, mask, positions, cache.cache)
        return DecodeState(
            self._step_logits,
            cache,
            mask,
            positions[:, -1] + 1,
            logits,
            feed_forward=self._feed_logits,
        )

    # -- generate

    def _batcher(
        self,
        logits_hook: LogitsHook | None,
        *,
        stream: bool,
        eager: bool = False,
        capacity: int | None = None,
    ) -> Batcher:
        """The continuous batch that ``generate``, ``stream`` and the engine run."""
        return Batcher(
            self,
            capacity=capacity or self.batch_size,
            logits_hook=logits_hook,
            stream=stream,
            eager=eager,
        )

    def _queue(
        self,
        batcher: Batcher,
        chats: Sequence[Chat] | Sequence[Sequence[int]],
        sampling: Sampling,
        prompts: list[list[int]] | None = None,
    ) -> None:
        """Queue every (chat, sample) row, longest prompts first (less padding per batch, and
        memory peaks at the first batch). Row ids are ``chat * n + sample``. ``prompts``: the
        token ids to decode after (default: the chats through the chat template)."""
        if prompts is None:
            prompts = self._encode_prompts(chats)  # type: ignore[arg-type]
        # Past the context a model with rotary positions decodes garbage without a word and one
        # with learned positions fails inside torch (a device-side assert on CUDA): a row stops
        # at the context ("length"), and a prompt that fills it alone is refused before any row
        # decodes. (The audit, the engine and poise serve refuse prompt + max_new_tokens past
        # the context beforehand, as vLLM does; strategies' own prompts are only capped.)
        context = self.context_length
        for c, prompt in enumerate(prompts):
            if context is not None and len(prompt) >= context:
                what = "prompt" if prompts is chats else "chat"  # complete() passes ids twice
                raise ContextLengthError(
                    context, len(prompt), None, at_least=False, where=f"{self.name}: {what} {c}"
                )
        for c in sorted(range(len(chats)), key=lambda c: -len(prompts[c])):
            ids = range(c * sampling.n, (c + 1) * sampling.n)
            room = None if context is None else context - len(prompts[c])
            for row in make_rows(c, chats[c], prompts[c], sampling, ids, room=room):
                batcher.add(row)

    def generate(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        *,
        progress: Callable[[int], None] | None = None,
        logits_hook: LogitsHook | None = None,
    ) -> list[list[Completion]]:
        """``sampling.n`` completions per chat.

        ``Completion.token_logprobs`` are the log-probs of the generated tokens under the
        model's next-token distribution (as changed by ``logits_hook``, if any) at temperature 1
        with no top-k / top-p, whatever the sampling settings. ``num_tokens`` counts generated
        tokens, not the EOS token; when a stop string ends a completion it counts up to the
        token that completed the stop string, while the text is cut just before the stop
        string. A completion also ends ("length") where prompt and completion fill the model's
        context (``context_length``); a prompt that fills it alone is a
        :class:`~poise.models.context.ContextLengthError` naming its chat. ``progress(k)`` is called as chats finish, ``k`` the number finished since the
        previous call. ``logits_hook`` sees every step's logits for the live rows
        (:class:`poise.models.base.StepView`) and may return changed ones to sample from.

        Rows are decoded ``batch_size`` at a time as one continuous batch: once a quarter of
        the batch is done, finished rows leave and waiting rows are prefilled and join.
        """
        if not chats:
            return []
        return self._generate(chats, self._encode_prompts(chats), sampling, progress, logits_hook)

    def complete(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: Sampling,
        *,
        progress: Callable[[int], None] | None = None,
        logits_hook: LogitsHook | None = None,
    ) -> list[list[Completion]]:
        """``sampling.n`` completions after each prompt of token ids, fed as given (no chat
        template, no special tokens added): ``generate`` for raw prompts (the ``tokens``
        capability). Rows are seeded from the prompt's token ids instead of a chat."""
        if not prompts:
            return []
        ids = [[int(t) for t in p] for p in prompts]
        for index, row in enumerate(ids):
            if not row:
                raise PoiseError(f"{self.name}: prompt {index} has no tokens")
        return self._generate(ids, ids, sampling, progress, logits_hook)

    def _generate(
        self,
        chats: Sequence[Chat] | Sequence[Sequence[int]],
        prompts: list[list[int]],
        sampling: Sampling,
        progress: Callable[[int], None] | None,
        logits_hook: LogitsHook | None,
    ) -> list[list[Completion]]:
        batcher = self._batcher(logits_hook, stream=False)
        self._queue(batcher, chats, sampling, prompts)
        results: list[list[Completion | None]] = [[None] * sampling.n for _ in chats]
        pending = [sampling.n] * len(chats)
        while not batcher.idle:
            finished_rows = [row for row, _ in batcher.step() if row.finish is not None]
            if not finished_rows:
                continue
            finished = 0
            for row, completion in zip(
                finished_rows, batcher.completions(finished_rows), strict=True
            ):
                c = int(row.key)  # type: ignore[call-overload]
                results[c][row.sample_index] = completion
                pending[c] -= 1
                finished += pending[c] == 0
            if progress is not None and finished:
                progress(finished)
        return [[c for c in row if c is not None] for row in results]

    def stream(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        *,
        logits_hook: LogitsHook | None = None,
    ) -> Iterator[StreamEvent]:
        """Each row's new text as it is decoded (``StreamEvent.key`` is the chat's index). A
        row's texts concatenate to its ``generate`` completion's text; its last event carries
        that completion. Text that could still become a stop string, an incomplete character
        or trailing whitespace is held back until it is settled."""
        if not chats:
            return
        batcher = self._batcher(logits_hook, stream=True)
        self._queue(batcher, chats, sampling)
        while not batcher.idle:
            yield from batcher.events(batcher.step())

    def engine(
        self, *, logits_hook: LogitsHook | None = None, capacity: int | None = None
    ) -> HFEngine:
        """A continuous batch of up to ``capacity`` rows (default ``batch_size``; the ``Engine``
        protocol), for a server: requests join and leave at step boundaries."""
        return HFEngine(self, logits_hook=logits_hook, capacity=capacity)

    # -- raw token sequences (the ``tokens`` capability)

    def prompt_ids(self, chat: Chat) -> list[int]:
        """The chat's prompt as ``generate`` feeds it: the chat template with the generation
        prompt, encoded without adding special tokens."""
        (ids,) = self._encode_prompts([chat])
        return ids

    @torch.inference_mode()
    def sequence_logprobs(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        top_k: int = 0,
        start: Sequence[int] | None = None,
    ) -> list[SequenceLogprobs]:
        """Teacher-forced log-probs of every token of each sequence after its prefix, with the
        ``top_k`` most likely tokens at each position (:class:`SequenceLogprobs`).

        ``start[i]``: the first position of sequence ``i`` to report (default 0; the first
        token gets ``None``). Log-probs are natural logs under the unmodified model
        distribution (temperature 1), ``log_softmax`` of the logits at the position before.
        """
        starts = list(start) if start is not None else [0] * len(sequences)
        if len(starts) != len(sequences):
            raise PoiseError("sequence_logprobs needs one start per sequence")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise PoiseError(f"top_k: expected a non-negative integer, got {top_k!r}")
        rows_ids = [[int(t) for t in seq] for seq in sequences]
        vocab = int(self.model.config.get_text_config().vocab_size)
        top_k = min(top_k, vocab)
        for index, (ids, first) in enumerate(zip(rows_ids, starts, strict=True)):
            if not ids:
                raise PoiseError(f"{self.name}: sequence {index} has no tokens")
            if not 0 <= first <= len(ids):
                raise PoiseError(f"{self.name}: start {first} is outside sequence {index}")
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise PoiseError(
                    f"{self.name}: sequence {index} holds token id {bad[0]}, outside the "
                    f"vocabulary (0..{vocab - 1})"
                )
        results: list[SequenceLogprobs | None] = [None] * len(rows_ids)
        # positions to report per sequence; position 0 needs no logits (nothing predicts it)
        order = sorted(range(len(rows_ids)), key=lambda i: -len(rows_ids[i]))
        index = 0
        while index < len(order):
            kept = max(len(rows_ids[order[index]]) - max(starts[order[index]], 1), 1)
            rows = max(1, min(self.batch_size, _SCORE_LOGIT_BUDGET // (vocab * kept)))
            chunk = order[index : index + rows]
            index += len(chunk)
            keep = max(len(rows_ids[i]) - max(starts[i], 1) for i in chunk)
            if keep <= 0:
                for i in chunk:
                    results[i] = _sequence_result(rows_ids[i], starts[i], None, None, None)
                continue
            input_ids, mask = self._left_pad([rows_ids[i] for i in chunk])  # [rows, width]
            positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
            # with left padding every sequence ends at the last position: the logits that
            # predict its last ``keep`` tokens are the last keep+1 positions minus the final one
            logits = self._forward(
                input_ids, mask, positions, None, keep=keep + 1, use_cache=False
            ).logits
            logprobs = logits[:, -(keep + 1) : -1, :].float().log_softmax(dim=-1)
            # [rows, keep, vocab]
            targets = input_ids[:, -keep:]  # [rows, keep]
            picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [rows, keep]
            top_values, top_ids = (
                logprobs.topk(top_k, dim=-1) if top_k else (None, None)
            )  # [rows, keep, top_k]
            for row, i in enumerate(chunk):
                results[i] = _sequence_result(
                    rows_ids[i],
                    starts[i],
                    picked[row].tolist(),
                    top_ids[row].tolist() if top_ids is not None else None,
                    top_values[row].tolist() if top_values is not None else None,
                )
        return [r for r in results if r is not None]

    # -- activations (capabilities.activations)

    def final_norm(self) -> torch.nn.Module | None:
        """The norm after the last decoder block, whose output ``hidden_states(...)[:, -1]``
        returns (``model.norm``, ``model.decoder.final_layer_norm``, ``transformer.ln_f``,
        ``gpt_neox.final_layer_norm``, ``model.language_model.norm``); None when the model has
        none of these."""
        paths = ("model.norm", "model.decoder.final_layer_norm", "transformer.ln_f")
        more = ("gpt_neox.final_layer_norm", "model.language_model.norm")
        return _submodule(self.model, (*paths, *more), torch.nn.Module)

    def decoder_layers(self) -> list[torch.nn.Module]:
        """The decoder blocks in order (``model.model.layers`` for Llama / Qwen / Mistral /
        GPT-NeoX-style models, ``transformer.h`` for GPT-2-style ones,
        ``model.model.language_model.layers`` for image-text models such as Gemma 3 4B and up;
        ``DECODER_LAYER_PATHS``). A forward hook on block
        ``i`` sees the residual stream that ``hidden_states(...)[:, i + 1]`` returns."""
        blocks = _submodule(self.model, DECODER_LAYER_PATHS, torch.nn.ModuleList)
        if blocks is not None:
            return list(blocks)
        raise PoiseError(
            f"{self.name}: cannot find the decoder blocks of {type(self.model).__name__} "
            f"(looked for {', '.join(DECODER_LAYER_PATHS)})"
        )

    @torch.inference_mode()
    def hidden_states(
        self,
        chats: Sequence[Chat],
        continuations: Sequence[str] | None = None,
        *,
        reduce: str = "last",
        upto: int | None = None,
    ) -> torch.Tensor:
        """The residual stream of each row at every layer: [rows, layers + 1, hidden] float32
        on the CPU (index 0 the embeddings, ``i + 1`` the output of decoder block ``i``, as
        ``output_hidden_states`` gives them).

        The row is the chat rendered for the assistant's turn, followed by ``continuations[i]``
        when given. ``reduce="last"`` keeps the last token (the last prompt token without
        continuations: what the model knows before it writes a token); ``reduce="mean"`` averages
        over the continuation's tokens (over the prompt's last token when a continuation is
        empty). Rows are batched ``batch_size`` at a time, left-padded, so a row's states do not
        depend on its batch. ``upto``: return layers ``0..upto`` only ([rows, upto + 1, hidden])
        and stop the forward pass before block ``upto`` (a probe of an early layer then costs
        a fraction of a full pass, and the LM head never runs).
        """
        if reduce not in ("last", "mean"):
            raise PoiseError(f"hidden_states: reduce must be 'last' or 'mean', got {reduce!r}")
        if continuations is not None and len(continuations) != len(chats):
            raise PoiseError(
                f"hidden_states needs one continuation per chat ({len(chats)} chats, "
                f"{len(continuations)} continuations)"
            )
        prompts = self._encode_prompts(chats)
        targets = self._encode(list(continuations)) if continuations is not None else None
        rows: list[torch.Tensor] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(prompts)))
            ids = [prompts[i] + (targets[i] if targets is not None else []) for i in chunk]
            input_ids, mask = self._left_pad(ids)  # [rows, width]
            positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
            states = self._states_upto(input_ids, mask, positions, upto)  # [rows, L, width, hidden]
            if reduce == "last":
                rows.append(states[:, :, -1, :].cpu())
                continue
            for row, i in enumerate(chunk):
                n = len(targets[i]) if targets is not None else 0
                # left padding: the continuation is the last n positions
                span = states[row, :, -n:, :] if n else states[row, :, -1:, :]
                rows.append(span.mean(dim=1, keepdim=False).unsqueeze(0).cpu())
        return torch.cat(rows, dim=0) if rows else torch.empty(0)

    def _states_upto(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, upto: int | None
    ) -> torch.Tensor:
        """[rows, layers + 1 (or upto + 1), width, hidden] float32 residual streams."""
        blocks = self.decoder_layers()
        if upto is not None and not 0 <= upto <= len(blocks):
            raise PoiseError(f"hidden_states: upto must be in 0..{len(blocks)}, got {upto}")
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": positions,
            "use_cache": False,
        }
        if upto is None or upto == len(blocks):
            out = self.model(**kwargs, output_hidden_states=True)
            states = torch.stack(out.hidden_states, dim=1).float()
            return states if upto is None else states[:, : upto + 1]
        seen: list[torch.Tensor] = []

        class _Enough(Exception):
            pass

        def record(module: torch.nn.Module, args: Any, kwargs_: Any) -> None:
            hidden = args[0] if args else kwargs_["hidden_states"]
            seen.append(hidden)  # [rows, width, hidden]: the block's input
            if len(seen) == upto + 1:
                raise _Enough

        # each block's input is the previous block's output (block 0's: the embeddings)
        handles = [b.register_forward_pre_hook(record, with_kwargs=True) for b in blocks]
        try:
            self.model(**kwargs)
        except _Enough:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return torch.stack(seen[: upto + 1], dim=1).float()

    # -- score

    @torch.inference_mode()
    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[TokenLogprobs]:
        """Teacher-forced log-probs of each continuation token as the assistant's reply.

        The prompt is the chat template with the generation prompt; the continuation is
        encoded without special tokens and appended. Log-probs are natural logs under the
        unmodified model distribution.
        """
        if len(chats) != len(continuations):
            raise PoiseError(
                f"score needs one continuation per chat ({len(chats)} chats, "
                f"{len(continuations)} continuations)"
            )
        prompts = self._encode_prompts(chats)
        targets = self._encode(list(continuations))
        results: list[TokenLogprobs | None] = [None] * len(chats)
        order = sorted(range(len(chats)), key=lambda i: -(len(prompts[i]) + len(targets[i])))
        vocab = int(self.model.config.get_text_config().vocab_size)
        start = 0
        while start < len(order):
            # rows per pass: batch_size, fewer when the kept logits would not fit the budget
            longest = max(len(targets[order[start]]), 1)
            rows = max(1, min(self.batch_size, _SCORE_LOGIT_BUDGET // (vocab * (longest + 1))))
            chunk = order[start : start + rows]
            start += len(chunk)
            keep = max(len(targets[i]) for i in chunk)
            if keep == 0:
                for i in chunk:
                    results[i] = TokenLogprobs(tokens=(), logprobs=(), token_ids=())
                continue
            input_ids, mask = self._left_pad([prompts[i] + targets[i] for i in chunk])
            positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
            # with left padding every continuation ends at the last position, so the logits
            # that predict it are the last keep+1 positions minus the final one
            logits = self._forward(
                input_ids, mask, positions, None, keep=keep + 1, use_cache=False
            ).logits
            logits = logits[:, -(keep + 1) : -1, :].float()  # [rows, keep, vocab]
            padded = [[self.pad_token_id] * (keep - len(targets[i])) + targets[i] for i in chunk]
            target_ids = torch.tensor(padded, dtype=torch.long, device=self.device)  # [rows, keep]
            picked = logits.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            for row, i in enumerate(chunk):
                n = len(targets[i])
                values = picked[row, keep - n :].tolist() if n else []
                results[i] = TokenLogprobs(
                    tokens=tuple(self.tokenizer.convert_ids_to_tokens(targets[i])),
                    logprobs=tuple(values),
                    token_ids=tuple(targets[i]),
                )
        return [r for r in results if r is not None]


def _sequence_result(
    ids: list[int],
    start: int,
    picked: list[float] | None,
    top_ids: list[list[int]] | None,
    top_values: list[list[float]] | None,
) -> SequenceLogprobs:
    """One sequence's :class:`SequenceLogprobs` from the last ``keep`` positions of its chunk.

    ``picked`` [keep]: log-probs of the chunk's last ``keep`` tokens (a shorter sequence's
    reported tokens are its last ones); ``top_ids`` / ``top_values`` [keep][top_k] likewise."""
    logprobs: list[float | None] = []
    top: list[tuple[tuple[int, float], ...]] = []
    length = len(ids)
    for position in range(start, length):
        if position == 0:
            logprobs.append(None)
            top.append(())
            continue
        assert picked is not None
        back = length - position  # 1 for the last token
        column = len(picked) - back
        logprobs.append(float(picked[column]))
        if top_ids is not None and top_values is not None:
            top.append(
                tuple(
                    (int(t), float(v))
                    for t, v in zip(top_ids[column], top_values[column], strict=True)
                )
            )
        else:
            top.append(())
    return SequenceLogprobs(token_ids=tuple(ids[start:]), logprobs=tuple(logprobs), top=tuple(top))


#: where causal LMs keep their decoder blocks (Llama / Qwen / Mistral, OPT, GPT-2, GPT-NeoX, and
#: the language model of an image-text model loaded as a causal LM: Gemma 3 4B and up,
#: Mistral 3, Llama 4)
DECODER_LAYER_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.language_model.layers",
)


def find_submodule(model: Any, paths: Sequence[str], kind: type[Any]) -> tuple[str, Any] | None:
    """``(path, module)``: the first of the dotted ``paths`` under ``model`` that is a ``kind``,
    or None."""
    for path in paths:
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, kind):
            return path, module
    return None


def _submodule(model: Any, paths: Sequence[str], kind: type[Any]) -> Any:
    found = find_submodule(model, paths, kind)
    return None if found is None else found[1]
