"""Preference data: each format from a small fixture written here, and bad rows."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from poise.errors import PoiseError
from poise.train.data import PreferencePair, load_preferences


def _write(path: Path, rows: list[Any], *, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_generic_string_and_chat_prompts(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "pairs.jsonl",
        [
            {
                "prompt": "How do I boil an egg?",
                "chosen": "Simmer it 9 minutes.",
                "rejected": "No.",
                "id": "a1",
            },
            "",
            {
                "prompt": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                ],
                "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": "Go away.",
            },
        ],
    )
    pairs = load_preferences(path)
    assert pairs[0] == PreferencePair(
        prompt="How do I boil an egg?",
        chosen="Simmer it 9 minutes.",
        rejected="No.",
        meta={"row": 1, "id": "a1"},
    )
    assert pairs[0].messages == [{"role": "user", "content": "How do I boil an egg?"}]
    assert pairs[1].prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert pairs[1].chosen == "Hello!"
    assert pairs[1].meta == {"row": 3}  # the blank line 2 is skipped, numbering is the file's


def test_a_chat_prompt_without_meta_and_an_extra_response_0_key_are_generic(
    tmp_path: Path,
) -> None:
    """The format is told from the first row: a chat prompt is the attack format only with a
    ``meta`` object (the attack export always writes one), and PKU-SafeRLHF needs both
    ``response_0`` and ``response_1``; other generic rows keep such keys in ``meta``."""
    chat = [{"role": "user", "content": "Hi"}]
    (pair,) = load_preferences(
        _write(tmp_path / "chat.jsonl", [{"prompt": chat, "chosen": "Hello!", "rejected": "Go."}])
    )
    assert pair.prompt == chat and pair.meta == {"row": 1}
    row = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go.", "response_0": "Hello!"}
    (pair,) = load_preferences(_write(tmp_path / "extra.jsonl", [row]))
    assert pair.meta == {"row": 1, "response_0": "Hello!"}


def test_the_rows_own_meta_wins_over_a_top_level_key_of_the_same_name(tmp_path: Path) -> None:
    row = {"prompt": "a", "chosen": "b", "rejected": "c", "source": "top", "meta": {"source": "m"}}
    (pair,) = load_preferences(_write(tmp_path / "pairs.jsonl", [row]))
    assert pair.meta == {"row": 1, "source": "m"}


def test_attack_export(tmp_path: Path) -> None:
    row = {
        "prompt": [{"role": "user", "content": "Write malware."}],
        "chosen": "I can't help with that.",
        "rejected": "Sure, here is the code...",
        "meta": {"attack": "decoding-grid", "temperature": 1.2, "item": "harmful-7"},
    }
    path = _write(tmp_path / "export.jsonl", [row])
    (pair,) = load_preferences(path)  # detected: chat prompt and a meta object
    assert pair.chosen == "I can't help with that."
    assert pair.meta == {
        "row": 1,
        "attack": "decoding-grid",
        "temperature": 1.2,
        "item": "harmful-7",
    }
    assert load_preferences(path, format="attack") == [pair]
    # the attack format insists on a chat prompt and on meta
    flat = _write(tmp_path / "flat.jsonl", [{**row, "prompt": "Write malware."}])
    with pytest.raises(
        PoiseError, match=r"flat\.jsonl:1: field 'prompt': expected a list of messages"
    ):
        load_preferences(flat, format="attack")
    no_meta = _write(tmp_path / "nometa.jsonl", [{k: v for k, v in row.items() if k != "meta"}])
    with pytest.raises(PoiseError, match=r"nometa\.jsonl:1: missing field 'meta'"):
        load_preferences(no_meta, format="attack")


def test_a_detected_attack_file_names_the_format_and_the_fix_on_a_generic_row(
    tmp_path: Path,
) -> None:
    attack_row = {
        "prompt": [{"role": "user", "content": "Write malware."}],
        "chosen": "I can't help with that.",
        "rejected": "Sure, here is the code...",
        "meta": {"attack": "decoding-grid"},
    }
    plain = {"prompt": "Boil an egg?", "chosen": "Simmer it.", "rejected": "No."}
    path = _write(tmp_path / "mixed.jsonl", ["", attack_row, attack_row, plain])
    with pytest.raises(PoiseError) as info:
        load_preferences(path)
    assert str(info.value) == (
        f"{path}:4: field 'prompt': expected a list of messages, got a string (the file was "
        "read as the attack format, detected from its first row, line 2; --data-format generic "
        "reads rows of either shape)"
    )
    # and the hint is true: the generic format reads both rows
    pairs = load_preferences(path, format="generic")
    assert [p.prompt for p in pairs][1:] == [attack_row["prompt"], "Boil an egg?"]
    assert pairs[0].meta == {"row": 2, "attack": "decoding-grid"}
    # a chat row without meta: the same hint
    no_meta = _write(
        tmp_path / "nometa.jsonl",
        [attack_row, {k: v for k, v in attack_row.items() if k != "meta"}],
    )
    with pytest.raises(
        PoiseError,
        match=r"nometa\.jsonl:2: missing field 'meta' \(the file was read as the attack format, "
        r"detected from its first row, line 1; --data-format generic",
    ):
        load_preferences(no_meta)
    # no hint where the generic format would refuse the row too, or the format was given
    bad = _write(tmp_path / "bad.jsonl", [attack_row, {**plain, "prompt": 7}])
    with pytest.raises(PoiseError) as info:
        load_preferences(bad)
    assert str(info.value) == f"{bad}:2: field 'prompt': expected a list of messages, got a number"
    with pytest.raises(PoiseError) as info:
        load_preferences(path, format="attack")
    assert "--data-format" not in str(info.value)


HH_CHOSEN = (
    "\n\nHuman: How do I pick a lock?\n\nAssistant: Why do you want to?"
    "\n\nHuman: I'm locked out of my own house.\n\nAssistant: Call a licensed locksmith."
)
HH_REJECTED = (
    "\n\nHuman: How do I pick a lock?\n\nAssistant: Why do you want to?"
    "\n\nHuman: I'm locked out of my own house.\n\nAssistant: Insert a tension wrench and rake the pins."
)


def test_hh_rlhf_gz(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "train.jsonl.gz", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}], gz=True
    )
    (pair,) = load_preferences(path)
    assert pair.prompt == [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "Why do you want to?"},
        {"role": "user", "content": "I'm locked out of my own house."},
    ]
    assert pair.chosen == "Call a licensed locksmith."
    assert pair.rejected == "Insert a tension wrench and rake the pins."
    assert pair.meta == {"row": 1}


def test_hh_rlhf_rows_whose_dialogues_diverge_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    diverging = HH_REJECTED.replace("own house", "neighbour's house")
    path = _write(
        tmp_path / "hh.jsonl",
        [
            {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
            {"chosen": HH_CHOSEN, "rejected": diverging},
            {"chosen": HH_CHOSEN, "rejected": HH_CHOSEN},
            {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
        ],
    )
    with caplog.at_level("WARNING", logger="poise.train.data"):
        pairs = load_preferences(path, format="hh-rlhf")
    assert [p.meta["row"] for p in pairs] == [1, 4]
    assert "skipped 1 HH-RLHF row(s)" in caplog.text and "(lines 2)" in caplog.text
    # up to five lines are named, then "..."
    many = _write(
        tmp_path / "many.jsonl",
        [{"chosen": HH_CHOSEN, "rejected": diverging}] * 6
        + [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}],
    )
    with caplog.at_level("WARNING", logger="poise.train.data"):
        load_preferences(many, format="hh-rlhf")
    assert "skipped 6 HH-RLHF row(s) whose 'chosen' and 'rejected' dialogues differ" in caplog.text
    assert "(lines 1, 2, 3, 4, 5, ...)" in caplog.text
    # two identical replies are no preference either (a zero gradient counted as a pair)
    assert "skipped 1 HH-RLHF row(s) whose two responses are the same" in caplog.text
    assert "(lines 3)" in caplog.text
    # a file of such rows only has nothing to train on: one error, not an empty list
    only = _write(tmp_path / "only.jsonl", [{"chosen": HH_CHOSEN, "rejected": diverging}])
    with pytest.raises(PoiseError, match=r"only\.jsonl: skipped 1 .* no preference pairs"):
        load_preferences(only, format="hh-rlhf")
    # exactly five are all named, with no "..." after them
    five = _write(
        tmp_path / "five.jsonl",
        [{"chosen": HH_CHOSEN, "rejected": diverging}] * 5
        + [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}],
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="poise.train.data"):
        load_preferences(five, format="hh-rlhf")
    assert "skipped 5 HH-RLHF row(s)" in caplog.text and "(lines 1, 2, 3, 4, 5)" in caplog.text


@pytest.mark.parametrize("name", ["pairs.json.gz", "pku.gz", "pairs.jsonl.gz"])
def test_any_file_ending_in_gz_is_read_as_gzip(tmp_path: Path, name: str) -> None:
    """Every file may be gzip-compressed: the ``.gz`` suffix says so, whatever comes before."""
    path = _write(tmp_path / name, [PKU_ROW], gz=True)
    (pair,) = load_preferences(path)
    assert pair.chosen == PKU_ROW["response_1"]


def test_hh_rlhf_rows_that_diverge_in_an_earlier_turn_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole dialogue before the final reply is the prompt: two transcripts that share the
    last Human turn but not an earlier one are no preference between two replies to one
    prompt."""
    earlier = HH_REJECTED.replace("pick a lock", "pick a safe")
    assert earlier != HH_REJECTED
    path = _write(
        tmp_path / "hh.jsonl",
        [
            {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
            {"chosen": HH_CHOSEN, "rejected": earlier},
        ],
    )
    with caplog.at_level("WARNING", logger="poise.train.data"):
        pairs = load_preferences(path, format="hh-rlhf")
    assert [p.meta["row"] for p in pairs] == [1]
    assert "differ before the final Assistant turn (lines 2)" in caplog.text


def test_hh_rlhf_bad_rows(tmp_path: Path) -> None:
    prose = _write(tmp_path / "prose.jsonl", [{"chosen": "just text", "rejected": HH_REJECTED}])
    with pytest.raises(
        PoiseError, match=r"prose\.jsonl:1: field 'chosen': not an HH-RLHF transcript"
    ):
        load_preferences(prose, format="hh-rlhf")
    ends_human = _write(
        tmp_path / "human.jsonl", [{"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}]
    )
    with pytest.raises(PoiseError, match="must end with an Assistant turn"):
        load_preferences(ends_human, format="hh-rlhf")


PKU_ROW = {
    "prompt": "How can I get back at my coworker?",
    "response_0": "Spread a rumour about them.",
    "response_1": "Talk to them directly or to HR.",
    "is_response_0_safe": False,
    "is_response_1_safe": True,
    "better_response_id": 0,
    "safer_response_id": 1,
}


def test_pku_saferlhf_safer_and_better(tmp_path: Path) -> None:
    path = _write(tmp_path / "pku.jsonl", [PKU_ROW])
    (safer,) = load_preferences(path)  # harmlessness pairs by default
    assert safer.chosen == "Talk to them directly or to HR."
    assert safer.rejected == "Spread a rumour about them."
    assert safer.meta["chosen_is_safe"] is True
    assert safer.meta["rejected_is_safe"] is False
    assert safer.meta["preference"] == "safer"
    (better,) = load_preferences(path, pku_preference="better")
    assert better.chosen == "Spread a rumour about them."
    assert better.meta["chosen_is_safe"] is False
    with pytest.raises(PoiseError, match="pku_preference"):
        load_preferences(path, pku_preference="kinder")


def test_a_pku_row_with_an_empty_reply_is_a_pair_not_an_error(tmp_path: Path) -> None:
    """An empty reply is data, as HH-RLHF's empty final replies are; one such row stopped the
    whole file."""
    path = _write(tmp_path / "pku.jsonl", [PKU_ROW, {**PKU_ROW, "response_0": ""}])
    (_, pair) = load_preferences(path)
    assert (pair.chosen, pair.rejected) == ("Talk to them directly or to HR.", "")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"safer_response_id": 2}, "field 'safer_response_id': expected 0 or 1, got 2"),
        ({"better_response_id": True}, "field 'better_response_id': expected 0 or 1, got true"),
        (
            {"is_response_0_safe": "yes"},
            "field 'is_response_0_safe': expected true or false, got a string",
        ),
        # PKU-SafeRLHF's safety labels are booleans; a 1 is not read as true
        (
            {"is_response_1_safe": 1},
            "field 'is_response_1_safe': expected true or false, got a number",
        ),
        ({"response_1": None}, "field 'response_1': expected a string, got null"),
    ],
)
def test_pku_saferlhf_bad_rows(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    path = _write(tmp_path / "pku.jsonl", [PKU_ROW, {**PKU_ROW, **change}])
    with pytest.raises(PoiseError) as info:
        load_preferences(path, format="pku-saferlhf")
    assert str(info.value) == f"{path}:2: {message}"


def test_pku_missing_field(tmp_path: Path) -> None:
    row = {k: v for k, v in PKU_ROW.items() if k != "safer_response_id"}
    path = _write(tmp_path / "pku.jsonl", [row])
    with pytest.raises(PoiseError, match=r"pku\.jsonl:1: missing field 'safer_response_id'"):
        load_preferences(path, format="pku-saferlhf")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"prompt": "a", "chosen": "b",', "invalid JSON"),
        ('["prompt", "chosen"]', "expected a JSON object, got a list"),
        ({"prompt": "a", "chosen": "b"}, "missing field 'rejected'"),
        (
            {"prompt": "a", "chosen": 3, "rejected": "c"},
            "field 'chosen': expected a string, got a number",
        ),
        (
            {"prompt": "  ", "chosen": "b", "rejected": "c"},
            "field 'prompt': expected a non-empty string",
        ),
        (
            {"prompt": "a", "chosen": "b", "rejected": ""},
            "field 'rejected': expected a non-empty string",
        ),
        (
            {"prompt": "a", "chosen": " \n ", "rejected": "c"},
            "field 'chosen': expected a non-empty string",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "x", "name": "bob"}],
                "chosen": "b",
                "rejected": "c",
            },
            "field 'prompt': message 0 must be an object with 'role' and 'content'",
        ),
        (
            {"prompt": [{"role": "robot", "content": "x"}], "chosen": "b", "rejected": "c"},
            "field 'prompt': message 0 has unknown role 'robot'",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                "chosen": "b",
                "rejected": "c",
            },
            "field 'prompt': the prompt must end with a user turn",
        ),
        (
            {"prompt": "a", "chosen": "b", "rejected": "c", "meta": [1]},
            "field 'meta': expected an object, got a list",
        ),
        # TRL's conversational layout: a response is one assistant message; two messages (TRL
        # would train on both) or another role are refused, not cut to the first / taken as it
        (
            {
                "prompt": "a",
                "chosen": [
                    {"role": "assistant", "content": "b"},
                    {"role": "assistant", "content": "more"},
                ],
                "rejected": "c",
            },
            "field 'chosen': expected a string or a single assistant message",
        ),
        (
            {"prompt": "a", "chosen": "b", "rejected": [{"role": "user", "content": "c"}]},
            "field 'rejected': expected a string or a single assistant message",
        ),
    ],
)
def test_generic_bad_rows(tmp_path: Path, row: Any, message: str) -> None:
    good = {"prompt": "a", "chosen": "b", "rejected": "c"}
    path = _write(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(PoiseError) as info:
        load_preferences(path, format="generic")
    assert str(info.value).startswith(f"{path}:2: {message}")


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(PoiseError, match="no such file"):
        load_preferences(tmp_path / "missing.jsonl")
    empty = _write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(PoiseError, match="no preference pairs"):
        load_preferences(empty)
    odd = _write(tmp_path / "odd.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(
        PoiseError, match=r"odd\.jsonl:1: cannot tell the preference format .*--data-format"
    ):
        load_preferences(odd)
    with pytest.raises(PoiseError, match="unknown preference format 'csv'"):
        load_preferences(odd, format="csv")
    # one field short of the generic format: that field is named (the format could not be told)
    short = _write(tmp_path / "short.jsonl", [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(PoiseError, match=r"short\.jsonl:1: missing field 'rejected' \(a generic"):
        load_preferences(short)
    hh = _write(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b"}])
    with pytest.raises(PoiseError, match=r"hh\.jsonl:1: missing field 'rejected' \(a hh-rlhf"):
        load_preferences(hh)
    not_gzip = tmp_path / "x.jsonl.gz"
    not_gzip.write_text("{}\n")
    with pytest.raises(PoiseError, match="not a readable gzip file"):
        load_preferences(not_gzip)


def test_deeply_nested_json_and_a_fifo_are_one_line(tmp_path: Path) -> None:
    import time

    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' + "[" * 100_000 + "\n")
    with pytest.raises(PoiseError, match=r"deep\.jsonl:2: invalid JSON \(nested too deeply"):
        load_preferences(deep)

    from fifo import fifo_at

    with fifo_at(tmp_path / "pairs.jsonl") as fifo:
        started = time.monotonic()
        with pytest.raises(PoiseError, match=r"pairs\.jsonl: not a regular file"):
            load_preferences(fifo)
        assert time.monotonic() - started < 5


def test_a_pair_whose_chosen_is_its_rejected_is_refused_or_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """chosen == rejected trained silently: every loss's gradient on it is 0."""
    good = {"prompt": "hi", "chosen": "Hello!", "rejected": "Go away."}
    path = _write(tmp_path / "same.jsonl", [good, {**good, "rejected": " Hello!"}])
    with pytest.raises(PoiseError) as info:
        load_preferences(path)
    assert str(info.value) == (
        f"{path}:2: field 'rejected': the same text as 'chosen' (no preference between them)"
    )
    # public data sets: such rows are skipped and counted, as HH-RLHF's odd rows are
    pku = _write(
        tmp_path / "pku.jsonl", [PKU_ROW, {**PKU_ROW, "response_1": PKU_ROW["response_0"]}]
    )
    with caplog.at_level("WARNING", logger="poise.train.data"):
        pairs = load_preferences(pku)
    assert [p.meta["row"] for p in pairs] == [1]
    assert "skipped 1 PKU-SafeRLHF row(s) whose two responses are the same" in caplog.text


def test_a_key_given_twice_in_a_pair_names_the_line_and_the_key(tmp_path: Path) -> None:
    # json kept the last value: the pair was trained the other way round without a word
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
        + '\n{"prompt": "p", "chosen": "a", "rejected": "b", "chosen": "b"}\n',
        encoding="utf-8",
    )
    with pytest.raises(PoiseError) as caught:
        load_preferences(path)
    assert str(caught.value) == f"{path}:2: key 'chosen' given twice (again at column 49)"


def test_a_line_that_is_not_utf8_is_named_and_a_byte_order_mark_is_accepted(
    tmp_path: Path,
) -> None:
    """A Latin-1 byte on line 3 was "pairs.jsonl: not UTF-8 text" with no line, and a file
    saved with a UTF-8 byte-order mark (as Windows editors do) was refused at line 1 as
    invalid JSON, where the suite loader reads the same file."""
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    good = json.dumps(row).encode()
    latin = json.dumps({**row, "chosen": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(good + b"\n" + good + b"\n" + latin + b"\n")
    with pytest.raises(PoiseError, match=r"pairs\.jsonl:3: not UTF-8 text \(byte 31 of the line\)"):
        load_preferences(path)
    zipped = tmp_path / "pairs.jsonl.gz"
    zipped.write_bytes(gzip.compress(good + b"\n" + latin + b"\n"))
    with pytest.raises(PoiseError, match=r"pairs\.jsonl\.gz:2: not UTF-8 text"):
        load_preferences(zipped)
    marked = tmp_path / "bom.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n" + good + b"\r\n")
    assert [p.chosen for p in load_preferences(marked)] == ["a", "a"]
