"""Tiny specialists built in code: a base LlamaForCausalLM and copies fine-tuned by noise."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def make_specialist(base_dir: Path, out: Path, *, seed: int, scale: float = 0.02,
                    extra_tokens: int = 0) -> Path:  # fmt: skip
    """``base_dir``'s model plus seeded Gaussian noise on every weight (and ``extra_tokens`` new
    embedding rows), saved with the base's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    if extra_tokens:
        model.resize_token_embeddings(model.config.vocab_size + extra_tokens)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def specialists(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """[base, specialist a, specialist b] folders (session-shared: copy before changing)."""
    root = tmp_path_factory.mktemp("specialists")
    return [
        tiny_hf_model_dir,
        make_specialist(tiny_hf_model_dir, root / "a", seed=1),
        make_specialist(tiny_hf_model_dir, root / "b", seed=2),
    ]


@pytest.fixture(scope="session")
def specialist_builder() -> Callable[..., Path]:
    return make_specialist


def make_deeper(base_dir: Path, out: Path, *, extra_layers: int = 1, seed: int = 3) -> Path:
    """A model of ``base_dir``'s architecture and width with ``extra_layers`` more layers
    (``num_hidden_layers``), randomly initialised, saved with the base's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir)
    config.num_hidden_layers += extra_layers
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def deeper_model(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base's architecture with one layer more (3 against 2; session-shared)."""
    return make_deeper(tiny_hf_model_dir, tmp_path_factory.mktemp("deeper") / "deep")
