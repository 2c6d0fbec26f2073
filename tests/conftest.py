"""Shared fixtures: tiny models built in code (no network, no downloads), and a tiny streaming
monitor that reads their answers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chat_endpoint import endpoint  # noqa: F401  (a fake chat endpoint for any test)

# A chat template in the usual role-tag style; the generation prompt opens the assistant turn.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '</s>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = (
    "<pad>",
    "<unk>",
    "<s>",
    "</s>",
    "<|end|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
)
# A few merges so that some tokens span several characters, like a real BPE vocabulary.
TINY_MERGES = (("t", "h"), ("th", "e"), ("Ġ", "a"), ("i", "n"), ("e", "r"), ("Ġ", "the"))


def build_tiny_hf_model(path: Path, *, seed: int = 0) -> Path:
    """Write a randomly initialised tiny LlamaForCausalLM and a byte-level BPE tokenizer with a
    chat template to ``path``. The vocabulary holds printable ASCII, so every token decodes
    to valid text. Deterministic for a seed."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    # GPT-2's byte-to-unicode map restricted to "\n" and printable ASCII: printable bytes map to
    # themselves, space to "Ġ" and newline to "Ċ".
    chars = [chr(b) for b in range(33, 127)] + ["Ġ", "Ċ"]
    vocab: dict[str, int] = {}
    for token in (*TINY_SPECIAL_TOKENS, *chars, *("".join(m) for m in TINY_MERGES)):
        vocab.setdefault(token, len(vocab))
    bpe = models.BPE(vocab=vocab, merges=list(TINY_MERGES), unk_token="<unk>")
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        # a wide init gives peaked next-token distributions, so greedy choices are far from ties
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=vocab["<s>"],
        eos_token_id=[vocab["</s>"], vocab["<|end|>"]],
        pad_token_id=vocab["<pad>"],
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_gpt2(path: Path, tokenizer_dir: Path, *, seed: int = 0, context: int = 24) -> Path:
    """A randomly initialised tiny GPT2LMHeadModel on the tokenizer in ``tokenizer_dir``: a
    model of LEARNED positions, which fails inside torch (IndexError) when it is fed past its
    ``context`` (the Llama models above have rotary positions, which do not)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def build_gpt2() -> Callable[..., Path]:
    """:func:`build_tiny_gpt2`, as a fixture (see ``build_tiny_model`` for why)."""
    return build_tiny_gpt2


@pytest.fixture(scope="session")
def tiny_hf_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a random tiny LlamaForCausalLM (safetensors) and a tokenizer with a chat
    template. Shared by the whole session: copy it before changing anything inside."""
    return build_tiny_hf_model(tmp_path_factory.mktemp("tiny-hf") / "tiny-llama")


@pytest.fixture(scope="session")
def build_tiny_model() -> Callable[..., Path]:
    """The builder behind ``tiny_hf_model_dir``, for tests that need a second model (another
    seed). A fixture rather than an import: several ``conftest`` modules exist under tests/,
    so ``from conftest import ...`` resolves to whichever was imported first."""
    return build_tiny_hf_model


def remove_chat_template(folder: Path) -> Path:
    """``folder`` (a copy of a model) without a chat template: neither in tokenizer_config.json
    nor in a chat_template.* file beside it."""
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    for extra in folder.glob("chat_template.*"):
        extra.unlink()
    return folder


@pytest.fixture(scope="session")
def no_template_hf_model_dir(
    tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the tiny model whose tokenizer has no chat template (a base model's)."""
    import shutil

    folder = tmp_path_factory.mktemp("tiny-no-template") / "model"
    shutil.copytree(tiny_hf_model_dir, folder)
    return remove_chat_template(folder)


# The chat whose greedy answer ``eos_hf_model_dir``'s model ends with its EOS token.
EOS_CHAT = [{"role": "user", "content": "the cat sat"}]


@pytest.fixture(scope="session")
def eos_hf_model_dir(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model whose greedy answer to :data:`EOS_CHAT` is a few tokens and then
    the EOS token ``</s>`` (the random tiny model's answers run to their length): the EOS row of
    its output layer is 1.1 x the row of a token of the original greedy answer, so EOS outscores
    that token wherever it would win. Shared by the session: copy it before changing it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poise.config import Sampling
    from poise.models.hf import HFModel

    greedy = Sampling(max_new_tokens=16)
    (answer,) = HFModel(str(tiny_hf_model_dir), device="cpu").generate([EOS_CHAT], greedy)[0]
    assert answer.token_ids is not None
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    root = tmp_path_factory.mktemp("tiny-eos")
    for position in range(3, len(answer.token_ids)):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_hf_model_dir))
        with torch.no_grad():
            rows = model.lm_head.weight  # [vocab, hidden]
            rows[tokenizer.eos_token_id] = 1.1 * rows[answer.token_ids[position]]
        path = root / f"eos-{position}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        (ended,) = HFModel(str(path), device="cpu").generate([EOS_CHAT], greedy)[0]
        if ended.finish_reason == "stop" and ended.num_tokens >= 3:
            return path
    raise AssertionError("no edit of the tiny model ends its answer with EOS")


@pytest.fixture(scope="session")
def monitor_dir(
    build_tiny_model: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A monitor folder: another tiny Llama (seed 1, same tokenizer) with random SCM heads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poise.guards.monitor import Monitor, MonitorHeader

    base = build_tiny_model(tmp_path_factory.mktemp("monitor-base") / "tiny", seed=1)
    torch.manual_seed(0)
    monitor = Monitor(
        AutoModelForCausalLM.from_pretrained(base),
        AutoTokenizer.from_pretrained(base),
        MonitorHeader(head="token", threshold=0.5, k=2),
    )
    return monitor.save(tmp_path_factory.mktemp("monitor") / "monitor")


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """poise's cache of weight hashes (``poise.runs.provenance``) goes to a folder of the test
    session, never the user's ``~/.cache/poise``; a test may point it elsewhere."""
    import os

    saved = os.environ.get("POISE_CACHE_DIR")
    os.environ["POISE_CACHE_DIR"] = str(tmp_path_factory.mktemp("poise-cache"))
    yield
    if saved is None:
        os.environ.pop("POISE_CACHE_DIR", None)
    else:
        os.environ["POISE_CACHE_DIR"] = saved


@pytest.fixture(autouse=True)
def _restore_poise_logger() -> Iterator[None]:
    """The CLI routes the ``poise`` logger to its own handler and stops propagation; a CLI test
    run in-process would otherwise hide later tests' log records from ``caplog``."""
    import logging

    logger = logging.getLogger("poise")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def locked_when_run_json_appears(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether a run's lock was held each time its run.json was first written: another process
    finds an unfinished run as soon as run.json exists, so its writer must hold the lock by
    then (filled in as runs are created)."""
    import poise.runs.run as run_module
    from poise.runs import Run

    seen: list[bool] = []
    write = run_module.write_json_atomic

    def spying(path: Path, data: object) -> None:
        if path.name == "run.json" and not path.exists():
            seen.append(Run(path.parent).is_locked())
        write(path, data)

    monkeypatch.setattr(run_module, "write_json_atomic", spying)
    return seen
