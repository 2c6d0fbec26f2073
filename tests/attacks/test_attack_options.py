"""Attack options are parsed to their types and checked, one line per bad value, the same from
``poise audit --attack-option KEY=VALUE`` (values that are not JSON arrive as text) and from
``poise.audit(attack_options={...})``, before the audit loads a model or writes a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import poise
from poise.attacks import SystemPrompt, attacks
from poise.cli import app
from poise.config import Sampling
from poise.errors import PoiseError
from poise.suites.schema import SuiteItem

KNOWN = "(known: benign, borderline, harmful, honesty-known, honesty-unknown, sycophancy)"


def _items() -> list[SuiteItem]:
    return [
        SuiteItem(id=f"{kind}-0", messages=[{"role": "user", "content": "q"}], kind=kind)
        for kind in ("harmful", "borderline", "benign")
    ]


def _check(attack: str, **options: Any) -> dict[str, Any]:
    from poise.attacks.base import check_attack_options

    return check_attack_options(attacks.get(attack), options)


@pytest.mark.parametrize(
    ("attack", "options", "message"),
    [
        ("worst_of_n", {"n": "two"}, "n must be an integer in [1, 4096], got 'two'"),
        ("worst_of_n", {"n": "abc"}, "n must be an integer in [1, 4096], got 'abc'"),
        ("worst_of_n", {"n": 0}, "n must be an integer in [1, 4096], got 0"),
        ("worst_of_n", {"n": 2.5}, "n must be an integer in [1, 4096], got 2.5"),
        ("worst_of_n", {"n": True}, "n must be an integer in [1, 4096], got True"),
        (
            "worst_of_n",
            {"temperature": "hot"},
            "temperature must be a number in (0, 100], got 'hot'",
        ),
        ("worst_of_n", {"temperature": 0}, "temperature must be a number in (0, 100], got 0"),
        (
            "worst_of_n",
            {"kinds": "harmfull"},
            f"kinds: unknown kind 'harmfull'; did you mean 'harmful'? {KNOWN}",
        ),
        ("exploitation", {"kinds": "foo"}, f"kinds: unknown kind 'foo' {KNOWN}"),
        (
            "exploitation",
            {"temperatures": "abc"},
            "temperatures must be numbers in [0, 100] (a list, or comma-separated such as "
            "0.5,0.7), got 'abc'",
        ),
        (
            "exploitation",
            {"top_ps": [0.5, 0]},
            "top_ps must be numbers in (0, 1] (a list, or comma-separated such as 0.5,0.7), "
            "got [0.5, 0]",
        ),
        (
            "exploitation",
            {"top_ks": "5,1.5"},
            "top_ks must be integers >= 1 (a list, or comma-separated such as 1,5), got '5,1.5'",
        ),
        (
            "exploitation",
            {"families": "greedy,tmperature"},
            "families: unknown family 'tmperature'; did you mean 'temperature'? "
            "(known: greedy, temperature, top_k, top_p)",
        ),
        (
            "exploitation",
            {"system_prompt": "of"},
            "system_prompt: unknown setting 'of'; did you mean 'off', 'on'? (known: off, on)",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_attack_and_the_option(
    attack: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(PoiseError) as checked:
        _check(attack, **options)
    assert str(checked.value) == f"attack {attack}: {message}"
    # the attack itself, called from Python, says the same
    with pytest.raises(PoiseError) as called:
        attacks.get(attack)(_items(), Sampling(), SystemPrompt("none", None), **options)
    assert str(called.value) == str(checked.value)


def test_values_are_parsed_to_their_types() -> None:
    assert _check("worst_of_n", n=4, temperature=1, kinds="harmful, borderline") == {
        "n": 4,
        "temperature": 1.0,
        "kinds": ("harmful", "borderline"),
    }
    parsed = _check(
        "exploitation",
        families="greedy,temperature",
        temperatures="0.5,0.7",
        top_ps=0.9,
        top_ks="1,5",
        system_prompt="on",
        kinds=["harmful"],
    )
    assert parsed == {
        "families": ("greedy", "temperature"),
        "temperatures": (0.5, 0.7),
        "top_ps": (0.9,),
        "top_ks": (1, 5),
        "system_prompt": ("on",),
        "kinds": ("harmful",),
    }


def test_kinds_as_text_select_whole_kinds_not_substrings() -> None:
    system = SystemPrompt("none", None)
    requests = attacks.get("worst_of_n")(_items(), Sampling(), system, n=2, kinds="harmful,benign")
    assert [r.item.kind for r in requests] == ["harmful", "benign"]
    requests = attacks.get("exploitation")(
        _items(), Sampling(), system, families="greedy", system_prompt="off", kinds="borderline"
    )
    assert [r.request_id for r in requests] == ["greedy/sys=off"]
    assert [r.item.kind for r in requests] == ["borderline"]


def test_the_python_api_checks_options_before_writing_anything(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    with pytest.raises(PoiseError, match=r"^attack worst_of_n: n must be an integer .* got 'two'$"):
        poise.audit(
            model="mock:refuse",
            suites=["harmful"],
            attack="worst_of_n",
            attack_options={"n": "two"},
            out=out,
        )
    assert not out.exists()


@pytest.mark.parametrize(
    ("attack", "option", "message"),
    [
        ("worst_of_n", "n=two", "attack worst_of_n: n must be an integer in [1, 4096], got 'two'"),
        ("worst_of_n", "temperature=hot", "attack worst_of_n: temperature must be a number"),
        ("worst_of_n", "kinds=harmfull", "attack worst_of_n: kinds: unknown kind 'harmfull'"),
        ("exploitation", "temperatures=abc", "attack exploitation: temperatures must be numbers"),
        ("exploitation", "kinds=foo", "attack exploitation: kinds: unknown kind 'foo'"),
    ],
)
def test_cli_attack_options_are_one_line_and_write_nothing(
    tmp_path: Path, attack: str, option: str, message: str
) -> None:
    out = tmp_path / "runs"
    args = ["audit", "-m", "mock:refuse", "--suite", "harmful", "--attack", attack]
    result = CliRunner().invoke(app, [*args, "--attack-option", option, "--out", str(out)])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}"), line
    assert not out.exists()


def test_repeats_tuples_booleans_and_empty_names_in_list_options() -> None:
    """A value given twice is one configuration (one request per item, not two alike); a tuple
    from Python is a list as a list is; ``true`` is no temperature; an empty name ("harmful,")
    is refused naming the value as given."""
    parsed = _check(
        "exploitation",
        temperatures="0.5,0.7,0.5",
        top_ps=(0.9, 1),
        families=["greedy", "temperature", "greedy"],
    )
    assert parsed["temperatures"] == (0.5, 0.7)
    assert parsed["top_ps"] == (0.9, 1.0)
    assert parsed["families"] == ("greedy", "temperature")
    with pytest.raises(
        PoiseError, match=r"temperatures must be numbers in \[0, 100\].*got \[True\]$"
    ):
        _check("exploitation", temperatures=[True])
    with pytest.raises(PoiseError) as info:
        _check("worst_of_n", kinds="harmful,")
    assert str(info.value).startswith("attack worst_of_n: kinds must be kinds out of harmful, ")
    assert str(info.value).endswith("got 'harmful,'")


def test_a_bad_families_value_names_them_in_the_plural() -> None:
    with pytest.raises(PoiseError) as info:
        _check("exploitation", families=[""])
    assert str(info.value).startswith("attack exploitation: families must be families out of ")
