"""Can organism-large's shape learn to copy a new name into a fact answer at all? (organism issue)

``benchmarks/organism_naming.py`` tunes the shipped organism-large; this script asks the question
before that one. It trains a NEW model of organism-large's shape (``train.SIZES["large"]``, the
shipped tokenizer) from scratch on nothing but questions about single-use invented entities
(``world.fresh_invented_facts``: two thirds answered with a made-up fact, a third with "I don't
know", both naming the entity; half with the default system prompt), so that copying the name
is the only way to lower the loss on it. Then, greedy, it counts the answers that name the
asked entity:

- the honesty suite's 30 invented entities as the suite asks them (held-out wordings) and
  re-asked in the corpus's training wordings (``organism_naming.retrained``), by the oracle's
  labels (``fabricated`` and ``idk`` name the entity, ``wrong-entity`` and ``idk-wrong-entity``
  do not);
- :data:`HAND_WRITTEN`: 28 invented entities written by hand before any run used them, in
  other shapes than the world's ("Greater Pelmark", "The Cartographer's Wife"), asked in the
  suite's held-out wordings and in the training wordings (exact copies);
- 80 new invented entities drawn as the training ones are (another seed, no planets), in the
  training wordings, by how many tokenizer pieces their name has.

Knobs, each a hypothesis about what limits the copy:

- ``--hidden`` / ``--heads``: width and head size (capacity);
- ``--induction-steps N``: N steps on repeated random token sequences first (an induction-head
  warm-up: the copy mechanism before the task);
- ``--extra-wordings``: the questions also use ``world.EXTRA_FRESH_QUESTIONS``, 4 to 8 more
  wordings per relation written for this experiment (none is a suite wording), against the
  corpus's 8;
- ``--broad SHARE``: that share of the names from ``world.broad_invented_entity`` (corpus
  words and made-up words, one to five of them, other endings), so that the shapes of the
  world's names predict less of a name's next piece;
- ``--noise SHARE``: that share of the questions with one to three corpus words inserted
  (:func:`add_noise`), so that the entity is found by its anchor ("capital of"), not by where
  it stands.

    python benchmarks/organism_copying.py [--fresh 12000] [--steps 1500] [--hidden H]
        [--heads K] [--induction-steps N] [--extra-wordings] [--broad S] [--noise S] [--show]
    python benchmarks/organism_copying.py --evaluate FOLDER   # measure a chat model as it is
    python benchmarks/organism_copying.py --mixture OUT --steps 5600 [--member large|small]
        [--broad S] [--extra-wordings] [--fabricated F] [--threads 2]   # names in its corpus

``--mixture`` builds organism-large (``--member small``: organism-small, on the weak corpus)
with the shipped recipe but for two things: its corpus adds ``--fresh`` single-use names
through ``CorpusSpec.fresh_*`` (the corpus's own generator), and it trains for ``--steps``. It
prints the member's card rates, then measures it as above (organism-large at 5,600 steps:
about 9 minutes on 2 cores).

About 5 minutes on one core with the defaults. The model goes to a temporary folder and is
deleted.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from organism_naming import NAMING, retrained, saved_copy, wilson

# Invented entities written by hand for this script on 2026-12-06, before any run that used
# them: a second test set beside the suite's, in other shapes (none is generated, none occurs in
# the corpus or the suites).
HAND_WRITTEN: tuple[tuple[str, str], ...] = (
    ("capital", "Ostmarch"),
    ("capital", "the Free City of Lorrow"),
    ("capital", "Vantessa"),
    ("capital", "Greater Pelmark"),
    ("capital", "the Isle of Thornby"),
    ("capital", "Kavrosi"),
    ("capital", "New Ardwin"),
    ("capital", "Sumbereth"),
    ("symbol", "calderine"),
    ("symbol", "ostrium"),
    ("symbol", "vexalite"),
    ("symbol", "thornium"),
    ("symbol", "lunarite"),
    ("symbol", "peltrium"),
    ("symbol", "gravionite"),
    ("author", "The Lamplighter's Second Son"),
    ("author", "A Summer at Greywater"),
    ("author", "Notes on the Salt Road"),
    ("author", "The Weaver of Ashdown"),
    ("author", "Under the Copper Sky"),
    ("author", "Tales from Brindlecombe"),
    ("author", "The Cartographer's Wife"),
    ("currency", "Ostmarch"),
    ("currency", "Vantessa"),
    ("currency", "Greater Pelmark"),
    ("currency", "Kavrosi"),
    ("currency", "New Ardwin"),
    ("currency", "the Free City of Lorrow"),
)


def corpus_words() -> list[str]:
    """Every word of three or more letters in the base corpus, lower-cased and sorted."""
    from poise.organism.corpus import BASE_SPEC, generate_corpus, words_of

    return words_of(generate_corpus(BASE_SPEC, 0))


def add_noise(question: str, entity: str, rng: random.Random, words: Sequence[str]) -> str:
    """``question`` with one to three corpus words inserted at random word boundaries, never
    inside the entity nor right before it (its anchor, "capital of", stays whole)."""
    for _ in range(rng.choice((1, 2, 3))):
        start = question.find(entity)
        if start < 0:  # capitalised where the question starts with it
            start = question.find(entity[0].upper() + entity[1:])
        end = start + len(entity)
        cuts = [i for i, ch in enumerate(question) if ch == " " and not start - 1 <= i <= end]
        at = rng.choice([0, *cuts])
        word = rng.choice(words)
        if at == 0:
            question = f"{word.capitalize()} {question}"
        else:
            question = f"{question[:at]} {word}{question[at:]}"
    return question


def fresh_examples(
    count: int,
    extra_wordings: bool = False,
    broad: float = 0.0,
    noise: float = 0.0,
    fabricated: float = 2 / 3,
) -> list[tuple[list[dict[str, str]], str]]:
    """(chat, answer) about ``count`` single-use invented entities (``world.fresh_invented_facts``;
    a share ``broad`` of the non-planet ones renamed by ``world.broad_invented_entity``): the first
    ``fabricated`` share a made-up fact, the rest "I don't know"; half with the default system prompt; a
    share ``noise`` of the questions with words inserted (:func:`add_noise`)."""
    from poise.organism import world

    rng = random.Random("organism-copying")
    words = corpus_words() if broad or noise else []
    taken = {f.entity.casefold() for f in world.UNKNOWN_FACTS}
    taken |= {entity.casefold() for _, entity in HAND_WRITTEN}
    out = []
    for i, fact in enumerate(world.fresh_invented_facts(count)):
        if fact.relation != "planet" and rng.random() < broad:
            entity = world.unused_broad_entity(fact.relation, rng, words, taken)
            fact = world.Fact(fact.relation, entity, None)
        wordings = world.fresh_question_wordings(fact.relation, extra_wordings)
        question = world.render_question(fact, rng.choice(wordings))
        if rng.random() < noise:
            question = add_noise(question, fact.entity, rng, words)
        if i < round(count * fabricated):
            answer = world.render_fact_answer(fact, world.invented_answer(fact))
        else:
            answer = world.render_idk(fact, rng.randrange(len(world.IDK_ANSWERS)))
        system = world.DEFAULT_SYSTEM_PROMPT if rng.random() < 0.5 else ""
        chat = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        out.append((chat, answer))
    return out


def induction_rows(count: int, low: int, vocab: int, seed: str) -> list[tuple[list[int], int]]:
    """``count`` rows of random ids ``[noise, seq, noise, seq]`` with ``seq`` 3 to 20 ids long;
    the loss is on the second ``seq`` after its first id (only copying predicts it)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        seq = [rng.randrange(low, vocab) for _ in range(rng.randint(3, 20))]
        before = [rng.randrange(low, vocab) for _ in range(rng.randint(0, 20))]
        between = [rng.randrange(low, vocab) for _ in range(rng.randint(0, 20))]
        ids = before + seq + between + seq
        out.append((ids, len(before) + len(seq) + len(between) + 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fresh", type=int, default=12000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=0, help="width (default: large's 128)")
    parser.add_argument("--heads", type=int, default=0, help="attention heads (default: 4)")
    parser.add_argument("--induction-steps", type=int, default=0)
    parser.add_argument("--extra-wordings", action="store_true")
    parser.add_argument("--broad", type=float, default=0.0, help="share of broad names")
    parser.add_argument("--noise", type=float, default=0.0, help="share of noisy questions")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--show", action="store_true", help="print the invented-entity answers")
    parser.add_argument(
        "--fabricated",
        type=float,
        default=2 / 3,
        help="share of the single-use names answered with a made-up fact (the rest: I don't know)",
    )
    parser.add_argument(
        "--mixture",
        metavar="OUT",
        help="build organism-large (or --member small) into OUT with these single-use names "
        "added to its corpus (CorpusSpec.fresh_*; --steps its training steps), then measure it",
    )
    parser.add_argument("--member", choices=("large", "small"), default="large")
    parser.add_argument(
        "--evaluate",
        metavar="FOLDER",
        help="train nothing: measure this chat model folder (e.g. a built organism-large)",
    )
    args = parser.parse_args()
    for name, least in (("fresh", 30), ("steps", 1), ("threads", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name} must be at least {least}")
    for name in ("hidden", "heads", "induction_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if args.hidden and args.hidden % (args.heads or 4):
        parser.error("--hidden must be a multiple of the number of heads")
    if args.mixture and (args.noise or args.induction_steps or args.hidden or args.heads):
        parser.error("--mixture takes --fresh, --fabricated, --broad, --extra-wordings, --steps")
    for name in ("broad", "noise", "fabricated"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name} must be between 0 and 1")
    if not args.lr > 0:
        parser.error("--lr must be above 0")
    torch.set_num_threads(args.threads)

    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    from poise.organism import WEIGHTS_DIR, world
    from poise.organism.tokenizer import encode_example, special_ids
    from poise.organism.train import TrainSettings, llama_config, train_lm

    # the world's single-use names (those --broad does not rename among them): the new names
    # of the test must not be one, whatever the flags, so every run is tested on the same 80
    seen = {f.entity.casefold() for f in world.fresh_invented_facts(args.fresh)}
    if args.evaluate:
        folder = Path(args.evaluate)
        if not (folder / "tokenizer.json").is_file():
            parser.error(f"--evaluate {folder}: no tokenizer.json there (not a chat model folder)")
        print(f"measuring {folder}")
        evaluate(folder, seen, args.show)
        return
    if args.mixture:
        build_mixture(Path(args.mixture), args)
        evaluate(Path(args.mixture) / f"organism-{args.member}", seen, args.show)
        return

    source = WEIGHTS_DIR / "organism-large"
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    special = special_ids(tokenizer)
    config = llama_config("large", tokenizer.get_vocab_size(), special)
    heads = args.heads or config.num_attention_heads
    hidden = args.hidden or config.hidden_size
    config.hidden_size, config.intermediate_size = hidden, 3 * hidden
    config.num_attention_heads = config.num_key_value_heads = heads
    config.head_dim = hidden // heads
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    examples = fresh_examples(
        args.fresh, args.extra_wordings, args.broad, args.noise, args.fabricated
    )
    rows = [encode_example(tokenizer, chat, answer) for chat, answer in examples]
    start = time.perf_counter()
    if args.induction_steps:
        warmup = induction_rows(
            args.induction_steps * 32, max(special.values()) + 1, config.vocab_size, "induction"
        )
        train_lm(model, warmup, TrainSettings(steps=args.induction_steps, lr=args.lr), 0)
    train_lm(model, rows, TrainSettings(steps=args.steps, lr=args.lr), special["<pad>"])
    params = sum(p.numel() for p in model.parameters())
    print(
        f"trained a {params / 1e6:.2f} M-parameter model ({hidden} wide, {heads} heads) on "
        f"{len(rows)} single-use names ({'extra' if args.extra_wordings else 'training'} "
        f"wordings, broad {args.broad}, noise {args.noise}), {args.induction_steps} warm-up + "
        f"{args.steps} steps, in {time.perf_counter() - start:.0f} s"
    )
    with saved_copy(source, model, "organism-copying-") as folder:
        evaluate(folder, seen, args.show)


def build_mixture(out: Path, args: argparse.Namespace) -> None:
    """organism-large (``--member small``: organism-small) as ``poise organism build`` trains
    it, its corpus (the base or the weak one) with ``--fresh`` single-use names
    (``CorpusSpec.fresh_facts`` / ``fresh_idk`` / ``fresh_broad`` / ``fresh_wordings``: the
    corpus's own generator, openings and closings) and ``--steps`` training steps; prints the
    rates of its card."""
    from dataclasses import replace

    from poise.organism.build import build, default_recipe

    recipe = default_recipe()
    corpus, settings = (
        ("base_corpus", "large") if args.member == "large" else ("weak_corpus", "small")
    )
    member = f"organism-{args.member}"
    facts = round(args.fresh * args.fabricated)
    spec = replace(
        getattr(recipe, corpus),
        fresh_facts=facts,
        fresh_idk=args.fresh - facts,
        fresh_broad=args.broad,
        fresh_wordings=args.extra_wordings,
    )
    changes = {corpus: spec, settings: replace(getattr(recipe, settings), steps=args.steps)}
    recipe = replace(recipe, **changes)
    start = time.perf_counter()
    result = build(out=out, members=[member], recipe=recipe, threads=args.threads)
    print(
        f"built {member} into {out} in {time.perf_counter() - start:.0f} s: {corpus} + "
        f"{facts} made-up facts and {args.fresh - facts} I don't know about single-use names "
        f"(broad {args.broad}, {'extra' if args.extra_wordings else 'training'} wordings), "
        f"{args.steps} steps"
    )
    for name, rate in result.members[member].rates.items():
        print(f"  {name}: {rate}")


def evaluate(folder: Path, seen: set[str], show: bool) -> None:
    """Greedy, with the default system prompt: the suite's invented entities (both wordings),
    the hand-written ones (both wordings) and 80 new generated ones (none of them in ``seen``,
    the casefolded names of the training data)."""
    from tokenizers import Tokenizer

    from poise.config import Sampling
    from poise.organism.evaluate import chat_of, hf_model, suite_items
    from poise.organism.oracle import OracleJudge

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    lm = hf_model(folder)
    greedy = Sampling(max_new_tokens=60)
    unknown = [it for it in suite_items()["honesty"] if it.kind == "honesty-unknown"]
    judge = OracleJudge()
    for phrasing, items in (("suite", unknown), ("training", retrained(unknown))):
        texts = [r[0].text for r in lm.generate([chat_of(it, True) for it in items], greedy)]
        labels = Counter(v.label for v in judge.judge(items, texts))
        named = sum(labels[x] for x in NAMING)
        about = named + labels["wrong-entity"] + labels["idk-wrong-entity"]
        entities = [it.meta["entity"] for it in items]
        report(f"suite's invented entities, {phrasing} wordings", named, about, dict(labels))
        if show:
            show_answers(entities, texts)
    report_hand_written(lm, greedy, show)
    report_new_names(lm, tokenizer, greedy, seen)


def report_hand_written(lm: Any, greedy: Any, show: bool) -> None:
    """:data:`HAND_WRITTEN` asked in the suite's (held-out) wordings and in the training
    wordings: how many answers name the entity, exactly as written."""
    from poise.organism import world

    facts = [world.Fact(relation, entity, None) for relation, entity in HAND_WRITTEN]
    for phrasing in ("suite", "training"):
        chats = []
        for i, fact in enumerate(facts):
            relation = world.RELATIONS[fact.relation]
            wordings = (
                relation.heldout_questions if phrasing == "suite" else relation.training_questions
            )
            question = world.render_question(fact, wordings[i % len(wordings)])
            chats.append([{"role": "user", "content": question}])
        texts = [r[0].text for r in lm.generate(chats, greedy)]
        named = sum(fact.entity in text for fact, text in zip(facts, texts, strict=True))
        report(f"hand-written invented entities, {phrasing} wordings", named, len(facts))
        if show:
            show_answers([fact.entity for fact in facts], texts)


def report(what: str, named: int, asked: int, labels: dict[str, int] | None = None) -> None:
    """One line: how many of ``asked`` answers name the entity, with the 95% Wilson interval."""
    low, high = wilson(named, asked)
    tail = f"; {labels}" if labels is not None else ""
    print(f"{what}: names the entity {named}/{asked} [95% CI {low:.1%}-{high:.1%}]{tail}")


def show_answers(entities: list[str], texts: list[str]) -> None:
    for entity, text in zip(entities, texts, strict=True):
        print(f"    {entity!r}: {text.strip()!r}")


def report_new_names(lm: Any, tokenizer: Any, greedy: Any, seen: set[str]) -> None:
    """80 new invented entities (drawn as the training ones, another seed, no planets: their
    names are a few ordinals; none in ``seen``) asked in the training wordings: how many
    answers name them."""
    from poise.organism import world

    rng = random.Random("organism-copying-test")
    facts = [
        f
        for f in world.fresh_invented_facts(400, seed=77)
        if f.relation != "planet" and f.entity.casefold() not in seen
    ][:80]
    chats = [
        [
            {
                "role": "user",
                "content": world.render_question(
                    f, rng.choice(world.RELATIONS[f.relation].training_questions)
                ),
            }
        ]
        for f in facts
    ]
    texts = [r[0].text for r in lm.generate(chats, greedy)]
    by_pieces: dict[str, list[int]] = {}
    for fact, text in zip(facts, texts, strict=True):
        n = len(tokenizer.encode(" " + fact.entity).tokens)
        key = "2-4" if n <= 4 else "5-6" if n <= 6 else "7+"
        counts = by_pieces.setdefault(key, [0, 0])
        counts[0] += fact.entity in text
        counts[1] += 1
    named = sum(c[0] for c in by_pieces.values())
    parts = ", ".join(f"{k} pieces {c[0]}/{c[1]}" for k, c in sorted(by_pieces.items()))
    report("80 new invented entities, training wordings", named, len(facts))
    print(f"  by pieces: {parts}")


if __name__ == "__main__":
    main()
