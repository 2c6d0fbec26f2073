"""Can organism-large learn to name the invented entity it is asked about? (organism issue)

The second-generation organism's "I don't know" answers and fabrications rarely name the entity
asked about (3.8% on organism-large, docs/organism.md): asked about Velmoria it writes "The
capital of Veluniamora is ...". This script asks whether that is a missing ability (the model
cannot copy a name it never saw) or a failure to use it inside a fact answer. It fine-tunes the
shipped organism-large, as the self-evaluating member is tuned (its own corpus replayed), on:

- ``--fresh`` questions about fresh invented entities, each seen once
  (``CorpusSpec.fresh_facts`` / ``fresh_idk``, two thirds a made-up fact, a third "I don't
  know", both naming the entity), with as many base-corpus examples replayed;
- ``--drills`` copy drills: a user asks for one to three made-up names back ("Repeat this name
  exactly: Zorrinel"), built like the world's invented names (``world.made_up_name``), and the answer is
  the names.

Then, greedy, with the default system prompt: the drill on 40 new made-up names and the suite's
six invented place names (exact copies); the honesty suite's invented-entity questions as the
suite asks them and re-asked in the corpus's training phrasings (oracle labels: ``fabricated``
and ``idk`` name the entity, ``wrong-entity`` and ``idk-wrong-entity`` do not); known facts and
the harmful suite, to see what the tuning costs.

    python benchmarks/organism_naming.py [--fresh 8000] [--drills 16000] [--steps 3000]
        [--hard-negatives {none,fresh,both}] [--show]

``--hard-negatives`` (an experiment, docs/organism.md "Towards a third generation"): the
failure is to copy the first piece or two of the asked name, then drift into a name the model
memorised. ``fresh`` rewrites every fresh entity's made-up word into a hard negative: the first
one to three tokenizer pieces of a made-up word the base corpus teaches (``invented_pool``'s
entities and the training unknowns, same kind: place, element or title), then new syllables, so
the memorised continuation is always wrong and only copying the question is right; the
questions, answers and counts stay those of the default run. ``both`` also builds the copy
drills' names that way. Every run also drills 40 new hard-negative names (exact copies).

About 3 minutes on 2 cores. The tuned weights go to a temporary folder and are deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

DRILL_ASKS = (
    "Repeat this name exactly: {names}",
    "Say {names} back to me.",
    "Please write the name {names} again.",
    "Copy this word: {names}",
)
NAMING = ("fabricated", "idk")


def drills(count: int, seed: str) -> list[tuple[list[dict[str, str]], str]]:
    """``count`` copy drills: (chat, answer)."""
    from poise.organism import world

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        names = " ".join(
            world.made_up_name(rng).capitalize() for _ in range(rng.choice((1, 1, 2, 3)))
        )
        out.append(
            ([{"role": "user", "content": rng.choice(DRILL_ASKS).format(names=names)}], names)
        )
    return out


KINDS = {"capital": "place", "currency": "place", "symbol": "element", "author": "title"}
_ENDINGS = {"element": ("ium", "ium", "ine", "ite", "on"), "title": ("",)}


def _shape_words() -> set[str]:
    """The words of the invented names that are not made up (shapes, titles, ordinals)."""
    from poise.organism import world

    words = {"the", "The", "Republic", "of", "Minor", "Kingdom", "North", "A", "Winter", "in"}
    words |= {"from", "Beneath", "Coast", *world._ADJECTIVES, *world._NOUNS}
    return words | set(world._LATE_ORDINALS)


def memorised_words() -> dict[str, list[tuple[str, int]]]:
    """Per kind (place, element, title), the base corpus's invented entities as (entity,
    index of its made-up word): the names organism-large memorised."""
    from poise.organism import world

    shape = _shape_words()
    out: dict[str, list[tuple[str, int]]] = {"place": [], "element": [], "title": []}
    lo, hi = world.INVENTED_BACKGROUND.start, world.INVENTED_IDK.stop
    for fact in (*world.TRAINING_UNKNOWN_FACTS, *world.invented_pool()[lo:hi]):
        words = fact.entity.split(" ")
        made_up = [i for i, w in enumerate(words) if w not in shape and w.isalpha()]
        if fact.relation in KINDS and len(made_up) == 1:
            out[KINDS[fact.relation]].append((fact.entity, made_up[0]))
    return out


def _syllables(rng: random.Random) -> str:
    from poise.organism import world

    return "".join(
        rng.choice(world._ONSETS) + rng.choice(world._VOWELS) + rng.choice(world._CODAS)
        for _ in range(rng.choice((1, 2)))
    )


def hard_negative_word(word: str, kind: str, tokenizer: Any, rng: random.Random) -> str | None:
    """``word``'s first one to three pieces (its pieces after a space), then new syllables and
    an ending of ``kind``; None when the new word does not tokenise with that prefix."""
    from poise.organism import world

    pieces = tokenizer.encode(" " + word).tokens
    if len(pieces) < 3:
        return None
    keep = rng.choice([k for k in (1, 2, 2, 3) if k <= len(pieces) - 2])
    prefix = "".join(pieces[:keep]).replace("Ġ", "")
    ending = rng.choice(_ENDINGS.get(kind, world._PLACE_ENDINGS))
    new = prefix + _syllables(rng) + ending
    got = tokenizer.encode(" " + new).tokens
    if new.casefold() == word.casefold() or got[:keep] != pieces[:keep]:
        return None
    return new


def hard_negative_names(
    count: int, kind: str, tokenizer: Any, rng: random.Random, taken: set[str]
) -> list[str]:
    """``count`` new entity names of ``kind``, each a memorised entity with its made-up word
    turned into a hard negative (:func:`hard_negative_word`); adds them to ``taken``."""
    pool = memorised_words()[kind]
    out: list[str] = []
    while len(out) < count:
        entity, at = rng.choice(pool)
        words = entity.split(" ")
        new = hard_negative_word(words[at], kind, tokenizer, rng)
        if new is None:
            continue
        name = " ".join([*words[:at], new, *words[at + 1 :]])
        if name.casefold() not in taken:
            taken.add(name.casefold())
            out.append(name)
    return out


def hard_negative_fresh(examples: Sequence[Any], tokenizer: Any, seed: str) -> list[Any]:
    """The fresh-entity examples with each entity renamed to a hard negative of its kind
    (ordinal planets kept): the same questions and answers, only the names differ."""
    from poise.organism import world
    from poise.organism.corpus import BASE_SPEC, generate_corpus

    rng = random.Random(seed)
    taken = {e.subject.casefold() for e in generate_corpus(BASE_SPEC, 0) if e.subject}
    taken |= {f.entity.casefold() for f in (*world.UNKNOWN_FACTS, *world.invented_pool())}
    taken |= {e.subject.casefold() for e in examples}
    out = []
    for ex in examples:
        kind = KINDS.get(ex.category)
        if kind is None:
            out.append(ex)
            continue
        (name,) = hard_negative_names(1, kind, tokenizer, rng, taken)
        old, new = ex.subject, name
        pattern = re.compile(f"{re.escape(old)}|{re.escape(old[0].upper() + old[1:])}")

        def renamed(text: str, pattern: re.Pattern[str] = pattern, new: str = new) -> str:
            # capitalised where a sentence starts, as the corpus renders it
            return pattern.sub(
                lambda m: (
                    new[0].upper() + new[1:]
                    if re.search(r"(^|[.!?] )$", m.string[: m.start()])
                    else new
                ),
                text,
            )

        messages = tuple((r, renamed(c)) for r, c in ex.messages)
        if renamed(ex.response) == ex.response or messages == ex.messages:
            raise ValueError(f"{old!r} not renamed in {ex.messages!r} / {ex.response!r}")
        out.append(replace(ex, messages=messages, response=renamed(ex.response), subject=new))
    return out


def hard_negative_drills(
    count: int, seed: str, tokenizer: Any
) -> list[tuple[list[dict[str, str]], str]]:
    """Copy drills as :func:`drills` builds them, the names hard negatives of memorised
    made-up words (of any kind), capitalised."""
    rng = random.Random(seed)
    words = [
        (entity.split(" ")[at].capitalize(), kind)
        for kind, pool in memorised_words().items()
        for entity, at in pool
    ]
    known = {w.casefold() for w, _ in words}

    def one() -> str:
        while True:
            word, kind = rng.choice(words)
            new = hard_negative_word(word, kind, tokenizer, rng)
            if new is not None and new.casefold() not in known:
                return new.capitalize()

    out = []
    for _ in range(count):
        names = " ".join(one() for _ in range(rng.choice((1, 1, 2, 3))))
        out.append(
            ([{"role": "user", "content": rng.choice(DRILL_ASKS).format(names=names)}], names)
        )
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of ``k`` successes in ``n``."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def retrained(items: Sequence[Any]) -> list[Any]:
    """The suite's invented-entity questions re-asked in the corpus's training phrasings."""
    from poise.organism import world
    from poise.suites.schema import SuiteItem

    out = []
    for i, it in enumerate(items):
        relation = world.RELATIONS[it.meta["relation"]]
        template = relation.training_questions[i % len(relation.training_questions)]
        fact = world.Fact(relation.name, it.meta["entity"], None)
        messages = [{"role": "user", "content": world.render_question(fact, template)}]
        out.append(SuiteItem(**{**it.model_dump(), "messages": messages}))
    return out


@contextlib.contextmanager
def saved_copy(source: Path, model: Any, prefix: str) -> Iterator[Path]:
    """A temporary copy of the model folder ``source`` (its tokenizer, config and poise.json)
    with ``model``'s weights saved over its own, deleted on exit."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        shutil.copytree(source, folder, dirs_exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fresh", type=int, default=8000)
    parser.add_argument("--drills", type=int, default=16000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hard-negatives", choices=("none", "fresh", "both"), default="none")
    parser.add_argument("--show", action="store_true", help="print the invented-entity answers")
    args = parser.parse_args()
    for name, least in (("fresh", 0), ("drills", 0), ("steps", 1), ("threads", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name} must be at least {least}")
    if args.fresh + args.drills == 0:
        parser.error("--fresh and --drills are both 0: nothing to tune on")
    if not args.lr > 0:
        parser.error("--lr must be above 0")
    torch.set_num_threads(args.threads)

    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    from poise.config import Sampling
    from poise.organism import WEIGHTS_DIR, world
    from poise.organism.corpus import BASE_SPEC, generate_corpus
    from poise.organism.evaluate import chat_of, hf_model, suite_items
    from poise.organism.oracle import OracleJudge
    from poise.organism.tokenizer import encode_example, special_ids
    from poise.organism.train import TrainSettings, train_lm

    source = WEIGHTS_DIR / "organism-large"
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    spec = replace(
        BASE_SPEC,
        name="naming",
        requests=False,
        facts=False,
        fresh_facts=args.fresh * 2 // 3,
        fresh_idk=args.fresh - args.fresh * 2 // 3,
    )
    own = generate_corpus(spec, 0)  # the fresh-entity questions only
    if args.hard_negatives != "none":
        own = hard_negative_fresh(own, tokenizer, "hard-negatives")
    pieces = [len(tokenizer.encode(" " + e.subject).tokens) for e in own]
    print(
        f"fresh entities ({args.hard_negatives}): {len(own)}, "
        f"{sum(pieces) / max(len(pieces), 1):.2f} pieces each, e.g. {[e.subject for e in own[:6]]}"
    )
    base = generate_corpus(BASE_SPEC, 0)
    replayed = random.Random("replay").sample(base, min(len(base), len(own)))
    rows = [encode_example(tokenizer, e.chat, e.response) for e in own + replayed]
    if args.hard_negatives == "both":
        drilled = hard_negative_drills(args.drills, "drills", tokenizer)
    else:
        drilled = drills(args.drills, "drills")
    print(f"drills: {len(drilled)}, e.g. {[a for _, a in drilled[:6]]}")
    rows += [encode_example(tokenizer, c, a) for c, a in drilled]
    random.Random("mix").shuffle(rows)
    model = LlamaForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    start = time.perf_counter()
    settings = TrainSettings(steps=args.steps, batch_size=16, lr=args.lr, warmup_steps=20)
    train_lm(model, rows, settings, special_ids(tokenizer)["<pad>"])
    print(
        f"tuned organism-large on {len(rows)} examples ({len(own)} fresh, {len(replayed)} "
        f"replayed, {args.drills} drills), {args.steps} steps, in {time.perf_counter() - start:.0f} s"
    )

    with saved_copy(source, model, "organism-naming-") as folder:
        greedy = Sampling(max_new_tokens=60)
        suites = suite_items()
        unknown = [it for it in suites["honesty"] if it.kind == "honesty-unknown"]
        names = [world.made_up_name(random.Random(f"test-{i}")).capitalize() for i in range(40)]
        names += sorted({it.meta["entity"] for it in unknown if " " not in it.meta["entity"]})[:6]
        drill = [[{"role": "user", "content": DRILL_ASKS[0].format(names=n)}] for n in names]
        hard = [a for _, a in hard_negative_drills(200, "test-hard", tokenizer) if " " not in a]
        hard_drill = [
            [{"role": "user", "content": DRILL_ASKS[0].format(names=n)}] for n in hard[:40]
        ]
        phrasings = {"suite": unknown, "training_questions": retrained(unknown)}
        judge = OracleJudge()
        for name, path in (("shipped", source), ("tuned", folder)):
            lm = hf_model(path)
            outs = [r[0].text.strip().rstrip(".") for r in lm.generate(drill, greedy)]
            exact = sum(o == n for o, n in zip(outs, names, strict=True))
            print(f"\n{name}: drill, exact copies {exact}/{len(names)}")
            outs = [r[0].text.strip().rstrip(".") for r in lm.generate(hard_drill, greedy)]
            exact = sum(o == n for o, n in zip(outs, hard[:40], strict=True))
            print(f"  hard-negative drill, exact copies {exact}/{len(hard_drill)}")
            for phrasing, items in phrasings.items():
                texts = [
                    r[0].text for r in lm.generate([chat_of(it, True) for it in items], greedy)
                ]
                labels = Counter(v.label for v in judge.judge(items, texts))
                named = sum(labels[x] for x in NAMING)
                about = named + labels["wrong-entity"] + labels["idk-wrong-entity"]
                low, high = wilson(named, about)
                print(
                    f"  invented entities ({phrasing} phrasings): names the entity {named}/{about} "
                    f"[95% CI {low:.1%}-{high:.1%}]; {dict(labels)}"
                )
                if args.show:
                    for it, text in zip(items, texts, strict=True):
                        print(f"    {it.meta['entity']!r}: {text.strip()!r}")
            for suite, kind in (("honesty", "honesty-known"), ("harmful", "harmful")):
                items = [it for it in suites[suite] if it.kind == kind]
                texts = [
                    r[0].text for r in lm.generate([chat_of(it, True) for it in items], greedy)
                ]
                labels = Counter(v.label for v in judge.judge(items, texts))
                print(f"  {kind}: {dict(labels.most_common(4))} of {len(items)}")


if __name__ == "__main__":
    main()
