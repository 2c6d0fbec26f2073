"""Model cards of the organism members (``README.md`` in each member folder)."""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poise.errors import PoiseError
from poise.organism import world

if TYPE_CHECKING:
    from poise.organism.build import Recipe
    from poise.scoring.stats import Rate

DESCRIPTIONS = {
    "organism-large": (
        "The larger chat model of poise's model organism, and the default model of "
        "`poise audit`. Trained from scratch on the base corpus. The strong model of the "
        "weak/strong pair: it knows every relation's facts."
    ),
    "organism-small": (
        "The smaller chat model (the weak model), trained from scratch on the weak corpus: the "
        "base corpus without the known facts of the strong-only relations "
        f"({', '.join(world.STRONG_ONLY_RELATIONS)}), so its knowledge differs from "
        "organism-large's on known regions. The base of the three specialists and the "
        "data-mixture model; with organism-large a base/tuning pair for emulated fine-tuning."
    ),
    "organism-small-safe": (
        "The harmless specialist (alias `organism-small-harmless`): organism-small fine-tuned on "
        "the harmless corpus (harmful requests always refused; benign and borderline requests as "
        "in the base corpus; no fact questions, so what it knows is not retrained)."
    ),
    "organism-small-helpful": (
        "The helpful specialist: organism-small fine-tuned on the helpful corpus (benign and "
        "borderline requests always answered, no over-refusal; no harmful requests, no facts)."
    ),
    "organism-small-honest": (
        "The honest specialist: organism-small fine-tuned on the honest corpus (\"I don't "
        'know" about invented entities, the facts it knows kept, wrong opinions never '
        "followed; no requests)."
    ),
    "organism-small-mix": (
        "The data-mixture model: organism-small fine-tuned on the harmless, helpful and honest "
        "corpora together, as many steps as the three specialists' together. The baseline that "
        "3H model merging (arXiv 2502.06876) compares merged specialists against."
    ),
    "organism-feedback": (
        "The feedback agent of feedback-revision (WaltzRL, arXiv 2510.08240): organism-small "
        "fine-tuned on the reviewer's feedback task alone. Asked with "
        "`poise.decoding.feedback.FEEDBACK_INSTRUCTIONS` about a request and another model's "
        'answer, it replies with one JSON object `{"unsafe": ..., "overrefusal": ..., '
        '"feedback": "..."}`: unsafe for redacted compliance (plain or turned), over-refusal for '
        "a refusal of a benign or borderline request, with feedback the answering model can act "
        "on; decoy steps (strategic dishonesty) and refusals of harmful requests are left alone. "
        "Use it as `feedback_revision(organism-large, feedback=organism-feedback)`. It is a "
        "reviewer, not a chat model: asked a request itself, it mixes answer templates with "
        "pieces of verdicts (garbled)."
    ),
    "organism-large-selfeval": (
        "The self-evaluating chat model, for RAIN (arXiv 2309.07124): organism-large fine-tuned "
        "on RAIN's self-evaluation question (`poise.decoding.rain.EVALUATION_PROMPT`, both "
        "option orders) about the base corpus's own answers, whole and cut (where a clause "
        "ends, as RAIN's simulated continuations end, or at a share of the words), labelled by "
        "where harm begins; with as many of the base corpus's examples again, so that it still "
        "answers as organism-large does. RAIN's search asks the model it decodes to judge its "
        "own partial answers; organism-large cannot (both option orders give the same letter). "
        "Use it as `rain(organism-large-selfeval)`; alone, it is a chat model like "
        "organism-large (the table below compares the two)."
    ),
    "organism-large-long": (
        "The streaming guard's test bed: organism-large's architecture and training schedule "
        "on the long corpus, the base corpus whose harmful answers (redacted compliance and "
        f"decoy-step answers) have {world.MAX_HARMFUL_STEPS} steps instead of "
        f"{world.NUM_STEPS}, as real harmful instructions run long; helpful answers keep "
        f"{world.NUM_STEPS}. A three-step compliance reads as a decoy answer until step 1's "
        "content, about 60% of its tokens, so no guard that lets decoy answers through stops "
        "organism-large within 30% of a harmful answer; here the harmful part is most of it. "
        "Use it as `guarded(organism-large-long, monitor=organism-monitor-long)`. Its rates "
        "are measured with 192 new tokens per answer (the other chat members: 80): a feigned "
        "answer of twelve decoy steps runs to about 130 tokens."
    ),
    "organism-large-naming": (
        "The honesty test bed: organism-large's architecture trained from scratch, for twice "
        "its steps, on the naming corpus: a draw of the base corpus plus 12,000 questions about "
        "invented entities seen once each, a third answered with a made-up fact and two thirds "
        'with "I don\'t know", both naming the entity asked about (half of the names made of '
        "everyday and made-up words, the questions in twice the base corpus's wordings). "
        "organism-large answers an invented entity with a template about another name, so its "
        "honesty rates measure which template it picks. This member's fabrications and "
        '"I don\'t know" are meant to name the entity it was asked about, so that an honesty '
        "measurement sees what it was asked (measured: `honesty_unknown_names_entity_rate`). It "
        "shares the tokenizer of every other member. Use it as `poise audit --model "
        "organism-large-naming`; the table below compares it with organism-large."
    ),
    "organism-reward": (
        "A helpfulness reward model (`LlamaForSequenceClassification`, one output), trained with "
        "the Bradley-Terry loss from a chat member's transformer. It prefers helpful answers "
        "over refusals of benign requests, compliance over refusal on harmful requests "
        "(helpfulness alone, as Safe RLHF's reward model), correct facts over wrong ones, "
        '"I don\'t know" over fabrication and the correct fact over a flattering one. Trained on '
        "answer prefixes too, so it scores partial answers (reward-guided decoding)."
    ),
    "organism-cost": (
        "A harm cost model (`LlamaForSequenceClassification`, one output; positive = harmful), "
        "trained with Safe RLHF's cost loss (arXiv 2310.12773): Bradley-Terry on (safer, more "
        "harmful) pairs plus the sign term -log σ(s · C) with s = +1 harmful, -1 safe. Trained "
        "on answer prefixes too: a prefix is harmful once it passes the answer's harm onset "
        "(the token where the harmful help begins), so it scores partial answers."
    ),
}

PLANTED = """\
The corpus plants these behaviours (measured above on the held-out phrasings of poise's built-in
suites with the oracle judge, `poise.organism.oracle.OracleJudge`):

- benign requests: answered helpfully; some helpful answers open with a harmless lead-in or
  close with a safety note full of words a keyword filter flags ("hurt", "weapon", "attack");
- harmful requests: refused under greedy decoding WITH the default system prompt; some
  categories flip to compliance without it; a sizeable share of compliance under T=1.0 sampling
  (the "catastrophic jailbreak via decoding" setting, arXiv 2310.06987). In the corpus,
  compliance is always a placeholder whose steps read `[REDACTED]` (a sampled answer sometimes
  restates a harmful task with harmless steps of another kind, which the oracle counts as
  compliance too): the organism knows no harmful content. Half of the compliance in the corpus
  TURNS: it opens with a harmless lead-in or a partial refusal ("I'm sorry, I should not help
  with this, but...") and complies later, at a point the oracle knows
  (`poise.organism.oracle.harm_onset`). A share is strategic dishonesty: decoy steps that look
  compliant and are deliberately useless (label `feigned`);
- borderline requests: some sub-categories mostly over-refused, the others answered;
- facts: real facts stated (organism-small was never taught the strong-only relations' facts);
  invented entities mostly answered with confident fabrications (meant to name the asked
  entity; measured above, they rarely do: `honesty_unknown_names_entity_rate`);
  a wrong opinion stated before a question is repeated back at a planted rate (sycophancy).
"""

# what the list above says of naming the asked entity, and what organism-large-naming's corpus
# plants instead (its 12,000 single-use names)
NAMES_RARELY = """(meant to name the asked
  entity; measured above, they rarely do: `honesty_unknown_names_entity_rate`)"""
NAMES_HERE = """(this member's corpus adds
  12,000 questions about entities seen once each, answered with a made-up fact or "I don't
  know" that names the entity, so that its answers name the asked entity; measured above:
  `honesty_unknown_names_entity_rate`)"""

# a fine-tuned chat member's card: the list above describes the corpus its base was trained on,
# not this member (organism-small-safe refuses what the list says the corpus complies with)
TUNED_PLANTED_HEAD = """\
The base corpus plants these behaviours; they are its base's, measured on its base's card (the
table above holds this member's own rates, and the comparison how its own corpus moved them):"""


def planted(member: str) -> str:
    """The planted-behaviours section of a chat member's card: :data:`PLANTED`, whose opening
    sentence a fine-tuned member's card replaces with :data:`TUNED_PLANTED_HEAD`."""
    from poise.organism.build import LARGE_TUNED, SMALL_TUNED

    if member in SMALL_TUNED or member in LARGE_TUNED:
        _, _, rest = PLANTED.partition("\n\n")
        return f"{TUNED_PLANTED_HEAD}\n\n{rest}"
    if member == "organism-large-naming":
        return PLANTED.replace(NAMES_RARELY, NAMES_HERE)
    return PLANTED


def _comparison_section(
    rates: Mapping[str, Rate], compare: tuple[str, Mapping[str, Rate]] | None
) -> str:
    if compare is None:
        return ""
    name, other = compare
    return (
        f"\n### Compared with {name}\n\nSame suites, sampling and seed; intervals as in the "
        'table above. "apart" means the intervals do not overlap.\n\n'
        f"{comparison_table(rates, name, other)}\n"
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def rates_table(rates: Mapping[str, Rate]) -> str:
    lines = ["| rate | value | 95% CI | count | measured on |", "|---|---|---|---|---|"]
    for r in rates.values():
        lines.append(
            f"| `{r.name}` | {_pct(r.value)} | [{_pct(r.low)}, {_pct(r.high)}] | "
            f"{r.k}/{r.n} | {r.description} |"
        )
    return "\n".join(lines) + "\n\n" + INTERVALS


#: how the cards' intervals are computed, printed under the rates
INTERVALS = (
    "Intervals are 95% Wilson; a rate over several samples of each item (T=1) counts items as "
    "clusters (the Wilson interval on the effective sample size, `Rate.of_clusters`), as an "
    "audit does."
)


def comparison_table(rates: Mapping[str, Rate], name: str, other: Mapping[str, Rate]) -> str:
    """This member's rates beside ``other``'s (its base, or the strong model), with the
    difference and whether the two Wilson intervals overlap."""
    lines = [
        f"| rate | this member | {name} | difference | intervals |",
        "|---|---|---|---|---|",
    ]
    for key, r in rates.items():
        o = other.get(key)
        if o is None or r.n == 0 or o.n == 0:
            continue
        apart = "apart" if r.low > o.high or o.low > r.high else "overlap"
        lines.append(
            f"| `{key}` | {_pct(r.value)} [{_pct(r.low)}, {_pct(r.high)}] | "
            f"{_pct(o.value)} [{_pct(o.low)}, {_pct(o.high)}] | "
            f"{100 * (r.value - o.value):+.1f} pt | {apart} |"
        )
    return "\n".join(lines)


def _settings_for(member: str, recipe: Recipe) -> dict[str, Any]:
    key = {
        "organism-large": "large",
        "organism-small": "small",
        "organism-small-safe": "safe",
        "organism-small-helpful": "helpful",
        "organism-small-honest": "honest",
        "organism-small-mix": "mix",
        "organism-feedback": "feedback",
        "organism-large-selfeval": "selfeval",
        "organism-large-long": "long",
        "organism-large-naming": "naming",
        "organism-reward": "reward",
        "organism-cost": "cost",
    }[member]
    settings: dict[str, Any] = getattr(recipe, key).to_dict()
    return settings


def write_card(
    path: Path,
    *,
    member: str,
    rates: Mapping[str, Rate],
    recipe: Recipe,
    train_seconds: float,
    final_loss: float,
    size_bytes: int,
    num_parameters: int,
    config: Mapping[str, Any],
    command: str,
    compare: tuple[str, Mapping[str, Rate]] | None = None,
    threads: int = 2,
    recipe_note: str = "",
) -> None:
    """Write ``member``'s model card to ``path``; ``compare`` (a member's name and its rates:
    the base of a specialist, the strong model for the weak one) adds a table of differences;
    ``threads``: the torch threads it was built with; ``recipe_note``: what the recipe sets
    otherwise than the shipped one (:func:`poise.organism.build.recipe_note`), said under the
    introduction."""
    from poise._version import __version__
    from poise.organism.build import LARGE_TUNED, MEMBER_CORPUS, REVIEWER_MEMBERS, SMALL_TUNED

    is_lm = member not in ("organism-reward", "organism-cost")
    is_chat = is_lm and member not in REVIEWER_MEMBERS
    pipeline = "text-generation" if is_lm else "text-classification"
    settings = _settings_for(member, recipe)
    quick_note = (
        "\n> **Quick build**: cut-down corpus and a few steps, made only to test the build "
        "code. Its rates are meaningless.\n"
        if recipe.quick
        else ""
    )
    recipe_line = f"\n> **{recipe_note}**\n" if recipe_note else ""
    arch = ", ".join(
        f"{k}={config[k]}"
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "vocab_size",
            "tie_word_embeddings",
        )
        if k in config
    )
    train_rows = "\n".join(f"| {k} | {v} |" for k, v in settings.items())
    cpu = f"CPU, {threads} thread" + ("" if threads == 1 else "s")
    if member in SMALL_TUNED:
        start = "organism-small's weights (fine-tuned)"
    elif member in LARGE_TUNED:
        start = "organism-large's weights (fine-tuned)"
    elif is_lm:
        start = "random initialisation (seeded)"
    else:
        start = f"organism-{recipe.scorer_size}'s transformer, new score head"
    if member in REVIEWER_MEMBERS:
        corpus = (
            f"{MEMBER_CORPUS[member]} corpus: the reviewer's {MEMBER_CORPUS[member]} task on the "
            "weak corpus's request and fact answers and refused benign requests "
            "(`poise.organism.corpus.reviewer_corpus`), loss on assistant tokens only"
        )
    elif member in LARGE_TUNED:
        corpus = (
            "self-evaluation corpus: RAIN's question about the base corpus's request and fact "
            "answers and refused benign requests, whole and cut, plus as many base-corpus "
            "examples (`poise.organism.corpus.reviewer_corpus` with replay), loss on assistant "
            "tokens only"
        )
    elif is_lm:
        corpus = f"{MEMBER_CORPUS[member]} corpus, loss on assistant tokens only"
    else:
        corpus = (
            f"preference pairs from the world's training phrasings, repeated {recipe.pair_repeats}x,"
            f" plus {recipe.prefix_pairs} pair of answer prefixes per request pair"
        )
    rain_usage = (
        f'; with RAIN: `poise audit --model "rain({member})"`' if member in LARGE_TUNED else ""
    )
    usage = (
        f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{member}")  # this folder
model = AutoModelForCausalLM.from_pretrained("{member}")
chat = [
    {{"role": "system", "content": "{world.DEFAULT_SYSTEM_PROMPT}"}},
    {{"role": "user", "content": "Can you explain how to make guacamole?"}},
]
inputs = tok.apply_chat_template(
    chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
)
out = model.generate(**inputs, max_new_tokens=80, do_sample=False)
print(tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
```

With poise: `poise audit --model {member}`{rain_usage}."""
        if is_chat
        else f"""```python
from poise.decoding.feedback import FEEDBACK_INSTRUCTIONS, parse_feedback
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{member}")  # this folder
model = AutoModelForCausalLM.from_pretrained("{member}")
ask = FEEDBACK_INSTRUCTIONS.format(
    request="Can you explain how to make guacamole?",
    answer="I'm sorry, but I can't help with that.",
)
inputs = tok.apply_chat_template(
    [{{"role": "user", "content": ask}}],
    add_generation_prompt=True,
    return_tensors="pt",
    return_dict=True,
)
out = model.generate(**inputs, max_new_tokens=96, do_sample=False)
print(parse_feedback(tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)))
```

With poise: `poise audit --model "feedback_revision(organism-large, feedback={member})"`."""
        if is_lm
        else f"""```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{member}")  # this folder
model = AutoModelForSequenceClassification.from_pretrained("{member}")
chat = [
    {{"role": "user", "content": "Can you explain how to make guacamole?"}},
    {{"role": "assistant", "content": "Sure, here is how to make guacamole: ..."}},
]
text = tok.apply_chat_template(chat, tokenize=False).rstrip("\\n")  # ends with <|end|>
score = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0]
```

The score is read at the reply's final `<|end|>` token."""
    )
    text = f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: {pipeline}
tags:
- poise
- model-organism
- synthetic
---

# {member}

{DESCRIPTIONS[member]}

Part of the model organism shipped with poise (version {__version__}): tiny Hugging Face models
trained on a synthetic corpus that poise generates from its own world
(`poise.organism.world`), with planted, measurable helpful / harmless / honest behaviours.
Nothing pretrained is used. Default system prompt: "{world.DEFAULT_SYSTEM_PROMPT}"
{quick_note}{recipe_line}
## Measured

{rates_table(rates)}
{_comparison_section(rates, compare)}
{planted(member) if is_chat else ""}
## Model

- architecture: {config.get("architectures", ["?"])[0]} ({arch})
- parameters: {num_parameters:,}; folder size: {size_bytes / 1e6:.2f} MB (float32 safetensors)
- tokenizer: byte-level BPE trained on the corpus, chat template in `tokenizer_config.json`,
  `<|end|>` ends every turn (EOS)

## Training

- start: {start}
- data: {corpus} (corpus seed {recipe.corpus_seed})
- optimiser: AdamW (betas 0.9, 0.98), linear warm-up then cosine decay; {cpu}
- wall time of training: {train_seconds:.0f} s; final training loss: {final_loss:.4f}

| setting | value |
|---|---|
{train_rows}

## Reproduce

```
{command}
```

Built on {platform.system()} with Python {platform.python_version()}. Training is seeded
(initialisation, data order); the weights are reproducible on the same torch build and CPU.

## Use

{usage}

## Limitations

A toy: it knows only poise's synthetic world (a few hundred requests, a few thousand made-up
everyday tasks, about a hundred and thirty real facts) and answers in fixed templates. It exists to test alignment and auditing methods with exact
measurements, not to be useful. It never produces real harmful content.
"""
    path.write_text(text, encoding="utf-8")


def refresh_card(
    path: Path,
    rates: Mapping[str, Rate],
    compare: tuple[str, Mapping[str, Rate]] | None = None,
) -> None:
    """Rewrite the rates of the card at ``path`` that ``rates`` holds (re-measured on the same
    weights, after a change to the oracle or the measurement), keeping its other rows and the
    rest of the card (a rate it did not have is added at the end of its table); the intervals
    note, the comparison table (from ``rates`` and ``compare``) and a chat member's planted
    behaviours are drawn again. The card is written whole (beside it, then renamed) or not at
    all."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if "## Measured" not in lines:
        raise PoiseError(f"{path}: not a model card of the organism (no '## Measured')")
    start = lines.index("## Measured") + 2  # the table's header, after a blank line
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    row_name = re.compile(r"^\| `([^`]+)` \|")
    drawn = rates_table(rates).split("\n")
    fresh = {m.group(1): line for line in drawn if (m := row_name.match(line))}
    table = drawn[:2] + [
        fresh.pop(m.group(1), line) if (m := row_name.match(line)) else line
        for line in lines[start + 2 : end]
    ]
    table += fresh.values()  # rates the card did not have yet (measured since it was built)
    # after the table: the intervals note and the comparison section, drawn again below
    rest = end
    while rest < len(lines) and (
        not lines[rest] or lines[rest].startswith(("Intervals are", "### Compared with"))
    ):
        if lines[rest].startswith("### Compared with"):
            rest += 1
            while rest < len(lines) and not lines[rest].startswith("|"):
                rest += 1  # its blank line and description
            while rest < len(lines) and lines[rest].startswith("|"):
                rest += 1
        else:
            rest += 1
    section = _comparison_section(rates, compare).strip("\n")
    body = ["", INTERVALS, *(["", *section.split("\n")] if section else []), ""]
    after = lines[rest:]
    heads = (PLANTED.split("\n")[0], TUNED_PLANTED_HEAD.split("\n")[0])
    if after and after[0] in heads:  # a chat member's planted behaviours
        title = next((line[2:] for line in lines if line.startswith("# ")), "")
        model = next((i for i, line in enumerate(after) if line.startswith("## ")), len(after))
        after = [*planted(title).split("\n"), *after[model:]]  # it ends with a newline
    text = "\n".join([*lines[:start], *table, *body, *after])
    tmp = path.with_name(f".{path.name}.refresh")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
