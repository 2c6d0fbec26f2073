"""The streaming content monitor: a causal backbone with a token head and a response head.

SCM, "From Judgment to Interference: Early Stopping LLM Harmful Outputs via Streaming Content
Monitoring" (Li et al., arXiv 2506.09996; released code ICTMCG/SCM). A causal LM's last hidden
state ``h_t`` at every token feeds two linear heads:

- the **token head** ``W_tok h_t + b`` ([hidden] -> 2 classes: harmless, harmful), supervised by
  token-level harm labels (``model/modeling_qwen4dual_2CE_w_logic.py``: ``token_classifier``,
  applied after dropout 0.1);
- the **response head** ``W_resp h_T`` (no bias, ``sequence_classifier``), supervised by the
  response's label at its last token.

Training loss (the paper's dual supervision plus its logic-consistency term; the released code's
``forward``):

    L = alpha * CE_token + (1 - alpha) * CE_response + gamma * L_logic

with the released defaults ``alpha = 0.6``, ``gamma = 1`` (``scripts/run-scm.sh``; ``beta = 1 -
alpha`` in ``train/train_qwen.py``'s ``parse_config``), ``L_logic`` reduced by ``max``
(``--logic-reduce max``). ``L_logic`` (``utils/logic_consistency_loss.py``) makes "the response is
harmful" imply "some token is harmful": with ``p_R`` the response head's harmful probability and
``m = max_t p_tok(t)`` over the labelled (response) tokens,

    L_logic = mean over rows of -log(max(1 - p_R + p_R * m, 1e-8)).

Which head drives streaming decisions: the released partial-detection evaluation
(``test/test_qwen_partial.py``) scores every token with the **response head**
(``token_logits = self.sequence_classifier(hidden_states)``: "use sequence_clf for every token's
prediction"), not the token head; poise follows the code (``head="response"``, the default; the
token head is available as ``head="token"``). The paper's delay-k rule (``utils/metrics.py``,
``evaluate_k``) flags a response once ``k`` of its tokens score at or above the threshold; the
code counts flagged tokens over the response so far (``np.sum(seq) >= k``), not consecutive
ones, and poise does the same (:mod:`poise.guards.streaming`). The released evaluation zeroes
the scores of positions without a token label before counting (``token_scores_ori[~mask] =
0``): besides the prompt and padding, the few response tokens its data script aligns to no
word (a token of whitespace alone, for one) or that its re-tokenization splits (all but the first
piece); poise counts every response token.

Input layout: the prompt through the backbone's chat template with the generation prompt (the
token ids a poise model generates after), then the response's tokens; prompt tokens carry no
token label (ignored, as the released data script labels them -100; the released script
writes the prompt and a blank line without a chat template). The response head reads the
response's last token, the position a streaming guard reaches when the answer ends. So does
the released code: it reads the last token that is not padding (``last_non_pad_token``), and
the EOS token its data script appends is the padding token of its Qwen2.5 base tokenizers
(``<|endoftext|>`` is both; ``test/test_qwen_partial.py`` sets ``pad_token = eos_token``), so
that position is the response's last token (the newline that ends its last sentence), not
the EOS.

A monitor folder holds the backbone's Hugging Face files (config, safetensors weights,
tokenizer), ``monitor.safetensors`` (the two heads) and ``monitor.json`` (the header: loss
parameters, the streaming head, the calibrated threshold and k, and what it was trained on).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from poise.errors import PoiseError

if TYPE_CHECKING:
    from poise.guards.data import MonitorExample

__all__ = [
    "MONITOR_JSON",
    "MONITOR_TENSORS",
    "Monitor",
    "MonitorHeader",
    "is_monitor_folder",
    "load_monitor",
    "logic_consistency_loss",
    "monitor_folder",
    "scm_loss",
]

MONITOR_JSON = "monitor.json"
MONITOR_TENSORS = "monitor.safetensors"
MONITOR_FORMAT = 1
IGNORE = -100  # token label of positions without one (the prompt, padding)

Head = Literal["response", "token"]
Reduce = Literal["max", "min", "avg"]


@dataclass(frozen=True)
class MonitorHeader:
    """``monitor.json``: how the monitor was trained and how it decides.

    ``alpha``, ``gamma``, ``logic_reduce``: the loss (released defaults 0.6, 1, max). ``head``:
    which head scores tokens while streaming (``"response"``, as the released code). ``threshold``
    and ``k``: the delay-k rule's defaults, chosen on a validation split (``calibrate``).
    """

    alpha: float = 0.6
    gamma: float = 1.0
    logic_reduce: Reduce = "max"
    head: Head = "response"
    threshold: float = 0.5
    k: int = 1
    base: str | None = None  # the backbone the monitor was trained from
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": MONITOR_FORMAT, **asdict(self)}


def logic_consistency_loss(
    response_logits: torch.Tensor,
    token_logits: torch.Tensor,
    token_mask: torch.Tensor,
    reduce: Reduce = "max",
) -> torch.Tensor:
    """SCM's logic-consistency loss (arXiv 2506.09996; ICTMCG/SCM
    ``utils/logic_consistency_loss.py``), mean over rows.

    ``response_logits``: [rows, 2]; ``token_logits``: [rows, tokens, 2]; ``token_mask``: [rows,
    tokens], 1 at labelled tokens. ``p_R = softmax(response)[1]``, ``g_t = softmax(token_t)[1] *
    mask_t``, ``m = reduce_t g_t``: ``-log(max(1 - p_R + p_R * m, 1e-8))``. As in the released
    code, ``avg`` and ``min`` run over every position (masked ones count as 0)."""
    p_response = F.softmax(response_logits.float(), dim=-1)[..., -1]  # [rows]
    p_tokens = F.softmax(token_logits.float(), dim=-1)[..., -1] * token_mask  # [rows, tokens]
    if reduce == "max":
        pooled = p_tokens.max(dim=-1).values
    elif reduce == "min":
        pooled = p_tokens.min(dim=-1).values
    else:
        pooled = p_tokens.mean(dim=-1)
    implied = (1 - p_response + p_response * pooled).clamp(min=1e-8)  # [rows]
    return -implied.log().mean()


def scm_loss(
    token_logits: torch.Tensor,
    response_logits: torch.Tensor,
    token_labels: torch.Tensor,
    response_labels: torch.Tensor,
    *,
    alpha: float = 0.6,
    gamma: float = 1.0,
    reduce: Reduce = "max",
) -> dict[str, torch.Tensor]:
    """``alpha * CE_token + (1 - alpha) * CE_response + gamma * L_logic`` (arXiv 2506.09996,
    the released ``QwenForDualTask.forward``).

    ``token_logits``: [rows, tokens, 2]; ``response_logits``: [rows, 2]; ``token_labels``:
    [rows, tokens] int64 in {0, 1} or -100 (ignored); ``response_labels``: [rows] int64.
    ``CE_token`` is the mean over labelled tokens of the whole batch (``CrossEntropyLoss`` with
    ``ignore_index=-100``), ``CE_response`` the mean over rows. Returns ``loss``, ``token``,
    ``response`` and ``logic``."""
    token = F.cross_entropy(
        token_logits.reshape(-1, token_logits.size(-1)).float(),
        token_labels.reshape(-1),
        ignore_index=IGNORE,
    )
    response = F.cross_entropy(response_logits.float(), response_labels)
    mask = (token_labels != IGNORE).to(token_logits.dtype)  # [rows, tokens]
    logic = logic_consistency_loss(response_logits, token_logits, mask, reduce)
    loss = alpha * token + (1 - alpha) * response + gamma * logic
    return {"loss": loss, "token": token, "response": response, "logic": logic}


class Monitor(torch.nn.Module):
    """A causal backbone (any Hugging Face causal LM) with SCM's two heads.

    ``backbone``: the causal LM (its decoder body reads the tokens; its LM head is unused and kept
    so the folder stays a loadable causal LM). ``tokenizer``: its tokenizer.
    """

    def __init__(self, backbone: Any, tokenizer: Any, header: MonitorHeader | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.header = header or MonitorHeader()
        hidden = int(backbone.config.hidden_size)
        self.token_head = torch.nn.Linear(hidden, 2)
        self.response_head = torch.nn.Linear(hidden, 2, bias=False)
        # the released code's initialisation (post_init): Xavier-uniform weights, zero bias
        torch.nn.init.xavier_uniform_(self.token_head.weight)
        torch.nn.init.zeros_(self.token_head.bias)
        torch.nn.init.xavier_uniform_(self.response_head.weight)
        self.dropout = torch.nn.Dropout(0.1)
        self.name = ""
        params = _forward_parameters(self.body)
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    @property
    def body(self) -> Any:
        """The decoder body (hidden states without the LM head)."""
        return self.backbone.base_model

    @property
    def config(self) -> Any:
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return self.token_head.weight.device

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """[rows, new, hidden]: the last layer's hidden states of ``input_ids`` [rows, new]
        (``attention_mask`` [rows, cached + new]; ``cache`` a transformers cache or None)."""
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "use_cache": cache is not None,
        }
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self._cache_kwarg] = cache
        return self.body(**kwargs).last_hidden_state

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and full detection on right-padded rows: (token logits [rows, tokens, 2],
        response logits [rows, 2] at each row's last real token)."""
        hidden = self.hidden(input_ids, attention_mask)  # [rows, tokens, hidden]
        last = attention_mask.sum(dim=-1) - 1  # [rows]
        rows = torch.arange(hidden.size(0), device=hidden.device)
        response_logits = self.response_head(hidden[rows, last])  # [rows, 2]
        token_logits = self.token_head(self.dropout(hidden))  # [rows, tokens, 2]
        return token_logits, response_logits

    def scores(self, hidden: torch.Tensor, head: str | None = None) -> torch.Tensor:
        """[..., ] float32 harmful probability of each position's hidden state [..., hidden]
        under ``head`` ("response" or "token"; default: the streaming head, ``header.head``)."""
        head = head or self.header.head
        if head not in ("response", "token"):
            raise PoiseError(f"monitor head {head!r}: expected response or token")
        layer = self.response_head if head == "response" else self.token_head
        return F.softmax(layer(hidden).float(), dim=-1)[..., 1]

    # -- inputs

    def prompt_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """The prompt as a poise model generates after it: the chat template with the
        generation prompt, no special tokens added."""
        text = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_answers(
        self, examples: Sequence[MonitorExample]
    ) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
        """Labelled answers as the monitor reads them: each one's prompt ids (the chat template
        with the generation prompt), response ids and response token labels (1 harmful, 0 not;
        :func:`~poise.guards.data.encode_example`)."""
        from poise.guards.data import encode_example

        prompts, responses, labels = [], [], []
        for example in examples:
            prompt = self.prompt_ids(example.chat)
            ids, token_labels = encode_example(self.tokenizer, prompt, example)
            prompts.append(prompt)
            responses.append(ids[len(prompt) :])
            labels.append(token_labels[len(prompt) :])
        return prompts, responses, labels

    @torch.inference_mode()
    def response_scores(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        head: str | None = None,
    ) -> list[list[float]]:
        """Each response token's streaming score (teacher forcing, one pass per row batch):
        ``out[i][t]`` is the harmful probability after response token ``t`` of row ``i``,
        under ``head`` (default: the streaming head, ``header.head``)."""
        self.eval()
        out: list[list[float]] = []
        order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(responses[i])))
        results: dict[int, list[float]] = {}
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            rows = [list(prompts[i]) + list(responses[i]) for i in batch]
            width = max(len(r) for r in rows)
            pad = _pad_id(self.tokenizer)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
            mask = torch.tensor(
                [[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device
            )
            scores = self.scores(self.hidden(ids, mask), head)  # [rows, width]
            for j, i in enumerate(batch):
                p, n = len(prompts[i]), len(responses[i])
                results[i] = scores[j, p : p + n].tolist()
        out = [results[i] for i in range(len(prompts))]
        return out

    # -- the folder

    def save(self, folder: str | Path) -> Path:
        """Write the monitor folder (see the module docstring); nothing half-written: the
        folder appears whole or not at all."""
        from safetensors.torch import save_file

        final = Path(folder)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            self.backbone.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            heads = {
                "token_head.weight": self.token_head.weight,
                "token_head.bias": self.token_head.bias,
                "response_head.weight": self.response_head.weight,
            }
            save_file(
                {k: v.detach().float().contiguous().cpu() for k, v in heads.items()},
                tmp / MONITOR_TENSORS,
            )
            self.save_header(tmp)
            tmp.chmod(0o755)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def save_header(self, folder: str | Path) -> Path:
        """Write ``monitor.json`` into ``folder`` (whole or not at all: a temporary file is
        moved into place); the weights are left as they are."""
        path = Path(folder) / MONITOR_JSON
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.header.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path


def _forward_parameters(module: Any) -> set[str]:
    import inspect

    return set(inspect.signature(module.forward).parameters)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_safetensor_error(exc: BaseException) -> bool:
    # safetensors' error for a truncated or corrupt file is no OSError or ValueError
    return type(exc).__name__ == "SafetensorError"


def is_monitor_folder(folder: Path) -> bool:
    return (folder / MONITOR_JSON).is_file()


def monitor_folder(name: str) -> Path:
    """The folder a monitor name stands for: a plugin's model name (``organism-monitor``) or a
    path; one clear line if it is not a monitor folder."""
    from poise.models.resolve import model_folder

    try:
        folder = model_folder(name) or Path(name).expanduser()
    except PoiseError as exc:
        raise PoiseError(f"monitor {name!r}: {exc}") from None
    if not is_monitor_folder(folder):
        raise PoiseError(
            f"monitor {name!r}: not a monitor folder (no {MONITOR_JSON} in {folder}); "
            "train one with `poise train monitor`"
        )
    return folder


def read_header(folder: Path) -> MonitorHeader:
    """The ``monitor.json`` of a monitor folder, checked."""
    from poise.errors import located, read_json_object

    path = folder / MONITOR_JSON
    raw = read_json_object(path)
    if raw.get("format") != MONITOR_FORMAT:
        raise located(path, None, f"expected a monitor header of format {MONITOR_FORMAT}")
    raw = {k: v for k, v in raw.items() if k != "format"}
    try:
        header = MonitorHeader(**raw)
    except TypeError as exc:
        raise located(path, None, f"unexpected field ({exc})") from None
    # types first: a hand-edited header ("threshold": "0.9", "k": 2.5) is one line, not a
    # TypeError from a comparison further on
    for name in ("alpha", "gamma", "threshold"):
        value = getattr(header, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise located(path, None, f"{name} must be a number, got {value!r}")
    if isinstance(header.k, bool) or not isinstance(header.k, int):
        raise located(path, None, f"k must be an integer, got {header.k!r}")
    if header.base is not None and not isinstance(header.base, str):
        raise located(path, None, f"base must be a string or null, got {header.base!r}")
    if not isinstance(header.metadata, dict):
        raise located(path, None, f"metadata must be an object, got {header.metadata!r}")
    if header.head not in ("response", "token") or header.logic_reduce not in ("max", "min", "avg"):
        raise located(path, None, f"head {header.head!r} / logic_reduce {header.logic_reduce!r}")
    if not (0 <= header.threshold <= 1) or not math.isfinite(header.threshold) or header.k < 1:
        raise located(path, None, f"threshold {header.threshold} / k {header.k} out of range")
    return header


def load_monitor(name: str, *, device: str = "cpu") -> Monitor:
    """The monitor saved in a folder (or named by a plugin: ``organism-monitor``)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poise.models.resolve import _quiet_weight_loading

    folder = monitor_folder(name)
    header = read_header(folder)
    if not (folder / MONITOR_TENSORS).is_file():
        raise PoiseError(f"monitor {name!r}: {MONITOR_TENSORS} is missing in {folder}")
    # a folder with a monitor.json whose other files are missing or broken: one line that says
    # which part did not load (as HFModel says it for a model folder), not a transformers or
    # safetensors traceback
    try:
        with _quiet_weight_loading():
            backbone = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True)
    except Exception as exc:
        if not isinstance(exc, (OSError, ValueError, KeyError)) and not _is_safetensor_error(exc):
            raise
        raise PoiseError(
            f"monitor {name!r}: could not load the backbone in {folder} ({_first_line(exc)})"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise PoiseError(
            f"monitor {name!r}: could not load the tokenizer in {folder} ({_first_line(exc)})"
        ) from None
    monitor = Monitor(backbone, tokenizer, header)
    try:
        heads = load_file(str(folder / MONITOR_TENSORS))
    except Exception as exc:
        if not isinstance(exc, OSError) and not _is_safetensor_error(exc):
            raise
        raise PoiseError(
            f"monitor {name!r}: could not read {MONITOR_TENSORS} ({_first_line(exc)}); the file "
            "may be truncated or corrupt"
        ) from None
    try:
        monitor.token_head.weight.data.copy_(heads["token_head.weight"])
        monitor.token_head.bias.data.copy_(heads["token_head.bias"])
        monitor.response_head.weight.data.copy_(heads["response_head.weight"])
    except (KeyError, RuntimeError) as exc:
        raise PoiseError(f"monitor {name!r}: {MONITOR_TENSORS} does not fit ({exc})") from None
    monitor.name = name
    monitor.eval()
    return monitor.to(torch.device(device))
