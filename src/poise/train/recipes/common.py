"""What every training recipe shares: its config base, accelerate, LoRA, checkpoints, the output.

A recipe (``dpo.py``, ``modpo.py``, ``reward.py``, ``safe_rl.py``) is a short loop built from
these pieces::

    config = DPOConfig(model=..., data=..., output=...)      # pydantic, extra="forbid"
    out = OutputFolder.prepare(config, "dpo")                # validate the output folder
    ...parse data, check the model folder...                 # validate before loading weights
    session = Session.start(config, out, model, tokenizer)   # accelerate, LoRA, optimizer, resume
    for batch in session.batches(len(pairs)):                # epochs, shards, accumulation
        session.backward(loss_sum / session.rows_in_step)
        if session.step_done():                              # clip, optimizer step, checkpoint
            session.log(metrics)
    session.finish(final_metrics)                            # HF folder + poise_train.json

**The output folder** is an ordinary Hugging Face folder (``config.json``, ``model.safetensors``,
tokenizer files, ``generation_config.json``) plus ``poise.json`` (the source model's default
system prompt, so audits of the trained model use it too), ``poise_train.json`` (recipe,
resolved config, versions, data fingerprint, final metrics, status), ``train_log.jsonl`` (one
line per logged step) and ``checkpoints/step-N/`` (``accelerate`` states: weights, optimizer,
scheduler, RNG, and the step, from which the data position follows).

**Resume.** Re-running the same command (or passing ``resume=True``) on a folder whose run did
not finish continues from its last checkpoint. The data order of an epoch is a permutation
seeded by ``(seed, epoch)`` and the step counter fixes the position in it, so a resumed run
ends with the same weights as an uninterrupted one. A finished folder with the same config is
left alone; a different config is an error unless ``overwrite=True``.

**Distributed.** ``accelerate launch -m poise.cli train dpo ...`` runs the same code on several
processes (DDP, DeepSpeed, FSDP through accelerate's config). Each process takes its own rows of
every global batch; ``batch_size`` counts rows per process and micro-step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from poise.config import PathStr, format_field_error
from poise.errors import MissingExtraError, PoiseError, file_on_the_way, require_extra
from poise.train.flags import field_flag, field_spellings

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

TRAIN_JSON = "poise_train.json"
TRAIN_LOG = "train_log.jsonl"
POISE_JSON = "poise.json"
#: poise.json's list of the digests of the prompts a model was trained on (:func:`prompt_digest`)
TRAINED_PROMPTS = "trained_prompts_sha256"


def prompt_digest(prompt: str) -> str:
    """A prompt's digest as poise.json records the prompts a model was trained on: sha256 of
    its text with runs of whitespace as one space (first 16 hex digits)."""
    return hashlib.sha256(" ".join(prompt.split()).encode("utf-8")).hexdigest()[:16]


CHECKPOINTS = "checkpoints"
#: where `--overwrite` keeps the run it replaces until the new one is complete
REPLACED = ".replaced"
REPLACING = ".replacing-"  # its staging folder while the old run moves
SCHEMA_VERSION = 1
# Fields that say where or how often to write, not what is trained: excluded from the identity
# of a run, so changing them does not block a resume.
NON_IDENTITY_FIELDS = frozenset(
    {"output", "resume", "overwrite", "save_steps", "save_total_limit", "log_steps"}
)


# --------------------------------------------------------------------------------------------
# config


def split_list(value: Any) -> Any:
    """``"a,b"`` -> ``("a", "b")``: list fields also accept one comma-separated string."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class TrainConfig(BaseModel):
    """Fields shared by every recipe. ``poise train <recipe>`` flags map 1:1 onto them."""

    # numbers must be finite: --lr inf passed every range check and trained to NaN weights
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: PathStr = Field(
        ..., description="model to train: an organism member or a Hugging Face folder"
    )
    output: PathStr = Field(..., description="output folder (an HF model folder when done)")
    epochs: int = Field(1, ge=1, description="passes over the data")
    max_steps: int | None = Field(
        None, ge=1, description="optimizer steps to run; overrides epochs when set"
    )
    lr: float = Field(1e-6, gt=0, description="peak learning rate (AdamW)")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "linear", description="learning-rate schedule after warm-up"
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of steps spent warming up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="clip gradients to this norm; 0 = off")
    batch_size: int = Field(8, ge=1, description="rows per process and micro-step")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    max_length: int = Field(
        1024, ge=8, description="tokens per sequence at most (prompt cut from the left first)"
    )
    seed: int = Field(0, description="seed of initialisation, data order and sampling")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="autocast precision (fp16 needs CUDA); master weights stay float32"
    )
    cpu: bool = Field(False, description="train on CPU even when a GPU is present")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, more time"
    )
    disable_dropout: bool = Field(
        True,
        description="turn the model's dropout off while training (as TRL's trainers do): the "
        "policy then scores as the frozen reference and the sampler do; LoRA's dropout is kept",
    )
    lora_r: int = Field(0, ge=0, description="LoRA rank; 0 = full fine-tuning")
    lora_alpha: int = Field(16, gt=0, description="LoRA scaling numerator (alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    lora_targets: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj"),
        min_length=1,
        description="module names that get LoRA adapters (comma-separated), or all-linear",
    )
    merge: bool = Field(
        True, description="merge LoRA adapters into the weights on save (else save the adapter)"
    )
    limit: int | None = Field(None, ge=1, description="use only the first N rows of the data")
    save_steps: int = Field(100, ge=0, description="checkpoint every N optimizer steps; 0 = never")
    save_total_limit: int = Field(2, ge=1, description="checkpoints to keep (oldest deleted)")
    log_steps: int = Field(1, ge=1, description="append metrics to train_log.jsonl every N steps")
    resume: bool = Field(
        False, description="require resuming from the last checkpoint in OUTPUT/checkpoints"
    )
    overwrite: bool = Field(
        False, description="replace an output folder written by another poise train run"
    )

    _split_targets = field_validator("lora_targets", mode="before")(split_list)

    def identity(self) -> dict[str, Any]:
        """The fields that define what is trained (a resume needs them unchanged)."""
        return self.model_dump(mode="json", exclude=set(NON_IDENTITY_FIELDS))


def make_config(cls: type[Any], config: Any = None, **fields: Any) -> Any:
    """``cls`` from an optional base config and field overrides, with a one-line error."""
    try:
        if config is None:
            return cls(**fields)
        if not isinstance(config, cls):
            raise PoiseError(f"expected a {cls.__name__}, got {type(config).__name__}")
        return cls.model_validate({**config.model_dump(), **fields})
    except ValidationError as exc:
        raise PoiseError(f"train config: {_field_error(exc, cls)}") from None


def _field_error(exc: ValidationError, cls: type[Any] | None = None) -> str:
    """'FIELD (--FLAG): what is wrong, got VALUE', the flag as ``poise train`` spells it; a
    flag's name given as a keyword (``loss_option``, ``format``) names the field of ``cls`` it
    stands for."""
    spellings = field_spellings(cls.model_fields) if cls is not None else None
    return format_field_error(
        exc, field_flag, unknown="not an option of this recipe", spellings=spellings
    )


# --------------------------------------------------------------------------------------------
# model folders


def resolve_model_folder(spec: str, what: str = "model") -> Path:
    """A registered model name (an organism member) or a local HF folder -> the folder, checked
    before any load.

    The folder needs ``config.json`` and safetensors weights (a pickle-only checkpoint is
    refused, as by poise's model backend).
    """
    from poise.models.resolve import folder_name_hint, model_folder

    registered = model_folder(spec)
    if registered is not None:
        return registered
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise PoiseError(
            f"{what}: {spec!r} is neither an organism member nor an existing folder"
            + folder_name_hint(spec)
        )
    from poise.models.hf import weight_files

    try:
        weight_files(folder, allow_pickle=False)
    except PoiseError as exc:
        raise PoiseError(f"{what}: {exc}") from None
    return folder.resolve()


def model_architectures(folder: Path) -> list[str]:
    """``architectures`` of a folder's config.json (for checking causal LM vs classifier)."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PoiseError(f"{folder / 'config.json'}: cannot read ({exc})") from None
    archs = data.get("architectures") or []
    return [str(a) for a in archs] if isinstance(archs, list) else []


def folder_context_length(folder: Path) -> int | None:
    """The context length a model folder's config.json declares (``None`` when it says none)."""
    from transformers import AutoConfig

    from poise.models.context import config_context_length

    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError):
        return None  # the loader says what is wrong with the folder, with the weights
    return config_context_length(config)


def check_rows_fit(
    lengths: Iterable[tuple[str, int]], context_length: int | None, max_length: int
) -> None:
    """Refuse, before training, a row (``(where, tokens)``, as cut to ``max_length``) longer
    than the model's context: one line naming the row. Only possible when ``max_length`` is
    over the context (rows are cut to ``max_length`` first)."""
    if context_length is None or max_length <= context_length:
        return
    for where, tokens in lengths:
        if tokens > context_length:
            raise PoiseError(
                f"{where}: {tokens} tokens (cut to max_length {max_length}), more than the "
                f"model's context of {context_length} tokens; shorten the row or set "
                f"--max-length {context_length} or less"
            )


def row_name(data: str, index: int, pair: Any) -> str:
    """Where a preference pair came from, for messages: ``FILE:LINE`` (or its index)."""
    row = pair.meta.get("row") if isinstance(getattr(pair, "meta", None), dict) else None
    return f"{data}:{row}" if row is not None else f"{data}: pair {index + 1}"


def is_classifier_folder(folder: Path) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in model_architectures(folder))


def causal_lm_folder(spec: str, what: str = "model") -> Path:
    """:func:`resolve_model_folder` for a policy or a reference model: a sequence classifier (a
    reward or cost model) is refused before any load, since ``AutoModelForCausalLM`` would load
    it without its score head and with an LM head it never trained."""
    folder = resolve_model_folder(spec, what)
    if is_classifier_folder(folder):
        raise PoiseError(
            f"{what}: {folder} is a sequence-classification model (a reward or cost model), "
            "not a causal language model"
        )
    return folder


def load_tokenizer(
    folder: Path, *, need_chat_template: bool = True, from_base_hint: bool = False
) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise PoiseError(f"{folder}: could not load the tokenizer ({_first_line(exc)})") from None
    if need_chat_template and not getattr(tokenizer, "chat_template", None):
        # --from-base is a flag of `train safe-rl` only (``from_base_hint``): dpo and modpo
        # named it too, and refused it as an unknown option
        hint = (
            "use --from-base for a base model without one"
            if from_base_hint
            else "add one to the folder: tokenizer_config.json 'chat_template' or "
            "chat_template.jinja"
        )
        raise PoiseError(
            f"{folder}: the tokenizer has no chat template; poise trains on chats ({hint})"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(folder: Path | str) -> Any:
    """A causal LM in float32 (the master weights; mixed precision is autocast on top)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.float32, use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        raise PoiseError(f"{folder}: could not load the model ({_first_line(exc)})") from None
    return model


def load_classifier(folder: Path | str, pad_token_id: int | None) -> Any:
    """A one-output sequence classifier (reward or cost model) in float32.

    From a causal LM folder the score head is new (randomly initialised); from a classifier
    folder it is kept. ``pad_token_id`` (the id poise pads rows with) is set in the config
    because the classifier reads its score at the last token that is not the config's pad id.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=1, dtype=torch.float32, use_safetensors=True
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise PoiseError(f"{folder}: could not load a classifier ({_first_line(exc)})") from None
    if pad_token_id is not None or model.config.pad_token_id is None:
        # rows are padded with the tokenizer's pad id: a config naming another one (while the
        # tokenizer pads with, say, its EOS) read a shorter row's score on a padding column
        model.config.pad_token_id = pad_token_id
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_poise_json(folder: Path) -> dict[str, Any]:
    path = folder / POISE_JSON
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------------
# chats -> token ids


Messages = list[dict[str, str]]

# The dialogue format for a base model that has no chat template (Direct Harmless RLHF setting,
# arXiv 2403.02513): plain "User:/Assistant:" turns, written into the trained model's tokenizer
# as its chat template so that audits of the result prompt it the way it was trained.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def as_messages(prompt: str | Sequence[Mapping[str, str]]) -> Messages:
    """A prompt string becomes one user turn; a messages list is copied."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


class ChatTemplateError(PoiseError):
    """A chat template refused a chat (a recipe names the row: :func:`chat_of`)."""


@contextmanager
def chat_of(where: str) -> Iterator[None]:
    """Put ``where`` (``FILE:LINE``, a prompt's number) before a chat template's refusal of
    the chat encoded inside, so the error says which row to fix."""
    try:
        yield
    except ChatTemplateError as exc:
        raise ChatTemplateError(f"{where}: {exc}") from None


class ChatEncoder:
    """Token ids of a prompt and of an assistant response, as the model sees them at inference.

    The prompt is the chat template with the generation prompt (what poise's HF backend feeds
    before generating); the response is encoded separately and appended, ending with the
    template's end-of-turn marker up to and including the EOS token, so training teaches the
    model to stop. Encoding the two parts separately reproduces the token boundary of
    generation (where the prompt is encoded alone), which a joint encoding can blur.
    """

    def __init__(self, tokenizer: Any, max_length: int, *, plain: bool = False) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        if plain:
            tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        self.eos_strings = self._eos_strings()
        # what the template writes after an assistant message's content (the end marker and
        # anything after it), set by _response_frame
        self._after_content: str | None = None
        self._probe_prompt = ""
        self.response_prefix, self.response_suffix = self._response_frame()

    def _eos_strings(self) -> list[str]:
        tok = self.tokenizer
        strings = [tok.eos_token] if tok.eos_token else []
        for token_id in _eos_ids(tok):
            text = tok.convert_ids_to_tokens(token_id)
            if isinstance(text, str) and text not in strings:
                strings.append(text)
        return strings

    def _response_frame(self) -> tuple[str, str]:
        """What the template writes around an assistant message's content, found with a probe."""
        probe = "PoIsEpRoBe"
        chat: Messages = [{"role": "user", "content": "hi"}]
        prompt = self.prompt_text(chat)
        full = self.render([*chat, {"role": "assistant", "content": probe}])
        eos = self.eos_strings[0] if self.eos_strings else ""
        if not full.startswith(prompt) or probe not in full[len(prompt) :]:
            return "", eos
        rest = full[len(prompt) :]
        at = rest.index(probe)
        before, after = rest[:at], rest[at + len(probe) :]
        self._after_content, self._probe_prompt = after, prompt
        ends = [(after.find(e), e) for e in self.eos_strings if e and e in after]
        if not ends:
            # a template that closes a turn with its own marker, not the tokenizer's EOS
            # (Gemma's <end_of_turn>, Phi-3's <|end|>; their generation configs stop on it): the
            # response ends with that marker, as the template writes it, not with an EOS the
            # template never puts after a reply
            ends = [(after.find(t), t) for t in self._special_strings() if t and t in after]
        if ends:
            pos, text = min(ends, key=lambda end: (end[0], -len(end[1])))
            return before, after[: pos + len(text)]
        return before, eos

    def _special_strings(self) -> list[str]:
        """The text of every special token of the tokenizer (added tokens marked special)."""
        tok = self.tokenizer
        strings = {str(t) for t in getattr(tok, "all_special_tokens", []) or []}
        for added in (getattr(tok, "added_tokens_decoder", {}) or {}).values():
            if getattr(added, "special", False):
                strings.add(str(added.content))
        return sorted(strings)

    def render(self, messages: Messages) -> str:
        try:
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False))
        except Exception as exc:  # jinja errors, e.g. a template that rejects a system turn
            raise self._rejected(messages, exc) from None

    def prompt_text(self, messages: Messages) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:
            raise self._rejected(messages, exc) from None
        return str(text)

    def _rejected(self, messages: Messages, exc: BaseException) -> ChatTemplateError:
        """The template's error in one line; where the chat has a system message that the
        template takes none of (Gemma 2's "System role not supported"), it says so."""
        from poise.models.context import template_refusal

        why = template_refusal(self.tokenizer, messages, exc)  # type: ignore[arg-type]
        return ChatTemplateError(f"the chat template rejected the chat ({why})")

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: Messages) -> list[int]:
        return self.ids(self.prompt_text(messages))

    def response_ids(self, response: str) -> list[int]:
        return self.ids(
            self.response_prefix + self.response_content(response) + self.response_suffix
        )

    def response_content(self, response: str) -> str:
        """``response`` as the chat template writes it in an assistant turn. Llama 3's and
        Gemma's templates trim the content (``message['content'] | trim``): a reply with
        leading or trailing whitespace is trained as the template writes it, as TRL's
        conversational tokenisation (prompt + completion through the template) has it.
        Unchanged where the template writes the content as it is, or where the turn cannot
        be told apart from the template's text around it."""
        after = self._after_content
        if after is None:
            return response
        chat: Messages = [{"role": "user", "content": "hi"}]
        prompt = self._probe_prompt
        full = self.render([*chat, {"role": "assistant", "content": response}])
        rest = full[len(prompt) :] if full.startswith(prompt) else ""
        start, end = len(self.response_prefix), len(rest) - len(after)
        if not (rest.startswith(self.response_prefix) and rest.endswith(after)) or end < start:
            return response
        return rest[start:end]

    def fit(self, prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
        """Cut a (prompt, response) to ``max_length``: the prompt loses its oldest tokens first
        (down to half the budget), then the response loses its end."""
        budget = self.max_length
        if len(prompt) + len(response) <= budget:
            return prompt, response
        keep_prompt = max(budget - len(response), min(len(prompt), budget // 2))
        prompt = prompt[len(prompt) - keep_prompt :] if keep_prompt else []
        return prompt, response[: budget - len(prompt)]

    def classifier_ids(self, messages: Messages, response: str) -> list[int]:
        """The conversation as a reward or cost model reads it: the prompt and the response
        exactly as the policy sees them, cut from the left (the score is read at the end)."""
        ids = self.prompt_ids(messages) + self.response_ids(response)
        return ids[-self.max_length :]


def _eos_ids(tokenizer: Any, model: Any = None) -> list[int]:
    ids: set[int] = set()
    values = [getattr(tokenizer, "eos_token_id", None)]
    if model is not None:
        values.append(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    for value in values:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, T]`` ids and attention mask of ``rows`` padded to the longest (right by default)."""
    import torch

    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def sequence_batch(
    pairs: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """A batch of (prompt ids, response ids) rows for :func:`token_logps`.

    Rows are LEFT-padded so that every response ends in the last column; then only the last
    ``K = longest response + 1`` positions need logits (the ``+ 1`` predicts the first response
    token), which spares the ``[N, T, V]`` logits of the prompts. ``input_ids``,
    ``attention_mask`` and ``position_ids`` (counting real tokens only, so padding does not shift
    positions) are ``[N, T]``; ``response_mask`` is ``[N, K]``, aligned with the last ``K``
    columns, 1 on response tokens.
    """
    import torch

    input_ids, attention_mask = pad_rows([p + r for p, r in pairs], pad_id, left=True)
    keep = min(input_ids.shape[1], max((len(r) for _, r in pairs), default=0) + 1)
    response_mask = torch.zeros((len(pairs), keep), dtype=torch.long)
    for i, (_, response) in enumerate(pairs):
        if response:
            response_mask[i, keep - len(response) :] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(dim=-1) - 1).clamp(min=0),
        "response_mask": response_mask,
    }


def classifier_scores(
    model: Any,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    *,
    batch_size: int = 16,
    device: Any = None,
) -> torch.Tensor:
    """``[N]`` float32 scores of a one-output sequence classifier on token-id rows.

    Rows are right-padded; the model reads its score at each row's last non-padding token.
    """
    import torch

    device = device if device is not None else next(model.parameters()).device
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_rows(rows[start : start + batch_size], pad_id)
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).logits
            out.append(logits[:, 0].float())  # [rows]
    return torch.cat(out) if out else torch.zeros(0)


# --------------------------------------------------------------------------------------------
# data


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (16 hex chars)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def split_holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, held-out) index lists; held-out has round(n * fraction) rows and
    at least one when ``fraction > 0`` and ``n > 1``."""
    import torch

    if fraction <= 0 or n < 2:
        return list(range(n)), []
    k = min(n - 1, max(1, round(n * fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    held = sorted(order[:k])
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of ``n`` rows in ``epoch``: a permutation seeded by (seed, epoch) only, so a
    resumed run sees exactly the rows an uninterrupted one would."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


# --------------------------------------------------------------------------------------------
# the output folder


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    from poise._version import __version__

    versions = {"poise": __version__}
    for name in ("torch", "transformers", "accelerate", "peft"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path``, whole or not at all (:func:`poise.runs.run.write_text_atomic`);
    values JSON has no type for are written as their text."""
    from poise.runs.run import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


@dataclass
class OutputFolder:
    """The output folder of one training run and what is known about its previous state."""

    path: Path
    recipe: str
    config: TrainConfig
    status: Literal["new", "running", "complete"] = "new"
    # the previous run's record of its data (poise_train.json's "data"), when there is one
    previous_data: dict[str, Any] = dataclasses.field(default_factory=dict)
    # an --overwrite killed while it moved the old run aside: begin() finishes the move
    interrupted_overwrite: bool = False
    # whether the folder was there before this run (an interrupted run removes only one it made)
    existed: bool = False
    # set once begin() has made the folder this run's (before it, an interrupt wrote nothing)
    begun: bool = False

    @classmethod
    def prepare(cls, config: TrainConfig, recipe: str) -> OutputFolder:
        """Check the output folder (before anything is loaded) and decide: fresh start,
        resume, already done, or an error. Writes nothing."""
        path = Path(config.output).expanduser()
        out = cls(path=path, recipe=recipe, config=config, existed=path.exists())
        if path.exists() and not path.is_dir():
            raise PoiseError(f"output: {path} exists and is not a folder")
        blocker = file_on_the_way(path)
        if blocker is not None:
            raise PoiseError(f"output: cannot make folder {path}: {blocker} is a file")
        own = [c for c in path.iterdir() if not _set_aside_item(c)] if path.exists() else []
        header = path / TRAIN_JSON
        if path.exists() and not header.is_file() and any(path.glob(f"{REPLACING}*")):
            # an --overwrite killed while it moved the old run aside (the header goes first):
            # the old run is in the staging folder and the rest; begin() finishes the move
            if config.resume:
                raise PoiseError(f"resume: {path} holds no run to resume")
            _check_inputs_outside(config, path)
            out.interrupted_overwrite = True
            return out
        if not own:
            if config.resume:
                raise PoiseError(f"resume: {path} holds no run to resume")
            return out
        if not header.is_file():
            raise PoiseError(
                f"output: {path} is not empty and was not written by `poise train`; "
                "choose another --output"
            )
        try:
            previous = json.loads(header.read_text(encoding="utf-8"))
            old_recipe, old_identity = previous["recipe"], previous["identity"]
            status = previous["status"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PoiseError(f"{header}: not a valid poise_train.json") from None
        same = old_recipe == recipe and old_identity == config.identity()
        if config.overwrite:
            _check_inputs_outside(config, path)  # begin() clears the folder
        if not same:
            if config.overwrite:
                return out  # cleared by begin()
            raise PoiseError(
                f"output: {path} holds a `poise train {old_recipe}` run with a different "
                f"configuration ({_first_difference(old_recipe, old_identity, recipe, config)}); "
                "pass --overwrite or choose another --output"
            )
        if config.overwrite:
            return out
        out.status = "complete" if status == "complete" else "running"
        data = previous.get("data")
        out.previous_data = dict(data) if isinstance(data, dict) else {}
        if config.resume and out.status == "running" and out.last_checkpoint() is None:
            raise PoiseError(f"resume: {path / CHECKPOINTS} holds no checkpoint")
        return out

    def check_same_data(self, path: str | Path) -> None:
        """A resumed or finished run's data file must be the one it was trained on: the
        identity holds its path, not its bytes, so an edited file would otherwise resume on
        other data, or keep a finished run made from the old file. Before any weights load."""
        self.check_fingerprint(file_fingerprint(path), f"data: {path}")

    def check_fingerprint(self, now: str, what: str) -> None:
        """:meth:`check_same_data` for a fingerprint computed by the recipe (``what``: the
        option and its value, e.g. ``"prompts: harmful"``); runs recorded without one pass."""
        recorded = self.previous_data.get("fingerprint")
        if self.status == "new" or not isinstance(recorded, str) or now == recorded:
            return
        used = "was trained on" if self.status == "complete" else "began training on"
        raise PoiseError(
            f"{what} changed since {self.path} {used} it (sha256 {recorded} then, {now} now); "
            "pass --overwrite to train on it again, or choose another --output"
        )

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoints(self) -> list[tuple[int, Path]]:
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for child in self.checkpoints_dir.iterdir():
            name = child.name
            if child.is_dir() and name.startswith("step-") and name[5:].isdecimal():
                found.append((int(name[5:]), child))
        return sorted(found)

    def last_checkpoint(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def begin(self, data: Mapping[str, Any]) -> None:
        """Mark the folder as this run's (status "running"). When overwriting, the run that
        was there moves into ``OUTPUT/.replaced`` and is deleted only once this run is
        complete (:meth:`drop_replaced`): a new run that fails or is killed loses nothing."""
        if self.path.exists() and (self.config.overwrite or self.interrupted_overwrite):
            self.set_aside()
        self.path.mkdir(parents=True, exist_ok=True)
        if self.status == "running":
            self.remove_temporary_files()
            self.begun = True
            return  # keep the header of the run being resumed
        self.write_header(status="running", data=data, metrics={})
        self.begun = True

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Around the part of a recipe that loads, trains and writes: on Ctrl-C (or SIGTERM,
        which the CLI raises as one) say what the folder keeps, and leave no half-written run.

        - nothing written yet (before :meth:`begin`): the folder is as it was;
        - a checkpoint saved: it stays (half-saved checkpoints and final files go), and the
          same command resumes from it;
        - no checkpoint: what this run wrote goes (the folder too, if the run made it), and a
          run that ``--overwrite`` set aside in ``.replaced`` is put back;
        - the run completed before the interrupt landed: nothing changes.

        The KeyboardInterrupt is raised again (the CLI's exit code stays 130, or 143)."""
        try:
            yield
        except KeyboardInterrupt:
            if is_main_process():
                try:
                    self._after_interrupt()
                except OSError as exc:  # the interrupt is what the user needs to hear of
                    logger.warning("interrupted; cleaning %s failed: %s", self.path, exc)
            raise

    def _after_interrupt(self) -> None:
        where = self.path
        if not self.begun:
            if self.path.is_dir() and any(self.path.glob(f"{REPLACING}*")):
                logger.warning(
                    "interrupted while --overwrite moved the previous run of %s aside; the next "
                    "run on that folder finishes the move (and keeps that run until it completes)",
                    where,
                )
            else:
                logger.warning(
                    "interrupted before training began: nothing was written to %s", where
                )
            return
        if _header_status(self.path) == "complete":
            self.drop_replaced()
            logger.warning("interrupted after the run completed: %s holds the model", where)
            return
        self.remove_temporary_files()
        last = self.last_checkpoint()
        if last is not None:
            step, folder = last
            kept = (
                f"; the run it replaces stays in {self.replaced_dir}"
                if self.replaced_dir.exists()
                else ""
            )
            logger.warning(
                "interrupted: %s keeps the checkpoint of step %d (%s), no final model%s; run the "
                "same command again to resume from step %d",
                where,
                step,
                folder,
                kept,
                step,
            )
            return
        _remove([c for c in self.path.iterdir() if not _set_aside_item(c)])
        restored = self.replaced_dir.is_dir() and not any(self.path.glob(f"{REPLACING}*"))
        if restored:
            for child in sorted(self.replaced_dir.iterdir(), key=lambda c: c.name == TRAIN_JSON):
                os.replace(child, self.path / child.name)  # the header last
            self.replaced_dir.rmdir()
        if not self.existed and not any(self.path.iterdir()):
            self.path.rmdir()
            logger.warning(
                "interrupted before the first checkpoint: nothing was saved; %s was removed", where
            )
        elif restored:
            logger.warning(
                "interrupted before the first checkpoint: nothing was saved; %s holds the run "
                "it was to replace again",
                where,
            )
        else:
            logger.warning(
                "interrupted before the first checkpoint: nothing was saved; what the run wrote "
                "in %s was removed",
                where,
            )

    @property
    def replaced_dir(self) -> Path:
        return self.path / REPLACED

    def set_aside(self) -> None:
        """Move the folder's run into ``.replaced``, the header first (from then on the folder
        never reads as the old run), through a ``.replacing-*`` staging folder renamed at the
        end; a set-aside killed midway is finished by the next one.

        A ``.replaced`` already there: beside a complete run (a kill between that run's last
        header and :meth:`drop_replaced`), it is stale and goes; beside an unfinished
        overwrite, it holds the run that overwrite replaced, and stays, while the unfinished
        run's own files go."""
        partial = sorted(self.path.glob(f"{REPLACING}*"))
        children = [c for c in self.path.iterdir() if not _set_aside_item(c)]
        if self.replaced_dir.exists():
            if partial:
                raise PoiseError(
                    f"output: {self.path} holds both {REPLACED} and {partial[0].name} (an "
                    "interrupted --overwrite): move them out of the folder, then train again"
                )
            if _header_status(self.path) == "complete":
                shutil.rmtree(self.replaced_dir)
            else:
                _remove(children)
                logger.info(
                    "%s: cleared an unfinished overwrite; the run it replaced stays in %s",
                    self.path,
                    self.replaced_dir,
                )
                return
        if not children and not partial:
            return
        staging = partial[0] if partial else Path(tempfile.mkdtemp(dir=self.path, prefix=REPLACING))
        for child in sorted(children, key=lambda c: c.name != TRAIN_JSON):  # the header first
            os.replace(child, staging / child.name)
        os.replace(staging, self.replaced_dir)
        logger.info(
            "%s: the previous run is kept in %s until this one completes",
            self.path,
            self.replaced_dir,
        )

    def drop_replaced(self) -> None:
        """Delete the run this one replaced (called once this run is complete)."""
        if self.replaced_dir.exists():
            shutil.rmtree(self.replaced_dir, ignore_errors=True)

    def remove_temporary_files(self) -> list[Path]:
        """Remove what a killed run left half-done: the staging folder of the final model
        (``.final-*``), a header being written (``.poise_train.json.*.tmp``) and a checkpoint
        being saved (``checkpoints/.partial-step-*``). Returns what was removed."""
        found = [
            *self.path.glob(".final-*"),
            *self.path.glob(f".{TRAIN_JSON}.*.tmp"),
            *self.checkpoints_dir.glob(".partial-step-*"),
            # a set-aside killed before it moved anything (one that moved some is finished by
            # the next overwrite: it holds part of a run)
            *(p for p in self.path.glob(f"{REPLACING}*") if p.is_dir() and not any(p.iterdir())),
        ]
        for path in found:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if found:
            logger.info(
                "%s: removed %d temporary item(s) left by a killed run", self.path, len(found)
            )
        return found

    def header(self) -> dict[str, Any]:
        return dict(json.loads((self.path / TRAIN_JSON).read_text(encoding="utf-8")))

    def write_header(
        self,
        *,
        status: str,
        data: Mapping[str, Any],
        metrics: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        write_json_atomic(
            self.path / TRAIN_JSON,
            {
                "schema_version": SCHEMA_VERSION,
                "recipe": self.recipe,
                "status": status,
                "config": self.config.model_dump(mode="json"),
                "identity": self.config.identity(),
                "versions": library_versions(),
                "data": dict(data),
                "metrics": dict(metrics),
                **(dict(extra) if extra else {}),
            },
        )


def _set_aside_item(path: Path) -> bool:
    """``.replaced`` or a ``.replacing-*`` staging folder: not part of the folder's own run."""
    return path.name == REPLACED or path.name.startswith(REPLACING)


def is_main_process() -> bool:
    """Rank 0 of a distributed launch (or a single process): the one that writes the folder and
    prints (``accelerate launch`` sets RANK / LOCAL_RANK)."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def _header_status(folder: Path) -> str | None:
    try:
        status = json.loads((folder / TRAIN_JSON).read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _check_inputs_outside(config: TrainConfig, output: Path) -> None:
    """``--overwrite`` clears the output folder: refuse when an input of the run (the model,
    a reference or reward model, the data) is that folder or lies inside it, as when training
    a model further in place (``-m out -o out --overwrite``), which deleted the model."""
    target = output.resolve()
    for name, value in config.model_dump().items():
        if name == "output":
            continue
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if not isinstance(item, str) or not item:
                continue
            for part in {item, *item.split("+")}:  # BASE+LORA references name two folders
                candidate = Path(part).expanduser()
                if not candidate.exists():
                    continue
                resolved = candidate.resolve()
                if resolved == target or target in resolved.parents:
                    flag = field_flag(name)
                    raise PoiseError(
                        f"output: --overwrite would delete {flag} {item}, which is {output} or in it; "
                        "choose another --output"
                    )


def _first_difference(old_recipe: str, old: Any, recipe: str, config: TrainConfig) -> str:
    if old_recipe != recipe:
        return f"recipe {old_recipe!r} != {recipe!r}"
    new = config.identity()
    if isinstance(old, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return f"{key}: {old.get(key)!r} != {new.get(key)!r}"
    return "unreadable previous config"


# --------------------------------------------------------------------------------------------
# the session: accelerate, LoRA, optimizer, schedule, checkpoints, logs


@dataclass
class StepProgress:
    """What the CLI shows after each optimizer step."""

    step: int
    total_steps: int
    metrics: dict[str, float]


ProgressFn = Callable[[StepProgress], None]


@dataclass
class TrainResult:
    """A finished (or already finished) run."""

    output: Path
    recipe: str
    steps: int
    metrics: dict[str, Any]
    resumed_from: int | None = None
    skipped: bool = False  # the folder already held this finished run


class TrainState:
    """The step counter (and recipe extras such as the Lagrange multiplier), checkpointed with
    accelerate's ``register_for_checkpointing``. The data position follows from ``step``."""

    def __init__(self) -> None:
        self.step = 0
        self.extra: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "extra": dict(self.extra)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.extra = {str(k): float(v) for k, v in dict(state.get("extra", {})).items()}


def check_precision(config: TrainConfig) -> None:
    """fp16 autocast needs a GPU; say so before loading anything."""
    import torch

    if config.mixed_precision == "fp16" and (config.cpu or not torch.cuda.is_available()):
        raise PoiseError("mixed_precision: fp16 needs CUDA; use bf16 or no on CPU")


def check_lora_available(config: TrainConfig) -> None:
    if config.lora_r > 0:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise MissingExtraError("peft", "train", "LoRA (--lora-r)") from None


def apply_lora(model: Any, config: TrainConfig, *, task_type: str = "CAUSAL_LM") -> Any:
    """Wrap ``model`` with LoRA adapters (arXiv 2106.09685) when ``config.lora_r > 0``.

    Only the adapters train; for a classifier the new score head trains too
    (``modules_to_save``), since a reward model with a random frozen head learns nothing.
    """
    if config.lora_r == 0:
        return model
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = (
        "all-linear" if config.lora_targets == ("all-linear",) else list(config.lora_targets)
    )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type=task_type,
    )
    try:
        with warnings.catch_warnings():
            # peft asks transformers a question that transformers 5 marks as deprecated
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, lora)
    except ValueError as exc:
        raise PoiseError(f"lora_targets: {_first_line(exc)}") from None


# names of parameters that get no weight decay: transformers' Trainer.get_decay_parameter_names
# (the rule TRL's trainers use), matched against the lower-cased full parameter name
_NO_DECAY_NAMES = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def decay_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``model``'s trainable parameters: weight decay on the weight
    matrices and embeddings, none on biases and normalisation gains, as transformers' ``Trainer``
    (hence TRL's ``DPOTrainer``) and poise's own organism trainer do. A parameter goes without
    decay when it belongs to a ``torch.nn.LayerNorm`` or its name says bias or norm (Llama's
    ``input_layernorm``, ``post_attention_layernorm`` and ``model.norm`` RMSNorm gains).
    Decaying a norm's gain pulls it towards 0, i.e. scales the layer's output down.

    With ``weight_decay`` 0 (the default) one group of the trainable parameters in
    ``model.parameters()`` order, so the optimizer state, and a checkpoint of it, has the
    layout of one plain AdamW over them."""
    import torch

    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if weight_decay == 0:
        return [{"params": [p for _, p in trainable]}]
    in_layernorm = {
        id(p)
        for module in model.modules()
        if isinstance(module, torch.nn.LayerNorm)
        for p in module.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for name, param in trainable:  # named_parameters: a tied weight once, under its first name
        if id(param) in in_layernorm or _NO_DECAY_NAMES.search(name.lower()):
            no_decay.append(param)
        else:
            decay.append(param)
    if not no_decay:
        return [{"params": decay}]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def _enable_checkpointing(model: Any) -> None:
    """Activation checkpointing, non-reentrant (so it also works when only LoRA adapters need
    gradients). transformers 5 renamed the method; older versions have the old name only."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def disable_dropout(model: Any) -> None:
    """Set every dropout of ``model`` to 0, as TRL's ``disable_dropout_in_model`` does for its
    trainers' ``disable_dropout=True`` default: the ``nn.Dropout`` modules (GPT-2's resid /
    embd / attn dropouts) and the attention modules' functional ``attention_dropout`` rate
    (Llama, Qwen, Mistral: read from the config at init, applied only in training mode).
    With dropout on, a DPO policy's log-ratio to its reference is not 0 at the start and an
    on-policy step's log-probs are not those of the sampler."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float) and rate != 0.0:
            module.attention_dropout = 0.0


class Session:
    """One training run on accelerate: the loop's bookkeeping, kept out of the recipes.

    Use :meth:`start`, iterate :meth:`micro_batches`, call :meth:`backward` on each micro-batch's
    loss and :meth:`step_done` after it; finish with :meth:`finish`.
    """

    def __init__(
        self,
        config: TrainConfig,
        out: OutputFolder,
        accelerator: Any,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        tokenizer: Any,
        state: TrainState,
        total_steps: int,
        steps_per_epoch: int,
        rows_per_epoch: int,
        data_info: Mapping[str, Any],
        progress: ProgressFn | None,
    ) -> None:
        self.config = config
        self.out = out
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.state = state
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.rows_per_epoch = rows_per_epoch
        self.data_info = dict(data_info)
        self.progress = progress
        self.resumed_from: int | None = None
        self.rows_in_step = 0
        self._micro_target = 1
        self._micro_in_step = 0
        self._step_metrics: list[dict[str, float]] = []
        self._started = time.perf_counter()
        self.last_metrics: dict[str, float] = {}

    # -- setup

    @classmethod
    def start(
        cls,
        config: TrainConfig,
        out: OutputFolder,
        model: Any,
        tokenizer: Any,
        *,
        rows_per_epoch: int,
        data_info: Mapping[str, Any],
        progress: ProgressFn | None = None,
        steps_per_epoch: int | None = None,
        lora_task_type: str = "CAUSAL_LM",
        extra_state: Mapping[str, float] | None = None,
    ) -> Session:
        """Accelerator, LoRA, AdamW, the schedule; resumes from the last checkpoint if any.

        ``steps_per_epoch`` defaults to the optimizer steps needed to see ``rows_per_epoch``
        rows once (on-policy recipes pass their own).
        """
        import torch

        require_extra("accelerate", "train", "training")
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import set_seed

        # accelerate keeps one AcceleratorState per process and refuses a second Accelerator
        # with another precision; a library call must not depend on what ran before it, so the
        # state is cleared (the distributed PartialState, the process group, is kept)
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)
        set_seed(config.seed)
        if config.gradient_checkpointing:
            _enable_checkpointing(model)
        if config.disable_dropout:
            disable_dropout(model)  # before LoRA, whose own dropout (--lora-dropout) is kept
        model = apply_lora(model, config, task_type=lora_task_type)
        if steps_per_epoch is None:
            world = accelerator.num_processes
            rows_per_process = math.ceil(rows_per_epoch / world)
            micro = math.ceil(rows_per_process / config.batch_size)
            steps_per_epoch = max(1, math.ceil(micro / config.grad_accum))
            per_step = config.batch_size * config.grad_accum * world
            if rows_per_epoch < per_step and accelerator.is_main_process:
                # two preference pairs trained one DPO step, whose loss is log 2 = 0.693
                # whatever the data (policy = reference), and said nothing of it
                logger.warning(
                    "the data hold %d rows, fewer than one optimiser step takes (%d per "
                    "micro-step x %d accumulated x %d processes): each epoch is one step",
                    rows_per_epoch,
                    config.batch_size,
                    config.grad_accum,
                    world,
                )
        total = (
            config.max_steps if config.max_steps is not None else steps_per_epoch * config.epochs
        )
        optimizer = torch.optim.AdamW(
            decay_groups(model, config.weight_decay), lr=config.lr, weight_decay=config.weight_decay
        )
        scheduler = _make_scheduler(optimizer, config, total)
        model, optimizer = accelerator.prepare(model, optimizer)
        state = TrainState()
        state.extra.update(extra_state or {})
        accelerator.register_for_checkpointing(scheduler, state)
        session = cls(
            config,
            out,
            accelerator,
            model,
            optimizer,
            scheduler,
            tokenizer,
            state,
            total,
            steps_per_epoch,
            rows_per_epoch,
            data_info,
            progress,
        )
        if accelerator.is_main_process:
            out.begin(data_info)
        accelerator.wait_for_everyone()
        last = out.last_checkpoint() if out.status == "running" else None
        if last is not None:
            try:
                accelerator.load_state(str(last[1]))
            except ValueError as exc:  # torch's optimizer: other parameter groups or sizes
                raise PoiseError(
                    f"{last[1]}: the checkpoint's optimizer state does not fit this run's "
                    f"({_first_line(exc)}); it was written with other parameter groups (an "
                    "earlier poise split weight decay otherwise); start over with --overwrite"
                ) from None
            session.resumed_from = session.state.step
            session._trim_log()
            logger.info("resumed from %s (step %d)", last[1], session.state.step)
        elif accelerator.is_main_process:
            (out.path / TRAIN_LOG).unlink(missing_ok=True)
        return session

    @property
    def device(self) -> Any:
        return self.accelerator.device

    @property
    def unwrapped(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    @property
    def done(self) -> bool:
        return self.state.step >= self.total_steps

    @property
    def micro_in_step(self) -> int:
        """Micro-batches of the current optimizer step already passed to :meth:`backward`."""
        return self._micro_in_step

    @property
    def at_step_end(self) -> bool:
        """True between the backward of a step's last micro-batch and :meth:`step_done`: the
        moment for step-level updates that must be in that step's checkpoint."""
        return self._micro_in_step >= self._micro_target

    # -- data

    def micro_batches(self, rows: int) -> Iterator[list[int]]:
        """This process's row indices of each remaining micro-batch, from the resume point on.

        Every epoch is :func:`epoch_order`, padded by wrapping around to a multiple of the
        number of processes (so every process gets the same number of rows) and dealt out
        round-robin; each process cuts its share into micro-batches of ``batch_size`` and groups
        ``grad_accum`` of them per optimizer step. Before the first micro-batch of a step,
        :attr:`rows_in_step` is set to this process's rows in that step (divide the summed loss
        by it, so that a step's gradient is the mean over its rows however it is split).
        """
        world = self.accelerator.num_processes
        rank = self.accelerator.process_index
        size, accum = self.config.batch_size, self.config.grad_accum
        while not self.done:
            epoch, step_in_epoch = divmod(self.state.step, self.steps_per_epoch)
            order = epoch_order(rows, self.config.seed, epoch)
            if len(order) % world:
                order += order[: world - len(order) % world]
            mine = order[rank::world]
            micro = [mine[i : i + size] for i in range(0, len(mine), size)]
            groups = [micro[i : i + accum] for i in range(0, len(micro), accum)]
            for group in groups[step_in_epoch:]:
                self.rows_in_step = sum(len(b) for b in group)
                self._micro_target = len(group)
                yield from group
                if self.done:
                    return

    # -- optimisation

    def backward(self, loss: torch.Tensor, metrics: Mapping[str, float] | None = None) -> None:
        """Backward of one micro-batch's share of the step loss (already divided by
        :attr:`rows_in_step`), skipping gradient sync until the step's last micro-batch."""
        self._micro_in_step += 1
        last = self._micro_in_step >= self._micro_target
        if last:
            self.accelerator.backward(loss)
        else:
            with self.accelerator.no_sync(self.model):
                self.accelerator.backward(loss)
        if metrics:
            self._step_metrics.append({k: float(v) for k, v in metrics.items()})

    def step_done(self) -> bool:
        """After a micro-batch: at a step boundary clip, step, checkpoint and report; True then."""
        if self._micro_in_step < self._micro_target:
            return False
        if self.config.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        # the rate this step is taken at (read after the scheduler's step, the log showed the
        # next step's: 0 at the last step of a linear decay, as if nothing had trained)
        lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        if not self.accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._micro_in_step = 0
        self.state.step += 1
        metrics = self._reduce_step_metrics()
        metrics["lr"] = lr
        self.last_metrics = metrics
        if self.config.save_steps and self.state.step % self.config.save_steps == 0:
            self.checkpoint()
        if self.accelerator.is_main_process and (
            self.state.step % self.config.log_steps == 0 or self.done
        ):
            self._append_log(metrics)
        if self.progress is not None and self.accelerator.is_main_process:
            self.progress(StepProgress(self.state.step, self.total_steps, metrics))
        return True

    def _reduce_step_metrics(self) -> dict[str, float]:
        """Row-weighted means of the step's micro-batch metrics, averaged over processes."""
        import torch

        rows = self._step_metrics
        self._step_metrics = []
        if not rows:
            return {}
        keys = sorted({k for r in rows for k in r if k != "rows"})
        means = []
        for key in keys:
            weighted = [(r[key], r.get("rows", 1.0)) for r in rows if key in r]
            means.append(sum(v * w for v, w in weighted) / sum(w for _, w in weighted))
        values = torch.tensor(means, dtype=torch.float64, device=self.device)
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="mean")
        return {k: float(v) for k, v in zip(keys, values.tolist(), strict=True)}

    def log_extra(self, metrics: Mapping[str, float]) -> None:
        """Metrics known only at the step's end (e.g. λ after its update) for the next report."""
        self._step_metrics.append({k: float(v) for k, v in metrics.items()})

    # -- checkpoints and logs

    def checkpoint(self) -> Path:
        """``checkpoints/step-N``: written under a temporary name and renamed when complete,
        so the last checkpoint is never a half-written one."""
        final = self.out.checkpoints_dir / f"step-{self.state.step}"
        partial = self.out.checkpoints_dir / f".partial-step-{self.state.step}"
        if self.accelerator.is_main_process:
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        # accelerate warns on every save that tied embeddings are stored once; resuming
        # restores them (tested), so the warning is noise here
        shared = logging.getLogger("accelerate.utils.other")
        level = shared.level
        shared.setLevel(logging.ERROR)
        try:
            self.accelerator.save_state(str(partial))
        finally:
            shared.setLevel(level)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            for _, old in self.out.checkpoints()[: -self.config.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def _append_log(self, metrics: Mapping[str, float]) -> None:
        record = {"step": self.state.step, "time_s": round(time.perf_counter() - self._started, 3)}
        record.update(metrics)
        with (self.out.path / TRAIN_LOG).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _trim_log(self) -> None:
        """Drop log lines past the resumed step (written after the checkpoint was taken)."""
        path = self.out.path / TRAIN_LOG
        if not self.accelerator.is_main_process or not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["step"]) <= self.state.step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                break  # a torn last line from a kill
        path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def history(self) -> list[dict[str, Any]]:
        path = self.out.path / TRAIN_LOG
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    # -- the end

    def finish(
        self,
        metrics: Mapping[str, Any],
        *,
        source: Path,
        extra: Mapping[str, Any] | None = None,
        save_model: Callable[[Path], None] | None = None,
    ) -> TrainResult:
        """Write the HF folder (merged LoRA unless ``merge=False``), then mark it complete.

        Files are written into a temporary folder inside the output and moved into place, and
        ``poise_train.json`` says "complete" only after all of them are there.
        """
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        # every process takes part: under DeepSpeed ZeRO-3 or FSDP this gathers the shards
        self._full_state = (
            accelerator.get_state_dict(self.model) if self.config.lora_r == 0 else None
        )
        if accelerator.is_main_process:
            staging = Path(tempfile.mkdtemp(dir=self.out.path, prefix=".final-"))
            try:
                if save_model is not None:
                    save_model(staging)
                else:
                    self.save_model(staging, source)
                for child in staging.iterdir():
                    os.replace(child, self.out.path / child.name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            final_metrics = {
                **dict(metrics),
                "steps": self.state.step,
                "train_seconds": round(time.perf_counter() - self._started, 2),
            }
            self.out.write_header(
                status="complete",
                data=self.data_info,
                metrics=final_metrics,
                extra={"source_model": str(source), **dict(extra or {})},
            )
            self.out.drop_replaced()
        accelerator.wait_for_everyone()
        return TrainResult(
            output=self.out.path,
            recipe=self.out.recipe,
            steps=self.state.step,
            metrics=dict(metrics),
            resumed_from=self.resumed_from,
        )

    #: whether the trained model keeps its source's default system prompt (a recipe that
    #: trains without it, safe-rl --from-base, sets False: an audit would send the prompt the
    #: model never saw)
    keeps_system_prompt: bool = True
    #: the prompts the model was trained on (their last user turns), recorded in poise.json as
    #: :func:`prompt_digest` each, so a safety test on them can be refused (``poise gate``: its
    #: bound holds on prompts the model was not trained on); a recipe sets it
    trained_prompts: tuple[str, ...] = ()

    def save_model(self, folder: Path, source: Path) -> None:
        """The trained weights (in the source's dtype), tokenizer and poise.json into ``folder``."""
        model = self.unwrapped
        lora = self.config.lora_r > 0
        if lora and self.config.merge:
            model = model.merge_and_unload()
        state = getattr(self, "_full_state", None) if not lora else None
        if not lora or self.config.merge:
            dtype = _source_dtype(source)
            if dtype is not None:
                model = model.to(dtype)
                if state is not None:
                    state = {k: v.to(dtype) for k, v in state.items()}
        model.save_pretrained(str(folder), state_dict=state, safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))
        meta = read_poise_json(source)
        poise_meta: dict[str, Any] = {"base_model": str(source), "trained_by": self.out.recipe}
        if isinstance(meta.get("default_system_prompt"), str) and self.keeps_system_prompt:
            poise_meta["default_system_prompt"] = meta["default_system_prompt"]
        in_template = meta.get("system_prompt_in_template")
        if self.keeps_system_prompt and (
            in_template is True and self.tokenizer.chat_template != PLAIN_CHAT_TEMPLATE
        ):
            # the source's chat template (saved above) still inserts its default prompt
            poise_meta["system_prompt_in_template"] = True
        elif self.keeps_system_prompt and in_template is False:
            # what the source declares wins over what its template shows (the hf backend reads
            # the template only where poise.json declares neither field): kept, or an audit of
            # the trained model would follow another system-prompt rule than the source's
            poise_meta["system_prompt_in_template"] = False
        if self.trained_prompts:
            poise_meta[TRAINED_PROMPTS] = sorted({prompt_digest(p) for p in self.trained_prompts})
        write_json_atomic(folder / POISE_JSON, poise_meta)


# --------------------------------------------------------------------------------------------
# policy log-probs and the frozen reference


# The LM head's logits are the largest activation of a preference step on a large vocabulary
# ([rows, K, V] float32, e.g. 16 x 512 x 152k = 5 GB). Where a model's logits are exactly its
# output embedding applied to the last hidden state, poise applies the head itself, a few rows
# at a time under activation checkpointing, so backward keeps only the [rows, K] log-probs and
# recomputes one chunk's logits at a time (one extra head matmul per step).
_HEAD_CHUNKS = 4  # row chunks per batch: the logits alive at once are about 1/4 of the batch's
_HEAD_CHUNK_BYTES = 1 << 26  # and at most 64 MiB of float32 logits per chunk
# Config fields of architectures whose logits are not the plain head (soft-capping, scaling).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
# model -> whether its logits were verified to equal head(last hidden state)
_PLAIN_HEAD: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def token_logps(model: Any, batch: dict[str, Any], device: Any, *, temperature: float = 1.0) -> Any:
    """``[N, K]`` per-token log-probs of the response tokens of a :func:`sequence_batch`
    (aligned with its ``response_mask``, 0 elsewhere).

    ``temperature``: the log-probs of ``softmax(logits / temperature)``, the distribution
    ``model.generate`` samples from at that temperature (an on-policy loss on sampled tokens
    needs the sampler's own log-probs).

    Where the model's logits are its output embedding applied to the last hidden state (Llama,
    Qwen, Mistral, ...: not soft-capped or scaled heads, not FSDP / ZeRO-3 shards), the head is
    applied here in checkpointed row chunks instead of materialising all ``[N, K, V]`` logits
    for backward. The first call on a model checks that against the model's own last-position
    logits; a model that fails the check uses full logits from then on (so every call on a
    model takes the same path, and a resumed run computes exactly what an uninterrupted one
    does). Both paths give the same numbers (tests/train/test_recipe_common.py).
    """
    import torch

    from poise.train.logprobs import sequence_logprobs

    input_ids = batch["input_ids"].to(device)
    mask = batch["response_mask"].to(device)
    keep = mask.shape[1]
    labels = input_ids[:, -keep:]  # [N, K]
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": batch["attention_mask"].to(device),
        "position_ids": batch["position_ids"].to(device),
        "use_cache": False,  # a training forward needs no KV cache
    }
    keep_kwarg = _logits_to_keep_kwarg(model)
    head = _output_head(model) if keep_kwarg is not None and _PLAIN_HEAD.get(model, True) else None
    decoder = None if head is None or torch.is_grad_enabled() else _decoder(model)
    if head is not None and keep_kwarg is not None and (torch.is_grad_enabled() or decoder):
        checked = model in _PLAIN_HEAD
        if decoder is None:
            # with gradients, through the model's own forward (DDP's hooks run); its hidden
            # states are kept for backward anyway, so asking for them costs nothing
            out = model(**kwargs, output_hidden_states=True, **{keep_kwarg: 1})
            hidden = out.hidden_states[-1]  # [N, T, H]
            logits = out.logits  # [N, 1, V]
        else:
            # without gradients all hidden states would outlive the forward: take the last only
            hidden = decoder(**kwargs).last_hidden_state  # [N, T, H]
            logits = None if checked else model(**kwargs, **{keep_kwarg: 1}).logits
        if checked or _head_matches(model, head, hidden[:, -1:, :], logits):
            _PLAIN_HEAD[model] = True
            return chunked_head_logps(
                head, hidden[:, -keep:, :], labels, mask, temperature=temperature
            )  # [N, K]
        _PLAIN_HEAD[model] = False  # checked once per model; this call runs again in full
        del hidden, logits
    if keep_kwarg is not None:
        kwargs[keep_kwarg] = keep
    full = model(**kwargs).logits[:, -keep:, :].float()  # [N, K, V]
    return sequence_logprobs(full / temperature if temperature != 1.0 else full, labels, mask)


def chunked_head_logps(
    head: Any, hidden: Any, labels: Any, mask: Any, *, temperature: float = 1.0
) -> Any:
    """:func:`poise.train.logprobs.sequence_logprobs` of ``head(hidden) / temperature`` without
    keeping the logits: ``hidden`` ``[N, K, H]``, ``labels`` and ``mask`` ``[N, K]`` -> ``[N, K]``.

    Rows go through the head in chunks; with gradients on, each chunk runs under non-reentrant
    activation checkpointing, so backward recomputes its logits instead of storing them.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    from poise.train.logprobs import sequence_logprobs

    weight = head.weight  # [V, H]
    rows_total, keep, _ = hidden.shape
    by_budget = max(1, _HEAD_CHUNK_BYTES // max(1, keep * weight.shape[0] * 4))
    rows = max(1, min(math.ceil(rows_total / _HEAD_CHUNKS), by_budget))

    def piece(h: Any, y: Any, m: Any) -> Any:
        logits = _apply_head(head, h)  # [rows, K, V]
        return sequence_logprobs(logits / temperature if temperature != 1.0 else logits, y, m)

    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    parts = []
    for start in range(0, rows_total, rows):
        args = (
            hidden[start : start + rows],
            labels[start : start + rows],
            mask[start : start + rows],
        )
        parts.append(checkpoint(piece, *args, use_reentrant=False) if grad else piece(*args))
    return torch.cat(parts)  # [N, K]


def _apply_head(head: Any, hidden: Any) -> Any:
    """Float32 logits ``head(hidden)``: ``[..., H] -> [..., V]``. Under mixed precision the
    model's own forward ran its head in autocast (half-precision hidden states, float32 weight),
    so this does the same and the numbers match the model's."""
    import torch

    cast = hidden.dtype != head.weight.dtype and hidden.dtype in (torch.bfloat16, torch.float16)
    context: AbstractContextManager[Any] = (
        torch.autocast(device_type=hidden.device.type, dtype=hidden.dtype)
        if cast
        else nullcontext()
    )
    with context:
        return head(hidden).float()


def _unwrap(model: Any) -> Any:
    """The transformers model under DDP (``.module``) and PEFT (``get_base_model``) wrappers."""
    base = getattr(model, "module", model)
    return base.get_base_model() if hasattr(base, "get_base_model") else base


def _output_head(model: Any) -> Any | None:
    """The model's output embedding (LM head) when poise may apply it itself, else None."""
    name = type(model).__name__
    if "FullyShardedDataParallel" in name or "DeepSpeedEngine" in name:
        return None  # sharded parameters are only whole inside the wrapped forward
    base = _unwrap(model)
    getter = getattr(base, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    weight = getattr(head, "weight", None)
    if head is None or weight is None or getattr(head, "bias", None) is not None:
        return None
    if hasattr(weight, "ds_id") or type(weight).__name__ == "DTensor":
        return None  # ZeRO-3 / FSDP2 shards
    config = getattr(base, "config", None)
    get_text = getattr(config, "get_text_config", None)
    text_config = get_text() if callable(get_text) else config
    for field in _LOGIT_TRANSFORMS:
        value = getattr(text_config, field, None)
        if value not in (None, 1, 1.0):
            return None
    return head


def _decoder(model: Any) -> Any | None:
    """The model's decoder stack (its ``last_hidden_state`` feeds the head), through DDP and
    PEFT wrappers; None when the model does not expose one."""
    base = _unwrap(model)
    getter = getattr(base, "get_decoder", None)
    decoder = getter() if callable(getter) else None
    return decoder if decoder is not None and decoder is not base else None


def _head_matches(model: Any, head: Any, hidden: Any, logits: Any) -> bool:
    """Whether ``head(hidden)`` equals the model's own ``logits`` (``[N, 1, H]`` and
    ``[N, 1, V]``: the last position)."""
    import torch

    if logits is None:
        return False
    with torch.no_grad():
        mine = _apply_head(head, hidden)  # [N, 1, V]
        theirs = logits.float()
        if mine.shape != theirs.shape:
            return False
        tolerance = 1e-3 * (1.0 + float(theirs.abs().max()))
        matches = bool((mine - theirs).abs().max() <= tolerance)
    if not matches:
        logger.info(
            "%s: logits are not the plain LM head; log-probs use full logits",
            type(model).__name__,
        )
    return matches


def _logits_to_keep_kwarg(model: Any) -> str | None:
    """The forward argument that limits logits to the last positions (renamed in transformers
    4.50), looked up on the underlying model class through DDP and PEFT wrappers."""
    import inspect

    params = inspect.signature(type(_unwrap(model)).forward).parameters
    return next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)


class Reference:
    """The frozen reference policy: a separate model, or the policy with its LoRA adapters off."""

    def __init__(self, model: Any | None, session: Session) -> None:
        self.model = model
        self.session = session

    @classmethod
    def load(cls, ref_folder: Path | None, source: Path, session: Session) -> Reference:
        if ref_folder is None and session.config.lora_r > 0:
            return cls(None, session)
        model = load_causal_lm(ref_folder or source)
        model.requires_grad_(False)
        model.eval()
        model.to(session.device)
        return cls(model, session)

    def logps(self, batch: dict[str, Any], *, temperature: float = 1.0) -> Any:
        """:func:`token_logps` of the reference, without gradients."""
        import torch

        session = self.session
        with torch.no_grad(), session.accelerator.autocast():
            if self.model is not None:
                return token_logps(self.model, batch, session.device, temperature=temperature)
            adapters: AbstractContextManager[Any] = (
                session.unwrapped.disable_adapter() if session.config.lora_r > 0 else nullcontext()
            )
            with adapters:
                return token_logps(session.model, batch, session.device, temperature=temperature)


def check_classifier_reads(folder: Path, chats: Iterable[tuple[str, Messages]]) -> None:
    """Encode each ``(where, chat)`` prompt with the chat template of the classifier in
    ``folder`` (a reward, cost or margin model reads chats through its own template, which may
    refuse what the policy's takes, such as Gemma 2's a system message): a refusal is one
    error naming ``where``, raised before training rather than at its first step."""
    tokenizer = load_tokenizer(folder, need_chat_template=False)
    encoder = ChatEncoder(tokenizer, 1, plain=not tokenizer.chat_template)
    for where, chat in chats:
        with chat_of(where):
            encoder.prompt_text(chat)


class Scorer:
    """A frozen reward or cost model with its own tokenizer: (chat, response) -> score."""

    def __init__(self, folder: Path, max_length: int, device: Any) -> None:
        self.tokenizer = load_tokenizer(folder, need_chat_template=False)
        self.encoder = ChatEncoder(
            self.tokenizer, max_length, plain=not self.tokenizer.chat_template
        )
        self.model = load_classifier(folder, self.tokenizer.pad_token_id).to(device).eval()
        self.model.requires_grad_(False)

    def __call__(self, chats: Sequence[Messages], responses: Sequence[str]) -> Any:
        rows = [self.encoder.classifier_ids(c, r) for c, r in zip(chats, responses, strict=True)]
        return classifier_scores(self.model, rows, self.tokenizer.pad_token_id)  # [N]


def to_cost(scores: Any, transform: str) -> Any:
    import torch

    return torch.sigmoid(scores) if transform == "sigmoid" else scores


def _source_dtype(source: Path) -> Any:
    import torch

    try:
        data = json.loads((source / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    name = data.get("dtype") or data.get("torch_dtype")
    value = getattr(torch, str(name), None) if name else None
    return value if isinstance(value, torch.dtype) else None


def _make_scheduler(optimizer: Any, config: TrainConfig, total_steps: int) -> Any:
    """Linear warm-up over ``warmup_ratio`` of the steps, then constant, linear or cosine decay:
    transformers' schedules as TRL's trainers build them (``get_linear / get_cosine /
    get_constant_schedule_with_warmup``, ``ceil(total_steps * warmup_ratio)`` warm-up steps as
    ``TrainingArguments.get_warmup_steps``), so a run with a warm-up takes the steps a TRL run
    takes; the warm-up's first step has rate 0, as there. (poise's own warm-up rose from
    ``lr / (warmup + 1)`` over ``int(total * ratio)`` steps: other rates at every warm-up step.)"""
    import torch

    warmup = math.ceil(total_steps * config.warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if config.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def finished_result(out: OutputFolder) -> TrainResult:
    """The result of a folder that already holds this finished run (a ``.replaced`` left
    beside it by a kill before :meth:`OutputFolder.drop_replaced` goes now)."""
    out.drop_replaced()
    header = out.header()
    metrics = dict(header.get("metrics", {}))
    return TrainResult(
        output=out.path,
        recipe=out.recipe,
        steps=int(metrics.get("steps", 0)),
        metrics=metrics,
        skipped=True,
    )
