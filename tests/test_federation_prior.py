"""Model 1 with K candidate shapes per quantity: the allow-list entries, the federated Lloyd step, and a
detector point picking the centre its own first day fits (issue #19)."""

from __future__ import annotations

import numpy as np
import pytest

from gridedge.federation.allowlist import ALLOWED_ARRAYS, ExportRefused, check_arrays
from gridedge.federation.contribution import contribution_from, fedavg
from gridedge.federation.prior import (
    N_CENTRES,
    N_SLOTS,
    assign_clusters,
    finalise_centres,
    global_centres,
    site_prior_sums,
)
from gridedge.gateway.model import QUANTITIES, PointTable, ReadingBatch
from gridedge.scoring import Detector

Q = len(QUANTITIES)
QI = QUANTITIES.index("current")
T0 = 1_780_272_000.0  # 2026-06-01 00:00 UTC, a Monday
STEP = 60.0
HOW = np.arange(N_SLOTS)
HOD, DOW = HOW % 24, HOW // 24


def _unit(x: np.ndarray) -> np.ndarray:
    return x / x.mean()


#: Per-unit weekly shapes of three customer types (hour-of-week, Monday 00:00 first).
COMMERCIAL = _unit(np.where((DOW < 5) & (HOD >= 8) & (HOD < 18), 1.8, 0.35))
HOUSEHOLD = _unit(0.6 + 0.5 * np.exp(-0.5 * ((HOD - 19.5) / 1.8) ** 2) + 0.25 * np.exp(-0.5 * ((HOD - 7.5) / 1.2) ** 2))
PLANT = _unit(np.where(DOW < 5, 1.1, 0.8) + 0.0 * HOD)


def _no_evidence() -> np.ndarray:
    return np.zeros(N_SLOTS)


# -- the allow-list ---------------------------------------------------------------------------------


def test_allowlist_takes_the_centre_sums_with_their_shape_only() -> None:
    shape = (N_CENTRES, N_SLOTS, Q)
    for name in ("prior.cshape_w", "prior.cspread_w", "prior.cweight"):
        assert ALLOWED_ARRAYS[name].shape == shape
        check_arrays({name: np.zeros(shape)})  # the right shape leaves
        for bad in ((N_SLOTS, Q), (N_CENTRES + 1, N_SLOTS, Q), (N_CENTRES, N_SLOTS, Q - 1)):
            with pytest.raises(ExportRefused, match="shape"):
                check_arrays({name: np.zeros(bad)})
        with pytest.raises(ExportRefused, match="dtype"):
            check_arrays({name: np.zeros(shape, np.float32)})


# -- the federated Lloyd step -----------------------------------------------------------------------


def _site(shapes: list[np.ndarray], levels: list[float], weeks: float, seed: int):
    """Detector-state-like baselines of one site whose current points follow ``shapes``."""
    rng = np.random.default_rng(seed)
    P = len(shapes)
    mean = np.stack([lv * s * (1 + rng.normal(0, 0.02, N_SLOTS)) for s, lv in zip(shapes, levels, strict=True)], axis=1)
    var = (0.05 * mean) ** 2
    n = np.full((N_SLOTS, P), 60.0 * weeks)
    return mean, var, n, ["current"] * P


def test_fedavg_of_the_centre_sums_is_one_lloyd_step_over_the_fleet() -> None:
    sites = [
        _site([COMMERCIAL, HOUSEHOLD], [300.0, 120.0], 3, 1),
        _site([HOUSEHOLD, HOUSEHOLD, PLANT], [80.0, 200.0, 400.0], 1, 2),
        _site([COMMERCIAL, PLANT], [150.0, 250.0], 2, 3),
    ]
    rounds = []
    centres = None
    for _ in range(3):
        replies = [
            contribution_from(site_prior_sums(*st, centres=centres), np.zeros((0, 45)), np.zeros(0, int))
            for st in sites
        ]
        glob = fedavg(replies)
        centres = global_centres(glob)
        rounds.append((glob, centres))
    glob, centres = rounds[-1]
    assert centres is not None and centres.shape == (N_CENTRES, N_SLOTS, Q)
    # longhand: every point joins the centre of the previous round nearest it (weighted squared
    # distance), each centre is the count-weighted mean of its points' per-unit shapes
    prev = rounds[-2][1]
    num = np.zeros((N_CENTRES, N_SLOTS))
    den = np.zeros((N_CENTRES, N_SLOTS))
    members: dict[int, set[str]] = {}
    truth = {id(COMMERCIAL): "commercial", id(HOUSEHOLD): "household", id(PLANT): "plant"}
    kinds = [[COMMERCIAL, HOUSEHOLD], [HOUSEHOLD, HOUSEHOLD, PLANT], [COMMERCIAL, PLANT]]
    for (mean, _var, n, _q), ks in zip(sites, kinds, strict=True):
        for p, kind in enumerate(ks):
            u = mean[:, p] / (np.sum(n[:, p] * mean[:, p]) / n[:, p].sum())
            d = [np.nansum(n[:, p] * (u - prev[k, :, QI]) ** 2) if np.isfinite(prev[k, :, QI]).any() else np.inf
                 for k in range(N_CENTRES)]  # fmt: skip
            k = int(np.argmin(d))
            num[k] += n[:, p] * u
            den[k] += n[:, p]
            members.setdefault(k, set()).add(truth[id(kind)])
    want = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    np.testing.assert_allclose(centres[:, :, QI], want, rtol=1e-9, equal_nan=True)
    # and the three customer types ended in three different centres, none mixed
    assert sorted(len(m) for m in members.values()) == [1, 1, 1], members
    # the one-shape prior is still the fleet mean over every point
    assert float(glob["prior.weight"][:, QI].sum()) > 0


# -- the detector picks its centre ------------------------------------------------------------------

SPECS = [
    {"name": "BUS_V", "quantity": "voltage", "unit": "kV", "group": "BUS", "nominal": 11.0},
    {"name": "SHOP_I", "quantity": "current", "unit": "A", "group": "F1", "parent": "BUS", "rating": 900.0},
    {"name": "HOME_I", "quantity": "current", "unit": "A", "group": "F2", "parent": "BUS", "rating": 900.0},
]


def _fleet_prior() -> dict[str, np.ndarray]:
    """A prior with three centres for current (shares 30/50/20 %) and their count-weighted average."""
    cw = np.zeros((N_CENTRES, N_SLOTS, Q))
    cs = np.zeros((N_CENTRES, N_SLOTS, Q))
    cn = np.zeros((N_CENTRES, N_SLOTS, Q))
    for k, (shape, share) in enumerate(((COMMERCIAL, 0.3), (HOUSEHOLD, 0.5), (PLANT, 0.2))):
        for q in range(Q):
            s = shape if q == QI else np.ones(N_SLOTS)
            cw[k, :, q] = share * s
            cs[k, :, q] = share * 0.08
            cn[k, :, q] = share
    c = finalise_centres(cw, cs, cn)
    shape = np.nansum(c["centres"] * c["centre_weight"], axis=0)
    return {"shape": shape, "spread": np.full((N_SLOTS, Q), 0.1), **c}


def test_a_point_takes_the_centre_its_first_day_fits() -> None:
    """A shop and a household feeder, one Monday of their own readings: each point's filled Saturday
    slots follow its own customer type, not the fleet average."""
    det = Detector(PointTable.from_specs(SPECS), timezone="UTC")
    det.apply_prior(_fleet_prior(), version="fleet-k")
    rng = np.random.default_rng(4)
    ts = T0 + STEP * np.arange(int(20 * 3600 / STEP))  # Monday 00:00–20:00
    how = ((ts - T0) // 3600).astype(int)
    level = {"SHOP_I": 400.0, "HOME_I": 150.0}
    vals = np.column_stack(
        [np.full(len(ts), 11.0)]
        + [level[n] * shape[how] * (1 + rng.normal(0, 0.01, len(ts))) for n, shape in (("SHOP_I", COMMERCIAL), ("HOME_I", HOUSEHOLD))]
    )  # fmt: skip
    P = vals.shape[1]
    for a in range(0, len(ts), 60):
        b = min(len(ts), a + 60)
        det.process(
            ReadingBatch(np.tile(np.arange(P, dtype=np.int32), b - a), np.repeat(ts[a:b], P),
                         vals[a:b].ravel(), np.zeros((b - a) * P, np.uint8))
        )  # fmt: skip
    s = det.state
    sat = [5 * 24 + h for h in (10, 11, 12, 14)]  # Saturday working hours: filled, never visited
    for name, own, other in (("SHOP_I", COMMERCIAL, HOUSEHOLD), ("HOME_I", HOUSEHOLD, COMMERCIAL)):
        j = det.points.index_of(name)
        assert np.all(s["prior_mask"][sat, j] > 0)
        got = s["mean"][sat, j]
        np.testing.assert_allclose(got, level[name] * own[sat], rtol=0.05, err_msg=name)
        # far from what the other type or the fleet average would have put there
        assert np.all(np.abs(got / (level[name] * other[sat]) - 1) > 0.3), name
        avg = det._prior_shape[0][sat, QI]
        assert np.all(np.abs(got / (level[name] * avg) - 1) > 0.15), name
        # the spread is the chosen centre's (8 %, plus a little misfit), not widened by the types' disagreement
        rel = np.sqrt(s["var"][sat, j]) / got
        assert np.all(rel < 0.2), (name, rel)


def test_before_any_evidence_the_mixture_is_the_average_and_wide_where_types_disagree() -> None:
    det = Detector(PointTable.from_specs(SPECS), timezone="UTC")
    prior = _fleet_prior()
    det.apply_prior(prior, version="fleet-k")
    # 40 minutes of Monday 00:00: one slot of evidence, a level and nothing about the type
    ts = T0 + STEP * np.arange(40)
    vals = np.column_stack([np.full(40, 11.0), np.full(40, 400.0 * COMMERCIAL[0]), np.full(40, 150.0 * HOUSEHOLD[0])])
    det.process(ReadingBatch(np.tile(np.arange(3, dtype=np.int32), 40), np.repeat(ts, 3), vals.ravel(), np.zeros(120, np.uint8)))
    j = det.points.index_of("SHOP_I")
    s = det.state
    noon, night = 2 * 24 + 12, 2 * 24 + 3  # Wednesday 12:00 (types disagree), 03:00
    rel = np.sqrt(s["var"][[noon, night], j]) / s["mean"][[noon, night], j]
    assert rel[0] > 2 * rel[1] and rel[0] > 0.3, rel
    assert s["prior_mask"][noon, j] > 0


def test_assign_prefers_the_nearest_centre_and_falls_back_without_centres() -> None:
    centres = np.full((N_CENTRES, N_SLOTS), np.nan)
    centres[0], centres[1] = HOUSEHOLD, COMMERCIAL
    w = np.ones(N_SLOTS)
    assert assign_clusters(w, COMMERCIAL * 1.02, centres) == 1
    assert assign_clusters(w, HOUSEHOLD, centres) == 0
    # first round: the working-hours rule puts a shop above a household
    assert assign_clusters(w, COMMERCIAL, None) > assign_clusters(w, HOUSEHOLD, None)
