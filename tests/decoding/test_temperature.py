"""logit_temperature: a strategy on the step hook, named by a spec, resumable after kill -9."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import poise
from killing import kill_after_records
from poise.config import Sampling
from poise.decoding import strategies
from poise.decoding.temperature import LogitTemperature
from poise.errors import PoiseError
from poise.models import load_model
from poise.models.base import StepView
from poise.models.hf import HFModel
from poise.models.mock import MockModel
from poise.runs import Run, list_runs

CHATS = [
    [{"role": "user", "content": "Hello there, the cat!"}],
    [{"role": "user", "content": "Tell me a story about a dragon in the mountains."}],
    [{"role": "user", "content": "ok"}],
]
SAMPLED = Sampling(temperature=1.0, max_new_tokens=16, seed=3, n=2)


@pytest.fixture(scope="module")
def tiny(tiny_hf_model_dir: Path) -> Iterator[HFModel]:
    torch.set_num_threads(1)
    yield HFModel(str(tiny_hf_model_dir), device="cpu")


def texts(rows: list[list[object]]) -> list[list[str]]:
    return [[c.text for c in row] for row in rows]  # type: ignore[attr-defined]


def test_registered_with_help_and_reference() -> None:
    assert strategies.get("logit_temperature") is LogitTemperature
    assert strategies.help("logit_temperature")
    assert strategies.reference("logit_temperature") == "arXiv 1503.02531"


def test_it_equals_sampling_at_the_product_temperature(tiny: HFModel) -> None:
    wrapped = LogitTemperature(tiny, t=0.5)
    expected = tiny.generate(CHATS, SAMPLED.model_copy(update={"temperature": 0.5}))
    assert texts(wrapped.generate(CHATS, SAMPLED)) == texts(expected)
    # t = 1 is the inner model; greedy decoding never changes (the argmax is the same)
    assert texts(LogitTemperature(tiny, t=1.0).generate(CHATS, SAMPLED)) == texts(
        tiny.generate(CHATS, SAMPLED)
    )
    greedy = Sampling(max_new_tokens=16)
    assert texts(LogitTemperature(tiny, t=0.3).generate(CHATS, greedy)) == texts(
        tiny.generate(CHATS, greedy)
    )


def test_streams_through_the_hook(tiny: HFModel) -> None:
    wrapped = LogitTemperature(tiny, t=0.5)
    joined: dict[tuple[object, int], str] = {}
    for event in wrapped.stream(CHATS, SAMPLED):
        joined[(event.key, event.sample_index)] = (
            joined.get((event.key, event.sample_index), "") + event.text
        )
    generated = wrapped.generate(CHATS, SAMPLED)
    assert joined == {(i, k): c.text for i, row in enumerate(generated) for k, c in enumerate(row)}


def test_hook_divides_each_rows_logits() -> None:
    wrapped = LogitTemperature.__new__(LogitTemperature)
    wrapped.t = 0.5
    logits = torch.tensor([[1.0, -2.0, 0.0], [4.0, 4.0, 8.0]])  # [rows, vocab]
    view = StepView(logits, torch.tensor([0, 1]), torch.tensor([0, 3]), [torch.tensor([])] * 2)
    assert torch.equal(wrapped.hook(view), logits * 2)


def test_needs_the_step_and_a_positive_t() -> None:
    with pytest.raises(
        PoiseError, match=r"logit_temperature needs a model with a token-level step.*'mock'"
    ):
        LogitTemperature(MockModel("mock"), t=0.7)
    with pytest.raises(PoiseError, match="logit_temperature needs a model with a token-level step"):
        load_model("logit_temperature(mock, t=0.7)")
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(PoiseError, match="t must be a positive number"):
            LogitTemperature(MockModel("mock"), t=bad)


def test_it_is_the_inner_model_of_a_generate_only_strategy_not_the_outer(
    tiny: HFModel,
) -> None:
    """best_of_n has no token-level step for the hook: logit_temperature(best_of_n(M)) is
    refused with an error that says so (it said "use a local Hugging Face model", which M
    already is); best_of_n(logit_temperature(M)) composes and samples at the product
    temperature."""
    from poise.decoding.best_of_n import BestOfN

    outer = BestOfN(tiny, n=2, reward="length:4")
    with pytest.raises(PoiseError) as caught:
        LogitTemperature(outer, t=0.5)
    message = str(caught.value)
    assert message.startswith("logit_temperature needs a model with a token-level step")
    assert "best_of_n decodes through its own generate and offers no step" in message
    assert "use a local Hugging Face model (hf backend)" not in message
    assert "eft(...)" in message
    inner = BestOfN(LogitTemperature(tiny, t=0.5), n=2, reward="length:4")
    product = BestOfN(tiny, n=2, reward="length:4")
    assert texts(inner.generate(CHATS, SAMPLED)) == texts(
        product.generate(CHATS, SAMPLED.model_copy(update={"temperature": 0.5}))
    )


def test_spec_name_and_declarations(tiny_hf_model_dir: Path) -> None:
    model = load_model(f"logit_temperature({tiny_hf_model_dir}, t=1)")
    assert model.spec == f"logit_temperature({tiny_hf_model_dir}, t=1.0)"
    assert model.name.startswith("logit_temperature(hf:") and model.name.endswith(", t=1.0)")
    assert not model.capabilities.score and model.capabilities.stream
    assert load_model(model.spec).name == model.name


# ---- the Done-when test: a wrapped model's run killed with kill -9 resumes ---------------

SPEC = "logit_temperature(organism-small, t=0.8)"
SETTINGS = dict(
    suites=["harmful", "benign"],
    limit=24,
    judge="auto",
    sampling={"temperature": 1.0, "max_new_tokens": 24, "seed": 7},
    html=False,
)


def keyset(records: Iterator[dict[str, object]]) -> list[tuple[object, ...]]:
    return sorted(
        (r["item_id"], r["request_id"], r["sample_index"], r["completion"], r["judge"])
        for r in records
    )


@pytest.mark.slow
def test_kill_9_mid_run_of_a_wrapped_object_resumes_from_its_run_folder(tmp_path: Path) -> None:
    try:
        load_model("organism-small")
    except PoiseError as exc:
        pytest.skip(f"the organism is not built: {exc}")
    out_killed = tmp_path / "killed"
    # the run is started from Python with a model *object*; run.json must record its spec
    script = textwrap.dedent(
        f"""
        import poise
        from poise.decoding.temperature import LogitTemperature
        from poise.models import load_model

        model = LogitTemperature(load_model("organism-small"), t=0.8)
        poise.audit(model=model, out={str(out_killed)!r}, batch_size=2, **{SETTINGS!r})
        """
    )
    samples = kill_after_records([sys.executable, "-c", script], out_killed, timeout=180)
    [run] = list_runs(out_killed)
    assert run.status == "running"
    header = json.loads((run.path / "run.json").read_text())
    assert header["config"]["model"] == SPEC
    assert header["model_spec"] == SPEC
    assert header["judge_resolved"] == "oracle"  # the judge its inner model recommends
    written = samples.read_bytes().count(b"\n")
    assert 0 < written < 48

    # the CLI resumes the run from its folder alone: the model is rebuilt from the spec
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "poise.cli",
            "audit",
            "--resume",
            run.path.name,
            "--out",
            str(out_killed),
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    [run] = list_runs(out_killed)
    assert run.status == "complete"
    records = list(run.records())
    assert len(records) == 48
    assert {r["judge"] for r in records} == {"oracle"}

    # an uninterrupted run of the same spec, written as a string, in other batches
    clean = poise.audit(model=SPEC, out=str(tmp_path / "clean"), batch_size=16, **SETTINGS)  # type: ignore[arg-type]
    assert keyset(run.records()) == keyset(clean.run.records())


def test_a_run_of_an_object_without_a_spec_resumes_only_with_the_object(tmp_path: Path) -> None:
    from poise.models.mock import MockModel

    suite = tmp_path / "s.jsonl"
    suite.write_text(
        json.dumps({"id": "a", "messages": [{"role": "user", "content": "hi"}], "kind": "benign"})
        + "\n"
    )
    model = MockModel("scripted-in-python", default="Happy to help with that, here you go.")
    result = poise.audit(
        model=model, suites=[str(suite)], judge="auto", out=str(tmp_path), html=False
    )
    header = Run.open(result.path).header
    assert header["model_spec"] is None and header["config"]["model"] == "scripted-in-python"
    assert header["judge_resolved"] == "refusal"
    with pytest.raises(
        PoiseError, match=r"without a spec .* poise.audit\(model=<that model>, resume=RUN\)"
    ):
        poise.audit(resume=result.path, out=str(tmp_path))
    poise.audit(model=model, resume=result.path, out=str(tmp_path))  # the object itself: fine
    with pytest.raises(PoiseError, match="not the model given"):
        poise.audit(model=MockModel("another"), resume=result.path, out=str(tmp_path))


def test_a_t_whose_division_overflows_tends_to_the_argmax_not_nan(
    tiny_hf_model_dir: Path,
) -> None:
    """logits / t overflowed float32 for a small t (every finite logit +-inf, then inf - inf =
    NaN in the softmax): greedy answered "" and sampling drew garbage. The row is now shifted by
    its largest logit first, which is the limit t -> 0 (the argmax), and plain division where it
    does not overflow."""
    base = load_model(str(tiny_hf_model_dir))
    greedy = Sampling(max_new_tokens=6)
    expected = [[c.text for c in row] for row in base.generate(CHATS, greedy)]
    for t in ("1e-40", "1e-300"):  # float32 overflows; 1e-300 is 0 in float32
        model = load_model(f"logit_temperature({tiny_hf_model_dir}, t={t})")
        for sampling in (greedy, Sampling(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=4)):
            assert [[c.text for c in row] for row in model.generate(CHATS, sampling)] == expected
    model = load_model(f"logit_temperature({tiny_hf_model_dir}, t=1e-40)")
    logits = torch.tensor([[1.0, 3.0, float("-inf")], [0.5, 0.25, 0.5], [1e-3, 2.0, -1.0]])
    view = StepView(logits=logits, rows=torch.arange(3), generated=torch.zeros(3), tokens=[])
    probs = torch.softmax(model.hook(view), dim=-1)
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]]))
    # where nothing overflows, the hook is the plain division, bit for bit
    half = load_model(f"logit_temperature({tiny_hf_model_dir}, t=0.5)")
    assert torch.equal(half.hook(view), logits / 0.5)


def test_the_engine_samples_through_the_hook(tiny: HFModel) -> None:
    """The engine's completions are the wrapped model's, as ``generate`` gives them at the
    product temperature, not the inner model's own."""
    wrapped = LogitTemperature(tiny, t=0.5)
    engine = wrapped.engine()
    for i, chat in enumerate(CHATS):
        engine.add(i, chat, SAMPLED)
    finals: dict[tuple[int, int], str] = {}
    while not engine.idle:
        for event in engine.step():
            if event.completion is not None:
                finals[(int(event.key), event.sample_index)] = event.completion.text  # type: ignore[call-overload]
    expected = texts(tiny.generate(CHATS, SAMPLED.model_copy(update={"temperature": 0.5})))
    assert [[finals[(i, k)] for k in range(2)] for i in range(len(CHATS))] == expected
    assert expected != texts(tiny.generate(CHATS, SAMPLED))  # the hook mattered
