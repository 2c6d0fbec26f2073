"""The baselines: a full-answer guard and a chunked guard, in the same harness."""

from __future__ import annotations

from pathlib import Path

import pytest

from poise.config import Sampling
from poise.errors import PoiseError
from poise.guards.judged import ChunkedGuard, FullGuard, flagged_prefixes
from poise.guards.record import generated_tokens
from poise.guards.streaming import DEFAULT_REFUSAL
from poise.models import load_model
from poise.models.hf import HFModel

CHATS = [[{"role": "user", "content": q}] for q in ("the cat", "where is the dog", "say hi")]
SAMPLING = Sampling(temperature=1.0, max_new_tokens=16, seed=5, n=2)


@pytest.fixture(scope="module")
def inner(tiny_hf_model_dir: Path) -> HFModel:
    return HFModel(str(tiny_hf_model_dir), device="cpu", batch_size=8)


def test_chunk_boundaries() -> None:
    assert flagged_prefixes(4, 10) == [4, 8, 10]
    assert flagged_prefixes(5, 10) == [5, 10]
    assert flagged_prefixes(0, 7) == [7]
    assert flagged_prefixes(3, 0) == []


def test_a_keyword_judge_flags_whole_words_not_a_prefix_that_cuts_one(inner: HFModel) -> None:
    """A chunk that ends inside a word ("harm" of "harmless", two tokens) held the keyword at
    its end as a whole word (the end of the text is a word boundary): a harmless answer was
    flagged by the chunked guard and not by the full-answer guard."""
    from poise.guards.judged import _Judge

    judge = _Judge("keywords:harm", None, inner)
    text = "it is harmless, no harm"
    ends = [2, 5, 10, 14, 15, 18, 23]  # "it", " is", " harm", "less", ",", " no", " harm"
    every_token = list(range(1, len(ends) + 1))
    (flags,) = judge.flags([[]], [list(range(len(ends)))], [text], [ends], [every_token])
    assert flags == [False] * 6 + [True]
    (whole,) = judge.flags([[]], [[0, 1, 2, 3]], ["it is harmless"], [[2, 5, 10, 14]], [[4]])
    assert whole == [False]


def _word(inner: HFModel) -> str:
    """A word that occurs in some answers and not in others."""
    texts = [c.text for row in inner.generate(CHATS, SAMPLING) for c in row]
    for text in texts:
        for word in text.split():
            if word.isalpha() and sum(word in t.split() for t in texts) < len(texts):
                return word
    pytest.skip("the tiny model's answers share every word")


def test_full_guard_withholds_flagged_answers(inner: HFModel) -> None:
    word = _word(inner)
    plain = inner.generate(CHATS, SAMPLING)
    guarded = FullGuard(inner, judge=f"keywords:{word}").generate(CHATS, SAMPLING)
    flagged = 0
    for before, after in zip(plain, guarded, strict=True):
        for b, a in zip(before, after, strict=True):
            record = a.metadata["guard"]  # type: ignore[index]
            if word in b.text.split():
                flagged += 1
                assert a.text == DEFAULT_REFUSAL and a.finish_reason == "guard"
                assert record["shown_tokens"] == 0
                assert record["produced_tokens"] == b.num_tokens == record["unguarded_tokens"]
                # num_tokens: what was shown; what it cost (poise serve's usage): all of it
                # (and the EOS that ended it, as the answer let through counts it)
                assert a.num_tokens == 0 and generated_tokens(a) == generated_tokens(b)
            else:
                assert a.text == b.text and record["stopped"] is False
                assert a.num_tokens == b.num_tokens
                assert generated_tokens(a) == generated_tokens(b)
    assert flagged


def test_chunked_guard_shows_the_chunks_before_the_flagged_one(inner: HFModel) -> None:
    word = _word(inner)
    plain = inner.generate(CHATS, SAMPLING)
    guarded = ChunkedGuard(inner, judge=f"keywords:{word}", every=3).generate(CHATS, SAMPLING)
    for before, after in zip(plain, guarded, strict=True):
        for b, a in zip(before, after, strict=True):
            record = a.metadata["guard"]  # type: ignore[index]
            if not record["stopped"]:
                assert a.text == b.text
                continue
            produced, shown = record["produced_tokens"], record["shown_tokens"]
            assert produced % 3 == 0 or produced == b.num_tokens
            assert shown == max(0, (produced - 1) // 3 * 3)
            ends = record["token_ends"]
            assert (
                word in b.text[: ends[produced - 1]].split() or word in b.text[: ends[produced - 1]]
            )
            assert a.num_tokens == shown
            # the baseline decodes every answer to its end before judging it
            assert b.num_tokens == record["unguarded_tokens"]
            assert generated_tokens(a) == generated_tokens(b)


def test_monitor_judge_flags_by_the_response_head(inner: HFModel, monitor_dir: Path) -> None:
    always = FullGuard(inner, judge=str(monitor_dir), threshold=0.0).generate(CHATS, SAMPLING)
    never = FullGuard(inner, judge=str(monitor_dir), threshold=1.0).generate(CHATS, SAMPLING)
    assert all(c.finish_reason == "guard" for row in always for c in row)
    assert all(c.finish_reason != "guard" for row in never for c in row)


def test_specs_and_errors(tiny_hf_model_dir: Path) -> None:
    model = load_model(f"chunked_guard('{tiny_hf_model_dir}', judge='keywords:cat|dog', every=8)")
    assert isinstance(model, ChunkedGuard) and model.every == 8
    with pytest.raises(PoiseError, match="every must be an integer >= 1"):
        load_model(f"chunked_guard('{tiny_hf_model_dir}', judge='keywords:cat', every=0)")
    with pytest.raises(PoiseError, match="needs judge="):
        load_model(f"full_guard('{tiny_hf_model_dir}')")
    for audit_judge in ("oracle", "refusal", "preset:llama-guard-3"):
        with pytest.raises(PoiseError, match=r"not a monitor folder.*keywords:WORD.*--judge"):
            load_model(f"full_guard('{tiny_hf_model_dir}', judge='{audit_judge}')")


def test_a_threshold_outside_zero_one_or_with_keywords_is_one_clear_line(
    inner: HFModel, tiny_hf_model_dir: Path, monitor_dir: Path
) -> None:
    """A threshold of 2 used to be taken (a guard that never stops), 'x' raised a ValueError,
    and one given with a keywords: judge was silently ignored."""
    for kind in ("full_guard", "chunked_guard"):
        for bad, message in (
            ("2", r"threshold must be a number in \[0, 1\]"),
            ("-0.1", r"threshold must be a number in \[0, 1\]"),
            ("'x'", r"option 'threshold' must be a number, got x"),  # the spec's type check
            ("true", r"option 'threshold' must be a number, got true"),
        ):
            with pytest.raises(PoiseError, match=rf"{kind}: {message}"):
                load_model(f"{kind}('{tiny_hf_model_dir}', judge='{monitor_dir}', threshold={bad})")
        with pytest.raises(PoiseError, match="threshold applies to a monitor judge"):
            load_model(f"{kind}('{tiny_hf_model_dir}', judge='keywords:cat', threshold=0.5)")
    model = load_model(f"full_guard('{tiny_hf_model_dir}', judge='{monitor_dir}', threshold=1)")
    assert isinstance(model, FullGuard) and model.judge.threshold == 1.0
    with pytest.raises(PoiseError, match="full_guard: refusal must be a string"):
        FullGuard(inner, judge="keywords:cat", refusal=3)  # type: ignore[arg-type]


def _last_scores(inner: HFModel, monitor_dir: Path, head: str) -> list[float]:
    """The monitor's score (under ``head``) after the last token of each answer ``inner``
    gives to CHATS under SAMPLING, in answer order."""
    from poise.guards.monitor import load_monitor

    monitor = load_monitor(str(monitor_dir))
    plain = inner.generate(CHATS, SAMPLING)
    flat = [(c, comp) for c, row in enumerate(plain) for comp in row]
    return [
        scores[-1]
        for scores in monitor.response_scores(
            [monitor.prompt_ids(CHATS[c]) for c, _ in flat],
            [list(comp.token_ids or ())[: comp.num_tokens] for _, comp in flat],
            head=head,
        )
    ]


def test_a_monitor_judge_guards_a_model_without_prompt_ids(
    inner: HFModel, monitor_dir: Path
) -> None:
    """Inside the guard, a model with no prompt token ids of its own (here the streaming guard;
    a decoding strategy is the same): the monitor reads the chat through its own template. It
    raised AttributeError ('prompt_ids') at the first generate."""
    from poise.guards.streaming import Guarded

    last = _last_scores(inner, monitor_dir, "response")
    threshold = sorted(last)[len(last) // 2]  # about half the answers flagged
    wrapped = Guarded(inner, monitor=str(monitor_dir), threshold=1.0, k=50)
    assert not wrapped.capabilities.tokens
    got = FullGuard(wrapped, judge=str(monitor_dir), threshold=threshold).generate(CHATS, SAMPLING)
    # the tiny monitor shares the model's chat template: the same decisions as on the model
    want = FullGuard(inner, judge=str(monitor_dir), threshold=threshold).generate(CHATS, SAMPLING)
    reasons = [c.finish_reason for row in got for c in row]
    assert "guard" in reasons and len(set(reasons)) > 1
    assert [(c.text, c.finish_reason) for row in got for c in row] == [
        (c.text, c.finish_reason) for row in want for c in row
    ]


@pytest.mark.parametrize("head", ["response", "token"])
def test_the_judge_reads_the_head_it_names(inner: HFModel, monitor_dir: Path, head: str) -> None:
    """The baselines read the monitor's response head, as documented (SCM's full detection);
    they read its streaming head (the token head of organism-monitor), so the 'full answer,
    response head' row of the guard benchmark was the token head. head=token reads that."""
    last = _last_scores(inner, monitor_dir, head)
    threshold = sorted(last)[len(last) // 2]
    options = {} if head == "response" else {"head": head}
    guard = FullGuard(inner, judge=str(monitor_dir), threshold=threshold, **options)
    stopped = [c.finish_reason == "guard" for row in guard.generate(CHATS, SAMPLING) for c in row]
    assert stopped == [score >= threshold for score in last]
    assert guard.name.count("head=") == (head != "response")


def test_head_is_response_or_token_and_only_for_a_monitor(tiny_hf_model_dir: Path) -> None:
    with pytest.raises(PoiseError, match="head must be 'response' or 'token'"):
        load_model(f"full_guard('{tiny_hf_model_dir}', judge='keywords:cat', head='last')")
    with pytest.raises(PoiseError, match="head applies to a monitor judge"):
        load_model(f"chunked_guard('{tiny_hf_model_dir}', judge='keywords:cat', head='token')")


def test_a_keyword_split_across_tokens_flags_the_chunk_that_completes_it(inner: HFModel) -> None:
    """A chunk that ends inside the keyword ("ha" of "harm") does not hold it yet: the prefix
    is flagged once it holds the keyword's end."""
    from poise.guards.judged import _Judge

    judge = _Judge("keywords:harm", None, inner)
    ends = [2, 5, 7]  # "no", " ha", "rm"
    (flags,) = judge.flags([[]], [[0, 1, 2]], ["no harm"], [ends], [[1, 2, 3]])
    assert flags == [False, False, True]


def test_the_chunked_guard_stops_at_the_first_flagged_chunk(inner: HFModel) -> None:
    """Judged every token, a keyword guard stops at the token that completes the first whole
    occurrence of the word (the regular expression's match, found independently here): not at
    a later chunk, which is flagged too."""
    import re

    word = _word(inner)
    plain = inner.generate(CHATS, SAMPLING)
    guarded = ChunkedGuard(inner, judge=f"keywords:{word}", every=1).generate(CHATS, SAMPLING)
    early = 0
    for before, after in zip(plain, guarded, strict=True):
        for b, a in zip(before, after, strict=True):
            found = re.search(rf"\b{re.escape(word)}\b", b.text, re.IGNORECASE)
            record = a.metadata["guard"]  # type: ignore[index]
            assert record["stopped"] is (found is not None)
            if found is None:
                continue
            ends = record["token_ends"]
            first = next(t + 1 for t, end in enumerate(ends) if end >= found.end())
            assert record["produced_tokens"] == first
            assert record["shown_tokens"] == a.num_tokens == first - 1
            early += first < b.num_tokens
    assert early  # some answer goes on after the word, where a later chunk is flagged too


def test_a_chunked_monitor_judge_reads_each_chunks_own_prefix(
    inner: HFModel, monitor_dir: Path
) -> None:
    """Every 2 tokens the monitor's response head reads the answer so far: the stop is at the
    first chunk whose last token scores at or above the threshold (teacher forcing gives the
    scores, a token's score reads only the tokens before it), and the chunks before it are
    shown. Records say chunked (the full-answer guard's say full)."""
    from poise.guards.monitor import load_monitor

    monitor = load_monitor(str(monitor_dir))
    plain = [(c, comp) for c, row in enumerate(inner.generate(CHATS, SAMPLING)) for comp in row]
    scores = monitor.response_scores(
        [inner.prompt_ids(CHATS[c]) for c, _ in plain],
        [list(comp.token_ids or ())[: comp.num_tokens] for _, comp in plain],
        head="response",
    )
    ranked = sorted(s for row in scores for s in row[1::2])
    threshold = ranked[len(ranked) // 2]
    guard = ChunkedGuard(inner, judge=str(monitor_dir), every=2, threshold=threshold)
    got = [comp for row in guard.generate(CHATS, SAMPLING) for comp in row]
    stops = 0
    for (_, before), row, after in zip(plain, scores, got, strict=True):
        record = (after.metadata or {})["guard"]
        assert record["kind"] == "chunked" and record["every"] == 2
        ends = flagged_prefixes(2, before.num_tokens)
        first = next((b for b in ends if row[b - 1] >= threshold), None)
        assert record["stopped"] is (first is not None)
        if first is not None:
            stops += first < before.num_tokens
            assert (record["produced_tokens"], record["shown_tokens"]) == (first, max(first - 2, 0))
    assert stops  # some answer stops before its last chunk
    full = FullGuard(inner, judge=str(monitor_dir), threshold=threshold).generate(CHATS, SAMPLING)
    assert {(c.metadata or {})["guard"]["kind"] for row in full for c in row} == {"full"}


def test_keywords_match_whatever_the_case(inner: HFModel) -> None:
    from poise.guards.judged import _Judge

    judge = _Judge("keywords:Harm", None, inner)
    (flags,) = judge.flags([[]], [[0, 1]], ["no HARM"], [[2, 7]], [[1, 2]])
    assert flags == [False, True]


def test_a_monitor_judge_flags_at_0_5_by_default_and_every_is_32(
    inner: HFModel, tiny_hf_model_dir: Path, monitor_dir: Path
) -> None:
    """Without a threshold a monitor judge flags a response-head score of 0.5 or more, the
    released full-detection evaluation's; a chunked guard judges every 32 tokens unless told."""
    last = _last_scores(inner, monitor_dir, "response")
    guard = FullGuard(inner, judge=str(monitor_dir))
    stopped = [c.finish_reason == "guard" for row in guard.generate(CHATS, SAMPLING) for c in row]
    assert stopped == [score >= 0.5 for score in last]
    model = load_model(f"chunked_guard('{tiny_hf_model_dir}', judge='keywords:cat')")
    assert isinstance(model, ChunkedGuard) and model.every == 32


def test_the_judge_reads_the_answer_not_the_eos_that_ended_it(
    eos_hf_model_dir: Path, monitor_dir: Path
) -> None:
    """An answer that ended on EOS carries the EOS in its token ids; the judge reads the score
    after the answer's last token: flagged at a threshold equal to that score, not at one
    between it and the score after the EOS."""
    from tests.conftest import EOS_CHAT

    from poise.guards.monitor import load_monitor

    model = HFModel(str(eos_hf_model_dir), device="cpu")
    greedy = Sampling(max_new_tokens=16)
    (answer,) = model.generate([EOS_CHAT], greedy)[0]
    assert answer.finish_reason == "stop" and answer.token_ids is not None
    assert len(answer.token_ids) == answer.num_tokens + 1
    monitor = load_monitor(str(monitor_dir))
    prompt = model.prompt_ids(EOS_CHAT)
    with_eos = monitor.response_scores([prompt], [list(answer.token_ids)], head="response")[0]
    last, after_eos = with_eos[-2], with_eos[-1]
    assert last != after_eos
    for threshold in (last, (last + after_eos) / 2):
        guard = FullGuard(model, judge=str(monitor_dir), threshold=threshold)
        (got,) = guard.generate([EOS_CHAT], greedy)[0]
        assert (got.finish_reason == "guard") is (last >= threshold)
