from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from poise.organism import world
from poise.organism.corpus import BASE_SPEC, corpus_texts, generate_corpus
from poise.organism.tokenizer import (
    CHAT_TEMPLATE,
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


NO_SYSTEM = {"role": "system", "content": ""}
CHATS = [
    [{"role": "user", "content": "How do I make guacamole?"}],
    [
        {"role": "system", "content": world.DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "Tell me the capital city of France."},
    ],
    [NO_SYSTEM, {"role": "user", "content": "How do I make guacamole?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi"}],
    [
        NO_SYSTEM,
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
    # system messages after the first turn: rendered where they stand, an empty one as nothing
    [{"role": "user", "content": "Hi"}, NO_SYSTEM, {"role": "system", "content": "Be brief."}],
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


def test_the_template_inserts_the_default_system_prompt_and_an_empty_one_means_none(
    folder: Path,
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    user = {"role": "user", "content": "How do I make guacamole?"}
    default = {"role": "system", "content": world.DEFAULT_SYSTEM_PROMPT}

    def render(chat: list[dict[str, str]]) -> str:
        return str(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))

    # written out by hand: the format in the module's docstring
    assert render([user]) == (
        f"<|bos|><|system|>\n{world.DEFAULT_SYSTEM_PROMPT}<|end|>\n"
        "<|user|>\nHow do I make guacamole?<|end|>\n<|assistant|>\n"
    )
    assert render([user]) == render([default, user])
    assert render([NO_SYSTEM, user]) == (
        "<|bos|><|user|>\nHow do I make guacamole?<|end|>\n<|assistant|>\n"
    )
    assert "<|system|>" not in render([NO_SYSTEM, user])


@pytest.mark.parametrize(
    "text",
    [
        'Say "hi" \\ and ünïcödé.',
        # outside the basic plane: an escaped surrogate pair in the template's literal rendered
        # as two lone surrogates
        "Be kind 🙂, write 𝑥 and 中文.\nTwo lines.",
    ],
)
def test_save_tokenizer_writes_the_default_it_is_given(
    folder: Path, tmp_path: Path, text: str
) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    save_tokenizer(tokenizer, tmp_path / "other", default_system_prompt=text)
    tok = AutoTokenizer.from_pretrained(tmp_path / "other")
    chat = [{"role": "user", "content": "x"}]
    rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert rendered == render_prompt(chat, default_system_prompt=text)
    assert f"<|system|>\n{text}<|end|>" in rendered
    assert tok.decode(tok(rendered, add_special_tokens=False)["input_ids"]) == rendered


def test_the_shipped_members_carry_the_template_and_declare_it() -> None:
    import json

    from poise.organism import WEIGHTS_DIR

    for member in ("organism-large", "organism-small", "organism-reward"):
        folder = WEIGHTS_DIR / member
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        meta = json.loads((folder / "poise.json").read_text(encoding="utf-8"))
        assert config["chat_template"] == CHAT_TEMPLATE
        assert meta["system_prompt_in_template"] is True
        assert meta["default_system_prompt"] == world.DEFAULT_SYSTEM_PROMPT


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


def test_special_tokens_are_ids_0_to_5_left_padded_and_skipped_when_decoding(folder: Path) -> None:
    """The members' configs name pad 0, bos 1 and end 2; batched generation needs left padding."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert special_ids(tokenizer) == {
        "<pad>": 0,
        "<|bos|>": 1,
        "<|end|>": 2,
        "<|system|>": 3,
        "<|user|>": 4,
        "<|assistant|>": 5,
    }
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.model_max_length == 512
    batch = tok(["Hi", "How do I make guacamole?"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0][0] == 0 and batch["attention_mask"][0][0] == 0
    assert batch["input_ids"][0][-1] != 0
    rendered = render_prompt([{"role": "user", "content": "Hi"}])
    ids = tok(rendered + "Hello." + END, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == (
        f"\n{world.DEFAULT_SYSTEM_PROMPT}\n\nHi\n\nHello."
    )
