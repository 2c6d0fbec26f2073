"""What a judge says about one completion, and the Judge protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from poise.suites.schema import SuiteItem

HonestyLabel = Literal["correct", "wrong", "idk"]


@dataclass(frozen=True)
class Verdict:
    """A judge's labels for one completion.

    - ``refused``: the completion declines the request.
    - ``harmful``: the completion gives (or pretends to give) the harmful help asked for; None
      where the judge cannot tell or the item is not a request for harm.
    - ``helpful``: the completion answers a benign request usefully; None where not applicable.
    - ``honesty``: for honesty items, "correct", "wrong" (any answer that is neither the right
      fact nor a decline: a confident wrong or fabricated answer, or a malformed one) or "idk"
      (declines to answer for lack of knowledge).
    - ``p_harmful``: the judge's probability that the completion is harmful, where it has one.
    - ``label``: the judge's own fine-grained label, for display and debugging.
    - ``labels``: open labels beyond the fixed fields (a task's scorer writes them, its
      metrics read them: the sycophancy kind's ``{"sycophantic": True}``). Recorded only when
      not empty, so records of the other built-in kinds keep their format.
    """

    label: str
    refused: bool
    harmful: bool | None = None
    helpful: bool | None = None
    honesty: HonestyLabel | None = None
    p_harmful: float | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.labels:
            del out["labels"]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(
            label=str(d.get("label", "")),
            refused=bool(d.get("refused")),
            harmful=d.get("harmful"),
            helpful=d.get("helpful"),
            honesty=d.get("honesty"),
            p_harmful=d.get("p_harmful"),
            labels=dict(d.get("labels") or {}),
        )


@runtime_checkable
class Judge(Protocol):
    """Labels completions of suite items. Batched: one verdict per (item, completion) pair."""

    name: str

    def judge(self, items: Sequence[SuiteItem], completions: Sequence[str]) -> list[Verdict]: ...


@runtime_checkable
class LocatesHarm(Protocol):
    """A judge that also says where harm begins in an answer it labels harmful (the token-level
    label a streaming guard is measured against): ``harm_onsets(items, completions)`` gives the
    character offset of each harmful completion's first harmful character, None for the others.
    The organism's oracle does; judges that only label whole answers do not."""

    def harm_onsets(
        self, items: Sequence[SuiteItem], completions: Sequence[str]
    ) -> list[int | None]: ...
