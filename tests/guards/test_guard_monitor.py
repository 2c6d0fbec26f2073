"""The monitor model: SCM's loss against its closed form, the folder, the data format."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from poise.errors import PoiseError
from poise.guards.data import (
    MonitorExample,
    read_monitor_data,
    token_labels,
    write_monitor_data,
)
from poise.guards.monitor import load_monitor, logic_consistency_loss, scm_loss


def _softmax1(logits: list[float]) -> float:
    a, b = logits
    return math.exp(b) / (math.exp(a) + math.exp(b))


@pytest.mark.parametrize("reduce", ["max", "min", "avg"])
def test_scm_loss_matches_its_closed_form(reduce: str) -> None:
    """By hand; the logic loss pools the masked token probabilities over every position, as the
    released code does (a masked position counts as 0: with a prompt token in the row, ``min``
    pools to 0 and ``avg`` divides by all four positions)."""
    torch.manual_seed(0)
    token_logits = torch.randn(2, 4, 2)
    response_logits = torch.randn(2, 2)
    token_labels_ = torch.tensor([[-100, 0, 1, 1], [-100, -100, 0, 0]])
    response_labels = torch.tensor([1, 0])
    got = scm_loss(token_logits, response_logits, token_labels_, response_labels, reduce=reduce)  # type: ignore[arg-type]
    pool = {"max": max, "min": min, "avg": lambda v: sum(v) / len(v)}[reduce]
    # CE over the 5 labelled tokens, by hand
    ce_tokens = []
    for r in range(2):
        for t in range(4):
            label = int(token_labels_[r, t])
            if label == -100:
                continue
            p = _softmax1(token_logits[r, t].tolist())
            ce_tokens.append(-math.log(p if label else 1 - p))
    ce_token = sum(ce_tokens) / len(ce_tokens)
    ce_response = 0.0
    for r in range(2):
        p = _softmax1(response_logits[r].tolist())
        ce_response -= math.log(p if int(response_labels[r]) else 1 - p) / 2
    logic = 0.0
    for r in range(2):
        p_r = _softmax1(response_logits[r].tolist())
        pooled = pool(
            [
                _softmax1(token_logits[r, t].tolist()) * float(token_labels_[r, t] != -100)
                for t in range(4)
            ]
        )
        logic -= math.log(max(1 - p_r + p_r * pooled, 1e-8)) / 2
    assert got["token"].item() == pytest.approx(ce_token, rel=1e-5)
    assert got["response"].item() == pytest.approx(ce_response, rel=1e-5)
    assert got["logic"].item() == pytest.approx(logic, rel=1e-5)
    # the released defaults: alpha 0.6, beta 1 - alpha, gamma 1
    assert got["loss"].item() == pytest.approx(0.6 * ce_token + 0.4 * ce_response + logic, rel=1e-5)


def test_logic_loss_vanishes_when_the_implication_holds() -> None:
    sure = torch.tensor([[-20.0, 20.0]])  # p = 1
    never = torch.tensor([[20.0, -20.0]])  # p = 0
    one_harmful = torch.tensor([[[-20.0, 20.0], [20.0, -20.0]]])
    none_harmful = torch.tensor([[[20.0, -20.0], [20.0, -20.0]]])
    mask = torch.ones(1, 2)
    # harmful response with a harmful token: no penalty; harmless response: none either
    assert logic_consistency_loss(sure, one_harmful, mask).item() == pytest.approx(0, abs=1e-6)
    assert logic_consistency_loss(never, none_harmful, mask).item() == pytest.approx(0, abs=1e-6)
    # harmful response whose tokens are all harmless: the largest penalty (-log 1e-8)
    assert logic_consistency_loss(sure, none_harmful, mask).item() == pytest.approx(
        -math.log(1e-8), rel=1e-3
    )
    # the harmful token is masked out (a prompt token): the penalty returns
    masked = torch.tensor([[0.0, 1.0]])
    assert logic_consistency_loss(sure, one_harmful, masked).item() > 15


def test_token_labels_follow_character_spans() -> None:
    offsets = [(0, 4), (4, 8), (8, 12), (12, 13)]
    assert token_labels(offsets, [(6, 12)]) == [0, 1, 1, 0]
    assert token_labels(offsets, []) == [0, 0, 0, 0]


def test_visible_offsets_drop_the_whitespace_at_both_ends_of_a_token() -> None:
    """A token that ends on whitespace ("cut\\n ") loses it as one that begins with it does:
    a span starting on that space does not label "cut"; a whitespace-only token keeps its
    range."""
    from poise.guards.data import visible_offsets

    text = "cut\n the  \n"
    offsets = [(0, 5), (5, 9), (9, 11)]  # "cut\n ", "the ", " \n"
    assert visible_offsets(text, offsets) == [(0, 3), (5, 8), (9, 11)]
    assert token_labels(visible_offsets(text, offsets), [(4, 8)]) == [0, 1, 0]


def test_a_span_ending_on_a_space_does_not_label_the_next_word(monitor_dir: Path) -> None:
    """A byte-level tokenizer merges a word's leading space into its token (" the": the space
    in its offsets); a span that ended on that space labelled the word after it harmful."""
    from transformers import AutoTokenizer

    from poise.guards.data import encode_example

    tokenizer = AutoTokenizer.from_pretrained(str(monitor_dir))
    response = "mix the dog"
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert " the" in pieces  # the space merged into the word's token

    def labels_of(span: tuple[int, int]) -> dict[str, int]:
        example = MonitorExample((("user", "hi"),), response, (span,))
        _, labels = encode_example(tokenizer, [], example)
        return dict(zip(pieces, labels, strict=True))

    assert labels_of((0, 4))[" the"] == 0  # "mix ": the space only
    assert labels_of((0, 4))["x"] == 1
    assert labels_of((4, 7))[" the"] == 1  # "the"
    assert labels_of((3, 7))[" the"] == 1  # " the"
    assert labels_of((3, 4)) == dict.fromkeys(pieces, 0)  # a span of whitespace alone


def test_monitor_data_that_is_not_utf8_is_one_line_naming_its_line(tmp_path: Path) -> None:
    """A Latin-1 export was a UnicodeDecodeError traceback from ``poise train monitor``."""
    good = {"messages": [{"role": "user", "content": "hi"}], "response": "hello there"}
    path = tmp_path / "d.jsonl"
    second = json.dumps({**good, "response": "caf\u00e9"}, ensure_ascii=False)
    path.write_bytes((json.dumps(good) + "\n" + second + "\n").encode("latin-1"))
    with pytest.raises(PoiseError, match=r"d\.jsonl:2: not UTF-8 text \(byte 0xe9\)"):
        read_monitor_data(path)


def test_monitor_data_errors_name_file_line_and_field(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}], "response": "hello there"}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "harm_spans": [[3, 99]]}) + "\n")
    with pytest.raises(PoiseError, match=r"d\.jsonl:2: field 'harm_spans'"):
        read_monitor_data(path)
    # spans that are not a list: one line, not a TypeError from iterating a number
    for spans in (5, "[[6, 11]]", {"6": 11}):
        path.write_text(json.dumps({**good, "harm_spans": spans}) + "\n")
        with pytest.raises(PoiseError, match=r"d\.jsonl:1: field 'harm_spans' must be a list"):
            read_monitor_data(path)
    path.write_text(json.dumps({**good, "harm_spans": [[6, 11]]}) + "\n")
    (example,) = read_monitor_data(path)
    assert example == MonitorExample((("user", "hi"),), "hello there", ((6, 11),), None)
    assert example.label is True
    # spans of harm in an answer labelled harmless: a contradiction, not data
    path.write_text(json.dumps({**good, "harm_spans": [[6, 11]], "harmful": False}) + "\n")
    with pytest.raises(PoiseError, match=r"d\.jsonl:1: field 'harmful' is false but 'harm_spans'"):
        read_monitor_data(path)


def test_overlapping_spans_and_spans_out_of_range_are_one_located_error(tmp_path: Path) -> None:
    """Spans that overlap, or one given twice, were read without a word (the token labels of
    their union); a span past the response did not say how long the response is."""
    good = {"messages": [{"role": "user", "content": "hi"}], "response": "hello there"}
    path = tmp_path / "spans.jsonl"

    def error_of(spans: object) -> str:
        path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "harm_spans": spans}) + "\n")
        with pytest.raises(PoiseError) as caught:
            read_monitor_data(path)
        return str(caught.value)

    assert error_of([[0, 5], [3, 8]]) == (
        f"{path}:2: field 'harm_spans': [0, 5] and [3, 8] overlap; give their union, [0, 8], once"
    )
    assert "[6, 9] and [6, 9] overlap" in error_of([[6, 9], [0, 2], [6, 9]])
    assert "[0, 8] and [2, 4] overlap; give their union, [0, 8]" in error_of([[2, 4], [0, 8]])
    message = error_of([[3, 12]])
    assert message.startswith(f"{path}:2: field 'harm_spans': [3, 12] is not [start, end)")
    assert "<= 11, its length in characters" in message
    assert "two integers" in error_of([[0.0, 5]])
    # spans that touch, in any order, are two spans
    path.write_text(json.dumps({**good, "harm_spans": [[5, 11], [0, 5]]}) + "\n")
    (example,) = read_monitor_data(path)
    assert example.harm_spans == ((5, 11), (0, 5))


def test_monitor_data_is_written_where_its_folder_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `poise train monitor-data -o '~/d/train.jsonl'`: the folder was made under the expanded
    # '~', the file opened under a literal '~' (a FileNotFoundError traceback)
    monkeypatch.setenv("HOME", str(tmp_path))
    example = MonitorExample((("user", "hi"),), "Hello!", ())
    assert write_monitor_data("~/d/train.jsonl", [example]) == 1
    (read,) = read_monitor_data(tmp_path / "d" / "train.jsonl")
    assert (read.messages, read.response) == (example.messages, example.response)


def test_monitor_data_interrupted_half_way_leaves_no_file(tmp_path: Path) -> None:
    """A generator of examples that fails (or is interrupted) after some lines left the partial
    ``.NAME.tmp`` beside the output."""
    example = MonitorExample((("user", "hi"),), "Hello!", ())

    def examples() -> Iterator[MonitorExample]:
        yield example
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_monitor_data(tmp_path / "train.jsonl", examples())
    assert list(tmp_path.iterdir()) == []
    # an existing file is kept as it was
    (tmp_path / "train.jsonl").write_text("old\n", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        write_monitor_data(tmp_path / "train.jsonl", examples())
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]
    assert (tmp_path / "train.jsonl").read_text(encoding="utf-8") == "old\n"


def test_monitor_folder_round_trips(monitor_dir: Path) -> None:
    monitor = load_monitor(str(monitor_dir))
    again = load_monitor(str(monitor_dir))
    prompt = monitor.prompt_ids([{"role": "user", "content": "the cat"}])
    answer = monitor.tokenizer("the dog ran", add_special_tokens=False)["input_ids"]
    assert monitor.header.head == "token" and monitor.header.k == 2
    assert monitor.response_scores([prompt], [answer]) == again.response_scores([prompt], [answer])


def test_scores_under_a_named_head_are_that_heads(monitor_dir: Path) -> None:
    """``head=`` scores as a header naming that head would, and leaves the header alone."""
    from dataclasses import replace

    monitor = load_monitor(str(monitor_dir))
    prompt = monitor.prompt_ids([{"role": "user", "content": "the cat"}])
    answer = monitor.tokenizer("the dog ran", add_special_tokens=False)["input_ids"]
    streaming = monitor.response_scores([prompt], [answer])
    response = monitor.response_scores([prompt], [answer], "response")
    assert monitor.response_scores([prompt], [answer], "token") == streaming  # header: token
    assert response != streaming
    monitor.header = replace(monitor.header, head="response")
    assert monitor.response_scores([prompt], [answer]) == response
    with pytest.raises(PoiseError, match="monitor head 'resp'"):
        monitor.response_scores([prompt], [answer], "resp")


def test_a_folder_without_header_is_refused(tiny_hf_model_dir: Path) -> None:
    with pytest.raises(PoiseError, match="not a monitor folder"):
        load_monitor(str(tiny_hf_model_dir))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", "0.9", "threshold must be a number, got '0.9'"),
        ("threshold", None, "threshold must be a number, got None"),
        ("k", "3", "k must be an integer, got '3'"),
        ("k", 2.5, "k must be an integer, got 2.5"),
        ("alpha", "a", "alpha must be a number"),
        ("metadata", [], "metadata must be an object"),
    ],
)
def test_a_header_of_the_wrong_types_is_one_clear_line(
    monitor_dir: Path, tmp_path: Path, field: str, value: object, message: str
) -> None:
    """A hand-edited monitor.json: a string or null threshold or k raised a TypeError from a
    comparison, and k 2.5 or an unknown alpha's type loaded."""
    import shutil

    from poise.guards.monitor import read_header

    folder = tmp_path / "monitor"
    shutil.copytree(monitor_dir, folder)
    header = json.loads((folder / "monitor.json").read_text())
    (folder / "monitor.json").write_text(json.dumps({**header, field: value}))
    with pytest.raises(PoiseError, match=rf"monitor\.json: {message}"):
        read_header(folder)
    with pytest.raises(PoiseError, match=rf"monitor\.json: {message}"):
        load_monitor(str(folder))


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("config.json", "could not load the backbone"),
        ("model.safetensors", "could not load the backbone"),
        ("tokenizer*", "could not load the tokenizer"),
        ("monitor.safetensors", "could not read monitor.safetensors"),
    ],
)
def test_a_monitor_folder_with_broken_files_is_one_clear_line(
    monitor_dir: Path, tmp_path: Path, broken: str, message: str
) -> None:
    """A folder with a monitor.json whose backbone, tokenizer or heads are missing or corrupt:
    transformers' ValueError / OSError and safetensors' SafetensorError came out as they were."""
    import shutil

    folder = tmp_path / "monitor"
    shutil.copytree(monitor_dir, folder)
    for path in folder.glob(broken):
        if broken == "monitor.safetensors":
            path.write_bytes(b"not a safetensors file")  # truncated or corrupt
        else:
            path.unlink()
    with pytest.raises(PoiseError, match=rf"monitor '{re.escape(str(folder))}': {message}"):
        load_monitor(str(folder))


def test_monitor_data_with_a_key_given_twice_names_the_line_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "hi"}], "response": "a", "harmful": true, '
        '"harmful": false}\n',
        encoding="utf-8",
    )
    with pytest.raises(PoiseError, match=r"d\.jsonl:1: key 'harmful' given twice \(again at"):
        read_monitor_data(path)


def test_scm_loss_weighs_its_terms_by_alpha_and_gamma() -> None:
    """``alpha * CE_token + (1 - alpha) * CE_response + gamma * L_logic`` (arXiv 2506.09996) at
    weights other than the released defaults, from the terms the function returns."""
    torch.manual_seed(1)
    token_logits = torch.randn(2, 3, 2)
    response_logits = torch.randn(2, 2)
    labels = torch.tensor([[-100, 1, 0], [-100, 0, 0]])
    response_labels = torch.tensor([1, 0])
    got = scm_loss(token_logits, response_logits, labels, response_labels, alpha=0.25, gamma=3.0)
    expected = 0.25 * got["token"] + 0.75 * got["response"] + 3.0 * got["logic"]
    assert got["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert got["logic"].item() > 0.01  # the gamma term is not vanishing here


def test_the_released_defaults_and_streaming_head() -> None:
    """The released defaults (``scripts/run-scm.sh``: alpha 0.6, gamma 1, logic reduced by max)
    and the head the released partial evaluation scores tokens with: the response head."""
    from poise.guards.monitor import MonitorHeader

    header = MonitorHeader()
    assert (header.alpha, header.gamma, header.logic_reduce) == (0.6, 1.0, "max")
    assert header.head == "response"


def test_prompt_tokens_carry_no_token_label(monitor_dir: Path) -> None:
    """The prompt's positions are labelled -100 (ignored by CE_token and masked in L_logic),
    the response's by its harm spans."""
    from transformers import AutoTokenizer

    from poise.guards.data import encode_example

    tokenizer = AutoTokenizer.from_pretrained(str(monitor_dir))
    example = MonitorExample((("user", "hi"),), "mix the dog", ((0, 3),))
    ids, labels = encode_example(tokenizer, [5, 6, 7], example)
    assert ids[:3] == [5, 6, 7]
    assert labels[:3] == [-100, -100, -100]
    assert labels[3] == 1 and set(labels[3:]) <= {0, 1}


def test_each_heads_scores_are_its_harmful_probability_at_each_response_token(
    monitor_dir: Path,
) -> None:
    """``response_scores``: softmax(head(h_t))[harmful] for the hidden state after each response
    token, computed here from the backbone's own last hidden states; ``forward``'s response
    logits read each right-padded row's last real token."""
    monitor = load_monitor(str(monitor_dir))
    prompt = monitor.prompt_ids([{"role": "user", "content": "the cat"}])
    answers = [
        monitor.tokenizer(text, add_special_tokens=False)["input_ids"]
        for text in ("the dog ran", "a cat")
    ]
    heads = {"response": monitor.response_head, "token": monitor.token_head}
    hidden = []
    for answer in answers:
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            states = monitor.backbone(ids, output_hidden_states=True).hidden_states[-1][0]
        hidden.append(states)  # [tokens, hidden]
        for name, layer in heads.items():
            with torch.no_grad():
                expected = torch.softmax(layer(states[len(prompt) :]), dim=-1)[:, 1]
            got = monitor.response_scores([prompt], [answer], name)[0]
            assert got == pytest.approx(expected.tolist(), abs=1e-5)
    # forward on right-padded rows: the response head at each row's last real token
    rows = [prompt + a for a in answers]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        _, response_logits = monitor(ids, mask)
        for row, states in enumerate(hidden):
            expected = monitor.response_head(states[-1])
            assert response_logits[row].tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_the_token_head_reads_the_hidden_states_through_dropout_in_training(
    monitor_dir: Path,
) -> None:
    """The released ``token_classifier`` is applied after dropout; the response head is not.
    With the dropout at p = 1 in training, every token logit is the token head's bias."""
    monitor = load_monitor(str(monitor_dir))
    ids = torch.tensor([monitor.tokenizer("the dog ran", add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        _, response_eval = monitor(ids, mask)
        monitor.dropout = torch.nn.Dropout(1.0)
        monitor.train()
        monitor.backbone.eval()  # the backbone's own dropout (if any) stays off
        token_logits, response_logits = monitor(ids, mask)
    bias = monitor.token_head.bias.expand_as(token_logits)
    assert torch.allclose(token_logits, bias)
    assert torch.allclose(response_logits, response_eval, atol=1e-6)


def test_scores_of_many_answers_come_back_in_the_order_given(monitor_dir: Path) -> None:
    """33 answers of different lengths (more than one batch of 32, sorted by length inside):
    each row's scores are its own, in the order the answers were given, as the backbone's
    hidden states of that answer alone give them."""
    monitor = load_monitor(str(monitor_dir))
    prompt = monitor.prompt_ids([{"role": "user", "content": "the cat"}])
    answers = [[10 + (7 * i + j) % 50 for j in range(1 + i % 5)] for i in range(33)]
    got = monitor.response_scores([prompt] * len(answers), answers, "response")
    for answer, scores in zip(answers, got, strict=True):
        with torch.no_grad():
            states = monitor.backbone(
                torch.tensor([prompt + answer]), output_hidden_states=True
            ).hidden_states[-1][0]
            expected = torch.softmax(monitor.response_head(states[len(prompt) :]), dim=-1)[:, 1]
        assert scores == pytest.approx(expected.tolist(), abs=1e-5)


def test_encoded_answers_are_the_prompt_the_response_and_its_token_labels(
    monitor_dir: Path,
) -> None:
    """``encode_answers``: the chat's prompt ids, the response's ids and one label per response
    token (the span "the" labels the token " the" only)."""
    monitor = load_monitor(str(monitor_dir))
    example = MonitorExample((("user", "hi"),), "mix the dog", ((4, 7),))
    (prompt,), (response,), (labels,) = monitor.encode_answers([example])
    ids = monitor.tokenizer("mix the dog", add_special_tokens=False)["input_ids"]
    assert prompt == monitor.prompt_ids(example.chat) and response == ids
    pieces = [monitor.tokenizer.decode([i]) for i in ids]
    assert labels == [int(piece == " the") for piece in pieces]


def test_blank_lines_are_skipped_an_empty_response_is_refused_and_labels_are_written(
    tmp_path: Path,
) -> None:
    """A blank line between examples is no example; an empty response is one located line
    (it has no token to label); a written example says whether it is harmful, spans or not."""
    good = {"messages": [{"role": "user", "content": "hi"}], "response": "hello there"}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n\n  \n" + json.dumps(good) + "\n")
    assert len(read_monitor_data(path)) == 2
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "response": ""}) + "\n")
    with pytest.raises(PoiseError, match=r"d\.jsonl:2: field 'response' must be a non-empty"):
        read_monitor_data(path)
    examples = [
        MonitorExample((("user", "hi"),), "hello there", ((6, 11),)),
        MonitorExample((("user", "hi"),), "hello there"),
    ]
    write_monitor_data(path, examples)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["harmful"] for row in rows] == [True, False]
