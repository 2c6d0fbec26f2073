from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import Chat, Completion, GenerationError, LanguageModel
from poise.models.cache import CachedModel, ResponseCache, request_key
from poise.models.mock import MockModel, last_user_message


def user(text: str) -> Chat:
    return [{"role": "user", "content": text}]


def echo(chat: Chat, index: int) -> str:
    return f"{last_user_message(chat)} #{index}"


@pytest.fixture
def cache(tmp_path: Path) -> ResponseCache:
    return ResponseCache(tmp_path / "cache.sqlite")


def test_key_covers_model_chat_and_every_sampling_field() -> None:
    chat = user("hi")
    base = request_key("m", chat, Sampling())
    assert base == request_key("m", [{"content": "hi", "role": "user"}], Sampling())
    assert len(base) == 64
    variants = [
        request_key("other", chat, Sampling()),
        request_key("m", user("hi!"), Sampling()),
        request_key("m", [{"role": "system", "content": "s"}, *chat], Sampling()),
        *(
            request_key("m", chat, Sampling(**{field: value}))
            for field, value in [
                ("seed", 1),
                ("temperature", 0.7),
                ("top_p", 0.9),
                ("top_k", 5),
                ("max_new_tokens", 7),
                ("n", 2),
                ("stop", ("\n",)),
            ]
        ),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_second_call_is_answered_from_the_cache(cache: ResponseCache) -> None:
    inner = MockModel(responses=echo)
    model = CachedModel(inner, cache)
    assert isinstance(model, LanguageModel)
    assert model.name == inner.name
    chats = [user("a"), user("b")]
    first = model.generate(chats, Sampling(n=2))
    second = model.generate(chats, Sampling(n=2))
    assert second == first
    assert [[c.text for c in row] for row in first] == [["a #0", "a #1"], ["b #0", "b #1"]]
    assert (inner.calls, inner.generated) == (1, 4)
    assert (model.hits, model.misses) == (2, 2)


def test_only_misses_reach_the_model_in_one_call_and_order_is_kept(cache: ResponseCache) -> None:
    inner = MockModel(responses=echo)
    model = CachedModel(inner, cache)
    model.generate([user("b")], Sampling())
    out = model.generate([user("a"), user("b"), user("c"), user("a")], Sampling())
    assert [row[0].text for row in out] == ["a #0", "b #0", "c #0", "a #0"]
    assert inner.calls == 2
    assert [last_user_message(c) for c in inner.prompts] == ["b", "a", "c"]


def test_different_seed_or_sampling_misses(cache: ResponseCache) -> None:
    inner = MockModel(responses={"q": ["x", "y", "z"]})
    model = CachedModel(inner, cache)
    model.generate([user("q")], Sampling(seed=0))
    assert model.generate([user("q")], Sampling(seed=1))[0][0].text == "y"
    model.generate([user("q")], Sampling(seed=0, temperature=1.0))
    model.generate([user("q")], Sampling(seed=0, max_new_tokens=5))
    assert inner.calls == 4
    model.generate([user("q")], Sampling(seed=1))
    assert inner.calls == 4
    assert len(cache) == 4


def test_other_model_name_misses(cache: ResponseCache) -> None:
    a, b = MockModel(name="a", default="from a"), MockModel(name="b", default="from b")
    CachedModel(a, cache).generate([user("q")], Sampling())
    assert CachedModel(b, cache).generate([user("q")], Sampling())[0][0].text == "from b"
    assert b.calls == 1


def test_wal_mode_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "cache.sqlite"
    with ResponseCache(path) as cache:
        assert cache.journal_mode() == "wal"
        CachedModel(MockModel(responses=echo), cache).generate([user("a")], Sampling())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    inner = MockModel(responses=echo)
    with ResponseCache(path) as reopened:
        assert CachedModel(inner, reopened).generate([user("a")], Sampling())[0][0].text == "a #0"
    assert inner.calls == 0


def test_not_a_database_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    path.write_text("this is not sqlite " * 100)
    with pytest.raises(PoiseError, match="cannot open the response cache"):
        ResponseCache(path)


def test_score_passes_through_and_attributes_come_from_the_inner_model(
    cache: ResponseCache,
) -> None:
    inner = MockModel(default_system_prompt="Be safe.")
    model = CachedModel(inner, cache)
    assert model.score([user("q")], ["a b"])[0].total == -2.0
    assert model.score([user("q")], ["a b"])[0].total == -2.0
    assert inner.score_calls == 2
    assert model.default_system_prompt == "Be safe."
    with pytest.raises(AttributeError):
        _ = model.no_such_attribute


def test_progress_counts_hits_misses_and_repeats(cache: ResponseCache) -> None:
    model = CachedModel(MockModel(), cache)
    model.generate([user("a")], Sampling())
    seen: list[int] = []
    model.generate([user("a"), user("b"), user("b"), user("c")], Sampling(), progress=seen.append)
    assert sum(seen) == 4


def test_hf_completions_round_trip_exactly(tiny_hf_model_dir: Path, cache: ResponseCache) -> None:
    from poise.models.hf import HFModel

    model = CachedModel(HFModel(str(tiny_hf_model_dir)), cache)
    sampling = Sampling(temperature=1.0, max_new_tokens=6, n=2, seed=3)
    seen: list[int] = []
    first = model.generate([user("hello"), user("there")], sampling, progress=seen.append)
    assert sum(seen) == 2
    assert model.generate([user("hello"), user("there")], sampling) == first
    assert model.hits == 2


_WRITER = textwrap.dedent(
    """
    import sys
    from poise.config import Sampling
    from poise.models.cache import CachedModel, ResponseCache
    from poise.models.mock import MockModel

    path, tag, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = CachedModel(MockModel(responses=lambda chat, i: chat[-1]["content"]), ResponseCache(path))
    call = 0
    while calls < 0 or call < calls:
        chats = [[{"role": "user", "content": f"{tag}-{call}-{j}"}] for j in range(5)]
        chats.append([{"role": "user", "content": f"shared-{call}"}])
        out = model.generate(chats, Sampling(n=2))
        assert [row[0].text for row in out] == [c[0]["content"] for c in chats]
        call += 1
    print("ok")
    """
)


def _writer(path: Path, tag: str, calls: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), tag, str(calls)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_write_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    ResponseCache(path).close()  # both writers find WAL mode already on
    writers = [_writer(path, tag, 40) for tag in ("left", "right")]
    for proc in writers:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert stdout.strip() == "ok"
    with ResponseCache(path) as cache:
        # 5 own chats per call and process, plus one chat both processes share per call
        assert len(cache) == 2 * 40 * 5 + 40


def test_kill_9_leaves_only_whole_committed_rows(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite"
    ResponseCache(path).close()
    proc = _writer(path, "solo", -1)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            with sqlite3.connect(path, timeout=30) as conn:
                if conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0] >= 60:
                    break
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT value FROM completions").fetchall()
    assert len(rows) >= 60
    assert len(rows) % 6 == 0  # one transaction per generate call: all six chats or none
    assert all(len(json.loads(value)) == 2 for (value,) in rows)


def test_more_keys_than_one_lookup_slice_are_all_found(cache: ResponseCache) -> None:
    # keys are looked up 500 at a time (SQLite's bound-parameter limit): every one is found
    inner = MockModel(responses=echo)
    model = CachedModel(inner, cache)
    chats = [user(f"q{i}") for i in range(1001)]
    first = model.generate(chats, Sampling())
    assert model.generate(chats, Sampling()) == first
    assert inner.calls == 1 and (model.hits, model.misses) == (1001, 1001)
    # a chat asked twice in one call is generated once; both are requests the file did not answer
    model.generate([user("new"), user("new")], Sampling())
    assert inner.calls == 2 and inner.generated == 1002
    assert (model.hits, model.misses) == (1001, 1003)


def test_a_failed_write_is_rolled_back_and_the_cache_still_takes_writes(
    cache: ResponseCache,
) -> None:
    """RAISE(ABORT) in a trigger undoes its statement but, as SQLite documents, leaves the
    transaction open: put_many must roll it back (all of its entries or none) so that the next
    write can begin its own."""
    with sqlite3.connect(cache.path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON completions WHEN NEW.key = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    answer = [Completion(text="x", num_tokens=1)]
    with pytest.raises(PoiseError, match="cannot write to the response cache"):
        cache.put_many("m", {"good": answer, "bad": answer})
    assert cache.get("good") is None and len(cache) == 0
    cache.put_many("m", {"later": answer})
    assert cache.get("later") == answer


class PartialModel(MockModel):
    """A backend that hands over each answer as it arrives (``partial_results``) and fails
    the chats whose last message is ``fail`` (as the openai backend does)."""

    partial_results = True

    def __init__(self, fail: str) -> None:
        super().__init__(responses=echo)
        self.fail = fail

    def generate(  # type: ignore[override]
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        *,
        progress: Callable[[int], None] | None = None,
        on_result: Callable[[int, list[Completion]], None] | None = None,
    ) -> list[list[Completion]]:
        results: list[list[Completion] | None] = []
        failures: dict[int, str] = {}
        for i, chat in enumerate(chats):
            if last_user_message(chat) == self.fail:
                results.append(None)
                failures[i] = "refused"
                continue
            [row] = super().generate([chat], sampling)
            if on_result is not None:
                on_result(i, row)
            results.append(row)
        if failures:
            raise GenerationError(self, results, failures)
        return [r for r in results if r is not None]


def test_a_partial_failure_names_the_callers_chats_and_keeps_the_answers(
    cache: ResponseCache,
) -> None:
    inner = PartialModel(fail="bad")
    model = CachedModel(inner, cache)
    model.generate([user("a")], Sampling())
    with pytest.raises(GenerationError) as info:
        model.generate([user("a"), user("b"), user("bad"), user("c")], Sampling())
    # indices and results are those of this call's chats (the cached one included)
    assert info.value.model is model and info.value.failures == {2: "refused"}
    assert [r and r[0].text for r in info.value.results] == ["a #0", "b #0", None, "c #0"]
    calls = inner.calls
    assert model.generate([user("b"), user("c")], Sampling())[1][0].text == "c #0"
    assert inner.calls == calls  # both were stored as they came


def test_copy_from_adds_the_models_missing_answers_and_keeps_its_own(tmp_path: Path) -> None:
    mine, theirs = Completion(text="mine", num_tokens=1), Completion(text="theirs", num_tokens=1)
    with ResponseCache(tmp_path / "source.sqlite") as source:
        source.put_many("m", {"a": [theirs], "b": [theirs]})
        source.put_many("other", {"c": [theirs]})
    with ResponseCache(tmp_path / "run.sqlite") as cache:
        cache.put_many("m", {"a": [mine]})
        # the source's answers to a and b: b is added, a is kept as it was
        same = {"a": "a", "b": "b"}
        assert cache.copy_from(tmp_path / "source.sqlite", "m", same) == 2
        assert cache.get("a") == [mine]
        assert cache.get("b") == [theirs]
        assert cache.get("c") is None  # an answer not asked for stays behind
        assert cache.copy_from(tmp_path / "absent.sqlite", "m", same) == 0
    with ResponseCache(tmp_path / "keyed.sqlite") as cache:
        # only the keys asked (found in slices of the lookup's size), each stored under the key
        # it maps to: a model renamed since has other keys
        keys = {"b": "b-now", **{f"x{i}": f"y{i}" for i in range(800)}}
        assert cache.copy_from(tmp_path / "source.sqlite", "m-now", keys) == 1
        assert (cache.get("a"), cache.get("b"), cache.get("b-now")) == (None, None, [theirs])
    (tmp_path / "broken.sqlite").write_text("not a database")
    with (
        ResponseCache(tmp_path / "run.sqlite") as cache,
        pytest.raises(PoiseError, match=r"broken\.sqlite: cannot read the response cache"),
    ):
        cache.copy_from(tmp_path / "broken.sqlite", "m", {"a": "a"})


def test_copy_from_reads_a_cache_whose_path_holds_uri_characters(tmp_path: Path) -> None:
    """The source is opened read-only through a SQLite URI, where '?' starts the options and
    '#' a fragment and %HH an escaped character: a run folder named with any of them ("runs/#3",
    "what?", "a%20b", which was read as "a b") is read all the same."""
    answer = [Completion(text="theirs", num_tokens=1)]
    for name in ("run #3", "what?", "50%", "a%20b", "é ü"):
        source = tmp_path / name / "cache.sqlite"
        with ResponseCache(source) as writer:
            writer.put_many("m", {"a": answer})
        with ResponseCache(tmp_path / f"copy-{name}.sqlite") as cache:
            assert cache.copy_from(source, "m", {"a": "a"}) == 1, name
            assert cache.get("a") == answer


def test_a_chat_asked_twice_gets_answers_of_its_own(cache: ResponseCache) -> None:
    """The two answers of one chat asked twice in a call are two lists: a caller that edits one
    (a strategy keeping its pick) does not edit the other."""
    model = CachedModel(MockModel(responses=echo), cache)
    first, second = model.generate([user("a"), user("a")], Sampling())
    first.append(Completion(text="extra", num_tokens=1))
    assert [c.text for c in second] == ["a #0"]


def test_a_full_disk_says_how_to_go_on(cache: ResponseCache) -> None:
    with (
        pytest.raises(PoiseError, match="free some space and run the same command again"),
        cache._errors("write to"),
    ):
        raise sqlite3.OperationalError("database or disk is full")


def test_an_error_of_a_model_inside_the_backend_stores_nothing(cache: ResponseCache) -> None:
    """A GenerationError raised by another model than the cached one (a wrapper's inner model)
    holds that model's indices and answers, not this call's: none is stored under this call's
    keys, and the error goes on as it was raised."""
    other = MockModel(name="inner")

    class Wrapper(MockModel):
        partial_results = True

        def generate(self, chats, sampling, *, progress=None, on_result=None):  # type: ignore[no-untyped-def,override]
            stray = [[Completion(text="another call's answer", num_tokens=3)], None]
            raise GenerationError(other, stray, {1: "refused"})

    model = CachedModel(Wrapper(), cache)
    with pytest.raises(GenerationError) as info:
        model.generate([user("a"), user("b")], Sampling())
    assert info.value.model is other
    assert len(cache) == 0


def test_a_completion_comes_back_from_the_file_with_everything_it_recorded(
    tmp_path: Path,
) -> None:
    """The finish reason, the token count, the token log-probs and a wrapper's metadata of a
    cached answer are those generated, after the file is closed and opened again."""
    answer = Completion(
        text="cut short here",
        num_tokens=5,
        finish_reason="length",
        token_logprobs=(-0.5, -1.25, -2.0, -0.125, -3.0),
        token_ids=(7, 8, 9, 10, 11),
        metadata={"fired": True, "rounds": 2},
    )
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        cache.put_many("m", {"k": [answer, Completion(text="", num_tokens=0)]})
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        [back, empty] = cache.get("k") or []
    assert (back.text, back.num_tokens, back.finish_reason) == ("cut short here", 5, "length")
    assert back.token_logprobs == (-0.5, -1.25, -2.0, -0.125, -3.0)
    assert back.metadata == {"fired": True, "rounds": 2}
    assert back == answer  # token ids are not recorded and not compared
    assert (empty.text, empty.num_tokens, empty.finish_reason, empty.metadata) == (
        "",
        0,
        "stop",
        None,
    )


def test_put_many_replaces_the_answer_of_a_key_already_stored(cache: ResponseCache) -> None:
    cache.put_many("m", {"k": [Completion(text="old", num_tokens=1)]})
    cache.put_many("m", {"k": [Completion(text="new", num_tokens=1)]})
    assert cache.get("k") == [Completion(text="new", num_tokens=1)] and len(cache) == 1


def test_copy_from_leaves_the_source_files_as_they_were(tmp_path: Path) -> None:
    """The earlier run's cache is only read: a file a killed run left with its answers still in
    the write-ahead log is not checkpointed (its database file and log are unchanged)."""
    import shutil

    source = tmp_path / "live" / "cache.sqlite"
    killed = tmp_path / "killed"
    killed.mkdir()
    with ResponseCache(source) as writer:
        writer.put_many("m", {"a": [Completion(text="theirs", num_tokens=1)]})
        for suffix in ("", "-wal"):  # copied while open: the answer is in the log only
            shutil.copy(f"{source}{suffix}", killed / f"cache.sqlite{suffix}")
    files = {name: (killed / name).read_bytes() for name in ("cache.sqlite", "cache.sqlite-wal")}
    with ResponseCache(tmp_path / "run.sqlite") as cache:
        assert cache.copy_from(killed / "cache.sqlite", "m", {"a": "a"}) == 1
        assert cache.get("a") == [Completion(text="theirs", num_tokens=1)]
    assert {name: (killed / name).read_bytes() for name in files} == files


def test_answers_handed_over_only_with_the_error_are_stored(cache: ResponseCache) -> None:
    """A backend that fails some chats and hands the others' answers over only in its
    GenerationError (not through on_result): those answers are still stored."""

    class AtTheEnd(PartialModel):
        def generate(self, chats, sampling, *, progress=None, on_result=None):  # type: ignore[no-untyped-def,override]
            return super().generate(chats, sampling, progress=progress)

    inner = AtTheEnd(fail="bad")
    model = CachedModel(inner, cache)
    with pytest.raises(GenerationError) as info:
        model.generate([user("a"), user("bad"), user("b")], Sampling())
    assert [r and r[0].text for r in info.value.results] == ["a #0", None, "b #0"]
    assert len(cache) == 2
    calls = inner.calls
    assert [row[0].text for row in model.generate([user("b"), user("a")], Sampling())] == [
        "b #0",
        "a #0",
    ]
    assert inner.calls == calls
