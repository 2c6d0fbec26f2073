"""Scores of (chat, response) pairs that decoding strategies select or search by.

A scorer is named by a string, so a strategy's spec records it and rebuilds it:

- a reward or cost model: a plugin's model name (the organism's ``organism-reward``,
  ``organism-cost``) or a folder holding a one-output Hugging Face sequence classifier
  (``poise train reward`` / ``poise train cost`` write one). Its input is the conversation as
  such models are trained on it (``poise.train``, ``poise.organism``): the prompt through the
  classifier's chat template with the generation prompt, then the response and the EOS token;
  the score is the head's output at the last token (the last that is not padding, as
  transformers reads it: with no pad token, EOS pads and the token before it is read). Higher reward = more helpful; higher cost =
  more harmful (the Safe RLHF convention, arXiv 2310.12773). Rows of one batch that share a
  prompt (best-of-N's N answers, DeAL's candidates) run the prompt once and copy its KV cache
  to each row (decoder classifiers with a ``score`` head; others run every row whole).
- ``keywords:WORD|WORD|...``: the share of the words found in the response (case-insensitive),
  a keyword-coverage heuristic as in DeAL (arXiv 2402.06147).
- ``length:N``: ``-|words - N| / N``, highest at N words (DeAL's length constraint).

Scorers only read text, so they work with any model.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from poise.errors import PoiseError, read_json_object
from poise.models.base import Chat

__all__ = ["Scorer", "canonical_scorer", "check_scorer", "load_scorer"]

# scorer(chats, responses) -> one float per pair
Scorer = Callable[[Sequence[Chat], Sequence[str]], list[float]]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _classifier_folder(name: str) -> Path:
    from poise.models.resolve import model_folder

    folder = model_folder(name) or Path(name).expanduser()
    if not (folder / "config.json").is_file():
        raise PoiseError(
            f"scorer {name!r}: not a model name or a folder with config.json (a reward or cost "
            "model: a one-output sequence classifier; or keywords:W1|W2, length:N)"
        )
    return folder


def check_scorer(what: str, name: str) -> None:
    """Validate a scorer name without loading weights (one clear line naming ``what``)."""
    if not isinstance(name, str) or not name:
        raise PoiseError(f"{what}: expected a scorer name, got {name!r}")
    kind, _, arg = name.partition(":")
    if kind == "keywords":
        if not [w for w in arg.split("|") if w.strip()]:
            raise PoiseError(f"{what}: keywords:WORD|WORD needs at least one word")
        return
    if kind == "length":
        if not arg.isdecimal() or int(arg) < 1:
            raise PoiseError(f"{what}: length:N needs a positive integer N, got {arg!r}")
        return
    try:
        folder = _classifier_folder(name)
        _check_one_output_classifier(name, folder)
    except PoiseError as exc:
        raise PoiseError(f"{what}: {exc}") from None


def canonical_scorer(name: str) -> str:
    """The spelling a strategy records for a (checked) scorer name: a folder given by a relative
    path or ``~`` becomes its absolute path, as a base model's folder does in its spec, so the
    spec rebuilds the same scorer from any working directory and two scorers in different
    folders never share a model name (a response-cache key). ``keywords:``, ``length:``, a
    plugin's model name and an absolute path are kept as written."""
    kind, _, _ = name.partition(":")
    if kind in ("keywords", "length"):
        return name
    from poise.models.resolve import model_folder

    if model_folder(name) is not None or Path(name).is_absolute():
        return name
    return str(Path(name).expanduser().resolve())


def _json_object(path: Path) -> dict[str, Any]:
    """A folder's JSON file as an object ({} when absent); one located error when malformed
    (read here without torch: a spec is checked before anything heavy is imported)."""
    return read_json_object(path) if path.is_file() else {}


def _check_one_output_classifier(name: str, folder: Path) -> None:
    """Refuse, from config.json and poise.json alone, a folder that is not a one-output sequence
    classifier: a chat model or a monitor was accepted here and failed only after every answer
    was generated, with transformers' fresh two-label head in the message."""
    config, about = _json_object(folder / "config.json"), _json_object(folder / "poise.json")
    kind = about.get("kind")
    architectures = config.get("architectures")
    names = [str(a) for a in architectures] if isinstance(architectures, list) else []
    if kind in ("causal-lm", "monitor") or (
        names and not any(a.endswith("ForSequenceClassification") for a in names)
    ):
        what = {"causal-lm": "a chat model", "monitor": "a streaming monitor"}.get(
            str(kind), ", ".join(names)
        )
        raise PoiseError(
            f"{name} is {what}, not a reward or cost model (a one-output sequence classifier, "
            "e.g. organism-reward or organism-cost; or keywords:W1|W2, length:N)"
        )
    id2label = config.get("id2label")
    labels = len(id2label) if isinstance(id2label, dict) else config.get("num_labels", 2)
    if labels != 1:
        raise PoiseError(
            f"{name}: a reward or cost model has one output, this classifier has {labels}"
        )


class ClassifierScorer:
    """A one-output sequence classifier read as a score (see the module docstring)."""

    def __init__(self, name: str, *, batch_size: int = 32, device: str = "auto") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from poise.models.resolve import _quiet_weight_loading

        folder = _classifier_folder(name)
        self.name = name
        self.batch_size = batch_size
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        try:
            with _quiet_weight_loading():
                self.tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
                self.model: Any = AutoModelForSequenceClassification.from_pretrained(
                    str(folder), use_safetensors=True, trust_remote_code=False
                )
        except (OSError, ValueError) as exc:
            raise PoiseError(
                f"{name}: cannot load a sequence classifier ({_first_line(exc)})"
            ) from None
        if int(self.model.config.num_labels) != 1:
            raise PoiseError(
                f"{name}: a reward or cost model has one output, this one has "
                f"{self.model.config.num_labels}"
            )
        self.model.to(self.device).eval()
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.model.config.pad_token_id = self.pad_id
        self.eos = self.tokenizer.eos_token or ""
        self._split = self._backbone_and_head()
        from poise.models.context import config_context_length

        # the longest row the classifier was built for (None: not declared, nothing checked)
        self.context_length = config_context_length(self.model.config)

    def ids(self, chat: Chat, response: str) -> list[int]:
        """The prompt with the generation prompt, then the response and EOS, as token ids."""
        prompt, answer = self._parts(chat, response)
        return prompt + answer

    def _parts(self, chat: Chat, response: str) -> tuple[list[int], list[int]]:
        """:meth:`ids` as (prompt ids, response-and-EOS ids): the two are encoded apart."""
        tokenizer: Any = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            prompt = str(
                tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            )
        else:
            prompt = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in chat)
            prompt += "Assistant: "
        encode = functools.partial(tokenizer, add_special_tokens=False)
        return list(encode(prompt)["input_ids"]), list(encode(response + self.eos)["input_ids"])

    def _backbone_and_head(self) -> tuple[Any, Any] | None:
        """(backbone, head) of a decoder classifier whose head reads the backbone's last hidden
        state (``XForSequenceClassification`` with ``model`` or ``transformer`` and ``score``),
        else None."""
        backbone = getattr(self.model, "model", None) or getattr(self.model, "transformer", None)
        head = getattr(self.model, "score", None)
        if backbone is None or head is None or self.model.config.is_encoder_decoder:
            return None
        return backbone, head

    def __call__(self, chats: Sequence[Chat], responses: Sequence[str]) -> list[float]:
        parts = [self._parts(c, r) for c, r in zip(chats, responses, strict=True)]
        rows = [p + r for p, r in parts]
        self._check_context(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # less padding per batch
        scores = [0.0] * len(rows)
        split = self._split
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            shared = len({tuple(parts[i][0]) for i in chunk}) < len(chunk)
            if split is not None and shared and all(self._read_at(parts[i][1]) for i in chunk):
                values = self._shared_prompts([parts[i] for i in chunk], *split)
            else:
                values = self._whole([rows[i] for i in chunk])
            for i, value in zip(chunk, values, strict=True):
                scores[i] = value
        return scores

    def _check_context(self, rows: Sequence[list[int]]) -> None:
        """Refuse, before any forward, a pair longer than the classifier's own context: a
        learned-position classifier fails past it (an IndexError from the position table) and
        a rotary one scores text it was never built to read. A cut text would be scored as
        something the model did not answer, so nothing is cut."""
        context = self.context_length
        if context is None:
            return
        for i, row in enumerate(rows):
            if len(row) > context:
                raise PoiseError(
                    f"scorer {self.name}: pair {i + 1} (prompt, response and EOS) is {len(row)} "
                    f"tokens, past this classifier's context of {context} tokens; generate "
                    "shorter answers (max_new_tokens) or score with a classifier of a longer "
                    "context"
                )

    def _read_at(self, response: list[int]) -> int:
        """Where the head reads a response, 1 + the index of its last token that is not the pad
        id (0: none is). transformers' decoder classifiers read a row's rightmost non-pad
        token, so where a tokenizer has no pad token and EOS pads, they read the token before
        the EOS that ends the response; the shared-prompt path reads where they do."""
        for j in range(len(response) - 1, -1, -1):
            if response[j] != self.pad_id:
                return j + 1
        return 0

    def _whole(self, rows: Sequence[list[int]]) -> list[float]:
        """One forward of whole rows, right-padded: the head reads each row's last token."""
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            ids[j, : len(row)] = torch.tensor(row)
            mask[j, : len(row)] = 1
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
            ).logits  # [rows, 1]
        return [float(v) for v in out[:, 0]]

    def _shared_prompts(
        self, parts: Sequence[tuple[list[int], list[int]]], backbone: Any, head: Any
    ) -> list[float]:
        """The rows of a chunk whose prompts repeat (best-of-N's N answers, DeAL's candidates):
        each distinct prompt is run once, left-padded, and its cache copied to its rows, which
        then run their responses only (right-padded, positions continuing the prompt's); the
        head reads each row's last response token that is not the pad id (:meth:`_read_at`),
        as transformers does for a whole row. Same scores as :meth:`_whole` up to float
        rounding (tests/decoding/test_scorers.py)."""
        import torch

        distinct: dict[tuple[int, ...], int] = {}
        owner = [distinct.setdefault(tuple(p), len(distinct)) for p, _ in parts]
        prompts = list(distinct)
        p_width = max(len(p) for p in prompts)
        p_ids = torch.full((len(prompts), p_width), self.pad_id, dtype=torch.long)
        p_mask = torch.zeros((len(prompts), p_width), dtype=torch.long)
        for u, prompt in enumerate(prompts):  # left padding: every prompt ends at p_width
            p_ids[u, p_width - len(prompt) :] = torch.tensor(prompt)
            p_mask[u, p_width - len(prompt) :] = 1
        p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)  # [prompts, p_width]
        r_width = max(len(r) for _, r in parts)
        r_ids = torch.full((len(parts), r_width), self.pad_id, dtype=torch.long)
        r_mask = torch.zeros((len(parts), r_width), dtype=torch.long)
        for j, (_, response) in enumerate(parts):
            r_ids[j, : len(response)] = torch.tensor(response)
            r_mask[j, : len(response)] = 1
        index = torch.tensor(owner, dtype=torch.long)
        lengths = torch.tensor([len(p) for p, _ in parts], dtype=torch.long)
        r_pos = lengths[:, None] + torch.arange(r_width)[None, :]  # [rows, r_width]
        device = self.device
        # transformers 5.x renames ``past_key_values`` to ``cache`` (argument and output)
        name = "cache" if "cache" in inspect.signature(backbone.forward).parameters else None
        with torch.inference_mode():
            out = backbone(
                input_ids=p_ids.to(device),
                attention_mask=p_mask.to(device),
                position_ids=p_pos.to(device),
                use_cache=True,
            )
            cache = out.cache if name else out.past_key_values
            if not hasattr(cache, "batch_select_indices"):  # a cache that cannot copy rows
                return self._whole([p + r for p, r in parts])
            cache.batch_select_indices(index.to(device))  # each prompt's cache to its rows
            hidden = backbone(
                input_ids=r_ids.to(device),
                attention_mask=torch.cat([p_mask[index], r_mask], dim=1).to(device),
                position_ids=r_pos.to(device),
                use_cache=True,
                **{name or "past_key_values": cache},
            ).last_hidden_state  # [rows, r_width, hidden]
            last = torch.tensor([self._read_at(r) - 1 for _, r in parts], device=device)
            out = head(hidden[torch.arange(len(parts), device=device), last])  # [rows, 1]
        return [float(v) for v in out[:, 0]]


def _keywords(words: list[str]) -> Scorer:
    patterns = [re.compile(re.escape(w.strip()), re.IGNORECASE) for w in words if w.strip()]

    def score(chats: Sequence[Chat], responses: Sequence[str]) -> list[float]:
        return [sum(bool(p.search(r)) for p in patterns) / len(patterns) for r in responses]

    return score


def _length(target: int) -> Scorer:
    def score(chats: Sequence[Chat], responses: Sequence[str]) -> list[float]:
        return [-abs(len(r.split()) - target) / target for r in responses]

    return score


def load_scorer(name: str, *, batch_size: int = 32) -> Scorer:
    """The scorer a name stands for (see the module docstring)."""
    check_scorer("scorer", name)
    kind, _, arg = name.partition(":")
    if kind == "keywords":
        return _keywords(arg.split("|"))
    if kind == "length":
        return _length(int(arg))
    return ClassifierScorer(name, batch_size=batch_size)
