"""Model 1 — the fleet baseline prior: normalised per-unit hour-of-week shapes per quantity.

Format handed to :meth:`gridedge.scoring.detector.Detector.apply_prior` (the detector's contract):
``{"shape": float64[168, Q], "spread": float64[168, Q]}`` with Q = ``len(gateway.model.QUANTITIES)``
in that order; ``shape`` is a per-unit profile (mean 1 over the week for a typical point), ``spread`` the
relative standard deviation (std / |mean|); NaN where the fleet knows nothing.

A site's contribution is built from its detector state only (``mean``, ``var``, ``n`` per slot and
point — already aggregates, never readings): for each scored point, its level is the sample-weighted
mean over its learned slots; slot means divided by that level give the per-unit shape. Shapes and
relative spreads are summed per (slot, quantity) weighted by the slot's sample count. Points whose
level is not clearly positive (reactive power swinging through zero, a tap position around 0) are left
out: a per-unit shape of such a series is meaningless.

**K candidate shapes per quantity (issue #19).** One average over households, offices, plants and PV
feeders fits none of them well, so the fleet also learns K *centres* per quantity: a k-means of the
points' per-unit shapes, federated as Lloyd's algorithm. A site assigns each of its points to the
nearest current global centre of its quantity (weighted squared distance over the slots both know) and
sends, per centre, the same sums as above (``cluster_shape_sum``, ``cluster_spread_sum``,
``cluster_weight``: [K, 168, Q]). FedAvg of those sums ÷ their weights *is* Lloyd's update step (each
centre becomes the count-weighted mean of the shapes assigned to it), so every round is one k-means
iteration over the whole fleet without a shape leaving a site on its own — except that a centre only one
of a site's points is nearest to carries that point's per-unit weekly profile (see docs/federation.md,
"What leaves"). Before the fleet has centres (the first round), points are assigned by how much of their
load falls on weekday working hours (:func:`initial_cluster`), a fixed rule every site applies alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gridedge.gateway.model import QUANTITIES

__all__ = [
    "MIN_SLOT_SAMPLES",
    "N_CENTRES",
    "SCORED_QUANTITIES",
    "assign_clusters",
    "finalise_centres",
    "finalise_prior",
    "global_centres",
    "initial_cluster",
    "prior_from_sums",
    "site_prior_sums",
]

N_SLOTS = 168
#: Quantities that get baselines in the detector (kernel.is_scored: codes 0..5).
SCORED_QUANTITIES: tuple[str, ...] = QUANTITIES[:6]
#: A slot contributes once it has this many samples (the site's own observation threshold is higher).
MIN_SLOT_SAMPLES = 3.0
#: K, the candidate shapes per quantity (tuned on the mixed-type fleet: bench/federation_prior_eval.py).
N_CENTRES = 6
#: Weekday working hours (Mon–Fri 09:00–17:00) as hour-of-week slots: the first round's assignment rule.
_WORK = np.array([d * 24 + h for d in range(5) for h in range(9, 17)])
#: Bin edges of the working-hours share (mean per-unit shape over those slots) for the first round.
_INIT_EDGES = (0.85, 0.95, 1.1, 1.35, 1.6)

_SUM_KEYS = ("shape_sum", "spread_sum", "weight")
_CLUSTER_KEYS = ("cluster_shape_sum", "cluster_spread_sum", "cluster_weight")


def _point_shapes(
    mean: np.ndarray, var: np.ndarray, n: np.ndarray, quantities: list[str]
) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """``(quantity code, weight, per-unit shape, relative spread)`` of every point that has a per-unit
    shape (each [168]; weight 0 where the slot has too few samples)."""
    out = []
    for p, qname in enumerate(quantities):
        if qname not in SCORED_QUANTITIES:
            continue
        q = QUANTITIES.index(qname)
        w = np.where(n[:, p] >= MIN_SLOT_SAMPLES, n[:, p], 0.0)
        if w.sum() <= 0:
            continue
        m = mean[:, p]
        level = float(np.sum(w * m) / w.sum())
        used = w > 0
        # a per-unit shape needs a level that is clearly away from zero and slots on its side of zero
        if not np.isfinite(level) or level <= 0 or np.any(m[used] <= 0.05 * level):
            continue
        sd = np.sqrt(np.maximum(var[:, p], 0.0))
        u = np.where(used, m / level, 0.0)
        rel = np.where(used, sd / np.where(used, m, 1.0), 0.0)
        out.append((q, w, u, rel))
    return out


def initial_cluster(w: np.ndarray, u: np.ndarray) -> int:
    """First-round centre of a point: its per-unit shape's mean over weekday working hours, binned
    (PV-offset households < 0.95 ≤ households and plants < 1.1 ≤ mixed < 1.35 ≤ offices and shops)."""
    ww = w[_WORK]
    share = float(np.sum(ww * u[_WORK]) / ww.sum()) if ww.sum() > 0 else 1.0
    return min(int(np.searchsorted(_INIT_EDGES, share, side="right")), N_CENTRES - 1)


def assign_clusters(
    w: np.ndarray, u: np.ndarray, centres: np.ndarray | None
) -> int:
    """Nearest centre of a point's per-unit shape ``u`` (weights ``w``) among ``centres`` [K, 168]
    (NaN where a centre knows nothing): weighted mean squared difference over the slots both know.
    Without usable centres, :func:`initial_cluster`."""
    if centres is None:
        return initial_cluster(w, u)
    best, dbest = -1, np.inf
    for k in range(centres.shape[0]):
        c = centres[k]
        ok = np.isfinite(c) & (w > 0)
        if ok.sum() < 24:  # a centre that knows less than a day of this point's week is no candidate
            continue
        d = float(np.sum(w[ok] * (u[ok] - c[ok]) ** 2) / w[ok].sum())
        if d < dbest:
            best, dbest = k, d
    return best if best >= 0 else initial_cluster(w, u)


def site_prior_sums(
    mean: np.ndarray,
    var: np.ndarray,
    n: np.ndarray,
    quantities: list[str],
    centres: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per (slot, quantity) sums ``shape_sum``, ``spread_sum`` and ``weight`` (sample counts) of one site,
    and the same per centre (``cluster_*``, [K, 168, Q]) with each point under its nearest centre.

    ``mean``, ``var``, ``n``: the detector's [168, P] baselines; ``quantities[p]``: point p's quantity;
    ``centres``: the fleet's current centres [K, 168, Q] (:func:`finalise_centres`), None in the first round.
    """
    Q = len(QUANTITIES)
    out = {k: np.zeros((N_SLOTS, Q)) for k in _SUM_KEYS}
    out |= {k: np.zeros((N_CENTRES, N_SLOTS, Q)) for k in _CLUSTER_KEYS}
    have = centres is not None and centres.shape == (N_CENTRES, N_SLOTS, Q)
    for q, w, u, rel in _point_shapes(mean, var, n, quantities):
        out["shape_sum"][:, q] += w * u
        out["spread_sum"][:, q] += w * rel
        out["weight"][:, q] += w
        k = assign_clusters(w, u, centres[:, :, q] if have else None)
        out["cluster_shape_sum"][k, :, q] += w * u
        out["cluster_spread_sum"][k, :, q] += w * rel
        out["cluster_weight"][k, :, q] += w
    return out


def prior_from_sums(sums: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The count-weighted fleet prior from several sites' sums (the reference FedAvg must reproduce)."""
    tot = {k: np.sum([s[k] for s in sums], axis=0) for k in _SUM_KEYS + _CLUSTER_KEYS if k in sums[0]}
    out = finalise_prior(tot["shape_sum"], tot["spread_sum"], tot["weight"])
    if "cluster_weight" in tot:
        out |= finalise_centres(tot["cluster_shape_sum"], tot["cluster_spread_sum"], tot["cluster_weight"])
    return out


def finalise_prior(shape_w: np.ndarray, spread_w: np.ndarray, weight: np.ndarray) -> dict[str, np.ndarray]:
    """Divide the weighted sums by their weights: ``{"shape", "spread"}`` in the detector's format."""
    with np.errstate(invalid="ignore", divide="ignore"):
        shape = np.where(weight > 0, shape_w / weight, np.nan)
        spread = np.where(weight > 0, spread_w / weight, np.nan)
    return {"shape": shape, "spread": spread}


#: A centre that holds less than this share of its quantity's samples in a slot is not offered there
#: (an almost empty cluster is one or two points' idiosyncrasy, not a customer type).
MIN_CENTRE_SHARE = 0.03


def finalise_centres(
    shape_w: np.ndarray, spread_w: np.ndarray, weight: np.ndarray
) -> dict[str, np.ndarray]:
    """``{"centres", "centre_spread", "centre_weight"}`` [K, 168, Q] from the per-centre sums (NaN where a
    centre knows nothing); ``centre_weight`` is each centre's share of its quantity's samples per slot."""
    tot = weight.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(tot > 0, weight / tot, 0.0)
        ok = (weight > 0) & (share >= MIN_CENTRE_SHARE)
        centres = np.where(ok, shape_w / weight, np.nan)
        spread = np.where(ok, spread_w / weight, np.nan)
    return {"centres": centres, "centre_spread": spread, "centre_weight": np.where(ok, share, 0.0)}


def global_centres(arrays: Mapping[str, np.ndarray] | None) -> np.ndarray | None:
    """The current centres [K, 168, Q] in a received global model (its ÷N sums), None before the fleet
    has any (the first round, or a model without them)."""
    if not arrays or "prior.cweight" not in arrays:
        return None
    w = np.asarray(arrays["prior.cweight"], np.float64)
    if w.shape != (N_CENTRES, N_SLOTS, len(QUANTITIES)) or float(w.sum()) <= 0:
        return None
    return finalise_centres(np.asarray(arrays["prior.cshape_w"]), np.asarray(arrays["prior.cspread_w"]), w)[
        "centres"
    ]
