"""Scores of (chat, response) pairs that decoding strategies select or search by.

A scorer is named by a string, so a strategy's spec records it and rebuilds it:

- a reward or cost model: a plugin's model name (the organism's ``organism-reward``,
  ``organism-cost``) or a folder holding a one-output Hugging Face sequence classifier
  (``poise train reward`` / ``poise train cost`` write one). Its input is the conversation as
  such models are trained on it (``poise.train``, ``poise.organism``): the prompt through the
  classifier's chat template with the generation prompt, then the response and the EOS token;
  the score is the head's output at the last token. Higher reward = more helpful; higher cost =
  more harmful (the Safe RLHF convention, arXiv 2310.12773).
- ``keywords:WORD|WORD|...``: the share of the words found in the response (case-insensitive),
  a keyword-coverage heuristic as in DeAL (arXiv 2402.06147).
- ``length:N``: ``-|words - N| / N``, highest at N words (DeAL's length constraint).

Scorers only read text, so they work with any model.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from poise.errors import PoiseError
from poise.models.base import Chat

__all__ = ["Scorer", "check_scorer", "load_scorer"]

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
        if not arg.isdigit() or int(arg) < 1:
            raise PoiseError(f"{what}: length:N needs a positive integer N, got {arg!r}")
        return
    try:
        _classifier_folder(name)
    except PoiseError as exc:
        raise PoiseError(f"{what}: {exc}") from None


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

    def ids(self, chat: Chat, response: str) -> list[int]:
        """The prompt with the generation prompt, then the response and EOS, as token ids."""
        tokenizer: Any = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            prompt = str(
                tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            )
        else:
            prompt = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in chat)
            prompt += "Assistant: "
        encode = functools.partial(tokenizer, add_special_tokens=False)
        return list(encode(prompt)["input_ids"]) + list(encode(response + self.eos)["input_ids"])

    def __call__(self, chats: Sequence[Chat], responses: Sequence[str]) -> list[float]:
        import torch

        rows = [self.ids(c, r) for c, r in zip(chats, responses, strict=True)]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # less padding per batch
        scores = [0.0] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(rows[i]) for i in chunk)
            # right padding: the head reads each row's last non-padding token
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, i in enumerate(chunk):
                ids[j, : len(rows[i])] = torch.tensor(rows[i])
                mask[j, : len(rows[i])] = 1
            with torch.inference_mode():
                out = self.model(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
                ).logits  # [rows, 1]
            for j, i in enumerate(chunk):
                scores[i] = float(out[j, 0])
        return scores


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
