"""Broker outage with a real mosquitto: alerts queue in the SQLite outbox while the broker is down, the bridge
process is killed with SIGKILL meanwhile and restarted, and after the broker comes back on the same port
every alert arrives once per sequence number, in order."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from fixtures_mqtt import BridgeProcess, Broker, Collector, validator, wait_until

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/mosquitto").exists(), reason="mosquitto not installed")

SITE = "outage"
ROOT = f"gridedge/{SITE}"
SPECS = [{"name": "F1_I", "quantity": "current", "unit": "A", "group": "F1"}]


def first_deliveries(seqs: list[int]) -> list[int]:
    """What a consumer keeps when it drops every seq it has already seen (MQTT QoS 1 is at-least-once:
    the broker may redeliver a message whose PUBACK it had not processed when it went down)."""
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def outbox_alerts(db: Path) -> list[int]:
    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute("SELECT seq FROM outbox WHERE kind = 'alert' ORDER BY id")]


def test_outage_replay_in_order_and_outbox_survives_kill9(tmp_path):
    # Persistence + a persistent subscriber session: the broker keeps the subscriber's queue across its
    # own restart, so the test observes everything the bridge replays whenever it reconnects.
    broker = Broker(tmp_path / "broker", persistence=True).start()
    db = tmp_path / "g.db"
    cfg = {
        "site": SITE,
        "db": str(db),
        "points": SPECS,
        "mqtt": {"port": broker.port, "keepalive": 5, "reconnect_min": 0.1, "reconnect_max": 1.0},
    }
    col = Collector(broker.port, [f"{ROOT}/alert"], client_id="outage-watch", persistent=True).start()
    procs: list[BridgeProcess] = []
    try:
        procs.append(BridgeProcess(cfg, tmp_path))
        bridge = procs[-1]
        assert wait_until(lambda: bridge.request("stats")["connected"], 10)
        first = bridge.request("alerts 10")["seqs"]
        assert first == list(range(1, 11))
        assert wait_until(lambda: len({m["seq"] for m in col.on(f"{ROOT}/alert")}) >= 10, 10)
        # Every PUBACK is in before the outage, so nothing is in flight when the broker goes away.
        assert wait_until(lambda: bridge.request("stats")["outbox_depth"] == 0, 10)

        broker.stop()  # outage
        assert wait_until(lambda: not bridge.request("stats")["connected"], 10)
        during = bridge.request("alerts 300")["seqs"]
        assert during == list(range(11, 311))
        stats = bridge.request("stats")
        assert stats["outbox_depth"] == 300 and stats["oldest_unsent_age"] > 0
        bridge.kill9()  # the bridge dies while the broker is down
        assert outbox_alerts(db) == list(range(11, 311))  # the outbox survived the kill

        procs.append(BridgeProcess(cfg, tmp_path))  # restarted: still no broker
        bridge = procs[-1]
        assert bridge.request("stats")["outbox_depth"] == 300
        after = bridge.request("alerts 100")["seqs"]
        assert after == list(range(311, 411))  # the sequence continues across the restart
        time.sleep(1.0)  # a few reconnect attempts with backoff

        broker.start()  # same port
        assert wait_until(lambda: bridge.request("stats")["outbox_depth"] == 0, 30)
        assert wait_until(lambda: len({m["seq"] for m in col.on(f"{ROOT}/alert")}) >= 410, 30)
        time.sleep(0.5)
        got = col.on(f"{ROOT}/alert")
        seqs = [m["seq"] for m in got]
        assert first_deliveries(seqs) == list(range(1, 411))  # once per sequence number, in order
        assert len(seqs) - 410 <= 10  # redeliveries are rare and only of messages already seen
        v = validator("alert")
        for m in got[::50]:
            v.validate(m)
        assert len({m["id"] for m in got}) == 410  # one stable id per alert
        stats = bridge.request("stats")
        assert stats["connected"] and stats["drops"] == {}
    finally:
        for p in procs:
            p.close()
        col.stop()
        broker.stop()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        assert (
            json.loads(c.execute("SELECT value FROM meta WHERE key = 'mqtt.seq.alert'").fetchone()[0]) == 410
        )


def test_quota_while_offline_drops_values_first_and_replays_alerts(tmp_path):
    import numpy as np
    from fixtures_mqtt import free_port

    from gridedge.config.models import MqttSection
    from gridedge.gateway.model import Event, EventKind, PointTable, ReadingBatch
    from gridedge.gateway.mqtt.client import MqttBridge

    port = free_port()  # nothing listens yet: the broker is "down" from the start
    points = PointTable.from_specs(
        [{"name": f"P{i}", "quantity": "voltage", "group": "G"} for i in range(50)]
    )
    cfg = MqttSection(
        port=port,
        values_in_outbox=True,
        outbox_quota=100,
        reconnect_min=0.05,
        reconnect_max=0.3,
        outbox_synchronous="normal",
    )
    bridge = MqttBridge(cfg, site=SITE, db_path=tmp_path / "g.db", points=points)
    broker = Broker(tmp_path / "broker", port=port, persistence=True)
    # A persistent subscriber session, set up before the outage, so the broker queues for it whatever
    # the bridge replays the moment it gets through.
    broker.start()
    Collector(port, [f"{ROOT}/alert"], client_id="quota-watch", persistent=True).start().stop()
    broker.stop()
    col = None
    try:
        bridge.start()
        backoffs = []
        for k in range(3):  # 150 values for a quota of 100
            bridge.publish_values(ReadingBatch.uniform(np.arange(50, dtype=np.int32), np.full(50, float(k))))
            backoffs.append(bridge.stats()["backoff"])
            time.sleep(0.2)
        assert bridge.stats()["drops"] == {"quota_value": 50}
        seqs = [
            bridge.publish_alert(
                Event(EventKind.SENSOR_FAULT, "G", ["P0"], time.time(), 3.0, {"rule": "stuck"})
            )
            for _ in range(30)
        ]
        st = bridge.stats()
        assert st["outbox_depth"] == 100 and st["drops"] == {"quota_value": 80}
        assert not st["connected"] and st["state"] == "backoff"
        # Reconnect delays are jittered and capped: every one within [min/2, max].
        assert all(b is not None and 0.025 <= b <= 0.3 for b in backoffs)

        broker.start()
        col = Collector(port, [f"{ROOT}/alert"], client_id="quota-watch", persistent=True).start()
        assert bridge.wait_connected(10)
        assert bridge.flush(20)
        assert wait_until(lambda: len({m["seq"] for m in col.on(f"{ROOT}/alert")}) >= 30, 10)
        assert first_deliveries([m["seq"] for m in col.on(f"{ROOT}/alert")]) == seqs
    finally:
        bridge.stop()
        if col is not None:
            col.stop()
        broker.stop()


def test_same_process_reconnects_and_replays_in_order(tmp_path):
    from gridedge.config.models import MqttSection
    from gridedge.gateway.model import Event, EventKind, PointTable
    from gridedge.gateway.mqtt.client import MqttBridge

    broker = Broker(tmp_path / "broker", persistence=True).start()
    col = Collector(
        broker.port, [f"{ROOT}/alert", f"{ROOT}/status"], client_id="same-watch", persistent=True
    ).start()
    points = PointTable.from_specs(SPECS)
    bridge = MqttBridge(
        MqttSection(port=broker.port, reconnect_min=0.05, reconnect_max=0.5, keepalive=5),
        site=SITE,
        db_path=tmp_path / "g.db",
        points=points,
    )

    def alert() -> int:
        return bridge.publish_alert(
            Event(EventKind.STALE, "F1", ["F1_I"], time.time(), 1.0, {"rule": "stale"})
        )

    try:
        bridge.start()
        assert bridge.wait_connected(10)
        first = [alert() for _ in range(5)]
        assert bridge.flush(10)
        broker.stop()
        assert wait_until(lambda: not bridge.connected, 10)
        queued = [alert() for _ in range(150)]
        assert bridge.stats()["outbox_depth"] == 150
        broker.start()
        assert bridge.wait_connected(15) and bridge.flush(20)
        assert wait_until(lambda: len({m["seq"] for m in col.on(f"{ROOT}/alert")}) >= 155, 20)
        time.sleep(0.3)
        seqs = [m["seq"] for m in col.on(f"{ROOT}/alert")]
        assert first_deliveries(seqs) == first + queued == list(range(1, 156))
        st = bridge.stats()
        assert st["reconnects"] == 1 and st["outbox_depth"] == 0 and st["published"] == 155
        assert col.on(f"{ROOT}/status")[-1]["state"] == "online"  # re-announced after the reconnect
    finally:
        bridge.stop()
        col.stop()
        broker.stop()
