"""Baseline detectors that gridedge is compared with in bench/detection_eval.py.

- ``zscore``: a rolling z-score per point over its last 20 readings; an alert when |z| >= 2.5 and
  score = min(|z|/2.5, 1) >= 0.7, with a 1 h per-source (point) cooldown and a site-wide cap of 2 alerts
  per hour.
- ``iforest``: scikit-learn's IsolationForest over all points at once (contamination 0.1), fitted on the
  training weeks, flagging test-window rows; the alert names the point that deviates most (standardised)
  and its group. The same 1 h per-source cooldown and 2/hour cap are applied so it is not buried under
  its own repeats (raw, it flags ~10 % of all minutes).

Both can only raise grid-type alerts (``grid_anomaly``): they cannot tell a sensor fault from the grid.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from gridedge.gateway.model import Event, EventKind

__all__ = ["iforest_alerts", "rate_limit", "zscore_alerts"]


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
