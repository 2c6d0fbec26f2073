"""Row formats: how one row of a public prompt set becomes a suite item.

A *format* is a plain function ``(record, context) -> Draft`` registered with
:func:`register_format` under a name and the columns that identify it. The loader
(:mod:`poise.suites.loaders`) reads rows from a CSV / JSONL / JSON file or a hub dataset,
picks the format whose identifying columns the header holds (the most specific match wins)
or the one the caller forced, and turns each draft into a validated
:class:`~poise.suites.schema.SuiteItem`.

Every public format here was learnt from the data set's own release; the column names and
the kind each one maps to are documented on its function.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from poise.errors import PoiseError, UnknownNameError
from poise.plugins import load_plugins
from poise.registry import Registry
from poise.tasks import kinds

__all__ = [
    "COLUMN_ROLES",
    "Draft",
    "Format",
    "FormatContext",
    "Record",
    "detect_format",
    "format_registry",
    "parse_hh_transcript",
    "register_format",
]


# ---- what a format sees and returns --------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One data row, with where it came from (for error messages)."""

    data: Mapping[str, Any]
    number: int  # 1-based data row (the header is not a row); ids fall back to it
    where: str  # "path:line" for files, "owner/name row N" for hub datasets

    def error(self, field: str | None, message: str) -> PoiseError:
        """An error that names this row and, when given, the field."""
        what = f"field {field!r}: {message}" if field else message
        return PoiseError(f"{self.where}: {what}")

    def text(self, field: str) -> str:
        """The field as stripped text; ``""`` when absent or null."""
        value = self.data.get(field)
        if value is None:
            return ""
        if isinstance(value, (dict, list, tuple)):
            raise self.error(field, f"expected text, got {type(value).__name__}")
        return str(value).strip()

    def id_text(self, field: str) -> str:
        """The field as an id, which is text as in a CSV file: a string stripped; ``""`` when
        absent or null (an empty cell: the row's id is then its number). A JSON number is the
        integer it holds, as text: ``3`` -> ``"3"``, the same id as ``"3"`` (a duplicate of it);
        ``3.0`` and ``1e3`` -> ``"3"`` and ``"1000"`` (a table exported with a missing value
        writes its integer ids as floats). A number with a fraction (``1.5``), beyond 2**53
        (where floats skip integers) or not finite, a bool, a list or an object is an error
        naming the row and field."""
        value = self.data.get(field)
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer() and abs(value) <= 2**53):
                raise self.error(field, f"expected text or an integer as the id, got {value!r}")
            return str(int(value))
        if isinstance(value, bool):
            got = "true" if value else "false"
        elif isinstance(value, dict):
            got = "an object"
        elif isinstance(value, (list, tuple)):
            got = "a list"
        else:
            return self.text(field)  # text, an integer, or nothing
        raise self.error(field, f"expected text or an integer as the id, got {got}")

    def require(self, field: str, what: str = "a prompt") -> str:
        """The field as non-empty text, or an error naming the row and field (a number or a
        boolean from a JSON row is not text: ``{"prompt": 5}`` is a mistake, not the prompt
        "5")."""
        raw = self.data.get(field)
        if raw is not None and not isinstance(raw, str):
            if isinstance(raw, (dict, list, tuple)):
                got = type(raw).__name__
            else:
                got = f"{type(raw).__name__} {raw!r}"
            raise self.error(field, f"expected text, got {got}")
        value = self.text(field)
        if not value:
            reason = "is missing" if field not in self.data else "is empty"
            raise self.error(field, f"{reason}; every row needs {what} here")
        return value


@dataclass(frozen=True)
class FormatContext:
    """What a format knows beyond the row: the suite, the source, the caller's defaults."""

    suite: str  # suite name; fallback ids are "<suite>-<row>"
    source: str  # file path or hub id, as the user wrote it
    hint: str = ""  # lower-cased file name, or hub id:config:split; for naming conventions
    kind: str | None = None  # caller's kind= for rows that carry none
    category: str | None = None  # caller's category= for rows that carry none
    columns: Mapping[str, str] = field(default_factory=dict)  # role -> column (generic format)
    path_parts: tuple[str, ...] = ()  # folder names of a local file, innermost last
    plain_text: bool = False  # a .txt file: one prompt per line, no columns to map


@dataclass
class Draft:
    """A suite item before validation. ``prompt`` becomes one user turn unless ``messages``."""

    prompt: str | None = None
    messages: list[Any] | None = None
    kind: str | None = None
    category: str | None = None
    id: str | None = None
    reference: str | None = None
    suite: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    prompt_field: str = "prompt"  # the column the prompt came from, for validation errors


ConvertFn = Callable[[Record, FormatContext], Draft]
CheckFn = Callable[[Sequence[str], FormatContext], FormatContext]


@dataclass(frozen=True)
class Format:
    """A registered row format."""

    name: str
    convert: ConvertFn
    required: tuple[str, ...] = ()  # columns that identify the format and must be present
    check: CheckFn | None = None  # header-level validation; may resolve context.columns
    help: str = ""
    detect: bool = True  # whether the header alone may select it

    def missing(self, columns: Collection[str]) -> list[str]:
        return [c for c in self.required if c not in columns]

    def prepare(self, columns: Sequence[str], context: FormatContext) -> FormatContext:
        """Check the header; raise one line naming the source and the missing column."""
        missing = self.missing(columns)
        if missing:
            raise PoiseError(
                f"{context.source}: missing required column {missing[0]!r} for format "
                f"{self.name!r} (columns found: {_listing(columns)})"
            )
        return self.check(columns, context) if self.check is not None else context


format_registry: Registry[Format] = Registry("suite format", loader=load_plugins)


def register_format(
    name: str,
    *,
    required: Sequence[str] = (),
    check: CheckFn | None = None,
    help: str = "",
    detect: bool = True,
) -> Callable[[ConvertFn], ConvertFn]:
    """Register ``fn(record, context) -> Draft`` as the format ``name``.

    ``required`` columns identify the format during auto-detection (the registered format
    whose required columns are all present and most numerous wins) and are checked when the
    format is forced. ``check`` validates the header once before any row is read.
    """

    def add(fn: ConvertFn) -> ConvertFn:
        # the docstring's first paragraph, whole: its first line alone cut sentences mid-way
        paragraph = (fn.__doc__ or "").strip().split("\n\n")[0]
        summary = help or " ".join(line.strip() for line in paragraph.splitlines())
        fmt = Format(name, fn, tuple(required), check, summary, detect and bool(required))
        format_registry.add(name, fmt, help=summary)
        return fn

    return add


def detect_format(columns: Collection[str], *, source: str = "") -> Format | None:
    """The most specific registered format whose required columns are all in ``columns``.

    Two or more formats that match with as many identifying columns each (a file holding the
    columns of two data sets, ``category, source, forbidden_prompt`` and ``risk_area,
    types_of_harm, question``; a ``messages`` column beside HH-RLHF's ``chosen``) are a
    :class:`PoiseError` asking for ``format=``, naming ``source`` when given: the header does
    not say which data set the rows follow (the first name in sorted order won without a word).
    """
    matches = [
        fmt
        for fmt in (format_registry.get(name) for name in format_registry)
        if fmt.detect and not fmt.missing(columns)
    ]
    if not matches:
        return None
    most = max(len(fmt.required) for fmt in matches)
    best = [fmt for fmt in matches if len(fmt.required) == most]
    if len(best) > 1:
        each = "; ".join(f"{fmt.name!r} by {_listing(fmt.required)}" for fmt in best)
        where = f"{source}: " if source else ""
        raise PoiseError(
            f"{where}the columns match several formats equally ({each}); pick one with "
            "--format NAME (Python: suite_format='NAME' of poise.audit, format='NAME' of "
            "load_suite)"
        )
    return best[0]


def _listing(columns: Collection[str]) -> str:
    shown = [repr(c) for c in columns]
    return ", ".join(shown) if shown else "(none)"


def _row_id(record: Record, context: FormatContext, value: str) -> str | None:
    """A file's own id, prefixed by the suite when it is a bare number.

    Bare numbers ("1", "2") repeat across data sets; an audit needs ids unique across all of
    its suites, so they become "<suite>-<n>". Named ids (HarmBench's BehaviorID) stay as they are.
    """
    if not value:
        return None
    return f"{context.suite}-{value}" if value.isdigit() else value


def _optional(record: Record, column: str | None) -> str | None:
    """The column's text, or None when the column is unmapped or the cell is empty."""
    return (record.text(column) or None) if column else None


def _parse_kind(record: Record, field: str, value: str) -> str:
    if value not in kinds():
        raise record.error(field, str(UnknownNameError("kind", value, kinds())))
    return value


def _meta(record: Record, *fields: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"row": record.number}
    for name in fields:
        value = record.text(name)
        if value:
            meta[name.lower()] = value
    return meta


# ---- poise's own item files (the built-in suites) ----------------------------------------

_POISE_FIELDS = ("id", "messages", "kind", "category", "reference", "suite", "meta")


@register_format("poise", required=("messages",))
def poise_items(record: Record, context: FormatContext) -> Draft:
    """poise's own JSONL: one SuiteItem object per line (the built-in suites use it)."""
    unknown = sorted(set(record.data) - set(_POISE_FIELDS))
    if unknown:
        raise record.error(
            unknown[0], f"not a field of a poise suite item (fields: {', '.join(_POISE_FIELDS)})"
        )
    messages = record.data.get("messages")
    if messages is None:
        raise record.error("messages", "missing; every row of a poise suite needs its messages")
    if not isinstance(messages, list):
        raise record.error(
            "messages", f"expected a list of messages, got {type(messages).__name__}"
        )
    meta = record.data.get("meta") or {}
    if not isinstance(meta, dict):
        raise record.error("meta", f"expected an object, got {type(meta).__name__}")
    kind = record.text("kind")
    return Draft(
        messages=messages,
        prompt_field="messages",
        kind=_parse_kind(record, "kind", kind) if kind else context.kind,
        id=record.id_text("id") or None,
        category=record.text("category") or None,
        reference=record.text("reference") or None,
        suite=record.text("suite") or None,
        meta=dict(meta),
    )


# ---- AdvBench ---------------------------------------------------------------------------


@register_format("advbench", required=("goal", "target"))
def advbench(record: Record, context: FormatContext) -> Draft:
    """AdvBench harmful_behaviors.csv (arXiv 2307.15043): goal, target -> harmful."""
    return Draft(
        prompt=record.require("goal"),
        prompt_field="goal",
        kind=context.kind or "harmful",
        meta=_meta(record, "target"),
    )


# ---- HarmBench --------------------------------------------------------------------------


@register_format(
    "harmbench",
    required=("Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"),
)
def harmbench(record: Record, context: FormatContext) -> Draft:
    """HarmBench behaviour CSVs (arXiv 2402.04249): Behavior + ContextString -> harmful.

    Contextual behaviours are sent the way HarmBench's direct-request baseline sends them:
    the context, a line with three dashes between blank lines, then the behaviour. Copyright
    behaviours are sent as they are (HarmBench judges them by hashing the answer against the
    work; poise judges them like any other). Multimodal behaviours
    (``harmbench_behaviors_multimodal_all.csv``: ``FunctionalCategory`` ``multimodal``, an
    ``ImageFileName``) ask about an image a text chat cannot carry, so such a row is an error.
    """
    functional = record.text("FunctionalCategory")
    image = record.text("ImageFileName")
    if functional.lower() == "multimodal" or image:
        # "Describe how to use the device in this image" without the image is another request
        field = "ImageFileName" if image else "FunctionalCategory"
        raise record.error(
            field,
            "a multimodal behaviour asks about an image, which a suite item (a text chat) "
            "cannot carry; read HarmBench's text behaviours (harmbench_behaviors_text_*.csv)",
        )
    behavior = record.require("Behavior")
    context_string = record.text("ContextString")
    prompt = f"{context_string}\n\n---\n\n{behavior}" if context_string else behavior
    meta = _meta(record, "FunctionalCategory", "Tags")
    if context_string:
        # apart, for HarmBench's contextual classifier prompt (poise.scoring.presets)
        meta["behavior"] = behavior
        meta["context"] = context_string
    return Draft(
        prompt=prompt,
        prompt_field="Behavior",
        kind=context.kind or "harmful",
        category=record.text("SemanticCategory") or None,
        id=_row_id(record, context, record.id_text("BehaviorID")),
        meta=meta,
    )


# ---- XSTest -----------------------------------------------------------------------------

_XSTEST_LABELS = {"safe": "borderline", "unsafe": "harmful"}


@register_format("xstest", required=("prompt", "type", "focus"))
def xstest(record: Record, context: FormatContext) -> Draft:
    """XSTest prompts (arXiv 2308.01263): safe -> borderline, unsafe (contrast_*) -> harmful.

    ``label`` (safe / unsafe) decides when present; older releases without it mark unsafe
    prompts by a ``type`` that starts with ``contrast_``, which the XSTest readme documents.
    ``category`` is the ``type``. The id is ``id`` (or ``id_v2`` in the v2 release).
    """
    prompt = record.require("prompt")
    prompt_type = record.text("type")
    label = record.text("label").lower()
    if label:
        if label not in _XSTEST_LABELS:
            raise record.error("label", f"expected 'safe' or 'unsafe', got {label!r}")
        kind = _XSTEST_LABELS[label]
    else:
        kind = "harmful" if prompt_type.startswith("contrast_") else "borderline"
    own_id = record.id_text("id") or record.id_text("id_v2")
    return Draft(
        prompt=prompt,
        kind=kind,
        category=prompt_type or None,
        id=_row_id(record, context, own_id),
        meta=_meta(record, "type", "label", "focus", "note"),
    )


# ---- StrongREJECT -----------------------------------------------------------------------


@register_format("strongreject", required=("category", "source", "forbidden_prompt"))
def strongreject(record: Record, context: FormatContext) -> Draft:
    """StrongREJECT CSV (arXiv 2402.10260): category, source, forbidden_prompt -> harmful."""
    return Draft(
        prompt=record.require("forbidden_prompt"),
        prompt_field="forbidden_prompt",
        kind=context.kind or "harmful",
        category=record.text("category") or None,
        meta=_meta(record, "source"),
    )


# ---- JailbreakBench ---------------------------------------------------------------------


@register_format("jailbreakbench", required=("Goal", "Target", "Behavior", "Category"))
def jailbreakbench(record: Record, context: FormatContext) -> Draft:
    """JailbreakBench JBB-Behaviors (arXiv 2404.01318): Goal -> harmful, or borderline for the
    benign file.

    The harmful and benign behaviour files share their columns; the benign one is told apart
    by its name (``benign-behaviors.csv``, or the hub split ``benign``). Its behaviours are
    matched in topic to the harmful ones (same ``Behavior`` and ``Category``) and JailbreakBench
    uses them to measure whether a model or defence refuses too much: safe requests that look
    sensitive, which is poise's ``borderline`` kind (refusing them is over-refusal). ``kind=``
    overrides.
    """
    benign = "benign" in context.hint
    return Draft(
        prompt=record.require("Goal"),
        prompt_field="Goal",
        kind=context.kind or ("borderline" if benign else "harmful"),
        category=record.text("Category") or None,
        id=_row_id(record, context, record.id_text("Index")),
        meta=_meta(record, "Behavior", "Source", "Target"),
    )


# ---- Do-Not-Answer ----------------------------------------------------------------------


@register_format("donotanswer", required=("risk_area", "types_of_harm", "question"))
def do_not_answer(record: Record, context: FormatContext) -> Draft:
    """Do-Not-Answer (arXiv 2308.13387): question -> harmful; category = types_of_harm."""
    return Draft(
        prompt=record.require("question"),
        prompt_field="question",
        kind=context.kind or "harmful",
        category=record.text("types_of_harm") or record.text("risk_area") or None,
        id=_row_id(record, context, record.id_text("id")),
        meta=_meta(record, "risk_area", "types_of_harm", "specific_harms"),
    )


# ---- SORRY-Bench ------------------------------------------------------------------------


@register_format("sorrybench", required=("question_id", "category", "turns", "prompt_style"))
def sorry_bench(record: Record, context: FormatContext) -> Draft:
    """SORRY-Bench (arXiv 2406.14598): the one turn of ``turns`` -> harmful; category = category.

    Rows are MT-Bench-style questions (``question.jsonl``, ``question_<style>.jsonl`` or the hub
    dataset): ``turns`` is a list holding the one unsafe instruction, ``category`` the number of
    its category in SORRY-Bench's taxonomy, ``prompt_style`` the linguistic mutation (``base``
    for the unmutated instruction). The hub dataset holds every style, each reusing the
    ``question_id`` of its base instruction, so the id of a mutated row carries its style. A
    cipher style (``ascii``, ``atbash``, ``caesar``, ``morse``) asks for an encoded answer that
    SORRY-Bench decodes before judging; poise judges the answer as given.
    """
    turns = record.data.get("turns")
    if isinstance(turns, str):  # a re-export with the turn as plain text
        turns = [turns]
    if not isinstance(turns, list) or not turns:
        raise record.error("turns", "expected a list holding the instruction")
    if len(turns) > 1:
        # later turns are asked after the model's answer to the earlier ones, which a suite
        # item (one chat sent once) cannot hold
        raise record.error(
            "turns", f"{len(turns)} turns; SORRY-Bench items have one, and poise sends one chat"
        )
    prompt = turns[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise record.error("turns", "the instruction is not non-empty text")
    style = record.text("prompt_style")
    question = record.id_text("question_id")
    own_id = f"{question}-{style}" if question and style and style != "base" else question
    if own_id and question.isdigit():
        own_id = f"{context.suite}-{own_id}"  # bare numbers repeat across data sets
    meta = _meta(record, "prompt_style")
    return Draft(
        prompt=prompt.strip(),
        prompt_field="turns",
        kind=context.kind or "harmful",
        category=record.text("category") or None,
        id=own_id or None,
        meta=meta,
    )


# ---- Anthropic HH-RLHF ------------------------------------------------------------------

# A turn starts at the beginning of the text or after a blank line, as in HH-RLHF's
# "\n\nHuman: ...\n\nAssistant: ..." transcripts (arXiv 2204.05862).
_HH_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_SUBSETS = (
    "harmless-base",
    "helpful-base",
    "helpful-online",
    "helpful-rejection-sampled",
    "red-team-attempts",
)


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """Split an HH-RLHF transcript into chat messages.

    ``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> ``[{"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"}]``. Contents are stripped; a turn may be empty
    (HH-RLHF holds some empty final replies), so callers that need text check for it.
    Raises :class:`PoiseError` when the text holds no turn or starts with text outside one.
    """
    matches = list(_HH_TURN.finditer(text))
    if not matches:
        raise PoiseError("not an HH-RLHF transcript: no 'Human:' or 'Assistant:' turn")
    if text[: matches[0].start()].strip():
        raise PoiseError("not an HH-RLHF transcript: text before the first 'Human:' turn")
    messages: list[dict[str, str]] = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        content = text[match.end() : end].strip()
        messages.append({"role": _HH_ROLES[match.group(1)], "content": content})
    return messages


def _last_reply(turns: list[dict[str, str]]) -> str | None:
    return turns[-1]["content"] if turns and turns[-1]["role"] == "assistant" else None


def _hh_subset(context: FormatContext) -> str | None:
    """The HH-RLHF subset a source holds: the innermost folder named like one, else one named
    in the file name or hub id:config:split (``harmless-base-train.jsonl``)."""
    subset = next((p for p in reversed(context.path_parts) if p in _HH_SUBSETS), None)
    return subset or next((s for s in _HH_SUBSETS if s in context.hint), None)


def _hh_default_kind(context: FormatContext) -> str | None:
    """benign for the helpful subsets, harmful for harmless-base (its prompts are the red
    teamers' requests); None when the source does not say which, or names both (a file of
    mixed subsets, ``hh-helpful-harmless.jsonl``: its rows are not all of one kind)."""
    where = _hh_subset(context) or context.hint
    helpful = "helpful" in where
    harmless = "harmless" in where or "red-team" in where
    if helpful == harmless:
        return None
    return "benign" if helpful else "harmful"


def _hh_check(columns: Sequence[str], context: FormatContext) -> FormatContext:
    if context.kind is None and _hh_default_kind(context) is None and "prompt" not in columns:
        # a pairs file (prompt, chosen, rejected) is named as such by its first row
        raise PoiseError(
            f"{context.source}: HH-RLHF rows from a source that does not name their subset; "
            "the helpful subsets hold benign requests, harmless-base harmful ones, and the "
            "hub dataset's default rows mix them: read one subset's file (its folder, e.g. "
            f"harmless-base/test.jsonl.gz, names it) or {kind_hint(columns=False)}"
        )
    return context


@register_format("hh_rlhf", required=("chosen",), check=_hh_check)
def hh_rlhf(record: Record, context: FormatContext) -> Draft:
    """Anthropic HH-RLHF jsonl(.gz) (arXiv 2204.05862): the dialogue up to the last Human turn.

    The chat is ``chosen`` cut after its last Human turn (``chosen`` and ``rejected`` share
    that prefix); their final replies go to ``meta``. Kind: ``kind=`` when given, else benign
    for the helpful-* subsets and harmful for harmless-base, told by the file's folder
    (``harmless-base/train.jsonl.gz``) or a subset named in the file name or hub id; a source
    that names none (``Anthropic/hh-rlhf:train`` mixes the subsets, without a column saying
    which row is which) or both kinds of subset needs ``kind=``. The category is the subset
    when known.
    """
    chosen = record.data.get("chosen")
    # a preference-pairs file (poise train's prompt / chosen / rejected) read as prompts: say so
    pairs = (
        "; this looks like a preference-pairs file (prompt, chosen, rejected), not prompts: give "
        "its prompts file (poise train organism-data --prompts-output) or read the prompt "
        "column with --format generic --column prompt=prompt"
        if "prompt" in record.data
        else ""
    )
    if not isinstance(chosen, str) or not chosen.strip():
        raise record.error("chosen", "expected a non-empty HH-RLHF transcript" + pairs)
    try:
        turns = parse_hh_transcript(chosen)
    except PoiseError as exc:
        raise record.error("chosen", str(exc) + pairs) from None
    last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=None)
    if last_user is None:
        raise record.error("chosen", "the transcript has no 'Human:' turn")
    meta: dict[str, Any] = {"row": record.number}
    reply = _last_reply(turns)
    if reply:  # HH-RLHF holds some empty final replies; they say nothing
        meta["chosen"] = reply
    rejected = record.data.get("rejected")
    if isinstance(rejected, str) and rejected.strip():
        try:
            rejected_reply = _last_reply(parse_hh_transcript(rejected))
        except PoiseError as exc:
            raise record.error("rejected", str(exc)) from None
        if rejected_reply:
            meta["rejected"] = rejected_reply
    return Draft(
        messages=turns[: last_user + 1],
        prompt_field="chosen",
        kind=context.kind or _hh_default_kind(context),
        category=_hh_subset(context),
        meta=meta,
    )


# ---- generic files with a column mapping ------------------------------------------------

COLUMN_ROLES: tuple[str, ...] = ("prompt", "id", "kind", "category", "reference", "system")


def kind_hint(columns: bool = True) -> str:
    """How to give the kind of rows that carry none, in the CLI's and in Python's spelling;
    ``columns``: whether the source has columns, one of which may hold the kind."""
    listing = ", ".join(kinds())
    if not columns:
        return (
            f"give the kind of the whole file with --kind KIND (one of {listing}) "
            "(Python: suite_kind='KIND' of poise.audit, kind='KIND' of load_suite)"
        )
    return (
        f"give the kind of the whole file with --kind KIND (one of {listing}), or name the "
        "column that holds it with --column kind=COLUMN (Python: suite_kind='KIND' or "
        "suite_columns={'kind': 'COLUMN'} of poise.audit; kind= or columns= of load_suite)"
    )


def _generic_check(columns: Sequence[str], context: FormatContext) -> FormatContext:
    if context.plain_text:
        if context.columns:
            raise PoiseError(
                f"{context.source}: a .txt file has no columns (one prompt per line), so "
                "--column (Python: suite_columns= / columns=) does not apply to it"
            )
        if context.kind is None:
            raise PoiseError(
                f"{context.source}: a .txt file holds prompts only; {kind_hint(columns=False)}"
            )
        return replace(context, columns={"prompt": "prompt"})
    mapping = {role: role for role in COLUMN_ROLES if role in columns}
    for role, column in context.columns.items():
        if role not in COLUMN_ROLES:
            raise UnknownNameError("column role", role, COLUMN_ROLES)
        if column not in columns:
            raise PoiseError(
                f"{context.source}: missing required column {column!r} (mapped to {role}) "
                f"(columns found: {_listing(columns)})"
            )
        mapping[role] = column
    if "prompt" not in mapping:
        raise PoiseError(
            f"{context.source}: missing required column 'prompt' (columns found: "
            f"{_listing(columns)}); name the prompt column with --column prompt=COLUMN "
            "(Python: suite_columns={'prompt': 'COLUMN'} of poise.audit, columns= of load_suite)"
        )
    if "kind" not in mapping and context.kind is None:
        raise PoiseError(
            f"{context.source}: no 'kind' column (columns found: {_listing(columns)}); "
            f"{kind_hint()}"
        )
    return replace(context, columns=mapping)


format_registry.alias("hh-rlhf", "hh_rlhf")  # the name before registries were snake_case


# inspect_ai's ChatMessage fields that keep account of a message, not what the model is sent
_MESSAGE_BOOKKEEPING = frozenset({"id", "source", "metadata", "internal", "model"})


def _plain_message(record: Record, column: str, index: int, message: dict[str, Any]) -> Any:
    """A chat message as poise sends it: its role and its text. inspect_ai writes a message
    with bookkeeping fields (``id``, ``source``, ``metadata``, ...), its unset fields as null,
    and content as a string or a list of parts; the text parts are joined with newlines, as
    inspect_ai's ``ChatMessage.text`` joins them. A message that holds more than text (a tool
    call, an image) is refused, naming what it holds; an empty list of tool calls (inspect_ai
    writes ``"tool_calls": []`` for an assistant turn that made none) holds none. The role and
    the text are checked with the item, as a poise item's messages are."""
    plain = {
        k: v
        for k, v in message.items()
        if v is not None and k not in _MESSAGE_BOOKKEEPING and not (k == "tool_calls" and v == [])
    }
    content = plain.get("content")
    if isinstance(content, list):
        other = [p.get("type") if isinstance(p, dict) else type(p).__name__ for p in content]
        other = [t for t in other if t != "text"]
        if other:
            raise record.error(
                column,
                f"message {index} holds a content part of type {other[0]!r}: poise sends text only",
            )
        plain["content"] = "\n".join(str(part.get("text", "")) for part in content)
    extra = sorted(set(plain) - {"role", "content"})
    if extra:
        raise record.error(
            column,
            f"message {index} has {extra[0]!r}: poise sends a message's role and text only "
            "(a tool call or a tool's result cannot be sent)",
        )
    return plain


@register_format("generic", check=_generic_check, detect=False)
def generic(record: Record, context: FormatContext) -> Draft:
    """Any CSV / JSONL: columns prompt, id, kind, category, reference, system (renamable).

    The prompt cell is text (one user turn), or in a JSON row a list of ``{"role", "content"}``
    messages ending in a user turn (a chat, as inspect_ai's ``input`` may be one).
    """
    cols = context.columns
    prompt_column = cols["prompt"]
    chat = record.data.get(prompt_column)
    kind = context.kind
    kind_value = record.text(cols["kind"]) if "kind" in cols else ""
    if kind_value:
        kind = _parse_kind(record, cols["kind"], kind_value)
    system = record.text(cols["system"]) if "system" in cols else ""
    messages: list[Any] = [{"role": "system", "content": system}] if system else []
    if isinstance(chat, list) and chat and all(isinstance(m, dict) for m in chat):
        # a chat (inspect_ai's ``input`` may be a list of role / content messages): sent as
        # it is, checked as a poise item's messages are
        if system and chat[0].get("role") == "system":
            raise record.error(
                prompt_column,
                f"the chat opens with its own system message and the row has a system "
                f"column ({cols['system']!r}); keep one",
            )
        messages.extend(
            _plain_message(record, prompt_column, i, m) for i, m in enumerate(chat, len(messages))
        )
    else:
        messages.append({"role": "user", "content": record.require(prompt_column)})
    used = set(cols.values())
    meta: dict[str, Any] = {"row": record.number}
    for name, value in record.data.items():
        if name not in used and name and value not in (None, ""):
            meta[name] = value
    return Draft(
        messages=messages,
        prompt_field=prompt_column,
        kind=kind,
        category=_optional(record, cols.get("category")),
        id=_row_id(record, context, record.id_text(cols["id"]) if "id" in cols else ""),
        reference=_optional(record, cols.get("reference")),
        meta=meta,
    )
