"""A model's context length from its Hugging Face config, checked on real (tiny) models."""

from __future__ import annotations

from pathlib import Path

import pytest

from poise.config import Sampling
from poise.models.context import ContextLengthError, config_context_length


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
