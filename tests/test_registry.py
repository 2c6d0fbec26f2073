"""Registry: one way to build, options checked once, nearest names, one naming style."""

from __future__ import annotations

import pytest

from poise.errors import PoiseError, UnknownNameError
from poise.registry import (
    NAME_STYLE,
    Registry,
    numbered_options,
    numbered_values,
    option_parameter,
)


def make_registry() -> Registry[object]:
    things: Registry[object] = Registry("widget")

    @things.register("round_widget", help="a round one", reference="arXiv 0000.00000")
    def round_widget(size: int, *, radius: float = 1.0, colour: str = "red") -> tuple[object, ...]:
        return ("round", size, radius, colour)

    @things.register("square_widget")
    def square_widget(*, side: float = 2.0) -> tuple[object, ...]:
        """A square one.

        More text that is not the help line.
        """
        return ("square", side)

    return things


def test_build_checks_options_then_calls() -> None:
    things = make_registry()
    assert things.build("round_widget", 3, radius=2.5) == ("round", 3, 2.5, "red")
    with pytest.raises(UnknownNameError, match=r"'raduis'; did you mean 'radius'"):
        things.build("round_widget", 3, raduis=2.5)
    with pytest.raises(PoiseError, match=r"widget 'round_widget': missing a required argument"):
        things.build("round_widget", radius=1.0)


def test_an_option_given_to_an_entry_that_takes_none_names_the_entries_that_take_it() -> None:
    """`poise audit --attack-option n=8` (the default attack, greedy, takes no options) said
    "unknown option of attack 'greedy': 'n' (known: (none registered))"."""
    things = make_registry()

    @things.register("plain_widget")
    def plain_widget() -> tuple[object, ...]:
        return ("plain",)

    with pytest.raises(PoiseError) as info:
        things.check_options("plain_widget", {"radius": 2.0})
    assert str(info.value) == (
        "widget 'plain_widget' takes no options, got 'radius' ('radius' is an option of "
        "round_widget)"
    )
    with pytest.raises(PoiseError) as info:
        things.check_options("plain_widget", {"fins": 2})
    assert str(info.value) == "widget 'plain_widget' takes no options, got 'fins'"
    from poise.attacks import attacks

    with pytest.raises(
        PoiseError,
        match=r"^attack 'greedy' takes no options, got 'n' \('n' is an option of worst_of_n\)$",
    ):
        attacks.check_options("greedy", {"n": 8})


class Mixer:
    """A factory whose ``part`` / ``weight`` options repeat as ``part_2``, ``weight_2``, ..."""

    numbered_options = ("part", "weight", "missing")  # "missing" is no option: ignored

    def __init__(self, *, part: str = "", weight: float = 1.0, **numbered: object) -> None:
        self.options = {"part": part, "weight": weight, **numbered}


def test_numbered_options_repeat_an_option_any_number_of_times() -> None:
    assert numbered_options(Mixer) == ("part", "weight")
    assert option_parameter(Mixer, "weight") == option_parameter(Mixer, "weight_2")
    assert option_parameter(Mixer, "weight_31") == option_parameter(Mixer, "weight")
    for wrong in ("weight_1", "weight_0", "weight_02", "weight_x", "colour_2", "missing_2"):
        assert option_parameter(Mixer, wrong) is None, wrong
    things: Registry[object] = Registry("widget")
    things.register("mixer")(Mixer)
    built = things.build("mixer", part="a", part_2="b", weight_2=0.5, part_17="c")
    assert built.options == {
        "part": "a",
        "weight": 1.0,
        "part_2": "b",
        "weight_2": 0.5,
        "part_17": "c",
    }  # type: ignore[attr-defined]
    # a factory that takes **kwargs is still checked when it names its numbered options
    with pytest.raises(UnknownNameError, match=r"'weight_1'"):
        things.build("mixer", weight_1=2.0)
    # grouped by number, in increasing order, whatever order they were given in
    given = {"weight_10": 2.0, "part_3": "c", "part_10": "j", "weight_3": 0.5}
    groups = numbered_values("mixer", ("part", "weight"), given)
    assert groups == {3: {"part": "c", "weight": 0.5}, 10: {"weight": 2.0, "part": "j"}}
    assert list(groups) == [3, 10]
    with pytest.raises(PoiseError, match=r"mixer: unknown option 'colour_2'.*part_N, weight_N"):
        numbered_values("mixer", ("part", "weight"), {"colour_2": 1})
    # without numbered options nothing repeats
    assert option_parameter(make_registry().get("square_widget"), "side_2") is None


def test_unknown_names_suggest_the_nearest() -> None:
    things = make_registry()
    with pytest.raises(UnknownNameError, match=r"unknown widget 'round_widgt'; did you mean"):
        things.get("round_widgt")
    with pytest.raises(UnknownNameError, match="known: round_widget, square_widget"):
        things.build("hexagon")


def test_a_name_typed_in_capitals_suggests_the_registered_one() -> None:
    # 'ROUND_WIDGET' had no suggestion: difflib compared the characters case by case
    with pytest.raises(UnknownNameError, match=r"'ROUND_WIDGET'; did you mean 'round_widget'"):
        make_registry().get("ROUND_WIDGET")


def test_help_and_reference() -> None:
    things = make_registry()
    assert things.help("round_widget") == "a round one"
    assert things.reference("round_widget") == "arXiv 0000.00000"
    assert things.help("square_widget") == "A square one."  # first docstring line
    assert things.reference("square_widget") is None
    assert set(things.options("round_widget")) == {"radius", "colour"}


def test_names_are_snake_case_and_aliases_are_deprecated() -> None:
    things = make_registry()
    with pytest.raises(ValueError, match="not snake_case"):
        things.add("Kebab-Name", object())
    things.alias("round-widget", "round_widget")
    assert "round-widget" in things
    assert "round-widget" not in things.names()
    with pytest.warns(FutureWarning, match="'round-widget' is deprecated; use 'round_widget'"):
        assert things.build("round-widget", 1) == ("round", 1, 1.0, "red")
    with pytest.raises(ValueError, match="already registered"):
        things.add("round_widget", object())
    # an alias is the old name of one entry: neither a new entry nor a second alias takes it
    things.alias("round", "round_widget")
    with pytest.raises(ValueError, match="'round' is already a deprecated alias"):
        things.add("round", object())
    with pytest.raises(ValueError, match="'round' is already a deprecated alias of 'round_widget'"):
        things.alias("round", "square_widget")
    things.alias("round", "round_widget")  # the same alias again is fine
    with pytest.warns(FutureWarning):
        assert things.build("round", 2) == ("round", 2, 1.0, "red")


def test_every_registry_of_poise_uses_one_naming_style() -> None:
    import poise.attacks
    import poise.decoding
    import poise.guards
    import poise.models.resolve
    import poise.organism  # registers its resolver and its judge
    import poise.scoring.judges
    import poise.suites.formats
    import poise.train.losses.preference
    import poise.train.recipes

    registries: list[Registry[object]] = [
        poise.attacks.attacks,  # type: ignore[list-item]
        poise.decoding.strategies,  # type: ignore[list-item]
        poise.guards.guards,  # type: ignore[list-item]
        poise.models.resolve.backends,  # type: ignore[list-item]
        poise.models.resolve.resolvers,  # type: ignore[list-item]
        poise.scoring.judges.judges,  # type: ignore[list-item]
        poise.suites.formats.format_registry,  # type: ignore[list-item]
        poise.train.losses.preference.LOSSES,  # type: ignore[list-item]
        poise.train.recipes.RECIPES,  # type: ignore[list-item]
    ]
    for registry in registries:
        for name in registry.names():
            assert NAME_STYLE.match(name), f"{registry.kind} {name!r}"
    # names users typed before stay usable
    with pytest.warns(FutureWarning):
        assert poise.train.recipes.RECIPES.canonical("safe-rl") == "safe_rl"
    with pytest.warns(FutureWarning):
        assert poise.suites.formats.format_registry.canonical("hh-rlhf") == "hh_rlhf"
    with pytest.warns(FutureWarning):
        assert poise.attacks.attacks.canonical("best_of_n") == "worst_of_n"


def test_spec_form_writes_each_option_as_a_spec_would() -> None:
    from poise.models.base import LanguageModel
    from poise.registry import spec_form

    class Wrapper:
        numbered_options = ("other",)

        def __init__(
            self,
            base: LanguageModel,
            *,
            direction: str,
            other: LanguageModel | None = None,
            scorer: str = "",
            n: int = 4,
            strict: bool = True,
            mode: str = "add",
            note: str = "a note.",
            **numbered: object,
        ) -> None: ...

    assert spec_form("wrap", Wrapper) == (
        "wrap(MODEL, direction=…, other=MODEL, scorer=…, n=4, strict=true, mode=add, "
        "note='a note.', other_N=…)"
    )
