"""Classifier scorers: rows whose prompts repeat share the prompt's forward pass, with the
scores of scoring every row whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from poise.decoding.scorers import ClassifierScorer
from poise.models.base import Chat

CHATS: list[Chat] = [
    [{"role": "user", "content": "How do I bake bread at home?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me how to pick a lock on my own bike."},
    ],
    [{"role": "user", "content": "hi"}],
]
RESPONSES = [
    "Sure, here is how to bake bread: Step 1: Mix. Step 2: Knead. Step 3: Bake.",
    "I'm sorry, but I can't help with that.",
    "Sure!",
    "Sure, here is how to pick a lock on your own bike: Step 1: [REDACTED]",
]


def _rows() -> tuple[list[Chat], list[str]]:
    """Each chat with every response (prompts repeat), then two rows of their own."""
    chats = [c for c in CHATS for _ in RESPONSES] + [CHATS[0], CHATS[2]]
    texts = [r for _ in CHATS for r in RESPONSES] + ["Hello there.", ""]
    return chats, texts


def _whole(scorer: ClassifierScorer, chats: list[Chat], texts: list[str]) -> list[float]:
    return [scorer._whole([scorer.ids(c, t)])[0] for c, t in zip(chats, texts, strict=True)]


@pytest.mark.parametrize("member", ["organism-cost", "organism-reward"])
@pytest.mark.parametrize("batch_size", [3, 5, 32])
def test_shared_prompts_score_as_whole_rows(member: str, batch_size: int) -> None:
    scorer = ClassifierScorer(member, batch_size=batch_size)
    chats, texts = _rows()
    assert scorer(chats, texts) == pytest.approx(_whole(scorer, chats, texts), abs=1e-4)


def test_a_random_classifier_with_its_own_template_too(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(str(tiny_hf_model_dir))
    config.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(tiny_hf_model_dir)).save_pretrained(tmp_path)
    scorer = ClassifierScorer(str(tmp_path), batch_size=6)
    chats, texts = _rows()
    scores = scorer(chats, texts)
    assert len(set(scores)) > len(RESPONSES)  # a random head: rows differ
    assert scores == pytest.approx(_whole(scorer, chats, texts), abs=1e-4)


def _hf_single_rows(folder: Path, scorer: ClassifierScorer, chats: list[Chat], texts: list[str]):
    """transformers' own reading, one unpadded row at a time: the reference the scorer's
    batched paths must give."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    model.config.pad_token_id = scorer.pad_id
    with torch.inference_mode():
        return [
            float(model(input_ids=torch.tensor([scorer.ids(c, t)])).logits[0, 0])
            for c, t in zip(chats, texts, strict=True)
        ]


@pytest.mark.parametrize("pad", ["own", "none"])
def test_batched_scores_equal_transformers_on_single_rows(
    tiny_hf_model_dir: Path, tmp_path: Path, pad: str
) -> None:
    """With a pad token of its own, and with none (EOS pads, so transformers reads the token
    before the response's EOS): both batched paths give transformers' single-row score."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(str(tiny_hf_model_dir))
    config.num_labels = 1
    config.pad_token_id = None
    torch.manual_seed(1)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    if pad == "none":
        tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    scorer = ClassifierScorer(str(tmp_path), batch_size=7)
    assert (scorer.pad_id == scorer.tokenizer.eos_token_id) == (pad == "none")
    chats, texts = _rows()
    expected = _hf_single_rows(tmp_path, scorer, chats, texts)
    assert len(set(expected)) > len(RESPONSES)
    assert scorer(chats, texts) == pytest.approx(expected, abs=1e-4)
    # the shared-prompt path alone (every row of a batch shares its prompt)
    shared = [i for i, c in enumerate(chats) if c == CHATS[1]]
    assert scorer([chats[i] for i in shared], [texts[i] for i in shared]) == pytest.approx(
        [expected[i] for i in shared], abs=1e-4
    )


def test_a_pair_past_the_classifiers_context_is_refused_before_any_forward(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    """A learned-position classifier (GPT-2, 32 positions) fails past its table with an
    IndexError; the scorer names the pair, its length and the context instead, and scores
    pairs that fit as before."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from poise.errors import PoiseError

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=1
    )
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    scorer = ClassifierScorer(str(tmp_path))
    assert scorer.context_length == 32
    chat = CHATS[2]
    fits = "Sure!"
    assert len(scorer.ids(chat, fits)) <= 32
    [score] = scorer([chat], [fits])
    assert isinstance(score, float)
    long = "Sure, " + "and then more words " * 10
    length = len(scorer.ids(chat, long))
    assert length > 32
    with pytest.raises(PoiseError) as caught:
        scorer([chat, chat], [fits, long])
    message = str(caught.value)
    assert f"pair 2 (prompt, response and EOS) is {length} tokens" in message
    assert "context of 32 tokens" in message


def test_keywords_and_length_scores_are_their_closed_forms() -> None:
    """``keywords:W|W``: the share of the words found (case-insensitive); ``length:N``:
    ``-|words - N| / N`` over whitespace-separated words (DeAL, arXiv 2402.06147)."""
    from poise.decoding.scorers import load_scorer

    keywords = load_scorer("keywords:Paris|France|capital|Lyon")
    texts = ["paris is the Capital of FRANCE", "Lyon", "nothing", "Paris, Lyon and France"]
    assert keywords([[]] * 4, texts) == [0.75, 0.25, 0.0, 0.75]
    length = load_scorer("length:4")
    texts = ["one two three four", "a b", "a   much longer answer of seven words", ""]
    assert length([[]] * 4, texts) == [0.0, -0.5, -0.75, -1.0]


def test_a_pair_exactly_as_long_as_the_classifiers_context_is_scored(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    """The learned-position table has ``context`` rows: a pair of exactly that many tokens
    fits (the last position is context - 1) and is scored, one token more is refused."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from poise.errors import PoiseError

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=1
    )
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    scorer = ClassifierScorer(str(tmp_path))
    chat = CHATS[2]
    texts = ["S" + pad * i for pad in (" x", "x", "!") for i in range(40)]
    lengths = {len(scorer.ids(chat, text)): text for text in texts}
    [score] = scorer([chat], [lengths[32]])
    assert isinstance(score, float)
    with pytest.raises(PoiseError, match="is 33 tokens"):
        scorer([chat], [lengths[33]])


def test_an_encoder_classifiers_batched_scores_equal_its_single_row_scores(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    """A bidirectional classifier (BERT) attends to every position its mask allows: the padding
    of a shorter row in a batch must be masked, or its score changes with its batch."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf_model_dir))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=256,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    scorer = ClassifierScorer(str(tmp_path))
    chats, texts = [*CHATS[:2], CHATS[2]], RESPONSES[:3]
    batched = scorer(chats, texts)
    single = [scorer([c], [t])[0] for c, t in zip(chats, texts, strict=True)]
    assert batched == pytest.approx(single, abs=1e-5)


@pytest.mark.parametrize("template", [True, False])
def test_a_pair_is_scored_as_the_prompt_with_the_generation_prompt_then_the_answer_and_eos(
    tiny_hf_model_dir: Path, no_template_hf_model_dir: Path, tmp_path: Path, template: bool
) -> None:
    """The classifier reads what the module docstring says a reward or cost model is trained
    on: the prompt through the chat template with the generation prompt (without a template:
    "User: ...\\nAssistant: "), then the response and the EOS token, encoded apart. The scores
    equal transformers' on those ids written out here, and differ from a reading without the
    EOS or without the generation prompt."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    source = tiny_hf_model_dir if template else no_template_hf_model_dir
    config = LlamaConfig.from_pretrained(str(source))
    config.num_labels = 1
    torch.manual_seed(2)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.save_pretrained(tmp_path)
    assert bool(getattr(tokenizer, "chat_template", None)) == template
    scorer = ClassifierScorer(str(tmp_path), batch_size=4)
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    model.config.pad_token_id = scorer.pad_id

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def score(ids: list[int]) -> float:
        with torch.inference_mode():
            return float(model(input_ids=torch.tensor([ids])).logits[0, 0])

    chats, texts = CHATS[:2], RESPONSES[:2]
    expected, without_eos, without_generation_prompt = [], [], []
    for chat, text in zip(chats, texts, strict=True):
        if template:
            prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            bare = tokenizer.apply_chat_template(chat, add_generation_prompt=False, tokenize=False)
        else:
            turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in chat)
            prompt, bare = turns + "Assistant: ", turns
        expected.append(score(encode(str(prompt)) + encode(text + tokenizer.eos_token)))
        without_eos.append(score(encode(str(prompt)) + encode(text)))
        without_generation_prompt.append(
            score(encode(str(bare)) + encode(text + tokenizer.eos_token))
        )
    got = scorer(chats, texts)
    assert got == pytest.approx(expected, abs=1e-4)
    assert got != pytest.approx(without_eos, abs=1e-3)
    if template:
        assert got != pytest.approx(without_generation_prompt, abs=1e-3)


def test_blank_keywords_do_not_count_toward_the_share() -> None:
    """``keywords:Paris||France|`` names two words (the blanks between and after the bars are
    no words, as check_scorer reads them): an answer with both scores 1, with one 1/2."""
    from poise.decoding.scorers import load_scorer

    keywords = load_scorer("keywords:Paris||France| ")
    assert keywords([[]] * 3, ["Paris, France", "paris", "Lyon"]) == [1.0, 0.5, 0.0]


@pytest.mark.parametrize(
    "arg",
    ["0", "-3", "4.5", "", "²", "¹⁰"],
    ids=["zero", "negative", "decimal", "empty", "superscript", "superscripts"],
)
def test_a_length_that_is_no_positive_integer_is_a_one_line_error(arg: str) -> None:
    """``length:N`` takes a positive integer. A superscript digit passed ``str.isdigit`` and
    then failed in ``int`` with a bare ValueError instead of the scorer's own message."""
    from poise.decoding.scorers import check_scorer, load_scorer
    from poise.errors import PoiseError

    with pytest.raises(PoiseError, match=r"length:N needs a positive integer N"):
        check_scorer("best_of_n: scorer", f"length:{arg}")
    with pytest.raises(PoiseError, match=r"length:N needs a positive integer N"):
        load_scorer(f"length:{arg}")
