"""Alert policy: cooldowns, caps, suppression, silence, restore gating, persistence — exact expectations."""

from __future__ import annotations

import json

import pytest

from gridedge.config.models import AlertsSection
from gridedge.gateway.model import Event, EventKind
from gridedge.gateway.runtime.alert_policy import AlertPolicy

T0 = 1_780_000_000.0


def ev(kind: str, group: str, points: list[str] | None = None, t: float = T0) -> Event:
    return Event(kind=EventKind(kind), group=group, points=points or [f"{group}_I"], start=t, score=1.0)


def test_anomaly_cooldown_per_group_and_site_cap() -> None:
    pol = AlertPolicy(AlertsSection())
    assert pol.decide(ev("grid_anomaly", "F1"), T0) == "published"
    assert pol.decide(ev("grid_anomaly", "F1"), T0 + 60) == "cooldown"
    assert pol.decide(ev("grid_anomaly", "F1"), T0 + 3599) == "cooldown"
    assert pol.decide(ev("grid_anomaly", "F2"), T0 + 120) == "published"
    # site-wide cap: 2 anomaly alerts per sliding hour
    assert pol.decide(ev("grid_anomaly", "F3"), T0 + 180) == "rate_limited"
    assert pol.decide(ev("grid_anomaly", "F3"), T0 + 3600) == "published"  # F1's alert left the hour
    # F1's cooldown is over (1 h since its published alert), but F2's + F3's fill the hour
    assert pol.decide(ev("grid_anomaly", "F1"), T0 + 3601) == "rate_limited"
    assert pol.decide(ev("grid_anomaly", "F1"), T0 + 3720) == "published"
    assert pol.counts == {"published": 4, "cooldown": 2, "rate_limited": 2}


def test_held_back_events_do_not_start_a_cooldown() -> None:
    pol = AlertPolicy(AlertsSection())
    pol.suppress("F1", T0 + 600, "maintenance")
    assert pol.decide(ev("grid_anomaly", "F1"), T0) == "suppressed"
    assert pol.decide(ev("grid_anomaly", "F1"), T0 + 601) == "published"


def test_trip_cooldown_cap_and_restore_gating() -> None:
    pol = AlertPolicy(AlertsSection(trip_cooldown="30min", trip_per_hour=3))
    assert pol.decide(ev("feeder_restore", "F1"), T0) == "no_trip_sent"
    assert pol.decide(ev("feeder_trip", "F1"), T0) == "published"
    assert pol.decide(ev("feeder_trip", "F1"), T0 + 1799) == "cooldown"
    assert pol.decide(ev("feeder_restore", "F1"), T0 + 1800) == "published"
    assert pol.decide(ev("feeder_restore", "F1"), T0 + 1860) == "no_trip_sent"  # only once per trip
    assert pol.decide(ev("feeder_trip", "F2"), T0 + 10) == "published"
    assert pol.decide(ev("feeder_trip", "F3"), T0 + 20) == "published"
    assert pol.decide(ev("feeder_trip", "F4"), T0 + 30) == "rate_limited"
    # a rate-limited trip was never sent: its restore is not published either
    assert pol.decide(ev("feeder_restore", "F4"), T0 + 40) == "no_trip_sent"
    # trips and anomalies have separate caps
    assert pol.decide(ev("grid_anomaly", "F4"), T0 + 50) == "published"


def test_sensor_cooldown_is_per_point() -> None:
    pol = AlertPolicy(AlertsSection(sensor_cooldown="1h"))
    assert pol.decide(ev("sensor_fault", "F1", ["F1_I", "F1_P"]), T0) == "published"
    assert pol.decide(ev("sensor_fault", "F1", ["F1_I"]), T0 + 60) == "cooldown"
    assert pol.decide(ev("sensor_fault", "F1", ["F1_P", "F1_I"]), T0 + 60) == "published"
    assert pol.decide(ev("stale", "F1", ["F1_I"]), T0 + 60) == "published"  # stale has its own cooldown
    # sensor alerts have no site-wide cap and do not use the anomaly cap
    for i, p in enumerate(["F2_I", "F3_I", "F4_I", "T1_P"]):
        assert pol.decide(ev("sensor_fault", p[:2], [p]), T0 + 100 + i) == "published"
    assert pol.decide(ev("grid_anomaly", "F1"), T0 + 200) == "published"
    assert pol.decide(ev("sensor_fault", "F1", ["F1_I"]), T0 + 3600) == "published"


def test_suppression_targets_point_group_site_and_expiry() -> None:
    pol = AlertPolicy()
    pol.suppress("F2_P", T0 + 100)
    assert pol.decide(ev("sensor_fault", "F2", ["F2_P"]), T0) == "suppressed"
    assert pol.decide(ev("sensor_fault", "F2", ["F2_I"]), T0) == "published"
    pol.suppress("*", T0 + 50, "site test")
    assert pol.decide(ev("feeder_trip", "F3"), T0 + 10) == "suppressed"
    assert pol.decide(ev("feeder_trip", "F3"), T0 + 50) == "published"
    assert set(pol.suppressions(T0 + 60)) == {"F2_P"}
    assert pol.unsuppress("F2_P") and not pol.unsuppress("F2_P")
    assert pol.decide(ev("sensor_fault", "F2", ["F2_P"]), T0 + 60) == "published"


def test_silence_site_and_group() -> None:
    pol = AlertPolicy()
    pol.silence(T0 + 300)
    assert pol.decide(ev("feeder_trip", "F1"), T0) == "silenced"
    assert pol.decide(ev("feeder_trip", "F1"), T0 + 300) == "published"
    pol.silence(T0 + 1000, group="F2")
    assert pol.decide(ev("grid_anomaly", "F2"), T0 + 400) == "silenced"
    assert pol.decide(ev("grid_anomaly", "F3"), T0 + 400) == "published"


def test_zero_cap_blocks_everything_of_that_class() -> None:
    pol = AlertPolicy(AlertsSection(anomaly_per_hour=0))
    assert pol.decide(ev("grid_anomaly", "F1"), T0) == "rate_limited"
    assert pol.decide(ev("sensor_fault", "F1"), T0) == "published"


def test_state_round_trip_through_json() -> None:
    pol = AlertPolicy()
    pol.decide(ev("grid_anomaly", "F1"), T0)
    pol.decide(ev("feeder_trip", "F2"), T0)
    pol.suppress("F3", T0 + 900, "works")
    pol.silence(T0 + 30, group="F4")
    restored = AlertPolicy()
    restored.load(json.loads(json.dumps(pol.state())))
    assert restored.state() == pol.state()
    assert restored.decide(ev("grid_anomaly", "F1"), T0 + 10) == "cooldown"
    assert restored.decide(ev("grid_anomaly", "F3"), T0 + 10) == "suppressed"
    assert restored.decide(ev("grid_anomaly", "F4"), T0 + 10) == "silenced"
    assert restored.decide(ev("feeder_restore", "F2"), T0 + 10) == "published"
    with pytest.raises(ValueError, match="version"):
        restored.load({"version": 99})
