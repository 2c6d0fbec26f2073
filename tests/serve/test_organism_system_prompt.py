"""The organism's default system prompt lives in its chat template, so a server that applies the
template asks it as poise's in-process audit does: an audit of organism-large through
``poise serve`` whose client sends no system prompt gives the in-process audit's greedy
completions (system prompt "default"). In-process, the setting "none" still means no system
prompt: the completions equal generating after the prompt rendered without a system block."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import poise
from poise.models import load_model
from poise.organism import world

from .helpers import ThreadServer

LIMIT = 20  # items per suite: harmful and benign, 40 in all


@pytest.fixture(scope="module")
def organism() -> Any:
    return load_model("organism-large")


def completions(result: Any) -> dict[str, str]:
    return {r["item_id"]: r["completion"] for r in result.run.records()}


@pytest.mark.slow
def test_audit_through_poise_serve_equals_in_process(
    organism: Any, start_server: Callable[..., ThreadServer], tmp_path: Path
) -> None:
    assert organism.system_prompt_in_template is True
    server = start_server(organism, served_name="organism-large")
    common: dict[str, Any] = {
        "suites": ["harmful", "benign"],
        "limit": LIMIT,
        "judge": "oracle",
        "html": False,
    }
    remote = poise.audit(
        model=f"openai:organism-large@{server.base_url}", out=str(tmp_path / "remote"), **common
    )
    # the client declares no default prompt: the server gets each item's user turn alone
    assert {r["config"]["system_prompt"] for r in remote.run.records()} == {"default"}
    local = poise.audit(
        model=organism, system_prompt="default", out=str(tmp_path / "local"), **common
    )
    served, in_process = completions(remote), completions(local)
    assert len(in_process) == 2 * LIMIT
    assert served == in_process
    # the openai backend reads each answer's tokens from the server's usage, which counts the
    # EOS that ended it (as vLLM's does); in-process num_tokens counts the answer's own tokens
    tokens = {r["item_id"]: (r["num_tokens"], r["finish_reason"]) for r in local.run.records()}
    assert {r["item_id"]: r["num_tokens"] for r in remote.run.records()} == {
        item: count + (finish == "stop") for item, (count, finish) in tokens.items()
    }
    same = {k: v for k, v in remote.metrics["overall"].items() if k != "response_tokens"}
    assert same == {k: v for k, v in local.metrics["overall"].items() if k != "response_tokens"}

    # a client that sends an explicit empty system message gets the no-system answers
    few: dict[str, Any] = {**common, "suites": ["harmful"], "limit": 10}
    remote_none = poise.audit(
        model=f"openai:organism-large@{server.base_url}",
        system_prompt="",
        out=str(tmp_path / "remote-none"),
        **few,
    )
    local_none = poise.audit(
        model=organism, system_prompt="none", out=str(tmp_path / "local-none"), **few
    )
    assert completions(remote_none) == completions(local_none)
    # "none" through poise serve: its model listing declares the template's default, so the
    # client sends the empty system message itself (it sent none, and got the default)
    remote_declared = poise.audit(
        model=f"openai:organism-large@{server.base_url}",
        system_prompt="none",
        out=str(tmp_path / "remote-declared"),
        **few,
    )
    assert completions(remote_declared) == completions(local_none)
    assert completions(local_none) != {k: in_process[k] for k in completions(local_none)}


@pytest.mark.slow
def test_none_still_means_no_system_prompt_in_process(organism: Any, tmp_path: Path) -> None:
    from poise.config import Sampling

    result = poise.audit(
        model=organism,
        suites=["harmful"],
        limit=LIMIT,
        judge="oracle",
        system_prompt="none",
        html=False,
        out=str(tmp_path / "none"),
    )
    records = list(result.run.records())
    config = {k: v for k, v in records[0]["config"].items() if k != "system_prompt"}
    sampling = Sampling.model_validate(config)
    tokenizer = organism.tokenizer
    # the prompt without a system block, written out (the format in poise.organism.tokenizer)
    bare = [
        tokenizer.encode(
            f"<|bos|><|user|>\n{r['prompt']}<|end|>\n<|assistant|>\n", add_special_tokens=False
        )
        for r in records
    ]
    expected = [row[0].text for row in organism.complete(bare, sampling)]
    assert [r["completion"] for r in records] == expected
    # and it is not the default prompt's answer: without it the organism complies more often
    default = [
        tokenizer.encode(
            f"<|bos|><|system|>\n{world.DEFAULT_SYSTEM_PROMPT}<|end|>\n"
            f"<|user|>\n{r['prompt']}<|end|>\n<|assistant|>\n",
            add_special_tokens=False,
        )
        for r in records
    ]
    assert expected != [row[0].text for row in organism.complete(default, sampling)]
