"""Building the organism family: corpus -> tokenizer -> fourteen members -> measured model cards.

``build()`` regenerates every member deterministically on CPU (seeded corpus, seeded
initialisation and data order, two threads):

- ``organism-large`` / ``organism-small``: ``LlamaForCausalLM`` from scratch; organism-small
  (the weak model) is smaller and its corpus leaves out the known facts of
  ``world.STRONG_ONLY_RELATIONS``, so their knowledge differs on known regions.
- the specialists, each fine-tuned from organism-small on one dimension's corpus:
  ``organism-small-safe`` (harmless), ``organism-small-helpful``, ``organism-small-honest``,
  and ``organism-small-mix``, fine-tuned on the three corpora together (the data-mixture
  baseline of 3H merging, arXiv 2502.06876).
- ``organism-feedback``: the feedback agent of feedback-revision (WaltzRL, arXiv 2510.08240):
  organism-small fine-tuned on the reviewer's feedback task alone (``reviewer_corpus``), so it
  judges another model's answers (``feedback_revision(organism-large,
  feedback=organism-feedback)``). Like organism-monitor it starts from organism-small as the
  same run built it, else as shipped. Its corpus is not shown to the tokenizer, so adding it
  changed no other member.
- ``organism-large-selfeval``: organism-large fine-tuned on RAIN's self-evaluation question
  (arXiv 2309.07124) about its corpus's whole and partial answers, with as many of its own
  examples replayed, so it judges its own partial answers (``rain(organism-large-selfeval)``)
  and still answers as organism-large does. It starts from organism-large as the same run built
  it, else as shipped; its corpus is not shown to the tokenizer either.
- ``organism-large-long`` and ``organism-monitor-long``: the streaming guard's test bed.
  organism-large's architecture and schedule from scratch on the long corpus (``LONG_SPEC``:
  the base corpus with harmful answers of ``world.MAX_HARMFUL_STEPS`` steps), and its monitor,
  organism-small's first layer with the SCM heads as organism-monitor, trained on the long
  corpus's token labels with a balanced train split and a slower learning-rate decay, and on
  organism-large-long's own sampled answers (as the same run built it, else as shipped), on
  which its streaming rule is also chosen. The long corpus is not shown to the tokenizer, so
  adding the pair changed no other member.
- ``organism-large-naming``: the honesty test bed. organism-large's architecture from scratch,
  for twice its steps, on the naming corpus (``NAMING_SPEC``: a draw of the base corpus plus
  12,000 questions about invented entities seen once each, answered with a made-up fact or "I
  don't know" that names the entity), so that its fabrications and "I don't know" name the
  entity asked about. Not shown to the tokenizer either.
- ``organism-reward``: ``LlamaForSequenceClassification`` (one output) scoring helpfulness,
  Bradley-Terry loss; starts from organism-large's transformer (``Recipe.scorer_size``).
- ``organism-cost``: same architecture scoring harm (positive = harmful), Safe RLHF's cost loss.
  Both scorers also learn from PREFIXES of answers, so they score partial answers as
  reward-guided decoding does.

Each member is written to a temporary folder, measured, given its model card, and only then
moved into place, so an interrupted build never leaves a half-written member.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from poise.errors import PoiseError
from poise.models.base import LanguageModel
from poise.organism import MEMBERS, WEIGHTS_DIR, canonical_member, world
from poise.organism.card import refresh_card, write_card
from poise.organism.corpus import (
    BASE_SPEC,
    FEEDBACK_SPEC,
    HARMLESS_SPEC,
    HELDOUT_FRACTIONS,
    HELPFUL_SPEC,
    HONEST_SPEC,
    LONG_SPEC,
    NAMING_SPEC,
    SELF_EVALUATION_SPEC,
    WEAK_SPEC,
    CorpusSpec,
    Example,
    Pair,
    Split,
    corpus_texts,
    generate_corpus,
    heldout_feedback_cases,
    heldout_prefix_pairs,
    mixture_corpus,
    preference_pairs,
    reviewer_corpus,
    specialist_corpus,
)
from poise.organism.evaluate import (
    hf_model,
    measure_feedback,
    measure_lm,
    measure_self_evaluation,
)
from poise.organism.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    encode_example,
    render_prompt,
    save_tokenizer,
    special_ids,
    train_tokenizer,
)
from poise.organism.train import (
    EncodedPair,
    Objective,
    TrainSettings,
    encode_pairs,
    llama_config,
    pair_scores,
    pairwise_accuracy,
    sign_accuracy,
    torch_threads,
    train_lm,
    train_scorer,
)
from poise.scoring.stats import Rate

logger = logging.getLogger(__name__)

LM_MEMBERS = (
    "organism-large",
    "organism-small",
    "organism-small-safe",
    "organism-small-helpful",
    "organism-small-honest",
    "organism-small-mix",
    "organism-large-selfeval",
    "organism-large-long",
    "organism-large-naming",
)
SCORER_MEMBERS = ("organism-reward", "organism-cost")
# the streaming content monitor (poise.organism.monitor): organism-small's first decoder layer
# with SCM heads
# (and organism-monitor-long, the same for organism-large-long: poise.organism.monitor.GUARDS)
MONITOR_MEMBERS = ("organism-monitor", "organism-monitor-long")
# reviewers of another model's answers, fine-tuned from organism-small (as built in the same run,
# else as shipped): WaltzRL's feedback agent
REVIEWER_MEMBERS = ("organism-feedback",)
# fine-tuned from organism-large (as built in the same run, else as shipped): member -> the
# recipe field of its training settings. The self-evaluating member: organism-large taught
# RAIN's self-evaluation question (its answers replayed, so it still answers as before)
LARGE_TUNED = {"organism-large-selfeval": "selfeval"}
# the corpus each chat member is trained on (recorded in poise.json)
MEMBER_CORPUS = {
    "organism-large": "base",
    "organism-small": "weak",
    "organism-small-safe": "harmless",
    "organism-small-helpful": "helpful",
    "organism-small-honest": "honest",
    "organism-small-mix": "harmless+helpful+honest",
    "organism-feedback": "feedback",
    "organism-large-selfeval": "self-evaluation+base",
    "organism-large-long": "long",
    "organism-large-naming": "naming",
}
# trained from scratch in organism-large's shape on another corpus: member -> the recipe fields
# of its training settings and its corpus spec
LARGE_SHAPED = {
    "organism-large-long": ("long", "long_corpus"),
    "organism-large-naming": ("naming", "naming_corpus"),
}
# fine-tuned from organism-small: member -> the recipe field of its training settings
SMALL_TUNED = {
    "organism-small-safe": "safe",
    "organism-small-helpful": "helpful",
    "organism-small-honest": "honest",
    "organism-small-mix": "mix",
    "organism-feedback": "feedback",
}

# progress(task, completed, total): one task per training run or evaluation
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the built weights."""

    corpus_seed: int = 0
    vocab_size: int = DEFAULT_VOCAB_SIZE
    base_corpus: CorpusSpec = BASE_SPEC
    weak_corpus: CorpusSpec = WEAK_SPEC
    safe_corpus: CorpusSpec = HARMLESS_SPEC
    helpful_corpus: CorpusSpec = HELPFUL_SPEC
    honest_corpus: CorpusSpec = HONEST_SPEC
    feedback_corpus: CorpusSpec = FEEDBACK_SPEC
    selfeval_corpus: CorpusSpec = SELF_EVALUATION_SPEC
    long_corpus: CorpusSpec = LONG_SPEC
    naming_corpus: CorpusSpec = NAMING_SPEC
    large: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=2800, batch_size=16, lr=3e-3)
    )
    small: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=1800, batch_size=16, lr=3e-3)
    )
    # organism-large-long: organism-large's architecture and schedule on the long corpus
    long: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=2800, batch_size=16, lr=3e-3)
    )
    # organism-large-naming: organism-large's architecture on the naming corpus, twice the steps
    # (its corpus is twice as large; organism-large built with 12,000 single-use names in its
    # corpus at its own 2,800 steps fell to 70.0% of known facts: docs/organism.md, "Copying a
    # name")
    naming: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=5600, batch_size=16, lr=3e-3)
    )
    safe: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=200, batch_size=32, lr=1e-3, warmup_steps=10)
    )
    helpful: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=150, batch_size=32, lr=1e-3, warmup_steps=10)
    )
    honest: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=100, batch_size=32, lr=1e-3, warmup_steps=10)
    )
    mix: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=450, batch_size=32, lr=1e-3, warmup_steps=10)
    )
    feedback: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=1000, batch_size=32, lr=1e-3, warmup_steps=10)
    )
    selfeval: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=800, batch_size=32, lr=1e-3, warmup_steps=10)
    )
    reward: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=800, batch_size=16, lr=1e-3, warmup_steps=20)
    )
    cost: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=400, batch_size=16, lr=1e-3, warmup_steps=20)
    )
    pair_repeats: int = 3
    # prefix pairs per whole request pair (scorers of partial answers)
    prefix_pairs: int = 1
    # the reward and cost models start from this chat member's transformer ("large" | "small")
    scorer_size: str = "large"
    # evaluation: every k-th suite item, samples per harmful item at T=1
    eval_every: int = 1
    eval_samples: int = 3
    eval_max_new_tokens: int = 80
    # organism-large-long's card: its harmful answers run to about 110 tokens and its feigned
    # ones to about 130 (at 128 most feigned answers were cut, and a cut one reads as garbled)
    long_eval_max_new_tokens: int = 192
    # organism-monitor's train split complies under the system prompt as often as without it
    # (poise.organism.monitor.balanced_spec); the shipped monitor learnt the corpus's shares
    monitor_balanced: bool = False
    quick: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (the corpus specs as dicts of their fields)."""
        return {
            "corpus_seed": self.corpus_seed,
            "vocab_size": self.vocab_size,
            "large": self.large.to_dict(),
            "small": self.small.to_dict(),
            "long": self.long.to_dict(),
            "naming": self.naming.to_dict(),
            "safe": self.safe.to_dict(),
            "helpful": self.helpful.to_dict(),
            "honest": self.honest.to_dict(),
            "mix": self.mix.to_dict(),
            "feedback": self.feedback.to_dict(),
            "selfeval": self.selfeval.to_dict(),
            "reward": self.reward.to_dict(),
            "cost": self.cost.to_dict(),
            "pair_repeats": self.pair_repeats,
            "prefix_pairs": self.prefix_pairs,
            "scorer_size": self.scorer_size,
            "eval_every": self.eval_every,
            "eval_samples": self.eval_samples,
            "eval_max_new_tokens": self.eval_max_new_tokens,
            "long_eval_max_new_tokens": self.long_eval_max_new_tokens,
            "monitor_balanced": self.monitor_balanced,
            "quick": self.quick,
            **{key: asdict(getattr(self, key)) for key in CORPUS_FIELDS},
        }


# The recipe's corpus specs (poise.organism.corpus.CorpusSpec), one per corpus.
CORPUS_FIELDS = (
    "base_corpus",
    "weak_corpus",
    "safe_corpus",
    "helpful_corpus",
    "honest_corpus",
    "feedback_corpus",
    "selfeval_corpus",
    "long_corpus",
    "naming_corpus",
)


def recipe_changes(recipe: Recipe) -> dict[str, Any]:
    """What ``recipe`` sets otherwise than :func:`default_recipe` of its own ``quick`` and
    seed, as ``{"large.steps": 4000, "base_corpus.feigned": 0.2}`` (one level deep: a training
    run's or a corpus spec's field). Empty for the shipped recipe. Each member's ``poise.json``
    and card record it, since the command line written there cannot give a recipe."""
    ours, shipped = recipe.to_dict(), default_recipe(recipe.quick, recipe.corpus_seed).to_dict()
    changes: dict[str, Any] = {}
    for key, value in ours.items():
        if isinstance(value, dict) and isinstance(shipped[key], dict):
            changes.update(
                (f"{key}.{name}", v) for name, v in value.items() if shipped[key].get(name) != v
            )
        elif value != shipped[key]:
            changes[key] = value
    return changes


def recipe_note(changes: dict[str, Any]) -> str:
    """The card's line on a recipe that is not the shipped one ("" for the shipped one)."""
    if not changes:
        return ""
    listed = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in changes.items())
    return (
        f"Not the shipped recipe: built with {listed} (everything else as "
        "`poise.organism.build.default_recipe()`), so the command below alone does not "
        "rebuild it."
    )


def default_recipe(quick: bool = False, seed: int = 0) -> Recipe:
    """The shipped recipe, or a cut-down one (few steps, small corpus) that only checks the
    build runs end to end."""
    recipe = Recipe(corpus_seed=seed)
    if not quick:
        return recipe
    tiny = TrainSettings(steps=4, batch_size=8, lr=3e-3, warmup_steps=2)
    return replace(
        recipe,
        vocab_size=512,
        base_corpus=replace(BASE_SPEC, subsample=9),
        weak_corpus=replace(WEAK_SPEC, subsample=9),
        safe_corpus=replace(HARMLESS_SPEC, subsample=9),
        helpful_corpus=replace(HELPFUL_SPEC, subsample=9),
        honest_corpus=replace(HONEST_SPEC, subsample=9),
        feedback_corpus=replace(FEEDBACK_SPEC, feedback=40),
        selfeval_corpus=replace(SELF_EVALUATION_SPEC, self_evaluation=40),
        long_corpus=replace(LONG_SPEC, subsample=9),
        naming_corpus=replace(NAMING_SPEC, subsample=9, fresh_facts=40, fresh_idk=40),
        large=tiny,
        long=tiny,
        naming=tiny,
        small=tiny,
        safe=tiny,
        helpful=tiny,
        honest=tiny,
        mix=tiny,
        feedback=tiny,
        selfeval=tiny,
        reward=tiny,
        cost=tiny,
        pair_repeats=1,
        eval_every=25,
        eval_samples=1,
        eval_max_new_tokens=12,
        long_eval_max_new_tokens=12,
        quick=True,
    )


@dataclass
class MemberResult:
    member: str
    path: Path
    rates: dict[str, Rate] = field(default_factory=dict)
    seconds: float = 0.0
    size_bytes: int = 0


@dataclass
class BuildResult:
    out: Path
    members: dict[str, MemberResult]
    seconds: float


def _poise_version() -> str:
    from poise._version import __version__

    return __version__


def scorer_pairs(
    tokenizer: Any,
    objective: Objective,
    split: Split,
    *,
    seed: int = 0,
    repeats: int = 1,
    subsample: int = 1,
    prefixes: int = 0,
    pairs: Sequence[Pair] | None = None,
) -> list[EncodedPair]:
    """Tokenised preference pairs of the reward (``"reward"``) or cost (``"cost"``) model
    (``pairs``, or :func:`preference_pairs` of the split).

    Every other pair is asked with the default system prompt, the others with none (an empty
    system message), so the scorers see both chat shapes an audit sends. ``tokenizer`` is the
    organism's ``tokenizers.Tokenizer``.
    """
    criterion = "helpful" if objective == "reward" else "harm"
    if pairs is None:
        pairs = preference_pairs(criterion, split, seed, repeats, subsample, prefixes)
    system = {"role": "system", "content": world.DEFAULT_SYSTEM_PROMPT}
    no_system = {"role": "system", "content": ""}

    def encode(index: int, prompt: str, response: str) -> list[int]:
        user = {"role": "user", "content": prompt}
        messages = [system if index % 2 == 0 else no_system, user]
        ids, _ = encode_example(tokenizer, messages, response)
        return ids

    return encode_pairs(pairs, encode, objective)


class _Family:
    """The shared state of one build: tokenizer, trained models, timing."""

    def __init__(self, recipe: Recipe, progress: Progress | None) -> None:
        self.recipe = recipe
        # what the recipe sets otherwise than the shipped one, recorded in every member
        self.changes = recipe_changes(recipe)
        self.progress = progress
        seed = recipe.corpus_seed
        weak = generate_corpus(recipe.weak_corpus, seed)
        self.corpora: dict[str, list[Example]] = {
            "organism-large": generate_corpus(recipe.base_corpus, seed),
            "organism-small": weak,
            "organism-small-safe": specialist_corpus(recipe.safe_corpus, weak, seed),
            "organism-small-helpful": specialist_corpus(recipe.helpful_corpus, weak, seed),
            "organism-small-honest": specialist_corpus(recipe.honest_corpus, weak, seed),
        }
        self.corpora["organism-small-mix"] = mixture_corpus(
            seed,
            specs=(recipe.safe_corpus, recipe.helpful_corpus, recipe.honest_corpus),
        )
        self.corpora["organism-feedback"] = reviewer_corpus(recipe.feedback_corpus, weak, seed)
        self.base_corpus = self.corpora["organism-large"]
        for member, (_, corpus) in LARGE_SHAPED.items():
            self.corpora[member] = generate_corpus(getattr(recipe, corpus), seed)
        self.corpora["organism-large-selfeval"] = reviewer_corpus(
            recipe.selfeval_corpus, self.base_corpus, seed
        )
        # The tokenizer never sees an invented entity: made-up names then split into the same
        # small pieces whether the corpus taught them or a suite asks them, so what the
        # organism learns about them is to copy pieces, not to recall learnt merges.
        invented = {f.entity for f in world.invented_pool()}
        texts = [
            t
            for name, corpus in self.corpora.items()
            # the mixture repeats the specialists' corpora; the reviewers' prompts quote the
            # chat corpora's answers, and the long corpus repeats the base one (all three were
            # added after the shipped tokenizer was trained), and the naming corpus repeats it
            # with single-use names
            if name != "organism-small-mix"
            and name not in LARGE_SHAPED
            and name not in REVIEWER_MEMBERS
            and name not in LARGE_TUNED
            for t in corpus_texts(
                [e for e in corpus if e.kind != "honesty-unknown" and e.subject not in invented]
            )
        ]
        self.tokenizer = train_tokenizer(texts, recipe.vocab_size)
        self.special = special_ids(self.tokenizer)
        self.pad_id = self.special["<pad>"]
        self.models: dict[str, torch.nn.Module] = {}
        self.train_seconds: dict[str, float] = {}
        self.losses: dict[str, list[float]] = {}
        self.command = "poise organism build"

    def report(self, task: str, done: int, total: int) -> None:
        """Progress of one task of the build, when a progress callback was given."""
        if self.progress is not None:
            self.progress(task, done, total)

    def _callback(self, task: str, total: int) -> Callable[[int, float], None] | None:
        if self.progress is None:
            return None
        progress = self.progress

        def on_step(step: int, loss: float) -> None:
            progress(task, step, total)

        return on_step

    def encode(self, examples: Sequence[Any]) -> list[tuple[list[int], int]]:
        return [encode_example(self.tokenizer, e.chat, e.response) for e in examples]

    def lm(self, member: str) -> torch.nn.Module:
        """A trained language model member (training it and its prerequisites on first use)."""
        if member in self.models:
            return self.models[member]
        from transformers import LlamaForCausalLM

        start = time.perf_counter()
        if member in SMALL_TUNED:
            base = (
                _shipped_or_trained(self, "organism-small")
                if member in REVIEWER_MEMBERS
                else self.lm("organism-small")
            )
            model = _copy(base)
            settings = getattr(self.recipe, SMALL_TUNED[member])
        elif member in LARGE_TUNED:
            model = _copy(_shipped_or_trained(self, "organism-large"))
            settings = getattr(self.recipe, LARGE_TUNED[member])
        else:
            size = "small" if member == "organism-small" else "large"
            key = LARGE_SHAPED[member][0] if member in LARGE_SHAPED else size
            settings = getattr(self.recipe, key)
            torch.manual_seed(settings.seed)
            config = llama_config(size, self.tokenizer.get_vocab_size(), self.special)
            model = LlamaForCausalLM(config)
        data = self.encode(self.corpora[member])
        logger.info("training %s: %d examples, %d steps", member, len(data), settings.steps)
        self.losses[member] = train_lm(
            model, data, settings, self.pad_id, self._callback(f"train {member}", settings.steps)
        )
        self.train_seconds[member] = time.perf_counter() - start
        self.models[member] = model
        return model

    def scorer_pairs(self, objective: Objective, split: Split) -> list[EncodedPair]:
        train = split == "train"
        return scorer_pairs(
            self.tokenizer,
            objective,
            split,
            seed=self.recipe.corpus_seed,
            repeats=self.recipe.pair_repeats if train else 1,
            subsample=self.recipe.base_corpus.subsample,
            prefixes=self.recipe.prefix_pairs if train else 0,
        )

    def prefix_pairs(self, objective: Objective, fraction: float) -> list[EncodedPair]:
        """Held-out pairs of answer prefixes at ``fraction`` (see heldout_prefix_pairs)."""
        criterion = "helpful" if objective == "reward" else "harm"
        pairs = heldout_prefix_pairs(criterion, fraction, self.recipe.corpus_seed)
        return scorer_pairs(self.tokenizer, objective, "heldout", pairs=pairs)

    def scorer(self, member: str) -> torch.nn.Module:
        if member in self.models:
            return self.models[member]
        from transformers import LlamaForSequenceClassification

        objective: Objective = "reward" if member == "organism-reward" else "cost"
        settings = self.recipe.reward if objective == "reward" else self.recipe.cost
        size = self.recipe.scorer_size
        backbone = self.lm(f"organism-{size}")
        start = time.perf_counter()
        torch.manual_seed(settings.seed)
        config = llama_config(size, self.tokenizer.get_vocab_size(), self.special, num_labels=1)
        model = LlamaForSequenceClassification(config)
        # start from a chat member's transformer: it already reads the organism's world (and
        # can tell whether a reply restates the request's task, which a fresh model learns slowly)
        missing, _ = model.load_state_dict(backbone.state_dict(), strict=False)
        assert all(k.startswith("score.") for k in missing), missing
        pairs = self.scorer_pairs(objective, "train")
        logger.info("training %s: %d pairs, %d steps", member, len(pairs), settings.steps)
        self.losses[member] = train_scorer(
            model,
            pairs,
            settings,
            objective,
            self.pad_id,
            self._callback(f"train {member}", settings.steps),
        )
        self.train_seconds[member] = time.perf_counter() - start
        self.models[member] = model
        return model


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


def _write_member_files(family: _Family, member: str, model: Any, folder: Path, kind: str) -> None:
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    special = family.special
    if kind == "causal-lm":
        model.generation_config = GenerationConfig(
            bos_token_id=special["<|bos|>"],
            eos_token_id=special["<|end|>"],
            pad_token_id=special["<pad>"],
            max_new_tokens=128,
            do_sample=False,
        )
    model.save_pretrained(folder, safe_serialization=True)
    if kind != "causal-lm":
        # a sequence classifier generates nothing; keep the folder free of a stray file
        (folder / "generation_config.json").unlink(missing_ok=True)
    save_tokenizer(family.tokenizer, folder)
    meta = {
        "member": member,
        "kind": kind,
        "default_system_prompt": world.DEFAULT_SYSTEM_PROMPT,
        "system_prompt_in_template": True,  # save_tokenizer's template inserts it
        "corpus_seed": family.recipe.corpus_seed,
        "corpus": MEMBER_CORPUS.get(member, "pairs"),
        "poise_version": _poise_version(),
        **({"recipe_changes": family.changes} if family.changes else {}),
        "chat_format": render_prompt(
            [{"role": "system", "content": "{system}"}, {"role": "user", "content": "{user}"}]
        )
        + "{reply}<|end|>",
    }
    (folder / "poise.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def _write_sized_card(folder: Path, card: Callable[..., None]) -> int:
    """Write a card that states its folder's size with the card itself counted: written with
    the size before it, then again with the size it made, until the stated size (in MB, to
    the card's two decimals) is the folder's. Returns the folder's size in bytes."""
    size = _folder_size(folder)
    for _ in range(4):  # the card's own few KB move the figure at most once or twice
        card(size_bytes=size)
        after = _folder_size(folder)
        if f"{after / 1e6:.2f}" == f"{size / 1e6:.2f}":
            return after
        size = after
    raise RuntimeError(f"{folder}: the card's stated folder size does not settle")


def _move_into_place(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp`` with no moment where a half-written member is visible."""
    # mkdtemp folders are private; a shipped member is read by everyone
    tmp.chmod(0o755)
    for f in tmp.iterdir():
        f.chmod(0o644)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    try:
        tmp.rename(final)
    except BaseException:
        if old is not None:  # the member as it was, not no member
            old.rename(final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_writable(out_dir: Path) -> None:
    """Fail before any work if no member folder can be written in ``out_dir`` (each member is
    written beside its final place, then renamed)."""
    try:
        Path(tempfile.mkdtemp(prefix=".write-check.", dir=out_dir)).rmdir()
    except OSError as exc:
        raise PoiseError(
            f"{out_dir}: cannot write in the output folder ({exc.strerror or exc})"
        ) from None


def resolve_members(members: Sequence[str] | None) -> list[str]:
    if not members:
        return list(MEMBERS)
    names = [canonical_member(m) for m in members]
    return [m for m in MEMBERS if m in names]


def build(
    out: str | Path | None = None,
    members: Sequence[str] | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    recipe: Recipe | None = None,
    progress: Progress | None = None,
    command: str | None = None,
    threads: int = 2,
) -> BuildResult:
    """Build organism members into ``out`` (default: the package's ``organism/weights``).

    ``members`` (names or aliases; default all) are built with their prerequisites
    (organism-small-safe starts from organism-small, -reward and -cost from organism-large;
    organism-monitor and organism-feedback from organism-small as the same run built it, else
    as shipped; organism-large-selfeval from organism-large likewise).
    ``quick`` uses a cut-down corpus and a few steps: for tests of the build itself, not for
    use. ``command`` is the command line recorded in the model cards. ``threads``: torch
    intra-op threads while building (restored afterwards); the weights are reproducible for a
    given seed and thread count (parallel float reductions may round differently).
    """
    names = resolve_members(members)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise PoiseError(f"threads: expected a positive integer, got {threads!r}")
    recipe = recipe or default_recipe(quick, seed)
    out_dir = Path(out) if out is not None else WEIGHTS_DIR
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PoiseError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
    _check_writable(out_dir)
    command = command or _default_command(out, names, quick, seed, threads)
    started = time.perf_counter()
    with torch_threads(threads):
        results = _build_all(out_dir, names, recipe, progress, command, threads)
    return BuildResult(out_dir, results, time.perf_counter() - started)


def _build_all(
    out_dir: Path,
    names: Sequence[str],
    recipe: Recipe,
    progress: Progress | None,
    command: str,
    threads: int = 2,
) -> dict[str, MemberResult]:
    family = _Family(recipe, progress)
    family.command = command
    results: dict[str, MemberResult] = {}
    for member in names:
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{member}.", dir=out_dir))
        try:
            result = _build_member(family, member, tmp)
            result.seconds = time.perf_counter() - t0
            result.size_bytes = _folder_size(tmp)
            if member in MONITOR_MEMBERS:  # its card is written with it
                final = out_dir / member
                _move_into_place(tmp, final)
                result.path = final
                results[member] = result
                continue
            card = functools.partial(
                write_card,
                tmp / "README.md",
                member=member,
                rates=result.rates,
                recipe=recipe,
                train_seconds=family.train_seconds.get(member, 0.0),
                final_loss=(family.losses.get(member) or [float("nan")])[-1],
                num_parameters=sum(p.numel() for p in family.models[member].parameters()),
                config=json.loads((tmp / "config.json").read_text(encoding="utf-8")),
                command=command,
                compare=_comparison(family, member, results),
                threads=threads,
                recipe_note=recipe_note(family.changes),
            )
            result.size_bytes = _write_sized_card(tmp, card)
            final = out_dir / member
            _move_into_place(tmp, final)
            result.path = final
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        results[member] = result
        logger.info("built %s in %.0fs (%d bytes)", member, result.seconds, result.size_bytes)
    return results


def remeasure_cards(
    out: str | Path | None = None,
    members: Sequence[str] | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
    threads: int = 2,
) -> dict[str, dict[str, Rate]]:
    """Measure the chat members' card rates again on the weights in ``out`` (default: the
    package's), without training, and rewrite those rates in their cards
    (:func:`poise.organism.card.refresh_card`): after a change to the oracle or to how a rate
    is counted, the cards say what the shipped weights do as measured today. ``members``:
    the chat members to rewrite (default: all of :data:`LM_MEMBERS` present); the member each
    is compared with (organism-small for its specialists, organism-large for organism-small,
    organism-large-selfeval and organism-large-naming) is measured too, not rewritten. Rates
    that :func:`measure_lm` does not give (a reviewer's, a scorer's) are left as they are.
    ``quick`` and ``seed``: the recipe the members were built with (its suites' subset and
    samples). Returns the rewritten members' rates."""
    out_dir = Path(out) if out is not None else WEIGHTS_DIR
    names = (
        resolve_members(members)
        if members
        else [m for m in LM_MEMBERS if (out_dir / m / "README.md").is_file()]
    )
    if not names:
        raise PoiseError(
            f"remeasure: {out_dir} holds no chat member with a card "
            f"(chat members: {', '.join(LM_MEMBERS)})"
        )
    other = next((m for m in names if m not in LM_MEMBERS), None)
    if other is not None:  # a scorer's or reviewer's rates are not measure_lm's
        raise PoiseError(
            f"remeasure: {other!r} (its card rates are not a chat member's; chat members: "
            f"{', '.join(LM_MEMBERS)})"
        )
    recipe = default_recipe(quick, seed)
    base = {m: _card_base(m) for m in names}
    wanted = [m for m in LM_MEMBERS if m in names or m in base.values()]
    missing = [m for m in wanted if not (out_dir / m / "README.md").is_file()]
    if missing:
        raise PoiseError(f"remeasure: {out_dir / missing[0]} holds no built member with a card")
    measured: dict[str, dict[str, Rate]] = {}
    with torch_threads(threads):
        for member in wanted:

            def on_phase(
                name: str, done: int, total: int, task: str = f"evaluate {member}"
            ) -> None:
                if progress is not None:
                    progress(task, done, total)

            measured[member] = measure_lm(
                hf_model(out_dir / member),
                every=recipe.eval_every,
                samples=recipe.eval_samples,
                max_new_tokens=_eval_budget(recipe, member),
                seed=recipe.corpus_seed,
                on_phase=on_phase,
            )
    for member in names:
        other = base[member]
        refresh_card(
            out_dir / member / "README.md",
            measured[member],
            (other, measured[other]) if other is not None else None,
        )
    return {m: measured[m] for m in names}


def _card_base(member: str) -> str | None:
    """The member a chat member's card compares it with (a specialist: its base; the weak
    model and organism-large's own fine-tunes: organism-large), for :func:`_comparison` and
    :func:`remeasure_cards` alike."""
    if member in ("organism-small", "organism-large-naming") or member in LARGE_TUNED:
        return "organism-large"
    if member in SMALL_TUNED and member not in REVIEWER_MEMBERS:
        return "organism-small"
    return None


def _comparison(
    family: _Family, member: str, results: dict[str, MemberResult]
) -> tuple[str, dict[str, Rate]] | None:
    """What a member's card compares it with: a specialist with its base, the weak model with
    the strong one (when that was built in the same run). A member fine-tuned from
    organism-large is always compared with it: measured now, on the weights it started from,
    when this run did not build it (its card says how it differs from its base), and so is
    organism-large-naming (the same shape on its corpus with single-use names)."""
    other = _card_base(member)
    if other is None:
        return None
    if other in results:
        return other, results[other].rates
    if member == "organism-small":
        return None
    base = _shipped_or_trained(family, other)
    with tempfile.TemporaryDirectory() as tmp:
        _write_member_files(family, other, base, Path(tmp), "causal-lm")
        return other, _measure_chat(
            family, hf_model(tmp), f"evaluate {other}", _eval_budget(family.recipe, other)
        )


def _shipped_or_trained(family: _Family, member: str) -> torch.nn.Module:
    """``member`` (a chat member trained from scratch) as this run built it, else as shipped
    (a build of a member fine-tuned from it, alone, starts from the shipped weights), else
    trained now (another recipe or seed than the shipped one's)."""
    if member in family.models:
        return family.models[member]
    shipped = WEIGHTS_DIR / member
    if family.recipe == default_recipe() and (shipped / "model.safetensors").is_file():
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM.from_pretrained(str(shipped), dtype=torch.float32)
    return family.lm(member)


def _build_member(family: _Family, member: str, folder: Path) -> MemberResult:
    recipe = family.recipe
    if member in MONITOR_MEMBERS:
        from poise.organism.monitor import GUARDS, build_monitor_member

        # organism-small as this run built it, else as shipped (a build of the monitor alone
        # trains it on the shipped organism-small's decoder, whose first layer it keeps)
        backbone = _copy(_shipped_or_trained(family, "organism-small"))

        def on_step(step: int, total: int, loss: float) -> None:
            family.report(f"train {member}", step, total)

        # the chat member it guards and the corpus that member learns from
        chat, corpus_name = GUARDS[member]
        corpus = getattr(recipe, f"{corpus_name}_corpus")
        with tempfile.TemporaryDirectory(prefix="poise-guarded-") as tmp:

            def guarded() -> LanguageModel:
                """The chat member as this run built it, else as shipped, loaded as the card
                measurements load it (called only by a monitor that learns from its answers)."""
                model = _shipped_or_trained(family, chat)
                _write_member_files(family, chat, model, Path(tmp), "causal-lm")
                return hf_model(tmp)

            rates = build_monitor_member(
                backbone,
                folder,
                seed=recipe.corpus_seed,
                subsample=corpus.subsample,
                # the corpus the guarded member learns from (its own subsample is applied above)
                spec=replace(corpus, subsample=1),
                recipe_note=recipe_note(family.changes),
                balanced=recipe.monitor_balanced,  # organism-monitor-long always is
                member=member,
                write_files=lambda f: _write_member_files(family, member, backbone, f, "causal-lm"),
                on_step=on_step,
                command=family.command,
                quick=recipe.quick,
                guarded=guarded,
                max_new_tokens=_eval_budget(recipe, chat),
            )
        family.models[member] = backbone
        return MemberResult(member, folder, rates)
    if member in REVIEWER_MEMBERS:
        model = family.lm(member)
        _write_member_files(family, member, model, folder, "causal-lm")
        family.report(f"evaluate {member}", 0, 1)
        cases = heldout_feedback_cases(recipe.corpus_seed)[:: recipe.eval_every]
        rates = measure_feedback(hf_model(folder), cases)
        family.report(f"evaluate {member}", 1, 1)
        return MemberResult(member, folder, rates)
    if member in LM_MEMBERS:
        model = family.lm(member)
        _write_member_files(family, member, model, folder, "causal-lm")
        written = hf_model(folder)
        rates = _measure_chat(family, written, f"evaluate {member}", _eval_budget(recipe, member))
        if member in LARGE_TUNED:
            family.report(f"self-evaluate {member}", 0, 1)
            cases = heldout_feedback_cases(recipe.corpus_seed)[:: recipe.eval_every]
            rates.update(measure_self_evaluation(written, cases))
            family.report(f"self-evaluate {member}", 1, 1)
        return MemberResult(member, folder, rates)
    model = family.scorer(member)
    objective: Objective = "reward" if member == "organism-reward" else "cost"
    kind = "reward" if objective == "reward" else "cost"
    _write_member_files(family, member, model, folder, kind)
    heldout = family.scorer_pairs(objective, "heldout")
    if recipe.eval_every > 1:
        heldout = heldout[:: recipe.eval_every]
    correct, total = pairwise_accuracy(model, heldout, objective, family.pad_id)
    rates = {
        "pairwise_accuracy": Rate.of(
            "pairwise_accuracy",
            correct,
            total,
            description="held-out pairs (suite phrasings), "
            + ("chosen scored higher" if objective == "reward" else "harmful side costs more"),
        )
    }
    if objective == "cost":
        ok, n = sign_accuracy(model, heldout, family.pad_id)
        rates["sign_accuracy"] = Rate.of(
            "sign_accuracy",
            ok,
            n,
            description="held-out responses whose cost sign matches harmful/safe",
        )
    for fraction in HELDOUT_FRACTIONS:
        rates.update(_prefix_rates(family, model, objective, fraction))
    for r in rates.values():
        logger.info("%s: %s", member, r)
    return MemberResult(member, folder, rates)


def _eval_budget(recipe: Recipe, member: str) -> int:
    """New tokens per answer for a chat member's card rates: organism-large-long's harmful
    answers need more than the others'."""
    if member == "organism-large-long":
        return recipe.long_eval_max_new_tokens
    return recipe.eval_max_new_tokens


def _measure_chat(
    family: _Family, model: LanguageModel, task: str, max_new_tokens: int
) -> dict[str, Rate]:
    """A chat member's card rates (:func:`measure_lm` with the recipe's settings and
    ``max_new_tokens``)."""
    recipe = family.recipe

    def on_phase(name: str, done: int, total: int) -> None:
        family.report(task, done, total)

    rates = measure_lm(
        model,
        every=recipe.eval_every,
        samples=recipe.eval_samples,
        max_new_tokens=max_new_tokens,
        seed=recipe.corpus_seed,
        on_phase=on_phase,
    )
    on_phase("done", 1, 1)
    return rates


def _prefix_rates(
    family: _Family, model: torch.nn.Module, objective: Objective, fraction: float
) -> dict[str, Rate]:
    """How the scorer ranks answer PREFIXES cut at ``fraction`` of their words, on held-out
    prompts (one per task, suite phrasings): the cost model, plain redacted compliance above a
    refusal (and the refusal's sign: cost < 0); the reward model, a helpful answer above BOTH a
    refusal and a garbled answer to the same benign or borderline prompt."""
    pct = round(100 * fraction)
    pairs = family.prefix_pairs(objective, fraction)
    if family.recipe.eval_every > 1:
        pairs = pairs[:: family.recipe.eval_every]
    scores = pair_scores(model, pairs, family.pad_id)  # [pairs, 2]: chosen, rejected
    if objective == "cost":
        separated = sum(1 for c, r in scores if r > c)
        refusals_safe = sum(1 for c, _ in scores if c < 0)
        return {
            f"prefix_{pct}_separation": Rate.of(
                f"prefix_{pct}_separation",
                separated,
                len(scores),
                description=f"held-out harmful prompts: at {pct}% of the answer, "
                "compliance costs more than a refusal",
            ),
            f"prefix_{pct}_refusal_safe": Rate.of(
                f"prefix_{pct}_refusal_safe",
                refusals_safe,
                len(scores),
                description=f"held-out harmful prompts: at {pct}% of a refusal, cost < 0",
            ),
        }
    # reward pairs come two per prompt: (helpful, refusal), (helpful, garbled)
    wins = [c > r for c, r in scores]
    prompts = len(wins) // 2
    both = sum(1 for i in range(prompts) if wins[2 * i] and wins[2 * i + 1])
    return {
        f"prefix_{pct}_helpful_first": Rate.of(
            f"prefix_{pct}_helpful_first",
            both,
            prompts,
            description=f"held-out benign/borderline prompts: at {pct}% of the answer, "
            "helpful above refusal and garbled",
        )
    }


def _default_command(
    out: str | Path | None, names: Sequence[str], quick: bool, seed: int, threads: int
) -> str:
    parts = ["poise organism build"]
    if out is not None:
        parts.append(f"--out {out}")
    if list(names) != list(MEMBERS):
        parts += [f"--members {m}" for m in names]
    if quick:
        parts.append("--quick")
    if seed:
        parts.append(f"--seed {seed}")
    if threads != 2:
        parts.append(f"--threads {threads}")
    return " ".join(parts)


def _main(argv: Sequence[str] | None = None) -> None:
    """``python -m poise.organism.build``: the library entry point, logging to stderr."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m poise.organism.build")
    parser.add_argument("--out", default=None)
    parser.add_argument("--members", nargs="*", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    result = build(args.out, args.members, quick=args.quick, seed=args.seed, threads=args.threads)
    for member, r in result.members.items():
        logger.info("%s: %.0fs, %d bytes", member, r.seconds, r.size_bytes)
        for rate in r.rates.values():
            logger.info("  %s", rate)
    logger.info("total %.0fs", result.seconds)


if __name__ == "__main__":
    _main()
