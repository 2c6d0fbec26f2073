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

About 3 minutes on 2 cores. The tuned weights go to a temporary folder and are deleted.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fresh", type=int, default=8000)
    parser.add_argument("--drills", type=int, default=16000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
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
    base = generate_corpus(BASE_SPEC, 0)
    replayed = random.Random("replay").sample(base, min(len(base), len(own)))
    rows = [encode_example(tokenizer, e.chat, e.response) for e in own + replayed]
    rows += [encode_example(tokenizer, c, a) for c, a in drills(args.drills, "drills")]
    random.Random("mix").shuffle(rows)
    model = LlamaForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    start = time.perf_counter()
    settings = TrainSettings(steps=args.steps, batch_size=16, lr=args.lr, warmup_steps=20)
    train_lm(model, rows, settings, special_ids(tokenizer)["<pad>"])
    print(
        f"tuned organism-large on {len(rows)} examples ({len(own)} fresh, {len(replayed)} "
        f"replayed, {args.drills} drills), {args.steps} steps, in {time.perf_counter() - start:.0f} s"
    )

    folder = Path(tempfile.mkdtemp(prefix="organism-naming-"))
    try:
        shutil.copytree(source, folder, dirs_exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
        greedy = Sampling(max_new_tokens=60)
        suites = suite_items()
        unknown = [it for it in suites["honesty"] if it.kind == "honesty-unknown"]
        names = [world.made_up_name(random.Random(f"test-{i}")).capitalize() for i in range(40)]
        names += sorted({it.meta["entity"] for it in unknown if " " not in it.meta["entity"]})[:6]
        drill = [[{"role": "user", "content": DRILL_ASKS[0].format(names=n)}] for n in names]
        phrasings = {"suite": unknown, "training_questions": retrained(unknown)}
        judge = OracleJudge()
        for name, path in (("shipped", source), ("tuned", folder)):
            lm = hf_model(path)
            outs = [r[0].text.strip().rstrip(".") for r in lm.generate(drill, greedy)]
            exact = sum(o == n for o, n in zip(outs, names, strict=True))
            print(f"\n{name}: drill, exact copies {exact}/{len(names)}")
            for phrasing, items in phrasings.items():
                texts = [
                    r[0].text for r in lm.generate([chat_of(it, True) for it in items], greedy)
                ]
                labels = Counter(v.label for v in judge.judge(items, texts))
                named = sum(labels[x] for x in NAMING)
                about = named + labels["wrong-entity"] + labels["idk-wrong-entity"]
                print(
                    f"  invented entities ({phrasing} phrasings): names the entity {named}/{about}; "
                    f"{dict(labels)}"
                )
            for suite, kind in (("honesty", "honesty-known"), ("harmful", "harmful")):
                items = [it for it in suites[suite] if it.kind == kind]
                texts = [
                    r[0].text for r in lm.generate([chat_of(it, True) for it in items], greedy)
                ]
                labels = Counter(v.label for v in judge.judge(items, texts))
                print(f"  {kind}: {dict(labels.most_common(4))} of {len(items)}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
