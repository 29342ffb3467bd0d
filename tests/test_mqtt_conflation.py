"""Backpressure that never blocks polling: live values are latest-value-wins in one slot per point.

Against a real mosquitto that the test SIGSTOPs (by its PID) while the bridge keeps publishing: every
publish_values returns fast, the value path stays bounded, conflated == offered − delivered, the newest
value of every point arrives after SIGCONT without a further poll, and alerts sent during the stall all
arrive in order. Also: a broker that is down (values wait, latest delivered after the reconnect), the
slots against a dict oracle, and the counters in Prometheus and in ``gridedge status --json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures_mqtt import Broker, Collector, run_broker, wait_until

from gridedge.config.models import MqttSection
from gridedge.gateway.model import Event, EventKind, PointTable, ReadingBatch
from gridedge.gateway.mqtt.client import MqttBridge
from gridedge.gateway.mqtt.conflation import ValueSlots
from gridedge.gateway.mqtt.outbox import VALUE_STATS_KEY, read_meta_json
from gridedge.gateway.runtime.metrics import Metrics
from gridedge.gateway.store.db import connect_writer, migrate

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/mosquitto").exists(), reason="mosquitto not installed")

SITE = "demo"
ROOT = f"gridedge/{SITE}"
DEVICES, PER_DEV = 5, 200
POINTS = PointTable.from_specs(
    [
        {"name": f"D{d}P{i}", "quantity": "current", "group": f"G{d}", "device": f"dev{d}"}
        for d in range(DEVICES)
        for i in range(PER_DEV)
    ]
)
IDX = [np.arange(d * PER_DEV, (d + 1) * PER_DEV, dtype=np.int32) for d in range(DEVICES)]


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cycle(bridge: MqttBridge, k: int) -> float:
    """One poll cycle of every device (value k + point/10 000); returns the longest publish_values."""
    worst = 0.0
    ts = time.time()
    for d in range(DEVICES):
        batch = ReadingBatch.uniform(IDX[d], float(k) + IDX[d] / 10_000.0, ts=ts, device=f"dev{d}")
        t = time.perf_counter()
        bridge.publish_values(batch)
        worst = max(worst, time.perf_counter() - t)
    return worst


def received(col: Collector) -> tuple[int, dict[str, float]]:
    """Points delivered on values/# so far, and the newest value per point."""
    n, last = 0, {}
    for topic, payload, _r in col.raw():
        if "/values/" not in topic:
            continue
        body = json.loads(payload)
        n += len(body["points"])
        last.update(zip(body["points"], body["value"], strict=True))
    return n, last


def alert(i: int) -> Event:
    return Event(EventKind.GRID_ANOMALY, "G0", ["D0P0"], time.time(), 5.0 + i, {"rule": "zscore"})


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    yield from run_broker(tmp_path / "broker")


def test_slots_keep_the_newest_value_and_count_what_they_replace() -> None:
    rng = np.random.default_rng(3)
    slots = ValueSlots(50)
    pending: dict[int, float] = {}
    replaced = offered = taken = 0
    for step in range(400):
        if rng.random() < 0.2:
            got = slots.take()
            assert dict(zip(got.point_idx.tolist(), got.value.tolist(), strict=True)) == pending
            assert (np.diff(got.point_idx) > 0).all()  # point order
            taken += len(pending)
            pending.clear()
            continue
        idx = np.sort(rng.choice(50, rng.integers(1, 20), replace=False)).astype(np.int32)
        v = np.full(len(idx), float(step))
        r = sum(int(i) in pending for i in idx)  # already waiting: these get replaced
        replaced += r
        offered += len(idx)
        assert slots.offer(idx, v, np.zeros(len(idx), np.uint16), v, v) == r
        pending.update(dict.fromkeys(idx.tolist(), float(step)))
        assert slots.conflated == replaced and slots.n_pending == len(pending)
    assert slots.offered == offered == slots.taken + slots.conflated + slots.n_pending
    assert slots.taken == taken


def test_a_limited_take_goes_round_the_points() -> None:
    slots = ValueSlots(10)
    every = np.arange(10, dtype=np.int32)
    seen: list[list[int]] = []
    for _ in range(4):  # all ten pending each time, four taken each time
        slots.offer(every, np.ones(10), np.zeros(10, np.uint16), np.ones(10), np.ones(10))
        seen.append(slots.take(4).point_idx.tolist())
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 8, 9], [2, 3, 4, 5]]
    assert slots.offered == slots.taken + slots.conflated + slots.n_pending == 40


def test_stalled_broker_conflates_latest_wins_and_alerts_stay_in_order(tmp_path, broker) -> None:
    col = Collector(broker.port, [f"{ROOT}/values/#", f"{ROOT}/alert"]).start()
    bridge = MqttBridge(
        MqttSection(port=broker.port, keepalive=120, values_backlog=16, outbox_synchronous="normal"),
        site=SITE,
        db_path=tmp_path / "g.db",
        points=POINTS,
    )
    bridge.start()
    stopped = False
    try:
        assert bridge.wait_connected(10)
        k = 0
        for k in range(5):  # the socket keeps up (each cycle written before the next): nothing waits
            cycle(bridge, k)
            assert wait_until(lambda: bridge.stats()["values"]["backlog"] == 0, 5, 0.005)
        assert wait_until(lambda: received(col)[0] == 5 * DEVICES * PER_DEV, 10)
        assert bridge.stats()["values"]["conflated"] == 0

        rss0 = rss_bytes()
        os.kill(broker.proc.pid, signal.SIGSTOP)  # our broker, by its PID
        stopped = True
        worst, max_backlog, seqs = 0.0, 0, []
        t_end = time.monotonic() + 4.0
        while time.monotonic() < t_end:
            k += 1
            worst = max(worst, cycle(bridge, k))
            if k % 10 == 0:
                seqs.append(bridge.publish_alert(alert(k)))
            max_backlog = max(max_backlog, bridge.stats()["values"]["backlog"])
            time.sleep(0.01)
        during = bridge.stats()["values"]
        rss_growth = rss_bytes() - rss0
        os.kill(broker.proc.pid, signal.SIGCONT)
        stopped = False
        last_k = k

        # Stalled: publishing never waited, the value path stayed bounded, values were conflated.
        # a publish that waited for the socket would take the whole 4 s stall; 0.25 s leaves room for a
        # loaded, shared machine (the bench measured a 2 s block before hand-overs were limited)
        assert worst < 0.25, f"publish_values took {worst * 1000:.1f} ms while the broker was stopped"
        assert during["conflated"] > 10 * DEVICES * PER_DEV  # the stall really backed the socket up
        assert max_backlog <= 16 + DEVICES  # the limit plus at most one hand-over (one message per device)
        assert during["pending"] <= len(POINTS)
        assert rss_growth < 30 * 2**20, f"RSS grew {rss_growth / 2**20:.1f} MiB during the stall"

        # Resumed, with no further poll: the pump hands over what waited; the newest value of every point.
        assert wait_until(lambda: bridge.stats()["values"]["pending"] == 0, 15)
        v = bridge.stats()["values"]
        assert wait_until(lambda: received(col)[0] >= v["offered"] - v["conflated"], 20)
        time.sleep(0.3)
        v = bridge.stats()["values"]
        delivered, last = received(col)
        assert v["lost"] == 0 and v["pending"] == 0 and v["backlog"] == 0
        assert v["offered"] == (last_k + 1) * DEVICES * PER_DEV
        assert v["conflated"] == v["offered"] - delivered
        assert last == {p.name: last_k + p.index / 10_000.0 for p in POINTS}

        # Alerts went through the outbox, untouched by conflation: every one, in order.
        assert bridge.flush(15)
        assert wait_until(lambda: len(col.on(f"{ROOT}/alert")) >= len(seqs), 10)
        assert [a["seq"] for a in col.on(f"{ROOT}/alert")] == seqs

        # The count reaches Prometheus (via the drops the runtime hands to outbox_stats).
        m = Metrics()
        s = bridge.stats()
        m.outbox_stats(s["outbox_depth"], s["oldest_unsent_age"], s["drops"])
        assert m.registry.get_sample_value("gridedge_mqtt_values_conflated_total") == v["conflated"]
        assert (
            m.registry.get_sample_value(
                "gridedge_dropped_total", {"stage": "outbox", "reason": "conflated_value"}
            )
            is None
        )
    finally:
        if stopped:
            os.kill(broker.proc.pid, signal.SIGCONT)
        bridge.stop()
        col.stop()
    saved = read_meta_json(tmp_path / "g.db", VALUE_STATS_KEY)
    assert saved is not None and saved["conflated"] == v["conflated"] and saved["sent"] == v["sent"]


def test_values_wait_while_the_broker_is_down_and_the_latest_go_out_after_reconnect(tmp_path) -> None:
    broker = Broker(tmp_path / "broker").start()
    col = Collector(broker.port, [f"{ROOT}/values/#"]).start()
    bridge = MqttBridge(
        MqttSection(port=broker.port, reconnect_min=0.05, reconnect_max=0.2),
        site=SITE,
        db_path=tmp_path / "g.db",
        points=POINTS,
    )
    bridge.start()
    try:
        assert bridge.wait_connected(10)
        cycle(bridge, 0)
        assert wait_until(lambda: received(col)[0] == DEVICES * PER_DEV, 10)
        port = broker.port
        broker.stop()
        assert wait_until(lambda: not bridge.connected, 10)
        worst = max(cycle(bridge, k) for k in range(1, 21))  # 20 cycles while down
        assert worst < 0.25  # nothing waits for a broker that is down
        down = bridge.stats()["values"]
        assert down["pending"] == len(POINTS) and down["conflated"] == 19 * DEVICES * PER_DEV
        col.messages.clear()
        col.subscribed.clear()
        broker = Broker(tmp_path / "broker", port=port).start()
        assert col.subscribed.wait(10)
        assert wait_until(lambda: bridge.connected and bridge.stats()["values"]["pending"] == 0, 15)
        # pending drained by the pump after the reconnect; the subscriber may have come back after it,
        # so check what the bridge sent, then one more cycle that must arrive whole.
        v = bridge.stats()["values"]
        assert v["sent"] == v["offered"] - v["conflated"]
        cycle(bridge, 21)
        want = {p.name: 21 + p.index / 10_000.0 for p in POINTS}
        assert wait_until(lambda: received(col)[1] == want, 10)
    finally:
        bridge.stop()
        col.stop()
        broker.stop()


def test_status_json_shows_the_value_counters(tmp_path) -> None:
    db = tmp_path / "site.db"
    conn = connect_writer(db)
    migrate(conn)
    conn.close()
    bridge = MqttBridge(MqttSection(port=1), site=SITE, db_path=db, points=POINTS)  # never connects
    cycle(bridge, 0)
    cycle(bridge, 1)
    bridge.stop(timeout=0.1)
    out = subprocess.run(
        [sys.executable, "-m", "gridedge.gateway.cli.main", "status", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    mv = json.loads(out.stdout)["mqtt_values"]
    assert mv["mode"] == "batch" and mv["offered"] == 2 * len(POINTS)
    assert mv["conflated"] == len(POINTS) and mv["pending"] == len(POINTS) and mv["sent"] == 0
    assert mv["updated"] == pytest.approx(time.time(), abs=60)
