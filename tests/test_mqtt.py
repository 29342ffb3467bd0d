"""The MQTT bridge against a real mosquitto: topics and payloads (validated against docs/mqtt-schemas),
retained status and last will of a killed bridge process, deadband/integrity, commands with broker ACLs,
TLS with a CA made by the test."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures_mqtt import (
    BridgeProcess,
    Broker,
    Collector,
    make_certs,
    publish_one,
    retained,
    run_broker,
    validator,
    wait_until,
)

from gridedge.config.models import MqttSection
from gridedge.gateway.model import Event, EventKind, PointTable, Quality, ReadingBatch
from gridedge.gateway.mqtt.client import MqttBridge

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/mosquitto").exists(), reason="mosquitto not installed")

SITE = "demo"
ROOT = f"gridedge/{SITE}"
SPECS = [
    {"name": "F1_I", "quantity": "current", "unit": "A", "group": "F1"},
    {"name": "BUS_V", "quantity": "voltage", "unit": "kV", "group": "BUS", "nominal": 100.0},
    {"name": "T1_TEMP", "quantity": "temperature", "unit": "degC", "group": "T1"},
]
POINTS = PointTable.from_specs(SPECS)


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    yield from run_broker(tmp_path / "broker")


def make_bridge(tmp_path: Path, port: int, **cfg) -> MqttBridge:
    cfg.setdefault("reconnect_min", 0.05)
    cfg.setdefault("reconnect_max", 0.5)
    pp = cfg.pop("point_policies", None)
    return MqttBridge(
        MqttSection(port=port, **cfg), site=SITE, db_path=tmp_path / "g.db", points=POINTS, point_policies=pp
    )


def sample_event() -> Event:
    return Event(
        EventKind.GRID_ANOMALY,
        group="F1",
        points=["F1_I", "BUS_V"],
        start=time.time() - 5,
        score=7.5,
        explanation={
            "rule": "group_composite",
            "summary": "F1 current high while bus voltage sags",
            "slot": 37,
            "threshold": 4.0,
            "points": {
                "F1_I": {
                    "z": 6.1,
                    "value": 410.0,
                    "expected": 250.0,
                    "baseline_mean": 250.0,
                    "baseline_std": 26.0,
                },
                "BUS_V": {
                    "z": -3.2,
                    "value": 96.0,
                    "expected": 100.2,
                    "baseline_mean": 100.2,
                    "baseline_std": 1.3,
                },
            },
        },
    )


def test_topics_and_payloads_match_schemas(tmp_path, broker):
    col = Collector(broker.port, [f"{ROOT}/#"]).start()
    bridge = make_bridge(tmp_path, broker.port, values="per_point")  # batch: test_mqtt_batch.py
    try:
        bridge.start()
        assert bridge.wait_connected(10)
        now = time.time()
        batch = ReadingBatch(
            np.array([0, 1, 2], np.int32),
            np.full(3, now - 0.2),
            np.array([250.0, 99.5, np.nan]),
            np.array([0, int(Quality.QUESTIONABLE), int(Quality.INVALID | Quality.COMM_LOST)], np.uint8),
            gateway_ts=np.full(3, now),
        )
        bridge.publish_values(batch)
        bridge.publish_group_scores(
            {
                "F1": {"score": 2.5, "threshold": 4.0, "state": "elevated"},
                "T1": {"score": None, "threshold": None, "state": "observing"},
            }
        )
        ev = sample_event()
        s1 = bridge.publish_alert(ev, severity="critical")
        ev.end = time.time()
        ev.explanation["classifier"] = {  # the daemon's verdict at close, which alert/cleared carries
            "label": "incident",
            "probabilities": {"incident": 0.7, "sensor_fault": 0.2, "false_alarm": 0.1},
            "model_version": "000003",
            "stage": "close",
            "at_dispatch": "unsure",
        }
        s2 = bridge.publish_alert_cleared(ev)
        assert s2 == s1 + 1  # one gap-free alert stream
        bridge.publish_device_status("rtu1", state="down", last_error="timeout after 1.0s", backoff=2.0)
        assert bridge.flush(10)

        col.wait_for(f"{ROOT}/device/rtu1/status")
        col.wait_for(f"{ROOT}/point/T1_TEMP")
        checks = {
            f"{ROOT}/status": "status",
            f"{ROOT}/point/F1_I": "point",
            f"{ROOT}/point/BUS_V": "point",
            f"{ROOT}/point/T1_TEMP": "point",
            f"{ROOT}/group/F1/score": "group_score",
            f"{ROOT}/group/T1/score": "group_score",
            f"{ROOT}/alert": "alert",
            f"{ROOT}/alert/cleared": "alert_cleared",
            f"{ROOT}/device/rtu1/status": "device_status",
        }
        for topic, schema in checks.items():
            got = col.on(topic)
            assert got, f"nothing on {topic}"
            for payload in got:
                validator(schema).validate(payload)

        assert col.on(f"{ROOT}/status")[0]["state"] == "online"
        temp = col.on(f"{ROOT}/point/T1_TEMP")[0]
        assert temp["value"] is None and temp["flags"] == ["invalid", "comm_lost"]
        assert col.on(f"{ROOT}/point/BUS_V")[0]["ts"] == pytest.approx(now - 0.2)
        alert = col.on(f"{ROOT}/alert")[0]
        assert (alert["id"], alert["seq"], alert["severity"], alert["threshold"]) == (
            ev.id,
            s1,
            "critical",
            4.0,
        )
        f1 = alert["explanation"]["points"]["F1_I"]
        assert f1["z"] == 6.1 and f1["band"] == pytest.approx([250 - 3 * 26, 250 + 3 * 26])
        assert alert["explanation"]["rule"] == "group_composite" and alert["explanation"]["slot"] == 37
        cleared = col.on(f"{ROOT}/alert/cleared")[0]
        assert cleared["id"] == ev.id
        assert (cleared["classifier"]["stage"], cleared["classifier"]["label"]) == ("close", "incident")
        assert col.on(f"{ROOT}/group/F1/score")[0]["state"] == "elevated"
        assert bridge.stats()["outbox_depth"] == 0 and bridge.stats()["published"] >= 3
    finally:
        bridge.stop()
        col.stop()
    # Retained: a late subscriber sees the device status and the clean "offline".
    dev = retained(broker.port, f"{ROOT}/device/rtu1/status")
    assert dev is not None and dev["state"] == "down" and dev["backoff"] == 2.0
    st = retained(broker.port, f"{ROOT}/status")
    assert st is not None and (st["state"], st["reason"]) == ("offline", "stopped")


def test_last_will_when_bridge_process_is_killed(tmp_path, broker):
    proc = BridgeProcess(
        {
            "site": SITE,
            "db": str(tmp_path / "g.db"),
            "points": SPECS,
            "mqtt": {"port": broker.port, "keepalive": 5},
        },
        tmp_path,
    )
    try:
        assert wait_until(lambda: proc.request("stats")["connected"], 10)
        assert retained(broker.port, f"{ROOT}/status")["state"] == "online"
        proc.kill9()
        # The broker sees the socket close without DISCONNECT and publishes the will (retained).
        assert wait_until(
            lambda: (retained(broker.port, f"{ROOT}/status", timeout=1) or {}).get("state") == "offline", 10
        )
        st = retained(broker.port, f"{ROOT}/status")
        validator("status").validate(st)
        assert st["reason"] == "connection lost"
    finally:
        proc.close()


def test_deadband_percent_and_integrity(tmp_path, broker):
    col = Collector(broker.port, [f"{ROOT}/point/#"]).start()
    bridge = make_bridge(
        tmp_path,
        broker.port,
        values="per_point",
        integrity_period=1000.0,
        points={
            "current": {"deadband": 50.0},  # by quantity (overridden below for F1_I)
            "BUS": {"deadband_pct": 1.0},  # by group: 1 % of nominal 100 kV = 1.0
            "T1_TEMP": {"integrity_period": 10.0},  # by point name
        },
        point_policies={"F1_I": {"deadband": 5.0, "deadband_pct": None}},  # written on the point itself
    )
    try:
        bridge.start()
        assert bridge.wait_connected(10)
        t0 = time.time()
        seq = [  # (dt, F1_I, BUS_V, T1_TEMP)
            (0, 100.0, 100.0, 20.0),  # first: all published
            (1, 104.0, 100.9, 20.0),  # inside both deadbands; temp unchanged
            (2, 105.5, 101.2, 20.0),  # F1: |105.5-100| > 5 → yes; BUS: 1.2 > 1 → yes
            (3, 106.0, 101.5, 20.0),  # small moves relative to the last *published* values → no
            (11, 106.0, 101.5, 20.0),  # T1_TEMP integrity period (10 s) passed → yes; others no
            (12, 106.0, 101.5, 20.0),
        ]
        for dt, *vals in seq:
            bridge.publish_values(
                ReadingBatch(
                    np.arange(3, dtype=np.int32), np.full(3, t0 + dt), np.array(vals), np.zeros(3, np.uint8)
                )
            )
        # a quality change alone publishes too
        bridge.publish_values(
            ReadingBatch(
                np.array([0], np.int32),
                np.array([t0 + 13]),
                np.array([106.0]),
                np.array([int(Quality.STALE)], np.uint8),
            )
        )
        # two readings of one point in a batch: only the newest counts
        bridge.publish_values(
            ReadingBatch(
                np.array([1, 1], np.int32),
                np.array([t0 + 15, t0 + 14]),
                np.array([130.0, 90.0]),
                np.zeros(2, np.uint8),
            )
        )
        assert wait_until(lambda: len(col.on(f"{ROOT}/point/BUS_V")) >= 3, 5)
        time.sleep(0.3)
        f1 = [m["value"] for m in col.on(f"{ROOT}/point/F1_I")]
        bus = [m["value"] for m in col.on(f"{ROOT}/point/BUS_V")]
        temp = [m["ts"] - t0 for m in col.on(f"{ROOT}/point/T1_TEMP")]
        assert f1 == [100.0, 105.5, 106.0]  # the last one: quality changed to stale
        assert col.on(f"{ROOT}/point/F1_I")[-1]["flags"] == ["stale"]
        assert bus == [100.0, 101.2, 130.0]
        assert temp == pytest.approx([0, 11])
    finally:
        bridge.stop()
        col.stop()


def test_group_scores_go_out_on_change_only(tmp_path, broker):
    """A calm group is not republished every status cycle: only a new state, a score moved by at least
    ``score_deadband``, the integrity period or a reconnect sends it again."""
    col = Collector(broker.port, [f"{ROOT}/group/#"]).start()
    bridge = make_bridge(tmp_path, broker.port, score_deadband=0.5, integrity_period=1.0)
    topic_f1, topic_t1 = f"{ROOT}/group/F1/score", f"{ROOT}/group/T1/score"
    try:
        bridge.start()
        assert bridge.wait_connected(10)
        cycles = [  # F1 (score, state), T1 observing without a score (NaN)
            (1.0, "normal"),  # first: published
            (1.3, "normal"),  # moved 0.3 < 0.5 → not
            (1.45, "normal"),  # 0.45 from the last *published* 1.0 → not
            (1.6, "elevated"),  # state changed → published
            (2.2, "elevated"),  # moved 0.6 → published
        ]
        for score, state in cycles:
            bridge.publish_group_scores(
                {
                    "F1": {"score": score, "threshold": 4.0, "state": state},
                    "T1": {"score": float("nan"), "threshold": 4.0, "state": "observing"},
                }
            )
        assert wait_until(lambda: len(col.on(topic_f1)) >= 3, 5)
        time.sleep(0.3)
        assert [m["score"] for m in col.on(topic_f1)] == [1.0, 1.6, 2.2]
        assert len(col.on(topic_t1)) == 1  # NaN == NaN here: an observing group is not re-sent each cycle
        time.sleep(1.1)  # integrity period passed: both go out again although nothing changed
        bridge.publish_group_scores(
            {
                "F1": {"score": 2.2, "threshold": 4.0, "state": "elevated"},
                "T1": {"score": float("nan"), "threshold": 4.0, "state": "observing"},
            }
        )
        assert wait_until(lambda: len(col.on(topic_f1)) == 4 and len(col.on(topic_t1)) == 2, 5)
    finally:
        bridge.stop()
        col.stop()


ACL = f"""
user gateway
topic readwrite {ROOT}/#

user alice
topic read {ROOT}/#

user mallory
topic read {ROOT}/#

pattern write {ROOT}/cmd/%u/#
"""
USERS = {"gateway": "gw-secret", "alice": "alice-pw", "mallory": "mallory-pw"}


def test_commands_allowed_refused_and_audited(tmp_path):
    gen = run_broker(tmp_path / "broker", users=USERS, acl=ACL)
    broker = next(gen)
    pwfile = tmp_path / "mqtt.pw"
    pwfile.write_text("gw-secret\n")
    applied: list = []

    def handler(cmd):
        applied.append(cmd)
        if cmd.verb == "ack" and cmd.args["event_id"] == "missing":
            raise KeyError("no event missing")  # e.g. the store does not know the event
        return {"applied": cmd.verb, "until": time.time() + cmd.args.get("duration", 0)}

    bridge = MqttBridge(
        MqttSection(port=broker.port, username="gateway", password_file=str(pwfile), command_users=["alice"]),
        site=SITE,
        db_path=tmp_path / "g.db",
        points=POINTS,
        command_handler=handler,
    )
    col = Collector(broker.port, [f"{ROOT}/cmd/reply"], username="alice", password="alice-pw").start()
    try:
        bridge.start()
        assert bridge.wait_connected(10)
        time.sleep(0.2)  # the gateway's SUBSCRIBE follows its CONNACK

        def send(user, topic_user, verb, body):
            publish_one(
                broker.port,
                f"{ROOT}/cmd/{topic_user}/{verb}",
                json.dumps(body),
                username=user,
                password=USERS[user],
            )

        send(
            "alice",
            "alice",
            "suppress",
            {"correlation_id": "ok-1", "group": "F1", "duration": "30min", "reason": "maintenance"},
        )
        send(
            "alice", "alice", "label", {"correlation_id": "ok-2", "event_id": "ev42", "label": "false_alarm"}
        )
        send(
            "mallory",
            "mallory",
            "suppress",
            {"correlation_id": "bad-1", "group": "F1", "duration": "1h", "reason": "x"},
        )
        send(
            "alice",
            "alice",
            "suppress",
            {"correlation_id": "bad-2", "group": "F1", "duration": "forever", "reason": "x"},
        )
        send("alice", "alice", "ack", {"correlation_id": "bad-3", "event_id": "missing"})
        # Impersonation: mallory writes under alice's name; the broker's ACL drops it.
        send(
            "mallory",
            "alice",
            "suppress",
            {"correlation_id": "spoof-1", "group": "F1", "duration": "1h", "reason": "x"},
        )
        replies = col.wait_for(f"{ROOT}/cmd/reply", 5)
        time.sleep(0.5)
        replies = {r["correlation_id"]: r for r in col.on(f"{ROOT}/cmd/reply")}
        for r in replies.values():
            validator("cmd_reply").validate(r)
        assert set(replies) == {"ok-1", "ok-2", "bad-1", "bad-2", "bad-3"}
        assert replies["ok-1"]["ok"] and replies["ok-1"]["result"]["applied"] == "suppress"
        assert replies["ok-2"]["ok"]
        assert not replies["bad-1"]["ok"] and "not allowed" in replies["bad-1"]["error"]
        assert not replies["bad-2"]["ok"] and "duration" in replies["bad-2"]["error"]
        assert not replies["bad-3"]["ok"] and "missing" in replies["bad-3"]["error"]
        # Only the valid commands reached the handler; the refused ones changed nothing.
        assert [(c.verb, c.user, c.correlation_id) for c in applied] == [
            ("suppress", "alice", "ok-1"),
            ("label", "alice", "ok-2"),
            ("ack", "alice", "bad-3"),
        ]
        assert applied[0].args == {"group": "F1", "duration": 1800.0, "reason": "maintenance", "target": "F1"}
    finally:
        bridge.stop()
        col.stop()
        gen.close()
    with sqlite3.connect(tmp_path / "g.db") as db:
        rows = db.execute("SELECT actor, action, target, details FROM audit ORDER BY id").fetchall()
    audit = {json.loads(d)["correlation_id"]: (a, act, t, json.loads(d)) for a, act, t, d in rows}
    assert set(audit) == {"ok-1", "ok-2", "bad-1", "bad-2", "bad-3"}
    assert audit["ok-1"][:3] == ("alice", "suppress", "F1") and audit["ok-1"][3]["ok"] is True
    assert audit["ok-2"][:3] == ("alice", "label", "ev42")
    assert audit["bad-1"][0] == "mallory" and audit["bad-1"][3]["ok"] is False


def test_tls_with_client_certificate(tmp_path):
    certs = make_certs(tmp_path / "pki")
    gen = run_broker(tmp_path / "broker", certs=certs)
    broker = next(gen)
    tls = {"ca_file": str(certs.ca), "cert_file": str(certs.client_cert), "key_file": str(certs.client_key)}
    bridge = make_bridge(tmp_path, broker.port, tls=tls)
    col = Collector(broker.port, [f"{ROOT}/alert"], certs=certs).start()
    other = make_certs(tmp_path / "other-pki")  # a CA the broker's certificate does not chain to
    stranger = MqttBridge(
        MqttSection(
            port=broker.port,
            tls={
                "ca_file": str(other.ca),
                "cert_file": str(other.client_cert),
                "key_file": str(other.client_key),
            },
            client_id="stranger",
            reconnect_min=0.1,
        ),
        site=SITE,
        db_path=tmp_path / "g2.db",
        points=POINTS,
    )
    try:
        bridge.start()
        stranger.start()
        assert bridge.wait_connected(10)
        seq = bridge.publish_alert(sample_event())
        got = col.wait_for(f"{ROOT}/alert", 1, 10)
        assert [m["seq"] for m in got] == [seq]
        assert not stranger.wait_connected(1.5)  # certificate check fails: no connection
        assert stranger.stats()["state"] == "backoff"
    finally:
        stranger.stop(timeout=1)
        bridge.stop()
        col.stop()
        gen.close()


def test_doc_examples_match_a_schema():
    """Every JSON example in docs/mqtt.md validates against at least one schema (docs cannot drift)."""
    import re

    from fixtures_mqtt import SCHEMA_DIR

    text = (SCHEMA_DIR.parent / "mqtt.md").read_text()
    validators = {p.stem: validator(p.stem) for p in SCHEMA_DIR.glob("*.json")}
    examples = []
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        try:
            examples.append(json.loads(block))
        except json.JSONDecodeError:
            examples += [json.loads(line) for line in block.splitlines() if line.strip()]
    assert len(examples) >= 6
    for ex in examples:
        assert any(v.is_valid(ex) for v in validators.values()), f"no schema accepts the example {ex}"


def test_stop_without_broker_keeps_the_outbox(tmp_path):
    from fixtures_mqtt import free_port

    bridge = make_bridge(tmp_path, free_port())
    bridge.start()
    seq = bridge.publish_alert(sample_event())
    bridge.stop(timeout=0.5)
    assert seq == 1
    with sqlite3.connect(tmp_path / "g.db") as db:
        assert db.execute("SELECT kind, seq FROM outbox").fetchall() == [("alert", 1)]


def test_gateway_alarms_ride_on_the_retained_status(tmp_path, broker):
    bridge = make_bridge(tmp_path, broker.port)
    try:
        bridge.start()
        assert bridge.wait_connected(10)
        bridge.set_alarms({"disk_full"})
        assert wait_until(
            lambda: (retained(broker.port, f"{ROOT}/status") or {}).get("alarms") == ["disk_full"], 10
        )
        status = retained(broker.port, f"{ROOT}/status")
        validator("status").validate(status)
        assert status["state"] == "online"
        bridge.set_alarms(set())
        assert wait_until(lambda: (retained(broker.port, f"{ROOT}/status") or {}).get("alarms") == [], 10)
    finally:
        bridge.stop()
