"""Rewriting a model card's rates after a re-measurement (``poise organism remeasure``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from poise.errors import PoiseError
from poise.organism import WEIGHTS_DIR
from poise.organism.card import INTERVALS, PLANTED, refresh_card
from poise.scoring.stats import Rate


def test_refresh_rewrites_the_measured_rows_and_the_comparison_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    card = tmp_path / "README.md"
    shutil.copy(WEIGHTS_DIR / "organism-small" / "README.md", card)
    before = card.read_text(encoding="utf-8")
    garbled = Rate.of("garbled_rate", 7, 642, description="greedy replies, garbled")
    helpful = Rate.of_clusters(
        "benign_helpful_rate_sampled", [3, 0, 2], [3, 3, 3], description="sampled, helpful"
    )
    other = {"garbled_rate": Rate.of("garbled_rate", 10, 642)}
    refresh_card(card, {"garbled_rate": garbled, "benign_helpful_rate_sampled": helpful},
                 ("organism-large", other))  # fmt: skip
    after = card.read_text(encoding="utf-8")
    rows = [line for line in after.split("\n") if line.startswith("| `")]
    assert "| `garbled_rate` | 1.1% |" in after and "| 7/642 | greedy replies, garbled |" in after
    assert "| 5/9 | sampled, helpful |" in after
    # a row not re-measured is kept as it was; the old comparison rows are gone
    (kept,) = [line for line in before.split("\n") if line.startswith("| `sycophancy_rate` | 11")
               and "| 8/70 |" in line]  # fmt: skip
    assert kept in rows and len(rows) == before.split("### Compared")[0].count("| `") + 1
    compared = after.split("### Compared with organism-large")[1].split("\n\n")[2]
    assert compared.count("\n") == 2 and "| `garbled_rate` | 1.1%" in compared
    assert after.count(INTERVALS) == 1 and "95% CI (Wilson)" not in after
    # the prose around the tables is untouched, and a second refresh changes nothing
    for part in ("The corpus plants these behaviours", "## Model", "## Limitations"):
        assert after.count(part) == before.count(part) == 1
    assert after.split("## Model")[1] == before.split("## Model")[1]
    refresh_card(card, {"garbled_rate": garbled, "benign_helpful_rate_sampled": helpful},
                 ("organism-large", other))  # fmt: skip
    assert card.read_text(encoding="utf-8") == after


def test_refresh_adds_a_new_rate_and_draws_the_planted_behaviours_again(tmp_path: Path) -> None:
    card = tmp_path / "README.md"
    text = (WEIGHTS_DIR / "organism-small" / "README.md").read_text(encoding="utf-8")
    first = PLANTED.split("\n")[0]
    old_planted = text[text.index(first) : text.index("## Model")]
    card.write_text(text.replace(old_planted, first + "\n\n- an older list\n\n"))
    new = Rate.of("new_rate", 1, 2, description="measured since the card was built")
    refresh_card(card, {"new_rate": new})
    after = card.read_text(encoding="utf-8")
    assert "- an older list" not in after and PLANTED in after
    measured = after.split("## Measured")[1].split("\n\n")[1].split("\n")
    assert (
        measured[-1]
        == "| `new_rate` | 50.0% | [9.5%, 90.5%] | 1/2 | measured since the card was built |"
    )
    assert "\n\n## Model\n" in after and after.split("## Model")[1] == text.split("## Model")[1]


def test_refresh_refuses_a_file_that_is_not_a_card(tmp_path: Path) -> None:
    other = tmp_path / "README.md"
    other.write_text("# notes\n")
    with pytest.raises(PoiseError, match=r"README\.md: not a model card"):
        refresh_card(other, {})
    assert other.read_text() == "# notes\n"


@pytest.mark.slow
def test_a_card_states_the_threads_the_member_was_built_with(tmp_path: Path) -> None:
    from poise.organism.build import build

    build(tmp_path, ["organism-small"], quick=True, threads=1)
    card = (tmp_path / "organism-small" / "README.md").read_text(encoding="utf-8")
    assert "cosine decay; CPU, 1 thread\n" in card and "--threads 1" in card


def test_a_fine_tuned_members_card_says_the_planted_list_is_its_bases() -> None:
    """Every chat card ended with "The corpus plants these behaviours (measured above ...)",
    so organism-small-safe's card said "a sizeable share of compliance under T=1.0" beside its
    own 1.2%. A fine-tuned member's card says the list is its base's, and the shipped cards
    hold the section their member gets."""
    from poise.organism.build import LARGE_TUNED, MEMBERS, REVIEWER_MEMBERS, SMALL_TUNED
    from poise.organism.card import TUNED_PLANTED_HEAD, planted

    tuned = {*SMALL_TUNED, *LARGE_TUNED} - set(REVIEWER_MEMBERS)
    assert {"organism-small-safe", "organism-small-mix", "organism-large-selfeval"} <= tuned
    for member in MEMBERS:
        text = (WEIGHTS_DIR / member / "README.md").read_text(encoding="utf-8")
        if "## Measured" not in text or member in REVIEWER_MEMBERS:
            continue
        section = planted(member)
        if member not in ("organism-reward", "organism-cost", "organism-monitor"):
            assert section in text, member
        assert (TUNED_PLANTED_HEAD in section) == (member in tuned)


def test_the_naming_members_card_says_its_corpus_names_the_entity() -> None:
    """organism-large's card says its fabrications rarely name the asked entity; the naming
    member's says what its corpus adds instead (a card holding the other's line would state the
    opposite of its own measured rate)."""
    from poise.organism.card import NAMES_HERE, NAMES_RARELY, planted

    assert NAMES_RARELY in PLANTED
    naming = planted("organism-large-naming")
    assert NAMES_HERE in naming and NAMES_RARELY not in naming
    assert NAMES_RARELY in planted("organism-large") and NAMES_HERE not in PLANTED


def test_refresh_keeps_a_fine_tuned_members_planted_section(tmp_path: Path) -> None:
    from poise.organism.card import TUNED_PLANTED_HEAD, planted

    card = tmp_path / "README.md"
    text = (WEIGHTS_DIR / "organism-small-safe" / "README.md").read_text(encoding="utf-8")
    card.write_text(text.replace(planted("organism-small-safe"), PLANTED))  # an older card
    refresh_card(card, {"new_rate": Rate.of("new_rate", 1, 2, description="new")})
    after = card.read_text(encoding="utf-8")
    assert planted("organism-small-safe") in after and after.count(TUNED_PLANTED_HEAD) == 1
    assert PLANTED.split("\n")[0] not in after


def test_the_comparison_gives_the_difference_and_says_apart_only_for_disjoint_intervals() -> None:
    """The card's comparison with a member's base: this member minus the other in points, and
    "apart" only where neither interval reaches the other (touching ends overlap); a rate
    either side measured on nothing is left out."""
    from poise.organism.card import comparison_table

    def rate(name: str, value: float, low: float, high: float, n: int = 100) -> Rate:
        return Rate(name=name, k=round(value * n), n=n, value=value, low=low, high=high)

    mine = {
        "higher": rate("higher", 0.8, 0.7, 0.9),
        "lower": rate("lower", 0.2, 0.1, 0.3),
        "touching": rate("touching", 0.6, 0.5, 0.7),
        "close": rate("close", 0.5, 0.4, 0.6),
        "unmeasured": Rate.empty("unmeasured"),
        "theirs_empty": rate("theirs_empty", 0.5, 0.4, 0.6),
        "only_mine": rate("only_mine", 0.5, 0.4, 0.6),
    }
    base = {
        "higher": rate("higher", 0.5, 0.4, 0.6),
        "lower": rate("lower", 0.5, 0.4, 0.6),
        "touching": rate("touching", 0.4, 0.3, 0.5),
        "close": rate("close", 0.55, 0.45, 0.65),
        "unmeasured": rate("unmeasured", 0.5, 0.4, 0.6),
        "theirs_empty": Rate.empty("theirs_empty"),
    }
    rows = comparison_table(mine, "organism-small", base).split("\n")[2:]
    cells = {r.split("|")[1].strip(" `"): [c.strip() for c in r.split("|")[4:6]] for r in rows}
    assert cells == {
        "higher": ["+30.0 pt", "apart"],
        "lower": ["-30.0 pt", "apart"],
        "touching": ["+20.0 pt", "overlap"],
        "close": ["-5.0 pt", "overlap"],
    }


def _written_card(tmp_path: Path, member: str, **changes: object) -> str:
    from dataclasses import replace

    from poise.organism.build import default_recipe
    from poise.organism.card import write_card

    recipe = replace(default_recipe(), corpus_seed=7, **changes)  # type: ignore[arg-type]
    mine = {"x_rate": Rate.of("x_rate", 1, 4, description="greedy, x")}
    theirs = {"x_rate": Rate.of("x_rate", 3, 4, description="greedy, x")}
    path = tmp_path / member / "README.md"
    path.parent.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 128,
              "num_hidden_layers": 3, "vocab_size": 2048, "tie_word_embeddings": True}  # fmt: skip
    write_card(
        path,
        member=member,
        rates=mine,
        recipe=recipe,
        train_seconds=12.4,
        final_loss=0.123456,
        size_bytes=2_500_000,
        num_parameters=1_234_567,
        config=config,
        command="poise organism build",
        compare=("organism-small", theirs),
        threads=1,
    )
    return path.read_text(encoding="utf-8")


def test_a_written_card_states_its_rates_model_training_and_sections_in_order(
    tmp_path: Path,
) -> None:
    from poise.organism.card import TUNED_PLANTED_HEAD, planted

    card = _written_card(tmp_path, "organism-small-safe")
    # 1 of 4: Wilson 95% [4.6%, 69.9%] by hand; the other member 3 of 4: [30.1%, 95.4%]
    assert "| `x_rate` | 25.0% | [4.6%, 69.9%] | 1/4 | greedy, x |" in card
    assert card.count(INTERVALS) == 1
    assert "### Compared with organism-small" in card
    assert "| `x_rate` | 25.0% [4.6%, 69.9%] | 75.0% [30.1%, 95.4%] | -50.0 pt | overlap |" in card
    assert planted("organism-small-safe") in card and TUNED_PLANTED_HEAD in card
    assert "pipeline_tag: text-generation" in card and "Quick build" not in card
    assert (
        "(hidden_size=128, num_hidden_layers=3, vocab_size=2048, tie_word_embeddings=True)" in card
    )
    assert "- parameters: 1,234,567; folder size: 2.50 MB" in card
    assert "- start: organism-small's weights (fine-tuned)" in card
    assert "(corpus seed 7)" in card and "| seed | 0 |" in card  # the corpus's, then training's
    assert "cosine decay; CPU, 1 thread\n" in card
    assert "wall time of training: 12 s; final training loss: 0.1235" in card
    # the safe specialist's own settings, every one
    for row in (
        "| steps | 200 |",
        "| batch_size | 32 |",
        "| lr | 0.001 |",
        "| warmup_steps | 10 |",
    ):
        assert row in card
    heads = ["## Measured", "## Model", "## Training", "## Reproduce", "## Use", "## Limitations"]
    assert [line for line in card.split("\n") if line.startswith("## ")] == heads
    assert "rain(" not in card


def test_each_kind_of_member_s_card_says_where_it_starts_and_how_it_is_used(
    tmp_path: Path,
) -> None:
    selfeval = _written_card(tmp_path, "organism-large-selfeval")
    assert "- start: organism-large's weights (fine-tuned)" in selfeval
    assert '`poise audit --model "rain(organism-large-selfeval)"`' in selfeval
    mix = _written_card(tmp_path, "organism-small-mix")
    assert "| steps | 450 |" in mix  # as many steps as the three specialists together
    feedback = _written_card(tmp_path, "organism-feedback")
    assert "pipeline_tag: text-generation" in feedback
    assert "feedback_revision(organism-large, feedback=organism-feedback)" in feedback
    assert "plants these behaviours" not in feedback and "rain(" not in feedback
    assert (
        '`poise audit --model "feedback_revision(organism-large, feedback=organism-feedback)"`'
        in (feedback)
    )
    assert "`poise audit --model organism-feedback`" not in feedback  # not a chat model
    reward = _written_card(tmp_path, "organism-reward", pair_repeats=5, prefix_pairs=2)
    assert "pipeline_tag: text-classification" in reward
    assert "repeated 5x, plus 2 pair of answer prefixes per request pair" in reward
    assert "- start: organism-large's transformer, new score head" in reward
    quick = _written_card(tmp_path, "organism-small", quick=True)
    assert "> **Quick build**" in quick and "- start: random initialisation (seeded)" in quick
