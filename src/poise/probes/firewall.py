"""A query firewall from activations: flag queries outside a role's zone.

After ControlNET (Yao et al., "ControlNET: A Firewall for RAG-based LLM System", arXiv
2504.09593). What follows the paper, and what is simplified:

- **Follows**: an allow-list per role (the paper's per-client "activation zone") built from the
  served model's activations on legitimate *anchor* queries of that role; a query is scored by
  how far its activations shift away from the zone (an activation-shift index); the threshold is
  a percentile of the anchors' own scores (linear interpolation between the sorted scores, as
  numpy's default); a flagged query is refused before generation. The same check applies to a
  retrieved passage (its text scored as a query) against a zone fitted on legitimate passages:
  a zone of queries flags in-role passages too.
- **Simplified**: the index here is a standardised distance to the zone's centroid, averaged
  over layers: ``ASI(x) = mean_l ||x_l - mu_l||_2 / s_l`` with ``x_l`` [hidden] the last prompt
  token's residual stream at layer ``l``, ``mu_l`` the anchors' mean and ``s_l`` the anchors'
  median Euclidean distance to it. The paper's own index and its learned detectors are not
  reproduced, and its mitigation (steering flagged queries with a hyper-network, ProNet) is not
  built: a flagged request is refused. Anchor scores are leave-one-out (each anchor against the
  centroid of the others), so the percentile is not flattered by an anchor scoring itself.

A firewall folder holds ``firewall.json`` (model, layers, per role: threshold, percentile,
anchor count) and ``firewall.safetensors`` (per role: ``<role>.centroid`` [layers, hidden],
``<role>.scale`` [layers]).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from poise.chat import Chat
from poise.errors import PoiseError, invalid_json, json_lines, located, parse_json
from poise.models.base import LanguageModel
from poise.probes.data import Example
from poise.probes.linear import read_saved, write_folder
from poise.probes.sweep import collect, not_finite, require_activations

__all__ = [
    "Firewall",
    "Verdict",
    "check_anchor_counts",
    "check_fit_options",
    "load_firewall",
    "read_anchors",
]

FIREWALL_JSON = "firewall.json"
FIREWALL_TENSORS = "firewall.safetensors"
FORMAT = 1
MIN_ANCHORS = 3  # a centroid, a median distance and a leave-one-out percentile need a spread


def check_fit_options(percentile: float, layers: Sequence[int] | None) -> None:
    """Before any activation is read (or, from the CLI, any weight loaded): a percentile in
    (0, 100] and layer indices >= 0, each once (those past the model's last are refused from its decoder
    blocks, before its first forward pass)."""
    if not 0.0 < percentile <= 100.0:
        raise PoiseError(f"firewall: percentile must be in (0, 100], got {percentile:g}")
    repeated = sorted({layer for layer in layers or () if list(layers or ()).count(layer) > 1})
    if repeated:
        # a repeated layer was read twice and weighed twice in the mean over layers
        raise PoiseError(
            f"firewall: layer {repeated[0]} is given more than once; give each layer once"
        )
    negative = [layer for layer in layers or () if layer < 0]
    if negative:
        raise PoiseError(
            f"firewall: layer {negative[0]} is not one of the model's hidden states (0 = the "
            "embeddings, then one per decoder layer)"
        )


def check_anchor_counts(anchors: Mapping[str, Sequence[str]], where: str = "firewall") -> None:
    """Every role has at least :data:`MIN_ANCHORS` anchors; else one error naming the role
    (``where``: the anchors file, or "firewall"), before any weight is loaded or activation
    read."""
    if not anchors:
        # a firewall without a zone was saved without a word: no query could be checked
        raise PoiseError(f"{where}: no roles: give each role at least {MIN_ANCHORS} anchors")
    for role, queries in anchors.items():
        if len(queries) < MIN_ANCHORS:
            raise PoiseError(
                f"{where}: role {role!r} has {len(queries)} anchors; it needs {MIN_ANCHORS}+"
            )


def _shift(states: torch.Tensor, centroid: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """states [n, layers, hidden], centroid [layers, hidden], scale [layers] -> ASI [n]:
    ``mean_l ||x_l - mu_l||_2 / s_l``, the Euclidean distance at each layer."""
    distance = (states.double() - centroid.double()).norm(dim=-1)  # [n, layers]
    return (distance / scale.double()).mean(dim=-1)


@dataclass(frozen=True)
class Zone:
    """One role's zone: centroid, scale, the threshold and how it was set."""

    centroid: torch.Tensor  # [layers, hidden]
    scale: torch.Tensor  # [layers]
    threshold: float
    percentile: float
    anchors: int


@dataclass(frozen=True)
class Verdict:
    """A firewall's decision on one query."""

    role: str
    score: float
    threshold: float
    flagged: bool

    @property
    def reason(self) -> str:
        if not math.isfinite(self.score):
            return (
                f"the query's activations are not finite (activation-shift index {self.score}); "
                f"the role {self.role!r} cannot vouch for it"
            )
        return (
            f"the query falls outside the role {self.role!r} (activation-shift index "
            f"{self.score:.3f} > threshold {self.threshold:.3f})"
        )


@dataclass
class Firewall:
    """Zones of roles over the residual stream of ``layers`` (indices of ``hidden_states``)."""

    model: str | None
    layers: list[int]
    zones: dict[str, Zone] = field(default_factory=dict)
    system_prompt: str | None = None

    @classmethod
    def fit(
        cls,
        model: LanguageModel,
        anchors: Mapping[str, Sequence[str]],
        *,
        layers: Sequence[int] | None = None,
        percentile: float = 95.0,
        system_prompt: str | None = "default",
        progress: Callable[[int], None] | None = None,
    ) -> Firewall:
        """One zone per role from its anchor queries (at least :data:`MIN_ANCHORS` each).
        Options, anchor counts and layers (from the model's decoder blocks) are checked before
        the first forward pass. ``system_prompt``: the system message the anchors are read
        under, ``"default"`` (the model's declared default, as ``poise firewall fit`` and the
        served model use it), None for none, or the text itself."""
        check_fit_options(percentile, layers)
        check_anchor_counts(anchors)
        if system_prompt == "default":
            from poise.models.base import default_system_prompt

            system_prompt = default_system_prompt(model)
        # the model is recorded once fitted: a layer refused while fitting names no fitted model
        firewall = cls(None, [], system_prompt=system_prompt)
        available = len(require_activations("a firewall", model).decoder_layers()) + 1
        # default: every decoder block's output (the embeddings of one last token carry little
        # about the query)
        firewall.layers = list(layers) if layers else list(range(1, available))
        firewall._check_layers(available, model)
        for role, queries in anchors.items():
            states = firewall._states(model, queries, progress)  # [n, layers + 1, hidden]
            kept = states[:, firewall.layers].double()  # [n, layers, hidden]
            n = kept.shape[0]
            bad, _ = not_finite(kept)
            if bad:
                # NaN states gave a NaN threshold, and no score is above NaN: the zone let
                # every query through
                raise PoiseError(
                    f"firewall: role {role!r}: the model's activations of {len(bad)} "
                    f"of its {n} anchors are not finite (NaN or inf; a float16 overflow?)"
                )
            centroid = kept.mean(dim=0)  # [layers, hidden]
            # the median (mean of the two middle values for an even count) of the distances
            distances = (kept - centroid).norm(dim=-1)  # [n, layers]
            scale = torch.quantile(distances, 0.5, dim=0)  # [layers]
            if bool((scale <= 0).any()):
                # the median anchor at the centroid: the zone has no width, and every other
                # query would score without bound (the scale was clamped to 1e-12)
                distinct = len(set(queries))
                raise PoiseError(
                    f"firewall: role {role!r}: most of its {n} anchors have the same "
                    f"activations ({distinct} distinct queries); give it varied queries"
                )
            # leave-one-out: anchor i against the centroid of the others
            others = (centroid * n - kept) / (n - 1)  # [n, layers, hidden]
            loo = ((kept - others).norm(dim=-1) / scale).mean(dim=-1)  # [n]
            threshold = float(torch.quantile(loo, percentile / 100.0))
            firewall.zones[role] = Zone(centroid, scale, threshold, percentile, n)
        firewall.model = model.spec or model.name
        return firewall

    def _states(
        self,
        model: LanguageModel,
        queries: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        chats: list[Chat] = []
        for query in queries:
            chat: Chat = [{"role": "user", "content": query}]
            if self.system_prompt:
                chat.insert(0, {"role": "system", "content": self.system_prompt})
            chats.append(chat)
        return collect(
            model, [Example(c, 0, str(i)) for i, c in enumerate(chats)], progress=progress
        )

    def _check_layers(self, available: int, model: LanguageModel) -> None:
        """Refuse layers the model does not have (``hidden_states`` indices 0..L)."""
        wrong = [layer for layer in self.layers if not 0 <= layer < available]
        if wrong:
            fitted = f" (the firewall was fitted on {self.model})" if self.model else ""
            raise PoiseError(
                f"firewall: layer {wrong[0]} is not one of {model.name}'s hidden states "
                f"0-{available - 1} (the embeddings, then one per decoder layer){fitted}"
            )

    def scores(self, model: LanguageModel, role: str, queries: Sequence[str]) -> list[float]:
        """The activation-shift index of each query against ``role``'s zone."""
        zone = self.zone(role)
        # the layers from the model's blocks, before a forward pass (a firewall of another model)
        self._check_layers(
            len(require_activations("a firewall", model).decoder_layers()) + 1, model
        )
        all_states = self._states(model, queries)  # [n, L + 1, hidden]
        states = all_states[:, self.layers]  # [n, layers, hidden]
        if states.shape[-1] != zone.centroid.shape[-1]:
            raise PoiseError(
                f"firewall: fitted on {zone.centroid.shape[-1]} features, the model gives "
                f"{states.shape[-1]} (a firewall of another model?)"
            )
        return [float(s) for s in _shift(states, zone.centroid, zone.scale)]

    def check(self, model: LanguageModel, role: str, queries: Sequence[str]) -> list[Verdict]:
        """A verdict per query: flagged above the role's threshold, and when its score is not a
        number (activations that overflowed: nothing shows the query is inside the zone)."""
        zone = self.zone(role)
        return [
            Verdict(role, s, zone.threshold, not s <= zone.threshold)
            for s in self.scores(model, role, queries)
        ]

    def zone(self, role: str) -> Zone:
        if role not in self.zones:
            known = ", ".join(sorted(self.zones)) or "none"
            raise PoiseError(f"firewall: no role {role!r} (roles: {known})")
        return self.zones[role]

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        roles: dict[str, Any] = {}
        for role, zone in self.zones.items():
            tensors[f"{role}.centroid"] = zone.centroid.double().contiguous()
            tensors[f"{role}.scale"] = zone.scale.double().contiguous()
            roles[role] = {
                "threshold": zone.threshold,
                "percentile": zone.percentile,
                "anchors": zone.anchors,
            }
        header = {
            "format": FORMAT,
            "model": self.model,
            "layers": self.layers,
            "system_prompt": self.system_prompt,
            "roles": roles,
            "method": "activation-shift index after arXiv 2504.09593 (simplified; see docs)",
        }
        text = json.dumps(header, indent=2) + "\n"

        def write(staging: Path) -> None:
            save_file(tensors, staging / FIREWALL_TENSORS)
            (staging / FIREWALL_JSON).write_text(text, encoding="utf-8")

        return write_folder(folder, write)


def load_firewall(folder: str | Path) -> Firewall:
    """The firewall saved in ``folder`` (``firewall.json`` + ``firewall.safetensors``), or one
    error naming the file and what is wrong: a field of the wrong type, no layers, a zone whose
    tensors do not match the layers, or a centroid / scale that is not finite (a scale must
    also be > 0: a negative one gives negative scores, under any threshold)."""
    header_path, header, tensors = read_saved(
        folder, FIREWALL_JSON, FIREWALL_TENSORS, FORMAT, "firewall", "poise firewall fit"
    )
    wrong = "a field of the wrong type"
    for key in ("model", "system_prompt"):
        if not isinstance(header.get(key), (str, type(None))):
            raise located(header_path, None, f"{wrong} ({key} must be a string or null)")
    layers_field = header.get("layers")
    if "layers" in header and (
        not isinstance(layers_field, list)
        or not layers_field
        or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in layers_field)
    ):
        # int() took 2.7 for layer 2 and true for layer 1; no layers gave every query a NaN score
        raise located(
            header_path,
            None,
            f"{wrong} (layers must be a non-empty list of hidden-state indices >= 0, got "
            f"{layers_field!r})",
        )
    roles_field = header.get("roles")
    if isinstance(roles_field, dict):
        for role, info in roles_field.items():
            value = info.get("threshold") if isinstance(info, dict) else None
            if isinstance(value, bool) or (
                value is not None and not isinstance(value, (int, float))
            ):
                raise located(
                    header_path,
                    None,
                    f"{wrong} (role {role!r}: threshold must be a number, got {value!r})",
                )
    try:
        firewall = Firewall(
            header.get("model"),
            [int(x) for x in header["layers"]],
            system_prompt=header.get("system_prompt"),
        )
        for role, info in header["roles"].items():
            firewall.zones[role] = Zone(
                tensors[f"{role}.centroid"],
                tensors[f"{role}.scale"],
                float(info["threshold"]),
                float(info["percentile"]),
                int(info["anchors"]),
            )
    except KeyError as exc:
        raise located(header_path, None, f"missing field or tensor {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise located(header_path, None, f"a field of the wrong type ({exc})") from None
    layers = len(firewall.layers)
    for role, zone in firewall.zones.items():
        if not math.isfinite(zone.threshold):
            # a NaN threshold flags nothing: the zone would let every query through
            raise located(
                header_path,
                None,
                f"role {role!r}: threshold must be a finite number, got {zone.threshold}",
            )
        centroid, scale = tuple(zone.centroid.shape), tuple(zone.scale.shape)
        if len(centroid) != 2 or centroid[0] != layers or scale != (layers,):
            raise located(
                Path(folder) / FIREWALL_TENSORS,
                None,
                f"role {role!r}: expected a centroid [{layers}, hidden] and a scale [{layers}] "
                f"for the {layers} layers of {FIREWALL_JSON}, got {list(centroid)} and "
                f"{list(scale)}",
            )
        if not bool(torch.isfinite(zone.centroid.double()).all()):
            raise located(
                Path(folder) / FIREWALL_TENSORS,
                None,
                f"role {role!r}: the centroid is not finite (NaN or inf)",
            )
        scales = zone.scale.double()
        if not bool((torch.isfinite(scales) & (scales > 0)).all()):
            # ASI divides by the scale: a negative one made every score negative, under any
            # threshold (the zone let every query through); 0 or NaN flagged every query
            raise located(
                Path(folder) / FIREWALL_TENSORS,
                None,
                f"role {role!r}: the scale must be finite and > 0 at every layer, got "
                f"{[round(float(x), 6) for x in scales]}",
            )
    return firewall


def read_anchors(path: str | Path) -> dict[str, list[str]]:
    """A jsonl of ``{"role": ..., "query": ...}`` lines -> queries per role; a line that is not
    one, or whose role or query is empty, is one error naming ``file:line``."""
    source = Path(path)
    try:
        lines = json_lines(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PoiseError(f"{source}: cannot read the anchors ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise PoiseError(f"{source}: not UTF-8 text") from None
    roles: dict[str, list[str]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except json.JSONDecodeError as exc:
            raise located(source, number, invalid_json(exc)) from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("role"), str)
            or not isinstance(row.get("query"), str)
        ):
            raise located(source, number, 'expected {"role": "...", "query": "..."}')
        # an empty role cannot be named (--role, --firewall-role), and an empty query is no
        # legitimate request: either is a slip in the file, which would still fit a zone
        for key in ("role", "query"):
            if not row[key].strip():
                raise located(source, number, f"field {key!r} is empty")
        roles.setdefault(row["role"], []).append(row["query"])
    if not roles:
        raise PoiseError(f"{source}: no anchors")
    check_anchor_counts(roles, str(source))  # before the model loads
    return roles
