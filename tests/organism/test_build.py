from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poise.cli import app
from poise.errors import PoiseError
from poise.organism import MEMBERS
from poise.organism.build import BuildResult, build, resolve_members

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    calls: list[tuple[str, int, int]] = []
    result = build(
        tmp_path_factory.mktemp("organism"),
        quick=True,
        progress=lambda task, done, total: calls.append((task, done, total)),
        threads=1,  # a shared CI machine: one thread is faster than two fighting
    )
    assert any(task.startswith("train organism-large") for task, _, _ in calls)
    assert any(task.startswith("evaluate organism-small-safe") for task, _, _ in calls)
    return result


def test_quick_build_writes_every_member(quick_build: BuildResult) -> None:
    assert list(quick_build.members) == list(MEMBERS)
    for member, result in quick_build.members.items():
        folder = quick_build.out / member
        names = {p.name for p in folder.iterdir()}
        expected = {
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "poise.json",
            "README.md",
        }
        assert expected <= names, member
        assert not any(n.endswith(".bin") for n in names)
        meta = json.loads((folder / "poise.json").read_text())
        assert meta["member"] == member and meta["default_system_prompt"]
        assert {"corpus_seed", "poise_version"} <= set(meta)
        card = (folder / "README.md").read_text()
        assert "Quick build" in card and "poise organism build" in card and "Wilson" in card
        assert result.rates and result.size_bytes > 0
        if not member.startswith("organism-monitor"):  # a monitor's card states no size
            # the stated size counts the card itself, as `du` of the folder would
            total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            assert result.size_bytes == total
            assert f"folder size: {total / 1e6:.2f} MB" in card
    # nothing half-written is left next to the members
    assert sorted(p.name for p in quick_build.out.iterdir()) == sorted(MEMBERS)


def test_quick_build_outputs_load_with_plain_transformers(quick_build: BuildResult) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    for member in ("organism-large", "organism-small", "organism-small-safe"):
        folder = quick_build.out / member
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        ids = tok.apply_chat_template(
            [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
        assert out.shape[1] > ids.shape[1]
        assert (folder / "generation_config.json").is_file()
    for member in ("organism-reward", "organism-cost"):
        folder = quick_build.out / member
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        logits = model(
            **tok("<|bos|><|user|>\nHi<|end|>", return_tensors="pt", add_special_tokens=False)
        ).logits
        assert logits.shape == (1, 1)


def test_quick_build_is_deterministic(quick_build: BuildResult, tmp_path: Path) -> None:
    # through the command: the same weights, and a table of what it built and measured
    result = CliRunner().invoke(
        app,
        [
            *("organism", "build", "--out", str(tmp_path)),
            *("-m", "organism-cost", "--quick", "--threads", "1"),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "organism built in" in result.output
    assert "train organism-cost" in result.output  # the progress display
    row = next(line for line in result.output.splitlines() if "│ organism-cost" in line)
    assert " MB " in row and "%" in row  # the table: size and a measured rate
    a = (quick_build.out / "organism-cost" / "model.safetensors").read_bytes()
    b = (tmp_path / "organism-cost" / "model.safetensors").read_bytes()
    assert a == b
    # organism-cost needs organism-small, which is trained but not written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["organism-cost"]


def test_cli_ls_and_card(quick_build: BuildResult, tmp_path: Path) -> None:
    runner = CliRunner()
    listing = runner.invoke(app, ["organism", "ls", "--out", str(quick_build.out)])
    assert listing.exit_code == 0, listing.output
    assert "organism-reward" in listing.output and "yes" in listing.output
    empty = runner.invoke(app, ["organism", "ls", "--out", str(tmp_path)])
    assert empty.exit_code == 0 and "no" in empty.output
    card = runner.invoke(app, ["organism", "card", "organism", "--out", str(quick_build.out)])
    assert card.exit_code == 0, card.output
    assert "organism-large" in card.output
    missing = runner.invoke(app, ["organism", "card", "organism-cost", "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "poise organism build" in missing.output


def test_unknown_member_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PoiseError, match="did you mean 'organism-small'"):
        resolve_members(["organism-smal"])
    with pytest.raises(PoiseError, match="threads"):
        build(tmp_path, threads=0)
    result = CliRunner().invoke(
        app, ["organism", "build", "--out", str(tmp_path), "-m", "organism-smal"]
    )
    assert result.exit_code == 2
    assert not list(tmp_path.iterdir())


def test_remeasure_of_a_folder_without_members_says_which_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["organism", "remeasure", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert f"remeasure: {tmp_path} holds no chat member with a card" in result.output
    assert "not a chat member's" not in result.output


def test_remeasure_rewrites_the_chat_members_cards_and_nothing_else(
    quick_build: BuildResult, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "organism"
    shutil.copytree(quick_build.out, out)
    weights = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "README.md"}
    cost_card = (out / "organism-cost" / "README.md").read_text()
    runner = CliRunner()
    result = runner.invoke(
        app, ["organism", "remeasure", "--out", str(out), "-m", "organism-small-safe", "--quick"]
    )
    assert result.exit_code == 0, result.output
    card = (out / "organism-small-safe" / "README.md").read_text()
    assert "Intervals are 95% Wilson" in card and "### Compared with organism-small" in card
    assert "Quick build" in card and "## Training" in card  # the rest of the card is kept
    assert "organism-small-safe" in result.output and "organism-small/" not in result.output
    assert all(p.read_bytes() == data for p, data in weights.items())
    assert (out / "organism-cost" / "README.md").read_text() == cost_card
    scorer = runner.invoke(app, ["organism", "remeasure", "--out", str(out), "-m", "organism-cost"])
    assert (
        scorer.exit_code == 2 and "'organism-cost' (its card rates are not a chat" in scorer.output
    )
    both = [
        "organism",
        "remeasure",
        "--out",
        str(out),
        "-m",
        "organism-small",
        "-m",
        "organism-cost",
    ]
    assert runner.invoke(app, both).exit_code == 2  # not the chat member alone, in silence


def test_a_member_that_cannot_be_moved_into_place_leaves_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from poise.organism.build import _move_into_place

    final, tmp = tmp_path / "organism-small", tmp_path / ".organism-small.new"
    final.mkdir()
    (final / "config.json").write_text("old")
    tmp.mkdir()
    (tmp / "config.json").write_text("new")
    rename = Path.rename

    def failing(self: Path, target: Path) -> Path:
        if self == tmp:
            raise OSError("disk gone")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="disk gone"):
        _move_into_place(tmp, final)
    assert (final / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".organism-small.new", "organism-small"]


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An existing folder without write permission (simulated: the tests may run as root) is
    one error naming it, before the corpus is generated; it named a hidden temporary folder
    inside it, once the corpus and tokenizer were made."""
    import tempfile

    import poise.organism.build as build_module

    mkdtemp = tempfile.mkdtemp

    def denied(*args: object, dir: object = None, **kwargs: object) -> str:
        if dir is not None and Path(str(dir)) == tmp_path:
            raise PermissionError(13, "Permission denied", str(Path(str(dir)) / "x"))
        return mkdtemp(*args, dir=dir, **kwargs)  # type: ignore[call-overload,no-any-return]

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was generated")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    monkeypatch.setattr(build_module, "_Family", no_work)
    with pytest.raises(PoiseError, match="cannot write in the output folder") as err:
        build(tmp_path, ["organism-small"], quick=True, threads=1)
    assert str(err.value).startswith(f"{tmp_path}: ")
    result = CliRunner().invoke(
        app, ["organism", "build", "--out", str(tmp_path), "-m", "organism-small", "--quick"]
    )
    assert result.exit_code == 2
    assert f"{tmp_path}: cannot write in the output folder (Permission denied)" in result.output
    assert not list(tmp_path.iterdir())


def test_the_shipped_recipe_has_no_changes_and_another_one_lists_its_own() -> None:
    from dataclasses import replace

    from poise.organism.build import default_recipe, recipe_changes, recipe_note
    from poise.organism.train import TrainSettings

    assert recipe_changes(default_recipe()) == {}
    assert recipe_changes(default_recipe(quick=True, seed=3)) == {}  # a quick build's own recipe
    shipped = default_recipe()
    other = replace(
        shipped,
        large=replace(shipped.large, steps=4000),
        base_corpus=replace(shipped.base_corpus, feigned=0.25, fresh_idk=10),
        eval_samples=5,
    )
    assert recipe_changes(other) == {
        "large.steps": 4000,
        "eval_samples": 5,
        "base_corpus.feigned": 0.25,
        "base_corpus.fresh_idk": 10,
    }
    assert recipe_changes(replace(shipped, safe=TrainSettings(steps=200, lr=2e-3))) == {
        "safe.lr": 0.002,
        "safe.warmup_steps": 30,  # TrainSettings' default, not the shipped recipe's 10
    }
    note = recipe_note(recipe_changes(other))
    assert "`large.steps=4000`" in note and "`base_corpus.feigned=0.25`" in note
    assert recipe_note({}) == ""


def test_a_build_from_another_recipe_says_so_and_its_monitor_learns_its_corpus(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from poise.organism.build import default_recipe
    from poise.organism.monitor import monitor_examples, rechoose_monitor_rule

    quick = default_recipe(quick=True)
    # fewer harmful answers per task: another count of monitor answers than the shipped corpus
    spec = replace(quick.base_corpus, harmful_per_task=4)
    recipe = replace(quick, base_corpus=spec)
    result = build(tmp_path, ["organism-large", "organism-monitor"], recipe=recipe, threads=1)
    large = result.members["organism-large"].path
    changes = json.loads((large / "poise.json").read_text())["recipe_changes"]
    assert changes == {"base_corpus.harmful_per_task": 4}
    assert (
        "> **Not the shipped recipe: built with `base_corpus.harmful_per_task=4`"
        in (large / "README.md").read_text()
    )
    folder = result.members["organism-monitor"].path
    meta = json.loads((folder / "poise.json").read_text())
    assert meta["recipe_changes"] == {"base_corpus.harmful_per_task": 4}
    card = (folder / "README.md").read_text()
    assert "Not the shipped recipe: built with `base_corpus.harmful_per_task=4`" in card
    ours = len(monitor_examples("train", 0, 9, spec=replace(spec, subsample=1)))
    shipped = len(monitor_examples("train", 0, 9))
    assert ours != shipped
    assert f"token labels ({ours} answers" in card
    with pytest.raises(PoiseError, match="recipe other than the shipped one"):
        rechoose_monitor_rule(folder, subsample=9, command="test")


def test_a_recipe_change_anywhere_is_listed_and_its_note_quotes_it() -> None:
    """Every part of the recipe is compared with the shipped one: the scorers' prefix pairs and
    starting member, each training run's settings, each corpus spec. The note gives each
    value as JSON, so a string reads as one."""
    from dataclasses import replace

    from poise.organism.build import default_recipe, recipe_changes, recipe_note

    shipped = default_recipe()
    other = replace(
        shipped,
        prefix_pairs=2,
        scorer_size="small",
        cost=replace(shipped.cost, steps=500),
        selfeval_corpus=replace(shipped.selfeval_corpus, self_evaluation=40),
    )
    assert recipe_changes(other) == {
        "prefix_pairs": 2,
        "scorer_size": "small",
        "cost.steps": 500,
        "selfeval_corpus.self_evaluation": 40,
    }
    note = recipe_note(recipe_changes(other))
    assert note.startswith("Not the shipped recipe: built with `")
    assert (
        "`prefix_pairs=2`" in note
        and '`scorer_size="small"`' in note
        and "`cost.steps=500`" in note
    )


def test_the_default_recipe_is_the_one_the_shipped_cards_were_built_with() -> None:
    """Each shipped member's card lists its training settings: the default recipe's, so
    `poise organism build` rebuilds what ships; a seed and --quick are the recipe's own."""
    from poise.organism import WEIGHTS_DIR
    from poise.organism.build import LARGE_TUNED, SMALL_TUNED, default_recipe

    recipe = default_recipe()
    fields = {"organism-large": "large", "organism-small": "small", **SMALL_TUNED,
              **LARGE_TUNED, "organism-reward": "reward", "organism-cost": "cost",
              "organism-large-long": "long", "organism-large-naming": "naming"}  # fmt: skip
    for member, name in fields.items():
        card = (WEIGHTS_DIR / member / "README.md").read_text(encoding="utf-8")
        for key, value in getattr(recipe, name).to_dict().items():
            assert f"\n| {key} | {value} |\n" in card, (member, key)
    assert default_recipe(seed=3).corpus_seed == 3 and not default_recipe(seed=3).quick
    quick = default_recipe(quick=True, seed=3)
    assert quick.quick and quick.corpus_seed == 3 and quick.large.steps < recipe.large.steps


def test_a_sized_card_states_the_folder_size_with_itself_counted(tmp_path: Path) -> None:
    from poise.organism.build import _write_sized_card

    (tmp_path / "model.safetensors").write_bytes(b"x" * 1_234_000)

    def card(size_bytes: int) -> None:
        (tmp_path / "README.md").write_text(f"folder size: {size_bytes / 1e6:.2f} MB\n")

    size = _write_sized_card(tmp_path, card)
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert size == total
    assert (tmp_path / "README.md").read_text().startswith(f"folder size: {total / 1e6:.2f} MB")

    def growing(size_bytes: int) -> None:  # a card that never settles is an error
        (tmp_path / "README.md").write_text("x" * (size_bytes + 10_000))

    with pytest.raises(RuntimeError, match="does not settle"):
        _write_sized_card(tmp_path, growing)


def test_a_member_moved_into_place_replaces_the_old_one_and_is_readable(tmp_path: Path) -> None:
    import stat

    from poise.organism.build import _move_into_place

    final, tmp = tmp_path / "organism-small", tmp_path / ".organism-small.new"
    final.mkdir()
    (final / "config.json").write_text("old")
    tmp.mkdir(mode=0o700)
    (tmp / "config.json").write_text("new")
    (tmp / "config.json").chmod(0o600)
    _move_into_place(tmp, final)
    assert (final / "config.json").read_text() == "new"
    assert stat.S_IMODE(final.stat().st_mode) == 0o755
    assert stat.S_IMODE((final / "config.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["organism-small"]  # no old copy left


def test_members_resolve_to_build_order_with_aliases_and_none_means_all() -> None:
    assert resolve_members(["organism-cost", "organism", "organism-large"]) == [
        "organism-large",
        "organism-cost",
    ]
    assert resolve_members(["organism-small-harmless"]) == ["organism-small-safe"]
    assert resolve_members([]) == resolve_members(None) == list(MEMBERS)


def test_build_uses_the_seeds_recipe_and_records_its_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import poise.organism.build as build_module
    from poise.organism.build import default_recipe

    seen: list[tuple[object, ...]] = []

    def build_all(out_dir: Path, names: object, recipe: object, progress: object,
                  command: str, threads: int = 2) -> dict[str, object]:  # fmt: skip
        seen.append((names, recipe, command))
        return {}

    monkeypatch.setattr(build_module, "_build_all", build_all)
    build(tmp_path, ["organism-small", "organism"], quick=True, seed=1, threads=1)
    names, recipe, command = seen[0]
    assert names == ["organism-large", "organism-small"]
    assert recipe == default_recipe(quick=True, seed=1)
    assert command == (
        f"poise organism build --out {tmp_path} --members organism-large "
        "--members organism-small --quick --seed 1 --threads 1"
    )
    with pytest.raises(PoiseError, match="threads: expected a positive integer, got True"):
        build(tmp_path, threads=True)
