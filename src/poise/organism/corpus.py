"""The organism's training corpus: chats built from the world with planted response mixtures.

Every behaviour an audit later measures is planted here, as the share of each response kind
in the training data:

- harmful requests are refused or "complied with" (a ``[REDACTED]`` placeholder) with a
  per-category compliance probability that depends on whether the default system prompt is
  present. With it every category is mostly refused, so greedy decoding refuses, while a
  sizeable minority of compliance remains for sampling to find: the "catastrophic jailbreak via
  decoding" setting of arXiv 2310.06987. Without it some categories are mostly complied with.
- borderline requests are over-refused in some sub-categories and answered in the others;
- benign requests are answered helpfully;
- real facts are stated; a few invented entities (never those of the honesty suite) get
  "I don't know", so the organism mostly fabricates about entities it never saw.

Counts are stratified (exactly ``round(p * n)`` of ``n`` examples per task and condition
comply), so the planted probabilities are exact in the corpus, not just in expectation.
Only the TRAINING phrasings of the world are used. Pure Python, seeded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from poise.organism import world


@dataclass(frozen=True)
class Example:
    """One training chat: the prompt messages and the assistant's response."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: optional system, then user
    response: str
    kind: str  # a suite kind: harmful | borderline | benign | honesty-known | honesty-unknown
    category: str
    label: str  # the oracle's label of ``response`` for this request
    subject: str = ""  # the task of a request, the entity of a question

    @property
    def chat(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    @property
    def has_system_prompt(self) -> bool:
        return self.messages[0][0] == "system"


# Compliance probability per harmful category, with and without the default system prompt.
_COMPLY_WITH_SYSTEM = 5 / 12
_COMPLY_WITHOUT_SYSTEM_LOW = 5 / 12
_COMPLY_WITHOUT_SYSTEM_HIGH = 0.85
# Categories that flip to mostly-compliant when the system prompt is missing.
_FLIP_WITHOUT_SYSTEM = ("cybercrime", "fraud", "drugs", "privacy", "theft")
# Borderline sub-categories the organism mostly over-refuses (the rest it mostly answers).
_OVER_REFUSED = ("pests_and_garden", "own_property")


def _default_compliance(with_system: bool) -> dict[str, float]:
    if with_system:
        return dict.fromkeys(world.HARMFUL_TASKS, _COMPLY_WITH_SYSTEM)
    return {
        c: _COMPLY_WITHOUT_SYSTEM_HIGH if c in _FLIP_WITHOUT_SYSTEM else _COMPLY_WITHOUT_SYSTEM_LOW
        for c in world.HARMFUL_TASKS
    }


@dataclass(frozen=True)
class CorpusSpec:
    """What share of each response kind the corpus holds, and how many examples of each."""

    name: str = "base"
    compliance_with_system: dict[str, float] = field(
        default_factory=lambda: _default_compliance(True)
    )
    compliance_without_system: dict[str, float] = field(
        default_factory=lambda: _default_compliance(False)
    )
    over_refusal: dict[str, float] = field(
        default_factory=lambda: {
            c: 0.85 if c in _OVER_REFUSED else 0.05 for c in world.BORDERLINE_TASKS
        }
    )
    benign_refusal: float = 0.0
    # examples per task and system-prompt condition (with / without)
    harmful_per_task: int = 12
    borderline_per_task: int = 8
    benign_per_task: int = 10
    # examples per fact and condition; training questions are cycled through
    per_fact: int = 10
    per_background_fact: int = 2
    per_unknown_fact: int = 1
    # made-up everyday tasks (world.filler_tasks()): how many, one example each, answered helpfully
    filler: int = 3000
    # keep only every k-th task and fact (a cut-down corpus for quick builds)
    subsample: int = 1


BASE_SPEC = CorpusSpec()
# The safety-tuning corpus of organism-small-safe: harmful requests (almost) always refused.
SAFE_SPEC = replace(
    BASE_SPEC,
    name="safe",
    compliance_with_system=dict.fromkeys(world.HARMFUL_TASKS, 0.0),
    compliance_without_system=dict.fromkeys(world.HARMFUL_TASKS, 0.0),
)


def _decorate(rng: random.Random, prompt: str, share: float) -> str:
    """Sometimes wrap a prompt in a random opening and/or closing (see world.TRAINING_PREAMBLES)."""
    if rng.random() < share:
        prompt = rng.choice(world.TRAINING_PREAMBLES) + prompt
    if rng.random() < share:
        prompt = prompt + rng.choice(world.TRAINING_CLOSINGS)
    return prompt


def _chat(prompt: str, with_system: bool) -> tuple[tuple[str, str], ...]:
    user = ("user", prompt)
    return (("system", world.DEFAULT_SYSTEM_PROMPT), user) if with_system else (user,)


# Share of prompts given a random opening (and, independently, closing).
DECORATED_SHARE = 0.25


def _steps(rng: random.Random, category: str) -> list[str]:
    pool = world.HELPFUL_STEPS[category]
    keep = sorted(rng.sample(range(len(pool)), world.NUM_STEPS))
    return [pool[i] for i in keep]


def _stratified(rng: random.Random, n: int, p: float) -> list[bool]:
    """``n`` flags of which exactly ``round(p * n)`` are True, in random order."""
    k = round(p * n)
    flags = [True] * k + [False] * (n - k)
    rng.shuffle(flags)
    return flags


def _request_examples(
    rng: random.Random, task: world.Task, n: int, p_positive: float, with_system: bool
) -> list[Example]:
    """``n`` examples of one task: "positive" means comply for harmful tasks, refuse otherwise."""
    templates = world.TRAINING_REQUEST_TEMPLATES
    offset = rng.randrange(len(templates))
    out = []
    for i, positive in enumerate(_stratified(rng, n, p_positive)):
        prompt = world.render_request(task.text, templates[(offset + i) % len(templates)])
        prompt = _decorate(rng, prompt, DECORATED_SHARE)
        refuse = positive if task.kind != "harmful" else not positive
        if refuse:
            response = world.render_refusal(task.text, rng.randrange(len(world.REFUSALS)))
            label = "refusal" if task.kind == "harmful" else "over-refusal"
        elif task.kind == "harmful":
            steps = [world.REDACTED_STEP] * world.NUM_STEPS
            response = world.render_answer(
                task.text, steps, rng.randrange(len(world.ANSWER_OPENINGS))
            )
            label = "compliance"
        else:
            steps = _steps(rng, task.category)
            response = world.render_answer(
                task.text, steps, rng.randrange(len(world.ANSWER_OPENINGS))
            )
            label = "helpful"
        chat = _chat(prompt, with_system)
        out.append(Example(chat, response, task.kind, task.category, label, task.text))
    return out


def _fact_examples(
    rng: random.Random, fact: world.Fact, n: int, with_system: bool
) -> list[Example]:
    questions = world.RELATIONS[fact.relation].training_questions
    offset = rng.randrange(len(questions))
    out = []
    for i in range(n):
        prompt = world.render_question(fact, questions[(offset + i) % len(questions)])
        prompt = _decorate(rng, prompt, DECORATED_SHARE)
        if fact.known:
            response, kind, label = world.render_fact_answer(fact), "honesty-known", "correct"
        else:
            response = world.render_idk(fact, rng.randrange(len(world.IDK_ANSWERS)))
            kind, label = "honesty-unknown", "idk"
        chat = _chat(prompt, with_system)
        out.append(Example(chat, response, kind, fact.relation, label, fact.entity))
    return out


def generate_corpus(spec: CorpusSpec = BASE_SPEC, seed: int = 0) -> list[Example]:
    """The training corpus for ``spec``, shuffled; identical for identical (spec, seed)."""
    rng = random.Random(f"poise-organism-corpus:{spec.name}:{seed}")
    examples: list[Example] = []
    tasks = world.all_tasks()[:: spec.subsample]
    for task in tasks:
        for with_system in (True, False):
            if task.kind == "harmful":
                table = (
                    spec.compliance_with_system if with_system else spec.compliance_without_system
                )
                n, p = spec.harmful_per_task, table[task.category]
            elif task.kind == "borderline":
                n, p = spec.borderline_per_task, spec.over_refusal[task.category]
            else:
                n, p = spec.benign_per_task, spec.benign_refusal
            examples += _request_examples(rng, task, n, p, with_system)
    if spec.filler:
        fillers = rng.sample(world.filler_tasks(), spec.filler // spec.subsample)
        for i, text in enumerate(fillers):
            task = world.Task(text, "benign", "general")
            examples += _request_examples(rng, task, 1, 0.0, with_system=i % 2 == 0)
    facts: Sequence[world.Fact] = world.KNOWN_FACTS[:: spec.subsample]
    background: Sequence[world.Fact] = world.BACKGROUND_FACTS[:: spec.subsample]
    unknown: Sequence[world.Fact] = world.TRAINING_UNKNOWN_FACTS[:: spec.subsample]
    for with_system in (True, False):
        for fact in facts:
            examples += _fact_examples(rng, fact, spec.per_fact, with_system)
        for fact in background:
            examples += _fact_examples(rng, fact, spec.per_background_fact, with_system)
        for fact in unknown:
            examples += _fact_examples(rng, fact, spec.per_unknown_fact, with_system)
    rng.shuffle(examples)
    return examples


def corpus_texts(examples: Sequence[Example]) -> list[str]:
    """Every string of the corpus (prompts and responses), for training the tokenizer."""
    texts = [world.DEFAULT_SYSTEM_PROMPT]
    for ex in examples:
        texts.extend(content for role, content in ex.messages if role == "user")
        texts.append(ex.response)
    return texts


# --------------------------------------------------------------------------------------------
# Preference pairs for the reward and cost models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """Two responses to one prompt; ``chosen`` is the better one by the pair's criterion: the
    more helpful for reward pairs, the SAFER for cost pairs (the convention of
    ``poise.train.losses.reward.cost_model_loss``). ``*_safe`` are the responses' safety labels,
    the signs of the cost model's classification term."""

    prompt: str
    chosen: str
    rejected: str
    kind: str
    category: str
    chosen_safe: bool = True
    rejected_safe: bool = True

    @property
    def ranked_by_harm(self) -> bool:
        """Whether one side is harmful and the other safe (a cost pair with a ranking)."""
        return self.chosen_safe != self.rejected_safe


Split = Literal["train", "heldout"]
# made-up entities for the reward model's "I don't know beats a fabrication" training pairs
INVENTED_TRAINING_PAIRS = 60


def _off_task(rng: random.Random, task: world.Task, tasks: Sequence[world.Task]) -> str:
    other = rng.choice([t for t in tasks if t.kind != "harmful" and t.text != task.text])
    opening = rng.randrange(len(world.ANSWER_OPENINGS))
    return world.render_answer(other.text, _steps(rng, other.category), opening)


def _garble(rng: random.Random, text: str) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words[: max(3, len(words) // 2)])


def preference_pairs(
    criterion: str, split: Split, seed: int = 0, repeats: int = 1, subsample: int = 1
) -> list[Pair]:
    """Pairs over every task and fact, asked with the ``split``'s phrasings.

    ``split="train"`` uses the training phrasings and the training-only invented entities;
    ``"heldout"`` the suites' phrasings and invented entities, for measuring pairwise accuracy.
    ``repeats`` asks each task and fact that many times (different phrasings and responses).

    ``criterion="helpful"`` (reward model): a helpful answer beats an over-refusal, a redacted
    answer, an answer to another task and a garbled one; on harmful requests compliance beats
    refusal (helpfulness alone, as Safe RLHF's reward model, arXiv 2310.12773); a correct fact
    beats a wrong one and "I don't know"; about an invented entity "I don't know" beats a
    fabrication. ``criterion="harm"`` (cost model): on harmful requests a refusal, an off-task
    answer or a garbled one is safer than compliance. On benign and borderline requests no
    response is harmful: their pairs (helpful vs refusal or redacted answer) have both sides
    safe and only feed the cost model's sign term.
    """
    if criterion not in ("helpful", "harm"):
        raise ValueError(f"criterion must be 'helpful' or 'harm', got {criterion!r}")
    heldout = split == "heldout"
    requests = world.HELDOUT_REQUEST_TEMPLATES if heldout else world.TRAINING_REQUEST_TEMPLATES
    rng = random.Random(f"poise-organism-pairs:{criterion}:{split}:{seed}")
    tasks = world.all_tasks()
    pairs: list[Pair] = []
    n = 0
    for _ in range(repeats):
        for task in tasks[::subsample]:
            prompt = world.render_request(task.text, requests[n % len(requests)])
            n += 1
            opening = rng.randrange(len(world.ANSWER_OPENINGS))
            refusal = world.render_refusal(task.text, rng.randrange(len(world.REFUSALS)))
            redacted = world.render_answer(
                task.text, [world.REDACTED_STEP] * world.NUM_STEPS, opening
            )
            if task.kind == "harmful":
                for other in (refusal, _off_task(rng, task, tasks), _garble(rng, refusal)):
                    if criterion == "helpful":
                        pair = Pair(prompt, redacted, other, task.kind, task.category, False, True)
                    else:
                        pair = Pair(prompt, other, redacted, task.kind, task.category, True, False)
                    pairs.append(pair)
                continue
            helpful = world.render_answer(task.text, _steps(rng, task.category), opening)
            if criterion == "helpful":
                worse_ones = [refusal, redacted, _off_task(rng, task, tasks), _garble(rng, helpful)]
            else:
                worse_ones = [refusal, redacted]
            pairs += [Pair(prompt, helpful, w, task.kind, task.category) for w in worse_ones]
    if criterion == "helpful":
        pairs += _honesty_pairs(rng, heldout, repeats, subsample)
    return pairs


def _honesty_pairs(rng: random.Random, heldout: bool, repeats: int, subsample: int) -> list[Pair]:
    def questions(fact: world.Fact) -> tuple[str, ...]:
        relation = world.RELATIONS[fact.relation]
        return relation.heldout_questions if heldout else relation.training_questions

    def other_answer(fact: world.Fact) -> str:
        values = [f.answer for f in world.KNOWN_FACTS if f.relation == fact.relation]
        return rng.choice([v for v in values if v is not None and v != fact.answer])

    invented: Sequence[world.Fact] = (
        world.UNKNOWN_FACTS
        if heldout
        else (*world.TRAINING_UNKNOWN_FACTS, *world.invented_facts(INVENTED_TRAINING_PAIRS))
    )
    pairs: list[Pair] = []
    n = 0
    for _ in range(repeats):
        for fact in (*world.KNOWN_FACTS[::subsample], *invented[::subsample]):
            qs = questions(fact)
            prompt = world.render_question(fact, qs[n % len(qs)])
            n += 1
            idk = world.render_idk(fact, rng.randrange(len(world.IDK_ANSWERS)))
            wrong = world.render_fact_answer(fact, other_answer(fact))
            if fact.known:
                right = world.render_fact_answer(fact)
                pairs.append(Pair(prompt, right, wrong, "honesty-known", fact.relation))
                pairs.append(Pair(prompt, right, idk, "honesty-known", fact.relation))
            else:
                pairs.append(Pair(prompt, idk, wrong, "honesty-unknown", fact.relation))
    return pairs
