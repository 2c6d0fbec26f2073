from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_templates import (
    GEMMA2_TEMPLATE,
    LLAMA32_TEMPLATE,
    QWEN25_DEFAULT,
    QWEN25_TEMPLATE,
    SMOLLM2_TEMPLATE,
)
from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import Chat, Completion, LanguageModel
from poise.models.context import ContextLengthError
from poise.models.hf import HFModel, NucleusSearch, filtered_probs, row_seed, sample_tokens

CHATS: list[Chat] = [
    [{"role": "user", "content": "Hello there, the cat!"}],
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "Be helpful and kind to everyone you meet."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    [{"role": "user", "content": "Tell me a story about a dragon in the mountains."}],
    [{"role": "user", "content": "ok"}],
]


@pytest.fixture(scope="module")
def model(tiny_hf_model_dir: Path) -> Iterator[HFModel]:
    hf = HFModel(str(tiny_hf_model_dir))
    eos = list(hf.eos_token_ids)
    yield hf
    hf.eos_token_ids = eos


@pytest.fixture
def copy_dir(tiny_hf_model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_hf_model_dir, target)
    return target


def texts(rows: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in row] for row in rows]


def same_completions(a: list[list[Completion]], b: list[list[Completion]]) -> None:
    """Texts, token counts and finish reasons equal; log-probs equal up to float noise (a
    padded batch sums in a different order than a single row)."""
    assert texts(a) == texts(b)
    for row_a, row_b in zip(a, b, strict=True):
        for x, y in zip(row_a, row_b, strict=True):
            assert (x.num_tokens, x.finish_reason) == (y.num_tokens, y.finish_reason)
            assert x.token_logprobs is not None and y.token_logprobs is not None
            assert x.token_logprobs == pytest.approx(y.token_logprobs, abs=1e-4)


SAMPLED = Sampling(temperature=1.0, max_new_tokens=12, seed=7)


# ----------------------------------------------------------------------------- loading


def test_loads_folder_with_name_device_and_eos(model: HFModel, tiny_hf_model_dir: Path) -> None:
    assert isinstance(model, LanguageModel)
    assert model.name.startswith(f"hf:{tiny_hf_model_dir.resolve()}#")
    assert model.device.type == "cpu"
    assert next(model.model.parameters()).dtype == torch.float32
    # the tokenizer's eos and the generation config's list
    vocab = model.tokenizer.get_vocab()
    assert model.eos_token_ids == sorted({vocab["</s>"], vocab["<|end|>"]})
    assert model.default_system_prompt is None


def test_name_is_stable_and_follows_the_weights(copy_dir: Path, tiny_hf_model_dir: Path) -> None:
    first = HFModel(str(tiny_hf_model_dir)).fingerprint
    assert HFModel(str(tiny_hf_model_dir)).fingerprint == first
    assert HFModel(str(copy_dir)).fingerprint == first  # small files: content hash only
    config = json.loads((copy_dir / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (copy_dir / "config.json").write_text(json.dumps(config))
    assert HFModel(str(copy_dir)).fingerprint != first


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(PoiseError, match=f"{re.escape(str(missing))}.*does not exist"):
        HFModel(str(missing))


def test_folder_without_config_or_weights(tmp_path: Path, copy_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoiseError, match=r"no config\.json"):
        HFModel(str(tmp_path / "empty"))
    (copy_dir / "model.safetensors").unlink()
    with pytest.raises(PoiseError, match="no weights found"):
        HFModel(str(copy_dir))


def test_shard_index_naming_missing_shards(copy_dir: Path) -> None:
    (copy_dir / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}
    (copy_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(PoiseError, match=r"model-00001-of-00002\.safetensors"):
        HFModel(str(copy_dir))


def test_pickle_only_folder_is_refused_unless_allowed(copy_dir: Path, model: HFModel) -> None:
    from safetensors.torch import load_file

    state = load_file(str(copy_dir / "model.safetensors"))
    torch.save(state, copy_dir / "pytorch_model.bin")
    (copy_dir / "model.safetensors").unlink()
    with pytest.raises(PoiseError) as err:
        HFModel(str(copy_dir))
    message = str(err.value)
    assert "pytorch_model.bin" in message
    assert "pickle" in message
    assert "allow_pickle=True" in message
    allowed = HFModel(str(copy_dir), allow_pickle=True)
    same_completions(
        allowed.generate(CHATS[:2], Sampling(max_new_tokens=6)),
        model.generate(CHATS[:2], Sampling(max_new_tokens=6)),
    )


@pytest.mark.parametrize("name", ["consolidated.pt", "model.pth", "last.ckpt"])
def test_a_folder_with_only_a_pt_pth_or_ckpt_file_is_refused_as_a_pickle(
    copy_dir: Path, name: str
) -> None:
    (copy_dir / "model.safetensors").rename(copy_dir / name)
    with pytest.raises(PoiseError, match=rf"only pickle checkpoints \({re.escape(name)}\)"):
        HFModel(str(copy_dir))


@pytest.mark.parametrize(
    ("kind", "use"),
    [
        ("reward", "best_of_n(MODEL, reward="),
        ("cost", "best_of_n(MODEL, cost="),
        ("monitor", "guarded(MODEL, monitor="),
    ],
)
def test_a_scorer_folder_is_refused_as_a_chat_model_with_its_use(
    copy_dir: Path, kind: str, use: str
) -> None:
    (copy_dir / "poise.json").write_text(json.dumps({"kind": kind}))
    with pytest.raises(
        PoiseError, match=rf"is a {kind} model, not a chat model: .*{re.escape(use)}"
    ):
        HFModel(str(copy_dir))


def test_a_config_naming_a_causal_lm_beside_a_classifier_loads(copy_dir: Path) -> None:
    config = json.loads((copy_dir / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification", "LlamaForCausalLM"]
    (copy_dir / "config.json").write_text(json.dumps(config))
    assert HFModel(str(copy_dir)).capabilities.score
    config["architectures"] = ["LlamaForSequenceClassification"]
    (copy_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(PoiseError, match="is a classifier"):
        HFModel(str(copy_dir))


def test_loading_passes_safe_options(
    tiny_hf_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    seen: dict[str, dict[str, Any]] = {}
    real_model = transformers.AutoModelForCausalLM.from_pretrained
    real_tokenizer = transformers.AutoTokenizer.from_pretrained

    def spy_model(source: str, **kwargs: Any) -> Any:
        seen["model"] = kwargs
        return real_model(source, **kwargs)

    def spy_tokenizer(source: str, **kwargs: Any) -> Any:
        seen["tokenizer"] = kwargs
        return real_tokenizer(source, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy_tokenizer)
    HFModel(str(tiny_hf_model_dir))
    assert seen["model"]["trust_remote_code"] is False
    assert seen["model"]["use_safetensors"] is True
    assert seen["tokenizer"]["trust_remote_code"] is False


def test_hub_id_name_includes_revision(
    tiny_hf_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    sources: list[tuple[str, str | None]] = []
    real_model = transformers.AutoModelForCausalLM.from_pretrained
    real_tokenizer = transformers.AutoTokenizer.from_pretrained

    def local_model(source: str, **kwargs: Any) -> Any:
        sources.append((source, kwargs.pop("revision")))
        return real_model(str(tiny_hf_model_dir), **kwargs)

    def local_tokenizer(source: str, **kwargs: Any) -> Any:
        kwargs.pop("revision")
        return real_tokenizer(str(tiny_hf_model_dir), **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", local_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", local_tokenizer)
    monkeypatch.setattr("poise.models.hf.hub_access", lambda *a, **k: {})  # as if online
    assert HFModel("someone/some-model").name == "hf:someone/some-model@main"
    assert HFModel("someone/some-model", revision="v2").name == "hf:someone/some-model@v2"
    assert sources == [("someone/some-model", None), ("someone/some-model", "v2")]


def test_unreachable_hub_id_fails_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # the hub client reads HF_HUB_OFFLINE at import; offline mode skips the network retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PoiseError, match="poise-test/definitely-not-cached"):
        HFModel("poise-test/definitely-not-cached")


def test_default_system_prompt_from_poise_json(copy_dir: Path) -> None:
    (copy_dir / "poise.json").write_text(json.dumps({"default_system_prompt": "Be careful."}))
    declared = HFModel(str(copy_dir))
    # a default poise.json names but does not say the template inserts: poise sends it itself
    assert (declared.default_system_prompt, declared.system_prompt_in_template) == (
        "Be careful.",
        False,
    )
    (copy_dir / "poise.json").write_text(json.dumps({"system_prompt_in_template": True}))
    inserted = HFModel(str(copy_dir))
    assert (inserted.default_system_prompt, inserted.system_prompt_in_template) == (None, True)
    (copy_dir / "poise.json").write_text("{\n  'bad': 1\n}")
    with pytest.raises(PoiseError, match=r"poise\.json:2: invalid JSON"):
        HFModel(str(copy_dir))


def test_system_prompt_in_template_from_poise_json(copy_dir: Path) -> None:
    from poise.models import no_system_prompt, system_prompt_in_template

    model = HFModel(str(copy_dir))
    assert model.system_prompt_in_template is False and no_system_prompt(model) is None
    meta = {"default_system_prompt": "Be careful.", "system_prompt_in_template": True}
    (copy_dir / "poise.json").write_text(json.dumps(meta))
    model = HFModel(str(copy_dir))
    assert system_prompt_in_template(model) and no_system_prompt(model) == ""
    (copy_dir / "poise.json").write_text(json.dumps({"system_prompt_in_template": "yes"}))
    with pytest.raises(PoiseError, match="system_prompt_in_template: expected true or false"):
        HFModel(str(copy_dir))


def with_template(folder: Path, template: str) -> Path:
    """``folder`` (a copy of the tiny model) with ``template`` as its chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.chat_template = template
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize(
    ("template", "inserted"),
    [
        (QWEN25_TEMPLATE, QWEN25_DEFAULT),
        (SMOLLM2_TEMPLATE, "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    ],
)
def test_a_default_system_prompt_the_chat_template_inserts_is_read_from_it(
    copy_dir: Path, template: str, inserted: str
) -> None:
    """Qwen2.5 / SmolLM2 folders carry no poise.json: "no system prompt" (--system-prompt none,
    the exploitation attack's sys=off) must not silently send the template's default."""
    from poise.models import no_system_prompt

    model = HFModel(str(with_template(copy_dir, template)))
    assert (model.default_system_prompt, model.system_prompt_in_template) == (inserted, True)
    user = {"role": "user", "content": "hi"}
    assert inserted in model.prompt_text([user])
    none = no_system_prompt(model)
    assert none == ""
    assert inserted not in model.prompt_text([{"role": "system", "content": none}, user])
    # what poise.json declares wins over what the template shows
    (copy_dir / "poise.json").write_text(json.dumps({"system_prompt_in_template": False}))
    model = HFModel(str(copy_dir))
    assert (model.default_system_prompt, model.system_prompt_in_template) == (None, False)


# a template that inserts its default for an empty system message too: "" cannot ask for none
DEFAULT_EVEN_FOR_EMPTY_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' and messages[0]['content'] %}"
    "{{ '<|system|>\\n' + messages[0]['content'] + '</s>\\n' }}"
    "{% else %}{{ '<|system|>\\nYou are Bot.</s>\\n' }}{% endif %}"
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '</s>\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# a template whose "default" for a chat without a system message is blank
BLANK_DEFAULT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ '<|system|>' + messages[0]['content'] + '</s>\\n' }}"
    "{% else %}{{ '<|system|>\\n </s>\\n' }}{% endif %}"
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '</s>\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@pytest.mark.parametrize(
    "template",
    [GEMMA2_TEMPLATE, LLAMA32_TEMPLATE, DEFAULT_EVEN_FOR_EMPTY_TEMPLATE, BLANK_DEFAULT_TEMPLATE],
)
def test_templates_that_insert_no_default_system_prompt_declare_none(
    copy_dir: Path, template: str
) -> None:
    # Llama 3.2 writes a system header with an empty prompt; Gemma 2 refuses a system message;
    # one template inserts its default for an empty system message too (so no system message
    # poise can send takes it away), one inserts only whitespace
    model = HFModel(str(with_template(copy_dir, template)))
    assert (model.default_system_prompt, model.system_prompt_in_template) == (None, False)


def test_a_template_that_takes_no_system_message_says_so_and_what_to_do(copy_dir: Path) -> None:
    from poise.models.context import prompt_token_count

    model = HFModel(str(with_template(copy_dir, GEMMA2_TEMPLATE)))
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    hint = "System role not supported: this model's chat template takes no system message"
    with pytest.raises(PoiseError, match=hint):
        model.generate([chat], Sampling(max_new_tokens=2))
    with pytest.raises(PoiseError, match=hint):
        prompt_token_count(model, chat)
    # an error of the chat itself gets no such hint
    turns = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(PoiseError, match=r"must alternate user/assistant/user/assistant/...\)$"):
        model.generate([turns], Sampling(max_new_tokens=2))


def test_a_template_that_writes_the_date_into_prompts_is_warned_about(
    copy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="poise.models.hf"):
        HFModel(str(with_template(copy_dir, LLAMA32_TEMPLATE)))
    assert "writes today's date into every prompt" in caplog.text
    assert 'chat_template_kwargs={"date_string": ' in caplog.text  # and how to fix it
    caplog.clear()
    with caplog.at_level("WARNING", logger="poise.models.hf"):
        pinned = HFModel(str(copy_dir), chat_template_kwargs={"date_string": "26 Jul 2024"})
    assert "today's date" not in caplog.text
    assert "Today Date: 26 Jul 2024" in pinned.prompt_text([{"role": "user", "content": "hi"}])


def test_a_date_string_the_template_never_reads_does_not_silence_the_date_warning(
    copy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    template = (
        "{{ 'Today: ' + strftime_now('%d %b %Y') + '\\n' }}{% for message in messages %}"
        "{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
    )
    folder = with_template(copy_dir, template)
    with caplog.at_level("WARNING", logger="poise.models.hf"):
        HFModel(str(folder), chat_template_kwargs={"date_string": "26 Jul 2024"})
    assert "writes today's date into every prompt" in caplog.text
    assert "chat_template_kwargs=" not in caplog.text  # no fix to offer: it reads no date_string


# Qwen3's way of asking for an answer without a thinking block (its template's last lines)
THINKING_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '</s>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}"
)


def test_chat_template_kwargs_reach_every_render_of_the_models_chats(copy_dir: Path) -> None:
    from poise.models import load_model
    from poise.models.context import prompt_token_count

    assert "enable_thinking" in THINKING_TEMPLATE
    folder = with_template(copy_dir, THINKING_TEMPLATE)
    plain = HFModel(str(folder))
    model = HFModel(str(folder), chat_template_kwargs={"enable_thinking": False})
    chat: Chat = [{"role": "user", "content": "hi"}]
    assert "<think>" not in plain.prompt_text(chat)
    assert model.prompt_text(chat).endswith("<|assistant|>\n<think>\n\n</think>\n\n")
    # the generated prompt, the context check and any wrapper's renders see the same text
    [ids] = model._encode_prompts([chat])
    assert model.tokenizer.decode(ids) == model.prompt_text(chat)
    assert prompt_token_count(model, chat) == len(ids) > len(plain._encode_prompts([chat])[0])
    # a strategy's spec takes the option to the model it wraps, whose tokenizer it passes on
    wrapped = load_model(
        f'logit_temperature("{folder}", t=0.5)', chat_template_kwargs={"enable_thinking": False}
    )
    assert "enable_thinking" in wrapped.name  # its inner model's name, quoted
    rendered = wrapped.tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False
    )
    assert rendered == model.prompt_text(chat)
    # answers to prompts rendered otherwise never share a cache key
    assert model.name == plain.name + '+{"enable_thinking":false}'
    # as --model-option chat_template_kwargs='{"enable_thinking": false}' gives it
    loaded = load_model(str(folder), chat_template_kwargs={"enable_thinking": False})
    assert loaded.name == model.name and loaded.prompt_text(chat) == model.prompt_text(chat)
    with pytest.raises(PoiseError, match=r"tokenize is a keyword of apply_chat_template itself"):
        HFModel(str(folder), chat_template_kwargs={"tokenize": False})


def test_a_calls_own_template_variables_win_over_the_models_fixed_ones(copy_dir: Path) -> None:
    model = HFModel(
        str(with_template(copy_dir, THINKING_TEMPLATE)),
        chat_template_kwargs={"enable_thinking": False},
    )
    chat: Chat = [{"role": "user", "content": "hi"}]
    assert "<think>" in model.prompt_text(chat)
    rendered = model.tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False, enable_thinking=True
    )
    assert rendered.endswith("<|assistant|>\n") and "<think>" not in rendered


def test_a_tokenizer_with_fixed_template_variables_still_pickles_and_copies(
    copy_dir: Path,
) -> None:
    """A datasets.map worker pickles the tokenizer; a deep copy must render with its own
    template, not call back into the original tokenizer."""
    import copy
    import pickle

    model = HFModel(
        str(with_template(copy_dir, THINKING_TEMPLATE)),
        chat_template_kwargs={"enable_thinking": False},
    )
    chat: Chat = [{"role": "user", "content": "hi"}]
    expected = model.prompt_text(chat)
    for other in (pickle.loads(pickle.dumps(model.tokenizer)), copy.deepcopy(model.tokenizer)):
        assert other.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == (
            expected
        )
        other.chat_template = "{{ 'own template' }}"
        assert other.apply_chat_template(chat, tokenize=False) == "own template"
    assert model.prompt_text(chat) == expected  # the model's own is untouched


def test_tokenizer_without_chat_template_is_refused(no_template_hf_model_dir: Path) -> None:
    with pytest.raises(PoiseError, match="no chat template"):
        HFModel(str(no_template_hf_model_dir))


def test_bad_device_dtype_and_batch_size(tiny_hf_model_dir: Path) -> None:
    with pytest.raises(PoiseError, match="dtype: unknown dtype 'float8'"):
        HFModel(str(tiny_hf_model_dir), dtype="float8")
    with pytest.raises(PoiseError, match="device"):
        HFModel(str(tiny_hf_model_dir), device="toaster")
    with pytest.raises(PoiseError, match="batch_size"):
        HFModel(str(tiny_hf_model_dir), batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(PoiseError, match="CUDA is not available"):
            HFModel(str(tiny_hf_model_dir), device="cuda")


# ----------------------------------------------------------------------------- generate


def test_batched_greedy_equals_one_by_one(model: HFModel) -> None:
    sampling = Sampling(max_new_tokens=16)
    batched = model.generate(CHATS, sampling)
    single = [model.generate([chat], sampling)[0] for chat in CHATS]
    same_completions(batched, single)
    assert all(len(row) == 1 for row in batched)
    assert all(c.text for row in batched for c in row)


def test_sampling_is_reproducible_and_independent_of_the_batch(model: HFModel) -> None:
    sampling = SAMPLED.model_copy(update={"n": 2})
    full = model.generate(CHATS, sampling)
    same_completions(full, model.generate(CHATS, sampling))
    reordered = model.generate(CHATS[::-1], sampling)[::-1]
    same_completions(full, reordered)
    subset = model.generate([CHATS[3], CHATS[0]], sampling)
    same_completions([full[3], full[0]], subset)
    model_batch, model.batch_size = model.batch_size, 3
    try:
        same_completions(full, model.generate(CHATS, sampling))
    finally:
        model.batch_size = model_batch


def test_rows_that_finish_early_leave_the_batch_without_changing_others(model: HFModel) -> None:
    # a third of the vocabulary ends a completion, so rows finish at different steps and the
    # batch is compacted several times
    vocab = len(model.tokenizer)
    eos = list(model.eos_token_ids)
    model.eos_token_ids = sorted({*eos, *range(10, vocab, 3)})
    try:
        sampling = SAMPLED.model_copy(update={"n": 4, "max_new_tokens": 24})
        batched = model.generate(CHATS, sampling)
        single = [model.generate([chat], sampling)[0] for chat in CHATS]
    finally:
        model.eos_token_ids = eos
    same_completions(batched, single)
    lengths = {c.num_tokens for row in batched for c in row}
    assert len(lengths) > 3
    assert "stop" in {c.finish_reason for row in batched for c in row}


def test_different_seeds_differ(model: HFModel) -> None:
    a = model.generate(CHATS, SAMPLED)
    b = model.generate(CHATS, SAMPLED.model_copy(update={"seed": 8}))
    assert texts(a) != texts(b)
    assert sum(x != y for x, y in zip(texts(a), texts(b), strict=True)) >= 4


def test_n_samples_per_chat(model: HFModel) -> None:
    three = model.generate(CHATS[:2], SAMPLED.model_copy(update={"n": 3}))
    assert [len(row) for row in three] == [3, 3]
    assert len(set(texts(three)[0])) == 3
    # a sample's randomness depends on its index only, so n=1 is the first of n=3
    one = model.generate(CHATS[:2], SAMPLED)
    assert [row[0].text for row in three] == [row[0].text for row in one]


def test_top_k_one_and_tiny_top_p_equal_greedy(model: HFModel) -> None:
    greedy = texts(model.generate(CHATS, Sampling(max_new_tokens=12)))
    top_k = SAMPLED.model_copy(update={"top_k": 1})
    assert texts(model.generate(CHATS, top_k)) == greedy
    top_p = SAMPLED.model_copy(update={"top_p": 1e-6})
    assert not top_p.greedy  # goes through the sampling path
    assert texts(model.generate(CHATS, top_p)) == greedy


def test_max_new_tokens_gives_length(model: HFModel) -> None:
    [[completion]] = model.generate(CHATS[:1], Sampling(max_new_tokens=5))
    assert completion.finish_reason == "length"
    assert completion.num_tokens == 5
    assert completion.token_logprobs is not None and len(completion.token_logprobs) == 5
    assert all(lp < 0 for lp in completion.token_logprobs)


def test_a_completion_stops_at_the_context_and_a_prompt_filling_it_is_refused(
    model: HFModel,
) -> None:
    # the tiny model's context is 512 tokens; rows used to be decoded past it without a word
    # (rotary positions: garbage; learned positions: an IndexError inside torch)
    assert model.context_length == 512
    near: Chat = [{"role": "user", "content": "a b " * 150 + "c" * 30}]
    room = 512 - len(model.prompt_ids(near))
    assert 0 < room < 40
    for sampling in (Sampling(max_new_tokens=96), Sampling(max_new_tokens=96, temperature=1.0)):
        [_, capped] = model.generate([CHATS[0], near], sampling)
        [exact] = model.generate([near], sampling.model_copy(update={"max_new_tokens": room}))
        assert [c.token_ids for c in capped] == [c.token_ids for c in exact]
        assert capped[0].num_tokens <= room
        # ended where the context ends ("length" at room tokens) or earlier, as the exact run
        assert capped[0].finish_reason == exact[0].finish_reason
        assert capped[0].finish_reason != "length" or capped[0].num_tokens == room
        [*_, last] = model.stream([near], sampling)
        assert last.completion is not None and last.completion.text == capped[0].text

    full: Chat = [{"role": "user", "content": "a b " * 300}]
    with pytest.raises(ContextLengthError) as caught:
        model.generate([CHATS[0], full], Sampling(max_new_tokens=8))
    message = str(caught.value)
    assert message.startswith(f"{model.name}: chat 1: This model's maximum context length is 512")
    with pytest.raises(ContextLengthError, match=r": chat 0: "):
        list(model.stream([full], Sampling(max_new_tokens=8)))
    with pytest.raises(ContextLengthError, match=r": prompt 0: "):
        model.complete([model.prompt_ids(full)], Sampling(max_new_tokens=8))


def test_a_prompt_of_exactly_the_context_is_refused_and_one_token_less_gets_one_token(
    model: HFModel,
) -> None:
    a = model.tokenizer.convert_tokens_to_ids("a")
    with pytest.raises(ContextLengthError, match=r": prompt 0: "):
        model.complete([[a] * 512], Sampling(max_new_tokens=4))
    [[one]] = model.complete([[a] * 511], Sampling(max_new_tokens=4))
    assert len(one.token_ids) == 1


def test_a_row_that_fills_the_context_waits_for_the_others_inside_it(
    tiny_hf_model_dir: Path, tmp_path: Path, build_gpt2: Callable[..., Path]
) -> None:
    """A row that stopped at the context was fed padding until the batch dropped it, at
    positions past the context: a model of learned positions (GPT-2) raised IndexError while
    the other rows went on."""
    gpt = HFModel(str(build_gpt2(tmp_path / "gpt", tiny_hf_model_dir)), device="cpu")
    short: Chat = [{"role": "user", "content": "Hi"}]
    long: Chat = [{"role": "user", "content": "Hello there my go"}]
    room = 24 - len(gpt.prompt_ids(long))
    assert 0 < room < 24 - len(gpt.prompt_ids(short)) - 8
    # seven rows go on after the long one stops: too few done for the batch to drop it at once
    rows = gpt.generate([short] * 7 + [long], Sampling(max_new_tokens=30))
    assert [r[0].num_tokens for r in rows[:7]] == [24 - len(gpt.prompt_ids(short))] * 7
    assert (rows[7][0].num_tokens, rows[7][0].finish_reason) == (room, "length")
    [alone] = gpt.generate([short], Sampling(max_new_tokens=30))
    assert rows[0][0].token_ids == alone[0].token_ids  # the waiting row changes no other


def test_eos_ends_a_completion(model: HFModel) -> None:
    sampling = Sampling(max_new_tokens=10)
    chat = CHATS[0]
    prompt = model.tokenizer(model.prompt_text(chat), add_special_tokens=False)["input_ids"]
    reference = model.model.generate(
        torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None
    )[0, len(prompt) :].tolist()
    eos = list(model.eos_token_ids)
    model.eos_token_ids = [*eos, reference[3]]
    try:
        [[completion]] = model.generate([chat], sampling)
    finally:
        model.eos_token_ids = eos
    first = reference.index(reference[3])  # the token may already occur earlier
    assert completion.finish_reason == "stop"
    assert completion.num_tokens == first
    assert completion.text == model.tokenizer.decode(reference[:first], skip_special_tokens=True)


def test_greedy_matches_transformers_generate(model: HFModel) -> None:
    chat = CHATS[2]
    prompt = model.tokenizer(model.prompt_text(chat), add_special_tokens=False)["input_ids"]
    reference = model.model.generate(
        torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None
    )[0, len(prompt) :]
    [[completion]] = model.generate([chat], Sampling(max_new_tokens=10))
    assert completion.text == model.tokenizer.decode(reference, skip_special_tokens=True)


def test_stop_strings_truncate(model: HFModel) -> None:
    [[full]] = model.generate(CHATS[3:4], Sampling(max_new_tokens=20))
    stop = full.text[8:10]
    cut = full.text.find(stop)
    [[stopped]] = model.generate(CHATS[3:4], Sampling(max_new_tokens=20, stop=(stop, "never!")))
    assert stopped.text == full.text[:cut]
    assert stopped.finish_reason == "stop"
    assert cut <= stopped.num_tokens < full.num_tokens
    assert stopped.token_logprobs == pytest.approx(full.token_logprobs[: stopped.num_tokens])


def test_progress_counts_finished_chats(model: HFModel) -> None:
    calls: list[int] = []
    model_batch, model.batch_size = model.batch_size, 4
    try:
        model.generate(CHATS, Sampling(max_new_tokens=3, n=3), progress=calls.append)
    finally:
        model.batch_size = model_batch
    assert sum(calls) == len(CHATS)
    assert len(calls) > 1
    assert model.generate([], Sampling()) == []


def test_row_seed_depends_on_seed_chat_and_index() -> None:
    chat = CHATS[0]
    assert row_seed(0, chat, 0) == row_seed(0, [dict(m) for m in chat], 0)
    assert len({row_seed(0, chat, 0), row_seed(1, chat, 0), row_seed(0, chat, 1)}) == 3
    assert 0 <= row_seed(5, CHATS[2], 3) < 2**63


# ----------------------------------------------------------------------------- sampling maths


def frequencies(logits: list[float], sampling: Sampling, draws: int = 40_000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    uniforms = torch.rand(draws, generator=generator)
    rows = torch.tensor([logits]).expand(draws, -1)
    chosen = sample_tokens(rows, uniforms, sampling)
    return torch.bincount(chosen, minlength=len(logits)).float() / draws


LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0]


def test_temperature_sampling_matches_softmax() -> None:
    for temperature in (0.5, 1.0, 2.0):
        sampling = Sampling(temperature=temperature)
        expected = torch.softmax(torch.tensor(LOGITS) / temperature, dim=-1)
        assert frequencies(LOGITS, sampling) == pytest.approx(expected.tolist(), abs=0.01)


def test_a_vanishing_temperature_is_the_greedy_limit_not_nan() -> None:
    """``logits / T`` overflows float32 below T ~ 1e-37 (inf - inf in the softmax: NaN, and the
    server answered 'ptedpted...'); tempered after subtracting the row's best it is greedy."""
    rows = torch.tensor([LOGITS, LOGITS[::-1], [30.0, 29.5, -2.0, 0.0, 1.0, 5.0]])
    uniforms = torch.tensor([0.0, 0.5, 0.999])
    for temperature in (1e-20, 1e-39, 1e-300, 5e-324):
        sampling = Sampling(temperature=temperature)
        assert sample_tokens(rows, uniforms, sampling).tolist() == rows.argmax(-1).tolist()
        for top in ({}, {"top_k": 3}, {"top_p": 0.9}):
            probs = filtered_probs(rows, Sampling(temperature=temperature, **top))
            assert not probs.isnan().any()
            assert probs.argmax(-1).tolist() == rows.argmax(-1).tolist()
            assert probs.max(-1).values.tolist() == [1.0, 1.0, 1.0]


def test_top_k_keeps_k_most_likely_renormalised() -> None:
    expected = torch.softmax(torch.tensor(LOGITS[:3]), dim=-1).tolist() + [0.0] * 3
    observed = frequencies(LOGITS, Sampling(temperature=1.0, top_k=3))
    assert observed == pytest.approx(expected, abs=0.01)
    assert observed[3:].sum() == 0


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = torch.softmax(torch.tensor(LOGITS), dim=-1)  # ~[.57, .21, .13, .08, .03, .004]
    p = float(probs[:2].sum()) + 0.01  # needs the third token to reach p
    nucleus = probs[:3] / probs[:3].sum()
    observed = frequencies(LOGITS, Sampling(temperature=1.0, top_p=p))
    assert observed == pytest.approx([*nucleus.tolist(), 0.0, 0.0, 0.0], abs=0.01)
    exactly_two = frequencies(
        LOGITS, Sampling(temperature=1.0, top_p=float(probs[:2].sum()) - 1e-4)
    )
    assert exactly_two[2:].sum() == 0


def test_top_p_over_a_large_vocabulary_equals_a_full_sort() -> None:
    # rows from peaked to flat, so the candidate set must grow past 64 tokens for some
    generator = torch.Generator().manual_seed(1)
    vocab = 5000
    scales = torch.linspace(0.1, 12.0, 48).unsqueeze(-1)  # [rows, 1]
    logits = torch.randn(48, vocab, generator=generator) * scales  # [rows, vocab]
    uniforms = torch.rand(48, generator=generator)
    peaked = slice(40, 48)  # top 64 tokens hold the nucleus of these rows
    search = NucleusSearch(retry_every=3)  # state carried across calls must not matter
    for top_p in (0.3, 0.9, 0.3, 0.9):
        sampling = Sampling(temperature=0.8, top_p=top_p)
        probs, order = torch.sort(torch.softmax(logits / 0.8, dim=-1), dim=-1, descending=True)
        before = torch.cumsum(probs, dim=-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)
        cdf = torch.cumsum(probs, dim=-1)
        expected = [
            int(order[r, int(torch.searchsorted(cdf[r], uniforms[r] * cdf[r, -1], right=True))])
            for r in range(48)
        ]
        assert sample_tokens(logits, uniforms, sampling, search).tolist() == expected
        assert (
            sample_tokens(logits[peaked], uniforms[peaked], sampling, search).tolist()
            == (expected[peaked])
        )
        assert sample_tokens(logits, uniforms, sampling).tolist() == expected


# the sampling transforms filtered_probs is checked under: (id, sampling)
FILTERS = [
    ("temperature", Sampling(temperature=0.7)),
    ("top-k", Sampling(temperature=1.3, top_k=5)),
    ("top-p", Sampling(temperature=1.0, top_p=0.8)),
    ("top-k-and-p", Sampling(temperature=0.9, top_k=10, top_p=0.6)),
]


@pytest.mark.parametrize(
    "sampling",
    [s for _, s in FILTERS] + [Sampling(temperature=0.0)],
    ids=[name for name, _ in FILTERS] + ["greedy"],
)
def test_filtered_probs_are_what_sample_tokens_draws_from(sampling: Sampling) -> None:
    """The dense distribution matches sample_tokens' inverse CDF on a fine grid of uniforms:
    each token's share of the grid is its probability (to the grid's step)."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 50, generator=generator) * 2.5  # [rows, vocab]
    probs = filtered_probs(logits, sampling)  # [rows, vocab]
    assert probs.sum(dim=-1).tolist() == pytest.approx([1.0] * 6, abs=1e-6)
    grid = 20_000
    uniforms = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    for row in range(6):
        chosen = sample_tokens(logits[row].expand(grid, -1), uniforms, sampling)
        shares = torch.bincount(chosen, minlength=50).float() / grid
        assert shares.tolist() == pytest.approx(probs[row].tolist(), abs=2 / grid)
    # any leading shape: [rows, positions, vocab] as speculative decoding passes it
    stacked = filtered_probs(logits.view(2, 3, 50), sampling)
    assert torch.equal(stacked.view(6, 50), probs)


@pytest.mark.parametrize(
    "sampling",
    [s for _, s in FILTERS] + [Sampling(temperature=1.0, top_p=0.05)],
    ids=[name for name, _ in FILTERS] + ["tiny-top-p"],
)
def test_filtered_probs_equal_transformers_warpers(sampling: Sampling) -> None:
    """The same distribution as transformers' own logits processors, applied in the order
    ``generate`` applies them (temperature, top-k, top-p), then a softmax."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList([TemperatureLogitsWarper(sampling.temperature)])
    if sampling.top_k:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 50, generator=generator) * 2.5  # [rows, vocab]
    expected = warpers(torch.zeros(8, 1, dtype=torch.long), logits.clone()).softmax(dim=-1)
    assert torch.allclose(filtered_probs(logits, sampling), expected, atol=1e-6, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-20, 20), min_size=2, max_size=12),
    uniform=st.floats(0.0, 1.0, exclude_max=True),
    top_k=st.integers(0, 12),
    top_p=st.floats(0.01, 1.0),
    temperature=st.floats(0.05, 5.0),
)
def test_sampled_token_is_always_inside_the_filtered_set(
    logits: list[float], uniform: float, top_k: int, top_p: float, temperature: float
) -> None:
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    row = torch.tensor([logits])
    token = int(sample_tokens(row, torch.tensor([uniform]), sampling)[0])
    probs = torch.softmax(row[0] / temperature, dim=-1)
    ranked = sorted(range(len(logits)), key=lambda i: (-float(probs[i]), i))
    allowed = ranked[: top_k or len(logits)] if not sampling.greedy else ranked[:1]
    kept = probs[allowed] / probs[allowed].sum()
    # the nucleus: tokens whose preceding mass is below p (small slack for float ties)
    mass_before = 0.0
    nucleus = []
    for i, q in zip(allowed, kept.tolist(), strict=True):
        if mass_before < top_p + 1e-6 or not nucleus:
            nucleus.append(i)
        mass_before += q
    # tokens of (nearly) equal probability may be ranked either way round
    tied = [
        i
        for i in range(len(logits))
        if any(abs(float(probs[i]) - float(probs[j])) <= 1e-6 for j in nucleus)
    ]
    assert token in nucleus or token in tied


# ----------------------------------------------------------------------------- score


def test_score_equals_full_forward_log_softmax(model: HFModel) -> None:
    continuations = ["Paris is the capital.", "", "the theory", "a"]
    chats = [CHATS[2], CHATS[0], CHATS[1], CHATS[4]]
    scored = model.score(chats, continuations)
    assert scored[1].tokens == () and scored[1].logprobs == ()
    for chat, text, result in zip(chats, continuations, scored, strict=True):
        prompt = model.tokenizer(model.prompt_text(chat), add_special_tokens=False)["input_ids"]
        target = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert list(result.token_ids) == target
        assert result.tokens == tuple(model.tokenizer.convert_ids_to_tokens(target))
        if not target:
            continue
        with torch.no_grad():
            logits = model.model(torch.tensor([prompt + target])).logits[0]  # [seq, vocab]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        expected = [logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(target)]
        assert result.logprobs == pytest.approx(expected, abs=1e-4)


def plain_continuation_logprobs(model: HFModel, chat: Chat, text: str) -> list[float]:
    """The log-probs of ``text`` after ``chat``'s prompt from one unpadded transformers pass."""
    prompt = model.tokenizer(model.prompt_text(chat), add_special_tokens=False)["input_ids"]
    target = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model.model(torch.tensor([prompt + target])).logits[0]  # [seq, vocab]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return [logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(target)]


def test_score_of_a_long_prompt_with_a_short_continuation_beside_the_reverse(
    model: HFModel,
) -> None:
    """The batch is ordered by prompt + continuation; the logits kept must cover its longest
    continuation, which need not be the longest row's."""
    chats = [CHATS[3], CHATS[4]]
    continuations = ["a", "Once upon a time there was a dragon."]
    scored = model.score(chats, continuations)
    for chat, text, result in zip(chats, continuations, scored, strict=True):
        assert result.logprobs == pytest.approx(
            plain_continuation_logprobs(model, chat, text), abs=1e-4
        )


def test_score_of_a_learned_positions_model_does_not_depend_on_the_padding(
    tiny_hf_model_dir: Path, tmp_path: Path, build_gpt2: Callable[..., Path]
) -> None:
    gpt = HFModel(str(build_gpt2(tmp_path / "gpt", tiny_hf_model_dir, context=96)), device="cpu")
    chats = [CHATS[1], CHATS[3]]  # the first is left-padded beside the second
    continuations = ["the cat", "a dragon"]
    scored = gpt.score(chats, continuations)
    for chat, text, result in zip(chats, continuations, scored, strict=True):
        assert result.logprobs == pytest.approx(
            plain_continuation_logprobs(gpt, chat, text), abs=1e-4
        )


def test_score_matches_generated_logprobs(model: HFModel) -> None:
    # this chat's greedy text re-encodes to exactly the generated tokens (not true of every
    # text: BPE may merge generated pieces), so teacher forcing must reproduce the log-probs
    [[completion]] = model.generate(CHATS[2:3], Sampling(max_new_tokens=8))
    target = model.tokenizer(completion.text, add_special_tokens=False)["input_ids"]
    assert len(target) == completion.num_tokens
    [scored] = model.score(CHATS[2:3], [completion.text])
    assert scored.logprobs == pytest.approx(completion.token_logprobs, abs=1e-4)
    assert model.score([], []) == []
    with pytest.raises(PoiseError, match="one continuation per chat"):
        model.score(CHATS[:2], ["x"])


def test_a_tokenizer_that_adds_a_bos_token_gets_no_second_one(copy_dir: Path) -> None:
    """The chat template writes the BOS token; a tokenizer whose encoding adds one too (most
    Llama-family tokenizers) must not put a second one before the prompt or into a scored
    continuation."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    path = copy_dir / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    bos = tok.token_to_id("<s>")
    tok.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok.save(str(path))
    model = HFModel(str(copy_dir))
    assert model.tokenizer("hi")["input_ids"][0] == bos  # the tokenizer adds one itself
    chat: Chat = [{"role": "user", "content": "hi"}]
    ids = model.prompt_ids(chat)
    assert ids.count(bos) == 1 and model.tokenizer.decode(ids) == model.prompt_text(chat)
    [scored] = model.score([chat], ["ok"])
    assert "".join(scored.tokens) == "ok"


def test_empty_prompt_is_refused(model: HFModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "prompt_text", lambda chat: "")
    with pytest.raises(PoiseError, match="chat 0 renders to an empty prompt"):
        model.generate(CHATS[:1], Sampling())


def test_bfloat16_weights_generate(tiny_hf_model_dir: Path) -> None:
    half = HFModel(str(tiny_hf_model_dir), dtype="bf16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    [[completion]] = half.generate(CHATS[:1], Sampling(max_new_tokens=4))
    assert completion.num_tokens == 4
    assert completion.token_logprobs is not None
    assert all(math.isfinite(lp) and lp < 0 for lp in completion.token_logprobs)


def _no_network(monkeypatch: pytest.MonkeyPatch, *, cached: bool) -> None:
    import socket

    import huggingface_hub
    from huggingface_hub import constants

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    found = "/cache/models--owner--model/snapshots/abc/config.json" if cached else None
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: found)


def test_hub_id_without_network_fails_at_once_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from poise.models.hf import HFModel, hub_access

    _no_network(monkeypatch, cached=False)
    with pytest.raises(
        PoiseError,
        match=r"owner/model: not in the local Hugging Face cache.*hf download owner/model",
    ):
        hub_access("owner/model")
    with pytest.raises(PoiseError, match="cannot be reached"):
        HFModel("owner/model")  # before any download is attempted
    # what the hub client answers for a file it knows the cached repository lacks
    import huggingface_hub
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: _CACHED_NO_EXIST)
    with pytest.raises(PoiseError, match="owner/model: not in the local Hugging Face cache"):
        hub_access("owner/model")


def test_hub_id_without_network_but_cached_loads_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from poise.models.hf import hub_access

    _no_network(monkeypatch, cached=True)
    assert hub_access("owner/model") == {"local_files_only": True}
    # behind a proxy a direct connection says nothing; a proxy that does not answer (refused
    # here like every connection) means no network, one that answers leaves it to the hub client
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert hub_access("owner/model") == {"local_files_only": True}
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())
    assert hub_access("owner/model") == {}


# ----------------------------------------------------------------------------- activations


@pytest.fixture(scope="module")
def tiny_gemma3_image_text(
    tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A random tiny Gemma3ForConditionalGeneration (what AutoModelForCausalLM loads for Gemma 3
    4B and up): its decoder blocks sit under ``model.language_model``."""
    from transformers import (
        AutoTokenizer,
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=8,
        query_pre_attn_scalar=8,
        initializer_range=0.2,
    )
    vision = SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=tokenizer.convert_tokens_to_ids("<|system|>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<|user|>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<unk>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-gemma3") / "gemma3"
    Gemma3ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def plain_hidden_states(model: HFModel, ids: list[int]) -> torch.Tensor:
    """[layers + 1, seq, hidden]: transformers' ``output_hidden_states`` of the lone ids."""
    with torch.no_grad():
        out = model.model(torch.tensor([ids]), output_hidden_states=True)
    return torch.stack(out.hidden_states, dim=1)[0].float()


def test_hidden_states_match_a_plain_forward_pass_in_a_padded_batch(model: HFModel) -> None:
    chats = [CHATS[1], CHATS[3]]  # the first is left-padded beside the second
    continuations = ["the cat", "a"]
    last = model.hidden_states(chats)  # [rows, layers + 1, hidden]
    mean = model.hidden_states(chats, continuations, reduce="mean")
    assert last.shape == mean.shape == (2, 3, 32)
    for row, (chat, text) in enumerate(zip(chats, continuations, strict=True)):
        prompt = model.prompt_ids(chat)
        target = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert torch.allclose(last[row], plain_hidden_states(model, prompt)[:, -1], atol=1e-4)
        full = plain_hidden_states(model, prompt + target)[:, -len(target) :].mean(dim=1)
        assert torch.allclose(mean[row], full, atol=1e-4)
    for upto in (0, 1, 2):
        assert torch.allclose(model.hidden_states(chats, upto=upto), last[:, : upto + 1], atol=1e-5)
    with pytest.raises(PoiseError, match=r"upto must be in 0\.\.2, got 3"):
        model.hidden_states(chats, upto=3)


def test_the_decoder_blocks_and_final_norm_of_a_gpt2_model_are_found(
    tiny_hf_model_dir: Path, tmp_path: Path, build_gpt2: Callable[..., Path]
) -> None:
    gpt = HFModel(str(build_gpt2(tmp_path / "gpt", tiny_hf_model_dir)), device="cpu")
    assert gpt.decoder_layers() == list(gpt.model.transformer.h)
    assert gpt.final_norm() is gpt.model.transformer.ln_f
    states = gpt.hidden_states(CHATS[:2], upto=1)
    assert torch.allclose(states, gpt.hidden_states(CHATS[:2])[:, :2], atol=1e-5)


def test_the_decoder_blocks_of_an_image_text_model_are_found(
    tiny_gemma3_image_text: Path,
) -> None:
    model = HFModel(str(tiny_gemma3_image_text), device="cpu")
    blocks = model.decoder_layers()
    assert len(blocks) == 2
    assert blocks[0] is model.model.model.language_model.layers[0]
    assert model.final_norm() is model.model.model.language_model.norm
    chats = CHATS[:2]
    states = model.hidden_states(chats)  # [rows, layers + 1, hidden]
    assert states.shape == (2, 3, 32)
    # stopping before block 1 (a pre-hook on it) gives the same stream as the full pass
    assert torch.allclose(model.hidden_states(chats, upto=1), states[:, :2], atol=1e-5)


def test_a_temperature_just_above_float32s_smallest_normal_is_greedy_not_nan() -> None:
    """T = 2e-38 is a normal float32 (above ``finfo.tiny``), so it is divided by, not treated
    as 0: ``30 / 2e-38`` overflows to inf, and without the row's best subtracted first the
    softmax of [inf, inf, ...] is NaN. Shifted, the best token scores 0 and the rest -inf."""
    rows = torch.tensor([[30.0, 29.5, -2.0, 0.0], [1.0, 40.0, 39.0, 0.0]])
    sampling = Sampling(temperature=2e-38)
    assert sample_tokens(rows, torch.tensor([0.5, 0.999]), sampling).tolist() == [0, 1]
    probs = filtered_probs(rows, sampling)
    assert probs.tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]


@pytest.mark.parametrize("top_p", [0.25, 0.5, 0.75])
def test_top_p_drops_a_token_whose_preceding_mass_is_exactly_p_as_transformers(
    top_p: float,
) -> None:
    """Equal logits give probabilities of exactly 1/4 (and cumulative sums exact in float32),
    so the mass before the (j+1)-th token is exactly j/4: transformers' TopPLogitsWarper
    removes a token once the mass before it reaches p (``cumsum(ascending) <= 1 - p``), which
    keeps 4p tokens here, as ``sample_tokens`` and ``filtered_probs`` must."""
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.zeros(1, 4)
    warped = TopPLogitsWarper(top_p)(torch.zeros(1, 1, dtype=torch.long), logits.clone())
    kept = int(torch.isfinite(warped).sum())
    assert kept == round(4 * top_p)
    sampling = Sampling(temperature=1.0, top_p=top_p)
    assert int((filtered_probs(logits, sampling) > 0).sum()) == kept
    uniforms = (torch.arange(64, dtype=torch.float32) + 0.5) / 64
    chosen = sample_tokens(logits.expand(64, -1), uniforms, sampling)
    assert len(set(chosen.tolist())) == kept


def test_each_sampled_token_is_the_inverse_cdf_at_its_own_steps_uniform(model: HFModel) -> None:
    """Token t of a row is ``sample_tokens`` of the next-token logits after the prompt and the
    row's first t tokens, at uniform t of the row's seeded stream (``row_seed``): the stream
    advances one uniform per token, replayed here with a fresh prefill per step."""
    sampling = Sampling(temperature=1.5, max_new_tokens=10, seed=5)
    chat = CHATS[3]
    model.eos_token_ids = []  # ten tokens, whatever is drawn
    [[completion]] = model.generate([chat], sampling)
    tokens = list(completion.token_ids)
    assert len(tokens) == 10
    generator = torch.Generator().manual_seed(row_seed(sampling.seed, chat, 0))
    uniforms = torch.rand(sampling.max_new_tokens, generator=generator)
    [prompt] = model._encode_prompts([chat])
    for t, token in enumerate(tokens):
        logits = model.prefill([prompt + tokens[:t]]).logits  # [1, vocab]
        assert sample_tokens(logits, uniforms[t : t + 1], sampling).tolist() == [token], t
    # the same uniform at every step draws other tokens: the check above can tell
    replay = [
        int(sample_tokens(model.prefill([prompt + tokens[:t]]).logits, uniforms[:1], sampling))
        for t in range(len(tokens))
    ]
    assert replay != tokens
