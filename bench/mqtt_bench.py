"""MQTT bridge throughput and alert latency against a real mosquitto on loopback.

    .venv/bin/python bench/mqtt_bench.py [--n 20000] [--alerts 500] [--only-values]
        [--devices 10 --points-per-device 1000 --period 0.1 --duration 5] [--stall 3]

Prints one side-by-side table: messages/s delivered to a subscriber for QoS 1 published directly with paho
(no outbox), QoS 1 through the SQLite outbox (synchronous=normal and full), and live values (QoS 0)
through ``publish_values``; then the publish_alert → subscriber latency p50/p99 for both outbox modes.
Everything runs in one process (bridge, subscriber), so the figures include their share of the GIL.

Then live values side by side, payload mode by mode (``mqtt.values``: batch, per_point, sparkplug): every
value of ``--devices`` × ``--points-per-device`` points published (deadband 0) every ``--period`` s for
``--duration`` s, one poll batch per device, as the runtime hands them over. A subscriber in a child
process counts the points that arrive. Per mode: time spent in ``publish_values`` per point (the event
loop's cost), p99 and longest call, CPU of the bridge process (its paho and pump threads included) per point and in % of one
core, messages and points delivered per second, values conflated (latest wins), and whether delivered =
offered − conflated.

With ``--stall S`` each mode also runs with the broker SIGSTOPped for S s from a third of the run on (then
SIGCONT): p99 and longest publish_values call, the most value messages waiting for the socket, RSS growth,
values conflated, and again whether delivered = offered − conflated once everything drained.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
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
from gridedge.gateway.mqtt.deadband import warm
from gridedge.gateway.mqtt.sparkplug_schema import Payload


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


def _count_points(port: int, topic: str, mode: str, count, ready) -> None:
    """Child process: count the points carried by the messages on ``topic`` (and the messages)."""

    def on_message(c, u, m) -> None:
        if mode == "batch":
            n = len(json.loads(m.payload)["points"])
        elif mode == "sparkplug":
            if "/DDATA/" not in m.topic:
                return
            n = len(Payload.FromString(m.payload).metrics)
        else:
            n = 1
        with count.get_lock():
            count[0] += n
            count[1] += 1

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 0)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_forever()


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def values_mode(
    port: int,
    tmp: Path,
    mode: str,
    devices: int,
    per_dev: int,
    period: float,
    duration: float,
    stall: tuple[int, float] | None = None,
):
    """Every value of every point each period, one batch per device; returns one result row.

    ``stall`` = (broker PID, seconds): SIGSTOP the broker from a third of the run on for that long."""
    topic = {"batch": "gridedge/bench/values/#", "per_point": "gridedge/bench/point/#"}.get(mode, "spBv1.0/#")
    count = mp.Array("q", 2)
    ready = mp.Event()
    child = mp.get_context("fork").Process(
        target=_count_points, args=(port, topic, mode, count, ready), daemon=True
    )
    child.start()
    ready.wait(10)
    specs = [
        {"name": f"D{d}P{i}", "quantity": "current", "group": f"G{d}", "device": f"dev{d}"}
        for d in range(devices)
        for i in range(per_dev)
    ]
    points = PointTable.from_specs(specs)
    b = bridge(port, tmp / f"vm-{mode}.db", points, values=mode)
    if mode == "sparkplug":
        wait_until(lambda: b.stats()["values"]["sparkplug"]["births"] >= 1, 10)
    idx = [np.arange(d * per_dev, (d + 1) * per_dev, dtype=np.int32) for d in range(devices)]
    cycles = max(1, round(duration / period))
    in_publish = 0.0
    calls: list[float] = []
    max_backlog = rss_growth = 0
    stall_from = duration / 3 if stall else float("inf")
    stopped = False
    rss0 = _rss()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for k in range(cycles):
        due = t0 + k * period
        while (now := time.perf_counter()) < due:
            time.sleep(min(0.005, due - now))
        if stall and not stopped and stall_from <= now - t0 < stall_from + stall[1]:
            os.kill(stall[0], signal.SIGSTOP)
            stopped = True
        elif stall and stopped and now - t0 >= stall_from + stall[1]:
            rss_growth = _rss() - rss0
            os.kill(stall[0], signal.SIGCONT)
            stopped = False
        ts = time.time()
        for d in range(devices):
            batch = ReadingBatch.uniform(idx[d], np.full(per_dev, float(k)), ts=ts, device=f"dev{d}")
            a = time.perf_counter()
            b.publish_values(batch)
            dt = time.perf_counter() - a
            in_publish += dt
            calls.append(dt)
        if stall:
            max_backlog = max(max_backlog, b.stats()["values"]["backlog"])
    if stall and stopped:
        rss_growth = _rss() - rss0
        os.kill(stall[0], signal.SIGCONT)
    sent_until = time.perf_counter()
    wait_until(lambda: b.stats()["values"]["pending"] == 0, 30, 0.01)
    v0 = b.stats()["values"]
    wait_until(lambda: count[0] >= v0["sent"], 30, 0.01)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    v = b.stats()["values"]
    b.stop()
    child.terminate()
    child.join(5)
    offered = cycles * devices * per_dev
    return {
        "mode": mode,
        "offered": offered,
        "publish_us_per_point": in_publish / offered * 1e6,
        "cpu_us_per_point": cpu / offered * 1e6,
        "cpu_pct": 100.0 * cpu / wall,
        "msg_s": count[1] / wall,
        "points_s": count[0] / wall,
        "delivered": count[0],
        "conflated": v["conflated"],
        "exact": count[0] == offered - v["conflated"] and v["offered"] == offered,
        "drain_s": wall - (sent_until - t0),
        "worst_ms": max(calls) * 1000,
        "p99_ms": float(np.percentile(calls, 99)) * 1000,
        "max_backlog": max_backlog,
        "rss_growth_mib": rss_growth / 2**20,
    }


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
    ap.add_argument("--only-values", action="store_true", help="only the live value modes side by side")
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--points-per-device", type=int, default=1000)
    ap.add_argument("--period", type=float, default=0.1, help="poll period in s")
    ap.add_argument("--duration", type=float, default=5.0, help="s of polling per mode")
    ap.add_argument("--modes", default="batch,per_point,sparkplug")
    ap.add_argument(
        "--stall", type=float, default=0.0, help="also run with the broker SIGSTOPped this long (s)"
    )
    args = ap.parse_args()
    if args.only_values:
        print_values(args)
        return
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
    print_values(args)


def print_values(args: argparse.Namespace) -> None:
    warm()  # the runtime loads the deadband kernel at start-up, not on the first batch
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Broker(tmp / "broker").start()
        try:
            modes = args.modes.split(",")
            run = (args.devices, args.points_per_device, args.period, args.duration)
            rows = [values_mode(broker.port, tmp, m, *run) for m in modes]
            stalled = []
            if args.stall > 0 and broker.proc is not None:
                stalled = [
                    values_mode(broker.port, tmp, m, *run, (broker.proc.pid, args.stall)) for m in modes
                ]
        finally:
            broker.stop()
    n = args.devices * args.points_per_device
    print(
        f"\nlive values, every value published: {args.devices} devices × {args.points_per_device} points "
        f"every {args.period * 1000:.0f} ms for {args.duration:.0f} s = {n / args.period:,.0f} points/s offered"
    )
    print(
        f"{'mode':<10} {'publish µs/pt':>13} {'CPU µs/pt':>10} {'CPU %':>6} {'msg/s':>9} {'points/s':>10} "
        f"{'conflated':>10} {'p99 ms':>7} {'max ms':>7} {'drain s':>8} {'delivered=offered−conflated':>28}"
    )
    for r in rows:
        print(
            f"{r['mode']:<10} {r['publish_us_per_point']:>13.3f} {r['cpu_us_per_point']:>10.3f} "
            f"{r['cpu_pct']:>6.1f} {r['msg_s']:>9,.0f} {r['points_s']:>10,.0f} {r['conflated']:>10,} "
            f"{r['p99_ms']:>7.2f} {r['worst_ms']:>7.2f} {r['drain_s']:>8.2f} {'yes' if r['exact'] else 'NO':>28}"
        )
    if stalled:
        print(
            f"\nsame, with the broker SIGSTOPped for {args.stall:g} s from {args.duration / 3:.1f} s on, then SIGCONT"
        )
        print(
            f"{'mode':<10} {'p99 ms':>7} {'max ms':>7} {'max backlog':>11} {'RSS +MiB':>9} {'conflated':>10} "
            f"{'delivered':>10} {'drain s':>8} {'delivered=offered−conflated':>28}"
        )
        for r in stalled:
            print(
                f"{r['mode']:<10} {r['p99_ms']:>7.2f} {r['worst_ms']:>7.2f} {r['max_backlog']:>11} {r['rss_growth_mib']:>9.1f} "
                f"{r['conflated']:>10,} {r['delivered']:>10,} {r['drain_s']:>8.2f} "
                f"{'yes' if r['exact'] else 'NO':>28}"
            )


if __name__ == "__main__":
    main()
