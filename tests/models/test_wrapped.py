"""Wrapped models: composed names and specs, caches that never collide, pass-through."""

from __future__ import annotations

from pathlib import Path

import pytest
from strategy_doubles import Suffix

from poise.config import Sampling
from poise.decoding.best_of_n import BestOfN
from poise.errors import PoiseError
from poise.models import load_model
from poise.models.base import Capabilities, LanguageModel, system_prompt_in_template
from poise.models.cache import CachedModel, ResponseCache
from poise.models.mock import MockModel
from poise.models.wrapped import WrappedModel

CHAT = [{"role": "user", "content": "hi"}]


def test_name_is_composed_from_kind_inner_names_and_sorted_options() -> None:
    inner = MockModel("base#abc")
    other = MockModel("helper")
    model = Suffix(inner, text="a b", times=2, other=other)
    assert (
        model.name
        == 'test_suffix(base#abc, loud=false, other=helper, text="a b", times=2, weight=1.0)'
    )
    assert (
        Suffix(MockModel("base#abc"), text="a b", times=2, other=MockModel("helper")).name
        == model.name
    )
    names = {
        Suffix(inner).name,
        Suffix(inner, times=2).name,
        Suffix(inner, text="?").name,
        Suffix(inner, weight=0.5).name,
        Suffix(inner, loud=True).name,
        Suffix(MockModel("other-base")).name,
        Suffix(Suffix(inner)).name,
        inner.name,
    }
    assert len(names) == 8  # every option and every inner model tells them apart


def test_spec_is_composed_from_inner_specs_or_none() -> None:
    assert Suffix(MockModel("m")).spec is None  # a model object without a spec
    built = load_model("mock:m")
    assert built.spec == "mock:m"
    assert (
        Suffix(built, times=3).spec
        == "test_suffix(mock:m, loud=false, text=!, times=3, weight=1.0)"
    )
    assert Suffix(built, other=MockModel("no-spec")).spec is None
    nested = Suffix(Suffix(built))
    assert nested.spec is not None and nested.spec.startswith("test_suffix(test_suffix(mock:m, ")


def test_cache_keys_of_a_wrapper_and_its_inner_model_never_collide(tmp_path: Path) -> None:
    inner = MockModel("base", default="answer")
    cache = ResponseCache(tmp_path / "cache.sqlite")
    plain = CachedModel(inner, cache)
    wrapped = CachedModel(Suffix(inner, text="!!"), cache)
    sampling = Sampling()
    assert plain.generate([CHAT], sampling)[0][0].text == "answer"
    assert wrapped.generate([CHAT], sampling)[0][0].text == "answer!!"
    assert (
        plain.generate([CHAT], sampling)[0][0].text == "answer"
    )  # from the cache, not the wrapper's row
    assert len(cache) == 2
    other = CachedModel(Suffix(inner, text="?"), cache)
    assert other.generate([CHAT], sampling)[0][0].text == "answer?"
    assert len(cache) == 3


def test_declarations_pass_through() -> None:
    inner = MockModel("base", default_system_prompt="Be brief.", system_prompt_in_template=True)
    inner.tokenizer = object()
    inner.recommended_judge = "oracle"
    inner.context_length = 64
    inner.system_prompt_declared = False  # type: ignore[attr-defined]
    for model in (
        Suffix(inner),
        Suffix(Suffix(inner)),
        CachedModel(Suffix(inner), _memory_cache()),
    ):
        assert model.default_system_prompt == "Be brief."
        assert system_prompt_in_template(model) is True
        assert model.tokenizer is inner.tokenizer
        assert model.recommended_judge == "oracle"
        # the audit's up-front context check and its no-system-prompt warning read these
        assert model.context_length == 64
        assert model.system_prompt_declared is False


def test_progress_passes_through() -> None:
    inner = MockModel("base")
    seen: list[int] = []
    Suffix(Suffix(inner)).generate([CHAT, CHAT, CHAT], Sampling(), progress=seen.append)
    assert sum(seen) == 3


def test_score_passes_through_only_where_the_distribution_is_the_inner_models() -> None:
    inner = MockModel("base")
    assert Suffix(inner).capabilities.score  # Suffix declares preserves_distribution
    assert Suffix(inner).score([CHAT], ["a b"])[0].total == -2.0
    no_scores = MockModel("base", scores=False)
    assert not Suffix(no_scores).capabilities.score
    with pytest.raises(NotImplementedError):
        Suffix(no_scores).score([CHAT], ["a b"])

    class Changes(Suffix):
        preserves_distribution = False

    assert not Changes(inner).capabilities.score
    with pytest.raises(NotImplementedError, match="cannot score"):
        Changes(inner).score([CHAT], ["a b"])


def test_cached_model_is_a_transparent_wrapper(tmp_path: Path) -> None:
    inner = load_model("mock:m")
    inner.recommended_judge = "oracle"
    cached = CachedModel(inner, ResponseCache(tmp_path / "c.sqlite"))
    assert (cached.name, cached.spec, cached.recommended_judge) == ("mock:m", "mock:m", "oracle")
    assert cached.capabilities == Capabilities(score=True)
    seen: list[int] = []
    cached.generate(
        [CHAT, CHAT, [{"role": "user", "content": "x"}]], Sampling(), progress=seen.append
    )
    cached.generate([CHAT], Sampling(), progress=seen.append)
    assert sum(seen) == 4  # misses reported by the inner model, hits and repeats by the cache


class Plain(WrappedModel):
    """A wrapper that keeps WrappedModel's own generate and score."""

    kind = "test_plain"
    preserves_distribution = True


def test_a_wrapper_without_its_own_generate_passes_every_sampling_setting_on() -> None:
    inner = MockModel("base", responses={"q": ["one two", "three four five", "six seven eight"]})
    chat = [{"role": "user", "content": "q"}]
    sampling = Sampling(temperature=1.0, seed=1, n=2, stop=("four",), max_new_tokens=2)
    [row] = Plain(Plain(inner)).generate([chat], sampling)
    # seed 1: samples 1 and 2 of the script; "four" stops the first, 2 tokens end the second
    assert [(c.text, c.num_tokens, c.finish_reason) for c in row] == [
        ("three ", 1, "stop"),
        ("six seven ", 2, "length"),
    ]


def test_a_wrappers_sampling_check_asks_every_wrapped_model() -> None:
    base = MockModel("base")
    strict = BestOfN(base, n=4096, reward="keywords:a")
    sampling = Sampling(n=2, temperature=1.0)
    # the inner model, a second wrapped model, and two levels down
    for model in (Suffix(strict), Plain(base, strict), Plain(Plain(strict))):
        with pytest.raises(PoiseError, match="draw 8192 samples per chat"):
            model.check_sampling(sampling)
    Plain(base, BestOfN(base, n=2, reward="keywords:a")).check_sampling(sampling)  # 4 draws


class WithHelper(WrappedModel):
    """A wrapper given a second model as a keyword option, as eft's tuned_N and draft are."""

    kind = "test_with_helper"

    def __init__(self, inner: LanguageModel, helper: LanguageModel) -> None:
        super().__init__(inner, helper=helper)


def test_a_wrappers_sampling_check_asks_models_given_as_options() -> None:
    base = MockModel("base")
    model = WithHelper(base, helper=BestOfN(base, n=4096, reward="keywords:a"))
    assert model.name.startswith("test_with_helper(base, helper=best_of_n(")
    with pytest.raises(PoiseError, match="draw 8192 samples per chat"):
        model.check_sampling(Sampling(n=2, temperature=1.0))
    WithHelper(base, helper=BestOfN(base, n=2, reward="keywords:a")).check_sampling(
        Sampling(n=2, temperature=1.0)
    )


def test_a_wrapper_scores_with_its_inner_model_not_its_helper() -> None:
    model = Plain(MockModel("base"), MockModel("helper", scores=False))
    assert model.name == "test_plain(base, helper)"
    assert model.score([CHAT], ["a b c"])[0].total == -3.0


def _memory_cache() -> ResponseCache:
    import tempfile

    return ResponseCache(Path(tempfile.mkdtemp()) / "c.sqlite")
