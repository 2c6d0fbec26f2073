"""How far can a judge be trusted? Agreement with human labels, and rates corrected for it.

``read_labels(path)`` reads a file of model answers that people labelled, in one of these
formats (detected from the file, or named with ``format=``):

=================  ===========================================================================
format             what it is (columns / fields read)
=================  ===========================================================================
``xstest``         XSTest's model-completion CSVs (``model_completions/xstest_v2_completions_
                   MODEL.csv`` of github.com/paul-rottger/exaggerated-safety): ``id``, ``type``,
                   ``prompt``, ``completion``, ``final_label``. ``refused`` = final_label is
                   ``2_full_refusal`` or ``3_partial_refusal``; prompts whose ``type`` starts with
                   ``contrast_`` are the unsafe ones (kind harmful), the others are safe (benign).
                   The source model is the ``MODEL`` of the file name.
``jailbreakbench`` JailbreakBench's judge comparison (``data/judge-comparison.csv`` of the
                   JailbreakBench/JBB-Behaviors dataset): ``goal``, ``prompt``,
                   ``target_response``, ``human_majority`` (1 = jailbroken = harmful).
``harmbench``      HarmBench's classifier validation set (``data/classifier_val_sets/
                   text_behaviors_val_set.json`` of github.com/centerforaisafety/HarmBench): a
                   mapping behaviour id -> list of ``{"test_case", "generation", "experiment",
                   "human_0", "human_1", "human_2", ...}``; harmful = majority of the three
                   annotators; the source model is ``experiment``.
``donotanswer``    Do-Not-Answer's labelled responses (``data_en.csv`` of the LibrAI/do-not-answer
                   dataset, arXiv 2308.13387): one row per ``question`` with, for each model M,
                   ``M_response``, ``M_harmful`` (0/1) and ``M_action`` (0-5). ``refused`` =
                   action 0 ("cannot assist", the paper's refusal category); harmful = ``M_harmful``.
``generic``        JSONL (or CSV) with a column mapping (``columns={"response": "output", ...}``):
                   roles ``response`` (required), ``prompt``, ``id``, ``model``, ``refused``,
                   ``harmful``, ``kind``; each role defaults to the column of the same name.
                   ``kind`` is the request's: ``harmful``, ``borderline`` or ``benign`` on
                   every row when the file has the column (a row without one is an error);
                   a file without it (and none mapped) holds answers to harmful requests.
=================  ===========================================================================

The XSTest completions and the JailbreakBench judge comparison are this project's outside check:
poise reads their formats so that anyone can validate a judge on them; its own judges are never
developed or tuned on them, and no file of theirs is in the repository.

``validate(labels, judge)`` runs the judge on the labelled answers and measures, for each label
the file has (``refused``, ``harmful``), accuracy, Cohen's kappa, precision and recall (and
specificity) with 95% intervals, overall and per source model, and lists the disagreements.

``corrected_rate(k, n, agreement)`` is a rate the judge produced, corrected for the judge's
measured error: the Rogan-Gladen estimator (Rogan & Gladen 1978, "Estimating prevalence from the
results of a screening test", Am. J. Epidemiol. 107(1):71-76)

    p_true = (p_judge + specificity - 1) / (sensitivity + specificity - 1),  clipped to [0, 1],

with a 95% interval that carries the uncertainty of both the run's count and the validation's
sensitivity and specificity: the posterior of the true rate under a uniform prior, with the
validation's Jeffreys posteriors of sensitivity and specificity (Gelman & Carpenter 2020; the
problem and its Wald-type solution: Lang & Reiczigel 2014, "Confidence limits for prevalence of
disease adjusted for estimated sensitivity and specificity", Prev. Vet. Med. 113(1):13-22,
whose interval, like the estimator's Monte Carlo pushed through and clipped, collapses to
[0, 0] at a rate below the judge's false-positive rate).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poise.errors import PoiseError, invalid_json, json_error_line, located, parse_json
from poise.scoring.base import Judge, Verdict
from poise.scoring.stats import Rate, mcnemar_exact
from poise.tasks import UNPARSED

__all__ = [
    "FORMATS",
    "TARGETS",
    "Agreement",
    "CorrectedRate",
    "Disagreement",
    "LabelSet",
    "LabelledAnswer",
    "Validation",
    "cohen_kappa",
    "corrected_rate",
    "mcnemar_exact",
    "read_labels",
    "rogan_gladen",
    "validate",
]

#: The labels a file may carry and a judge's verdict answers.
TARGETS: tuple[str, ...] = ("refused", "harmful")
_NO_PROMPT = "(prompt not given)"


@dataclass(frozen=True)
class LabelledAnswer:
    """One model answer with its human labels (None where the file does not label it)."""

    id: str
    prompt: str
    response: str
    source: str  # the model that wrote the response
    kind: str  # the suite kind the judge is told: harmful (unsafe request) or benign
    refused: bool | None
    harmful: bool | None
    line: int | None = None  # where in the file (row or line number)


@dataclass(frozen=True)
class LabelSet:
    path: str
    format: str
    answers: tuple[LabelledAnswer, ...]

    def targets(self) -> list[str]:
        """The labels at least one answer carries, in :data:`TARGETS` order."""
        return [t for t in TARGETS if any(getattr(a, t) is not None for a in self.answers)]


# ---------------------------------------------------------------------------------------------
# readers


def _flag(value: Any, path: object, line: int | None, column: str) -> bool | None:
    """0/1, true/false, yes/no (any case); empty -> None; anything else is an error."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value in (0, 1):
            return bool(value)
        raise located(path, line, f"column {column!r}: expected 0 or 1, got {value!r}")
    text = str(value).strip().lower()
    if text == "":
        return None
    if text in ("1", "1.0", "true", "yes", "y"):
        return True
    if text in ("0", "0.0", "false", "no", "n"):
        return False
    raise located(
        path, line, f"column {column!r}: expected 0/1, true/false or yes/no, got {value!r}"
    )


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            # csv line numbers: the header is line 1; reader.line_num follows quoted newlines
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise PoiseError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise PoiseError(f"{path}: not a CSV file ({exc})") from None
    if not header:
        raise PoiseError(f"{path}: empty CSV file (no header)")
    if header[0].lstrip().startswith(("{", "[")):
        # JSON read as CSV: its first line became the "columns", printed whole in the error
        raise PoiseError(f"{path}: not a CSV file (it holds JSON); this format reads CSV")
    return header, rows


def _require(header: Sequence[str], needed: Iterable[str], path: Path, fmt: str) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise PoiseError(
            f"{path}: {fmt} format needs column {missing[0]!r} (columns: {_listed(header)})"
        )


def _listed(header: Sequence[str], limit: int = 12) -> str:
    """A header's columns for an error line: the first ``limit`` of them, each cut to 40
    characters (a file that is not what the format reads can have a header of any size)."""
    shown = [c if len(c) <= 40 else c[:39] + "…" for c in header[:limit]]
    more = f", … (+{len(header) - limit})" if len(header) > limit else ""
    return ", ".join(shown) + more


_XSTEST_REFUSED = {"2_full_refusal": True, "3_partial_refusal": True, "1_full_compliance": False}
_XSTEST_FILE = re.compile(r"completions_(.+?)(?:_[a-z]+eval)?$")


def _read_xstest(path: Path, columns: Mapping[str, str]) -> list[LabelledAnswer]:
    header, rows = _read_csv(path)
    # the type decides the kind: without it every prompt was taken for a safe one
    _require(header, ("prompt", "completion", "final_label", "type"), path, "xstest")
    m = _XSTEST_FILE.search(path.stem)
    file_model = m.group(1) if m else path.stem
    out = []
    for line, row in rows:
        label = (row.get("final_label") or "").strip()
        if label not in _XSTEST_REFUSED:
            raise located(
                path,
                line,
                f"final_label {label!r} is not one of {', '.join(sorted(_XSTEST_REFUSED))}",
            )
        prompt_type = (row.get("type") or "").strip()
        if not prompt_type:
            raise located(
                path, line, "type is empty (contrast_* types are harmful, the others benign)"
            )
        kind = "harmful" if prompt_type.startswith("contrast_") else "benign"
        out.append(
            LabelledAnswer(
                id=str(row.get("id") or line),
                prompt=row["prompt"] or _NO_PROMPT,
                response=row["completion"] or "",
                source=(row.get("model") or file_model).strip(),
                kind=kind,
                refused=_XSTEST_REFUSED[label],
                harmful=None,
                line=line,
            )
        )
    return out


def _read_jailbreakbench(path: Path, columns: Mapping[str, str]) -> list[LabelledAnswer]:
    header, rows = _read_csv(path)
    _require(header, ("target_response", "human_majority"), path, "jailbreakbench")
    out = []
    for line, row in rows:
        prompt = (row.get("goal") or row.get("prompt") or "").strip()
        out.append(
            LabelledAnswer(
                id=str(row.get("Index") or row.get("") or line),
                prompt=prompt or _NO_PROMPT,
                response=row["target_response"] or "",
                source=(row.get("model") or path.stem).strip(),
                kind="harmful",
                refused=None,
                harmful=_flag(row["human_majority"], path, line, "human_majority"),
                line=line,
            )
        )
    return out


def _read_harmbench(path: Path, columns: Mapping[str, str]) -> list[LabelledAnswer]:
    data = _load_json(path)
    if not isinstance(data, dict):
        raise PoiseError(f"{path}: harmbench format is a JSON object of behaviour id -> list")
    out = []
    for behaviour, entries in data.items():
        if not isinstance(entries, list):
            raise PoiseError(f"{path}: behaviour {behaviour!r}: expected a list of generations")
        for index, entry in enumerate(entries):
            where = f"{behaviour}[{index}]"
            if not isinstance(entry, dict) or "generation" not in entry:
                raise PoiseError(f"{path}: {where}: expected an object with 'generation'")
            votes = [
                _flag(entry.get(f"human_{i}"), path, None, f"{where}.human_{i}") for i in range(3)
            ]
            known = [v for v in votes if v is not None]
            harmful = None if not known else sum(known) * 2 > len(known)
            source = str(entry.get("experiment") or entry.get("model") or "unknown")
            out.append(
                LabelledAnswer(
                    id=f"{behaviour}/{index}",
                    prompt=str(entry.get("test_case") or behaviour) or _NO_PROMPT,
                    response=str(entry.get("generation") or ""),
                    source=source.removesuffix(".json"),
                    kind="harmful",
                    refused=None,
                    harmful=harmful,
                    line=None,
                )
            )
    return out


def _dna_models(header: Sequence[str]) -> list[str]:
    return [
        c.removesuffix("_response")
        for c in header
        if c.endswith("_response") and f"{c.removesuffix('_response')}_harmful" in header
    ]


def _read_donotanswer(path: Path, columns: Mapping[str, str]) -> list[LabelledAnswer]:
    header, rows = _read_csv(path)
    _require(header, ("question",), path, "donotanswer")
    models = _dna_models(header)
    if not models:
        raise PoiseError(
            f"{path}: donotanswer format needs MODEL_response and MODEL_harmful columns"
        )
    out = []
    for line, row in rows:
        for model in models:
            action = (row.get(f"{model}_action") or "").strip()
            if action and action not in {"0", "1", "2", "3", "4", "5"}:
                raise located(path, line, f"{model}_action: expected 0-5, got {action!r}")
            out.append(
                LabelledAnswer(
                    id=f"{row.get('id') or line}/{model}",
                    prompt=row["question"] or _NO_PROMPT,
                    response=row.get(f"{model}_response") or "",
                    source=model,
                    kind="harmful",
                    refused=(action == "0") if action else None,
                    harmful=_flag(row.get(f"{model}_harmful"), path, line, f"{model}_harmful"),
                    line=line,
                )
            )
    return out


_GENERIC_ROLES = ("response", "prompt", "id", "model", "refused", "harmful", "kind")
# The kinds of request a labelled answer may answer: the suite kinds a judge labels as refused
# or harmful.
_LABEL_KINDS = ("harmful", "borderline", "benign")


def _kind(value: Any, path: Path, line: int, column: str) -> str:
    """A generic row's kind, when the file has a kind column: every row names one of
    ``_LABEL_KINDS`` (a row that leaves it out, null or empty, is an error: it is not taken
    for harmful beside rows that say their kind)."""
    allowed = ", ".join(_LABEL_KINDS)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise located(path, line, f"column {column!r}: no kind; expected one of {allowed}")
    if not isinstance(value, str) or value.strip() not in _LABEL_KINDS:
        raise located(
            path, line, f"column {column!r}: unknown kind {value!r}; expected one of {allowed}"
        )
    return value.strip()


def _read_generic(
    path: Path, columns: Mapping[str, str], flag: str = "--column"
) -> list[LabelledAnswer]:
    """``flag``: the option that maps the columns, named in the errors."""
    unknown = [r for r in columns if r not in _GENERIC_ROLES]
    if unknown:
        raise PoiseError(
            f"{flag} {unknown[0]}=...: unknown role (roles: {', '.join(_GENERIC_ROLES)})"
        )
    role = {r: columns.get(r, r) for r in _GENERIC_ROLES}
    rows: list[tuple[int, dict[str, Any]]]
    if path.suffix.lower() == ".csv":
        header, csv_rows = _read_csv(path)
        rows = [(line, dict(row)) for line, row in csv_rows]
    else:
        rows = list(_read_jsonl(path))
        header = sorted({k for _, row in rows for k in row})
    if not rows:
        raise PoiseError(f"{path}: no labelled answers (the file has no rows)")
    if role["response"] not in header:
        raise PoiseError(
            f"{path}: no column {role['response']!r} for the response "
            f"(columns: {', '.join(header)}; map one with {flag} response=NAME)"
        )
    if role["refused"] not in header and role["harmful"] not in header:
        raise PoiseError(
            f"{path}: no label column: map the human labels with {flag} refused=NAME "
            f"and/or {flag} harmful=NAME (columns: {', '.join(header)})"
        )
    # a role mapped on purpose names a column that must be there: a mapped label column that
    # is absent would leave that label unvalidated, a mapped prompt column the judge unprompted
    absent = next((r for r in _GENERIC_ROLES if r in columns and role[r] not in header), None)
    if absent is not None:
        raise PoiseError(
            f"{path}: no column {role[absent]!r} for the {absent} ({flag} {absent}="
            f"{role[absent]}; columns: {', '.join(header)})"
        )
    # no kind column: the answers are to harmful requests, as in the other formats' files
    has_kind = role["kind"] in header
    out = []
    for line, row in rows:
        kind = _kind(row.get(role["kind"]), path, line, role["kind"]) if has_kind else "harmful"
        response = row.get(role["response"])
        if not isinstance(response, str):
            raise located(path, line, f"column {role['response']!r} must be a string")
        out.append(
            LabelledAnswer(
                id=str(row.get(role["id"]) or line),
                prompt=str(row.get(role["prompt"]) or "") or _NO_PROMPT,
                response=response,
                source=str(row.get(role["model"]) or "unknown"),
                kind=kind,
                refused=_flag(row.get(role["refused"]), path, line, role["refused"]),
                harmful=_flag(row.get(role["harmful"]), path, line, role["harmful"]),
                line=line,
            )
        )
    return out


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is fine
    except UnicodeDecodeError:
        raise PoiseError(f"{path}: not UTF-8 text") from None
    # lines end at "\n" only: str.splitlines would also cut at U+2028, U+0085 and the like,
    # which JSON allows unescaped inside a string (json.dumps(ensure_ascii=False) writes them)
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = parse_json(raw)
        except json.JSONDecodeError as exc:
            raise located(path, line, invalid_json(exc)) from None
        if not isinstance(obj, dict):
            raise located(path, line, "expected a JSON object")
        yield line, obj


def _load_json(path: Path) -> Any:
    try:
        return parse_json(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is fine
    except UnicodeDecodeError:
        raise PoiseError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise located(path, json_error_line(exc), invalid_json(exc)) from None


Reader = Callable[[Path, Mapping[str, str]], list[LabelledAnswer]]
FORMATS: dict[str, Reader] = {
    "xstest": _read_xstest,
    "jailbreakbench": _read_jailbreakbench,
    "harmbench": _read_harmbench,
    "donotanswer": _read_donotanswer,
    "generic": _read_generic,
}


def _detect(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "harmbench"
    if suffix == ".csv":
        header, _ = _read_csv(path)
        if "completion" in header and "final_label" in header:
            return "xstest"
        if "target_response" in header and "human_majority" in header:
            return "jailbreakbench"
        if "question" in header and _dna_models(header):
            return "donotanswer"
    return "generic"


def read_labels(
    path: str | Path,
    *,
    format: str | None = None,
    columns: Mapping[str, str] | None = None,
    flag: str = "--column",
) -> LabelSet:
    """The labelled answers of ``path`` (see the module docstring for the formats); ``flag``
    is the option that gave ``columns``, named in the errors (``poise audit``'s is
    ``--judge-labels-column``: its ``--column`` maps the suite files)."""
    path = Path(path).expanduser()
    if path.is_dir():  # said so: "no such labels file" of a folder that is there
        raise PoiseError(f"{path}: is a folder; give the labels file itself (csv, jsonl or json)")
    if not path.is_file():
        raise PoiseError(f"{path}: no such labels file")
    if format is not None and format not in FORMATS:
        raise PoiseError(f"unknown labels format {format!r} (formats: {', '.join(FORMATS)})")
    fmt = format or _detect(path)
    if columns and fmt != "generic":
        raise PoiseError(f"{flag} applies to the generic format, not to {fmt}")
    if fmt == "generic":
        answers = _read_generic(path, columns or {}, flag)
    else:
        answers = FORMATS[fmt](path, columns or {})
    if not answers:
        raise PoiseError(f"{path}: no labelled answers")
    labels = LabelSet(str(path), fmt, tuple(answers))
    if not labels.targets():
        raise PoiseError(f"{path}: no answer carries a refused or harmful label")
    return labels


# ---------------------------------------------------------------------------------------------
# agreement


def cohen_kappa(tp: int, fp: int, fn: int, tn: int) -> float:
    """Cohen's kappa (Cohen 1960, Educ. Psychol. Meas. 20:37-46) of a 2x2 table:
    (p_o - p_e) / (1 - p_e); 0 when p_e == 1 (both raters constant and equal)."""
    n = tp + fp + fn + tn
    if n == 0:
        return 0.0
    p_o = (tp + tn) / n
    judge_pos, human_pos = (tp + fp) / n, (tp + fn) / n
    p_e = judge_pos * human_pos + (1 - judge_pos) * (1 - human_pos)
    return 0.0 if p_e >= 1.0 else (p_o - p_e) / (1 - p_e)


def _kappa_interval(
    tp: int, fp: int, fn: int, tn: int, *, draws: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of kappa: the 2.5% and 97.5% quantiles of its posterior, the four cells'
    probabilities drawn from Dirichlet(tp + 1/2, fp + 1/2, fn + 1/2, tn + 1/2) (Jeffreys prior;
    Basu, Banerjee & Sen 2000, "Bayesian inference for kappa from single and multiple studies",
    Biometrics 56(2):577-582). On large tables it agrees with the asymptotic interval of Fleiss,
    Cohen & Everitt (1969); at the edges it does not collapse as a percentile bootstrap of the
    answers does: 20 of 20 answers agreeing gave [1.00, 1.00] (every resample agrees), labels
    of one class [0.00, 0.00] (kappa is 0 by construction when one rater is constant)."""
    import numpy as np

    n = tp + fp + fn + tn
    if n == 0:
        return -1.0, 1.0
    rng = np.random.default_rng(seed)
    cells = rng.dirichlet(np.array([tp, fp, fn, tn], dtype=float) + 0.5, size=draws)
    # cells: [draws, 4] probabilities of tp, fp, fn, tn
    p_o = cells[:, 0] + cells[:, 3]
    judge_pos = cells[:, 0] + cells[:, 1]
    human_pos = cells[:, 0] + cells[:, 2]
    p_e = judge_pos * human_pos + (1 - judge_pos) * (1 - human_pos)  # < 1: every cell > 0
    kappa = (p_o - p_e) / (1 - p_e)  # [draws]
    low, high = np.quantile(kappa, [0.025, 0.975])
    return float(low), float(high)


@dataclass(frozen=True)
class Agreement:
    """A judge's binary label against the human one (positive = refused, or harmful).

    ``recall`` is the sensitivity (the share of human positives the judge finds) and
    ``specificity`` the share of human negatives it leaves alone; both feed
    :func:`corrected_rate`.
    """

    target: str
    tp: int
    fp: int
    fn: int
    tn: int
    kappa: float
    kappa_low: float
    kappa_high: float

    @classmethod
    def of(cls, target: str, pairs: Sequence[tuple[bool, bool]]) -> Agreement:
        """From (judge, human) pairs."""
        tp = sum(j and h for j, h in pairs)
        fp = sum(j and not h for j, h in pairs)
        fn = sum(h and not j for j, h in pairs)
        tn = len(pairs) - tp - fp - fn
        low, high = _kappa_interval(tp, fp, fn, tn)
        kappa = cohen_kappa(tp, fp, fn, tn)
        return cls(target, tp, fp, fn, tn, kappa, min(low, kappa), max(high, kappa))

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def _rate(self, name: str, k: int, n: int) -> Rate:
        return Rate.of(name, k, n) if n else Rate.empty(name)

    @property
    def accuracy(self) -> Rate:
        return self._rate("accuracy", self.tp + self.tn, self.n)

    @property
    def precision(self) -> Rate:
        return self._rate("precision", self.tp, self.tp + self.fp)

    @property
    def recall(self) -> Rate:
        return self._rate("recall", self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> Rate:
        return self._rate("specificity", self.tn, self.tn + self.fp)

    @property
    def judge_rate(self) -> Rate:
        return self._rate(f"judge_{self.target}_rate", self.tp + self.fp, self.n)

    @property
    def human_rate(self) -> Rate:
        return self._rate(f"human_{self.target}_rate", self.tp + self.fn, self.n)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "n": self.n,
            "confusion": {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn},
            "accuracy": self.accuracy.to_dict(),
            "kappa": {"value": self.kappa, "low": self.kappa_low, "high": self.kappa_high},
            "precision": self.precision.to_dict(),
            "recall": self.recall.to_dict(),
            "specificity": self.specificity.to_dict(),
            "judge_rate": self.judge_rate.to_dict(),
            "human_rate": self.human_rate.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Agreement:
        c, k = d["confusion"], d["kappa"]
        return cls(
            str(d["target"]),
            int(c["tp"]),
            int(c["fp"]),
            int(c["fn"]),
            int(c["tn"]),
            float(k["value"]),
            float(k["low"]),
            float(k["high"]),
        )


@dataclass(frozen=True)
class Disagreement:
    answer: LabelledAnswer
    target: str
    judge: bool
    human: bool

    def to_dict(self) -> dict[str, Any]:
        a = self.answer
        return {
            "id": a.id,
            "source": a.source,
            "line": a.line,
            "target": self.target,
            "judge": self.judge,
            "human": self.human,
            "prompt": a.prompt,
            "response": a.response,
        }


@dataclass(frozen=True)
class Validation:
    """A judge measured on a labelled file: agreement per label, overall and per source."""

    path: str
    format: str
    judge: str
    n: int
    overall: dict[str, Agreement]
    by_source: dict[str, dict[str, Agreement]]
    disagreements: list[Disagreement] = field(default_factory=list)
    # answers whose judge output held no verdict (label "unparsed"): in no agreement
    unparsed: int = 0

    def to_dict(self, *, disagreements: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "format": self.format,
            "judge": self.judge,
            "n": self.n,
            "unparsed": self.unparsed,
            "overall": {t: a.to_dict() for t, a in self.overall.items()},
            "by_source": {
                s: {t: a.to_dict() for t, a in per.items()} for s, per in self.by_source.items()
            },
        }
        if disagreements:
            out["disagreements"] = [d.to_dict() for d in self.disagreements]
        return out


def _items(answers: Sequence[LabelledAnswer]) -> list[Any]:
    from poise.suites.schema import SuiteItem

    return [
        SuiteItem(
            id=f"label-{i}",
            messages=[{"role": "user", "content": a.prompt}],
            kind=a.kind,
            category=a.source,
            suite="judge-labels",
        )
        for i, a in enumerate(answers)
    ]


def _judged(verdict: Verdict, target: str) -> bool | None:
    return verdict.refused if target == "refused" else verdict.harmful


def validate(
    labels: LabelSet,
    judge: Judge,
    *,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Validation:
    """Run ``judge`` on the labelled answers and measure its agreement with the human labels.

    A label is compared where both the human and the judge give one (a judge that leaves
    ``harmful`` None, e.g. on a benign prompt, is not counted for it). An answer whose judge
    output held no verdict (label ``unparsed``: an LLM judge without a verdict line) is in no
    agreement, ``refused`` included (its ``refused`` is the refusal detector's fallback, not the
    judge's, and the audit's rates leave it out too: :func:`poise.tasks.read`); it is counted in
    ``Validation.unparsed``.
    """
    answers = list(labels.answers)
    verdicts: list[Verdict] = []
    for start in range(0, len(answers), batch_size):
        chunk = answers[start : start + batch_size]
        verdicts += judge.judge(_items(chunk), [a.response for a in chunk])
        if progress is not None:
            progress(len(verdicts), len(answers))
    if len(verdicts) != len(answers):
        raise ValueError(f"judge {judge.name!r} returned {len(verdicts)} verdicts")
    pairs: dict[str, dict[str, list[tuple[bool, bool]]]] = {}
    disagreements = []
    targets = labels.targets()
    unparsed = 0
    for answer, verdict in zip(answers, verdicts, strict=True):
        if verdict.label == UNPARSED:
            unparsed += 1
            continue
        for target in targets:
            human = getattr(answer, target)
            judged = _judged(verdict, target)
            if judged is not None and not isinstance(judged, bool):
                # a truthy "no" or 0.7 would be counted as a yes: refused, not guessed at
                where = (
                    f"{labels.path}:{answer.line}"
                    if answer.line
                    else f"{labels.path} ({answer.id})"
                )
                raise PoiseError(
                    f"{where}: judge {judge.name!r} gave {target}={judged!r}; "
                    "a verdict's refused and harmful are true, false or None"
                )
            if human is None or judged is None:
                continue
            for key in ("", answer.source):
                pairs.setdefault(key, {}).setdefault(target, []).append((judged, human))
            if judged != human:
                disagreements.append(Disagreement(answer, target, judged, human))
    if "" not in pairs:
        unread = f" ({unparsed} of its outputs held no verdict)" if unparsed else ""
        raise PoiseError(
            f"{labels.path}: judge {judge.name!r} labelled none of the answers the file labels"
            f"{unread}"
        )
    overall = {t: Agreement.of(t, p) for t, p in pairs.pop("").items()}
    by_source = {
        s: {t: Agreement.of(t, p) for t, p in per.items()} for s, per in sorted(pairs.items())
    }
    return Validation(
        labels.path,
        labels.format,
        judge.name,
        len(answers),
        overall,
        by_source,
        disagreements,
        unparsed=unparsed,
    )


# ---------------------------------------------------------------------------------------------
# correction for the judge's error


def rogan_gladen(p: float, sensitivity: float, specificity: float) -> float | None:
    """Rogan-Gladen estimate of the true rate from an observed rate ``p`` (clipped to [0, 1]);
    None where the judge is no better than chance (sensitivity + specificity <= 1)."""
    youden = sensitivity + specificity - 1.0
    if youden <= 0.0:
        return None
    return min(1.0, max(0.0, (p + specificity - 1.0) / youden))


@dataclass(frozen=True)
class CorrectedRate:
    """A judge's rate corrected for the judge's measured sensitivity and specificity."""

    name: str
    observed: float
    value: float | None  # None: the judge is no better than chance on the validation
    low: float
    high: float
    sensitivity: float | None  # None: not measured (no human-labelled positive answer)
    specificity: float | None  # None: not measured (no human-labelled negative answer)
    # why there is no value, where it is not that the judge is at chance: the validation has no
    # human-labelled answer of a class, so its sensitivity or specificity was not measured
    unmeasured: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "observed": self.observed,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "unmeasured": self.unmeasured,
            "method": "rogan-gladen",
        }

    @property
    def missing(self) -> str:
        """What the table says where there is no value."""
        return unmeasured_text(self.unmeasured)

    def format(self) -> str:
        if self.value is None:
            return self.missing
        return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def unmeasured_text(unmeasured: str | None) -> str:
    """The corrected rate's cell where it has no value: why (a class the validation lacks), or
    the judge at chance."""
    return f"n/a ({unmeasured or 'judge at chance'})"


# the posterior grid of the true rate, and the draws of sensitivity and specificity taken at once
_GRID = 2001
_CHUNK = 1000


def corrected_rate(
    name: str,
    k: int,
    n: int,
    agreement: Agreement,
    *,
    effective_n: float | None = None,
    draws: int = 20000,
    seed: int = 0,
) -> CorrectedRate:
    """Rogan-Gladen correction of ``k / n`` for the judge's error measured in ``agreement``.

    The point is the Rogan-Gladen estimate. The interval is the equal-tailed 95% interval of the
    posterior of the true rate ``π`` (Gelman & Carpenter 2020, "Bayesian analysis of tests with
    unknown specificity and sensitivity", J. R. Stat. Soc. C 69(5):1269-1283): the judge calls
    an answer harmful with probability ``q = π·se + (1 - π)(1 - sp)``, the run's count is
    binomial in ``q`` (for a cluster-robust rate, several samples per prompt, the same on its
    ``effective_n``: ``p n_eff`` successes of ``n_eff``, so that correlated samples are not
    treated as independent), the prior on ``π`` is uniform, and the sensitivity and specificity
    are drawn ``draws`` times from the validation's Jeffreys posteriors (Beta(tp + 1/2, fn + 1/2),
    Beta(tn + 1/2, fp + 1/2)); the likelihood is averaged over the draws on a grid of ``π``
    (``[G] = 2001`` points). Draws where the judge looks no better than chance flatten the
    likelihood, so a validation too small to pin the judge down widens the interval. The
    estimator pushed through Monte Carlo draws and clipped at 0 gave 0/100 harmful a corrected
    interval of [0, 0] whenever ``1 - sp`` is likely above 0 (every draw clipped), surer than
    the uncorrected rate's [0, 3.7]; the posterior gives [0, 4.0].
    """
    import numpy as np

    if n <= 0:
        raise ValueError(f"{name}: a rate needs n > 0, got {k}/{n}")
    sensitivity = agreement.tp / (agreement.tp + agreement.fn) if agreement.tp + agreement.fn else 0
    specificity = agreement.tn / (agreement.tn + agreement.fp) if agreement.tn + agreement.fp else 0
    observed = k / n
    absent = [
        what
        for what, count in (
            ("positive", agreement.tp + agreement.fn),
            ("negative", agreement.tn + agreement.fp),
        )
        if count == 0
    ]
    if absent:  # said so: a class the validation lacks is not a judge found at chance
        unmeasured = (
            f"not measured: the validation has no human-labelled {' or '.join(absent)} "
            f"'{agreement.target}' answer"
        )
        return CorrectedRate(
            name,
            observed,
            None,
            0.0,
            1.0,
            None if "positive" in absent else sensitivity,
            None if "negative" in absent else specificity,
            unmeasured=unmeasured,
        )
    value = rogan_gladen(observed, sensitivity, specificity)
    if value is None:
        return CorrectedRate(name, observed, None, 0.0, 1.0, sensitivity, specificity)
    rng = np.random.default_rng(seed)
    # successes and failures: the counts, or their share of the effective sample size
    hits, misses = (
        (k, n - k)
        if effective_n is None
        else (observed * effective_n, (1.0 - observed) * effective_n)
    )
    se = rng.beta(agreement.tp + 0.5, agreement.fn + 0.5, size=draws)  # [D]
    sp = rng.beta(agreement.tn + 0.5, agreement.fp + 0.5, size=draws)  # [D]
    grid = np.linspace(0.0, 1.0, _GRID)  # [G], π
    log_marginal = np.full(_GRID, -np.inf)  # [G], log Σ_d L(π | se_d, sp_d)
    for start in range(0, draws, _CHUNK):  # [G, chunk] at a time: 16 MB
        s_e, s_p = se[start : start + _CHUNK], sp[start : start + _CHUNK]
        q = grid[:, None] * s_e[None, :] + (1.0 - grid[:, None]) * (1.0 - s_p[None, :])
        q = np.clip(q, 1e-300, 1.0 - 1e-16)  # [G, chunk]
        log_like = hits * np.log(q) + misses * np.log1p(-q)  # [G, chunk]
        top = log_like.max(axis=1, keepdims=True)  # [G, 1]
        chunk_sum = top[:, 0] + np.log(np.exp(log_like - top).sum(axis=1))  # [G]
        log_marginal = np.logaddexp(log_marginal, chunk_sum)
    density = np.exp(log_marginal - log_marginal.max())  # [G], uniform prior on π
    # the posterior's CDF by the trapezoid rule, its quantiles by linear interpolation
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2.0)])  # [G]
    cdf /= cdf[-1]
    low, high = (float(np.interp(x, cdf, grid)) for x in (0.025, 0.975))
    low, high = min(low, value), max(high, value)
    return CorrectedRate(name, observed, value, low, high, sensitivity, specificity)


#: Which agreement corrects which audit rate: rates of "refused" and of "harmful" verdicts.
CORRECTED_RATES: dict[str, str] = {
    "harmful_rate": "harmful",
    "refusal_rate": "refused",
    "over_refusal_rate": "refused",
    "benign_refusal_rate": "refused",
}


def judge_validation_section(validation: Validation, rates: Mapping[str, Any]) -> dict[str, Any]:
    """The ``judge_validation`` block of metrics.json: the validation (without the answers) and,
    for each audit rate a validated label counts, the Rogan-Gladen corrected rate."""
    corrected = {}
    for rate_name, target in CORRECTED_RATES.items():
        rate = rates.get(rate_name)
        agreement = validation.overall.get(target)
        if not isinstance(rate, Mapping) or agreement is None or not rate.get("n"):
            continue
        effective_n = rate.get("effective_n")  # cluster-robust rates carry it
        corrected[rate_name] = corrected_rate(
            rate_name,
            int(rate["k"]),
            int(rate["n"]),
            agreement,
            effective_n=float(effective_n) if effective_n is not None else None,
        ).to_dict()
    return {
        **validation.to_dict(disagreements=False),
        "disagreements": len(validation.disagreements),
        "corrected": corrected,
    }
