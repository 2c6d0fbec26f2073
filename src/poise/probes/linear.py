"""A linear probe on one layer's residual stream: standardise, then L2 logistic regression.

The recipe is the deception probe of Goldowsky-Dill et al., "Detecting Strategic Deception
Using Linear Probes" (arXiv 2502.03407, Sec. 3.2), which "Strategic dishonesty can undermine AI
safety evaluations" (arXiv 2509.18058, Sec. 6) trains on honest vs deceptive instructions:
activations of one layer are standardised with the training set's per-feature mean and standard
deviation, and a logistic regression with an L2 penalty (coefficient 10, no intercept) is fitted
on them; the probe's score is the logit ``w . (x - mu) / sigma``. poise fits the same
objective by L-BFGS in float64 (checked against scikit-learn's
``LogisticRegression(C=1/l2, fit_intercept=False)`` in the tests) instead of depending on
scikit-learn.

Unlike the authors' released code, which fits every read token as its own example (and scores
a transcript by the mean of its tokens' scores), a row here is one example: the mean of its
tokens' activations. The score is affine, so the two agree on scoring but not on fitting.
The released code also uses the sample standard deviation; poise uses the population one
(docs/probes.md lists the differences).

A probe folder holds ``probe.safetensors`` (weights [hidden], mean [hidden], std [hidden],
difference_of_means [hidden]) and ``probe.json`` (layer, model spec, where the features are
read, threshold and the metadata of its training).
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from poise.errors import PoiseError, file_on_the_way, located, read_json_object

__all__ = ["LinearProbe", "Standardiser", "fit_logistic", "load_probe"]

PROBE_JSON = "probe.json"
PROBE_TENSORS = "probe.safetensors"
PROBE_FORMAT = 1


@dataclass(frozen=True)
class Standardiser:
    """Per-feature standardisation ``(x - mean) / std`` with the training set's statistics
    (population std, as scikit-learn's ``StandardScaler``; a constant feature keeps std 1)."""

    mean: torch.Tensor  # [hidden]
    std: torch.Tensor  # [hidden]

    @classmethod
    def fit(cls, features: torch.Tensor) -> Standardiser:
        x = features.double()  # [n, hidden]
        std = x.std(dim=0, unbiased=False)
        return cls(mean=x.mean(dim=0), std=torch.where(std > 0, std, torch.ones_like(std)))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features.double() - self.mean) / self.std  # [n, hidden]


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    l2: float = 10.0,
    fit_intercept: bool = False,
    max_iter: int = 500,
) -> tuple[torch.Tensor, float]:
    """Weights [hidden] and intercept minimising
    ``sum_i log(1 + exp(-s_i (w . x_i + b))) + l2 / 2 * ||w||^2`` with ``s_i = 2 y_i - 1``
    (scikit-learn's objective with ``C = 1 / l2``; the intercept is not penalised).
    ``features``: [n, hidden]; ``labels``: [n] in {0, 1}. Convex, so L-BFGS with a strong-Wolfe
    line search reaches the optimum the tests compare against scikit-learn."""
    if l2 <= 0 or not math.isfinite(l2):
        raise PoiseError(f"probe: l2 must be a positive number, got {l2}")
    x = features.double()  # [n, hidden]
    sign = labels.double() * 2 - 1  # [n]
    w = torch.zeros(x.shape[1] + int(fit_intercept), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [w],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        optimiser.zero_grad()
        weights = w[: x.shape[1]]
        logits = x @ weights + (w[-1] if fit_intercept else 0.0)  # [n]
        loss = torch.nn.functional.softplus(-sign * logits).sum() + 0.5 * l2 * weights @ weights
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(objective)
    fitted = w.detach()
    return fitted[: x.shape[1]].clone(), float(fitted[-1]) if fit_intercept else 0.0


@dataclass
class LinearProbe:
    """A fitted probe: ``score(x) = w . (x - mean) / std + bias`` on layer ``layer``'s states.

    ``layer`` indexes ``hidden_states`` ([rows, layers + 1, hidden]): 0 the embeddings, ``i + 1``
    decoder block ``i``'s output. ``reduce`` says where the features are read ("last": the last
    token, "mean": the mean over the answer). A score above ``threshold`` flags; the threshold
    is set at ``fpr`` on negatives. ``difference_of_means`` = mean(positives) - mean(negatives)
    in raw activation space: the direction steering adds or ablates (arXiv 2406.11717, Sec. 2.3).
    """

    layer: int
    standardiser: Standardiser
    weights: torch.Tensor  # [hidden], on standardised features
    bias: float
    difference_of_means: torch.Tensor  # [hidden], raw activations
    model: str | None
    reduce: str = "last"
    threshold: float = 0.0
    fpr: float = 0.01
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)  # the folder it was loaded from

    @classmethod
    def fit(
        cls,
        features: torch.Tensor,
        labels: torch.Tensor,
        *,
        layer: int,
        model: str | None,
        reduce: str = "last",
        l2: float = 10.0,
        fpr: float = 0.01,
        metadata: dict[str, Any] | None = None,
        calibration: torch.Tensor | None = None,
    ) -> LinearProbe:
        """Fit on ``features`` [n, hidden] of ``layer`` with ``labels`` [n] in {0, 1}; the
        threshold is set at ``fpr`` on the scores of ``calibration`` [k, hidden], negatives the
        probe was not fitted on (``poise probe train``: the held-out ones), else on the training
        negatives', which the fit pushes down: the rate on new negatives is then above ``fpr``."""
        from poise.probes.metrics import threshold_at_fpr

        y = labels.long()
        if y.numel() == 0 or not bool(((y == 0) | (y == 1)).all()):
            raise PoiseError(f"probe: labels must be 0 or 1, got {sorted(set(y.tolist()))}")
        if int(y.min()) == int(y.max()):
            raise PoiseError("probe: the training set has only one class; it needs both labels")
        standardiser = Standardiser.fit(features)
        weights, bias = fit_logistic(standardiser(features), y, l2=l2)
        x = features.double()
        probe = cls(
            layer=layer,
            standardiser=standardiser,
            weights=weights,
            bias=bias,
            difference_of_means=x[y == 1].mean(dim=0) - x[y == 0].mean(dim=0),
            model=model,
            reduce=reduce,
            fpr=fpr,
            metadata=dict(metadata or {}),
        )
        negatives = features[y == 0] if calibration is None else calibration
        probe.threshold = threshold_at_fpr(probe.score(negatives).tolist(), fpr)
        return probe

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [n] of features [n, hidden] (or of all layers' states [n, layers + 1, hidden],
        from which the probe's layer is taken)."""
        if features.dim() == 3:
            features = features[:, self.layer, :]
        return self.standardiser(features) @ self.weights + self.bias

    # -- the folder

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        tensors = {
            "weights": self.weights,
            "mean": self.standardiser.mean,
            "std": self.standardiser.std,
            "difference_of_means": self.difference_of_means,
        }
        header = {
            "format": PROBE_FORMAT,
            "layer": self.layer,
            "model": self.model,
            "reduce": self.reduce,
            "bias": self.bias,
            "threshold": self.threshold,
            "fpr": self.fpr,
            "hidden_size": int(self.weights.numel()),
            "metadata": self.metadata,
        }
        text = json.dumps(header, indent=2) + "\n"

        def write(staging: Path) -> None:
            save_file(
                # copies: safetensors refuses tensors that share memory (weights = direction)
                {k: v.detach().double().clone() for k, v in tensors.items()},
                staging / PROBE_TENSORS,
            )
            (staging / PROBE_JSON).write_text(text, encoding="utf-8")

        return write_folder(folder, write)


def write_folder(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a saved folder whole or not at all: ``write`` fills a staging folder beside it,
    which is then renamed to ``folder``. An existing empty folder (``.``, one reached through a
    link) cannot always be replaced: the staged files are moved into it, the last step only.
    A failure leaves ``folder`` as it was."""
    path = Path(folder).expanduser()
    if path.is_dir() and any(path.iterdir()):
        raise PoiseError(f"{path}: the folder exists and is not empty; give a new or empty folder")
    target = path.resolve()  # "." has no name to stage beside; a link's folder is elsewhere
    target.parent.mkdir(parents=True, exist_ok=True)
    # made as ``mkdir`` makes a folder (mkdtemp's would keep its owner-only permissions)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    staging.mkdir()
    try:
        write(staging)
        if target.is_dir():
            for item in sorted(staging.iterdir()):
                item.rename(target / item.name)
            staging.rmdir()
        else:
            staging.rename(target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PoiseError(f"{path}: cannot write the folder ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def check_new_folder(folder: str | Path, what: str) -> None:
    """Before any work: ``folder`` is new or an empty folder and can be made (no file on the
    way to it); else one line naming it (``what``: "probe", "firewall")."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise PoiseError(f"{path}: a file, not a folder; give a new or empty folder")
    if path.is_dir() and any(path.iterdir()):
        raise PoiseError(f"{path}: the {what} folder exists and is not empty")
    blocker = file_on_the_way(path)
    if blocker is not None:
        raise PoiseError(f"{path}: cannot make the {what} folder: {blocker} is a file")


def read_saved(
    folder: str | Path, header_name: str, tensors_name: str, fmt: int, what: str, made_by: str
) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """A saved folder's JSON header (checked to be of format ``fmt``) and its safetensors, or
    one line naming what is wrong and where (``what``: "probe", "firewall"; ``made_by``: the
    command that makes one)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder)
    header_path = path / header_name
    if not header_path.is_file():
        raise PoiseError(f"{path}: not a {what} folder (no {header_name}); make one with {made_by}")
    header = read_json_object(header_path)
    if header.get("format") != fmt:
        raise located(header_path, None, f"expected a {what} header of format {fmt}")
    if not (path / tensors_name).is_file():
        raise PoiseError(f"{path}: {tensors_name} is missing")
    try:
        tensors = load_file(str(path / tensors_name))
    except SafetensorError as exc:
        raise located(
            path / tensors_name,
            None,
            f"not a readable safetensors file ({exc}); it may be truncated or corrupt",
        ) from None
    return header_path, header, tensors


def load_probe(folder: str | Path) -> LinearProbe:
    """The probe saved in ``folder`` (``probe.json`` + ``probe.safetensors``)."""
    header_path, header, tensors = read_saved(
        folder, PROBE_JSON, PROBE_TENSORS, PROBE_FORMAT, "probe", "poise probe train"
    )
    wrong = "a field of the wrong type"
    for key, kind in (("layer", int), ("bias", (int, float)), ("threshold", (int, float))):
        value = header.get(key)
        if key in header and (isinstance(value, bool) or not isinstance(value, kind)):
            expected = "an integer" if key == "layer" else "a number"
            raise located(header_path, None, f"{wrong} ({key} must be {expected}, got {value!r})")
    fpr = header.get("fpr", 0.01)
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 <= fpr < 1.0:
        # else ``probe score`` fails on it (a traceback) once every answer has been read
        raise located(header_path, None, f"{wrong} (fpr must be a rate in [0, 1), got {fpr!r})")
    if header.get("reduce", "last") not in ("last", "mean"):
        reduce = header.get("reduce")
        raise located(
            header_path, None, f"{wrong} (reduce must be 'last' or 'mean', got {reduce!r})"
        )
    if not isinstance(header.get("model"), (str, type(None))):
        model = header.get("model")
        raise located(header_path, None, f"{wrong} (model must be a model spec, got {model!r})")
    try:
        probe = LinearProbe(
            layer=int(header["layer"]),
            standardiser=Standardiser(mean=tensors["mean"], std=tensors["std"]),
            weights=tensors["weights"],
            bias=float(header["bias"]),
            difference_of_means=tensors["difference_of_means"],
            model=header.get("model"),
            reduce=str(header.get("reduce", "last")),
            threshold=float(header["threshold"]),
            fpr=float(fpr),
            metadata=dict(header.get("metadata") or {}),
            source=str(folder),
        )
    except KeyError as exc:
        raise located(header_path, None, f"missing field or tensor {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise located(header_path, None, f"a field of the wrong type ({exc})") from None
    if probe.layer < 0:
        raise located(header_path, None, f"layer must be an index >= 0, got {probe.layer}")
    shapes = {
        name: tuple(tensors[name].shape)
        for name in ("weights", "mean", "std", "difference_of_means")
    }
    size = header.get("hidden_size", shapes["weights"][0] if shapes["weights"] else 0)
    if any(shape != (size,) for shape in shapes.values()):
        described = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        raise located(
            Path(folder) / PROBE_TENSORS,
            None,
            f"expected 4 vectors of the hidden size {size} (probe.json), got {described}",
        )
    return probe
