"""Model specs: one function-call grammar, nesting, plain names untouched, located errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from strategy_doubles import Suffix

from poise.errors import PoiseError, UnknownNameError
from poise.models import load_model
from poise.models.mock import MockModel
from poise.models.resolve import check_spec
from poise.models.spec import (
    Call,
    Name,
    SpecError,
    Str,
    format_spec,
    format_value,
    parse_spec,
    short_name,
)

PLAIN = [
    "organism-small",
    "organism",
    "./runs/my model,v2(final)",
    "/abs/path/to/model",
    "~/models/llama",
    "../up/one",
    "C:\\models\\llama",
    "Qwen/Qwen2.5-0.5B-Instruct",
    "meta-llama/Llama-3.2-1B@main",
    "openai:gpt-4o-mini@http://127.0.0.1:8000/v1",
    "openai:served@https://user@host:443/v1?x=1,2",
    "mock",
    "mock:refuser",
    "hf:Qwen/Qwen2.5-0.5B",
    "hf:./folder.with.dots",
]


@pytest.mark.parametrize("text", PLAIN)
def test_plain_names_paths_hub_ids_and_urls_are_untouched(text: str) -> None:
    node = parse_spec(f"  {text} ")
    assert node == Name(text)
    assert format_spec(node) == text


def test_calls_parse_with_positional_models_then_options() -> None:
    node = parse_spec(
        "eft(organism-large, tuned=organism-small-safe, reference=organism-small, beta=1.0)"
    )
    assert node == Call(
        "eft",
        (Name("organism-large"),),
        (
            ("tuned", Name("organism-small-safe")),
            ("reference", Name("organism-small")),
            ("beta", 1.0),
        ),
    )


def test_nesting_and_value_types() -> None:
    node = parse_spec(
        "guarded(best_of_n(organism-large, n=8, reward=organism-reward), monitor=x, k=-3,"
        " eps=1e-3, on=TRUE, off=false, label='a, b', path=\"./a(b)\",)"
    )
    assert isinstance(node, Call) and node.kind == "guarded"
    [inner] = node.args
    assert inner == Call(
        "best_of_n", (Name("organism-large"),), (("n", 8), ("reward", Name("organism-reward")))
    )
    options = dict(node.options)
    assert options["monitor"] == Name("x")
    assert options["k"] == -3 and isinstance(options["k"], int)
    assert options["eps"] == 0.001 and isinstance(options["eps"], float)
    assert options["on"] is True and options["off"] is False
    assert options["label"] == Str("a, b") and options["path"] == Str("./a(b)")


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("f(m,b=2,a=1)", "f(m, a=1, b=2)"),
        ("f( m , x = 0.50 )", "f(m, x=0.5)"),
        (
            'f(m, s=\'hi there\', w=word, q="1.5", t="true")',
            'f(m, q="1.5", s="hi there", t="true", w=word)',
        ),
        ("f(g(h(m, k=1)), z=g(m2))", "f(g(h(m, k=1)), z=g(m2))"),
        ("f('./a,b', u=openai:m@http://h:1/v1)", 'f("./a,b", u=openai:m@http://h:1/v1)'),
        ("f(m, s='line\\nnext \"q\"')", 'f(m, s="line\\nnext \\"q\\"")'),
    ],
)
def test_canonical_form_round_trips(text: str, canonical: str) -> None:
    written = format_spec(parse_spec(text))
    assert written == canonical
    assert format_spec(parse_spec(written)) == written  # a fixed point


def test_values_have_one_spelling() -> None:
    assert format_value(1) == "1" and format_value(1.0) == "1.0" and format_value(True) == "true"
    assert format_value(1e-7) == "1e-07"
    assert format_value("organism-small") == "organism-small"
    for needs_quotes in ("a b", "1.5", "true", "f(x)", "k=v", "", "a,b"):
        written = format_value(needs_quotes)
        assert written.startswith('"')
        assert parse_spec(f"f(m, v={written})") == Call(
            "f", (Name("m"),), (("v", Str(needs_quotes)),)
        )


@pytest.mark.parametrize(
    "value", ["back\bspace\fform feed", "\u00e9\U0001f600 and \x01", 'tab\tquote"slash\\']
)
def test_every_string_format_value_writes_parses_back_to_itself(value: str) -> None:
    written = format_value(value)
    assert parse_spec(f"f(m, v={written})") == Call("f", (Name("m"),), (("v", Str(value)),))


def test_json_escapes_in_quoted_values_read_as_json_reads_them() -> None:
    text = '"\\b\\f\\n\\/\\u00e9\\ud83d\\ude00"'
    node = parse_spec(f"f(m, v={text})")
    assert isinstance(node, Call) and node.options == (("v", Str("\b\f\n/\u00e9\U0001f600")),)
    for lone in ('"\\ud83d"', '"\\ude00x"', '"\\u12"', '"\\u+1a2"'):
        with pytest.raises(SpecError, match="escape"):
            parse_spec(f"f(m, v={lone})")


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("f(a, b=1, c)", 11, "positional models come first"),
        ("f(a", 2, "never closed"),
        ("f(a b(c))", 6, "'(' inside a name"),
        ("f(a, k=)", 8, "expected a value"),
        ("f(a) x", 6, "unexpected text"),
        ("f(a, k=1, k=2)", 11, "given twice"),
        ('f("abc', 3, "string is never closed"),
        ("f(a,, b)", 5, "expected a model"),
        ("f(a, t=1e999)", 8, "numbers must be finite"),
    ],
)
def test_syntax_errors_name_the_column_with_a_caret(text: str, column: int, reason: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    assert err.value.column == column
    assert reason in err.value.reason
    message = str(err.value)
    assert f"column {column}" in message
    line, caret = message.splitlines()[1:3]
    assert line == f"  {text}"
    assert caret.index("^") == column + 1  # under the character, after the two-space indent


def test_unknown_strategy_option_and_model_names_suggest_the_nearest(
    suffix_strategy: type[Suffix],
) -> None:
    with pytest.raises(
        SpecError,
        match=r"column 1: unknown strategy or guard 'logit_temprature'; did you mean 'logit_temperature'",
    ):
        check_spec("logit_temprature(mock, t=0.8)")
    with pytest.raises(
        SpecError, match=r"column 31: unknown option of 'test_suffix': 'tmes'; did you mean 'times'"
    ):
        check_spec("test_suffix(test_suffix(mock, tmes=2))")
    with pytest.raises(
        SpecError, match=r"column 13: unknown model 'organism-smal'; did you mean 'organism-small'"
    ) as err:
        check_spec("test_suffix(organism-smal)")
    assert str(err.value).splitlines()[2] == "  " + " " * 12 + "^"
    with pytest.raises(
        SpecError, match=r"test_suffix takes 1 model\(s\) before its options, got 2"
    ):
        check_spec("test_suffix(mock, mock)")
    with pytest.raises(SpecError, match="option 'text' is not a model"):
        check_spec("test_suffix(mock, text=test_suffix(mock))")
    with pytest.raises(UnknownNameError, match="did you mean 'organism-small'"):
        load_model("organism-smal")  # a plain name keeps the plain error


def test_names_are_checked_before_anything_loads(
    suffix_strategy: type[Suffix], monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    original = MockModel.__init__

    def counting(self: MockModel, *args: object, **kwargs: object) -> None:
        built.append("mock")
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(MockModel, "__init__", counting)
    with pytest.raises(SpecError, match="tmes"):
        load_model("test_suffix(mock, other=test_suffix(mock, tmes=1))")
    with pytest.raises(SpecError, match=r"model folder .* does not exist"):
        load_model("test_suffix(mock, other=./surely/not/here)")
    assert built == []


def test_load_model_builds_nested_specs_and_records_the_canonical_spec(
    suffix_strategy: type[Suffix],
) -> None:
    model = load_model("test_suffix( test_suffix(mock:a, text=x), times=2, text='?', other=mock:b)")
    assert isinstance(model, Suffix)
    canonical = (
        "test_suffix(test_suffix(mock:a, loud=false, text=x, times=1, weight=1.0), loud=false, "
        "other=mock:b, text=?, times=2, weight=1.0)"
    )
    assert model.spec == canonical
    assert load_model(canonical).spec == canonical
    assert load_model(canonical).name == model.name
    [[completion]] = model.generate([[{"role": "user", "content": "hi"}]], _greedy())
    assert completion.text == "...x??..."
    # ints where the option is a float are one spec with the float
    assert (
        load_model("test_suffix(mock, weight=2)").spec
        == load_model("test_suffix(mock, weight=2.0)").spec
    )


def test_an_existing_folder_named_like_a_call_is_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = tmp_path / "f(x)"
    odd.mkdir()
    assert check_spec(str(odd)) == Name(str(odd))
    with pytest.raises(PoiseError, match=r"no config\.json"):
        load_model(str(odd))
    # given relative to the working directory, the name itself reads as a call
    monkeypatch.chdir(tmp_path)
    assert check_spec("f(x)") == Name("f(x)")
    with pytest.raises(PoiseError, match=r"no config\.json"):
        load_model("f(x)")


def test_short_names_for_run_folders() -> None:
    assert (
        short_name("logit_temperature(organism-small, t=0.8)") == "logit_temperature-organism-small"
    )
    assert short_name("a(b(/x/y/model/, k=1))") == "a-b-model"
    # a remote model is named by its model, not by its URL's last part (issue 10, item 17)
    assert short_name("openai:m@http://h:1/v1") == "openai:m"
    assert short_name("openai:org/chat-7b@http://h:1/v1,http://g:2/v1") == "chat-7b"
    assert short_name("meta-llama/Llama-3.2-1B@main") == "Llama-3.2-1B@main"
    assert short_name("organism") == "organism"


def _greedy():  # type: ignore[no-untyped-def]
    from poise.config import Sampling

    return Sampling()


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("f(a, =3)", 6, "expected an option name before '='"),
        ("f(a t=0.8)", 5, "expected ',' before option 't'"),
        ("f(a, k=b n=2)", 10, "expected ',' before option 'n'"),
    ],
)
def test_a_missing_comma_or_option_name_is_located(text: str, column: int, reason: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    assert (err.value.column, err.value.reason) == (column, reason)


def test_too_many_models_points_at_the_first_one_too_many(
    suffix_strategy: type[Suffix],
) -> None:
    with pytest.raises(SpecError, match="takes 1 model") as err:
        check_spec("test_suffix(mock, mock:b, times=2)")
    assert err.value.column == 19


def test_errors_while_building_a_composed_spec_point_at_the_call_or_option(
    suffix_strategy: type[Suffix], tmp_path: Path
) -> None:
    # an inner model that fails to load: under its name
    with pytest.raises(SpecError, match="does not exist") as err:
        load_model(f"test_suffix(test_suffix(hf:{tmp_path / 'gone'}), times=2)")
    assert err.value.column == 25
    # a constructor's range check: under its option, in the call it belongs to
    with pytest.raises(SpecError, match="times") as err:
        load_model("test_suffix(test_suffix(mock, times=-1), times=2)")
    assert err.value.column == 31
    assert str(err.value).splitlines()[1] == "  test_suffix(test_suffix(mock, times=-1), times=2)"
