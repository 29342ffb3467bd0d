"""Part 2 of bench/federation_eval.py: the event classifier on held-back later labels.

Each fleet site's labelled events are split by time (the first 70 % train, the last 30 % test: the model
is judged on the future, whose class mix differs — the test window holds the heat day's false alarms).
Every model is scored on the pooled test labels with balanced accuracy (the mean of the per-class
recalls, so always guessing the majority class scores 1/C) and per-class recall.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, recall_score

from gridedge.federation.classifier import (
    CLASSES,
    L2,
    UNSURE_BELOW,
    class_counts,
    class_weights,
    probabilities,
    train_local,
)
from gridedge.federation.contribution import DP_KEYS, contribution_from, fedavg, global_classifier
from gridedge.federation.privacy import DpSettings

__all__ = [
    "Split",
    "Verdicts",
    "dp_federated",
    "evaluate",
    "federated",
    "fit_sklearn",
    "label_events",
    "split_by_time",
]


def label_events(sc: Any, events: Sequence[Any]) -> list[dict[str, Any]]:
    """Operator verdicts from the scenario truth: incident / sensor_fault / false_alarm. A sensor fault the
    truth marks ``should_alert: False`` (realprofile's lone one-sample spikes) is a false alarm."""
    out = []
    for e in events:
        end = e.end if e.end is not None else e.start
        lab = "false_alarm"
        for t in sc.truth:
            if t["start"] - 600 <= end and e.start <= t.get("end", t["start"]) + 1800:
                if t["class"] == "grid" and e.group in t.get("accept", [t["group"]]):
                    lab = "incident"
                elif t["class"] == "sensor" and t["target"] in e.points:
                    lab = "sensor_fault" if t.get("should_alert", True) else "false_alarm"
        d = e.to_dict()
        d["kind"] = str(e.kind)
        d["label"] = lab
        out.append(d)
    return out


@dataclass
class Split:
    """One site's labelled features, split by time."""

    Xtr: np.ndarray
    ytr: np.ndarray
    Xte: np.ndarray
    yte: np.ndarray


def split_by_time(X: np.ndarray, y: np.ndarray, train: float = 0.7) -> Split:
    k = int(train * len(y))
    return Split(X[:k], y[:k], X[k:], y[k:])


def fit_sklearn(
    X: np.ndarray, y: np.ndarray, class_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's LogisticRegression on the same loss (weighted mean log-loss + L2/2·‖w‖²) fitted to
    convergence, as (coef [C, F], intercept [C]) over all CLASSES (a class the data lacks can never win)."""
    coef, icpt = np.zeros((len(CLASSES), X.shape[1])), np.full(len(CLASSES), -np.inf)
    present = np.unique(y)
    if len(present) == 1:  # one class only: it always wins
        icpt[present[0]] = 0.0
        return coef, icpt
    s = np.ones(len(y)) if class_weight is None else np.asarray(class_weight)[y]
    s = s / s.mean()  # sklearn's C multiplies the summed weighted loss: keep the same L2 strength
    m = LogisticRegression(C=1.0 / (L2 * len(y)), max_iter=10000).fit(X, y, sample_weight=s)
    if len(m.classes_) == 2:  # binary: one row, the score of classes_[1] against classes_[0]
        coef[m.classes_[1]], icpt[m.classes_[1]], icpt[m.classes_[0]] = m.coef_[0], m.intercept_[0], 0.0
    else:
        coef[m.classes_], icpt[m.classes_] = m.coef_, m.intercept_
    return coef, icpt


def federated(
    splits: Sequence[Split],
    rounds: int,
    fleet_counts: np.ndarray | None,
    sums: Sequence[dict[str, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """FedAvg exactly as the apps do it: each site's ``contribution_from`` (÷N arrays, num-examples N),
    Flower's weighted mean (``fedavg``), the global classifier read back with ``global_classifier``.
    ``fleet_counts`` None: each site balances with its own class counts (what leaves today)."""
    g: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        g = fedavg(
            [
                contribution_from(sums[k], s.Xtr, s.ytr, g, class_counts=fleet_counts)
                for k, s in enumerate(splits)
            ]
        )
    got = global_classifier(g)
    if got is None:
        raise RuntimeError("no labels in the fleet")
    return got


def dp_federated(
    splits: Sequence[Split], rounds: int, dp: DpSettings, seed: int, fleet_counts: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The DP classifier rounds as the apps run them: each site's ``contribution_from(classifier="uniform")``,
    its update clipped by Flower's ``compute_clip_model_update`` (what ``fixedclipping_mod`` calls), the
    plain mean (weights 1), Flower's Gaussian noise with std z·C/m (what the server wrapper adds)."""
    from flwr.supercore.differential_privacy import (
        add_gaussian_noise_inplace,
        compute_clip_model_update,
        compute_stdv,
    )

    np.random.seed(seed)  # Flower draws its noise from numpy's global generator
    F = splits[0].Xtr.shape[1]
    g = {"clf.coef_w": np.zeros((len(CLASSES), F)), "clf.intercept_w": np.zeros(len(CLASSES))}
    for _ in range(rounds):
        replies = []
        for s in splits:
            arrays, metrics = contribution_from(
                {}, s.Xtr, s.ytr, g, classifier="uniform", class_counts=fleet_counts
            )
            new, old = [arrays[k] for k in DP_KEYS], [g[k] for k in DP_KEYS]
            compute_clip_model_update(new, old, dp.clipping_norm)
            replies.append((dict(zip(DP_KEYS, new, strict=True)), metrics))
        agg = fedavg(replies)
        noisy = [agg[k] for k in DP_KEYS]
        if dp.noise_multiplier > 0:
            add_gaussian_noise_inplace(
                noisy, compute_stdv(dp.noise_multiplier, dp.clipping_norm, len(splits))
            )
        g = dict(zip(DP_KEYS, noisy, strict=True))
    got = global_classifier(g)
    if got is None:
        raise RuntimeError("no classifier")
    return got


@dataclass
class Verdicts:
    """Scores of one model on the pooled test labels."""

    balanced: float
    recall: list[float]
    covered: float  # share of events with a verdict (max probability ≥ UNSURE_BELOW)
    balanced_confident: float  # balanced accuracy on those
    ece: float  # expected calibration error of the top probability (10 bins)


def _ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    top, pred = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    err = 0.0
    for a, b in itertools.pairwise(edges):
        sel = (top > a) & (top <= b)
        if sel.any():
            err += sel.mean() * abs(float(np.mean(pred[sel] == y[sel])) - float(top[sel].mean()))
    return err


def evaluate(p: np.ndarray, y: np.ndarray) -> Verdicts:
    """Balanced accuracy, per-class recall, coverage and calibration of probabilities ``p`` [N, C]."""
    pred = p.argmax(axis=1)
    labels = list(range(len(CLASSES)))
    conf = p.max(axis=1) >= UNSURE_BELOW
    bal_c = (
        balanced_accuracy_score(y[conf], pred[conf])
        if conf.sum() and len(np.unique(y[conf])) > 1
        else float("nan")
    )
    return Verdicts(
        balanced=float(balanced_accuracy_score(y, pred)),
        recall=[float(r) for r in recall_score(y, pred, labels=labels, average=None, zero_division=0)],
        covered=float(conf.mean()),
        balanced_confident=float(bal_c),
        ece=_ece(p, y),
    )


def model_probabilities(model: tuple[np.ndarray, np.ndarray], X: np.ndarray) -> np.ndarray:
    return probabilities(model[0], model[1], X)


def central_models(
    splits: Sequence[Split], rounds: int, counts: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Central references on the pooled training labels (balanced with the fleet's counts)."""
    X = np.vstack([s.Xtr for s in splits])
    y = np.concatenate([s.ytr for s in splits])
    cw = class_weights(counts)
    return {
        "steps": train_local(X, y, steps=rounds, class_weight=cw),
        "converged": fit_sklearn(X, y, cw),
        "converged_unbalanced": fit_sklearn(X, y),
    }


def site_alone_probabilities(splits: Sequence[Split]) -> np.ndarray:
    """Each site's own converged, self-balanced model on its own later labels (stacked in split order)."""
    out = []
    for s in splits:
        if len(s.yte) == 0:
            continue
        model = fit_sklearn(s.Xtr, s.ytr, class_weights(class_counts(s.ytr))) if len(s.ytr) else None
        if model is None:
            out.append(np.full((len(s.yte), len(CLASSES)), 1.0 / len(CLASSES)))
        else:
            out.append(model_probabilities(model, s.Xte))
    return np.vstack(out)
