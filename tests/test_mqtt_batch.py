"""Batched value payloads (``mqtt.values: batch``, the default): the encoder against a per-reading json
oracle, and the bridge against a real mosquitto — one message per device (or group) and cycle with only
the changed points, validated against docs/mqtt-schemas/values.json."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures_mqtt import Broker, Collector, run_broker, validator, wait_until

from gridedge.config.models import MqttSection
from gridedge.gateway.model import PointTable, Quality, ReadingBatch
from gridedge.gateway.mqtt.client import MqttBridge
from gridedge.gateway.mqtt.conflation import PendingValues
from gridedge.gateway.mqtt.payloads import BatchEncoder, PerPointEncoder

SITE = "demo"
ROOT = f"gridedge/{SITE}"


def table(n_dev: int, per_dev: int, *, interleave: bool = False) -> PointTable:
    specs = []
    for k in range(n_dev * per_dev):
        d, i = (k % n_dev, k // n_dev) if interleave else divmod(k, per_dev)
        specs.append(
            {
                "name": f"D{d}/P{i}",
                "quantity": "current",
                "unit": "A",
                "group": f"G{i % 2}",
                "device": f"dev{d}",
            }
        )
    return PointTable.from_specs(specs)


def oracle(points: PointTable, vals: PendingValues, by: str) -> dict[str, dict]:
    """What the batch payloads must say, built one reading at a time with json."""
    out: dict[str, dict] = {}
    for k, p in enumerate(vals.point_idx.tolist()):
        pt = points[p]
        name = pt.device if by == "device" else pt.group
        msg = out.setdefault(
            f"{ROOT}/values/{name}",
            {by: name, "points": [], "value": [], "quality": [], "ts": [], "gateway_ts": []},
        )
        v = float(vals.value[k])
        msg["points"].append(pt.name)
        msg["value"].append(v if math.isfinite(v) else None)
        msg["quality"].append(int(vals.quality[k]))
        msg["ts"].append(float(vals.ts[k]))
        msg["gateway_ts"].append(float(vals.gateway_ts[k]))
    return out


@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("by", ["device", "group"])
def test_batch_encoder_matches_a_json_oracle(interleave: bool, by: str) -> None:
    rng = np.random.default_rng(7)
    points = table(4, 25, interleave=interleave)
    check = validator("values")
    for subset in (np.arange(len(points)), np.sort(rng.choice(len(points), 37, replace=False))):
        n = len(subset)
        value = rng.normal(100, 50, n) * 10.0 ** rng.integers(-8, 8, n)
        value[rng.random(n) < 0.1] = np.nan
        value[:2] = [np.inf, -np.inf]
        vals = PendingValues(
            subset.astype(np.int32),
            value,
            rng.integers(0, 512, n).astype(np.uint16),
            1.765e9 + rng.random(n),
            1.765e9 + rng.random(n),
        )
        msgs = BatchEncoder(ROOT, points, by).encode(vals)  # type: ignore[arg-type]
        want = oracle(points, vals, by)
        got = {topic: json.loads(body) for topic, body, _n in msgs}
        assert got == want  # floats round-trip exactly (shortest repr), NaN/inf → null
        assert len(msgs) == len(want)  # one message per device (group)
        assert sum(n for _t, _b, n in msgs) == n
        for body in got.values():
            errors = list(check.iter_errors(body))
            assert not errors, errors


def test_per_point_encoder_keeps_the_point_schema() -> None:
    points = table(1, 3)
    vals = PendingValues(
        np.array([0, 2], np.int32),
        np.array([1.5, np.nan]),
        np.array([0, int(Quality.STALE | Quality.CLOCK_SKEW)], np.uint16),
        np.array([1.0, 2.0]),
        np.array([1.5, 2.5]),
    )
    msgs = PerPointEncoder(ROOT, points).encode(vals)
    check = validator("point")
    assert [t for t, _b, _n in msgs] == [f"{ROOT}/point/D0_P0", f"{ROOT}/point/D0_P2"]
    bodies = [json.loads(b) for _t, b, _n in msgs]
    for b in bodies:
        assert not list(check.iter_errors(b))
    assert bodies[1] == {
        "value": None, "quality": 260, "flags": ["stale", "clock_skew"], "ts": 2.0, "gateway_ts": 2.5, "unit": "A",
    }  # fmt: skip


# ---------------------------------------------------------------------------------------- with a broker
@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    yield from run_broker(tmp_path / "broker")


def bridge_for(tmp_path: Path, port: int, points: PointTable, **cfg) -> MqttBridge:
    b = MqttBridge(
        MqttSection(port=port, reconnect_min=0.05, reconnect_max=0.5, **cfg),
        site=SITE,
        db_path=tmp_path / "g.db",
        points=points,
    )
    b.start()
    assert b.wait_connected(10)
    return b


def poll(points: PointTable, device: str, values: dict[str, float], t: float) -> ReadingBatch:
    """One device's poll: every point of the device, in point order (as a driver hands it over)."""
    idx = np.array([p.index for p in points if p.device == device], np.int32)
    v = np.array([values[points[i].name] for i in idx])
    q = np.array([int(Quality.INVALID) if np.isnan(x) else 0 for x in v], np.uint16)
    return ReadingBatch(
        idx, np.full(len(idx), t - 0.05), v, q, gateway_ts=np.full(len(idx), t), device=device
    )


def test_one_message_per_device_and_cycle_with_the_changed_points(tmp_path, broker) -> None:
    points = table(2, 4)
    col = Collector(broker.port, [f"{ROOT}/values/#", f"{ROOT}/point/#"]).start()
    bridge = bridge_for(tmp_path, broker.port, points, deadband=1.0, integrity_period=3600.0)
    check = validator("values")
    try:
        vals = {p.name: 10.0 * p.index for p in points}
        t0 = time.time()
        for dev in ("dev0", "dev1"):
            bridge.publish_values(poll(points, dev, vals, t0))  # first cycle: everything goes out
        vals["D0/P1"] += 0.5  # inside the deadband: stays back
        vals["D0/P3"] += 5.0
        vals["D1/P0"] = float("nan")  # a value lost: quality change and NaN → null
        for dev in ("dev0", "dev1"):
            bridge.publish_values(poll(points, dev, vals, t0 + 1))
        for dev in ("dev0", "dev1"):  # nothing changed: no message at all
            bridge.publish_values(poll(points, dev, vals, t0 + 2))
        assert wait_until(lambda: len(col.raw()) >= 4, 5)
        time.sleep(0.3)  # anything extra would have arrived by now
        d0, d1 = col.on(f"{ROOT}/values/dev0"), col.on(f"{ROOT}/values/dev1")
        assert not [t for t, _p, _r in col.raw() if "/point/" in t]  # batch is the default
        assert len(d0) == 2 and len(d1) == 2
        for body in d0 + d1:
            assert not list(check.iter_errors(body))
        assert d0[0]["points"] == ["D0/P0", "D0/P1", "D0/P2", "D0/P3"]
        assert d0[0]["value"] == [0.0, 10.0, 20.0, 30.0]
        assert d0[0]["ts"] == [pytest.approx(t0 - 0.05)] * 4 and d0[0]["gateway_ts"] == [t0] * 4
        assert d0[1] == {
            "device": "dev0", "points": ["D0/P3"], "value": [35.0], "quality": [0],
            "ts": [t0 + 1 - 0.05], "gateway_ts": [t0 + 1],
        }  # fmt: skip
        assert d1[1]["points"] == ["D1/P0"] and d1[1]["value"] == [None]
        assert d1[1]["quality"] == [int(Quality.INVALID)]
        s = bridge.stats()["values"]
        assert s["mode"] == "batch" and s["messages"] == 4
        assert s["offered"] == 8 + 2 and s["sent"] == 10 and s["conflated"] == 0 and s["pending"] == 0
    finally:
        bridge.stop()
        col.stop()


def test_batch_by_group_and_per_point_option(tmp_path, broker) -> None:
    points = table(2, 4)  # groups G0 / G1 span both devices
    col = Collector(broker.port, [f"{ROOT}/values/#", f"{ROOT}/point/#"]).start()
    by_group = bridge_for(tmp_path, broker.port, points, batch_by="group")
    try:
        vals = {p.name: float(p.index) for p in points}
        by_group.publish_values(poll(points, "dev0", vals, time.time()))
        assert wait_until(lambda: len(col.raw()) >= 2, 5)
        g0, g1 = col.on(f"{ROOT}/values/G0"), col.on(f"{ROOT}/values/G1")
        assert g0 == [{**g0[0], "group": "G0", "points": ["D0/P0", "D0/P2"], "value": [0.0, 2.0]}]
        assert g1[0]["points"] == ["D0/P1", "D0/P3"]
    finally:
        by_group.stop()
    col.messages.clear()
    per_point = MqttBridge(
        MqttSection(port=broker.port, values="per_point"), site=SITE, db_path=tmp_path / "p.db", points=points
    )
    per_point.start()
    try:
        assert per_point.wait_connected(10)
        per_point.publish_values(poll(points, "dev1", vals, time.time()))
        assert wait_until(lambda: len(col.raw()) >= 4, 5)
        assert sorted(t for t, _p, _r in col.raw()) == [f"{ROOT}/point/D1_P{i}" for i in range(4)]
        assert per_point.stats()["values"]["messages"] == 4
    finally:
        per_point.stop()
        col.stop()
