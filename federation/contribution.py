"""A site's contribution to a round: computed from its read-only store, checked against the allow-list.

Used by the ClientApp (what is sent) and by ``gridedge federation export-preview`` (what would be sent),
so an auditor sees exactly the arrays the SuperNode would return.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .allowlist import ALLOWED_ARRAYS, check_arrays, check_metrics
from .classifier import CLASSES, FEATURE_NAMES, LOCAL_STEPS, class_weights, features_matrix, train_local
from .classifier import class_counts as _class_counts
from .prior import global_centres, site_prior_sums
from .reader import open_site, read_detector_state, read_history, read_labelled_events, read_points

__all__ = [
    "CENTRE_KEYS",
    "CLASS_COUNTS_KEY",
    "DP_KEYS",
    "ClassifierMode",
    "contribution_from",
    "describe",
    "fedavg",
    "fleet_class_counts",
    "global_classifier",
    "site_contribution",
]

log = logging.getLogger("gridedge.federation")


#: How a site's classifier enters a round: ``weighted`` (FedAvg weighted by labelled events, the default),
#: ``uniform`` (the raw local model, every site weight 1: the differential-privacy rounds, whose noise
#: calibration assumes equal weights), ``withheld`` (the site sends the prior but no classifier: its
#: node config demands DP and the round is not a DP round).
ClassifierMode = Literal["weighted", "uniform", "withheld"]

#: The prior's per-centre sums (the K candidate shapes): zeros from a site that does not share them.
CENTRE_KEYS: tuple[str, ...] = ("prior.cshape_w", "prior.cspread_w", "prior.cweight")

#: The arrays of a DP classifier round (the only ones fixedclipping_mod clips: a model *update*).
DP_KEYS: tuple[str, ...] = ("clf.coef_w", "clf.intercept_w")


#: The array that carries a site's class counts (÷ N) so the fleet's counts come back in the global
#: model (FedAvg of counts ÷ N is the fleet's counts ÷ ΣN: relative counts, all class_weights needs).
#: Before the first aggregated round the global model holds zeros and each site balances with its own.
CLASS_COUNTS_KEY = "clf.class_w"


def fleet_class_counts(arrays: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The fleet's relative class counts in an aggregated model (None when it does not carry them)."""
    if CLASS_COUNTS_KEY not in arrays:
        return None
    c = np.asarray(arrays[CLASS_COUNTS_KEY], np.float64).ravel()
    return c if c.shape == (len(CLASSES),) and np.all(np.isfinite(c)) and c.sum() > 0 else None


def global_classifier(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(coef, intercept)`` of the global classifier in FedAvg's aggregated arrays (None before any labels).

    Without ``clf.weight`` (a DP round sends only :data:`DP_KEYS`) the arrays are the coefficients.
    A classifier of another shape (a control centre or model file of a release with other features) is
    ignored with a log line: the site then trains from zero, as in round 1, instead of failing the round.
    """
    if "clf.coef_w" not in arrays:
        return None
    coef, icpt = np.asarray(arrays["clf.coef_w"]), np.asarray(arrays.get("clf.intercept_w", ()))
    want = ALLOWED_ARRAYS["clf.coef_w"].shape, ALLOWED_ARRAYS["clf.intercept_w"].shape
    if (coef.shape, icpt.shape) != want:
        log.warning(
            "event=global_classifier_ignored coef_shape=%s intercept_shape=%s expected=%s,%s",
            coef.shape, icpt.shape, *want,
        )  # fmt: skip
        return None
    w = float(np.asarray(arrays["clf.weight"]).ravel()[0]) if "clf.weight" in arrays else 1.0
    if w <= 0:
        return None
    return coef / w, icpt / w


def fedavg(
    replies: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, int | float]]],
) -> dict[str, np.ndarray]:
    """Σₖ Nₖ·xₖ / Σₖ Nₖ per array over ``(arrays, metrics)`` replies, N = ``num-examples``: Flower's
    FedAvg arithmetic, for the benchmark and tests (the ServerApp uses Flower's own)."""
    total = float(sum(float(m["num-examples"]) for _, m in replies))
    return {
        k: sum(float(m["num-examples"]) * np.asarray(a[k], np.float64) for a, m in replies) / total
        for k in replies[0][0]
    }


def contribution_from(
    sums: Mapping[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    global_arrays: Mapping[str, np.ndarray] | None = None,
    *,
    steps: int = LOCAL_STEPS,
    classifier: ClassifierMode = "weighted",
    points: int = 0,
    class_counts: np.ndarray | None = None,
    centre_shapes: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
    """The arithmetic of a contribution from prior sums and labelled features (no I/O; the bench uses it).

    ``global_arrays``: the current global model as received (its classifier is the starting point of
    the local gradient steps; its fleet class counts, if it carries them, weight the classes).
    ``class_counts``: the fleet's class counts, overriding the global model's. ``centre_shapes``
    False (the site's ``federation.share_centre_shapes``): the per-centre sums :data:`CENTRE_KEYS` leave
    as zeros, so the fleet's centres are the other sites' (FedAvg of zeros adds nothing to a centre's
    sums, and each centre is a ratio of two of them). Raises
    :class:`~gridedge.federation.allowlist.ExportRefused` if anything outside the allow-list would leave.
    """
    g = global_classifier(global_arrays or {})
    labelled = len(y)
    # class-balanced training: weights from the fleet's class counts (given, or carried by the global
    # model), else from the site's own; the site's FedAvg weight is its labels' total weight, so the
    # aggregate is one step on the pooled balanced loss (classifier.train_local)
    counts = class_counts if class_counts is not None else fleet_class_counts(global_arrays or {})
    cw = class_weights(counts if counts is not None else _class_counts(y))
    label_weight = float(cw[y].sum()) if labelled else 0.0
    if classifier == "withheld":
        coef, intercept = np.zeros((len(CLASSES), len(FEATURE_NAMES))), np.zeros(len(CLASSES))
        labelled, label_weight = 0, 0.0
    else:
        coef, intercept = train_local(X, y, *(g or (None, None)), steps=steps, class_weight=cw)
    if classifier == "uniform":
        # a DP round: the local model itself, weight 1 per site (FedAvg becomes the plain mean, which is
        # what the server's noise, std = z·C/m, is calibrated for); a site without labels returns the
        # global model unchanged (a zero update).
        out = {"clf.coef_w": coef, "clf.intercept_w": intercept}
        metrics: dict[str, int | float] = {"num-examples": 1.0, "labelled": labelled, "points": points}
    else:
        n_samples = float(sums["weight"].sum())
        # N: FedAvg's weight. Each array is divided by it, so Σ_k N_k·(x_k/N_k)/Σ N = Σ x_k/Σ N, and the
        # ratio of two aggregated arrays is the fleet's count-weighted mean, cell by cell.
        N = n_samples + label_weight
        if N <= 0:
            N = 1.0
        out = {
            "prior.shape_w": sums["shape_sum"] / N,
            "prior.spread_w": sums["spread_sum"] / N,
            "prior.weight": sums["weight"] / N,
            "prior.cshape_w": sums["cluster_shape_sum"] / N,
            "prior.cspread_w": sums["cluster_spread_sum"] / N,
            "prior.cweight": sums["cluster_weight"] / N,
            "clf.coef_w": coef * label_weight / N,
            "clf.intercept_w": intercept * label_weight / N,
            "clf.weight": np.array([label_weight / N]),
        }
        if not centre_shapes:
            for k in CENTRE_KEYS:
                out[k] = np.zeros_like(out[k])
        # a site that withholds its classifier withholds its label counts too
        counts_out = np.zeros(len(CLASSES)) if classifier == "withheld" else _class_counts(y)
        out[CLASS_COUNTS_KEY] = counts_out / N
        metrics = {"num-examples": N, "labelled": labelled, "points": points}
    out = {k: np.ascontiguousarray(v, np.float64) for k, v in out.items()}
    check_arrays(out)
    check_metrics(metrics)
    return out, metrics


def site_contribution(
    db: str | Path,
    global_arrays: Mapping[str, np.ndarray] | None = None,
    *,
    steps: int = LOCAL_STEPS,
    classifier: ClassifierMode = "weighted",
    centre_shapes: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
    """Arrays (allow-listed names only) and metrics this site returns for one round, from its store
    (opened read-only). See :func:`contribution_from`."""
    conn = open_site(db)
    try:
        pts = read_points(conn)
        state = read_detector_state(conn)
        events = read_labelled_events(conn)
        history = read_history(conn)
    finally:
        conn.close()
    Q, KQ = ALLOWED_ARRAYS["prior.weight"].shape, ALLOWED_ARRAYS["prior.cweight"].shape
    sums = {k: np.zeros(Q) for k in ("shape_sum", "spread_sum", "weight")}
    sums |= {k: np.zeros(KQ) for k in ("cluster_shape_sum", "cluster_spread_sum", "cluster_weight")}
    if state is not None:
        arrays, meta = state
        names = list(meta["points"])
        quantities = [pts.get(n, {}).get("quantity", "") for n in names]
        # each point joins the centre of the global model nearest it (one Lloyd step per round)
        sums = site_prior_sums(
            arrays["mean"], arrays["var"], arrays["n"], quantities, centres=global_centres(global_arrays)
        )
    X, y = features_matrix(events, {n: d["quantity"] for n, d in pts.items()}, history)
    out, metrics = contribution_from(
        sums, X, y, global_arrays, steps=steps, classifier=classifier, points=len(pts),
        centre_shapes=centre_shapes,
    )  # fmt: skip
    log.info(
        "event=contribution samples=%.0f labelled=%d points=%d classifier=%s centre_shapes=%s",
        float(sums["weight"].sum()), len(y), len(pts), classifier, "sent" if centre_shapes else "withheld",
    )  # fmt: skip
    return out, metrics


def describe(arrays: Mapping[str, np.ndarray], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-able description of a contribution (for ``export-preview``)."""
    return {
        "arrays": {
            k: {
                "shape": list(np.asarray(v).shape),
                "dtype": str(np.asarray(v).dtype),
                "meaning": ALLOWED_ARRAYS[k].meaning,
                "values": np.asarray(v).tolist(),
            }
            for k, v in arrays.items()
        },
        "metrics": dict(metrics),
    }
