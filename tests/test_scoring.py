"""Scoring: EW statistics against a slow oracle, DST slots, restart, sensor faults, grid rules, trips."""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.gateway.model import EventKind, PointTable, ReadingBatch
from gridedge.scoring import Detector, SlotClock
from gridedge.scoring import kernel as K
from gridedge.scoring.baseline import (
    ew_score_update_numba,
    ew_score_update_numpy,
    ew_score_update_python,
    new_baseline,
)
from tests.fixtures_scoring import SPECS, STEP, T0, batches, make_data, table

TAU = 30 * 86400.0


# ---------------------------------------------------------------------------------------------------
# EW statistics: numba kernel == pure Python == slow weighted-sum oracle
# ---------------------------------------------------------------------------------------------------
def _oracle(ts: np.ndarray, xs: np.ndarray, tau: float) -> tuple[float, float, float]:
    """Weighted mean / population variance / total weight with weights exp(-(t_last - t_i)/tau)."""
    w = np.exp(-(ts[-1] - ts) / tau)
    m = float(np.sum(w * xs) / np.sum(w))
    v = float(np.sum(w * (xs - m) ** 2) / np.sum(w))
    return m, v, float(np.sum(w))


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.integers(0, 2),  # point
            st.integers(0, 3),  # slot
            st.floats(0.0, 20 * 86400.0),  # time gap
            st.floats(-1e3, 1e3, allow_nan=False),
        ),
        min_size=1,
        max_size=60,
    ),
    tau_days=st.sampled_from([0.5, 3.0, 30.0]),
)
def test_ew_statistics_match_slow_oracle(data, tau_days):
    tau = tau_days * 86400.0
    P = 3
    pidx = np.array([d[0] for d in data], np.int32)
    slot = np.array([d[1] for d in data], np.int16)
    ts = 1.7e9 + np.cumsum([d[2] for d in data])
    val = np.array([d[3] for d in data])
    ok = np.ones(len(data), np.bool_)
    floor = np.full(P, 1e-3)
    st_nb = new_baseline(P, 4)
    st_py = new_baseline(P, 4)
    z_nb = np.empty(len(data))
    z_py = np.empty(len(data))
    ew_score_update_numba(slot, pidx, ts, val, ok, *st_nb.values(), floor, 2.0, tau, z_nb)
    ew_score_update_python(slot, pidx, ts, val, ok, *st_py.values(), floor, 2.0, tau, z_py)
    for k in st_nb:
        np.testing.assert_allclose(st_nb[k], st_py[k], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(z_nb, z_py, rtol=1e-9, atol=1e-9, equal_nan=True)
    for p in range(P):
        for s in range(4):
            sel = (pidx == p) & (slot == s)
            if not sel.any():
                assert st_nb["n"][s, p] == 0
                continue
            m, v, w = _oracle(ts[sel], val[sel], tau)
            scale = max(1.0, float(np.max(np.abs(val[sel]))))
            assert st_nb["mean"][s, p] == pytest.approx(m, rel=1e-6, abs=1e-6 * scale)
            assert st_nb["var"][s, p] == pytest.approx(v, rel=1e-5, abs=1e-6 * scale * scale)
            assert st_nb["n"][s, p] == pytest.approx(w, rel=1e-6)


def test_numpy_twin_matches_kernel_for_one_cycle():
    rng = np.random.default_rng(3)
    P = 500
    a, b = new_baseline(P), new_baseline(P)
    floor = np.full(P, 0.01)
    z1, z2 = np.empty(P), np.empty(P)
    for c in range(30):
        pidx = rng.permutation(P).astype(np.int32)
        slot = np.full(P, c % 168, np.int16)
        ts = np.full(P, 1.7e9 + 3600.0 * c)
        val = rng.normal(10, 2, P)
        ok = rng.random(P) > 0.1
        ew_score_update_numba(slot, pidx, ts, val, ok, *a.values(), floor, 2.0, TAU, z1)
        ew_score_update_numpy(slot, pidx, ts, val, ok, *b.values(), floor, 2.0, TAU, z2)
        np.testing.assert_allclose(z1, z2, rtol=1e-12, equal_nan=True)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Slots: local hour-of-week, DST aware
# ---------------------------------------------------------------------------------------------------
def _ts(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


def test_slots_monday_midnight_local_is_zero():
    clock = SlotClock("Europe/Berlin")
    # Monday 2026-06-01 00:30 CEST = 2026-05-31 22:30 UTC
    assert clock.slots(np.array([_ts("2026-05-31T22:30:00")]))[0] == 0
    assert SlotClock("UTC").slots(np.array([T0 + 1800]))[0] == 0


def test_slots_dst_spring_forward_and_fall_back():
    clock = SlotClock("Europe/Berlin")
    # 2026-03-29 (Sunday): 01:00 UTC clocks jump 02:00 CET → 03:00 CEST
    spring = clock.slots(np.array([_ts("2026-03-29T00:59:00"), _ts("2026-03-29T01:00:00")]))
    assert list(spring) == [6 * 24 + 1, 6 * 24 + 3]  # 01:59 CET, then 03:00 CEST: local 02:xx never exists
    # 2026-10-25 (Sunday): 01:00 UTC clocks fall 03:00 CEST → 02:00 CET; local 02:xx happens twice
    fall = clock.slots(np.array([_ts("2026-10-25T00:30:00"), _ts("2026-10-25T01:30:00")]))
    assert list(fall) == [6 * 24 + 2, 6 * 24 + 2]
    # a mixed batch across the transition agrees with per-reading lookups
    ts = _ts("2026-10-24T20:00:00") + np.arange(0, 12 * 3600, 600.0)
    bulk = clock.slots(ts)
    single = [SlotClock("Europe/Berlin").slots(np.array([t]))[0] for t in ts]
    assert list(bulk) == single


def test_slots_of_a_live_batch_equal_the_general_path():
    # A poll batch carries one timestamp for all its readings: slots_frac computes it once. Same slot and
    # the same fraction, bit for bit, as the per-bucket path, across both DST changes and odd seconds.
    clock = SlotClock("Europe/Berlin")
    times = _ts("2026-03-29T00:59:59.25") + np.arange(0, 48 * 3600, 1234.567)
    times = np.r_[times, _ts("2026-10-25T00:30:00") + np.arange(0, 3 * 3600, 99.9), 0.0, 1.5]
    gen_slot, gen_frac = clock.slots_frac(np.r_[times, times[-1] + 1.0])  # not uniform: general path
    for i, t in enumerate(times):
        slot, frac = clock.slots_frac(np.full(1000, t))
        assert slot.dtype == np.int16 and (slot == gen_slot[i]).all() and (frac == gen_frac[i]).all()
    mixed = np.full(1000, times[5])
    mixed[700] += 3600.0  # equal ends and middle, one reading an hour later: not uniform
    slot, _ = clock.slots_frac(mixed)
    assert slot[700] == (slot[0] + 1) % 168 and (np.delete(slot, 700) == slot[0]).all()


# ---------------------------------------------------------------------------------------------------
# Detector helpers
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def history():
    return make_data(days=22, seed=1)


@pytest.fixture(scope="module")
def warmed_state(history):
    ts, v = history
    det = Detector(table(), timezone="UTC")
    det.warm(ts, v)
    det.calibrate()
    return det.state_arrays()


def _fresh_warm(warmed_state) -> Detector:
    det = Detector(table(), timezone="UTC")
    det.load_state(*warmed_state)
    return det


def _run(det: Detector, ts: np.ndarray, v: np.ndarray) -> list:
    events = []
    for b in batches(ts, v):
        events += det.process(b)
    return events


def _drop(v: np.ndarray, feeder: str, factor: float, rows: slice) -> None:
    """Scale a feeder's load by ``factor`` and let the transformer follow (as physics does)."""
    names = [s["name"] for s in SPECS]
    for q, tq, k in (("P", "T1_P", 1.01), ("Q", "T1_Q", 1.03)):
        j = names.index(f"{feeder}_{q}")
        v[rows, names.index(tq)] -= k * v[rows, j] * (1.0 - factor)
    for q in ("I", "P", "Q"):
        v[rows, names.index(f"{feeder}_{q}")] *= factor


def _continuation(hours: float, seed: int = 7):
    ts, v = make_data(days=22 + hours / 24.0, seed=seed)
    k = int(22 * 86400 / STEP)
    return ts[k:], v[k:].copy()


def test_warm_equals_process_learning_path():
    ts, v = make_data(days=3, seed=2)
    a = Detector(table(), timezone="Europe/Berlin")
    a.warm(ts, v)
    b = Detector(table(), timezone="Europe/Berlin")
    _run(b, ts, v)
    sa, _ = a.state_arrays()
    sb, _ = b.state_arrays()
    for k in ("mean", "var", "n", "last", "rf", "zhist", "cal_ep"):
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_healthy_data_raises_nothing(warmed_state):
    det = _fresh_warm(warmed_state)
    ts, v = _continuation(12)
    events = _run(det, ts, v)
    assert events == []
    status = det.group_status()
    assert set(status) == {"BUS", "T1", "F1", "F2", "F3"}
    assert all(s["state"] != "anomaly" for s in status.values())
    assert status["F1"]["state"] in ("normal", "elevated") and status["F1"]["threshold"] > 0


# ---------------------------------------------------------------------------------------------------
# Sensor faults: each kind is a sensor_fault naming the faulty point, never a grid anomaly
# ---------------------------------------------------------------------------------------------------
def _inject(kind: str, v: np.ndarray, j: int, a: int, b: int) -> None:
    if kind == "stuck":
        v[a:b, j] = v[a - 1, j]
    elif kind == "spike":
        v[a, j] = v[a, j] * 1.8
    elif kind == "multi_spike":  # four bad readings, then back where it was
        v[a : a + 4, j] = v[a : a + 4, j] * 1.8
    elif kind == "scale":
        v[a:b, j] *= 10.0
    elif kind == "scale_down":
        v[a:b, j] *= 0.1
    elif kind == "range":
        v[a:b, j] = -50.0
    elif kind == "dropout":
        v[a:b, j] = np.nan
    elif kind == "drift":
        v[a:b, j] *= np.linspace(1.0, 1.15, b - a)
    elif kind == "drift_q":  # reactive power: its only strong peer is the transformer's Q (loss model)
        v[a:b, j] *= np.linspace(1.0, 1.10, b - a)


@pytest.mark.parametrize(
    ("kind", "point", "rule"),
    [
        ("stuck", "F1_P", "stuck"),
        ("spike", "F2_I", "spike"),
        ("multi_spike", "F1_P", "multi_spike"),
        ("scale", "F1_I", "scale_error"),
        ("scale_down", "F3_P", "scale_error"),
        ("range", "BUS_V", "out_of_range"),
        ("dropout", "F2_Q", "dropout"),
        ("drift", "F3_I", "peer_drift"),
        ("drift_q", "F2_Q", "peer_drift"),
        ("drift_q", "T1_Q", "peer_drift"),
    ],
)
def test_sensor_fault_kinds_are_sensor_faults(warmed_state, kind, point, rule):
    det = _fresh_warm(warmed_state)
    ts, v = _continuation(10)
    j = [s["name"] for s in SPECS].index(point)
    a, b = 120, 120 + 6 * 60
    _inject(kind, v, j, a, b)
    events = _run(det, ts, v)
    sensor = [e for e in events if e.kind == EventKind.SENSOR_FAULT and e.points[0] == point]
    assert sensor, (
        f"no sensor_fault for {point}: {[(e.kind, e.points, e.explanation['rule']) for e in events]}"
    )
    assert sensor[0].explanation["rule"] == rule
    assert ts[a] - 60 <= sensor[0].start <= ts[b - 1]
    assert point in sensor[0].explanation["points"]
    assert not [e for e in events if e.kind == EventKind.GRID_ANOMALY], "a sensor fault was misread as grid"
    assert not [e for e in events if e.kind == EventKind.SENSOR_FAULT and e.points[0] != point]
    json.dumps(sensor[0].to_dict())  # explanations are JSON-able


def test_sum_relations_learn_the_transformer_losses(warmed_state):
    """T1_Q = 1.03·ΣQ + 0.1 in the fixture: the loss model predicts it to well under 1 %."""
    det = _fresh_warm(warmed_state)
    rel = det.relations
    k = next(i for i, key in enumerate(rel.keys) if key.startswith("sum_q:"))
    members = rel.rel_pt[rel.rel_ptr[k] : rel.rel_ptr[k + 1]]
    assert {det.points[int(m)].name for m in members} == {
        "T1_Q",
        "F1_Q",
        "F2_Q",
        "F3_Q",
        "F1_P",
        "F2_P",
        "F3_P",
    }
    rf = det.state["rf"][k]
    assert rf[K.RF_N] >= det.prm[K.PR_REL_MIN_N2]
    assert math.sqrt(rf[K.RF_VAR]) < 0.005
    assert rf[K.RF_B1] == pytest.approx(0.03, abs=0.01)


def test_stuck_fault_ends_when_the_value_moves_again(warmed_state):
    """A stuck fault must not hold its own relations unusable after the sensor recovers."""
    det = _fresh_warm(warmed_state)
    ts, v = _continuation(10)
    j = [s["name"] for s in SPECS].index("F1_I")
    _inject("stuck", v, j, 120, 120 + 4 * 60)
    events = _run(det, ts, v)
    assert [e for e in events if e.kind == EventKind.SENSOR_FAULT and e.points[0] == "F1_I"]
    ended = [e for e in det.ended_events() if e.kind == EventKind.SENSOR_FAULT and e.points[0] == "F1_I"]
    assert ended and ended[-1].end <= ts[120 + 5 * 60]
    assert det.state["pi"][j, K.PI_FAULT] == 0 and det.state["pi"][j, K.PI_COND] == 0


def test_state_v2_is_migrated_with_cold_sum_relations(warmed_state):
    arrays, meta = warmed_state
    old = dict(arrays)
    old["rf"] = arrays["rf"][:, :7]  # gridedge-scoring/2 had 7 relation columns (a plain ratio)
    det = Detector(table(), timezone="UTC")
    det.load_state(old, meta | {"version": "gridedge-scoring/2"})
    sums = np.isin(det.relations.rel_type, [K.REL_SUMP, K.REL_SUMQ])
    assert sums.any() and (~sums).any()
    assert (det.state["rf"][sums] == 0).all()
    np.testing.assert_array_equal(det.state["rf"][~sums, :7], arrays["rf"][~sums, :7])
    ts, v = _continuation(3)
    assert _run(det, ts, v) == []  # the cold relations relearn quietly


# ---------------------------------------------------------------------------------------------------
# Grid: rules from the first minute, composite incidents, trips
# ---------------------------------------------------------------------------------------------------
def test_grid_rules_work_cold():
    det = Detector(table(), timezone="UTC", frequency_hz=50.0)
    ts, v = make_data(days=0.1, seed=4, t0=T0 + 12 * 3600)  # midday: F1 carries ~150 A
    col = [s["name"] for s in SPECS]
    v[30:40, col.index("BUS_V")] = 33.0 * 0.88  # 12 % under nominal
    v[50:60, col.index("FREQ")] = 49.3
    v[70:80, col.index("F1_I")] = 460.0  # rating 400
    events = _run(det, ts, v)
    rules = {(e.group, e.explanation["rule"]) for e in events if e.kind == EventKind.GRID_ANOMALY}
    assert ("BUS", "voltage_band_alarm") in rules
    assert ("BUS", "frequency_band_alarm") in rules
    assert ("F1", "over_rating") in rules
    volt = next(e for e in events if e.explanation["rule"] == "voltage_band_alarm")
    assert volt.start == ts[30]  # start = first anomalous reading, reported after two cycles
    assert volt.points[0] == "BUS_V"


def test_one_cycle_excursion_is_not_an_event():
    det = Detector(table(), timezone="UTC")
    ts, v = make_data(days=0.05, seed=4)
    v[30, [s["name"] for s in SPECS].index("BUS_V")] = 33.0 * 0.85
    assert [e for e in _run(det, ts, v) if e.kind == EventKind.GRID_ANOMALY] == []


def test_load_incident_is_grid_anomaly_with_explanation(warmed_state):
    det = _fresh_warm(warmed_state)
    ts, v = _continuation(6)
    a = 120
    _drop(v, "F2", 0.4, slice(a, None))  # F2 loses 60 % of its load
    events = _run(det, ts, v)
    grid = [e for e in events if e.kind == EventKind.GRID_ANOMALY]
    assert grid and grid[0].group == "F2", [(e.kind, e.group, e.points) for e in events]
    assert not [e for e in events if e.kind == EventKind.SENSOR_FAULT]
    e = grid[0]
    assert ts[a] <= e.start <= ts[a + 5]
    ex = e.explanation
    assert ex["rule"] == "composite" and 0 <= ex["slot"] < 168 and ex["summary"]
    fig = ex["points"][e.points[0]]
    assert set(fig) == {"value", "expected", "baseline_mean", "baseline_std", "z"}
    assert fig["z"] < -3 and fig["value"] < fig["expected"]


def _unreachable_thresholds(det: Detector) -> None:
    det._thr_cons = det._thr_min = 1e6  # calibration keeps them there too
    det.state["gf"][:, K.GF_THR] = 1e6


def test_coherent_feeder_drop_is_an_anomaly_at_any_threshold(warmed_state):
    """A heavy-tailed history can push a feeder's calibrated threshold to its cap; a drop that moves
    all its load quantities far the same way is still an incident."""
    det = _fresh_warm(warmed_state)
    _unreachable_thresholds(det)
    ts, v = _continuation(6)
    _drop(v, "F2", 0.4, slice(120, None))
    events = _run(det, ts, v)
    grid = [e for e in events if e.kind == EventKind.GRID_ANOMALY]
    assert grid and grid[0].group == "F2" and grid[0].explanation["rule"] == "composite"
    assert ts[120] <= grid[0].start <= ts[125]
    healthy = _fresh_warm(warmed_state)
    _unreachable_thresholds(healthy)
    ts, v = _continuation(12)
    assert _run(healthy, ts, v) == []


def test_feeder_trip_and_restore(warmed_state):
    det = _fresh_warm(warmed_state)
    ts, v = _continuation(4)
    names = [s["name"] for s in SPECS]
    a, b = 60, 120
    v[a:b, names.index("F3_CB")] = 0.0
    _drop(v, "F3", 0.0, slice(a, b))
    events = _run(det, ts, v)
    trips = [e for e in events if e.kind == EventKind.FEEDER_TRIP]
    restores = [e for e in events if e.kind == EventKind.FEEDER_RESTORE]
    assert len(trips) == 1 and trips[0].group == "F3" and trips[0].start == ts[a]
    assert trips[0].points[0] == "F3_CB"
    assert trips[0].explanation["points"]["F3_I"]["value"] > 10  # the load just before the opening
    assert len(restores) == 1 and restores[0].start == ts[b] and restores[0].end == ts[b]
    ended = det.ended_events()
    assert trips[0] in ended and trips[0].end == ts[b]
    # an open breaker is not a stuck sensor nor a grid anomaly of the feeder
    assert not [
        e for e in events if e.kind in (EventKind.SENSOR_FAULT, EventKind.GRID_ANOMALY) and e.group == "F3"
    ]


def test_breaker_opening_without_load_is_not_a_trip(warmed_state):
    det = _fresh_warm(warmed_state)
    ts, v = _continuation(2)
    names = [s["name"] for s in SPECS]
    _drop(v, "F3", 0.0, slice(40, None))
    v[60:, names.index("F3_CB")] = 0.0
    events = _run(det, ts, v)
    assert not [e for e in events if e.kind == EventKind.FEEDER_TRIP]


def test_suppression_blocks_new_events(warmed_state):
    det = _fresh_warm(warmed_state)
    ts, v = _continuation(3)
    v[30:40, [s["name"] for s in SPECS].index("BUS_V")] = 33.0 * 0.85
    det.suppress("BUS", until=float(ts[-1]) + 1)
    assert [e for e in _run(det, ts, v) if e.group == "BUS"] == []
    with pytest.raises(KeyError):
        det.suppress("NOPE", until=1.0)


# ---------------------------------------------------------------------------------------------------
# Persistence: restart resumes with identical scores
# ---------------------------------------------------------------------------------------------------
def _roundtrip(arrays: dict[str, np.ndarray], meta: dict) -> tuple[dict[str, np.ndarray], dict]:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf) as z:
        back = {k: z[k] for k in z.files}
    return back, json.loads(json.dumps(meta))


def test_restart_resumes_with_identical_scores(warmed_state):
    ts, v = _continuation(8, seed=11)
    names = [s["name"] for s in SPECS]
    v[200:260, names.index("F1_I")] *= 10  # a fault spanning the restart
    v[230:300, names.index("BUS_V")] = 33 * 0.89
    ref = _fresh_warm(warmed_state)
    ref_events, ref_scores = [], []
    half = 240
    for k, b in enumerate(batches(ts, v)):
        ref_events += ref.process(b)
        if k >= half:
            ref_scores.append({g: s["score"] for g, s in ref.group_status().items()})
    ref_ended = ref.ended_events()

    first = _fresh_warm(warmed_state)
    events = []
    for b in batches(ts[:half], v[:half]):
        events += first.process(b)
    arrays, meta = _roundtrip(*first.state_arrays())
    assert arrays["mean"].shape == (168, len(SPECS)) and set(meta["points"]) == set(names)
    second = Detector(table(), timezone="UTC")
    second.load_state(arrays, meta)
    scores = []
    for b in batches(ts[half:], v[half:]):
        events += second.process(b)
        scores.append({g: s["score"] for g, s in second.group_status().items()})
    assert scores == ref_scores
    key = [(e.kind, e.group, tuple(e.points), e.start, e.score) for e in events]
    assert key == [(e.kind, e.group, tuple(e.points), e.start, e.score) for e in ref_events]
    ended = first.ended_events() + second.ended_events()
    assert sorted((e.kind, e.start, e.end) for e in ended) == sorted(
        (e.kind, e.start, e.end) for e in ref_ended
    )
    assert any(e.end is not None and e.start < ts[half] for e in ended)  # an event opened before the restart


def test_load_state_matches_points_by_name(warmed_state):
    arrays, meta = warmed_state
    specs = [s for s in SPECS if s["name"] != "F2_Q"] + [
        {"name": "F4_I", "quantity": "current", "group": "F4", "parent": "T1", "rating": 300.0}
    ]
    det = Detector(PointTable.from_specs(specs), timezone="UTC")
    det.load_state(arrays, meta)
    s, _ = det.state_arrays()
    old = meta["points"].index("F1_I")
    new = det.points.index_of("F1_I")
    np.testing.assert_array_equal(s["mean"][:, new], arrays["mean"][:, old])
    assert np.all(s["n"][:, det.points.index_of("F4_I")] == 0)


def test_fleet_prior_fills_cold_slots_and_tags_events():
    det = Detector(table(), timezone="UTC")
    shape = np.ones((168, 9))
    det.apply_prior({"shape": shape, "spread": np.full(9, 0.05)}, version="fleet-7")
    ts, v = make_data(days=0.1, seed=5)
    _run(det, ts, v)
    s, _ = det.state_arrays()
    j = det.points.index_of("F1_P")
    assert np.all(s["n"][:, j] > 0) and math.isclose(
        float(np.median(s["mean"][:, j])), float(np.median(v[:, j])), rel_tol=0.3
    )
    ts2 = ts[-1] + STEP * np.arange(1, 8)
    v2 = np.repeat(v[-1:], 7, axis=0)
    _drop(v2, "F1", 0.3, slice(None))
    events = _run(det, ts2, v2)
    grid = [e for e in events if e.kind == EventKind.GRID_ANOMALY]
    assert grid and grid[0].model_version == "fleet-7"


def test_fleet_prior_is_reanchored_on_the_points_own_day():
    """A flat fleet shape is wrong for a feeder with a daily swing: after a day of its own data the
    filled slots of the next day take its own same-hour means (the fleet only scales between days)."""
    det = Detector(table(), timezone="UTC")
    det.apply_prior({"shape": np.ones((168, 9)), "spread": np.full(9, 0.3)}, version="fleet-8")
    ts, v = make_data(days=1.3, seed=6)
    _run(det, ts, v)
    det.calibrate()  # recalibration re-anchors (it also runs every 6 h of data on its own)
    s = det.state
    j = det.points.index_of("F1_P")
    mask = s["prior_mask"][:, j]
    # Monday (slot 0 = Monday 00:00 UTC here) hours the point has learned itself, whose Tuesday slot
    # (from 08:00 on: not reached yet) is still prior-filled
    hours = [h for h in range(8, 24) if mask[h] == 0 and mask[24 + h] > 0 and s["n"][h, j] >= 20]
    assert len(hours) >= 4, mask[:48]
    own = s["mean"][hours, j]
    nxt = s["mean"][[24 + h for h in hours], j]
    # the flat prior put every hour at the level; re-anchored, Tuesday repeats Monday's own profile
    assert np.allclose(nxt, own, rtol=0.02)
    assert np.ptp(nxt) > 0.1 * float(np.mean(own))


def test_prior_mask_of_an_old_float_state_converts_on_load():
    """Before state v3 ``prior_mask`` held epoch seconds as float64; now int32 seconds since 2020 rounded
    up. A slot filled at ``t`` and not read since must stay prior-filled after the conversion, and the
    baseline statistics load into float32."""
    from gridedge.scoring.prior import PRIOR_EPOCH

    det = Detector(table(), timezone="UTC")
    det.apply_prior({"shape": np.ones((168, 9)), "spread": np.full(9, 0.1)}, version="fleet-9")
    ts, v = make_data(days=0.05, seed=7)
    _run(det, ts, v)
    arrays, meta = det.state_arrays()
    assert arrays["mean"].dtype == np.float32 and arrays["prior_mask"].dtype == np.int32
    filled = arrays["prior_mask"] > 0
    assert filled.any()
    old = {k: (a.astype(np.float64) if k in ("mean", "var", "n") else a) for k, a in arrays.items()}
    old["prior_mask"] = np.where(filled, arrays["prior_mask"] + PRIOR_EPOCH - 0.4, 0.0)  # float epoch
    fresh = Detector(table(), timezone="UTC")
    fresh.load_state(old, meta)
    np.testing.assert_array_equal(fresh.state["prior_mask"], arrays["prior_mask"])
    np.testing.assert_array_equal(fresh.state["mean"], arrays["mean"])
    assert fresh.state["mean"].dtype == np.float32


def test_silent_device_is_one_stale_event_not_sensor_faults():
    from gridedge.gateway.model import Point, Quantity

    pts = PointTable(
        [
            Point(0, "V", Quantity.VOLTAGE, group="BUS", device="rtu", nominal=33.0),
            Point(1, "F", Quantity.FREQUENCY, group="BUS", device="rtu"),
            Point(2, "I", Quantity.CURRENT, group="F1", device="ied", rating=300.0),
            Point(3, "P", Quantity.ACTIVE_POWER, group="F1", device="ied"),
            Point(4, "CB", Quantity.STATUS, group="F1", device="ied"),
        ]
    )
    det = Detector(pts, timezone="Europe/Berlin", frequency_hz=60.0)
    t = 1.7e9
    events = []
    for k in range(300):
        rtu = np.array([33.1 + 0.01 * math.sin(k), 60.0 + 0.01 * math.sin(k / 3)])
        events += det.process(ReadingBatch.uniform(np.array([0, 1], np.int32), rtu, ts=t + k))
        if k < 150 or k >= 250:  # the IED is silent for 100 s
            ied = np.array([100 + math.sin(k / 7), 5.5 + 0.05 * math.sin(k / 7), 1.0])
            events += det.process(ReadingBatch.uniform(np.array([2, 3, 4], np.int32), ied, ts=t + k + 0.3))
    assert [(e.kind, e.explanation["rule"]) for e in events] == [(EventKind.STALE, "device_stale")]
    assert set(events[0].points) == {"I", "P", "CB"} and t + 150 <= events[0].start <= t + 160
    ended = det.ended_events()
    assert ended == events and t + 250 <= ended[0].end <= t + 252


def test_defaults_mirror_the_config_section():
    from gridedge.config.models import ScoringSection
    from gridedge.scoring.detector import ScoringDefaults

    cfg, dflt = ScoringSection(), ScoringDefaults()
    for name in ScoringDefaults.__dataclass_fields__:
        if name != "suppress":
            got = getattr(cfg, name)
            assert (tuple(got) if isinstance(got, list | tuple) else got) == getattr(dflt, name), name
