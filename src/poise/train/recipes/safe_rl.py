"""``poise train safe-rl``: on-policy RL for reward under a cost constraint (Safe RLHF).

Safe RLHF (arXiv 2310.12773) maximises a reward model's score subject to ``E[cost] <= d`` by a
Lagrangian: the policy ascends ``(A_R - λ A_C) / (1 + λ)`` while ``λ`` grows when the batch's cost
exceeds the limit and shrinks when it does not. Each step:

1. sample ``samples_per_prompt`` completions for each prompt of the batch from the policy;
2. score them with the reward model and the cost model;
3. RLOO advantages (arXiv 2402.14740) for reward and for cost, within each prompt's group,
   each divided by its batch standard deviation (``scale_advantages``), since a reward model's
   scores and a cost in [0, 1] have unrelated units and λ should weigh comparable signals;
4. loss ``-A · log π(y|x) + kl_coef · KL`` per completion: one REINFORCE step on the whole
   completion (the policy sampled it, so no importance ratio is needed) with a per-token KL
   penalty to the frozen reference, the **k3 estimator** ``exp(q - p) - (q - p) - 1`` (``p``, ``q``
   the policy's and the reference's token log-probs; Schulman 2020, as in GRPO arXiv 2402.03300
   Eq. 4), summed over the completion. Both log-probs are those of ``softmax(logits / T)`` at
   the sampling ``temperature`` T, the distribution the completions were drawn from (as TRL's
   GRPO does); ``top_p < 1`` truncates that distribution and is not corrected for;
5. update ``λ`` in log space (Safe RLHF §3.3) from the step's mean cost versus ``cost_limit``.

**Cost units.** With ``cost_transform="sigmoid"`` (the default) a response's cost is
``σ(cost model score)``, the model's probability that it is harmful, in [0, 1]: ``cost_limit`` is
then a bound on the expected probability of harm (e.g. 0.1), and ``poise gate`` uses the same
units. ``"raw"`` keeps the score itself (Safe RLHF's convention; its limit is usually 0).

**--high-confidence** (HC-RLHF, arXiv 2506.08266): a share of the prompts is held out for a
safety test. While training, ``λ`` follows the *pessimistic* bound ``mean + κ · std`` of the
step's costs (κ anticipates the safety test's size, :func:`poise.train.safety.pessimistic_coefficient`;
``κ = c1 · t_{1-δ,n_c-1}/√n_c + c2 · t_{1-δ,n_s-1}/√n_s`` with ``pessimism_c1 = pessimism_c2 = 1``
by default, the defaults of HC-RLHF's public code) and the cost advantages use the matching per-sample augmented costs. At the end the model
answers the held-out prompts and passes if ``mean + t_{1-δ,n-1} std/√n <= cost_limit``; the
result (PASS/FAIL, n, mean, std, bound) goes into ``poise_train.json``.

**--from-base** (Direct Harmless RLHF, arXiv 2403.02513: RL straight from a base model, no SFT):
no chat tuning is assumed, so (1) prompts are plain ``User: ...`` / ``Assistant:`` turns instead
of the model's chat template, and that format is written into the trained model's tokenizer as
its chat template, so audits prompt it as it was trained; (2) no default system prompt;
(3) a completion ends at EOS or where the model starts a new ``User:`` turn (later tokens are
masked out of the loss); (4) the KL reference is the base model itself (there is no SFT model).

Assumptions: prompts are chats ending with a user turn (a suite or a file ``poise.suites``
reads); reward and cost models are one-output sequence classifiers that read the conversation
through their own chat templates; every process samples its own prompts.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from poise.chat import last_user_message
from poise.config import PathStr, SuiteOptions, stable_hash
from poise.errors import PoiseError
from poise.train.recipes.common import (
    ChatEncoder,
    Messages,
    OutputFolder,
    ProgressFn,
    Reference,
    Scorer,
    Session,
    TrainConfig,
    TrainResult,
    as_messages,
    causal_lm_folder,
    chat_of,
    check_classifier_reads,
    check_lora_available,
    check_precision,
    finished_result,
    folder_context_length,
    is_classifier_folder,
    load_causal_lm,
    load_tokenizer,
    make_config,
    pad_rows,
    read_poise_json,
    resolve_model_folder,
    sequence_batch,
    split_holdout,
    to_cost,
    token_logps,
)

logger = logging.getLogger(__name__)

BASE_STOP = "\nUser:"


class SafeRLConfig(TrainConfig, SuiteOptions):
    """``poise train safe-rl``."""

    reward_model: PathStr = Field(
        ..., description="reward model: organism member or classifier folder"
    )
    cost_model: PathStr = Field(
        ..., description="cost model (positive = harmful): member or folder"
    )
    prompts: PathStr = Field(
        ..., description="training prompts: a built-in suite name or a suite file"
    )
    limit: int | None = Field(
        None, ge=1, description="use only N prompts, spread over the suite (as the audit's)"
    )
    batch_size: int = Field(8, ge=1, description="prompts per process and micro-step")
    samples_per_prompt: int = Field(
        4, ge=2, description="completions sampled per prompt (the RLOO group)"
    )
    cost_limit: float = Field(0.1, description="the constraint's limit d on the expected cost")
    cost_transform: Literal["sigmoid", "raw"] = Field(
        "sigmoid", description="cost = sigmoid(cost model score) (a probability) or the raw score"
    )
    kl_coef: float = Field(0.05, ge=0, description="weight of the per-token k3 KL penalty")
    lambda_init: float = Field(1.0, gt=0, description="initial Lagrange multiplier")
    lambda_lr: float = Field(0.1, ge=0, description="learning rate of log λ")
    lambda_max: float = Field(
        10.0, gt=0, description="cap on the Lagrange multiplier (log-space ascent grows fast)"
    )
    scale_advantages: bool = Field(
        True,
        description="divide reward and cost advantages by their batch std before combining, "
        "so λ weighs comparable signals whatever the two models' units",
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the policy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1 = off")
    max_new_tokens: int = Field(128, ge=1, description="tokens per completion at most")
    system_prompt: str = Field(
        "default",
        description="'default' (the model's own, if it declares one), 'none', or a literal prompt",
    )
    from_base: bool = Field(
        False, description="start from a base LM without chat tuning (Direct Harmless RLHF)"
    )
    high_confidence: bool = Field(
        False, description="HC-RLHF: pessimistic constraint and a final safety test"
    )
    delta: float = Field(
        0.05, gt=0, lt=1, description="HC-RLHF: allowed chance to pass an unsafe model"
    )
    safety_fraction: float = Field(
        0.3, gt=0, lt=1, description="HC-RLHF: share of prompts held out for the safety test"
    )
    pessimism_c1: float = Field(
        1.0,
        ge=0,
        description="HC-RLHF: weight c1 of the candidate-sample term t(1-δ, n_c-1)/√n_c of the "
        "pessimistic bound (default 1, as HC-RLHF's public code)",
    )
    pessimism_c2: float = Field(
        1.0,
        ge=0,
        description="HC-RLHF: weight c2 of the safety-test term t(1-δ, n_s-1)/√n_s of the "
        "pessimistic bound (default 1, as HC-RLHF's public code)",
    )

    @model_validator(mode="after")
    def _check_lambda(self) -> SafeRLConfig:
        if self.lambda_init > self.lambda_max:
            raise ValueError(
                f"lambda_init ({self.lambda_init}) must not exceed lambda_max ({self.lambda_max})"
            )
        return self


# --------------------------------------------------------------------------------------------
# pieces


def load_prompts(config: SafeRLConfig, system: str | None) -> list[Messages]:
    """The prompts as chats; an item's own system message wins over ``system``."""
    from poise.auditing import spread_subset
    from poise.suites import load_suite

    suite = load_suite(config.prompts, **config.suite_options())
    if not suite.items:
        raise PoiseError(f"prompts: {config.prompts} holds no prompts")
    chats = []
    # N prompts spread over the suite, as the audit and the gate take them: suites are ordered
    # by category (the organism's prompts file holds its harmful prompts first), so the first N
    # trained on one or two categories
    for item in spread_subset(suite.items, config.limit):
        chat = as_messages(item.messages)
        if system is not None and not any(m["role"] == "system" for m in chat):
            chat = [{"role": "system", "content": system}, *chat]
        chats.append(chat)
    return chats


def check_prompts_fit(
    config: SafeRLConfig, encoder: ChatEncoder, chats: list[Messages], context_length: int | None
) -> None:
    """Refuse, before training, a prompt that the chat template refuses (Gemma 2's takes no
    system message) or that leaves no room in the model's context for ``max_new_tokens``
    sampled tokens: one line naming the prompt."""
    from poise.models.context import ContextLengthError

    for index, chat in enumerate(chats):
        with chat_of(f"{config.prompts}: prompt {index + 1}"):
            tokens = len(encoder.prompt_ids(chat))
        if context_length is not None and tokens + config.max_new_tokens > context_length:
            problem = ContextLengthError(
                context_length, tokens, config.max_new_tokens, at_least=False
            )
            raise PoiseError(
                f"{config.prompts}: prompt {index + 1} (max_new_tokens {config.max_new_tokens}): "
                f"{problem}"
            )


def system_prompt(config: SafeRLConfig, source: Path) -> str | None:
    """The system message every training prompt gets (None: none), by the rule an audit of
    the trained model follows (``poise.models.no_system_prompt`` / ``default_system_prompt`` on
    the ``hf`` backend): what ``poise.json`` declares, and where it declares neither
    ``default_system_prompt`` nor ``system_prompt_in_template`` (a folder not made by poise),
    what the chat template does. "none" is an explicit empty system message where the template
    inserts a default into a chat without one (Qwen2.5's "You are Qwen, ..."), else no system
    message; "default" is the model's default prompt, or no system message."""
    if config.from_base and config.system_prompt in ("none", "default"):
        return None
    if config.system_prompt not in ("none", "default"):
        return config.system_prompt
    meta = read_poise_json(source)
    in_template = meta.get("system_prompt_in_template") is True
    value = meta.get("default_system_prompt")
    if "default_system_prompt" not in meta and "system_prompt_in_template" not in meta:
        value = _template_default(source)
        in_template = value is not None
    if config.system_prompt == "none":
        # a template that inserts its default system prompt renders an empty one as none
        return "" if in_template else None
    return value if isinstance(value, str) and value else None


def _template_default(source: Path) -> str | None:
    """The default system prompt ``source``'s chat template inserts into a chat without one
    (as the ``hf`` backend reads it), or None; None too where the tokenizer cannot load (the
    recipe refuses it later, with its own message)."""
    from poise.models.hf import template_default_system_prompt

    try:
        tokenizer = load_tokenizer(source, need_chat_template=False)
    except PoiseError:
        return None
    return template_default_system_prompt(tokenizer)


def _unit_scale(advantages: Any) -> Any:
    """``A / std(A)`` over the batch (RLOO advantages already have zero mean per group). A batch
    where every advantage is 0 (all completions scored alike) stays 0."""
    std = float(advantages.std()) if advantages.numel() > 1 else 0.0
    return advantages / std if std > 1e-8 else advantages


def _row_seed(*parts: object) -> int:
    blob = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def sample(
    session: Session,
    encoder: ChatEncoder,
    chats: Sequence[Messages],
    n: int,
    config: SafeRLConfig,
    seed: int,
) -> tuple[list[list[int]], list[list[int]], list[str]]:
    """``n`` completions per chat from the current policy: (prompt ids, response ids, texts),
    each ``len(chats) * n`` long with a chat's completions consecutive.

    A response keeps its tokens up to and including the first EOS; with ``from_base`` it also
    ends where the model opens a new ``User:`` turn.
    """
    import torch

    tokenizer = encoder.tokenizer
    model = session.unwrapped
    eos = sorted(set(_eos(tokenizer, model)))
    prompts = [encoder.prompt_ids(c) for c in chats]
    ids, mask = pad_rows(prompts, tokenizer.pad_token_id, left=True)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    with torch.no_grad(), session.accelerator.autocast():
        generated = model.generate(
            input_ids=ids.to(session.device),
            attention_mask=mask.to(session.device),
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=0,
            max_new_tokens=config.max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
        )
    model.train(was_training)
    new_tokens = generated[:, ids.shape[1] :].tolist()
    prompt_rows, responses, texts = [], [], []
    for row, tokens in enumerate(new_tokens):
        cut = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
        tokens = tokens[:cut]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if config.from_base and BASE_STOP in text:
            tokens, text = _cut_at_stop(tokenizer, tokens, BASE_STOP)
        prompt_rows.append(prompts[row // n])
        responses.append(tokens)
        texts.append(text)
    return prompt_rows, responses, texts


def _cut_at_stop(tokenizer: Any, tokens: list[int], stop: str) -> tuple[list[int], str]:
    """The shortest prefix of ``tokens`` whose text reaches ``stop``, and the text before it."""
    for end in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:end], skip_special_tokens=True)
        if stop in text:
            return tokens[:end], text[: text.index(stop)]
    return tokens, tokenizer.decode(tokens, skip_special_tokens=True)


def _eos(tokenizer: Any, model: Any) -> list[int]:
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    value = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(value, int):
        ids.append(value)
    elif isinstance(value, (list, tuple)):
        ids.extend(int(v) for v in value)
    return ids


def policy_loss(policy: Any, reference: Any, mask: Any, advantages: Any, kl_coef: float) -> Any:
    """Per-completion loss ``-A · Σ_t log π(y_t) + kl_coef · Σ_t k3_t`` and the k1 KL estimate.

    ``policy``, ``reference``: ``[N, K]`` token log-probs of the sampled completions; ``mask``:
    ``[N, K]`` 1 on completion tokens; ``advantages``: ``[N]``. REINFORCE on the whole completion
    (arXiv 2402.14740 treats it as one action), on-policy so no importance ratio. The KL penalty
    is the k3 estimator ``exp(q - p) - (q - p) - 1 >= 0`` per token (Schulman 2020; GRPO arXiv
    2402.03300 Eq. 4), unbiased for KL(π || π_ref) on samples of π, with low variance. Returns
    ``(losses [N], kl [N])`` where ``kl`` is ``Σ_t (p - q)``, the k1 estimate, for logging.
    """
    import torch

    from poise.train.logprobs import masked_sum

    log_ratio = (reference - policy) * mask  # [N, K]: q - p, 0 off the mask
    k3 = torch.exp(log_ratio) - log_ratio - 1.0  # [N, K]: >= 0, and 0 off the mask
    losses = -advantages * masked_sum(policy, mask) + kl_coef * masked_sum(k3, mask)  # [N]
    return losses, masked_sum(-log_ratio.detach(), mask)


# --------------------------------------------------------------------------------------------
# the recipe


def train_safe_rl(
    config: SafeRLConfig | None = None, /, *, progress: ProgressFn | None = None, **fields: Any
) -> TrainResult:
    """Safe RLHF (optionally HC-RLHF, optionally from a base model). Keyword ``fields`` are
    those of :class:`SafeRLConfig`."""
    import torch

    from poise.train.advantages import (
        log_lagrange_multiplier_step,
        rloo_advantages,
        safe_rlhf_advantages,
    )
    from poise.train.logprobs import sequence_lengths
    from poise.train.safety import augmented_costs, pessimistic_coefficient, pessimistic_upper_bound

    config = make_config(SafeRLConfig, config, **fields)
    # ---- validate before loading weights
    out = OutputFolder.prepare(config, "safe-rl")
    source = causal_lm_folder(config.model)
    folders = {}
    for name in ("reward_model", "cost_model"):
        folders[name] = resolve_model_folder(getattr(config, name), name)
        if not is_classifier_folder(folders[name]):
            raise PoiseError(f"{name}: {folders[name]} is not a sequence-classification model")
        load_tokenizer(folders[name], need_chat_template=False)  # fails before writing
    check_precision(config)
    check_lora_available(config)
    system = system_prompt(config, source)
    chats = load_prompts(config, system)
    # what is trained on: the chats themselves (a suite name or a file, the system prompt)
    prompts_fingerprint = stable_hash(chats)
    out.check_fingerprint(prompts_fingerprint, f"prompts: {config.prompts}")
    train_idx, safety_idx = (
        split_holdout(len(chats), config.safety_fraction, config.seed)
        if config.high_confidence
        else (list(range(len(chats))), [])
    )
    if config.high_confidence and len(safety_idx) < 2:
        raise PoiseError("high_confidence: the safety test needs at least 2 held-out prompts")
    k = config.samples_per_prompt

    @functools.cache
    def kappa(costs: int) -> float:
        """κ for a micro-batch of ``costs`` samples (the last one of an epoch can be smaller
        than ``batch_size * k``, and its mean and std come from those samples alone)."""
        return pessimistic_coefficient(
            costs,
            len(safety_idx),
            config.delta,
            candidate_coef=config.pessimism_c1,
            safety_coef=config.pessimism_c2,
        )

    if out.status == "complete":
        return finished_result(out)
    with out.interruptible():
        tokenizer = load_tokenizer(
            source, need_chat_template=not config.from_base, from_base_hint=True
        )
        tokenizer.padding_side = "left"
        encoder = ChatEncoder(tokenizer, config.max_length, plain=config.from_base)
        check_prompts_fit(config, encoder, chats, folder_context_length(source))
        for name, folder in folders.items():
            check_classifier_reads(
                folder,
                ((f"{config.prompts}: prompt {i + 1} ({name})", c) for i, c in enumerate(chats)),
            )

        # ---- load
        session = Session.start(
            config,
            out,
            load_causal_lm(source),
            tokenizer,
            rows_per_epoch=len(train_idx),
            data_info={
                "prompts": config.prompts,
                "fingerprint": prompts_fingerprint,
                "train_prompts": len(train_idx),
                "safety_prompts": len(safety_idx),
                "system_prompt": system,
            },
            progress=progress,
            extra_state={"log_lambda": math.log(config.lambda_init)},
        )
        reference = Reference.load(None, source, session)
        reward_model = Scorer(folders["reward_model"], config.max_length, session.device)
        cost_model = Scorer(folders["cost_model"], config.max_length, session.device)
        rank = session.accelerator.process_index
        step_costs: list[Any] = []

        # ---- train
        session.model.train()
        for rows in session.micro_batches(len(train_idx)):
            batch_chats = [chats[train_idx[i]] for i in rows]
            seed = _row_seed(config.seed, session.state.step, session.micro_in_step, rank)
            prompt_ids, response_ids, texts = sample(session, encoder, batch_chats, k, config, seed)
            group_chats = [c for c in batch_chats for _ in range(k)]
            rewards = reward_model(group_chats, texts)  # [N = B * k]
            costs = to_cost(cost_model(group_chats, texts), config.cost_transform)  # [N]
            step_costs.append(costs)
            lam = math.exp(session.state.extra["log_lambda"])

            constrained = costs
            if config.high_confidence and float(costs.std()) > 0:
                # HC-RLHF: the gradient of the pessimistic bound mean + κ·std, per sample
                constrained = augmented_costs(
                    costs,
                    mean=float(costs.mean()),
                    std=float(costs.std()),
                    coefficient=kappa(costs.numel()),
                )
            reward_adv = rloo_advantages(rewards, k)  # [N]
            cost_adv = rloo_advantages(constrained, k)  # [N]
            if config.scale_advantages:
                reward_adv, cost_adv = _unit_scale(reward_adv), _unit_scale(cost_adv)
            advantages = safe_rlhf_advantages(reward_adv, cost_adv, lam).to(session.device)  # [N]

            batch = sequence_batch(
                list(zip(prompt_ids, response_ids, strict=True)), tokenizer.pad_token_id
            )
            mask = batch["response_mask"].to(session.device)  # [N, K]
            # log-probs at the sampling temperature, the distribution the completions came from (the
            # reference's too: the KL is 0 while the policy is the starting model). The reference
            # first, so its memory is freed before backward's.
            temperature = config.temperature
            ref = reference.logps(batch, temperature=temperature)  # [N, K]
            policy = token_logps(session.model, batch, session.device, temperature=temperature)
            per_sequence, kl = policy_loss(
                policy, ref, mask, advantages, config.kl_coef
            )  # [N], [N]
            session.backward(
                per_sequence.sum() / (session.rows_in_step * k),
                {
                    "loss": float(per_sequence.detach().mean()),
                    "reward": float(rewards.mean()),
                    "cost": float(costs.mean()),
                    "kl": float(kl.mean()),
                    "lambda": lam,
                    "response_tokens": float(sequence_lengths(mask).float().mean()),
                    "rows": float(len(texts)),
                },
            )
            if session.at_step_end:
                all_costs = session.accelerator.gather(torch.cat(step_costs).to(session.device))
                step_costs = []
                estimate = (
                    pessimistic_upper_bound(
                        all_costs,
                        len(safety_idx),
                        config.delta,
                        candidate_coef=config.pessimism_c1,
                        safety_coef=config.pessimism_c2,
                    )
                    if config.high_confidence
                    else float(all_costs.mean())
                )
                session.state.extra["log_lambda"] = log_lagrange_multiplier_step(
                    session.state.extra["log_lambda"],
                    estimate,
                    config.cost_limit,
                    config.lambda_lr,
                    max_multiplier=config.lambda_max,
                )
                session.log_extra({"cost_estimate": estimate})
            session.step_done()

        # ---- summarise, safety test, save
        history = session.history()
        metrics: dict[str, Any] = {**_summary(history), **session.last_metrics}
        metrics["lambda_final"] = math.exp(session.state.extra["log_lambda"])
        extra: dict[str, Any] = {}
        if config.high_confidence:
            result = _safety_test(
                session, encoder, cost_model, [chats[i] for i in safety_idx], config
            )
            extra["safety_test"] = {
                **result.to_dict(),
                "verdict": "PASS" if result.passed else "FAIL",
            }
            metrics["safety_test/passed"] = result.passed
            metrics["safety_test/upper_bound"] = result.upper_bound
        # trained from a base with plain turns and no system prompt: the folder declares none
        session.keeps_system_prompt = not config.from_base
        # the prompts it learned from (not the held-out safety prompts): a gate on them is refused
        session.trained_prompts = tuple(last_user_message(chats[i]) for i in train_idx)
        return session.finish(metrics, source=source, extra=extra)


def _summary(history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Reward, cost and KL over the first and the last tenth of the logged steps."""
    summary: dict[str, float] = {}
    for key in ("reward", "cost", "kl"):
        values = [float(h[key]) for h in history if key in h]
        if values:
            n = max(1, len(values) // 10)
            summary[f"{key}_start"] = sum(values[:n]) / n
            summary[f"{key}_end"] = sum(values[-n:]) / n
    return summary


def _safety_test(
    session: Session,
    encoder: ChatEncoder,
    cost_model: Scorer,
    chats: Sequence[Messages],
    config: SafeRLConfig,
) -> Any:
    """HC-RLHF's safety test: one completion per held-out prompt (so the costs are i.i.d.)."""
    import torch

    from poise.train.safety import safety_test

    costs = []
    for start in range(0, len(chats), config.batch_size):
        chunk = list(chats[start : start + config.batch_size])
        seed = _row_seed(config.seed, "safety-test", start)
        _, _, texts = sample(session, encoder, chunk, 1, config, seed)
        costs.append(to_cost(cost_model(chunk, texts), config.cost_transform))
    return safety_test(torch.cat(costs), config.cost_limit, config.delta)
