"""deal (arXiv 2402.06147): lambda = 0 and beam 1 is greedy decoding; the lookahead and the cache
rewind leave the search exact; the heuristic steers; the searches of a batch are independent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from poise.config import Sampling
from poise.decoding import strategies
from poise.decoding.deal import DeAL, rewind
from poise.decoding.scorers import load_scorer
from poise.errors import PoiseError
from poise.models import load_model, no_system_prompt, with_system_prompt
from poise.models.context import ContextLengthError
from poise.models.hf import HFModel
from poise.models.mock import MockModel

CHATS = [
    [{"role": "user", "content": "Hello there, the cat!"}],
    [{"role": "user", "content": "Tell me a story about a dragon in the mountains."}],
    [{"role": "user", "content": "ok"}],
]
GREEDY = Sampling(max_new_tokens=16)


@pytest.fixture(scope="module")
def tiny(tiny_hf_model_dir: Path) -> Iterator[HFModel]:
    torch.set_num_threads(1)
    yield HFModel(str(tiny_hf_model_dir), device="cpu")


def texts(rows: list[list[object]]) -> list[list[str]]:
    return [[c.text for c in row] for row in rows]  # type: ignore[attr-defined]


def test_lambda_0_beam_1_is_greedy_decoding(tiny: HFModel) -> None:
    greedy = tiny.generate(CHATS, GREEDY)
    for k in (1, 4):
        deal = DeAL(tiny, k=k, lookahead=3, beam=1, lam=0.0)
        got = deal.generate(CHATS, GREEDY)
        assert texts(got) == texts(greedy)
        for mine, theirs in zip(got, greedy, strict=True):
            assert mine[0].num_tokens == theirs[0].num_tokens
            assert mine[0].finish_reason == theirs[0].finish_reason
            assert mine[0].token_logprobs == pytest.approx(theirs[0].token_logprobs, abs=1e-4)


def test_a_stop_string_cuts_the_tokens_as_greedy_decoding_does(tiny: HFModel) -> None:
    """The search runs past a stop string; the answer's ``num_tokens`` and ``token_logprobs``
    counted every searched token (16 here) while its text stopped at the stop string (the
    base model's own decoding: 8 tokens), so response-length metrics and a server's usage
    counted text that was never returned."""
    first = tiny.generate(CHATS[:1], GREEDY)[0][0].text
    sampling = GREEDY.model_copy(update={"stop": (first[5:7],)})
    greedy = tiny.generate(CHATS, sampling)
    got = DeAL(tiny, k=2, lookahead=2, beam=1, lam=0.0).generate(CHATS, sampling)
    assert greedy[0][0].finish_reason == "stop" and greedy[0][0].num_tokens < 16
    for mine, theirs in zip(got, greedy, strict=True):
        assert (mine[0].text, mine[0].finish_reason) == (theirs[0].text, theirs[0].finish_reason)
        assert mine[0].num_tokens == theirs[0].num_tokens
        assert mine[0].token_logprobs == pytest.approx(theirs[0].token_logprobs, abs=1e-4)


def test_a_vanishing_temperature_draws_the_top_k_in_order(tiny: HFModel) -> None:
    """Gumbel-top-k of logprobs / T: below T ~ 1e-38 every key but the best overflows to -inf
    and topk's order among them is arbitrary; the limit is the top k by log-probability."""
    from poise.decoding.deal import _Search

    deal = DeAL(tiny, k=3, lookahead=1, beam=1, lam=0.0)
    logprobs = torch.log_softmax(torch.tensor([[0.3, 2.0, -1.0, 0.5, 1.5, -4.0]]), dim=-1)
    for temperature in (1e-38, 1e-300, 5e-324):
        search = _Search(
            [], [], Sampling(temperature=temperature), torch.Generator().manual_seed(0)
        )
        chosen = deal._candidates(logprobs, [search])
        assert chosen.tolist() == [[1, 4, 3]]
    # at T = 1 the draw is still random (without replacement): not always the top 3
    draws = set()
    for seed in range(20):
        search = _Search([], [], Sampling(temperature=1.0), torch.Generator().manual_seed(seed))
        draws.add(tuple(deal._candidates(logprobs, [search])[0].tolist()))
    assert len(draws) > 1


def test_looking_ahead_and_rewinding_keeps_the_search_exact(tiny: HFModel) -> None:
    # a heuristic that is 0 everywhere: every step looks 5 tokens ahead and rewinds them, and
    # the answers must still be greedy decoding
    deal = DeAL(tiny, k=3, lookahead=5, beam=1, lam=2.0, reward="keywords:\u2603")
    assert texts(deal.generate(CHATS, GREEDY)) == texts(tiny.generate(CHATS, GREEDY))


def test_rewind_restores_the_state_of_the_shorter_prefix(tiny: HFModel) -> None:
    state = tiny.prefill(CHATS)
    state.step(torch.tensor([20, 21, 22]))
    before = state.logits.clone()
    state.step(torch.tensor([30, 31, 32]))
    state.step(torch.tensor([40, 41, 42]))
    rewind(state, 2, before)
    after = state.step(torch.tensor([50, 51, 52]))
    fresh = tiny.prefill(CHATS)
    fresh.step(torch.tensor([20, 21, 22]))
    assert torch.allclose(after, fresh.step(torch.tensor([50, 51, 52])), atol=1e-5)


def test_the_heuristic_steers_the_search(tiny: HFModel) -> None:
    greedy = tiny.generate(CHATS, GREEDY)
    # pick a word greedy decoding never writes but that is one token of the vocabulary
    word = next(ch for ch in "QZXJKVWqzxjkvw" if all(ch not in c.text for [c] in greedy))
    steered = DeAL(tiny, k=8, lookahead=2, beam=2, lam=50.0, reward=f"keywords:{word}")
    rows = steered.generate(CHATS, GREEDY)
    assert sum(word in c.text for [c] in rows) >= 2


def test_the_heuristic_is_the_weighted_sum_of_its_scorers(
    tiny_hf_model_dir: Path, tiny: HFModel
) -> None:
    """h = sum of weighted rewards minus sum of weighted costs, numbered scorers included."""
    from poise.decoding.scorers import load_scorer

    spec = (
        f"deal({tiny_hf_model_dir}, reward=keywords:the, reward_weight=0.5, cost=length:3, "
        "reward_2=keywords:cat|dog, cost_2=length:8, cost_weight_2=2)"
    )
    model = load_model(spec)
    assert load_model(model.spec).name == model.name
    chats = [[{"role": "user", "content": "hi"}]] * 3
    texts = ["the cat sat", "a dog ran on the long road today", "nothing"]

    def scores(name: str) -> list[float]:
        return load_scorer(name)(chats, texts)

    the, pets = scores("keywords:the"), scores("keywords:cat|dog")
    short, long = scores("length:3"), scores("length:8")
    expected = [0.5 * a + b - c - 2 * d for a, b, c, d in zip(the, pets, short, long, strict=True)]
    got = model.heuristic(chats, texts)  # type: ignore[attr-defined]
    assert got == pytest.approx(expected, abs=1e-12)
    assert len(set(got)) == 3  # the texts score apart: the check is not vacuous
    with pytest.raises(PoiseError, match="reward_weight_2 is set but reward_2 is not"):
        DeAL(tiny, reward="keywords:a", reward_weight_2=2.0)
    with pytest.raises(PoiseError, match="unknown option 'reward_x'"):
        DeAL(tiny, reward="keywords:a", reward_x="keywords:b")
    with pytest.raises(PoiseError, match="cost_weight must be a finite number"):
        DeAL(tiny, cost="length:3", cost_weight=float("inf"))


def _deal_by_enumeration(
    folder: Path,
    tiny: HFModel,
    chat: list[dict[str, str]],
    *,
    k: int,
    lookahead: int,
    beam: int,
    lam: float,
    scorer: str,
    max_new_tokens: int,
) -> list[int]:
    """The search written out plainly, as the paper's procedure and the module docstring state
    it: no batch, no KV cache, no rewind: every log-probability from a fresh forward of the
    whole sequence. Each beam's k likeliest tokens, each looked ahead greedily (to EOS at most),
    scored ``log p(prefix) + lam * h(prefix + lookahead)``; the beam best kept, the search ends
    when the best candidate ends (an ended candidate that is not the best is dropped)."""
    from transformers import AutoModelForCausalLM

    from poise.decoding.scorers import load_scorer

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    h = load_scorer(scorer)
    prompt = tiny._encode_prompts([chat])[0]
    eos = set(tiny.eos_token_ids)

    def next_logprobs(tokens: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0, -1]
        return logits.float().log_softmax(dim=-1)

    beams: list[tuple[list[int], float]] = [([], 0.0)]
    while True:
        options = []
        for tokens, loglik in beams:
            logprobs = next_logprobs(tokens)
            for token in logprobs.topk(k).indices.tolist():
                seq = [*tokens, token]
                ahead = list(seq)
                while len(ahead) < len(seq) + lookahead and ahead[-1] not in eos:
                    ahead.append(int(next_logprobs(ahead).argmax()))
                text = tiny.tokenizer.decode(
                    [t for t in ahead if t not in eos] if ahead[-1] in eos else ahead,
                    skip_special_tokens=True,
                )
                value = loglik + float(logprobs[token])
                options.append((value + lam * h([chat], [text])[0], value, seq))
        options.sort(key=lambda o: -o[0])
        kept = []
        for rank, (_, value, seq) in enumerate(options[:beam]):
            ended = seq[-1] in eos
            if rank == 0 and (ended or len(seq) >= max_new_tokens):
                return seq[:-1] if ended else seq
            if not (ended or len(seq) >= max_new_tokens):
                kept.append((seq, value))
        beams = kept


@pytest.mark.parametrize(
    ("lam", "scorer"), [(0.5, "length:4"), (3.0, "keywords:e|a"), (1.0, "keywords:s|t|o")]
)
def test_the_search_equals_its_plain_enumeration(
    tiny_hf_model_dir: Path, tiny: HFModel, lam: float, scorer: str
) -> None:
    """The batched search with its cache rewinds gives the answers of the plain enumeration,
    with a heuristic that moves the choice (lam > 0, two beams): not greedy decoding."""
    sampling = Sampling(max_new_tokens=12)
    options = {"k": 4, "lookahead": 3, "beam": 2, "lam": lam}
    deal = DeAL(tiny, **options, reward=scorer)  # type: ignore[arg-type]
    got = deal.generate(CHATS, sampling)
    expected = [
        _deal_by_enumeration(
            tiny_hf_model_dir, tiny, chat, **options, scorer=scorer, max_new_tokens=12
        )
        for chat in CHATS
    ]
    texts_expected = [tiny.tokenizer.decode(t, skip_special_tokens=True) for t in expected]
    assert [c.text for [c] in got] == texts_expected
    assert [c.num_tokens for [c] in got] == [len(t) for t in expected]
    assert texts(got) != texts(tiny.generate(CHATS, sampling))  # the heuristic mattered


def test_registry_spec_and_errors(tiny_hf_model_dir: Path, tiny: HFModel) -> None:
    assert strategies.get("deal") is DeAL
    assert strategies.reference("deal") == "arXiv 2402.06147"
    model = load_model(f"deal({tiny_hf_model_dir}, k=3, beam=2, lam=1, cost=length:5)")
    assert model.spec == (
        f"deal({tiny_hf_model_dir}, beam=2, cost=length:5, k=3, lam=1.0, lookahead=4)"
    )
    assert load_model(model.spec).name == model.name
    with pytest.raises(PoiseError, match="beam \\(3\\) cannot exceed the k candidates \\(2\\)"):
        DeAL(tiny, k=2, beam=3, lam=0)
    with pytest.raises(PoiseError, match="lam != 0 needs a heuristic"):
        DeAL(tiny, lam=1.0)
    with pytest.raises(PoiseError, match="deal needs a model with a token-level step"):
        DeAL(MockModel("mock"), lam=0)
    # found by a first-hour reviewer: a torch traceback (k), a silent run past the context or
    # ten minutes of stepping after every row ended (lookahead), a scorer never used (lam=0)
    vocab = len(tiny.tokenizer)
    with pytest.raises(PoiseError, match=f"k={vocab + 1} exceeds .* vocabulary of {vocab} tokens"):
        DeAL(tiny, k=vocab + 1, beam=1, lam=0)
    assert tiny.context_length is not None
    with pytest.raises(PoiseError, match=r"lookahead=.* does not fit .* context"):
        DeAL(tiny, lookahead=tiny.context_length, lam=1, cost="length:5")
    assert DeAL(tiny, lookahead=5, lam=1, cost="length:5").context_length == (
        tiny.context_length - 5
    )
    with pytest.raises(PoiseError, match="lam=0 weighs the heuristic by nothing"):
        DeAL(tiny, lam=0, cost="length:5")


@pytest.mark.slow
def test_on_the_organism_a_cost_heuristic_lowers_harmful_openings() -> None:
    """First-generation organism: organism-cost flags a harmful answer once its steps appear,
    so the lookahead must reach them (24 tokens)."""
    try:
        base = load_model("organism-large")
        load_scorer("organism-cost")
    except PoiseError as exc:
        pytest.skip(f"the organism is not built: {exc}")
    from poise.suites import load_suite

    items = [i for i in load_suite("harmful") if i.kind == "harmful"][:24]
    # without a system prompt (an empty system message: the template inserts the default
    # into a chat without one), where greedy organism-large complies with some requests
    chats = [with_system_prompt(list(i.messages), no_system_prompt(base)) for i in items]
    sampling = Sampling(max_new_tokens=32)
    plain = sum(c.text.startswith("Sure") for [c] in base.generate(chats, sampling))
    deal = DeAL(base, k=2, lookahead=24, beam=1, lam=1.0, cost="organism-cost")
    steered = sum(c.text.startswith("Sure") for [c] in deal.generate(chats, sampling))
    assert steered < plain


def test_the_answers_token_ids_are_greedy_decodings_with_its_eos(eos_hf_model_dir: Path) -> None:
    """The search's answer carries its token ids as the base model's decoding gives them: the
    EOS that ended it included (what a server's usage counts), cut with a stop string's text.
    They used to be missing."""
    model = HFModel(str(eos_hf_model_dir), device="cpu")
    chats = [[{"role": "user", "content": "the cat sat"}], *CHATS[1:]]
    deal = DeAL(model, k=2, lookahead=2, beam=1, lam=0.0)
    greedy = model.generate(chats, GREEDY)
    ended = greedy[0][0]
    assert ended.finish_reason == "stop" and ended.token_ids is not None
    assert ended.token_ids[-1] in model.eos_token_ids
    stop = GREEDY.model_copy(update={"stop": (ended.text[1:3],)})
    for sampling in (GREEDY, stop):
        got, expected = deal.generate(chats, sampling), model.generate(chats, sampling)
        for mine, theirs in zip(got, expected, strict=True):
            assert mine[0].token_ids == theirs[0].token_ids
            assert (mine[0].text, mine[0].num_tokens) == (theirs[0].text, theirs[0].num_tokens)
    [[cut]] = deal.generate(chats[:1], stop)
    assert cut.finish_reason == "stop" and cut.token_ids is not None
    assert len(cut.token_ids) == cut.num_tokens < ended.num_tokens


def test_an_answer_ends_at_the_context_and_nothing_is_fed_past_it(
    tiny_hf_model_dir: Path, build_gpt2: Any, tmp_path: Path
) -> None:
    """The search ran to ``max_new_tokens`` whatever the context: on a model of learned
    positions (GPT-2, a context of 24) a long answer, its lookahead or a long prompt fed
    positions past the context (IndexError; a rotary model decodes garbage there). The answer
    now ends where the candidate and its lookahead would not fit ("length"), as the base model
    ends a row at its context, and a prompt that leaves no room is refused before any search."""
    gpt = HFModel(str(build_gpt2(tmp_path / "gpt", tiny_hf_model_dir, context=24)), device="cpu")
    chat = [{"role": "user", "content": "hi"}]
    room = 24 - len(gpt.prompt_ids(chat))
    long = Sampling(max_new_tokens=room + 20)
    [[plain]] = gpt.generate([chat], long)
    assert (plain.finish_reason, plain.num_tokens) == ("length", room)
    seen: list[int] = []
    hook = gpt.model.transformer.wpe.register_forward_pre_hook(
        lambda _module, args: seen.append(int(args[0].max()))
    )
    try:
        # lam = 0, beam 1: greedy decoding, cut where the base model cuts it
        [[greedy]] = DeAL(gpt, k=2, beam=1, lam=0, lookahead=0).generate([chat], long)
        assert greedy.token_ids == plain.token_ids and greedy.finish_reason == "length"
        # a lookahead of 3 tokens sits past the answer: the answer ends 3 tokens earlier
        deal = DeAL(gpt, k=2, beam=2, lookahead=3, reward="length:3")
        assert deal.context_length == 21
        [[ahead]] = deal.generate([chat], long)
        assert (ahead.finish_reason, ahead.num_tokens) == ("length", room - 3)
    finally:
        hook.remove()
    assert seen and max(seen) <= 23
    # 22 prompt tokens fit the base model's context, not one token and its lookahead
    crowded = [{"role": "user", "content": "hello there friend"}]
    assert len(gpt.prompt_ids(crowded)) == 22
    with pytest.raises(ContextLengthError, match=r"chat 1: .* maximum context length is 21"):
        deal.generate([chat, crowded], Sampling())


def test_lam_0_computes_no_lookahead_so_it_costs_no_context(
    tiny_hf_model_dir: Path, build_gpt2: Any, tmp_path: Path
) -> None:
    """With ``lam=0`` no heuristic reads a lookahead and none is computed, yet the search kept
    ``lookahead`` (4 by default) tokens of the context for it: greedy ``deal(lam=0, beam=1)``
    ended 4 tokens before the base model at a short context. It is plain greedy decoding now,
    to the base model's last token."""
    gpt = HFModel(str(build_gpt2(tmp_path / "gpt", tiny_hf_model_dir, context=24)), device="cpu")
    chat = [{"role": "user", "content": "hi"}]
    long = Sampling(max_new_tokens=40)
    [[plain]] = gpt.generate([chat], long)
    deal = DeAL(gpt, k=2, beam=1, lam=0)
    assert deal.lookahead == 4 and deal.context_length == 24
    [[greedy]] = deal.generate([chat], long)
    assert greedy.token_ids == plain.token_ids
    assert (greedy.finish_reason, greedy.num_tokens) == ("length", plain.num_tokens)


def test_a_scorer_folder_given_by_a_relative_path_is_recorded_by_its_absolute_one(
    tiny_hf_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a base model's folder: the spec rebuilds the same scorer from any directory."""
    folder = tmp_path / "here" / "cost-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        '{"architectures": ["LlamaForSequenceClassification"], "num_labels": 1}'
    )
    monkeypatch.chdir(tmp_path / "here")
    model = load_model(f"deal({tiny_hf_model_dir}, k=2, cost=length:3, cost_2=cost-model)")
    assert f"cost_2={folder.resolve()}," in str(model.spec)
    assert f"cost_2={folder.resolve()}," in model.name
    monkeypatch.chdir(tmp_path)
    assert load_model(str(model.spec)).name == model.name


def test_a_weight_that_changes_nothing_is_refused(tiny: HFModel) -> None:
    """A weight without its scorer was dropped from the spec unsaid when it was 1 (refused
    otherwise), and a weight of 0 loaded a scorer that was never read, as lam=0 would."""
    with pytest.raises(PoiseError, match="deal: cost_weight is set but cost is not"):
        DeAL(tiny, reward="length:3", cost_weight=1.0)
    with pytest.raises(PoiseError, match="deal: reward_weight_2 is set but reward_2 is not"):
        DeAL(tiny, reward="length:3", reward_weight_2=1.0)
    with pytest.raises(PoiseError, match="deal: cost_weight_2=0 weighs cost_2 by nothing"):
        DeAL(tiny, reward="length:3", cost_2="length:5", cost_weight_2=0)
    model = DeAL(tiny, reward="length:3", reward_weight=1.0, cost="length:5", cost_weight=-0.5)
    assert model.options == {
        "k": 4,
        "lookahead": 4,
        "beam": 2,
        "lam": 1.0,
        "reward": "length:3",
        "cost": "length:5",
        "cost_weight": -0.5,
    }


def test_sampled_candidates_follow_the_tempered_distribution(tiny: HFModel) -> None:
    """Gumbel-top-k: the first of the k candidates is drawn from ``softmax(logprobs / T)``
    (Kool et al., arXiv 1903.06059), at T = 1 and at T = 0.5, over 3000 seeds."""
    from poise.decoding.deal import _Search

    deal = DeAL(tiny, k=2, lookahead=1, beam=1, lam=0.0)
    logprobs = torch.log_softmax(torch.tensor([[0.3, 2.0, -1.0, 0.5, 1.5, -4.0]]), dim=-1)
    draws = 3000
    for temperature in (1.0, 0.5):
        counts = torch.zeros(6)
        for seed in range(draws):
            search = _Search(
                [], [], Sampling(temperature=temperature), torch.Generator().manual_seed(seed)
            )
            counts[deal._candidates(logprobs, [search])[0, 0]] += 1
        expected = torch.softmax(logprobs[0] / temperature, dim=-1)
        assert torch.allclose(counts / draws, expected, atol=0.03), (temperature, counts)


def test_sampled_searches_are_seeded_per_chat_and_sample(tiny: HFModel) -> None:
    """With ``temperature > 0`` each (chat, sample) searches with its own seed: a chat's answers
    are the same alone or beside other chats, its n samples are independent searches, and the
    seed changes them."""
    deal = DeAL(tiny, k=3, lookahead=2, beam=2, lam=1.0, reward="length:6")
    sampling = Sampling(temperature=1.0, seed=3, n=2, max_new_tokens=8)
    together = texts(deal.generate(CHATS, sampling))
    assert [texts(deal.generate([chat], sampling))[0] for chat in CHATS] == together
    assert any(first != second for first, second in together)
    reseeded = texts(deal.generate(CHATS, sampling.model_copy(update={"seed": 4})))
    assert reseeded != together


@pytest.mark.parametrize(("k", "beam", "lam"), [(3, 2, 0.5), (3, 3, 0.0)])
def test_with_an_eos_the_search_equals_its_plain_enumeration(
    eos_hf_model_dir: Path, k: int, beam: int, lam: float
) -> None:
    """On a model whose answers end with EOS, an ended candidate ends the search only when it
    is the best; an ended one that is not the best is dropped and the beams ranked after it go
    on (at k = beam = 3, "cat sat on" has an ended candidate second of three)."""
    model = HFModel(str(eos_hf_model_dir), device="cpu")
    chats = [[{"role": "user", "content": c}] for c in ("the cat sat", "cat sat on")]
    heuristic = {"reward": "length:4"} if lam else {}
    deal = DeAL(model, k=k, lookahead=2, beam=beam, lam=lam, **heuristic)  # type: ignore[arg-type]
    got = deal.generate([*chats, CHATS[1]], Sampling(max_new_tokens=10))
    expected = [
        _deal_by_enumeration(
            eos_hf_model_dir,
            model,
            chat,
            k=k,
            lookahead=2,
            beam=beam,
            lam=lam,
            scorer="length:4",
            max_new_tokens=10,
        )
        for chat in [*chats, CHATS[1]]
    ]
    assert [list(c.token_ids or ())[: c.num_tokens] for [c] in got] == expected


def test_an_eos_that_is_not_a_special_token_ends_the_heuristics_text(
    tiny_hf_model_dir: Path, tiny: HFModel
) -> None:
    """The heuristic reads the text up to the EOS that ends a candidate's lookahead: an EOS id
    the tokenizer does not skip as special (a model that ends on an ordinary token) is not
    part of the text scored, as it is not part of the answer. Here "g" ends an answer and "g"
    is the cost: no answer has one, and a candidate is not penalised for ending."""
    [g] = tiny.tokenizer("g", add_special_tokens=False)["input_ids"]
    eos = list(tiny.eos_token_ids)
    tiny.eos_token_ids = [*eos, g]
    try:
        options = {"k": 4, "lookahead": 3, "beam": 2, "lam": 3.0}
        got = DeAL(tiny, **options, cost="keywords:g").generate(  # type: ignore[arg-type]
            CHATS, Sampling(max_new_tokens=8)
        )
        expected = [
            _deal_by_enumeration(  # lam times a cost: minus lam times it as a reward
                tiny_hf_model_dir,
                tiny,
                chat,
                **{**options, "lam": -3.0},
                scorer="keywords:g",
                max_new_tokens=8,
            )
            for chat in CHATS
        ]
    finally:
        tiny.eos_token_ids = eos
    assert [list(c.token_ids or ())[: c.num_tokens] for [c] in got] == expected
