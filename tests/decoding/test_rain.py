"""rain (arXiv 2309.07124): the backup, selection and similarity rules of SafeAILab/RAIN
(``HH/nodes.py``) on a hand-built tree, values worked out by hand; the self-evaluation's score;
one-line errors on bad options; a real search on the tiny model, and the same searches batched
across prompts giving each prompt the answer it gets alone."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from poise.config import Sampling
from poise.decoding import strategies
from poise.decoding.rain import Node, Rain, _Evaluate, _Rollout, _Sets, mix_priors, set_length
from poise.errors import PoiseError
from poise.models import load_model
from poise.models.hf import HFModel
from poise.models.mock import MockModel


@pytest.fixture(scope="module")
def tiny(tiny_hf_model_dir: Path) -> Iterator[HFModel]:
    torch.set_num_threads(1)
    yield HFModel(str(tiny_hf_model_dir), device="cpu")


def test_backup_and_selection_on_a_hand_built_tree() -> None:
    # root with children a (prior 0.6) and b (prior 0.4); embeddings chosen so a and b are
    # similar (cosine 1 / sqrt(1.01) = 0.995 >= 0.95)
    vectors = {1: torch.tensor([1.0, 0.0]), 2: torch.tensor([1.0, 0.1])}
    seen: list[list[int]] = []

    def embed(tokens: Sequence[int]) -> torch.Tensor:
        seen.append(list(tokens))
        return vectors[tokens[0]] if tokens[0] in vectors else torch.tensor([0.0, 1.0])

    root = Node(None, 0.0)
    root.expand([((1,), 0.6), ((2,), 0.4)])
    a, b = root.children[(1,)], root.children[(2,)]

    # 1. a evaluated at v = 0.5: b has no embedding yet, so no similarity update
    a.backup(0.5, [1], embed)
    assert (a.n, a.fn, a.q) == (1, 1, 0.5)
    assert (root.n, root.q) == (1, 0.5)
    assert b.n == 0 and b.q == 0
    assert (root.bounds.low, root.bounds.high) == (-1.0, 1.0)

    # 2. b evaluated at v = -1: a is similar, so a gets a fractional visit of 0.2 * cos
    b.backup(-1.0, [2], embed)
    s = 0.2 * (1 / math.sqrt(1.01))
    a_q = (0.5 * 1 + s * -1.0) / (1 + s)
    assert a.n == pytest.approx(1 + s)
    assert a.q == pytest.approx(a_q)
    assert a.fn == 1
    assert (b.n, b.q) == (1, -1.0)
    assert root.n == 2 and root.q == pytest.approx(0.5 + (-1.0 - 0.5) / 2)  # -0.25

    # selection: qh = (q - min) / (max - min + 1e-5), u = 2 p sqrt(N_parent) / (1 + n)
    a_score = (a_q + 1) / (2 + 1e-5) + 2 * 0.6 * math.sqrt(2) / (1 + 1 + s)
    b_score = (-1 + 1) / (2 + 1e-5) + 2 * 0.4 * math.sqrt(2) / (1 + 1)
    assert a.score() == pytest.approx(a_score)
    assert b.score() == pytest.approx(b_score)
    assert root.select()[0] == (1,)
    # the most visited child (a: 1 + s visits)
    best = root.best()
    assert best is not None and best[0] == (1,)

    # 3. a deeper leaf: its path and its ancestors' paths include the simulated tokens
    a.expand([((3, 4), 1.0)])
    c = a.children[(3, 4)]
    seen.clear()
    c.backup(1.0, [1, 3, 4, 9], embed, path_n=1)  # one simulated token (9)
    assert seen == [[3, 4, 9], [1, 3, 4, 9]]
    assert (c.n, c.q) == (1, 1.0)
    # a: mean embedding of [1, 0] and [1, 0] stays [1, 0]; its value and visits
    assert a.fn == 2 and a.n == pytest.approx(2 + s)
    assert a.q == pytest.approx(a_q + (1.0 - a_q) / (2 + s))
    # b is still similar to a, so it gets 0.2 * cos of the new value
    b_q = (-1.0 * 1 + s * 1.0) / (1 + s)
    assert b.n == pytest.approx(1 + s) and b.q == pytest.approx(b_q)
    assert root.n == 3 and root.q == pytest.approx(-0.25 + (1.0 + 0.25) / 3)
    # the bounds stay [-1, 1]: no value left them
    assert (c.bounds.low, c.bounds.high) == (-1.0, 1.0)


def test_a_vanishing_temperature_commits_the_most_visited_child() -> None:
    """``n ** (1 / T)`` overflowed float64 for a tiny T (inf weights, a multinomial error); the
    draw tends to the most visited child instead, and is the plain visit share at T = 1."""
    root = Node(None, 1.0)
    root.expand([((1,), 0.3), ((2,), 0.3), ((3,), 0.4)])
    for child, visits in zip(root.children.values(), (3.0, 9.0, 5.0), strict=True):
        child.n = visits
    gen = torch.Generator().manual_seed(0)
    for temperature in (1e-3, 1e-300, 5e-324):
        picks = {Rain._draw(root, Sampling(temperature=temperature), gen)[0] for _ in range(20)}
        assert picks == {(2,)}
    draws = [Rain._draw(root, Sampling(temperature=1.0), gen)[0] for _ in range(4000)]
    assert draws.count((2,)) / 4000 == pytest.approx(9 / 17, abs=0.03)


def test_bounds_widen_with_values_outside_them() -> None:
    root = Node(None, 0.0)
    root.expand([((1,), 1.0)])
    child = root.children[(1,)]
    child.reward = 0.5  # g = gamma * v + reward, as node.backup has it
    child.backup(1.0, [1], None)
    assert child.q == 1.5 and root.bounds.high == 1.5
    assert root.q == 1.5  # the parent backs up g (1.5) plus its own reward (0)


def test_dissimilar_siblings_are_left_alone() -> None:
    def embed(tokens: Sequence[int]) -> dict[int, float]:
        return {tokens[0]: 1.0}  # token-overlap embeddings: disjoint, cosine 0

    root = Node(None, 0.0)
    root.expand([((1,), 0.5), ((2,), 0.5)])
    root.children[(1,)].backup(1.0, [1], embed)
    root.children[(2,)].backup(-1.0, [2], embed)
    assert root.children[(1,)].q == 1.0 and root.children[(1,)].n == 1


def test_alike_children_that_score_below_0_are_widened() -> None:
    root = Node(None, 0.0)
    root.expand([((1, 2), 0.5), ((3, 4), 0.5)])
    a, b = root.children[(1, 2)], root.children[(3, 4)]
    assert not root.needs_widening()  # no embeddings yet
    a.embedding, b.embedding = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.01])
    a.q, b.q = -0.5, -0.2
    # variance per coordinate: [0, 0.00005]; norm 0.00005 < 0.03 * 2; best q -0.2 < 0
    assert root.needs_widening()
    b.q = 0.1
    assert not root.needs_widening()
    b.embedding = torch.tensor([0.0, 1.0])  # far apart: variance norm 0.707
    b.q = -0.2
    assert not root.needs_widening()
    # node.add: new sets first, the first children + 1 = 3 of them normalised, root-mixed
    root.widen([((1, 2), 0.3), ((5, 6), 0.1)])
    assert set(root.children) == {(1, 2), (3, 4), (5, 6)}
    head = [0.3, 0.1, 0.5]  # (1, 2) new, (5, 6) new, then the stored (1, 2)
    mixed = mix_priors([p / sum(head) for p in head])
    assert root.children[(5, 6)].p == pytest.approx(mixed[1])
    assert root.children[(1, 2)].p == 0.5  # an existing child keeps its prior


def test_widening_normalises_the_new_sets_with_the_stored_ones_as_drawn(tiny: HFModel) -> None:
    """node.add (HH/nodes.py) puts the new sets before ``self.logits``, which search sets to
    ``egp``: the expansion's sets with group_getp's unnormalised probabilities. poise kept the
    children's priors there instead (normalised, and mixed at the root), so the new children
    of a widened node got other priors than the reference's: here 0.03 against 0.625."""
    rain = Rain(tiny, similarity="none")
    prompt = tiny.prompt_ids([{"role": "user", "content": "hi"}])
    root = Node(None, 0.0)
    eos = set(tiny.eos_token_ids)
    search = rain._search(
        root, list(prompt), len(prompt), 8, "hi", {}, None, torch.Generator(), eos
    )
    assert isinstance(next(search), _Rollout)
    assert isinstance(search.send([*prompt, 5]), _Evaluate)
    assert isinstance(search.send(-1.0), _Sets)
    drawn = [((5, 6), 0.02), ((7, 8), 0.01)]
    with pytest.raises(StopIteration):
        search.send(drawn)
    expanded = mix_priors([2 / 3, 1 / 3])  # the children's priors: normalised, root-mixed
    assert [c.p for c in root.children.values()] == pytest.approx(expanded)
    root.widen([((9, 10), 0.03), ((11, 12), 0.01)])
    # the first children + 1 = 3 sets: the two new ones, then (5, 6) as drawn (0.02)
    head = [0.03, 0.01, 0.02]
    mixed = mix_priors([p / sum(head) for p in head])
    assert root.children[(9, 10)].p == pytest.approx(mixed[0])
    assert root.children[(11, 12)].p == pytest.approx(mixed[1])


def test_reference_schedules() -> None:
    assert [set_length(d) for d in range(5)] == [1, 2, 4, 10, 10]
    assert mix_priors([1.0, 0.0]) == pytest.approx([0.75 + 0.125, 0.125])


def test_self_evaluation_reads_the_option_letters(tiny: HFModel) -> None:
    rain = Rain(tiny, max_searches=1)
    letters = [tiny.tokenizer.encode(x, add_special_tokens=False)[-1] for x in "AB"]

    def fake_logits(harmless_letter_wins: bool) -> Any:
        def logits(rows: Sequence[Sequence[int]], *_: Any) -> Any:
            out = torch.zeros(len(rows), len(tiny.tokenizer))
            for i, row in enumerate(rows):
                text = tiny.tokenizer.decode(list(row))
                harmless_first = "(A) The assistant's answer is harmless" in text
                winner = letters[0] if harmless_first == harmless_letter_wins else letters[1]
                out[i, winner] = 1.0
            return SimpleNamespace(logits=out)

        return logits

    rain._logits = fake_logits(True)  # type: ignore[method-assign]
    assert rain.evaluate("how do I bake bread?", "Mix flour and water.") == 1.0
    rain._logits = fake_logits(False)  # type: ignore[method-assign]
    assert rain.evaluate("how do I bake bread?", "Mix flour and water.") == -1.0


def test_the_option_letters_are_those_that_follow_the_parenthesis() -> None:
    """A SentencePiece tokenizer (Llama's) encodes "A" alone as the word-initial "▁A"; after the
    prompt's "(" the model writes "A" (the reference reads Llama's 29909 / 29933, not "▁A" /
    "▁B"). The self-evaluation compared the logits of two tokens that do not follow "("."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁A": 1, "▁B": 2, "A": 3, "B": 4, "(": 5, "▁(": 6, "▁": 7}
    merges = [("▁", "A"), ("▁", "B"), ("▁", "(")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    llama_like = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert llama_like.encode("A", add_special_tokens=False) == [1]  # "▁A"
    assert llama_like.encode("(A", add_special_tokens=False) == [6, 3]  # "▁(", "A"
    fake = SimpleNamespace(inner=SimpleNamespace(tokenizer=llama_like))
    assert Rain._letters.func(fake) == (3, 4)  # type: ignore[attr-defined]


def test_evaluating_many_answers_equals_evaluating_each(tiny: HFModel) -> None:
    rain = Rain(tiny, batch_size=3)  # 7 pairs: chunks of 3, 3 and 1
    letters = [tiny.tokenizer.encode(x, add_special_tokens=False)[-1] for x in "AB"]

    def logits(rows: Sequence[Sequence[int]], *_: Any) -> Any:
        # harmless when the answer mentions bread, in either option order; else letter A
        out = torch.zeros(len(rows), len(tiny.tokenizer))
        for i, row in enumerate(rows):
            text = tiny.tokenizer.decode(list(row))
            answer = text.split("Assistant: ")[-1].split("Options:")[0]
            harmless_first = "(A) The assistant's answer is harmless" in text
            pick_a = harmless_first if "bread" in answer else True
            out[i, letters[0] if pick_a else letters[1]] = 1.0
        return SimpleNamespace(logits=out)

    rain._logits = logits  # type: ignore[method-assign]
    pairs = [("q?", a) for a in ("bread", "no", "bread rolls", "x", "y", "more bread", "z")]
    many = rain.evaluate_many(pairs)
    assert many == [rain.evaluate(r, a) for r, a in pairs]
    assert many == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert rain.evaluate_many([]) == []
    # a missing samples.jsonl field (None) or a number was evaluated, as "harmless" (1.0)
    with pytest.raises(PoiseError, match="evaluate takes a request and an answer, both strings"):
        rain.evaluate(None, None)  # type: ignore[arg-type]
    with pytest.raises(PoiseError, match=r"pair 1 is \(123, \['x'\]\)"):
        rain.evaluate_many([("q?", "bread"), (123, ["x"])])  # type: ignore[list-item]


def test_the_spec_rebuilds_the_model(tiny_hf_model_dir: Path) -> None:
    from poise.decoding import strategies

    assert strategies.get("rain") is Rain and strategies.reference("rain") == "arXiv 2309.07124"
    d = tiny_hf_model_dir
    model = load_model(f"rain({d}, max_searches=3, similarity=none, threshold=0.5)")
    assert model.spec == f"rain({d}, max_searches=3, min_visits=6, similarity=none, threshold=0.5)"
    again = load_model(model.spec)
    assert again.name == model.name and isinstance(again, Rain)
    assert (again.max_searches, again.similarity, again.threshold) == (3, "none", 0.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("max_searches=0", "max_searches must be an integer >= 1"),
        ("threshold=2", "threshold must be a number in [-1, 1]"),
        ("similarity=sbert", "similarity must be one of overlap, hidden, none"),
        # a value of the wrong type: the spec's error, with its column, before any model loads
        ("extra_searches=1.5", "option 'extra_searches' must be an integer, got 1.5"),
    ],
)
def test_bad_options_are_one_line_errors(
    tiny_hf_model_dir: Path, options: str, message: str
) -> None:
    with pytest.raises(PoiseError) as error:
        load_model(f"rain({tiny_hf_model_dir}, {options})")
    text = str(error.value)
    assert message in text
    assert "\n" not in text or text.startswith("model spec, column")  # the spec under a caret
    with pytest.raises(PoiseError, match="token-level step"):
        Rain(MockModel("mock:x", responses={}))


def test_a_stop_string_cuts_the_answers_tokens_with_its_text(tiny: HFModel) -> None:
    """The search runs past stop strings; ``num_tokens`` counted every searched token while the
    text stopped at the stop string. Now it counts the tokens up to the one that completes it,
    as the base model's own decoding does (:func:`poise.decoding.deal.stop_length`)."""
    from poise.decoding.deal import stop_length

    rain = Rain(tiny, max_searches=2, extra_searches=1, similarity="none")
    chat = [[{"role": "user", "content": "Tell me a story about a dragon."}]]
    [[whole]] = rain.generate(chat, Sampling(max_new_tokens=12))
    assert whole.num_tokens == 12 and len(whole.text) > 8
    stop = whole.text[6:8]
    [[cut]] = rain.generate(chat, Sampling(max_new_tokens=12, stop=(stop,)))
    assert cut.text == whole.text[: whole.text.find(stop)] and cut.finish_reason == "stop"
    assert 0 < cut.num_tokens < whole.num_tokens
    ids = tiny.tokenizer.encode(whole.text, add_special_tokens=False)
    if tiny.tokenizer.decode(ids) == whole.text:  # the text's own tokens: the same count
        assert cut.num_tokens == stop_length(tiny.tokenizer, ids, (stop,))


def test_a_search_answers_and_records_its_cost(tiny: HFModel) -> None:
    assert "rain" in strategies
    rain = Rain(tiny, max_searches=3, extra_searches=2, similarity="hidden")
    assert rain.name.startswith("rain(") and "similarity=hidden" in rain.name
    [[answer]] = rain.generate([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=6))
    assert 0 < answer.num_tokens <= 6
    assert answer.metadata is not None and answer.metadata["rain_searches"] >= 3
    assert 1 <= answer.metadata["rain_evaluations"] <= answer.metadata["rain_searches"]


def test_batched_searches_give_each_prompt_its_own_answer(tiny: HFModel) -> None:
    """Searches run in lockstep, their model calls batched (mixed kinds, different set lengths
    and contexts in one forward), answer every prompt as the prompt searched alone does."""
    chats = [[{"role": "user", "content": text}] for text in ("hi", "how are you", "a b c d e")]
    sampling = Sampling(temperature=1.0, seed=5, max_new_tokens=8, n=2)
    rain = Rain(tiny, max_searches=4, extra_searches=2, min_visits=0)
    together = rain.generate(chats, sampling)
    alone = [
        Rain(tiny, max_searches=4, extra_searches=2, min_visits=0, batch_size=1).generate(
            [c], sampling
        )[0]
        for c in chats
    ]
    assert [[(c.text, c.metadata) for c in row] for row in together] == [
        [(c.text, c.metadata) for c in row] for row in alone
    ]
    assert len({c.text for row in together for c in row}) > 1  # not one answer for all
    assert "batch_size=2" in Rain(tiny, batch_size=2).name
    with pytest.raises(PoiseError, match="batch_size must be an integer >= 1"):
        Rain(tiny, batch_size=0)


def full_forward_logits(model: HFModel, ids: list[int]) -> torch.Tensor:
    """[vocab] the last position's logits of one unpadded sequence, no cache."""
    with torch.inference_mode():
        return model.model(torch.tensor([ids])).logits[0, -1].float()


def test_a_round_answers_each_request_as_alone(tiny: HFModel) -> None:
    """One round serves expansions (single- and multi-token sets), simulations and
    self-evaluations together, from a prefix cache: each request's answer equals that of the
    request served on its own without a cache, from generators seeded alike."""
    from poise.decoding.rain import _Evaluate, _Rollout, _Sets
    from poise.models.decode import PrefixCache

    rain = Rain(tiny, max_searches=1)
    states = [tiny._encode_prompts([[{"role": "user", "content": t}]])[0] for t in ("hi", "a b c")]

    def round_(seed: int) -> list[Any]:
        def gen(offset: int) -> torch.Generator:
            return torch.Generator().manual_seed(seed + offset)

        return [
            _Sets(list(states[0]), 0, 3, gen(0), "s0"),
            _Rollout(list(states[1]), len(states[1]), 7, gen(1), "s1"),
            _Sets(list(states[1]), 1, 4, gen(2), "s2"),
            _Evaluate("how do I bake bread?", "Mix flour and water.", "s3"),
            _Rollout(list(states[0]), len(states[0]), 2, gen(4), "s4"),
            _Sets([*states[0], 7, 8], 3, 10, gen(5), "s5"),
            _Rollout(list(states[0]), len(states[0]), 4, gen(6), "s6"),
        ]

    cache = PrefixCache(tiny)
    rain._serve(round_(0), cache)  # fills the cache: the next round continues each key
    together = rain._serve(round_(1), cache)
    alone = [rain._serve([request])[0] for request in round_(1)]
    for got, want in zip(together, alone, strict=True):
        if isinstance(want, list) and want and isinstance(want[0], tuple):  # sets
            assert [t for t, _ in got] == [t for t, _ in want]
            assert [p for _, p in got] == pytest.approx([p for _, p in want], rel=1e-5)
        else:
            assert got == want
    assert [len(t[0][0]) for t in (together[0], together[2], together[5])] == [1, 2, 10]
    # the multi-token sets against k separate rows decoded one by one (the reference's
    # group_getp): each row's tokens from its own distribution, one [k - 1, 15] draw a step
    for i in (2, 5):
        request = round_(1)[i]
        rows = [list(request.state) for _ in range(request.k)]
        for _ in range(set_length(request.depth)):
            logits = torch.stack([full_forward_logits(tiny, row) for row in rows])
            top = logits.topk(15, dim=-1)
            probs = top.values.softmax(-1)
            pick = torch.zeros(request.k, dtype=torch.long)
            pick[1:] = torch.multinomial(probs[1:], 1, generator=request.generator)[:, 0]
            for r in range(request.k):
                rows[r].append(int(top.indices[r, pick[r]]))
        n = len(request.state)
        sets = []  # a set ends at its first EOS (the row decodes on, unrecorded)
        for row in rows:
            answer = row[n:]
            cut = next((j + 1 for j, t in enumerate(answer) if t in tiny.eos_token_ids), None)
            sets.append(tuple(answer[:cut]))
        expected = list(dict.fromkeys(sets))
        assert [t for t, _ in together[i]] == expected
        assert len(expected) > 1  # the sets differ: rows were split

    assert len({len(together[i]) for i in (1, 4, 6)}) > 1  # rollouts leave at different steps
    assert cache.reused > 0


def test_a_base_without_a_tokenizer_is_a_one_line_error(tiny: HFModel) -> None:
    """The search reads its base's tokenizer and chat template: a strategy as the base (it has
    a step but neither) is refused when built, not halfway through a search."""
    from poise.decoding.eft import EmulatedFineTuning

    eft = EmulatedFineTuning(tiny, tuned=tiny, reference=tiny)
    with pytest.raises(PoiseError, match="must be a Hugging Face model") as error:
        Rain(eft)
    assert "\n" not in str(error.value) and "EmulatedFineTuning" in str(error.value)


# -- the model's context (a model of learned positions fails past it: IndexError)


@pytest.fixture(scope="module")
def gpt_dirs(
    tiny_hf_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    build_gpt2: Any,
) -> dict[int, Path]:
    """Tiny GPT-2 folders (learned positions) by context: 24 tokens, which no self-evaluation
    prompt fits (285 tokens for the request "hi" and an empty answer), and 315, which those of
    short answers fit."""
    root = tmp_path_factory.mktemp("rain-gpt2")
    return {n: build_gpt2(root / f"gpt-{n}", tiny_hf_model_dir, context=n) for n in (24, 315)}


def _positions_seen(model: HFModel) -> tuple[list[int], Any]:
    """The largest position fed to each forward pass of a GPT-2 ``model``, and the hook's
    handle: its position embedding is looked up with every position any row is fed at."""
    seen: list[int] = []

    def record(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(int(args[0].max()))

    return seen, model.model.transformer.wpe.register_forward_pre_hook(record)


@pytest.mark.parametrize("similarity", ["overlap", "hidden"])
def test_a_search_never_feeds_a_position_past_the_context(
    gpt_dirs: dict[int, Path], similarity: str
) -> None:
    """The search's token sets run up to 10 tokens past the answer, its simulations to the end
    of a clause, and its self-evaluation prompt is longer than the prompt: on a model of
    learned positions (GPT-2, a context of 24) each of them went past the context (IndexError).
    The answer now ends at the context ("length"), as plain decoding does; nothing is fed past
    it; an evaluation prompt that does not fit is not put to the model (the answer scores 0)
    and is counted in ``rain_unevaluated``."""
    gpt = HFModel(str(gpt_dirs[24]), device="cpu")
    chat = [{"role": "user", "content": "hi"}]
    room = 24 - len(gpt.prompt_ids(chat))
    assert room == 15
    rain = Rain(gpt, max_searches=3, extra_searches=2, min_visits=0, similarity=similarity)
    seen, hook = _positions_seen(gpt)
    try:
        for sampling in (
            Sampling(max_new_tokens=room),  # the audit's context check allows this
            Sampling(max_new_tokens=room + 20),  # past the context: capped there
            Sampling(temperature=1.0, seed=3, n=3, max_new_tokens=room + 20),
        ):
            for answer in rain.generate([chat], sampling)[0]:
                assert answer.num_tokens <= room
                if answer.finish_reason == "length":
                    assert answer.num_tokens == room
                assert answer.metadata is not None
                assert answer.metadata["rain_evaluations"] == 0
                assert answer.metadata["rain_unevaluated"] >= 1
    finally:
        hook.remove()
    assert seen and max(seen) <= 23


def test_an_evaluation_that_does_not_fit_the_context_scores_0(gpt_dirs: dict[int, Path]) -> None:
    """An evaluation prompt longer than the context is not put to the model: the answer scores
    0, the value of an undecided evaluation. Those that fit are evaluated as before, in the
    same call and in a search."""
    gpt = HFModel(str(gpt_dirs[315]), device="cpu")
    rain = Rain(gpt, max_searches=4, extra_searches=2, min_visits=0, similarity="none")
    put: list[int] = []
    judgements = rain._judgements

    def spy(prompts: Sequence[Sequence[int]], *args: Any) -> torch.Tensor:
        put.extend(len(p) for p in prompts)
        return judgements(prompts, *args)

    rain._judgements = spy  # type: ignore[method-assign]
    pairs = [("hi", "ok"), ("hi", "no " * 20)]
    fits, too_long = rain._evaluation_rows(pairs)[::2]
    assert len(fits) <= 315 < len(too_long)
    seen, hook = _positions_seen(gpt)
    try:
        values = rain.evaluate_many(pairs)
        assert values[1] == 0.0 and put == [len(fits)] * 2  # only the first pair's two orders
        assert values[0] == rain.evaluate("hi", "ok")
        chat = [{"role": "user", "content": "hi"}]
        [[answer]] = rain.generate([chat], Sampling(max_new_tokens=30))
    finally:
        hook.remove()
    assert max(seen) < 315 and max(put) <= 315
    assert answer.metadata is not None
    assert answer.metadata["rain_evaluations"] >= 1 and answer.metadata["rain_unevaluated"] >= 1


def test_the_answers_token_ids_end_with_the_eos_that_ended_it(eos_hf_model_dir: Path) -> None:
    """The answer carries its token ids, the EOS that ended it included (what a server's usage
    counts), and a stop string cuts them with the text. They used to be missing."""
    model = HFModel(str(eos_hf_model_dir), device="cpu")
    rain = Rain(model, max_searches=3, extra_searches=2, similarity="none")
    chat = [[{"role": "user", "content": "the cat sat"}]]
    [[answer]] = rain.generate(chat, Sampling(max_new_tokens=8))
    assert answer.finish_reason == "stop" and answer.token_ids is not None
    assert len(answer.token_ids) == answer.num_tokens + 1
    assert answer.token_ids[-1] in model.eos_token_ids
    assert model.tokenizer.decode(answer.token_ids, skip_special_tokens=True) == answer.text
    stop = answer.text[1:3]
    [[cut]] = rain.generate(chat, Sampling(max_new_tokens=8, stop=(stop,)))
    assert cut.text == answer.text[: answer.text.find(stop)] and cut.token_ids is not None
    assert cut.token_ids == answer.token_ids[: cut.num_tokens]


def test_a_rollout_that_fills_the_context_waits_inside_it(gpt_dirs: dict[int, Path]) -> None:
    """Rows of a round's decode that are done wait, fed padding, until a quarter of them are
    done: a simulation that filled the context (24) was fed past it at the next step while
    eleven others went on (IndexError). It waits at its last position; every answer is the one
    its request gets alone."""
    from poise.decoding.rain import _Rollout

    gpt = HFModel(str(gpt_dirs[24]), device="cpu")
    rain = Rain(gpt, max_searches=1)
    prompt = gpt.prompt_ids([{"role": "user", "content": "hi"}])
    edge = [*prompt, *gpt.tokenizer.encode("abcdefghijklmn", add_special_tokens=False)]
    assert len(edge) == 23  # one token left: the rollout takes it and is done

    def requests() -> list[_Rollout]:
        def gen(seed: int) -> torch.Generator:
            return torch.Generator().manual_seed(seed)

        rows = [_Rollout(list(edge), len(prompt), 20, gen(0))]
        return rows + [_Rollout(list(prompt), len(prompt), 12, gen(s)) for s in range(1, 12)]

    seen, hook = _positions_seen(gpt)
    try:
        together = rain._serve(requests())
        alone = [rain._serve([r])[0] for r in requests()]
    finally:
        hook.remove()
    assert together == alone and len(together[0]) == 24
    assert max(seen) <= 23
    assert sorted(len(t) for t in together)[-3] > len(prompt) + 2  # others went on, two steps


def test_the_hidden_similarity_embeds_the_last_tokens_that_fit(gpt_dirs: dict[int, Path]) -> None:
    """``similarity=hidden`` re-encodes a path's text after the chat's prompt, and a text may
    take more tokens than the path it decodes from: past the context the model failed
    (IndexError). The path is cut to its last tokens that fit."""
    gpt = HFModel(str(gpt_dirs[24]), device="cpu")
    chat = [{"role": "user", "content": "hi"}]
    room = 24 - len(gpt.prompt_ids(chat))
    embed = Rain(gpt, similarity="hidden")._embedder(chat)
    assert embed is not None
    path = gpt.tokenizer.encode("abcdefghijklmnopqrstuvwxyz", add_special_tokens=False)
    assert len(path) > room
    seen, hook = _positions_seen(gpt)
    try:
        whole = embed(path)
    finally:
        hook.remove()
    assert max(seen) <= 23
    assert isinstance(whole, torch.Tensor) and torch.equal(whole, embed(path[-room:]))


def test_a_prompt_that_fills_the_context_is_refused_before_any_search(
    gpt_dirs: dict[int, Path],
) -> None:
    """As ``generate`` refuses it: a ContextLengthError naming the chat, not an IndexError."""
    from poise.models.context import ContextLengthError

    gpt = HFModel(str(gpt_dirs[24]), device="cpu")
    rain = Rain(gpt, max_searches=1)
    long = [{"role": "user", "content": "Hello there my good friend"}]
    assert len(gpt.prompt_ids(long)) >= 24
    with pytest.raises(ContextLengthError, match=r"rain\(.*\): chat 1: This model's maximum"):
        rain.generate([[{"role": "user", "content": "hi"}], long], Sampling(max_new_tokens=4))


def test_a_tokenizer_without_the_option_letters_is_refused_when_built(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """The self-evaluation compares the next-token scores of "A" and "B". A vocabulary without
    them reads the unknown token for both: every answer then scored -1 (harmful) in silence, and
    the search ran on that value."""
    import json
    import shutil

    folder = tmp_path / "no-letters"
    shutil.copytree(tiny_hf_model_dir, folder)
    path = folder / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["\u00c0"], vocab["\u00c1"] = vocab.pop("A"), vocab.pop("B")  # ids kept, letters gone
    path.write_text(json.dumps(tokenizer))
    with pytest.raises(PoiseError) as error:
        load_model(f"rain({folder})")
    text = str(error.value)
    assert "rain: the self-evaluation reads the next-token scores of the option letters" in text
    assert "the unknown token" in text
    # the tiny model's own vocabulary has them: built as before
    assert isinstance(load_model(f"rain({tiny_hf_model_dir})"), Rain)


def test_the_most_visited_child_wins_ties_by_value() -> None:
    """``nodes.py: node.get_max_n_action``: the most visits, and among children with as many,
    the highest value."""
    root = Node(None, 0.0)
    root.expand([((1,), 0.3), ((2,), 0.3), ((3,), 0.4)])
    for child, (n, q) in zip(
        root.children.values(), ((2.0, 0.1), (2.0, 0.7), (1.0, 0.9)), strict=True
    ):
        child.n, child.q = n, q
    best = root.best()
    assert best is not None and best[0] == (2,)


def test_a_nodes_embedding_is_the_mean_of_its_paths_embeddings() -> None:
    """``nodes.py: node.backup``: ``emb += (new - emb) / fn``, the running mean over its real
    visits."""
    vectors = iter([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 4.0])])
    root = Node(None, 0.0)
    root.expand([((1,), 1.0)])
    child = root.children[(1,)]
    for _ in range(3):
        child.backup(0.0, [1], lambda tokens: next(vectors))
    assert child.embedding is not None
    assert child.embedding.tolist() == pytest.approx([1 / 3, 5 / 3])


def _scripted_search(value: float) -> Any:
    """A stand-in for ``Rain._search``: each search backs ``value`` up from the node two sets
    below the root (token 5 each), so the root's child gets one real visit per search."""

    def search(root: Node, *args: Any) -> Iterator[Any]:
        node = root
        for _ in range(2):
            if not node.children:
                node.expand([((5,), 1.0)])
            node = node.children[(5,)]
        node.backup(value, [5, 5], None)
        yield from ()

    return search


def _run_answer(rain: Rain, budget: int) -> dict[str, int]:
    answer = rain._answer(
        [{"role": "user", "content": "hi"}], Sampling(max_new_tokens=budget), torch.Generator()
    )
    with pytest.raises(StopIteration) as done:
        next(answer)
    ids, _, counts = done.value.value
    assert ids == [5] * budget
    return counts


def test_a_root_stops_searching_once_its_best_child_has_more_than_min_visits(
    tiny: HFModel,
) -> None:
    """``main.py: gmeval``: stop once the most-visited child has ``fn > min_visits`` real visits
    and ``q > threshold``. Value 1 each search: the first root stops after 4 searches
    (``fn = 4 > 3``), the second after 1 (its best child arrives with 4 visits)."""
    rain = Rain(tiny, max_searches=50, min_visits=3, threshold=0.8)
    rain._search = _scripted_search(1.0)  # type: ignore[method-assign]
    assert _run_answer(rain, 2)["rain_searches"] == 5


def test_a_new_root_gets_extra_searches_beyond_the_visits_it_arrives_with(
    tiny: HFModel,
) -> None:
    """``main.py: gmeval``: a root searched ``max(maxT, fn_root + extra)`` times in all; the
    child committed after 3 searches arrives with 3 visits, so it gets 5 - 3 = 2 more."""
    rain = Rain(tiny, max_searches=3, extra_searches=2, min_visits=0, threshold=0.8)
    rain._search = _scripted_search(-1.0)  # type: ignore[method-assign]
    assert _run_answer(rain, 2)["rain_searches"] == 5


def test_an_unvisited_childs_scaled_value_is_0_not_the_middle_of_the_bounds() -> None:
    """``nodes.py: node.getqu``: ``qh`` is 0 for a child never visited, whatever the bounds (a
    value of 0 scaled by [-1, 1] would be 0.5). Root children a (prior 0.6, visited once at
    v = 0.2) and b (prior 0.4, unvisited): a scores (0.2 + 1) / (2 + 1e-5) + 2 * 0.6 * 1 / 2
    = 1.19999, b scores 0 + 2 * 0.4 * 1 / 1 = 0.8, so a is selected (b would score 1.3 with
    qh = 0.5)."""
    root = Node(None, 0.0)
    root.expand([((1,), 0.6), ((2,), 0.4)])
    a, b = root.children[(1,)], root.children[(2,)]
    a.backup(0.2, [1], None)
    assert a.score() == pytest.approx(1.2 / (2 + 1e-5) + 0.6)
    assert b.score() == pytest.approx(0.8)
    assert root.select()[0] == (1,)


def test_a_committed_childs_children_get_the_roots_mixed_priors(tiny: HFModel) -> None:
    """``main.py: gmeval``: the child committed becomes the root with its subtree, and its
    children's priors are mixed ``0.75 p + 0.25 / K`` again, as a root's are: priors 0.8 and
    0.2 below the first commit become 0.725 and 0.275 (0.75 * 0.8 + 0.125, 0.75 * 0.2 + 0.125)
    when their parent is the root."""
    rain = Rain(tiny, max_searches=50, min_visits=0, threshold=0.8)
    seen: list[list[float]] = []

    def search(root: Node, *args: Any) -> Iterator[Any]:
        seen.append([c.p for c in root.children.values()])
        node = root
        for sets in ([((5,), 1.0)], [((6,), 0.8), ((7,), 0.2)]):
            if not node.children:
                node.expand(sets)
            node = next(iter(node.children.values()))
        node.backup(1.0, [5, 6], None)
        yield from ()

    rain._search = search  # type: ignore[method-assign]
    answer = rain._answer(
        [{"role": "user", "content": "hi"}], Sampling(max_new_tokens=2), torch.Generator()
    )
    with pytest.raises(StopIteration) as done:
        next(answer)
    assert done.value.value[0] == [5, 6]
    assert seen[0] == [] and seen[1] == pytest.approx([0.725, 0.275])


def test_the_evaluation_prompt_asks_in_both_orders_and_ends_at_the_letter(tiny: HFModel) -> None:
    """``main.py: getv``: the question is put twice, (A) harmless then (A) harmful, and the
    prompt ends with "The answer is: (" so that the next token is the option's letter."""
    rain = Rain(tiny, max_searches=1)
    first, second = (
        tiny.tokenizer.decode(row, skip_special_tokens=True)
        for row in rain._evaluation_rows([("how do I bake bread?", "Mix flour.")])
    )
    for text, a, b in ((first, "harmless", "harmful"), (second, "harmful", "harmless")):
        assert "User: how do I bake bread?\nAssistant: Mix flour." in text
        assert f"(A) The assistant's answer is {a}.\n(B) The assistant's answer is {b}." in text
        assert text.endswith("The answer is: (")


def test_a_leaf_is_judged_with_its_simulated_clause_and_the_last_request(tiny: HFModel) -> None:
    """``main.py: search``: the leaf's answer is simulated to the end of a clause and that text
    is judged, against the chat's last user turn; a judgement that did not fit the context
    (None) backs up 0, an undecided value, not -1."""
    rain = Rain(tiny, similarity="none")
    chat = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "hi"},
    ]
    requests: list[str] = []

    def search(root: Node, prefix: list[int], start: int, budget: int, request: str, *_: Any):
        requests.append(request)
        if not root.children:
            root.expand([((5,), 1.0)])
        root.children[(5,)].backup(1.0, [5], None)
        yield from ()

    scripted = Rain(tiny, max_searches=1, extra_searches=1, similarity="none")
    scripted._search = search  # type: ignore[method-assign]
    with pytest.raises(StopIteration):
        next(scripted._answer(chat, Sampling(max_new_tokens=1), torch.Generator()))
    assert requests == ["hi"]

    prompt = tiny.prompt_ids(chat)
    root = Node(None, 0.0)
    eos = set(tiny.eos_token_ids)
    run = rain._search(root, list(prompt), len(prompt), 8, "hi", {}, None, torch.Generator(), eos)
    assert isinstance(next(run), _Rollout)
    clause = tiny.tokenizer.encode("Hello there,", add_special_tokens=False)
    judged = run.send([*prompt, *clause])
    assert isinstance(judged, _Evaluate)
    assert (judged.request, judged.answer) == ("hi", "Hello there,")
    assert isinstance(run.send(None), _Sets)
    with pytest.raises(StopIteration):
        run.send([((7,), 1.0)])
    assert (root.n, root.q) == (1, 0.0)


def test_a_leaf_that_ends_with_eos_is_judged_as_it_is_and_not_expanded(tiny: HFModel) -> None:
    """An answer that reached EOS has ended: it is judged without a simulation and gets no
    children (``main.py: search`` expands only a leaf whose answer goes on)."""
    rain = Rain(tiny, similarity="none")
    prompt = tiny.prompt_ids([{"role": "user", "content": "hi"}])
    stop = tiny.eos_token_ids[0]
    root = Node(None, 0.0)
    root.expand([((7, stop), 1.0)])
    run = rain._search(
        root, list(prompt), len(prompt), 8, "hi", {}, None, torch.Generator(), {stop}
    )
    judged = next(run)
    assert isinstance(judged, _Evaluate)
    assert judged.answer == tiny.tokenizer.decode([7], skip_special_tokens=True)
    with pytest.raises(StopIteration):
        run.send(1.0)
    leaf = root.children[(7, stop)]
    assert leaf.children == {} and (leaf.n, leaf.q) == (1, 1.0)


@pytest.mark.parametrize("end", [",", ".", "?", ":", ";", "\n"])
def test_a_simulation_ends_with_its_clause(tiny: HFModel, end: str) -> None:
    """``main.py: simg``: a simulated continuation ends where its text ends in , . ? : ; or a
    newline, and not before."""
    rain = Rain(tiny, max_searches=1)
    prompt = tiny.prompt_ids([{"role": "user", "content": "hi"}])
    for text, ended in ((f"Hello there{end}", True), ("Hello there", False)):
        state = [*prompt, *tiny.tokenizer.encode(text, add_special_tokens=False)]
        request = _Rollout(list(prompt), len(prompt), 100, torch.Generator())
        assert rain._rollout_ended(request, state) == ended, text


def test_a_simulation_stops_at_its_budget(tiny: HFModel) -> None:
    """A simulation never runs past the answer's token budget: with one token left each
    continuation is one token long, whatever it draws."""
    rain = Rain(tiny, max_searches=1)
    prompt = tiny.prompt_ids([{"role": "user", "content": "a b c"}])
    requests = [
        _Rollout(list(prompt), len(prompt), 1, torch.Generator().manual_seed(s)) for s in range(6)
    ]
    assert [len(state) - len(prompt) for state in rain._serve(requests)] == [1] * 6


def test_the_widening_threshold_grows_with_the_set_length() -> None:
    """``nodes.py: node.checkadd``: children look alike when their embeddings' variance has a
    norm below 0.03 times the set length. Embeddings [1, 0] and [1, 0.3]: variance [0, 0.045]
    (unbiased), so 2-token children with q < 0 are widened (0.045 < 0.06) and 1-token ones are
    not (0.045 > 0.03)."""
    for tokens, widened in (((1, 2), (3, 4)), True), (((1,), (3,)), False):
        root = Node(None, 0.0)
        root.expand([(tokens[0], 0.5), (tokens[1], 0.5)])
        a, b = root.children[tokens[0]], root.children[tokens[1]]
        a.embedding, b.embedding = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.3])
        a.q, b.q = -0.5, -0.2
        assert root.needs_widening() == widened, tokens


def test_sampled_decoding_commits_a_child_drawn_by_its_visits(tiny: HFModel) -> None:
    """At ``temperature > 0`` the committed child is drawn with probability proportional to
    ``n ** (1 / T)``: children of 3 and 1 visits at T = 1 are committed 3/4 and 1/4 of the
    time over seeds (greedy decoding always commits the first)."""

    def search(root: Node, *args: Any) -> Iterator[Any]:
        if not root.children:
            root.expand([((5,), 0.5), ((6,), 0.5)])
        visits = sum(c.fn for c in root.children.values())
        root.children[(6,) if visits == 3 else (5,)].backup(-1.0, [5], None)
        yield from ()

    rain = Rain(tiny, max_searches=4, extra_searches=1, min_visits=0)
    rain._search = search  # type: ignore[method-assign]
    chat = [{"role": "user", "content": "hi"}]

    def first_token(sampling: Sampling, seed: int) -> int:
        answer = rain._answer(chat, sampling, torch.Generator().manual_seed(seed))
        with pytest.raises(StopIteration) as done:
            next(answer)
        return int(done.value.value[0][0])

    sampled = [first_token(Sampling(temperature=1.0, max_new_tokens=1), s) for s in range(400)]
    assert sampled.count(6) / 400 == pytest.approx(0.25, abs=0.06)
    assert {first_token(Sampling(max_new_tokens=1), s) for s in range(5)} == {5}
