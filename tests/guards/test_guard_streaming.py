"""The streaming guard: incremental scores equal teacher forcing, delay-k stops where it
should, and generate / stream / engine agree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from poise.config import Sampling
from poise.errors import PoiseError
from poise.guards.calibrate import delay_k_stop
from poise.guards.monitor import load_monitor
from poise.guards.streaming import DEFAULT_REFUSAL, Guarded, MonitorWatch
from poise.models import load_model
from poise.models.hf import HFModel

CHATS = [
    [{"role": "user", "content": "the cat"}],
    [{"role": "user", "content": "where is the dog in the house today"}],
    [{"role": "user", "content": "say hi"}],
    [{"role": "user", "content": "a"}],
    [{"role": "user", "content": "the the the"}],
]
SAMPLING = Sampling(temperature=1.0, max_new_tokens=12, seed=3, n=2)


@pytest.fixture(scope="module")
def inner(tiny_hf_model_dir: Path) -> HFModel:
    # 3 rows per batch for 10 rows: rows join the batch (and the monitor) as others finish
    return HFModel(str(tiny_hf_model_dir), device="cpu", batch_size=3)


def test_incremental_scores_equal_teacher_forcing(inner: HFModel, monitor_dir: Path) -> None:
    monitor = load_monitor(str(monitor_dir))
    prompts = [inner.prompt_ids(c) for c in CHATS]
    watch = MonitorWatch(
        monitor, lambda row: prompts[row // 2], threshold=2.0, k=1, keep_scores=True
    )
    results = inner.generate(CHATS, SAMPLING, logits_hook=watch)
    assert watch.scores is not None
    for c, completions in enumerate(results):
        for s, completion in enumerate(completions):
            ids = list(completion.token_ids or ())[: completion.num_tokens]
            expected = monitor.response_scores([prompts[c]], [ids])[0]
            got = watch.scores[c * 2 + s]
            # an answer cut by length has its last token unscored
            assert len(got) == len(ids) - (completion.finish_reason == "length")
            assert got == pytest.approx(expected[: len(got)], abs=1e-5)


@pytest.fixture(scope="module")
def threshold(inner: HFModel, monitor_dir: Path) -> float:
    """A threshold inside the range of the scores the answers get, so some rows stop."""
    monitor = load_monitor(str(monitor_dir))
    results = inner.generate(CHATS, SAMPLING)
    flat = [(c, comp) for c, row in enumerate(results) for comp in row]
    per_row = monitor.response_scores(
        [inner.prompt_ids(CHATS[c]) for c, _ in flat],
        [list(comp.token_ids or ())[: comp.num_tokens] for _, comp in flat],
    )
    scores = sorted(s for row in per_row for s in row)
    # midway across the widest gap between neighbouring scores around the 80th percentile, so
    # no score sits on the threshold (a score equal to it would flag or not with the rounding
    # of a batched forward, which differs between generate, stream and engine)
    low, high = int(0.7 * len(scores)), int(0.9 * len(scores))
    i = max(range(low, high), key=lambda j: scores[j + 1] - scores[j])
    assert scores[i + 1] - scores[i] > 1e-4
    return (scores[i] + scores[i + 1]) / 2


def _guarded_and_scored(
    inner: HFModel, monitor_dir: Path, threshold: float
) -> tuple[list[list[Any]], list[list[Any]], list[list[float]]]:
    """The unguarded answers to CHATS, the answers of a delay-2 guard at ``threshold``, and the
    monitor's teacher-forced scores of each unguarded answer's tokens (chat-major, sample-minor)."""
    guarded = Guarded(inner, monitor=str(monitor_dir), threshold=threshold, k=2)
    plain = inner.generate(CHATS, SAMPLING)
    got = guarded.generate(CHATS, SAMPLING)
    monitor = load_monitor(str(monitor_dir))
    flat = [(c, b) for c, row in enumerate(plain) for b in row]
    all_scores = monitor.response_scores(
        [inner.prompt_ids(CHATS[c]) for c, _ in flat],
        [list(b.token_ids or ())[: b.num_tokens] for _, b in flat],
    )
    return plain, got, all_scores


def test_delay_k_stops_where_the_rule_says(
    inner: HFModel, monitor_dir: Path, threshold: float
) -> None:
    plain, got, all_scores = _guarded_and_scored(inner, monitor_dir, threshold)
    stopped = 0
    for c, (before, after) in enumerate(zip(plain, got, strict=True)):
        for s, (b, a) in enumerate(zip(before, after, strict=True)):
            ids = list(b.token_ids or ())[: b.num_tokens]
            scores = all_scores[c * 2 + s]
            if b.finish_reason == "length":
                scores = scores[:-1]
            stop = delay_k_stop(scores, threshold, 2)
            record = a.metadata["guard"]  # type: ignore[index]
            assert record["unguarded_tokens"] == b.num_tokens
            if stop is None:
                assert a.text == b.text and a.finish_reason == b.finish_reason
                assert record["stopped"] is False
                continue
            stopped += 1
            assert a.finish_reason == "guard" and a.num_tokens == stop
            assert a.text.endswith(DEFAULT_REFUSAL)
            assert record["shown_tokens"] == record["produced_tokens"] == stop
            assert record["unguarded_text"] == b.text
            assert inner.tokenizer.decode(ids[:stop], skip_special_tokens=True) in a.text
    assert stopped > 0


@pytest.mark.slow
def test_stream_and_engine_stop_as_generate_does(
    inner: HFModel, monitor_dir: Path, threshold: float
) -> None:
    guarded = Guarded(inner, monitor=str(monitor_dir), threshold=threshold, k=2)
    generated = guarded.generate(CHATS, SAMPLING)
    reasons = [c.finish_reason for row in generated for c in row]
    assert "guard" in reasons and len(set(reasons)) > 1  # some rows stop, some do not
    texts: dict[tuple[int, int], str] = {}
    finals = {}
    for event in guarded.stream(CHATS, SAMPLING):
        key = (int(event.key), event.sample_index)  # type: ignore[call-overload]
        texts[key] = texts.get(key, "") + event.text
        if event.completion is not None:
            finals[key] = event.completion
    engine = guarded.engine()
    for c, chat in enumerate(CHATS):
        engine.add(f"r{c}", chat, SAMPLING)
    served = {}
    while not engine.idle:
        for event in engine.step():
            if event.completion is not None:
                served[(int(str(event.key)[1:]), event.sample_index)] = event.completion
    for c, row in enumerate(generated):
        for s, completion in enumerate(row):
            for other in (finals[(c, s)], served[(c, s)]):
                assert other.text == completion.text
                assert other.finish_reason == completion.finish_reason
                assert other.num_tokens == completion.num_tokens
            assert texts[(c, s)] == completion.text


def test_window_one_reads_the_first_token_only(inner: HFModel, monitor_dir: Path) -> None:
    guarded = Guarded(inner, monitor=str(monitor_dir), threshold=0.0, k=1, window=1)
    for row in guarded.generate(CHATS, SAMPLING):
        for completion in row:
            assert completion.finish_reason == "guard" and completion.num_tokens == 1
    never = Guarded(inner, monitor=str(monitor_dir), threshold=1.0, k=3, window=1)
    assert all(c.finish_reason != "guard" for r in never.generate(CHATS, SAMPLING) for c in r)


def test_the_spec_names_and_rebuilds_the_guard(tiny_hf_model_dir: Path, monitor_dir: Path) -> None:
    spec = f"guarded('{tiny_hf_model_dir}', monitor='{monitor_dir}', k=3, threshold=0.7)"
    model = load_model(spec)
    assert isinstance(model, Guarded) and model.k == 3 and model.threshold == 0.7
    assert model.spec is not None and load_model(model.spec).name == model.name
    defaults = load_model(f"guarded('{tiny_hf_model_dir}', monitor='{monitor_dir}')")
    assert isinstance(defaults, Guarded) and (defaults.threshold, defaults.k) == (0.5, 2)


def test_bad_options_are_one_clear_line(inner: HFModel, monitor_dir: Path) -> None:
    with pytest.raises(PoiseError, match="needs monitor="):
        Guarded(inner)
    with pytest.raises(PoiseError, match=r"threshold must be a number in \[0, 1\]"):
        Guarded(inner, monitor=str(monitor_dir), threshold=1.5)
    with pytest.raises(PoiseError, match="k must be an integer >= 1"):
        Guarded(inner, monitor=str(monitor_dir), k=0)


def test_an_engine_forgets_rows_that_left(inner: HFModel, monitor_dir: Path) -> None:
    """``poise serve`` runs one engine for its lifetime: the watch kept every row's flag count,
    stop and highest score it ever served (a slow leak); now a row's entries go when its
    completion is delivered or its request is cancelled."""
    guarded = Guarded(inner, monitor=str(monitor_dir), threshold=0.0, k=1)  # stops every row
    engine = guarded.engine()
    for c, chat in enumerate(CHATS):
        engine.add(c, chat, SAMPLING)
    finals = []
    while not engine.idle:
        finals += [e.completion for e in engine.step() if e.completion is not None]
    assert len(finals) == len(CHATS) * SAMPLING.n
    assert all(c.finish_reason == "guard" and c.num_tokens == 1 for c in finals)
    watch = engine.watch
    assert watch.stops == {} and watch.flagged == {} and watch.max_score == {}
    # a request cancelled while the monitor follows it (never stopped: threshold 1)
    engine = Guarded(inner, monitor=str(monitor_dir), threshold=1.0, k=1).engine()
    engine.add("cancelled", CHATS[1], SAMPLING)
    for _ in range(3):
        engine.step()
    assert set(engine.watch.max_score) == {0, 1}  # both samples scored so far
    engine.cancel("cancelled")
    assert engine.idle and engine.watch.max_score == {}


def test_a_monitor_of_another_vocabulary_or_not_a_name_is_refused(
    inner: HFModel, monitor_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from transformers import AutoTokenizer

    other = tmp_path / "monitor"
    shutil.copytree(monitor_dir, other)
    tokenizer = AutoTokenizer.from_pretrained(str(other))
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(str(other))
    with pytest.raises(PoiseError, match=r"does not share .* vocabulary"):
        Guarded(inner, monitor=str(other))
    with pytest.raises(PoiseError, match="needs monitor=NAME_OR_FOLDER"):
        Guarded(inner, monitor=3)  # type: ignore[arg-type]


def test_rows_that_left_do_not_run_a_learned_position_monitor_past_its_table(
    monitor_dir: Path, build_gpt2: Callable[..., Path], tmp_path: Path
) -> None:
    """A row that finished stays in the monitor's cache (fed padding) while the others decode
    on; it was fed one position further each step, so a monitor of learned positions (GPT-2)
    indexed past its position table once the others decoded long enough (IndexError)."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from poise.guards.monitor import Monitor
    from poise.models.base import StepView

    gpt2 = build_gpt2(tmp_path / "gpt2", monitor_dir, context=32)
    tokenizer = AutoTokenizer.from_pretrained(str(gpt2))
    monitor = Monitor(GPT2LMHeadModel.from_pretrained(gpt2), tokenizer).eval()
    # row 0: a long prompt that ends near the table's end; rows 1-9: short ones. Ten rows, so
    # one that leaves stays in the cache (the watch compacts once more than an eighth of it
    # has been gone for a while, streaming.DEAD_SHARE)
    prompts = {0: list(range(10, 34)), **{r: [10 + r, 11, 12] for r in range(1, 10)}}
    watch = MonitorWatch(monitor, lambda row: prompts[row], threshold=2.0, k=1, keep_scores=True)
    tokens: dict[int, list[int]] = {r: [] for r in prompts}
    for step in range(20):
        live = [r for r in prompts if r != 0 or step < 3]  # row 0 finishes after 2 tokens
        for r in live:
            tokens[r].append(20 + (r + step) % 30)
        view = StepView(
            logits=torch.zeros(len(live), len(tokenizer)),
            rows=torch.tensor(live),
            generated=torch.tensor([len(tokens[r]) for r in live]),
            tokens=[torch.tensor(tokens[r]) for r in live],
        )
        watch(view)
    assert watch.scores is not None
    for r in range(1, 10):  # the rows that decoded on were scored as teacher forcing scores them
        expected = monitor.response_scores([prompts[r]], [tokens[r]])[0]
        assert watch.scores[r] == pytest.approx(expected[: len(watch.scores[r])], abs=1e-5)


def test_newcomers_take_the_places_of_rows_that_left_and_are_scored_exactly(
    monitor_dir: Path,
) -> None:
    """A row that joins while another has left takes its place in the monitor's cache, in
    place (the rows that decode on are not copied), and every row is still scored as teacher
    forcing scores it: the one placed, the ones beside it, and a newcomer too wide to fit,
    which joins by a merge."""
    import torch

    from poise.models.base import StepView

    monitor = load_monitor(str(monitor_dir))
    prompts = {
        0: [10, 11, 12, 13, 14, 15],
        1: [16, 17, 18],
        2: [19, 20, 21, 22],
        3: [23, 24],  # joins after row 1 left: narrower than the cache, takes row 1's place
        4: list(range(30, 70)),  # joins later: wider than the cache, merged
    }
    joins, leaves = {0: 0, 1: 0, 2: 0, 3: 4, 4: 8}, {1: 3, 3: 11}
    watch = MonitorWatch(monitor, lambda row: prompts[row], threshold=2.0, k=1, keep_scores=True)
    tokens: dict[int, list[int]] = {r: [] for r in prompts}
    orders = []
    for step in range(14):
        live = [r for r in prompts if joins[r] <= step < leaves.get(r, 99)]
        for r in live:
            tokens[r].append(40 + (3 * r + step) % 50)
        watch(
            StepView(
                logits=torch.zeros(len(live), len(monitor.tokenizer)),
                rows=torch.tensor(live),
                generated=torch.tensor([len(tokens[r]) for r in live]),
                tokens=[torch.tensor(tokens[r]) for r in live],
            )
        )
        assert watch.state is not None and len(watch.state) == len(watch.order)
        orders.append(list(watch.order))
    # row 1 left at step 3 and stayed in the cache; row 3 took its place at step 4 (a merge
    # would have dropped row 1 and appended row 3: [0, 2, 3]); row 4 was merged at step 8,
    # after the others, which that copy of the cache put longest first
    assert orders[3] == [0, None, 2] and orders[4] == [0, 3, 2]
    assert orders[8] == [0, 2, 3, 4]
    # row 3 left at step 11 and no row came: its place is kept DEAD_STEPS steps for a newcomer,
    # then the cache is compacted (one row in four gone, more than an eighth), rows longest first
    assert orders[11] == orders[12] == [0, 2, None, 4]
    assert orders[13] == [4, 0, 2]  # longest first
    assert watch.scores is not None
    for r in prompts:  # every token but each row's newest (scored at the next step) was scored
        expected = monitor.response_scores([prompts[r]], [tokens[r]])[0]
        got = watch.scores[r]
        assert len(got) >= len(tokens[r]) - 1
        assert got == pytest.approx(expected[: len(got)], abs=1e-5)


def test_a_monitor_of_a_shorter_context_than_the_model_refuses_what_it_cannot_read(
    inner: HFModel, monitor_dir: Path, build_gpt2: Callable[..., Path], tmp_path: Path
) -> None:
    """A monitor reads the prompt and every token of the answer: one of learned positions
    (GPT-2) with a shorter context than the guarded model's failed inside torch (IndexError)
    in the middle of decoding once prompt + answer passed its position table; the guard's
    context is now the shorter of the two, and a request past it is refused beforehand."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from poise.guards.monitor import Monitor
    from poise.models.context import ContextLengthError, fit_context

    gpt2 = build_gpt2(tmp_path / "gpt2", monitor_dir, context=48)
    folder = Monitor(
        GPT2LMHeadModel.from_pretrained(gpt2), AutoTokenizer.from_pretrained(str(gpt2))
    ).save(tmp_path / "short-monitor")
    guarded = Guarded(inner, monitor=str(folder), threshold=1.0, k=1)
    assert inner.context_length == 512 and guarded.context_length == 48
    chat = CHATS[1]
    prompt = len(inner.prompt_ids(chat))  # 34 tokens
    too_long = Sampling(temperature=1.0, max_new_tokens=48 - prompt + 1, seed=3)
    for call in (
        lambda: guarded.generate([chat], too_long),
        lambda: list(guarded.stream([chat], too_long)),
        lambda: guarded.engine().add("r", chat, too_long),
    ):
        with pytest.raises(ContextLengthError, match="maximum context length is 48 tokens"):
            call()
    # what fits is guarded as before, and serving fits a request to the monitor's context
    fits = Sampling(temperature=1.0, max_new_tokens=48 - prompt, seed=3)
    (completion,) = guarded.generate([chat], fits)[0]
    assert 0 < completion.num_tokens <= 48 - prompt
    fitted, _ = fit_context(guarded, chat, Sampling(max_new_tokens=400), fill=True)
    assert fitted.max_new_tokens == 48 - prompt


def test_the_watch_flags_a_score_equal_to_the_threshold() -> None:
    """delay-k on scores given by hand (no monitor is run): a score at the threshold flags, as
    :func:`delay_k_stop` says; flags count over the answer, not in a run; ``window`` scores its
    first ``window`` tokens only."""
    for scores, window, expected in (
        ([0.5, 0.2, 0.5, 0.1], 0, 3),
        ([0.5, 0.2, 0.49, 0.1], 0, None),
        ([0.5, 0.2, 0.5], 2, None),
    ):
        watch = MonitorWatch(None, lambda row: [], threshold=0.5, k=2, window=window)  # type: ignore[arg-type]
        watch._count(7, scores, 0)
        assert watch.stops.get(7) == expected == delay_k_stop(scores, 0.5, 2, window)


def test_a_window_scores_exactly_its_tokens(inner: HFModel, monitor_dir: Path) -> None:
    """threshold 0 flags every scored token: with ``window=2`` two are scored, so ``k=3`` never
    stops an answer and ``k=2`` stops every answer long enough at its second token."""
    never = Guarded(inner, monitor=str(monitor_dir), threshold=0.0, k=3, window=2)
    assert all(c.finish_reason != "guard" for r in never.generate(CHATS, SAMPLING) for c in r)
    at_two = Guarded(inner, monitor=str(monitor_dir), threshold=0.0, k=2, window=2)
    stopped = [c for r in at_two.generate(CHATS, SAMPLING) for c in r if c.finish_reason == "guard"]
    assert stopped and all(c.num_tokens == 2 for c in stopped)


def test_each_answer_records_the_highest_score_the_guard_read(
    inner: HFModel, monitor_dir: Path, threshold: float
) -> None:
    """``metadata["guard"]["max_score"]`` is the highest harmful probability among the tokens
    the guard scored for that answer (up to and including its stop), each sample of a chat its
    own: teacher forcing gives the scores."""
    plain, got, all_scores = _guarded_and_scored(inner, monitor_dir, threshold)
    checked = 0
    for c, (before, after) in enumerate(zip(plain, got, strict=True)):
        for s, (b, a) in enumerate(zip(before, after, strict=True)):
            scores = all_scores[c * SAMPLING.n + s]
            if b.finish_reason == "length":
                scores = scores[:-1]  # the last token of a cut answer is never scored
            stop = delay_k_stop(scores, threshold, 2)
            read = scores[:stop] if stop is not None else scores
            record = a.metadata["guard"]  # type: ignore[index]
            if not read:
                assert record["max_score"] is None
                continue
            checked += 1
            assert record["max_score"] == pytest.approx(max(read), abs=1e-5)
    # the samples of one chat differ, so a max_score taken from another row would show
    assert checked >= 6


def test_the_window_and_refusal_are_in_the_spec_and_every_record(
    inner: HFModel, tiny_hf_model_dir: Path, monitor_dir: Path
) -> None:
    """threshold 0 flags every scored token, so window 2 with k 2 stops each answer of 2
    tokens or more at its second: generate and stream record a stop of kind streaming with the
    guard's threshold, k and window, and end the text with the refusal asked; the spec
    rebuilds the same guard. A negative window is refused."""
    common = f"guarded('{tiny_hf_model_dir}', monitor='{monitor_dir}', threshold=0, k=2"
    guard = load_model(common + ", window=2, refusal='No.')")
    assert isinstance(guard, Guarded) and guard.spec is not None
    again = load_model(guard.spec)
    assert isinstance(again, Guarded) and (again.window, again.refusal) == (2, "No.")
    names = {load_model(common + options + ")").name for options in ("", ", window=2")}
    assert len(names | {guard.name}) == 3  # a guard's name tells its window and refusal
    settings = {"kind": "streaming", "threshold": 0.0, "k": 2, "window": 2}
    one = Sampling(temperature=1.0, max_new_tokens=6, seed=3)
    (generated,) = guard.generate(CHATS[:1], one)[0]
    record = (generated.metadata or {})["guard"]
    assert generated.finish_reason == "guard" and generated.num_tokens == 2
    assert {key: record[key] for key in settings} == settings and record["stopped"] is True
    assert generated.text.endswith("No.")
    events = list(guard.stream(CHATS[:1], one))
    final = events[-1].completion
    assert final is not None and final.finish_reason == "guard" and final.num_tokens == 2
    record = (final.metadata or {})["guard"]
    assert {key: record[key] for key in settings} == settings and record["stopped"] is True
    assert (record["shown_tokens"], record["produced_tokens"]) == (2, 2)
    assert "".join(e.text for e in events) == final.text == generated.text
    with pytest.raises(PoiseError, match="window must be an integer >= 0"):
        Guarded(inner, monitor=str(monitor_dir), window=-1)
