"""A model's context length, and whether a request fits in it.

A request fits when the tokens of its prompt (the chat rendered by the model's chat template and
encoded by its tokenizer, as the model will see it) plus the tokens it may generate
(``max_new_tokens``) are at most the model's context length (``LanguageModel.context_length``;
``None`` where a backend does not know it, e.g. a remote server, which checks for itself).

The refusal reads as vLLM's OpenAI-compatible server words it (``_validate_prompt_and_tokenize``
in vllm/entrypoints/openai/serving_engine.py), which users of OpenAI-compatible servers know::

    This model's maximum context length is 512 tokens. However, you requested 610 tokens
    (514 in the messages, 96 in the completion). Please reduce the length of the messages or
    completion.

A request that leaves ``max_new_tokens`` to the server (``fill``) gets what is left of the context
(at most the ceiling it was given), as vLLM does; it is refused only when the messages alone fill
the context.

Counting a huge prompt would cost time and memory for nothing, so a chat whose text is far
longer than the context could hold is refused from its length in characters alone: no token of
the vocabulary spans more than ``longest`` characters, so a text of ``c`` characters is at least
``c / longest`` tokens; a factor of 2 covers tokenizers whose normalisation shortens text
(Unicode composition).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import Chat, LanguageModel

__all__ = [
    "ContextLengthError",
    "config_context_length",
    "fit_context",
    "prompt_token_count",
    "template_refusal",
    "tokens_at_least",
]

logger = logging.getLogger(__name__)

# config fields that hold the longest sequence a model was built for (GPT-2's n_positions,
# MPT's max_seq_len, ChatGLM's seq_length, ...); where a config has several, the smallest
# counts, as in vLLM (``_get_and_verify_max_len`` in vllm/config)
_CONTEXT_FIELDS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
# a tokenizer's normalisation may shorten text (composition): the character bound allows for it
_NORMALISATION_SLACK = 2


class ContextLengthError(PoiseError):
    """A request longer than the model's context (the request's fault: a 400 in ``serve``)."""

    def __init__(
        self,
        context_length: int,
        prompt_tokens: int,
        max_tokens: int | None,
        *,
        at_least: bool,
        where: str = "",
    ) -> None:
        self.context_length = context_length
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        head = f"This model's maximum context length is {context_length} tokens. However, "
        if at_least:
            message = (
                f"{head}your messages are at least {prompt_tokens} tokens long. Please reduce "
                "the length of the messages."
            )
        elif max_tokens is None:
            message = (
                f"{head}you requested {prompt_tokens} tokens in the messages. Please reduce the "
                "length of the messages."
            )
        else:
            message = (
                f"{head}you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in "
                f"the messages, {max_tokens} in the completion). Please reduce the length of the "
                "messages or completion."
            )
        # ``where``: which request of a batch ("MODEL: chat 3"), ahead of vLLM's wording
        super().__init__(f"{where}: {message}" if where else message)


def config_context_length(config: Any) -> int | None:
    """The context length a Hugging Face model config declares (its text part's): the smallest
    of the fields in ``_CONTEXT_FIELDS`` it sets, or ``None``. A model fed past it decodes
    garbage (rotary positions) or fails inside torch (learned positions, MPT's ALiBi table)."""
    get_text = getattr(config, "get_text_config", None)
    text = get_text() if callable(get_text) else config
    values = [getattr(text, field, None) for field in _CONTEXT_FIELDS]
    declared = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(declared) if declared else None


def prompt_token_count(model: LanguageModel, chat: Chat) -> int | None:
    """The chat's prompt tokens with the model's chat template (ready for the assistant's turn),
    or ``None`` where the model exposes no Hugging Face tokenizer with a chat template. A chat
    the template or the tokenizer refuses is a :class:`PoiseError`."""
    tokenizer = model.tokenizer
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    try:
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    except Exception as exc:
        raise PoiseError(
            f"{model.name}: could not encode the chat ({template_refusal(tokenizer, chat, exc)})"
        ) from None
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def template_refusal(tokenizer: Any, chat: Chat, exc: BaseException) -> str:
    """What a chat template's error ``exc`` on ``chat`` means, in one line: the template's own
    first line, and, where the chat has a system message and the template renders the chat
    without it, that this template takes no system message (Gemma 2's "System role not
    supported"; Mistral v0.1's "Conversation roles must alternate", which names no system
    message at all) and what to do instead."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if not any(message.get("role") == "system" for message in chat):
        return first
    rest = [message for message in chat if message.get("role") != "system"]
    try:
        tokenizer.apply_chat_template(rest, add_generation_prompt=True, tokenize=False)
    except Exception:
        return first
    return (
        f"{first}: this model's chat template takes no system message; send the chat without "
        "one, or put the instructions in the first user message"
    )


def fit_context(
    model: LanguageModel, chat: Chat, sampling: Sampling, *, fill: bool = False
) -> tuple[Sampling, int | None]:
    """``(sampling, prompt tokens)`` for a request that fits in the model's context; else a
    :class:`ContextLengthError`. With ``fill``, ``sampling.max_new_tokens`` is a ceiling and the
    returned sampling asks for what is left of the context (at most that ceiling). The prompt
    tokens are ``None`` where the model exposes no tokenizer (then nothing is checked)."""
    context = model.context_length
    if context is not None:
        characters = sum(len(message["content"]) for message in chat)
        at_least = tokens_at_least(model.tokenizer, characters)
        if at_least is not None and at_least > context:
            raise ContextLengthError(context, at_least, None, at_least=True)
    prompt_tokens = prompt_token_count(model, chat)
    if context is None or prompt_tokens is None:
        return sampling, prompt_tokens
    if fill:
        if prompt_tokens >= context:
            raise ContextLengthError(context, prompt_tokens, None, at_least=False)
        left = min(sampling.max_new_tokens, context - prompt_tokens)
        if left != sampling.max_new_tokens:
            sampling = sampling.model_copy(update={"max_new_tokens": left})
        return sampling, prompt_tokens
    if prompt_tokens + sampling.max_new_tokens > context:
        raise ContextLengthError(context, prompt_tokens, sampling.max_new_tokens, at_least=False)
    return sampling, prompt_tokens


def tokens_at_least(tokenizer: Any, characters: int) -> int | None:
    """A lower bound on the tokens of any text of ``characters`` characters, without
    tokenizing it: no token of the vocabulary spans more than ``longest`` characters, so
    ``characters // (longest * slack)`` (the slack covers normalisation that shortens text).
    None when the tokenizer's vocabulary cannot be read."""
    longest = _longest_token(tokenizer)
    return None if longest is None else characters // (longest * _NORMALISATION_SLACK)


# tokenizer -> the most characters one token of its vocabulary spans
_LONGEST: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _longest_token(tokenizer: Any) -> int | None:
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return None
    try:
        return _LONGEST[tokenizer]
    except (KeyError, TypeError):
        pass
    try:
        vocab = tokenizer.get_vocab()
        longest = max((len(token) for token in vocab), default=0)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        longest = max([longest, *(len(str(token)) for token in added.values())])
    except Exception:  # a tokenizer without a readable vocabulary: no character bound
        logger.debug("no vocabulary to bound prompt lengths by", exc_info=True)
        return None
    if longest < 1:
        return None
    with contextlib.suppress(TypeError):  # a tokenizer that cannot be weakly referenced
        _LONGEST[tokenizer] = longest
    return longest
