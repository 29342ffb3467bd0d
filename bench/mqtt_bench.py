"""MQTT bridge throughput and alert latency against a real mosquitto on loopback.

    .venv/bin/python bench/mqtt_bench.py [--n 20000] [--alerts 500]

Prints one side-by-side table: messages/s delivered to a subscriber for QoS 1 published directly with paho
(no outbox), QoS 1 through the SQLite outbox (synchronous=normal and full), and live values (QoS 0)
through ``publish_values``; then the publish_alert → subscriber latency p50/p99 for both outbox modes.
Everything runs in one process (bridge, subscriber), so the figures include their share of the GIL.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures_mqtt import Broker, wait_until

from gridedge.config.models import MqttSection
from gridedge.gateway.model import Event, EventKind, PointTable, ReadingBatch
from gridedge.gateway.mqtt.client import MqttBridge


class Counter:
    """A subscriber that counts messages and keeps their receive times."""

    def __init__(self, port: int, topic: str):
        self.n = 0
        self.times: list[float] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.ready.wait(10)

    def _msg(self, c, u, m) -> None:
        self.times.append(time.perf_counter())
        self.n += 1

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def bridge(port: int, db: Path, points: PointTable, **cfg) -> MqttBridge:
    b = MqttBridge(MqttSection(port=port, max_inflight=100, **cfg), site="bench", db_path=db, points=points)
    b.start()
    b.wait_connected(10)
    return b


def direct_qos1(port: int, n: int) -> float:
    sub = Counter(port, "bench/direct")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(100)
    c.connect("127.0.0.1", port)
    c.loop_start()
    payload = b'{"id":"x","seq":0,"kind":"grid_anomaly","score":5.0}' + b" " * 200
    t0 = time.perf_counter()
    for _ in range(n):
        c.publish("bench/direct", payload, qos=1)
    wait_until(lambda: sub.n >= n, 120, 0.005)
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    sub.close()
    return n / dt


def outbox_alerts(port: int, tmp: Path, n: int, sync: str, points: PointTable) -> float:
    sub = Counter(port, "gridedge/bench/alert")
    b = bridge(port, tmp / f"tp-{sync}.db", points, outbox_synchronous=sync)
    ev = Event(EventKind.GRID_ANOMALY, "G0", ["P0"], time.time(), 5.0, {"rule": "zscore", "z": {"P0": 5.0}})
    t0 = time.perf_counter()
    for _ in range(n):
        b.publish_alert(ev)
    wait_until(lambda: sub.n >= n, 300, 0.005)
    dt = time.perf_counter() - t0
    b.stop()
    sub.close()
    return n / dt


def values_qos0(port: int, tmp: Path, n: int, points: PointTable, in_outbox: bool) -> float:
    sub = Counter(port, "gridedge/bench/point/#")
    b = bridge(
        port, tmp / f"v-{in_outbox}.db", points, values_in_outbox=in_outbox, outbox_synchronous="normal"
    )
    p = len(points)
    idx = np.arange(p, dtype=np.int32)
    cycles = max(1, n // p)
    t0 = time.perf_counter()
    for k in range(cycles):
        b.publish_values(ReadingBatch.uniform(idx, np.full(p, float(k)), ts=time.time()))
    total = cycles * p
    wait_until(lambda: sub.n >= total, 300, 0.005)
    dt = time.perf_counter() - t0
    got = sub.n
    b.stop()
    sub.close()
    return got / dt


def latency(port: int, tmp: Path, n: int, sync: str, points: PointTable) -> tuple[float, float]:
    sub = Counter(port, "gridedge/bench/alert")
    b = bridge(port, tmp / f"lat-{sync}.db", points, outbox_synchronous=sync)
    sent: list[float] = []
    for _ in range(n):
        ev = Event(EventKind.GRID_ANOMALY, "G0", ["P0"], time.time(), 5.0, {"rule": "zscore"})
        sent.append(time.perf_counter())
        b.publish_alert(ev)
        target = len(sent)
        wait_until(lambda t=target: sub.n >= t, 10, 0.0002)
    lat = (np.array(sub.times[:n]) - np.array(sent)) * 1000
    b.stop()
    sub.close()
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="messages per throughput run")
    ap.add_argument("--alerts", type=int, default=500, help="alerts for the latency run")
    args = ap.parse_args()
    points = PointTable.from_specs(
        [{"name": f"P{i}", "quantity": "voltage", "group": "G0"} for i in range(500)]
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Broker(tmp / "broker").start()
        try:
            rows = [
                ("QoS 1, paho direct (no outbox)", direct_qos1(broker.port, args.n)),
                (
                    "QoS 1 alerts via outbox, synchronous=normal",
                    outbox_alerts(broker.port, tmp, args.n, "normal", points),
                ),
                (
                    "QoS 1 alerts via outbox, synchronous=full",
                    outbox_alerts(broker.port, tmp, args.n // 4, "full", points),
                ),
                (
                    "QoS 0 values, publish_values (no outbox)",
                    values_qos0(broker.port, tmp, args.n, points, False),
                ),
                (
                    "QoS 1 values via outbox (values_in_outbox)",
                    values_qos0(broker.port, tmp, args.n, points, True),
                ),
            ]
            lat = [(s, *latency(broker.port, tmp, args.alerts, s, points)) for s in ("normal", "full")]
        finally:
            broker.stop()
    print(f"\nMQTT throughput (mosquitto on loopback, delivered to a subscriber, n={args.n})")
    print(f"{'path':<48} {'msg/s':>10}")
    for name, rate in rows:
        print(f"{name:<48} {rate:>10,.0f}")
    print(f"\npublish_alert → subscriber latency ({args.alerts} alerts, one at a time)")
    print(f"{'outbox synchronous':<20} {'p50 ms':>8} {'p99 ms':>8}")
    for s, p50, p99 in lat:
        print(f"{s:<20} {p50:>8.2f} {p99:>8.2f}")


if __name__ == "__main__":
    main()
