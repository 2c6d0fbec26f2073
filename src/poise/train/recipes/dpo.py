"""``poise train dpo``: Direct Preference Optimization and its family on preference pairs.

DPO (arXiv 2305.18290) trains the policy directly on (prompt, chosen, rejected) pairs against a
frozen reference model; any loss registered in :data:`poise.train.losses.LOSSES` can be chosen
(``sigmoid`` is DPO's Eq. 7; ``ipo``, ``robust``, ``apo_zero``, ... are its variants), and
``ld_alpha`` turns it into LD-DPO (arXiv 2409.06411), which down-weights the tokens by which the
longer response of a pair exceeds the shorter one, so that the policy is not rewarded for length.

    from poise.train.recipes.dpo import train_dpo
    train_dpo(model="organism-small", data="pairs.jsonl", output="out/dpo", beta=0.1, lr=5e-5)

Assumptions:
- log-probs count the assistant response tokens only (the prompt is the chat template with the
  generation prompt, the response ends with the template's end-of-turn token, padding masked);
- the reference is a frozen copy of the starting model unless ``ref_model`` names another one
  (with LoRA and no ``ref_model`` the adapters are switched off instead, which costs no memory);
- chosen and rejected responses go through the policy in one concatenated forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from poise.chat import last_user_message
from poise.config import PathStr
from poise.errors import PoiseError
from poise.train.recipes.common import (
    ChatEncoder,
    OutputFolder,
    ProgressFn,
    Reference,
    Session,
    TrainConfig,
    TrainResult,
    causal_lm_folder,
    chat_of,
    check_lora_available,
    check_precision,
    check_rows_fit,
    file_fingerprint,
    finished_result,
    folder_context_length,
    load_causal_lm,
    load_tokenizer,
    make_config,
    row_name,
    sequence_batch,
    split_holdout,
    token_logps,
)

logger = logging.getLogger(__name__)


class PreferenceDataConfig(TrainConfig):
    """The preference-data fields of the DPO-style recipes."""

    data: PathStr = Field(
        ...,
        description="preference pairs (.jsonl[.gz]): generic, attack export, HH-RLHF or PKU-SafeRLHF",
    )
    data_format: Literal["generic", "attack", "hh-rlhf", "pku-saferlhf"] | None = Field(
        None, description="format of the data file (default: detected from its first row)"
    )
    pku_preference: Literal["safer", "better"] = Field(
        "safer",
        description="PKU-SafeRLHF rows: pair by harmlessness (safer) or helpfulness (better)",
    )
    eval_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of pairs held out for the final evaluation"
    )


class DPOConfig(PreferenceDataConfig):
    """``poise train dpo``."""

    loss: str = Field("sigmoid", description="preference loss (see `poise train losses`)")
    beta: float = Field(0.1, gt=0, description="strength of the KL regularisation to the reference")
    ld_alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description="LD-DPO: weight of the tokens beyond the shorter response (1 = plain DPO)",
    )
    label_smoothing: float | None = Field(
        None,
        ge=0,
        lt=0.5,
        description="probability that a label is flipped (cDPO / robust DPO); default: the loss's own",
    )
    loss_options: dict[str, Any] = Field(
        default_factory=dict, description="other keyword parameters of the loss (KEY=VALUE)"
    )
    ref_model: PathStr | None = Field(
        None, description="reference model folder (default: a frozen copy of --model)"
    )


# --------------------------------------------------------------------------------------------
# pieces shared with MODPO


def read_pairs(config: PreferenceDataConfig) -> list[Any]:
    """The config's preference pairs (parsed in full: a bad row fails before any weights load)."""
    from poise.train.data import load_preferences

    pairs = load_preferences(config.data, config.data_format, pku_preference=config.pku_preference)
    return pairs[: config.limit] if config.limit else pairs


def data_info(config: PreferenceDataConfig, pairs: Sequence[Any]) -> dict[str, Any]:
    return {
        "path": str(Path(config.data).expanduser().resolve()),
        "fingerprint": file_fingerprint(config.data),
        "pairs": len(pairs),
    }


EncodedPair = tuple[list[int], list[int], list[int]]  # prompt, chosen, rejected token ids


def split_info(
    config: PreferenceDataConfig, pairs: Sequence[Any], train_idx: list[int], eval_idx: list[int]
) -> dict[str, Any]:
    """:func:`data_info` with the sizes of the train / held-out split, for the run's record."""
    return {**data_info(config, pairs), "train_pairs": len(train_idx), "eval_pairs": len(eval_idx)}


def encode_and_split(
    config: PreferenceDataConfig, source: Path, pairs: Sequence[Any]
) -> tuple[Any, list[EncodedPair], list[int], list[int]]:
    """The chat tokenizer of ``source``, ``pairs`` encoded (a row that cannot fit the model's
    context fails here, named, before any weights load) and the train / held-out split of
    their indices.

    A pair whose two responses are the same tokens once cut to ``max_length`` (they differ
    only past the cut) is left out of both, with one warning naming the rows: it is no
    preference any more, its gradient is 0 under every loss, and it would still count in the
    step's mean and as a miss in the reward accuracy."""
    tokenizer = load_tokenizer(source)
    encoded = encode_pairs(ChatEncoder(tokenizer, config.max_length), pairs, config.data)
    check_rows_fit(
        (
            (row_name(config.data, i, pair), len(p) + max(len(c), len(r)))
            for i, (pair, (p, c, r)) in enumerate(zip(pairs, encoded, strict=True))
        ),
        folder_context_length(source),
        config.max_length,
    )
    kept = [i for i, (_, chosen, rejected) in enumerate(encoded) if chosen != rejected]
    if len(kept) < len(encoded):
        same = [row_name(config.data, i, pairs[i]) for i, (_, c, r) in enumerate(encoded) if c == r]
        shown = ", ".join(same[:5]) + (", ..." if len(same) > 5 else "")
        message = (
            f"{len(same)} pair(s) whose chosen and rejected are the same tokens once cut to "
            f"max_length {config.max_length} (no preference left between them): {shown}"
        )
        if not kept:
            raise PoiseError(f"{message}; no pair is left to train on (raise --max-length)")
        logger.warning("%s; left out", message)
    train_pos, eval_pos = split_holdout(len(kept), config.eval_fraction, config.seed)
    return tokenizer, encoded, [kept[j] for j in train_pos], [kept[j] for j in eval_pos]


def encode_pairs(encoder: ChatEncoder, pairs: Sequence[Any], data: str) -> list[EncodedPair]:
    """``(prompt, chosen, rejected)`` token ids of each pair of the file ``data``; a chat the
    template refuses is one error naming its row."""
    encoded = []
    for index, pair in enumerate(pairs):
        with chat_of(row_name(data, index, pair)):
            prompt = encoder.prompt_ids(pair.messages)
        p_c, chosen = encoder.fit(prompt, encoder.response_ids(pair.chosen))
        p_r, rejected = encoder.fit(prompt, encoder.response_ids(pair.rejected))
        # both responses must follow the same prompt tokens; cut to the shorter kept prompt
        keep = min(len(p_c), len(p_r))
        encoded.append((prompt[len(prompt) - keep :] if keep else [], chosen, rejected))
    return encoded


def pair_batch(encoded: Sequence[EncodedPair], pad_id: int) -> dict[str, Any]:
    """Chosen rows then rejected rows, as a :func:`sequence_batch`: ``input_ids`` etc.
    ``[2B, T]`` and ``response_mask`` ``[2B, K]``."""
    rows = [(p, c) for p, c, _ in encoded] + [(p, r) for p, _, r in encoded]
    return sequence_batch(rows, pad_id)


def loss_params(config: DPOConfig) -> dict[str, Any]:
    """Keyword parameters for the loss, checked before training (before the output folder is
    written): names against what the loss takes, types against its defaults, and values by
    the loss itself on a one-pair batch, so ``beta=-1`` or ``f_divergence=nope`` is one line
    now rather than an error at the first step."""
    from poise.train.losses import LOSSES, loss_parameters

    LOSSES.get(config.loss)  # unknown name -> UnknownNameError with the nearest names
    accepted = loss_parameters(config.loss)
    params: dict[str, Any] = {"beta": config.beta, **config.loss_options}
    if config.label_smoothing is not None:
        params["label_smoothing"] = config.label_smoothing
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise PoiseError(
            f"loss {config.loss!r} does not take {', '.join(unknown)} "
            f"(it takes: {', '.join(accepted)})"
        )
    params = {
        name: _loss_value(config.loss, name, value, accepted[name])
        for name, value in params.items()
    }
    _try_loss(config.loss, params)
    return params


def _loss_value(loss: str, name: str, value: Any, default: Any) -> Any:
    """``value`` of the loss parameter ``name`` when it has the type of the parameter's default
    (a number for a number, text for text, true/false for a flag); else one line."""
    import math

    if default is None:  # response lengths and the like: the recipe passes them
        raise PoiseError(f"loss {loss!r}: {name} is set by the recipe, not given as an option")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise PoiseError(f"loss {loss!r}: {name} must be true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if not number or not math.isfinite(value):
            raise PoiseError(f"loss {loss!r}: {name} must be a number, got {value!r}")
        return value
    if isinstance(default, str) and not isinstance(value, str):
        raise PoiseError(f"loss {loss!r}: {name} must be text, got {value!r}")
    return value


def _try_loss(loss: str, params: dict[str, Any]) -> None:
    """Run the loss on one pair of zero log-probs: its own checks of ``params`` (ranges, names
    such as ``f_divergence``) fail here, named, instead of at the first training step."""
    import torch

    from poise.train.losses import loss_parameters, preference_loss

    zero = torch.zeros(1)
    extra = {}
    if "chosen_lengths" in loss_parameters(loss):
        extra = {"chosen_lengths": torch.ones(1), "rejected_lengths": torch.ones(1)}
    try:
        preference_loss(loss, zero, zero, zero, zero, **params, **extra)
    except PoiseError as exc:
        raise PoiseError(f"loss {loss!r}: {exc}") from None


def dpo_losses(
    config: DPOConfig, params: dict[str, Any], policy: Any, reference: Any, mask: Any
) -> Any:
    """Per-pair loss and implicit rewards from ``[2B, K]`` token log-probs and response mask."""
    from poise.train.logprobs import masked_sum
    from poise.train.losses import ld_dpo_loss, preference_loss

    half = policy.shape[0] // 2
    mask_c, mask_r = mask[:half], mask[half:]
    params = _with_lengths(config.loss, params, mask_c, mask_r)
    if config.ld_alpha is not None:
        return ld_dpo_loss(
            policy[:half],
            policy[half:],
            reference[:half],
            reference[half:],
            mask_c,
            mask_r,
            ld_alpha=config.ld_alpha,
            loss_type=config.loss,
            **params,
        )
    sums_policy = masked_sum(policy, mask)  # [2B]
    sums_reference = masked_sum(reference, mask)  # [2B]
    return preference_loss(
        config.loss,
        sums_policy[:half],
        sums_policy[half:],
        sums_reference[:half],
        sums_reference[half:],
        **params,
    )


def _with_lengths(loss: str, params: dict[str, Any], mask_c: Any, mask_r: Any) -> dict[str, Any]:
    from poise.train.logprobs import sequence_lengths
    from poise.train.losses import loss_parameters

    if "chosen_lengths" not in loss_parameters(loss):
        return params
    return {
        **params,
        "chosen_lengths": sequence_lengths(mask_c),
        "rejected_lengths": sequence_lengths(mask_r),
    }


def reward_metrics(out: Any, policy: Any, mask: Any) -> dict[str, float]:
    """Loss, implicit rewards, margin and accuracy of a batch (means over its pairs)."""
    from poise.train.logprobs import masked_sum

    half = policy.shape[0] // 2
    sums = masked_sum(policy.detach(), mask)
    margin = (out.chosen_rewards - out.rejected_rewards).detach()
    return {
        "loss": float(out.losses.detach().mean()),
        "rewards/chosen": float(out.chosen_rewards.detach().mean()),
        "rewards/rejected": float(out.rejected_rewards.detach().mean()),
        "rewards/margin": float(margin.mean()),
        "rewards/accuracy": float((margin > 0).float().mean()),
        "logps/chosen": float(sums[:half].mean()),
        "logps/rejected": float(sums[half:].mean()),
        "rows": float(half),
    }


def loss_summary(history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean loss over the first and the last tenth of the logged steps (at least one step)."""
    losses = [float(h["loss"]) for h in history if "loss" in h]
    if not losses:
        return {}
    k = max(1, len(losses) // 10)
    return {"loss_start": sum(losses[:k]) / k, "loss_end": sum(losses[-k:]) / k}


# --------------------------------------------------------------------------------------------
# the recipe


def train_dpo(
    config: DPOConfig | None = None, /, *, progress: ProgressFn | None = None, **fields: Any
) -> TrainResult:
    """Train with DPO (or any registered preference loss, or LD-DPO with ``ld_alpha``).

    Keyword ``fields`` are those of :class:`DPOConfig`. Returns where the HF folder was written
    and the final metrics (also in ``OUTPUT/poise_train.json``).
    """
    import torch

    config = make_config(DPOConfig, config, **fields)
    # ---- validate before loading weights
    out = OutputFolder.prepare(config, "dpo")
    source = causal_lm_folder(config.model)
    ref_folder = causal_lm_folder(config.ref_model, "ref_model") if config.ref_model else None
    params = loss_params(config)
    check_precision(config)
    check_lora_available(config)
    pairs = read_pairs(config)
    out.check_same_data(config.data)
    if out.status == "complete":
        logger.info("%s already holds this finished run", out.path)
        return finished_result(out)
    with out.interruptible():
        tokenizer, encoded, train_idx, eval_idx = encode_and_split(config, source, pairs)

        # ---- load and train
        session = Session.start(
            config,
            out,
            load_causal_lm(source),
            tokenizer,
            rows_per_epoch=len(train_idx),
            data_info=split_info(config, pairs, train_idx, eval_idx),
            progress=progress,
        )
        reference = Reference.load(ref_folder, source, session)
        pad = tokenizer.pad_token_id
        session.model.train()
        for rows in session.micro_batches(len(train_idx)):
            batch = pair_batch([encoded[train_idx[i]] for i in rows], pad)
            mask = batch["response_mask"].to(session.device)
            # the reference first: its forward's transient memory is freed before the policy's
            # activations are held for backward, instead of stacking on top of them
            ref = reference.logps(batch)  # [2B, K]
            policy = token_logps(session.model, batch, session.device)  # [2B, K]
            out_loss = dpo_losses(config, params, policy, ref, mask)
            session.backward(
                out_loss.losses.sum() / session.rows_in_step, reward_metrics(out_loss, policy, mask)
            )
            session.step_done()

        # ---- evaluate and save
        metrics: dict[str, Any] = {**loss_summary(session.history()), **session.last_metrics}
        if eval_idx:
            session.model.eval()
            with torch.no_grad():
                metrics.update(
                    _evaluate(
                        config, params, session, reference, [encoded[i] for i in eval_idx], pad
                    )
                )
        # the prompts of the pairs it learned from (not the eval split's): a gate on them is refused
        session.trained_prompts = tuple(last_user_message(pairs[i].messages) for i in train_idx)
        return session.finish(metrics, source=source)


def _evaluate(
    config: DPOConfig,
    params: dict[str, Any],
    session: Session,
    reference: Reference,
    encoded: Sequence[EncodedPair],
    pad: int,
) -> dict[str, float]:
    """Loss, reward accuracy and margin on held-out pairs (``eval/`` prefix)."""
    totals: dict[str, float] = {}
    count = 0
    for start in range(0, len(encoded), config.batch_size):
        chunk = encoded[start : start + config.batch_size]
        batch = pair_batch(chunk, pad)
        mask = batch["response_mask"].to(session.device)
        with session.accelerator.autocast():
            policy = token_logps(session.model, batch, session.device)
        out = dpo_losses(config, params, policy, reference.logps(batch), mask)
        for key, value in reward_metrics(out, policy, mask).items():
            if key != "rows":
                totals[key] = totals.get(key, 0.0) + value * len(chunk)
        count += len(chunk)
    return {f"eval/{k}": v / count for k, v in totals.items()} | {"eval/pairs": float(count)}
