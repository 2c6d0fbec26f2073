"""A model's context length from its Hugging Face config, checked on real (tiny) models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from poise.config import Sampling
from poise.models.base import ModelBase
from poise.models.context import (
    ContextLengthError,
    config_context_length,
    fit_context,
    tokens_at_least,
)


def test_the_context_is_the_smallest_length_the_config_declares() -> None:
    from transformers import GPT2Config, LlamaConfig, MptConfig, PretrainedConfig

    assert config_context_length(LlamaConfig(max_position_embeddings=512)) == 512
    assert config_context_length(GPT2Config(n_positions=64)) == 64
    assert config_context_length(MptConfig(max_seq_len=24)) == 24  # MPT's own field
    # two fields (as vLLM reads them): the smaller one is the limit
    both = PretrainedConfig(max_position_embeddings=4096, seq_length=2048)
    assert config_context_length(both) == 2048
    assert config_context_length(PretrainedConfig()) is None


@pytest.fixture(scope="module")
def tiny_mpt(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny MptForCausalLM (ALiBi attention over a table of ``max_seq_len`` = 24
    positions: fed past it, it fails inside torch) on the tiny test tokenizer."""
    import torch
    from transformers import AutoTokenizer, MptConfig, MptForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    torch.manual_seed(0)
    config = MptConfig(
        d_model=32,
        n_heads=4,
        n_layers=2,
        max_seq_len=24,
        vocab_size=len(tokenizer),
        initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-mpt") / "mpt"
    MptForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_an_mpt_model_stops_at_its_context_and_refuses_a_prompt_past_it(tiny_mpt: Path) -> None:
    from poise.models.hf import HFModel

    model = HFModel(str(tiny_mpt), device="cpu")
    assert model.context_length == 24
    chat = [{"role": "user", "content": "the cat"}]
    prompt = len(model.prompt_ids(chat))
    [[answer]] = model.generate([chat], Sampling(max_new_tokens=40))
    assert (answer.finish_reason, answer.num_tokens) == ("length", 24 - prompt)
    with pytest.raises(ContextLengthError, match="maximum context length is 24 tokens"):
        model.generate([[{"role": "user", "content": "the cat sat on the mat " * 3}]], Sampling())


class _Declares(ModelBase):
    """A model that only declares a tokenizer and a context length (nothing is generated)."""

    def __init__(self, tokenizer: Any, context_length: int | None) -> None:
        self.name = "declares"
        self.tokenizer = tokenizer
        self.context_length = context_length


def _rendered_tokens(tokenizer: Any, chat: list[dict[str, str]]) -> int:
    """The prompt's tokens counted another way: the rendered text, then the tokenizer."""
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_a_request_that_fills_the_context_exactly_fits_and_one_token_more_is_refused(
    tiny_hf_model_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat"}]
    count = _rendered_tokens(tokenizer, chat)
    model = _Declares(tokenizer, count + 10)
    sampling = Sampling(max_new_tokens=10)
    assert fit_context(model, chat, sampling) == (sampling, count)
    with pytest.raises(ContextLengthError) as info:
        fit_context(model, chat, Sampling(max_new_tokens=11))
    assert str(info.value) == (
        f"This model's maximum context length is {count + 10} tokens. However, you requested "
        f"{count + 11} tokens ({count} in the messages, 11 in the completion). Please reduce the "
        "length of the messages or completion."
    )
    # a model that does not know its context is not checked, but its prompt is still counted
    assert fit_context(_Declares(tokenizer, None), chat, Sampling(max_new_tokens=10_000)) == (
        Sampling(max_new_tokens=10_000),
        count,
    )


def test_fill_asks_for_what_is_left_of_the_context_at_most_the_ceiling(
    tiny_hf_model_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    chat = [{"role": "user", "content": "the cat sat on the mat"}]
    count = _rendered_tokens(tokenizer, chat)
    room = _Declares(tokenizer, count + 10)
    left = [fit_context(room, chat, Sampling(max_new_tokens=m), fill=True) for m in (4, 10, 50)]
    assert [(s.max_new_tokens, n) for s, n in left] == [(4, count), (10, count), (10, count)]
    one = fit_context(_Declares(tokenizer, count + 1), chat, Sampling(max_new_tokens=50), fill=True)
    assert one[0].max_new_tokens == 1
    with pytest.raises(ContextLengthError) as info:
        fit_context(_Declares(tokenizer, count), chat, Sampling(max_new_tokens=50), fill=True)
    assert str(info.value) == (
        f"This model's maximum context length is {count} tokens. However, you requested {count} "
        "tokens in the messages. Please reduce the length of the messages."
    )


class _Vocabulary:
    """A tokenizer without a chat template whose longest token is an added one of 7
    characters: no text of c characters is fewer than c // 14 tokens."""

    def __init__(self) -> None:
        self.added_tokens_decoder = {2: "<|end|>"}

    def get_vocab(self) -> dict[str, int]:
        return {"a": 0, "abcd": 1}


def test_a_chat_far_longer_than_the_context_is_refused_from_its_characters() -> None:
    model = _Declares(_Vocabulary(), 10)
    assert tokens_at_least(model.tokenizer, 280) == 20  # 280 // (7 * 2)
    # two messages of 80 characters: 160 // 14 = 11 tokens at least, over the 10 of the context
    chat = [{"role": "system", "content": "s" * 80}, {"role": "user", "content": "u" * 80}]
    with pytest.raises(ContextLengthError) as info:
        fit_context(model, chat, Sampling(max_new_tokens=1))
    assert str(info.value) == (
        "This model's maximum context length is 10 tokens. However, your messages are at least "
        "11 tokens long. Please reduce the length of the messages."
    )
    # 140 characters are at least 10 tokens: not refused from the characters alone, and there is
    # no chat template to count the tokens with
    short = [{"role": "user", "content": "u" * 140}]
    assert fit_context(model, short, Sampling(max_new_tokens=1)) == (
        Sampling(max_new_tokens=1),
        None,
    )


def test_config_fields_of_0_and_the_text_part_of_a_multimodal_config() -> None:
    from transformers import LlamaConfig, LlavaConfig, PretrainedConfig

    assert (
        config_context_length(PretrainedConfig(max_position_embeddings=2048, seq_length=0)) == 2048
    )
    llava = LlavaConfig(text_config=LlamaConfig(max_position_embeddings=1234).to_dict())
    assert config_context_length(llava) == 1234
