"""``poise train monitor``: train a streaming content monitor (SCM, arXiv 2506.09996).

A Hugging Face causal model folder becomes a :class:`~poise.guards.monitor.Monitor` (its decoder
with a token head and a response head) trained on token-labelled answers
(:mod:`poise.guards.data`) with SCM's loss ``alpha * CE_token + (1 - alpha) * CE_response +
gamma * L_logic`` (:func:`poise.guards.monitor.scm_loss`). The optimiser follows the released
training script (ICTMCG/SCM ``train/train_qwen.py`` with ``scripts/run-scm.sh``): every
parameter trained, AdamW with weight decay 0.01, an exponential learning-rate decay of 0.99 per
optimiser step (0.999 below batch size 4), gradients accumulated over 2 batches, 3 epochs, batch
size 8, learning rate 1e-4 (its defaults here, all overridable). With ``validation`` data the
delay-k threshold and k are chosen on it (:func:`poise.guards.calibrate.calibrate`) and written
into the monitor's header.

Assumptions: answers and prompts fit ``max_length`` tokens (longer rows are cut from the end of
the response, their labels with them); the backbone's chat template renders the prompts as the
guarded model renders them (same tokenizer).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from poise.errors import PoiseError, check_number, file_on_the_way
from poise.guards.calibrate import Calibration, calibrate
from poise.guards.data import MonitorExample, encode_example, read_monitor_data
from poise.guards.monitor import Monitor, MonitorHeader, scm_loss

__all__ = [
    "MonitorSettings",
    "TrainedMonitor",
    "fit_monitor",
    "train_monitor",
    "train_monitor_files",
]

logger = logging.getLogger(__name__)

# progress(step, total_steps, loss)
StepFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class MonitorSettings:
    """The monitor's loss and optimiser (released SCM defaults)."""

    alpha: float = 0.6  # weight of the token loss; the response loss gets 1 - alpha
    gamma: float = 1.0  # weight of the logic-consistency loss
    logic_reduce: str = "max"  # how token probabilities pool in the logic loss
    head: str = "response"  # the head that scores tokens while streaming
    lr: float = 1e-4
    lr_decay: float = 0.99  # exponential decay per optimiser step
    weight_decay: float = 0.01
    epochs: int = 3
    batch_size: int = 8
    accumulation: int = 2
    max_length: int = 512
    seed: int = 0
    # calibration on the validation data: heads to choose from (empty: ``head`` only) and the
    # macro-F1 tolerance for an earlier stop (poise.guards.calibrate)
    calibrate_heads: tuple[str, ...] = ()
    tolerance: float = 0.0
    # keep only the backbone's first ``layers`` decoder layers (0: all): a smaller monitor,
    # cheaper per streamed token (poise's option; the paper trains monitors of several sizes)
    layers: int = 0

    def check(self) -> None:
        """One error per bad field, naming it as ``poise train monitor`` spells it, as the
        other commands' config errors do: ``epochs (--epochs): expected a positive integer, got
        0`` (a field without a flag, Python only, by its name alone)."""
        # finite: --lr inf and --gamma nan passed the old comparisons and trained to NaN weights
        _check_float("alpha", self.alpha, low=0, high=1)
        for name in ("gamma", "weight_decay", "tolerance"):
            _check_float(name, getattr(self, name), low=0)
        _check_float("lr", self.lr, positive=True)
        _check_float("lr_decay", self.lr_decay, low=0, high=1, low_open=True)
        if self.logic_reduce not in ("max", "min", "avg"):
            raise _bad("logic_reduce", "max, min or avg", self.logic_reduce)
        if self.head not in ("response", "token"):
            raise _bad("head", "response or token", self.head)
        # chosen among after the training: a typo here failed only then
        heads = self.calibrate_heads
        if not isinstance(heads, tuple) or any(h not in ("response", "token") for h in heads):
            raise _bad("calibrate_heads", "a tuple of response and/or token", heads)
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 0:
            raise _bad("layers", "an integer >= 0 (0: all)", self.layers)
        for name in ("epochs", "batch_size", "accumulation", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _bad(name, "a positive integer", value)


# the MonitorSettings field whose flag of `poise train monitor` is not --FIELD (every field has
# a flag)
_FLAGS = {"calibrate_heads": "--choose-head"}


def _setting_name(field: str) -> str:
    """A :class:`MonitorSettings` field as its errors name it: ``batch_size (--batch-size)``,
    the field and its flag of ``poise train monitor``, as :func:`poise.config.format_field_error`
    names a config field for the other commands."""
    from poise.config import dashed_flag

    return f"{field} ({_FLAGS.get(field) or dashed_flag(field)})"


def _bad(field: str, expected: str, value: object) -> PoiseError:
    return PoiseError(f"{_setting_name(field)}: expected {expected}, got {value!r}")


def _check_float(field: str, value: object, **bounds: Any) -> None:
    check_number("monitor", field, value, where=_setting_name(field), **bounds)


@dataclass
class TrainedMonitor:
    monitor: Monitor
    losses: list[float]
    calibration: Calibration | None
    seconds: float


def _encode(
    monitor: Monitor, examples: list[MonitorExample], max_length: int
) -> list[tuple[list[int], list[int], int]]:
    rows = []
    for i, example in enumerate(examples):
        prompt = monitor.prompt_ids(example.chat)
        try:
            ids, labels = encode_example(monitor.tokenizer, prompt, example)
        except PoiseError as exc:
            raise PoiseError(f"training answer {i + 1}: {exc}") from None
        if len(prompt) >= max_length:
            # the answer would be cut whole: no response token left to learn from
            raise PoiseError(
                f"training answer {i + 1}: its prompt of {len(prompt)} tokens leaves no room "
                f"for the answer in {_setting_name('max_length')} {max_length}; raise it or "
                "shorten the prompt"
            )
        rows.append((ids[:max_length], labels[:max_length], int(example.label)))
    return rows


def _check_context(
    monitor: Monitor,
    rows: list[tuple[list[int], list[int], int]],
    validation: list[MonitorExample] | None,
    max_length: int,
) -> None:
    """Refuse, before training, an answer longer than the backbone's context: a model of
    learned positions (GPT-2's ``n_positions``) failed inside torch with an IndexError, a rotary
    one trained on positions it never saw. Training rows count as cut to ``max_length``;
    validation answers are read whole (the calibration does not cut them)."""
    from poise.models.context import config_context_length
    from poise.train.recipes.common import check_rows_fit

    context = config_context_length(monitor.config)
    if context is None:
        return
    check_rows_fit(
        ((f"training answer {i + 1}", len(ids)) for i, (ids, _, _) in enumerate(rows)),
        context,
        max_length,
    )
    if validation:
        prompts, responses, _ = monitor.encode_answers(validation)
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            if len(prompt) + len(response) > context:
                raise PoiseError(
                    f"validation answer {i + 1}: {len(prompt) + len(response)} tokens, more "
                    f"than the model's context of {context} tokens; shorten it"
                )


def _model_folder(model: str) -> Path:
    """The folder of ``model`` (a name or a folder), checked without loading it: a misspelt
    name suggests the nearest names, as ``poise audit --model`` does."""
    from poise.train.recipes.common import resolve_model_folder

    return resolve_model_folder(model, "--model")


def _load_backbone(model: str, folder: Path) -> tuple[Any, Any, str]:
    """The causal LM and tokenizer of ``folder``, what ``model`` (as typed) resolved to."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poise.models.resolve import _quiet_weight_loading

    if not (folder / "config.json").is_file():
        raise PoiseError(f"--model {model!r}: not a model name or a folder with config.json")
    with _quiet_weight_loading():
        backbone = AutoModelForCausalLM.from_pretrained(
            str(folder), use_safetensors=True, dtype=torch.float32
        )
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not getattr(tokenizer, "is_fast", False):
        raise PoiseError(f"--model {model!r}: a fast tokenizer is needed (character offsets)")
    if not getattr(tokenizer, "chat_template", None):
        # the monitor reads each prompt as the guarded model renders it: through the template
        raise PoiseError(
            f"--model {model!r}: the tokenizer has no chat template (tokenizer_config.json "
            "'chat_template' or chat_template.jinja); the monitor reads prompts through it"
        )
    return backbone, tokenizer, model


# the config fields that count a causal LM's decoder layers
_LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers")


def keep_layers(backbone: Any, layers: int) -> None:
    """Cut ``backbone`` (a loaded causal LM) to its first ``layers`` decoder layers, in place,
    and make its config say so (so the saved monitor loads with that many)."""
    from poise.models.hf import DECODER_LAYER_PATHS, find_submodule

    found = find_submodule(backbone, DECODER_LAYER_PATHS, torch.nn.ModuleList)
    if found is None:
        raise PoiseError(
            f"layers={layers}: cannot find the decoder layers of {type(backbone).__name__} "
            f"(looked for {', '.join(DECODER_LAYER_PATHS)})"
        )
    where, stack = found
    if layers > len(stack):
        raise PoiseError(f"layers={layers}: the backbone has only {len(stack)} decoder layers")
    parent: Any = backbone
    *parents, last = where.split(".")
    for name in parents:
        parent = getattr(parent, name)
    setattr(parent, last, torch.nn.ModuleList(list(stack)[:layers]))
    config = backbone.config
    for name in _LAYER_COUNTS:
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, layers)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]


def _needs_validation(settings: MonitorSettings, given: bool) -> None:
    """The head choice and the tolerance choose the rule on validation data: without it they
    were ignored (threshold 0.5, k 1 kept, exit 0)."""
    if given:
        return
    if settings.calibrate_heads:
        raise PoiseError("--choose-head chooses on validation data: give --validation FILE")
    if settings.tolerance:
        raise PoiseError(
            "--tolerance applies when choosing k on validation data: give --validation FILE"
        )


def train_monitor(
    model: str,
    examples: list[MonitorExample],
    *,
    settings: MonitorSettings | None = None,
    validation: list[MonitorExample] | None = None,
    on_step: StepFn | None = None,
    metadata: dict[str, Any] | None = None,
) -> TrainedMonitor:
    """Train a monitor from the causal model ``model`` (a name or folder) on ``examples``. The
    header's ``base`` is ``model`` as given; its metadata's ``base_model`` the absolute folder
    it was loaded from (``base`` may be a relative folder or an alias)."""
    settings = settings or MonitorSettings()
    settings.check()
    _needs_validation(settings, validation is not None)
    _check_labels(examples)
    _check_validation_labels(validation)
    return _train(model, _model_folder(model), examples, settings, validation, on_step, metadata)


def _train(
    model: str,
    folder: Path,
    examples: list[MonitorExample],
    settings: MonitorSettings,
    validation: list[MonitorExample] | None,
    on_step: StepFn | None,
    metadata: dict[str, Any] | None,
) -> TrainedMonitor:
    """:func:`train_monitor` once ``model`` is resolved to ``folder`` (looked up once)."""
    backbone, tokenizer, base = _load_backbone(model, folder)
    return fit_monitor(
        backbone,
        tokenizer,
        examples,
        base=base,
        settings=settings,
        validation=validation,
        on_step=on_step,
        metadata={"base_model": str(folder.resolve()), **(metadata or {})},
    )


def _check_labels(
    examples: list[MonitorExample],
    what: str = "the training data",
    why: str = "needs harmful and harmless answers, has",
) -> None:
    harmful = sum(e.label for e in examples)
    if not harmful or harmful == len(examples):
        raise PoiseError(f"{what}: {why} {harmful} harmful and {len(examples) - harmful} harmless")


def _check_validation_labels(
    validation: list[MonitorExample] | None, what: str = "the validation data"
) -> None:
    """Refuse, before training, a validation split the rule cannot be chosen on: with one
    class only every (threshold, k) scores alike. The calibration refused it only after the
    whole training, and without naming the file."""
    if validation is not None:
        why = "the threshold and k are chosen on harmful and harmless answers; it has"
        _check_labels(validation, what, why)


def fit_monitor(
    backbone: Any,
    tokenizer: Any,
    examples: list[MonitorExample],
    *,
    base: str | None = None,
    settings: MonitorSettings | None = None,
    validation: list[MonitorExample] | None = None,
    on_step: StepFn | None = None,
    metadata: dict[str, Any] | None = None,
) -> TrainedMonitor:
    """Train a monitor on a loaded causal LM (``backbone``, trained in place) and its
    tokenizer (a fast one: character offsets label the tokens)."""
    settings = settings or MonitorSettings()
    settings.check()
    _check_labels(examples)
    _check_validation_labels(validation)
    started = time.perf_counter()
    if settings.layers:
        keep_layers(backbone, settings.layers)
    torch.manual_seed(settings.seed)
    header = MonitorHeader(
        alpha=settings.alpha,
        gamma=settings.gamma,
        logic_reduce=settings.logic_reduce,  # type: ignore[arg-type]
        head=settings.head,  # type: ignore[arg-type]
        base=base,
        metadata={"settings": asdict(settings), "examples": len(examples), **(metadata or {})},
    )
    monitor = Monitor(backbone, tokenizer, header)
    rows = _encode(monitor, examples, settings.max_length)
    _check_context(monitor, rows, validation, settings.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    optimizer = torch.optim.AdamW(
        monitor.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    decay = settings.lr_decay if settings.batch_size >= 4 else max(settings.lr_decay, 0.999)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
    rng = random.Random(settings.seed)
    batches_per_epoch = (len(rows) + settings.batch_size - 1) // settings.batch_size
    # an epoch's last optimiser step takes the batches left over (fewer than accumulation)
    steps_per_epoch = (batches_per_epoch + settings.accumulation - 1) // settings.accumulation
    total = settings.epochs * steps_per_epoch
    losses: list[float] = []  # per optimiser step: the mean of its batches' losses
    step = 0
    accumulated: list[float] = []
    monitor.train()
    for _ in range(settings.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for b in range(batches_per_epoch):
            batch = [
                rows[i] for i in order[b * settings.batch_size : (b + 1) * settings.batch_size]
            ]
            width = max(len(ids) for ids, _, _ in batch)
            ids = torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in batch])
            mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in batch])
            token_labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in batch])
            response_labels = torch.tensor([r[2] for r in batch])
            token_logits, response_logits = monitor(ids, mask)
            parts = scm_loss(
                token_logits,
                response_logits,
                token_labels,
                response_labels,
                alpha=settings.alpha,
                gamma=settings.gamma,
                reduce=settings.logic_reduce,  # type: ignore[arg-type]
            )
            (parts["loss"] / settings.accumulation).backward()
            accumulated.append(float(parts["loss"].detach()))
            if (b + 1) % settings.accumulation == 0 or b + 1 == batches_per_epoch:
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step += 1
                losses.append(sum(accumulated) / len(accumulated))
                accumulated = []
                if on_step is not None:
                    on_step(step, total, losses[-1])
    monitor.eval()
    result = None
    if validation is not None:
        result = choose_rule(
            monitor, validation, heads=settings.calibrate_heads, tolerance=settings.tolerance
        )
    return TrainedMonitor(monitor, losses, result, time.perf_counter() - started)


def choose_rule(
    monitor: Monitor,
    validation: list[MonitorExample],
    *,
    heads: tuple[str, ...] = (),
    tolerance: float = 0.0,
) -> Calibration:
    """Choose the monitor's streaming head, threshold and k on ``validation``
    (:func:`poise.guards.calibrate.calibrate`; ``heads`` empty: the header's head only) and
    write them, with the validation figures, into ``monitor.header``."""
    result = calibrate(monitor, validation, heads=heads or None, tolerance=tolerance)
    monitor.header = replace(
        monitor.header,
        head=result.head,  # type: ignore[arg-type]
        threshold=result.threshold,
        k=result.k,
        metadata={
            **monitor.header.metadata,
            "calibration": {
                "examples": len(validation),
                "macro_f1": result.macro_f1,
                "head": result.head,
                "share": result.share,
                "tolerance": tolerance,
                "threshold": result.threshold,
                "k": result.k,
            },
        },
    )
    return result


def train_monitor_files(
    model: str,
    data: str | Path,
    output: str | Path,
    *,
    settings: MonitorSettings | None = None,
    validation: str | Path | None = None,
    on_step: StepFn | None = None,
    metadata: dict[str, Any] | None = None,
) -> TrainedMonitor:
    """``poise train monitor``: read the data files (checked before loading the model), train,
    and save the monitor folder to ``output`` (once, whole or not at all).

    ``monitor.json``'s metadata records the files as given (``data``, ``validation``) and as
    absolute paths (``data_path``, ``validation_path``: a relative path names another file, or
    none, from another working directory), ``base_model`` (:func:`train_monitor`), and
    ``metadata``, the caller's additions."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise PoiseError(f"--output {out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        raise PoiseError(f"--output {out}: exists and is not empty")
    blocker = file_on_the_way(out)
    if blocker is not None:  # found here, not by a traceback when saving after training
        raise PoiseError(f"--output {out}: cannot make the folder, {blocker} is a file")
    settings = settings or MonitorSettings()
    settings.check()
    _needs_validation(settings, validation is not None)
    if validation is not None and Path(validation).resolve() == Path(data).resolve():
        # the rule (threshold, k, head) would be chosen on the answers the heads learnt from
        raise PoiseError(
            f"--validation {validation} is the training data: the threshold and k are chosen on "
            "answers the monitor did not learn from; give a held-out file"
        )
    folder = _model_folder(model)  # a misspelt name fails before the data is read
    examples = read_monitor_data(data)
    _check_labels(examples, f"--data {data}")
    held = read_monitor_data(validation) if validation is not None else None
    _check_validation_labels(held, f"--validation {validation}")
    if held:
        seen = {(e.messages, e.response) for e in examples}
        shared = sum((e.messages, e.response) in seen for e in held)
        if shared:
            logger.warning(
                "%d of the %d validation answers are also in the training data (same chat and "
                "answer): the rule chosen on them will look better than it is",
                shared,
                len(held),
            )
    files: dict[str, Any] = {"data": str(data), "data_path": str(Path(data).resolve())}
    if validation is not None:
        files["validation"] = str(validation)
        files["validation_path"] = str(Path(validation).resolve())
    trained = _train(
        model, folder, examples, settings, held, on_step, {**files, **(metadata or {})}
    )
    trained.monitor.save(out)
    return trained
