"""Model 2 — the event classifier: operator labels → a linear model federated with FedAvg.

Each event becomes a fixed-length feature vector built only from what the detector already wrote into
the event (kind, rule, score, duration, per-point z pattern, expected vs actual value, slot) plus the
quantity of the point that leads it. Features are bounded transforms (log1p, fractions, sin/cos), not
per-site standardisation, so every site maps an event to the same space and coefficients average.

The model is scikit-learn's :class:`~sklearn.linear_model.SGDClassifier` (logistic loss, one-vs-rest
over :data:`CLASSES`): its ``coef_`` [C, F] and ``intercept_`` [C] are the only things that leave.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CLASSES",
    "FEATURE_NAMES",
    "LABEL_ALIASES",
    "classify",
    "decision",
    "event_features",
    "features_matrix",
    "train_sgd",
]

#: Operator verdicts (the ``events.label`` values and ``cmd/label`` payload).
CLASSES: tuple[str, ...] = ("incident", "sensor_fault", "false_alarm")
#: Other spellings accepted from operators.
LABEL_ALIASES: dict[str, str] = {
    "real_incident": "incident",
    "grid": "incident",
    "sensor": "sensor_fault",
    "false": "false_alarm",
    "benign": "false_alarm",
}

_KINDS = ("grid_anomaly", "sensor_fault", "feeder_trip", "stale")
_RULES = {
    "composite": "composite",
    "voltage_band_warning": "band",
    "voltage_band_alarm": "band",
    "frequency_band_warning": "band",
    "frequency_band_alarm": "band",
    "over_rating": "over_rating",
    "out_of_range": "range_scale",
    "scale_error": "range_scale",
    "stuck": "stuck",
    "peer_drift": "drift",
    "spike": "spike",
    "dropout": "dropout",
}
_RULE_FAMILIES = ("composite", "band", "over_rating", "range_scale", "stuck", "drift", "spike", "dropout")
_LEAD_Q = ("voltage", "current", "frequency", "active_power", "reactive_power", "temperature")

FEATURE_NAMES: tuple[str, ...] = (
    *(f"kind={k}" for k in _KINDS),
    *(f"rule={r}" for r in _RULE_FAMILIES),
    *(f"lead={q}" for q in _LEAD_Q),
    "log_score",
    "log_duration_min",
    "log_max_abs_z",
    "log_points",
    "peer_agreement",
    "z_sign_coherence",
    "log_rel_deviation",
    "hour_sin",
    "hour_cos",
    "weekend",
    "bias_free_one",  # a constant 1: lets a pure-L2 model keep a class prior independent of the intercept
)


def _clip_log(x: float, cap: float = 1e6) -> float:
    return math.log1p(min(max(float(x), 0.0), cap))


def event_features(event: Mapping[str, Any], quantity_of: Mapping[str, str]) -> np.ndarray:
    """Feature vector (float64[F], order :data:`FEATURE_NAMES`) of one event row.

    ``event``: ``kind``, ``points``, ``start``, ``end``, ``score``, ``explanation`` (as stored);
    ``quantity_of``: point name → quantity.
    """
    f = np.zeros(len(FEATURE_NAMES))
    i = 0
    kind = str(event.get("kind", ""))
    if kind in _KINDS:
        f[i + _KINDS.index(kind)] = 1.0
    i += len(_KINDS)
    expl = event.get("explanation") or {}
    fam = _RULES.get(str(expl.get("rule", "")))
    if fam is not None:
        f[i + _RULE_FAMILIES.index(fam)] = 1.0
    i += len(_RULE_FAMILIES)
    pts = list(event.get("points") or [])
    lead_q = quantity_of.get(pts[0], "") if pts else ""
    if lead_q in _LEAD_Q:
        f[i + _LEAD_Q.index(lead_q)] = 1.0
    i += len(_LEAD_Q)
    score = event.get("score")
    f[i] = _clip_log(0.0 if score is None or not math.isfinite(float(score)) else abs(float(score)))
    start, end = event.get("start"), event.get("end")
    dur = (float(end) - float(start)) / 60.0 if end is not None and start is not None else 0.0
    f[i + 1] = _clip_log(dur)
    figs = [v for v in (expl.get("points") or {}).values() if isinstance(v, Mapping)]
    zs = np.array([float(v["z"]) for v in figs if v.get("z") is not None], np.float64)
    f[i + 2] = _clip_log(np.max(np.abs(zs))) if zs.size else 0.0
    f[i + 3] = _clip_log(len(pts))
    f[i + 4] = float(np.mean(np.abs(zs) >= 2.0)) if zs.size else 0.0
    f[i + 5] = float(abs(np.sum(zs)) / np.sum(np.abs(zs))) if zs.size and np.sum(np.abs(zs)) > 0 else 0.0
    rel = [
        abs(float(v["value"]) - float(v["expected"])) / max(abs(float(v["expected"])), 1e-6)
        for v in figs
        if v.get("value") is not None and v.get("expected") is not None
    ]
    f[i + 6] = _clip_log(max(rel), cap=100.0) if rel else 0.0
    slot = expl.get("slot")
    if slot is not None and int(slot) >= 0:
        hour = int(slot) % 24
        f[i + 7] = math.sin(2 * math.pi * hour / 24.0)
        f[i + 8] = math.cos(2 * math.pi * hour / 24.0)
        f[i + 9] = 1.0 if int(slot) // 24 >= 5 else 0.0
    f[i + 10] = 1.0
    return f


def features_matrix(
    events: Sequence[Mapping[str, Any]], quantity_of: Mapping[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """``X`` [N, F] and class indices ``y`` [N] of the labelled events (unknown labels skipped)."""
    rows, ys = [], []
    for e in events:
        lab = LABEL_ALIASES.get(str(e.get("label")), str(e.get("label")))
        if lab not in CLASSES:
            continue
        rows.append(event_features(e, quantity_of))
        ys.append(CLASSES.index(lab))
    X = np.array(rows, np.float64).reshape(len(rows), len(FEATURE_NAMES))
    return X, np.array(ys, np.int64)


def train_sgd(
    X: np.ndarray,
    y: np.ndarray,
    coef: np.ndarray | None = None,
    intercept: np.ndarray | None = None,
    *,
    epochs: int = 5,
    seed: int = 0,
    alpha: float = 1e-3,
    eta0: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Local SGD epochs (logistic loss, one-vs-rest) starting from ``coef``/``intercept``; returns the new ones.

    The same function trains centrally (on pooled labels) and on a site, so the two are comparable.
    """
    from sklearn.linear_model import SGDClassifier

    C, F = len(CLASSES), len(FEATURE_NAMES)
    coef = np.zeros((C, F)) if coef is None else np.array(coef, np.float64)
    intercept = np.zeros(C) if intercept is None else np.array(intercept, np.float64)
    if len(y) == 0:
        return coef, intercept
    clf = SGDClassifier(loss="log_loss", alpha=alpha, learning_rate="constant", eta0=eta0, random_state=seed)
    # The first partial_fit allocates coef_ for all classes; then restart from the global model.
    clf.partial_fit(X[:1], y[:1], classes=np.arange(C))
    clf.coef_ = coef.copy()
    clf.intercept_ = intercept.copy()
    rng = np.random.default_rng(seed)
    for _ in range(int(epochs)):
        order = rng.permutation(len(y))
        clf.partial_fit(X[order], y[order])
    return np.asarray(clf.coef_, np.float64).copy(), np.asarray(clf.intercept_, np.float64).copy()


def decision(coef: np.ndarray, intercept: np.ndarray, X: np.ndarray) -> np.ndarray:
    """One-vs-rest scores [N, C]."""
    return np.atleast_2d(X) @ np.asarray(coef).T + np.asarray(intercept)


def classify(coef: np.ndarray, intercept: np.ndarray, features: np.ndarray) -> tuple[str, dict[str, float]]:
    """Most likely class of one event and normalised one-vs-rest probabilities (for ranking/annotation)."""
    d = decision(coef, intercept, features)[0]
    p = 1.0 / (1.0 + np.exp(-np.clip(d, -50, 50)))
    p = p / p.sum() if p.sum() > 0 else np.full(len(CLASSES), 1.0 / len(CLASSES))
    return CLASSES[int(np.argmax(d))], {c: float(v) for c, v in zip(CLASSES, p, strict=True)}
