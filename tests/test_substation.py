"""The substation model: fixed API, determinism, physics that lets peers check each other, faults."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from gridedge.gateway.model import PointTable
from gridedge.protocols.simulators.substation import FAULT_KINDS, SubstationModel

T0 = 1_780_300_800.0  # 2026-06-01 08:00 UTC, a Monday
DAY = 86400.0


@pytest.fixture(scope="module")
def model() -> SubstationModel:
    return SubstationModel(seed=7)


def col(m: SubstationModel, v: np.ndarray, name: str) -> np.ndarray:
    return v[..., m.index(name)]


def test_points_api(model: SubstationModel) -> None:
    names = model.names()
    assert len(names) == len(set(names)) == 3 + 2 * 5 + 4 * 4
    for n in (
        "BUS_V",
        "FREQ",
        "BUS_INC_CB",
        "T1_P",
        "T1_Q",
        "T1_OIL",
        "T1_TAP",
        "T2_CB",
        "F4_I",
        "F3_P",
        "F2_Q",
        "F1_CB",
    ):
        assert n in names
    by = {p["name"]: p for p in model.points}
    assert by["BUS_V"]["nominal"] == 33 and by["BUS_V"]["protocol"] == "iec104"
    assert by["T2_OIL"]["protocol"] == "iec61850" and by["T2_OIL"]["group"] == "T2"
    assert by["F3_I"]["parent"] == "T2" and by["F1_I"]["parent"] == "T1" and by["F1_I"]["rating"] > 0
    assert {p["protocol"] for p in model.points} == {"modbus", "iec61850", "iec104"}
    for p in model.points:
        assert set(p) == {"name", "quantity", "unit", "group", "parent", "nominal", "rating", "protocol"}
    table = PointTable.from_specs(model.points)  # the specs are valid gridedge points
    assert len(table) == len(names)
    assert SubstationModel(frequency_hz=60).values_at(T0)[model.index("FREQ")] == pytest.approx(60, abs=0.2)


def test_deterministic_and_history_equals_values_at(model: SubstationModel) -> None:
    ts, v = model.history(T0, T0 + 2 * DAY, 60.0)
    assert ts.shape == (2 * 1440,) and v.shape == (2 * 1440, len(model.names()))
    _ts2, v2 = SubstationModel(seed=7).history(T0, T0 + 2 * DAY, 60.0)
    np.testing.assert_array_equal(v, v2)
    _, v3 = SubstationModel(seed=8).history(T0, T0 + 2 * DAY, 60.0)
    assert not np.array_equal(v, v3)
    for k in (0, 17, 1000, 2879):
        np.testing.assert_array_equal(model.values_at(ts[k]), v[k])
    # A different range / step still yields the same value at a shared time.
    _ts4, v4 = model.history(T0 + 3600.0, T0 + 7200.0, 1.0)
    k = int(np.searchsorted(ts, T0 + 3600.0))
    np.testing.assert_array_equal(v4[0], v[k])
    assert np.isfinite(v).all()


def test_history_is_fast() -> None:
    m = SubstationModel(seed=1)
    m.history(T0, T0 + DAY, 60.0)  # warm caches
    t = time.perf_counter()
    ts, _v = m.history(T0, T0 + 28 * DAY, 60.0)
    elapsed = time.perf_counter() - t
    assert len(ts) == 28 * 1440
    # ≈ 0.2 s on a quiet 2-CPU VM; the bound only catches a per-sample Python loop (10+ s) on a loaded CI box.
    assert elapsed < 3.0, f"4 weeks at 1-min took {elapsed:.2f}s"


def test_physics_is_consistent(model: SubstationModel) -> None:
    _ts, v = model.history(T0, T0 + 7 * DAY, 60.0)
    bus_v = col(model, v, "BUS_V")
    assert bus_v.min() > 31.0 and bus_v.max() < 35.0
    freq = col(model, v, "FREQ")
    assert abs(freq.mean() - 50.0) < 0.02 and 0.005 < freq.std() < 0.08
    for f in ("F1", "F2", "F3", "F4"):
        p, q, i = col(model, v, f"{f}_P"), col(model, v, f"{f}_Q"), col(model, v, f"{f}_I")
        s_from_i = math.sqrt(3) * bus_v * i / 1000.0
        rel = np.abs(np.hypot(p, q) - s_from_i) / s_from_i
        assert np.median(rel) < 0.005 and rel.max() < 0.03  # instrument class, not physics, limits it
        pf = p / np.hypot(p, q)
        assert pf.std() < 0.01 and 0.85 < pf.mean() < 0.97  # a steady power factor per feeder
    for tr, feeders in (("T1", ("F1", "F2")), ("T2", ("F3", "F4"))):
        losses = col(model, v, f"{tr}_P") - sum(col(model, v, f"{f}_P") for f in feeders)
        assert 0.0 < np.median(losses) < 0.4 and losses.min() > -0.1
        qloss = col(model, v, f"{tr}_Q") - sum(col(model, v, f"{f}_Q") for f in feeders)
        assert np.median(qloss) > 0
        assert np.array_equal(col(model, v, f"{tr}_TAP"), np.rint(col(model, v, f"{tr}_TAP")))
    # Load shapes: commercial F2 peaks on weekday middays and rests at night and on weekends.
    ts, _ = model.history(T0, T0 + 7 * DAY, 60.0)
    f2 = col(model, v, "F2_P")
    local_h = ((ts + 7200) % DAY) / 3600  # CEST in June
    weekday = ((np.floor((ts + 7200) / DAY).astype(int) + 3) % 7) < 5
    assert f2[weekday & (local_h > 11) & (local_h < 15)].mean() > 2 * f2[(local_h > 1) & (local_h < 4)].mean()
    assert (
        f2[weekday & (local_h > 11) & (local_h < 15)].mean()
        > 1.5 * f2[~weekday & (local_h > 11) & (local_h < 15)].mean()
    )
    # The bus sags with load; the tap changer takes the sag back in steps.
    load = col(model, v, "T1_P") + col(model, v, "T2_P")
    tap = col(model, v, "T1_TAP") - 9
    assert np.corrcoef(load, bus_v / 33.0 - tap * 0.0125)[0, 1] < -0.6  # upstream wander blurs it
    assert np.corrcoef(load, tap)[0, 1] > 0.5
    # Oil follows load with lag, above ambient.
    oil = col(model, v, "T1_OIL")
    assert oil.min() > 5 and oil.max() < 80


def baseline_and_faulted(kind: str, target: str, start: float, duration: float, **params):
    base = SubstationModel(seed=11)
    faulted = SubstationModel(seed=11)
    rec = faulted.inject(kind, target, start, duration, **params)
    ts, vb = base.history(start - 3600, start + duration + 3 * 3600, 10.0)
    _, vf = faulted.history(start - 3600, start + duration + 3 * 3600, 10.0)
    return faulted, rec, ts, vb, vf


@pytest.mark.parametrize("kind", ["stuck", "drift", "scale", "dropout", "spike"])
def test_sensor_faults_touch_only_their_point(kind: str) -> None:
    start, dur = T0 + 3 * 3600, 1800.0 if kind != "spike" else 1.0
    m, rec, ts, vb, vf = baseline_and_faulted(kind, "F2_I", start, dur)
    assert rec["class"] == "sensor" and rec["points"] == ["F2_I"] and m.faults == [rec]
    i = m.index("F2_I")
    others = np.ones(vb.shape[1], bool)
    others[i] = False
    np.testing.assert_array_equal(vf[:, others], vb[:, others])  # peers keep telling the truth
    inside = (ts >= rec["start"]) & (ts < rec["end"])
    assert inside.sum() >= 1
    np.testing.assert_array_equal(vf[~inside, i], vb[~inside, i])  # before and after: the truth again
    got, true = vf[inside, i], vb[inside, i]
    if kind == "stuck":
        assert np.unique(got).size == 1 and np.unique(true).size > 5
    elif kind == "drift":
        d = got - true
        assert d[-1] > 5 * max(abs(d[0]), 0.1) and np.all(np.diff(d) >= -1e-9)
    elif kind == "scale":
        np.testing.assert_allclose(got, true * 10)
    elif kind == "dropout":
        assert np.isnan(got).all()
    else:
        assert inside.sum() == 1 and abs(got[0] - true[0]) > 2 * abs(true[0])


def test_overload_trip_moves_the_related_points() -> None:
    start, dur = T0 + 2 * 3600, 900.0
    m, rec, ts, vb, vf = baseline_and_faulted("overload_trip", "F1_I", start, dur)
    assert rec["class"] == "grid" and rec["group"] == "F1" and "T1_P" in rec["points"]
    c = m.index
    rating = next(p["rating"] for p in m.points if p["name"] == "F1_I")
    before_end = (ts >= rec["end"] - 30) & (ts < rec["end"])
    assert vf[before_end, c("F1_I")].min() > 1.3 * rating
    after = ts >= rec["end"]
    assert (vf[after, c("F1_CB")] == 0).all() and (vf[ts < start, c("F1_CB")] == 1).all()
    assert vf[after, c("F1_I")].max() < 1.0 and np.abs(vf[after, c("F1_P")]).max() < 0.01
    drop = vb[after, c("T1_P")] - vf[after, c("T1_P")]
    np.testing.assert_allclose(drop, vb[after, c("F1_P")], atol=0.15)  # T1 loses F1's load (+ its losses)
    np.testing.assert_array_equal(vf[:, c("F3_P")], vb[:, c("F3_P")])  # T2's feeders do not care
    np.testing.assert_array_equal(vf[:, c("T2_P")], vb[:, c("T2_P")])
    assert (vf[after, c("T1_CB")] == 1).all()


def test_load_drop_thermal_runaway_frequency_dip() -> None:
    start, dur = T0 + 4 * 3600, 3600.0
    m, rec, ts, vb, vf = baseline_and_faulted("load_drop", "F2", start, dur)
    c = m.index
    inside = (ts >= start + 60) & (ts < rec["end"])
    ratio = vf[inside, c("F2_P")] / vb[inside, c("F2_P")]
    assert 0.3 < ratio.mean() < 0.5  # lost 60 %
    assert (vb[inside, c("T1_P")] - vf[inside, c("T1_P")]).mean() > 0.5 * vb[inside, c("F2_P")].mean()
    # The oil of T1 cools slowly (3 h time constant), not in a step.
    d_oil = vb[:, c("T1_OIL")] - vf[:, c("T1_OIL")]
    assert (
        d_oil[(ts >= start) & (ts < start + 300)].mean()
        < d_oil[(ts >= rec["end"] - 300) & (ts < rec["end"])].mean()
    )

    m, rec, ts, vb, vf = baseline_and_faulted("thermal_runaway", "T1", start, dur, rise=35.0)
    c = m.index
    end_win = (ts >= rec["end"] - 60) & (ts < rec["end"])
    assert (vf[end_win, c("T1_OIL")] - vb[end_win, c("T1_OIL")]).mean() > 30
    others = [i for i in range(vb.shape[1]) if i != c("T1_OIL")]
    np.testing.assert_array_equal(vf[:, others], vb[:, others])  # the load does not explain it

    m, rec, ts, vb, vf = baseline_and_faulted("frequency_dip", "BUS", start, 120.0, depth=0.6)
    c = m.index
    inside = (ts >= start) & (ts < rec["end"])
    assert vf[inside, c("FREQ")].min() < 50.0 - 0.45
    after = ts >= rec["end"]
    np.testing.assert_array_equal(vf[after, c("FREQ")], vb[after, c("FREQ")])  # recovered


def test_inject_validates() -> None:
    m = SubstationModel()
    assert set(FAULT_KINDS) >= {"overload_trip", "thermal_runaway", "frequency_dip", "load_drop", "stuck"}
    with pytest.raises(ValueError):
        m.inject("meltdown", "F1", T0, 10)
    with pytest.raises(ValueError):
        m.inject("stuck", "NOPE", T0, 10)
    with pytest.raises(ValueError):
        m.inject("overload_trip", "T1", T0, 10)
    with pytest.raises(ValueError):
        m.inject("scale", "F1_P", T0, 10, wrong=1)
    assert m.faults == []
    rec = m.inject("scale", "F1_P", T0, 10, factor=0.1)
    assert rec["factor"] == 0.1 and rec["end"] == T0 + 10 and m.faults == [rec]


def test_local_time_and_dst() -> None:
    """Shapes follow local time: the evening peak stays at ~19:00 local across the spring DST change."""
    m = SubstationModel(seed=2)
    dst = 1_774_746_000.0  # 2026-03-29 01:00 UTC, Europe/Berlin jumps from +1 h to +2 h
    ts, v = m.history(dst - 3 * DAY, dst + 3 * DAY, 60.0)
    for k in (0, len(ts) // 2 - 1, len(ts) // 2, len(ts) - 1):
        np.testing.assert_array_equal(m.values_at(ts[k]), v[k])
    f1 = col(m, v, "F1_P")  # residential
    # Local midnights: Fri 2026-03-27 00:00 CET = 03-26 23:00 UTC; Mon 2026-03-30 00:00 CEST = 03-29 22:00 UTC.
    day = int(DAY // 60)
    i_fri = int(np.searchsorted(ts, dst - 2 * DAY - 2 * 3600))
    i_mon = int(np.searchsorted(ts, dst + 21 * 3600))
    fri = f1[i_fri : i_fri + day]
    mon_local = f1[i_mon : i_mon + day]  # aligned on local time
    mon_utc = f1[i_mon + 60 : i_mon + 60 + day]  # aligned on UTC (what ignoring DST would do)
    assert np.abs(fri - mon_local).mean() < 0.7 * np.abs(fri - mon_utc).mean()
    peak_local_hour = np.argmax(mon_local) / 60
    assert 17.5 <= peak_local_hour <= 21.0


def test_values_at_from_several_threads() -> None:
    """The 61850 / 104 simulator servers may read the model from their own threads."""
    from concurrent.futures import ThreadPoolExecutor

    m = SubstationModel(seed=4)
    m.inject("load_drop", "F3", T0 + 100, 600)
    times = [T0 + 37.0 * k for k in range(160)]  # crosses many 5-min oil grid windows
    expected = SubstationModel(seed=4)
    expected.inject("load_drop", "F3", T0 + 100, 600)
    ref = np.array([expected.values_at(t) for t in times])
    with ThreadPoolExecutor(4) as pool:
        got = np.array(list(pool.map(m.values_at, times)))
    np.testing.assert_array_equal(got, ref)
