"""A second labelled substation family whose loads come from real-derived BDEW standard load profiles.

Independent of bench/scenarios.py on purpose: same point table (``points_spec()``), same ``Scenario`` type
and truth format, so bench/detection_eval.py scores both the same way — but the loads, weather,
physics, instruments and incidents are built here from how German MV substations behave:

- **Loads** are the BDEW standard load profiles through ``demandlib`` (H0 households with the dynamisation
  function, G0..G6 commercial, L0..L2 agriculture) by local wall-clock time (Europe/Berlin; the profile
  is a 15-minute mean, interpolated to 1 minute), public holidays of one German state (``holidays``) taken
  as Sundays like the BDEW rule says, day-to-day variation, temperature-driven heating load. F1 is mostly
  H0 with rooftop PV (midday dips on sunny days, unity power factor so P and Q decouple), F2 a G mix, F3
  agriculture plus a two-shift industrial process with a switched capacitor bank, F4 H0 with bakery /
  weekend-business load.
- **Weather**: ambient temperature = season + multi-day fronts + a daily cycle whose amplitude follows the
  day's cloud cover; the same cloud cover drives PV (clear-sky model from the sun's elevation, passing
  clouds on broken-cloud days).
- **Physics**: transformer P/Q = feeders + station service + iron and copper losses; 11 kV side held by
  an OLTC (1.25 % steps, deadband, 2-minute delay) against the 33 kV bus voltage (upstream wander and
  own load drop); feeder currents from S / (√3 · V_LV); top-oil temperature by the IEC 60076-7 ONAN
  first-order model (Δθ_or · ((1 + R·K²)/(1 + R))^n, τ = 150–210 min) over ambient.
- **Instruments**: class 0.2/0.5 ratio errors and noise, PT100 offsets, RTU resolution (10 kW, 1 A, …),
  rare lost readings, and *unlabelled* RTU glitches (a missed poll of one bay, a repeated stale value on a
  block of registers) in every week — normal life, an alert on them is a false one.
- **Period**: 42 days of 1-minute readings with a DST change inside; spring (Mar 9 – Apr 20 2026, Good
  Friday / Easter Monday) or autumn (Sep 22 – Nov 3 2025, Oct 3 / Reformation Day) by seed.

Incidents at random, non-overlapping times in the last 14 days (the scored window), per site:

grid: ``overload_trip`` ×3 — a feeder's load ramps to 1.25–1.8 × its normal load for that time over
20–60 min (ratings are sized so this mostly stays BELOW the rating), then trips: the substation breaker
opens (``residual`` 0) or a downstream recloser opens and leaves 15–50 % of the load (``residual`` > 0,
breaker stays closed); ``trip`` holds the trip time. ``load_drop`` ×2 — one or two feeders fall to
0.45–0.8 × normal for 30–180 min. ``thermal`` — top oil rises 0.08–0.3 °C/min above what load explains
for 40–120 min. ``voltage_sag`` — the 33 kV bus drops 4–10 % for 3–20 min (loads and taps answer).
sensor: ``drift`` (0.25–1 %/h of the level), ``scale`` (CT/VT ratio set wrong: ×0.5…×2), ``stuck``
(frozen value), ``dropout`` (no readings), ``flatline`` (reads 0 with good quality), ``noisy`` (a loose
terminal), ``multi_spike`` (3–8 consecutive bad samples), ``glitch`` (a failing analog card: intermittent
garbage on 2–3 points of one bay; ``points`` lists them), ``lone_spike`` ×2 (ONE bad sample:
``should_alert`` False — an alert on it is a failure).

Seeds: ``TUNING_SEEDS`` (7000–7009) for anyone who tunes on this family; ``HELDOUT_SEEDS`` (8000–8009)
are the report seeds — never tune on them.

Usage::

    sc = generate(8000)                  # 42 days, 1-minute steps
    python bench/realprofile.py 8000     # print the site and its truth
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import holidays as holidays_lib
import numpy as np
import pandas as pd
from demandlib import bdew
from scipy.signal import lfilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scenarios import Scenario, iso_utc, points_spec

__all__ = ["GRID_KINDS", "HELDOUT_SEEDS", "SENSOR_KINDS", "TUNING_SEEDS", "generate", "load_profiles"]

TUNING_SEEDS = tuple(range(7000, 7010))
HELDOUT_SEEDS = tuple(range(8000, 8010))
GRID_KINDS = ("overload_trip", "overload_trip", "overload_trip", "load_drop", "load_drop", "thermal",
              "voltage_sag")  # fmt: skip
SENSOR_KINDS = ("drift", "scale", "stuck", "dropout", "flatline", "noisy", "multi_spike", "glitch",
                "lone_spike", "lone_spike")  # fmt: skip
TRAIN_KINDS = ("load_drop", "stuck")

_TZ = "Europe/Berlin"
_SEASONS = {
    # name: (local start, states with a public holiday in the period, ambient °C at start → end)
    "spring": ("2026-03-09", ("BY", "BW", "NW", "HE", "RP"), (5.0, 12.0)),
    "autumn": ("2025-09-22", ("NI", "SH", "HH", "SN", "BB"), (15.0, 7.0)),
}
_FEEDERS = ("F1", "F2", "F3", "F4")
_PARENT = {"F1": "T1", "F2": "T1", "F3": "T2", "F4": "T2"}
_PROFILE_TYPES = ("h0_dyn", "g0", "g1", "g2", "g3", "g4", "g5", "g6", "l0", "l1", "l2")
_LV_KV = 11.0
_HV_KV = 33.0
_TAP_STEP = 0.0125
_RESOLUTION = {"voltage": 0.01, "frequency": 0.001, "active_power": 0.01, "reactive_power": 0.01,
               "current": 1.0, "temperature": 0.1, "tap_position": 1.0, "status": 1.0}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Real-derived load profiles
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def load_profiles(year: int, state: str) -> pd.DataFrame:
    """BDEW profiles (15-min, naive local wall-clock index) for a year, holidays of ``state`` as Sundays.

    demandlib 0.2.2's ``ElecSlp`` calls ``warnings.simplefilter("error")`` mid-way, which turns pandas
    3.1's own deprecation warnings into errors (and would leak into the caller); the filter call is
    neutralised and the caller's filters restored.
    """
    hol = holidays_lib.Germany(subdiv=state, years=year)
    with warnings.catch_warnings(), mock.patch.object(warnings, "simplefilter"):
        warnings.filterwarnings("ignore")
        slp = bdew.ElecSlp(year=year, holidays=dict(hol))
    df = slp.get_profiles(*_PROFILE_TYPES)
    return df / df.mean()  # per unit of the annual mean


def _profile_at(df: pd.DataFrame, local_naive: pd.DatetimeIndex, name: str) -> np.ndarray:
    """A profile at 1-min local wall-clock times, linear between 15-minute slot centres."""
    start = df.index[0]
    pos = (local_naive - start) / pd.Timedelta(minutes=15) - 0.5
    pos = np.clip(pos.to_numpy(dtype=float), 0.0, len(df) - 1.0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(df) - 1)
    w = pos - lo
    col = df[name].to_numpy()
    return col[lo] * (1 - w) + col[hi] * w


# ------------------------------------------------------------------------------------------------
# Small physical helpers
# ------------------------------------------------------------------------------------------------
def _ar1(rng: np.random.Generator, n: int, tau: float, sigma: float) -> np.ndarray:
    """Stationary AR(1) with time constant ``tau`` samples and standard deviation ``sigma``."""
    a = math.exp(-1.0 / max(tau, 1e-9))
    e = rng.normal(0.0, sigma * math.sqrt(1 - a * a), n)
    e[0] = rng.normal(0.0, sigma)
    return lfilter([1.0], [1.0, -a], e)


def _lowpass(x: np.ndarray, tau: float, y0: float) -> np.ndarray:
    a = math.exp(-1.0 / tau)
    y, _ = lfilter([1.0 - a], [1.0, -a], x, zi=[a * y0])
    return y


def _sun_elevation(ts: np.ndarray, lat: float, lon: float) -> np.ndarray:
    """Solar elevation (radians) from UTC epoch seconds (Spencer declination, equation of time)."""
    doy = (ts / 86400.0 + 4383.0) % 365.2422  # approximate day of year, good to a day
    g = 2 * np.pi * (doy - 1) / 365.0
    decl = (0.006918 - 0.399912 * np.cos(g) + 0.070257 * np.sin(g) - 0.006758 * np.cos(2 * g)
            + 0.000907 * np.sin(2 * g))  # fmt: skip
    eot = 229.18 * (0.000075 + 0.001868 * np.cos(g) - 0.032077 * np.sin(g) - 0.014615 * np.cos(2 * g)
                    - 0.040849 * np.sin(2 * g))  # fmt: skip
    utc_h = (ts % 86400.0) / 3600.0
    solar_h = utc_h + lon / 15.0 + eot / 60.0
    ha = np.radians(15.0 * (solar_h - 12.0))
    phi = math.radians(lat)
    return np.arcsin(np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(ha))


def _oltc(
    v_hv_pu: np.ndarray, drop_pu: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tap position and LV voltage (pu): step when the error stays beyond the deadband for 2 minutes."""
    n = len(v_hv_pu)
    tap = np.empty(n)
    v_lv = np.empty(n)
    target = 1.0 + rng.uniform(0.0, 0.02)  # the relay's set point (line-drop compensation folded in)
    band = rng.uniform(0.009, 0.013)
    pos = round(float((target - v_hv_pu[0] + drop_pu[0]) / _TAP_STEP))
    late = 0
    for i in range(n):  # plain loop: the tap depends on its own past (60k steps ≈ 40 ms)
        v = v_hv_pu[i] * (1.0 + _TAP_STEP * pos) - drop_pu[i]
        err = v - target
        late = late + 1 if abs(err) > band else 0
        if late >= 2:
            pos = int(np.clip(pos - np.sign(err), -9, 9))
            late = 0
            v = v_hv_pu[i] * (1.0 + _TAP_STEP * pos) - drop_pu[i]
        tap[i] = pos
        v_lv[i] = v
    return tap, v_lv


def _i(ts: np.ndarray, t: float) -> int:
    return int(np.searchsorted(ts, t))


def _quantise(x: np.ndarray, res: float) -> np.ndarray:
    """Round to the RTU's resolution; the second round keeps 0.7 from printing as 0.7000000000000001."""
    return np.round(np.round(x / res) * res, max(0, -math.floor(math.log10(res))))


# ------------------------------------------------------------------------------------------------
# Generator
# ------------------------------------------------------------------------------------------------
def generate(seed: int, days: int = 42, incidents_in_last_days: int = 14, *, step: float = 60.0) -> Scenario:
    """One labelled site (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    season = ("spring", "autumn")[int(rng.integers(2))]
    start_local, states, (amb_a, amb_b) = _SEASONS[season]
    state = str(states[int(rng.integers(len(states)))])
    t0 = pd.Timestamp(start_local, tz=_TZ).timestamp()
    n = round(days * 86400 / step)
    spm = 60.0 / step
    ts = t0 + np.arange(n) * step
    local = pd.to_datetime(ts, unit="s", utc=True).tz_convert(_TZ)
    local_naive = local.tz_localize(None)
    hour = local.hour.to_numpy() + local.minute.to_numpy() / 60.0
    day = ((local_naive - local_naive[0].normalize()) // pd.Timedelta(days=1)).to_numpy().astype(int)
    year = int(local[0].year)
    hol = holidays_lib.Germany(subdiv=state, years=year)
    is_holiday = np.array([d in hol for d in local.date])
    wday = np.where(is_holiday, 6, local.day_of_week.to_numpy())  # a holiday behaves like a Sunday
    workday = wday < 5
    prof = load_profiles(year, state)
    lat, lon = rng.uniform(48.0, 54.0), rng.uniform(7.0, 13.5)
    eval_start = t0 + (days - incidents_in_last_days) * 86400.0
    pts = points_spec()
    names = [p["name"] for p in pts]
    col = {nm: k for k, nm in enumerate(names)}
    n_days = int(day.max()) + 1

    # ---- weather ------------------------------------------------------------------------------
    cloud_d = np.clip(0.5 + _ar1(rng, n_days, 1.5, 0.35), 0.0, 1.0)  # daily cloud cover 0 = clear
    cloud = cloud_d[day]
    front_h = _ar1(rng, days * 24 + 2, 60.0, 3.5)  # multi-day fronts, hourly, τ ≈ 2.5 days
    front = np.interp((ts - t0) / 3600.0, np.arange(len(front_h)), front_h)
    base_c = amb_a + (amb_b - amb_a) * (ts - t0) / (ts[-1] - t0)
    amplitude = 1.5 + 5.5 * (1.0 - cloud)  # clear days swing more
    amb = base_c + front + amplitude * np.cos((hour - 15.0) / 24.0 * 2 * np.pi) + _ar1(rng, n, 40 * spm, 0.4)
    elev = _sun_elevation(ts, lat, lon)
    sin_e = np.maximum(np.sin(elev), 0.0)
    with np.errstate(divide="ignore", over="ignore"):
        air_mass = np.where(sin_e > 0.01, 1.0 / np.maximum(sin_e, 0.01), 100.0)
        ghi_clear = 1353.0 * sin_e * 0.7 ** (air_mass**0.678)  # Meinel clear-sky model (W/m²)
    broken = 4.0 * cloud * (1.0 - cloud)  # passing clouds only on broken-cloud days
    kc = np.clip(1.0 - 0.75 * cloud + _ar1(rng, n, 8 * spm, 0.3) * broken, 0.08, 1.05)
    ghi = ghi_clear * kc

    # ---- feeder loads from the profiles -------------------------------------------------------
    def mix(weights: dict[str, float]) -> np.ndarray:
        total = sum(weights.values())
        return sum(w / total * _profile_at(prof, local_naive, p) for p, w in weights.items())

    shape = {
        "F1": mix({"h0_dyn": 1.0}),
        "F2": mix({"g1": rng.uniform(0.3, 0.6), "g0": rng.uniform(0.2, 0.4), "g4": rng.uniform(0.1, 0.3)}),
        "F3": mix({"l0": rng.uniform(0.3, 0.5), "l2": rng.uniform(0.1, 0.3), "g3": rng.uniform(0.2, 0.4)}),
        "F4": mix(
            {"h0_dyn": rng.uniform(0.6, 0.8), "g5": rng.uniform(0.1, 0.25), "g6": rng.uniform(0.05, 0.2)}
        ),
    }
    mean_mw = {"F1": rng.uniform(1.6, 2.2), "F2": rng.uniform(1.3, 2.1), "F3": rng.uniform(1.8, 2.6),
               "F4": rng.uniform(1.2, 1.8)}  # fmt: skip
    noise = {"F1": 0.03, "F2": 0.02, "F3": 0.025, "F4": 0.03}  # aggregate-of-many-customers wander
    heat_coef = {"F1": 0.012, "F2": 0.006, "F3": 0.004, "F4": 0.012}  # per °C below 12 °C (heat pumps)
    p_load: dict[str, np.ndarray] = {}
    for f in _FEEDERS:
        day_factor = np.exp(_ar1(rng, n_days, 2.0, 0.05))[day]
        p = mean_mw[f] * shape[f] * day_factor
        p *= 1.0 + heat_coef[f] * np.maximum(12.0 - amb, 0.0)
        p *= 1.0 + _ar1(rng, n, 12 * spm, noise[f]) + rng.normal(0.0, 0.004, n)
        p_load[f] = p
    # F3: a two-shift process (06–22 on workdays, start/stop jitter, a rare unplanned stop of 1–3 h)
    process = np.zeros(n)
    proc_mw = rng.uniform(0.4, 0.8)
    for d in range(n_days):
        sel = day == d
        if not workday[sel][0]:
            continue
        on, off = 6.0 + rng.normal(0, 0.25), 22.0 + rng.normal(0, 0.25)
        run = sel & (hour >= on) & (hour < off)
        if rng.random() < 0.15:
            stop = rng.uniform(on + 1, off - 3)
            run &= ~((hour >= stop) & (hour < stop + rng.uniform(1, 3)))
        process[run] = proc_mw
    p_load["F3"] = p_load["F3"] + process * (1.0 + rng.normal(0.0, 0.02, n))
    pf = {"F1": rng.uniform(0.95, 0.98), "F2": rng.uniform(0.9, 0.95), "F3": rng.uniform(0.85, 0.9),
          "F4": rng.uniform(0.94, 0.97)}  # fmt: skip
    q_load = {f: p_load[f] * np.tan(np.arccos(np.clip(pf[f] + _ar1(rng, n, 240 * spm, 0.01), 0.75, 0.995)))
              for f in _FEEDERS}  # fmt: skip
    cap_mvar = rng.uniform(0.3, 0.6)  # F3's capacitor bank follows the process (switched by its PLC)
    q_load["F3"] = q_load["F3"] - cap_mvar * (process > 0)
    pv_mwp = rng.uniform(0.9, 1.4) * mean_mw["F1"]  # rooftop PV on F1, inverters at unity power factor
    t_cell = amb + 0.03 * ghi
    pv = pv_mwp * ghi / 1000.0 * 0.85 * (1.0 - 0.004 * (t_cell - 25.0))
    pv4 = rng.uniform(0.1, 0.25) * pv  # a little on F4 as well

    # ---- schedule incidents -------------------------------------------------------------------
    plan = _plan(rng, ts, eval_start, t0)
    # ---- grid incidents on the true feeder load (multipliers relative to the normal load) -----
    mult = {f: np.ones(n) for f in _FEEDERS}
    cb = {f: np.ones(n) for f in _FEEDERS}
    for it in plan:
        if it["kind"] == "overload_trip":
            f = it["group"]
            a, tr, b = _i(ts, it["start"]), _i(ts, it["trip"]), _i(ts, it["end"])
            x = np.linspace(0.0, 1.0, tr - a)
            mult[f][a:tr] *= 1.0 + (it["peak_pu"] - 1.0) * x ** it["curve"]
            if it["residual"] > 0:  # a downstream recloser opened: the substation breaker stays closed
                mult[f][tr:b] *= it["residual"]
            else:
                cb[f][tr:b] = 0.0
            k = np.arange(n - b)  # cold-load pickup after restoration
            mult[f][b:] *= 1.0 + it["pickup"] * np.exp(-k / (rng.uniform(15, 30) * spm))
        elif it["kind"] == "load_drop":
            a, b = _i(ts, it["start"]), _i(ts, it["end"])
            for f, depth in zip(it["groups"], it["levels"], strict=True):
                mult[f][a:b] *= depth
    p_fdr = {f: (p_load[f] * mult[f] - (pv if f == "F1" else pv4 if f == "F4" else 0.0)) * cb[f]
             for f in _FEEDERS}  # fmt: skip
    q_fdr = {f: q_load[f] * mult[f] * cb[f] for f in _FEEDERS}

    # ---- bus voltage, OLTC, voltage-dependent load ---------------------------------------------
    grid_shape = np.interp(hour, [0, 6, 9, 13, 18, 20, 24], [0.0, 0.1, 0.8, 0.7, 0.9, 1.0, 0.2])
    v_up = 1.02 + _ar1(rng, n, 180 * spm, 0.006) - 0.012 * grid_shape + _ar1(rng, n, 3 * spm, 0.0008)
    for it in plan:
        if it["kind"] == "voltage_sag":
            a, b = _i(ts, it["start"]), _i(ts, it["end"])
            v_up[a:b] -= it["depth"]
    s_site = sum(np.hypot(p_fdr[f], q_fdr[f]) for f in _FEEDERS)
    v_hv = v_up - 0.015 * s_site / 20.0
    mva = {"T1": float(rng.choice([16.0, 20.0])), "T2": float(rng.choice([16.0, 20.0]))}
    tap: dict[str, np.ndarray] = {}
    v_lv: dict[str, np.ndarray] = {}
    for t in ("T1", "T2"):
        fs = [f for f in _FEEDERS if _PARENT[f] == t]
        k = sum(np.hypot(p_fdr[f], q_fdr[f]) for f in fs) / mva[t]
        tap[t], v_lv[t] = _oltc(v_hv, 0.05 * k, rng)
    for f in _FEEDERS:  # loads answer the LV voltage (ZIP mix: P ~ V^0.9, Q ~ V^2.5)
        vp = v_lv[_PARENT[f]]
        p_fdr[f] = p_fdr[f] * vp**0.9
        q_fdr[f] = q_fdr[f] * vp**2.5
    i_fdr = {f: np.hypot(p_fdr[f], q_fdr[f]) / (math.sqrt(3) * _LV_KV * v_lv[_PARENT[f]]) * 1000.0
             for f in _FEEDERS}  # fmt: skip

    # ---- transformers: losses, station service, oil ------------------------------------------
    p_tr: dict[str, np.ndarray] = {}
    q_tr: dict[str, np.ndarray] = {}
    oil: dict[str, np.ndarray] = {}
    for t in ("T1", "T2"):
        fs = [f for f in _FEEDERS if _PARENT[f] == t]
        p = sum(p_fdr[f] for f in fs)
        q = sum(q_fdr[f] for f in fs)
        kk = np.hypot(p, q) / mva[t]
        aux = rng.uniform(0.01, 0.03) * (1.0 + 0.3 * (amb < 5.0))  # station service, heaters when cold
        p_tr[t] = p + aux + 0.0008 * mva[t] + 0.0055 * mva[t] * kk**2  # iron + copper losses
        q_tr[t] = q + 0.004 * mva[t] + 0.10 * mva[t] * kk**2  # magnetising + leakage (uk ≈ 10 %)
        d_or, r_ratio, n_exp = rng.uniform(45, 55), rng.uniform(5, 8), 0.8
        theta_ss = amb + d_or * ((1.0 + r_ratio * kk**2) / (1.0 + r_ratio)) ** n_exp
        o = _lowpass(theta_ss, rng.uniform(150, 210) * spm, float(theta_ss[: int(720 * spm)].mean()))
        for it in plan:
            if it["kind"] == "thermal" and it["group"] == t:
                a, r_end, b = _i(ts, it["start"]), _i(ts, it["ramp_end"]), _i(ts, it["end"])
                extra = np.zeros(n)
                extra[a:r_end] = it["rate_c_per_min"] * np.arange(r_end - a) / spm
                peak = extra[r_end - 1]
                extra[r_end:b] = peak
                extra[b:] = peak * np.exp(-np.arange(n - b) / (90 * spm))  # cooling restored
                o = o + extra
        oil[t] = o
    freq = 50.0 + _ar1(rng, n, 3 * spm, 0.015)
    hour_start = np.flatnonzero(np.diff(np.floor((ts - t0) / 3600.0)) > 0) + 1
    kick = np.zeros(n)
    kick[hour_start] = rng.normal(0, 0.03, len(hour_start))  # schedule changes at the full hour
    freq += lfilter([1.0], [1.0, -math.exp(-1.0 / (4 * spm))], kick)

    true_vals = np.empty((n, len(pts)))
    true_vals[:, col["BUS_V"]] = v_hv * _HV_KV
    true_vals[:, col["FREQ"]] = freq
    for t in ("T1", "T2"):
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
    values[rng.random(values.shape) < 5e-5] = np.nan  # a poll that timed out
    glitches = _rtu_glitches(rng, values, pts, ts)
    _inject_sensor_faults(rng, values, pts, ts, plan, spm)
    # feeder ratings: CT ratings sized so the normal peak is 40–62 % (overloads mostly stay below)
    ratings = {}
    for f in _FEEDERS:
        normal_peak = float(np.nanpercentile(i_fdr[f][ts < eval_start], 99.9))
        ratings[f] = _nice_rating(normal_peak / rng.uniform(0.40, 0.62))
    for p in pts:
        if p["group"] in ratings and p["quantity"] == "current":
            p["rating"] = ratings[p["group"]]
        if p["group"] in mva and p["quantity"] in ("active_power", "reactive_power"):
            p["rating"] = mva[p["group"]]
    for it in plan:
        if it["kind"] == "overload_trip":
            f = it["group"]
            a, tr = _i(ts, it["start"]), _i(ts, it["trip"])
            it["peak_current"] = round(float(np.max(i_fdr[f][a:tr])), 1)
            it["crosses_rating"] = bool(it["peak_current"] > ratings[f])
    truth = sorted(plan, key=lambda d: d["start"])
    return Scenario(
        seed=seed,
        points=pts,
        ts=ts,
        values=values,
        quality=np.zeros(values.shape, np.uint8),
        truth=truth,
        timezone=_TZ,
        frequency_hz=50.0,
        step=step,
        eval_start=eval_start,
        meta={
            "family": "realprofile",
            "days": days,
            "incidents_in_last_days": incidents_in_last_days,
            "season": season,
            "state": state,
            "lat": round(lat, 2),
            "lon": round(lon, 2),
            "start": iso_utc(t0),
            "pv_mwp": round(pv_mwp, 2),
            "ratings": ratings,
            "mva": mva,
            "glitches": glitches,
        },
    )


def _nice_rating(amps: float) -> float:
    """The next standard CT primary rating."""
    for r in (100, 150, 200, 250, 300, 400, 500, 600, 750, 800, 1000, 1200):
        if r >= amps:
            return float(r)
    return 1500.0


# ------------------------------------------------------------------------------------------------
# Incidents
# ------------------------------------------------------------------------------------------------
def _plan(rng: np.random.Generator, ts: np.ndarray, eval_start: float, t0: float) -> list[dict[str, Any]]:
    test = [("grid", k) for k in GRID_KINDS] + [("sensor", k) for k in SENSOR_KINDS]
    test = [test[k] for k in rng.permutation(len(test))]
    train = [("grid" if k == "load_drop" else "sensor", k) for k in TRAIN_KINDS]
    train_lo = t0 + (eval_start - t0) * 0.5
    return _slots(rng, test, eval_start, float(ts[-1]), "test") + _slots(
        rng, train, train_lo, eval_start - 6 * 3600.0, "train"
    )


def _slots(
    rng: np.random.Generator, items: list[tuple[str, str]], lo: float, hi: float, phase: str
) -> list[dict[str, Any]]:
    """One incident per equal, shuffled slot of [lo, hi), placed at a random time inside it."""
    if not items:
        return []
    width = (hi - lo) / len(items)
    margin = min(2 * 3600.0, 0.1 * width)
    out = []
    for k, (cls, kind) in enumerate(items):
        s_lo, s_hi = lo + k * width + margin, lo + (k + 1) * width - margin
        d: dict[str, Any] = {"kind": kind, "class": cls, "phase": phase}

        def place(duration: float, s_lo: float = s_lo, s_hi: float = s_hi) -> float:
            return float(rng.uniform(s_lo, max(s_hi - duration, s_lo + 1.0)))

        if kind == "overload_trip":
            f = _FEEDERS[int(rng.integers(4))]
            ramp = rng.uniform(20, 60) * 60
            out_for = rng.uniform(20, 90) * 60
            start = place(ramp + out_for)
            residual = float(rng.uniform(0.15, 0.5)) if rng.random() < 0.4 else 0.0
            d.update(target=f, group=f, accept=[f, _PARENT[f]], start=start, trip=start + ramp,
                     end=start + ramp + out_for, peak_pu=float(rng.uniform(1.25, 1.8)),
                     curve=float(rng.choice([1.0, 1.5, 2.0])), residual=residual,
                     pickup=float(rng.uniform(0.15, 0.4)))  # fmt: skip
        elif kind == "load_drop":
            two = rng.random() < 0.4
            fs = sorted(str(x) for x in rng.choice(_FEEDERS, 2 if two else 1, replace=False))
            dur = rng.uniform(30, 180) * 60
            start = place(dur)
            accept = fs + sorted({_PARENT[f] for f in fs})
            if len({_PARENT[f] for f in fs}) > 1:
                accept.append("BUS")
            d.update(target=fs[0], group=fs[0], groups=fs, accept=accept, start=start,
                     end=start + dur, levels=[float(rng.uniform(0.45, 0.8)) for _ in fs])  # fmt: skip
        elif kind == "thermal":
            t = ("T1", "T2")[int(rng.integers(2))]
            ramp = rng.uniform(40, 120) * 60
            start = place(ramp + 1800)
            d.update(target=t, group=t, accept=[t], start=start, ramp_end=start + ramp, end=start + ramp + 1800,
                     rate_c_per_min=float(rng.uniform(0.08, 0.3)))  # fmt: skip
        elif kind == "voltage_sag":
            dur = rng.uniform(3, 20) * 60
            start = place(dur)
            d.update(target="BUS", group="BUS", accept=["BUS"], start=start, end=start + dur,
                     depth=float(rng.uniform(0.04, 0.10)))  # fmt: skip
        else:
            pt = _fault_point(rng, kind)
            group = "BUS" if pt in ("BUS_V", "FREQ") else pt.split("_")[0]
            dur = {"drift": rng.uniform(4, 12) * 3600, "scale": rng.uniform(1, 6) * 3600,
                   "stuck": rng.uniform(2, 8) * 3600, "dropout": rng.uniform(30, 180) * 60,
                   "flatline": rng.uniform(30, 180) * 60, "noisy": rng.uniform(1, 4) * 3600,
                   "multi_spike": rng.uniform(3, 8) * 60, "glitch": rng.uniform(30, 90) * 60,
                   "lone_spike": 60.0}[kind]  # fmt: skip
            start = place(dur)
            d.update(target=pt, group=group, accept=[], start=start, end=start + dur)
            if kind == "drift":
                d["drift_pct_per_h"] = float(rng.choice([-1, 1]) * rng.uniform(0.25, 1.0))
            elif kind == "scale":
                d["factor"] = float(rng.choice([0.5, 0.75, 0.8, 1.25, 4 / 3, 2.0]))
            elif kind == "noisy":
                d["noise_pct"] = float(rng.uniform(3, 8))
            elif kind in ("multi_spike", "lone_spike"):
                d["magnitude"] = float(rng.choice([-1, 1]) * rng.uniform(0.3, 0.9))
            elif kind == "glitch":
                bay = [p for p in _bay_points(group) if p != pt]
                extra = [
                    str(x) for x in rng.choice(bay, int(rng.integers(1, min(2, len(bay)) + 1)), replace=False)
                ]
                d["points"] = [pt, *extra]
            if kind == "lone_spike":
                d["end"] = start
                d["should_alert"] = False
        out.append(d)
    return out


def _bay_points(group: str) -> list[str]:
    if group == "BUS":
        return ["BUS_V", "FREQ"]
    if group.startswith("T"):
        return [f"{group}_P", f"{group}_Q", f"{group}_OIL"]
    return [f"{group}_I", f"{group}_P", f"{group}_Q"]


def _fault_point(rng: np.random.Generator, kind: str) -> str:
    """An analog point that can fail this way (a CT ratio on a current or power, drift on a transducer)."""
    loads = [f"{f}_{q}" for f in _FEEDERS for q in ("I", "P", "Q")] + ["T1_P", "T1_Q", "T2_P", "T2_Q"]
    pool = {
        "drift": [*loads, "BUS_V", "T1_OIL", "T2_OIL"],
        "scale": loads,
        "flatline": loads,
        "glitch": [*loads, "T1_OIL", "T2_OIL"],
    }.get(kind, [*loads, "BUS_V", "FREQ", "T1_OIL", "T2_OIL"])
    return str(pool[int(rng.integers(len(pool)))])


def _measure(rng: np.random.Generator, true_vals: np.ndarray, pts: list[dict[str, Any]]) -> np.ndarray:
    """Transducer errors: fixed ratio error by accuracy class, noise, PT100 offsets, RTU resolution."""
    n = true_vals.shape[0]
    out = true_vals.copy()
    for j, pt in enumerate(pts):
        q = pt["quantity"]
        if q in ("status", "tap_position"):
            continue
        if q == "frequency":
            out[:, j] += rng.uniform(-0.003, 0.003) + rng.normal(0, 0.001, n)
        elif q == "temperature":  # PT100 class B: ±(0.3 + 0.005 t)
            out[:, j] += rng.uniform(-0.5, 0.5) + rng.normal(0, 0.08, n)
        else:
            cls = 0.2 if q == "voltage" else float(rng.choice([0.2, 0.5]))
            gain = 1.0 + rng.uniform(-cls, cls) / 100.0
            out[:, j] = out[:, j] * gain * (1.0 + rng.normal(0, cls / 300.0, n))
        out[:, j] = _quantise(out[:, j], _RESOLUTION[q])
    return out


def _rtu_glitches(
    rng: np.random.Generator, values: np.ndarray, pts: list[dict[str, Any]], ts: np.ndarray
) -> list[dict[str, Any]]:
    """Unlabelled, normal RTU life: a missed poll of one bay, a stale register block for 1–2 samples."""
    n = len(ts)
    out = []
    groups = sorted({p["group"] for p in pts})
    for _ in range(int(len(ts) / 1440 * 1.2)):  # ~1.2 a day
        i = int(rng.integers(1, n - 3))
        g = groups[int(rng.integers(len(groups)))]
        cols = [j for j, p in enumerate(pts) if p["group"] == g]
        length = int(rng.integers(1, 3))
        if rng.random() < 0.5:
            values[i : i + length, cols] = np.nan
            what = "missed_poll"
        else:
            sub = [c for c in cols if rng.random() < 0.6] or cols[:1]
            values[i : i + length, sub] = values[i - 1, sub]
            cols, what = sub, "stale_block"
        out.append(
            {"what": what, "start": float(ts[i]), "samples": length, "points": [pts[c]["name"] for c in cols]}
        )
    return out


def _inject_sensor_faults(
    rng: np.random.Generator,
    values: np.ndarray,
    pts: list[dict[str, Any]],
    ts: np.ndarray,
    plan: list[dict[str, Any]],
    spm: float,
) -> None:
    names = [p["name"] for p in pts]
    for it in plan:
        if it["class"] != "sensor":
            continue
        j = names.index(it["target"])
        q = pts[j]["quantity"]
        res = _RESOLUTION[q]
        a, b = _i(ts, it["start"]), max(_i(ts, it["end"]), _i(ts, it["start"]) + 1)
        before = values[max(a - int(1440 * spm), 0) : a, j]
        level = float(np.nanmean(np.abs(before)))
        kind = it["kind"]
        if kind == "drift":
            hours = (ts[a:b] - ts[a]) / 3600.0
            values[a:b, j] = _quantise(values[a:b, j] + it["drift_pct_per_h"] / 100.0 * level * hours, res)
        elif kind == "scale":
            values[a:b, j] = _quantise(values[a:b, j] * it["factor"], res)
        elif kind == "stuck":
            good = before[~np.isnan(before)]
            values[a:b, j] = good[-1] if len(good) else level
        elif kind == "dropout":
            values[a:b, j] = np.nan
        elif kind == "flatline":
            values[a:b, j] = 0.0
        elif kind == "noisy":
            values[a:b, j] = _quantise(
                values[a:b, j] + rng.normal(0, it["noise_pct"] / 100.0 * level, b - a), res
            )
        elif kind in ("multi_spike", "lone_spike"):
            span = slice(a, b) if kind == "multi_spike" else slice(a, a + 1)
            ref = level if q not in ("voltage", "frequency", "temperature") else 0.0
            if q == "voltage":
                delta = it["magnitude"] * 0.15 * level
            elif q == "frequency":
                delta = it["magnitude"] * 0.8
            elif q == "temperature":
                delta = it["magnitude"] * 30.0
            else:
                delta = it["magnitude"] * max(ref, abs(float(np.nan_to_num(values[a, j]))))
            jitter = 1.0 + rng.normal(0, 0.15, len(range(*span.indices(len(ts)))))
            values[span, j] = _quantise(np.nan_to_num(values[span, j], nan=level) + delta * jitter, res)
        elif kind == "glitch":
            for name in it["points"]:
                jj = names.index(name)
                lvl = float(np.nanmean(np.abs(values[max(a - int(1440 * spm), 0) : a, jj])))
                hits = np.flatnonzero(rng.random(b - a) < 0.25) + a  # every ~4 min, one garbage sample
                garbage = np.where(rng.random(len(hits)) < 0.3, 0.0, lvl * rng.uniform(0.0, 2.5, len(hits)))
                values[hits, jj] = _quantise(garbage, _RESOLUTION[pts[jj]["quantity"]])


def main(argv: list[str] | None = None) -> int:
    """Print one site's set-up and its truth (a quick look at what a seed holds)."""
    ap = argparse.ArgumentParser(description="One site of the BDEW-profile family: its set-up and truth.")
    ap.add_argument("seed", nargs="?", type=int, default=HELDOUT_SEEDS[0])
    sc = generate(ap.parse_args(argv).seed)
    m = sc.meta
    print(f"seed={sc.seed} {m['season']} {m['state']} start={m['start']} T={len(sc.ts)} P={len(sc.points)} "
          f"ratings={m['ratings']} mva={m['mva']} pv={m['pv_mwp']} MWp glitches={len(m['glitches'])}")  # fmt: skip
    for t in sc.truth:
        extra = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in t.items()
                 if k not in ("kind", "class", "phase", "target", "group", "start", "end", "accept")}  # fmt: skip
        print(f"{t['phase']:5s} {t['class']:6s} {t['kind']:13s} {t['target']:7s} {iso_utc(t['start'])} "
              f"{(t['end'] - t['start']) / 60:7.1f} min {extra}")  # fmt: skip
    return 0


if __name__ == "__main__":  # quick look: python bench/realprofile.py 8000
    sys.exit(main())
