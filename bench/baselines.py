"""Baseline detectors that gridedge is compared with in bench/detection_eval.py.

- ``zscore``: a rolling z-score per point over its last 20 readings; an alert when |z| >= 2.5 and
  score = min(|z|/2.5, 1) >= 0.7, with a 1 h per-source (point) cooldown and a site-wide cap of 2 alerts
  per hour.
- ``iforest``: scikit-learn's IsolationForest over all points at once (contamination 0.1), fitted on the
  training weeks, flagging test-window rows; the alert names the point that deviates most (standardised)
  and its group. The same 1 h per-source cooldown and 2/hour cap are applied so it is not buried under
  its own repeats (raw, it flags ~10 % of all minutes).

Both can only raise grid-type alerts (``grid_anomaly``): they cannot tell a sensor fault from the grid.

The rules that IoT / SCADA gateway platforms ship and their users write (issue #17):

- ``threshold``: fixed alarm rules as configured in ThingsBoard (alarm rule with a duration condition) or
  Neuron/eKuiper (``WHERE current > …``): current above 90 % of the point's rating, top-oil above 85 °C,
  voltage outside ±10 % of nominal, frequency outside 50 ± 0.2 Hz, each held for 2 readings; a breaker
  that opens (status 1 → 0); and ThingsBoard's *inactivity timeout* — no reading for 5 minutes — as a
  ``stale`` alert (the only sensor-type alert a baseline raises). Alarms are edge-triggered: raised once
  per excursion, cleared when the value is back inside by a 2 % hysteresis.
- ``roc``: rate of change — |x[t] − x[t−1]| above 6 × the point's median absolute step in the training
  weeks (a Grafana/Telegraf ``derivative`` alert); 1 h per-point cooldown, 2/hour site-wide.
- ``ewma``: an EWMA control chart (λ = 0.1, L = 3) per point against the mean and standard deviation of
  its previous 24 hours (so the daily cycle widens the limits instead of alarming); 1 h cooldown, 2/hour.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from gridedge.gateway.model import Event, EventKind

__all__ = ["ewma_alerts", "iforest_alerts", "rate_limit", "roc_alerts", "threshold_alerts", "zscore_alerts"]


def rate_limit(
    t: np.ndarray, src: np.ndarray, score: np.ndarray, *, cooldown: float = 3600.0, per_hour: int = 2
) -> np.ndarray:
    """Indices of candidate alerts (time-sorted) that pass a per-source cooldown and a sliding-hour cap."""
    last: dict[int, float] = {}
    recent: deque[float] = deque()
    keep = []
    for k in range(len(t)):
        tk, s = float(t[k]), int(src[k])
        lt = last.get(s)
        if lt is not None and tk - lt < cooldown:
            continue
        while recent and tk - recent[0] >= 3600.0:
            recent.popleft()
        if len(recent) >= per_hour:
            continue
        last[s] = tk
        recent.append(tk)
        keep.append(k)
    return np.asarray(keep, dtype=np.int64)


def _events(
    points: list[dict[str, Any]], t: np.ndarray, j: np.ndarray, score: np.ndarray, rule: str
) -> list[Event]:
    out = []
    for tk, jk, sk in zip(t.tolist(), j.tolist(), score.tolist(), strict=True):
        p = points[jk]
        out.append(
            Event(
                kind=EventKind.GRID_ANOMALY,
                group=p["group"],
                points=[p["name"]],
                start=tk,
                score=float(sk),
                explanation={"rule": rule},
            )
        )
    return out


def zscore_alerts(
    points: list[dict[str, Any]],
    ts: np.ndarray,
    values: np.ndarray,
    *,
    window: int = 20,
    z_min: float = 2.5,
    score_min: float = 0.7,
    cooldown: float = 3600.0,
    per_hour: int = 2,
) -> list[Event]:
    """Rolling z-score baseline over a [T, P] matrix (NaN = no reading)."""
    import pandas as pd

    df = pd.DataFrame(values)
    prev = df.shift(1).rolling(window, min_periods=window // 2)
    mu = prev.mean().to_numpy()
    sd = prev.std().to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(values - mu) / sd
    z[~np.isfinite(z)] = 0.0  # a flat window (std 0) or a missing reading scores nothing
    score = np.minimum(z / z_min, 1.0)
    ti, pj = np.nonzero((z >= z_min) & (score >= score_min))  # row-major → time-sorted
    keep = rate_limit(ts[ti], pj, score[ti, pj], cooldown=cooldown, per_hour=per_hour)
    return _events(points, ts[ti[keep]], pj[keep], score[ti[keep], pj[keep]], "zscore20")


def iforest_alerts(
    points: list[dict[str, Any]],
    ts: np.ndarray,
    values: np.ndarray,
    train_until: float,
    *,
    contamination: float = 0.1,
    max_train_rows: int = 20_000,
    seed: int = 0,
    cooldown: float = 3600.0,
    per_hour: int = 2,
) -> list[Event]:
    """IsolationForest over all points; fitted on rows before ``train_until``, scores the rest."""
    import pandas as pd
    from sklearn.ensemble import IsolationForest

    filled = pd.DataFrame(values).ffill().bfill().to_numpy()
    train = ts < train_until
    mu = filled[train].mean(axis=0)
    sd = filled[train].std(axis=0)
    sd[sd == 0] = 1.0
    x = (filled - mu) / sd
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(train)
    if len(rows) > max_train_rows:
        rows = np.sort(rng.choice(rows, max_train_rows, replace=False))
    model = IsolationForest(contamination=contamination, random_state=seed, n_estimators=100)
    model.fit(x[rows])
    test = np.flatnonzero(~train)
    flag = model.predict(x[test]) == -1
    ti = test[flag]
    pj = np.argmax(np.abs(x[ti]), axis=1)
    raw = -model.score_samples(x[ti])
    keep = rate_limit(ts[ti], pj, raw, cooldown=cooldown, per_hour=per_hour)
    return _events(points, ts[ti[keep]], pj[keep], raw[keep], "iforest")


# --------------------------------------------------------------------------------------------------
# Platform alarm rules (issue #17)
# --------------------------------------------------------------------------------------------------
def _limits(point: dict[str, Any]) -> tuple[float, float] | None:
    """(low, high) of the fixed alarm rule for a point, or None when no rule applies."""
    q, rating, nominal = point["quantity"], point.get("rating"), point.get("nominal")
    if q == "current" and rating:
        return -math.inf, 0.9 * float(rating)
    if q == "temperature":
        return -math.inf, 85.0
    if q == "voltage" and nominal:
        return 0.9 * float(nominal), 1.1 * float(nominal)
    if q == "frequency":
        return 49.8, 50.2
    return None


def _excursion_starts(x: np.ndarray, low: float, high: float, hold: int, hysteresis: float) -> np.ndarray:
    """Indices where an alarm is raised: outside [low, high] for ``hold`` readings, re-armed once back inside
    the band shrunk by ``hysteresis`` (a fraction of the limit). NaN keeps the current state."""
    out = []
    armed, run = True, 0
    lo_clear = low + abs(low) * hysteresis if math.isfinite(low) else low
    hi_clear = high - abs(high) * hysteresis if math.isfinite(high) else high
    for i, v in enumerate(x.tolist()):  # a plain loop: state machine, ~60k steps per point
        if v != v:
            continue
        if armed:
            run = run + 1 if (v < low or v > high) else 0
            if run >= hold:
                out.append(i)
                armed, run = False, 0
        elif lo_clear <= v <= hi_clear:
            armed = True
    return np.asarray(out, dtype=np.int64)


def threshold_alerts(
    points: list[dict[str, Any]],
    ts: np.ndarray,
    values: np.ndarray,
    *,
    hold: int = 2,
    hysteresis: float = 0.02,
    inactivity: float = 300.0,
) -> list[Event]:
    """Fixed alarm rules, breaker-open alarms and the inactivity timeout over a [T, P] matrix."""
    out: list[Event] = []
    step = float(np.median(np.diff(ts))) if len(ts) > 1 else 60.0
    for j, p in enumerate(points):
        x = values[:, j]
        lim = _limits(p)
        if lim is not None:
            for i in _excursion_starts(x, lim[0], lim[1], hold, hysteresis).tolist():
                out.append(_event(EventKind.GRID_ANOMALY, p, float(ts[i]), "threshold"))
        if p["quantity"] == "status":
            prev = np.concatenate(([np.nan], x[:-1]))
            for i in np.flatnonzero((prev == 1.0) & (x == 0.0)).tolist():
                out.append(_event(EventKind.FEEDER_TRIP, p, float(ts[i]), "breaker_open"))
        # inactivity: the first missing reading after which none arrives for `inactivity` seconds
        missing = np.isnan(x)
        if missing.any():
            edges = np.flatnonzero(np.diff(np.concatenate(([0], missing.astype(np.int8), [0]))))
            for a, b in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
                if (b - a) * step >= inactivity:
                    out.append(_event(EventKind.STALE, p, float(ts[a]) + inactivity, "inactivity"))
    out.sort(key=lambda e: e.start)
    return out


def _event(kind: EventKind, p: dict[str, Any], t: float, rule: str) -> Event:
    return Event(kind=kind, group=p["group"], points=[p["name"]], start=t, score=1.0,
                 explanation={"rule": rule})  # fmt: skip


def roc_alerts(
    points: list[dict[str, Any]],
    ts: np.ndarray,
    values: np.ndarray,
    train_until: float,
    *,
    k: float = 6.0,
    cooldown: float = 3600.0,
    per_hour: int = 2,
) -> list[Event]:
    """Rate of change: a step larger than ``k`` × the point's median absolute step in training."""
    analog = [j for j, p in enumerate(points) if p["quantity"] not in ("status", "tap_position")]
    x = values[:, analog]
    d = np.abs(np.diff(x, axis=0))
    train = ts[1:] < train_until
    with np.errstate(all="ignore"):
        typical = np.nanmedian(d[train], axis=0)
    res_floor = np.nanmin(np.where(d[train] > 0, d[train], np.nan), axis=0)  # one reporting step
    scale = np.fmax(typical, res_floor)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = d / (k * scale)
    ratio[~np.isfinite(ratio)] = 0.0
    ti, pk = np.nonzero(ratio >= 1.0)
    t_hit = ts[1:][ti]
    keep = rate_limit(t_hit, pk, ratio[ti, pk], cooldown=cooldown, per_hour=per_hour)
    cols = np.asarray(analog, dtype=np.int64)[pk[keep]]
    return _events(points, t_hit[keep], cols, np.minimum(ratio[ti[keep], pk[keep]], 10.0), "roc")


def ewma_alerts(
    points: list[dict[str, Any]],
    ts: np.ndarray,
    values: np.ndarray,
    *,
    lam: float = 0.1,
    width: float = 3.0,
    window: int = 1440,
    cooldown: float = 3600.0,
    per_hour: int = 2,
) -> list[Event]:
    """EWMA control chart against the previous ``window`` readings' mean and standard deviation."""
    import pandas as pd

    analog = [j for j, p in enumerate(points) if p["quantity"] not in ("status", "tap_position")]
    df = pd.DataFrame(values[:, analog])
    z = df.ffill().ewm(alpha=lam, adjust=False).mean().to_numpy()
    prev = df.shift(1).rolling(window, min_periods=window // 2)
    mu, sd = prev.mean().to_numpy(), prev.std().to_numpy()
    limit = width * sd * math.sqrt(lam / (2.0 - lam))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.abs(z - mu) / limit
    ratio[~np.isfinite(ratio)] = 0.0
    ti, pk = np.nonzero(ratio >= 1.0)
    keep = rate_limit(ts[ti], pk, ratio[ti, pk], cooldown=cooldown, per_hour=per_hour)
    cols = np.asarray(analog, dtype=np.int64)[pk[keep]]
    return _events(points, ts[ti[keep]], cols, np.minimum(ratio[ti[keep], pk[keep]], 10.0), "ewma")
