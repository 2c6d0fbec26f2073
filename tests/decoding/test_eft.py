"""eft: the per-token distribution is the closed form of arXiv 2310.12962 from the models' own
logits; several tuned models, negative weights, one KV cache per model, a clear vocab error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from poise.config import Sampling
from poise.decoding import strategies
from poise.decoding.eft import EmulatedFineTuning
from poise.errors import PoiseError
from poise.models import load_model
from poise.models.hf import HFModel
from poise.models.mock import MockModel

CHATS = [
    [{"role": "user", "content": "Hello there, the cat!"}],
    [{"role": "user", "content": "Tell me a story about a dragon in the mountains."}],
    [{"role": "user", "content": "ok"}],
]


@pytest.fixture(scope="module")
def trio(
    tiny_hf_model_dir: Path,
    build_tiny_model: Callable[..., Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[HFModel, HFModel, HFModel, HFModel]]:
    """A base, two tuned models and a reference: tiny models of one vocabulary, other seeds."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eft")
    base = HFModel(str(tiny_hf_model_dir), device="cpu")
    others = [
        HFModel(str(build_tiny_model(root / f"m{seed}", seed=seed)), device="cpu")
        for seed in (1, 2, 3)
    ]
    yield base, others[0], others[1], others[2]


def closed_form(
    base: torch.Tensor, tuned: list[torch.Tensor], ref: torch.Tensor, weights: list[float]
) -> torch.Tensor:
    """p(y) = p_base(y) prod_i (p_tuned_i(y) / p_ref(y))^w_i / Z, in probabilities."""
    p = base.double().softmax(-1)
    p_ref = ref.double().softmax(-1)
    for logits, w in zip(tuned, weights, strict=True):
        p = p * (logits.double().softmax(-1) / p_ref) ** w
    return p / p.sum(-1, keepdim=True)


def full_logits(model: HFModel, ids: list[list[int]]) -> torch.Tensor:
    """[rows, vocab] next-token logits of each row alone, no cache (a row at a time)."""
    rows = []
    for row in ids:
        with torch.no_grad():
            out = model.model(input_ids=torch.tensor([row])).logits[0, -1]
        rows.append(out.float())
    return torch.stack(rows)


@pytest.mark.parametrize(
    "weights",
    [[1.0], [0.7, -1.5], [0.5, -0.3, 0.4, 0.2, -0.6]],
    ids=["one", "two-negative", "five"],  # five: past any fixed number of slots
)
def test_each_steps_distribution_is_the_closed_form(
    trio: tuple[HFModel, HFModel, HFModel, HFModel], weights: list[float]
) -> None:
    base, tuned_a, tuned_b, ref = trio
    tuned = [(tuned_a, tuned_b)[i % 2] for i in range(len(weights))]
    options: dict[str, object] = {"tuned": tuned[0], "beta": weights[0]}
    for n, (model, weight) in enumerate(zip(tuned[1:], weights[1:], strict=True), start=2):
        options |= {f"tuned_{n}": model, f"beta_{n}": weight}
    model = EmulatedFineTuning(base, reference=ref, **options)  # type: ignore[arg-type]
    assert model.weights == weights
    prompts = base._encode_prompts(CHATS)
    state = model.prefill(CHATS)
    generator = torch.Generator().manual_seed(0)
    sequences = [list(p) for p in prompts]
    for _ in range(6):
        expected = closed_form(
            full_logits(base, sequences),
            [full_logits(t, sequences) for t in tuned],
            full_logits(ref, sequences),
            weights,
        )
        got = state.logits.double().softmax(-1)  # [rows, vocab]
        assert torch.allclose(got, expected, atol=1e-5, rtol=0)
        tokens = torch.multinomial(got.float(), 1, generator=generator).squeeze(-1)  # [rows]
        for row, token in zip(sequences, tokens.tolist(), strict=True):
            row.append(token)
        state.step(tokens)


def test_generated_log_probs_are_the_mixed_distributions(
    trio: tuple[HFModel, HFModel, HFModel, HFModel],
) -> None:
    base, tuned, _, ref = trio
    model = EmulatedFineTuning(base, tuned=tuned, reference=ref, beta=2.0)
    sampling = Sampling(temperature=1.0, max_new_tokens=8, seed=5, n=2)
    rows = model.generate(CHATS, sampling)
    prompts = base._encode_prompts(CHATS)
    for prompt, row in zip(prompts, rows, strict=True):
        for completion in row:
            ids = base.tokenizer(completion.text, add_special_tokens=False)["input_ids"]
            if len(ids) != completion.num_tokens:
                continue
            sequence = list(prompt)
            assert completion.token_logprobs is not None
            for token, logprob in zip(ids, completion.token_logprobs, strict=True):
                p = closed_form(
                    full_logits(base, [sequence]),
                    [full_logits(tuned, [sequence])],
                    full_logits(ref, [sequence]),
                    [2.0],
                )
                assert logprob == pytest.approx(float(p[0, token].log()), abs=1e-4)
                sequence.append(token)


def test_weight_zero_is_the_base_model_and_batching_changes_nothing(
    trio: tuple[HFModel, HFModel, HFModel, HFModel],
) -> None:
    base, tuned, _, ref = trio
    sampling = Sampling(temperature=1.0, max_new_tokens=10, seed=3, n=2)
    zero = EmulatedFineTuning(base, tuned=tuned, reference=ref, beta=0.0)
    texts = [[c.text for c in row] for row in zero.generate(CHATS, sampling)]
    assert texts == [[c.text for c in row] for row in base.generate(CHATS, sampling)]
    mixed = EmulatedFineTuning(base, tuned=tuned, reference=ref, beta=1.0, batch_size=2)
    together = [[c.text for c in row] for row in mixed.generate(CHATS, sampling)]
    alone = [[c.text for c in mixed.generate([chat], sampling)[0]] for chat in CHATS]
    assert together == alone
    assert together != texts  # the tuned delta changes the samples


def test_each_model_keeps_its_own_cache(trio: tuple[HFModel, HFModel, HFModel, HFModel]) -> None:
    base, tuned, _, ref = trio
    state = EmulatedFineTuning(base, tuned=tuned, reference=ref).prefill(CHATS)
    caches = [s.cache for s in state.states]
    assert len(caches) == 3 and len({id(c) for c in caches}) == 3
    state.step(torch.tensor([10, 11, 12]))
    state.keep([2, 0])
    assert all(len(s) == 2 for s in state.states) and state.logits.shape[0] == 2


def test_the_shortest_context_of_the_models_holds_the_rows(
    trio: tuple[HFModel, HFModel, HFModel, HFModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mixture declared the base model's context and decoded with none: a row ran past a
    shorter context of the tuned or reference model (and the audit's check read the base's)."""
    base, tuned, _, ref = trio
    prompt = len(base.prompt_ids(CHATS[0]))
    monkeypatch.setattr(ref, "context_length", prompt + 3)
    model = EmulatedFineTuning(base, tuned=tuned, reference=ref)
    (completion,) = model.generate(CHATS[:1], Sampling(max_new_tokens=20))[0]
    assert (completion.num_tokens, completion.finish_reason) == (3, "length")
    assert model.context_length == prompt + 3
    (own,) = ref.generate(CHATS[:1], Sampling(max_new_tokens=20))[0]
    assert (own.num_tokens, own.finish_reason) == (3, "length")  # as the model's own decoding


def test_spec_registry_and_errors(
    trio: tuple[HFModel, HFModel, HFModel, HFModel], tiny_hf_model_dir: Path
) -> None:
    assert strategies.get("eft") is EmulatedFineTuning
    assert strategies.reference("eft") == "arXiv 2310.12962"
    d = tiny_hf_model_dir
    model = load_model(f"eft({d}, tuned={d}, reference={d}, beta=-1)")
    assert model.spec == f"eft({d}, beta=-1.0, reference={d}, tuned={d})"
    assert load_model(model.spec).name == model.name
    assert model.capabilities.step and model.capabilities.engine and not model.capabilities.score
    base, tuned, _, ref = trio
    with pytest.raises(PoiseError, match="needs a tuned model"):
        EmulatedFineTuning(base, reference=ref)
    with pytest.raises(PoiseError, match="needs a reference model"):
        EmulatedFineTuning(base, tuned=tuned)
    with pytest.raises(PoiseError, match="beta_2 is set but tuned_2 is not"):
        EmulatedFineTuning(base, tuned=tuned, reference=ref, beta_2=0.5)
    with pytest.raises(PoiseError, match="unknown option 'tuned_1'"):
        EmulatedFineTuning(base, tuned=tuned, reference=ref, tuned_1=tuned)
    # any number of tuned models, numbered in any order, mixed in the order of their numbers
    many = load_model(f"eft({d}, tuned={d}, reference={d}, tuned_12={d}, beta_12=0.5, tuned_3={d})")
    assert many.weights == [1.0, 1.0, 0.5]  # type: ignore[attr-defined]
    assert load_model(many.spec).name == many.name
    with pytest.raises(PoiseError, match=r"option of 'eft'.*'tuned_1'"):
        load_model(f"eft({d}, tuned={d}, reference={d}, tuned_1={d})")
    with pytest.raises(PoiseError, match="'tuned_2' is a model"):
        load_model(f"eft({d}, tuned={d}, reference={d}, tuned_2=0.5)")
    with pytest.raises(PoiseError, match="beta_3 is set but tuned_3 is not"):
        load_model(f"eft({d}, tuned={d}, reference={d}, beta_3=2)")
    with pytest.raises(PoiseError, match="eft needs a model with a token-level step"):
        EmulatedFineTuning(base, tuned=MockModel("mock"), reference=ref)
    with pytest.raises(PoiseError, match=r"beta must be a number in \[-100, 100\], got nan"):
        EmulatedFineTuning(base, tuned=tuned, reference=ref, beta=float("nan"))
    # a spec string as the draft in Python was an AttributeError ('str' has no 'tokenizer')
    with pytest.raises(PoiseError, match=r"eft: expected a model as draft= .* got str 'x'"):
        EmulatedFineTuning(base, tuned=tuned, reference=ref, speculative=2, draft="x")  # type: ignore[arg-type]


def test_a_weight_past_its_bound_is_one_error_naming_the_option(
    trio: tuple[HFModel, HFModel, HFModel, HFModel], tiny_hf_model_dir: Path
) -> None:
    """A weight is an exponent on p_tuned / p_ref: beta=1e38 was accepted and overflowed the
    float32 mixture (greedy decoding answered "", sampling drew garbage). |beta_i| <= 100."""
    base, tuned, other, ref = trio
    for weight in (1e38, -1e38, 1e3, -100.5):
        with pytest.raises(PoiseError, match=r"^eft: beta must be a number in \[-100, 100\]"):
            EmulatedFineTuning(base, tuned=tuned, reference=ref, beta=weight)
    with pytest.raises(PoiseError, match=r"eft: beta_2 must be a number in \[-100, 100\], got 1e"):
        EmulatedFineTuning(base, tuned=tuned, reference=ref, tuned_2=other, beta_2=1e300)
    d = tiny_hf_model_dir
    with pytest.raises(PoiseError, match=r"eft: beta must be a number in \[-100, 100\]"):
        load_model(f"eft({d}, tuned={d}, reference={d}, beta=1e38)")
    edge = EmulatedFineTuning(
        base, tuned=tuned, reference=ref, beta=100, tuned_2=other, beta_2=-100
    )
    assert edge.weights == [100.0, -100.0]


def test_a_different_vocabulary_is_one_clear_error(
    trio: tuple[HFModel, HFModel, HFModel, HFModel],
) -> None:
    base, _, _, ref = trio
    try:
        other = load_model("organism-small")
    except PoiseError as exc:
        pytest.skip(f"the organism is not built: {exc}")
    with pytest.raises(PoiseError, match=r"eft: .*organism-small.* does not share .* vocabulary"):
        EmulatedFineTuning(base, tuned=other, reference=ref)


def test_logits_of_another_width_are_refused_before_any_generation(
    trio: tuple[HFModel, HFModel, HFModel, HFModel], tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """The same tokenizer over an output layer padded to more rows: refused when the model is
    built (it was refused only at the first prefill, after every model had loaded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _, _, ref = trio
    padded = AutoModelForCausalLM.from_pretrained(str(tiny_hf_model_dir))
    padded.resize_token_embeddings(padded.config.vocab_size + 8)
    padded.save_pretrained(tmp_path / "padded")
    AutoTokenizer.from_pretrained(str(tiny_hf_model_dir)).save_pretrained(tmp_path / "padded")
    other = HFModel(str(tmp_path / "padded"), device="cpu")
    with pytest.raises(
        PoiseError, match=r"eft: the models' logits have different vocabulary sizes"
    ):
        EmulatedFineTuning(base, tuned=other, reference=ref)


@pytest.mark.slow
def test_on_the_organism_the_weight_moves_refusal_both_ways() -> None:
    """First-generation organism: organism-small-safe minus organism-small is a refusal delta.
    Added to organism-large it raises the probability of opening a harmful answer with a
    refusal; subtracted (emulated disalignment) it lowers it."""
    try:
        large = load_model("organism-large")
        safe, small = load_model("organism-small-safe"), load_model("organism-small")
    except PoiseError as exc:
        pytest.skip(f"the organism is not built: {exc}")
    from poise.suites import load_suite

    items = [i for i in load_suite("harmful") if i.kind == "harmful"][:40]
    chats = [list(i.messages) for i in items]
    refusal = large.tokenizer("I'm sorry", add_special_tokens=False)["input_ids"][0]

    def refusal_mass(beta: float) -> float:
        model = EmulatedFineTuning(large, tuned=safe, reference=small, beta=beta)
        state = model.prefill(chats)
        return float(state.logits.softmax(-1)[:, refusal].mean())

    aligned, plain, disaligned = refusal_mass(1.0), refusal_mass(0.0), refusal_mass(-1.0)
    assert aligned > plain > disaligned


def test_a_token_a_model_rules_out_is_ruled_out_not_nan() -> None:
    """Logits of -inf (a token masked by a logits processor) made NaN rows: ``-inf - -inf`` in
    the tuned / reference ratio, or +inf under a negative weight."""
    from poise.decoding.eft import eft_logits

    inf = float("-inf")
    base = torch.tensor([[0.0, 1.0, 2.0, 0.5]])
    tuned = torch.tensor([[1.0, inf, 0.0, 0.5]])
    reference = torch.tensor([[0.5, inf, 1.0, inf]])
    for weight in (1.0, -0.5):
        out = eft_logits(base, [tuned], reference, [weight])  # [1, 4]
        assert not out.isnan().any()
        assert out[0, 1] == inf and out[0, 3] == inf  # ruled out by tuned and / or reference
        kept = [0, 2]
        expected = base.log_softmax(-1)[0, kept] + weight * (
            tuned.log_softmax(-1)[0, kept] - reference.log_softmax(-1)[0, kept]
        )
        assert torch.allclose(out[0, kept], expected.log_softmax(-1), atol=1e-6)
    # every token ruled out by one model or another: the base's distribution
    nothing = torch.full((1, 4), inf)
    assert torch.allclose(eft_logits(base, [nothing], reference, [1.0]), base.log_softmax(-1))


def test_a_token_the_base_rules_out_counts_toward_an_empty_row() -> None:
    """The base rules out token 0 and the tuned model every other token: no token is left, and
    the row keeps the base's distribution (token 0 still ruled out), not NaN."""
    from poise.decoding.eft import eft_logits

    inf = float("-inf")
    base = torch.tensor([[inf, 1.0, 2.0, 0.5]])
    tuned = torch.tensor([[0.3, inf, inf, inf]])
    reference = torch.tensor([[0.5, 0.0, 1.0, 0.2]])
    for weight in (1.0, -0.5):
        out = eft_logits(base, [tuned], reference, [weight])
        assert not out.isnan().any()
        assert torch.equal(out, base.log_softmax(-1))


def test_a_row_that_fills_the_context_waits_inside_it_in_every_model(
    tiny_hf_model_dir: Path, tmp_path: Path, build_gpt2: Callable[..., Path]
) -> None:
    """A row that stopped at the context is fed padding until the batch drops it, each model's
    state holding it at its last position: over models of learned positions (GPT-2, a context
    of 24) a row fed past the context is an IndexError while seven others go on."""
    base, tuned, ref = (
        HFModel(str(build_gpt2(tmp_path / f"gpt{s}", tiny_hf_model_dir, seed=s)), device="cpu")
        for s in range(3)
    )
    model = EmulatedFineTuning(base, tuned=tuned, reference=ref)
    short = [{"role": "user", "content": "Hi"}]
    long = [{"role": "user", "content": "Hello there my go"}]
    room = 24 - len(base.prompt_ids(long))
    assert 0 < room < 24 - len(base.prompt_ids(short)) - 8
    rows = model.generate([short] * 7 + [long], Sampling(max_new_tokens=30))
    assert (rows[7][0].num_tokens, rows[7][0].finish_reason) == (room, "length")
    [alone] = model.generate([short], Sampling(max_new_tokens=30))
    assert all(r[0].token_ids == alone[0].token_ids for r in rows[:7])
