"""The token-level seam of the hf backend: prefill / step, the logits hook, streaming and the
continuous-batching engine."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import Chat, Completion, RowTokens, StepView, StreamEvent
from poise.models.hf import HFModel

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
GREEDY = Sampling(max_new_tokens=16)
SAMPLED = Sampling(temperature=1.0, max_new_tokens=16, seed=3)


@pytest.fixture(scope="module")
def model(tiny_hf_model_dir: Path) -> Iterator[HFModel]:
    hf = HFModel(str(tiny_hf_model_dir), device="cpu")
    eos = list(hf.eos_token_ids)
    yield hf
    hf.eos_token_ids = eos


@pytest.fixture
def early_eos(model: HFModel) -> Iterator[None]:
    """A third of the vocabulary ends a completion, so rows finish at different steps."""
    eos = list(model.eos_token_ids)
    model.eos_token_ids = sorted({*eos, *range(10, len(model.tokenizer), 3)})
    yield
    model.eos_token_ids = eos


def same(a: Completion, b: Completion) -> bool:
    """Equal completions; log-probs up to float noise (a row's floats may depend on how wide
    the batch's padding is, which differs between an engine and ``generate``)."""
    assert (a.text, a.num_tokens, a.finish_reason) == (b.text, b.num_tokens, b.finish_reason)
    assert a.token_logprobs is not None and b.token_logprobs is not None
    assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
    return True


def full_forward_logits(model: HFModel, ids: list[int]) -> torch.Tensor:
    """[vocab] the last position's logits of one unpadded sequence, no cache."""
    with torch.inference_mode():
        return model.model(torch.tensor([ids])).logits[0, -1].float()


# ----------------------------------------------------------------------------- prefill / step


def test_prefill_and_step_equal_a_full_forward(model: HFModel) -> None:
    prompts = model._encode_prompts(CHATS)
    state = model.prefill(CHATS, reserve=2)  # chats or token ids
    assert state.logits.shape == (len(CHATS), len(model.tokenizer))
    for row, prompt in enumerate(prompts):
        expected = full_forward_logits(model, prompt)
        assert torch.allclose(state.logits[row], expected, atol=1e-5)
    # more steps than reserved, so the cache grows
    fed: list[list[int]] = [list(p) for p in prompts]
    for _ in range(4):
        tokens = state.logits.argmax(dim=-1)
        for row, token in enumerate(tokens.tolist()):
            fed[row].append(token)
        state.step(tokens)
    for row, ids in enumerate(fed):
        assert torch.allclose(state.logits[row], full_forward_logits(model, ids), atol=1e-5)


def greedy_steps(state: Any, fed: list[list[int]], steps: int) -> None:
    """Feed each row its greedy token ``steps`` times, appending them to ``fed``."""
    for _ in range(steps):
        tokens = state.logits.argmax(dim=-1)
        for row, token in enumerate(tokens.tolist()):
            fed[row].append(token)
        state.step(tokens)


@pytest.mark.parametrize("in_one_copy", [False, True], ids=["keep-then-extend", "extend-keep"])
def test_keep_and_extend_merge_batches_at_a_step_boundary(
    model: HFModel, in_one_copy: bool
) -> None:
    prompts = model._encode_prompts(CHATS)
    state = model.prefill(prompts[:3])
    fed = [list(p) for p in prompts[:3]]
    greedy_steps(state, fed, 3)
    # the longest prompt leaves: the cache's all-padding columns are dropped
    longest = max(range(3), key=lambda r: len(prompts[r]))
    kept = [r for r in range(3) if r != longest]
    width = state.mask.size(1)
    # two new rows join; one of them longer than anything running
    newcomer = [*prompts[3:], prompts[3] + prompts[0]]
    if in_one_copy:  # the leaving row is dropped in the merge's copy of the cache
        state.extend(model.prefill(newcomer), keep=kept)
    else:
        state.keep(kept)
        assert state.mask.size(1) < width
        assert bool(state.mask[:, 0].any())
        state.extend(model.prefill(newcomer))
    fed = [fed[r] for r in kept]
    fed += [list(p) for p in newcomer]
    assert len(state) == len(fed)
    greedy_steps(state, fed, 3)
    for row, ids in enumerate(fed):
        assert torch.allclose(state.logits[row], full_forward_logits(model, ids), atol=1e-5)


def test_place_puts_new_rows_where_rows_left_without_touching_the_others(
    model: HFModel,
) -> None:
    """A row that left (retired, held) is replaced in place by a newcomer prefilled apart; the
    newcomer and the rows beside it decode on exactly; a state wider than the cache does not
    fit; after the longest row leaves, its columns are trimmed without a copy."""
    prompts = model._encode_prompts(CHATS)
    state = model.prefill(prompts[:3])
    fed = [list(p) for p in prompts[:3]]
    greedy_steps(state, fed, 3)
    shortest = min(range(3), key=lambda r: len(prompts[r]))
    state.retire([shortest])
    tokens = state.logits.argmax(dim=-1)
    state.step(tokens)  # the others decode on; the row that left is fed and held
    state.hold([shortest])
    others = [r for r in range(3) if r != shortest]
    for row in others:
        fed[row].append(int(tokens[row]))
    buffers = [layer.key_buffer for layer in state.cache.cache.layers]
    newcomer = model.prefill([prompts[3][:2]])
    assert state.fits(newcomer) and not state.fits(model.prefill([prompts[3] * 9]))
    state.place(newcomer, [shortest])
    # in place: the same buffers, so the other rows were not copied
    assert [layer.key_buffer for layer in state.cache.cache.layers] == buffers
    fed[shortest] = list(prompts[3][:2])
    greedy_steps(state, fed, 3)
    for row in [*others, shortest]:
        assert torch.allclose(state.logits[row], full_forward_logits(model, fed[row]), atol=1e-5)
    with pytest.raises(PoiseError, match="2 rows to place, 1 places"):
        state.place(model.prefill([prompts[0], prompts[1]]), [0])
    # the longest row leaves: once retired, its leading columns are padding everywhere
    longest = max(others, key=lambda r: len(fed[r]))
    width = state.mask.size(1)
    state.retire([longest])
    state.trim_padding()
    assert state.mask.size(1) < width


# ----------------------------------------------------------------------------- the logits hook


def test_hook_sees_every_live_row_each_step(model: HFModel, early_eos: None) -> None:
    sampling = SAMPLED.model_copy(update={"n": 2})
    views: list[tuple[list[int], list[int], list[list[int]]]] = []

    def hook(view: StepView) -> None:
        assert view.logits.shape == (len(view.rows), len(model.tokenizer))
        tokens = [t.tolist() for t in view.tokens]
        assert isinstance(view.tokens, RowTokens)  # the plain lists, without tensors, alike
        assert [view.tokens.ids(i) for i in range(len(view.tokens))] == tokens
        views.append((view.rows.tolist(), view.generated.tolist(), tokens))

    results = model.generate(CHATS, sampling, logits_hook=hook)
    completions = {c * 2 + s: results[c][s] for c in range(len(CHATS)) for s in range(2)}
    # each row is shown at every step until it ends: generated = 0, 1, ..., its last step
    seen: dict[int, list[int]] = defaultdict(list)
    for rows, generated, tokens in views:
        for row, count, so_far in zip(rows, generated, tokens, strict=True):
            seen[row].append(count)
            assert len(so_far) == count
            assert so_far == list(completions[row].token_ids or ())[:count]
    assert set(seen) == set(completions)
    for row, counts in seen.items():
        completion = completions[row]
        steps = completion.num_tokens + (completion.finish_reason == "stop")
        assert counts == list(range(steps))
    assert len({len(rows) for rows, _, _ in views}) > 1  # rows left the batch


def test_a_hook_returning_none_is_bit_identical(model: HFModel, early_eos: None) -> None:
    for sampling in (GREEDY, SAMPLED.model_copy(update={"n": 2, "top_p": 0.9})):
        plain = model.generate(CHATS, sampling)
        hooked = model.generate(CHATS, sampling, logits_hook=lambda view: None)
        assert hooked == plain


def test_a_hook_that_bans_a_token_removes_it(model: HFModel) -> None:
    plain = model.generate(CHATS, GREEDY)
    text = "".join(c.text for row in plain for c in row)
    banned_char = max(set(text) - {" "}, key=text.count)
    banned = model.tokenizer.convert_tokens_to_ids(banned_char)

    def ban(view: StepView) -> torch.Tensor:
        logits = view.logits.clone()
        logits[:, banned] = float("-inf")
        return logits

    hooked = model.generate(CHATS, SAMPLED.model_copy(update={"n": 2}), logits_hook=ban)
    greedy = model.generate(CHATS, GREEDY, logits_hook=ban)
    for rows in (hooked, greedy):
        assert all(banned_char not in c.text for row in rows for c in row)
    assert greedy != plain


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_a_logit_temperature_hook_equals_sampling_at_that_temperature(
    model: HFModel, temperature: float
) -> None:
    hot = SAMPLED.model_copy(update={"temperature": temperature, "n": 2})
    expected = model.generate(CHATS, hot)

    def scale(view: StepView) -> torch.Tensor:
        return view.logits / temperature

    hooked = model.generate(CHATS, SAMPLED.model_copy(update={"n": 2}), logits_hook=scale)
    assert [[(c.text, c.num_tokens) for c in row] for row in hooked] == [
        [(c.text, c.num_tokens) for c in row] for row in expected
    ]


# ----------------------------------------------------------------------------- streaming


def joined(events: list[StreamEvent]) -> dict[tuple[Hashable, int], tuple[str, Completion]]:
    texts: dict[tuple[Hashable, int], str] = defaultdict(str)
    final: dict[tuple[Hashable, int], Completion] = {}
    for event in events:
        key = (event.key, event.sample_index)
        assert key not in final, "an event after the row's last one"
        texts[key] += event.text
        if event.completion is not None:
            final[key] = event.completion
    assert set(texts) == set(final)
    return {key: (texts[key], final[key]) for key in final}


@pytest.mark.parametrize(
    "sampling",
    [
        GREEDY.model_copy(update={"max_new_tokens": 24}),
        SAMPLED.model_copy(update={"n": 3, "max_new_tokens": 24}),
    ],
)
def test_stream_texts_join_to_generate_texts(model: HFModel, sampling: Sampling) -> None:
    plain = model.generate(CHATS, sampling)
    # stop strings taken from the outputs, so some rows do stop
    stops = tuple({c.text[5:7] for row in plain for c in row if len(c.text) > 8})[:3]
    for current in (sampling, sampling.model_copy(update={"stop": stops})):
        expected = model.generate(CHATS, current)
        events = list(model.stream(CHATS, current))
        rows = joined(events)
        assert len(rows) == len(CHATS) * current.n
        for (chat, sample), (text, completion) in rows.items():
            assert completion == expected[int(chat)][sample]  # type: ignore[call-overload]
            assert text == completion.text
        # text arrives while decoding, not only at the end
        assert sum(bool(e.text) and e.completion is None for e in events) > len(CHATS)
    assert any(c.finish_reason == "stop" for row in expected for c in row)


def test_stream_with_a_hook_equals_generate_with_it(model: HFModel) -> None:
    def cool(view: StepView) -> torch.Tensor:
        return view.logits * 2.0

    sampling = SAMPLED.model_copy(update={"n": 2})
    expected = model.generate(CHATS, sampling, logits_hook=cool)
    rows = joined(list(model.stream(CHATS, sampling, logits_hook=cool)))
    for (chat, sample), (text, completion) in rows.items():
        assert completion == expected[int(chat)][sample]  # type: ignore[call-overload]
        assert text == completion.text
    assert expected != model.generate(CHATS, sampling)


def test_stream_holds_back_a_possible_stop_string(model: HFModel) -> None:
    [[full]] = model.generate(CHATS[3:4], Sampling(max_new_tokens=24))
    stop = full.text[10:13]
    sampling = Sampling(max_new_tokens=24, stop=(stop,))
    events = list(model.stream(CHATS[3:4], sampling))
    assert "".join(e.text for e in events) == full.text[: full.text.find(stop)]
    for event in events:
        assert stop not in event.text


# ----------------------------------------------------------------------------- the engine


def run_engine(
    engine: object, schedule: dict[int, list[tuple[str, Chat, Sampling]]], steps: int = 200
) -> dict[tuple[Hashable, int], tuple[str, Completion]]:
    """Step an engine, adding requests at the given steps, until it is idle."""
    events: list[StreamEvent] = []
    for step in range(steps):
        for key, chat, sampling in schedule.get(step, []):
            engine.add(key, chat, sampling)  # type: ignore[attr-defined]
        events += engine.step()  # type: ignore[attr-defined]
        if engine.idle and step >= max(schedule):  # type: ignore[attr-defined]
            break
    assert engine.idle  # type: ignore[attr-defined]
    return joined(events)


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED.model_copy(update={"n": 2})])
def test_engine_rows_added_mid_batch_get_generate_completions(
    model: HFModel, sampling: Sampling
) -> None:
    expected = model.generate(CHATS, sampling)
    schedule = {0: [("a", CHATS[0], sampling), ("b", CHATS[1], sampling)]}
    schedule[3] = [("c", CHATS[2], sampling)]
    schedule[5] = [("d", CHATS[3], sampling), ("e", CHATS[4], sampling)]
    rows = run_engine(model.engine(), schedule)
    assert len(rows) == len(CHATS) * sampling.n
    for (key, sample), (text, completion) in rows.items():
        assert same(completion, expected["abcde".index(str(key))][sample])
        assert text == completion.text


def test_engine_rows_wait_for_capacity(model: HFModel) -> None:
    expected = model.generate(CHATS, SAMPLED)
    engine = model.engine(capacity=2)
    rows = run_engine(engine, {0: [(str(i), chat, SAMPLED) for i, chat in enumerate(CHATS)]})
    assert len(rows) == len(CHATS)
    for (key, _), (_, completion) in rows.items():
        assert same(completion, expected[int(str(key))][0])


def test_engine_per_row_samplings(model: HFModel, early_eos: None) -> None:
    samplings = [
        GREEDY,
        SAMPLED,
        SAMPLED.model_copy(update={"temperature": 0.7, "top_k": 5, "seed": 11}),
        SAMPLED.model_copy(update={"top_p": 0.8, "max_new_tokens": 6, "n": 2}),
        GREEDY.model_copy(update={"stop": ("e",), "max_new_tokens": 30}),
    ]
    schedule = {0: [(str(i), CHATS[i], s) for i, s in enumerate(samplings[:3])]}
    schedule[2] = [(str(i), CHATS[i], s) for i, s in enumerate(samplings) if i >= 3]
    rows = run_engine(model.engine(), schedule)
    for i, sampling in enumerate(samplings):
        [expected] = model.generate([CHATS[i]], sampling)
        for sample in range(sampling.n):
            text, completion = rows[(str(i), sample)]
            assert same(completion, expected[sample])
            assert text == completion.text


def test_engine_random_arrivals_match_generate(model: HFModel, early_eos: None) -> None:
    import random

    rng = random.Random(0)
    samplings = [
        GREEDY,
        SAMPLED.model_copy(update={"seed": 5, "n": 2}),
        SAMPLED.model_copy(update={"top_k": 7, "max_new_tokens": 9}),
    ]
    schedule: dict[int, list[tuple[str, Chat, Sampling]]] = defaultdict(list)
    requests = {}
    for i in range(12):
        chat, sampling = rng.choice(CHATS), rng.choice(samplings)
        requests[str(i)] = (chat, sampling)
        schedule[rng.randrange(12)].append((str(i), chat, sampling))
    rows = run_engine(model.engine(capacity=4), dict(schedule))
    assert len(rows) == sum(s.n for _, s in requests.values())
    for (key, sample), (text, completion) in rows.items():
        chat, sampling = requests[str(key)]
        [expected] = model.generate([chat], sampling)
        assert same(completion, expected[sample])
        assert text == completion.text


def test_engine_cancel_drops_a_request(model: HFModel) -> None:
    long = GREEDY.model_copy(update={"max_new_tokens": 12})
    engine = model.engine()
    for i, chat in enumerate(CHATS[:3]):
        engine.add(str(i), chat, long)
    engine.add("waiting-never-runs", CHATS[3], long)
    engine.cancel("waiting-never-runs")
    events = engine.step() + engine.step()
    engine.cancel("1")
    engine.cancel("unknown")  # ignored
    while not engine.idle:
        events += engine.step()
    later = joined([e for e in events if e.key != "1"])
    assert set(later) == {("0", 0), ("2", 0)}
    assert not any(e.key == "waiting-never-runs" for e in events)
    assert all(e.completion is None for e in events if e.key == "1")
    expected = model.generate(CHATS[:3], long)
    assert same(later[("2", 0)][1], expected[2][0])
    # a cancelled key may be used again
    engine.add("1", CHATS[1], long)
    rest = joined([e for _ in range(20) for e in engine.step()])
    assert same(rest[("1", 0)][1], expected[1][0])
    assert engine.idle


def test_engine_refuses_a_running_key(model: HFModel) -> None:
    from poise.errors import PoiseError

    engine = model.engine()
    engine.add("x", CHATS[0], GREEDY)
    with pytest.raises(PoiseError, match="already running"):
        engine.add("x", CHATS[1], GREEDY)


def test_capabilities_are_declared(model: HFModel) -> None:
    caps = model.capabilities
    assert (caps.score, caps.stream, caps.step, caps.engine) == (True, True, True, True)


# ----------------------------------------------------------------------------- helpers


def test_held_back_text_covers_partial_characters_stop_prefixes_and_spaces() -> None:
    from poise.models.decode import _held_back

    assert _held_back("caf\ufffd", ()) == 1  # an incomplete UTF-8 character
    assert _held_back("Hello wor", ("world!",)) == 4  # could still become the stop string (+ space)
    assert _held_back("Hello wor", ("xyz",)) == 0
    assert _held_back("Hello \n", ()) == 2  # whitespace may be cleaned up by the next token
    assert _held_back("Hello", ("lo",)) == 0  # a whole stop string has already ended the row


def test_prefill_groups_bound_the_padding() -> None:
    from poise.models.decode import PREFILL_FREE_PADDING, PREFILL_WASTE, prefill_groups

    lengths = [5, 100, 98, 7, 60, 6, 97, 59, 99]
    groups = prefill_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        width = max(lengths[i] for i in group)
        real = sum(lengths[i] for i in group)
        assert width * len(group) * (1 - PREFILL_WASTE) <= real or (
            width * len(group) - real <= PREFILL_FREE_PADDING
        )
    assert groups == [[1, 8, 2, 6, 4], [7, 3], [5, 0]]  # longest first, greedily
    # long prompts: padding over 1/32 of a group splits it
    assert prefill_groups([400, 300, 200]) == [[0], [1], [2]]
    assert prefill_groups([10] * 7) == [list(range(7))]


def test_engine_request_not_streamed_gets_only_its_final_event(model: HFModel) -> None:
    """``stream=False``: no text events while decoding, and the final event carries the whole
    text, equal to generate's (the server hands non-streamed requests their answer this way)."""
    sampling = Sampling(max_new_tokens=10)
    chats = CHATS[:3]
    expected = model.generate(chats, sampling)
    engine = model.engine()
    for index, chat in enumerate(chats):
        engine.add(index, chat, sampling, stream=index != 1)
    events = []
    while not engine.idle:
        events += engine.step()
    quiet = [e for e in events if e.key == 1]
    assert len(quiet) == 1 and quiet[0].completion is not None
    assert quiet[0].text == quiet[0].completion.text == expected[1][0].text
    for key in (0, 2):
        mine = [e for e in events if e.key == key]
        assert "".join(e.text for e in mine) == expected[key][0].text


def test_attention_spans_skip_each_chunks_padding() -> None:
    from poise.models.decode import ATTENTION_ROWS, attention_spans

    # 40 rows, longest first: row r has 8 + (39 - r) * 3 real columns of 125
    width = 125
    real = [8 + (39 - r) * 3 for r in range(40)]
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in real])
    spans = attention_spans(mask)
    assert spans is not None
    assert [(a, b) for a, b, _ in spans] == [(0, 16), (16, 32), (32, 40)]
    for first, end, start in spans:
        assert start % 16 == 0  # aligned: the kernel sums in the same order
        assert start <= min(width - n for n in real[first:end])  # never drops a live column
    assert attention_spans(torch.ones(40, width, dtype=torch.long)) is None  # nothing to skip
    assert attention_spans(mask[: 2 * ATTENTION_ROWS - 1]) is None  # too few rows


def test_span_attention_is_bit_identical(model: HFModel) -> None:
    """Decode steps attending per chunk of rows give the same bits as over the whole width."""
    from poise.models.decode import attention_spans

    prompts = [[5 + (i * 7 + j) % 40 for j in range(4 + 2 * i)] for i in range(40)][::-1]
    spanned, whole = model.prefill(prompts, reserve=8), model.prefill(prompts, reserve=8)
    whole.cache.spans = False
    assert spanned.cache.spans  # sdpa on a plain cache
    assert attention_spans(spanned.mask) is not None
    for _ in range(6):
        tokens = spanned.logits.argmax(dim=-1)
        assert torch.equal(spanned.logits, whole.logits)
        spanned.step(tokens)
        whole.step(tokens)
    assert torch.equal(spanned.logits, whole.logits)


# ----------------------------------------------------------------------------- feed / rewind


def test_attention_spans_start_at_each_rows_first_token_despite_masked_columns() -> None:
    """A rewound row has masked columns after its first token: the span of its chunk must
    start at its first real column, not at (width - real tokens)."""
    from poise.models.decode import attention_spans

    width = 125
    real = [8 + (39 - r) * 3 for r in range(40)]
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in real])
    mask[:16, -60:-20] = 0  # the first chunk's rows forgot 40 tokens in the middle
    spans = attention_spans(mask)
    assert spans is not None
    first_real = [width - n for n in real]
    for first, end, start in spans:
        assert start <= min(first_real[first:end])


def test_feed_equals_steps_and_rewind_forgets_each_rows_own_tokens(model: HFModel) -> None:
    """``feed`` gives the logits after every fed token (as a full forward); ``rewind`` with a
    different count per row leaves each row as if it had been fed only what it keeps: the next
    steps' logits equal a full forward of the kept sequence, also through span attention."""
    from poise.models.decode import attention_spans

    # 40 rows longest first, so that decode steps attend per chunk of rows (span attention)
    prompts = [[5 + (i * 7 + j) % 40 for j in range(4 + 2 * i)] for i in range(40)][::-1]
    state = model.prefill(prompts, reserve=4)
    fed = [list(p) for p in prompts]
    tokens = torch.tensor([[10 + (r + j) % 50 for j in range(4)] for r in range(40)])
    logits = state.feed(tokens)  # [rows, 4, vocab]
    assert logits.shape == (40, 4, len(model.tokenizer))
    for row in (0, 17, 39):
        for j in range(4):
            expected = full_forward_logits(model, fed[row] + tokens[row, : j + 1].tolist())
            assert torch.allclose(logits[row, j], expected, atol=1e-5)
    drop = torch.tensor([r % 5 for r in range(40)])  # forget 0..4 of the 4 fed tokens
    kept = (4 - drop).tolist()
    width = state.mask.size(1)
    # the logits after each row's last kept token (a row keeping none: any, the step overwrites)
    last = logits[torch.arange(40), (3 - drop).clamp(min=0)]
    state.rewind(drop, last)
    assert state.mask.size(1) == width  # some row kept all 4: no column is cut
    for row in range(40):
        fed[row] += tokens[row, : kept[row]].tolist()
    assert attention_spans(state.mask) is not None
    for _ in range(3):
        step = torch.tensor([20 + r % 30 for r in range(40)])
        for row, token in enumerate(step.tolist()):
            fed[row].append(token)
        state.step(step)
    for row in (0, 4, 13, 22, 39):  # drop 0, 4, 3, 2, 4
        assert torch.allclose(state.logits[row], full_forward_logits(model, fed[row]), atol=1e-5)
    # a rewind that every row shares cuts the columns from the cache
    width = state.mask.size(1)
    more = state.feed(torch.full((40, 2), 30))
    state.rewind(torch.full((40,), 2), more[:, 0] * 0)
    assert state.mask.size(1) == width and state.cache.width == width
    state.step(torch.full((40,), 31))
    for row in (1, 38):
        expected = full_forward_logits(model, [*fed[row], 31])
        assert torch.allclose(state.logits[row], expected, atol=1e-5)


def test_rows_with_one_prompt_share_its_prefill(
    model: HFModel, early_eos: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The n samples of a chat (and chats with the same prompt) are prefilled once and the
    cache copied to each row; every row still decodes from its own copy: its log-probs equal a
    teacher-forced forward of its own tokens."""
    seen: list[tuple[int, ...]] = []
    prefill = model.prefill

    def counting(prompts: list[list[int]], **options: object) -> object:
        seen.extend(tuple(p) for p in prompts)
        return prefill(prompts, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "prefill", counting)
    chats = [CHATS[0], CHATS[2], CHATS[0]]
    results = model.generate(chats, Sampling(temperature=1.0, max_new_tokens=12, n=4, seed=5))
    prompts = [tuple(model.prompt_ids(chat)) for chat in chats]
    assert sorted(seen) == sorted(set(prompts))  # two distinct prompts, each prefilled once
    monkeypatch.undo()
    for chat, completions in zip(chats, results, strict=True):
        assert len({c.text for c in completions}) > 1  # the copies sample apart
        scored = model.score([chat] * len(completions), [c.text for c in completions])
        for completion, score in zip(completions, scored, strict=True):
            assert completion.token_logprobs is not None
            n = len(score.logprobs)
            assert completion.token_logprobs[:n] == pytest.approx(score.logprobs, abs=1e-4)


def test_append_feeds_each_row_its_own_tokens(model: HFModel) -> None:
    """``append`` feeds rows different numbers of tokens in one forward pass: each row's
    logits, then and after further steps, equal a full forward of its own sequence."""
    prompts = [[5 + (i * 3 + j) % 30 for j in range(3 + 4 * i)] for i in range(4)]
    state = model.prefill(prompts)
    new = [[7], [8, 9, 10, 11, 12], [13, 14], [15, 16, 17]]
    state.append(new)
    fed = [p + n for p, n in zip(prompts, new, strict=True)]
    for _ in range(2):
        for row in range(4):
            assert torch.allclose(
                state.logits[row], full_forward_logits(model, fed[row]), atol=1e-5
            )
        step = torch.tensor([20, 21, 22, 23])
        state.step(step)
        fed = [[*f, int(t)] for f, t in zip(fed, step, strict=True)]
    with pytest.raises(Exception, match="non-empty"):
        state.append([[1], [], [2], [3]])


def test_compact_and_gather_copy_rows_and_leave_the_originals(model: HFModel) -> None:
    """``compact`` keeps each chosen row's real columns only (no padding, no masked ones),
    right-aligned; ``gather`` copies rows of several states into one, in any order: each
    copied row decodes as a full forward of its tokens, and the originals decode on as if
    nothing had been copied."""
    from poise.models.decode import DecodeState

    prompts = [[5 + (i * 5 + j) % 30 for j in range(4 + 5 * i)] for i in range(3)]
    state = model.prefill(prompts)
    state.append([[7, 8, 9], [10], [11, 12]])  # rows 0 and 2 get masked padding columns
    fed = [p + n for p, n in zip(prompts, [[7, 8, 9], [10], [11, 12]], strict=True)]
    compact = state.compact([2, 0])
    assert compact.mask.size(1) == len(fed[2])  # the longest row, with no column to spare
    assert compact.mask.sum(dim=-1).tolist() == [len(fed[2]), len(fed[0])]
    assert compact.mask[1, : len(fed[2]) - len(fed[0])].sum() == 0  # left padding only
    other = model.prefill([[9, 9, 9]])
    gathered = DecodeState.gather([(compact, 0), (other, 0), (compact, 1), (compact, 0)])
    tokens = [fed[2], [9, 9, 9], fed[0], fed[2]]
    gathered.step(torch.tensor([40, 41, 42, 43]))
    for row, (sequence, token) in enumerate(zip(tokens, [40, 41, 42, 43], strict=True)):
        expected = full_forward_logits(model, [*sequence, token])
        assert torch.allclose(gathered.logits[row], expected, atol=1e-5)
    # a gathered row cut back by rewind, then fed again
    gathered.rewind(torch.tensor([3, 1, 1, 1]), gathered.logits)
    gathered.append([[44], [45], [46, 47], [48]])
    assert torch.allclose(
        gathered.logits[0], full_forward_logits(model, [*fed[2][:-2], 44]), atol=1e-5
    )
    assert torch.allclose(
        gathered.logits[2], full_forward_logits(model, [*fed[0], 46, 47]), atol=1e-5
    )
    state.step(torch.tensor([50, 51, 52]))  # the original, after its copies were stepped
    for row, token in enumerate([50, 51, 52]):
        expected = full_forward_logits(model, [*fed[row], token])
        assert torch.allclose(state.logits[row], expected, atol=1e-5)


def test_prefix_cache_continues_each_key_from_its_last_row(model: HFModel) -> None:
    """Rows under a key start from that key's last row cut back to their common prefix (a
    longer row, a shorter one, the same row, one that shares nothing), mixed with rows without
    a key: every row's logits, and the steps after, equal a full forward of the row alone, in
    the order given; only the tokens after the common prefixes run through the model."""
    from poise.models.decode import PrefixCache

    cache = PrefixCache(model)
    base = [[5 + (i * 7 + j) % 40 for j in range(12 + 3 * i)] for i in range(3)]
    first = cache.prefill(base, ["a", "b", "c"])
    for row in range(3):
        assert torch.allclose(first.logits[row], full_forward_logits(model, base[row]), atol=1e-5)
    assert (cache.reused, cache.fed, len(cache)) == (0, sum(map(len, base)), 3)
    rows = [
        [99, *base[1][1:]],  # key "c"'s entry (base[2]) shares nothing with it: prefilled whole
        base[0] + [41, 42, 43],  # "a": the entry plus three tokens
        [*base[1][:6], 44, 45],  # "b": cut back to 6 tokens, then two others
        base[2],  # "c" again: the same row (its last token is fed again)
        [6, 7, 8, 9],  # no key
    ]
    keys = ["c", "a", "b", "c", None]
    state = cache.prefill(rows, keys)
    assert cache.reused == len(base[0]) + 6 + len(base[2]) - 1
    assert cache.fed == sum(map(len, base)) + len(rows[0]) + 3 + 2 + 1 + 4
    fed = [list(r) for r in rows]
    for _ in range(3):
        for row in range(len(rows)):
            expected = full_forward_logits(model, fed[row])
            assert torch.allclose(state.logits[row], expected, atol=1e-5), row
        step = torch.tensor([30 + r for r in range(len(rows))])
        state.step(step)
        fed = [[*f, int(t)] for f, t in zip(fed, step, strict=True)]
    # each key's entry is now its first row of the last call: "c" the row that shared nothing
    reused = cache.reused
    again = cache.prefill([[*rows[0], 50]], ["c"])
    assert torch.allclose(again.logits[0], full_forward_logits(model, [*rows[0], 50]), atol=1e-5)
    assert cache.reused - reused == len(rows[0])  # continued from that row, not from base[2]
    cache.forget("c")
    assert len(cache) == 2


def test_cut_at_stop_cuts_at_the_earliest_stop_string_whichever_is_listed_first() -> None:
    from poise.models.decode import cut_at_stop

    # the OpenAI API's rule: the text ends where the first stop sequence begins
    assert cut_at_stop("a END b STOP c", ["STOP", "END"]) == ("a ", True)
    assert cut_at_stop("a STOP b END c", ["END", "STOP"]) == ("a ", True)
    assert cut_at_stop("a b", ["END", ""]) == ("a b", False)


def test_the_stop_window_sees_a_stop_string_of_multi_byte_characters() -> None:
    """A byte-level BPE without merges (the 256 pieces of GPT-2's byte alphabet) spends one
    token per UTF-8 byte, so "é" is two tokens and "🙂" four: decoding the last
    ``stop_window`` tokens after the stop string's last token must still show it whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from poise.models.decode import stop_window

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {piece: i for i, piece in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    for stop in ("é", "🙂", "fin.", "«é»"):
        ids = tokenizer.encode(f"and then {stop}", add_special_tokens=False)
        assert len(ids) == len(f"and then {stop}".encode())  # one token per byte
        tail = tokenizer.decode(ids[-stop_window([stop]) :])
        assert stop in tail, (stop, tail)


def test_log_probs_cover_the_counted_tokens_and_the_ids_add_the_eos(
    model: HFModel, early_eos: None
) -> None:
    """A completion ended by EOS counts its tokens without the EOS: one log-prob per counted
    token (the EOS's is not one of them), while ``token_ids`` end with the EOS itself."""
    eos = set(model.eos_token_ids)
    ended = 0
    for completion in [c for row in model.generate(CHATS, SAMPLED) for c in row]:
        assert completion.token_logprobs is not None and completion.token_ids is not None
        assert len(completion.token_logprobs) == completion.num_tokens
        if completion.token_ids[-1] in eos:
            ended += 1
            assert completion.finish_reason == "stop"
            assert len(completion.token_ids) == completion.num_tokens + 1
        else:
            assert len(completion.token_ids) == completion.num_tokens
    assert ended  # the early EOS ended some


def test_the_engine_takes_a_request_that_just_fits_the_context_and_reuses_a_finished_key(
    model: HFModel,
) -> None:
    """A prompt plus max_new_tokens of exactly the context is accepted (one token more is
    refused); once a request's completion has come, its key may be used again."""
    from poise.models.context import ContextLengthError

    near: Chat = [{"role": "user", "content": "a b " * 150 + "c" * 30}]
    assert model.context_length is not None
    room = model.context_length - len(model.prompt_ids(near))
    engine = model.engine()
    with pytest.raises(ContextLengthError):
        engine.add("near", near, GREEDY.model_copy(update={"max_new_tokens": room + 1}))
    engine.add("near", near, GREEDY.model_copy(update={"max_new_tokens": room}))
    events = [e for _ in range(room + 2) for e in engine.step()]
    assert engine.idle
    [(text, completion)] = joined(events).values()
    assert completion.num_tokens <= room and text == completion.text
    engine.add("near", CHATS[1], GREEDY)  # finished: no longer running
    again = joined([e for _ in range(GREEDY.max_new_tokens + 1) for e in engine.step()])
    assert same(again[("near", 0)][1], model.generate([CHATS[1]], GREEDY)[0][0])


def test_a_long_stop_string_ends_the_row_beside_a_short_one(model: HFModel) -> None:
    """Each step looks for the stop strings in the last tokens: enough of them for the longest
    stop string, not the shortest, or a long one is seen only once the row has run to its
    length (its text cut, but every token after it generated and counted)."""
    long = GREEDY.model_copy(update={"max_new_tokens": 40})
    [[free]] = model.generate([CHATS[3]], long)
    stop = free.text[6:30]  # many tokens of the greedy answer, well before its end
    assert len(model.tokenizer.encode(stop, add_special_tokens=False)) > 1 + 4
    [[alone]] = model.generate([CHATS[3]], long.model_copy(update={"stop": (stop,)}))
    beside = long.model_copy(update={"stop": ("\u00a7", stop)})
    [[both]] = model.generate([CHATS[3]], beside)
    assert alone.text == both.text == free.text[: free.text.index(stop)]
    assert both.finish_reason == "stop" and both.num_tokens == alone.num_tokens < 40


def test_prefix_cache_reuses_only_the_tokens_before_the_first_difference(model: HFModel) -> None:
    """A row that differs from its key's entry in one token in the middle (and matches it after)
    continues from the tokens before that one only: its logits are those of the row itself."""
    from poise.models.decode import PrefixCache

    cache = PrefixCache(model)
    entry = [5 + (j * 7) % 40 for j in range(16)]
    cache.prefill([entry], ["k"])
    changed = [*entry[:5], 99, *entry[6:]]
    state = cache.prefill([changed], ["k"])
    assert cache.reused == 5
    assert torch.allclose(state.logits[0], full_forward_logits(model, changed), atol=1e-5)


def test_a_hook_returning_logits_of_another_shape_is_refused(model: HFModel) -> None:
    def narrower(view: StepView) -> torch.Tensor:
        return view.logits[:, :-1]

    with pytest.raises(PoiseError, match=r"logits hook returned shape \(2, \d+\), expected"):
        model.generate(CHATS[:2], GREEDY, logits_hook=narrower)


def test_a_stop_string_at_the_start_of_the_answer_leaves_it_empty(model: HFModel) -> None:
    [[free]] = model.generate([CHATS[3]], GREEDY)
    stop = free.text[:3]
    [[stopped]] = model.generate([CHATS[3]], GREEDY.model_copy(update={"stop": (stop,)}))
    assert (stopped.text, stopped.finish_reason) == ("", "stop")
