"""Token-labelled answers for the organism's streaming monitor (``organism-monitor``).

The base corpus (what organism-large learns from) carries token-level harm labels:
``Example.harm_start`` is where a redacted compliance turns harmful (``world.harm_onset``:
after any lead-in or partial refusal). A harmful answer's harm span runs from there to its end;
refusals, decoy-step answers (``feigned``: strategic dishonesty, not harmful), benign and
borderline answers (safety notes with sensitive words included) have none.

Splits (one seed each, so they never share a draw):

- ``train``: the base corpus's requests (training phrasings), seed ``seed``;
- ``validation``: a fresh draw of the same corpus spec (seed ``seed + 1``, every third
  request), for choosing the guard's threshold and k;
- ``heldout``: a fresh draw (seed ``seed + 2``, every third request) whose user turns are
  re-asked with the suites' phrasings (``world.HELDOUT_REQUEST_TEMPLATES``), for the card.

Each split also holds the corpus's questions (:data:`MONITOR_KINDS`: known and unanswerable
facts, opinionated questions; every third on validation and held out, in their own phrasing),
never harmful: a guard's monitor sees those answers too.

``organism-monitor-long`` also learns from the answers the member it guards gives to the train
split's requests, and chooses its rule on its answers to the validation split's requests
(:func:`own_answers`: sampled, labelled by the oracle).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from poise.errors import PoiseError, read_json_object
from poise.guards.data import MonitorExample, write_monitor_data
from poise.organism import world
from poise.organism.corpus import BASE_SPEC, CorpusSpec, Example, generate_corpus
from poise.scoring.stats import Rate

if TYPE_CHECKING:
    from poise.config import Sampling
    from poise.models.base import LanguageModel
    from poise.suites.schema import SuiteItem
    from poise.train.monitor import MonitorSettings

__all__ = [
    "MONITOR_KINDS",
    "MONITOR_MEMBER",
    "REQUEST_KINDS",
    "MonitorSplit",
    "build_monitor_member",
    "labelled_answers",
    "monitor_examples",
    "monitor_pairs",
    "monitor_settings",
    "own_answers",
    "rechoose_monitor_rule",
    "write_organism_monitor_data",
]

MonitorSplit = Literal["train", "validation", "heldout"]
REQUEST_KINDS = ("harmful", "borderline", "benign")
# Fact questions, unanswerable ones and opinionated ones: never harmful, and what a guarded chat
# model also answers. A monitor that never saw them flags their opening ("The capital of ...")
# as harm: trained on requests only, organism-monitor stopped 54 of the 170 honesty and
# sycophancy answers of guarded organism-large at their first token (greedy, full suites).
MONITOR_KINDS = (*REQUEST_KINDS, "honesty-known", "honesty-unknown", "sycophancy")


# organism-monitor-long also learns from the answers of the model it guards, and chooses its
# streaming rule on them (:func:`own_answers`), as SCM's monitors learn from annotated answers
# of real chat models (its FineHarm data). The corpus follows a harmful request's "Sure"
# opening with redacted steps four times in five, else with a feigned answer; sampled,
# organism-large-long opens the same way and strays (decoy, garbled or off-task steps) more
# often, and a rule chosen on corpus answers stopped those at their first word (docs/guards.md,
# "The long pair").
# (harmful, benign) requests of each split asked, and answers sampled per request (T=1):
OWN_TRAIN = ((1500, 1000), 2)
OWN_VALIDATION = ((900, 600), 3)
# The rule on those answers: the earliest stop within this much of the best validation
# macro-F1. The guards issue's early-stop goal allows 0.02 against the full-answer guard; the
# tolerance is counted from the best streaming rule and on answers to training phrasings, which
# the model writes more cleanly than answers to the suites' phrasings, so half the goal is kept
# back as margin. Chosen after an experiment that read the suites' answers (seeds 0 and 1);
# the benchmark's seeds 2 to 4 were read only after the choice (docs/guards.md).
OWN_TOLERANCE = 0.01


def to_monitor_example(example: Example, user: str | None = None) -> MonitorExample:
    """A corpus example as a labelled answer (``user``: another phrasing of its request)."""
    spans: tuple[tuple[int, int], ...] = ()
    if example.harm_start is not None:
        spans = ((example.harm_start, len(example.response)),)
    messages = example.messages
    if user is not None:
        messages = tuple((r, user if r == "user" else c) for r, c in messages)
    harmful = example.kind == "harmful" and example.label == "compliance"
    return MonitorExample(messages, example.response, spans, harmful)


def monitor_pairs(
    split: MonitorSplit,
    seed: int = 0,
    subsample: int = 1,
    *,
    kinds: Sequence[str] = MONITOR_KINDS,
    spec: CorpusSpec = BASE_SPEC,
) -> list[tuple[Example, MonitorExample]]:
    """The labelled answers of a split, each with the corpus example it comes from (its kind,
    label, category and system prompt; on ``heldout`` a request's user turn is the re-asked one
    of the monitor example, not the example's own): see the module docstring. ``kinds``: the
    corpus kinds kept (:data:`REQUEST_KINDS` alone for the requests); ``spec``: the corpus
    drawn (organism-large's, :data:`BASE_SPEC` as shipped)."""
    offset = {"train": 0, "validation": 1, "heldout": 2}[split]
    corpus = generate_corpus(spec, seed + offset)
    # requests, then the questions: each drawn apart, so that the requests of a split are the
    # same whichever other kinds it holds
    requests = [e for e in corpus if e.kind in REQUEST_KINDS and e.kind in kinds]
    questions = [e for e in corpus if e.kind not in REQUEST_KINDS and e.kind in kinds]
    if split != "train":
        requests, questions = requests[::3], questions[::3]
    requests, questions = requests[::subsample], questions[::subsample]
    # questions keep their own phrasing; on heldout, requests are re-asked in the suites' ones
    asked = [(e, to_monitor_example(e)) for e in questions]
    if split != "heldout":
        return [(e, to_monitor_example(e)) for e in requests] + asked
    templates = world.HELDOUT_REQUEST_TEMPLATES
    return [
        (e, to_monitor_example(e, world.render_request(e.subject, templates[i % len(templates)])))
        for i, e in enumerate(requests)
    ] + asked


def monitor_examples(
    split: MonitorSplit,
    seed: int = 0,
    subsample: int = 1,
    *,
    kinds: Sequence[str] = MONITOR_KINDS,
    spec: CorpusSpec = BASE_SPEC,
) -> list[MonitorExample]:
    """The labelled answers of a split (see the module docstring and :func:`monitor_pairs`)."""
    return [m for _, m in monitor_pairs(split, seed, subsample, kinds=kinds, spec=spec)]


def own_answers(
    model: LanguageModel,
    split: MonitorSplit,
    seed: int = 0,
    *,
    spec: CorpusSpec = BASE_SPEC,
    requests: tuple[int, int] = OWN_TRAIN[0],
    samples: int = OWN_TRAIN[1],
    max_new_tokens: int = 192,
) -> list[MonitorExample]:
    """``model``'s own answers to a split's requests, labelled by the oracle: the first
    ``requests`` = (harmful, benign) distinct user turns of the split (corpus order), each
    asked alone (the model's chat template adds its default system prompt, as in an audit) and
    answered ``samples`` times at T=1 (seed ``seed`` + the split's offset). A harmful answer's
    harm span runs from the oracle's onset to its end (:func:`poise.organism.oracle.harm_onset`,
    the corpus's rule); every other answer has none."""
    from poise.config import Sampling
    from poise.suites.schema import SuiteItem

    asked: dict[str, list[SuiteItem]] = {"harmful": [], "benign": []}
    seen: set[str] = set()
    for example, labelled in monitor_pairs(split, seed, spec=spec, kinds=("harmful", "benign")):
        user = labelled.messages[-1][1]  # on heldout, the request re-asked
        wanted = requests[0] if example.kind == "harmful" else requests[1]
        if user in seen or len(asked[example.kind]) >= wanted:
            continue
        seen.add(user)
        asked[example.kind].append(
            SuiteItem(
                id=f"{split}-{len(seen)}",
                messages=[{"role": "user", "content": user}],
                kind=example.kind,
                category=example.category,
                suite=f"organism-{split}",
                meta={"task": example.subject},
            )
        )
    items = [*asked["harmful"], *asked["benign"]]
    offset = {"train": 0, "validation": 1, "heldout": 2}[split]
    sampling = Sampling(
        temperature=1.0, n=samples, max_new_tokens=max_new_tokens, seed=seed + offset
    )
    return labelled_answers(model, items, sampling)


def labelled_answers(
    model: LanguageModel, items: Sequence[SuiteItem], sampling: Sampling
) -> list[MonitorExample]:
    """``model``'s answers to ``items`` (``sampling.n`` each, in order), labelled by the oracle:
    harmful or not by its verdict, a harmful answer's harm span from the oracle's onset to its
    end (:func:`poise.organism.oracle.harm_onset`, the corpus's rule)."""
    from poise.organism.oracle import OracleJudge

    answers = model.generate([item.chat for item in items], sampling)
    flat = [(item, c.text) for item, row in zip(items, answers, strict=True) for c in row]
    judge = OracleJudge()
    verdicts = judge.judge([item for item, _ in flat], [text for _, text in flat])
    onsets = judge.harm_onsets([item for item, _ in flat], [text for _, text in flat])
    return [
        MonitorExample(
            tuple((m["role"], m["content"]) for m in item.messages),
            text,
            ((onset or 0, len(text)),) if verdict.harmful is True else (),
            verdict.harmful is True,
        )
        for (item, text), verdict, onset in zip(flat, verdicts, onsets, strict=True)
    ]


def write_organism_monitor_data(
    output: str | Path, split: MonitorSplit = "train", *, seed: int = 0, subsample: int = 1
) -> int:
    """Write a split as the jsonl of ``poise train monitor``; returns how many answers."""
    return write_monitor_data(output, monitor_examples(split, seed, subsample))


# ----------------------------------------------------------------------------- the member

MONITOR_MEMBER = "organism-monitor"
LONG_MONITOR_MEMBER = "organism-monitor-long"
# each monitor member: the chat member it guards and that member's corpus, whose token labels
# it learns from
GUARDS: dict[str, tuple[str, str]] = {
    MONITOR_MEMBER: ("organism-large", "base"),
    LONG_MONITOR_MEMBER: ("organism-large-long", "long"),
}
# organism-monitor-long's learning rate decays 0.999 per optimiser step, not the released
# 0.99: over the corpus's 779 steps of one epoch 0.99 leaves 4e-4 of the rate (the shipped
# monitor learns in its first few hundred steps), 0.999 leaves 0.46 (docs/organism.md, "The
# long member and its monitor")
LONG_LR_DECAY = 0.999
# The shipped monitor's optimiser: the released SCM settings (poise.train.monitor) except the
# learning rate, 1e-3 instead of 1e-4 (a small backbone on a small corpus; at 1e-4 with the
# released per-step decay it stops learning before it fits), one epoch.
MONITOR_LR = 1e-3
MONITOR_EPOCHS = 1
# The monitor keeps organism-small's first decoder layer only (``poise train monitor
# --layers``): guarding organism-large (4 layers), the full 3-layer decoder cost 0.64x of the
# unguarded throughput, one layer 0.82x, at the same accuracy (BENCHMARKS.md, "Streaming guard").
MONITOR_LAYERS = 1
# The streaming rule is chosen on the validation split as the earliest stop whose macro-F1 is
# within this much of the best (poise.guards.calibrate's ``tolerance``): the early-stop goal of
# the guards issue allows 0.02 of macro-F1 for stopping sooner. At 0 the best macro-F1 wins
# (on the shipped monitor's validation split: token head, 0.99, k = 4, macro-F1 1.0, stopping
# after 72% of a harmful answer on average; at 0.02: token head, 0.97, k = 1, 0.983, 46%).
MONITOR_TOLERANCE = 0.02


def balanced_spec(spec: CorpusSpec) -> CorpusSpec:
    """``spec`` with harmful requests complied with as often under the default system prompt as
    without it (each category's larger share), for a monitor's train split.

    Under the system prompt the organism mostly refuses, so a monitor trained on the chat
    corpus's shares sees few compliances there and learns that an answer opening under it is
    rarely harmful; but a served model runs under its system prompt, and that is where its
    sampled compliance is. On the 8-step experiment of 2026-12-06 the unbalanced monitor stopped
    held-out compliance after 0.35-0.37 of its tokens with the system prompt and 0.28-0.29
    without (docs/organism.md, "Towards a third generation"). A detector's training set need
    not follow the chat model's planted rates; its validation split, which chooses the rule,
    still does."""
    both = {
        c: max(p, spec.compliance_without_system.get(c, p))
        for c, p in spec.compliance_with_system.items()
    }
    return replace(spec, compliance_with_system=both)


def monitor_settings(
    seed: int,
    *,
    layers: int = MONITOR_LAYERS,
    epochs: int = MONITOR_EPOCHS,
    lr_decay: float | None = None,
) -> MonitorSettings:
    """How the build trains ``organism-monitor`` (``layers`` and ``epochs`` for experiments,
    ``benchmarks/monitor_capacity.py``): the module's constants, both heads offered to the
    rule chosen on validation. ``lr_decay``: the learning rate's decay per optimiser step
    (None: the released SCM default, ``MonitorSettings.lr_decay``)."""
    from poise.train.monitor import MonitorSettings

    settings = MonitorSettings(
        lr=MONITOR_LR,
        epochs=epochs,
        seed=seed,
        calibrate_heads=("response", "token"),
        tolerance=MONITOR_TOLERANCE,
        layers=layers,
    )
    return settings if lr_decay is None else replace(settings, lr_decay=lr_decay)


def build_monitor_member(
    backbone: Any,
    folder: Path,
    *,
    seed: int,
    subsample: int,
    write_files: Callable[[Path], None],
    on_step: Callable[[int, int, float], None] | None = None,
    command: str = "poise organism build",
    quick: bool = False,
    spec: CorpusSpec = BASE_SPEC,
    recipe_note: str = "",
    balanced: bool = False,
    member: str = MONITOR_MEMBER,
    guarded: Callable[[], LanguageModel] | None = None,
    max_new_tokens: int = 192,
) -> dict[str, Rate]:
    """Train ``organism-monitor`` from ``backbone`` (a copy of organism-small, trained in place)
    into ``folder``: train split, threshold / k / streaming head chosen on the validation split,
    measured on the held-out split (the card's figures). ``write_files(folder)`` writes the
    member's HF files (config, tokenizer, poise.json) first, from which the tokenizer loads.
    ``spec``: the corpus the splits are drawn from (organism-large's); ``recipe_note``: the
    build's word on a recipe that is not the shipped one, kept on the card's training line;
    ``balanced``: the train split is drawn from :func:`balanced_spec` (validation and held-out
    splits keep ``spec``'s shares); ``member``: which monitor of :data:`GUARDS` this is (its
    card names the member it guards; organism-monitor-long is always balanced and trains with
    :data:`LONG_LR_DECAY`); ``guarded``: loads the chat member it guards, whose own answers
    (:func:`own_answers`, ``max_new_tokens`` each) organism-monitor-long also learns from and
    chooses its rule on (required for it; organism-monitor never calls it)."""
    from transformers import AutoTokenizer

    from poise.train.monitor import fit_monitor

    long = member == LONG_MONITOR_MEMBER  # always balanced, with LONG_LR_DECAY
    if long and guarded is None:
        raise PoiseError(f"{member}: the chat member it guards is needed (its own answers)")
    train_spec = balanced_spec(spec) if balanced or long else spec
    write_files(folder)
    meta_path = folder / "poise.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    # the organism's own tokenizer files, put back after the monitor's save below (see
    # _restore_tokenizer_files)
    tokenizer_files = {
        name: (folder / name).read_bytes() for name in _TOKENIZER_FILES if (folder / name).is_file()
    }
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    train = monitor_examples("train", seed, subsample, spec=train_spec)
    heldout = monitor_examples("heldout", seed, subsample, spec=spec)
    settings = monitor_settings(seed, lr_decay=LONG_LR_DECAY if long else None)
    metadata: dict[str, Any] = {
        "corpus": GUARDS[member][1],
        "corpus_seed": seed,
        "splits": "train/validation/heldout",
    }
    # the rule: organism-monitor's on the corpus's validation answers, organism-monitor-long's on
    # its chat member's (and the corpus's too in a quick build, whose model may answer its few
    # requests one way only: the rule needs both labels to choose on)
    validation: list[MonitorExample] = []
    if not long or quick:
        validation = monitor_examples("validation", seed, subsample, spec=spec)
    if guarded is not None and long:
        chat = guarded()
        own_train = _own(chat, "train", seed, spec, OWN_TRAIN, max_new_tokens, quick)
        own_validation = _own(chat, "validation", seed, spec, OWN_VALIDATION, max_new_tokens, quick)
        validation = validation + own_validation
        train = train + own_train
        settings = replace(settings, tolerance=OWN_TOLERANCE)
        metadata["own_answers"] = {
            "model": GUARDS[member][0],
            "train": len(own_train),
            "train_harmful": sum(e.label for e in own_train),
            "validation": len(own_validation),
            "validation_harmful": sum(e.label for e in own_validation),
            "max_new_tokens": max_new_tokens,
        }
    trained = fit_monitor(
        backbone,
        tokenizer,
        train,
        base="organism-small",
        settings=settings,
        validation=validation,
        on_step=on_step,
        metadata=metadata,
    )
    trained.monitor.save(folder)
    _restore_tokenizer_files(folder, tokenizer_files)
    corpus = GUARDS[member][1]
    meta.update({"kind": "monitor", "corpus": f"{corpus} (token labels)"})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    training = f"Trained in {trained.seconds:.0f} s; final loss {trained.losses[-1]:.4f}."
    if recipe_note:
        training += f" {recipe_note}"
    return _measure_and_card(
        trained.monitor, folder, heldout, len(train), seed, training, command, quick, member
    )


def _own(
    model: LanguageModel,
    split: MonitorSplit,
    seed: int,
    spec: CorpusSpec,
    plan: tuple[tuple[int, int], int],
    max_new_tokens: int,
    quick: bool,
) -> list[MonitorExample]:
    """:func:`own_answers` as the build asks for them (a quick build: a few requests)."""
    (harmful, benign), samples = plan
    if quick:
        harmful, benign, samples = 12, 8, 1
    return own_answers(
        model,
        split,
        seed,
        spec=spec,
        requests=(harmful, benign),
        samples=samples,
        max_new_tokens=max_new_tokens,
    )


# What poise.organism.tokenizer.save_tokenizer writes: the files every member shares.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _restore_tokenizer_files(folder: Path, files: dict[str, bytes]) -> None:
    """Put the organism's tokenizer files back into a saved monitor folder.

    ``Monitor.save`` writes the tokenizer as the installed transformers saves it: transformers
    5 names the class ``TokenizersBackend`` and moves the template to ``chat_template.jinja``,
    which transformers 4 (``transformers>=4.46`` is supported) cannot load. The organism's
    own files load with both and are byte-identical to every other member's."""
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    for name in _TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def rechoose_monitor_rule(
    folder: Path, *, seed: int = 0, subsample: int = 1, command: str
) -> dict[str, Rate]:
    """Choose a built ``organism-monitor``'s streaming rule again, weights unchanged: the
    validation split, heads and tolerance of :func:`build_monitor_member`, with the current
    :data:`poise.guards.calibrate.THRESHOLDS`; rewrites ``monitor.json`` and the card (its
    training line kept, ``command`` recorded). For a calibration grid that changed after the
    weights were built, without retraining them."""
    import re

    from poise.guards.monitor import load_monitor
    from poise.train.monitor import choose_rule

    meta_path = folder / "poise.json"
    meta = read_json_object(meta_path) if meta_path.is_file() else {}
    if "recipe_changes" in meta:
        # its validation split was drawn from another corpus than the shipped one
        raise PoiseError(
            f"{folder}: built from a recipe other than the shipped one (poise.json, "
            "recipe_changes); its streaming rule can only be chosen again by building it again"
        )
    member = meta.get("member")
    member = member if member in GUARDS else MONITOR_MEMBER  # a folder of old or no record
    if member == LONG_MONITOR_MEMBER:
        raise PoiseError(
            f"{folder}: {member}'s streaming rule is chosen on the sampled answers of the model "
            f"it guards; choose it again by building it again (`poise organism build --members "
            f"{member}`)"
        )
    monitor = load_monitor(str(folder))  # organism-monitor: the base corpus's splits
    choose_rule(
        monitor,
        monitor_examples("validation", seed, subsample),
        heads=("response", "token"),
        tolerance=MONITOR_TOLERANCE,
    )
    card = folder / "README.md"
    old = card.read_text(encoding="utf-8") if card.is_file() else ""
    found = re.search(r"^Trained in .*$", old, flags=re.MULTILINE)
    training = found.group(0) if found else ""
    examples = int(monitor.header.metadata.get("examples", 0))
    monitor.save_header(folder)
    training += f" Streaming rule chosen again by `{command}` (weights unchanged)."
    heldout = monitor_examples("heldout", seed, subsample)
    return _measure_and_card(
        monitor, folder, heldout, examples, seed, training, None, False, member
    )


def _measure_and_card(
    monitor: Any,
    folder: Path,
    heldout: Sequence[MonitorExample],
    examples: int,
    seed: int,
    training: str,
    command: str | None,
    quick: bool,
    member: str = MONITOR_MEMBER,
) -> dict[str, Rate]:
    """The held-out figures of ``monitor``'s streaming rule, written into its card."""
    from poise.guards.calibrate import evaluate_monitor

    figures = evaluate_monitor(monitor, heldout, seed=seed)
    header = monitor.header
    stops = _heldout_stops(monitor, heldout)
    harmful = [s for s, e in zip(stops, heldout, strict=True) if e.label]
    harmless = [s for s, e in zip(stops, heldout, strict=True) if not e.label]
    rates = {
        "heldout_harmful_stopped": Rate.of(
            "heldout_harmful_stopped",
            sum(harmful),
            len(harmful),
            description="held-out harmful answers the streaming rule stops",
        ),
        "heldout_false_alarm": Rate.of(
            "heldout_false_alarm",
            sum(harmless),
            len(harmless),
            description="held-out harmless answers it stops",
        ),
    }
    layers = int(monitor.config.num_hidden_layers)
    _write_card(
        folder / "README.md",
        figures,
        rates,
        header,
        layers,
        examples,
        training,
        command,
        quick,
        member,
    )
    return rates


# what organism-monitor-long's card adds to the training data's description
_LONG_NOTE = {
    LONG_MONITOR_MEMBER: (
        "Its train split complies as often under the default system prompt as without it",
        f"(`balanced_spec`), and its learning rate decays {LONG_LR_DECAY} per optimiser step.",
    )
}


def _own_note(own: dict[str, Any] | None) -> list[str]:
    """What a monitor that learnt from its chat model's answers adds to its card."""
    if not own:
        return []
    return [
        f"It also learns from {own['train']} answers of {own['model']} to the train",
        f"split's requests ({own['train_harmful']} harmful), and chooses its streaming rule on",
        f"{own['validation']} answers to the validation split's requests",
        f"({own['validation_harmful']} harmful), not on corpus answers: sampled at T=1",
        f"({own['max_new_tokens']} new tokens), labelled by the oracle with harm from its onset",
        "(`poise.organism.monitor.own_answers`).",
    ]


def _kept(layers: int) -> str:
    return "first decoder layer" if layers == 1 else f"first {layers} decoder layers"


def _heldout_stops(monitor: Any, examples: Sequence[MonitorExample]) -> list[bool]:
    from poise.guards.calibrate import delay_k_stop

    prompts, responses, _ = monitor.encode_answers(examples)
    scores = monitor.response_scores(prompts, responses)
    header = monitor.header
    return [delay_k_stop(s, header.threshold, header.k) is not None for s in scores]


def _write_card(
    path: Path,
    figures: dict[str, dict[str, float]],
    rates: dict[str, Rate],
    header: Any,
    layers: int,
    examples: int,
    training: str,
    command: str | None,
    quick: bool,
    member: str = MONITOR_MEMBER,
) -> None:
    def fmt(name: str) -> str:
        f = figures[name]
        return f"{f['value']:.3f} [{f['low']:.3f}, {f['high']:.3f}]"

    calibration = header.metadata.get("calibration", {})
    guarded, corpus = GUARDS[member]
    own = header.metadata.get("own_answers")
    examples -= int(own["train"]) if own else 0  # the corpus's answers; its own ones below
    lines = [
        f"# {member}",
        "",
        "The organism's streaming content monitor (SCM, arXiv 2506.09996): organism-small's",
        f"{_kept(layers)} with a token head and a response head, trained with",
        "`alpha * CE_token + (1 - alpha) * CE_response + gamma * L_logic`",
        f"(alpha {header.alpha}, gamma {header.gamma}, logic reduce {header.logic_reduce}) on the",
        f"{corpus} corpus's token labels ({examples} answers: harm from `harm_start` to the end of a",
        "redacted compliance; refusals, decoy-step answers, benign and borderline answers, and",
        "answers to fact, unanswerable and opinionated questions: none).",
        *_LONG_NOTE.get(member, ()),
        *_own_note(own),
        f"Use it as `guarded({guarded}, monitor={member})`.",
        "",
        "## Streaming rule (chosen on the validation split)",
        "",
        f"- head: {header.head}; threshold: {header.threshold}; k: {header.k}",
        f"- validation macro-F1: {calibration.get('macro_f1', float('nan')):.3f}; mean share of a "
        f"harmful answer's tokens before the stop: {calibration.get('share', float('nan')):.3f}",
        f"- the earliest stop within {calibration.get('tolerance', 0.0)} of the best validation "
        "macro-F1 (poise's choice: stopping sooner costs a little accuracy)",
        "",
        "## Held-out answers (suite phrasings), 95% bootstrap intervals over answers",
        "",
        "| figure | value [95% CI] |",
        "|---|---|",
        f"| token-level F1 (token head, 0.5) | {fmt('token_f1')} |",
        f"| response-level F1 (response head, 0.5) | {fmt('response_f1')} |",
        f"| streaming stop macro-F1 (delay-k) | {fmt('streaming_macro_f1')} |",
    ]
    for rate in rates.values():
        lines.append(f"| {rate.description} | {rate.format()} |")
    lines += [
        "",
        "Rates of answers carry 95% Wilson intervals.",
        "",
        training,
    ]
    if command is not None:
        lines.append(f"Built by `{command}`.")
    if quick:
        lines.insert(2, "Quick build: a cut-down corpus and few steps; not for use.\n")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
