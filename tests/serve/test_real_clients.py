"""``poise serve`` driven by the clients users bring: lm-evaluation-harness (``local-completions``
on a log-likelihood task, ``local-chat-completions`` on a generation task), inspect_ai's
OpenAI-compatible provider, and a schemathesis fuzz of the API from its own OpenAPI description.

Every task is defined in the test's tmp folder (a YAML and a JSONL for lm-eval, samples in code
for inspect_ai); nothing is downloaded. The served model is a tiny random Llama whose answers
are checked against the same model in process.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from poise.config import Sampling
from poise.models.hf import HFModel

from .helpers import ThreadServer

pytestmark = pytest.mark.slow

QUESTIONS = ["the cat", "where is the dog", "say hi"]
CHOICES = [["the cat sat", "a dog ran"], ["here", "there it is"], ["hi", "hello there"]]


@pytest.fixture(scope="module")
def model_dir(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template whose generation prompt ends in its special token
    ``<|assistant|>`` and no newline: lm-eval moves a context's trailing whitespace into the
    continuation, so only then is its continuation exactly the answer poise's ``score`` scores."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("clients") / "tiny"
    shutil.copytree(tiny_hf_model_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = str(tokenizer.chat_template)
    assert "<|assistant|>\n'" in template
    tokenizer.chat_template = template.replace("<|assistant|>\n'", "<|assistant|>'")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(model_dir: Path) -> HFModel:
    return HFModel(str(model_dir), device="cpu", batch_size=8)


@pytest.fixture
def server(model: HFModel, start_server: Callable[..., ThreadServer]) -> ThreadServer:
    return start_server(model, served_name="tiny", max_tokens_limit=64, max_n=2)


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def lm_eval_samples(task_yaml: str, folder: Path, model: str, **model_args: Any) -> Any:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    (folder / "task.yaml").write_text(task_yaml, encoding="utf-8")
    return simple_evaluate(
        model=model,
        model_args={"model": "tiny", "max_retries": 1, **model_args},
        tasks=[task_yaml.split("\n", 1)[0].removeprefix("task: ").strip()],
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        log_samples=True,
        apply_chat_template=model == "local-chat-completions",
    )


def test_lm_eval_loglikelihood_equals_poise_score(
    server: ThreadServer, model: HFModel, model_dir: Path, tmp_path: Path
) -> None:
    # one continuation per question is the model's own greedy answer, so is_greedy is seen true
    greedy = [
        c[0].text
        for c in model.generate(
            [chat(q) for q in QUESTIONS], Sampling(temperature=0, max_new_tokens=3)
        )
    ]
    choices = [[*c, g] for c, g in zip(CHOICES, greedy, strict=True) if g]
    docs = [
        {"context": model.prompt_text(chat(q)), "choices": c, "label": 0}
        for q, c in zip(QUESTIONS, choices, strict=True)
    ]
    data = write_jsonl(tmp_path / "docs.jsonl", docs)
    results = lm_eval_samples(
        f"""task: poise_loglikelihood
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
""",
        tmp_path,
        "local-completions",
        base_url=f"{server.url}/v1/completions",
        tokenizer_backend="huggingface",
        tokenizer=str(model_dir),
    )
    samples = sorted(results["samples"]["poise_loglikelihood"], key=lambda s: s["doc_id"])
    assert len(samples) == len(docs)
    greedy_seen = False
    for sample, question, options in zip(samples, QUESTIONS, choices, strict=True):
        found = [tuple(r) for r in sample["filtered_resps"]]
        scored = model.score([chat(question)] * len(options), options)
        prompt = model.prompt_ids(chat(question))
        tops = model.sequence_logprobs(
            [prompt + list(s.token_ids) for s in scored], top_k=1, start=[len(prompt)] * len(scored)
        )
        for (loglikelihood, is_greedy), expected, top in zip(found, scored, tops, strict=True):
            assert loglikelihood == pytest.approx(expected.total, abs=1e-4)
            chosen_is_top = all(
                alternatives[0][0] == token
                for token, alternatives in zip(top.token_ids, top.top, strict=True)
            )
            assert is_greedy == chosen_is_top
            greedy_seen |= is_greedy
    assert greedy_seen


def test_lm_eval_chat_completions_generate_until(
    server: ThreadServer, model: HFModel, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "docs.jsonl", [{"question": q, "answer": q} for q in QUESTIONS])
    results = lm_eval_samples(
        f"""task: poise_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: question
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
""",
        tmp_path,
        "local-chat-completions",
        base_url=f"{server.url}/v1/chat/completions",
    )
    samples = sorted(results["samples"]["poise_generate"], key=lambda s: s["doc_id"])
    expected = model.generate(
        [chat(q) for q in QUESTIONS], Sampling(temperature=0, max_new_tokens=8, stop=("\n",))
    )
    assert [s["resps"][0][0] for s in samples] == [c[0].text for c in expected]


def test_inspect_ai_openai_compatible_provider(
    server: ThreadServer, model: HFModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import match
    from inspect_ai.solver import generate

    # the service is not called "poise": its key variable would be POISE_API_KEY, the one
    # poise serve reads for its own key (docs/serving.md); the key is given, not the variable
    monkeypatch.delenv("LOCAL_API_KEY", raising=False)
    expected = model.generate(
        [chat(q) for q in QUESTIONS], Sampling(temperature=0, max_new_tokens=6)
    )
    task = Task(
        dataset=[
            Sample(input=q, target=c[0].text, id=i)
            for i, (q, c) in enumerate(zip(QUESTIONS, expected, strict=True))
        ],
        solver=generate(),
        scorer=match(location="exact"),
    )
    (log,) = eval(
        task,
        model="openai-api/local/tiny",
        model_base_url=f"{server.url}/v1",
        model_args={"api_key": "none"},
        log_dir=str(tmp_path / "logs"),
        display="none",
        temperature=0,
        max_tokens=6,
        logprobs=True,
        top_logprobs=2,
    )
    assert log.status == "success", log.error
    assert log.samples is not None
    outputs = {sample.id: sample.output for sample in log.samples}
    for i, completions in enumerate(expected):
        output = outputs[i]
        assert output.completion == completions[0].text
        logprobs = output.choices[0].logprobs
        assert logprobs is not None
        assert [lp.logprob for lp in logprobs.content][: completions[0].num_tokens] == (
            pytest.approx(list(completions[0].token_logprobs or ()), abs=1e-4)
        )
        assert all(len(lp.top_logprobs or []) == 2 for lp in logprobs.content)
    assert log.results is not None
    assert log.results.scores[0].metrics["accuracy"].value == 1.0


def test_fuzzing_the_api_from_its_openapi_schema_finds_no_server_error(
    server: ThreadServer,
) -> None:
    import httpx
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_dict(httpx.get(f"{server.url}/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    posts = {op.path for op in operations if op.method.upper() == "POST"}
    assert posts == {"/v1/chat/completions", "/v1/completions"}
    seen: dict[str, set[int]] = {}
    for operation in operations:

        @settings(
            max_examples=30 if operation.method.upper() == "POST" else 5,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"  # past the 404 of an unknown model, into the rest
            response = case.call(base_url=server.url, timeout=30)
            seen.setdefault(case.operation.path, set()).add(response.status_code)
            assert response.status_code < 500, (case.body, response.text)

        check()
    assert 400 in seen["/v1/completions"] and 400 in seen["/v1/chat/completions"], seen
    # and the server still answers
    assert server.health()["status"] == "ok"
    for path, body in (
        ("completions", {"prompt": "hi", "max_tokens": 2}),
        ("chat/completions", {"messages": chat("hi"), "max_tokens": 2}),
    ):
        response = httpx.post(f"{server.url}/v1/{path}", json={"model": "tiny", **body}, timeout=30)
        assert response.status_code == 200, response.text
