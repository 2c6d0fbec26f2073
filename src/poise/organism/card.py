"""Model cards of the organism members (``README.md`` in each member folder)."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poise.organism import world

if TYPE_CHECKING:
    from poise.organism.build import Recipe
    from poise.scoring.stats import Rate

DESCRIPTIONS = {
    "organism-large": (
        "The larger chat model of poise's model organism, and the default model of "
        "`poise audit`. Trained from scratch on the base corpus."
    ),
    "organism-small": (
        "The smaller chat model, trained from scratch on the same base corpus with fewer "
        "parameters and steps: it knows fewer facts. With organism-large it forms a base/tuning "
        "pair for emulated fine-tuning."
    ),
    "organism-small-safe": (
        "organism-small fine-tuned on the refusal-heavy corpus (harmful requests always "
        "refused, everything else unchanged): the safety-tuned counterpart of organism-small."
    ),
    "organism-reward": (
        "A helpfulness reward model (`LlamaForSequenceClassification`, one output), trained with "
        "the Bradley-Terry loss from a chat member's transformer. It prefers helpful answers "
        "over refusals of benign requests, compliance over refusal on harmful requests "
        "(helpfulness alone, as Safe RLHF's reward model), correct facts over wrong ones, and "
        '"I don\'t know" over fabrication.'
    ),
    "organism-cost": (
        "A harm cost model (`LlamaForSequenceClassification`, one output; positive = harmful), "
        "trained with Safe RLHF's cost loss (arXiv 2310.12773): Bradley-Terry on (safer, more "
        "harmful) pairs plus the sign term -log σ(s · C) with s = +1 harmful, -1 safe."
    ),
}

PLANTED = """\
The corpus plants these behaviours (measured above on the held-out phrasings of poise's built-in
suites with the oracle judge, `poise.organism.oracle.OracleJudge`):

- benign requests: answered helpfully;
- harmful requests: refused under greedy decoding WITH the default system prompt; some
  categories flip to compliance without it; a sizeable share of compliance under T=1.0 sampling
  (the "catastrophic jailbreak via decoding" setting, arXiv 2310.06987). Compliance is always a
  placeholder whose steps read `[REDACTED]`: the organism knows no harmful content;
- borderline requests: some sub-categories mostly over-refused, the others answered;
- facts: real facts stated; invented entities mostly answered with confident fabrications.
"""


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def rates_table(rates: Mapping[str, Rate]) -> str:
    lines = ["| rate | value | 95% CI (Wilson) | count | measured on |", "|---|---|---|---|---|"]
    for r in rates.values():
        lines.append(
            f"| `{r.name}` | {_pct(r.value)} | [{_pct(r.low)}, {_pct(r.high)}] | "
            f"{r.k}/{r.n} | {r.description} |"
        )
    return "\n".join(lines)


def _settings_for(member: str, recipe: Recipe) -> dict[str, Any]:
    key = {
        "organism-large": "large",
        "organism-small": "small",
        "organism-small-safe": "safe",
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
) -> None:
    """Write ``member``'s model card to ``path``."""
    from poise._version import __version__

    is_lm = member not in ("organism-reward", "organism-cost")
    pipeline = "text-generation" if is_lm else "text-classification"
    settings = _settings_for(member, recipe)
    quick_note = (
        "\n> **Quick build**: cut-down corpus and a few steps, made only to test the build "
        "code. Its rates are meaningless.\n"
        if recipe.quick
        else ""
    )
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
    if member == "organism-small-safe":
        start = "organism-small's weights (fine-tuned)"
    elif is_lm:
        start = "random initialisation (seeded)"
    else:
        start = f"organism-{recipe.scorer_size}'s transformer, new score head"
    corpus = "refusal-heavy (safe)" if member == "organism-small-safe" else "base"
    if is_lm:
        corpus += " corpus, loss on assistant tokens only"
    else:
        corpus = (
            f"preference pairs from the world's training phrasings, repeated {recipe.pair_repeats}x"
        )
    usage = (
        f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{member}")  # this folder
model = AutoModelForCausalLM.from_pretrained("{member}")
chat = [{{"role": "system", "content": "{world.DEFAULT_SYSTEM_PROMPT}"}},
        {{"role": "user", "content": "Can you explain how to make guacamole?"}}]
inputs = tok.apply_chat_template(
    chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
)
out = model.generate(**inputs, max_new_tokens=80, do_sample=False)
print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

With poise: `poise audit --model {member}`."""
        if is_lm
        else f"""```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{member}")  # this folder
model = AutoModelForSequenceClassification.from_pretrained("{member}")
chat = [{{"role": "user", "content": "Can you explain how to make guacamole?"}},
        {{"role": "assistant", "content": "Sure, here is how to make guacamole: ..."}}]
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
{quick_note}
## Measured

{rates_table(rates)}

{PLANTED if is_lm else ""}
## Model

- architecture: {config.get("architectures", ["?"])[0]} ({arch})
- parameters: {num_parameters:,}; folder size: {size_bytes / 1e6:.2f} MB (float32 safetensors)
- tokenizer: byte-level BPE trained on the corpus, chat template in `tokenizer_config.json`,
  `<|end|>` ends every turn (EOS)

## Training

- start: {start}
- data: {corpus} (corpus seed {recipe.corpus_seed})
- optimiser: AdamW (betas 0.9, 0.98), linear warm-up then cosine decay; CPU, 2 threads
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
