"""The event classifier: class balance with fleet-wide counts, FedAvg = one central step, "unsure" verdicts."""

from __future__ import annotations

import numpy as np

from gridedge.federation.classifier import (
    CLASSES,
    FEATURE_NAMES,
    UNSURE,
    class_counts,
    class_weights,
    classify,
    probabilities,
    train_local,
)
from gridedge.federation.contribution import contribution_from, fedavg, global_classifier
from gridedge.federation.prior import N_SLOTS


def _skewed_sites(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three sites whose class mixes differ wildly; each class lives around its own feature direction."""
    rng = np.random.default_rng(seed)
    F = len(FEATURE_NAMES)
    centres = rng.normal(0, 1.0, (len(CLASSES), F))
    out = []
    for mix in ((40, 3, 1), (2, 30, 2), (5, 5, 0)):
        y = np.repeat(np.arange(len(CLASSES)), mix)
        X = centres[y] * 0.5 + rng.normal(0, 0.6, (len(y), F))
        out.append((X, y))
    return out


def _empty_sums() -> dict[str, np.ndarray]:
    z = np.zeros((N_SLOTS, 9))
    return {"shape_sum": z, "spread_sum": z, "weight": z}


def test_class_weights_balance_the_counts() -> None:
    w = class_weights(np.array([10.0, 30.0, 0.0]))
    # n / (present classes · n_c): 40 / (2·10), 40 / (2·30); an absent class weighs nothing
    np.testing.assert_allclose(w, [2.0, 40.0 / 60.0, 0.0])
    assert float(np.sum(w * [10.0, 30.0, 0.0])) == 40.0  # the total weight equals the label count
    np.testing.assert_array_equal(class_counts(np.array([0, 2, 2, 1, 2])), [1.0, 1.0, 3.0])


def test_fedavg_with_fleet_counts_is_one_central_balanced_step() -> None:
    sites = _skewed_sites()
    fleet = sum(class_counts(y) for _, y in sites)
    g: dict[str, np.ndarray] = {}
    Xall = np.vstack([X for X, _ in sites])
    yall = np.concatenate([y for _, y in sites])
    coef, icpt = None, None
    for _ in range(5):
        g = fedavg([contribution_from(_empty_sums(), X, y, g, class_counts=fleet) for X, y in sites])
        coef, icpt = train_local(Xall, yall, coef, icpt, class_weight=class_weights(fleet))
    fc, fi = global_classifier(g)
    np.testing.assert_allclose(fc, coef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fi, icpt, rtol=1e-9, atol=1e-12)


def test_balanced_training_finds_the_rare_class() -> None:
    sites = _skewed_sites(1)
    X = np.vstack([x for x, _ in sites])
    y = np.concatenate([t for _, t in sites])
    rare = int(np.argmin(class_counts(y)))
    plain = train_local(X, y, steps=60)
    balanced = train_local(X, y, steps=60, class_weight=class_weights(class_counts(y)))

    def rare_prob(m: tuple[np.ndarray, np.ndarray]) -> float:
        return float(probabilities(*m, X[y == rare])[:, rare].mean())

    # the balanced model gives the rare class's own events a clearly higher probability
    assert rare_prob(balanced) > rare_prob(plain) + 0.1


def test_unsure_when_no_class_is_likely_enough() -> None:
    F = len(FEATURE_NAMES)
    coef = np.zeros((len(CLASSES), F))
    coef[0, 0] = 4.0
    x_clear, x_flat = np.zeros(F), np.zeros(F)
    x_clear[0] = 1.0
    verdict, p = classify(coef, np.zeros(len(CLASSES)), x_clear)
    assert verdict == CLASSES[0] and p[CLASSES[0]] > 0.9
    verdict, p = classify(coef, np.zeros(len(CLASSES)), x_flat)  # all logits equal: 1/3 each
    assert verdict == UNSURE
    np.testing.assert_allclose(list(p.values()), [1 / 3] * 3)
    assert classify(coef, np.zeros(len(CLASSES)), x_flat, unsure_below=0.3)[0] in CLASSES
