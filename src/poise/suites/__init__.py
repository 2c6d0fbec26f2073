"""Suites: the prompt sets an audit runs on.

    from poise.suites import load_suite

    load_suite("harmful")                                   # a built-in suite
    load_suite("data/harmful_behaviors.csv")                # AdvBench, detected from its header
    load_suite("xstest_prompts.csv")                        # XSTest: safe -> borderline, unsafe -> harmful
    load_suite("mine.jsonl", columns={"prompt": "question"}, kind="benign")   # any file
    load_suite("walledai/AdvBench", kind="harmful")         # a hub dataset (needs `datasets`)

``limit=N`` keeps the first N rows of the file: in a file sorted by type or category (the
built-in suites, the public sets grouped by type) that is its first types only, not a sample of
it. ``poise audit --limit`` spreads its N items over each suite (``poise.auditing.spread_subset``).

Public formats (``poise.suites.formats``): AdvBench, HarmBench, XSTest, StrongREJECT,
JailbreakBench, Do-Not-Answer, SORRY-Bench, Anthropic HH-RLHF, poise's own item JSONL and generic
CSV / JSONL with a column mapping. Add one with :func:`register_format`.
"""

from __future__ import annotations

from poise.config import DEFAULT_SUITES
from poise.suites.formats import (
    COLUMN_ROLES,
    Draft,
    Format,
    FormatContext,
    Record,
    detect_format,
    format_registry,
    parse_hh_transcript,
    register_format,
)
from poise.suites.loaders import Suite, builtin_path, builtin_suites, load_suite
from poise.suites.schema import KINDS, Kind, SuiteItem

__all__ = [
    "COLUMN_ROLES",
    "DEFAULT_SUITES",
    "KINDS",
    "Draft",
    "Format",
    "FormatContext",
    "Kind",
    "Record",
    "Suite",
    "SuiteItem",
    "builtin_path",
    "builtin_suites",
    "detect_format",
    "format_registry",
    "load_suite",
    "parse_hh_transcript",
    "register_format",
]
