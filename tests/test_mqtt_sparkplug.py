"""Sparkplug B (``mqtt.values: sparkplug``) against a real mosquitto, decoded with a decoder that is not
ours: the Tahu schema as generated in the esio-spb-builder package (its own ``sparkplug_b_pb2``, in
protobuf's default pool; gridedge encodes with its private copy). Births with aliases, DDATA resolved
through the DBIRTH aliases, bdSeq per session in NBIRTH and NDEATH (the will on kill -9), seq 0–255
wraparound, rebirth on NCMD, DCMD and other NCMD writes refused and counted."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from esio_spb_builder.core import sparkplug_b_pb2 as tahu  # the decoder that is not ours
from fixtures_mqtt import BridgeProcess, Broker, Collector, publish_one, run_broker, wait_until
from pydantic import ValidationError

from gridedge.config.models import MqttSection
from gridedge.gateway.model import PointTable, Quality, ReadingBatch
from gridedge.gateway.mqtt.client import MqttBridge

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/mosquitto").exists(), reason="mosquitto not installed")

SITE = "demo"
SPB = "spBv1.0/gridedge"
DOUBLE, INT64, BOOLEAN, INT32 = 10, 4, 11, 3  # Sparkplug DataType codes (Tahu proto)
SPECS = [
    {"name": f"D{d}/P{i}", "quantity": "current", "unit": "A", "group": f"G{d}", "device": f"dev{d}"}
    for d in range(2)
    for i in range(3)
]
POINTS = PointTable.from_specs(SPECS)


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    yield from run_broker(tmp_path / "broker")


def decoded(col: Collector, kind: str) -> list[tuple[str, tahu.Payload]]:
    """Every message of one Sparkplug type received so far: (topic, payload decoded by the Tahu schema)."""
    return [(t, tahu.Payload.FromString(p)) for t, p, _r in col.raw() if t.split("/")[2] == kind]


def all_seqs(col: Collector) -> list[int]:
    return [
        tahu.Payload.FromString(p).seq
        for t, p, _r in col.raw()
        if t.split("/")[2] in ("NBIRTH", "DBIRTH", "DDATA")
    ]


def metric(payload: tahu.Payload, name: str) -> tahu.Payload.Metric:
    (m,) = [m for m in payload.metrics if m.name == name]
    return m


def props(m: tahu.Payload.Metric) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in zip(m.properties.keys, m.properties.values, strict=True):
        out[k] = getattr(v, v.WhichOneof("value"))
    return out


def poll(device: str, values: list[float], t: float, quality: list[int] | None = None) -> ReadingBatch:
    idx = np.array([p.index for p in POINTS if p.device == device], np.int32)
    q = np.array(quality or [0] * len(idx), np.uint16)
    return ReadingBatch(
        idx, np.full(len(idx), t), np.array(values), q, gateway_ts=np.full(len(idx), t), device=device
    )


def spb_bridge(tmp_path: Path, port: int, **cfg) -> MqttBridge:
    b = MqttBridge(
        MqttSection(port=port, values="sparkplug", reconnect_min=0.05, reconnect_max=0.5, **cfg),
        site=SITE,
        db_path=tmp_path / "g.db",
        points=POINTS,
    )
    b.start()
    assert b.wait_connected(10)
    return b


def test_births_aliases_ddata_seq_rebirth_and_refused_writes(tmp_path, broker) -> None:
    col = Collector(broker.port, ["spBv1.0/#"]).start()
    bridge = spb_bridge(tmp_path, broker.port)
    try:
        assert wait_until(lambda: len(decoded(col, "DBIRTH")) == 2, 10)
        ((t_nb, nb),) = decoded(col, "NBIRTH")
        assert t_nb == f"{SPB}/NBIRTH/{SITE}"
        assert nb.seq == 0
        bd = metric(nb, "bdSeq")
        assert bd.datatype == INT64 and bd.long_value == 0  # the first session
        rb = metric(nb, "Node Control/Rebirth")
        assert rb.datatype == BOOLEAN and rb.boolean_value is False
        births = dict(decoded(col, "DBIRTH"))
        assert sorted(births) == [f"{SPB}/DBIRTH/{SITE}/dev0", f"{SPB}/DBIRTH/{SITE}/dev1"]
        assert sorted(p.seq for p in births.values()) == [1, 2]
        alias_to_name: dict[int, str] = {}
        for topic, p in births.items():
            dev = topic.rsplit("/", 1)[1]
            assert [m.name for m in p.metrics] == [s["name"] for s in SPECS if s["device"] == dev]
            for m in p.metrics:
                assert m.datatype == DOUBLE and m.is_null  # nothing polled yet
                assert props(m) == {"engUnit": "A"}
                alias_to_name[m.alias] = m.name
        assert len(alias_to_name) == 6 and 0 not in alias_to_name  # unique per edge node

        t0 = time.time()
        bridge.publish_values(poll("dev0", [1.0, 2.0, 3.0], t0))
        bridge.publish_values(
            poll(
                "dev1",
                [4.0, float("nan"), 6.0],
                t0,
                [0, int(Quality.INVALID | Quality.COMM_LOST), int(Quality.STALE)],
            )
        )
        bridge.publish_values(poll("dev0", [1.0, 2.5, 3.0], t0 + 1))  # only D0/P1 changed
        assert wait_until(lambda: len(decoded(col, "DDATA")) == 3, 5)
        dd = decoded(col, "DDATA")
        assert [t for t, _p in dd] == [f"{SPB}/DDATA/{SITE}/dev{d}" for d in (0, 1, 0)]
        got = [{alias_to_name[m.alias]: m for m in p.metrics} for _t, p in dd]
        assert all(not m.name for p in got for m in p.values())  # DDATA by alias only
        assert {n: m.double_value for n, m in got[0].items()} == {"D0/P0": 1.0, "D0/P1": 2.0, "D0/P2": 3.0}
        assert got[0]["D0/P0"].timestamp == round(t0 * 1000)
        assert got[1]["D1/P0"].double_value == 4.0 and not props(got[1]["D1/P0"])
        assert got[1]["D1/P1"].is_null and props(got[1]["D1/P1"]) == {"Quality": 0}  # bad
        assert got[1]["D1/P2"].double_value == 6.0 and props(got[1]["D1/P2"]) == {"Quality": 64}  # uncertain
        assert list(got[2]) == ["D0/P1"] and got[2]["D0/P1"].double_value == 2.5
        assert all_seqs(col) == [0, 1, 2, 3, 4, 5]

        # Writes are refused: a DCMD, and an NCMD other than Rebirth (encoded with the Tahu schema).
        before = len(col.raw())
        dcmd = tahu.Payload(timestamp=1)
        dcmd.metrics.add(name="D0/P0", datatype=DOUBLE, double_value=99.0)
        publish_one(broker.port, f"{SPB}/DCMD/{SITE}/dev0", dcmd.SerializeToString())
        ncmd = tahu.Payload(timestamp=1)
        ncmd.metrics.add(name="Node Control/Reboot", datatype=BOOLEAN, boolean_value=True)
        publish_one(broker.port, f"{SPB}/NCMD/{SITE}", ncmd.SerializeToString())
        assert wait_until(lambda: bridge.stats()["values"]["sparkplug"]["refused_writes"] == 2, 5)
        time.sleep(0.2)
        assert [t for t, _p, _r in col.raw()[before:]] == [f"{SPB}/DCMD/{SITE}/dev0", f"{SPB}/NCMD/{SITE}"]

        # Rebirth: NBIRTH with the same bdSeq and seq 0, DBIRTHs with the newest values.
        col.messages.clear()
        reb = tahu.Payload(timestamp=1)
        reb.metrics.add(name="Node Control/Rebirth", datatype=BOOLEAN, boolean_value=True)
        publish_one(broker.port, f"{SPB}/NCMD/{SITE}", reb.SerializeToString())
        assert wait_until(lambda: len(decoded(col, "DBIRTH")) == 2, 5)
        ((_t, nb2),) = decoded(col, "NBIRTH")
        assert nb2.seq == 0 and metric(nb2, "bdSeq").long_value == 0
        births = dict(decoded(col, "DBIRTH"))
        d0 = births[f"{SPB}/DBIRTH/{SITE}/dev0"]
        assert [(m.alias, m.double_value) for m in d0.metrics] == [(1, 1.0), (2, 2.5), (3, 3.0)]
        assert metric(births[f"{SPB}/DBIRTH/{SITE}/dev1"], "D1/P1").is_null
        s = bridge.stats()["values"]["sparkplug"]
        assert s["rebirths"] == 1 and s["births"] == 2 and s["refused_writes"] == 2

        # seq wraps 255 → 0 over the node's messages.
        col.messages.clear()
        for k in range(300):
            bridge.publish_values(poll("dev0", [float(k), 0.0, 0.0], t0 + 2 + k))
            wait_until(lambda: bridge.stats()["values"]["pending"] == 0, 2, 0.001)
        assert wait_until(lambda: bridge.stats()["values"]["backlog"] == 0, 5)
        time.sleep(0.3)
        seqs = all_seqs(col)
        assert len(seqs) >= 256
        assert all(b == (a + 1) % 256 for a, b in itertools.pairwise(seqs))
        assert 255 in seqs and seqs.index(0) == seqs.index(255) + 1
    finally:
        bridge.stop()
        col.stop()


def test_ndeath_is_the_will_and_bdseq_counts_sessions(tmp_path) -> None:
    broker = Broker(tmp_path / "broker").start()
    col = Collector(broker.port, ["spBv1.0/#"]).start()
    config = {
        "site": SITE,
        "db": str(tmp_path / "g.db"),
        "points": SPECS,
        "mqtt": {"port": broker.port, "values": "sparkplug", "reconnect_min": 0.05, "reconnect_max": 0.2},
    }
    proc = BridgeProcess(config, tmp_path)
    try:
        assert wait_until(lambda: len(decoded(col, "NBIRTH")) == 1, 10)
        assert metric(decoded(col, "NBIRTH")[0][1], "bdSeq").long_value == 0
        # A new session (the broker restarts on the same port): bdSeq 1 in NBIRTH, and in the new will.
        port = broker.port
        col.subscribed.clear()
        broker.stop()
        time.sleep(0.8)  # several refused TCP connects meanwhile: they sent no CONNECT, bdSeq stays
        broker = Broker(tmp_path / "broker", port=port).start()

        def spb_stats() -> dict:
            return proc.request("stats")["values"]["sparkplug"]

        assert wait_until(lambda: spb_stats()["births"] == 2, 15, 0.1)
        assert spb_stats()["bdseq"] == 1
        # The subscriber may have come back after that NBIRTH: ask for a rebirth once it is subscribed.
        assert col.subscribed.wait(10)
        reb = tahu.Payload(timestamp=1)
        reb.metrics.add(name="Node Control/Rebirth", datatype=BOOLEAN, boolean_value=True)
        publish_one(port, f"{SPB}/NCMD/{SITE}", reb.SerializeToString())
        assert wait_until(
            lambda: any(metric(p, "bdSeq").long_value == 1 for _t, p in decoded(col, "NBIRTH")), 10
        )
        assert metric(decoded(col, "NBIRTH")[0][1], "bdSeq").long_value == 0  # the first session
        # mosquitto sends its clients' wills when it shuts down: that NDEATH belongs to session 0
        early = [metric(nd, "bdSeq").long_value for _t, nd in decoded(col, "NDEATH")]
        assert early in ([], [0])
        proc.kill9()
        assert wait_until(lambda: len(decoded(col, "NDEATH")) == len(early) + 1, 10)
        topic, nd = decoded(col, "NDEATH")[-1]
        assert topic == f"{SPB}/NDEATH/{SITE}"
        assert metric(nd, "bdSeq").long_value == 1  # matches the NBIRTH of the session that died
        assert not nd.HasField("seq")
        # A restarted process on the same DB goes on counting: its first session is bdSeq 2.
        col.messages.clear()
        proc.close()
        proc = BridgeProcess(config, tmp_path)
        assert wait_until(lambda: len(decoded(col, "NBIRTH")) == 1, 10)
        assert metric(decoded(col, "NBIRTH")[0][1], "bdSeq").long_value == 2
    finally:
        proc.close()
        col.stop()
        broker.stop()


def test_clean_stop_publishes_ndeath(tmp_path, broker) -> None:
    col = Collector(broker.port, ["spBv1.0/#"]).start()
    bridge = spb_bridge(tmp_path, broker.port)
    assert wait_until(lambda: len(decoded(col, "NBIRTH")) == 1, 10)
    bridge.stop()
    try:
        assert wait_until(lambda: len(decoded(col, "NDEATH")) == 1, 5)
        assert metric(decoded(col, "NDEATH")[0][1], "bdSeq").long_value == 0
    finally:
        col.stop()


def test_values_in_outbox_is_refused_with_sparkplug() -> None:
    with pytest.raises(ValidationError, match="values_in_outbox"):
        MqttSection(values="sparkplug", values_in_outbox=True)
    assert MqttSection(values="per_point", values_in_outbox=True).values_in_outbox
