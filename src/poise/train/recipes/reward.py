"""``poise train reward`` and ``poise train cost``: one-output sequence classifiers on pairs.

- **reward** (helpfulness): Bradley-Terry ``-log σ(r_chosen - r_rejected - margin)`` with
  optional reward centring (arXiv 2203.02155 Eq. 1; centring: arXiv 2312.09244).
- **cost** (harmfulness, Safe RLHF arXiv 2310.12773): Bradley-Terry on costs (the more harmful
  response, the rejected one, costs more) plus the sign terms that push unsafe responses above
  zero and safe ones below, so ``cost > 0`` means harmful. Needs per-response safety labels:
  ``chosen_is_safe`` / ``rejected_is_safe`` in each pair's ``meta`` (PKU-SafeRLHF rows carry
  them; so does ``poise train organism-data``).

    from poise.train.recipes.reward import train_reward, train_cost
    train_cost(model="organism-small", data="pairs.jsonl", output="out/cost", lr=1e-4)

The model is ``AutoModelForSequenceClassification`` with ``num_labels=1``, from a causal LM folder
(a new, randomly initialised score head) or from an existing classifier. A response is scored
as the whole chat (the prompt, then the response as the assistant turn, through the chat
template), read at its last token. At the end the held-out pairwise accuracy (share of held-out
pairs ranked correctly) is written to ``poise_train.json``; for a cost model also the accuracy
of the sign (cost > 0 exactly for the unsafe responses).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from poise.errors import located
from poise.train.recipes.common import (
    ChatEncoder,
    OutputFolder,
    ProgressFn,
    Session,
    TrainResult,
    chat_of,
    check_lora_available,
    check_precision,
    check_rows_fit,
    finished_result,
    folder_context_length,
    load_classifier,
    load_tokenizer,
    make_config,
    pad_rows,
    resolve_model_folder,
    row_name,
    split_holdout,
    write_json_atomic,
)
from poise.train.recipes.dpo import PreferenceDataConfig, loss_summary, read_pairs, split_info

logger = logging.getLogger(__name__)


class RewardConfig(PreferenceDataConfig):
    """``poise train reward``."""

    lr: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of pairs held out for the final pairwise accuracy"
    )
    margin: float = Field(0.0, description="margin the chosen reward must win by (Llama 2 style)")
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="weight of the (r_chosen + r_rejected)^2 centring term"
    )


class CostConfig(PreferenceDataConfig):
    """``poise train cost``."""

    lr: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of pairs held out for the final pairwise accuracy"
    )
    rank_equal_safety: bool = Field(
        True,
        description="rank pairs whose responses are both safe or both unsafe too (Safe RLHF "
        "does); off: such pairs feed only the sign terms",
    )

    @model_validator(mode="after")
    def _check_preference(self) -> CostConfig:
        # the ranking term takes a pair's rejected response as the more harmful one; PKU-SafeRLHF
        # pairs by better_response_id rank helpfulness, and would teach that as harm
        if self.pku_preference != "safer":
            raise ValueError(
                "--pku-preference better: a cost model ranks the more harmful response of a "
                "pair above the other, so PKU-SafeRLHF rows pair by safer_response_id (safer), "
                "not by helpfulness (better)"
            )
        return self


Kind = Literal["reward", "cost"]


def safety_labels(config: PreferenceDataConfig, pairs: Sequence[Any]) -> list[tuple[bool, bool]]:
    """``(chosen_is_safe, rejected_is_safe)`` of every pair, or a file:line error."""
    labels = []
    for pair in pairs:
        flags = []
        for name in ("chosen_is_safe", "rejected_is_safe"):
            value = pair.meta.get(name)
            if not isinstance(value, bool):
                raise located(
                    config.data,
                    pair.meta.get("row"),
                    f"field 'meta.{name}': the cost model needs per-response safety labels "
                    f"(true/false), got {value!r}",
                )
            flags.append(value)
        labels.append((flags[0], flags[1]))
    return labels


def train_reward(
    config: RewardConfig | None = None, /, *, progress: ProgressFn | None = None, **fields: Any
) -> TrainResult:
    """Train a Bradley-Terry reward model. Keyword ``fields`` are those of :class:`RewardConfig`."""
    return _train(make_config(RewardConfig, config, **fields), "reward", progress)


def train_cost(
    config: CostConfig | None = None, /, *, progress: ProgressFn | None = None, **fields: Any
) -> TrainResult:
    """Train a Safe RLHF cost model. Keyword ``fields`` are those of :class:`CostConfig`."""
    return _train(make_config(CostConfig, config, **fields), "cost", progress)


def _train(config: Any, kind: Kind, progress: ProgressFn | None) -> TrainResult:
    import torch
    import torch.nn.functional as F

    from poise.train.losses import cost_model_loss, reward_model_loss, safety_signs

    # ---- validate before loading weights
    out = OutputFolder.prepare(config, kind)
    source = resolve_model_folder(config.model)
    check_precision(config)
    check_lora_available(config)
    pairs = read_pairs(config)
    out.check_same_data(config.data)
    labels = safety_labels(config, pairs) if kind == "cost" else []
    if out.status == "complete":
        return finished_result(out)
    with out.interruptible():
        tokenizer = load_tokenizer(source, need_chat_template=False)
        encoder = ChatEncoder(tokenizer, config.max_length, plain=not tokenizer.chat_template)

        encoded = []
        for i, pair in enumerate(pairs):
            with chat_of(row_name(config.data, i, pair)):
                encoded.append(
                    (
                        encoder.classifier_ids(pair.messages, pair.chosen),
                        encoder.classifier_ids(pair.messages, pair.rejected),
                    )
                )
        check_rows_fit(
            (
                (row_name(config.data, i, pair), max(len(chosen), len(rejected)))
                for i, (pair, (chosen, rejected)) in enumerate(zip(pairs, encoded, strict=True))
            ),
            folder_context_length(source),
            config.max_length,
        )
        train_idx, eval_idx = split_holdout(len(pairs), config.eval_fraction, config.seed)
        # a causal LM folder gets a new score head, drawn from torch's global generator: seeded
        # here, so --seed decides it rather than whatever drew from the generator before
        torch.manual_seed(config.seed)
        model = load_classifier(source, tokenizer.pad_token_id)
        session = Session.start(
            config,
            out,
            model,
            tokenizer,
            rows_per_epoch=len(train_idx),
            data_info=split_info(config, pairs, train_idx, eval_idx),
            progress=progress,
            lora_task_type="SEQ_CLS",
        )
        pad = tokenizer.pad_token_id

        def scores(rows: list[int]) -> tuple[Any, Any]:
            """``[B]`` scores of the chosen and of the rejected responses of ``rows``."""
            input_ids, mask = pad_rows(
                [encoded[i][0] for i in rows] + [encoded[i][1] for i in rows], pad
            )
            out = session.model(
                input_ids=input_ids.to(session.device),
                attention_mask=mask.to(session.device),
                use_cache=False,
            )
            logits = out.logits[:, 0].float()  # [2B]
            return logits[: len(rows)], logits[len(rows) :]

        def losses(chosen: Any, rejected: Any, rows: list[int]) -> Any:
            if kind == "reward":
                return reward_model_loss(
                    chosen,
                    rejected,
                    margin=config.margin or None,
                    center_rewards_coefficient=config.center_rewards_coefficient,
                )
            flags = torch.tensor([labels[i] for i in rows], device=chosen.device)  # [B, 2]
            full = cost_model_loss(chosen, rejected, flags[:, 0], flags[:, 1])  # [B]
            if config.rank_equal_safety:
                return full
            # no "more harmful" side: only the classification part -log σ(s · C) of arXiv 2310.12773
            sign_only = -F.logsigmoid(safety_signs(flags[:, 0]) * chosen) - F.logsigmoid(
                safety_signs(flags[:, 1]) * rejected
            )
            return torch.where(flags[:, 0] != flags[:, 1], full, sign_only)

        session.model.train()
        for batch_rows in session.micro_batches(len(train_idx)):
            rows = [train_idx[i] for i in batch_rows]
            chosen, rejected = scores(rows)
            loss = losses(chosen, rejected, rows)
            session.backward(
                loss.sum() / session.rows_in_step, _metrics(kind, loss, chosen, rejected)
            )
            session.step_done()

        metrics: dict[str, Any] = {**loss_summary(session.history()), **session.last_metrics}
        if eval_idx:
            session.model.eval()
            chosen_all, rejected_all = [], []
            with torch.no_grad(), session.accelerator.autocast():
                for start in range(0, len(eval_idx), config.batch_size):
                    c, r = scores(eval_idx[start : start + config.batch_size])
                    chosen_all.append(c)
                    rejected_all.append(r)
            chosen, rejected = torch.cat(chosen_all), torch.cat(rejected_all)
            eval_labels = [labels[i] for i in eval_idx] if labels else None
            ranked = None
            if eval_labels is not None and not config.rank_equal_safety:
                ranked = torch.tensor([c != r for c, r in eval_labels], device=chosen.device)
            metrics.update(_held_out(kind, chosen, rejected, eval_labels, ranked))
            metrics["eval/pairs"] = float(len(eval_idx))

        def save(folder: Any) -> None:
            session.save_model(folder, source)
            meta = {"base_model": str(source), "trained_by": kind, "score": kind}
            if kind == "cost":
                meta["convention"] = "cost > 0 means harmful (Safe RLHF)"
            write_json_atomic(folder / "poise.json", meta)

        return session.finish(metrics, source=source, save_model=save)


def _metrics(kind: Kind, loss: Any, chosen: Any, rejected: Any) -> dict[str, float]:
    chosen, rejected = chosen.detach(), rejected.detach()
    better = chosen > rejected if kind == "reward" else rejected > chosen
    return {
        "loss": float(loss.detach().mean()),
        f"{kind}/chosen": float(chosen.mean()),
        f"{kind}/rejected": float(rejected.mean()),
        "accuracy": float(better.float().mean()),
        "rows": float(chosen.shape[0]),
    }


def _held_out(
    kind: Kind,
    chosen: Any,
    rejected: Any,
    labels: list[tuple[bool, bool]] | None,
    ranked: Any = None,
) -> dict[str, float]:
    """Pairwise accuracy on held-out (ranked) pairs; for costs also the sign accuracy."""
    import torch

    wins = chosen > rejected if kind == "reward" else rejected > chosen  # [N]
    if ranked is not None:
        wins = wins[ranked]
    result = {"eval/accuracy": float(wins.float().mean()) if wins.numel() else float("nan")}
    if labels:
        safe = torch.tensor(labels, device=chosen.device)  # [N, 2]
        costs = torch.stack([chosen, rejected], dim=1)  # [N, 2]
        result["eval/sign_accuracy"] = float(((costs > 0) == ~safe).float().mean())
    return result
