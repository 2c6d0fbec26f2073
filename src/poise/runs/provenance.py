"""What a run's answers and verdicts were made with, beyond the names in its config.

A run's config names its model, scorers, monitors and probes by spec (a folder path, a plugin's
model name, a hub id), and a folder trained again keeps its path. So that a resumed run does not
mix answers or verdicts of two versions of one component, the run's header records a fingerprint
of each *weights component* the run depends on (``weights`` in run.json)::

    "weights": {
      "model": {"source": "organism-small", "sha256": "3f1c…"},
      "model > best_of_n(reward)": {"source": "/abs/out/reward", "sha256": "9a0e…"},
      "judge option model": {"source": "org/guard-7b", "commit": "1f2e…"}
    }

Components are found in the specs the run was built from, without loading anything: every name
in the audited model's spec (the model itself, a strategy's reward or cost model, a guard's
monitor, a probe: positional models and options alike, nested freely), the judge's argument
(``classifier:PATH``, ``guard:SPEC``, ``llm:SPEC``) and the judge's and attack's option values.
A name that is a local folder (or a plugin's model name, which stands for one) is fingerprinted
by the sha256 of the *contents* of its weight, JSON and tokenizer files, a chat template
included, and not of the optimizer and other state a Trainer checkpoint keeps to resume
training (sizes and modification times say nothing about a file rewritten in place); a name
that is a file (an LLM judge's rubric) by the sha256 of its bytes; a hub id by the commit the
local Hugging Face cache resolves it to (the snapshot ``transformers`` loaded), and not at all
when the cache does not know it. Anything else (``keywords:…`` scorers, ``openai:`` endpoints,
numbers) is no weights component.

File hashes are cached by the file's identity (resolved path, device, inode, size, modification
and status-change times): per process for every file, so a component named twice, or a resume in
the same process, reads its files once; and across processes for files of at least
:data:`CACHE_MIN_BYTES` (the shards of a model's weights), in one SQLite file,
``file-sha256.sqlite`` in :func:`cache_dir` (``$POISE_CACHE_DIR``, else
``$XDG_CACHE_HOME/poise``, else ``~/.cache/poise``), so the next audit does not read again the
gigabytes of a model that has not changed. A file written since, even with its modification time
set back (``cp -p``, ``rsync -t``, ``os.utime``), has a new status-change time, which no one can
set, and is hashed again. The file cache is only a cache: one that cannot be created, read or
written (a read-only home, a damaged file, a lock held too long) is left alone for the rest of
the process with one debug log line, and every hash is then computed from the file's bytes; a
row whose checksum does not match is ignored, so it never answers a wrong hash. It is not used
on Windows, where a file's ``st_ctime`` is its creation time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from poise.errors import PoiseError

__all__ = [
    "CACHE_MIN_BYTES",
    "cache_dir",
    "file_sha256",
    "folder_sha256",
    "weights_changed",
    "weights_components",
]

logger = logging.getLogger(__name__)

# the files of a folder that make what it computes: weights (safetensors, and the pickle
# checkpoints a folder may hold with allow_pickle) and JSON (config, a probe's or monitor's
# header with its threshold and layer, the tokenizer)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".json", ".model")
# files that make it too whatever their suffix: the chat template transformers saves beside
# tokenizer_config.json (it builds every prompt) and the vocabularies of slow tokenizers
TOKENIZER_FILES = frozenset({"chat_template.jinja", "vocab.txt", "merges.txt"})
# what transformers' Trainer writes into a checkpoint-N folder beside the weights to resume
# training (transformers.trainer: OPTIMIZER_NAME, SCHEDULER_NAME, SCALER_NAME, the RNG states,
# TRAINING_ARGS_NAME, TRAINER_STATE_NAME): nothing a loaded model computes with, and the
# optimizer's state is twice the size of float32 weights, read in full at every audit
TRAINER_STATE = re.compile(
    r"(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|training_args\.bin"
    r"|trainer_state\.json)$"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_BLOCK = 1 << 20

# (resolved path, device, inode, size, mtime_ns, ctime_ns) -> sha256 hex of the file's bytes
_FileKey = tuple[str, int, int, int, int, int]
_FILE_HASHES: dict[_FileKey, str] = {}

# files this large or larger are looked up in, and added to, the file cache (cache_dir()); a
# smaller one is read again, which costs less than a SQLite round trip. Its size also keeps the
# cache safe from a change within one tick of the coarse clock that stamps a file's times (a few
# ms): reading 64 MiB takes longer than that, and a file whose identity changed while it was
# read is not cached.
CACHE_MIN_BYTES = 64 << 20
CACHE_DIR_ENV = "POISE_CACHE_DIR"
HASH_CACHE_FILE = "file-sha256.sqlite"
# seconds a lookup or a store waits for another process's write lock before giving up
_CACHE_TIMEOUT = 5.0
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_sha256 (
    path TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    checksum TEXT NOT NULL
)
"""
# cache files that failed in this process: not tried again (and said once, at debug level)
_CACHE_FAILED: set[str] = set()


def cache_dir() -> Path:
    """The folder where poise keeps what it can compute again: ``$POISE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/poise`` (an absolute path, as the XDG Base Directory specification
    asks), else ``~/.cache/poise``. Read at each call, not created."""
    explicit = os.environ.get(CACHE_DIR_ENV, "")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "poise"
    return Path.home() / ".cache" / "poise"


def _row_checksum(path: str, identity: str, digest: str) -> str:
    """What a cache row's ``checksum`` holds: a row torn or altered in any field fails it."""
    return hashlib.sha256(f"{path}\0{identity}\0{digest}".encode()).hexdigest()


def _cache_failed(where: Path | None, exc: BaseException) -> None:
    """Stop using the file cache ``where`` for this process, saying why once (debug)."""
    name = str(where)
    if name not in _CACHE_FAILED:
        _CACHE_FAILED.add(name)
        logger.debug(
            "not using the file hash cache %s (%s: %s); hashing files in full, and deleting "
            "that file is safe",
            where,
            type(exc).__name__,
            exc,
        )


def _open_cache() -> tuple[Path, sqlite3.Connection] | None:
    """A connection to the file cache (created, with its folder, when missing), or None when
    the cache is not to be used or cannot be opened (said once)."""
    if os.name == "nt":  # st_ctime is the creation time there: a rewrite would go unseen
        return None
    where: Path | None = None
    try:
        where = cache_dir() / HASH_CACHE_FILE
        if str(where) in _CACHE_FAILED:
            return None
        where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        conn = sqlite3.connect(str(where), timeout=_CACHE_TIMEOUT, isolation_level=None)
    except (OSError, ValueError, RuntimeError, KeyError, sqlite3.Error) as exc:
        # RuntimeError, KeyError: no home folder to be found (Path.home)
        _cache_failed(where, exc)
        return None
    try:
        # SQLite's rollback journal and its file locks, not WAL: two processes may write at
        # once (one waits for the other's lock), and this holds on a home folder that several
        # hosts share over a network filesystem (NFS, Lustre), where WAL's shared-memory index
        # does not work (sqlite.org/wal.html); the cache's few small writes gain nothing from
        # WAL
        conn.execute(f"PRAGMA busy_timeout = {int(_CACHE_TIMEOUT * 1000)}")
        conn.execute(_CACHE_SCHEMA)
    except (sqlite3.Error, OSError) as exc:  # a damaged or read-only file
        conn.close()
        _cache_failed(where, exc)
        return None
    return where, conn


def _cached_sha256(key: _FileKey) -> str | None:
    """The file cache's sha256 for ``key``, or None: not there, or a row that fails its
    checksum (ignored), or no cache to read."""
    opened = _open_cache()
    if opened is None:
        return None
    where, conn = opened
    path, identity = key[0], ":".join(map(str, key[1:]))
    try:
        row = conn.execute(
            "SELECT identity, sha256, checksum FROM file_sha256 WHERE path = ?", (path,)
        ).fetchone()
    except sqlite3.Error as exc:
        _cache_failed(where, exc)
        return None
    finally:
        conn.close()
    if row is None or row[0] != identity or not isinstance(row[1], str):
        return None
    digest = row[1]
    if not _HEX64.match(digest) or row[2] != _row_checksum(path, identity, digest):
        return None
    return digest


def _store_sha256(key: _FileKey, digest: str) -> None:
    """Record ``digest`` for ``key`` in the file cache, replacing the row of an older version
    of the same path; nothing when there is no cache to write."""
    opened = _open_cache()
    if opened is None:
        return
    where, conn = opened
    path, identity = key[0], ":".join(map(str, key[1:]))
    try:
        with conn:  # one transaction
            conn.execute(
                "INSERT OR REPLACE INTO file_sha256 (path, identity, sha256, checksum) "
                "VALUES (?, ?, ?, ?)",
                (path, identity, digest, _row_checksum(path, identity, digest)),
            )
    except sqlite3.Error as exc:
        _cache_failed(where, exc)
    finally:
        conn.close()


def _file_key(path: Path) -> _FileKey:
    stat = path.stat()
    return (
        str(path),
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ctime_ns,
    )


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, cached by the file's identity (resolved path, device,
    inode, size, modification and status-change times): for the process, and across processes
    for a file of at least :data:`CACHE_MIN_BYTES` (see the module docstring). A file written
    since, even with its modification time set back (``cp -p``, ``rsync -t``), has a new
    status-change time, which no one can set, and is hashed again."""
    path = Path(path).resolve()
    key = _file_key(path)
    cached = _FILE_HASHES.get(key)
    if cached is not None:
        return cached
    persistent = key[3] >= CACHE_MIN_BYTES
    if persistent:
        cached = _cached_sha256(key)
        if cached is not None:
            _FILE_HASHES[key] = cached
            return cached
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    value = digest.hexdigest()
    if _file_key(path) != key:  # written while it was read: a hash of neither version
        return value
    _FILE_HASHES[key] = value
    if persistent:
        _store_sha256(key, value)
    return value


def _folder_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (top level, not hidden) whose contents make a component: weights
    and JSON (:data:`WEIGHT_SUFFIXES`) and the tokenizer's other files
    (:data:`TOKENIZER_FILES`), without a Trainer checkpoint's state (:data:`TRAINER_STATE`)."""
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and (p.suffix in WEIGHT_SUFFIXES or p.name in TOKENIZER_FILES)
        and not TRAINER_STATE.match(p.name)
        and p.is_file()
    )


def folder_sha256(folder: str | Path) -> str | None:
    """sha256 (hex) over the names and content hashes of a folder's weight, JSON and tokenizer
    files (:func:`_folder_files`, top level); None when it holds none (no weights component)."""
    files = _folder_files(Path(folder))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit the local Hugging Face cache resolves ``repo_id`` at ``revision`` to (the
    snapshot transformers loads from), or None when the cache does not hold it."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except (OSError, ValueError):  # a malformed id or cache: no commit, as for none cached
        return None
    if not isinstance(found, str):
        return None
    # as transformers reads a loaded config's ``_commit_hash`` (transformers.utils.hub.
    # extract_commit_hash): the snapshot folder the file resolved to
    parts = Path(found).parts
    if len(parts) >= 3 and parts[-3] == "snapshots" and _COMMIT.match(parts[-2]):
        return parts[-2]
    return None


def _fingerprint(text: str, revision: str | None = None) -> dict[str, str] | None:
    """The fingerprint of one name: a folder's, a file's or a hub id's; None for a name that
    is no weights component."""
    from poise.models.resolve import model_folder

    try:
        folder = model_folder(text)
    except PoiseError:  # a plugin's model that is not built: loading it says so
        return None
    try:
        path = folder if folder is not None else Path(text).expanduser()
        if path.is_dir():
            digest = folder_sha256(path)
            return None if digest is None else {"source": str(path.resolve()), "sha256": digest}
        if path.is_file():
            return {"source": str(path.resolve()), "sha256": file_sha256(path)}
    except (OSError, ValueError):  # a name too long for a path, a NUL byte, an unreadable file
        return None
    if _HUB_ID.match(text):
        commit = _hub_commit(text, revision)
        return None if commit is None else {"source": text, "commit": commit}
    return None


def _spec_names(text: str, role: str) -> Iterator[tuple[str, str]]:
    """``(role, name)`` for every name in a model spec: the spec itself when it is a name, else
    each positional model and option value of each call, nested (``model > best_of_n(reward)``,
    ``model > guarded(1) > best_of_n(1)``)."""
    from poise.models.spec import Call, Name, Str, parse_spec

    try:
        node = parse_spec(text)
    except PoiseError:
        return
    stack: list[tuple[Any, str]] = [(node, role)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, (Name, Str)):
            yield where, current.text
        elif isinstance(current, Call):
            for index, arg in enumerate(current.args, 1):
                stack.append((arg, f"{where} > {current.kind}({index})"))
            for key, value in current.options:
                stack.append((value, f"{where} > {current.kind}({key})"))


def weights_components(
    model_spec: str | None,
    judge: str | None = None,
    *,
    judge_options: Mapping[str, Any] | None = None,
    attack_options: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, str]]:
    """The fingerprint of every weights component a run depends on, by role (see the module
    docstring). ``model_spec``: the audited model's spec (None: an object without one, whose
    components cannot be named); ``judge``: the judge spec the audit resolved (``auto``
    resolved); ``model_options``: the audited model's options (its ``revision`` picks the
    commit of a hub id)."""
    names: list[tuple[str, str]] = []
    if model_spec:
        names.extend(_spec_names(model_spec, "model"))
    if judge:
        _, sep, arg = judge.partition(":")
        if sep and arg.strip():
            names.extend(_spec_names(arg.strip(), "judge"))
    for what, options in (("judge", judge_options), ("attack", attack_options)):
        for key, value in sorted((options or {}).items()):
            if isinstance(value, str) and value.strip():
                names.extend(_spec_names(value, f"{what} option {key}"))
    revision = (model_options or {}).get("revision")
    found: dict[str, dict[str, str]] = {}
    for role, text in names:
        fingerprint = _fingerprint(
            text, revision if role == "model" and isinstance(revision, str) else None
        )
        if fingerprint is not None:
            found[role] = fingerprint
    return dict(sorted(found.items()))


def weights_changed(recorded: object, now: Mapping[str, Mapping[str, str]]) -> str | None:
    """Why a run whose header records the weights ``recorded`` cannot go on with ``now``: one
    component, named by role and source, whose fingerprint differs; None when every component
    both name agrees (a run recorded before poise fingerprinted weights has none: no check)."""
    if not isinstance(recorded, Mapping):
        return None
    for role, then in recorded.items():
        current = now.get(str(role))
        if current is None or not isinstance(then, Mapping):
            continue
        for field in ("sha256", "commit"):
            old, new = then.get(field), current.get(field)
            if old is not None and new is not None and old != new:
                what = "weights" if field == "sha256" else "hub commit"
                source = current.get("source", then.get("source"))
                return (
                    f"the {role} ({source}) has other {what} than when its records were made "
                    f"({field} {str(old)[:16]} then, {str(new)[:16]} now)"
                )
    return None
