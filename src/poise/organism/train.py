"""Training the organism: tiny Llama models from scratch, in plain PyTorch loops on CPU.

Two loops, both short on purpose:

- :func:`train_lm` — next-token cross-entropy on the assistant's tokens only (the reply and its
  ``<|end|>``); the prompt is context, never a target.
- :func:`train_scorer` — a ``LlamaForSequenceClassification`` (one output) on preference pairs:
  the Bradley-Terry reward loss, or Safe RLHF's cost loss (Bradley-Terry on (safer, more
  harmful) pairs plus the sign term), both from :mod:`poise.train.losses.reward`.

Determinism: a seeded ``torch.Generator`` drives initialisation and data order, and the loops
use no other randomness, so a seed reproduces the weights on the same machine and torch build.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from poise.organism.corpus import Pair

logger = logging.getLogger(__name__)

# A tokenised training example: token ids and how many leading ids are prompt.
Encoded = tuple[list[int], int]
StepCallback = Callable[[int, float], None]

# Shapes of the members. Tied embeddings: the vocabulary matrix is most of a tiny model.
SIZES: dict[str, dict[str, Any]] = {
    "large": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
    # as wide as large (a narrower model copies long tasks unreliably when sampled at T=1:
    # 64 wide and 2 deep gave 17% sampled benign helpfulness), one layer less and fewer steps;
    # its knowledge gap to large is planted by its corpus (world.STRONG_ONLY_RELATIONS)
    "small": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
}


@dataclass(frozen=True)
class TrainSettings:
    """One training run's knobs (all recorded in the member's model card)."""

    steps: int
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def llama_config(size: str, vocab_size: int, special: dict[str, int], **extra: Any) -> Any:
    """A ``LlamaConfig`` of one of :data:`SIZES` for the organism tokenizer's ids."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        bos_token_id=special["<|bos|>"],
        eos_token_id=special["<|end|>"],
        pad_token_id=special["<pad>"],
        **SIZES[size],
        **extra,
    )


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with ``threads`` intra-op threads, then restore the previous setting.

    Training on a shared machine: more threads than free cores make every op wait on the
    slowest thread, which costs far more than it gains."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_fraction`` of the peak."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    low = settings.final_lr_fraction
    return settings.lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    # no weight decay on norms: decaying RMSNorm gains towards zero only hurts a tiny model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.98), eps=1e-8)


def _batches(n: int, settings: TrainSettings, lengths: Sequence[int]) -> list[list[int]]:
    """Index batches for ``settings.steps`` steps, epoch after epoch, in a seeded order.

    Each epoch is shuffled, then cut into windows of 16 batches whose examples are sorted by
    length, so a batch holds similar lengths (less padding) while batches stay shuffled.
    """
    gen = torch.Generator().manual_seed(settings.seed)
    batches: list[list[int]] = []
    b = min(settings.batch_size, n)
    while len(batches) < settings.steps:
        order = torch.randperm(n, generator=gen).tolist()
        window = 16 * b
        epoch: list[list[int]] = []
        for start in range(0, n - b + 1, window):
            chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
            epoch += [chunk[i : i + b] for i in range(0, len(chunk) - b + 1, b)]
        for i in torch.randperm(len(epoch), generator=gen).tolist():
            batches.append(epoch[i])
    return batches[: settings.steps]


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[batch, max_len]`` ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def lm_batch(
    examples: Sequence[Encoded], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, loss_mask)``, each ``[batch, seq]``; ``loss_mask`` marks
    the positions whose NEXT token is a reply token (prediction targets)."""
    ids, mask = _pad([e[0] for e in examples], pad_id)
    target = torch.zeros_like(mask)
    for i, (row, n_prompt) in enumerate(examples):
        target[i, n_prompt : len(row)] = 1  # reply tokens (the targets)
    loss_mask = torch.zeros_like(mask)
    loss_mask[:, :-1] = target[:, 1:]  # position t predicts token t + 1
    return ids, mask, loss_mask


def lm_loss(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Mean cross-entropy over reply tokens.

    The vocabulary projection runs only at positions that predict a reply token (about half of
    them): the prompt is context, and projecting it would cost a quarter of the step for nothing.
    Expects a ``LlamaForCausalLM`` (``.model`` then ``.lm_head``).
    """
    ids, mask, loss_mask = batch
    lm: Any = model
    hidden = lm.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [batch, seq, hidden]
    targets = ids.roll(-1, dims=1)  # [batch, seq]: the next token at each position
    keep = loss_mask.bool()  # [batch, seq]
    logits = lm.lm_head(hidden[keep])  # [kept, vocab]
    return F.cross_entropy(logits, targets[keep])


def train_lm(
    model: torch.nn.Module,
    data: Sequence[Encoded],
    settings: TrainSettings,
    pad_id: int,
    on_step: StepCallback | None = None,
) -> list[float]:
    """Train ``model`` in place on ``data``; returns the loss of every step."""
    batches = _batches(len(data), settings, [len(e[0]) for e in data])
    optimizer = _optimizer(model, settings)
    model.train()
    losses: list[float] = []
    for step, index in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, settings)
        loss = lm_loss(model, lm_batch([data[i] for i in index], pad_id))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
        if (step + 1) % 100 == 0:
            logger.info("lm step %d/%d loss %.4f", step + 1, settings.steps, losses[-1])
    model.eval()
    return losses


# --------------------------------------------------------------------------------------------
# Reward and cost models
# --------------------------------------------------------------------------------------------

Objective = Literal["reward", "cost"]


@dataclass(frozen=True)
class EncodedPair:
    chosen: list[int]
    rejected: list[int]
    chosen_safe: bool
    rejected_safe: bool
    ranked: bool  # whether the pair carries a ranking for the objective


def encode_pairs(
    pairs: Sequence[Pair], encode: Callable[[int, str, str], list[int]], objective: Objective
) -> list[EncodedPair]:
    """Token ids of each side (``encode(pair_index, prompt, response)``); for the cost objective
    only pairs with one harmful side are ranked, the others feed the sign term alone."""
    return [
        EncodedPair(
            encode(i, p.prompt, p.chosen),
            encode(i, p.prompt, p.rejected),
            p.chosen_safe,
            p.rejected_safe,
            ranked=objective == "reward" or p.ranked_by_harm,
        )
        for i, p in enumerate(pairs)
    ]


def _scores(model: torch.nn.Module, rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    ids, mask = _pad(rows, pad_id)
    # LlamaForSequenceClassification reads the score at each row's last non-pad token
    return model(input_ids=ids, attention_mask=mask).logits[:, 0]  # [batch]


def scorer_loss(
    model: torch.nn.Module, batch: Sequence[EncodedPair], objective: Objective, pad_id: int
) -> torch.Tensor:
    from poise.train.losses.reward import cost_model_loss, reward_model_loss, safety_signs

    scores = _scores(model, [p.chosen for p in batch] + [p.rejected for p in batch], pad_id)
    chosen, rejected = scores[: len(batch)], scores[len(batch) :]  # [B], [B]
    if objective == "reward":
        return reward_model_loss(chosen, rejected).mean()
    chosen_safe = torch.tensor([p.chosen_safe for p in batch])
    rejected_safe = torch.tensor([p.rejected_safe for p in batch])
    ranked = torch.tensor([p.ranked for p in batch])
    full = cost_model_loss(chosen, rejected, chosen_safe, rejected_safe)  # [B]
    # pairs with both sides safe have no "more harmful" side: sign terms only
    # (arXiv 2310.12773 cost objective, its classification part -log σ(s · C))
    sign_only = -F.logsigmoid(safety_signs(chosen_safe) * chosen) - F.logsigmoid(
        safety_signs(rejected_safe) * rejected
    )
    return torch.where(ranked, full, sign_only).mean()


def train_scorer(
    model: torch.nn.Module,
    pairs: Sequence[EncodedPair],
    settings: TrainSettings,
    objective: Objective,
    pad_id: int,
    on_step: StepCallback | None = None,
) -> list[float]:
    """Train a sequence-classification ``model`` in place; returns the loss of every step."""
    lengths = [max(len(p.chosen), len(p.rejected)) for p in pairs]
    batches = _batches(len(pairs), settings, lengths)
    optimizer = _optimizer(model, settings)
    model.train()
    losses: list[float] = []
    for step, index in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, settings)
        loss = scorer_loss(model, [pairs[i] for i in index], objective, pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def pairwise_accuracy(
    model: torch.nn.Module,
    pairs: Sequence[EncodedPair],
    objective: Objective,
    pad_id: int,
    batch_size: int = 64,
) -> tuple[int, int]:
    """(correct, total) over ranked pairs: the reward model scores ``chosen`` higher; the cost
    model scores the harmful side (``rejected``) higher."""
    ranked = [p for p in pairs if p.ranked]
    correct = 0
    model.eval()
    for start in range(0, len(ranked), batch_size):
        batch = ranked[start : start + batch_size]
        scores = _scores(model, [p.chosen for p in batch] + [p.rejected for p in batch], pad_id)
        chosen, rejected = scores[: len(batch)], scores[len(batch) :]
        wins = chosen > rejected if objective == "reward" else rejected > chosen
        correct += int(wins.sum())
    return correct, len(ranked)


@torch.no_grad()
def pair_scores(
    model: torch.nn.Module, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int = 64
) -> list[tuple[float, float]]:
    """(chosen score, rejected score) of every pair, in order."""
    out: list[tuple[float, float]] = []
    model.eval()
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        scores = _scores(model, [p.chosen for p in batch] + [p.rejected for p in batch], pad_id)
        chosen, rejected = scores[: len(batch)].tolist(), scores[len(batch) :].tolist()
        out += list(zip(chosen, rejected, strict=True))
    return out


@torch.no_grad()
def sign_accuracy(
    model: torch.nn.Module, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int = 64
) -> tuple[int, int]:
    """(correct, total) responses whose cost sign matches its label (harmful -> cost > 0)."""
    rows = [(p.chosen, p.chosen_safe) for p in pairs] + [
        (p.rejected, p.rejected_safe) for p in pairs
    ]
    correct = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        scores = _scores(model, [r for r, _ in chunk], pad_id)
        harmful = torch.tensor([not safe for _, safe in chunk])
        correct += int(((scores > 0) == harmful).sum())
    return correct, len(rows)
