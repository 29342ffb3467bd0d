"""The demo summary's matching of alerts to injected incidents (no servers: synthetic events and faults)."""

from __future__ import annotations

import io

from rich.console import Console

from gridedge.gateway.cli import demo
from gridedge.gateway.cli.demo import MATCH_TOLERANCE_S, incident_label, match_incidents
from gridedge.gateway.model import Event, EventKind
from gridedge.protocols.simulators.substation import SubstationModel

T0 = 1_800_000_000.0


def _faults() -> tuple[list[dict], dict[str, str | None]]:
    model = SubstationModel(seed=7)
    model.inject("overload_trip", "F2", T0 + 8, 30.0)
    model.inject("stuck", "F3_I", T0 + 12, 45.0)
    model.inject("thermal_runaway", "T1", T0 + 34, 40.0)
    model.inject("frequency_dip", "BUS", T0 + 20, 12.0)
    return model.faults, {p["group"]: p.get("parent") for p in model.points}


def _ev(kind: EventKind, group: str, point: str, at: float) -> Event:
    return Event(kind, group, [point], T0 + at, 1.0, {"summary": f"{kind} {point}"})


def test_each_alert_answers_the_incident_at_its_place_and_time() -> None:
    faults, parents = _faults()
    events = [
        (_ev(EventKind.FEEDER_TRIP, "F2", "F2_CB", 39.0), "published"),  # after the window, within tolerance
        (_ev(EventKind.SENSOR_FAULT, "F3", "F3_I", 13.0), "published"),
        (_ev(EventKind.GRID_ANOMALY, "F2", "F2_I", 26.0), "published"),
        (_ev(EventKind.GRID_ANOMALY, "T2", "T2_P", 26.0), "published"),  # only a sensor fault below T2 (F3_I)
        (_ev(EventKind.GRID_ANOMALY, "BUS", "FREQ", 21.0), "cooldown"),
        (
            _ev(EventKind.SENSOR_FAULT, "F2", "F2_Q", 8.0 + 30 + MATCH_TOLERANCE_S + 5),
            "published",
        ),  # too late
    ]
    out = match_incidents(events, faults, parents)
    # time order
    assert [ev.start for ev, _, _ in out] == sorted(ev.start for ev, _ in events)
    by_point = {ev.points[0]: fault for ev, _, fault in out}
    assert by_point["F3_I"]["kind"] == "stuck"
    assert by_point["F2_I"]["kind"] == "overload_trip"
    assert by_point["F2_CB"]["kind"] == "overload_trip"
    assert by_point["FREQ"]["kind"] == "frequency_dip"
    assert by_point["T2_P"] is None and by_point["F2_Q"] is None


def test_a_transformer_alert_answers_a_feeder_incident_below_it() -> None:
    faults, parents = _faults()  # F2 hangs off T1
    (_ev_out, _, fault), *_ = match_incidents([(_ev(EventKind.GRID_ANOMALY, "T1", "T1_P", 10.0), "published")],
                                         faults, parents)  # fmt: skip
    assert fault is not None and fault["kind"] == "overload_trip"


def test_summary_lists_answers_false_alerts_and_missed(tmp_path, monkeypatch) -> None:
    faults, parents = _faults()
    events = [
        (_ev(EventKind.SENSOR_FAULT, "F3", "F3_I", 13.0), "published"),
        (
            _ev(EventKind.SENSOR_FAULT, "F2", "F2_I", 9.0),
            "published",
        ),  # a grid incident called a sensor fault
        (_ev(EventKind.GRID_ANOMALY, "T2", "T2_P", 26.0), "published"),
        (_ev(EventKind.GRID_ANOMALY, "BUS", "FREQ", 21.0), "cooldown"),
    ]

    class _Cfg:
        devices = ()

    monkeypatch.setattr(demo, "read_status", lambda db: {"devices": {}, "readings": 5})
    buf = io.StringIO()
    demo._summary(
        {"events": events, "faults": faults, "start": T0, "stop": T0 + 60, "cfg": _Cfg(), "parents": parents},
        str(tmp_path / "x.db"),
        Console(file=buf, width=200),
    )
    out = buf.getvalue()
    assert "what gridedge found" in out
    assert f"answers: {incident_label(faults[1], T0)}" in out  # stuck on F3_I injected at 00:00:12
    assert "stuck on F3_I injected at 00:00:12" in out
    assert "misclassified: that was a grid incident" in out
    assert "no injected incident (false alert)" in out
    assert "detected, not alerted (policy: cooldown)" in out  # the frequency dip
    assert (
        "missed: thermal runaway on T1 injected at 00:00:34 (window until 00:01:14, past the demo's end at 00:01:00)"
        in out
    )
    assert (
        "4 injected incidents: 2 answered by an alert, 2 missed; 3 alerts: 2 answer an injected incident, 1 false"
        in out
    )
