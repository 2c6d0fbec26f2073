"""The probe's numbers against scikit-learn (a reference nobody here wrote) and its folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from poise.errors import PoiseError
from poise.probes import (
    LinearProbe,
    Standardiser,
    auroc,
    auroc_interval,
    fit_logistic,
    load_probe,
    threshold_at_fpr,
)
from poise.probes.linear import check_new_folder

sklearn = pytest.importorskip("sklearn")


def _blobs(n: int = 120, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.4).long()
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, d)
    x[:, 0] += 1.5 * y  # one informative feature, the others noise at several scales
    x[:, 3] -= 0.8 * y
    return x, y


def test_standardiser_matches_standard_scaler() -> None:
    from sklearn.preprocessing import StandardScaler

    x, _ = _blobs()
    ours = Standardiser.fit(x)(x)
    reference = StandardScaler().fit_transform(x.numpy())
    assert torch.allclose(ours, torch.from_numpy(reference), atol=1e-10)


@pytest.mark.parametrize("l2", [10.0, 0.5])
@pytest.mark.parametrize("intercept", [False, True])
def test_logistic_regression_matches_scikit_learn(l2: float, intercept: bool) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs()
    z = Standardiser.fit(x)(x)
    weights, bias = fit_logistic(z, y, l2=l2, fit_intercept=intercept)
    reference = LogisticRegression(C=1.0 / l2, fit_intercept=intercept, tol=1e-12, max_iter=10_000)
    reference.fit(z.numpy(), y.numpy())
    assert weights.numpy() == pytest.approx(reference.coef_[0], abs=1e-5)
    assert bias == pytest.approx(float(reference.intercept_[0]) if intercept else 0.0, abs=1e-5)


def test_auroc_matches_scikit_learn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4]
    labels = [0, 0, 1, 1, 1, 1, 0, 0]
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_delong_interval_by_hand() -> None:
    # positives 0.6, 0.9; negatives 0.1, 0.7, 0.5. psi = [[1,0,1],[1,1,1]]: AUROC 5/6.
    # V10 = [2/3, 1] (var 1/18), V01 = [1, 1/2, 1] (var 1/12); var = 1/36 + 1/36 = 1/18
    area, low, high = auroc_interval([0.6, 0.9, 0.1, 0.7, 0.5], [1, 1, 0, 0, 0])
    half = 1.959963984540054 * (1 / 18) ** 0.5
    assert area == pytest.approx(5 / 6)
    assert low == pytest.approx(5 / 6 - half)
    assert high == 1.0  # clipped
    # perfect separation: no spread in the placements, a zero-width interval
    assert auroc_interval([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == (1.0, 1.0, 1.0)


def _obuchowski_by_loops(
    scores: list[float], labels: list[int], groups: list[str]
) -> tuple[float, float]:
    """(AUROC, variance) of Obuchowski (1997, Biometrics 53:567) written out with loops over
    clusters and rows, as the paper defines it: an independent check of the vectorised one."""
    pos = [(s, g) for s, y, g in zip(scores, labels, groups, strict=True) if y == 1]
    neg = [(s, g) for s, y, g in zip(scores, labels, groups, strict=True) if y == 0]

    def psi(a: float, b: float) -> float:
        return 1.0 if a > b else 0.5 if a == b else 0.0

    area = sum(psi(a, b) for a, _ in pos for b, _ in neg) / (len(pos) * len(neg))
    clusters = list(dict.fromkeys(groups))
    x = {
        c: sum(sum(psi(a, b) for b, _ in neg) / len(neg) for a, g in pos if g == c)
        for c in clusters
    }
    y = {
        c: sum(sum(psi(a, b) for a, _ in pos) / len(pos) for b, g in neg if g == c)
        for c in clusters
    }
    m_c = {c: sum(g == c for _, g in pos) for c in clusters}
    n_c = {c: sum(g == c for _, g in neg) for c in clusters}
    i10 = sum(m_c[c] > 0 for c in clusters)
    i01 = sum(n_c[c] > 0 for c in clusters)
    big_i = len(clusters)
    s10 = i10 / ((i10 - 1) * len(pos)) * sum((x[c] - m_c[c] * area) ** 2 for c in clusters)
    s01 = i01 / ((i01 - 1) * len(neg)) * sum((y[c] - n_c[c] * area) ** 2 for c in clusters)
    s11 = (
        big_i / (big_i - 1) * sum((x[c] - m_c[c] * area) * (y[c] - n_c[c] * area) for c in clusters)
    )
    return area, s10 / len(pos) + s01 / len(neg) + 2 * s11 / (len(pos) * len(neg))


def test_clustered_auroc_interval_is_obuchowskis() -> None:
    rng = np.random.default_rng(0)
    # 30 items, 1 to 6 answers each, both labels within an item, scores tied within items
    groups, labels, scores = [], [], []
    for item in range(30):
        shift = rng.normal()
        for _ in range(int(rng.integers(1, 7))):
            label = int(rng.random() < 0.4)
            groups.append(f"item-{item}")
            labels.append(label)
            scores.append(round(float(shift + 1.2 * label + rng.normal()), 1))
    area, low, high = auroc_interval(scores, labels, groups)
    expected_area, variance = _obuchowski_by_loops(scores, labels, groups)
    half = 1.959963984540054 * variance**0.5
    assert area == pytest.approx(expected_area)
    assert (low, high) == pytest.approx((expected_area - half, expected_area + half))
    # one row per group: DeLong's interval, to the last digit
    singletons = [str(i) for i in range(len(scores))]
    assert auroc_interval(scores, labels, singletons) == pytest.approx(
        auroc_interval(scores, labels)
    )


def test_copies_of_an_answer_do_not_narrow_the_clustered_interval() -> None:
    # every answer sampled 16 times identically: no new information. DeLong over the rows
    # narrows the interval about 4x; the clustered interval stays that of the 16x fewer rows.
    scores = [0.6, 0.9, 0.3, 0.8, 0.1, 0.7, 0.5, 0.2, 0.65, 0.4]
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    once = auroc_interval(scores, labels)
    copies = 16
    many = auroc_interval(
        [s for s in scores for _ in range(copies)], [y for y in labels for _ in range(copies)]
    )
    clustered = auroc_interval(
        [s for s in scores for _ in range(copies)],
        [y for y in labels for _ in range(copies)],
        [str(i) for i in range(len(scores)) for _ in range(copies)],
    )
    assert clustered == pytest.approx(once)
    assert (many[2] - many[1]) < 0.3 * (once[2] - once[1])


def test_a_side_from_a_single_cluster_takes_delongs_term() -> None:
    # five positive answers to one item: no spread between clusters for that side
    scores = [0.9, 0.2, 0.7, 0.4, 0.8, 0.1, 0.5, 0.3, 0.6, 0.35, 0.05, 0.45]
    labels = [1] * 5 + [0] * 7
    groups = ["a"] * 5 + list("bcdefgh")
    area, low, high = auroc_interval(scores, labels, groups)
    delong = auroc_interval(scores, labels)
    assert (area, low, high) == pytest.approx(delong)  # that side's term is DeLong's


def test_threshold_keeps_the_false_positive_rate() -> None:
    negatives = [float(i) for i in range(200)]
    t = threshold_at_fpr(negatives, 0.01)
    assert sum(s > t for s in negatives) <= 2  # at most 1% of 200 above
    assert sum(s >= t for s in negatives) > 2  # and no higher threshold would do
    assert threshold_at_fpr(negatives, 0.0) == 199.0


def test_probe_folder_round_trip(tmp_path: Path) -> None:
    x, y = _blobs()
    probe = LinearProbe.fit(x, y, layer=3, model="organism-large", metadata={"task": "t"})
    probe.save(tmp_path / "p")
    loaded = load_probe(tmp_path / "p")
    assert loaded.layer == 3 and loaded.model == "organism-large"
    assert loaded.metadata == {"task": "t"}
    assert torch.allclose(loaded.score(x), probe.score(x))
    assert loaded.threshold == probe.threshold
    # the threshold is at 1% FPR on the training negatives
    assert float((probe.score(x[y == 0]) > probe.threshold).double().mean()) <= 0.01
    # difference of means in raw space
    assert torch.allclose(probe.difference_of_means, x[y == 1].mean(0) - x[y == 0].mean(0))
    # the 3-d form reads the probe's layer
    stacked = torch.stack([torch.zeros_like(x)] * 3 + [x], dim=1)  # [n, 4, d]
    assert torch.allclose(probe.score(stacked), probe.score(x))


def test_a_folder_that_is_not_a_probe_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PoiseError, match="not a probe folder"):
        load_probe(tmp_path)
    (tmp_path / "probe.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(PoiseError, match=r"probe\.json:1"):
        load_probe(tmp_path)


def test_a_damaged_probe_folder_is_one_error_naming_the_file(tmp_path: Path) -> None:
    """A corrupt tensors file, a header that is not UTF-8 or has a field of the wrong type, or a
    negative layer: one line naming the file, never a traceback."""
    import json

    x, y = _blobs()
    folder = LinearProbe.fit(x, y, layer=1, model="organism-large").save(tmp_path / "p")
    header = json.loads((folder / "probe.json").read_text(encoding="utf-8"))
    for field, value, message in [
        ("layer", "two", "a field of the wrong type"),
        ("threshold", None, "a field of the wrong type"),
        ("metadata", [1], "a field of the wrong type"),
        ("layer", -3, "layer must be an index >= 0, got -3"),
    ]:
        (folder / "probe.json").write_text(json.dumps({**header, field: value}), encoding="utf-8")
        with pytest.raises(PoiseError, match=rf"probe\.json: {message}"):
            load_probe(folder)
    (folder / "probe.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(PoiseError, match=r"probe\.json: not a UTF-8 text file"):
        load_probe(folder)
    (folder / "probe.json").write_text(json.dumps(header), encoding="utf-8")
    tensors = folder / "probe.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(PoiseError, match=r"probe\.safetensors: not a readable safetensors file"):
        load_probe(folder)


def test_an_output_folder_is_checked_before_any_work(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(PoiseError, match="a file, not a folder"):
        check_new_folder(a_file, "probe")
    with pytest.raises(PoiseError, match=r"cannot make the probe folder: .*a-file is a file"):
        check_new_folder(a_file / "sub" / "p", "probe")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x", encoding="utf-8")
    with pytest.raises(PoiseError, match="the firewall folder exists and is not empty"):
        check_new_folder(tmp_path / "full", "firewall")
    (tmp_path / "empty").mkdir()
    check_new_folder(tmp_path / "empty", "probe")  # an empty folder is fine, and a new one
    check_new_folder(tmp_path / "new" / "deep", "probe")


def test_one_class_is_refused() -> None:
    x, _ = _blobs()
    with pytest.raises(PoiseError, match="one class"):
        LinearProbe.fit(x, torch.zeros(len(x), dtype=torch.long), layer=0, model=None)


def test_a_constant_feature_is_scaled_as_standard_scaler_scales_it() -> None:
    """A feature with no spread keeps scale 1 (StandardScaler's ``scale_``), so new data's
    deviation in it stays finite; the other features' statistics are StandardScaler's."""
    from sklearn.preprocessing import StandardScaler

    x, _ = _blobs()
    x[:, 2] = 3.0
    fitted = Standardiser.fit(x)
    reference = StandardScaler().fit(x.numpy())
    assert fitted.std.numpy() == pytest.approx(reference.scale_, rel=1e-12)
    assert fitted.mean.numpy() == pytest.approx(reference.mean_, rel=1e-12)
    new = x[:2].clone()
    new[:, 2] = 5.0
    assert torch.allclose(
        fitted(new), torch.from_numpy(reference.transform(new.numpy())), atol=1e-10
    )


def test_the_threshold_is_set_on_the_calibration_negatives_when_given() -> None:
    """``LinearProbe.fit``: the threshold at ``fpr`` on the held-out negatives' scores
    (``calibration``), else on the training negatives'."""
    x, y = _blobs()
    held_out, _ = _blobs(n=60, seed=1)
    probe = LinearProbe.fit(x, y, layer=0, model=None, fpr=0.1, calibration=held_out)
    assert probe.threshold == threshold_at_fpr(probe.score(held_out).tolist(), 0.1)
    plain = LinearProbe.fit(x, y, layer=0, model=None, fpr=0.1)
    assert plain.threshold == threshold_at_fpr(plain.score(x[y == 0]).tolist(), 0.1)
    assert probe.threshold != plain.threshold
