"""Transformer thermal model: cooling failure (grid), heat day (nothing), oil-sensor drift (sensor fault)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from gridedge.gateway.model import PointTable, ReadingBatch
from gridedge.scoring import Detector
from gridedge.scoring import kernel as K

T0 = 1_780_272_000.0  # 2026-06-01 00:00 UTC, a Monday
STEP = 60.0
DAYS = 10
SPECS = [
    {"name": f"{t}_{q}", "quantity": qq, "unit": u, "group": t, "rating": 16.0 if q != "OIL" else 95.0}
    for t in ("T1", "T2")
    for q, qq, u in (
        ("P", "active_power", "MW"),
        ("Q", "reactive_power", "Mvar"),
        ("OIL", "temperature", "C"),
    )
]
NAMES = [s["name"] for s in SPECS]
COL = {n: i for i, n in enumerate(NAMES)}
EVENT_DAY = 8.4  # incidents start here (day 8 + 9.6 h)


def _lag(x: np.ndarray, tau_steps: float) -> np.ndarray:
    a = math.exp(-1.0 / tau_steps)
    y = np.empty_like(x)
    s = x[0]
    for i, v in enumerate(x):
        s = a * s + (1.0 - a) * v
        y[i] = s
    return y


def make_site(incident: str | None, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Two 16 MVA transformers sharing the weather; oil = ambient + IEC top-oil rise through a 150-min lag."""
    rng = np.random.default_rng(seed)
    n = int(DAYS * 86400 / STEP)
    ts = T0 + np.arange(n) * STEP
    h = (ts % 86400) / 3600.0
    day = (ts - T0) / 86400.0
    amb = (
        18.0
        + 6.0 * np.cos(2 * math.pi * (h - 15.0) / 24.0)
        + np.repeat(rng.normal(0, 2.0, DAYS + 1), 1440)[:n]
    )
    amb += np.convolve(rng.normal(0, 0.1, n + 119), np.ones(120) / 11.0, "valid")
    a0 = int(EVENT_DAY * 1440)
    if incident == "heat_day":
        env = np.clip(1.0 - np.abs(day - EVENT_DAY - 0.5) / 0.5, 0.0, 1.0)
        amb = amb + 9.0 * env
    v = np.zeros((n, len(SPECS)))
    for k, t in enumerate(("T1", "T2")):
        shape = 0.45 + 0.25 * np.sin(2 * math.pi * (h - 9 - 3 * k) / 24)
        load = shape * (1 + 0.02 * np.maximum(amb - 20.0, 0.0)) * (1 + 0.02 * rng.normal(size=n))
        s = 16.0 * load
        extra = np.zeros(n)
        if incident == "thermal" and t == "T1":
            extra[a0 : a0 + 240] = 18.0  # cooling fails for 4 h: +18 °C in steady state
        rise = 48.0 * ((load**2 * 5.0 + 1.0) / 6.0) ** 0.8
        oil = _lag(amb + rise + extra, 150.0) + rng.uniform(-1, 1) + rng.normal(0, 0.15, n)
        v[:, COL[f"{t}_P"]] = np.round(s * 0.95, 3)
        v[:, COL[f"{t}_Q"]] = np.round(s * 0.31, 3)
        v[:, COL[f"{t}_OIL"]] = np.round(oil, 1)
    if incident == "drift":
        v[a0 : a0 + 420, COL["T1_OIL"]] += np.linspace(0.0, 6.0, 420)  # 0.86 °C/h, a creeping sensor
    elif incident == "drift_down":
        v[a0 : a0 + 420, COL["T2_OIL"]] -= np.linspace(0.0, 6.0, 420)  # reads low: T1 looks high against it
    return ts, v


def run(incident: str | None) -> tuple[Detector, list]:
    ts, v = make_site(incident)
    det = Detector(PointTable.from_specs(SPECS), timezone="Europe/Berlin")
    split = int((EVENT_DAY - 1.0) * 1440)
    det.warm(ts[:split], v[:split])
    det.calibrate()
    events = []
    P = len(SPECS)
    for a in range(split, len(ts), 60):  # hourly batches
        b = min(a + 60, len(ts))
        m = b - a
        batch = ReadingBatch(
            np.tile(np.arange(P, dtype=np.int32), m),
            np.repeat(ts[a:b], P),
            v[a:b].ravel(),
            np.zeros(m * P, np.uint8),
        )
        events += det.process(batch)
    return det, events


def _grid(events, group):
    return [e for e in events if str(e.kind) == "grid_anomaly" and e.group == group]


def test_thermal_model_is_warm_and_tracks_the_oil():
    det, _ = run(None)
    th = det.state["th"]
    assert det.thermal.names == ["T1", "T2"]
    assert (th[:, K.TH_LT] >= 2 * 86400).all()
    # a healthy site: the model explains the oil (ambient cancels) to well under a degree
    assert (th[:, K.TH_SD] < 0.6).all()


def test_cooling_failure_is_a_grid_anomaly_naming_the_transformer():
    _, events = run("thermal")
    t_fail = T0 + EVENT_DAY * 86400
    hits = [e for e in _grid(events, "T1") if t_fail - 600 <= e.start <= t_fail + 4 * 3600]
    assert hits, [(e.kind, e.group, e.explanation.get("rule")) for e in events]
    ev = hits[0]
    assert ev.start - t_fail < 3600  # seen within the first hour of a 150-min thermal lag
    assert ev.points[0] == "T1_OIL"
    assert ev.explanation["rule"] == "thermal_model"
    th = ev.explanation["thermal"]
    assert th["point"] == "T1_OIL" and th["peers"] == ["T2"]
    assert th["measured"] - th["modelled"] == pytest.approx(th["residual"])
    assert th["residual"] > 1.0
    assert 0.1 < th["load_pu"] < 1.5 and "T1_P" in th["load_from"]
    assert "cooling failure" in ev.explanation["summary"] and "T1_OIL" in ev.explanation["summary"]
    assert not _grid(events, "T2")  # the other transformer's oil looks low relative to T1: not an incident
    assert not [e for e in events if str(e.kind) == "sensor_fault"]


def test_heat_day_raises_no_thermal_anomaly():
    _, events = run("heat_day")
    assert not _grid(events, "T1") and not _grid(events, "T2")
    assert not [e for e in events if str(e.kind) == "sensor_fault"]


def test_oil_sensor_drift_is_a_sensor_fault_naming_the_point():
    _, events = run("drift")
    sens = [e for e in events if str(e.kind) == "sensor_fault"]
    assert sens, [(e.kind, e.group, e.explanation.get("rule")) for e in events]
    assert sens[0].points[0] == "T1_OIL"
    assert sens[0].explanation["rule"] == "thermal_model_drift"
    assert "drifting" in sens[0].explanation["summary"]
    assert not _grid(events, "T1") and not _grid(events, "T2")


def test_downward_oil_drift_is_named_on_the_oil_that_moved(monkeypatch):
    """T2 reading low looks exactly like T1 reading high in the leave-one-out residual.

    Which oil moved is told by each oil against its own hour-of-week expectation, so this site runs
    three weeks (the slots need ~2 visits) before the drift.
    """
    monkeypatch.setattr(sys.modules[__name__], "DAYS", 24)
    monkeypatch.setattr(sys.modules[__name__], "EVENT_DAY", 22.4)
    _, events = run("drift_down")
    sens = [e for e in events if str(e.kind) == "sensor_fault"]
    assert sens, [(e.kind, e.group, e.explanation.get("rule")) for e in events]
    assert [e.points[0] for e in sens] == ["T2_OIL"]
    assert sens[0].explanation["rule"] == "thermal_model_drift"
    assert "crept down" in sens[0].explanation["summary"]
    t_start = T0 + 22.4 * 86400
    assert t_start <= sens[0].start <= t_start + 7 * 3600
    assert not _grid(events, "T1") and not _grid(events, "T2")


def test_state_v1_is_migrated_with_cold_thermal_models():
    det, _ = run(None)
    arrays, meta = det.state_arrays()
    old = {k: v for k, v in arrays.items() if k != "th"}
    old["pf"] = old["pf"][:, :24]  # gridedge-scoring/1 had 24 per-point columns
    meta1 = {k: v for k, v in meta.items() if k != "thermal"} | {"version": "gridedge-scoring/1"}
    fresh = Detector(PointTable.from_specs(SPECS), timezone="Europe/Berlin")
    fresh.load_state(old, meta1)
    assert np.array_equal(fresh.state["mean"], arrays["mean"])
    assert (fresh.state["th"][:, K.TH_LT] == 0).all()
    assert (fresh.state["pf"][:, K.PF_CMG] == 1.0).all()
    again = Detector(PointTable.from_specs(SPECS), timezone="Europe/Berlin")
    again.load_state(arrays, meta)
    assert np.array_equal(again.state["th"], arrays["th"], equal_nan=True)
    with pytest.raises(ValueError):
        again.load_state(arrays, meta | {"version": "gridedge-scoring/0"})
