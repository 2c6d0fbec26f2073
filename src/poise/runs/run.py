"""The run folder: what an audit leaves behind, and how a killed audit resumes.

    runs/<timestamp>-<name>/
      run.json       schema version, versions of poise/torch/transformers (and, for a run continued
                     under others, those in ``continued_with``), resolved config, status, the
                     directory its config's relative paths are relative to (``workdir``);
                     from the audit: the model's name and spec, the judge, the fingerprints of the
                     weights it depends on (``weights``, :mod:`poise.runs.provenance`), the
                     system messages "default" and "none" sent (``system_prompts``) and, for
                     a chat template that writes today's date, how it rendered
                     (``dated_prompts``)
      samples.jsonl  one record per (item, request, completion, verdict), appended as produced
      cache.sqlite   request -> completion cache (WAL); makes regenerating after a kill free
      metrics.json   rates with 95% intervals, overall and per category
      report.html    self-contained report

Crash safety. ``run.json`` and ``metrics.json`` are written to a temporary file and renamed into
place, so they are either the old or the new version; temporary files a kill left behind are
removed when the run starts again, and a failed write (a full disk) is one line, not a traceback. ``samples.jsonl`` is append-only: each
batch of records is written with one ``write`` and fsync'ed; a kill in the middle of a write can
leave at most one partial last line (which may end inside a UTF-8 character), which readers skip
and :meth:`Run.repair` cuts off before resuming. A record is identified by ``(item_id,
request_id, sample_index)``; on resume the done keys are skipped, so no record is lost or
written twice.

Life of a run (everything that touches the folder is a method of :class:`Run`)::

    run = Run.find_unfinished(root, fingerprint) or Run.create(root, name, config)   # create / resume
    done = run.start(judge_resolved=..., model_name=...)   # status running; repair; done keys
    cached = run.cached(model)                               # the run's response cache
    run.append(records)                                      # as produced
    run.finish(metrics, report=write_run_report)             # metrics.json, report.html, then status

Readers (the report, ``poise runs``) open a run with :meth:`Run.open` and read it through
``header``, ``records()`` and ``metrics()``.

One writer at a time. A process that writes a run holds an exclusive ``flock`` on ``.lock`` in its
folder, from :meth:`Run.lock` (or :meth:`Run.start`) to :meth:`Run.finish` / :meth:`Run.unlock`.
The operating system drops the lock when the process ends, however it ends, so ``kill -9`` never
leaves a stale lock behind; a second process that tries to adopt the same run gets a
:class:`PoiseError`. A run whose header says ``running`` while nobody holds its lock was
interrupted (:attr:`Run.state`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one writer is on the user
    fcntl = None  # type: ignore[assignment]

from poise.errors import (
    PoiseError,
    decode_line,
    file_on_the_way,
    invalid_json,
    located,
    read_json_object,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from poise.models.base import LanguageModel
    from poise.models.cache import CachedModel

SCHEMA_VERSION = 1
RUN_FILE = "run.json"
SAMPLES_FILE = "samples.jsonl"
CACHE_FILE = "cache.sqlite"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
LOCK_FILE = ".lock"

RecordKey = tuple[str, str, int]


def record_key(record: Mapping[str, Any]) -> RecordKey:
    return (str(record["item_id"]), str(record["request_id"]), int(record["sample_index"]))


def key_problem(record: Mapping[str, Any]) -> str | None:
    """Why ``record`` has no key (:func:`record_key`): a missing field, or a sample index that is
    not an integer; None when it has one."""
    for name in ("item_id", "request_id", "sample_index"):
        if record.get(name) is None:
            return f"the record has no {name!r}"
    index = record["sample_index"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return f"'sample_index' must be an integer >= 0, got {index!r}"
    return None


def write_error(path: Path, exc: OSError) -> PoiseError:
    """One line for a failed write (a full disk, a read-only folder), naming the file."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return PoiseError(
            f"{path}: the disk is full ({reason}); free some space and run the same command "
            "again to resume"
        )
    return PoiseError(f"{path}: cannot write ({reason})")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) sees either the old file or the new one."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    write_text_atomic(path, text, fsync=True)


def write_text_atomic(path: Path, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` next to ``path`` and rename it into place; PoiseError on a failed write.
    The temporary file is removed whatever stops the write (a full disk, Ctrl-C), and the file
    gets the umask's mode, as any file the process writes (``mkstemp`` would make it 0600)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_runs_root(root: str | Path) -> None:
    """Refuse, before any work, a runs folder (``--out``) that is a file or lies under one: it
    was found only once the model was loaded, as "cannot create the runs folder (File
    exists)"."""
    root = Path(root)
    blocker = root if root.exists() and not root.is_dir() else file_on_the_way(root)
    if blocker is not None:
        raise PoiseError(
            f"{root}: cannot create the runs folder: {blocker} is a file; give a folder path"
        )


def environment_versions() -> dict[str, str | None]:
    """Versions that made a run, without importing torch or transformers if not yet loaded."""
    from importlib.metadata import PackageNotFoundError, version

    from poise._version import __version__

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "poise_version": __version__,
        "torch_version": pkg("torch"),
        "transformers_version": pkg("transformers"),
        "python_version": platform.python_version(),
    }


def _last_newline(f: Any, end: int, chunk: int = 1 << 16) -> int:
    """The offset of the last ``\n`` before byte ``end`` of the binary file ``f``, or -1: read
    backwards a chunk at a time, so a long run's samples file is not read whole to find its
    last line."""
    while end > 0:
        begin = max(0, end - chunk)
        f.seek(begin)
        found = f.read(end - begin).rfind(b"\n")
        if found >= 0:
            return begin + found
        end = begin
    return -1


@dataclass
class Run:
    path: Path
    _lock: IO[str] | None = field(default=None, init=False, repr=False, compare=False)

    # ---- creating and opening -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | Path,
        name: str,
        config: Mapping[str, Any],
        *,
        lock: bool = False,
        workdir: str | Path | None = None,
    ) -> Run:
        """A new run folder under ``root``. ``lock``: take the run's lock before its header is
        written, so no other process can adopt the run (:meth:`find_unfinished` finds it as soon
        as run.json exists) before its writer holds it. ``workdir``: the directory the relative
        paths of ``config`` are relative to (recorded as an absolute path, ``workdir``, so a
        resume from another directory reads the same files: :func:`recorded_workdir`)."""
        root = Path(root)
        check_runs_root(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PoiseError(f"{root}: cannot create the runs folder ({exc.strerror})") from None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "run"
        path = root / f"{stamp}-{safe}"
        suffix = 1
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:  # another run of that name this second (or another process)
                suffix += 1
                path = root / f"{stamp}-{safe}-{suffix}"
            except OSError as exc:
                raise write_error(path, exc) from None
        run = cls(path)
        if lock:
            run.lock()
        header = {
            "schema": SCHEMA_VERSION,
            "name": path.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": "running",
            **environment_versions(),
            **({"workdir": str(Path(workdir).absolute())} if workdir is not None else {}),
            "config": dict(config),
        }
        try:
            write_json_atomic(path / RUN_FILE, header)
            try:
                (path / SAMPLES_FILE).touch()
            except OSError as exc:
                raise write_error(path / SAMPLES_FILE, exc) from None
        except PoiseError:
            run.unlock()
            raise
        return run

    @classmethod
    def open(cls, path: str | Path, *, any_schema: bool = False) -> Run:
        """An existing run folder, its header checked. ``any_schema``: accept a header of
        another schema version (a report can still be drawn from it)."""
        path = Path(path)
        if not path.is_dir():
            raise PoiseError(f"{path}: no such run folder (no such directory)")
        if not (path / RUN_FILE).is_file():
            raise PoiseError(f"{path}: not a poise run folder (no {RUN_FILE})")
        run = cls(path)
        header = run.header  # validates
        if not any_schema and header.get("schema") != SCHEMA_VERSION:
            raise PoiseError(
                f"{path / RUN_FILE}: schema {header.get('schema')!r} is not supported "
                f"(this poise reads schema {SCHEMA_VERSION})"
            )
        return run

    # ---- header ---------------------------------------------------------------------------
    @property
    def header(self) -> dict[str, Any]:
        file = self.path / RUN_FILE
        data = read_json_object(file)
        if "config" not in data:
            raise PoiseError(f"{file}: not a run header (no 'config' field)")
        if not isinstance(data["config"], dict):
            raise PoiseError(f"{file}: field 'config' must be an object")
        return data

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.header["config"])

    @property
    def model_to_build(self) -> str | None:
        """The spec that rebuilds the run's model: the recorded ``model_spec`` (the model the
        audit built, folders by their absolute paths), else the config's ``model`` as typed (a
        run from before it was recorded; a relative folder there is read from here); None when
        the run names none (a model object without a spec)."""
        header = self.header
        built = header.get("model_spec")
        if isinstance(built, str) and built:
            return built
        typed = header["config"].get("model")
        return typed if isinstance(typed, str) and typed else None

    @property
    def status(self) -> str:
        return str(self.header.get("status", "unknown"))

    @property
    def state(self) -> str:
        """The status as a user sees it: ``running`` only while a process holds the run's lock;
        a run whose header says ``running`` and whose lock is free was killed: ``interrupted``."""
        status = self.status
        if status == "running" and self._lock is None and not self.is_locked():
            return "interrupted"
        return status

    # ---- one writer: the run's lock --------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    def lock(self) -> Run:
        """Take the run's exclusive lock (held until :meth:`unlock`, :meth:`finish` or the end of
        the process). PoiseError when another process holds it. Taking it twice is a no-op."""
        if self._lock is not None or fcntl is None:
            return self
        try:
            handle = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held open
        except OSError as exc:
            raise PoiseError(
                f"{self.lock_path}: cannot open the run's lock ({exc.strerror})"
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise PoiseError(
                    f"{self.lock_path}: cannot lock the run ({exc.strerror})"
                ) from None
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise PoiseError(
                f"{self.path}: another poise process{who} is writing this run; wait for it to "
                "finish, or write to another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle
        return self

    def unlock(self) -> None:
        """Release the run's lock (closing the file drops the flock)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def is_locked(self) -> bool:
        """Whether some process (this one included, through another ``Run``) holds the lock."""
        if fcntl is None or not self.lock_path.is_file():
            return False
        try:
            with open(self.lock_path, encoding="utf-8") as handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    return True
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                return False
        except OSError:
            return False

    def update_header(self, **fields: Any) -> None:
        header = self.header
        header.update(fields)
        write_json_atomic(self.path / RUN_FILE, header)

    # ---- samples --------------------------------------------------------------------------
    @property
    def samples_path(self) -> Path:
        return self.path / SAMPLES_FILE

    @property
    def cache_path(self) -> Path:
        return self.path / CACHE_FILE

    def check_samples_file(self) -> None:
        """PoiseError unless ``samples.jsonl`` is a regular file (or absent): a symbolic link
        would make poise cut or append to a file outside the run folder."""
        path = self.samples_path
        if path.is_symlink():
            raise PoiseError(
                f"{path}: is a symbolic link (to {os.readlink(path)}); a run's samples must be a "
                "regular file, so poise will not write through it (copy the file in its place)"
            )
        if path.exists() and not path.is_file():
            raise PoiseError(f"{path}: is not a regular file")

    def repair(self) -> int:
        """Cut a partial last line left by a kill mid-write, with a warning. Returns the bytes
        removed."""
        self.check_samples_file()
        path = self.samples_path
        try:
            cut = self._repair(path)
        except OSError as exc:
            raise write_error(path, exc) from None
        if cut:
            log.warning("%s: cut a partial last record left by an interrupted write", path)
        return cut

    def _repair(self, path: Path) -> int:
        if not path.exists():
            path.touch()
            return 0
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        with open(fd, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if not size:
                return 0
            f.seek(size - 1)
            if f.read(1) != b"\n":
                keep = _last_newline(f, size) + 1  # 0 when there is no complete line at all
            else:
                # a complete-looking last line that is not valid JSON (torn write) goes too
                start = _last_newline(f, size - 1) + 1
                f.seek(start)
                try:
                    json.loads(f.read(size - start))
                except ValueError:
                    keep = start
                else:
                    keep = size
            if keep < size:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
            return size - keep

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Append records in one write + fsync; returns how many were written."""
        lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records]
        if not lines:
            return 0
        blob = "".join(lines).encode("utf-8")
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.samples_path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.check_samples_file()
            raise write_error(self.samples_path, exc) from None
        try:
            view = memoryview(blob)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError as exc:
            # a short write leaves a torn last line, which the next start cuts off
            raise write_error(self.samples_path, exc) from None
        finally:
            os.close(fd)
        return len(lines)

    def samples_written(self) -> int:
        """How many complete records ``samples.jsonl`` holds (its finished lines), without
        parsing them: what an unfinished run has so far (a finished run's header says it)."""
        path = self.samples_path
        if not path.exists():
            return 0
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    def records(self) -> Iterator[dict[str, Any]]:
        """All complete records, in the order written. Read as bytes, each finished line
        decoded on its own: a torn last line (a kill mid-write, or a writer still writing it)
        may end inside a character, and is not a record yet; a finished line that is not UTF-8
        is one error naming its line."""
        path = self.samples_path
        if not path.exists():
            return
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    return  # a torn last line: not a record yet
                line = decode_line(raw, path, lineno)
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise located(path, lineno, invalid_json(exc)) from None
                if not isinstance(record, dict):
                    raise located(path, lineno, "expected a JSON object per line")
                yield record

    def done_keys(self) -> set[RecordKey]:
        """The keys of the records written; PoiseError naming file and line for a record
        without one (a hand-edited or foreign samples file)."""
        keys = set()
        for lineno, record in enumerate(self.records(), 1):  # one record per line
            problem = key_problem(record)
            if problem is not None:
                raise located(self.samples_path, lineno, problem)
            keys.add(record_key(record))
        return keys

    # ---- results --------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any] | None:
        """``metrics.json``, or None before the run finished; PoiseError when unreadable."""
        file = self.path / METRICS_FILE
        return read_json_object(file) if file.exists() else None

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        write_json_atomic(self.path / METRICS_FILE, metrics)

    # ---- life: resume, start, cache, finish ------------------------------------------------
    @classmethod
    def find_unfinished(
        cls, root: str | Path, fingerprint: str, *, name: str | None = None
    ) -> Run | None:
        """The newest run under ``root`` that did not complete and was made by the same
        configuration (``config.fingerprint``), and with ``name`` when one is given (the
        fingerprint leaves the name out); None when there is none."""
        for run in list_runs(root):
            try:
                header = run.header
            except PoiseError:
                continue
            if (
                header.get("status") != "complete"
                and header.get("config", {}).get("fingerprint") == fingerprint
                and (name is None or header.get("config", {}).get("name") == name)
            ):
                return run
        return None

    def start(self, **header_fields: Any) -> set[RecordKey]:
        """Take the run's lock, mark the run running (with ``header_fields``), cut a torn last
        record left by a kill, and return the keys of the records already written (skip them
        when resuming)."""
        self.lock()
        self.check_samples_file()
        self.remove_temporary_files()
        self.repair()
        done = self.done_keys()  # a malformed record stops here, the header still as it was
        continued = self._continued_with() if done else None
        if continued is not None:
            header_fields["continued_with"] = continued
        self.update_header(status="running", **header_fields)
        return done

    def _continued_with(self) -> list[Any] | None:
        """The header's ``continued_with`` with this process's versions added, when they are not
        those its last records were made with (:func:`environment_versions`: the header's since
        :meth:`create`, or the last ``continued_with`` entry): the header named only the first
        process's, though the records written from now on are made under these. None when they
        are the same."""
        header = self.header
        earlier = header.get("continued_with")
        earlier = earlier if isinstance(earlier, list) else []
        # the versions of the last process that wrote records: the first, or the last continuer
        last = earlier[-1] if earlier and isinstance(earlier[-1], Mapping) else header
        now = environment_versions()
        changed = {k: v for k, v in now.items() if k in last and last[k] != v}
        if not changed:
            return None
        log.warning(
            "%s: continued under other versions than its records so far were made with (%s); "
            "run.json keeps both (continued_with)",
            self.path,
            ", ".join(f"{k} {last[k]} -> {v}" for k, v in changed.items()),
        )
        return [
            *earlier,
            {
                "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "records_before": self.samples_written(),
                **now,
            },
        ]

    def remove_temporary_files(self) -> list[Path]:
        """Remove what a killed writer left half-done (``.run.json.tmp-*``, ``.metrics.json.tmp-*``,
        ``.report.html.tmp-*``); call it holding the lock. Returns the files removed."""
        removed = []
        for tmp in self.path.glob(".*.tmp-*"):
            if tmp.is_file() or tmp.is_symlink():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        if removed:
            log.info(
                "%s: removed %d temporary file(s) left by a killed run", self.path, len(removed)
            )
        return removed

    def cached(self, model: LanguageModel) -> CachedModel:
        """``model`` behind this run's response cache (regenerating after a kill is free)."""
        from poise.models.cache import CachedModel, ResponseCache

        return CachedModel(model, ResponseCache(self.cache_path))

    def finish(
        self,
        metrics: Mapping[str, Any],
        *,
        samples: int | None = None,
        report: Callable[[Run], object] | None = None,
    ) -> None:
        """Write ``metrics.json``, draw the report with ``report(run)``, then mark the run
        complete and release its lock. The status comes last, so a run killed before it is still
        unfinished and the same command resumes it and writes what is missing (a ``complete`` run
        always has its metrics and report). The report layer sits above runs, so it is passed
        in: ``poise.report.html.write_run_report``. ``samples``: the number of records, when the
        caller has just counted them (else they are counted here)."""
        self.write_metrics(metrics)
        if samples is None:
            samples = sum(1 for _ in self.records())
        if report is not None:
            report(self)
        self.update_header(status="complete", samples=samples)
        self.unlock()

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE


def list_runs(root: str | Path) -> list[Run]:
    """Run folders under ``root``, newest first; folders that are not runs are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for child in root.iterdir():
        if (child / RUN_FILE).is_file():
            runs.append(Run(child))
    return sorted(runs, key=lambda r: r.path.name, reverse=True)


_STAMP = re.compile(r"^\d{8}-\d{6}-")  # a run folder's timestamp prefix


def matching_runs(spec: str | Path, root: str | Path = "runs") -> list[Run]:
    """The runs under ``root`` whose folder is named ``spec``, else those whose name after the
    timestamp is ``spec`` (``large-t1`` is ``20261202-152416-large-t1``, not
    ``…-large-t1-40``), else those whose folder name contains it; newest first."""
    runs = list_runs(root)
    spec = str(spec)
    exact = [r for r in runs if r.path.name == spec]
    named = [r for r in runs if _STAMP.sub("", r.path.name) == spec]
    return exact or named or [r for r in runs if spec in r.path.name]


def find_run(spec: str | Path, root: str | Path = "runs", *, base: str | Path | None = None) -> Run:
    """A run by path, by folder name under ``root``, or by a unique prefix/suffix of its name.
    ``base``: the directory a relative path is relative to (default: the working directory),
    as a run's :func:`recorded_workdir` for a path its config names."""
    path = Path(spec) if base is None else Path(base) / spec
    if path.is_dir():
        return Run.open(path)
    candidates = matching_runs(spec, root)
    if len(candidates) == 1:
        return Run.open(candidates[0].path)
    if not candidates:
        names = [r.path.name for r in list_runs(root)]
        hint = (
            f" (runs under {root}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''})"
            if names
            else f" (not a run folder, and {root} holds no runs)"
        )
        raise PoiseError(f"no run {str(spec)!r} found{hint}")
    shown = ", ".join(r.path.name for r in candidates[:5])
    raise PoiseError(
        f"{str(spec)!r} matches {len(candidates)} runs under {root} (newest first): {shown}"
        f"{' …' if len(candidates) > 5 else ''}; give the folder name of the one you mean"
    )


def working_directory() -> str | None:
    """The absolute working directory, or None when it is gone (removed while the process ran
    in it): what :meth:`Run.create` records as ``workdir``."""
    try:
        return os.getcwd()
    except OSError:
        return None


def recorded_workdir(run: Run) -> Path | None:
    """The directory the relative paths of ``run``'s config (suite files, a reference run, a
    labels file) are read against when the run is continued or judged again: the ``workdir`` it
    began in, when that is another directory than the working one and still there. None (read
    them from the working directory, as when it began) for a run recorded before poise kept it,
    one begun here, or one whose directory is gone (a project moved: its paths are read from
    here, and the items check of the resume still refuses a suite file that holds other items)."""
    recorded = run.header.get("workdir")
    if not isinstance(recorded, str) or not recorded:
        return None
    there = Path(recorded)
    try:
        if not there.is_dir() or there.samefile(Path.cwd()):
            return None
    except OSError:  # the working directory is gone: the recorded one is the one there is
        return there
    return there


def rejudged_label(header: Mapping[str, object]) -> str:
    """Where a run judged again (``poise runs rejudge``) took its answers, and the judge that
    labelled them there; empty for a run that generated its own."""
    source = header.get("rejudged_from")
    if not isinstance(source, Mapping):
        return ""
    return f"answers of {source.get('run', '?')}, judged there by {source.get('judge', '?')}"


def attack_label(cfg: Mapping[str, object]) -> str:
    """The attack of a run's config; the plain attack ("greedy", which asks each item once with
    the run's sampling) says how it sampled, so a sampled run does not read as greedy."""
    attack = str(cfg.get("attack"))
    sampling = cfg.get("sampling")
    if attack != "greedy" or not isinstance(sampling, dict):
        return attack
    temperature = sampling.get("temperature") or 0
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        return attack
    if sampling.get("top_k") == 1:  # the argmax whatever the temperature
        return f"{attack} (top-k=1)"
    n = sampling.get("n") or 1
    return f"sampled T={temperature:g}" + (f" n={n}" if n != 1 else "")
