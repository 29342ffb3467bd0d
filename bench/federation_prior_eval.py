"""Part 1 of bench/federation_eval.py: does the fleet prior shorten a new site's cold start?

Measured only on incidents that need a baseline (the grid-code rules — voltage/frequency bands, over
rating, breaker trips — work from the first minute with or without a prior):

- ``overload_ramp``: a feeder's load ramping towards its rating, counted only if a baseline-driven
  grid alert names the feeder (or its transformer) *before the current crosses the rating*;
- ``load_drop``: a feeder losing 40–70 % of its load (a grid alert on it, not a breaker rule);
- ``thermal``: a transformer's oil running hot against its load (a grid alert on the transformer);
- ``slow_drift``: a sensor drifting 5–15 % over hours (a sensor-fault alert naming the point).

A false grid episode is a grid alert (grid anomaly or feeder trip) outside every injected incident's
window (start − 10 min … end + 30 min); alerts within 30 min of the previous false one count once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gridedge.federation.prior import prior_from_sums, site_prior_sums
from gridedge.gateway.model import Event, PointTable, ReadingBatch
from gridedge.scoring.detector import Detector

__all__ = [
    "BASELINE_KINDS",
    "NEW_SITE_INCIDENTS",
    "SiteState",
    "WeekScore",
    "federated_prior",
    "one_shape",
    "run_detector",
    "score_new_site",
    "site_state",
]

#: What a site's contribution is computed from: its detector baselines ``mean``, ``var``, ``n`` [168, P]
#: and its points' quantities.
SiteState = tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]


def site_state(det: Detector, sc: Any) -> SiteState:
    arrays, _meta = det.state_arrays()
    return arrays["mean"], arrays["var"], arrays["n"], [p["quantity"] for p in sc.points]


def federated_prior(states: Sequence[SiteState], rounds: int = 10) -> dict[str, np.ndarray]:
    """The fleet prior after ``rounds`` federation rounds: every round each site assigns its points to
    the previous round's global centres and sends its sums; FedAvg of the ÷N sums is the sum over
    sites, so each round is one Lloyd step of the fleet-wide k-means (round 1: the fixed first rule)."""
    centres = None
    for _ in range(max(1, rounds)):
        prior = prior_from_sums([site_prior_sums(*st, centres=centres) for st in states])
        centres = prior["centres"]
    return prior


def one_shape(prior: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same prior without its K centres (the one-average-shape prior of issue #19's first runs)."""
    return {"shape": prior["shape"], "spread": prior["spread"]}

#: The incidents a new site is generated with (scenarios.generate grid_kinds / sensor_kinds).
NEW_SITE_INCIDENTS = {
    "grid_kinds": ("overload_trip", "overload_trip", "load_drop", "load_drop", "thermal"),
    "sensor_kinds": ("drift", "drift"),
    "heat_days": 1,
}
BASELINE_KINDS = ("overload_ramp", "load_drop", "thermal", "slow_drift")
#: Rules that need no baseline: an alert by one of them does not count as baseline detection.
_DAY_ONE_RULES = {
    "over_rating", "voltage_band_warning", "voltage_band_alarm", "frequency_band_warning",
    "frequency_band_alarm", "breaker_open_under_load", "breaker_closed",
}  # fmt: skip
_BEFORE, _AFTER = 600.0, 1800.0


def run_detector(sc: Any, prior: dict[str, np.ndarray] | None = None) -> tuple[Detector, list[Event]]:
    """Score a scenario live in 1-hour batches, from a cold detector (optionally given a fleet prior)."""
    pts = PointTable.from_specs(sc.points)
    det = Detector(pts, timezone=sc.timezone, frequency_hz=sc.frequency_hz)
    if prior is not None:
        det.apply_prior(prior, "bench")
    T, P = sc.values.shape
    events: list[Event] = []
    hour = int(3600 / sc.step)
    for a in range(0, T, hour):
        b = min(T, a + hour)
        n = b - a
        v = sc.values[a:b].ravel()
        q = np.where(np.isfinite(v), sc.quality[a:b].ravel(), 1).astype(np.uint8)
        events += det.process(
            ReadingBatch(point_idx=np.tile(np.arange(P, dtype=np.int32), n), ts=np.repeat(sc.ts[a:b], P),
                         value=np.nan_to_num(v), quality=q)
        )  # fmt: skip
    return det, events


def _rule(e: Event) -> str:
    return str((e.explanation or {}).get("rule", ""))


def _is_grid(e: Event) -> bool:
    return str(e.kind) in ("grid_anomaly", "feeder_trip")


def _crossing(sc: Any, t: dict[str, Any]) -> float:
    """When the feeder's current first reaches its rating during the ramp (else the trip time)."""
    j = sc.col(f"{t['group']}_I")
    rating = float(sc.points[j]["rating"])
    sel = (sc.ts >= t["start"]) & (sc.ts < t["trip"])
    over = np.flatnonzero(sel & (np.nan_to_num(sc.values[:, j]) >= rating))
    return float(sc.ts[over[0]]) if len(over) else float(t["trip"])


def _detected(sc: Any, t: dict[str, Any], events: Sequence[Event]) -> bool:
    kind = t["kind"]
    if kind == "drift":
        return any(
            str(e.kind) == "sensor_fault"
            and t["target"] in e.points
            and t["start"] <= e.start <= t["end"] + _AFTER
            for e in events
        )
    hi = _crossing(sc, t) if kind == "overload_trip" else t["end"] + _AFTER
    return any(
        _is_grid(e) and e.group in t["accept"] and _rule(e) not in _DAY_ONE_RULES
        and t["start"] - _BEFORE <= e.start <= hi
        for e in events
    )  # fmt: skip


_KIND_NAME = {
    "overload_trip": "overload_ramp",
    "load_drop": "load_drop",
    "thermal": "thermal",
    "drift": "slow_drift",
}


@dataclass
class WeekScore:
    """Detected / injected baseline incidents per kind, and false grid episodes, over one span of days."""

    hits: dict[str, int]
    totals: dict[str, int]
    false_episodes: int
    days: float

    @property
    def rate(self) -> float:
        n = sum(self.totals.values())
        return sum(self.hits.values()) / n if n else float("nan")

    @property
    def false_per_day(self) -> float:
        return self.false_episodes / self.days

    def __add__(self, o: WeekScore) -> WeekScore:
        keys = set(self.totals) | set(o.totals)
        return WeekScore(
            {k: self.hits.get(k, 0) + o.hits.get(k, 0) for k in keys},
            {k: self.totals.get(k, 0) + o.totals.get(k, 0) for k in keys},
            self.false_episodes + o.false_episodes,
            self.days + o.days,
        )


def _false_episodes(sc: Any, events: Sequence[Event], lo: float, hi: float) -> int:
    starts = sorted(
        e.start for e in events
        if _is_grid(e) and lo <= e.start < hi
        and not any(t["start"] - _BEFORE <= e.start <= t.get("end", t["start"]) + _AFTER for t in sc.truth)
    )  # fmt: skip
    n, last = 0, -np.inf
    for s in starts:
        if s - last > 1800.0:
            n += 1
        last = s
    return n


def score_new_site(sc: Any, events: Sequence[Event], spans: Sequence[tuple[int, int]]) -> list[WeekScore]:
    """One :class:`WeekScore` per (first day, last day) span, days counted from 1 at the site's start."""
    out = []
    for d0, d1 in spans:
        lo, hi = sc.ts[0] + (d0 - 1) * 86400.0, sc.ts[0] + d1 * 86400.0
        hits = {k: 0 for k in BASELINE_KINDS}
        totals = {k: 0 for k in BASELINE_KINDS}
        for t in sc.truth:
            name = _KIND_NAME.get(t["kind"])
            if name is None or not lo <= t["start"] < hi:
                continue
            totals[name] += 1
            hits[name] += int(_detected(sc, t, events))
        out.append(WeekScore(hits, totals, _false_episodes(sc, events, lo, hi), float(d1 - d0 + 1)))
    return out
