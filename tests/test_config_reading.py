"""The shared config models and YAML reading (poise.config). Not test_config.py: the merge
tests hold that module name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from poise.config import (
    Sampling,
    ValueSource,
    format_validation_error,
    read_yaml_mapping,
    value_sources,
    yaml_key_lines,
)
from poise.errors import PoiseError


def refused(**fields: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Sampling(**fields)
    return format_validation_error(caught.value)


@pytest.mark.parametrize("field", ["temperature", "top_p"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_float_that_is_not_finite_is_refused_as_such(field: str, value: float) -> None:
    # NaN was refused as "should be less than or equal to 100", a bound it does not break
    assert refused(**{field: value}) == f"{field}: Input should be a finite number"


def test_the_seed_is_a_64_bit_integer() -> None:
    # a larger seed was taken, and sent as it was to an OpenAI-compatible server (vLLM: int64)
    assert Sampling(seed=-1).seed == -1 and Sampling(seed=2**63 - 1).seed == 2**63 - 1
    assert refused(seed=2**63).startswith("seed: Input should be less than or equal to")
    assert refused(seed=-(2**63) - 1).startswith("seed: Input should be greater than or equal")


@pytest.mark.parametrize(
    ("fields", "start"),
    [
        ({"temperature": -0.1}, "temperature: Input should be greater than or equal to 0"),
        ({"top_p": 0}, "top_p: Input should be greater than 0"),
        ({"top_k": -1}, "top_k: Input should be greater than or equal to 0"),
        ({"max_new_tokens": 0}, "max_new_tokens: Input should be greater than or equal to 1"),
        ({"max_new_tokens": 10**9}, "max_new_tokens: Input should be less than or equal to"),
        ({"n": 0}, "n: Input should be greater than or equal to 1"),
        ({"n": 10**6}, "n: Input should be less than or equal to 4096"),
    ],
)
def test_sampling_edge_values_are_one_line(fields: dict[str, object], start: str) -> None:
    message = refused(**fields)
    assert message.startswith(start) and "\n" not in message


def test_a_key_given_twice_names_its_line(tmp_path: Path) -> None:
    # the last value won silently
    config = tmp_path / "c.yaml"
    config.write_text("model: a\nsampling:\n  n: 2\n  n: 3\n")
    with pytest.raises(PoiseError, match=rf"^{config}:4: invalid YAML \(key 'n' is given twice\)"):
        read_yaml_mapping(config)
    config.write_text("model: a\nmodel: b\n")
    with pytest.raises(PoiseError, match=rf"^{config}:2: .*key 'model' is given twice"):
        read_yaml_mapping(config)
    config.write_text("base: &b {n: 2}\nsampling:\n  <<: *b\n  n: 3\n")  # a merge may override
    assert read_yaml_mapping(config)["sampling"] == {"n": 3}


def test_a_file_that_is_not_a_mapping_or_not_text_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    for text, what in (("- a\n- b\n", "list"), ("just text\n", "string"), ("3\n", "number")):
        config.write_text(text)
        with pytest.raises(PoiseError, match=rf"^{config}: expected a mapping .* got a {what}$"):
            read_yaml_mapping(config)
    config.write_text("# only a comment\n")
    assert read_yaml_mapping(config) == {}
    config.write_bytes(b"model: \xff\xfe\n")
    with pytest.raises(PoiseError, match=rf"^{config}: not UTF-8 text$"):
        read_yaml_mapping(config)


def test_the_lines_of_keys_top_level_and_nested(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: mock\n\nsampling:\n  temperature: 1.0\n  n: 2\n")
    assert yaml_key_lines(config) == {
        "model": 1,
        "sampling": 3,
        "sampling.temperature": 4,
        "sampling.n": 5,
    }
    assert yaml_key_lines(tmp_path / "none.yaml") == {}


def test_a_refused_value_names_its_source_only_when_it_is_the_sources_value() -> None:
    with pytest.raises(ValidationError) as caught:
        Sampling(n=0)
    source = ValueSource("c.yaml:2", "sampling.n", (0, 0))
    with value_sources({"n": source}):
        assert format_validation_error(caught.value).endswith("(from c.yaml:2, key 'sampling.n')")
    with value_sources({"n": ValueSource("c.yaml:2", "n", (5, 5))}):  # another value: not it
        assert "c.yaml" not in format_validation_error(caught.value)
    assert "c.yaml" not in format_validation_error(caught.value)  # outside: no source


def test_a_field_error_names_the_flag_of_the_field_not_of_an_item_of_its_value() -> None:
    """A nested sampling value named the flag of its last location part: ``sampling.stop.0``
    was ``(--0)``; and ``--judge-labels-column`` is spelt as poise audit spells it."""
    from poise.auditing import make_config
    from poise.config import AuditConfig, dashed_flag, format_field_error

    with pytest.raises(ValidationError) as caught:
        AuditConfig.model_validate({"sampling": {"stop": [1]}})
    assert format_field_error(caught.value, dashed_flag).startswith("sampling.stop.0 (--stop): ")
    with pytest.raises(PoiseError, match=r"judge_labels_columns \(--judge-labels-column\): "):
        make_config(None, judge_labels_columns=["prompt"])


def test_a_file_that_begins_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    # a JSON config saved by a Windows editor was refused ("Unexpected UTF-8 BOM"), its YAML twin
    # read; both are read, and the lines of their keys found
    for name, text in (
        ("c.json", '{\n  "model": "mock",\n  "sampling": {"n": 2}\n}\n'),
        ("c.yaml", "model: mock\nsampling:\n  n: 2\n"),
    ):
        config = tmp_path / name
        config.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
        assert read_yaml_mapping(config) == {"model": "mock", "sampling": {"n": 2}}
        lines = yaml_key_lines(config)
        assert lines["model"] == (2 if name == "c.json" else 1)
        assert lines["sampling.n"] == 3


def test_an_empty_stop_string_is_refused_naming_the_flag() -> None:
    """``--stop ""`` ends nothing: it was accepted and recorded in run.json and the cache key as
    a setting (the server already refuses it with a 400)."""
    from typer.testing import CliRunner

    from poise.cli import app
    from poise.config import Sampling

    with pytest.raises(ValidationError):
        Sampling(stop=("",))
    assert Sampling(stop=("\n\n",)).stop == ("\n\n",)
    result = CliRunner().invoke(app, ["audit", "--stop", "", "--limit", "1"])
    assert result.exit_code == 2
    assert "--stop" in result.output


def test_a_json_file_with_an_upper_case_suffix_is_read_as_json(tmp_path: Path) -> None:
    # a Windows tool's AUDIT.JSON, indented with tabs (which YAML refuses), is JSON as audit.json is
    config = tmp_path / "AUDIT.JSON"
    config.write_text('{\n\t"model": "mock",\n\t"sampling": {"n": 2}\n}\n')
    assert read_yaml_mapping(config) == {"model": "mock", "sampling": {"n": 2}}
    assert yaml_key_lines(config)["sampling.n"] == 3


def test_a_nan_from_the_file_is_blamed_on_the_file() -> None:
    # YAML reads `.nan` as a float NaN: the refused value is the file's, though NaN != NaN
    with pytest.raises(ValidationError) as caught:
        Sampling(temperature=math.nan)
    nan = ValueSource("c.yaml:3", "temperature", (math.nan, math.nan))
    with value_sources({"temperature": nan}):
        assert format_validation_error(caught.value) == (
            "temperature: Input should be a finite number (from c.yaml:3, key 'temperature')"
        )


def test_a_flags_keyword_that_is_a_field_itself_is_no_other_spelling() -> None:
    """flag_keywords: ``--suite`` of ``prompts`` gives ``suite``, unless ``suite`` is a field of
    the config in its own right (then ``suite=`` sets that field, not ``prompts``)."""
    from poise.config import dashed_flag, flag_keywords

    aliases = {"prompts": ("--suite",)}
    assert flag_keywords(["prompts"], dashed_flag, aliases) == {"suite": "prompts"}
    assert flag_keywords(["prompts", "suite"], dashed_flag, aliases) == {}


def test_a_missing_field_names_its_flag_and_no_value() -> None:
    from poise.errors import PoiseError
    from poise.gate import gate

    with pytest.raises(PoiseError) as caught:
        gate(judge="refusal")
    assert str(caught.value) == "gate config: model (--model): Field required"


def test_decoding_is_greedy_unless_a_temperature_is_given() -> None:
    # README: `poise audit` decodes greedily by default (its run is named organism-greedy)
    assert Sampling().temperature == 0.0 and Sampling().greedy
    assert not Sampling(temperature=1.0).greedy and Sampling(temperature=1.0, top_k=1).greedy


def test_yaml_nested_past_the_recursion_limit_is_one_line(tmp_path: Path) -> None:
    # YAML's parser recurses per level: a RecursionError traceback from poise merge or --config
    path = tmp_path / "deep.yml"
    path.write_text("merge_method: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(PoiseError, match=r"deep\.yml: invalid YAML \(nested too deeply"):
        read_yaml_mapping(path)
    assert yaml_key_lines(path) == {}  # the lines of keys: none, not a traceback either
