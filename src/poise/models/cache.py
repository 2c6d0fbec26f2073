"""A SQLite response cache, and ``CachedModel``: any ``LanguageModel`` behind that cache.

The key of a request is sha256 over (model name, chat, ``sampling.key()``); the seed is part of
``Sampling``, so a cached answer is exactly what the model would produce again. The value is the
JSON list of the ``sampling.n`` completions.

The file runs in WAL mode: readers never block the writer, two processes may share one file
(each waits on the other's lock through SQLite's busy timeout), and every ``generate`` call
stores its new rows in one transaction, so a process killed at any moment (``kill -9``) leaves
only whole, committed rows behind. A backend that hands over each answer as it arrives (the
openai backend, ``partial_results``) has each stored in its own transaction as it comes, so a
request that fails for good, or a kill, loses none of the answers already received. That is what
makes a killed run resumable::

    model = CachedModel(load_model("organism"), ResponseCache("runs/x/cache.sqlite"))
    model.generate(chats, sampling)   # computes and stores
    model.generate(chats, sampling)   # answered from the file; the inner model is not called
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models.base import Chat, Completion, GenerationError, LanguageModel, ProgressFn
from poise.models.wrapped import WrappedModel

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
)
"""
# SQLite limits the number of bound parameters per statement; look keys up in slices.
_LOOKUP_SLICE = 500


def request_key(model_name: str, chat: Chat, sampling: Sampling) -> str:
    """sha256 (hex) over the model name, the chat and every sampling field (seed included)."""
    blob = json.dumps(
        [model_name, [dict(m) for m in chat], sampling.key()],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """request key -> list of completions, in one SQLite file (WAL mode).

    ``timeout`` is how many seconds a call waits for another process's lock before failing.
    One instance may be shared by threads; each process should open its own.
    """

    def __init__(self, path: str | Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
            self._conn = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise PoiseError(f"{self.path}: could not switch the cache to WAL mode ({mode})")
            # with WAL, NORMAL keeps every committed transaction across a process crash
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.DatabaseError, OSError) as exc:
            raise PoiseError(f"{self.path}: cannot open the response cache ({exc})") from None

    # -- raw access

    def get_many(self, keys: Iterable[str]) -> dict[str, list[Completion]]:
        """The cached completions for those ``keys`` that are present."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, list[Completion]] = {}
        with self._lock, self._errors("read"):
            for start in range(0, len(wanted), _LOOKUP_SLICE):
                part = wanted[start : start + _LOOKUP_SLICE]
                marks = ",".join("?" * len(part))
                rows = self._conn.execute(
                    f"SELECT key, value FROM completions WHERE key IN ({marks})", part
                ).fetchall()
                for key, value in rows:
                    found[key] = [Completion.from_dict(d) for d in json.loads(value)]
        return found

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """A SQLite or OS error (a full disk, a damaged file) as one line naming the file."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            hint = ""
            if "full" in str(exc).lower() or getattr(exc, "errno", None) == errno.ENOSPC:
                hint = "; free some space and run the same command again to resume"
            raise PoiseError(
                f"{self.path}: cannot {doing} the response cache ({exc}){hint}"
            ) from None

    def get(self, key: str) -> list[Completion] | None:
        return self.get_many([key]).get(key)

    def put_many(self, model_name: str, entries: Mapping[str, Sequence[Completion]]) -> None:
        """Store all ``entries`` in one transaction: all of them land, or none."""
        if not entries:
            return
        now = time.time()
        rows = [
            (key, model_name, json.dumps([c.to_dict() for c in completions]), now)
            for key, completions in entries.items()
        ]
        self._insert(rows, "OR REPLACE")

    def _insert(self, rows: Sequence[tuple[str, str, str, float]], conflict: str) -> None:
        """(key, model, value, created) rows in one transaction: all of them land, or none.
        ``conflict``: "OR REPLACE" (a row of the same key is replaced) or "OR IGNORE" (kept)."""
        with self._lock, self._errors("write to"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    f"INSERT {conflict} INTO completions (key, model, value, created) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def copy_from(self, other: str | Path, model_name: str, keys: Mapping[str, str]) -> int:
        """Add the answers that the cache file ``other`` holds under the keys of ``keys`` and
        this one does not, each stored under the key it maps to (the same key, or a request's
        key under the model's name now, where it was made under another) with ``model_name``;
        an answer this cache holds is kept. One transaction. Returns how many answers ``other``
        held of those asked. ``other`` is read only."""
        source = Path(other)
        if not source.is_file():
            return 0
        # a SQLite URI decodes %HH and ends the path at '?' or '#': every such character of
        # the path is escaped ("runs/a%20b" is a folder of that name, not "runs/a b")
        uri = "file:" + quote(str(source.resolve()), safe="/") + "?mode=ro"
        wanted: list[str] = list(keys)
        rows: list[tuple[str, str, str, float]] = []
        try:
            reader = sqlite3.connect(uri, uri=True, timeout=60.0)
            try:
                for start in range(0, len(wanted), _LOOKUP_SLICE):
                    part = wanted[start : start + _LOOKUP_SLICE]
                    marks = ",".join("?" * len(part))
                    found = reader.execute(
                        f"SELECT key, value, created FROM completions WHERE key IN ({marks})", part
                    )
                    rows += [(keys[k], model_name, v, t) for k, v, t in found.fetchall()]
            finally:
                reader.close()
        except sqlite3.Error as exc:
            raise PoiseError(f"{source}: cannot read the response cache ({exc})") from None
        self._insert(rows, "OR IGNORE")
        return len(rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0])

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"


class CachedModel(WrappedModel):
    """``model`` with a ``ResponseCache`` in front: a transparent
    :class:`~poise.models.wrapped.WrappedModel`, with the inner model's name and spec (a cached
    answer is exactly the inner model's answer).

    ``generate`` looks every chat up, sends only the misses to the inner model in one call
    (identical chats once), stores the new completions in one transaction, and returns
    everything in order. ``score`` is passed through uncached; the default system prompt, the
    tokenizer and the recommended judge are the inner model's.
    """

    kind = "cache"
    transparent = True

    def __init__(self, model: LanguageModel, cache: ResponseCache) -> None:
        super().__init__(model)
        self.model = model
        self.cache = cache
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedModel({self.model!r}, {self.cache!r})"

    def generate(
        self,
        chats: Sequence[Chat],
        sampling: Sampling,
        *,
        progress: ProgressFn | None = None,
    ) -> list[list[Completion]]:
        keys = [request_key(self.name, chat, sampling) for chat in chats]
        found = self.cache.get_many(keys)
        missing: dict[str, Chat] = {}
        for key, chat in zip(keys, chats, strict=True):
            if key not in found and key not in missing:
                missing[key] = chat
        hits = sum(key in found for key in keys)
        self.hits += hits
        self.misses += len(keys) - hits
        if progress is not None and hits:
            progress(hits)
        if missing:
            logger.debug("cache: %d hits, %d to generate", hits, len(missing))
            fresh = self._generate_missing(missing, sampling, progress, keys, found)
            if len(fresh) != len(missing):
                raise RuntimeError(
                    f"model {self.name!r} returned {len(fresh)} results for {len(missing)} chats"
                )
            new = dict(zip(missing, fresh, strict=True))
            self.cache.put_many(self.name, {k: v for k, v in new.items() if k not in found})
            found.update(new)
            repeats = len(keys) - hits - len(missing)  # chats asked twice in this call
            if progress is not None and repeats:
                progress(repeats)
        return [list(found[key]) for key in keys]

    def _generate_missing(
        self,
        missing: dict[str, Chat],
        sampling: Sampling,
        progress: ProgressFn | None,
        keys: list[str],
        found: dict[str, list[Completion]],
    ) -> list[list[Completion]]:
        """The inner model's answers to ``missing``. A backend that hands over each answer as
        it arrives (``partial_results``) has each stored at once, into ``found`` too; when some
        requests fail, every answer received is stored and GenerationError is raised again with
        the indices of this call's ``keys``."""
        order = list(missing)
        if not getattr(self.model, "partial_results", False):
            return self.model.generate(list(missing.values()), sampling, progress=progress)

        def store(index: int, completions: list[Completion]) -> None:
            self.cache.put_many(self.name, {order[index]: completions})
            found[order[index]] = completions

        try:
            fresh: list[list[Completion]] = self.model.generate(  # type: ignore[call-arg]
                list(missing.values()), sampling, progress=progress, on_result=store
            )
            return fresh
        except GenerationError as exc:
            if exc.model is not self.model:
                raise  # a wrapper's indices and texts are not this call's to store
            late = {
                order[i]: r
                for i, r in enumerate(exc.results)
                if r is not None and order[i] not in found
            }
            self.cache.put_many(self.name, late)
            found.update(late)
            reasons = {order[i]: reason for i, reason in exc.failures.items()}
            raise GenerationError(
                self,
                [list(found[k]) if k in found else None for k in keys],
                {i: reasons[k] for i, k in enumerate(keys) if k in reasons},
            ) from None
