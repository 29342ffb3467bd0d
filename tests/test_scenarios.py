"""The labelled scenario generator (bench/scenarios.py): deterministic, physically consistent, labels true."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from bench.detection_eval import grid_episodes, score, sensor_pieces
from bench.scenarios import generate, readings, to_csv
from gridedge.gateway.cli.replay import parse_readings
from gridedge.gateway.model import Event, EventKind, PointTable


@pytest.fixture(scope="module")
def sc():
    return generate(11, days=21, incidents_in_last_days=14)


def test_deterministic_and_seed_dependent(sc) -> None:
    again = generate(11, days=21, incidents_in_last_days=14)
    assert np.array_equal(sc.values, again.values, equal_nan=True)
    assert sc.truth == again.truth
    other = generate(12, days=21, incidents_in_last_days=14)
    assert not np.array_equal(sc.values, other.values, equal_nan=True)


def test_points_table_and_truth_shape(sc) -> None:
    table = PointTable.from_specs(sc.points)
    assert {"BUS", "T1", "T2", "F1", "F2", "F3", "F4"} == set(table.groups)
    assert all(p["parent"] in ("T1", "T2") for p in sc.points if p["group"].startswith("F"))
    test = sc.test_truth()
    kinds = sorted(t["kind"] for t in test)
    assert kinds.count("overload_trip") == 3 and kinds.count("spike") == 2 and "heat_day" in kinds
    assert all(sc.eval_start <= t["start"] <= t["end"] <= sc.ts[-1] for t in test)
    assert all(t["phase"] == "train" and t["end"] < sc.eval_start for t in sc.truth if t not in test)
    spans = sorted((t["start"], t["end"]) for t in sc.truth)
    assert all(b[0] > a[1] for a, b in itertools.pairwise(spans)), "incidents never overlap"
    for t in sc.truth:
        if t["class"] == "sensor":
            assert t["target"] in sc.names and sc.points[sc.col(t["target"])]["group"] == t["group"]
        if t["class"] == "grid":
            assert t["group"] in t["accept"]


def test_physics_is_consistent(sc) -> None:
    v = sc.values
    clean = np.ones(len(sc.ts), bool)
    for t in sc.truth:  # compare outside faults
        clean &= ~((sc.ts >= t["start"] - 3600) & (sc.ts <= t["end"] + 3600))
    c = sc.col
    # transformer power = its feeders' + small losses; currents follow S / (√3 · 11 kV)
    tp = v[clean, c("T1_P")] - v[clean, c("F1_P")] - v[clean, c("F2_P")]
    assert np.nanmedian(tp) == pytest.approx(0.03, abs=0.03) and np.nanmax(np.abs(tp)) < 0.3
    s = np.hypot(v[clean, c("F3_P")], v[clean, c("F3_Q")])
    i_calc = s / (math.sqrt(3) * 11.0) * 1000
    assert np.nanmedian(np.abs(v[clean, c("F3_I")] / i_calc - 1)) < 0.01
    assert np.nanmin(v[clean, c("FREQ")]) > 49.8 and np.nanmax(v[clean, c("FREQ")]) < 50.2
    assert np.nanmin(v[clean, c("BUS_V")]) > 31.0 and np.nanmax(v[clean, c("BUS_V")]) < 35.0
    # the bus voltage sags with load
    load = v[clean, c("T1_P")] + v[clean, c("T2_P")]
    ok = ~np.isnan(load) & ~np.isnan(v[clean, c("BUS_V")])
    assert np.corrcoef(load[ok], v[clean, c("BUS_V")][ok])[0, 1] < -0.5
    # weekday residential evening peak above the night
    hours = ((sc.ts[clean] + 7200) % 86400) / 3600  # CEST
    f1 = v[clean, c("F1_P")]
    assert np.nanmean(f1[(hours > 19) & (hours < 20.5)]) > 1.5 * np.nanmean(f1[(hours > 2) & (hours < 4)])


def test_incidents_are_in_the_data(sc) -> None:
    v, c = sc.values, sc.col
    for t in sc.truth:
        a = int(np.searchsorted(sc.ts, t["start"]))
        b = int(np.searchsorted(sc.ts, t["end"]))
        if t["kind"] == "overload_trip":
            tr = int(np.searchsorted(sc.ts, t["trip"]))
            g = t["group"]
            rating = sc.points[c(f"{g}_I")]["rating"]
            if t.get("variant") == "relative":  # ramps to 1.25–1.8 × its normal, never to the rating
                assert np.nanmax(v[a:tr, c(f"{g}_I")]) < rating
                assert np.nanmax(v[tr - 3 : tr, c(f"{g}_I")]) > 1.1 * np.nanmedian(v[a - 30 : a, c(f"{g}_I")])
            else:
                assert np.nanmax(v[a:tr, c(f"{g}_I")]) > rating
            assert np.all(v[tr + 1 : b - 1, c(f"{g}_CB")][~np.isnan(v[tr + 1 : b - 1, c(f"{g}_CB")])] == 0)
            assert np.nanmax(v[tr + 1 : b - 1, c(f"{g}_I")]) == 0
        elif t["kind"] == "stuck":
            seg = v[a:b, c(t["target"])]
            assert np.nanmax(seg) == np.nanmin(seg)
        elif t["kind"] == "dropout":
            assert np.isnan(v[a:b, c(t["target"])]).all()
        elif t["kind"] == "scale":
            ratio = np.nanmedian(v[a:b, c(t["target"])]) / np.nanmedian(v[a - 120 : a, c(t["target"])])
            assert 1 / 3 < ratio / t["factor"] < 3  # ×10 / ×0.1 against a load that keeps moving
        elif t["kind"] == "frequency":
            assert 50.0 - np.nanmin(v[a : a + 5, c("FREQ")]) > 0.15


def test_csv_round_trip(sc, tmp_path) -> None:
    n = to_csv(sc, tmp_path / "r.csv", tmp_path / "p.json", t_to=sc.ts[0] + 86400)
    parsed = parse_readings(tmp_path / "r.csv", PointTable.from_specs(sc.points))
    pj, ts, val, q = readings(sc, t_to=sc.ts[0] + 86400)
    assert len(parsed) == n == len(ts)
    assert np.array_equal(parsed.point_idx, pj) and np.array_equal(parsed.ts, ts)
    assert np.array_equal(parsed.value, val) and np.array_equal(parsed.quality, q)


def test_scoring_rules_on_hand_made_alerts(sc) -> None:
    """The eval's episode and matching rules, with alerts placed by hand on the truth."""
    test = sc.test_truth()
    trip = next(t for t in test if t["kind"] == "overload_trip")
    fault = next(t for t in test if t["kind"] == "stuck")

    def ev(kind: str, group: str, t: float, point: str = "") -> Event:
        return Event(kind=EventKind(kind), group=group, points=[point or f"{group}_I"], start=t, score=1.0)

    alerts = [
        ev("grid_anomaly", trip["group"], trip["trip"] - 900),  # 15 min lead
        ev("grid_anomaly", trip["group"], trip["trip"] - 600),  # < 10 min later: same episode
        ev("feeder_trip", trip["group"], trip["trip"]),
        ev("grid_anomaly", "BUS", sc.eval_start + 60),  # nothing happens then: a false episode
        ev("sensor_fault", fault["group"], fault["start"] + 1800, fault["target"]),
        ev("sensor_fault", fault["group"], fault["start"] + 1800 + 3000, fault["target"]),  # new piece
        ev("sensor_fault", fault["group"], fault["start"] + 1800 + 3000 + 500, fault["target"]),  # same piece
        ev("sensor_fault", "F1", sc.eval_start + 120, "F1_Q"),  # matches no fault
        ev("grid_anomaly", fault["group"], fault["start"] + 600),  # false and over a fault: misread
    ]
    assert len(grid_episodes(alerts)) == 4
    assert len(sensor_pieces(alerts)) == 3
    r = score(sc, alerts)
    assert r["per_kind"]["overload_trip"][0] >= 1 and r["leads"][0] == pytest.approx(15.0)
    assert r["per_kind"]["stuck"][0] == 1
    assert r["false_grid"] == 2 and r["misread"] == 1
    assert r["false_sensor"] == 1


def test_too_short_a_scenario_is_refused_with_a_clear_error():
    # 14 days with incidents in the last 14 leaves no training window; this used to fail deep inside
    # numpy ("high - low < 0")
    with pytest.raises(ValueError, match="must exceed incidents_in_last_days"):
        generate(0, days=14, incidents_in_last_days=14)


def test_a_scenario_without_training_faults_may_be_all_evaluation():
    sc = generate(3, days=3, incidents_in_last_days=3, train_kinds=())
    assert sc.values.shape[0] > 0
