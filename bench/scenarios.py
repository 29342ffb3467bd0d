"""Labelled substation scenarios: months of 1-minute readings with injected, labelled incidents.

A 33/11 kV substation: the 33 kV bus (``BUS_V``, ``FREQ``), two transformers ``T1``/``T2`` (P, Q, oil
temperature, OLTC tap) and four 11 kV feeders ``F1``..``F4`` (current, P, Q, breaker status); F1/F2 hang
off T1, F3/F4 off T2. Loads follow residential / commercial / industrial shapes by local hour and weekday,
with seasonal drift, weather (ambient temperature drives air-conditioning load and noise), the bus
voltage sags with load while the OLTC taps to hold the 11 kV side, frequency wanders (with the hourly
market steps), and oil temperature follows load through a thermal time constant. Instruments have class
0.2–0.5 ratio errors, noise and reporting resolution.

Incidents are injected at random, non-overlapping times in the last ``incidents_in_last_days`` days (the
*test* window), plus a few in the training weeks because history is never clean:

grid (class ``"grid"``): ``overload_trip`` (a feeder's load ramps over 20–60 min past its rating, then the
breaker opens; ``trip`` holds the opening time, ``end`` the re-close), ``thermal`` (transformer cooling
failure), ``frequency`` (loss of generation elsewhere), ``load_drop`` (a feeder loses 40–70 % of its load).
benign (class ``"benign"``): ``heat_day`` — every feeder rises together on a hot day; NOT an incident,
a grid alert during it is a false one.
sensor (class ``"sensor"``): ``stuck``, ``drift``, ``scale`` (×10 / ×0.1), ``dropout``, ``spike`` (one
lone sample).

Truth entries: ``{kind, class, target, group, start, end, phase, accept, ...}`` where ``target`` is the
group (grid) or the faulty point (sensor), ``accept`` lists the groups a grid alert may name to count
(the feeder or its transformer; the transformer; the bus) and ``phase`` is ``"train"`` or ``"test"``.

Usage::

    sc = generate(seed=0)                 # 60 days, 1-minute steps
    to_csv(sc, "readings.csv", "points.json")
"""

from __future__ import annotations

import json
import math
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import lfilter

__all__ = ["GRID_KINDS", "SENSOR_KINDS", "Scenario", "generate", "points_spec", "readings", "to_csv"]

GRID_KINDS = ("overload_trip", "overload_trip", "overload_trip", "thermal", "thermal", "frequency", "load_drop",
              "load_drop")  # fmt: skip
SENSOR_KINDS = ("stuck", "drift", "drift", "scale", "dropout", "spike", "spike")
TRAIN_KINDS = ("load_drop", "stuck", "spike", "scale")

_FEEDERS = {
    # name: (parent, profile, peak MW, power factor, rating A, temperature coefficient per °C above 20)
    "F1": ("T1", "residential", 3.6, 0.96, 300.0, 0.022),
    "F2": ("T1", "commercial", 4.6, 0.93, 400.0, 0.030),
    "F3": ("T2", "industrial", 5.8, 0.90, 500.0, 0.006),
    "F4": ("T2", "residential", 3.0, 0.97, 250.0, 0.020),
}
_TRANSFORMERS = {"T1": 16.0, "T2": 16.0}  # MVA rating
_LV_KV = 11.0
_HV_KV = 33.0


@dataclass
class Scenario:
    """A generated scenario. ``values`` is NaN where no reading arrived (dropouts)."""

    seed: int
    points: list[dict[str, Any]]
    ts: np.ndarray  # [T] UTC epoch seconds
    values: np.ndarray  # [T, P]
    quality: np.ndarray  # [T, P] uint8
    truth: list[dict[str, Any]]
    timezone: str = "Europe/Berlin"
    frequency_hz: float = 50.0
    step: float = 60.0
    eval_start: float = 0.0  # start of the test window (UTC epoch s)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [p["name"] for p in self.points]

    @property
    def days(self) -> float:
        return (self.ts[-1] - self.ts[0] + self.step) / 86400.0

    @property
    def eval_days(self) -> float:
        return (self.ts[-1] + self.step - self.eval_start) / 86400.0

    def col(self, name: str) -> int:
        return self.names.index(name)

    def test_truth(self) -> list[dict[str, Any]]:
        return [t for t in self.truth if t["phase"] == "test"]


def points_spec() -> list[dict[str, Any]]:
    """The POINTS interchange list (name, quantity, unit, group, parent, nominal, rating)."""
    pts: list[dict[str, Any]] = [
        {"name": "BUS_V", "quantity": "voltage", "unit": "kV", "group": "BUS", "parent": None,
         "nominal": _HV_KV, "rating": None},
        {"name": "FREQ", "quantity": "frequency", "unit": "Hz", "group": "BUS", "parent": None,
         "nominal": 50.0, "rating": None},
    ]  # fmt: skip
    for t, mva in _TRANSFORMERS.items():
        pts += [
            {"name": f"{t}_P", "quantity": "active_power", "unit": "MW", "group": t, "parent": "BUS",
             "nominal": None, "rating": mva},
            {"name": f"{t}_Q", "quantity": "reactive_power", "unit": "Mvar", "group": t, "parent": "BUS",
             "nominal": None, "rating": mva},
            {"name": f"{t}_OIL", "quantity": "temperature", "unit": "°C", "group": t, "parent": "BUS",
             "nominal": None, "rating": 95.0},
            {"name": f"{t}_TAP", "quantity": "tap_position", "unit": "", "group": t, "parent": "BUS",
             "nominal": 0.0, "rating": None},
        ]  # fmt: skip
    for f, (parent, _prof, _pk, _pf, rating, _tc) in _FEEDERS.items():
        pts += [
            {"name": f"{f}_I", "quantity": "current", "unit": "A", "group": f, "parent": parent,
             "nominal": None, "rating": rating},
            {"name": f"{f}_P", "quantity": "active_power", "unit": "MW", "group": f, "parent": parent,
             "nominal": None, "rating": None},
            {"name": f"{f}_Q", "quantity": "reactive_power", "unit": "Mvar", "group": f, "parent": parent,
             "nominal": None, "rating": None},
            {"name": f"{f}_CB", "quantity": "status", "unit": "", "group": f, "parent": parent,
             "nominal": 1.0, "rating": None},
        ]  # fmt: skip
    return pts


# ------------------------------------------------------------------------------------------------
# Load shapes
# ------------------------------------------------------------------------------------------------
def _bump(h: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A smooth daily bump (hours, wraps around midnight)."""
    d = (h - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def _shape(profile: str, hour: np.ndarray, wday: np.ndarray) -> np.ndarray:
    """Per-unit load shape (peak ≈ 1) by local fractional hour and weekday (0 = Monday)."""
    weekend = wday >= 5
    sunday = wday == 6
    if profile == "residential":
        s = 0.35 + 0.30 * _bump(hour, 7.5, 1.3) + 0.62 * _bump(hour, 19.5, 2.0) + 0.15 * _bump(hour, 13, 3)
        s = np.where(weekend, 0.38 + 0.22 * _bump(hour, 9.5, 2.0) + 0.55 * _bump(hour, 19, 2.5)
                     + 0.25 * _bump(hour, 13, 3), s)  # fmt: skip
    elif profile == "commercial":
        day = 1.0 / (1.0 + np.exp(-(hour - 7.5) * 2.0)) / (1.0 + np.exp((hour - 18.5) * 1.6))
        s = 0.25 + 0.72 * day + 0.05 * _bump(hour, 13, 1.5)
        s = np.where(weekend, 0.25 + 0.25 * day, s)
    elif profile == "industrial":
        shift = 1.0 / (1.0 + np.exp(-(hour - 5.8) * 4.0)) / (1.0 + np.exp((hour - 22.2) * 4.0))
        s = 0.30 + 0.68 * shift - 0.06 * _bump(hour, 12.2, 0.4) - 0.05 * _bump(hour, 14.0, 0.2)
        s = np.where(wday == 5, 0.30 + 0.35 * shift, s)
        s = np.where(sunday, 0.28 + 0.02 * np.sin(hour / 24 * 2 * np.pi), s)
    else:  # pragma: no cover - fixed table
        raise ValueError(profile)
    return s


def _ar1(rng: np.random.Generator, n: int, tau_steps: float, sigma: float) -> np.ndarray:
    """Stationary AR(1) noise with time constant ``tau_steps`` and standard deviation ``sigma``."""
    a = math.exp(-1.0 / max(tau_steps, 1e-9))
    e = rng.normal(0.0, sigma * math.sqrt(1 - a * a), n)
    e[0] = rng.normal(0.0, sigma)
    return lfilter([1.0], [1.0, -a], e)


def _first_order(x: np.ndarray, tau_steps: float, y0: float) -> np.ndarray:
    a = math.exp(-1.0 / tau_steps)
    y, _ = lfilter([1.0 - a], [1.0, -a], x, zi=[a * y0])
    return y


def _local_hours(ts: np.ndarray, tz: str) -> tuple[np.ndarray, np.ndarray]:
    """Local fractional hour of day and weekday for UTC epoch seconds (DST aware)."""
    import pandas as pd

    idx = pd.to_datetime(ts, unit="s", utc=True).tz_convert(tz)
    hour = idx.hour.to_numpy() + idx.minute.to_numpy() / 60.0 + idx.second.to_numpy() / 3600.0
    return hour.astype(float), idx.day_of_week.to_numpy()


# ------------------------------------------------------------------------------------------------
# Generator
# ------------------------------------------------------------------------------------------------
def generate(
    seed: int,
    days: int = 60,
    step: float = 60.0,
    incidents_in_last_days: int = 14,
    *,
    start: str = "2026-05-04T00:00:00Z",
    timezone: str = "Europe/Berlin",
    grid_kinds: tuple[str, ...] = GRID_KINDS,
    sensor_kinds: tuple[str, ...] = SENSOR_KINDS,
    heat_days: int = 1,
    train_kinds: tuple[str, ...] = TRAIN_KINDS,
) -> Scenario:
    """Generate a labelled scenario (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    t0 = datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
    n = round(days * 86400 / step)
    ts = t0 + np.arange(n) * step
    spm = 60.0 / step  # steps per minute
    hour, wday = _local_hours(ts, timezone)
    day_idx = ((ts - t0) // 86400).astype(int)
    pts = points_spec()
    names = [p["name"] for p in pts]
    col = {nm: i for i, nm in enumerate(names)}
    if train_kinds and days - incidents_in_last_days < 2:
        # the training-phase faults need their own window before the evaluation period
        raise ValueError(
            f"days ({days}) must exceed incidents_in_last_days ({incidents_in_last_days}) by at least 2"
            " when train_kinds are given"
        )
    eval_start = t0 + (days - incidents_in_last_days) * 86400.0

    # ---- schedule incidents (non-overlapping slots) ------------------------------------------
    truth: list[dict[str, Any]] = []
    test_items = [("grid", k) for k in grid_kinds] + [("benign", "heat_day")] * heat_days
    test_items += [("sensor", k) for k in sensor_kinds]
    order = rng.permutation(len(test_items))
    test_items = [test_items[i] for i in order]
    train_items = [("grid" if k in ("overload_trip", "thermal", "frequency", "load_drop") else "sensor", k)
                   for k in train_kinds]  # fmt: skip
    # the training incidents live in the second half of the training weeks (after cold start)
    train_lo = t0 + (days - incidents_in_last_days) * 86400.0 * 0.5
    plan = _slots(rng, test_items, eval_start, ts[-1], "test") + _slots(
        rng, train_items, train_lo, eval_start - 6 * 3600, "train"
    )
    # ---- weather ------------------------------------------------------------------------------
    n_days = days + 2
    seasonal_c = 14.0 + 8.0 * (np.arange(n_days) / 90.0)  # late spring → summer
    daily_dev = _ar1(rng, n_days, 3.0, 2.5)
    amb = seasonal_c[day_idx] + daily_dev[day_idx] + 6.0 * np.cos((hour - 15.0) / 24.0 * 2 * np.pi)
    amb += _ar1(rng, n, 90 * spm, 0.8)
    cloud = np.clip(0.5 + _ar1(rng, n_days, 2.0, 0.3), 0.0, 1.0)[day_idx]  # weather-driven noise level
    for item in plan:
        if item["kind"] == "heat_day":
            env = _raised_cosine(ts, item["peak"], item["end"] - item["start"])
            amb = amb + item["delta_c"] * env

    # ---- feeder loads -------------------------------------------------------------------------
    seasonal = 1.0 + 0.04 * np.sin((ts - t0) / (86400.0 * 365) * 2 * np.pi + rng.uniform(0, 6.28))
    mult = {f: np.ones(n) for f in _FEEDERS}
    cb = {f: np.ones(n) for f in _FEEDERS}
    for item in plan:
        if item["kind"] == "overload_trip":
            f = item["group"]
            a, tr, b = _i(ts, item["start"]), _i(ts, item["trip"]), _i(ts, item["end"])
            item["_ramp"] = (a, tr)
            cb[f][tr:b] = 0.0
            # cold-load pickup after re-closing: 30 % more load decaying over ~20 min
            k = np.arange(n - b)
            mult[f][b:] *= 1.0 + 0.3 * np.exp(-k / (20 * spm))
        elif item["kind"] == "load_drop":
            f = item["group"]
            a, b = _i(ts, item["start"]), _i(ts, item["end"])
            mult[f][a:b] *= 1.0 - item["depth"]
    p_fdr: dict[str, np.ndarray] = {}
    q_fdr: dict[str, np.ndarray] = {}
    for f, (_parent, prof, peak, pf, _rating, tcoef) in _FEEDERS.items():
        noise_sigma = 0.018 + 0.025 * cloud if prof == "residential" else 0.012 + 0.01 * cloud
        base = peak * _shape(prof, hour, wday) * seasonal
        base *= 1.0 + tcoef * np.maximum(amb - 20.0, 0.0)
        base *= 1.0 + _ar1(rng, n, 20 * spm, 1.0) * noise_sigma + _ar1(rng, n, 3 * 86400 / step, 0.03)
        base += np.abs(rng.normal(0, 0.01 * peak, n)) * (prof == "industrial")  # motor starts
        p = base * mult[f]
        pf_t = np.clip(pf + _ar1(rng, n, 6 * 60 * spm, 0.01), 0.8, 0.995)
        q = p * np.tan(np.arccos(pf_t))
        p_fdr[f], q_fdr[f] = p, q
    # overload ramps: scale the feeder so its current reaches k × rating at the trip
    for item in plan:
        if item["kind"] == "overload_trip":
            f = item["group"]
            a, tr = item.pop("_ramp")
            rating = _FEEDERS[f][4]
            s_at = math.hypot(p_fdr[f][tr - 1], q_fdr[f][tr - 1])
            i_at = s_at / (math.sqrt(3) * _LV_KV) * 1000.0
            factor = max(item["peak_pu"] * rating / max(i_at, 1e-6), 1.05)
            if item.get("variant") == "relative":
                # never reaches the rating: the rating rule cannot see it, only the baseline can
                factor = min(item["peak_rel"], 0.97 * rating / max(i_at, 1e-6))
                item["peak_rel"] = round(float(factor), 3)
            ramp = np.linspace(1.0, factor, tr - a)
            p_fdr[f][a:tr] *= ramp
            q_fdr[f][a:tr] *= ramp
            item["peak_current"] = round(float(i_at * factor), 1)
    for f in _FEEDERS:
        p_fdr[f] = p_fdr[f] * cb[f]
        q_fdr[f] = q_fdr[f] * cb[f]
    i_fdr = {
        f: np.hypot(p_fdr[f], q_fdr[f]) / (math.sqrt(3) * _LV_KV * (1.0 + _ar1(rng, n, 60 * spm, 0.004)))
        * 1000.0
        for f in _FEEDERS
    }  # fmt: skip

    # ---- transformers, bus voltage, tap, oil temperature -------------------------------------
    p_tr: dict[str, np.ndarray] = {}
    q_tr: dict[str, np.ndarray] = {}
    k_tr: dict[str, np.ndarray] = {}
    for t, mva in _TRANSFORMERS.items():
        fs = [f for f, v in _FEEDERS.items() if v[0] == t]
        p = sum(p_fdr[f] for f in fs)
        q = sum(q_fdr[f] for f in fs)
        k = np.hypot(p, q) / mva
        p_tr[t] = p + 0.09 * k**2 * 1.0 + 0.012  # copper + iron losses (MW)
        q_tr[t] = q + 0.8 * k**2 + 0.10  # leakage reactance + magnetising (Mvar)
        k_tr[t] = k
    s_total = sum(np.hypot(p_tr[t], q_tr[t]) for t in _TRANSFORMERS)
    v_hv = _HV_KV * (1.025 - 0.035 * s_total / 32.0 + _ar1(rng, n, 45 * spm, 0.004))
    oil: dict[str, np.ndarray] = {}
    tap: dict[str, np.ndarray] = {}
    for t in _TRANSFORMERS:
        # OLTC holds the 11 kV side: needed boost in % → tap steps of 1.25 % with a deadband
        need = (1.0 - v_hv / _HV_KV) * 100.0 + 4.5 * k_tr[t]
        tap[t] = _oltc(need, step_pct=1.25, deadband=0.8)
        r = 5.0
        extra = np.zeros(n)
        ramp_c = np.zeros(n)
        for item in plan:
            if item["kind"] == "thermal" and item["group"] == t:
                a, b = _i(ts, item["start"]), _i(ts, item["fail_end"])
                if item.get("variant") == "ramp":
                    # the oil itself climbs linearly above its load model, then relaxes through τ
                    b = min(b, a + int(18.0 / item["slope_c_min"] * spm))  # a rise of at most 18 °C
                    up = np.arange(b - a) * step / 60.0 * item["slope_c_min"]
                    ramp_c[a:b] += up
                    ramp_c[b:] += up[-1] * np.exp(-np.arange(n - b) / (150 * spm))
                else:
                    extra[a:b] = item["delta_c"]
        theta_ss = amb + 48.0 * ((k_tr[t] ** 2 * r + 1.0) / (r + 1.0)) ** 0.8 + extra
        oil[t] = _first_order(theta_ss, 150 * spm, float(theta_ss[: int(600 * spm)].mean())) + ramp_c
    freq = 50.0 + _ar1(rng, n, 4 * spm, 0.018)
    # hourly market steps: a deviation at each full hour decaying over ~5 min
    hour_start = np.flatnonzero(np.diff(np.floor((ts - t0) / 3600.0)) > 0) + 1
    kick = np.zeros(n)
    kick[hour_start] = rng.normal(0, 0.025, len(hour_start))
    freq += lfilter([1.0], [1.0, -math.exp(-1.0 / (3 * spm))], kick)
    for item in plan:
        if item["kind"] == "frequency":
            a = _i(ts, item["start"])
            k = np.arange(n - a) * step / 60.0  # minutes since the event
            d = item["depth_hz"]
            # nadir within the first minute, primary response holds a quasi-steady deviation of ~55 %
            # for a few minutes, then secondary control (AGC) restores 50 Hz with time constant tau
            shape = np.where(k < 1, 1.0, 0.55 + 0.45 * np.exp(-(k - 1) / 0.7))
            shape = shape * np.exp(-np.maximum(k - 3.0, 0.0) / item["tau_min"])
            freq[a:] -= d * shape

    # ---- measured values ----------------------------------------------------------------------
    true_vals = np.empty((n, len(pts)))
    true_vals[:, col["BUS_V"]] = v_hv
    true_vals[:, col["FREQ"]] = freq
    for t in _TRANSFORMERS:
        true_vals[:, col[f"{t}_P"]] = p_tr[t]
        true_vals[:, col[f"{t}_Q"]] = q_tr[t]
        true_vals[:, col[f"{t}_OIL"]] = oil[t]
        true_vals[:, col[f"{t}_TAP"]] = tap[t]
    for f in _FEEDERS:
        true_vals[:, col[f"{f}_I"]] = i_fdr[f]
        true_vals[:, col[f"{f}_P"]] = p_fdr[f]
        true_vals[:, col[f"{f}_Q"]] = q_fdr[f]
        true_vals[:, col[f"{f}_CB"]] = cb[f]
    values = _measure(rng, true_vals, pts)
    quality = np.zeros(values.shape, np.uint8)
    # rare lost readings (a poll that timed out): no row at all
    lost = rng.random(values.shape) < 1e-4
    values[lost] = np.nan

    # ---- sensor faults (on measured values) --------------------------------------------------
    for item in plan:
        if item["class"] != "sensor":
            continue
        j = col[item["target"]]
        a, b = _i(ts, item["start"]), _i(ts, item["end"])
        kind = item["kind"]
        if kind == "stuck":
            last = values[a - 1, j] if not np.isnan(values[a - 1, j]) else np.nanmean(values[a - 10 : a, j])
            values[a:b, j] = last
        elif kind == "drift":
            lvl = np.nanmean(np.abs(values[max(a - int(1440 * spm), 0) : a, j]))
            values[a:b, j] += np.linspace(0, item["drift_pu"] * lvl, b - a)
        elif kind == "scale":
            values[a:b, j] *= item["factor"]
        elif kind == "dropout":
            values[a:b, j] = np.nan
        elif kind == "spike":
            # one lone glitch: a fraction of the reading for loads, a few % for voltage, ~0.5 Hz
            v = values[a, j] if not np.isnan(values[a, j]) else values[a - 1, j]
            q = pts[j]["quantity"]
            mag = item["magnitude"]
            if q == "frequency":
                values[a, j] = v + mag * 1.0
            elif q == "voltage":
                values[a, j] = v * (1.0 + mag * 0.1)
            elif q == "temperature":
                values[a, j] = v + mag * 40.0
            else:
                level = np.nanmean(np.abs(values[max(a - int(1440 * spm), 0) : a, j]))
                values[a, j] = v + mag * max(abs(v), 0.5 * level)
            values[a, j] = _resolution(values[a : a + 1, j : j + 1], [pts[j]])[0, 0]
    for item in plan:
        item.pop("peak", None)
    truth = sorted(plan, key=lambda d: d["start"])
    return Scenario(
        seed=seed,
        points=pts,
        ts=ts,
        values=values,
        quality=quality,
        truth=truth,
        timezone=timezone,
        frequency_hz=50.0,
        step=step,
        eval_start=eval_start,
        meta={"days": days, "incidents_in_last_days": incidents_in_last_days, "start": start},
    )


def _i(ts: np.ndarray, t: float) -> int:
    return int(np.searchsorted(ts, t))


def _raised_cosine(ts: np.ndarray, centre: float, width: float) -> np.ndarray:
    d = (ts - centre) / (width / 2.0)
    return np.where(np.abs(d) < 1.0, 0.5 * (1.0 + np.cos(np.pi * d)), 0.0)


def _oltc(need_pct: np.ndarray, step_pct: float, deadband: float) -> np.ndarray:
    """Tap position following the needed boost with a deadband (the relay waits out small errors)."""
    out = np.empty(len(need_pct))
    pos = round(float(need_pct[0]) / step_pct)
    target = need_pct / step_pct
    for i in range(len(need_pct)):  # a plain loop: 86k steps take ~30 ms
        err = target[i] - pos
        if err > deadband:
            pos += 1
        elif err < -deadband:
            pos -= 1
        out[i] = pos
    return np.clip(out, -8, 8)


def _resolution(v: np.ndarray, pts: list[dict[str, Any]]) -> np.ndarray:
    """Round to each point's reporting resolution (decimal places, so the CSV shows clean numbers)."""
    dec = {"voltage": 2, "frequency": 3, "active_power": 3, "reactive_power": 3,
           "current": 1, "temperature": 1, "tap_position": 0, "status": 0}  # fmt: skip
    out = np.empty_like(v)
    for j, p in enumerate(pts):
        out[:, j] = np.round(v[:, j], dec[p["quantity"]])
    return out


def _measure(rng: np.random.Generator, true_vals: np.ndarray, pts: list[dict[str, Any]]) -> np.ndarray:
    """Instrument errors: a fixed ratio error per point (accuracy class), noise, reporting resolution."""
    n = true_vals.shape[0]
    out = true_vals.copy()
    for j, pt in enumerate(pts):
        q = pt["quantity"]
        if q in ("status", "tap_position"):
            continue
        if q == "voltage":
            cls = 0.2
        elif q == "frequency":
            out[:, j] += rng.uniform(-0.002, 0.002) + rng.normal(0, 0.0008, n)
            continue
        elif q == "temperature":
            out[:, j] += rng.uniform(-1.0, 1.0) + rng.normal(0, 0.15, n)
            continue
        else:
            cls = float(rng.choice([0.2, 0.5]))
        gain = 1.0 + rng.uniform(-cls, cls) / 100.0
        out[:, j] = out[:, j] * gain * (1.0 + rng.normal(0, cls / 400.0, n))
    return _resolution(out, pts)


def _slots(
    rng: np.random.Generator, items: list[tuple[str, str]], lo: float, hi: float, phase: str
) -> list[dict[str, Any]]:
    """Place items in equal, shuffled slots of [lo, hi) so incidents never overlap."""
    if not items:
        return []
    width = (hi - lo) / len(items)
    out = []
    feeders = list(_FEEDERS)
    for k, (cls, kind) in enumerate(items):
        s_lo = lo + k * width
        d: dict[str, Any] = {"kind": kind, "class": cls, "phase": phase}
        margin = min(3 * 3600.0, width * 0.1)
        room = 0.8 * (width - 2 * margin)  # short windows squeeze long incidents to fit their slot

        def fit(total: float, room: float = room) -> float:
            return min(1.0, room / total)

        if kind == "overload_trip":
            f = feeders[rng.integers(len(feeders))]
            ramp = rng.uniform(20, 60) * 60
            out_for = rng.uniform(30, 120) * 60
            sq = fit(ramp + out_for)
            ramp, out_for = ramp * sq, out_for * sq
            start = rng.uniform(s_lo + margin, s_lo + width - margin - ramp - out_for)
            d.update(target=f, group=f, accept=[f, _FEEDERS[f][0]], start=start, trip=start + ramp,
                     end=start + ramp + out_for, peak_pu=float(rng.uniform(1.15, 1.35)))  # fmt: skip
            if phase == "test" and rng.random() < 0.6:
                # below the rating: the load ramps to 1.25–1.8 × its normal for that hour, then trips
                d["variant"] = "relative"
                d["peak_rel"] = float(rng.uniform(1.25, 1.8))
        elif kind == "load_drop":
            f = feeders[rng.integers(len(feeders))]
            dur = rng.uniform(30, 180) * 60
            dur *= fit(dur)
            start = rng.uniform(s_lo + margin, s_lo + width - margin - dur)
            d.update(target=f, group=f, accept=[f, _FEEDERS[f][0]], start=start, end=start + dur,
                     depth=float(rng.uniform(0.4, 0.7)))  # fmt: skip
            if phase == "test" and rng.random() < 0.5:
                d["depth"] = float(rng.uniform(0.2, 0.55))  # a partial loss: to 0.45–0.8 × normal
        elif kind == "thermal":
            t = list(_TRANSFORMERS)[rng.integers(2)]
            fail = rng.uniform(2, 5) * 3600
            fail = min(fail, max(room - 3600, 1800.0))
            start = rng.uniform(s_lo + margin, s_lo + width - margin - fail - 3600)
            d.update(target=t, group=t, accept=[t], start=start, fail_end=start + fail,
                     end=start + fail + 3600, delta_c=float(rng.uniform(12, 25)))  # fmt: skip
            if rng.random() < 0.5:
                # a slow rise above what the load explains (0.08–0.3 °C/min), not a step through τ
                d["variant"] = "ramp"
                d["slope_c_min"] = float(rng.uniform(0.08, 0.3))
        elif kind == "frequency":
            start = rng.uniform(s_lo + margin, s_lo + width - margin - 1800)
            tau = float(rng.uniform(5, 12))
            d.update(target="BUS", group="BUS", accept=["BUS"], start=start, end=start + (3 + 3 * tau) * 60,
                     depth_hz=float(rng.uniform(0.2, 0.45)), tau_min=tau)  # fmt: skip
        elif kind == "heat_day":
            length = min(24 * 3600.0, width * 0.9)
            centre = s_lo + width / 2
            d.update(target="*", group="*", accept=[], start=centre - length / 2, end=centre + length / 2,
                     peak=centre, delta_c=float(rng.uniform(7, 11)))  # fmt: skip
        else:  # sensor faults
            pt = _fault_point(rng, kind)
            group = pt.split("_")[0] if pt not in ("BUS_V", "FREQ") else "BUS"
            dur = {"stuck": rng.uniform(2, 8) * 3600, "drift": rng.uniform(4, 12) * 3600,
                   "scale": rng.uniform(1, 6) * 3600, "dropout": rng.uniform(30, 180) * 60,
                   "spike": 0.0}[kind]  # fmt: skip
            dur *= fit(max(dur, 1.0))
            start = rng.uniform(s_lo + margin, s_lo + width - margin - dur)
            d.update(target=pt, group=group, accept=[], start=start, end=start + dur)
            if kind == "drift":
                d["drift_pu"] = float(rng.choice([-1, 1]) * rng.uniform(0.05, 0.15))
                if rng.random() < 0.5:  # slow: 0.25–1 %/h over the fault
                    d["drift_pu"] = float(np.sign(d["drift_pu"]) * rng.uniform(0.0025, 0.01) * dur / 3600)
            elif kind == "scale":
                d["factor"] = float(rng.choice([10.0, 0.1]))
            elif kind == "spike":
                d["should_alert"] = False  # a lone glitch: flagged in the history, never an operator alert
                sign = -1.0 if (rng.random() < 0.5 and pt.endswith(("_V", "_OIL"))) else 1.0
                d["magnitude"] = float(sign * rng.uniform(0.4, 1.0))
        out.append(d)
    return out


def _fault_point(rng: np.random.Generator, kind: str) -> str:
    """An analog point that can plausibly fail this way (stuck frequency, drifting oil sensor, …)."""
    analog = ["BUS_V", "FREQ", "T1_P", "T1_Q", "T1_OIL", "T2_P", "T2_Q", "T2_OIL"]
    analog += [f"{f}_{q}" for f in _FEEDERS for q in ("I", "P", "Q")]
    if kind == "drift":
        analog = [a for a in analog if a != "FREQ"]  # frequency is measured digitally: it does not drift
    return str(analog[rng.integers(len(analog))])


# ------------------------------------------------------------------------------------------------
# Interchange
# ------------------------------------------------------------------------------------------------
def readings(
    scenario: Scenario, t_from: float | None = None, t_to: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Long-format (point_idx int32, ts, value, quality uint8), time-sorted, no entry for missing readings."""
    sel = np.ones(len(scenario.ts), bool)
    if t_from is not None:
        sel &= scenario.ts >= t_from
    if t_to is not None:
        sel &= scenario.ts < t_to
    ts = scenario.ts[sel]
    vals = scenario.values[sel]
    ti, pj = np.nonzero(~np.isnan(vals))  # row-major: time-sorted, points in table order
    return pj.astype(np.int32), ts[ti], vals[ti, pj], scenario.quality[sel][ti, pj]


def to_csv(
    scenario: Scenario,
    readings_path: str | Path,
    points_path: str | Path,
    *,
    epoch: bool = False,
    with_quality: bool = True,
    t_from: float | None = None,
    t_to: float | None = None,
) -> int:
    """Write READINGS.csv (long format, time-sorted, no row for a missing reading) and POINTS (JSON).

    Returns the number of readings written. ``t_from``/``t_to`` cut a time window [from, to).
    """

    pj, ts, val, qual = readings(scenario, t_from, t_to)
    names = np.array(scenario.names)
    uniq, inv = np.unique(ts, return_inverse=True)
    if epoch:
        tstr = np.array([repr(x) for x in uniq.tolist()])
    else:
        tstr = np.char.add(np.datetime_as_string(uniq.astype("datetime64[s]"), unit="s"), "Z")
    # plain Python string joins: ~2× faster here than pandas.to_csv or numpy.char
    tl = tstr.tolist()
    nl = names.tolist()
    cols = [[tl[i] for i in inv.tolist()], [nl[i] for i in pj.tolist()], list(map(repr, val.tolist()))]
    header = "timestamp,point,value"
    if with_quality:
        header += ",quality"
        cols.append(list(map(str, qual.tolist())))
    with open(readings_path, "w", encoding="utf-8", newline="") as fh:
        fh.write(header + "\n")
        for k in range(0, len(ts), 200_000):
            chunk = zip(*(c[k : k + 200_000] for c in cols), strict=True)
            fh.write("\n".join(map(",".join, chunk)) + "\n")
    Path(points_path).write_text(json.dumps(scenario.points, indent=1, ensure_ascii=False) + "\n")
    return len(ts)


def iso_utc(t: float) -> str:
    """Epoch seconds → ``2026-01-01T00:00:00Z``."""
    return datetime.fromtimestamp(t, zoneinfo.ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":  # quick look: python bench/scenarios.py 0
    import sys

    sc = generate(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(f"seed={sc.seed} T={len(sc.ts)} P={len(sc.points)} eval_days={sc.eval_days:.1f}")
    for t in sc.truth:
        print(f"{t['phase']:5s} {t['class']:6s} {t['kind']:13s} {t['target']:7s} {iso_utc(t['start'])} "
              f"{(t['end'] - t['start']) / 60:7.1f} min")  # fmt: skip
