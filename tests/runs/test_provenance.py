"""Fingerprints of what a run depends on: folders by the contents of their weights, hub ids by
the commit the local cache resolves."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from poise.runs import provenance
from poise.runs.provenance import (
    HASH_CACHE_FILE,
    cache_dir,
    file_sha256,
    folder_sha256,
    weights_changed,
    weights_components,
)


@pytest.fixture(autouse=True)
def _own_hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test here has its own file hash cache (never the user's), and starts as a new
    process does: nothing hashed yet, no cache given up on."""
    folder = tmp_path / "poise-cache"
    monkeypatch.setenv("POISE_CACHE_DIR", str(folder))
    monkeypatch.setattr(provenance, "_FILE_HASHES", {})
    monkeypatch.setattr(provenance, "_CACHE_FAILED", set())
    yield folder


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files provenance opens to hash, in order; files of 32 bytes or more
    count as large (cached across processes)."""
    opened: list[str] = []

    def counting_open(file: str | Path, *args: object, **kwargs: object) -> object:
        opened.append(Path(file).name)
        return open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(provenance, "open", counting_open, raising=False)
    monkeypatch.setattr(provenance, "CACHE_MIN_BYTES", 32)
    return opened


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


def test_a_large_file_is_not_read_again_by_the_next_process(
    tmp_path: Path, reads: list[str], _own_hash_cache: Path
) -> None:
    """A model's weights are hashed at every audit start; an unchanged shard is read once, its
    hash kept in the cache folder for the processes after."""
    folder = weights_folder(tmp_path / "model", b"\x07" * 64)
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")  # small: read every time
    first = folder_sha256(folder)
    assert sorted(reads) == ["config.json", "model.safetensors", "tokenizer.json"]
    provenance._FILE_HASHES.clear()  # as the next process starts
    reads.clear()
    assert folder_sha256(folder) == first
    assert sorted(reads) == ["config.json", "tokenizer.json"]
    assert (_own_hash_cache / HASH_CACHE_FILE).is_file()


def test_hashes_two_processes_cache_at_once_are_found_by_a_third(
    tmp_path: Path, reads: list[str]
) -> None:
    """Two audits starting together write the cache at the same time: every hash either stored
    is found afterwards, and none is read again."""
    shards = []
    for index in range(6):
        shards.append(tmp_path / f"model-{index:05d}.safetensors")
        shards[-1].write_bytes(bytes([index]) * 256)
    script = (
        "import sys; from poise.runs import provenance; provenance.CACHE_MIN_BYTES = 32; "
        "print(*(provenance.file_sha256(f) for f in sys.argv[1:]), provenance._CACHE_FAILED)"
    )
    names = [str(f) for f in shards]
    writers = [
        subprocess.Popen([sys.executable, "-c", script, *part], stdout=subprocess.PIPE, text=True)
        for part in (names[:4], names[2:][::-1])
    ]
    outputs = [w.communicate(timeout=120)[0].split() for w in writers]
    assert [w.returncode for w in writers] == [0, 0]
    assert [out[-1] for out in outputs] == ["set()", "set()"]  # no process gave up its cache
    found = [file_sha256(f) for f in shards]
    assert reads == []
    assert found == outputs[0][:4] + outputs[1][:4][::-1][2:]


def test_a_large_file_rewritten_with_its_size_and_time_kept_is_hashed_again(
    tmp_path: Path, reads: list[str]
) -> None:
    big = tmp_path / "model.safetensors"
    big.write_bytes(b"\x00" * 64)
    before = file_sha256(big)
    rewrite_in_place(big, b"\x01" * 64)
    provenance._FILE_HASHES.clear()
    reads.clear()
    after = file_sha256(big)
    assert reads == ["model.safetensors"]
    assert after != before
    rewrite_in_place(big, b"\x00" * 64)  # back to the first bytes: the first hash again
    provenance._FILE_HASHES.clear()
    assert file_sha256(big) == before


def test_a_damaged_cache_or_row_never_gives_a_wrong_hash(
    tmp_path: Path, reads: list[str], _own_hash_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import hashlib

    big = tmp_path / "model.safetensors"
    big.write_bytes(b"\x02" * 64)
    truth = hashlib.sha256(b"\x02" * 64).hexdigest()
    assert file_sha256(big) == truth
    # a row whose hash was altered: its checksum fails, and the file is read again
    with sqlite3.connect(_own_hash_cache / HASH_CACHE_FILE) as conn:
        conn.execute("UPDATE file_sha256 SET sha256 = ?", ("f" * 64,))
    conn.close()
    provenance._FILE_HASHES.clear()
    reads.clear()
    assert file_sha256(big) == truth
    assert reads == ["model.safetensors"]
    # a cache file that is no database at all: hashing goes on, said once at debug level
    for name in (HASH_CACHE_FILE, HASH_CACHE_FILE + "-wal", HASH_CACHE_FILE + "-shm"):
        (_own_hash_cache / name).unlink(missing_ok=True)
    (_own_hash_cache / HASH_CACHE_FILE).write_bytes(b"not a database\n" * 512)
    other = tmp_path / "model-2.safetensors"
    other.write_bytes(b"\x03" * 64)
    provenance._FILE_HASHES.clear()
    with caplog.at_level(logging.DEBUG, logger="poise.runs.provenance"):
        assert file_sha256(big) == truth
        assert file_sha256(other) == hashlib.sha256(b"\x03" * 64).hexdigest()
    lines = [r for r in caplog.records if r.name == "poise.runs.provenance"]
    assert len(lines) == 1 and HASH_CACHE_FILE in lines[0].getMessage()
    assert all(r.levelno == logging.DEBUG for r in lines)


@pytest.mark.parametrize("blocked", ["folder is a file", "cache file is a folder"])
def test_a_cache_that_cannot_be_written_only_costs_the_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: list[str], blocked: str
) -> None:
    """A read-only or odd cache location (root ignores permission bits, so these are made by
    what is in the way) leaves every hash to be computed, and nothing fails."""
    if blocked == "folder is a file":
        (tmp_path / "plain-file").write_text("x", encoding="utf-8")
        monkeypatch.setenv("POISE_CACHE_DIR", str(tmp_path / "plain-file" / "poise"))
    else:
        (tmp_path / "cache" / HASH_CACHE_FILE).mkdir(parents=True)
        monkeypatch.setenv("POISE_CACHE_DIR", str(tmp_path / "cache"))
    folder = weights_folder(tmp_path / "model", b"\x04" * 64)
    first = folder_sha256(folder)
    provenance._FILE_HASHES.clear()
    reads.clear()
    assert folder_sha256(folder) == first
    assert "model.safetensors" in reads


def test_the_cache_folder_follows_poise_cache_dir_then_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: list[str]
) -> None:
    assert cache_dir() == tmp_path / "poise-cache"  # POISE_CACHE_DIR (the fixture's)
    monkeypatch.delenv("POISE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "poise"
    big = tmp_path / "model.safetensors"
    big.write_bytes(b"\x05" * 64)
    file_sha256(big)
    assert (tmp_path / "xdg" / "poise" / HASH_CACHE_FILE).is_file()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as XDG says
    assert cache_dir() == tmp_path / "home" / ".cache" / "poise"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "poise"


def test_a_small_file_does_not_touch_the_cache(tmp_path: Path, _own_hash_cache: Path) -> None:
    folder = weights_folder(tmp_path / "model")  # 64 bytes: far below CACHE_MIN_BYTES
    assert folder_sha256(folder) is not None
    assert not _own_hash_cache.exists()


def test_every_recorded_component_is_checked_and_named_by_its_source_now() -> None:
    """A component no longer named is skipped, not the end of the check; the one that changed is
    named where it is now (a folder moved and retrained), with its old and new hashes."""
    recorded = {
        "judge": {"source": "/j", "sha256": "b" * 64},  # no longer named: skipped
        "model": {"source": "/old/m", "sha256": "a" * 64},
    }
    now = {"model": {"source": "/new/m", "sha256": "c" * 64}}
    assert weights_changed(recorded, now) == (
        f"the model (/new/m) has other weights than when its records were made (sha256 "
        f"{'a' * 16} then, {'c' * 16} now)"
    )


def test_relative_names_are_recorded_by_their_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a run resumed from another working directory compares sources recorded as absolute paths
    weights_folder(tmp_path / "reward")
    (tmp_path / "rubric.jinja").write_text("{{ prompt }}", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    found = weights_components(
        "best_of_n(mock, n=2, reward=reward)", judge_options={"rubric": "rubric.jinja"}
    )
    assert {role: f["source"] for role, f in found.items()} == {
        "judge option rubric": str(tmp_path / "rubric.jinja"),
        "model > best_of_n(reward)": str(tmp_path / "reward"),
    }


def test_an_attack_options_folder_is_the_attacks_component(tmp_path: Path) -> None:
    scorer = weights_folder(tmp_path / "scorer")
    found = weights_components("mock", attack_options={"reward": str(scorer)})
    assert list(found) == ["attack option reward"]
    assert found["attack option reward"]["sha256"] == folder_sha256(scorer)


def test_the_models_revision_picks_its_own_commit_not_the_judges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    def cached(repo_id: str, refs: dict[str, str]) -> None:
        repo = tmp_path / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        for ref, commit in refs.items():
            (repo / "refs" / ref).write_text(commit, encoding="utf-8")
            (repo / "snapshots" / commit).mkdir(parents=True)
            (repo / "snapshots" / commit / "config.json").write_text("{}", encoding="utf-8")

    main_model, v2_model, main_guard, v2_guard = (str(d) * 40 for d in range(1, 5))
    cached("org/model", {"main": main_model, "v2": v2_model})
    cached("org/guard", {"main": main_guard, "v2": v2_guard})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    found = weights_components(
        "org/model", judge_options={"model": "org/guard"}, model_options={"revision": "v2"}
    )
    assert found["model"]["commit"] == v2_model  # --model-option revision=v2 is the model's
    assert found["judge option model"]["commit"] == main_guard


def test_a_file_of_exactly_the_cache_size_is_cached_across_processes(
    tmp_path: Path, reads: list[str]
) -> None:
    # files "of at least CACHE_MIN_BYTES" (32 here) are kept for the processes after
    shard = tmp_path / "model.safetensors"
    shard.write_bytes(b"\x06" * 32)
    first = file_sha256(shard)
    provenance._FILE_HASHES.clear()  # as the next process starts
    reads.clear()
    assert file_sha256(shard) == first and reads == []


def test_a_cache_dir_given_with_a_tilde_is_in_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POISE_CACHE_DIR", "~/poise-cache")  # quoted in a shell or a unit file
    assert cache_dir() == tmp_path / "home" / "poise-cache"


def test_a_weights_file_renamed_changes_the_folders_fingerprint(tmp_path: Path) -> None:
    # which file holds the weights decides what loads (model.safetensors or a stray model.bin)
    folder = weights_folder(tmp_path / "model")
    before = folder_sha256(folder)
    (folder / "model.safetensors").rename(folder / "model.bin")
    assert folder_sha256(folder) != before
