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
"""

from __future__ import annotations

import numpy as np

from gridedge.gateway.model import QUANTITIES

__all__ = [
    "MIN_SLOT_SAMPLES",
    "SCORED_QUANTITIES",
    "finalise_prior",
    "prior_from_sums",
    "site_prior_sums",
]

N_SLOTS = 168
#: Quantities that get baselines in the detector (kernel.is_scored: codes 0..5).
SCORED_QUANTITIES: tuple[str, ...] = QUANTITIES[:6]
#: A slot contributes once it has this many samples (the site's own observation threshold is higher).
MIN_SLOT_SAMPLES = 3.0


def site_prior_sums(
    mean: np.ndarray, var: np.ndarray, n: np.ndarray, quantities: list[str]
) -> dict[str, np.ndarray]:
    """Per (slot, quantity) sums ``shape_sum``, ``spread_sum`` and ``weight`` (sample counts) of one site.

    ``mean``, ``var``, ``n``: the detector's [168, P] baselines; ``quantities[p]``: point p's quantity.
    """
    Q = len(QUANTITIES)
    shape_sum = np.zeros((N_SLOTS, Q))
    spread_sum = np.zeros((N_SLOTS, Q))
    weight = np.zeros((N_SLOTS, Q))
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
        shape_sum[:, q] += w * u
        spread_sum[:, q] += w * rel
        weight[:, q] += w
    return {"shape_sum": shape_sum, "spread_sum": spread_sum, "weight": weight}


def prior_from_sums(sums: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The count-weighted fleet prior from several sites' sums (the reference FedAvg must reproduce)."""
    tot = {k: np.sum([s[k] for s in sums], axis=0) for k in ("shape_sum", "spread_sum", "weight")}
    return finalise_prior(tot["shape_sum"], tot["spread_sum"], tot["weight"])


def finalise_prior(shape_w: np.ndarray, spread_w: np.ndarray, weight: np.ndarray) -> dict[str, np.ndarray]:
    """Divide the weighted sums by their weights: ``{"shape", "spread"}`` in the detector's format."""
    with np.errstate(invalid="ignore", divide="ignore"):
        shape = np.where(weight > 0, shape_w / weight, np.nan)
        spread = np.where(weight > 0, spread_w / weight, np.nan)
    return {"shape": shape, "spread": spread}
