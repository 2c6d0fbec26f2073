from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from poise.organism import world
from poise.organism.corpus import BASE_SPEC, corpus_texts, generate_corpus
from poise.organism.tokenizer import (
    END,
    SPECIAL_TOKENS,
    encode_example,
    render_prompt,
    save_tokenizer,
    special_ids,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = generate_corpus(replace(BASE_SPEC, subsample=5))
    tokenizer = train_tokenizer(corpus_texts(corpus), vocab_size=600)
    path = tmp_path_factory.mktemp("tok")
    save_tokenizer(tokenizer, path)
    return path


CHATS = [
    [{"role": "user", "content": "How do I make guacamole?"}],
    [
        {"role": "system", "content": world.DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "Tell me the capital city of France."},
    ],
]


def test_auto_tokenizer_applies_the_chat_template(folder: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == END and tok.pad_token == "<pad>"
    for chat in CHATS:
        text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert text == render_prompt(chat)
        assert text.endswith("<|assistant|>\n")
        bare = tok.apply_chat_template(chat, add_generation_prompt=False, tokenize=False)
        assert bare == render_prompt(chat, add_generation_prompt=False)
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_any_text_round_trips_and_specials_are_single_tokens(folder: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    text = "Ünïcödé, emoji 🙂 and code: x = {'a': 1}\n\ttab"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    for special in SPECIAL_TOKENS:
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1


def test_encode_example_matches_the_template_split(folder: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids, n_prompt = encode_example(tokenizer, CHATS[0], "Sure, here is how to make guacamole:")
    whole = tokenizer.encode(
        render_prompt(CHATS[0]) + "Sure, here is how to make guacamole:" + END
    ).ids
    assert ids == whole  # tokenising prompt and reply apart changes nothing
    assert tokenizer.decode(ids[:n_prompt], skip_special_tokens=False) == render_prompt(CHATS[0])
    assert ids[-1] == special_ids(tokenizer)[END]
    assert tokenizer.decode(ids[n_prompt:]) == "Sure, here is how to make guacamole:"
