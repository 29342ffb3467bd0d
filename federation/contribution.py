"""A site's contribution to a round: computed from its read-only store, checked against the allow-list.

Used by the ClientApp (what is sent) and by ``gridedge federation export-preview`` (what would be sent),
so an auditor sees exactly the arrays the SuperNode would return.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .allowlist import ALLOWED_ARRAYS, check_arrays, check_metrics
from .classifier import CLASSES, FEATURE_NAMES, features_matrix, train_sgd
from .prior import site_prior_sums
from .reader import open_site, read_detector_state, read_labelled_events, read_points

__all__ = ["describe", "global_classifier", "site_contribution"]

log = logging.getLogger("gridedge.federation")


def global_classifier(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(coef, intercept)`` of the global classifier in FedAvg's aggregated arrays (None before any labels)."""
    if "clf.weight" not in arrays:
        return None
    w = float(np.asarray(arrays["clf.weight"]).ravel()[0])
    if w <= 0:
        return None
    return np.asarray(arrays["clf.coef_w"]) / w, np.asarray(arrays["clf.intercept_w"]) / w


def site_contribution(
    db: str | Path,
    global_arrays: Mapping[str, np.ndarray] | None = None,
    *,
    epochs: int = 5,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
    """Arrays (allow-listed names only) and metrics this site returns for one round.

    ``global_arrays``: the current global model as received (its classifier is the starting point of
    the local SGD epochs). Raises :class:`~gridedge.federation.allowlist.ExportRefused` if anything
    outside the allow-list would leave.
    """
    conn = open_site(db)
    try:
        pts = read_points(conn)
        state = read_detector_state(conn)
        events = read_labelled_events(conn)
    finally:
        conn.close()
    Q = ALLOWED_ARRAYS["prior.weight"].shape
    sums = {"shape_sum": np.zeros(Q), "spread_sum": np.zeros(Q), "weight": np.zeros(Q)}
    if state is not None:
        arrays, meta = state
        names = list(meta["points"])
        quantities = [pts.get(n, {}).get("quantity", "") for n in names]
        sums = site_prior_sums(arrays["mean"], arrays["var"], arrays["n"], quantities)
    quantity_of = {n: d["quantity"] for n, d in pts.items()}
    X, y = features_matrix(events, quantity_of)
    g = global_classifier(global_arrays or {})
    coef, intercept = train_sgd(X, y, *(g or (None, None)), epochs=epochs, seed=seed)
    n_samples = float(sums["weight"].sum())
    labelled = len(y)
    # N: FedAvg's weight. Each array is divided by it, so Σ_k N_k·(x_k/N_k)/Σ N = Σ x_k/Σ N, and the ratio
    # of two aggregated arrays is the fleet's count-weighted mean, cell by cell.
    N = n_samples + labelled
    if N <= 0:
        N = 1.0
    out = {
        "prior.shape_w": sums["shape_sum"] / N,
        "prior.spread_w": sums["spread_sum"] / N,
        "prior.weight": sums["weight"] / N,
        "clf.coef_w": coef * labelled / N,
        "clf.intercept_w": intercept * labelled / N,
        "clf.weight": np.array([labelled / N]),
    }
    out = {k: np.ascontiguousarray(v, np.float64) for k, v in out.items()}
    metrics: dict[str, int | float] = {"num-examples": N, "labelled": labelled, "points": len(pts)}
    check_arrays(out)
    check_metrics(metrics)
    assert out["clf.coef_w"].shape == (len(CLASSES), len(FEATURE_NAMES))
    log.info("event=contribution samples=%.0f labelled=%d points=%d", n_samples, labelled, len(pts))
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
