"""The activation-shift firewall: zones, the percentile threshold, the CLI and poise serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from poise.errors import PoiseError
from poise.models import load_model
from poise.probes.firewall import Firewall, load_firewall, read_anchors
from poise.probes.metrics import auroc_interval
from poise.suites.loaders import load_suite


@pytest.fixture(scope="module")
def organism() -> Any:
    return load_model("organism-large")


@pytest.fixture(scope="module")
def cooking() -> dict[str, list[str]]:
    benign = load_suite("benign").items
    cook = [i.prompt for i in benign if i.category == "cooking"]
    return {
        "anchors": cook[::2],
        "in_role": cook[1::2],
        "off_role": [i.prompt for i in benign if i.category != "cooking"],
        "harmful": [i.prompt for i in load_suite("harmful").items[::2]],
    }


@pytest.fixture(scope="module")
def firewall(organism: Any, cooking: dict[str, list[str]]) -> Firewall:
    return Firewall.fit(
        organism, {"cooking": cooking["anchors"]}, system_prompt=organism.default_system_prompt
    )


def test_threshold_is_the_percentile_of_leave_one_out_anchor_scores(
    organism: Any, firewall: Firewall, cooking: dict[str, list[str]]
) -> None:
    import numpy as np

    zone = firewall.zone("cooking")
    states = firewall._states(organism, cooking["anchors"])[:, firewall.layers].double().numpy()
    n = len(states)
    centroid = states.mean(axis=0)  # [layers, hidden]
    scale = np.median(np.linalg.norm(states - centroid, axis=-1), axis=0)  # [layers]
    loo = []
    for i in range(n):  # each anchor against the mean of the others, one at a time
        others = np.delete(states, i, axis=0).mean(axis=0)
        loo.append(float((np.linalg.norm(states[i] - others, axis=-1) / scale).mean()))
    assert zone.threshold == pytest.approx(float(np.percentile(loo, 95)), rel=1e-9)
    assert np.allclose(zone.centroid.numpy(), centroid) and np.allclose(zone.scale.numpy(), scale)
    assert zone.anchors == n


def test_harmful_and_off_role_queries_score_above_in_role_ones(
    organism: Any, firewall: Firewall, cooking: dict[str, list[str]]
) -> None:
    inside = firewall.scores(organism, "cooking", cooking["in_role"])
    harmful = firewall.scores(organism, "cooking", cooking["harmful"])
    off = firewall.scores(organism, "cooking", cooking["off_role"])
    area, low, _ = auroc_interval(harmful + inside, [1] * len(harmful) + [0] * len(inside))
    assert low > 0.9, area
    area, low, _ = auroc_interval(off + inside, [1] * len(off) + [0] * len(inside))
    assert area > 0.75, (area, low)


def test_folder_round_trip_and_errors(
    organism: Any, firewall: Firewall, tmp_path: Path, cooking: dict[str, list[str]]
) -> None:
    firewall.save(tmp_path / "fw")
    again = load_firewall(tmp_path / "fw")
    queries = cooking["in_role"][:3]
    assert again.scores(organism, "cooking", queries) == pytest.approx(
        firewall.scores(organism, "cooking", queries)
    )
    with pytest.raises(PoiseError, match="no role 'hr'"):
        again.zone("hr")
    with pytest.raises(PoiseError, match="not a firewall folder"):
        load_firewall(tmp_path)
    # a header missing a field, or a folder missing its tensors: one line naming the file
    header_file = next((tmp_path / "fw").glob("*.json"))
    header = json.loads(header_file.read_text(encoding="utf-8"))
    del header["layers"]
    header_file.write_text(json.dumps(header), encoding="utf-8")
    with pytest.raises(PoiseError, match="missing field or tensor 'layers'"):
        load_firewall(tmp_path / "fw")
    next((tmp_path / "fw").glob("*.safetensors")).unlink()
    with pytest.raises(PoiseError, match="is missing"):
        load_firewall(tmp_path / "fw")
    bad = tmp_path / "anchors.jsonl"
    bad.write_text('{"role": "a", "query": "q"}\n{"role": 3}\n', encoding="utf-8")
    with pytest.raises(PoiseError, match=r"anchors\.jsonl:2"):
        read_anchors(bad)


def test_anchors_without_spread_are_refused(organism: Any, cooking: dict[str, list[str]]) -> None:
    """Three copies of one query: the zone's scale was clamped to 1e-12, so every other query,
    in-role ones too, scored about 1e12 and was flagged."""
    query = cooking["anchors"][0]
    with pytest.raises(PoiseError, match=r"role 'cooking': most of its 3 anchors .*1 distinct"):
        Firewall.fit(organism, {"cooking": [query] * 3})
    # two copies and another query: a spread, a zone
    zone = Firewall.fit(organism, {"cooking": [query, query, cooking["anchors"][1]]}).zone(
        "cooking"
    )
    assert bool((zone.scale > 0).all())


def test_layers_the_model_does_not_have_are_one_error(
    organism: Any, firewall: Firewall, cooking: dict[str, list[str]]
) -> None:
    """organism-large has hidden states 0-4; organism-small one layer fewer: a firewall of
    organism-large's last layer, or a layer that does not exist, is refused by name."""
    with pytest.raises(PoiseError, match=r"layer 99 is not one of .* hidden states 0-4") as fit:
        Firewall.fit(organism, {"cooking": cooking["anchors"]}, layers=[99])
    assert "fitted on" not in str(fit.value)  # it is being fitted, not fitted
    with pytest.raises(PoiseError, match="layer -1 is not one of"):
        Firewall.fit(organism, {"cooking": cooking["anchors"]}, layers=[-1])
    small = load_model("organism-small")
    with pytest.raises(PoiseError, match=r"layer 4 is not one of .*0-3.*fitted on organism-large"):
        firewall.scores(small, "cooking", cooking["in_role"][:1])


def test_serve_refuses_a_firewall_it_cannot_use_at_start(
    firewall: Firewall, tmp_path: Path
) -> None:
    from poise.models.mock import MockModel
    from poise.serve.app import _firewall_guard
    from poise.serve.schema import ServeConfig

    firewall.save(tmp_path / "fw")
    config = ServeConfig(model="mock", firewall=str(tmp_path / "fw"), firewall_role="cooking")
    with pytest.raises(PoiseError, match="activations"):
        _firewall_guard(MockModel("mock"), config)
    with pytest.raises(PoiseError, match="--firewall-role needs --firewall"):
        _firewall_guard(MockModel("mock"), ServeConfig(model="mock", firewall_role="cooking"))


def test_a_damaged_firewall_header_or_anchors_file_is_one_error(tmp_path: Path) -> None:
    """A header field of the wrong type, or anchors that are not UTF-8: one line naming the
    file, never a traceback (no model needed)."""
    import torch

    from poise.probes.firewall import Zone

    fitted = Firewall("organism-large", [1, 2])
    fitted.zones["cooking"] = Zone(torch.zeros(2, 4), torch.ones(2), 1.5, 95.0, 3)
    folder = fitted.save(tmp_path / "fw")
    header_file = folder / "firewall.json"
    header = json.loads(header_file.read_text(encoding="utf-8"))
    assert load_firewall(folder).zone("cooking").threshold == 1.5
    for field, value in [
        ("layers", "ab"),
        ("layers", 3),
        ("roles", [1]),
        ("roles", {"cooking": {**header["roles"]["cooking"], "threshold": "high"}}),
    ]:
        header_file.write_text(json.dumps({**header, field: value}), encoding="utf-8")
        with pytest.raises(PoiseError, match=r"firewall\.json: a field of the wrong type"):
            load_firewall(folder)
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_bytes(b'{"role": "a", "query": "caf\xe9"}\n')
    with pytest.raises(PoiseError, match=r"anchors\.jsonl: not UTF-8 text"):
        read_anchors(anchors)


def test_an_anchor_with_a_key_given_twice_names_the_line_and_the_key(tmp_path: Path) -> None:
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(
        '{"role": "cooking", "query": "a"}\n{"role": "cooking", "query": "b", "role": "law"}\n',
        encoding="utf-8",
    )
    with pytest.raises(PoiseError, match=r"anchors\.jsonl:2: key 'role' given twice \(again at"):
        read_anchors(anchors)


def test_an_anchor_of_an_empty_role_or_query_names_the_line(tmp_path: Path) -> None:
    """An empty query fitted into the zone, and an empty role made a zone no --role can name;
    both were accepted without a word."""
    good = "".join(json.dumps({"role": "cooking", "query": f"dish {i}"}) + "\n" for i in range(3))
    for row, key in [
        ({"role": "cooking", "query": ""}, "query"),
        ({"role": "cooking", "query": "  \n"}, "query"),
        ({"role": "", "query": "dish 9"}, "role"),
    ]:
        anchors = tmp_path / "anchors.jsonl"
        anchors.write_text(good + json.dumps(row) + "\n", encoding="utf-8")
        with pytest.raises(PoiseError, match=rf"anchors\.jsonl:4: field '{key}' is empty"):
            read_anchors(anchors)
    anchors.write_text(good, encoding="utf-8")
    assert read_anchors(anchors) == {"cooking": ["dish 0", "dish 1", "dish 2"]}


class _Stub:
    """A model with 4 decoder blocks (hidden states 0-4) and 8 features: each query's states
    are drawn from a generator seeded by its text; a query containing "overflow" gives NaN
    states. ``forwards`` counts the rows read."""

    name = "stub"
    spec = "stub"
    default_system_prompt = None
    capabilities = type("Capabilities", (), {"activations": True})()

    def __init__(self) -> None:
        self.forwards = 0

    def decoder_layers(self) -> list[Any]:
        return [object()] * 4

    def hidden_states(self, chats: Any, continuations: Any = None, **_: Any) -> Any:
        import hashlib

        import torch

        rows = []
        for chat in chats:
            text = chat[-1]["content"]
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
            state = torch.randn(5, 8, generator=torch.Generator().manual_seed(seed))
            rows.append(state * float("nan") if "overflow" in text else state)
        self.forwards += len(chats)
        return torch.stack(rows)


def test_anchor_counts_and_layers_are_checked_before_a_forward_pass(tmp_path: Path) -> None:
    """A role with 2 anchors was refused only once every earlier role's activations had been
    read (after the weights loaded, from the CLI), and a layer past the model's last only after
    the first role's: minutes on a large model."""
    anchors = tmp_path / "anchors.jsonl"
    rows = [("cooking", "a"), ("cooking", "b"), ("cooking", "c"), ("law", "d"), ("law", "e")]
    anchors.write_text(
        "".join(json.dumps({"role": r, "query": q}) + "\n" for r, q in rows), encoding="utf-8"
    )
    with pytest.raises(PoiseError, match=r"anchors\.jsonl: role 'law' has 2 anchors; it needs 3\+"):
        read_anchors(anchors)
    stub = _Stub()
    with pytest.raises(PoiseError, match="role 'law' has 2 anchors"):
        Firewall.fit(stub, {"cooking": ["a", "b", "c"], "law": ["d", "e"]})  # type: ignore[arg-type]
    assert stub.forwards == 0
    with pytest.raises(PoiseError, match=r"layer 5 is not one of stub's hidden states 0-4"):
        Firewall.fit(stub, {"cooking": ["a", "b", "c"]}, layers=[2, 5])  # type: ignore[arg-type]
    assert stub.forwards == 0
    # no role at all (the CLI refused an empty file; from Python it saved an empty firewall),
    # and a layer given twice (read twice, weighed twice in the mean over layers)
    with pytest.raises(PoiseError, match="firewall: no roles: give each role at least 3"):
        Firewall.fit(stub, {})  # type: ignore[arg-type]
    with pytest.raises(PoiseError, match="layer 2 is given more than once"):
        Firewall.fit(stub, {"cooking": ["a", "b", "c"]}, layers=[2, 3, 2])  # type: ignore[arg-type]
    assert stub.forwards == 0
    fitted = Firewall.fit(stub, {"cooking": ["a", "b", "c"]})  # type: ignore[arg-type]
    assert fitted.layers == [1, 2, 3, 4] and stub.forwards == 3
    # a firewall of a deeper model: refused from the blocks, before the queries are read
    fitted.layers = [1, 6]
    with pytest.raises(PoiseError, match=r"layer 6 is not one of stub's hidden states 0-4"):
        fitted.scores(stub, "cooking", ["q"])  # type: ignore[arg-type]
    assert stub.forwards == 3


def test_activations_that_are_not_finite_do_not_open_the_firewall(tmp_path: Path) -> None:
    """NaN anchor states gave a NaN threshold, and a NaN query score is not above anything:
    the zone let every query through, without a word."""
    stub = _Stub()
    with pytest.raises(PoiseError, match=r"role 'cooking': .* 1 of its 3 anchors are not finite"):
        Firewall.fit(stub, {"cooking": ["a", "b", "overflow"]})  # type: ignore[arg-type]
    fitted = Firewall.fit(stub, {"cooking": ["a", "b", "c", "d"]}, percentile=100)  # type: ignore[arg-type]
    inside, overflowed = fitted.check(stub, "cooking", ["a", "an overflow"])  # type: ignore[arg-type]
    assert not inside.flagged and inside.score <= inside.threshold
    assert overflowed.flagged and "not finite" in overflowed.reason
    folder = fitted.save(tmp_path / "fw")
    header_file = folder / "firewall.json"
    header = json.loads(header_file.read_text(encoding="utf-8"))
    header["roles"]["cooking"]["threshold"] = float("nan")
    header_file.write_text(json.dumps(header), encoding="utf-8")  # json writes NaN, reads it
    with pytest.raises(
        PoiseError, match=r"firewall\.json: role 'cooking': threshold must be a fin"
    ):
        load_firewall(folder)


def test_a_firewall_file_that_would_open_or_blind_it_is_one_error(tmp_path: Path) -> None:
    """A negative scale made every score negative, under any threshold: the zone let every
    query through. No layers flagged every query (a NaN score), true / 2.7 were read as layers
    1 / 2, and a model that is not a name failed serve's start with a TypeError. Each is now
    one error naming the file."""
    import torch
    from safetensors.torch import load_file, save_file

    stub = _Stub()
    fitted = Firewall.fit(stub, {"cooking": ["a", "b", "c", "d"]})  # type: ignore[arg-type]
    folder = fitted.save(tmp_path / "fw")
    header_file, tensor_file = folder / "firewall.json", folder / "firewall.safetensors"
    header = json.loads(header_file.read_text(encoding="utf-8"))
    tensors = load_file(str(tensor_file))
    for name, change, message in [
        ("cooking.scale", lambda t: -t, r"scale must be finite and > 0"),
        ("cooking.scale", torch.zeros_like, r"scale must be finite and > 0"),
        ("cooking.centroid", lambda t: t * float("nan"), r"centroid is not finite"),
    ]:
        save_file({**tensors, name: change(tensors[name])}, str(tensor_file))
        with pytest.raises(
            PoiseError, match=rf"firewall\.safetensors: role 'cooking': the {message}"
        ):
            load_firewall(folder)
    save_file(tensors, str(tensor_file))
    assert load_firewall(folder).check(stub, "cooking", ["a"])[0].score > 0  # type: ignore[arg-type]
    for field, value in [
        ("layers", []),
        ("layers", [True, 2, 3, 4]),
        ("layers", [1.0, 2, 3, 4]),
        ("layers", [-1, 2, 3, 4]),
        ("model", ["stub"]),
        ("system_prompt", 5),
        ("roles", {"cooking": {**header["roles"]["cooking"], "threshold": True}}),
    ]:
        header_file.write_text(json.dumps({**header, field: value}), encoding="utf-8")
        with pytest.raises(PoiseError, match=r"firewall\.json: a field of the wrong type"):
            load_firewall(folder)


@pytest.mark.parametrize("percentile", [0.0, -5.0, 100.5])
def test_a_percentile_outside_0_to_100_is_refused_before_a_forward_pass(
    percentile: float,
) -> None:
    """The threshold is a percentile in (0, 100] of the leave-one-out anchor scores; 0 (the
    smallest anchor's score: most in-role queries flagged) is refused, as the documented range
    says, before any activation is read."""
    stub = _Stub()
    with pytest.raises(PoiseError, match=r"percentile must be in \(0, 100\]"):
        Firewall.fit(stub, {"cooking": ["a", "b", "c"]}, percentile=percentile)  # type: ignore[arg-type]
    assert stub.forwards == 0


def test_a_query_scoring_exactly_the_threshold_passes_and_one_above_it_is_flagged() -> None:
    """A query is flagged only above the threshold, as the verdict's reason says ("index >
    threshold"): at percentile 100 the anchor that sets the threshold is inside its own zone."""
    import dataclasses

    stub = _Stub()
    fitted = Firewall.fit(stub, {"cooking": ["a", "b", "c", "d"]})  # type: ignore[arg-type]
    (score,) = fitted.scores(stub, "cooking", ["q"])  # type: ignore[arg-type]
    zone = fitted.zone("cooking")
    fitted.zones["cooking"] = dataclasses.replace(zone, threshold=score)
    (at,) = fitted.check(stub, "cooking", ["q"])  # type: ignore[arg-type]
    assert at.score == at.threshold == score and not at.flagged
    fitted.zones["cooking"] = dataclasses.replace(zone, threshold=score - 1e-9)
    (above,) = fitted.check(stub, "cooking", ["q"])  # type: ignore[arg-type]
    assert above.flagged and f"{score:.3f} > threshold" in above.reason
