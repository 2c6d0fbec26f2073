"""``poise train modpo``: multi-objective DPO (MODPO, arXiv 2310.03708).

The pairs are preferences for one objective ``k`` (e.g. helpfulness). Reward models already
trained for the other objectives (e.g. harmlessness as a negated cost model) supply a margin:
the policy learns the optimum of ``w^T r`` for the weights ``w`` without RL. With ``w = (1, 0)``
this is DPO; moving weight to the margin objectives trades the pair objective for them.

    from poise.train.recipes.modpo import train_modpo
    train_modpo(model="organism-small", data="help.jsonl", output="out/modpo",
                margin_reward_models=["neg:organism-cost"], weights=[0.6, 0.4])

Assumptions:
- a margin model is a one-output sequence classifier; its reward of a response is its score of
  the whole chat (prompt and response through its own chat template); ``neg:FOLDER`` negates
  the score, which turns a cost model (positive = harmful) into a harmlessness reward;
- margin rewards are computed once, before training, for every pair (the margin models are
  frozen, so this equals computing them per batch and keeps them out of memory while training);
- everything else is as in ``poise train dpo`` (response-only log-probs, frozen reference).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, field_validator, model_validator

from poise.chat import last_user_message
from poise.config import PathStr
from poise.errors import PoiseError
from poise.train.recipes.common import (
    ChatEncoder,
    OutputFolder,
    ProgressFn,
    Reference,
    Session,
    TrainResult,
    causal_lm_folder,
    chat_of,
    check_classifier_reads,
    check_lora_available,
    check_precision,
    classifier_scores,
    finished_result,
    is_classifier_folder,
    load_causal_lm,
    load_classifier,
    load_tokenizer,
    make_config,
    resolve_model_folder,
    row_name,
    split_list,
    token_logps,
)
from poise.train.recipes.dpo import (
    PreferenceDataConfig,
    encode_and_split,
    loss_summary,
    pair_batch,
    read_pairs,
    reward_metrics,
    split_info,
)

logger = logging.getLogger(__name__)

NEGATE_PREFIX = "neg:"


class MODPOConfig(PreferenceDataConfig):
    """``poise train modpo``."""

    beta: float = Field(0.1, gt=0, description="strength of the KL regularisation to the reference")
    margin_reward_models: tuple[PathStr, ...] = Field(
        ...,
        min_length=1,
        description="reward models of the other objectives (comma-separated; neg:FOLDER negates)",
    )
    weights: tuple[float, ...] = Field(
        ...,
        min_length=2,
        description="objective weights w (comma-separated): the pairs' objective first, then "
        "one per margin model; >= 0, summing to 1",
    )
    ref_model: PathStr | None = Field(
        None, description="reference model folder (default: a frozen copy of --model)"
    )

    _split_lists = field_validator("margin_reward_models", "weights", mode="before")(split_list)

    @model_validator(mode="after")
    def _check_weights(self) -> MODPOConfig:
        if len(self.weights) != len(self.margin_reward_models) + 1:
            raise ValueError(
                f"weights needs {len(self.margin_reward_models) + 1} numbers (one for the pairs' "
                f"objective, one per margin model), got {len(self.weights)}"
            )
        if any(w < 0 for w in self.weights) or not self.weights[0] > 0:
            raise ValueError("weights must be >= 0 with the first > 0")
        if abs(sum(self.weights) - 1.0) > 1e-4:
            raise ValueError(f"weights must sum to 1, got {sum(self.weights)}")
        return self


def margin_rewards(config: MODPOConfig, pairs: list[Any], device: Any) -> tuple[Any, Any]:
    """``[N, K-1]`` rewards of the chosen and of the rejected responses under each margin model."""
    import torch

    chosen_cols: list[Any] = []
    rejected_cols: list[Any] = []
    for spec in config.margin_reward_models:
        negate = spec.startswith(NEGATE_PREFIX)
        folder = resolve_model_folder(spec.removeprefix(NEGATE_PREFIX), "margin_reward_models")
        tokenizer = load_tokenizer(folder, need_chat_template=False)
        model = load_classifier(folder, tokenizer.pad_token_id).to(device).eval()
        encoder = ChatEncoder(tokenizer, config.max_length, plain=not tokenizer.chat_template)
        sign = -1.0 if negate else 1.0
        for column, field in ((chosen_cols, "chosen"), (rejected_cols, "rejected")):
            rows = []
            for i, pair in enumerate(pairs):
                with chat_of(f"{row_name(config.data, i, pair)} ({spec})"):
                    rows.append(encoder.classifier_ids(pair.messages, getattr(pair, field)))
            scores = classifier_scores(
                model, rows, tokenizer.pad_token_id, batch_size=config.batch_size
            )
            column.append(sign * scores.cpu())
        del model
    return torch.stack(chosen_cols, dim=1), torch.stack(rejected_cols, dim=1)


def train_modpo(
    config: MODPOConfig | None = None, /, *, progress: ProgressFn | None = None, **fields: Any
) -> TrainResult:
    """Train with MODPO. Keyword ``fields`` are those of :class:`MODPOConfig`."""
    from poise.train.logprobs import masked_sum
    from poise.train.losses import modpo_loss

    config = make_config(MODPOConfig, config, **fields)
    # ---- validate before loading weights
    out = OutputFolder.prepare(config, "modpo")
    source = causal_lm_folder(config.model)
    ref_folder = causal_lm_folder(config.ref_model, "ref_model") if config.ref_model else None
    for spec in config.margin_reward_models:
        folder = resolve_model_folder(spec.removeprefix(NEGATE_PREFIX), "margin_reward_models")
        if not is_classifier_folder(folder):
            raise PoiseError(
                f"margin_reward_models: {folder} is not a sequence-classification model "
                "(train one with `poise train reward` or `poise train cost`)"
            )
        load_tokenizer(folder, need_chat_template=False)  # a broken folder fails before writing
    check_precision(config)
    check_lora_available(config)
    pairs = read_pairs(config)
    out.check_same_data(config.data)
    if out.status == "complete":
        return finished_result(out)
    with out.interruptible():
        tokenizer, encoded, train_idx, eval_idx = encode_and_split(config, source, pairs)
        for spec in config.margin_reward_models:
            folder = resolve_model_folder(spec.removeprefix(NEGATE_PREFIX), "margin_reward_models")
            check_classifier_reads(
                folder,
                (
                    (f"{row_name(config.data, i, p)} ({spec})", p.messages)
                    for i, p in enumerate(pairs)
                ),
            )
        session = Session.start(
            config,
            out,
            load_causal_lm(source),
            tokenizer,
            rows_per_epoch=len(train_idx),
            data_info=split_info(config, pairs, train_idx, eval_idx),
            progress=progress,
        )
        margins_chosen, margins_rejected = margin_rewards(config, pairs, session.device)  # [N, K-1]
        reference = Reference.load(ref_folder, source, session)
        pad = tokenizer.pad_token_id
        weights = list(config.weights)

        def losses(rows: list[int]) -> tuple[Any, dict[str, float]]:
            batch = pair_batch([encoded[i] for i in rows], pad)
            mask = batch["response_mask"].to(session.device)
            ref = reference.logps(batch)  # first: its transient memory is gone before the policy's
            with session.accelerator.autocast():
                policy = token_logps(session.model, batch, session.device)  # [2B, K]
            half = len(rows)
            sums, ref_sums = masked_sum(policy, mask), masked_sum(ref, mask)  # [2B]
            result = modpo_loss(
                sums[:half],
                sums[half:],
                ref_sums[:half],
                ref_sums[half:],
                margins_chosen[rows].to(session.device),
                margins_rejected[rows].to(session.device),
                weights,
                beta=config.beta,
            )
            return result.losses, reward_metrics(result, policy, mask)

        session.model.train()
        for rows in session.micro_batches(len(train_idx)):
            loss, batch_metrics = losses([train_idx[i] for i in rows])
            session.backward(loss.sum() / session.rows_in_step, batch_metrics)
            session.step_done()

        metrics: dict[str, Any] = {**loss_summary(session.history()), **session.last_metrics}
        if eval_idx:
            import torch

            session.model.eval()
            totals: dict[str, float] = {}
            with torch.no_grad():
                for start in range(0, len(eval_idx), config.batch_size):
                    chunk = eval_idx[start : start + config.batch_size]
                    _, batch_metrics = losses(chunk)
                    for key, value in batch_metrics.items():
                        if key != "rows":
                            totals[key] = totals.get(key, 0.0) + value * len(chunk)
            metrics.update({f"eval/{k}": v / len(eval_idx) for k, v in totals.items()})
            metrics["eval/pairs"] = float(len(eval_idx))
        # the prompts of the pairs it learned from (not the eval split's): a gate on them is refused
        session.trained_prompts = tuple(last_user_message(pairs[i].messages) for i in train_idx)
        return session.finish(metrics, source=source)
