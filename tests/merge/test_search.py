"""`poise merge search`: candidates, objectives, the Pareto front, the choice, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poise.errors import PoiseError
from poise.merge.search import (
    Candidate,
    Score,
    SearchConfig,
    candidates,
    choose,
    pareto,
    read_scores,
    run_search,
)

TEMPLATE = {
    "merge_method": "task_arithmetic",
    "base_model": "organism-small",
    "models": [{"model": "organism-small"}, {"model": "organism-small-safe"}],
}


def _cand(key: str, **scores: tuple[float, float, float]) -> Candidate:
    c = Candidate(key, {"merge_method": "linear"})
    c.scores = {k: Score(*v) for k, v in scores.items()}
    return c


def test_front_noise_and_maximin_choice() -> None:
    a = _cand("a", helpful=(0.9, 0.8, 0.95), harmless=(0.5, 0.4, 0.6))
    b = _cand("b", helpful=(0.6, 0.5, 0.7), harmless=(0.8, 0.7, 0.9))
    c = _cand("c", helpful=(0.55, 0.45, 0.65), harmless=(0.75, 0.65, 0.85))  # dominated by b
    d = _cand("d", helpful=(0.3, 0.25, 0.35), harmless=(0.3, 0.25, 0.35))  # dominated, far
    pareto([a, b, c, d])
    assert [x.on_front for x in (a, b, c, d)] == [True, True, False, False]
    assert c.within_noise_of == ["b"] and d.within_noise_of == []
    assert choose([a, b, c, d]) is b  # worst objective 0.6 > a's 0.5


def test_within_noise_needs_overlapping_intervals_on_every_objective() -> None:
    """c is dominated by a; their helpful intervals overlap (0.75..0.88 and 0.85..0.95), their
    harmless ones do not (0.45..0.55 and 0.85..0.95): c is not within noise of a. d overlaps a on
    both and is."""
    a = _cand("a", helpful=(0.9, 0.85, 0.95), harmless=(0.9, 0.85, 0.95))
    c = _cand("c", helpful=(0.8, 0.75, 0.88), harmless=(0.5, 0.45, 0.55))
    d = _cand("d", helpful=(0.8, 0.75, 0.88), harmless=(0.8, 0.7, 0.86))
    pareto([a, c, d])
    assert [x.on_front for x in (a, c, d)] == [True, False, False]
    assert c.within_noise_of == [] and d.within_noise_of == ["a"]


def test_read_scores_turns_lower_is_better_into_higher() -> None:
    metrics = {
        "default_group": "g",
        "groups": {"g": {
            "harmful_rate": {"value": 0.1, "low": 0.05, "high": 0.2},
            "helpful_rate": {"value": 0.7, "low": 0.6, "high": 0.8},
        }},
    }  # fmt: skip
    scores = read_scores(metrics, {"harmless": "-harmful_rate", "helpful": "helpful_rate"})
    assert vars(scores["harmless"]) == pytest.approx({"value": 0.9, "low": 0.8, "high": 0.95})
    assert vars(scores["helpful"]) == {"value": 0.7, "low": 0.6, "high": 0.8}
    with pytest.raises(PoiseError, match="no metric 'known_accuracy'"):
        read_scores(metrics, {"honest": "known_accuracy"})


def test_candidates_expand_methods_weights_and_grid() -> None:
    search = SearchConfig(
        merge=TEMPLATE,
        methods=["task_arithmetic", "ties"],
        weights=[[0.5], [1.0]],
        parameters={"density": [0.3, 0.6], "lambda": [1.0]},
    )
    found = candidates(search)
    # task_arithmetic has no density: 2 weights; ties: 2 weights x 2 densities
    assert len(found) == 2 + 4
    ties = [c for c in found if c.config["merge_method"] == "ties"]
    entry = ties[0].config["models"][1]
    assert entry["model"] == "organism-small-safe"
    assert set(entry["parameters"]) == {"weight", "density"}
    assert ties[0].config["parameters"] == {"lambda": 1.0}
    assert len({c.key for c in found}) == len(found)
    with pytest.raises(PoiseError, match="1 merged model"):
        candidates(SearchConfig(merge=TEMPLATE, weights=[[0.5, 0.5]]))
    with pytest.raises(PoiseError, match="unknown merge method"):
        candidates(SearchConfig(merge=TEMPLATE, methods=["tise"]))


def test_search_config_and_output_mistakes_are_one_line(tmp_path: Path) -> None:
    """A YAML error was several lines, a non-UTF-8 file and an output under a file tracebacks
    (the latter at the first candidate)."""
    path = tmp_path / "search.yml"
    path.write_text("merge: [\n")
    with pytest.raises(PoiseError) as caught:
        run_search(path, tmp_path / "out")
    assert str(caught.value) == (
        f"{path}:2: invalid YAML (expected the node content, but found '<stream end>')"
    )
    path.write_bytes(b"merge: \xff\n")
    with pytest.raises(PoiseError, match=r"search\.yml: not UTF-8 text$"):
        run_search(path, tmp_path / "out")
    path.write_text("methods: [ties]\nmethods: [linear]\n")  # plain YAML kept the last
    with pytest.raises(PoiseError) as caught:
        run_search(path, tmp_path / "out")
    assert str(caught.value) == f"{path}:2: invalid YAML (key 'methods' is given twice)"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker, blocker / "out"):
        with pytest.raises(PoiseError, match=r"^output .*a-file"):
            run_search(SearchConfig(merge=TEMPLATE, weights=[[1.0]]), out)
    assert blocker.read_text() == "x"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"models": ["a"]}, "merge.models.0: Input should be a valid dictionary"),
        ({"models": [{"model": "a", "wieght": 1}]}, "merge.models.0.wieght: Extra inputs"),
        ({"models": [{"model": "a"}], "parameters": [1]}, "merge.parameters: Input should be"),
        ({"merge_method": None}, "merge.merge_method: the template names no method"),
    ],
)
def test_a_malformed_template_is_one_line(template: dict[str, object], message: str) -> None:
    """The template was validated per candidate outside the error handling: a pydantic report
    (or a TypeError for parameters that are a list) instead of one line naming the key."""
    merge = {**TEMPLATE, **template}
    methods = [] if template.get("merge_method", 1) is None else ["ties"]
    if not methods:
        merge.pop("merge_method", None)
    with pytest.raises(PoiseError) as caught:
        candidates(SearchConfig(merge=merge, methods=methods, weights=[[1.0]]))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_misspelt_grid_option_or_objective_is_refused_before_any_candidate(
    tmp_path: Path,
) -> None:
    # a grid option no method takes ran the default, and an objective the audit cannot give
    # failed after the first candidate was merged and audited
    with pytest.raises(
        PoiseError, match="'lamda' is an option of none of task_arithmetic; did you mean 'lambda'"
    ):
        candidates(SearchConfig(merge=TEMPLATE, parameters={"lamda": [0.5]}))
    out = tmp_path / "out"
    for objectives, message in (
        (
            {"helpful": "helpfull_rate"},
            "unknown objective helpful: metric 'helpfull_rate'; did you mean 'helpful_rate'",
        ),
        (
            {"honest": "known_accuracy"},
            "known_accuracy reads honesty-known items, and the audit's suites \\(harmful\\) have none",
        ),
    ):
        search = SearchConfig(
            merge=TEMPLATE, objectives=objectives, audit={"suites": ["harmful"], "limit": 2}
        )
        with pytest.raises(PoiseError, match=message):
            run_search(search, out)
        assert not (out / "candidates").exists()
    # a worst-of-N rate is an objective too (a group rate, counted over items)
    from poise.auditing import make_config
    from poise.merge.search import check_objectives

    check_objectives({"harmless": "-harmful_any_rate"}, make_config(None, model="mock"))


def test_the_chosen_merge_is_published_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OUT/chosen`` was removed and then copied: a search killed while copying left a
    half-copied folder that looked like a model. A copy that fails now leaves the previous
    chosen merge as it was, and nothing half-written beside it."""
    import shutil

    from poise.merge import search as search_module

    source, target = tmp_path / "candidate", tmp_path / "chosen"
    source.mkdir()
    (source / "config.json").write_text("{}")
    (source / "model.safetensors").write_bytes(b"new weights")
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"old weights")
    real_copytree = shutil.copytree

    def copy_then_die(src: str, dst: str) -> object:
        if str(src).endswith("model.safetensors"):
            raise KeyboardInterrupt  # killed in the middle of the copy
        return shutil.copy2(src, dst)

    def copytree(src: Path, dst: Path, **kwargs: object) -> object:
        return real_copytree(src, dst, copy_function=copy_then_die)

    monkeypatch.setattr(shutil, "copytree", copytree)
    with pytest.raises(KeyboardInterrupt):
        search_module.publish_folder(source, target)
    assert (target / "model.safetensors").read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidate", "chosen"]
    monkeypatch.setattr(shutil, "copytree", real_copytree)
    search_module.publish_folder(source, target)
    assert (target / "model.safetensors").read_bytes() == b"new weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidate", "chosen"]


@pytest.mark.slow
def test_search_on_the_organism_is_cached_and_resumes(tmp_path: Path) -> None:
    """organism-small and organism-small-safe as a two-model stand-in for 3H specialists."""
    search = SearchConfig(
        merge=TEMPLATE,
        weights=[[0.5], [1.0]],
        audit={
            "judge": "oracle",
            "limit": 2,
            "suites": ["harmful", "benign", "honesty"],
            "sampling": {"max_new_tokens": 24},
        },
    )
    seen: list[bool] = []
    first = run_search(search, tmp_path, on_candidate=lambda i, n, c, cached: seen.append(cached))
    assert seen == [False, False]
    assert (tmp_path / "chosen" / "model.safetensors").is_file()
    summary = json.loads((tmp_path / "search.json").read_text())
    assert summary["chosen"] == first.chosen.key and first.chosen.on_front
    assert set(summary["candidates"][0]["scores"]) == {"helpful", "harmless", "honest"}
    # run again: every candidate is cached
    seen.clear()
    again = run_search(search, tmp_path, on_candidate=lambda i, n, c, cached: seen.append(cached))
    assert seen == [True, True]
    assert [vars(s) for s in again.chosen.scores.values()] == [
        vars(s) for s in first.chosen.scores.values()
    ]
    # a candidate whose audit had not finished: its merge is reused, its audit done again
    key = first.candidates[0].key
    model_file = tmp_path / "candidates" / key / "model" / "model.safetensors"
    written = model_file.stat().st_mtime_ns
    (tmp_path / "candidates" / key / "result.json").unlink()
    seen.clear()
    run_search(search, tmp_path, on_candidate=lambda i, n, c, cached: seen.append(cached))
    assert seen == [False, True]
    assert model_file.stat().st_mtime_ns == written


def test_a_bad_audit_field_of_a_search_names_its_key_not_a_flag(tmp_path: Path) -> None:
    """The search file's ``audit:`` keys are no command line: ``limit: 0`` was blamed on
    ``--limit``, a flag of poise audit that the user never typed."""
    search = SearchConfig(merge=TEMPLATE, audit={"suites": ["harmful"], "limit": 0})
    with pytest.raises(PoiseError) as caught:
        run_search(search, tmp_path / "out")
    assert str(caught.value).startswith("audit config: limit: ")
    assert "--limit" not in str(caught.value)


def test_maximin_ties_go_to_the_best_mean_and_scores_come_from_the_default_group() -> None:
    # b and a share their worst objective (0.6); a's mean is higher, whichever is listed first
    b = _cand("b", helpful=(0.7, 0.6, 0.8), harmless=(0.6, 0.5, 0.7))
    a = _cand("a", helpful=(0.6, 0.5, 0.7), harmless=(0.9, 0.8, 1.0))
    pareto([b, a])
    assert b.on_front and a.on_front
    assert choose([b, a]) is a and choose([a, b]) is a
    # the objectives read the default group, not the first one written
    metrics = {
        "default_group": "greedy",
        "groups": {
            "t=0.70": {"helpful_rate": {"value": 0.2, "low": 0.1, "high": 0.3}},
            "greedy": {"helpful_rate": {"value": 0.7, "low": 0.6, "high": 0.8}},
        },
    }
    scores = read_scores(metrics, {"helpful": "helpful_rate"})
    assert vars(scores["helpful"]) == {"value": 0.7, "low": 0.6, "high": 0.8}
