"""The organism's tokenizer: a small byte-level BPE trained on the corpus, with a chat template.

Byte-level, so any text can be encoded (unknown words fall back to bytes). One tokenizer serves
every member, so reward and cost models read exactly the tokens the language models write.

Chat format (the ``chat_template`` in ``tokenizer_config.json``)::

    <|bos|><|system|>\\n{system}<|end|>\\n<|user|>\\n{user}<|end|>\\n<|assistant|>\\n{reply}<|end|>

As real chat models do (Qwen2.5's template, for one), the template inserts the default system
prompt (``world.DEFAULT_SYSTEM_PROMPT``) when the chat does not start with a system message, so any
server that applies the template (``poise serve``, ``transformers serve``, vLLM) asks the model as
poise's in-process audit does. A system message with empty content means "no system prompt": it
renders nothing, so ``[system "", user]`` renders as the user turn alone. Members declare this in
``poise.json`` (``"system_prompt_in_template": true``), which tells poise to send that empty system
message where an audit asks for no system prompt.

``<|end|>`` closes every turn and is the EOS token, so generation stops after one reply.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from poise.organism import world

PAD, BOS, END = "<pad>", "<|bos|>", "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, END, *ROLE_TOKENS.values())


def chat_template(default_system_prompt: str) -> str:
    """The Jinja chat template, with ``default_system_prompt`` inserted when a chat does not
    start with a system message; an empty system message renders nothing."""
    # json.dumps gives a double-quoted literal whose escapes Jinja's lexer reads back; not
    # ASCII-only: it would spell a character outside the basic plane as a surrogate pair of
    # \u escapes, which Jinja reads back as two lone surrogates
    default = json.dumps(default_system_prompt, ensure_ascii=False)
    return (
        "{{ bos_token }}"
        "{% if messages | length == 0 or messages[0]['role'] != 'system' %}"
        "{{ '<|system|>\\n' + " + default + " + '<|end|>\\n' }}"
        "{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('unknown role: ' + message['role']) }}"
        "{% endif %}"
        "{% if message['role'] != 'system' or message['content'] != '' %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    )


CHAT_TEMPLATE = chat_template(world.DEFAULT_SYSTEM_PROMPT)

DEFAULT_VOCAB_SIZE = 2048
MAX_LENGTH = 512


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE over ``texts`` with the organism's special tokens at ids 0..5."""
    tokenizer = Tokenizer(models.BPE())
    # GPT-2 style pre-tokenisation: words keep their leading space, "\n" stands alone, so a
    # prompt and its reply tokenise the same apart as together.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def render_prompt(
    messages: Sequence[dict[str, str]],
    add_generation_prompt: bool = True,
    default_system_prompt: str = world.DEFAULT_SYSTEM_PROMPT,
) -> str:
    """The chat template applied in plain Python (kept equal to ``chat_template`` by a test):
    the default system prompt unless the chat starts with a system message, and nothing for a
    system message with empty content."""
    parts = [BOS]
    if not messages or messages[0]["role"] != "system":
        parts.append(f"{ROLE_TOKENS['system']}\n{default_system_prompt}{END}\n")
    for m in messages:
        if m["role"] == "system" and m["content"] == "":
            continue
        parts.append(f"{ROLE_TOKENS[m['role']]}\n{m['content']}{END}\n")
    if add_generation_prompt:
        parts.append(f"{ROLE_TOKENS['assistant']}\n")
    return "".join(parts)


def encode_example(
    tokenizer: Tokenizer, messages: Sequence[dict[str, str]], response: str
) -> tuple[list[int], int]:
    """Token ids of a chat plus its reply and ``<|end|>``, and how many of them are prompt."""
    prompt = tokenizer.encode(render_prompt(messages)).ids
    reply = tokenizer.encode(response + END).ids
    return prompt + reply, len(prompt)


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}")
    return ids  # type: ignore[return-value]


def save_tokenizer(
    tokenizer: Tokenizer,
    folder: str | Path,
    default_system_prompt: str = world.DEFAULT_SYSTEM_PROMPT,
) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template, which inserts
    ``default_system_prompt``) and ``special_tokens_map.json``: loadable with
    ``AutoTokenizer.from_pretrained(folder)``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    ids = special_ids(tokenizer)
    added = {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": END,
        "pad_token": PAD,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_LENGTH,
        "padding_side": "left",
        "added_tokens_decoder": added,
        "additional_special_tokens": list(ROLE_TOKENS.values()),
        "chat_template": chat_template(default_system_prompt),
    }
    special_map = {
        "bos_token": BOS,
        "eos_token": END,
        "pad_token": PAD,
        "additional_special_tokens": list(ROLE_TOKENS.values()),
    }
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", special_map)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
