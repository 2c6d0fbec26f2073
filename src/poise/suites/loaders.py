"""Load a suite from a built-in name, a local file in a public format, or a hub dataset.

``load_suite(spec)`` resolves ``spec`` in this order:

1. a built-in name (``harmful``, ``borderline``, ``benign``, ``honesty``): the JSONL file of
   that name in ``poise/suites/builtin/``;
2. an existing local file: ``.csv``, ``.tsv``, ``.jsonl`` / ``.ndjson``, ``.json`` (an array
   of objects, JSON lines, or one object holding the rows as a list under one key, as
   JailbreakBench artifacts do), ``.txt`` (one prompt per line; the kind from ``kind=``), each
   optionally ``.gz`` (a ``.csv`` file whose header is one column holding semicolons or tabs
   is read with that delimiter); the row format is detected from the header (see
   :mod:`poise.suites.formats`) or forced with ``format=``; the columns of JSON rows are the
   keys of all of them (a row may leave a key out); with the ``datasets`` extra, a ``.parquet``
   or ``.arrow`` file (read with pyarrow), a folder written by ``datasets``' ``save_to_disk``
   (one split's folder), read with ``datasets.load_from_disk``, or a folder of data files as a
   hub dataset's repository holds them, read with ``datasets.load_dataset(FOLDER)``;
3. ``owner/name`` (optionally ``owner/name:split`` or ``owner/name:config:split``): a hub
   dataset, read lazily through ``datasets.load_dataset``.

Every mistake in the input ends in one :class:`~poise.errors.PoiseError` line naming the file,
the line (of a JSON array's row: the line it starts on) and the field. The whole file is read
before any item is returned, so nothing is half-loaded; with ``limit`` only the first rows are
converted (of a Parquet or Arrow file, only the record batches that hold them are read). A data
file that is a Git LFS pointer (a clone made without git-lfs) is named as such.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from poise.config import DEFAULT_SUITES
from poise.errors import (
    DuplicateKeyError,
    MissingExtraError,
    PoiseError,
    UnknownNameError,
    invalid_json,
    json_error_line,
    json_lines,
    located,
    parse_json,
    unique_keys,
)
from poise.suites.formats import (
    Draft,
    Format,
    FormatContext,
    Record,
    detect_format,
    format_registry,
    kind_hint,
)
from poise.suites.schema import SuiteItem
from poise.tasks import kinds

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"

# Extensions read as data files (before an optional ".gz").
DATA_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".txt")

# Columnar files, as the hub stores datasets: read with pyarrow (the datasets extra)
COLUMNAR_FORMATS = {".parquet": "Parquet", ".arrow": "Arrow"}

# Files people keep prompt sets in that poise does not read: named as such, not misread as CSV
# (an Excel file was "not UTF-8 text; save the file as UTF-8", a YAML list "missing required
# column 'prompt' (columns found: '- prompt: ...')").
OTHER_FORMATS = {
    ".feather": "Feather",
    ".xlsx": "Excel",
    ".xls": "Excel",
    ".yaml": "YAML",
    ".yml": "YAML",
}

# "owner/name", optionally ":split" or ":config:split"; names as the hub allows them.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(?::[\w.-]+){0,2}$")
# Generic data-split file names; the folder above them names the suite instead.
_SPLIT_STEMS = {"train", "test", "validation", "valid", "val", "dev"}
# A shard of a split: "-00000-of-00001", and the fingerprint push_to_hub once added after it
# ("train-00000-of-00001-5c4d6a1e7c8a2e3f.parquet").
_SHARD = re.compile(r"-\d{5}-of-\d{5}(?:-[0-9a-f]{8,})?$")


@dataclass
class Suite:
    """A named list of items and where they came from."""

    name: str
    items: list[SuiteItem]
    source: str
    format: str = ""  # the row format the items were read with

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[SuiteItem]:
        return iter(self.items)

    def kind_counts(self) -> dict[str, int]:
        """Items per kind, in the order of :func:`poise.tasks.kinds` (registration order)."""
        counts: Counter[str] = Counter(item.kind for item in self.items)
        return {kind: counts[kind] for kind in kinds() if counts[kind]}

    def category_counts(self) -> dict[str, int]:
        """Items per category, most frequent first."""
        return dict(Counter(item.category for item in self.items).most_common())


def builtin_suites() -> list[str]:
    """Names of the built-in suites: the defaults, then any other data file shipped with them."""
    extra = sorted(p.name.removesuffix(".jsonl") for p in BUILTIN_DIR.glob("*.jsonl"))
    return list(DEFAULT_SUITES) + [name for name in extra if name not in DEFAULT_SUITES]


def builtin_path(name: str) -> Path:
    """The data file of a built-in suite (which may not exist yet)."""
    return BUILTIN_DIR / f"{name}.jsonl"


def load_suite(
    spec: str,
    *,
    format: str | None = None,
    columns: Mapping[str, str] | None = None,
    kind: str | None = None,
    category: str | None = None,
    limit: int | None = None,
) -> Suite:
    """Load a suite from a built-in name, a local file or a hub dataset id.

    ``format`` forces a row format (``poise.suites.format_registry.names()``) instead of detecting it
    from the header. ``columns`` maps roles (prompt, id, kind, category, reference, system) to
    column names of a generic file and implies the generic format. ``kind`` and ``category``
    apply to rows that carry none of their own (a format's convention, e.g. AdvBench ->
    harmful, counts as none, so ``kind=`` overrides it). ``limit`` keeps the first N items.
    """
    if kind is not None and kind not in kinds():
        raise UnknownNameError("kind", kind, kinds())
    if limit is not None and limit < 1:
        raise PoiseError(f"limit must be at least 1, got {limit}")
    fmt = format_registry.get(format) if format is not None else None
    if columns:
        if fmt is None:
            fmt = format_registry.get("generic")
        elif fmt.name != "generic":
            raise PoiseError(
                "a column mapping (--column; Python: suite_columns= of poise.audit, columns= of "
                f"load_suite) applies to the generic format only, not {fmt.name!r}"
            )
    options = _Options(fmt, dict(columns or {}), kind, category, limit)

    if spec in builtin_suites():
        return _load_builtin(spec, options)
    path = Path(spec).expanduser()
    if _exists(path, spec):
        return _load_file(path, spec, options)
    if names_a_data_file(path):
        raise PoiseError(f"{spec}: no such file")
    if _HUB_ID.match(spec):
        return _load_hub(spec, options)
    if "/" in spec or "\\" in spec or spec.startswith((".", "~")):
        raise PoiseError(f"{spec}: no such file")
    raise UnknownNameError("suite", spec, builtin_suites())


def names_a_data_file(path: Path) -> bool:
    """Whether ``path``'s name is that of a data file poise reads or names (``mini.jsonl``,
    ``train.csv.gz``, ``x.parquet``, ``x.xlsx``): such a spec is a file, never a hub id or a
    suite name, whether or not it exists."""
    return (
        path.name.lower()
        .removesuffix(".gz")
        .endswith((*DATA_EXTENSIONS, *COLUMNAR_FORMATS, *OTHER_FORMATS))
    )


def _exists(path: Path, spec: str) -> bool:
    """Whether ``path`` exists; a name the file system refuses (too long) is no such file, in
    one line (``Path.exists`` raised OSError: File name too long)."""
    try:
        return path.exists()
    except OSError as exc:
        raise PoiseError(f"{spec}: no such file ({exc.strerror or exc})") from None


@dataclass(frozen=True)
class _Options:
    format: Format | None
    columns: dict[str, str]
    kind: str | None
    category: str | None
    limit: int | None

    def context(
        self,
        suite: str,
        source: str,
        hint: str,
        path_parts: tuple[str, ...] = (),
        *,
        plain_text: bool = False,
    ) -> FormatContext:
        """How a source's rows are read: its suite name, where it is said to come from, the
        format's hint and the path it lies under, with the caller's kind, category and
        columns."""
        return FormatContext(
            suite=suite,
            source=source,
            hint=hint,
            kind=self.kind,
            category=self.category,
            columns=self.columns,
            path_parts=path_parts,
            plain_text=plain_text,
        )


# ---- sources ---------------------------------------------------------------------------


def _load_builtin(name: str, options: _Options) -> Suite:
    path = builtin_path(name)
    if not path.exists():
        raise PoiseError(
            f"built-in suite {name!r} has no data file yet ({path}); "
            "write it with `python -m poise.organism.world --write-suites`"
        )
    # a built-in suite is poise's own format: the options for the user's files (format, column
    # mapping) given with it in one audit do not apply to it
    fmt = format_registry.get("poise")
    return _load_file(
        path, str(path), _Options(fmt, {}, options.kind, options.category, options.limit), name=name
    )


def _load_file(path: Path, source: str, options: _Options, *, name: str | None = None) -> Suite:
    if path.is_dir():
        if any((path / marker).is_file() for marker in _SAVED_DATASET):
            return _load_saved(path, source, options)
        files = _folder_data_files(path)
        if files:
            return _load_folder(path, source, options, files)
        raise PoiseError(
            f"{source}: is a folder with no data file; give a data file "
            f"({', '.join((*DATA_EXTENSIONS, *COLUMNAR_FORMATS))}), a folder of them (a clone of "
            "a hub dataset's repository) or a folder written by datasets' save_to_disk"
        )
    if not path.is_file():  # reading a FIFO would wait for a writer forever
        raise PoiseError(
            f"{source}: not a regular file (a FIFO, socket or device); give a data file"
        )
    if path.suffix.lower() in COLUMNAR_FORMATS:
        return _load_columnar(path, source, options, name=name)
    other = OTHER_FORMATS.get(path.suffix.lower())
    if other is not None:
        raise PoiseError(
            f"{source}: {other} files are not read as suites; convert it to JSONL or CSV "
            f"(suites are read from {', '.join(DATA_EXTENSIONS)} files, optionally .gz, and "
            f"{', '.join(COLUMNAR_FORMATS)} files)"
        )
    if _lfs_pointer(path):  # read as text, its lines were prompts or a column's name
        raise PoiseError(_LFS_MESSAGE.format(where=source))
    text = _read_text(path, source)
    container = _container(path, text)
    header, rows = _parse(container, text, source)
    if container in ("jsonl", "json"):
        header, rows = _all_keys(header, rows, options.limit)
    context = _file_context(path, source, options, name, plain_text=container == "txt")
    return _build(header, rows, context, options)


def _file_context(
    path: Path, source: str, options: _Options, name: str | None, *, plain_text: bool = False
) -> FormatContext:
    """How the rows of the data file at ``path`` are read: its suite name (``name``, else
    :func:`suite_name`), its file name as the format's hint, the caller's options."""
    return options.context(
        name or suite_name(path),
        source,
        path.name.lower(),
        tuple(path.resolve().parent.parts),
        plain_text=plain_text,
    )


def _load_hub(spec: str, options: _Options) -> Suite:
    repo, *rest = spec.split(":")
    config, split = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0] if rest else None)
    try:
        import datasets
    except ImportError:
        raise MissingExtraError(
            "datasets", "datasets", f"loading the hub dataset {repo!r}"
        ) from None
    offline = _hub_offline(repo)
    saved = datasets.config.HF_HUB_OFFLINE
    try:
        if offline:  # the hub cannot be reached but the dataset is cached: no retries
            datasets.config.HF_HUB_OFFLINE = True
        loaded = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # any failure of the hub is one line for the user
        raise PoiseError(
            f"{spec}: not a built-in suite or local file, and loading it as a hub dataset "
            f"failed ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    finally:
        datasets.config.HF_HUB_OFFLINE = saved
    if isinstance(loaded, Mapping):  # a DatasetDict: every split of the dataset
        split, loaded = _only_split(
            loaded,
            lambda splits: (
                f"{spec}: the hub dataset has splits {', '.join(splits)}; pick one "
                f"as {repo}:SPLIT (or {repo}:CONFIG:SPLIT)"
            ),
        )
    where = spec if split is None or ":" in spec else f"{spec}:{split}"
    header, rows = _dataset_rows(loaded, where)
    # the config is part of the name: two configs of one dataset (languages, subsets) under
    # one split are two suites, whose item ids must not collide
    name = "-".join([repo.split("/", 1)[1], *rest])
    context = options.context(name, spec, f"{repo}:{config or ''}:{split or ''}".lower())
    return _build(header, rows, context, options)


def _only_split(
    dataset_dict: Mapping[str, Any], several: Callable[[list[str]], str]
) -> tuple[str, Any]:
    """The one split of a ``datasets.DatasetDict`` and its dataset; a PoiseError with
    ``several(splits)`` when it has more than one (or none)."""
    splits = sorted(dataset_dict)
    if len(splits) != 1:
        raise PoiseError(several(splits))
    return splits[0], dataset_dict[splits[0]]


def _dataset_rows(dataset: Any, where: str) -> tuple[list[str], Iterator[Row]]:
    """The header and the rows (numbered from 1, located as ``WHERE row N``) of a
    ``datasets.Dataset``, read lazily, the null fields of their structs left out
    (:func:`_unset_fields`); a row datasets cannot convert to Python (a timestamp past the year
    9999 raised OverflowError) is one error naming it."""

    def rows() -> Iterator[Row]:
        iterator = iter(dataset)
        for number in itertools.count(1):
            try:
                row = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # a value with no Python form: one line
                raise PoiseError(
                    f"{where} row {number}: cannot be read ({type(exc).__name__}: "
                    f"{_first_line(exc)})"
                ) from None
            yield number, f"{where} row {number}", _unset_fields(dict(row))

    return list(dataset.column_names), rows()


# The files datasets' save_to_disk writes: a Dataset's folder holds state.json (and
# dataset_info.json), a DatasetDict's dataset_dict.json and a folder per split.
_SAVED_DATASET = ("state.json", "dataset_dict.json")


def _load_saved(path: Path, source: str, options: _Options) -> Suite:
    """A dataset saved with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with
    ``datasets.load_from_disk``, no network); a DatasetDict of several splits asks for one
    split's folder."""
    try:
        import datasets
    except ImportError:
        raise MissingExtraError(
            "datasets", "datasets", f"loading the saved dataset {source!r}"
        ) from None
    pointer = next((f for f in sorted(path.glob("**/*.arrow")) if _lfs_pointer(f)), None)
    if pointer is not None:  # a saved dataset committed to a repository: "ArrowInvalid: ..."
        raise PoiseError(_LFS_MESSAGE.format(where=Path(source) / pointer.relative_to(path)))
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # a broken or foreign folder: one line
        raise PoiseError(
            f"{source}: cannot read the saved dataset ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    split = None
    if isinstance(loaded, Mapping):  # a DatasetDict: a folder per split
        split, loaded = _only_split(
            loaded,
            lambda splits: (
                f"{source}: the saved dataset has splits {', '.join(splits)}; give "
                f"one split's folder ({path / splits[0]})"
            ),
        )
    header, rows = _dataset_rows(loaded, source)
    folder = path / split if split is not None else path
    context = options.context(
        suite_name(folder.resolve()),
        source,
        f"{path.resolve().name}:{split or ''}".lower(),
        tuple(folder.resolve().parts),
    )
    return _build(header, rows, context, options)


def _load_columnar(path: Path, source: str, options: _Options, *, name: str | None) -> Suite:
    """A Parquet or Arrow file (as the hub stores a dataset's split, ``train-00000-of-00001.
    parquet``; an Arrow file in the IPC stream format datasets writes, or the file format),
    read with pyarrow a record batch at a time, up to ``limit`` rows when one is given (a Parquet
    file was read whole, and every row converted, for ``limit=1``); its columns are the header,
    its rows numbered from 1."""
    what = COLUMNAR_FORMATS[path.suffix.lower()]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtraError(
            "datasets", "datasets", f"reading the {what} file {source!r}"
        ) from None
    if _lfs_pointer(path):
        raise PoiseError(_LFS_MESSAGE.format(where=source))
    # with a limit, a batch of that many rows is all _build takes (every row is an item or an
    # error); the rest of the file is not read, as the rest of a JSON lines file is not parsed
    size = min(options.limit or _BATCH_ROWS, _BATCH_ROWS)
    batches: Iterable[Any]
    try:
        handle = pa.OSFile(str(path))
    except (OSError, pa.ArrowException) as exc:
        raise PoiseError(f"{source}: cannot read the {what} file ({_first_line(exc)})") from None
    with handle:  # closed once the items are built
        try:
            if what == "Parquet":
                parquet = pq.ParquetFile(handle)
                header = list(parquet.schema_arrow.names)
                batches = parquet.iter_batches(batch_size=size)
            else:
                try:
                    stream = pa.ipc.open_stream(handle)
                    header, batches = list(stream.schema.names), stream
                except pa.ArrowInvalid:
                    file = pa.ipc.open_file(handle)
                    header = list(file.schema.names)
                    batches = (file.get_batch(i) for i in range(file.num_record_batches))
        except (OSError, pa.ArrowException) as exc:  # not Parquet / Arrow, or cut short
            raise PoiseError(
                f"{source}: cannot read the {what} file ({_first_line(exc)})"
            ) from None
        repeated = [column for column, n in Counter(header).items() if n > 1]
        if repeated:  # a row as a dict kept the last one's value, as a CSV header is refused
            raise PoiseError(f"{source}: the file repeats the column {repeated[0]!r}")
        rows = _columnar_rows(batches, source, what)
        return _build(header, rows, _file_context(path, source, options, name), options)


# Rows converted to Python at a time from a Parquet or Arrow file (pyarrow's own default batch).
_BATCH_ROWS = 65_536


def _columnar_rows(batches: Iterable[Any], source: str, what: str) -> Iterator[Row]:
    """The rows of pyarrow record ``batches``, numbered from 1, located as ``SOURCE row N``, the
    null fields of their structs left out (:func:`_unset_fields`). A batch that cannot be read
    (a broken page further down) is one line naming the file; a value with no Python form (a
    timestamp past the year 9999: OverflowError) one naming its row and column."""
    import pyarrow as pa

    iterator = iter(batches)
    number = 0
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as exc:
            past = f" past row {number}" if number else ""
            raise PoiseError(
                f"{source}: cannot read the {what} file{past} ({_first_line(exc)})"
            ) from None
        try:
            values = batch.to_pylist()
        except Exception:  # located below, value by value
            raise PoiseError(_unconvertible(batch, source, number)) from None
        for row in values:
            number += 1
            yield number, f"{source} row {number}", _unset_fields(row)


def _unconvertible(batch: Any, source: str, before: int) -> str:
    """The error for the first value of a record ``batch`` (after ``before`` rows of its file)
    that pyarrow cannot convert to Python: its row, column and pyarrow's reason."""
    for i in range(batch.num_rows):
        for column, name in zip(batch.columns, batch.schema.names, strict=True):
            try:
                column[i].as_py()
            except Exception as exc:  # what pyarrow says is the message
                return (
                    f"{source} row {before + i + 1}: field {name!r}: its value cannot be read "
                    f"({type(exc).__name__}: {_first_line(exc)})"
                )
    return f"{source}: cannot convert the rows after row {before} to Python"


# A clone of a hub repository made without git-lfs holds, in place of each large file, a small
# text file pointing at it (https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md): it was
# read as a broken Parquet file ("Parquet magic bytes not found in footer"), a CSV file whose
# column is "version https://git-lfs...", a .gz file that is "not a gzip file", or a .txt file
# of three prompts.
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_LFS_MESSAGE = (
    "{where}: is a Git LFS pointer, not the data (the repository was cloned without git-lfs); "
    "fetch the data with `git lfs install && git lfs pull` in the clone"
)


def _lfs_pointer(path: Path) -> bool:
    """Whether the file at ``path`` is a Git LFS pointer in place of the data."""
    try:
        with path.open("rb") as file:
            return file.read(len(_LFS_POINTER)) == _LFS_POINTER
    except OSError:
        return False  # reading it again says why


def _unset_fields(value: Any) -> Any:
    """A row of a columnar file with the null fields of its structs left out, at any depth
    (the top-level cells stay: a null cell is an empty one). A struct column holds every
    field any row gives, so a message ``{"role", "content"}`` of a chat whose other messages
    carry a ``name`` read as ``{"role", "content", "name": None}``, as its JSON row never
    was."""
    if isinstance(value, dict):
        return {k: _unset_nested(v) for k, v in value.items()}
    return value


def _unset_nested(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unset_nested(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_unset_nested(v) for v in value]
    return value


def _data_file(name: str) -> bool:
    """Whether a file name is one of a data file datasets reads from a folder: any of its
    suffixes names the format (``train.jsonl.gz``, as HH-RLHF's files, is JSON lines), as
    datasets infers it; hidden files are not."""
    suffixes = {*DATA_EXTENSIONS, *COLUMNAR_FORMATS}
    return not name.startswith(".") and any(
        f".{part.lower()}" in suffixes for part in name.split(".")[1:]
    )


def _folder_data_files(folder: Path) -> list[Path]:
    """The data files datasets reads in ``folder`` and the folders in it (as a hub repository's
    ``data/``): CSV, JSON lines, JSON, text, Parquet or Arrow; hidden folders (``.git``) and
    folders written by save_to_disk (each a dataset of its own) are not looked in, and a folder
    of something else is not searched past 10,000 files."""
    found: list[Path] = []
    seen = 0
    for root, dirs, files in os.walk(folder):
        if root != str(folder) and set(files).intersection(_SAVED_DATASET):
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files) if _data_file(f))
        seen += len(files)
        if seen > 10_000:
            break
    return found


def _load_folder(path: Path, source: str, options: _Options, files: Sequence[Path]) -> Suite:
    """A folder of data files as a hub dataset's repository holds them (a clone of it: its
    splits named by the files, ``data/train-00000-of-00002.parquet``, ``test.csv``), read
    with ``datasets.load_dataset(FOLDER)``, which reads a local folder with the hub's own
    rules and needs no network; a folder of several splits asks for one split's file, one whose
    README.md declares several configs names them. A model's folder and a clone made without
    git-lfs (pointer files in place of the data) are refused as such before datasets reads
    them; so are a split whose files are of several formats and a CSV file separated by
    semicolons or tabs (:func:`_check_split_files`). Nested null fields of the rows are left
    out (see :func:`_unset_fields`)."""
    try:
        import datasets
    except ImportError:
        raise MissingExtraError(
            "datasets", "datasets", f"loading the folder {source!r} as a dataset"
        ) from None
    _check_folder(path, source, files)
    import tempfile

    from datasets.utils import logging as datasets_logging

    bars = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()  # a bar per split of a few rows: noise
    # datasets converts the files to Arrow in a cache: a temporary one, gone once the items
    # are built, so reading a folder leaves nothing behind
    with tempfile.TemporaryDirectory(prefix="poise-dataset-") as cache:
        try:
            builder = datasets.load_dataset_builder(str(path), cache_dir=cache)
            _check_split_files(path, source, builder)
            loaded = datasets.load_dataset(str(path), cache_dir=cache)
        except PoiseError:
            raise
        except Exception as exc:  # files of several formats, unreadable rows: one line
            raise PoiseError(_folder_error(path, source, exc)) from None
        finally:
            if bars:
                datasets_logging.enable_progress_bar()
        split, loaded = _only_split(
            loaded,
            lambda splits: (
                f"{source}: the folder's data files make the splits {', '.join(splits)}; give "
                "one split's data file"
            ),
        )
        header, rows = _dataset_rows(loaded, f"{source}:{split}")
        context = options.context(
            f"{path.resolve().name}-{split}",
            source,
            f"{path.resolve().name}:{split}".lower(),
            tuple(path.resolve().parts),
        )
        return _build(header, rows, context, options)


# A model's folder (from_pretrained / save_pretrained): config.json beside the weights or the
# tokenizer. Its JSON files were read as a dataset's rows ("DatasetGenerationError: An error
# occurred while generating the dataset").
_MODEL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _check_folder(path: Path, source: str, files: Sequence[Path]) -> None:
    """Refuse, in one line, a folder that is not a dataset's files: a model's folder, or a
    clone whose data ``files`` are Git LFS pointers."""
    found = [name for name in ("config.json", *_MODEL_FILES) if (path / name).is_file()]
    if "adapter_config.json" in found or ("config.json" in found and len(found) > 1):
        raise PoiseError(
            f"{source}: is a model's folder ({', '.join(found[:3])}), "
            "not a dataset; a suite is a data file, a folder of data files or a folder "
            "written by datasets' save_to_disk"
        )
    pointer = next((file for file in files if _lfs_pointer(file)), None)
    if pointer is not None:
        raise PoiseError(_LFS_MESSAGE.format(where=Path(source) / pointer.relative_to(path)))


_PLURAL = {";": "semicolons", "\t": "tabs"}  # the delimiters _csv_delimiter finds besides ","

# The data files datasets reads as rows of one table (Parquet, Arrow, CSV, JSON lines): a file of
# these left out of a split is rows lost; a .json or .txt one may be a note (LICENSE.txt,
# dataset_infos.json) and is only named in a warning.
_ROW_FORMATS = (".parquet", ".arrow", ".csv", ".tsv", ".jsonl", ".ndjson")


def _check_split_files(path: Path, source: str, builder: Any) -> None:
    """Refuse, in one line, a folder whose data files datasets would not read as the user
    expects: a split that holds files of several formats (datasets reads its most common
    format only, Parquet first on a tie, and left the other files' rows out without a word),
    and a CSV file whose fields are separated by semicolons or tabs (datasets reads it with
    commas: one column ``'goal;target'``); the file itself is read with its delimiter."""
    data_files = builder.config.data_files or {}
    used = {str(split): [Path(f) for f in files] for split, files in data_files.items()}
    for split, files in sorted(_left_out(path, used).items()):
        rows = [f for f in files if _has_suffix(f.name, _ROW_FORMATS)]
        names = ", ".join(str(Path(source) / f.relative_to(path.resolve())) for f in files)
        if rows:
            kept = used[split]
            raise PoiseError(
                f"{source}: the split {split!r} holds data files of several formats, and "
                f"datasets reads only its most common one ({_suffixes(kept)}), leaving out "
                f"{names}; give one data file, or a folder of one format"
            )
        log.warning("%s: datasets leaves out %s (not of the split's format)", source, names)
    for file in (f for files in used.values() for f in files if _has_suffix(f.name, (".csv",))):
        head = _head(file)
        delimiter = _csv_delimiter(head, str(file))
        if delimiter != ",":
            raise PoiseError(
                f"{Path(source) / file.relative_to(path.resolve())}: its fields are separated by "
                f"{_PLURAL[delimiter]}, which datasets reads with commas in a folder (one column "
                f"{head.splitlines()[0].strip()!r}); give the file itself, which is read with its "
                "delimiter"
            )


def _left_out(path: Path, used: Mapping[str, Sequence[Path]]) -> dict[str, list[Path]]:
    """Data files of each split of the folder at ``path`` that datasets leaves out of ``used``
    (the split's files it reads): those of another format than the split's. The splits are
    resolved with datasets' own patterns for a folder; a README.md that declares configs names
    each one's files itself, and is not second-guessed."""
    readme = path / "README.md"
    try:
        from datasets.data_files import DataFilesDict, get_data_patterns

        if readme.is_file():
            from huggingface_hub import DatasetCard

            if DatasetCard.load(readme).data.to_dict().get("configs"):
                return {}
        base = path.resolve().as_posix()
        resolved = DataFilesDict.from_patterns(get_data_patterns(base), base_path=base)
    except Exception:  # no such check where datasets reads the folder otherwise
        return {}
    left: dict[str, list[Path]] = {}
    for split, files in resolved.items():
        kept = {f.resolve() for f in used.get(str(split), ())}
        out = [Path(f) for f in files if _data_file(Path(f).name) and Path(f).resolve() not in kept]
        if out and kept:
            left[str(split)] = out
    return left


def _has_suffix(name: str, suffixes: Sequence[str]) -> bool:
    """Whether any suffix of a file name is one of ``suffixes`` (``train.csv.gz``: ``.csv``)."""
    return any(f".{part.lower()}" in suffixes for part in name.split(".")[1:])


def _suffixes(files: Sequence[Path]) -> str:
    """The data suffixes of ``files``, as ``.parquet`` or ``.jsonl``."""
    known = (*DATA_EXTENSIONS, *COLUMNAR_FORMATS)
    found = {f".{p.lower()}" for f in files for p in f.name.split(".")[1:]}
    return ", ".join(sorted(found.intersection(known))) or "its files"


def _head(file: Path) -> str:
    """The first 64 KiB of a (gzipped) text file, as text; empty when it cannot be read."""
    try:
        opener: Any = gzip.open if file.name.lower().endswith(".gz") else open
        with opener(file, "rb") as handle:
            return str(handle.read(65_536).decode("utf-8", errors="replace"))
    except (OSError, EOFError, zlib.error):
        return ""


def _folder_error(path: Path, source: str, exc: Exception) -> str:
    """One line for a failure of ``datasets.load_dataset(FOLDER)``: the configs to pick from
    when its README.md declares several, else the error and the one it arose from (datasets'
    DatasetGenerationError says only "An error occurred while generating the dataset")."""
    if isinstance(exc, ValueError) and str(exc).startswith("Config name is missing"):
        import datasets

        try:
            names = ", ".join(datasets.get_dataset_config_names(str(path)))
        except Exception:  # the error says no more: the README.md lists them
            names = "(see its README.md)"
        return (
            f"{source}: the folder's README.md declares the configs {names}; give the data "
            "file of one config's split (the README.md's configs: name each one's files)"
        )
    text = f"{type(exc).__name__}: {_first_line(exc)}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and type(exc).__name__ == "DatasetGenerationError":
        lines = str(cause).strip().splitlines()
        # a CastError ("Couldn't cast" / a schema / "because column names don't match")
        detail = lines[0] + (f" ... {lines[-1]}" if len(lines) > 1 else "") if lines else ""
        text = f"{type(cause).__name__}: {detail}"
    return (
        f"{source}: cannot read the folder as a dataset ({text}); give one of its data files "
        "(read on its own, an error names the line)"
    )


def _first_line(exc: BaseException) -> str:
    """The first line of an error's message (a library's may run over many)."""
    return (str(exc).strip().splitlines() or [""])[0]


def _hub_offline(repo: str) -> bool:
    """True when the hub cannot be reached but ``repo`` is in a local cache; a PoiseError at once
    when it can be reached from neither (instead of the hub client's retries)."""
    import datasets
    from huggingface_hub import constants

    from poise.hub import hub_reachable

    if hub_reachable() is not False:
        return False
    owner, name = repo.split("/", 1)
    cached = (
        Path(constants.HF_HUB_CACHE) / f"datasets--{owner}--{name}",
        Path(datasets.config.HF_DATASETS_CACHE) / f"{owner}___{name}".lower(),
        Path(datasets.config.HF_DATASETS_CACHE) / f"{owner}___{name}",
    )
    if any(_is_dir(p) for p in cached):
        log.info("%s: the hub cannot be reached; using the local cache", repo)
        return True
    raise PoiseError(
        f"{repo}: not a built-in suite or local file, not in the local dataset cache, and "
        f"{constants.ENDPOINT} cannot be reached (no network?); download the data where there is "
        "network and pass the file"
    )


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long for the file system: not a cached dataset
        return False


def suite_name(path: Path) -> str:
    """A file's suite name: its stem without data extensions, or its folder's for split files.

    ``harmful_behaviors.csv`` -> ``harmful_behaviors``; ``harmless-base/train.jsonl.gz`` ->
    ``harmless-base-train``; a hub repository's shard ``advbench/data/train-00000-of-00001.
    parquet`` -> ``advbench-train``; the shard save_to_disk writes, ``advbench/data-00000-of-
    00001.arrow``, is named by its folder as the folder itself is (``advbench``).
    """
    stem = path.name
    for ext in (".gz", *DATA_EXTENSIONS, *COLUMNAR_FORMATS):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    shard = _SHARD.search(stem)
    stem = stem[: shard.start()] if shard else stem
    if shard and stem == "data" and path.resolve().parent.name:  # a save_to_disk shard
        return suite_name(path.resolve().parent)
    folder = path.resolve().parent
    if folder.name == "data" and folder.parent.name:  # a hub repository's data folder
        folder = folder.parent
    if stem.lower() in _SPLIT_STEMS and folder.name:
        return f"{folder.name}-{stem}"
    return stem


# ---- bytes -> text -> rows -------------------------------------------------------------


def _read_text(path: Path, source: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PoiseError(f"{source}: cannot read ({exc.strerror or exc})") from None
    unpacked = " (after gunzip)" if path.name.lower().endswith(".gz") else ""
    if unpacked:
        if raw[:2] != b"\x1f\x8b":
            raise PoiseError(
                f"{source}: not a gzip file (named .gz but starts with {raw[:4]!r}); "
                "rename it without .gz or compress it with gzip"
            )
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise PoiseError(f"{source}: broken gzip data ({exc})") from None
    if not raw.strip():
        raise PoiseError(f"{source}: the file is empty{unpacked}")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PoiseError(f"{source}:1: the file is UTF-16 text (byte-order mark); save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PoiseError(
            f"{source}:{line}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset "
            f"{exc.start}{unpacked} ({exc.reason}); save the file as UTF-8"
        ) from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is fine
    if not text.strip():
        raise PoiseError(f"{source}: the file is empty{unpacked}")
    return text


def _container(path: Path, text: str) -> str:
    """csv, tsv, jsonl or json: from the extension, else from the first character."""
    name = path.name.lower().removesuffix(".gz")
    for ext, container in (
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".json", "json"),
        (".txt", "txt"),
    ):
        if name.endswith(ext):
            return container
    first = text.lstrip()[:1]
    return {"{": "jsonl", "[": "json"}.get(first, "csv")


Row = tuple[int, str, dict[str, Any]]  # (row number, "where", data)

# Python's JSON parser recurses once per nesting level and gives up with a RecursionError.
_TOO_DEEP = "nested too deeply for a suite row"


def _parse(container: str, text: str, source: str) -> tuple[list[str], Iterator[Row]]:
    if container == "tsv":
        return _parse_csv(text, source, "\t")
    if container == "csv":
        return _parse_csv(text, source, _csv_delimiter(text, source))
    if container == "txt":
        return _parse_txt(text, source)
    if container == "json":
        stripped = text.lstrip()
        if stripped.startswith("["):
            return _parse_json_array(text, source)
        if stripped.startswith("{"):
            held = _parse_json_object(text, source)
            if held is not None:
                return held
    return _parse_jsonl(text, source)


# What a spreadsheet writes between fields where a comma is the decimal mark (semicolons), or
# a tab-separated export saved under .csv; named in the "too many fields" error.
_DELIMITER_NAMES = {",": "a comma", ";": "a semicolon", "\t": "a tab"}


def _csv_delimiter(text: str, source: str) -> str:
    """The field delimiter of a .csv file: a comma, unless its header read with commas is one
    column that holds semicolons or tabs (a spreadsheet saved in a locale whose decimal mark is
    the comma writes ``prompt;kind``; a tab-separated export may be named .csv), then that
    character. Read with commas, such a file was one column named ``'prompt;kind'`` ("missing
    required column 'prompt'"), or a row whose text holds a comma had "2 fields but the header
    has 1 columns"."""
    try:
        header = next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error:
        return ","  # the comma reader names the broken header
    if len(header) != 1:
        return ","
    counts = {delimiter: header[0].count(delimiter) for delimiter in (";", "\t")}
    delimiter = max(counts, key=lambda d: counts[d])
    if counts[delimiter]:
        log.info("%s: fields separated by %s", source, _DELIMITER_NAMES[delimiter])
        return delimiter
    return ","


def _parse_txt(text: str, source: str) -> tuple[list[str], Iterator[Row]]:
    """One prompt per line; blank lines are skipped (a ``prompt`` column of the generic
    format, so the kind comes from ``kind=``). Lines end where a text file's lines end (LF,
    CRLF, CR), as a JSON lines file's do: not at U+2028, a form feed or U+0085 inside a prompt,
    where ``str.splitlines`` cut one prompt in two."""
    lines = [(n, line.strip()) for n, line in enumerate(json_lines(text), start=1)]
    prompts = [(n, line) for n, line in lines if line]
    rows = ((i + 1, f"{source}:{n}", {"prompt": line}) for i, (n, line) in enumerate(prompts))
    return ["prompt"], rows


def _parse_json_object(text: str, source: str) -> tuple[list[str], Iterator[Row]] | None:
    """One JSON object that holds the rows as a list of objects under one key (JailbreakBench
    artifacts: ``{"parameters": {...}, "jailbreaks": [{...}, ...]}``). None when the text is
    JSON lines or a single row (no list of objects inside): the caller reads it as JSON lines."""
    try:
        data, starts = _decode_json(text)
    except DuplicateKeyError as exc:  # a well-formed text: its key given twice is the error
        raise located(source, json_error_line(exc), invalid_json(exc)) from None
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data" and _opens_a_document(text):
            # one object written over several lines, broken inside: the JSON-lines reader
            # would read its first line alone ("line 1: ... where the text ends")
            raise located(source, json_error_line(exc), invalid_json(exc)) from None
        return None  # JSON lines (several objects), or broken JSON the JSON-lines reader locates
    except RecursionError:
        raise PoiseError(f"{source}: invalid JSON ({_TOO_DEEP})") from None
    if not isinstance(data, dict):
        return None
    lists = [
        key
        for key, value in data.items()
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
    ]
    if len(lists) > 1:
        raise PoiseError(
            f"{source}: one JSON object with several lists of objects "
            f"({', '.join(repr(k) for k in lists)}); keep the list of rows alone in a JSON "
            "array or a JSONL file"
        )
    if not lists:
        # one list of rows with a stray non-object, or an empty one: said as such
        mixed = [k for k, v in data.items() if isinstance(v, list) and v and _holds_objects(v)]
        if len(mixed) == 1:
            key = mixed[0]
            i, bad = next((i, v) for i, v in enumerate(data[key]) if not isinstance(v, dict))
            where = _row_where(source, starts.get(key), i)
            raise PoiseError(f"{where}: {key}[{i}]: expected an object, got {_json_type(bad)}")
        empty = [k for k, v in data.items() if v == []]
        if (
            len(empty) == 1
            and not any(isinstance(v, list) and v for v in data.values())
            and not any(isinstance(v, str) for v in data.values())  # a row: its text fields
        ):
            raise PoiseError(f"{source}: the file is empty (the list under {empty[0]!r} is empty)")
        if any(isinstance(v, (list, dict)) for v in data.values()):
            raise PoiseError(
                f"{source}: one JSON object with no list of objects inside (keys: "
                f"{', '.join(repr(k) for k in data)}); expected rows as a JSON array, JSON lines, "
                "or an object holding them under one key"
            )
        return None  # a flat single row
    key = lists[0]
    rows_data: list[dict[str, Any]] = data[key]
    log.info("%s: reading the %d rows under %r", source, len(rows_data), key)
    lines = starts.get(key)
    rows = (
        (i + 1, f"{_row_where(source, lines, i)}: {key}[{i}]", obj)
        for i, obj in enumerate(rows_data)
    )
    header: list[str] = []
    for obj in rows_data:  # the union of the keys, first seen first
        header.extend(k for k in obj if k not in header)
    return header, rows


def _opens_a_document(text: str) -> bool:
    """Whether the first line of ``text`` leaves a JSON value open (ends with ``{``, ``[``,
    ``,`` or ``:``), as a pretty-printed JSON document's first line does; a JSON line holds a
    whole row."""
    first = text.lstrip().split("\n", 1)[0].rstrip()
    return first.endswith(("{", "[", ",", ":"))


def _holds_objects(values: list[Any]) -> bool:
    return any(isinstance(v, dict) for v in values)


def _parse_jsonl(text: str, source: str) -> tuple[list[str], Iterator[Row]]:
    def rows() -> Iterator[Row]:
        number = 0
        for line_no, line in enumerate(json_lines(text), start=1):
            if not line.strip():
                continue
            try:
                data = parse_json(line)
            except json.JSONDecodeError as exc:
                raise located(source, line_no, invalid_json(exc)) from None
            except RecursionError:
                raise PoiseError(f"{source}:{line_no}: invalid JSON ({_TOO_DEEP})") from None
            if not isinstance(data, dict):
                raise PoiseError(
                    f"{source}:{line_no}: expected one JSON object per line, got {_json_type(data)}"
                )
            number += 1
            yield number, f"{source}:{line_no}", data

    iterator = rows()
    first = next(iterator)  # the file is not blank, so there is a first row or an error
    return list(first[2]), _chain(first, iterator)


def _parse_json_array(text: str, source: str) -> tuple[list[str], Iterator[Row]]:
    try:
        data, starts = _decode_json(text)
    except json.JSONDecodeError as exc:
        raise located(source, json_error_line(exc), invalid_json(exc)) from None
    except RecursionError:
        raise PoiseError(f"{source}: invalid JSON ({_TOO_DEEP})") from None
    if not isinstance(data, list):
        raise PoiseError(f"{source}: expected a JSON array of objects, got {_json_type(data)}")
    if not data:
        raise PoiseError(f"{source}: the file is empty (an empty JSON array)")
    lines = starts.get(None)
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise PoiseError(
                f"{_row_where(source, lines, i)}: item {i + 1} of the array: expected an "
                f"object, got {_json_type(obj)}"
            )
    rows = (
        (i + 1, f"{_row_where(source, lines, i)}: item {i + 1}", obj) for i, obj in enumerate(data)
    )
    return list(data[0]), rows


def _row_where(source: str, lines: list[int] | None, i: int) -> str:
    """``source:LINE`` of the i-th row (0-based) of a JSON array, ``source`` when unknown."""
    return f"{source}:{lines[i]}" if lines is not None and i < len(lines) else source


# A .json file is read in one pass that also notes where each row of its array (or of an array
# under a key of its top-level object) starts, so that errors name a row's line as they do in
# CSV and JSONL files: the top level is walked here, each element decoded once by json's own
# scanner. Rows are read as parse_json reads them (a key given twice is refused); text the walk
# cannot read is parsed again by parse_json, whose error says what and where.
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_ROW_DECODER = json.JSONDecoder(object_pairs_hook=unique_keys)

# Where rows start: under None for a top-level array, under KEY for the array that is the value
# of KEY in a top-level object; a line (1-based) per element.
RowStarts = dict[str | None, list[int]]


def _space(text: str, pos: int) -> int:
    """The position of the first character at or after ``pos`` that is not JSON whitespace."""
    match = _JSON_SPACE.match(text, pos)
    return match.end() if match else pos


def _decode_json(text: str) -> tuple[Any, RowStarts]:
    """``parse_json(text)`` and the line each row of its arrays starts on (:data:`RowStarts`),
    in one pass over the text. Invalid JSON raises parse_json's :class:`json.JSONDecodeError`
    (:class:`DuplicateKeyError` for a key given twice), from a second parse made only then."""
    try:
        return _walk_json(text)
    except (ValueError, IndexError):  # invalid JSON (a key given twice), or text cut short
        pass
    return parse_json(text), {}  # raises: the walk reads every text json reads


def _walk_json(text: str) -> tuple[Any, RowStarts]:
    starts: RowStarts = {}
    pos = _space(text, 0)
    value: Any
    if text[pos] == "[":
        value, pos = _walk_array(text, pos, starts, None)
    elif text[pos] == "{":
        value = {}
        pos = _space(text, pos + 1)
        while text[pos] != "}":
            key, pos = _ROW_DECODER.raw_decode(text, pos)
            pos = _space(text, pos)
            if not isinstance(key, str) or key in value or text[pos] != ":":
                raise ValueError("not a JSON object member")  # json's error says which
            pos = _space(text, pos + 1)
            if text[pos] == "[":
                value[key], pos = _walk_array(text, pos, starts, key)
            else:
                value[key], pos = _ROW_DECODER.raw_decode(text, pos)
            pos = _after_item(text, pos, "}")
        pos += 1
    else:
        value, pos = _ROW_DECODER.raw_decode(text, pos)
    if _space(text, pos) != len(text):
        raise ValueError("extra data after the JSON value")
    return value, starts


def _walk_array(text: str, pos: int, starts: RowStarts, key: str | None) -> tuple[list[Any], int]:
    """The JSON array opening at ``text[pos]`` and the position after it; the line each of its
    elements starts on goes to ``starts[key]``."""
    values: list[Any] = []
    lines: list[int] = []
    line, counted = 1 + text.count("\n", 0, pos), pos
    pos = _space(text, pos + 1)
    while text[pos] != "]":
        line += text.count("\n", counted, pos)
        counted = pos
        lines.append(line)
        value, pos = _ROW_DECODER.raw_decode(text, pos)
        values.append(value)
        pos = _after_item(text, pos, "]")
    starts[key] = lines
    return values, pos + 1


def _after_item(text: str, pos: int, close: str) -> int:
    """Past the comma after a member or element of a JSON object or array (``close``: its
    closing bracket), at the next one or at ``close``; a ValueError for a missing comma or a
    trailing one (json's own error is raised when the text is parsed again)."""
    pos = _space(text, pos)
    if text[pos] == ",":
        pos = _space(text, pos + 1)
        if text[pos] == close:
            raise ValueError("a trailing comma")
    elif text[pos] != close:
        raise ValueError("no comma between items")
    return pos


# The csv module refuses a field over 128 KiB ("field larger than field limit (131072)"); a long
# prompt (a many-shot jailbreak) is data, as it is in a JSONL file. The limit is process-wide: it
# is only ever raised (2**31 - 1: a C long everywhere).
_CSV_FIELD_LIMIT = 2**31 - 1


def _parse_csv(text: str, source: str, delimiter: str) -> tuple[list[str], Iterator[Row]]:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise PoiseError(f"{source}:{reader.line_num}: bad CSV ({exc})") from None
    lines = io.StringIO(text, newline="").readlines()
    last = len(lines)
    if reader.line_num > 1 or reader.line_num == last:  # a stray quote in the header
        _check_quotes(lines[: reader.line_num], 1, len(header), len(header), source, delimiter)
    header = [name.strip() for name in header]
    repeated = [name for name, n in Counter(header).items() if n > 1 and name]
    if repeated:
        raise PoiseError(f"{source}:1: the header repeats the column {repeated[0]!r}")

    def rows() -> Iterator[Row]:
        number = 0
        end = reader.line_num
        while True:
            start = end + 1
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise PoiseError(f"{source}:{reader.line_num}: bad CSV ({exc})") from None
            end = reader.line_num
            if end == last or any("\n" in v or "\r" in v for v in values):
                # a quoted field over lines, or the last row: did a stray quote swallow rows?
                raw = lines[start - 1 : end]
                _check_quotes(raw, start, len(values), len(header), source, delimiter)
            if not any(v.strip() for v in values):
                continue  # blank line
            extra = [v for v in values[len(header) :] if v.strip()]
            if extra:
                raise PoiseError(
                    f"{source}:{start}: {len(values)} fields but the header has {len(header)} "
                    f"columns ({_DELIMITER_NAMES.get(delimiter, repr(delimiter))} inside an "
                    "unquoted field?)"
                )
            number += 1
            data = {name: value for name, value in zip(header, values, strict=False) if name}
            yield number, f"{source}:{start}", data

    iterator = rows()
    try:
        first = next(iterator)
    except StopIteration:
        raise PoiseError(f"{source}: the file is empty (a header and no rows)") from None
    return header, _chain(first, iterator)


def _check_quotes(
    lines: Sequence[str], start: int, fields: int, columns: int, source: str, delimiter: str
) -> None:
    """Refuse a CSV row (its raw ``lines``, the first at line ``start``) with a stray quote that
    swallowed the rows after it: a quoted field that never closes (it runs to the end of the
    file), a quoted field over several lines whose closing quote is followed by more text
    (``"...\n...x"y``; spaces before the delimiter are fine, as the csv module reads them), or
    one in a row shorter than the header whose lines (but the last) hold a whole row's worth of
    delimiters: rows the quote swallowed. A multi-line prompt quoted as CSV writers quote it
    passes, in a short row or one with a trailing delimiter too, as single-line rows do. The
    error names the line of the opening quote."""
    scan = _scan_quotes("".join(lines), delimiter)
    if scan is None:
        return
    opened, problem = scan
    line = start + opened - 1
    end = start + len(lines) - 1
    if problem == "open":
        why = "is never closed: it runs to the end of the file"
    elif problem == "text":
        why = f"runs to line {end} and text follows its closing quote"
    elif fields < columns and any(
        raw.count(delimiter) >= columns - 1 for raw in lines[opened - 1 : -1]
    ):
        # a short row whose quoted field holds lines that read as whole rows of the file
        why = (
            f"runs to line {end}, holding lines that read as rows, to a row of {fields} "
            f"field(s) where the header has {columns}"
        )
    else:
        return  # a quoted field over several lines, closed: a multi-line value
    raise PoiseError(
        f"{source}:{line}: the quoted field that opens here {why} (a stray '\"'?); close the "
        'quote, or double a quote that belongs inside a quoted field ("")'
    )


def _scan_quotes(text: str, delimiter: str) -> tuple[int, str] | None:
    """Quoted fields of ``text`` (one CSV record from its first line), read as Python's csv
    reader reads them: (line within ``text``, problem) of the first quoted field that never
    closes ("open"), or that spans lines and has text after its closing quote ("text"); else
    of the first quoted field that spans lines (""); None when no quoted field spans lines."""
    line = 1
    field_start = True  # at the start of a field, where a quote opens a quoted field
    opened = 0  # line of the open quoted field; 0 when outside one
    closing = False  # the previous character was a quote inside a quoted field
    multiline = 0  # line of the first quoted field that spans lines
    trailing = 0  # line of a multi-line quoted field just closed, spaces after it so far
    previous = ""
    for char in text:
        newline = char == "\r" or (char == "\n" and previous != "\r")
        if opened and closing:
            closing = False
            if char == '"':  # a doubled quote: a quote inside the field
                previous = char
                continue
            if line > opened:
                multiline = multiline or opened
                trailing = opened
            opened = 0
        if trailing:
            if char in " \t" and char != delimiter:  # spaces after the closing quote
                previous = char
                continue
            if char != delimiter and char not in "\r\n":
                return trailing, "text"
            trailing = 0
        if opened:
            closing = char == '"'
        elif char == delimiter or char in "\r\n":
            field_start = True
        elif char == '"' and field_start:
            opened, field_start = line, False
        else:
            field_start = False
        if newline:
            line += 1
        previous = char
    if opened and not closing:
        return opened, "open"
    if opened and line > opened:  # closed by the last character of the file
        multiline = multiline or opened
    return (multiline, "") if multiline else None


def _all_keys(
    header: Sequence[str], rows: Iterator[Row], limit: int | None
) -> tuple[list[str], Iterator[Row]]:
    """The header of JSON rows: the keys of every row that will be converted (all, or the first
    ``limit``), first seen first. A JSON row need not carry every key: with the first row's keys
    alone, a key that only later rows hold (``kind``, ``id``, ``category``) was ignored without a
    word (the row's own kind replaced by ``--kind``)."""
    taken = list(itertools.islice(rows, limit))
    keys = list(header)
    for _, _, data in taken:
        keys.extend(k for k in data if k not in keys)
    return keys, itertools.chain(taken, rows)


def _chain(first: Row, rest: Iterator[Row]) -> Iterator[Row]:
    yield first
    yield from rest


def _json_type(value: object) -> str:
    names: dict[type, str] = {
        dict: "an object",
        list: "an array",
        str: "a string",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


# ---- rows -> items ---------------------------------------------------------------------


def _build(
    header: Sequence[str], rows: Iterable[Row], context: FormatContext, options: _Options
) -> Suite:
    fmt = (
        options.format
        or detect_format(header, source=context.source)
        or format_registry.get("generic")
    )
    if options.format is None:
        log.debug("%s: detected format %r", context.source, fmt.name)
    context = fmt.prepare(header, context)
    items: list[SuiteItem] = []
    first_seen: dict[str, str] = {}
    for number, where, data in rows:
        record = Record(data, number, where)
        item = _finish(fmt.convert(record, context), record, context)
        if item.id in first_seen:
            raise record.error("id", f"duplicate id {item.id!r} (first at {first_seen[item.id]})")
        first_seen[item.id] = where
        items.append(item)
        if options.limit is not None and len(items) >= options.limit:
            break
    if not items:
        raise PoiseError(f"{context.source}: the file is empty (no rows)")
    log.info("loaded %d items of suite %r from %s", len(items), context.suite, context.source)
    return Suite(context.suite, items, context.source, fmt.name)


def _finish(draft: Draft, record: Record, context: FormatContext) -> SuiteItem:
    if draft.messages is not None:
        messages = draft.messages
    elif draft.prompt is not None and draft.prompt.strip():
        messages = [{"role": "user", "content": draft.prompt}]
    else:
        raise record.error(draft.prompt_field, "is empty; every row needs a prompt")
    kind = draft.kind or context.kind
    if kind is None:
        column = (context.columns or {}).get("kind", "kind")
        if column in record.data:  # the file has a kind column, and this row's cell is empty
            raise record.error(
                column, f"the row's kind is empty; fill it, or {kind_hint(columns=False)}"
            )
        raise record.error("kind", f"the row has no kind; {kind_hint(columns=False)}")
    try:
        return SuiteItem(
            id=draft.id or f"{context.suite}-{record.number}",
            messages=messages,
            kind=kind,  # validated by pydantic just below
            category=draft.category or context.category or "uncategorized",
            reference=draft.reference,
            suite=draft.suite or context.suite,
            meta=draft.meta,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = error["loc"][0] if error["loc"] else "(row)"
        name = draft.prompt_field if loc == "messages" else str(loc)
        message = str(error["msg"]).removeprefix("Value error, ")
        inner = error["loc"][1:]
        if loc == "messages" and inner and isinstance(inner[0], int):  # which message, which key
            at = f"message {inner[0]}" + "".join(f" {part!r}" for part in inner[1:2])
            message = f"{at}: {message}"
        raise record.error(name, message) from None


__all__ = [
    "BUILTIN_DIR",
    "DATA_EXTENSIONS",
    "Suite",
    "builtin_path",
    "builtin_suites",
    "load_suite",
    "suite_name",
]
