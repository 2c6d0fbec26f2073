"""``best_of_n(BASE, n=4, reward=organism-reward, cost=organism-cost, lam=1.0, ...)``.

Best-of-N: draw N samples from the base model, answer with the one a reward model, a cost
model or both prefer (arXiv 2412.19792, InfAlign, problem setup: the best-of-N policy picks
``argmax_i r(x, y_i)`` over ``y_1..y_N ~ pi_base(.|x)``; worst-of-N, ``worst=true``, picks the
argmin, the best-of-N jailbreaking they also study, used here to audit the worst case).

The objective of a candidate ``y`` of prompt ``x``:

    score(x, y) = T(R(x, y)) + lam * T(S(x, y))        (reward and cost given)
    score(x, y) = T(R(x, y))  or  T(S(x, y))           (only one given)

- ``R``: the reward model's raw score, or with ``calibrate=true`` its calibrated version
  (InfAlign Section 4, the calibration step of CTRL): the quantile of the score under the base
  policy's own samples for that prompt,
  ``C_r(x, y) = P_{z ~ pi_base(.|x)}[r(x, z) < r(x, y)] + 1/2 P[r(x, z) = r(x, y)]``, estimated
  on the N candidates themselves (they are N base samples of ``x``); ties count half (mid-rank).
- ``S``: the cost read as a reward, ``-c`` (a cost is harmful when high), calibrated the same
  way: ``C_{-c} = 1 - C_c`` exactly, ties at mid rank included. InfAlign transforms a calibrated
  *reward*, higher better; the cost is a second reward of that kind, so ``T`` acts on ``1 - C_c``
  and not on ``C_c``. (``-T(C_c)`` would give the cost the other transform's shape: with
  ``bon``, ``-exp(t C_c) = e^t * (-exp(-t (1 - C_c)))`` is ``won`` of the safety.) Without a
  transform the two forms pick alike (``R - lam * C`` and ``R + lam * (1 - C)`` differ by
  ``lam``). Calibration puts the reward and the cost on one scale, so ``lam`` means the same on
  every prompt.
- ``T``: InfAlign's transformations of the calibrated score (Section 4, InfAlign-CTRL): ``transform=bon``,
  ``T(u) = exp(t u)`` (for best-of-N); ``transform=won``, ``T(u) = -exp(-t u)`` (for worst-of-N);
  ``transform=none``, ``T(u) = u``. ``t`` is their temperature. A monotone ``T`` of a single
  score never changes which candidate is best; it changes the trade-off once reward and cost
  are combined (and it is the reward the CTRL training of the paper optimises).

Each answer records in ``Completion.metadata`` (and the run's samples.jsonl) which of its N
samples it is (``picked``) and its calibrated scores among them (``calibrated_reward``,
``calibrated_cost``): the mean ``calibrated_reward`` over a run is the calibrated win rate of
best-of-N against the base model (InfAlign's win rate ``P[r(y) > r(z)] + 1/2 P[=]``, ``z`` a
base sample, estimated on each prompt's own N samples).

``n`` in the spec is N; ``sampling.n`` still counts the completions asked for per chat, each the
best of its own N samples (``sampling.n * N`` samples drawn in one batched call), so N > 1 needs
``temperature > 0`` (greedy samples are all the same). With N = 1 the answers are the base
model's. Generation is one ``generate`` call of the base for all prompts
and samples, scoring one batched pass per scorer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from poise.config import Sampling
from poise.decoding import strategies
from poise.decoding.scorers import Scorer, canonical_scorer, check_scorer, load_scorer
from poise.errors import PoiseError, check_int, check_number
from poise.models.base import Capabilities, Chat, Completion, LanguageModel, ProgressFn
from poise.models.wrapped import WrappedModel

__all__ = ["BestOfN", "calibrated", "select"]

TRANSFORMS = ("none", "bon", "won")
#: samples drawn per chat at most (sampling.n x N), the bound of ``Sampling.n``
MAX_DRAWN = 4096
#: the transforms' temperature at most: ``exp(t u)`` of a calibrated ``u`` in (0, 1) stays a
#: finite float (exp overflows past about 709) and ``exp(-t u)`` a normal one (no false ties at 0)
MAX_T = 700.0


def calibrated(scores: Sequence[float]) -> list[float]:
    """Each score's mid-rank quantile among ``scores`` (InfAlign Section 4, estimated on the
    prompt's own base samples): ``(#below + #equal / 2) / N``, the candidate itself included in
    the equal ones, so a lone candidate is 0.5 and the values lie in (0, 1)."""
    n = len(scores)
    return [(sum(s < x for s in scores) + 0.5 * sum(s == x for s in scores)) / n for x in scores]


def _transform(values: list[float], transform: str, t: float) -> list[float]:
    if transform == "bon":
        return [math.exp(t * u) for u in values]
    if transform == "won":
        return [-math.exp(-t * u) for u in values]
    return values


def select(
    rewards: Sequence[float] | None,
    costs: Sequence[float] | None,
    *,
    lam: float = 1.0,
    calibrate: bool = False,
    transform: str = "none",
    t: float = 1.0,
    worst: bool = False,
) -> int:
    """Index of the chosen candidate among one prompt's N (see the module docstring); the first
    on ties."""
    total: list[float] | None = None
    # the cost is read as the reward -c before calibration and transform (module docstring)
    safety = None if costs is None else [-c for c in costs]
    for values in (rewards, safety):
        if values is None:
            continue
        scaled = calibrated(values) if calibrate else list(values)
        part = _transform(scaled, transform, t)
        # the cost comes after the reward: weight lam
        total = part if total is None else [a + lam * b for a, b in zip(total, part, strict=True)]
    assert total is not None
    best = min(total) if worst else max(total)
    return total.index(best)


@strategies.register(
    "best_of_n",
    help="N samples, answer with the best by reward, cost or reward - lam * cost (calibrated)",
    reference="arXiv 2412.19792",
)
class BestOfN(WrappedModel):
    """The base model's best (or worst) of N samples under a reward and/or cost model."""

    kind = "best_of_n"

    def __init__(
        self,
        base: LanguageModel,
        *,
        n: int = 4,
        reward: str = "",
        cost: str = "",
        lam: float | None = None,
        calibrate: bool = False,
        transform: str = "none",
        t: float | None = None,
        worst: bool = False,
    ) -> None:
        from poise.decoding.temperature import require_model

        require_model(self.kind, base)
        check_int("best_of_n", "n", n, 1, MAX_DRAWN)
        for flag, value in (("calibrate", calibrate), ("worst", worst)):
            if not isinstance(value, bool):
                raise PoiseError(f"best_of_n: {flag} must be true or false, got {value!r}")
        if not reward and not cost:
            raise PoiseError("best_of_n: needs reward=SCORER, cost=SCORER or both")
        if transform not in TRANSFORMS:
            raise PoiseError(
                f"best_of_n: transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}"
            )
        # an option that would change nothing is refused, not dropped from the spec unsaid
        if lam is not None and not (reward and cost):
            raise PoiseError(
                "best_of_n: lam weighs the cost against the reward: it needs both reward= and "
                "cost= (with one scorer, leave lam out)"
            )
        if t is not None and transform == "none":
            raise PoiseError(
                "best_of_n: t is the temperature of transform=bon or transform=won: set one, or "
                "leave t out"
            )
        lam = 1.0 if lam is None else check_number("best_of_n", "lam", lam)
        if lam <= 0:
            # 0 loads a cost model and never reads it; below 0 the pick rewards the cost, an
            # attack spelled as a defence
            raise PoiseError(
                f"best_of_n: lam weighs the cost against the reward and must be positive, got "
                f"{lam:g} (leave cost= out to pick by the reward alone; worst=true picks the "
                "worst answer for an audit)"
            )
        t = 1.0 if t is None else check_number("best_of_n", "t", t, positive=True)
        if t > MAX_T:
            # an OverflowError only once every sample had been drawn and scored
            raise PoiseError(
                f"best_of_n: t must be at most {MAX_T:g} (exp(t u) of a calibrated score u "
                f"overflows past it), got {t!r}"
            )
        if transform != "none" and not calibrate:
            raise PoiseError(
                "best_of_n: InfAlign's transformations act on calibrated scores: add calibrate=true"
            )
        for what, name in (("reward", reward), ("cost", cost)):
            if name:
                check_scorer(f"best_of_n: {what}", name)
        reward = canonical_scorer(reward) if reward else reward
        cost = canonical_scorer(cost) if cost else cost
        options: dict[str, Any] = {"n": n}
        if reward:
            options["reward"] = reward
        if cost:
            options["cost"] = cost
        if reward and cost:
            options["lam"] = lam
        if calibrate:
            options["calibrate"] = True
        if transform != "none":
            options["transform"] = transform
            options["t"] = t
        if worst:
            options["worst"] = True
        super().__init__(base, **options)
        self.n = n
        self.lam, self.calibrate, self.transform, self.t, self.worst = (
            float(lam),
            bool(calibrate),
            transform,
            float(t),
            bool(worst),
        )
        self._reward_name, self._cost_name = reward, cost
        self._scorers: dict[str, Scorer] = {}
        self.capabilities = Capabilities()

    def check_sampling(self, sampling: Sampling) -> None:
        super().check_sampling(sampling)
        if sampling.n * self.n > MAX_DRAWN:
            raise PoiseError(
                f"best_of_n: {sampling.n} completions per chat, each the best of {self.n}, draw "
                f"{sampling.n * self.n} samples per chat (at most {MAX_DRAWN})"
            )
        if self.n > 1 and sampling.greedy:
            raise PoiseError(
                f"best_of_n: n={self.n} under greedy decoding draws {self.n} identical answers "
                "(the answer is the base model's, at N times the cost): sample instead, with a "
                "temperature above 0 and top_k other than 1 (the docs use --temperature 1)"
            )

    def scorer(self, name: str) -> Scorer:
        """The scorer ``name`` stands for, loaded on first use."""
        if name not in self._scorers:
            self._scorers[name] = load_scorer(name)
        return self._scorers[name]

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, *, progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        if not chats:
            return []
        per_chat = sampling.n * self.n
        drawn = self.inner.generate(
            chats, sampling.model_copy(update={"n": per_chat}), progress=progress
        )
        if self.n == 1:
            return drawn
        flat_chats = [chat for chat, row in zip(chats, drawn, strict=True) for _ in row]
        flat_texts = [c.text for row in drawn for c in row]
        scores: dict[str, list[float]] = {}
        for name in (self._reward_name, self._cost_name):
            if name:
                scores[name] = self.scorer(name)(flat_chats, flat_texts)
        results: list[list[Completion]] = []
        offset = 0
        for row in drawn:
            chosen = []
            for k in range(sampling.n):
                group = slice(offset + k * self.n, offset + (k + 1) * self.n)
                rewards = scores[self._reward_name][group] if self._reward_name else None
                costs = scores[self._cost_name][group] if self._cost_name else None
                pick = select(
                    rewards,
                    costs,
                    lam=self.lam,
                    calibrate=self.calibrate,
                    transform=self.transform,
                    t=self.t,
                    worst=self.worst,
                )
                picked = row[k * self.n + pick]
                meta: dict[str, Any] = {"picked": pick}
                if rewards is not None:
                    meta["calibrated_reward"] = calibrated(rewards)[pick]
                if costs is not None:
                    meta["calibrated_cost"] = calibrated(costs)[pick]
                # the picked sample as the base gave it (its token ids too: what a server's
                # usage counts and its log-probs cover), with the choice recorded beside what
                # the base recorded (a wrapped strategy's own record, e.g. rain's counts)
                meta = {**(picked.metadata or {}), **meta}
                chosen.append(dataclasses.replace(picked, metadata=meta))
            results.append(chosen)
            offset += len(row)
        return results
