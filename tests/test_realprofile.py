"""The BDEW-profile substation family (bench/realprofile.py): shapes, DST, holidays, labels, determinism."""

from __future__ import annotations

import itertools
import sys
from datetime import date, timedelta
from pathlib import Path

import holidays as holidays_lib
import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baselines import ewma_alerts, roc_alerts, threshold_alerts
from bench.detection_eval import score
from bench.realprofile import HELDOUT_SEEDS, SENSOR_KINDS, TUNING_SEEDS, generate
from bench.scenarios import Scenario, points_spec
from gridedge.gateway.model import Event, EventKind

SEEDS = (TUNING_SEEDS[0], TUNING_SEEDS[1])


@pytest.fixture(scope="module")
def sites() -> dict[int, Scenario]:
    return {s: generate(s) for s in SEEDS}


def _local(sc: Scenario) -> pd.DatetimeIndex:
    return pd.to_datetime(sc.ts, unit="s", utc=True).tz_convert(sc.timezone)


def test_shapes_and_point_table(sites) -> None:
    for sc in sites.values():
        assert sc.values.shape == (42 * 1440, len(points_spec()))
        assert sc.names == [p["name"] for p in points_spec()]
        assert np.all(np.diff(sc.ts) == 60.0)
        assert sc.quality.dtype == np.uint8 and not sc.quality.any()
        assert sc.eval_days == pytest.approx(14.0)
        # ratings are set for this site's feeders and transformers, sized above the normal peak
        for f in ("F1", "F2", "F3", "F4"):
            rating = sc.points[sc.col(f"{f}_I")]["rating"]
            normal = sc.values[sc.ts < sc.eval_start, sc.col(f"{f}_I")]
            assert np.nanpercentile(normal, 99) < 0.75 * rating
        assert 0.02 < np.isnan(sc.values).mean() * 100 < 2.0  # lost polls, glitches, dropouts: rare


def test_dst_change_inside_and_loads_follow_wall_clock(sites) -> None:
    for sc in sites.values():
        loc = _local(sc)
        offsets = {t.utcoffset() for t in loc[::60]}
        assert offsets == {timedelta(hours=1), timedelta(hours=2)}
        # the commercial feeder wakes up at the same LOCAL hour before and after the change
        off = np.array([t.utcoffset().total_seconds() for t in loc])
        p = sc.values[:, sc.col("F2_P")]
        workday = loc.day_of_week < 5
        hour = loc.hour
        for o in np.unique(off):
            sel = (off == o) & workday
            day = np.nanmedian(p[sel & (hour == 11)])
            night = np.nanmedian(p[sel & (hour == 3)])
            assert day > 2.0 * night, (o, day, night)


def test_public_holiday_behaves_like_a_sunday(sites) -> None:
    checked = 0
    for sc in sites.values():
        loc = _local(sc)
        hol = holidays_lib.Germany(subdiv=sc.meta["state"], years=loc[0].year)
        days = sorted({d for d in loc.date if d in hol and d.weekday() < 5})
        assert days, f"a workday holiday lies in the period ({sc.meta['state']}, {sc.meta['season']})"
        p = sc.values[:, sc.col("F2_P")]
        midday = (loc.hour >= 10) & (loc.hour < 14)
        for d in days:
            ref = [d - timedelta(days=7), d + timedelta(days=7)]
            ref = [r for r in ref if r in set(loc.date) and r not in hol]
            on = np.nanmean(p[midday & (loc.date == d)])
            normal = np.nanmean(np.concatenate([p[midday & (loc.date == r)] for r in ref]))
            assert on < 0.6 * normal, (d, on, normal)
            checked += 1
    assert checked >= 2


def test_pv_lowers_active_power_not_reactive_on_f1(sites) -> None:
    for sc in sites.values():
        loc = _local(sc)
        p, q = sc.values[:, sc.col("F1_P")], sc.values[:, sc.col("F1_Q")]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = q / p
        noon = np.nanmedian(ratio[(loc.hour >= 12) & (loc.hour < 14)])
        evening = np.nanmedian(ratio[(loc.hour >= 20) & (loc.hour < 22)])
        assert noon > 1.15 * evening, (noon, evening)


def test_labels_are_sane(sites) -> None:
    for sc in sites.values():
        test = sc.test_truth()
        kinds = sorted(t["kind"] for t in test)
        assert kinds.count("overload_trip") == 3 and kinds.count("lone_spike") == 2
        assert {"load_drop", "thermal", "voltage_sag", "drift", "scale", "stuck", "glitch"} <= set(kinds)
        assert all(sc.eval_start <= t["start"] <= t["end"] <= sc.ts[-1] for t in test)
        assert all(t["end"] < sc.eval_start for t in sc.truth if t["phase"] == "train")
        spans = sorted((t["start"], t["end"]) for t in sc.truth)
        assert all(b[0] > a[1] for a, b in itertools.pairwise(spans)), "incidents never overlap"
        for t in sc.truth:
            if t["class"] == "grid":
                assert t["group"] in t["accept"]
            else:
                assert sc.points[sc.col(t["target"])]["group"] == t["group"]
                assert t.get("should_alert", True) is (t["kind"] != "lone_spike")
                for name in t.get("points", [t["target"]]):
                    assert sc.points[sc.col(name)]["group"] == t["group"]


def test_overloads_ramp_against_the_normal_load_then_trip(sites) -> None:
    week = 7 * 1440
    for sc in sites.values():
        for t in sc.test_truth():
            if t["kind"] != "overload_trip":
                continue
            j = sc.col(f"{t['group']}_I")
            tr = int(np.searchsorted(sc.ts, t["trip"]))
            at = np.nanmedian(sc.values[tr - 4 : tr - 1, j])
            normal = np.nanmedian(sc.values[tr - 4 - week : tr - 1 - week, j])  # same hour last week
            assert 1.05 < at / normal < 2.3, (t, at, normal)
            after = sc.values[tr + 2 : tr + 10, :]
            cb = np.nanmax(after[:, sc.col(f"{t['group']}_CB")])
            if t["residual"] == 0:
                assert cb == 0 and np.nanmax(after[:, j]) == 0
            else:
                assert cb == 1 and 0 < np.nanmedian(after[:, j]) < 0.7 * at
        crosses = [
            t["crosses_rating"] for s in sites.values() for t in s.test_truth() if "crosses_rating" in t
        ]
        assert sum(crosses) <= len(crosses) // 2, "overloads mostly stay below the rating"


def test_sensor_faults_are_in_the_readings(sites) -> None:
    for sc in sites.values():
        for t in sc.test_truth():
            if t["class"] != "sensor":
                continue
            j = sc.col(t["target"])
            a, b = np.searchsorted(sc.ts, [t["start"], t["end"]])
            x = sc.values[:, j]
            if t["kind"] == "stuck":
                assert np.nanmax(x[a + 1 : b]) == np.nanmin(x[a + 1 : b])
            elif t["kind"] == "flatline":
                assert np.all(x[a + 1 : b][~np.isnan(x[a + 1 : b])] == 0)
            elif t["kind"] == "dropout":
                assert np.isnan(x[a + 1 : b]).all()
            elif t["kind"] == "lone_spike":
                around = np.nanmedian(np.r_[x[a - 5 : a], x[a + 1 : a + 6]])
                jump = abs(x[a] - around)
                assert jump > 5 * np.nanstd(np.diff(x[a - 60 : a])), t
                assert abs(x[a + 1] - around) < jump / 3


def test_deterministic_by_seed() -> None:
    a, b = generate(HELDOUT_SEEDS[0]), generate(HELDOUT_SEEDS[0])
    assert np.array_equal(a.values, b.values, equal_nan=True)
    assert a.truth == b.truth and a.meta == b.meta
    c = generate(HELDOUT_SEEDS[1])
    assert not np.array_equal(a.values, c.values, equal_nan=True)
    assert date.fromtimestamp(a.ts[0]).year in (2025, 2026)


def _ev(kind: EventKind, group: str, points: list[str], t: float) -> Event:
    return Event(kind=kind, group=group, points=points, start=t, score=1.0, explanation={})


def test_harness_scores_lone_spikes_glitches_and_found_vs_named(sites) -> None:
    sc = sites[SEEDS[0]]
    test = sc.test_truth()
    lone = [t for t in test if t["kind"] == "lone_spike"]
    glitch = next(t for t in test if t["kind"] == "glitch")
    drop = next(t for t in test if t["kind"] == "load_drop")
    base = score(sc, [])
    assert base["lone_total"] == 2 and base["lone_alerted"] == 0
    assert base["sensor_total"] == len(SENSOR_KINDS) - 2, "lone spikes are not faults to find"
    assert base["grid_found"] == base["grid_detected"] == 0
    wrong_group = next(g for g in ("F1", "F2", "F3", "F4", "BUS") if g not in drop["accept"])
    alerts = [
        # a sensor alert on a lone spike: alerted, and a false sensor piece
        _ev(EventKind.SENSOR_FAULT, lone[0]["group"], [lone[0]["target"]], lone[0]["start"] + 60),
        # the glitch named by its SECOND point
        _ev(EventKind.SENSOR_FAULT, glitch["group"], [glitch["points"][1]], glitch["start"] + 120),
        # a grid alert during the load drop naming the wrong group: found, not named, a false episode
        _ev(EventKind.GRID_ANOMALY, wrong_group, [f"{wrong_group}_I"], drop["start"] + 60),
    ]
    r = score(sc, alerts)
    assert r["lone_alerted"] == 1
    assert r["found"]["glitch"] == 1 and r["per_kind"]["glitch"] == [1, 1]
    assert r["found"]["load_drop"] == 1 and r["per_kind"]["load_drop"][0] == 0
    assert r["false_grid"] == 1 and r["false_sensor"] == 1
    assert r["grid_found"] == 1 and r["grid_detected"] == 0


def test_baselines_fire_on_what_they_watch(sites) -> None:
    sc = sites[SEEDS[0]]
    trips = [t for t in sc.test_truth() if t["kind"] == "overload_trip" and t["residual"] == 0]
    dropouts = [t for t in sc.test_truth() if t["kind"] == "dropout"]
    thr = threshold_alerts(sc.points, sc.ts, sc.values)
    for t in trips:  # a breaker that opens is an alarm on every platform
        assert any(a.kind == EventKind.FEEDER_TRIP and a.group == t["group"] and abs(a.start - t["trip"]) < 120
                   for a in thr)  # fmt: skip
    for t in dropouts:  # ThingsBoard's inactivity timeout
        assert any(a.kind == EventKind.STALE and a.points == [t["target"]] and t["start"] <= a.start <= t["end"]
                   for a in thr)  # fmt: skip
    for fn in (lambda: roc_alerts(sc.points, sc.ts, sc.values, sc.eval_start),
               lambda: ewma_alerts(sc.points, sc.ts, sc.values)):  # fmt: skip
        alerts = fn()
        assert alerts and all(a.kind == EventKind.GRID_ANOMALY for a in alerts)
        per_hour: dict[int, int] = {}
        for a in alerts:
            per_hour[int(a.start // 3600)] = per_hour.get(int(a.start // 3600), 0) + 1
        assert max(per_hour.values()) <= 2 * 2, "the 2/hour cap (sliding) holds"
