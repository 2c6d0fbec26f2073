"""Fingerprints of what a run depends on: folders by the contents of their weights, hub ids by
the commit the local cache resolves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from poise.runs.provenance import folder_sha256, weights_changed, weights_components


def weights_folder(path: Path, content: bytes = b"\x00" * 64) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"architectures": ["X"]}', encoding="utf-8")
    (path / "model.safetensors").write_bytes(content)
    return path


def rewrite_in_place(file: Path, content: bytes) -> None:
    """Rewrite ``file`` with ``content`` of the same size, its modification time kept: what a
    size-and-mtime fingerprint cannot see."""
    stat = file.stat()
    assert len(content) == stat.st_size
    file.write_bytes(content)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_folder_rewritten_in_place_with_the_same_size_and_time_has_another_fingerprint(
    tmp_path: Path,
) -> None:
    from poise.runs import provenance

    folder = weights_folder(tmp_path / "reward")
    before = folder_sha256(folder)
    rewrite_in_place(folder / "model.safetensors", b"\x01" * 64)
    provenance._FILE_HASHES.clear()  # as a resume in a new process reads it
    assert folder_sha256(folder) != before
    rewrite_in_place(folder / "model.safetensors", b"\x00" * 64)
    provenance._FILE_HASHES.clear()
    assert folder_sha256(folder) == before
    assert folder_sha256(tmp_path) is None  # no weights or JSON: no weights component


def test_every_folder_named_in_the_specs_and_options_is_fingerprinted(tmp_path: Path) -> None:
    base, reward, monitor = (weights_folder(tmp_path / n) for n in ("base", "reward", "monitor"))
    judge, rubric = weights_folder(tmp_path / "judge"), tmp_path / "rubric.jinja"
    rubric.write_text("{{ prompt }}", encoding="utf-8")
    spec = (
        f'guarded(best_of_n({base}, n=4, reward={reward}, cost=keywords:a|b), monitor="{monitor}")'
    )
    found = weights_components(
        spec,
        f"classifier:{judge}",
        judge_options={"rubric": str(rubric), "threshold": 0.5, "device": "cpu"},
        attack_options={"n": 4},
    )
    assert {role: Path(f["source"]) for role, f in found.items()} == {
        "model > guarded(1) > best_of_n(1)": base,
        "model > guarded(1) > best_of_n(reward)": reward,
        "model > guarded(monitor)": monitor,
        "judge": judge,
        "judge option rubric": rubric,
    }
    assert found["judge"]["sha256"] == folder_sha256(judge)
    # the bundled organism's members are folders too
    assert Path(weights_components("organism-small")["model"]["source"]).name == "organism-small"
    assert weights_components("mock:scripted", "refusal") == {}


def test_a_hub_id_records_the_commit_the_local_cache_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--guard"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no folder named org/guard here
    assert weights_components("org/guard") == {"model": {"source": "org/guard", "commit": commit}}
    # a hub id the cache does not hold: no fingerprint rather than a guess
    assert weights_components("org/other", judge_options={"model": "org/guard"}) == {
        "judge option model": {"source": "org/guard", "commit": commit}
    }


def test_the_component_whose_weights_changed_is_named_and_old_runs_pass() -> None:
    now = {"model": {"source": "/m", "sha256": "a" * 64}, "judge": {"source": "/j", "sha256": "b"}}
    assert weights_changed(now, now) is None
    assert weights_changed(None, now) is None  # a run recorded before fingerprints
    then = {**now, "judge": {"source": "/j", "sha256": "c"}}
    assert weights_changed(then, now) == (
        "the judge (/j) has other weights than when its records were made (sha256 c then, b now)"
    )
    hub = {"model": {"source": "org/m", "commit": "1" * 40}}
    assert "the model (org/m) has other hub commit" in str(
        weights_changed(hub, {"model": {"source": "org/m", "commit": "2" * 40}})
    )
    assert weights_changed(then, {"model": now["model"]}) is None  # a component no longer named


def test_the_chat_template_counts_and_a_trainer_checkpoints_resume_state_does_not(
    tmp_path: Path,
) -> None:
    """A model folder's chat template (``chat_template.jinja``, as transformers saves it) builds
    every prompt, so editing it changes the fingerprint; the optimizer, scheduler and RNG state
    a Trainer checkpoint keeps to resume training change nothing a loaded model computes, and
    are not read (the optimizer's state alone is twice the float32 weights)."""
    from poise.runs import provenance

    folder = weights_folder(tmp_path / "checkpoint-500")
    (folder / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
    state = {
        "optimizer.pt": b"adam",
        "scheduler.pt": b"cosine",
        "rng_state.pth": b"rng",
        "rng_state_3.pth": b"rng3",
        "training_args.bin": b"args",
        "trainer_state.json": b'{"global_step": 500}',
    }
    for name, content in state.items():
        (folder / name).write_bytes(content)
    before = folder_sha256(folder)
    for name, content in state.items():
        rewrite_in_place(folder / name, content.upper())
    provenance._FILE_HASHES.clear()
    assert folder_sha256(folder) == before
    assert not any(key[0].endswith(tuple(state)) for key in provenance._FILE_HASHES)  # not read
    rewrite_in_place(folder / "chat_template.jinja", b"{{ MESSAGES }}")
    provenance._FILE_HASHES.clear()
    assert folder_sha256(folder) != before
