"""The recipes' shared machinery: chat encoding, data order, output folder, CLI flags.

Also home of the small builders the other recipe tests import (tiny classifiers, pair files).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat_templates import GEMMA2_TEMPLATE, LLAMA3_TEMPLATE, QWEN25_TEMPLATE
from poise.errors import PoiseError

# ----------------------------------------------------------------------------- builders


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread; on shared cores more threads only contend.
    Imported by the other recipe test modules, so it applies there too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_tiny_classifier(
    path: Path, lm_dir: Path, *, zero_head: bool = False, seed: int = 1
) -> Path:
    """A tiny one-output LlamaForSequenceClassification sharing the tiny LM's tokenizer.

    ``zero_head``: the score head is all zeros, so every text scores exactly 0 (cost σ(0) = 0.5):
    a cost model whose answer is known."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(str(lm_dir))
    config.num_labels = 1
    config.architectures = ["LlamaForSequenceClassification"]
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config).eval()
    if zero_head:
        with torch.no_grad():
            model.score.weight.zero_()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(str(lm_dir)).save_pretrained(path)
    return path


def write_pairs(path: Path, n: int = 8, *, safety: bool = False) -> Path:
    """``n`` generic-format pairs; with ``safety`` each carries chosen/rejected safety labels."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {
            "prompt": f"How do I bake bread number {i}?",
            "chosen": "Sure, mix flour and water.",
            "rejected": "No. I will not help with that request at all.",
        }
        if safety:
            row["meta"] = {"chosen_is_safe": True, "rejected_is_safe": i % 2 == 0}
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# Chat templates of public instruct models (tests/chat_templates.py), and the special tokens each
# writes.
TEMPLATE_SPECIAL_TOKENS = {
    "qwen2.5": (QWEN25_TEMPLATE, ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "llama3": (
        LLAMA3_TEMPLATE,
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|eot_id|>",
    ),
    "gemma2": (GEMMA2_TEMPLATE, ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<eos>"),
}


def with_public_template(lm_dir: Path, folder: Path, family: str) -> Path:
    """A copy of the tiny model in ``folder`` whose tokenizer has ``family``'s public chat
    template, special tokens and EOS (the embeddings grown to match), without a poise.json: a
    user's own model, as poise finds it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    template, special, eos = TEMPLATE_SPECIAL_TOKENS[family]
    tokenizer = AutoTokenizer.from_pretrained(str(lm_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": list(special)})
    tokenizer.eos_token = eos
    if family == "llama3":
        tokenizer.bos_token = "<|begin_of_text|>"
    if family == "gemma2":
        tokenizer.bos_token = "<bos>"
    tokenizer.chat_template = template
    model = AutoModelForCausalLM.from_pretrained(str(lm_dir))
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


# ----------------------------------------------------------------------------- chat encoding


def test_chat_encoder_matches_generation_prompt_and_ends_response_at_eos(
    tiny_hf_model_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    from poise.train.recipes.common import ChatEncoder

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    encoder = ChatEncoder(tokenizer, max_length=512)
    chat = [{"role": "user", "content": "hello there"}]
    expected_prompt = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False
    )
    assert (
        encoder.prompt_ids(chat)
        == tokenizer(expected_prompt, add_special_tokens=False)["input_ids"]
    )
    response = encoder.response_ids("the answer")
    # the tiny template closes a turn with "</s>\n": the response keeps the EOS, not the newline
    assert response[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response) == "the answer</s>"


def test_a_response_ends_with_the_templates_own_turn_marker_when_it_is_not_the_eos(
    tiny_hf_model_dir: Path,
) -> None:
    """A template that closes a turn with a marker other than the tokenizer's EOS (as Gemma's
    <end_of_turn> and Phi-3's <|end|>) trained every response to end "reply</s>", a token the
    template never writes after a reply, instead of "reply<|end|>"."""
    from transformers import AutoTokenizer

    from poise.train.recipes.common import ChatEncoder

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    tokenizer.chat_template = (
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    )
    encoder = ChatEncoder(tokenizer, 512)
    chat = [{"role": "user", "content": "hi"}]
    rendered = encoder.render([*chat, {"role": "assistant", "content": "the answer"}])
    response = encoder.response_ids("the answer")
    assert tokenizer.decode(response) == "the answer<|end|>"
    # the prompt and the response are the template's own rendering of the reply, cut after it
    assert rendered.startswith(tokenizer.decode(encoder.prompt_ids(chat) + response))
    # a template that writes two special tokens after a reply (here the next turn's opener): the
    # response ends at the first, the end of the turn, where generation stops
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "'<|end|>\\n'", "'<|end|><|user|>\\n'"
    )
    encoder = ChatEncoder(tokenizer, 512)
    assert tokenizer.decode(encoder.response_ids("the answer")) == "the answer<|end|>"


def _trl_conversational(tokenizer: Any, chat: list[dict[str, str]], reply: str) -> tuple[Any, Any]:
    """(prompt ids, completion ids) as TRL 1.16's DPOTrainer tokenises a conversational pair
    (``tokenize_fn`` in trl/trainer/dpo_trainer.py): the prompt through the template with the
    generation prompt, prompt + reply through the template, the completion after their common
    prefix."""

    def ids(messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
        return list(out["input_ids"])

    prompt = ids(chat, add_generation_prompt=True)
    full = ids([*chat, {"role": "assistant", "content": reply}])
    n = 0
    while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
        n += 1
    return prompt[:n], full[n:]


@pytest.mark.parametrize("family", ["qwen2.5", "llama3", "gemma2"])
def test_pairs_are_the_tokens_of_trls_conversational_tokenisation(
    tiny_hf_model_dir: Path, tmp_path: Path, family: str
) -> None:
    """Prompt ids are apply_chat_template's with the generation prompt; the response is what
    TRL trains on, up to and including the template's end-of-turn token (TRL also keeps the
    newline the template writes after it). Llama 3's and Gemma 2's templates trim the reply
    (``content | trim``): a reply with surrounding spaces was trained with them, as no
    rendering of the chat writes it."""
    from transformers import AutoTokenizer

    from poise.train.recipes.common import ChatEncoder, load_tokenizer

    folder = with_public_template(tiny_hf_model_dir, tmp_path / family, family)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    encoder = ChatEncoder(load_tokenizer(folder), 512)
    end = {"qwen2.5": "<|im_end|>", "llama3": "<|eot_id|>", "gemma2": "<end_of_turn>"}[family]
    chats = [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me a joke"},
        ],
    ]
    if family != "gemma2":
        chats.append([{"role": "system", "content": "Be brief."}, chats[0][0]])
    for chat in chats:
        for reply in ("Paris.", "  a reply with spaces  ", "two\nlines\n"):
            prompt, completion = _trl_conversational(tokenizer, chat, reply)
            assert encoder.prompt_ids(chat) == prompt
            response = encoder.response_ids(reply)
            assert response[-1] == tokenizer.convert_tokens_to_ids(end)
            assert completion[: len(response)] == response
            assert tokenizer.decode(completion[len(response) :]) in ("", "\n")


def test_chat_encoder_fit_keeps_the_response_and_cuts_the_prompt_from_the_left(
    tiny_hf_model_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    from poise.train.recipes.common import ChatEncoder

    encoder = ChatEncoder(AutoTokenizer.from_pretrained(str(tiny_hf_model_dir)), max_length=10)
    prompt, response = encoder.fit(list(range(20)), [100, 101, 102])
    assert response == [100, 101, 102]
    assert prompt == list(range(13, 20))
    prompt, response = encoder.fit(list(range(20)), list(range(100, 120)))
    assert len(prompt) == 5 and prompt == list(range(15, 20))  # half the budget stays prompt
    assert response == list(range(100, 105))


def test_plain_format_for_base_models(tiny_hf_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from poise.train.recipes.common import ChatEncoder

    encoder = ChatEncoder(AutoTokenizer.from_pretrained(str(tiny_hf_model_dir)), 512, plain=True)
    text = encoder.prompt_text([{"role": "user", "content": "hi"}])
    assert text.endswith("User: hi\nAssistant:")


# ----------------------------------------------------------------------------- data order


def test_epoch_order_is_a_seeded_permutation() -> None:
    from poise.train.recipes.common import epoch_order, split_holdout

    a = epoch_order(50, seed=3, epoch=1)
    assert sorted(a) == list(range(50))
    assert a == epoch_order(50, seed=3, epoch=1)
    assert a != epoch_order(50, seed=3, epoch=2)
    train, held = split_holdout(20, 0.25, seed=0)
    assert len(held) == 5 and not set(train) & set(held) and sorted(train + held) == list(range(20))
    assert split_holdout(20, 0.0, seed=0) == (list(range(20)), [])


# ----------------------------------------------------------------------------- output folder


def _config(tmp_path: Path, **fields: Any) -> Any:
    from poise.train.recipes.dpo import DPOConfig

    fields = {"data": "d.jsonl", **fields}
    return DPOConfig(model="m", output=str(tmp_path / "out"), **fields)


def test_output_folder_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    from poise.train.recipes.common import OutputFolder

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(PoiseError, match="not empty and was not written by `poise train`"):
        OutputFolder.prepare(_config(tmp_path), "dpo")


def test_output_folder_resumes_same_config_and_names_a_different_field(tmp_path: Path) -> None:
    from poise.train.recipes.common import OutputFolder

    first = OutputFolder.prepare(_config(tmp_path, lr=1e-5), "dpo")
    assert first.status == "new"
    first.begin({"pairs": 3})
    again = OutputFolder.prepare(_config(tmp_path, lr=1e-5, save_steps=7), "dpo")
    assert again.status == "running"  # save_steps does not change what is trained
    with pytest.raises(PoiseError, match=r"lr: 1e-05 != 2e-05"):
        OutputFolder.prepare(_config(tmp_path, lr=2e-5), "dpo")
    with pytest.raises(PoiseError, match="holds no checkpoint"):
        OutputFolder.prepare(_config(tmp_path, lr=1e-5, resume=True), "dpo")
    assert OutputFolder.prepare(_config(tmp_path, lr=2e-5, overwrite=True), "dpo").status == "new"


def test_a_run_resumed_on_an_edited_data_file_is_refused(tmp_path: Path) -> None:
    """The identity holds the data's path, not its bytes: an edited file resumed silently."""
    from poise.train.recipes.common import OutputFolder, file_fingerprint

    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    config = _config(tmp_path, data=str(data))
    first = OutputFolder.prepare(config, "dpo")
    first.check_same_data(data)  # a new folder: nothing to compare
    first.begin({"fingerprint": file_fingerprint(data)})
    again = OutputFolder.prepare(config, "dpo")
    assert again.status == "running"
    again.check_same_data(data)  # unchanged: resumes
    write_pairs(data, n=5)
    with pytest.raises(PoiseError, match=r"changed since .* began training on it .*--overwrite"):
        OutputFolder.prepare(config, "dpo").check_same_data(data)
    OutputFolder.prepare(_config(tmp_path, data=str(data), overwrite=True), "dpo").check_same_data(
        data
    )  # --overwrite starts again


def test_overwrite_refuses_an_output_that_holds_an_input(tmp_path: Path) -> None:
    """``-m out -o out --overwrite`` cleared the folder, the model being trained, then failed
    to load it: the trained model was lost."""
    from poise.train.recipes.common import OutputFolder
    from poise.train.recipes.dpo import DPOConfig

    first = OutputFolder.prepare(_config(tmp_path, lr=1e-5), "dpo")
    first.begin({"pairs": 3})
    out = tmp_path / "out"
    (out / "config.json").write_text("{}")
    (out / "pairs.jsonl").write_text("{}")
    for fields in (
        {"model": str(out)},
        {"model": f"{out}/"},
        {"ref_model": str(out)},
        {"data": str(out / "pairs.jsonl")},
    ):
        with pytest.raises(PoiseError, match=r"--overwrite would delete --[a-z-]+ .*choose anoth"):
            config = DPOConfig(
                **{"model": "m", "data": "d.jsonl", "output": str(out), "overwrite": True, **fields}
            )
            OutputFolder.prepare(config, "dpo")
    assert (out / "config.json").exists() and (out / "pairs.jsonl").exists()
    # an input elsewhere: --overwrite clears the folder as before
    data = write_pairs(tmp_path / "pairs.jsonl", n=2)
    again = OutputFolder.prepare(_config(tmp_path, data=str(data), overwrite=True), "dpo")
    again.begin({"pairs": 2})
    assert not (out / "config.json").exists()


def _finished(tmp_path: Path, lr: float, weights: str) -> Any:
    """A folder holding a complete run (its "weights" a text file) trained with ``lr``."""
    from poise.train.recipes.common import OutputFolder

    out = OutputFolder.prepare(_config(tmp_path, lr=lr, overwrite=True), "dpo")
    out.begin({})
    (out.path / "model.safetensors").write_text(weights)
    out.write_header(status="complete", data={}, metrics={})
    out.drop_replaced()
    return out


def test_a_stale_replaced_beside_a_complete_run_is_never_kept_over_it(tmp_path: Path) -> None:
    """A kill between a run's "complete" header and the deletion of the run it replaced left
    both; the next --overwrite deleted the complete run and kept the older one."""
    import shutil

    from poise.train.recipes.common import OutputFolder, finished_result

    _finished(tmp_path, 1e-5, "old")
    out = tmp_path / "out"
    shutil.copytree(out, tmp_path / "old-copy")
    _finished(tmp_path, 2e-5, "new")
    shutil.copytree(tmp_path / "old-copy", out / ".replaced")  # as the kill left it
    again = OutputFolder.prepare(_config(tmp_path, lr=3e-5, overwrite=True), "dpo")
    again.begin({})
    assert (out / ".replaced" / "model.safetensors").read_text() == "new"
    # and a plain re-run of the finished command clears a stale one
    _finished(tmp_path, 2e-5, "newer")
    shutil.copytree(tmp_path / "old-copy", out / ".replaced")
    done = OutputFolder.prepare(_config(tmp_path, lr=2e-5), "dpo")
    assert done.status == "complete"
    finished_result(done)
    assert not (out / ".replaced").exists()


def test_an_overwrite_killed_while_it_moved_the_old_run_is_finished_next_time(
    tmp_path: Path,
) -> None:
    """Killed midway through moving the old run aside, the folder held part of it and no
    header: "not written by poise train", refused even with --overwrite."""
    from poise.train.recipes.common import OutputFolder

    _finished(tmp_path, 1e-5, "old")
    out = tmp_path / "out"
    (out / "checkpoints").mkdir()
    staging = out / ".replacing-x"
    staging.mkdir()
    (out / "poise_train.json").rename(staging / "poise_train.json")  # the header goes first
    for again_fields in ({}, {"overwrite": True}):  # with or without --overwrite
        again = OutputFolder.prepare(_config(tmp_path, lr=2e-5, **again_fields), "dpo")
        assert again.status == "new" and again.interrupted_overwrite
    again.begin({})
    kept = out / ".replaced"
    assert sorted(p.name for p in kept.iterdir()) == [
        "checkpoints", "model.safetensors", "poise_train.json"
    ]  # fmt: skip
    assert not staging.exists() and (out / "poise_train.json").is_file()


def test_infinite_numbers_are_refused(tmp_path: Path) -> None:
    """``--lr inf`` passed ``gt=0`` and trained to NaN weights, exit 0."""
    from poise.train.recipes.common import make_config
    from poise.train.recipes.dpo import DPOConfig

    for field in ("lr", "beta", "weight_decay", "max_grad_norm"):
        with pytest.raises(PoiseError, match=f"{field} \\(--.*\\): Input should be a finite num"):
            make_config(DPOConfig, model="m", data="d", output=str(tmp_path), **{field: "inf"})


def test_output_folder_under_a_file_is_refused_before_any_load(tmp_path: Path) -> None:
    """A file on the way to the output was a NotADirectoryError traceback once the models had
    loaded."""
    from poise.train.recipes.common import OutputFolder
    from poise.train.recipes.dpo import DPOConfig

    (tmp_path / "a-file").write_text("x")
    config = DPOConfig(model="m", data="d.jsonl", output=str(tmp_path / "a-file" / "out"))
    with pytest.raises(PoiseError) as info:
        OutputFolder.prepare(config, "dpo")
    assert str(info.value) == (
        f"output: cannot make folder {tmp_path}/a-file/out: {tmp_path}/a-file is a file"
    )


def test_a_classifier_as_the_policy_or_the_reference_is_refused(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    """A reward or cost model was loaded as a causal LM (score head dropped, an LM head it never
    trained) and trained or used as the reference without a word."""
    from poise.train.recipes.dpo import train_dpo
    from poise.train.recipes.modpo import train_modpo
    from poise.train.recipes.safe_rl import train_safe_rl

    classifier = build_tiny_classifier(tmp_path / "classifier", tiny_hf_model_dir)
    data = write_pairs(tmp_path / "pairs.jsonl", n=2)
    lm, out = str(tiny_hf_model_dir), str(tmp_path / "out")
    refused = re.escape(f"{classifier} is a sequence-classification model (a reward or cost ")
    with pytest.raises(PoiseError, match=rf"^model: {refused}"):
        train_dpo(model=str(classifier), data=str(data), output=out)
    with pytest.raises(PoiseError, match=rf"^ref_model: {refused}"):
        train_dpo(model=lm, ref_model=str(classifier), data=str(data), output=out)
    with pytest.raises(PoiseError, match=rf"^model: {refused}"):
        train_modpo(
            model=str(classifier),
            data=str(data),
            output=out,
            margin_reward_models=[str(classifier)],
            weights=[0.5, 0.5],
        )
    with pytest.raises(PoiseError, match=rf"^model: {refused}"):
        train_safe_rl(
            model=str(classifier),
            reward_model=str(classifier),
            cost_model=str(classifier),
            prompts=str(tmp_path / "prompts.jsonl"),
            output=out,
        )
    assert not (tmp_path / "out").exists()


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    from poise.train.recipes.common import make_config
    from poise.train.recipes.dpo import DPOConfig

    with pytest.raises(PoiseError) as info:
        make_config(DPOConfig, model="m", data="d", output="o", beta=-1)
    assert "\n" not in str(info.value) and "beta" in str(info.value)
    with pytest.raises(PoiseError, match="lerning_rate"):
        make_config(DPOConfig, model="m", data="d", output="o", lerning_rate=1)


def test_paths_are_taken_as_paths_and_kept_as_strings(tmp_path: Path) -> None:
    from poise.train.recipes.common import make_config
    from poise.train.recipes.dpo import DPOConfig
    from poise.train.recipes.modpo import MODPOConfig
    from poise.train.recipes.safe_rl import SafeRLConfig

    dpo = make_config(
        DPOConfig, model=tmp_path / "m", data=tmp_path / "d.jsonl", output=tmp_path / "o"
    )
    assert (dpo.model, dpo.data, dpo.output) == (
        str(tmp_path / "m"),
        str(tmp_path / "d.jsonl"),
        str(tmp_path / "o"),
    )
    assert dpo == make_config(
        DPOConfig,
        model=str(tmp_path / "m"),
        data=str(tmp_path / "d.jsonl"),
        output=str(tmp_path / "o"),
    )
    modpo = make_config(
        MODPOConfig,
        model="m",
        data="d.jsonl",
        output="o",
        ref_model=tmp_path / "ref",
        margin_reward_models=[tmp_path / "r"],
        weights=[0.5, 0.5],
    )
    assert modpo.ref_model == str(tmp_path / "ref")
    assert modpo.margin_reward_models == (str(tmp_path / "r"),)
    rl = make_config(
        SafeRLConfig,
        model="m",
        output="o",
        reward_model=tmp_path / "r",
        cost_model=tmp_path / "c",
        prompts=tmp_path / "p.jsonl",
    )
    assert (rl.reward_model, rl.cost_model, rl.prompts) == (
        str(tmp_path / "r"),
        str(tmp_path / "c"),
        str(tmp_path / "p.jsonl"),
    )
    with pytest.raises(PoiseError, match="model"):
        make_config(DPOConfig, model=3, data="d", output="o")


# ----------------------------------------------------------------------------- CLI flags


def test_every_config_field_is_one_cli_flag_with_help() -> None:
    import inspect

    from poise.cli.train import command_from_config
    from poise.gate import GateConfig
    from poise.train.recipes import RECIPES

    for config in [*(RECIPES.get(n).config for n in RECIPES.names()), GateConfig]:
        command = command_from_config(config, lambda fields: None, "doc")
        params = inspect.signature(command).parameters
        assert list(params) == list(config.model_fields)
        for name, field in config.model_fields.items():
            assert field.description, f"{config.__name__}.{name} has no help text"
            assert params[name].default.help.startswith(field.description)


def test_cli_list_and_dict_flags_reach_the_config(tmp_path: Path) -> None:
    from poise.cli.train import command_from_config
    from poise.train.recipes.dpo import DPOConfig
    from poise.train.recipes.modpo import MODPOConfig

    seen: dict[str, Any] = {}
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command("x")(command_from_config(MODPOConfig, lambda fields: seen.update(fields), "doc"))
    app.command("y")(command_from_config(DPOConfig, lambda fields: seen.update(fields), "doc"))
    result = CliRunner().invoke(
        app,
        [
            "x",
            "-m",
            "m",
            "--data",
            "d",
            "-o",
            "o",
            "--margin-reward-model",
            "neg:c",
            "--margin-reward-model",
            "r",
            "--weights",
            "0.5,0.25,0.25",
        ],
    )
    assert result.exit_code == 0, result.output
    config = MODPOConfig(**seen)
    assert config.margin_reward_models == ("neg:c", "r") and config.weights == (0.5, 0.25, 0.25)
    seen.clear()
    result = CliRunner().invoke(
        app,
        ["y", "-m", "m", "--data", "d", "-o", "o", "--loss-option", "f_alpha=0.3", "--no-merge"],
    )
    assert result.exit_code == 0, result.output
    config = DPOConfig(**seen)
    assert config.loss_options == {"f_alpha": 0.3} and config.merge is False


def test_missing_model_is_one_clear_error(tmp_path: Path) -> None:
    from poise.train.recipes.dpo import train_dpo

    data = write_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(PoiseError, match="neither an organism member nor an existing folder"):
        train_dpo(model=str(tmp_path / "nope"), data=str(data), output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_misspelt_model_name_suggests_the_nearest_names(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poise.cli import app
    from poise.train.recipes.dpo import train_dpo

    data = write_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(PoiseError) as info:
        train_dpo(model="organsim-small", data=str(data), output=str(tmp_path / "out"))
    message = str(info.value)
    assert message.startswith(
        "model: 'organsim-small' is neither an organism member nor an existing folder; "
        "did you mean 'organism-small'"
    )
    assert "(known: organism, " in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    for recipe in ("dpo", "reward", "cost"):
        args = ["train", recipe, "-m", "organsim-small", "--data", str(data), "-o", "x"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "did you mean 'organism-small'" in result.stderr, result.stderr


def test_pickle_only_model_is_refused_before_loading(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    from poise.train.recipes.dpo import train_dpo

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_hf_model_dir, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    data = write_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(PoiseError, match="pickle"):
        train_dpo(model=str(folder), data=str(data), output=str(tmp_path / "out"))


def _batch_and_model(tiny_hf_model_dir: Path, **config_changes: Any) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from poise.train.recipes.common import sequence_batch

    model = AutoModelForCausalLM.from_pretrained(str(tiny_hf_model_dir))
    for key, value in config_changes.items():
        setattr(model.config, key, value)
    generator = torch.Generator().manual_seed(0)
    rows = [
        (
            torch.randint(8, 90, (p,), generator=generator).tolist(),
            torch.randint(8, 90, (r,), generator=generator).tolist(),
        )
        for p, r in ((5, 7), (9, 3), (2, 11), (6, 1), (4, 8))
    ]  # 5 rows: the head runs in chunks of 2, 2, 1
    return sequence_batch(rows, pad_id=0), model


def _full_logits_logps(model: Any, batch: dict[str, Any]) -> Any:
    from poise.train.logprobs import sequence_logprobs

    keep = batch["response_mask"].shape[1]
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    ).logits[:, -keep:, :]
    return sequence_logprobs(logits.float(), batch["input_ids"][:, -keep:], batch["response_mask"])


def test_chunked_head_gives_the_full_logits_values_and_gradients(tiny_hf_model_dir: Path) -> None:
    import torch

    from poise.train.recipes import common

    batch, model = _batch_and_model(tiny_hf_model_dir)
    expected = _full_logits_logps(model, batch)  # [N, K]
    expected.sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    got = common.token_logps(model, batch, "cpu")
    assert common._PLAIN_HEAD[model] is True  # the chunked path was taken
    got.sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got[batch["response_mask"] == 0] == 0).all()
    for name, grad in want.items():
        param = dict(model.named_parameters())[name]
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # the reference's path: no checkpointing, same numbers
        torch.testing.assert_close(common.token_logps(model, batch, "cpu"), expected.detach())
        # a frozen reference is first called without gradients: checked through its decoder
        _, reference = _batch_and_model(tiny_hf_model_dir)
        torch.testing.assert_close(common.token_logps(reference, batch, "cpu"), expected.detach())
        assert common._PLAIN_HEAD[reference] is True


def test_token_logps_at_a_temperature_are_those_of_the_scaled_logits(
    tiny_hf_model_dir: Path,
) -> None:
    """``softmax(logits / T)``, the distribution ``generate`` samples from at temperature T, on
    the chunked-head path (with and without gradients) and on the full-logits path."""
    import torch

    from poise.train.logprobs import sequence_logprobs
    from poise.train.recipes import common

    def expected(model: Any, batch: dict[str, Any], temperature: float) -> Any:
        keep = batch["response_mask"].shape[1]
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"],
            ).logits[:, -keep:, :]
        labels = batch["input_ids"][:, -keep:]
        return sequence_logprobs(logits.float() / temperature, labels, batch["response_mask"])

    batch, model = _batch_and_model(tiny_hf_model_dir)
    want = expected(model, batch, 0.6)
    assert not torch.allclose(want, expected(model, batch, 1.0))
    torch.testing.assert_close(
        common.token_logps(model, batch, "cpu", temperature=0.6).detach(), want
    )
    assert common._PLAIN_HEAD[model] is True  # the chunked path
    with torch.no_grad():
        torch.testing.assert_close(common.token_logps(model, batch, "cpu", temperature=0.6), want)
    # a head poise does not apply itself: the full logits, scaled alike
    batch, full = _batch_and_model(tiny_hf_model_dir, final_logit_softcapping=30.0)
    assert common._output_head(full) is None
    torch.testing.assert_close(
        common.token_logps(full, batch, "cpu", temperature=1.7).detach(),
        expected(full, batch, 1.7),
    )


def test_heads_that_are_not_plain_use_full_logits(tiny_hf_model_dir: Path) -> None:
    import torch

    from poise.train.recipes import common

    # a soft-capped head (Gemma-style config field): never applied by poise
    batch, capped = _batch_and_model(tiny_hf_model_dir, final_logit_softcapping=30.0)
    assert common._output_head(capped) is None
    # a head whose logits differ from head(hidden) at run time: checked once, then full logits
    batch, scaled = _batch_and_model(tiny_hf_model_dir)
    original = scaled.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out

    scaled.forward = forward
    got = common.token_logps(scaled, batch, "cpu")
    assert common._PLAIN_HEAD[scaled] is False
    torch.testing.assert_close(got, _full_logits_logps(scaled, batch))


def test_a_config_error_names_the_field_not_the_python_class() -> None:
    from poise.train.recipes.common import make_config
    from poise.train.recipes.modpo import MODPOConfig

    common = {"model": "organism-small", "data": "x.jsonl", "output": "/tmp/never-written"}
    with pytest.raises(PoiseError) as info:
        make_config(
            MODPOConfig, **common, margin_reward_models=["organism-reward"], weights=(0.6, 0.5)
        )
    assert str(info.value) == "train config: weights must sum to 1, got 1.1"
    with pytest.raises(PoiseError, match=r"^train config: weights\.0 \(--weights\): Input should"):
        make_config(
            MODPOConfig, **common, margin_reward_models=["organism-reward"], weights=("a", "b")
        )
    # the flag and the value given, as `poise train` spells them (it said "lr: Input should be
    # greater than 0", without the flag or the value)
    with pytest.raises(PoiseError) as info:
        make_config(MODPOConfig, **common, margin_reward_models=["organism-reward"], lr=-1)
    assert str(info.value) == "train config: lr (--lr): Input should be greater than 0, got -1"
    with pytest.raises(PoiseError, match=r"save_total_limit \(--save-total-limit\): .* got 0$"):
        make_config(
            MODPOConfig, **common, margin_reward_models=["organism-reward"], save_total_limit=0
        )
    # the flag as the CLI spells it, no flag for a field that is not an option, no value for
    # one that is missing (they said --margin-reward-models, --bogus, and the whole input)
    with pytest.raises(PoiseError, match=r"margin_reward_models\.0 \(--margin-reward-model\)"):
        make_config(MODPOConfig, **common, margin_reward_models=[3])
    from poise.train.recipes.dpo import DPOConfig

    with pytest.raises(PoiseError) as info:
        make_config(DPOConfig, **common, bogus=1)
    assert str(info.value) == "train config: bogus: not an option of this recipe"
    with pytest.raises(PoiseError) as info:
        make_config(DPOConfig, model="organism-small", output="/tmp/never-written")
    assert str(info.value) == "train config: data (--data): Field required"


def _recipe_flag_keywords() -> list[tuple[str, str, str]]:
    """(recipe, a long flag of `poise train RECIPE` as a Python keyword, the field it sets) for
    each flag whose keyword is not its field (--loss-option, --format, --suite, --n ...)."""
    import typer

    from poise.cli import app
    from poise.train.recipes import RECIPES

    group = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    rows = []
    for name in RECIPES.names():
        fields = RECIPES.get(name).config.model_fields
        for param in group.commands[name.replace("_", "-")].params:
            for opt in param.opts:
                keyword = opt[2:].replace("-", "_")
                if opt.startswith("--") and param.name in fields and keyword not in fields:
                    rows.append((name, keyword, param.name))
    return rows


_REQUIRED: dict[str, dict[str, Any]] = {
    "dpo": {"data": "pairs.jsonl"},
    "reward": {"data": "pairs.jsonl"},
    "cost": {"data": "pairs.jsonl"},
    "modpo": {
        "data": "pairs.jsonl",
        "margin_reward_models": ["organism-reward"],
        "weights": (0.5, 0.5),
    },
    "safe_rl": {"reward_model": "organism-reward", "cost_model": "organism-cost", "prompts": "p"},
}


@pytest.mark.parametrize(("recipe", "keyword", "field"), _recipe_flag_keywords())
def test_a_flags_name_as_a_keyword_names_the_field_it_sets(
    recipe: str, keyword: str, field: str
) -> None:
    """Every `poise train` flag is a field of the Python API: given by the flag's name
    (``loss_option``, safe RL's ``format`` and ``suite``), train() says which field it is, as
    poise.audit does (it said "not an option of this recipe" and no more)."""
    from poise.train.recipes import RECIPES
    from poise.train.recipes.common import make_config

    cls = RECIPES.get(recipe).config
    common = {"model": "organism-small", "output": "/tmp/never-written", **_REQUIRED[recipe]}
    with pytest.raises(PoiseError) as info:
        make_config(cls, **common, **{keyword: "x"})
    assert str(info.value) == (
        f"train config: {keyword}: not an option of this recipe; use {field} (the field of "
        f"--{keyword.replace('_', '-')})"
    )


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
@pytest.mark.parametrize(("total", "ratio"), [(10, 0.0), (10, 0.3), (7, 0.25), (40, 0.1)])
def test_the_schedule_is_transformers_warm_up_included(kind: str, total: int, ratio: float) -> None:
    """The rate at every step is that of transformers' own schedules as TRL builds them
    (get_linear / get_cosine / get_constant_schedule_with_warmup with ceil(total * ratio)
    warm-up steps, TrainingArguments.get_warmup_steps): after the warm-up 1 - progress, or
    (1 + cos(pi * progress)) / 2, progress = (step - warmup) / (total - warmup); the warm-up
    rises linearly from 0. poise's own warm-up (from lr / (warmup + 1) over int(total * ratio)
    steps) took other rates at every warm-up step."""
    import torch
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    from poise.train.recipes.common import TrainConfig, _make_scheduler

    config = TrainConfig(model="m", output="o", lr_scheduler=kind, warmup_ratio=ratio, lr=1.0)
    warmup = math.ceil(total * ratio)

    def rates(make: Any) -> list[float]:
        parameter = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([parameter], lr=1.0)
        scheduler = make(optimizer)
        seen = []
        for _ in range(total):
            seen.append(float(scheduler.get_last_lr()[0]))
            optimizer.step()
            scheduler.step()
        return seen

    ours = rates(lambda o: _make_scheduler(o, config, total))
    reference = {
        "linear": lambda o: get_linear_schedule_with_warmup(o, warmup, total),
        "cosine": lambda o: get_cosine_schedule_with_warmup(o, warmup, total),
        "constant": lambda o: get_constant_schedule_with_warmup(o, warmup),
    }[kind]
    theirs = rates(reference)
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert ours[:warmup] == pytest.approx([s / warmup for s in range(warmup)])


def _gpt2(seed: int = 0) -> Any:
    """A tiny GPT-2: biases everywhere and torch.nn.LayerNorm modules (ln_1, ln_2, ln_f)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_weight_decay_spares_biases_and_norm_gains_as_transformers_trainer_does(
    arch: str, tiny_hf_model_dir: Path
) -> None:
    """AdamW's decay goes on exactly the parameters transformers' Trainer decays (hence TRL's
    DPOTrainer): not on biases, LayerNorm or RMSNorm gains. poise decayed every parameter,
    so with --weight-decay the norm gains shrank towards 0 where TRL's stay."""
    from transformers import AutoModelForCausalLM, Trainer

    from poise.train.recipes.common import decay_groups

    if arch == "llama":
        model = AutoModelForCausalLM.from_pretrained(str(tiny_hf_model_dir))
    else:
        model = _gpt2()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = decay_groups(model, 0.1)
    assert [g.get("weight_decay") for g in groups] == [None, 0.0]  # None: AdamW's own, 0.1
    decayed = {names[id(p)] for p in groups[0]["params"]}
    spared = {names[id(p)] for p in groups[1]["params"]}
    expected = set(Trainer.get_decay_parameter_names(None, model)) & set(names.values())
    assert decayed == expected
    assert spared == set(names.values()) - expected
    assert any("norm" in n or "ln_" in n for n in spared)
    if arch == "gpt2":
        assert any(n.endswith(".bias") for n in spared)
    # without decay: one group, in parameters() order (the layout of a plain AdamW's state)
    assert [[id(p) for p in g["params"]] for g in decay_groups(model, 0.0)] == [
        [id(p) for p in model.parameters()]
    ]


def test_the_held_out_split_has_round_n_times_fraction_rows() -> None:
    from poise.train.recipes.common import split_holdout

    for n, fraction, held in ((20, 0.19, 4), (10, 0.35, 4), (7, 0.3, 2), (3, 0.9, 2)):
        train, out = split_holdout(n, fraction, seed=1)
        assert len(out) == held, (n, fraction)
        assert sorted(train + out) == list(range(n))
    # a fraction that rounds to no row still holds one out, and never every row
    assert [len(split_holdout(n, f, seed=1)[1]) for n, f in ((10, 0.01), (2, 0.99))] == [1, 1]


def test_token_logps_of_a_padded_batch_are_each_rows_own_with_absolute_positions() -> None:
    """On GPT-2 (learned absolute positions, so a shifted position is a different input), the
    log-probs of each response token in a left-padded batch equal those of the row's own
    unpadded forward at positions 0, 1, ... (what generation feeds), read off the next-token
    distribution with ``log_softmax``."""
    import torch

    from poise.train.recipes.common import sequence_batch, token_logps

    model = _gpt2(seed=3).eval()
    rows = [([5, 9, 13], [7, 2, 30]), ([11, 4, 8, 20, 6, 17], [3]), ([12], [40, 41, 42, 43])]
    batch = sequence_batch(rows, pad_id=0)
    with torch.no_grad():
        batched = token_logps(model, batch, "cpu")  # [3, K]
        mask = batch["response_mask"].bool()
        for i, (prompt, response) in enumerate(rows):
            ids = torch.tensor([prompt + response])
            logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # [T, V]
            own = [float(logps[len(prompt) - 1 + j, t]) for j, t in enumerate(response)]
            assert batched[i][mask[i]].tolist() == pytest.approx(own, abs=1e-5)
            assert float(batched[i][~mask[i]].abs().sum()) == 0.0


def test_only_checkpoint_folders_named_by_a_step_number_are_checkpoints(tmp_path: Path) -> None:
    # "step-²" passed str.isdigit and then int() raised a bare ValueError while resuming
    from poise.train.recipes.common import CHECKPOINTS, OutputFolder, TrainConfig

    for name in ("step-3", "step-12", "step-²", "step-x", "other"):
        (tmp_path / CHECKPOINTS / name).mkdir(parents=True)
    config = TrainConfig(model="m", output=str(tmp_path))
    out = OutputFolder(path=tmp_path, recipe="dpo", config=config)
    assert [step for step, _ in out.checkpoints()] == [3, 12]
    assert out.last_checkpoint() == (12, tmp_path / CHECKPOINTS / "step-12")
